//! Transfer from a call's first leg (`POST …/transfer` with `from` = leg 0): the party on the
//! other side — the connected callee, e.g. the customer a click-to-dial agent reached — is
//! connected to the transfer's destination (blind) or to the consultation call's party
//! (attended), and the first leg ends.
//!
//! The callee's leg cannot stay in its call without that call's first leg (a session runs its
//! plan for its first leg), so it is handed over, answered, to a new call of its own: the
//! transferring call releases it without a BYE ([`MovedLeg`]), hangs up its first leg and
//! ends; the new call takes the leg as its first (`CallerLeg::Party`), and its plan is one
//! BRIDGE: to the destination (ringback meanwhile; if nobody answers, the call ends), or
//! already connected to the consultation call's party, handed in the same way. The new call
//! is the same tenant's and number's, with the variable `transferred_from_call`.

use super::*;

/// Whom the handed-over leg is connected to.
pub(super) enum Join {
    /// A destination the new call dials (blind transfer).
    Dial(crate::blocks::BridgeDestination),
    /// A party answered in the consultation call `consult`, handed in (attended transfer).
    Adopt { leg: Box<MovedLeg>, consult: String },
}

/// Where the handed-over leg goes, and what its new call inherits.
pub(super) struct HandOver {
    pub(super) uuid: uuid::Uuid,
    pub(super) moved: MovedLeg,
    /// The leg's negotiated description (its answer, or its latest re-INVITE's offer).
    pub(super) offer: Negotiated,
    pub(super) join: Join,
    pub(super) tenant: Tenant,
    pub(super) number: Number,
    /// The call it came from.
    pub(super) from_call: String,
}

/// A dialled party's SIP events as a first leg's.
fn as_first_leg(ev: OutboundEvent) -> InboundEvent {
    match ev {
        OutboundEvent::RemoteBye => InboundEvent::RemoteBye,
        OutboundEvent::Failed { status } => {
            InboundEvent::Failed(format!("the dialog failed ({status})"))
        }
        OutboundEvent::Dtmf(c) => InboundEvent::Dtmf(c),
        OutboundEvent::ReferProgress(p) => InboundEvent::ReferProgress(p),
        OutboundEvent::Reinvite { sdp, responder } => InboundEvent::Reinvite { sdp, responder },
        OutboundEvent::Ringing { .. } | OutboundEvent::Answered { .. } => InboundEvent::Confirmed,
    }
}

impl Call {
    /// [`ControlCommand::CheckHandOff`]: the connected callee can be handed to a new call.
    pub(super) fn check_hand_off(&self) -> Result<Negotiated, CommandRefused> {
        if self.ended.is_some() {
            return Err(CommandRefused::Ending);
        }
        if self.conf_mode {
            return Err(CommandRefused::InConference);
        }
        // A callee without a negotiated description cannot be answered for.
        let Some(offer) = self.bridged_callee().and_then(|c| c.remote.clone()) else {
            return Err(CommandRefused::NotConnected);
        };
        if self
            .connected_record()
            .is_some_and(|r| self.reinviting.contains_key(&r))
        {
            return Err(CommandRefused::LegBusy);
        }
        Ok(offer)
    }

    /// [`ControlCommand::Transfer`] from leg 0: the connected callee goes to a new call that
    /// dials `to`; this call's first leg is hung up and the call ends (`hangup_by = api`).
    pub(super) fn transfer_from_first_leg(
        &mut self,
        to: crate::blocks::BridgeDestination,
    ) -> Result<(), CommandRefused> {
        self.hand_off(Join::Dial(to))
    }

    /// [`CallCommand::HandOffWith`]: an attended transfer from leg 0 — the connected callee
    /// goes to a new call, connected there to `leg` (the consultation call `consult`'s party);
    /// this call's first leg is hung up and the call ends. Refused: `leg` is hung up.
    pub(super) fn attended_from_first_leg(
        &mut self,
        leg: MovedLeg,
        consult: String,
    ) -> Result<CallInfo, CommandRefused> {
        let leg = leg.admitted(self.check_hand_off())?;
        self.hand_off(Join::Adopt {
            leg: Box::new(leg),
            consult,
        })?;
        Ok(self.snapshot())
    }

    fn hand_off(&mut self, join: Join) -> Result<(), CommandRefused> {
        let offer = self.check_hand_off()?;
        let record = self.connected_record();
        let new_call = uuid::Uuid::new_v4();
        let uuid = new_call.to_string();
        // A callee held by a command here is resumed: the new call knows nothing of it.
        if self
            .current_bridge_room()
            .is_some_and(|r| r.is_held(Side::Callee))
        {
            let leg = record.map(|r| r as u32);
            let _ = self.control(crate::registry::ControlCommand::Unhold { leg });
        }
        let moved = self.release_connected(&uuid, None)?;
        info!(call = %self.uuid, new_call = %uuid,
              "transfer from the first leg: the callee goes to a new call");
        self.flow.set_variable("transferred_to_call", uuid.clone());
        let event = match &join {
            Join::Dial(to) => {
                self.flow
                    .set_variable("transferred_to", to.destination.clone());
                EventKind::Transferred {
                    mode: "blind",
                    from_leg: Some(0),
                    to: to.destination.clone(),
                    to_type: to.destination_type.as_str().into(),
                }
            }
            Join::Adopt { consult, .. } => EventKind::Transferred {
                mode: "attended",
                from_leg: Some(0),
                to: consult.clone(),
                to_type: "CALL".into(),
            },
        };
        self.emit_for(0, event);
        run_handed_over_call(
            self.svc.clone(),
            HandOver {
                uuid: new_call,
                moved,
                offer,
                join,
                tenant: self.tenant.clone(),
                number: self.number.clone(),
                from_call: self.uuid.clone(),
            },
        );
        // The first leg's part is over, whatever the plan would have done next.
        self.flow.stop();
        self.hang_up_now(HangupCause::NormalClearing, HangupBy::Api);
        Ok(())
    }
}

/// Registers the new call (the API sees it at once) and runs it on its own task.
fn run_handed_over_call(svc: Arc<CallServices>, h: HandOver) {
    let (commands_tx, commands) = mpsc::unbounded_channel();
    svc.calls.insert(
        &h.uuid.to_string(),
        CallHandle {
            tenant: h.tenant.name.clone(),
            number: h.number.number.clone(),
            commands: commands_tx,
        },
    );
    svc.active_calls.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(handed_over(svc, h, commands));
}

async fn handed_over(
    svc: Arc<CallServices>,
    h: HandOver,
    commands: mpsc::UnboundedReceiver<CallCommand>,
) {
    let _guard = ActiveGuard(svc.clone());
    let HandOver {
        uuid: call_uuid,
        moved,
        offer,
        join,
        tenant,
        number,
        from_call,
    } = h;
    // What the new call's one BRIDGE is to: the destination it dials, or the party handed in
    // (its destination as its record names it).
    let (to, adopt) = match join {
        Join::Dial(to) => (control::with_ring_timeout(to), None),
        Join::Adopt { leg, .. } => (leg.destination(), Some(*leg)),
    };
    let uuid = call_uuid.to_string();
    let (attempt, owner, record) = moved.into_parts();
    let start = now_utc();
    let mut events = CallEvents::new(svc.events.clone(), uuid.clone(), Some(tenant.name.clone()));
    events.set_number(&number.number);
    if record.destination_type.as_deref() == Some(DestinationType::SipUser.as_str()) {
        events.add_line(&record.destination);
    }
    register_callstate(&svc, &tenant, &uuid, number.callstate_info_url.clone());
    // The party is who calls now, the transfer's destination who is called.
    let caller = record.destination.clone();
    info!(call = %uuid, %caller, to = %to.destination, from_call = %from_call,
          tenant = %tenant.name, "call started (handed over by a transfer)");
    events.publish(EventKind::Created {
        from: caller.clone(),
        to: to.destination.clone(),
        tenant: tenant.name.clone(),
    });
    // The leg reports to this session from now on (its next epoch): its dialog's events as a
    // first leg's, its media's on their own channel.
    let mut held = Mailbox::new(svc.next_owner.fetch_add(1, Ordering::Relaxed));
    let leg_id = attempt.leg.id;
    let (party_tx, mut party_events) = mpsc::unbounded_channel::<Addressed<AttemptEvent>>();
    let (leg_tx, leg_events) = mpsc::unbounded_channel();
    let (media_tx, media_events) = mpsc::channel(64);
    let gone = crate::leg::arrive(&attempt.leg, owner, &mut held, party_tx);
    if let Some(here) = held.owner_of(leg_id).filter(|_| gone) {
        // Its dialog ended on the way: the session starts and ends at once.
        let _ = leg_tx.send(Addressed {
            leg: leg_id,
            owner: here,
            event: InboundEvent::RemoteBye,
        });
    }
    let relay = leg_tx.clone();
    tokio::spawn(async move {
        while let Some(a) = party_events.recv().await {
            let (leg, owner) = (a.leg, a.owner);
            let sent = match a.event {
                AttemptEvent::Sip(ev) => relay
                    .send(Addressed {
                        leg,
                        owner,
                        event: as_first_leg(ev),
                    })
                    .is_ok(),
                AttemptEvent::Digit { digit, source } => media_tx
                    .send(MediaEvent::Dtmf { digit, source })
                    .await
                    .is_ok(),
                AttemptEvent::Media(ev) => media_tx.send(ev).await.is_ok(),
            };
            if !sent {
                return;
            }
        }
    });
    drop(leg_tx);
    let sip_call_id = attempt.sip_call_id.clone();
    let mut vars = CallVariables::new(
        call_uuid,
        sip_call_id.clone(),
        caller.clone(),
        to.destination.clone(),
        start,
    );
    let _ = vars.set("transferred_from_call", from_call);
    vars.set_answered(start);
    let block = Block::Bridge(BridgeBlock {
        bridge_mode: crate::blocks::BridgeMode::Sequential,
        block_timeout: None,
        destinations: vec![to.clone()],
    });
    let flow = CallFlow::new(vec![block], vars)
        .with_max_call_control_loops(svc.max_call_control_loops)
        .with_ask_url_ring_seconds(svc.ask_url_ring_seconds);
    let mut c = SessionStart {
        bridge_as: BridgeIdentity::default(),
        uuid: uuid.clone(),
        sip_call_id,
        tenant,
        number,
        caller,
        called: to.destination,
        authenticated_user: None,
        direction: record.direction,
        first_leg: record,
        leg: CallerLeg::Party(attempt.leg),
        leg_events,
        held,
        caller_state: LegState::Answered,
        media: attempt.media,
        media_events,
        sdp: attempt.sdp,
        offer,
        flow,
        start,
        answered: Some((start, Instant::now())),
        commands,
        events,
    }
    .into_call(svc.clone());
    c.adopt_on_bridge = adopt;
    c.emit_for(0, EventKind::Answered);
    c.run().await;
    svc.calls.remove(&uuid);
}
