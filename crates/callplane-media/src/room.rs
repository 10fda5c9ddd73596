//! Rooms: the one media primitive through which all audio of a call flows.
//!
//! A room has members: **legs** (RTP endpoints with a codec), **players** (prompts, TTS,
//! music on hold, tones: they only produce audio) and **recorders** (they only consume).
//! Every member carries two audio rules, each an [`Audience`] (`All`, `None` or a set of
//! member ids): whom it is *heard by* and whom it *hears*. Listen-only, whisper, barge and
//! mute are therefore data, not code paths:
//!
//! | situation              | `heard_by`         | `hears` |
//! |------------------------|--------------------|---------|
//! | normal party / barge   | `All`              | `All`   |
//! | listen-only monitor    | `None`             | `All`   |
//! | whisper to the agent   | `Only({agent})`    | `All`   |
//! | muted                  | (flag, see below)  | any     |
//!
//! Member X's audio reaches listener L iff X != L, X produces audio (a leg whose peer
//! sends, or a player) and is not muted, X's `heard_by` admits L, L consumes audio (a leg
//! whose peer receives, or a recorder) and L's `hears` admits X.
//!
//! This module is pure (sans-IO): no sockets, no tasks, no clock. It has two parts:
//!
//! * [`RoomGraph`]: the members and their rules; answers who receives whose audio
//!   ([`RoomGraph::sources_of`], [`RoomGraph::listeners_of`]) and whether the room is a
//!   plain two-party call that can keep the zero-copy packet relay
//!   ([`RoomGraph::fast_path`]). Every change bumps [`RoomGraph::generation`].
//! * [`Mixer`]: one 20 ms tick (160 samples at 8 kHz) per room. The driver hands in the
//!   decoded frame of every member that produced audio this tick; the mixer computes each
//!   listener's N−1 mix, saturates it to 16 bits and encodes it to the listener's codec
//!   (legs) or hands it over linear (recorders), in a reusable [`MixOutput`].

use crate::codec::Codec;
use crate::g711;
use crate::sdp::Direction;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Samples per 20 ms frame at 8 kHz: the mixer's tick.
pub const FRAME_SAMPLES: usize = 160;

/// One tick of linear 16-bit audio.
pub type Frame = [i16; FRAME_SAMPLES];

/// A linear frame of silence.
pub static SILENT_FRAME: Frame = [0; FRAME_SAMPLES];
static SILENCE_ULAW: [u8; FRAME_SAMPLES] = [g711::linear_to_ulaw(0); FRAME_SAMPLES];
static SILENCE_ALAW: [u8; FRAME_SAMPLES] = [g711::linear_to_alaw(0); FRAME_SAMPLES];

/// A 20 ms payload of silence in `codec` (0xFF for µ-law, 0xD5 for A-law).
pub fn silence_payload(codec: Codec) -> &'static [u8] {
    match codec {
        Codec::Pcmu => &SILENCE_ULAW,
        Codec::Pcma => &SILENCE_ALAW,
    }
}

/// Decode an RTP payload in `codec` into a mixer input frame. A payload shorter than a
/// frame is padded with silence, a longer one is cut. Returns the samples decoded.
pub fn decode_frame(codec: Codec, payload: &[u8], frame: &mut Frame) -> usize {
    let n = codec.decode(payload, frame);
    frame[n..].fill(0);
    n
}

/// Encode a linear frame into a 20 ms payload in `codec`.
pub fn encode_frame(codec: Codec, frame: &Frame, payload: &mut [u8; FRAME_SAMPLES]) {
    codec.encode(frame, payload);
}

/// Identity of a room member, allocated by [`RoomGraph::add`] and never reused by the
/// same graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(u32);

impl MemberId {
    /// A member id chosen by a driver that allocates ids itself (see
    /// [`RoomGraph::add_with_id`]).
    pub const fn from_raw(id: u32) -> Self {
        MemberId(id)
    }

    /// The raw number (for logs and maps keyed by it).
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// A set of members (sorted, without duplicates).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MemberSet(Vec<MemberId>);

impl MemberSet {
    /// The empty set.
    pub const fn new() -> Self {
        MemberSet(Vec::new())
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: MemberId) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    /// Add `id`; false if it was already there.
    pub fn insert(&mut self, id: MemberId) -> bool {
        match self.0.binary_search(&id) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, id);
                true
            }
        }
    }

    /// Remove `id`; false if it was not there.
    pub fn remove(&mut self, id: MemberId) -> bool {
        match self.0.binary_search(&id) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// The members, in ascending id order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = MemberId> + '_ {
        self.0.iter().copied()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<MemberId> for MemberSet {
    fn from_iter<T: IntoIterator<Item = MemberId>>(iter: T) -> Self {
        let mut v: Vec<MemberId> = iter.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        MemberSet(v)
    }
}

/// One audio rule of a member: whom it is heard by, or whom it hears.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Audience {
    /// Everyone in the room (the default).
    #[default]
    All,
    /// Nobody.
    None,
    /// Exactly these members (ids not in the room are ignored).
    Only(MemberSet),
}

impl Audience {
    /// `Only` the given members.
    pub fn only(ids: impl IntoIterator<Item = MemberId>) -> Self {
        Audience::Only(ids.into_iter().collect())
    }

    /// Whether the rule lets `id` through.
    pub fn admits(&self, id: MemberId) -> bool {
        match self {
            Audience::All => true,
            Audience::None => false,
            Audience::Only(set) => set.contains(id),
        }
    }
}

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberKind {
    /// An RTP endpoint.
    Leg {
        /// The codec negotiated with the peer: what it sends and what it gets.
        codec: Codec,
        /// The peer's SDP direction (as in [`crate::Negotiated::direction`]):
        /// `SendRecv` is full duplex; `SendOnly` (the peer holds us) produces but is sent
        /// nothing; `RecvOnly` (we hold the peer) only listens; `Inactive` does neither.
        direction: Direction,
    },
    /// A prompt, TTS, music on hold or tone source: only produces audio.
    Player,
    /// A recorder: only consumes audio, as linear samples.
    Recorder,
}

impl MemberKind {
    /// A full-duplex leg.
    pub const fn leg(codec: Codec) -> Self {
        MemberKind::Leg {
            codec,
            direction: Direction::SendRecv,
        }
    }

    /// Whether this kind of member puts audio into the room.
    pub const fn produces(self) -> bool {
        match self {
            MemberKind::Leg { direction, .. } => {
                matches!(direction, Direction::SendRecv | Direction::SendOnly)
            }
            MemberKind::Player => true,
            MemberKind::Recorder => false,
        }
    }

    /// Whether this kind of member takes audio out of the room.
    pub const fn consumes(self) -> bool {
        match self {
            MemberKind::Leg { direction, .. } => {
                matches!(direction, Direction::SendRecv | Direction::RecvOnly)
            }
            MemberKind::Player => false,
            MemberKind::Recorder => true,
        }
    }
}

/// A member of a room: its kind and audio rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    kind: MemberKind,
    heard_by: Audience,
    hears: Audience,
    muted: bool,
}

impl Member {
    /// What the member is.
    pub fn kind(&self) -> MemberKind {
        self.kind
    }

    /// The configured "heard by" rule. While muted the member is heard by nobody, but
    /// this rule is kept and applies again on unmute.
    pub fn heard_by(&self) -> &Audience {
        &self.heard_by
    }

    /// The "hears" rule.
    pub fn hears(&self) -> &Audience {
        &self.hears
    }

    /// Whether the member is muted.
    pub fn is_muted(&self) -> bool {
        self.muted
    }

    /// The leg's codec (None for players and recorders).
    pub fn codec(&self) -> Option<Codec> {
        match self.kind {
            MemberKind::Leg { codec, .. } => Some(codec),
            _ => None,
        }
    }

    /// Whether the member's audio can reach anybody at all (it produces, is not muted and
    /// its heard-by rule is not `None`).
    pub fn is_audible(&self) -> bool {
        self.kind.produces() && !self.muted && self.heard_by != Audience::None
    }

    /// Whether `listener` is admitted by this member's (effective) heard-by rule.
    fn heard_by_admits(&self, listener: MemberId) -> bool {
        self.kind.produces() && !self.muted && self.heard_by.admits(listener)
    }
}

/// Distinguishes graph instances so a [`Mixer`] never applies a plan cached for one
/// graph to another with the same generation.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

fn next_instance() -> u64 {
    NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed)
}

/// The members of a room and their audio rules: who receives whose audio.
#[derive(Debug)]
pub struct RoomGraph {
    instance: u64,
    generation: u64,
    next_id: u32,
    /// Sorted by id (ids are allocated ascending, so adding is a push).
    members: Vec<(MemberId, Member)>,
}

impl Clone for RoomGraph {
    /// The clone is a distinct graph for plan caching (it gets its own instance).
    fn clone(&self) -> Self {
        RoomGraph {
            instance: next_instance(),
            generation: self.generation,
            next_id: self.next_id,
            members: self.members.clone(),
        }
    }
}

impl Default for RoomGraph {
    fn default() -> Self {
        Self::new()
    }
}

impl RoomGraph {
    /// An empty room.
    pub fn new() -> Self {
        RoomGraph {
            instance: next_instance(),
            generation: 0,
            next_id: 1,
            members: Vec::new(),
        }
    }

    /// Bumped on every change of members or rules; a driver can cache anything derived
    /// from the graph (such as the fast-path decision) under it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn changed(&mut self) {
        self.generation += 1;
    }

    fn index_of(&self, id: MemberId) -> Option<usize> {
        self.members.binary_search_by_key(&id, |(m, _)| *m).ok()
    }

    /// Add a member heard by all and hearing all.
    pub fn add(&mut self, kind: MemberKind) -> MemberId {
        self.add_with_rules(kind, Audience::All, Audience::All)
    }

    /// Add a member with the given rules.
    pub fn add_with_rules(
        &mut self,
        kind: MemberKind,
        heard_by: Audience,
        hears: Audience,
    ) -> MemberId {
        let id = MemberId(self.next_id);
        self.next_id += 1;
        self.members.push((
            id,
            Member {
                kind,
                heard_by,
                hears,
                muted: false,
            },
        ));
        self.changed();
        id
    }

    /// Add a member under an id the driver allocated (a room handle hands out ids before its
    /// task has seen the member). Ids must grow: one not above every id used so far is
    /// refused (`false`).
    pub fn add_with_id(
        &mut self,
        id: MemberId,
        kind: MemberKind,
        heard_by: Audience,
        hears: Audience,
    ) -> bool {
        if id.0 < self.next_id {
            return false;
        }
        self.next_id = id.0;
        self.add_with_rules(kind, heard_by, hears) == id
    }

    /// Remove a member (and drop it from every other member's `Only` sets).
    pub fn remove(&mut self, id: MemberId) -> Option<Member> {
        let at = self.index_of(id)?;
        let (_, member) = self.members.remove(at);
        for (_, m) in &mut self.members {
            for rule in [&mut m.heard_by, &mut m.hears] {
                if let Audience::Only(set) = rule {
                    set.remove(id);
                }
            }
        }
        self.changed();
        Some(member)
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: MemberId) -> bool {
        self.index_of(id).is_some()
    }

    /// A member by id.
    pub fn get(&self, id: MemberId) -> Option<&Member> {
        self.index_of(id).map(|i| &self.members[i].1)
    }

    /// All members, in ascending id order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (MemberId, &Member)> + '_ {
        self.members.iter().map(|(id, m)| (*id, m))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the room is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Apply `f` to a member; bump the generation if it changed anything. False if there
    /// is no such member.
    fn update(&mut self, id: MemberId, f: impl FnOnce(&mut Member)) -> bool {
        let Some(at) = self.index_of(id) else {
            return false;
        };
        let m = &mut self.members[at].1;
        let before = m.clone();
        f(m);
        if *m != before {
            self.changed();
        }
        true
    }

    /// Set whom `id` is heard by. False if there is no such member.
    pub fn set_heard_by(&mut self, id: MemberId, heard_by: Audience) -> bool {
        self.update(id, |m| m.heard_by = heard_by)
    }

    /// Set whom `id` hears. False if there is no such member.
    pub fn set_hears(&mut self, id: MemberId, hears: Audience) -> bool {
        self.update(id, |m| m.hears = hears)
    }

    /// Set both rules of `id`. False if there is no such member.
    pub fn set_rules(&mut self, id: MemberId, heard_by: Audience, hears: Audience) -> bool {
        self.update(id, |m| {
            m.heard_by = heard_by;
            m.hears = hears;
        })
    }

    /// Mute `id`: heard by nobody until unmuted; its heard-by rule is kept.
    pub fn mute(&mut self, id: MemberId) -> bool {
        self.update(id, |m| m.muted = true)
    }

    /// Unmute `id`: its heard-by rule applies again.
    pub fn unmute(&mut self, id: MemberId) -> bool {
        self.update(id, |m| m.muted = false)
    }

    /// Change a leg's direction (hold/resume after a re-INVITE). False if `id` is not a leg.
    pub fn set_direction(&mut self, id: MemberId, direction: Direction) -> bool {
        if !matches!(self.get(id).map(Member::kind), Some(MemberKind::Leg { .. })) {
            return false;
        }
        self.update(id, |m| {
            if let MemberKind::Leg { direction: d, .. } = &mut m.kind {
                *d = direction;
            }
        })
    }

    /// Change a leg's codec (after a re-INVITE). False if `id` is not a leg.
    pub fn set_codec(&mut self, id: MemberId, codec: Codec) -> bool {
        if !matches!(self.get(id).map(Member::kind), Some(MemberKind::Leg { .. })) {
            return false;
        }
        self.update(id, |m| {
            if let MemberKind::Leg { codec: c, .. } = &mut m.kind {
                *c = codec;
            }
        })
    }

    /// Whether `source`'s audio reaches `listener`.
    pub fn can_hear(&self, listener: MemberId, source: MemberId) -> bool {
        match (self.get(listener), self.get(source)) {
            (Some(l), Some(s)) => reaches(listener, l, source, s),
            _ => false,
        }
    }

    /// The members `listener` hears, in ascending id order.
    pub fn sources_of(&self, listener: MemberId) -> impl Iterator<Item = MemberId> + '_ {
        let l = self.get(listener);
        self.members.iter().filter_map(move |(sid, s)| {
            let l = l?;
            reaches(listener, l, *sid, s).then_some(*sid)
        })
    }

    /// The members that hear `source`, in ascending id order.
    pub fn listeners_of(&self, source: MemberId) -> impl Iterator<Item = MemberId> + '_ {
        let s = self.get(source);
        self.members.iter().filter_map(move |(lid, l)| {
            let s = s?;
            reaches(*lid, l, source, s).then_some(*lid)
        })
    }

    /// `Some((a, b))` exactly when the room is a plain two-party call: its only members
    /// are two full-duplex legs with the same codec that hear each other (neither muted).
    /// Then the driver may keep relaying packets between them without mixing; anything
    /// else (a third member of any kind, a player, a recorder, a held or muted leg,
    /// differing codecs) needs the [`Mixer`].
    pub fn fast_path(&self) -> Option<(MemberId, MemberId)> {
        let [(a, ma), (b, mb)] = self.members.as_slice() else {
            return None;
        };
        let (
            MemberKind::Leg {
                codec: ca,
                direction: Direction::SendRecv,
            },
            MemberKind::Leg {
                codec: cb,
                direction: Direction::SendRecv,
            },
        ) = (ma.kind, mb.kind)
        else {
            return None;
        };
        (ca == cb && reaches(*a, ma, *b, mb) && reaches(*b, mb, *a, ma)).then_some((*a, *b))
    }
}

/// The audio rule in one place: does listener `lid` hear source `sid`?
fn reaches(lid: MemberId, l: &Member, sid: MemberId, s: &Member) -> bool {
    lid != sid && l.kind.consumes() && s.heard_by_admits(lid) && l.hears.admits(sid)
}

// ---------------------------------------------------------------------------------------
// Mixer
// ---------------------------------------------------------------------------------------

/// How a source enters the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not audible (does not produce, muted, heard by nobody): its input is ignored.
    Silent,
    /// Heard by all: part of the common sum.
    Common,
    /// Heard by a set only: added per listener.
    Restricted,
}

/// What the mixer does for one listener, derived from the graph.
#[derive(Debug, Clone, Copy)]
struct ListenerPlan {
    id: MemberId,
    /// Member index of the listener.
    index: usize,
    /// Output codec; None for a recorder (linear output).
    codec: Option<Codec>,
    /// The listener hears `All`: start from the common sum.
    common: bool,
    /// ... and is itself part of the common sum (subtract its own frame when present).
    own_in_common: bool,
    /// Range into `Plan::sources`: sources added one by one (restricted sources that
    /// admit a hears-`All` listener, or every admitted source of a hears-`Only` listener).
    start: usize,
    end: usize,
}

/// The graph compiled for mixing, cached under (graph instance, generation).
#[derive(Debug, Default)]
struct Plan {
    key: Option<(u64, u64)>,
    /// Member ids by member index (ascending, as in the graph).
    ids: Vec<MemberId>,
    role: Vec<Role>,
    /// Whether the member's input frame is used by anybody (copy it in).
    wanted: Vec<bool>,
    listeners: Vec<ListenerPlan>,
    /// Flat source-index lists referenced by `ListenerPlan::start..end`.
    sources: Vec<usize>,
    /// Scratch: indices of restricted sources.
    restricted: Vec<usize>,
    /// Listeners with codec output / with linear output (pool sizes).
    leg_listeners: usize,
    linear_listeners: usize,
}

impl Plan {
    fn rebuild(&mut self, g: &RoomGraph) {
        self.key = Some((g.instance, g.generation));
        self.ids.clear();
        self.role.clear();
        self.wanted.clear();
        self.listeners.clear();
        self.sources.clear();
        self.restricted.clear();
        self.leg_listeners = 0;
        self.linear_listeners = 0;

        for (i, (id, m)) in g.members.iter().enumerate() {
            self.ids.push(*id);
            let role = if !m.kind.produces() || m.muted {
                Role::Silent
            } else {
                match &m.heard_by {
                    Audience::All => Role::Common,
                    Audience::None => Role::Silent,
                    Audience::Only(set) if set.is_empty() => Role::Silent,
                    Audience::Only(_) => Role::Restricted,
                }
            };
            if role == Role::Restricted {
                self.restricted.push(i);
            }
            self.role.push(role);
            self.wanted.push(role == Role::Common);
        }

        for (li, (lid, l)) in g.members.iter().enumerate() {
            if !l.kind.consumes() {
                continue;
            }
            let start = self.sources.len();
            let (common, own_in_common) = match &l.hears {
                Audience::All => {
                    for &si in &self.restricted {
                        if si != li && g.members[si].1.heard_by_admits(*lid) {
                            self.sources.push(si);
                        }
                    }
                    (true, self.role[li] == Role::Common)
                }
                Audience::None => (false, false),
                Audience::Only(set) => {
                    for sid in set.iter() {
                        if let Some(si) = g.index_of(sid) {
                            if si != li
                                && self.role[si] != Role::Silent
                                && g.members[si].1.heard_by_admits(*lid)
                            {
                                self.sources.push(si);
                            }
                        }
                    }
                    (false, false)
                }
            };
            for &si in &self.sources[start..] {
                self.wanted[si] = true;
            }
            let codec = l.codec();
            if codec.is_some() {
                self.leg_listeners += 1;
            } else {
                self.linear_listeners += 1;
            }
            self.listeners.push(ListenerPlan {
                id: *lid,
                index: li,
                codec,
                common,
                own_in_common,
                start,
                end: self.sources.len(),
            });
        }
    }
}

/// Mixes one room, one 20 ms tick at a time.
///
/// Per tick the cost is: one copy of each present input frame, one addition of each
/// present heard-by-all frame into the common sum, and then per listener either nothing
/// (it gets the shared common mix or the shared silence frame) or one subtraction of its
/// own frame plus one addition per present restricted source, then saturate + encode.
///
/// **No allocation per tick after warm-up.** All working memory lives in the mixer and in
/// the [`MixOutput`] and is only cleared, never freed: the compiled plan's vectors, the
/// per-member input frames and presence flags are resized when the graph changes (and
/// only grow past their high-water mark); the output's entry list and frame pools are
/// pre-sized to their upper bound (one encoded frame per leg listener, one linear frame
/// per recorder plus one for the common mix) whenever the plan is rebuilt, so a tick
/// never pushes beyond capacity. Silence frames are statics.
pub struct Mixer {
    plan: Plan,
    /// Input frames by member index (valid where `present`).
    frames: Vec<Frame>,
    present: Vec<bool>,
    /// Member indices with `present` set this tick.
    present_list: Vec<usize>,
    /// Sum of the present heard-by-all frames.
    common: [i32; FRAME_SAMPLES],
    /// Per-listener accumulator.
    acc: [i32; FRAME_SAMPLES],
}

impl fmt::Debug for Mixer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mixer")
            .field("plan_key", &self.plan.key)
            .field("members", &self.plan.ids.len())
            .field("listeners", &self.plan.listeners.len())
            .finish_non_exhaustive()
    }
}

impl Default for Mixer {
    fn default() -> Self {
        Self::new()
    }
}

impl Mixer {
    /// A mixer with nothing compiled yet (the first tick compiles the graph).
    pub fn new() -> Self {
        Mixer {
            plan: Plan::default(),
            frames: Vec::new(),
            present: Vec::new(),
            present_list: Vec::new(),
            common: [0; FRAME_SAMPLES],
            acc: [0; FRAME_SAMPLES],
        }
    }

    /// Mix one tick of `graph` into `out` (previous contents are replaced).
    ///
    /// `inputs` yields the decoded frame of each member that produced audio this tick;
    /// members not yielded are silent (not speaking, lost packet, no packet yet). Frames
    /// of members that cannot be heard by anybody (recorders, recvonly legs, muted
    /// members, ...) and of unknown ids are ignored; if a member is yielded twice the
    /// last frame wins.
    ///
    /// Afterwards `out` holds one [`MixedFrame`] for every member that consumes audio:
    /// legs get their mix encoded in their codec, recorders get it linear. A listener
    /// that hears nobody speaking gets comfort silence (`silent == true`).
    pub fn tick<'f, I>(&mut self, graph: &RoomGraph, inputs: I, out: &mut MixOutput)
    where
        I: IntoIterator<Item = (MemberId, &'f Frame)>,
    {
        if self.plan.key != Some((graph.instance, graph.generation)) {
            self.plan.rebuild(graph);
            let n = self.plan.ids.len();
            self.frames.resize(n, [0; FRAME_SAMPLES]);
            self.present.clear();
            self.present.resize(n, false);
            self.present_list.clear();
            self.present_list.reserve(n);
            out.reserve(&self.plan);
        }
        let Mixer {
            plan,
            frames,
            present,
            present_list,
            common,
            acc,
        } = self;

        // Inputs.
        for &i in present_list.iter() {
            present[i] = false;
        }
        present_list.clear();
        for (id, frame) in inputs {
            let Ok(i) = plan.ids.binary_search(&id) else {
                continue;
            };
            if !plan.wanted[i] {
                continue;
            }
            frames[i] = *frame;
            if !present[i] {
                present[i] = true;
                present_list.push(i);
            }
        }

        // The common sum: every present heard-by-all source, once for the whole room.
        common.fill(0);
        let mut common_n = 0usize;
        for &i in present_list.iter() {
            if plan.role[i] == Role::Common {
                add(common, &frames[i]);
                common_n += 1;
            }
        }

        out.begin(present_list.len());
        for lp in &plan.listeners {
            let own = lp.own_in_common && present[lp.index];
            let extra = &plan.sources[lp.start..lp.end];
            let extra_n = extra.iter().filter(|&&s| present[s]).count();
            let base_n = if lp.common {
                common_n - usize::from(own)
            } else {
                0
            };
            let n = base_n + extra_n;
            if n == 0 {
                out.push_silence(lp.id, lp.codec);
            } else if lp.common && !own && extra_n == 0 {
                // Exactly the common mix: shared by every such listener (per codec).
                out.push_common(lp.id, lp.codec, common, n);
            } else {
                if lp.common {
                    *acc = *common;
                    if own {
                        sub(acc, &frames[lp.index]);
                    }
                } else {
                    acc.fill(0);
                }
                for &s in extra {
                    if present[s] {
                        add(acc, &frames[s]);
                    }
                }
                out.push_unique(lp.id, lp.codec, acc, n);
            }
        }
    }
}

#[inline]
fn add(acc: &mut [i32; FRAME_SAMPLES], frame: &Frame) {
    for (a, &s) in acc.iter_mut().zip(frame) {
        *a += i32::from(s);
    }
}

#[inline]
fn sub(acc: &mut [i32; FRAME_SAMPLES], frame: &Frame) {
    for (a, &s) in acc.iter_mut().zip(frame) {
        *a -= i32::from(s);
    }
}

#[inline]
fn saturate(v: i32) -> i16 {
    v.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

/// Saturate and encode in one pass.
fn encode_mix(codec: Codec, acc: &[i32; FRAME_SAMPLES], out: &mut [u8; FRAME_SAMPLES]) {
    match codec {
        Codec::Pcmu => {
            for (o, &a) in out.iter_mut().zip(acc) {
                *o = g711::linear_to_ulaw(saturate(a));
            }
        }
        Codec::Pcma => {
            for (o, &a) in out.iter_mut().zip(acc) {
                *o = g711::linear_to_alaw(saturate(a));
            }
        }
    }
}

fn saturate_into(acc: &[i32; FRAME_SAMPLES], out: &mut Frame) {
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = saturate(a);
    }
}

const fn codec_slot(codec: Codec) -> usize {
    match codec {
        Codec::Pcmu => 0,
        Codec::Pcma => 1,
    }
}

/// Where an output frame's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buf {
    Silence,
    Encoded(usize),
    Linear(usize),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: MemberId,
    codec: Option<Codec>,
    buf: Buf,
    sources: u32,
}

/// Counters of one tick, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixStats {
    /// Input frames accepted (members speaking and heard by somebody).
    pub speakers: u32,
    /// Frames output (members consuming audio).
    pub listeners: u32,
    /// Of those, comfort silence.
    pub silent: u32,
    /// Distinct mixes computed (each listener-specific mix, plus the shared common mix once).
    pub mixes: u32,
    /// G.711 frames encoded (silence is never encoded).
    pub encodes: u32,
}

/// The result of one [`Mixer::tick`]: a frame per listener. Reused across ticks.
#[derive(Default)]
pub struct MixOutput {
    /// In ascending listener id order.
    entries: Vec<Entry>,
    encoded: Vec<[u8; FRAME_SAMPLES]>,
    encoded_used: usize,
    linear: Vec<Frame>,
    linear_used: usize,
    /// Pool slots of this tick's common mix, computed on first use.
    common_linear: Option<usize>,
    common_encoded: [Option<usize>; 2],
    stats: MixStats,
}

impl fmt::Debug for MixOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MixOutput")
            .field("listeners", &self.entries.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl MixOutput {
    /// An empty output; pass it to every tick of the same room.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of listener frames.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no listener.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// This tick's counters.
    pub fn stats(&self) -> MixStats {
        self.stats
    }

    /// Every listener's frame, in ascending listener id order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (MemberId, MixedFrame<'_>)> + '_ {
        self.entries.iter().map(move |e| (e.id, self.frame(e)))
    }

    /// The frame for `listener`, if it is a listener of the room.
    pub fn get(&self, listener: MemberId) -> Option<MixedFrame<'_>> {
        let at = self
            .entries
            .binary_search_by_key(&listener, |e| e.id)
            .ok()?;
        Some(self.frame(&self.entries[at]))
    }

    fn frame(&self, e: &Entry) -> MixedFrame<'_> {
        let audio = match (e.codec, e.buf) {
            (Some(codec), Buf::Silence) => MixedAudio::Encoded {
                codec,
                payload: silence_payload(codec),
            },
            (Some(codec), Buf::Encoded(i)) => MixedAudio::Encoded {
                codec,
                payload: &self.encoded[i],
            },
            (None, Buf::Linear(i)) => MixedAudio::Linear(&self.linear[i]),
            (None, _) => MixedAudio::Linear(&SILENT_FRAME),
            (Some(codec), Buf::Linear(_)) => unreachable!("leg {} given linear {codec}", e.id),
        };
        MixedFrame {
            audio,
            silent: e.buf == Buf::Silence,
            sources: e.sources,
        }
    }

    /// Pre-size everything to the plan's upper bound so ticks never allocate.
    fn reserve(&mut self, plan: &Plan) {
        let n = plan.listeners.len();
        self.entries.clear();
        self.entries.reserve(n);
        if self.encoded.len() < plan.leg_listeners {
            self.encoded.resize(plan.leg_listeners, [0; FRAME_SAMPLES]);
        }
        // One per recorder plus the common mix (which legs encode from).
        let linear = plan.linear_listeners + 1;
        if self.linear.len() < linear {
            self.linear.resize(linear, [0; FRAME_SAMPLES]);
        }
    }

    fn begin(&mut self, speakers: usize) {
        self.entries.clear();
        self.encoded_used = 0;
        self.linear_used = 0;
        self.common_linear = None;
        self.common_encoded = [None; 2];
        self.stats = MixStats {
            speakers: speakers as u32,
            ..MixStats::default()
        };
    }

    fn alloc_encoded(&mut self) -> usize {
        if self.encoded_used == self.encoded.len() {
            // Only if a caller mixes different rooms into one output; see `reserve`.
            self.encoded.push([0; FRAME_SAMPLES]);
        }
        self.encoded_used += 1;
        self.encoded_used - 1
    }

    fn alloc_linear(&mut self) -> usize {
        if self.linear_used == self.linear.len() {
            self.linear.push([0; FRAME_SAMPLES]);
        }
        self.linear_used += 1;
        self.linear_used - 1
    }

    fn push(&mut self, id: MemberId, codec: Option<Codec>, buf: Buf, sources: usize) {
        self.stats.listeners += 1;
        if buf == Buf::Silence {
            self.stats.silent += 1;
        }
        self.entries.push(Entry {
            id,
            codec,
            buf,
            sources: sources as u32,
        });
    }

    fn push_silence(&mut self, id: MemberId, codec: Option<Codec>) {
        self.push(id, codec, Buf::Silence, 0);
    }

    fn push_common(
        &mut self,
        id: MemberId,
        codec: Option<Codec>,
        common: &[i32; FRAME_SAMPLES],
        n: usize,
    ) {
        let lin = match self.common_linear {
            Some(i) => i,
            None => {
                let i = self.alloc_linear();
                saturate_into(common, &mut self.linear[i]);
                self.common_linear = Some(i);
                self.stats.mixes += 1;
                i
            }
        };
        let buf = match codec {
            None => Buf::Linear(lin),
            Some(c) => match self.common_encoded[codec_slot(c)] {
                Some(e) => Buf::Encoded(e),
                None => {
                    let e = self.alloc_encoded();
                    c.encode(&self.linear[lin], &mut self.encoded[e]);
                    self.common_encoded[codec_slot(c)] = Some(e);
                    self.stats.encodes += 1;
                    Buf::Encoded(e)
                }
            },
        };
        self.push(id, codec, buf, n);
    }

    fn push_unique(
        &mut self,
        id: MemberId,
        codec: Option<Codec>,
        acc: &[i32; FRAME_SAMPLES],
        n: usize,
    ) {
        self.stats.mixes += 1;
        let buf = match codec {
            None => {
                let i = self.alloc_linear();
                saturate_into(acc, &mut self.linear[i]);
                Buf::Linear(i)
            }
            Some(c) => {
                let e = self.alloc_encoded();
                encode_mix(c, acc, &mut self.encoded[e]);
                self.stats.encodes += 1;
                Buf::Encoded(e)
            }
        };
        self.push(id, codec, buf, n);
    }
}

/// One listener's audio for this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixedFrame<'a> {
    /// The samples, encoded for a leg or linear for a recorder.
    pub audio: MixedAudio<'a>,
    /// Nobody the listener may hear spoke: this is comfort silence. A driver sends it
    /// anyway to keep the RTP stream continuous (or may skip it, e.g. to a recorder).
    pub silent: bool,
    /// Number of sources mixed in (0 when silent).
    pub sources: u32,
}

/// The samples of a [`MixedFrame`]. Listeners with the same mix and codec (everyone who
/// hears exactly the heard-by-all sources, or silence) share one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixedAudio<'a> {
    /// For a leg: one 20 ms G.711 payload (160 bytes) in the leg's codec.
    Encoded {
        /// The leg's codec.
        codec: Codec,
        /// The RTP payload.
        payload: &'a [u8],
    },
    /// For a recorder: 160 linear samples.
    Linear(&'a [i16]),
}

impl<'a> MixedFrame<'a> {
    /// The codec of an encoded frame (None for linear).
    pub fn codec(&self) -> Option<Codec> {
        match self.audio {
            MixedAudio::Encoded { codec, .. } => Some(codec),
            MixedAudio::Linear(_) => None,
        }
    }

    /// The RTP payload of an encoded frame.
    pub fn payload(&self) -> Option<&'a [u8]> {
        match self.audio {
            MixedAudio::Encoded { payload, .. } => Some(payload),
            MixedAudio::Linear(_) => None,
        }
    }

    /// The samples of a linear frame.
    pub fn linear(&self) -> Option<&'a [i16]> {
        match self.audio {
            MixedAudio::Encoded { .. } => None,
            MixedAudio::Linear(s) => Some(s),
        }
    }

    /// The frame as linear samples (decoding G.711 if needed).
    pub fn to_linear(&self) -> Frame {
        let mut f = [0; FRAME_SAMPLES];
        match self.audio {
            MixedAudio::Encoded { codec, payload } => {
                decode_frame(codec, payload, &mut f);
            }
            MixedAudio::Linear(s) => f[..s.len()].copy_from_slice(s),
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCMU: MemberKind = MemberKind::leg(Codec::Pcmu);
    const PCMA: MemberKind = MemberKind::leg(Codec::Pcma);

    fn dc(v: i16) -> Frame {
        [v; FRAME_SAMPLES]
    }

    /// A sine with an integer number of cycles per frame: distinct `cycles` are orthogonal
    /// over the frame, so projecting a mix on each tells which signals are in it.
    fn sine(cycles: usize, amp: f64) -> Frame {
        let mut f = [0; FRAME_SAMPLES];
        for (n, s) in f.iter_mut().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * (cycles * n) as f64 / FRAME_SAMPLES as f64;
            *s = (ph.sin() * amp).round() as i16;
        }
        f
    }

    /// How much of `reference` is in `mix` (1.0 = fully present, 0.0 = absent).
    fn gain(mix: &Frame, reference: &Frame) -> f64 {
        let dot: f64 = mix
            .iter()
            .zip(reference)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum();
        let norm: f64 = reference.iter().map(|&b| b as f64 * b as f64).sum();
        dot / norm
    }

    fn present(mix: &Frame, reference: &Frame) -> bool {
        let g = gain(mix, reference);
        assert!(
            (g - 1.0).abs() < 0.05 || g.abs() < 0.05,
            "ambiguous gain {g}"
        );
        g > 0.5
    }

    /// Every sample within G.711 quantisation of `expected` (saturated to 16 bits).
    fn assert_near(mix: &Frame, expected: i32) {
        let e = expected.clamp(-32767, 32767);
        let tol = e.abs() / 16 + 32;
        for &s in mix {
            assert!((s as i32 - e).abs() <= tol, "{s} vs {expected}");
        }
    }

    fn heard(out: &MixOutput, id: MemberId) -> Frame {
        out.get(id).expect("listener has a frame").to_linear()
    }

    #[test]
    fn listen_only_member_hears_all_and_is_heard_by_nobody() {
        let mut g = RoomGraph::new();
        let a = g.add(PCMU);
        let b = g.add(PCMU);
        let l = g.add_with_rules(PCMU, Audience::None, Audience::All);
        assert_eq!(g.fast_path(), None);
        assert_eq!(g.sources_of(l).collect::<Vec<_>>(), [a, b]);
        assert_eq!(g.listeners_of(l).count(), 0);
        let (sa, sb, sl) = (sine(3, 4000.0), sine(5, 4000.0), sine(7, 4000.0));
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, [(a, &sa), (b, &sb), (l, &sl)], &mut out);
        let (ha, hb, hl) = (heard(&out, a), heard(&out, b), heard(&out, l));
        assert!(present(&ha, &sb) && !present(&ha, &sl) && !present(&ha, &sa));
        assert!(present(&hb, &sa) && !present(&hb, &sl) && !present(&hb, &sb));
        assert!(present(&hl, &sa) && present(&hl, &sb) && !present(&hl, &sl));
        assert_eq!(out.get(l).unwrap().sources, 2);
        // The monitor's "speech" was not even taken in.
        assert_eq!(out.stats().speakers, 2);
    }

    #[test]
    fn whisper_reaches_only_the_agent() {
        let mut g = RoomGraph::new();
        let customer = g.add(PCMU);
        let agent = g.add(PCMA);
        let sup = g.add_with_rules(PCMU, Audience::only([agent]), Audience::All);
        assert!(g.can_hear(agent, sup) && !g.can_hear(customer, sup));
        assert_eq!(g.listeners_of(sup).collect::<Vec<_>>(), [agent]);
        let (sc, sa, ss) = (sine(2, 5000.0), sine(4, 5000.0), sine(6, 5000.0));
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, [(customer, &sc), (agent, &sa), (sup, &ss)], &mut out);
        let hc = heard(&out, customer);
        assert!(present(&hc, &sa) && !present(&hc, &ss) && !present(&hc, &sc));
        let ha = heard(&out, agent);
        assert!(present(&ha, &sc) && present(&ha, &ss) && !present(&ha, &sa));
        let hs = heard(&out, sup);
        assert!(present(&hs, &sc) && present(&hs, &sa) && !present(&hs, &ss));

        // The whisper alone: the agent hears it, the customer gets comfort silence.
        m.tick(&g, [(sup, &ss)], &mut out);
        let fa = out.get(agent).unwrap();
        assert!(!fa.silent && present(&fa.to_linear(), &ss));
        assert!(out.get(customer).unwrap().silent);
        assert!(out.get(sup).unwrap().silent);
    }

    #[test]
    fn barge_supervisor_heard_by_all() {
        let mut g = RoomGraph::new();
        let customer = g.add(PCMU);
        let agent = g.add(PCMU);
        let sup = g.add_with_rules(PCMU, Audience::only([agent]), Audience::All);
        assert!(g.set_heard_by(sup, Audience::All)); // whisper -> barge
        let (sc, sa, ss) = (dc(1000), dc(2000), dc(4000));
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, [(customer, &sc), (agent, &sa), (sup, &ss)], &mut out);
        assert_near(&heard(&out, customer), 6000);
        assert_near(&heard(&out, agent), 5000);
        assert_near(&heard(&out, sup), 3000);
    }

    #[test]
    fn mute_then_unmute() {
        let mut g = RoomGraph::new();
        let a = g.add(PCMU);
        let b = g.add(PCMU);
        let c = g.add(PCMU);
        let (sa, sb, sc) = (dc(1000), dc(2000), dc(4000));
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        let inputs = [(a, &sa), (b, &sb), (c, &sc)];

        assert!(g.mute(b));
        assert!(g.get(b).unwrap().is_muted() && !g.get(b).unwrap().is_audible());
        assert_eq!(g.listeners_of(b).count(), 0);
        m.tick(&g, inputs, &mut out);
        assert_near(&heard(&out, a), 4000);
        assert_near(&heard(&out, c), 1000);
        assert_near(&heard(&out, b), 5000); // a muted member still hears

        assert!(g.unmute(b));
        m.tick(&g, inputs, &mut out);
        assert_near(&heard(&out, a), 6000);
        assert_near(&heard(&out, c), 3000);
        assert_near(&heard(&out, b), 5000);

        // Muting keeps a whisper rule; unmuting restores it.
        g.set_heard_by(b, Audience::only([a]));
        g.mute(b);
        m.tick(&g, inputs, &mut out);
        assert_near(&heard(&out, a), 4000);
        g.unmute(b);
        assert_eq!(g.get(b).unwrap().heard_by(), &Audience::only([a]));
        m.tick(&g, inputs, &mut out);
        assert_near(&heard(&out, a), 6000);
        assert_near(&heard(&out, c), 1000);
    }

    #[test]
    fn player_is_mixed_with_the_relay_not_substituted() {
        let mut g = RoomGraph::new();
        let a = g.add(PCMU);
        let b = g.add(PCMU);
        assert_eq!(g.fast_path(), Some((a, b)));
        let p = g.add(MemberKind::Player);
        assert_eq!(g.fast_path(), None);
        let (sa, sb, sp) = (sine(3, 6000.0), sine(5, 6000.0), sine(8, 6000.0));
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, [(a, &sa), (b, &sb), (p, &sp)], &mut out);
        assert_eq!(out.len(), 2, "a player is not a listener");
        assert!(out.get(p).is_none());
        let ha = heard(&out, a);
        assert!(present(&ha, &sb) && present(&ha, &sp) && !present(&ha, &sa));
        let hb = heard(&out, b);
        assert!(present(&hb, &sa) && present(&hb, &sp) && !present(&hb, &sb));
        assert_eq!(out.get(a).unwrap().sources, 2);
    }

    #[test]
    fn different_codecs_each_receive_own_codec() {
        let mut g = RoomGraph::new();
        let u = g.add(PCMU);
        let a = g.add(PCMA);
        assert_eq!(g.fast_path(), None);
        let (su, sa) = (sine(4, 9000.0), sine(9, 9000.0));
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, [(u, &su), (a, &sa)], &mut out);
        let fu = out.get(u).unwrap();
        let fa = out.get(a).unwrap();
        assert_eq!(fu.codec(), Some(Codec::Pcmu));
        assert_eq!(fa.codec(), Some(Codec::Pcma));
        // A single source is passed through exactly: the other's frame in my codec.
        let mut want = [0u8; FRAME_SAMPLES];
        encode_frame(Codec::Pcmu, &sa, &mut want);
        assert_eq!(fu.payload().unwrap(), want);
        encode_frame(Codec::Pcma, &su, &mut want);
        assert_eq!(fa.payload().unwrap(), want);
        assert!(present(&fu.to_linear(), &sa) && !present(&fu.to_linear(), &su));
        assert!(present(&fa.to_linear(), &su) && !present(&fa.to_linear(), &sa));

        // A re-INVITE to the same codec makes it a relay again.
        assert!(g.set_codec(a, Codec::Pcmu));
        assert_eq!(g.fast_path(), Some((u, a)));
        let p = g.add(MemberKind::Player);
        assert!(!g.set_codec(p, Codec::Pcmu));
    }

    #[test]
    fn fast_path_only_for_two_same_codec_full_duplex_legs() {
        let mut g = RoomGraph::new();
        assert_eq!(g.fast_path(), None);
        let a = g.add(PCMA);
        assert_eq!(g.fast_path(), None);
        let b = g.add(PCMA);
        assert_eq!(g.fast_path(), Some((a, b)));

        let c = g.add(PCMA);
        assert_eq!(g.fast_path(), None, "3 legs");
        g.remove(c);
        assert_eq!(g.fast_path(), Some((a, b)));

        let r = g.add(MemberKind::Recorder);
        assert_eq!(g.fast_path(), None, "recorder");
        g.remove(r);
        let p = g.add(MemberKind::Player);
        assert_eq!(g.fast_path(), None, "player");
        g.remove(p);

        g.mute(b);
        assert_eq!(g.fast_path(), None, "muted");
        g.unmute(b);
        assert_eq!(g.fast_path(), Some((a, b)));

        for held in [
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ] {
            assert!(g.set_direction(a, held));
            assert_eq!(g.fast_path(), None, "held {held}");
        }
        g.set_direction(a, Direction::SendRecv);
        assert_eq!(g.fast_path(), Some((a, b)));

        g.set_hears(b, Audience::None);
        assert_eq!(g.fast_path(), None, "one-way rules");
        g.set_hears(b, Audience::only([a]));
        assert_eq!(g.fast_path(), Some((a, b)));
        g.set_heard_by(a, Audience::only([c]));
        assert_eq!(g.fast_path(), None, "a heard by a non-member only");
    }

    #[test]
    fn saturation_clamps_without_wraparound() {
        let mut g = RoomGraph::new();
        let a = g.add(PCMU);
        let b = g.add(PCMA);
        let c = g.add(PCMU);
        let r = g.add(MemberKind::Recorder);
        let mut m = Mixer::new();
        let mut out = MixOutput::new();

        let loud = dc(30000);
        m.tick(&g, [(a, &loud), (b, &loud)], &mut out);
        assert_eq!(out.get(r).unwrap().linear().unwrap(), [i16::MAX; 160]);
        assert!(
            heard(&out, c).iter().all(|&s| s == 32124),
            "µ-law full scale"
        );
        assert_near(&heard(&out, a), 30000);

        let neg = dc(-30000);
        m.tick(&g, [(a, &neg), (b, &neg)], &mut out);
        assert_eq!(out.get(r).unwrap().linear().unwrap(), [i16::MIN; 160]);
        assert!(heard(&out, c).iter().all(|&s| s == -32124));

        // Loud signals that overflow i16 midway through the sum but cancel out are
        // exact: the sum runs in i32 and only the result saturates.
        let s1 = sine(2, 32000.0);
        let s2 = s1.map(|s| -s);
        m.tick(&g, [(a, &s1), (c, &s1), (b, &s2)], &mut out);
        assert_eq!(out.get(r).unwrap().linear().unwrap(), s1);
        assert!(!out.get(a).unwrap().silent);
        assert!(heard(&out, a).iter().all(|&s| s == 0), "b and c cancel");
    }

    #[test]
    fn comfort_silence_when_nobody_speaks() {
        let mut g = RoomGraph::new();
        let a = g.add(PCMU);
        let b = g.add(PCMA);
        let c = g.add_with_rules(PCMU, Audience::All, Audience::None);
        let r = g.add(MemberKind::Recorder);
        let p = g.add(MemberKind::Player);
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, [], &mut out);
        assert_eq!(out.len(), 4);
        for (id, f) in out.iter() {
            assert!(f.silent, "{id}");
            assert_eq!(f.sources, 0);
            assert!(f.to_linear().iter().all(|&s| s.abs() <= 8), "{id}");
        }
        assert_eq!(out.get(a).unwrap().payload().unwrap(), [0xFF; 160]);
        assert_eq!(out.get(b).unwrap().payload().unwrap(), [0xD5; 160]);
        assert_eq!(out.get(r).unwrap().linear().unwrap(), [0; 160]);
        assert_eq!(out.stats().encodes, 0);

        // A member hearing nobody gets silence even when others speak; so does a lone speaker.
        let s = dc(3000);
        m.tick(&g, [(p, &s)], &mut out);
        assert!(out.get(c).unwrap().silent);
        assert!(!out.get(a).unwrap().silent && !out.get(r).unwrap().silent);
        m.tick(&g, [(a, &s)], &mut out);
        assert!(out.get(a).unwrap().silent);
        assert_near(&heard(&out, b), 3000);
    }

    #[test]
    fn n_minus_one_five_members_all_speaking() {
        let mut g = RoomGraph::new();
        let ids: Vec<MemberId> = (0..5)
            .map(|i| g.add(if i % 2 == 0 { PCMU } else { PCMA }))
            .collect();
        let frames: Vec<Frame> = (1..=5).map(|k| dc(k * 1000)).collect();
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, ids.iter().copied().zip(&frames), &mut out);
        assert_eq!(out.len(), 5);
        for (i, &id) in ids.iter().enumerate() {
            let f = out.get(id).unwrap();
            assert_eq!(f.sources, 4);
            assert_near(&f.to_linear(), 15000 - (i as i32 + 1) * 1000);
        }
        // Signals: each hears exactly the other four.
        let sines: Vec<Frame> = (1..=5).map(|k| sine(k, 3000.0)).collect();
        m.tick(&g, ids.iter().copied().zip(&sines), &mut out);
        for (i, &id) in ids.iter().enumerate() {
            let h = heard(&out, id);
            for (j, s) in sines.iter().enumerate() {
                assert_eq!(present(&h, s), i != j, "{i} hears {j}");
            }
        }
        assert_eq!(out.stats().mixes, 5);
    }

    #[test]
    fn large_room_200_members_10_speaking() {
        let mut g = RoomGraph::new();
        let ids: Vec<MemberId> = (0..200)
            .map(|i| g.add(if i % 2 == 0 { PCMU } else { PCMA }))
            .collect();
        // Speakers spread over the room, each with its own tone.
        let speakers: Vec<MemberId> = (0..10).map(|i| ids[i * 19 + 3]).collect();
        let tones: Vec<Frame> = (1..=10).map(|k| sine(k, 2500.0)).collect();
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, speakers.iter().copied().zip(&tones), &mut out);
        assert_eq!(out.len(), 200);
        let st = out.stats();
        assert_eq!(st.speakers, 10);
        assert_eq!(st.mixes, 11, "10 N-1 mixes + the common one");
        assert_eq!(st.encodes, 12, "10 + the common mix in each codec");

        let mut shared: [Option<*const u8>; 2] = [None, None];
        for (id, f) in out.iter() {
            let h = f.to_linear();
            let me = speakers.iter().position(|&s| s == id);
            for (k, t) in tones.iter().enumerate() {
                assert_eq!(present(&h, t), me != Some(k), "{id} hears tone {k}");
            }
            assert_eq!(f.sources, if me.is_some() { 9 } else { 10 });
            if me.is_none() {
                // Everyone who hears all ten shares one encoded frame per codec.
                let slot = &mut shared[codec_slot(f.codec().unwrap())];
                let ptr = f.payload().unwrap().as_ptr();
                assert_eq!(*slot.get_or_insert(ptr), ptr);
            }
        }
    }

    #[test]
    fn recorder_gets_the_linear_room_mix() {
        let mut g = RoomGraph::new();
        let a = g.add(PCMU);
        let b = g.add(PCMA);
        let r = g.add(MemberKind::Recorder);
        let r2 = g.add_with_rules(MemberKind::Recorder, Audience::All, Audience::only([a]));
        let (sa, sb) = (dc(1234), dc(-300));
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, [(a, &sa), (b, &sb), (r, &dc(9999))], &mut out);
        assert_eq!(out.get(r).unwrap().linear().unwrap(), [934; 160]);
        assert_eq!(out.get(r2).unwrap().linear().unwrap(), [1234; 160]);
        assert_eq!(out.get(r).unwrap().codec(), None);
        // Both legs hear the sum minus themselves, not the recorder's input.
        assert_near(&heard(&out, a), -300);
        assert_near(&heard(&out, b), 1234);
    }

    #[test]
    fn directions_decide_who_produces_and_consumes() {
        let mut g = RoomGraph::new();
        let a = g.add(PCMU);
        let held_by_peer = g.add(MemberKind::Leg {
            codec: Codec::Pcmu,
            direction: Direction::SendOnly,
        });
        let held_by_us = g.add(MemberKind::Leg {
            codec: Codec::Pcmu,
            direction: Direction::RecvOnly,
        });
        let moh = g.add_with_rules(
            MemberKind::Player,
            Audience::only([held_by_us]),
            Audience::None,
        );
        let (sa, s1, s2, sm) = (dc(1000), dc(2000), dc(4000), dc(8000));
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(
            &g,
            [(a, &sa), (held_by_peer, &s1), (held_by_us, &s2), (moh, &sm)],
            &mut out,
        );
        assert!(
            out.get(held_by_peer).is_none(),
            "sendonly peer is sent nothing"
        );
        assert_near(&heard(&out, a), 2000);
        assert_near(&heard(&out, held_by_us), 11000);
        assert_eq!(
            g.sources_of(held_by_us).collect::<Vec<_>>(),
            [a, held_by_peer, moh]
        );
        // Resume: the held leg is full duplex again and heard.
        g.set_direction(held_by_us, Direction::SendRecv);
        m.tick(&g, [(held_by_us, &s2)], &mut out);
        assert_near(&heard(&out, a), 4000);
    }

    #[test]
    fn hears_only_set_sums_per_listener() {
        let mut g = RoomGraph::new();
        let a = g.add(PCMU);
        let b = g.add(PCMU);
        let c = g.add(PCMU);
        let w = g.add_with_rules(PCMU, Audience::only([a, b]), Audience::All);
        // b hears only c and the whisperer w.
        g.set_hears(b, Audience::only([c, w]));
        let (sa, sb, sc, sw) = (dc(1000), dc(2000), dc(4000), dc(8000));
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, [(a, &sa), (b, &sb), (c, &sc), (w, &sw)], &mut out);
        assert_near(&heard(&out, a), 14000);
        assert_near(&heard(&out, b), 12000);
        assert_near(&heard(&out, c), 3000);
        assert_near(&heard(&out, w), 7000);
        for l in [a, b, c, w] {
            let want: Vec<MemberId> = [a, b, c, w]
                .into_iter()
                .filter(|&s| g.can_hear(l, s))
                .collect();
            assert_eq!(g.sources_of(l).collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn generation_tracks_changes_and_plan_follows() {
        let mut g = RoomGraph::new();
        let g0 = g.generation();
        let a = g.add(PCMU);
        let b = g.add(PCMU);
        let g1 = g.generation();
        assert!(g1 > g0);
        assert!(g.set_heard_by(a, Audience::All)); // no change
        assert!(g.unmute(a));
        assert_eq!(g.generation(), g1);
        g.mute(a);
        assert!(g.generation() > g1);
        assert!(!g.mute(MemberId(999)));
        assert!(!g.set_direction(MemberId(999), Direction::SendRecv));

        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        let (sa, sb) = (dc(1000), dc(2000));
        m.tick(&g, [(a, &sa), (b, &sb)], &mut out);
        assert!(out.get(b).unwrap().silent);
        g.unmute(a);
        m.tick(&g, [(a, &sa), (b, &sb)], &mut out);
        assert_near(&heard(&out, b), 1000);

        // Removing a member drops it from the output and from other members' sets.
        let c = g.add_with_rules(PCMU, Audience::only([a]), Audience::All);
        g.set_hears(b, Audience::only([a, c]));
        g.remove(c);
        assert_eq!(g.get(b).unwrap().hears(), &Audience::only([a]));
        assert!(g.remove(c).is_none());
        m.tick(&g, [(a, &sa), (b, &sb), (c, &dc(4000))], &mut out);
        assert_eq!(out.len(), 2);
        assert_near(&heard(&out, a), 2000);

        // A different graph at the same generation is not mistaken for the cached one.
        let mut g2 = g.clone();
        g2.set_hears(b, Audience::None);
        g.set_hears(b, Audience::All);
        assert_eq!(g.generation(), g2.generation());
        m.tick(&g2, [(a, &sa)], &mut out);
        assert!(out.get(b).unwrap().silent);
        m.tick(&g, [(a, &sa)], &mut out);
        assert!(!out.get(b).unwrap().silent);
    }

    #[test]
    fn steady_state_ticks_do_not_grow_buffers() {
        let mut g = RoomGraph::new();
        let legs: Vec<MemberId> = (0..6)
            .map(|i| g.add(if i < 3 { PCMU } else { PCMA }))
            .collect();
        let p = g.add(MemberKind::Player);
        g.add(MemberKind::Recorder);
        g.set_heard_by(legs[5], Audience::only([legs[0]]));
        let frames: Vec<Frame> = (1..=7).map(|k| sine(k, 2000.0)).collect();
        let mut all = legs.clone();
        all.push(p);
        let mut m = Mixer::new();
        let mut out = MixOutput::new();
        m.tick(&g, [], &mut out);
        let fingerprint = |m: &Mixer, out: &MixOutput| {
            (
                out.entries.capacity(),
                out.encoded.as_ptr(),
                out.encoded.capacity(),
                out.linear.as_ptr(),
                out.linear.capacity(),
                m.frames.as_ptr(),
                m.present_list.capacity(),
                m.plan.sources.capacity(),
            )
        };
        let before = fingerprint(&m, &out);
        // Every subset of speakers, in turn.
        for mask in 0u32..(1 << all.len()) {
            let inputs = all
                .iter()
                .zip(&frames)
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, (&id, f))| (id, f));
            m.tick(&g, inputs, &mut out);
            assert_eq!(out.len(), 7);
            assert_eq!(fingerprint(&m, &out), before, "mask {mask:#b}");
        }
    }

    #[test]
    fn decode_frame_pads_short_payloads() {
        let mut f = [7i16; FRAME_SAMPLES];
        assert_eq!(decode_frame(Codec::Pcma, &[0xD5; 80], &mut f), 80);
        assert!(f[..80].iter().all(|&s| s == 8));
        assert!(f[80..].iter().all(|&s| s == 0));
        assert_eq!(silence_payload(Codec::Pcmu), [0xFF; 160]);
        assert_eq!(MemberId(3).to_string(), "m3");
    }
}
