//! Commands on a connected call that change its room: hold and unhold (a re-INVITE toward the
//! held party and music on hold into it), mute and unmute, recording. The connected pair moves
//! into a [`BridgeRoom`] for them, and back to a plain bridge when nothing needs the room any
//! more (the room relays a plain pair on its fast path meanwhile).

use super::*;
use crate::registry::{ControlCommand, RecordingInfo};
use callplane_media::sdp::Direction;
use callplane_store::model::Recording;
use std::collections::HashMap;
use std::sync::Mutex;

/// One of the connected call's two parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Caller = 0,
    Callee = 1,
}

impl Side {
    fn party(self) -> Party {
        match self {
            Side::Caller => Party::Caller,
            Side::Callee => Party::Callee,
        }
    }
}

/// A connected bridge promoted to a mixing room, so that something besides the two parties
/// can be in it (prompts, music on hold, a recorder) or their rules differ from a plain bridge
/// (hold, mute).
pub(super) struct BridgeRoom {
    /// Which room of the call this is (its player reports name it).
    pub(super) id: u64,
    pub(super) room: Room,
    pub(super) attempt: AttemptId,
    /// The parties' members: `[caller, callee]`.
    pub(super) parties: [MemberId; 2],
    /// Prompts rendering for it.
    pub(super) rendering: u32,
    /// Prompt players playing in it.
    pub(super) prompts: Vec<MemberId>,
    /// Per party: its music-on-hold player while a command holds it.
    pub(super) hold: [Option<MemberId>; 2],
    pub(super) muted: [bool; 2],
    /// The supervisor's member and mode, once it answered.
    pub(super) supervisor: Option<(MemberId, crate::registry::SuperviseMode)>,
    recording: Option<RecordingRun>,
    /// Recordings of this room not finished yet, by recorder: completed into the store by
    /// the room's event task (also after the call is gone).
    pending: Arc<Mutex<HashMap<MemberId, Recording>>>,
}

/// The recording running in a bridge room.
struct RecordingRun {
    id: String,
    member: MemberId,
    /// A stereo recorder's right channel (the callee's).
    right: Option<MemberId>,
    stereo: bool,
    start: DateTime<Utc>,
}

impl BridgeRoom {
    /// Whether anything still needs the room (else the pair goes back to a plain bridge: a
    /// room would keep mixing two legs of different codecs, and the plain relay carries RFC
    /// 4733 digits).
    pub(super) fn needed(&self) -> bool {
        self.rendering > 0
            || !self.prompts.is_empty()
            || self.hold.iter().any(Option::is_some)
            || self.muted.iter().any(|m| *m)
            || self.recording.is_some()
            || self.supervisor.is_some()
    }

    pub(super) fn is_held(&self, side: Side) -> bool {
        self.hold[side as usize].is_some()
    }

    /// Sets the parties' rules: a held party is heard by nobody and hears only its music;
    /// the others hear everything their rules allow; a supervisor as its mode says.
    pub(super) fn apply_rules(&self) {
        self.apply_supervisor_rules();
        for side in [Side::Caller, Side::Callee] {
            let member = self.parties[side as usize];
            match self.hold[side as usize] {
                Some(music) => self
                    .room
                    .set_rules(member, Audience::None, Audience::only([music])),
                None => self.room.set_rules(member, Audience::All, Audience::All),
            }
            self.room.set_muted(member, self.muted[side as usize]);
        }
    }

    /// The callee's member changed (a supervisor took its place): a stereo recording's right
    /// channel follows it.
    pub(super) fn callee_replaced(&self) {
        if let Some(right) = self.recording.as_ref().and_then(|r| r.right) {
            self.room
                .set_rules(right, Audience::None, Audience::only([self.parties[1]]));
        }
    }

    fn info(&self) -> Option<RecordingInfo> {
        self.recording.as_ref().map(|r| RecordingInfo {
            id: r.id.clone(),
            stereo: r.stereo,
            start_time: r.start,
        })
    }
}

impl Call {
    /// Carries out a [`ControlCommand`]; answers with the call as it is then.
    pub(super) fn control(&mut self, cmd: ControlCommand) -> Result<CallInfo, CommandRefused> {
        if self.ended.is_some() {
            return Err(CommandRefused::Ending);
        }
        // A leg that sits in a conference is held, muted or removed there.
        if let ControlCommand::Hold { leg }
        | ControlCommand::Unhold { leg }
        | ControlCommand::Mute { leg }
        | ControlCommand::Unmute { leg }
        | ControlCommand::Remove { leg } = &cmd
        {
            if self.has_seat(*leg) || matches!(cmd, ControlCommand::Remove { .. }) {
                self.seat_command(&cmd)?;
                return Ok(self.snapshot());
            }
        }
        if self.conf_mode {
            // Its legs sit in the conference: only their seats take commands.
            return Err(CommandRefused::InConference);
        }
        match cmd {
            ControlCommand::Hold { leg } => self.set_hold(leg, true),
            ControlCommand::Unhold { leg } => self.set_hold(leg, false),
            ControlCommand::Mute { leg } => self.set_muted(leg, true),
            ControlCommand::Unmute { leg } => self.set_muted(leg, false),
            ControlCommand::StartRecording { stereo } => self.start_recording(stereo),
            ControlCommand::StopRecording => self.stop_recording(),
            ControlCommand::Transfer { to, from } => self.transfer_blind(to, from),
            ControlCommand::Redirect { to } => self.redirect(to),
            ControlCommand::Supervise { mode, supervisor } => self.supervise(mode, supervisor),
            ControlCommand::StopSupervising => self.stop_supervising(),
            ControlCommand::CheckTransfer { from } => self.check_transfer(from),
            ControlCommand::CheckSupervise => self.check_supervise(),
            ControlCommand::CheckHandOff => self.check_hand_off().map(|_| ()),
            ControlCommand::MakeConference { owner } => self.make_conference(owner),
            ControlCommand::Remove { .. } => Err(CommandRefused::NotAParty),
            ControlCommand::Answer => self.answer_on_command(),
        }?;
        Ok(self.snapshot())
    }

    /// Which party of the connected call leg `leg` is (default: leg 0, the caller).
    pub(super) fn side_of(&self, leg: Option<u32>) -> Result<Side, CommandRefused> {
        let leg = leg.unwrap_or(0) as usize;
        if leg >= self.legs.len() {
            return Err(CommandRefused::NoSuchLeg);
        }
        if self.bridged_callee().is_none() {
            return Err(CommandRefused::NotConnected);
        }
        if leg == 0 {
            return Ok(Side::Caller);
        }
        if self.connected_record() == Some(leg) {
            Ok(Side::Callee)
        } else {
            Err(CommandRefused::NotAParty)
        }
    }

    /// The connected callee's index among the call's legs (its CDR `legIndex`).
    pub(super) fn connected_record(&self) -> Option<usize> {
        let b = self.bridge.as_ref()?;
        b.slots.get(b.connected?.0 as usize).map(|s| s.record)
    }

    /// The connected pair's room, made now if the pair still relays as a plain bridge.
    pub(super) fn bridge_room(&mut self) -> Option<&mut BridgeRoom> {
        self.bridged_callee()?;
        let b = self.bridge.as_mut()?;
        let winner = b.connected?;
        if b.room.as_ref().map(|r| r.attempt) != Some(winner) {
            let callee = b.live(winner)?;
            let mut room = self.svc.media.create_room();
            self.rooms_made += 1;
            let id = self.rooms_made;
            let pending: Arc<Mutex<HashMap<MemberId, Recording>>> = Arc::default();
            if let Some(events) = room.take_events() {
                tokio::spawn(bridge_room_events(
                    events,
                    self.tasks_tx.clone(),
                    b.serial,
                    id,
                    pending.clone(),
                    self.svc.store.clone(),
                ));
            }
            let caller = room.add_leg(&self.media, Audience::All, Audience::All);
            let callee = room.add_leg(&callee.media, Audience::All, Audience::All);
            b.room = Some(BridgeRoom {
                id,
                room,
                attempt: winner,
                parties: [caller, callee],
                rendering: 0,
                prompts: Vec::new(),
                hold: [None, None],
                muted: [false, false],
                supervisor: None,
                recording: None,
                pending,
            });
        }
        b.room.as_mut()
    }

    /// The bridge room, if the pair is in one now.
    pub(super) fn current_bridge_room(&self) -> Option<&BridgeRoom> {
        let b = self.bridge.as_ref()?;
        b.room.as_ref().filter(|r| Some(r.attempt) == b.connected)
    }

    /// Holds or resumes one party: music on hold into it (the other party stops hearing it),
    /// and a re-INVITE `sendonly` toward it (`sendrecv` to resume).
    fn set_hold(&mut self, leg: Option<u32>, on: bool) -> Result<(), CommandRefused> {
        let side = self.side_of(leg)?;
        let held = self.current_bridge_room().is_some_and(|r| r.is_held(side));
        match (on, held) {
            (true, true) => return Err(CommandRefused::AlreadyHeld),
            (false, false) => return Err(CommandRefused::NotHeld),
            _ => {}
        }
        let music = self.svc.music_on_hold.clone();
        let Some(r) = self.bridge_room() else {
            return Err(CommandRefused::NotConnected);
        };
        let member = r.parties[side as usize];
        if on {
            r.hold[side as usize] = Some(r.room.play_looped(music, Audience::only([member])));
        } else if let Some(music) = r.hold[side as usize].take() {
            r.room.remove(music);
        }
        r.apply_rules();
        info!(call = %self.uuid, party = side.party().as_str(), on, "hold by command");
        let record = match side {
            Side::Caller => 0,
            Side::Callee => self.connected_record().unwrap_or(usize::MAX),
        };
        self.reinvite_party(record, on);
        if !on {
            self.dissolve_unneeded_room();
        }
        Ok(())
    }

    /// Sends party `record` (0: the caller, else the connected callee's leg) a re-INVITE
    /// `sendonly` (`held`) or `sendrecv`, and moves its leg state to held or answered. One
    /// re-INVITE per leg is in flight at a time: a change asked for meanwhile is sent when
    /// the pending one is answered (only the latest one).
    pub(super) fn reinvite_party(&mut self, record: usize, held: bool) {
        let state = if held {
            LegState::Held
        } else {
            LegState::Answered
        };
        if record == 0 {
            self.set_caller_state(state);
        } else {
            let Some((attempt, a)) = self.connected_attempt_mut(record) else {
                return;
            };
            let was = a.state;
            a.state = state;
            if was != state {
                self.callee_state_changed(record, attempt.0, was, state);
            }
        }
        if let Some(pending) = self.reinviting.get_mut(&record) {
            *pending = Some(held);
            return;
        }
        self.send_reinvite(record, held);
    }

    /// The connected callee's attempt and live leg, when it is leg `record`.
    fn connected_attempt_mut(&mut self, record: usize) -> Option<(AttemptId, &mut Attempt)> {
        let b = self.bridge.as_mut()?;
        let attempt = b.connected?;
        let slot = b.slots.get_mut(attempt.0 as usize)?;
        if slot.record != record {
            return None;
        }
        slot.live.as_mut().map(|a| (attempt, a))
    }

    /// Sends leg `record` our description in the direction `held` asks for, off the actor;
    /// its answer comes back as [`TaskDone::Reinvited`].
    fn send_reinvite(&mut self, record: usize, held: bool) {
        let direction = if held {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        };
        let (sdp, reinviter) = if record == 0 {
            let Some(reinviter) = self.leg.reinviter() else {
                return;
            };
            (self.sdp.with_direction(direction), reinviter)
        } else {
            let Some((_, a)) = self.connected_attempt_mut(record) else {
                return;
            };
            (a.sdp.with_direction(direction), a.leg.reinviter())
        };
        self.reinviting.insert(record, None);
        let done = self.tasks_tx.clone();
        tokio::spawn(async move {
            let result = reinviter.reinvite(sdp).await.map_err(|e| e.to_string());
            let _ = done.send(TaskDone::Reinvited { record, result });
        });
    }

    /// Leg `record` answered our re-INVITE: where it wants media from now on; then the change
    /// asked for meanwhile, if any.
    pub(super) fn on_reinvited(
        &mut self,
        record: usize,
        result: Result<callplane_sip::ReinviteAnswer, String>,
    ) {
        let pending = self.reinviting.remove(&record).flatten();
        match result {
            Ok(a) if (200..300).contains(&a.status) => {
                if let Some(n) = a.sdp.as_deref().and_then(|s| negotiate_sdp(s).ok()) {
                    if record == 0 {
                        self.media.set_remote(RemoteMedia::from(&n));
                    } else if let Some((_, leg)) = self.connected_attempt_mut(record) {
                        leg.media.set_remote(RemoteMedia::from(&n));
                        leg.sdp.agreed(&n);
                    }
                }
            }
            Ok(a) => warn!(call = %self.uuid, status = a.status, record, "re-INVITE refused"),
            Err(e) => warn!(call = %self.uuid, error = %e, record, "re-INVITE failed"),
        }
        if let Some(held) = pending {
            if self.ended.is_none() {
                self.send_reinvite(record, held);
            }
        }
    }

    /// Blind transfer: leg `from` (the connected callee) is hung up and the caller, hearing
    /// ringback, is connected to `to` instead, in the place of the BRIDGE block that connected
    /// them (if `to` fails, the plan goes on after that block with `bridge_result`).
    fn transfer_blind(
        &mut self,
        to: crate::blocks::BridgeDestination,
        from: Option<u32>,
    ) -> Result<(), CommandRefused> {
        if self.side_of(from.or(self.connected_record().map(|r| r as u32)))? == Side::Caller {
            return self.transfer_from_first_leg(to);
        }
        self.check_transfer(from)?;
        let from_leg = self.connected_record().map(|r| r as u32);
        let forward_ani = self
            .bridge
            .as_ref()
            .map_or(ForwardAni::Called, |b| b.forward_ani.clone());
        info!(call = %self.uuid, to = %to.destination, "blind transfer");
        self.flow
            .set_variable("transferred_to", to.destination.clone());
        self.emit_for(
            0,
            EventKind::Transferred {
                mode: "blind",
                from_leg,
                to: to.destination.clone(),
                to_type: to.destination_type.as_str().into(),
            },
        );
        self.end_bridge_attempts(Some(HangupCause::NormalClearing));
        self.stop_ringback();
        self.bridge = None;
        self.flow.handle(Input::BridgeRestarted, Instant::now());
        let block = BridgeBlock {
            bridge_mode: crate::blocks::BridgeMode::Sequential,
            block_timeout: None,
            destinations: vec![with_ring_timeout(to)],
        };
        self.start_bridge(block, forward_ani, None);
        Ok(())
    }

    /// Sends the call to `to`: the running block stops (a connected callee is hung up) and
    /// the rest of the plan is a BRIDGE to `to`.
    fn redirect(&mut self, to: crate::blocks::BridgeDestination) -> Result<(), CommandRefused> {
        info!(call = %self.uuid, to = %to.destination, "redirected");
        // An offered call redirected is no longer offered: nobody claims it now.
        self.offer_deadline = None;
        self.flow
            .set_variable("transferred_to", to.destination.clone());
        self.emit_for(
            0,
            EventKind::Transferred {
                mode: "redirect",
                from_leg: None,
                to: to.destination.clone(),
                to_type: to.destination_type.as_str().into(),
            },
        );
        let block = BridgeBlock {
            bridge_mode: crate::blocks::BridgeMode::Sequential,
            block_timeout: None,
            destinations: vec![with_ring_timeout(to)],
        };
        self.flow.handle(Input::Redirect(block), Instant::now());
        Ok(())
    }

    /// Mutes or unmutes one party in the room: nobody hears it while muted.
    fn set_muted(&mut self, leg: Option<u32>, on: bool) -> Result<(), CommandRefused> {
        let side = self.side_of(leg)?;
        let muted = self
            .current_bridge_room()
            .is_some_and(|r| r.muted[side as usize]);
        match (on, muted) {
            (true, true) => return Err(CommandRefused::AlreadyMuted),
            (false, false) => return Err(CommandRefused::NotMuted),
            _ => {}
        }
        let Some(r) = self.bridge_room() else {
            return Err(CommandRefused::NotConnected);
        };
        r.muted[side as usize] = on;
        r.apply_rules();
        info!(call = %self.uuid, party = side.party().as_str(), on, "mute by command");
        let record = match side {
            Side::Caller => Some(0),
            Side::Callee => self.connected_record(),
        };
        let kind = EventKind::Muted {
            party: side.party(),
            muted: on,
        };
        match record {
            Some(r) => self.emit_for(r, kind),
            None => self.emit(kind),
        }
        if !on {
            self.dissolve_unneeded_room();
        }
        Ok(())
    }

    /// Starts recording the connected call into `<recordings>/<tenant>/<call id>-<id>.wav`.
    fn start_recording(&mut self, stereo: bool) -> Result<(), CommandRefused> {
        if self.bridged_callee().is_none() {
            return Err(CommandRefused::NotConnected);
        }
        if self
            .current_bridge_room()
            .is_some_and(|r| r.recording.is_some())
        {
            return Err(CommandRefused::AlreadyRecording);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self
            .svc
            .recordings_dir
            .join(callplane_store::file_component(&self.tenant.name));
        if let Err(e) = callplane_store::create_private_dir(&dir) {
            warn!(call = %self.uuid, error = %e, dir = %dir.display(), "cannot make the recordings folder");
            return Err(CommandRefused::RecordingUnavailable);
        }
        let path = dir.join(format!("{}-{id}.wav", self.uuid));
        let (uuid, tenant) = (self.uuid.clone(), self.tenant.name.clone());
        let Some(r) = self.bridge_room() else {
            return Err(CommandRefused::NotConnected);
        };
        let [caller, callee] = r.parties;
        let made = if stereo {
            r.room
                .record_stereo(&path, Audience::only([caller]), Audience::only([callee]))
                .map(|(left, right)| (left, Some(right)))
        } else {
            r.room.record(&path, Audience::All).map(|m| (m, None))
        };
        let (member, right) = match made {
            Ok(m) => m,
            Err(e) => {
                warn!(call = %uuid, error = %e, path = %path.display(), "cannot record");
                self.dissolve_unneeded_room();
                return Err(CommandRefused::RecordingUnavailable);
            }
        };
        let start = now_utc();
        if let Ok(mut p) = r.pending.lock() {
            p.insert(
                member,
                Recording {
                    id: id.clone(),
                    call_id: uuid.clone(),
                    tenant: Some(tenant),
                    path: path.to_string_lossy().into_owned(),
                    channels: if stereo { 2 } else { 1 },
                    start_time: start,
                    end_time: start,
                    duration_ms: 0,
                    size_bytes: 0,
                },
            );
        }
        r.recording = Some(RecordingRun {
            id: id.clone(),
            member,
            right,
            stereo,
            start,
        });
        info!(call = %uuid, recording = %id, stereo, "recording started");
        self.emit(EventKind::Recording {
            recording_id: id,
            started: true,
            stereo,
            duration_ms: None,
        });
        Ok(())
    }

    /// Stops the recording: its file is completed and stored by the room's event task.
    fn stop_recording(&mut self) -> Result<(), CommandRefused> {
        let Some(b) = self.bridge.as_mut() else {
            return Err(CommandRefused::NotRecording);
        };
        let connected = b.connected;
        let Some(r) = b.room.as_mut().filter(|r| Some(r.attempt) == connected) else {
            return Err(CommandRefused::NotRecording);
        };
        let Some(run) = r.recording.take() else {
            return Err(CommandRefused::NotRecording);
        };
        r.room.remove(run.member);
        self.recording_stopped(run);
        self.dissolve_unneeded_room();
        Ok(())
    }

    /// `call.recording` stopped: said by the actor when it stops it (a command, or the room's
    /// end), so the event is never lost with a call that ends meanwhile.
    fn recording_stopped(&mut self, run: RecordingRun) {
        info!(call = %self.uuid, recording = %run.id, "recording stopped");
        self.emit(EventKind::Recording {
            recording_id: run.id,
            started: false,
            stereo: run.stereo,
            duration_ms: Some((now_utc() - run.start).num_milliseconds().max(0)),
        });
    }

    /// The bridge's room ends (its callee left, the bridge or the call ends): a recording in
    /// it stops with it.
    pub(super) fn end_bridge_room(&mut self) {
        let Some(mut r) = self.bridge.as_mut().and_then(|b| b.room.take()) else {
            return;
        };
        if let Some(run) = r.recording.take() {
            self.recording_stopped(run);
        }
        // A party a command held, and that stays on the call, is resumed: its music goes
        // with the room.
        let [caller_held, callee_held] = [r.hold[0].is_some(), r.hold[1].is_some()];
        drop(r);
        if caller_held && self.ended.is_none() && !self.caller_state.is_ended() {
            self.reinvite_party(0, false);
        }
        if callee_held {
            let alive = self
                .bridge
                .as_ref()
                .and_then(|b| b.live(b.connected?))
                .is_some_and(|a| matches!(a.state, LegState::Held | LegState::Answered));
            if let (true, Some(record)) = (alive, self.connected_record()) {
                self.reinvite_party(record, false);
            }
        }
    }

    /// The call ends: its holds end with it, without resuming anybody.
    pub(super) fn forget_holds(&mut self) {
        if let Some(r) = self.bridge.as_mut().and_then(|b| b.room.as_mut()) {
            r.hold = [None, None];
        }
    }

    /// Nothing needs the bridge room any more: the pair relays as a plain bridge again.
    pub(super) fn dissolve_unneeded_room(&mut self) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let Some(r) = b.room.as_ref() else {
            return;
        };
        if r.needed() {
            return;
        }
        let attempt = r.attempt;
        // The plain bridge is asked for before the room goes: each leg then leaves the room on
        // that command, and the room's own goodbyes (its relay's unbridge, sent when it sees
        // its handle dropped) come after it and no longer apply. The other way round, under
        // load, one leg could unbridge on the room's word after the other had already asked
        // for the new bridge, and its PeerGone wiped that request: the pair stayed silent.
        if b.connected == Some(attempt) && b.bridged == Some(attempt) {
            if let Some(callee) = b.live(attempt) {
                self.media.bridge(&callee.media);
            }
        }
        self.end_bridge_room();
    }

    /// The recording info of the call now (for snapshots).
    pub(super) fn recording_info(&self) -> Option<RecordingInfo> {
        self.current_bridge_room().and_then(BridgeRoom::info)
    }

    /// Whether a command holds / mutes this leg (for snapshots).
    pub(super) fn leg_flags(&self, record: usize) -> (bool, bool) {
        if let Some(seat) = [&self.conference, &self.callee_seat]
            .into_iter()
            .flatten()
            .find(|s| s.leg as usize == record)
        {
            return (seat.hold.is_some(), seat.muted);
        }
        let side = if record == 0 {
            Some(Side::Caller)
        } else if self.connected_record() == Some(record) {
            Some(Side::Callee)
        } else {
            None
        };
        match (side, self.current_bridge_room()) {
            (Some(s), Some(r)) => (r.is_held(s), r.muted[s as usize]),
            _ => (false, false),
        }
    }
}

/// Reads a bridge room's events: a prompt player's end goes to the actor; a recorder's end
/// stores its recording here (the call may be over by then).
async fn bridge_room_events(
    mut events: mpsc::UnboundedReceiver<RoomEvent>,
    done: mpsc::UnboundedSender<TaskDone>,
    bridge: u64,
    room: u64,
    pending: Arc<Mutex<HashMap<MemberId, Recording>>>,
    store: Store,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            RoomEvent::PlayerFinished { member } => {
                let _ = done.send(TaskDone::BridgePlayerDone {
                    bridge,
                    room,
                    member,
                });
            }
            RoomEvent::RecordingFinished {
                member,
                samples,
                error,
            } => {
                let rec = pending.lock().ok().and_then(|mut p| p.remove(&member));
                let Some(mut rec) = rec else { continue };
                rec.end_time = now_utc();
                rec.duration_ms = (samples / 8) as i64;
                rec.size_bytes = std::fs::metadata(&rec.path)
                    .map(|m| m.len() as i64)
                    .unwrap_or(0);
                let stored = {
                    let store = store.clone();
                    let rec = rec.clone();
                    tokio::task::spawn_blocking(move || store.insert_recording(&rec)).await
                };
                let error = match (error, stored) {
                    (Some(e), _) => Some(e),
                    (None, Ok(Ok(()))) => None,
                    (None, Ok(Err(e))) => Some(format!("not stored: {e}")),
                    (None, Err(e)) => Some(format!("not stored: {e}")),
                };
                match &error {
                    Some(e) => warn!(recording = %rec.id, error = %e, "recording incomplete"),
                    None => info!(recording = %rec.id, ms = rec.duration_ms, "recording stored"),
                }
            }
            RoomEvent::LegClosed { .. } => {}
        }
    }
}

/// How long a transfer or redirect target rings when its destination names no `timeout`.
pub const TRANSFER_RING_SECONDS: u32 = 30;

pub(super) fn with_ring_timeout(
    mut to: crate::blocks::BridgeDestination,
) -> crate::blocks::BridgeDestination {
    to.timeout.get_or_insert(TRANSFER_RING_SECONDS);
    to
}

/// The default music on hold: a calm arpeggio (C major, then A minor) of soft sine notes with
/// short fades, 8 s long, for when `musicOnHold` names no file.
pub fn default_music_on_hold() -> Arc<[i16]> {
    const NOTES: [f32; 8] = [261.63, 329.63, 392.0, 523.25, 220.0, 261.63, 329.63, 440.0];
    let note_len = 8000; // 1 s each
    let fade = 400;
    let mut out = Vec::with_capacity(NOTES.len() * note_len);
    for f in NOTES {
        for n in 0..note_len {
            let t = n as f32 / 8000.0;
            let env = (n.min(note_len - n) as f32 / fade as f32).min(1.0);
            let v = (2.0 * std::f32::consts::PI * f * t).sin() * 0.6
                + (2.0 * std::f32::consts::PI * f * 2.0 * t).sin() * 0.2;
            out.push((v * 3000.0 * env) as i16);
        }
    }
    out.into()
}
