//! Supervision of a connected call (`POST …/supervise`): a supervisor is dialled and, once it
//! answers, joins the call's room with the rules of its mode — listen (hears both, heard by
//! nobody), whisper (heard by the agent only), barge (heard by both) — switchable mid-call;
//! intercept takes the agent's place: the agent's leg ends and the supervisor is the call's
//! connected party from then on. The agent is the connected callee, the customer the caller.

use super::*;
use crate::registry::SuperviseMode;

/// The supervisor of a call, from its dialling to its end.
pub(super) struct Supervisor {
    /// Its CDR leg record (its leg index in the call).
    pub(super) record: usize,
    pub(super) mode: SuperviseMode,
    /// `None` while its launch task runs.
    pub(super) live: Option<Attempt>,
    /// Which dialling this is: a late launch result of an earlier one is hung up.
    serial: u64,
}

impl Supervisor {
    /// Its leg state (for snapshots).
    pub(super) fn state(&self) -> LegState {
        self.live.as_ref().map_or(LegState::Calling, |a| a.state)
    }
}

/// Whom a supervisor in `mode` is heard by, the agent being `agent`.
fn heard_by(mode: SuperviseMode, agent: MemberId) -> Audience {
    match mode {
        SuperviseMode::Listen => Audience::None,
        SuperviseMode::Whisper => Audience::only([agent]),
        SuperviseMode::Barge | SuperviseMode::Intercept => Audience::All,
    }
}

impl BridgeRoom {
    /// The supervisor's member and rules, as its mode says.
    pub(super) fn apply_supervisor_rules(&self) {
        if let Some((member, mode)) = self.supervisor {
            self.room
                .set_rules(member, heard_by(mode, self.parties[1]), Audience::All);
        }
    }
}

impl Call {
    /// `POST …/supervise`: dials `supervisor` (the first time) or switches the mode of the one
    /// on the call.
    pub(super) fn supervise(
        &mut self,
        mode: SuperviseMode,
        supervisor: Option<crate::blocks::BridgeDestination>,
    ) -> Result<(), CommandRefused> {
        if self.bridged_callee().is_none() {
            return Err(CommandRefused::NotConnected);
        }
        match (self.supervisor.is_some(), supervisor) {
            (true, Some(_)) => return Err(CommandRefused::AlreadySupervised),
            (false, None) => return Err(CommandRefused::NoSupervisor),
            (false, Some(dest)) => self.dial_supervisor(mode, dest),
            (true, None) => self.set_supervise_mode(mode),
        }
        Ok(())
    }

    /// [`ControlCommand::CheckSupervise`]: a supervisor can join now.
    pub(super) fn check_supervise(&self) -> Result<(), CommandRefused> {
        if self.ended.is_some() {
            return Err(CommandRefused::Ending);
        }
        if self.bridged_callee().is_none() {
            return Err(CommandRefused::NotConnected);
        }
        if self.supervisor.is_some() {
            return Err(CommandRefused::AlreadySupervised);
        }
        Ok(())
    }

    /// [`CallCommand::AdoptSupervisor`]: a leg moved here from its own call (the supervisor
    /// named by its leg id) joins the connected call in `mode`, answered already.
    pub(super) fn adopt_supervisor(
        &mut self,
        moved: MovedLeg,
        mode: SuperviseMode,
    ) -> Result<CallInfo, CommandRefused> {
        let moved = moved.admitted(self.check_supervise())?;
        let (attempt, owner, record) = moved.into_parts();
        if record.destination_type.as_deref() == Some(DestinationType::SipUser.as_str()) {
            self.events.add_line(&record.destination);
        }
        let index = self.legs.len();
        self.legs.push(record);
        let gone = crate::leg::arrive(&attempt.leg, owner, &mut self.side, self.side_tx.clone());
        self.supervisions += 1;
        self.supervisor = Some(Supervisor {
            record: index,
            mode,
            live: Some(attempt),
            serial: self.supervisions,
        });
        info!(call = %self.uuid, mode = mode.as_str(), "a supervisor's leg moved in");
        if gone {
            self.supervisor_gone(None, HangupCause::NormalClearing);
        } else {
            self.supervisor_answered();
        }
        Ok(self.snapshot())
    }

    /// Places the supervisor's call (a launch task reports `TaskDone::SupervisorLaunched`).
    fn dial_supervisor(&mut self, mode: SuperviseMode, dest: crate::blocks::BridgeDestination) {
        if dest.destination_type == DestinationType::SipUser {
            self.events.add_line(&dest.destination);
        }
        let record = self.legs.len();
        self.legs.push(LegRecord::dialled(&dest));
        self.supervisions += 1;
        let serial = self.supervisions;
        self.supervisor = Some(Supervisor {
            record,
            mode,
            live: None,
            serial,
        });
        info!(call = %self.uuid, to = %dest.destination, mode = mode.as_str(), "dialling a supervisor");
        let job = LaunchJob {
            svc: self.svc.clone(),
            tenant: self.tenant.clone(),
            caller: self.caller.clone(),
            called: self.called.clone(),
            forward_ani: true,
            kind: dest.destination_type,
            destination: dest.destination,
            from_display: None,
            extra_headers: Vec::new(),
        };
        let done = self.tasks_tx.clone();
        tokio::spawn(async move {
            let result = job.run().await.map(Box::new);
            if let Err(mpsc::error::SendError(TaskDone::SupervisorLaunched {
                result: Ok(mut l),
                ..
            })) = done.send(TaskDone::SupervisorLaunched { serial, result })
            {
                l.leg.hangup(None).await;
            }
        });
        self.emit_supervisor(EventKind::Supervisor {
            what: "calling",
            mode,
        });
    }

    /// The supervisor's INVITE is out (or could not be sent).
    pub(super) fn on_supervisor_launched(
        &mut self,
        serial: u64,
        result: Result<Box<Launched>, (u16, String)>,
    ) {
        let current = self
            .supervisor
            .as_ref()
            .is_some_and(|s| s.serial == serial && s.live.is_none());
        if !current {
            if let Ok(mut l) = result {
                tokio::spawn(async move { l.leg.hangup(None).await });
            }
            return;
        }
        match result {
            Err((status, why)) => {
                info!(call = %self.uuid, %why, "the supervisor cannot be reached");
                self.supervisor_gone(Some(status), HangupCause::from_sip_status(status));
            }
            Ok(l) => {
                let Launched { leg, media, sdp } = *l;
                let sip_call_id = leg.call_id().to_string();
                let leg_id = LegId(self.svc.next_leg.fetch_add(1, Ordering::Relaxed));
                let owner = self.side.adopt(leg_id, 1);
                let handle = media.handle();
                let leg = spawn_outbound(
                    leg_id,
                    leg,
                    media,
                    owner,
                    self.side_tx.clone(),
                    AttemptEvent::Sip,
                    None,
                );
                if let Some(s) = self.supervisor.as_mut() {
                    s.live = Some(Attempt {
                        media: handle,
                        sdp,
                        leg,
                        sip_call_id,
                        started: Instant::now(),
                        answered_at: None,
                        remote_te: None,
                        remote: None,
                        state: LegState::Calling,
                    });
                }
            }
        }
    }

    /// What the supervisor's dialog did.
    pub(super) async fn on_supervisor_event(&mut self, ev: AttemptEvent) {
        let AttemptEvent::Sip(ev) = ev else { return };
        let Some(s) = self.supervisor.as_mut() else {
            return;
        };
        let record = s.record;
        let Some(a) = s.live.as_mut() else { return };
        match ev {
            OutboundEvent::Ringing { status, .. } => {
                a.state = LegState::Ringing;
                if let Some(l) = self.legs.get_mut(record) {
                    l.sip_status = Some(status);
                }
            }
            OutboundEvent::Answered { sdp } => {
                if let Some(n) = sdp.and_then(|s| negotiate_sdp(&s).ok()) {
                    a.media.set_remote(RemoteMedia::from(&n));
                    a.remote_te = n.telephone_event_pt;
                    a.remote = Some(n.clone());
                    a.sdp.agreed(&n);
                }
                a.media.set_fill_silence(true);
                a.answered_at = Some(Instant::now());
                a.state = LegState::Answered;
                if let Some(l) = self.legs.get_mut(record) {
                    l.answer = Some(now_utc());
                    l.sip_status = Some(200);
                }
                self.supervisor_answered();
            }
            OutboundEvent::Failed { status } => {
                self.supervisor_gone(Some(status), HangupCause::from_sip_status(status))
            }
            OutboundEvent::RemoteBye => self.supervisor_gone(None, HangupCause::NormalClearing),
            OutboundEvent::Dtmf(_) | OutboundEvent::ReferProgress(_) => {}
            OutboundEvent::Reinvite { sdp, responder } => {
                let answer = match sdp.as_deref().map(negotiate_sdp) {
                    Some(Ok(n)) => {
                        a.media.set_remote(RemoteMedia::from(&n));
                        Some(a.sdp.answer(&n))
                    }
                    None => Some(a.sdp.current()),
                    Some(Err(_)) => None,
                };
                match answer {
                    Some(sdp) => responder.accept(sdp).await,
                    None => responder.reject(488).await,
                }
            }
        }
    }

    /// The supervisor answered: it joins the connected call's room with its mode's rules (or
    /// is hung up when the call is no longer connected).
    fn supervisor_answered(&mut self) {
        let Some((media, mode)) = self
            .supervisor
            .as_ref()
            .and_then(|s| s.live.as_ref().map(|a| (a.media.clone(), s.mode)))
        else {
            return;
        };
        let Some(r) = self.bridge_room() else {
            self.end_supervision(HangupCause::NormalClearing);
            return;
        };
        let member = r
            .room
            .add_leg(&media, heard_by(mode, r.parties[1]), Audience::All);
        r.supervisor = Some((member, mode));
        info!(call = %self.uuid, mode = mode.as_str(), "supervisor joined");
        self.emit_supervisor(EventKind::Supervisor {
            what: "joined",
            mode,
        });
        if mode == SuperviseMode::Intercept {
            self.intercept();
        }
    }

    /// Switches the mode of the supervisor on the call (applied once it answers).
    fn set_supervise_mode(&mut self, mode: SuperviseMode) {
        let Some(s) = self.supervisor.as_mut() else {
            return;
        };
        if s.mode == mode {
            return;
        }
        s.mode = mode;
        let joined = s.live.as_ref().is_some_and(|a| a.answered_at.is_some());
        info!(call = %self.uuid, mode = mode.as_str(), "supervision mode");
        self.emit_supervisor(EventKind::Supervisor { what: "mode", mode });
        if !joined {
            return;
        }
        if mode == SuperviseMode::Intercept {
            self.intercept();
            return;
        }
        if let Some(r) = self.bridge.as_mut().and_then(|b| b.room.as_mut()) {
            if let Some((_, m)) = r.supervisor.as_mut() {
                *m = mode;
            }
            r.apply_supervisor_rules();
        }
    }

    /// The supervisor takes the agent's place: the agent's leg ends, and the supervisor is
    /// the bridge's connected party (its hang-up ends the call as the agent's would have).
    fn intercept(&mut self) {
        let Some(mut s) = self.supervisor.take() else {
            return;
        };
        let Some(a) = s.live.take() else {
            return;
        };
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let Some(attempt) = b
            .dial
            .replace_winner(Some(HangupCause::NormalClearing.reason_header()))
        else {
            return;
        };
        // The supervisor's leg reports to the bridge from now on, as that attempt. It moves on
        // from the epoch it has here: 1 when dialled, later when it moved in from its call.
        let from = self.side.owner_of(a.leg.id).unwrap_or(crate::leg::Owner {
            id: self.side.owner_id(),
            epoch: 1,
        });
        self.side.release(a.leg.id);
        b.adopted.push((a.leg.id, attempt));
        let gone = crate::leg::arrive(&a.leg, from, &mut b.mailbox, b.events_tx.clone());
        b.put_slot(attempt, s.record, Some(a));
        if let Some(r) = b.room.as_mut() {
            r.attempt = attempt;
            if let Some((member, _)) = r.supervisor.take() {
                r.parties[1] = member;
                if let Some(music) = r.hold[1].take() {
                    r.room.remove(music);
                }
                r.muted[1] = false;
                r.callee_replaced();
            }
            r.apply_rules();
        }
        b.connected = Some(attempt);
        b.bridged = Some(attempt);
        info!(call = %self.uuid, "supervisor intercepted the call");
        self.run_dial();
        if gone {
            if let Some(b) = self.bridge.as_mut() {
                b.dial
                    .handle_input(DialInput::RemoteBye { attempt }, Instant::now());
            }
            self.run_dial();
        }
        let destination = self.destination_of(s.record).unwrap_or_default();
        let destination_type = self
            .legs
            .get(s.record)
            .and_then(|l| l.destination_type.clone());
        self.emit_for(
            s.record,
            EventKind::Supervisor {
                what: "intercepted",
                mode: SuperviseMode::Intercept,
            },
        );
        self.emit_for(
            s.record,
            EventKind::Bridged {
                destination,
                destination_type,
            },
        );
        s.mode = SuperviseMode::Intercept;
        self.dissolve_unneeded_room();
    }

    /// `DELETE …/supervise`, the call's end, or the connected pair's: the supervisor is hung up.
    pub(super) fn end_supervision(&mut self, cause: HangupCause) {
        let Some(s) = self.supervisor.as_ref() else {
            return;
        };
        if let Some(a) = s.live.as_ref() {
            a.leg.hangup(Some(cause.reason_header()));
        }
        self.supervisor_gone(None, cause);
    }

    /// The supervisor's leg is over (or never got up): out of the room, its CDR leg ended.
    fn supervisor_gone(&mut self, status: Option<u16>, cause: HangupCause) {
        let Some(s) = self.supervisor.take() else {
            return;
        };
        if let Some(a) = s.live.as_ref() {
            self.side.release(a.leg.id);
        }
        if let Some(r) = self.bridge.as_mut().and_then(|b| b.room.as_mut()) {
            if let Some((member, _)) = r.supervisor.take() {
                r.room.remove(member);
            }
        }
        if let Some(l) = self.legs.get_mut(s.record) {
            l.end = Some(now_utc());
            l.cause = Some(cause);
            if status.is_some() {
                l.sip_status = status;
            }
        }
        info!(call = %self.uuid, "supervisor left");
        let mode = s.mode;
        self.emit_for(s.record, EventKind::Supervisor { what: "left", mode });
        self.dissolve_unneeded_room();
    }

    fn emit_supervisor(&mut self, kind: EventKind) {
        match self.supervisor.as_ref().map(|s| s.record) {
            Some(r) => self.emit_for(r, kind),
            None => self.emit(kind),
        }
    }

    /// `DELETE …/supervise`.
    pub(super) fn stop_supervising(&mut self) -> Result<(), CommandRefused> {
        if self.supervisor.is_none() {
            return Err(CommandRefused::NoSupervisor);
        }
        self.end_supervision(HangupCause::NormalClearing);
        Ok(())
    }
}

/// The next event of a leg the session holds besides its caller and bridge (the supervisor).
pub(super) async fn recv_side(
    events: &mut mpsc::UnboundedReceiver<Addressed<AttemptEvent>>,
    mailbox: &Mailbox,
) -> AttemptEvent {
    loop {
        let Some(ev) = events.recv().await else {
            return std::future::pending().await;
        };
        if let Some((_, ev)) = mailbox.accept(ev) {
            return ev;
        }
    }
}
