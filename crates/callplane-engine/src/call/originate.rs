//! Calls the API places (`POST /v1/calls`; callback and click-to-dial build on it): dial one
//! destination and, once it answers, run a block list for it as a session — the same Call
//! actor as an inbound call, its first leg being the party we reached.
//!
//! Until the answer, a small loop owns the call: it reports `call.ringing`, answers snapshots
//! and hang-up commands (a CANCEL) and the ring timeout, and never awaits the dialog inline
//! (the outbound leg is a task of its own from the start, as BRIDGE's legs are).

use super::*;

/// A call to place: `destination` is dialled showing `caller_id`; when it answers, `blocks`
/// run for it (a BRIDGE in them connects it to a second party).
#[derive(Debug, Clone)]
pub struct Originate {
    pub tenant: Tenant,
    pub destination_type: DestinationType,
    pub destination: String,
    /// The number the called party sees (From user).
    pub caller_id: String,
    /// The From display name (`anonymous` when the caller ID is withheld).
    pub from_display: Option<String>,
    /// More INVITE headers (auto-answer's Call-Info / Alert-Info, Privacy).
    pub headers: Vec<(String, String)>,
    /// How long the destination may ring.
    pub ring_timeout: Duration,
    pub blocks: Vec<Block>,
    /// Where call-state callbacks go (else the tenant's).
    pub callstate_url: Option<String>,
    /// The tenant number the call is about (the CDR's `number`), if any.
    pub number: Option<String>,
    /// SIP users the call is made for (its lines, for realms and subscriptions).
    pub lines: Vec<String>,
    /// Variables the blocks start with (`billing_account`, `callback_id`, …).
    pub variables: Vec<(String, String)>,
    /// How the session's BRIDGE blocks present the call to the second party.
    pub bridge_as: BridgeIdentity,
    /// The call's id, when the caller chose it (to name it in the variables it starts
    /// with); else a new one.
    pub call_uuid: Option<uuid::Uuid>,
}

/// What the pre-answer loop knows, for snapshots.
struct Dialling {
    uuid: String,
    sip_call_id: String,
    req: Originate,
    start: DateTime<Utc>,
    state: LegState,
    lines: Vec<String>,
}

impl Dialling {
    fn info(&self) -> CallInfo {
        CallInfo {
            id: self.uuid.clone(),
            sip_call_id: self.sip_call_id.clone(),
            tenant: self.req.tenant.name.clone(),
            direction: "outbound",
            from: self.req.caller_id.clone(),
            to: self.req.destination.clone(),
            number: self.req.number.clone().unwrap_or_default(),
            lines: self.lines.clone(),
            state: self.state.as_str(),
            bridged_to: None,
            conference: None,
            recording: None,
            start_time: self.start,
            answer_time: None,
            legs: vec![LegInfo {
                id: leg_id(&self.uuid, 0),
                index: 0,
                party: "caller",
                direction: "outbound",
                destination_type: Some(self.req.destination_type.as_str().into()),
                destination: self.req.destination.clone(),
                state: self.state.as_str(),
                start_time: self.start,
                answer_time: None,
                end_time: None,
                sip_status: None,
                hangup_cause: None,
                held: false,
                muted: false,
            }],
            variables: self.req.variables.iter().cloned().collect(),
        }
    }
}

/// Registers the call (so the API sees and can end it at once) and returns it as it starts
/// (`calling`); the call then runs on its own task.
pub fn run_outbound_call(svc: Arc<CallServices>, req: Originate) -> CallInfo {
    let uuid = req.call_uuid.unwrap_or_else(uuid::Uuid::new_v4);
    let id = uuid.to_string();
    let mut lines = req.lines.clone();
    if req.destination_type == DestinationType::SipUser && !lines.contains(&req.destination) {
        lines.push(req.destination.clone());
    }
    let d = Dialling {
        uuid: id.clone(),
        sip_call_id: String::new(),
        lines,
        req,
        start: now_utc(),
        state: LegState::Calling,
    };
    let info = d.info();
    let (commands_tx, commands) = mpsc::unbounded_channel();
    svc.calls.insert(
        &id,
        CallHandle {
            tenant: d.req.tenant.name.clone(),
            number: d.req.number.clone().unwrap_or_default(),
            commands: commands_tx,
        },
    );
    svc.active_calls.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(originate(svc, d, uuid, commands));
    info
}

async fn originate(
    svc: Arc<CallServices>,
    mut d: Dialling,
    uuid: uuid::Uuid,
    mut commands: mpsc::UnboundedReceiver<CallCommand>,
) {
    let _guard = ActiveGuard(svc.clone());
    let start = d.start;
    let id = uuid.to_string();
    let req = &d.req;
    let mut events = CallEvents::new(
        svc.events.clone(),
        id.clone(),
        Some(req.tenant.name.clone()),
    );
    if let Some(n) = &req.number {
        events.set_number(n);
    }
    for l in &d.lines {
        events.add_line(l);
    }
    register_callstate(&svc, &req.tenant, &id, req.callstate_url.clone());
    info!(call = %id, destination = %req.destination, kind = req.destination_type.as_str(),
          tenant = %req.tenant.name, "placing a call for the API");
    events.publish(EventKind::Created {
        from: req.caller_id.clone(),
        to: req.destination.clone(),
        tenant: req.tenant.name.clone(),
    });
    let deadline = tokio::time::Instant::now() + d.req.ring_timeout;

    // The INVITE goes out from a launch task (look-ups, DNS, port, INVITE).
    let job = LaunchJob {
        svc: svc.clone(),
        tenant: d.req.tenant.clone(),
        caller: d.req.caller_id.clone(),
        called: d.req.destination.clone(),
        forward_ani: true,
        kind: d.req.destination_type,
        destination: d.req.destination.clone(),
        from_display: d.req.from_display.clone(),
        extra_headers: d.req.headers.clone(),
    };
    let mut launch = tokio::spawn(job.run());
    let launched = loop {
        tokio::select! {
            r = &mut launch => break r.map_err(|e| (500, e.to_string())).and_then(|r| r),
            Some(cmd) = commands.recv() => {
                if let Some(cause) = dialling_command(&d, cmd) {
                    abandon_launch(&mut launch, cause).await;
                    return finish_unanswered(&svc, &mut d, &mut events, cause, HangupBy::Api, None);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                abandon_launch(&mut launch, HangupCause::NoAnswer).await;
                return finish_unanswered(&svc, &mut d, &mut events, HangupCause::NoAnswer, HangupBy::System, Some(408));
            }
            _ = svc.shutdown.cancelled() => {
                let cause = HangupCause::NormalTemporaryFailure;
                abandon_launch(&mut launch, cause).await;
                return finish_unanswered(&svc, &mut d, &mut events, cause, HangupBy::System, None);
            }
        }
    };
    let Launched {
        leg,
        media,
        sdp: mut local_sdp,
    } = match launched {
        Ok(l) => l,
        Err((status, why)) => {
            info!(call = %id, status, %why, "the call could not be placed");
            let cause = HangupCause::from_sip_status(status);
            return finish_unanswered(
                &svc,
                &mut d,
                &mut events,
                cause,
                HangupBy::System,
                Some(status),
            );
        }
    };
    d.sip_call_id = leg.call_id().to_string();
    let mut media = media;
    let Some(media_events) = media.take_events() else {
        warn!("media leg without event channel");
        return finish_unanswered(
            &svc,
            &mut d,
            &mut events,
            HangupCause::NormalTemporaryFailure,
            HangupBy::System,
            None,
        );
    };
    // The leg is a task from now on; the session will own it in epoch 1.
    let mut held = Mailbox::new(svc.next_owner.fetch_add(1, Ordering::Relaxed));
    let leg_id = LegId(svc.next_leg.fetch_add(1, Ordering::Relaxed));
    let (out_tx, mut out_events) = mpsc::unbounded_channel::<Addressed<OutboundEvent>>();
    let media_handle = media.handle();
    let handle = spawn_outbound(
        leg_id,
        leg,
        media,
        held.adopt(leg_id, 1),
        out_tx,
        |e| e,
        None,
    );
    let ringing_state = |early: bool| {
        if early {
            LegState::EarlyMedia
        } else {
            LegState::Ringing
        }
    };
    let answer_sdp = loop {
        tokio::select! {
            ev = out_events.recv() => {
                let Some((_, ev)) = ev.and_then(|a| held.accept(a)) else {
                    // The dialog is gone without an outcome.
                    return finish_unanswered(&svc, &mut d, &mut events, HangupCause::NormalTemporaryFailure, HangupBy::System, None);
                };
                match ev {
                    OutboundEvent::Ringing { sdp, .. } => {
                        let state = ringing_state(sdp.is_some());
                        if d.state != state {
                            let was = d.state;
                            d.state = state;
                            if was == LegState::Calling {
                                events.publish_for(Some(0), EventKind::Ringing { early_media: sdp.is_some() });
                            }
                            for e in leg_state_events(Party::Caller, None, None, was, state) {
                                events.publish_for(Some(0), e);
                            }
                        }
                    }
                    OutboundEvent::Answered { sdp } => break sdp,
                    OutboundEvent::Failed { status } => {
                        let cause = HangupCause::from_sip_status(status);
                        return finish_unanswered(&svc, &mut d, &mut events, cause, HangupBy::Callee, Some(status));
                    }
                    OutboundEvent::RemoteBye => {
                        return finish_unanswered(&svc, &mut d, &mut events, HangupCause::NormalClearing, HangupBy::Callee, None);
                    }
                    OutboundEvent::Dtmf(_) | OutboundEvent::ReferProgress(_) => {}
                    OutboundEvent::Reinvite { responder, .. } => responder.reject(491).await,
                }
            }
            Some(cmd) = commands.recv() => {
                if let Some(cause) = dialling_command(&d, cmd) {
                    handle.hangup(Some(cause.reason_header()));
                    return finish_unanswered(&svc, &mut d, &mut events, cause, HangupBy::Api, None);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                handle.hangup(Some(HangupCause::NoAnswer.reason_header()));
                return finish_unanswered(&svc, &mut d, &mut events, HangupCause::NoAnswer, HangupBy::System, Some(408));
            }
            _ = svc.shutdown.cancelled() => {
                let cause = HangupCause::NormalTemporaryFailure;
                handle.hangup(Some(cause.reason_header()));
                return finish_unanswered(&svc, &mut d, &mut events, cause, HangupBy::System, None);
            }
        }
    };
    // Answered: the remote's description is what the session answers re-INVITEs against.
    let Some(offer) = answer_sdp.as_deref().and_then(|s| negotiate_sdp(s).ok()) else {
        info!(call = %id, "the answer had no usable SDP");
        handle.hangup(Some(HangupCause::IncompatibleDestination.reason_header()));
        return finish_unanswered(
            &svc,
            &mut d,
            &mut events,
            HangupCause::IncompatibleDestination,
            HangupBy::System,
            Some(488),
        );
    };
    local_sdp.agreed(&offer);
    media_handle.set_remote(RemoteMedia::from(&offer));
    media_handle.set_inband_detection(offer.telephone_event_pt.is_none());
    media_handle.set_fill_silence(true);
    let answered_at = (now_utc(), Instant::now());
    // The session reads the leg's events as a caller's.
    let (leg_tx, leg_events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(a) = out_events.recv().await {
            let event = match a.event {
                OutboundEvent::RemoteBye => InboundEvent::RemoteBye,
                OutboundEvent::Failed { status } => {
                    InboundEvent::Failed(format!("the dialog failed ({status})"))
                }
                OutboundEvent::Dtmf(c) => InboundEvent::Dtmf(c),
                OutboundEvent::ReferProgress(p) => InboundEvent::ReferProgress(p),
                OutboundEvent::Reinvite { sdp, responder } => {
                    InboundEvent::Reinvite { sdp, responder }
                }
                OutboundEvent::Ringing { .. } | OutboundEvent::Answered { .. } => {
                    InboundEvent::Confirmed
                }
            };
            let addressed = Addressed {
                leg: a.leg,
                owner: a.owner,
                event,
            };
            if leg_tx.send(addressed).is_err() {
                return;
            }
        }
    });
    let mut vars = CallVariables::new(
        uuid,
        d.sip_call_id.clone(),
        d.req.caller_id.clone(),
        d.req.destination.clone(),
        start,
    );
    for (k, v) in &d.req.variables {
        let _ = vars.set(k.clone(), v.clone());
    }
    // The called party answered before the session starts.
    vars.set_answered(now_utc());
    let blocks = std::mem::take(&mut d.req.blocks);
    let flow = CallFlow::new(blocks, vars)
        .with_max_call_control_loops(svc.max_call_control_loops)
        .with_ask_url_ring_seconds(svc.ask_url_ring_seconds);
    let number = Number {
        number: d.req.number.clone().unwrap_or_default(),
        tenant: d.req.tenant.name.clone(),
        routing_plan: String::new(),
        callstate_info_url: d.req.callstate_url.clone(),
    };
    let was = d.state;
    let mut c = SessionStart {
        bridge_as: d.req.bridge_as.clone(),
        uuid: id.clone(),
        sip_call_id: d.sip_call_id.clone(),
        tenant: d.req.tenant.clone(),
        number,
        caller: d.req.caller_id.clone(),
        called: d.req.destination.clone(),
        authenticated_user: None,
        leg: CallerLeg::Outbound(handle),
        direction: "outbound",
        leg_events,
        held,
        caller_state: was,
        media: media_handle,
        media_events,
        sdp: local_sdp,
        offer,
        flow,
        first_leg: LegRecord {
            direction: "outbound",
            destination_type: Some(d.req.destination_type.as_str().into()),
            destination: d.req.destination.clone(),
            start,
            answer: Some(answered_at.0),
            end: None,
            sip_status: Some(200),
            cause: None,
        },
        start,
        answered: Some(answered_at),
        commands,
        events,
    }
    .into_call(svc.clone());
    c.emit_for(0, EventKind::Answered);
    c.set_caller_state(LegState::Answered);
    c.run().await;
    svc.calls.remove(&id);
}

/// Gives up a launch task: stopped if it has not placed the INVITE yet, else the INVITE it
/// placed is cancelled (on a task of its own: the CANCEL's transaction is not awaited here).
async fn abandon_launch(
    launch: &mut tokio::task::JoinHandle<Result<Launched, (u16, String)>>,
    cause: HangupCause,
) {
    launch.abort();
    if let Ok(Ok(l)) = launch.await {
        let mut leg = l.leg;
        tokio::spawn(async move { leg.hangup(Some(cause.reason_header())).await });
    }
}

/// A command while the call is still being placed: snapshots are answered here; a hang-up
/// returns its cause (the caller then cancels and records the call).
fn dialling_command(d: &Dialling, cmd: CallCommand) -> Option<HangupCause> {
    match cmd {
        CallCommand::Snapshot { reply } => {
            let _ = reply.send(d.info());
            None
        }
        CallCommand::Hangup { cause, reply } => {
            let mut info = d.info();
            info.state = LegState::Ending.as_str();
            let _ = reply.send(Ok(info));
            Some(cause)
        }
        CallCommand::SendDtmf { reply, .. }
        | CallCommand::Control { reply, .. }
        | CallCommand::RunBlocks { reply, .. } => {
            let _ = reply.send(Err(CommandRefused::NotAnswered));
            None
        }
        CallCommand::Interrupt | CallCommand::ReleaseClaim { .. } => None,
        CallCommand::Claim { reply, .. } => {
            let _ = reply.send(Err(CommandRefused::NotOffered));
            None
        }
        CallCommand::ReleaseLeg { leg, reply, .. } => {
            let why = match leg {
                Some(0) => CommandRefused::NotAnswered,
                _ => CommandRefused::ConsultNotConnected,
            };
            let _ = reply.send(Err(why));
            None
        }
        CallCommand::AdoptSupervisor { leg, reply, .. }
        | CallCommand::HandOffWith { leg, reply, .. } => {
            leg.hang_up();
            let _ = reply.send(Err(CommandRefused::NotAnswered));
            None
        }
        CallCommand::AdoptForTransfer { leg, reply, .. } => {
            leg.hang_up();
            let _ = reply.send(Err(CommandRefused::NotAnswered));
            None
        }
        CallCommand::PlayIntoBridge { reply, .. } => {
            let _ = reply.send(Err(PlayRefused::NotConnected));
            None
        }
    }
}

/// The call ended before it was answered: its events and CDR.
fn finish_unanswered(
    svc: &CallServices,
    d: &mut Dialling,
    events: &mut CallEvents,
    cause: HangupCause,
    by: HangupBy,
    status: Option<u16>,
) {
    let end = now_utc();
    if !d.state.is_ended() {
        let was = d.state;
        d.state = LegState::Ended;
        for e in leg_state_events(Party::Caller, None, None, was, LegState::Ended) {
            events.publish_for(Some(0), e);
        }
    }
    info!(call = %d.uuid, cause = cause.as_str(), by = by.as_str(), "call ended before answer");
    events.publish(EventKind::Hangup {
        cause,
        hangup_by: by.as_str(),
        sip_status: status,
        duration_ms: (end - d.start).num_milliseconds().max(0),
        talk_time_ms: 0,
    });
    let mut variables: std::collections::BTreeMap<String, String> =
        d.req.variables.iter().cloned().collect();
    variables.insert("call_uuid".into(), d.uuid.clone());
    variables.insert("caller_id_number".into(), d.req.caller_id.clone());
    variables.insert("destination_number".into(), d.req.destination.clone());
    write_cdr(
        events,
        Cdr {
            call_id: d.uuid.clone(),
            sip_call_id: d.sip_call_id.clone(),
            tenant: Some(d.req.tenant.name.clone()),
            number: d.req.number.clone().unwrap_or_default(),
            caller: d.req.caller_id.clone(),
            start_time: d.start,
            answer_time: None,
            end_time: end,
            talk_time_ms: 0,
            hangup_cause: cause.as_str().into(),
            hangup_by: by.as_str().into(),
            sip_status: status,
            recording_path: None,
            legs: vec![CdrLeg {
                leg_index: 0,
                direction: "outbound".into(),
                destination_type: Some(d.req.destination_type.as_str().into()),
                destination: d.req.destination.clone(),
                start_time: d.start,
                answer_time: None,
                end_time: end,
                sip_status: status,
                hangup_cause: cause.as_str().into(),
            }],
            variables,
            lines: d.lines.clone(),
            recordings: Vec::new(),
        },
    );
    svc.calls.finish(&d.uuid, d.lines.clone());
}
