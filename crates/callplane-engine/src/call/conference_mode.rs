//! A call turned into a conference on the fly (`POST …/conference`): its two parties move
//! from their bridge into the tenant's conference room `call-<call id>`, where participants
//! dialled through the API (each a call of its own running a CONFERENCE block) join them. The
//! call's plan is over; the call lives as long as one of its two legs is in the conference, so
//! its owner (or either party) may leave while the others go on. Participant commands (mute,
//! hold, remove) act on a leg's seat, whichever call holds it.

use super::*;
use crate::registry::ControlCommand;

impl Call {
    /// The name of the conference this call turns into.
    pub(super) fn conference_name_of(call: &str) -> String {
        format!("call-{call}")
    }

    /// [`ControlCommand::MakeConference`]: both parties move into the conference room; `owner`
    /// (default: the connected callee) is marked as its owner.
    pub(super) fn make_conference(&mut self, owner: Option<u32>) -> Result<(), CommandRefused> {
        let callee = self
            .connected_record()
            .ok_or(CommandRefused::NotConnected)?;
        let owner = owner.unwrap_or(callee as u32);
        match self.side_of(Some(owner))? {
            Side::Caller | Side::Callee => {}
        }
        let Some(callee_media) = self.bridged_callee().map(|a| a.media.clone()) else {
            return Err(CommandRefused::NotConnected);
        };
        self.end_supervision(HangupCause::NormalClearing);
        self.end_bridge_room();
        self.flow.stop();
        self.conf_mode = true;
        // The pair no longer talks through the bridge: bridge commands no longer apply.
        self.media.unbridge();
        if let Some(b) = self.bridge.as_mut() {
            b.bridged = None;
        }
        let name = Self::conference_name_of(&self.uuid);
        info!(call = %self.uuid, conference = %name, "turned into a conference");
        let callee_party = self.destination_of(callee).unwrap_or_default();
        for (leg, party, media) in [
            (0u32, self.caller.clone(), self.media.clone()),
            (callee as u32, callee_party, callee_media),
        ] {
            let joined = self.svc.conferences.join(crate::conference::Joining {
                tenant: &self.tenant.name,
                name: &name,
                call: &self.uuid,
                leg,
                party,
                max_participants: MAX_ON_THE_FLY,
                end_on_exit: false,
                owner: leg == owner,
                inputs: self.inputs_tx.clone(),
            });
            let Ok(room) = joined else { continue };
            let member = room.add_leg(&media, Audience::All, Audience::All);
            let seat = ConferenceSeat {
                name: name.clone(),
                room,
                member,
                leg,
                heard_by: Audience::All,
                muted: false,
                hold: None,
            };
            self.emit_for(
                leg as usize,
                EventKind::ConferenceJoined {
                    conference: name.clone(),
                    muted: false,
                    listen_only: false,
                },
            );
            if leg == 0 {
                self.conference = Some(seat);
            } else {
                self.callee_seat = Some(seat);
            }
        }
        Ok(())
    }

    /// The seat of leg `leg` (default 0), if it sits in a conference.
    pub(super) fn seat_mut(&mut self, leg: Option<u32>) -> Option<&mut ConferenceSeat> {
        let leg = leg.unwrap_or(0);
        if self.conference.as_ref().is_some_and(|s| s.leg == leg) {
            return self.conference.as_mut();
        }
        self.callee_seat.as_mut().filter(|s| s.leg == leg)
    }

    /// Whether leg `leg` sits in a conference.
    pub(super) fn has_seat(&self, leg: Option<u32>) -> bool {
        let leg = leg.unwrap_or(0);
        self.conference.as_ref().is_some_and(|s| s.leg == leg)
            || self.callee_seat.as_ref().is_some_and(|s| s.leg == leg)
    }

    /// A command on a leg that sits in a conference (hold, mute, remove).
    pub(super) fn seat_command(&mut self, cmd: &ControlCommand) -> Result<(), CommandRefused> {
        let music = self.svc.music_on_hold.clone();
        let (tenant, uuid) = (self.tenant.name.clone(), self.uuid.clone());
        let (leg, on, hold) = match *cmd {
            ControlCommand::Hold { leg } => (leg, true, true),
            ControlCommand::Unhold { leg } => (leg, false, true),
            ControlCommand::Mute { leg } => (leg, true, false),
            ControlCommand::Unmute { leg } => (leg, false, false),
            ControlCommand::Remove { leg } => return self.remove_from_conference(leg),
            _ => return Err(CommandRefused::NotAParty),
        };
        let Some(seat) = self.seat_mut(leg) else {
            return Err(CommandRefused::NotAParty);
        };
        if hold {
            match (on, seat.hold.is_some()) {
                (true, true) => return Err(CommandRefused::AlreadyHeld),
                (false, false) => return Err(CommandRefused::NotHeld),
                _ => {}
            }
            if on {
                let player = seat.room.play_looped(music, Audience::only([seat.member]));
                seat.hold = Some(player);
                seat.room
                    .set_rules(seat.member, Audience::None, Audience::only([player]));
            } else if let Some(player) = seat.hold.take() {
                seat.room.remove(player);
                seat.room
                    .set_rules(seat.member, seat.heard_by.clone(), Audience::All);
            }
        } else {
            match (on, seat.muted) {
                (true, true) => return Err(CommandRefused::AlreadyMuted),
                (false, false) => return Err(CommandRefused::NotMuted),
                _ => {}
            }
            seat.muted = on;
            seat.room.set_muted(seat.member, on);
        }
        let (index, name, muted, held) =
            (seat.leg, seat.name.clone(), seat.muted, seat.hold.is_some());
        self.svc
            .conferences
            .set_flags(&tenant, &name, &uuid, index, muted, held);
        info!(call = %uuid, leg = index, on, hold, "conference participant command");
        if hold {
            self.reinvite_party(index as usize, on);
        } else {
            let party = if index == 0 {
                Party::Caller
            } else {
                Party::Callee
            };
            self.emit_for(index as usize, EventKind::Muted { party, muted: on });
        }
        Ok(())
    }

    /// `DELETE /v1/conferences/{name}/participants/{leg}`: the leg is hung up and leaves.
    fn remove_from_conference(&mut self, leg: Option<u32>) -> Result<(), CommandRefused> {
        let leg = leg.unwrap_or(0);
        if !self.has_seat(Some(leg)) {
            return Err(CommandRefused::NotAParty);
        }
        info!(call = %self.uuid, leg, "removed from the conference");
        if leg == 0 {
            if self.conf_mode {
                self.bye_done = Some(
                    self.leg
                        .hangup(Some(HangupCause::NormalClearing.reason_header())),
                );
                self.caller_left_conference(HangupCause::NormalClearing);
            } else {
                // A CONFERENCE block's caller: its call ends (a BYE), whatever its plan has
                // after the block.
                self.leave_conference();
                self.flow.end_call(HangupCause::NormalClearing);
            }
        } else {
            if let Some(attempt) = self.bridge.as_ref().and_then(|b| b.connected) {
                self.hangup_attempt(attempt, Some(HangupCause::NormalClearing.reason_header()));
            }
            self.callee_left_conference(HangupCause::NormalClearing);
        }
        Ok(())
    }

    /// In a conference call, the caller's leg is gone (it hung up, or was removed): the call
    /// goes on while its callee is still in the conference. Whether that was the case.
    pub(super) fn caller_left_conference(&mut self, cause: HangupCause) -> bool {
        if !self.conf_mode || self.caller_gone {
            return self.caller_gone;
        }
        self.caller_gone = true;
        self.leave_conference();
        self.set_caller_state(LegState::Ended);
        if let Some(l) = self.legs.first_mut() {
            l.end = Some(now_utc());
            l.cause = Some(cause);
        }
        if self.callee_seat.is_none() {
            self.ended = Some((cause, HangupBy::Caller, Some(200)));
        }
        true
    }

    /// In a conference call, the callee's leg is gone: it leaves the conference; the call
    /// ends when its caller is gone too.
    pub(super) fn callee_left_conference(&mut self, cause: HangupCause) {
        if let Some(seat) = self.callee_seat.take() {
            if let Some(l) = self
                .legs
                .get_mut(seat.leg as usize)
                .filter(|l| l.end.is_none())
            {
                l.end = Some(now_utc());
                l.cause = Some(cause);
            }
            self.vacate(seat);
        }
        if self.caller_gone || self.conference.is_none() {
            self.ended = Some((cause, HangupBy::Callee, Some(200)));
        }
    }
}

/// At most this many participants in a conference made on the fly.
const MAX_ON_THE_FLY: u32 = 1000;
