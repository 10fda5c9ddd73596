//! Attended transfer (`POST …/transfer` with `consultCallId`): the consultation call hands its
//! connected party's leg over ([`MovedLeg`]), and this call puts that leg in the place of its
//! own connected callee (the agent), whose leg ends. The leg moves between the two sessions'
//! mailboxes in a new epoch, so nothing it reported to the consultation call reaches this one.

use super::*;
use crate::registry::ControlCommand;

/// A connected callee's leg on its way from one call to another: its dialog and media (the
/// leg's task keeps running), its session description and its record so far.
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
}

impl Call {
    /// [`CallCommand::ReleaseConnected`]: lets the connected callee go to call `to_call`
    /// without hanging it up; this call then ends as if that callee had left.
    pub(super) fn release_connected(&mut self, to_call: &str) -> Result<MovedLeg, CommandRefused> {
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
        info!(call = %self.uuid, to_call, "connected party handed over (attended transfer)");
        self.flow
            .set_variable("transferred_to_call", to_call.to_string());
        self.emit_for(
            record,
            EventKind::Transferred {
                mode: "attended",
                from_leg: Some(record as u32),
                to: to_call.to_string(),
                to_type: "CALL".into(),
            },
        );
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
        if let Err(why) = self
            .ended
            .map_or(Ok(()), |_| Err(CommandRefused::Ending))
            .and_then(|()| self.check_transfer(from))
        {
            moved.hang_up();
            return Err(why);
        }
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
        let here = crate::leg::moved(owner, b.mailbox.owner_id());
        b.mailbox.adopt(attempt.leg.id, here.epoch);
        b.adopted.push((attempt.leg.id, new));
        // A leg whose dialog ended before it could move is gone as it arrives.
        let gone = !attempt.leg.move_to(here, b.events_tx.clone());
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
