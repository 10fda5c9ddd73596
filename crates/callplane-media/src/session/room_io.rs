//! The I/O side of a room: one task per room owns its [`RoomGraph`] and [`Mixer`], a 20 ms
//! clock, each member leg's jitter queue and the players. While the graph allows the fast path
//! (two full-duplex legs, same codec, nothing else) the two legs relay packets to each other as
//! a plain bridge and the clock stops; otherwise every leg hands its decoded frames to the room
//! and each tick sends every listener its own mix on the listener's socket and stream.
//! A recorder member gets the linear mix of what its rules let it hear, every tick (silence
//! included, so the file keeps the call's timeline), written to a WAV file.
//!
//! Per packet a leg does one `try_send` of a decoded frame into its bounded queue; the room
//! drains all queues once per tick (one wake-up per room per 20 ms, however many members).
//! [`RoomStats`] counts engine-wide what the rooms do (tick durations, drops) with atomics
//! touched once per tick, or per frame only when a frame is dropped.

use super::*;
use crate::room::{
    decode_frame, Audience, Frame, MemberId, MemberKind, MixOutput, Mixer, RoomGraph,
};

/// Frames a member leg may have queued for the room; beyond this the oldest are dropped so a
/// sender whose clock runs fast cannot build up delay.
const ROOM_QUEUE: usize = 4;
/// Frames kept in a member's jitter queue at most after a tick.
const JITTER_MAX: usize = 2;

/// Upper bounds (seconds) of the tick-duration histogram; one more bucket is +Inf.
pub const TICK_BUCKETS: [f64; 9] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02,
];
const TICK_BUCKETS_NS: [u64; 9] = [
    50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000,
];

/// What every room of an engine does, for metrics: lock-free counters that room tasks and
/// member legs add to (once per tick, and per frame only when one is dropped).
#[derive(Debug, Default)]
pub(super) struct RoomStats {
    rooms: AtomicU64,
    members: AtomicU64,
    /// Ticks by duration, per bucket (not cumulative); the last is +Inf.
    tick_buckets: [AtomicU64; TICK_BUCKETS.len() + 1],
    ticks: AtomicU64,
    tick_ns: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_jitter: AtomicU64,
    mixed_sent: AtomicU64,
    send_errors: AtomicU64,
}

impl RoomStats {
    fn record_tick(&self, took: Duration, sent: u64, errors: u64, trimmed: u64) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let b = TICK_BUCKETS_NS
            .iter()
            .position(|&le| ns <= le)
            .unwrap_or(TICK_BUCKETS_NS.len());
        self.tick_buckets[b].fetch_add(1, Relaxed);
        self.tick_ns.fetch_add(ns, Relaxed);
        self.ticks.fetch_add(1, Relaxed);
        if sent > 0 {
            self.mixed_sent.fetch_add(sent, Relaxed);
        }
        if errors > 0 {
            self.send_errors.fetch_add(errors, Relaxed);
        }
        if trimmed > 0 {
            self.dropped_jitter.fetch_add(trimmed, Relaxed);
        }
    }

    pub(super) fn snapshot(&self) -> RoomTotals {
        let mut tick_buckets = [0; TICK_BUCKETS.len() + 1];
        for (o, b) in tick_buckets.iter_mut().zip(&self.tick_buckets) {
            *o = b.load(Relaxed);
        }
        RoomTotals {
            rooms: self.rooms.load(Relaxed),
            members: self.members.load(Relaxed),
            ticks: self.ticks.load(Relaxed),
            tick_buckets,
            tick_seconds_sum: self.tick_ns.load(Relaxed) as f64 / 1e9,
            frames_dropped_queue_full: self.dropped_queue_full.load(Relaxed),
            frames_dropped_jitter: self.dropped_jitter.load(Relaxed),
            mixed_frames_sent: self.mixed_sent.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
        }
    }
}

/// Engine-wide room figures (see [`MediaEngine::room_totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RoomTotals {
    /// Rooms open now.
    pub rooms: u64,
    /// Legs in rooms now (players not counted).
    pub members: u64,
    /// Mixing ticks run (a room on the relay fast path does not tick).
    pub ticks: u64,
    /// Ticks by duration (start of the tick to the last mix sent), per bucket of
    /// [`TICK_BUCKETS`] and a last one for longer: not cumulative.
    pub tick_buckets: [u64; TICK_BUCKETS.len() + 1],
    /// Total duration of all ticks, seconds.
    pub tick_seconds_sum: f64,
    /// Frames a member leg could not hand to its room because the room's queue for it was
    /// full (the room fell behind).
    pub frames_dropped_queue_full: u64,
    /// Frames the room dropped from a member's jitter queue (it sent faster than 50/s).
    pub frames_dropped_jitter: u64,
    /// Mixed frames sent to member legs.
    pub mixed_frames_sent: u64,
    /// Mixed frames whose send failed (socket buffer full, no route).
    pub send_errors: u64,
}

/// Keeps the open-rooms gauge and its members' count right however the room task ends.
#[derive(Debug)]
struct RoomCount {
    stats: Arc<RoomStats>,
    members: u64,
}

impl RoomCount {
    fn new(stats: Arc<RoomStats>) -> Self {
        stats.rooms.fetch_add(1, Relaxed);
        RoomCount { stats, members: 0 }
    }

    fn joined(&mut self) {
        self.members += 1;
        self.stats.members.fetch_add(1, Relaxed);
    }

    fn left(&mut self) {
        self.members = self.members.saturating_sub(1);
        self.stats.members.fetch_sub(1, Relaxed);
    }
}

impl Drop for RoomCount {
    fn drop(&mut self) {
        self.stats.members.fetch_sub(self.members, Relaxed);
        self.stats.rooms.fetch_sub(1, Relaxed);
    }
}

/// Commands to a room's task (from its handle and from member legs' tasks).
#[derive(Debug)]
pub(super) enum RoomCmd {
    AddLeg {
        member: MemberId,
        leg_id: u64,
        leg_cmd: mpsc::WeakUnboundedSender<Command>,
        frames: mpsc::Receiver<Frame>,
        heard_by: Audience,
        hears: Audience,
    },
    /// From a member leg's task: its socket and stream, and where it sends.
    LegLink {
        member: MemberId,
        link: PeerLink,
        target: Option<Target>,
    },
    /// From a member leg's task: its destination or codec changed (re-INVITE, hold).
    LegTarget {
        member: MemberId,
        target: Option<Target>,
    },
    /// From a member leg's task: the leg closed.
    LegClosed {
        member: MemberId,
    },
    AddPlayer {
        member: MemberId,
        samples: Arc<[i16]>,
        heard_by: Audience,
        /// Starts again at its end (music on hold) until removed.
        looped: bool,
    },
    SetRules {
        member: MemberId,
        heard_by: Audience,
        hears: Audience,
    },
    Mute {
        member: MemberId,
        muted: bool,
    },
    Remove {
        member: MemberId,
    },
    AddRecorder {
        member: MemberId,
        writer: crate::wav::WavWriter,
        hears: Audience,
        /// A stereo file: `member` is its left channel, this member (and what it hears) the
        /// right.
        right: Option<(MemberId, Audience)>,
    },
}

/// What a room reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A player finished (or was removed); it is no longer a member.
    PlayerFinished {
        /// The player's member id.
        member: MemberId,
    },
    /// A member leg left because its leg closed (its call ended).
    LegClosed {
        /// The leg's member id.
        member: MemberId,
    },
    /// A recorder was removed (or the room ended) and its file is complete, or writing it
    /// failed (`error`).
    RecordingFinished {
        /// The recorder's member id.
        member: MemberId,
        /// Samples written (8 kHz).
        samples: u64,
        /// Why the file is incomplete, when writing it failed.
        error: Option<String>,
    },
}

/// Handle to a room. Dropping it ends the room: member legs leave it (a relayed pair is
/// unbridged) and players stop.
#[derive(Debug)]
pub struct Room {
    id: u64,
    cmd: mpsc::UnboundedSender<RoomCmd>,
    next_member: AtomicU32,
    events: Option<mpsc::UnboundedReceiver<RoomEvent>>,
    stats: Arc<RoomStats>,
}

impl MediaEngine {
    /// A new, empty room with its own task.
    pub fn create_room(&self) -> Room {
        let id = self.inner.next_leg_id.fetch_add(1, Relaxed);
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let task = RoomTask {
            id,
            self_cmd: cmd.downgrade(),
            cmd_rx,
            events: ev_tx,
            graph: RoomGraph::new(),
            mixer: Mixer::new(),
            out: MixOutput::new(),
            members: Vec::new(),
            relay: None,
            applied: u64::MAX,
            base: self.inner.base,
            payload: [0; RTP_HEADER_LEN + FRAME_SAMPLES],
            count: RoomCount::new(self.inner.rooms.clone()),
            last_tick: None,
        };
        tokio::spawn(task.run());
        Room {
            id,
            cmd,
            next_member: AtomicU32::new(1),
            events: Some(ev_rx),
            stats: self.inner.rooms.clone(),
        }
    }

    /// What the engine's rooms do: rooms and members now, tick durations, dropped and sent
    /// frames since start. Reads atomics only.
    pub fn room_totals(&self) -> RoomTotals {
        self.inner.rooms.snapshot()
    }
}

impl Room {
    fn next_id(&self) -> MemberId {
        MemberId::from_raw(self.next_member.fetch_add(1, Relaxed))
    }

    /// Takes the room's event stream (once).
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<RoomEvent>> {
        self.events.take()
    }

    /// Adds a leg with its audio rules. The leg leaves any bridge it was in; it leaves the
    /// room with [`Room::remove`], when the room is dropped or when the leg closes.
    pub fn add_leg(&self, leg: &MediaHandle, heard_by: Audience, hears: Audience) -> MemberId {
        let member = self.next_id();
        let (frames_tx, frames) = mpsc::channel(ROOM_QUEUE);
        let _ = self.cmd.send(RoomCmd::AddLeg {
            member,
            leg_id: leg.shared.id,
            leg_cmd: leg.cmd.downgrade(),
            frames,
            heard_by,
            hears,
        });
        leg.send(Command::Unbridge);
        leg.send(Command::JoinRoom(RoomLink {
            room_id: self.id,
            member,
            frames: frames_tx,
            room: self.cmd.downgrade(),
            mixing: false,
            stats: self.stats.clone(),
        }));
        member
    }

    /// Plays `samples` into the room once, heard by `heard_by`; a
    /// [`RoomEvent::PlayerFinished`] follows.
    pub fn play(&self, samples: Arc<[i16]>, heard_by: Audience) -> MemberId {
        self.add_player(samples, heard_by, false)
    }

    /// Plays `samples` into the room over and over (music on hold), heard by `heard_by`, until
    /// [`Room::remove`]; then a [`RoomEvent::PlayerFinished`] follows.
    pub fn play_looped(&self, samples: Arc<[i16]>, heard_by: Audience) -> MemberId {
        self.add_player(samples, heard_by, true)
    }

    fn add_player(&self, samples: Arc<[i16]>, heard_by: Audience, looped: bool) -> MemberId {
        let member = self.next_id();
        let _ = self.cmd.send(RoomCmd::AddPlayer {
            member,
            samples,
            heard_by,
            looped,
        });
        member
    }

    /// Records what the rules let a recorder hear (`hears`: everyone, or some members) into a
    /// new 8 kHz mono WAV file at `path`, from the next tick on, until [`Room::remove`] or the
    /// room's end; a [`RoomEvent::RecordingFinished`] follows. While a recorder is a member the
    /// room mixes (no relay fast path).
    pub fn record(
        &self,
        path: impl AsRef<std::path::Path>,
        hears: Audience,
    ) -> Result<MemberId, crate::wav::WavError> {
        let writer = crate::wav::WavWriter::create(path)?;
        let member = self.next_id();
        let _ = self.cmd.send(RoomCmd::AddRecorder {
            member,
            writer,
            hears,
            right: None,
        });
        Ok(member)
    }

    /// Like [`Room::record`], into a stereo file: the left channel is what `left` lets it hear,
    /// the right what `right` does (one party per channel). Returns the two channels' members:
    /// the left one stands for the whole recorder (remove it to complete the file); either's
    /// rules may be changed with [`Room::set_rules`].
    pub fn record_stereo(
        &self,
        path: impl AsRef<std::path::Path>,
        left: Audience,
        right: Audience,
    ) -> Result<(MemberId, MemberId), crate::wav::WavError> {
        let writer = crate::wav::WavWriter::create_stereo(path)?;
        let member = self.next_id();
        let right_member = self.next_id();
        let _ = self.cmd.send(RoomCmd::AddRecorder {
            member,
            writer,
            hears: left,
            right: Some((right_member, right)),
        });
        Ok((member, right_member))
    }

    /// Changes whom `member` is heard by and whom it hears.
    pub fn set_rules(&self, member: MemberId, heard_by: Audience, hears: Audience) {
        let _ = self.cmd.send(RoomCmd::SetRules {
            member,
            heard_by,
            hears,
        });
    }

    /// Mutes (heard by nobody, its rules kept) or unmutes a member.
    pub fn set_muted(&self, member: MemberId, muted: bool) {
        let _ = self.cmd.send(RoomCmd::Mute { member, muted });
    }

    /// Removes a member: a leg leaves (and keeps its socket), a player stops.
    pub fn remove(&self, member: MemberId) {
        let _ = self.cmd.send(RoomCmd::Remove { member });
    }
}

/// A leg's membership, as its own task sees it.
#[derive(Debug)]
pub(super) struct RoomLink {
    pub(super) room_id: u64,
    pub(super) member: MemberId,
    pub(super) frames: mpsc::Sender<Frame>,
    pub(super) room: mpsc::WeakUnboundedSender<RoomCmd>,
    /// Hand decoded audio to the room (mixer mode) rather than relaying it to a peer.
    pub(super) mixing: bool,
    pub(super) stats: Arc<RoomStats>,
}

impl RoomLink {
    pub(super) fn tell(&self, cmd: RoomCmd) {
        if let Some(tx) = self.room.upgrade() {
            let _ = tx.send(cmd);
        }
    }
}

#[derive(Debug)]
enum MemberIo {
    Leg {
        leg_id: u64,
        cmd: mpsc::WeakUnboundedSender<Command>,
        frames: mpsc::Receiver<Frame>,
        link: Option<PeerLink>,
        target: Option<Target>,
        /// The leg was told to hand its audio to the room.
        mixing: bool,
        queue: VecDeque<Frame>,
        tx_epoch: u32,
    },
    Player {
        samples: Arc<[i16]>,
        pos: usize,
        looped: bool,
    },
    Recorder {
        /// `None` once writing failed (reported when it is removed).
        writer: Option<crate::wav::WavWriter>,
        error: Option<String>,
        /// A stereo recorder's right channel (this member is the left one): each tick both
        /// channels' mixes are kept in their members' `frame` and written interleaved.
        right: Option<MemberId>,
    },
    /// The right channel of a stereo recorder: only a listener in the graph.
    RecorderChannel,
}

#[derive(Debug)]
struct MemberState {
    id: MemberId,
    io: MemberIo,
    /// This tick's input frame, when it has one.
    frame: Frame,
    speaking: bool,
}

struct RoomTask {
    id: u64,
    self_cmd: mpsc::WeakUnboundedSender<RoomCmd>,
    cmd_rx: mpsc::UnboundedReceiver<RoomCmd>,
    events: mpsc::UnboundedSender<RoomEvent>,
    graph: RoomGraph,
    mixer: Mixer,
    out: MixOutput,
    /// Sorted by id (ids grow).
    members: Vec<MemberState>,
    /// The pair relaying to each other on the fast path.
    relay: Option<(MemberId, MemberId)>,
    /// The graph generation the legs' modes were set for.
    applied: u64,
    base: Instant,
    payload: [u8; RTP_HEADER_LEN + FRAME_SAMPLES],
    count: RoomCount,
    /// When the last mixing tick ran: ticks the clock skipped (an overloaded machine) are
    /// written to recorders as silence, so a recording keeps the call's length.
    last_tick: Option<Instant>,
}

fn send_leg(cmd: &mpsc::WeakUnboundedSender<Command>, c: Command) {
    if let Some(tx) = cmd.upgrade() {
        let _ = tx.send(c);
    }
}

impl RoomTask {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(FRAME);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let mixing = self.relay.is_none() && !self.members.is_empty();
            if !mixing {
                // The clock stops: the next tick starts a new run, nothing was skipped.
                self.last_tick = None;
            }
            tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(c) => self.handle(c),
                    None => break,
                },
                _ = tick.tick(), if mixing => self.on_tick(),
            }
            if self.graph.generation() != self.applied {
                self.apply_mode();
            }
        }
        // The handle is gone: every leg leaves.
        self.end_relay();
        for m in std::mem::take(&mut self.members) {
            match m.io {
                MemberIo::Leg { cmd, .. } => send_leg(
                    &cmd,
                    Command::LeaveRoom {
                        room_id: self.id,
                        member: m.id,
                    },
                ),
                MemberIo::Recorder { writer, error, .. } => {
                    self.finish_recording(m.id, writer, error)
                }
                MemberIo::Player { .. } | MemberIo::RecorderChannel => {}
            }
        }
        let _ = self.self_cmd;
    }

    fn index(&self, id: MemberId) -> Option<usize> {
        self.members.binary_search_by_key(&id, |m| m.id).ok()
    }

    fn io(&self, id: MemberId) -> Option<&MemberIo> {
        self.index(id).map(|i| &self.members[i].io)
    }

    fn insert(&mut self, id: MemberId, io: MemberIo) {
        if matches!(io, MemberIo::Leg { .. }) {
            self.count.joined();
        }
        let at = self.members.partition_point(|m| m.id < id);
        self.members.insert(
            at,
            MemberState {
                id,
                io,
                frame: [0; FRAME_SAMPLES],
                speaking: false,
            },
        );
    }

    fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::AddLeg {
                member,
                leg_id,
                leg_cmd,
                frames,
                heard_by,
                hears,
            } => {
                // The codec is corrected when the leg reports its target.
                if self
                    .graph
                    .add_with_id(member, MemberKind::leg(Codec::Pcmu), heard_by, hears)
                {
                    self.insert(
                        member,
                        MemberIo::Leg {
                            leg_id,
                            cmd: leg_cmd,
                            frames,
                            link: None,
                            target: None,
                            mixing: false,
                            queue: VecDeque::with_capacity(ROOM_QUEUE + 1),
                            tx_epoch: 0,
                        },
                    );
                }
            }
            RoomCmd::LegLink {
                member,
                link,
                target,
            } => {
                if let Some(i) = self.index(member) {
                    if let MemberIo::Leg {
                        link: l,
                        target: t,
                        cmd,
                        mixing,
                        ..
                    } = &mut self.members[i].io
                    {
                        *l = Some(link);
                        *t = target;
                        // A RoomMix sent before the leg had seen its JoinRoom was ignored by
                        // it (this room runs on another thread than the joiner): the leg
                        // sends LegLink after its JoinRoom, so saying it again now lands.
                        if *mixing {
                            send_leg(cmd, Command::RoomMix(true));
                        }
                    }
                    // Likewise a BridgeWith of the fast path, ignored by a leg that had not
                    // joined yet (it only accepts a room's relay while it is a member).
                    if let Some((a, b)) = self.relay.filter(|(a, b)| *a == member || *b == member) {
                        let other = if a == member { b } else { a };
                        if let (
                            Some(MemberIo::Leg { cmd: mine, .. }),
                            Some(MemberIo::Leg {
                                leg_id,
                                cmd: theirs,
                                ..
                            }),
                        ) = (self.io(member), self.io(other))
                        {
                            send_leg(
                                mine,
                                Command::BridgeWith {
                                    peer_id: *leg_id,
                                    peer_cmd: theirs.clone(),
                                    room: Some(self.id),
                                },
                            );
                        }
                    }
                    self.target_changed(member, target);
                }
            }
            RoomCmd::LegTarget { member, target } => {
                if let Some(i) = self.index(member) {
                    if let MemberIo::Leg { target: t, .. } = &mut self.members[i].io {
                        *t = target;
                    }
                    self.target_changed(member, target);
                }
            }
            RoomCmd::LegClosed { member } => {
                if self.remove(member) {
                    let _ = self.events.send(RoomEvent::LegClosed { member });
                }
            }
            RoomCmd::AddPlayer {
                member,
                samples,
                heard_by,
                looped,
            } => {
                // An empty loop would never advance: it plays (nothing) once.
                let looped = looped && !samples.is_empty();
                if self
                    .graph
                    .add_with_id(member, MemberKind::Player, heard_by, Audience::None)
                {
                    self.insert(
                        member,
                        MemberIo::Player {
                            samples,
                            pos: 0,
                            looped,
                        },
                    );
                }
            }
            RoomCmd::AddRecorder {
                member,
                writer,
                hears,
                right,
            } => {
                if !self
                    .graph
                    .add_with_id(member, MemberKind::Recorder, Audience::None, hears)
                {
                    return;
                }
                let right = right.and_then(|(id, hears)| {
                    self.graph
                        .add_with_id(id, MemberKind::Recorder, Audience::None, hears)
                        .then_some(id)
                });
                if let Some(id) = right {
                    self.insert(id, MemberIo::RecorderChannel);
                }
                self.insert(
                    member,
                    MemberIo::Recorder {
                        writer: Some(writer),
                        error: None,
                        right,
                    },
                );
            }
            RoomCmd::SetRules {
                member,
                heard_by,
                hears,
            } => {
                self.graph.set_rules(member, heard_by, hears);
            }
            RoomCmd::Mute { member, muted } => {
                if muted {
                    self.graph.mute(member);
                } else {
                    self.graph.unmute(member);
                }
            }
            RoomCmd::Remove { member } => {
                let was_player = matches!(self.io(member), Some(MemberIo::Player { .. }));
                if self.remove(member) && was_player {
                    let _ = self.events.send(RoomEvent::PlayerFinished { member });
                }
            }
        }
    }

    /// A leg's codec and direction follow its negotiated target (a held leg only listens
    /// or is silent).
    fn target_changed(&mut self, member: MemberId, target: Option<Target>) {
        match target {
            Some(t) => {
                self.graph.set_codec(member, t.codec);
                self.graph
                    .set_direction(member, crate::sdp::Direction::SendRecv);
            }
            // On hold: it sends us nothing useful and must not be sent to.
            None => {
                self.graph
                    .set_direction(member, crate::sdp::Direction::Inactive);
            }
        }
    }

    /// Completes a recorder's file (its WAV header) and says so.
    fn finish_recording(
        &self,
        member: MemberId,
        writer: Option<crate::wav::WavWriter>,
        mut error: Option<String>,
    ) {
        let mut samples = 0;
        if let Some(w) = writer {
            samples = w.samples_written();
            if let Err(e) = w.finalize() {
                error.get_or_insert(e.to_string());
            }
        }
        let _ = self.events.send(RoomEvent::RecordingFinished {
            member,
            samples,
            error,
        });
    }

    fn remove(&mut self, member: MemberId) -> bool {
        let Some(i) = self.index(member) else {
            return false;
        };
        let m = self.members.remove(i);
        self.graph.remove(member);
        if let MemberIo::Recorder {
            writer,
            error,
            right,
        } = m.io
        {
            if let Some(r) = right {
                self.remove(r);
            }
            self.finish_recording(member, writer, error);
            return true;
        }
        if let MemberIo::Leg { cmd, .. } = &m.io {
            self.count.left();
            if let Some((a, b)) = self.relay.filter(|(a, b)| *a == member || *b == member) {
                // Both ends: the one that left may be in another room or bridge by now (it
                // then ignores this), the one that stays must stop relaying to it.
                let id = self.id;
                send_leg(
                    cmd,
                    Command::RoomUnbridge {
                        room_id: id,
                        member,
                    },
                );
                let other = if a == member { b } else { a };
                if let Some(MemberIo::Leg { cmd: o, .. }) = self.io(other) {
                    send_leg(
                        o,
                        Command::RoomUnbridge {
                            room_id: id,
                            member: other,
                        },
                    );
                }
                self.relay = None;
            }
            send_leg(
                cmd,
                Command::LeaveRoom {
                    room_id: self.id,
                    member,
                },
            );
        }
        true
    }

    /// Ends the relay between the fast path's two legs, telling **both**: one end's unbridge
    /// reaches the other as `PeerGone`, but not if the other has not yet seen the room's
    /// `BridgeWith` (or its re-send after a late `LegLink`) — it would then install the first
    /// end from its stale hello and relay to it for good, out of the mix (e2e_conference_api
    /// caught a participant not hearing the agent that way, now and then).
    fn end_relay(&mut self) {
        let Some((a, b)) = self.relay.take() else {
            return;
        };
        for member in [a, b] {
            if let Some(MemberIo::Leg { cmd, .. }) = self.io(member) {
                send_leg(
                    cmd,
                    Command::RoomUnbridge {
                        room_id: self.id,
                        member,
                    },
                );
            }
        }
    }

    /// Puts the legs in relay or mixer mode for the current graph.
    fn apply_mode(&mut self) {
        self.applied = self.graph.generation();
        let fast = self.graph.fast_path();
        if fast.is_some() && fast == self.relay {
            return;
        }
        self.end_relay();
        let relay_legs = fast.and_then(|(a, b)| match (self.io(a), self.io(b)) {
            (
                Some(MemberIo::Leg {
                    leg_id: ia,
                    cmd: ca,
                    ..
                }),
                Some(MemberIo::Leg {
                    leg_id: ib,
                    cmd: cb,
                    ..
                }),
            ) => Some(((*ia, ca.clone()), (*ib, cb.clone()))),
            _ => None,
        });
        for m in &mut self.members {
            if let MemberIo::Leg {
                cmd, mixing, queue, ..
            } = &mut m.io
            {
                let want = relay_legs.is_none();
                if *mixing != want {
                    *mixing = want;
                    queue.clear();
                    send_leg(cmd, Command::RoomMix(want));
                }
            }
        }
        if let Some(((ia, ca), (ib, cb))) = relay_legs {
            send_leg(
                &ca,
                Command::BridgeWith {
                    peer_id: ib,
                    peer_cmd: cb.clone(),
                    room: Some(self.id),
                },
            );
            send_leg(
                &cb,
                Command::BridgeWith {
                    peer_id: ia,
                    peer_cmd: ca,
                    room: Some(self.id),
                },
            );
            self.relay = fast;
        }
    }

    /// Each stereo recorder writes this tick's two channels, interleaved.
    fn write_stereo_recordings(&mut self) {
        for li in 0..self.members.len() {
            let MemberIo::Recorder {
                right: Some(r),
                writer: Some(_),
                ..
            } = &self.members[li].io
            else {
                continue;
            };
            let right = self.index(*r).map(|ri| self.members[ri].frame);
            let m = &mut self.members[li];
            let right = right.unwrap_or([0; FRAME_SAMPLES]);
            let mut both = [0i16; FRAME_SAMPLES * 2];
            for (k, pair) in both.chunks_exact_mut(2).enumerate() {
                pair[0] = m.frame[k];
                pair[1] = right[k];
            }
            if let MemberIo::Recorder { writer, error, .. } = &mut m.io {
                if let Some(Err(e)) = writer.as_mut().map(|w| w.write_samples(&both)) {
                    tracing::warn!(room = self.id, error = %e, "recording failed");
                    *error = Some(e.to_string());
                    *writer = None;
                }
            }
        }
    }

    fn on_tick(&mut self) {
        let started = Instant::now();
        if let Some(last) = self.last_tick.replace(started) {
            let elapsed = started.saturating_duration_since(last);
            // Whole frames beyond this one that no tick covered (at most 10 s worth).
            let missed = (elapsed.as_micros() / FRAME.as_micros())
                .saturating_sub(1)
                .min(500);
            if missed > 0 {
                let silence = [0i16; FRAME_SAMPLES];
                for m in &mut self.members {
                    if let MemberIo::Recorder {
                        writer: Some(w),
                        right,
                        ..
                    } = &mut m.io
                    {
                        let channels = if right.is_some() { 2 } else { 1 };
                        for _ in 0..missed * channels {
                            let _ = w.write_samples(&silence);
                        }
                    }
                }
            }
        }
        let now_us = started.saturating_duration_since(self.base).as_micros() as u64 + 1;
        let (mut sent, mut errors, mut trimmed) = (0u64, 0u64, 0u64);
        let mut finished: Vec<MemberId> = Vec::new();
        for m in &mut self.members {
            m.speaking = false;
            match &mut m.io {
                MemberIo::Leg { frames, queue, .. } => {
                    while let Ok(f) = frames.try_recv() {
                        queue.push_back(f);
                    }
                    if let Some(f) = queue.pop_front() {
                        m.frame = f;
                        m.speaking = true;
                    }
                    while queue.len() > JITTER_MAX {
                        queue.pop_front();
                        trimmed += 1;
                    }
                }
                MemberIo::Player {
                    samples,
                    pos,
                    looped,
                } => {
                    let mut n = 0;
                    while n < FRAME_SAMPLES {
                        let rest = samples.get(*pos..).unwrap_or(&[]);
                        let k = rest.len().min(FRAME_SAMPLES - n);
                        m.frame[n..n + k].copy_from_slice(&rest[..k]);
                        n += k;
                        *pos += k;
                        if *pos < samples.len() {
                            break;
                        }
                        if !*looped {
                            finished.push(m.id);
                            break;
                        }
                        *pos = 0;
                    }
                    m.frame[n..].fill(0);
                    m.speaking = n > 0;
                }
                MemberIo::Recorder { .. } | MemberIo::RecorderChannel => {}
            }
        }
        let inputs = self
            .members
            .iter()
            .filter(|m| m.speaking)
            .map(|m| (m.id, &m.frame));
        self.mixer.tick(&self.graph, inputs, &mut self.out);
        for (listener, mixed) in self.out.iter() {
            let Ok(i) = self.members.binary_search_by_key(&listener, |m| m.id) else {
                continue;
            };
            let Some(payload) = mixed.payload() else {
                // A recorder: its linear mix, silence included (the file keeps the timeline).
                let m = &mut self.members[i];
                match &mut m.io {
                    MemberIo::Recorder {
                        writer,
                        error,
                        right: None,
                    } => {
                        if let Some(w) = writer.as_mut() {
                            if let Err(e) = w.write_samples(&mixed.to_linear()) {
                                tracing::warn!(room = self.id, error = %e, "recording failed");
                                *error = Some(e.to_string());
                                *writer = None;
                            }
                        }
                    }
                    // A stereo channel: kept until both are there (written below).
                    MemberIo::Recorder { .. } | MemberIo::RecorderChannel => {
                        m.frame = mixed.to_linear();
                    }
                    _ => {}
                }
                continue;
            };
            let MemberIo::Leg {
                link: Some(link),
                target: Some(t),
                mixing: true,
                tx_epoch,
                ..
            } = &mut self.members[i].io
            else {
                continue;
            };
            if link.shared.busy.load(Relaxed) {
                continue; // the leg plays to itself meanwhile
            }
            let out = &link.shared.out;
            let mut marker = false;
            if !out.is_current(*tx_epoch) {
                *tx_epoch = out.begin(now_us);
                marker = true;
            }
            let (seq, ts) = out.next(FRAME_SAMPLES as u32, now_us);
            let h = write_rtp_header(&mut self.payload, marker, t.pt, seq, ts, out.ssrc);
            let n = payload.len().min(FRAME_SAMPLES);
            self.payload[h..h + n].copy_from_slice(&payload[..n]);
            match link.socket.try_send_to(&self.payload[..h + n], t.addr) {
                Ok(_) => {
                    link.shared.count_sent(n);
                    sent += 1;
                }
                Err(e) => {
                    errors += 1;
                    tracing::debug!(leg = link.shared.id, error = %e, "room send failed");
                }
            }
        }
        self.write_stereo_recordings();
        self.count
            .stats
            .record_tick(started.elapsed(), sent, errors, trimmed);
        for member in finished {
            if self.remove(member) {
                let _ = self.events.send(RoomEvent::PlayerFinished { member });
            }
        }
    }
}

/// A leg in mixer mode decodes each audio packet into one room frame.
pub(super) fn to_room(link: &RoomLink, codec: Codec, payload: &[u8]) {
    let mut frame = [0i16; FRAME_SAMPLES];
    decode_frame(codec, payload, &mut frame);
    // Full: the room is behind; this frame is dropped (the queue keeps the room's delay bounded).
    if let Err(mpsc::error::TrySendError::Full(_)) = link.frames.try_send(frame) {
        link.stats.dropped_queue_full.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// An engine on loopback with RTP ports from `port_min`, and `n` PCMU legs, each sending to
    /// a phone socket of its own.
    async fn engine_with_legs(
        port_min: u16,
        n: usize,
    ) -> (MediaEngine, Vec<MediaLeg>, Vec<UdpSocket>) {
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let engine = MediaEngine::new(MediaConfig {
            bind_ip: local,
            advertise_ip: local,
            port_min,
            port_max: port_min + 4998,
        });
        let (mut legs, mut phones) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let leg = engine.allocate().await.expect("leg");
            let phone = UdpSocket::bind((local, 0)).await.expect("phone");
            leg.set_remote(RemoteMedia {
                addr: phone.local_addr().expect("addr"),
                codec: Codec::Pcmu,
                pt: 0,
                telephone_event_pt: None,
            });
            legs.push(leg);
            phones.push(phone);
        }
        (engine, legs, phones)
    }

    #[test]
    fn tick_histogram_counts_per_bucket() {
        let stats = RoomStats::default();
        stats.record_tick(Duration::from_micros(30), 5, 0, 0);
        stats.record_tick(Duration::from_micros(50), 5, 0, 1);
        stats.record_tick(Duration::from_micros(700), 4, 1, 0);
        stats.record_tick(Duration::from_millis(30), 5, 0, 0);
        stats.dropped_queue_full.fetch_add(2, Relaxed);
        let t = stats.snapshot();
        assert_eq!(t.ticks, 4);
        assert_eq!(t.tick_buckets, [2, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
        assert_eq!(t.mixed_frames_sent, 19);
        assert_eq!(t.send_errors, 1);
        assert_eq!(t.frames_dropped_jitter, 1);
        assert_eq!(t.frames_dropped_queue_full, 2);
        assert!(
            (t.tick_seconds_sum - 0.03078).abs() < 1e-9,
            "sum {}",
            t.tick_seconds_sum
        );
    }

    /// Three legs in a room: the room counts itself, its members, its ticks and the mixes it
    /// sends, and a member leg that closes or the room ending takes them off the gauges.
    #[tokio::test]
    async fn a_mixing_room_counts_ticks_members_and_frames() {
        let (engine, mut legs, phones) = engine_with_legs(40000, 3).await;
        let room = engine.create_room();
        for leg in &legs {
            room.add_leg(leg, Audience::All, Audience::All);
        }
        // Every member gets the room's stream (comfort silence: nobody speaks).
        let mut buf = [0u8; 2048];
        for phone in &phones {
            for _ in 0..5 {
                tokio::time::timeout(Duration::from_secs(2), phone.recv_from(&mut buf))
                    .await
                    .expect("a mixed frame within 2 s")
                    .expect("recv");
            }
        }
        let t = engine.room_totals();
        assert_eq!((t.rooms, t.members), (1, 3));
        assert!(t.ticks >= 5, "{t:?}");
        assert!(t.mixed_frames_sent >= 15, "{t:?}");
        assert_eq!(t.tick_buckets.iter().sum::<u64>(), t.ticks);
        assert!(t.tick_seconds_sum > 0.0);

        legs.pop().expect("leg").close();
        let deadline = Instant::now() + Duration::from_secs(2);
        while engine.room_totals().members != 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            engine.room_totals().members,
            2,
            "a closed leg leaves the room"
        );
        drop(room);
        let deadline = Instant::now() + Duration::from_secs(2);
        while engine.room_totals().rooms != 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = engine.room_totals();
        assert_eq!((t.rooms, t.members), (0, 0), "the room ended: {t:?}");
    }
    /// The room may tell a joining leg to mix before the leg has seen its JoinRoom (the room
    /// task runs on another thread): the leg must still end up handing its audio to the room
    /// and not keep its own silence fill going beside the room's stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leg_told_to_mix_before_it_joined_still_mixes() {
        let (engine, legs, phones) = engine_with_legs(45000, 3).await;
        let room = engine.create_room();
        for leg in &legs {
            leg.set_fill_silence(true);
        }
        room.add_leg(&legs[0], Audience::All, Audience::All);
        room.add_leg(&legs[1], Audience::All, Audience::All);
        // Leg 2 joins as `add_leg` does, but its JoinRoom arrives after the room has already
        // sent it RoomMix(true).
        let late = &legs[2];
        let member = room.next_id();
        let (frames_tx, frames) = mpsc::channel(ROOM_QUEUE);
        let _ = room.cmd.send(RoomCmd::AddLeg {
            member,
            leg_id: late.shared.id,
            leg_cmd: late.cmd.downgrade(),
            frames,
            heard_by: Audience::All,
            hears: Audience::All,
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        late.send(Command::Unbridge);
        late.send(Command::JoinRoom(RoomLink {
            room_id: room.id,
            member,
            frames: frames_tx,
            room: room.cmd.downgrade(),
            mixing: false,
            stats: room.stats.clone(),
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut buf = [0u8; 2048];
        for phone in &phones {
            while phone.try_recv_from(&mut buf).is_ok() {} // what came before the second measured
        }

        // Only leg 2's phone speaks; leg 0's phone must hear it.
        let speaker = &phones[2];
        let to = late.local_addr();
        let mut frame = [0u8; FRAME_SAMPLES];
        for (i, b) in frame.iter_mut().enumerate() {
            let v = 6000.0 * (std::f64::consts::TAU * 400.0 * i as f64 / 8000.0).sin();
            *b = crate::g711::linear_to_ulaw(v as i16);
        }
        let send = async {
            let mut pkt = [0u8; RTP_HEADER_LEN + FRAME_SAMPLES];
            for k in 0..50u16 {
                let h = write_rtp_header(&mut pkt, k == 0, 0, k, 160 * u32::from(k), 0x1234);
                pkt[h..h + FRAME_SAMPLES].copy_from_slice(&frame);
                speaker
                    .send_to(&pkt[..h + FRAME_SAMPLES], to)
                    .await
                    .expect("send");
                tokio::time::sleep(FRAME).await;
            }
        };
        let listen = async {
            let (mut audio, mut got) = (0, 0);
            let mut buf = [0u8; 2048];
            let end = Instant::now() + Duration::from_millis(1000);
            while let Ok(Ok((n, _))) = tokio::time::timeout(
                end.saturating_duration_since(Instant::now()),
                phones[0].recv_from(&mut buf),
            )
            .await
            {
                got += 1;
                if buf[RTP_HEADER_LEN..n].iter().any(|&b| b != 0xFF) {
                    audio += 1;
                }
            }
            (audio, got)
        };
        let count_late = async {
            let mut got = 0;
            let mut buf = [0u8; 2048];
            let end = Instant::now() + Duration::from_millis(1000);
            while let Ok(Ok(_)) = tokio::time::timeout(
                end.saturating_duration_since(Instant::now()),
                phones[2].recv_from(&mut buf),
            )
            .await
            {
                got += 1;
            }
            got
        };
        let ((), (audio, got), late_got) = tokio::join!(send, listen, count_late);
        assert!(audio >= 30, "leg 0 heard leg 2 in {audio} of {got} packets");
        assert!(
            (40..=60).contains(&late_got),
            "leg 2 got {late_got} packets in 1 s: one stream is 50"
        );
    }

    fn goertzel(pcm: &[i16], freq: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in pcm {
            let s0 = x as f64 + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        2.0 * (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0).sqrt() / pcm.len().max(1) as f64
    }

    /// Two legs speak their own tones into a room with recorders: one hears everyone (the file
    /// has both tones, in real time), one hears only the first leg (its tone, not the
    /// other's), a stereo one has the first leg on the left and the second on the right, and
    /// one hears only a looped player of a 0.25 s tone (heard to the end: it loops). Removing
    /// a recorder completes its WAV and says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recorder_member_writes_what_its_rules_let_it_hear() {
        let (engine, legs, phones) = engine_with_legs(50000, 2).await;
        let mut room = engine.create_room();
        let mut events = room.take_events().expect("events");
        let members: Vec<MemberId> = legs
            .iter()
            .map(|leg| room.add_leg(leg, Audience::All, Audience::All))
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "callplane-recorder-test-{}-{}",
            std::process::id(),
            engine.inner.next_leg_id.load(Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let all = room
            .record(dir.join("all.wav"), Audience::All)
            .expect("all");
        let first = room
            .record(dir.join("first.wav"), Audience::only([members[0]]))
            .expect("first");
        let (stereo, _) = room
            .record_stereo(
                dir.join("stereo.wav"),
                Audience::only([members[0]]),
                Audience::only([members[1]]),
            )
            .expect("stereo");
        let tone: Vec<i16> = (0..2000)
            .map(|i| {
                (5000.0 * (2.0 * std::f64::consts::PI * 700.0 * i as f64 / 8000.0).sin()) as i16
            })
            .collect();
        let music = room.play_looped(tone.into(), Audience::All);
        let looped = room
            .record(dir.join("looped.wav"), Audience::only([music]))
            .expect("looped");

        // One second of 500 Hz from the first phone and 1300 Hz from the second.
        let targets: Vec<_> = legs.iter().map(|l| l.local_addr()).collect();
        let mut pkt = [0u8; RTP_HEADER_LEN + FRAME_SAMPLES];
        let start = Instant::now();
        for n in 0..50u16 {
            for (k, (phone, freq)) in phones.iter().zip([500.0, 1300.0]).enumerate() {
                let pcm: Vec<i16> = (0..FRAME_SAMPLES)
                    .map(|i| {
                        let t = (n as usize * FRAME_SAMPLES + i) as f64 / 8000.0;
                        (6000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
                    })
                    .collect();
                let h = write_rtp_header(
                    &mut pkt,
                    n == 0,
                    0,
                    n,
                    u32::from(n) * FRAME_SAMPLES as u32,
                    0x1000 + k as u32,
                );
                crate::g711::encode_ulaw(&pcm, &mut pkt[h..]);
                phone.send_to(&pkt, targets[k]).await.expect("send");
            }
            tokio::time::sleep_until((start + FRAME * u32::from(n + 1)).into()).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        room.remove(all);
        room.remove(first);
        room.remove(stereo);
        room.remove(looped);
        room.remove(music);
        let mut finished = Vec::new();
        let mut player_done = false;
        while finished.len() < 4 || !player_done {
            match tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
                Ok(Some(RoomEvent::RecordingFinished {
                    member,
                    samples,
                    error,
                })) => {
                    assert_eq!(error, None);
                    finished.push((member, samples));
                }
                Ok(Some(RoomEvent::PlayerFinished { member })) => {
                    assert_eq!(member, music);
                    player_done = true;
                }
                Ok(Some(_)) => {}
                other => panic!("no RecordingFinished: {other:?}"),
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        for (member, samples) in &finished {
            // One frame per tick from when it joined: about the second and a bit it was there.
            let secs = *samples as f64 / 8000.0;
            assert!(
                secs > 0.9 && secs < elapsed + 0.3,
                "recorder {member:?} wrote {secs:.2} s over {elapsed:.2} s"
            );
        }
        let all_pcm = crate::wav::load_wav_8k(dir.join("all.wav")).expect("all.wav");
        let first_pcm = crate::wav::load_wav_8k(dir.join("first.wav")).expect("first.wav");
        let looped_pcm = crate::wav::load_wav_8k(dir.join("looped.wav")).expect("looped.wav");
        let stereo_raw = std::fs::read(dir.join("stereo.wav")).expect("stereo.wav");
        let _ = std::fs::remove_dir_all(&dir);
        // The stereo file: a 2-channel header, then left/right pairs.
        assert_eq!(u16::from_le_bytes([stereo_raw[22], stereo_raw[23]]), 2);
        assert_eq!(
            u32::from_le_bytes(stereo_raw[40..44].try_into().expect("4 bytes")) as usize,
            stereo_raw.len() - 44,
            "data size fixed up"
        );
        let samples: Vec<i16> = stereo_raw[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
        let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
        let (l5, l13) = (goertzel(&left, 500.0), goertzel(&left, 1300.0));
        let (r5, r13) = (goertzel(&right, 500.0), goertzel(&right, 1300.0));
        assert!(
            l5 > 1000.0 && l13 < 100.0,
            "stereo left: 500 Hz {l5:.0}, 1300 Hz {l13:.0}"
        );
        assert!(
            r13 > 1000.0 && r5 < 100.0,
            "stereo right: 500 Hz {r5:.0}, 1300 Hz {r13:.0}"
        );
        // The 0.25 s tone is still heard in the last quarter of a second and more: it looped.
        let tail = &looped_pcm[looped_pcm.len().saturating_sub(2000)..];
        assert!(
            looped_pcm.len() > 6000 && goertzel(tail, 700.0) > 1000.0,
            "looped player: {} samples, 700 Hz at the end {:.0}",
            looped_pcm.len(),
            goertzel(tail, 700.0)
        );
        let (a5, a13) = (goertzel(&all_pcm, 500.0), goertzel(&all_pcm, 1300.0));
        let (f5, f13) = (goertzel(&first_pcm, 500.0), goertzel(&first_pcm, 1300.0));
        assert!(
            a5 > 1000.0 && a13 > 1000.0,
            "all.wav: 500 Hz {a5:.0}, 1300 Hz {a13:.0}"
        );
        assert!(
            f5 > 1000.0 && f13 < 100.0,
            "first.wav: 500 Hz {f5:.0}, 1300 Hz {f13:.0}"
        );
    }
}
