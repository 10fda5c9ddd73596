//! Legs that move between calls ([`MovedLeg`]). Attended transfer (`POST …/transfer` with
//! `consultCallId`): the consultation call hands its connected party's leg over, and this call
//! puts that leg in the place of its own connected callee (the agent), whose leg ends. A
//! supervisor named by its leg id (`POST …/supervise`): the call that leg is in lets it go —
//! its connected callee, or its answered first leg (then that call ends) — and it joins the
//! supervised call. The leg moves between the sessions' mailboxes in a new epoch, so nothing
//! it reported to its old call reaches the new one.

use super::*;
use crate::registry::ControlCommand;

/// A leg on its way from one call to another (a connected callee's, or a first leg's taken
/// over by an adapter task that speaks a callee's events): its dialog and media (the leg's
/// task keeps running), its session description and its record so far.
pub struct MovedLeg {
    attempt: Attempt,
    /// Who it reports to until the new owner takes it.
    owner: crate::leg::Owner,
    record: LegRecord,
}

impl std::fmt::Debug for MovedLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MovedLeg")
            .field("leg", &self.attempt.leg.id)
            .field("destination", &self.record.destination)
            .finish()
    }
}

impl MovedLeg {
    /// Nobody takes it after all: it is hung up.
    pub(crate) fn hang_up(self) {
        self.attempt.leg.hangup(None);
    }

    /// The leg, if the receiving call's `check` lets it in; hung up (and the refusal passed
    /// on) otherwise.
    pub(super) fn admitted<T>(
        self,
        check: Result<T, CommandRefused>,
    ) -> Result<Self, CommandRefused> {
        if let Err(why) = check {
            self.hang_up();
            return Err(why);
        }
        Ok(self)
    }

    pub(super) fn into_parts(self) -> (Attempt, crate::leg::Owner, LegRecord) {
        (self.attempt, self.owner, self.record)
    }

    /// Where the leg was dialled, as a BRIDGE destination (a number when its record has no
    /// type).
    pub(super) fn destination(&self) -> crate::blocks::BridgeDestination {
        let destination_type = match self.record.destination_type.as_deref() {
            Some("SIP_USER") => DestinationType::SipUser,
            Some("SIP_TRUNK") => DestinationType::SipTrunk,
            _ => DestinationType::ExternalNumber,
        };
        crate::blocks::BridgeDestination {
            destination_type,
            destination: self.record.destination.clone(),
            timeout: None,
        }
    }
}

/// A first leg's dialog events as a dialled party's ([`AttemptEvent`]), once it moved.
fn inbound_as_attempt(ev: InboundEvent) -> Option<AttemptEvent> {
    let ev = match ev {
        InboundEvent::Confirmed => return None,
        InboundEvent::Cancelled => OutboundEvent::Failed { status: 487 },
        InboundEvent::RemoteBye => OutboundEvent::RemoteBye,
        InboundEvent::Failed(_) => OutboundEvent::Failed { status: 408 },
        InboundEvent::Dtmf(c) => OutboundEvent::Dtmf(c),
        InboundEvent::Reinvite { sdp, responder } => OutboundEvent::Reinvite { sdp, responder },
        InboundEvent::ReferProgress(p) => OutboundEvent::ReferProgress(p),
    };
    Some(AttemptEvent::Sip(ev))
}

fn outbound_as_attempt(ev: OutboundEvent) -> Option<AttemptEvent> {
    Some(AttemptEvent::Sip(ev))
}

impl Call {
    /// [`CallCommand::ReleaseLeg`]: lets leg `leg` go to call `to_call` — the connected
    /// callee (`None` too), or the answered first leg.
    pub(super) fn release_leg(
        &mut self,
        leg: Option<u32>,
        to_call: &str,
        mode: &'static str,
    ) -> Result<MovedLeg, CommandRefused> {
        match leg {
            None => self.release_connected(to_call, Some(mode)),
            Some(0) => self.release_caller(to_call),
            Some(i) if Some(i as usize) == self.connected_record() => {
                self.release_connected(to_call, Some(mode))
            }
            Some(i) if (i as usize) < self.legs.len() => Err(CommandRefused::NotAParty),
            Some(_) => Err(CommandRefused::NoSuchLeg),
        }
    }

    /// Lets the first leg (answered) go to call `to_call` without hanging it up: what this
    /// call did with it stops (its plan, its bridge: a connected callee is hung up) and the
    /// call ends, `hangup_by` = `moved`. An adapter task takes the leg over and reports its
    /// dialog and digits as a dialled party's.
    pub(super) fn release_caller(&mut self, to_call: &str) -> Result<MovedLeg, CommandRefused> {
        if self.ended.is_some() {
            return Err(CommandRefused::Ending);
        }
        if !self.answered || self.answer_with.is_some() {
            return Err(CommandRefused::NotAnswered);
        }
        if self.conf_mode || self.conference.is_some() {
            return Err(CommandRefused::InConference);
        }
        if self.reinviting.contains_key(&0) {
            return Err(CommandRefused::LegBusy);
        }
        let Some(id) = self.leg.id() else {
            return Err(CommandRefused::LegEnded);
        };
        let Some(owner) = self.held.owner_of(id) else {
            return Err(CommandRefused::LegEnded);
        };
        // Held by a command here: resumed (re-INVITE sendrecv), as its new call knows nothing
        // of the hold.
        if self
            .current_bridge_room()
            .is_some_and(|r| r.is_held(Side::Caller))
        {
            let _ = self.control(ControlCommand::Unhold { leg: Some(0) });
        }
        // Nothing of this call plays to, listens to or bridges the leg any more.
        if let Some((_, s)) = self.stream.take() {
            let _ = s.send(crate::stream::StreamControl::Stop);
        }
        if let Some(stop) = self.listening.take() {
            let _ = stop.send(());
        }
        self.flow.stop();
        self.forget_holds();
        self.end_bridge_attempts(Some(HangupCause::NormalClearing));
        self.stop_ringback();
        self.bridge = None;
        self.media.stop_play();
        self.playing = None;
        // The leg, its media and its digits go; this call keeps handles that command nothing.
        let detached = self.media.detached();
        let media = std::mem::replace(&mut self.media, detached);
        // (A first leg handed over by another call reports its media's events itself.)
        let (_, closed) = mpsc::channel(1);
        let media_events = std::mem::replace(&mut self.media_events, closed);
        self.media_gone = true;
        self.held.release(id);
        let epoch = crate::leg::Owner {
            id: owner.id,
            epoch: owner.epoch + 1,
        };
        let handle = match std::mem::replace(&mut self.leg, CallerLeg::Moved) {
            CallerLeg::Inbound(l) => {
                let reinviter = l.reinviter();
                crate::leg::adapt(
                    id,
                    l,
                    reinviter,
                    epoch,
                    inbound_as_attempt,
                    Some((media_events, AttemptEvent::from_media)),
                )
            }
            CallerLeg::Outbound(l) => {
                let reinviter = l.reinviter();
                crate::leg::adapt(
                    id,
                    l,
                    reinviter,
                    epoch,
                    outbound_as_attempt,
                    Some((media_events, AttemptEvent::from_media)),
                )
            }
            CallerLeg::Party(l) => l,
            CallerLeg::Moved => return Err(CommandRefused::LegEnded),
        };
        let first = &self.legs[0];
        // Where the leg goes: the party's own number (a registered phone's user).
        let (destination_type, destination) = if self.direction == "inbound" {
            match &self.authenticated_user {
                Some(user) => (Some(DestinationType::SipUser.as_str().into()), user.clone()),
                None => (None, self.caller.clone()),
            }
        } else {
            (first.destination_type.clone(), first.destination.clone())
        };
        let record = LegRecord {
            direction: first.direction,
            destination_type,
            destination,
            start: first.start,
            answer: first.answer.or(self.answer_time),
            end: None,
            sip_status: first.sip_status,
            cause: None,
        };
        let moved = MovedLeg {
            attempt: Attempt {
                media,
                sdp: self.sdp.clone(),
                leg: handle,
                sip_call_id: self.sip_call_id.clone(),
                started: Instant::now(),
                answered_at: Some(self.answered_at.unwrap_or_else(Instant::now)),
                remote_te: self.offer.telephone_event_pt,
                remote: Some(self.offer.clone()),
                state: LegState::Answered,
            },
            owner: epoch,
            record,
        };
        info!(call = %self.uuid, to_call, "first leg handed over");
        self.flow
            .set_variable("transferred_to_call", to_call.to_string());
        self.emit_for(
            0,
            EventKind::Transferred {
                mode: "moved",
                from_leg: Some(0),
                to: to_call.to_string(),
                to_type: "CALL".into(),
            },
        );
        if let Some(l) = self.legs.first_mut() {
            l.end = Some(now_utc());
            l.cause = Some(HangupCause::NormalClearing);
        }
        self.ended = Some((HangupCause::NormalClearing, HangupBy::Moved, Some(200)));
        Ok(moved)
    }

    /// [`CallCommand::ReleaseLeg`] of the connected callee: lets it go to call `to_call`
    /// without hanging it up (`call.transferred` with `mode`, if one is given); the bridge
    /// then ends as if that callee had left.
    pub(super) fn release_connected(
        &mut self,
        to_call: &str,
        mode: Option<&'static str>,
    ) -> Result<MovedLeg, CommandRefused> {
        if self.ended.is_some() {
            return Err(CommandRefused::ConsultGone);
        }
        if self.bridged_callee().is_none() {
            return Err(CommandRefused::ConsultNotConnected);
        }
        self.end_supervision(HangupCause::NormalClearing);
        self.forget_holds();
        self.end_bridge_room();
        self.media.unbridge();
        let Some(b) = self.bridge.as_mut() else {
            return Err(CommandRefused::ConsultNotConnected);
        };
        let Some(winner) = b.connected else {
            return Err(CommandRefused::ConsultNotConnected);
        };
        let Some(slot) = b.slots.get_mut(winner.0 as usize) else {
            return Err(CommandRefused::ConsultNotConnected);
        };
        let Some(attempt) = slot.live.take() else {
            return Err(CommandRefused::ConsultNotConnected);
        };
        let record = slot.record;
        let Some(owner) = b.mailbox.owner_of(attempt.leg.id) else {
            slot.live = Some(attempt);
            return Err(CommandRefused::ConsultNotConnected);
        };
        b.mailbox.release(attempt.leg.id);
        b.bridged = None;
        let moved = MovedLeg {
            owner,
            record: LegRecord {
                direction: "outbound",
                destination_type: self.legs[record].destination_type.clone(),
                destination: self.legs[record].destination.clone(),
                start: self.legs[record].start,
                answer: self.legs[record].answer,
                end: None,
                sip_status: self.legs[record].sip_status,
                cause: None,
            },
            attempt,
        };
        info!(call = %self.uuid, to_call, "connected party handed over");
        self.flow
            .set_variable("transferred_to_call", to_call.to_string());
        if let Some(mode) = mode {
            self.emit_for(
                record,
                EventKind::Transferred {
                    mode,
                    from_leg: Some(record as u32),
                    to: to_call.to_string(),
                    to_type: "CALL".into(),
                },
            );
        }
        self.emit(EventKind::Unbridged);
        // As if it had left: its record ends, the dial is over, the plan decides (a BRIDGE
        // that connected ends the call).
        if let Some(b) = self.bridge.as_mut() {
            b.dial
                .handle_input(DialInput::RemoteBye { attempt: winner }, Instant::now());
        }
        self.run_dial();
        Ok(moved)
    }

    /// [`CallCommand::AdoptForTransfer`]: `moved` takes the place of leg `from` (the connected
    /// callee), whose leg ends; a caller this call held is resumed.
    pub(super) fn adopt_for_transfer(
        &mut self,
        moved: MovedLeg,
        from: Option<u32>,
        consult: &str,
    ) -> Result<CallInfo, CommandRefused> {
        let moved = moved.admitted(
            self.ended
                .map_or(Ok(()), |_| Err(CommandRefused::Ending))
                .and_then(|()| self.check_transfer(from)),
        )?;
        // The caller was held while its agent consulted: it talks to the new party now.
        if self
            .current_bridge_room()
            .is_some_and(|r| r.is_held(Side::Caller))
        {
            let _ = self.control(ControlCommand::Unhold { leg: Some(0) });
        }
        self.end_supervision(HangupCause::NormalClearing);
        self.end_bridge_room();
        let from_leg = self.connected_record().map(|r| r as u32);
        let record = self.legs.len();
        let MovedLeg {
            attempt,
            owner,
            record: leg_record,
        } = moved;
        self.legs.push(leg_record);
        let Some(b) = self.bridge.as_mut() else {
            attempt.leg.hangup(None);
            return Err(CommandRefused::NotConnected);
        };
        let Some(new) = b
            .dial
            .replace_winner(Some(HangupCause::NormalClearing.reason_header()))
        else {
            attempt.leg.hangup(None);
            return Err(CommandRefused::NotConnected);
        };
        b.adopted.push((attempt.leg.id, new));
        let gone = crate::leg::arrive(&attempt.leg, owner, &mut b.mailbox, b.events_tx.clone());
        self.media.bridge(&attempt.media);
        b.put_slot(new, record, Some(attempt));
        b.connected = Some(new);
        b.bridged = Some(new);
        info!(call = %self.uuid, consult, "attended transfer completed");
        self.flow
            .set_variable("transferred_to_call", consult.to_string());
        self.run_dial();
        if gone {
            if let Some(b) = self.bridge.as_mut() {
                b.dial
                    .handle_input(DialInput::RemoteBye { attempt: new }, Instant::now());
            }
            self.run_dial();
        }
        self.emit_for(
            0,
            EventKind::Transferred {
                mode: "attended",
                from_leg,
                to: consult.to_string(),
                to_type: "CALL".into(),
            },
        );
        let destination = self.destination_of(record).unwrap_or_default();
        let destination_type = self
            .legs
            .get(record)
            .and_then(|l| l.destination_type.clone());
        self.emit_for(
            record,
            EventKind::Bridged {
                destination,
                destination_type,
            },
        );
        Ok(self.snapshot())
    }

    /// Whether a transfer from leg `from` (default: the connected callee) can apply now.
    pub(super) fn check_transfer(&self, from: Option<u32>) -> Result<(), CommandRefused> {
        match self.side_of(from.or(self.connected_record().map(|r| r as u32)))? {
            Side::Caller => Err(CommandRefused::TransferFromFirstLeg),
            Side::Callee => Ok(()),
        }
    }
}
