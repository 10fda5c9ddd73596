//! Per-call-leg RTP endpoints: port allocation, one tokio task per leg that owns the
//! socket's receive side, paced playback, DTMF in/out, recording, bridging two legs
//! (relay with SSRC/seq/timestamp rewrite and G.711 transcoding) and stream statistics.
//!
//! Hot-path rules: per packet there is no allocation, no lock and no channel hop. A
//! bridged leg's task sends straight onto the peer leg's socket; the state both tasks
//! touch (the peer's outgoing stream counters, statistics) is atomics.

use crate::codec::Codec;
use crate::dtmf::{
    self, GoertzelDetector, Rfc4733Receiver, Rfc4733Sender, TelephoneEvent,
    TONE_AMPLITUDE_MINUS_10_DBM0,
};
use crate::rtp::{self, write_rtp_header, RtpPacket, RTP_HEADER_LEN};
use crate::sdp::Negotiated;
use crate::wav::WavWriter;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

/// Packetisation interval: 20 ms.
const FRAME: Duration = Duration::from_millis(20);
/// Samples per 20 ms frame at 8 kHz.
const FRAME_SAMPLES: usize = 160;
/// Largest datagram we read; longer ones are truncated by the kernel and then fail to
/// parse or carry a clipped payload, which is harmless.
const RECV_BUF: usize = 2048;
/// Capacity of the event channel; events beyond it are dropped with a warning.
const EVENT_CAPACITY: usize = 256;
/// Default "no RTP received" timeout after the first packet.
pub const DEFAULT_RTP_TIMEOUT: Duration = Duration::from_secs(60);
/// If the pacing timer falls this far behind, restart the stream timing instead of
/// bursting the backlog (receivers re-sync on the marker bit).
const MAX_PACING_LAG: Duration = Duration::from_millis(100);
/// Largest timestamp gap the recorder fills with silence (5 s); bigger jumps are
/// treated as a stream restart.
const MAX_RECORD_GAP: u32 = 5 * 8000;
/// RFC 3550 A.1: sequence jumps beyond these restart the loss accounting.
const MAX_DROPOUT: i32 = 3000;
const MAX_MISORDER: i32 = 100;
/// In-band DTMF we send: 100 ms of tone then 60 ms of silence.
const INBAND_TONE_SAMPLES: usize = 800;
const INBAND_GAP_SAMPLES: usize = 480;
/// How long an answered leg that has sent nothing yet waits before silence starts: the first
/// prompt (perhaps still being rendered) starts the stream itself rather than after a variable
/// run of silence. Once anything was sent, silence follows at once whenever nothing else is.
const SILENCE_FILL_AFTER_US: u64 = 500_000;

/// Where legs get their sockets.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Local address to bind RTP sockets to (may be 0.0.0.0 / ::).
    pub bind_ip: IpAddr,
    /// Address written into SDP (the public/reachable address of this host).
    pub advertise_ip: IpAddr,
    /// Lowest RTP port (inclusive); only even ports are used.
    pub port_min: u16,
    /// Highest RTP port (inclusive).
    pub port_max: u16,
}

/// Errors from allocating media legs.
#[derive(Debug, Error)]
pub enum MediaError {
    /// The configured range contains no usable even port.
    #[error("invalid RTP port range {min}-{max}")]
    InvalidPortRange {
        /// Configured minimum.
        min: u16,
        /// Configured maximum.
        max: u16,
    },
    /// Every even port in the range is in use.
    #[error("no free RTP port in {min}-{max}")]
    NoFreePort {
        /// Configured minimum.
        min: u16,
        /// Configured maximum.
        max: u16,
    },
    /// Binding failed for another reason.
    #[error("RTP socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Where and how to send media to the peer of a leg (from SDP negotiation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteMedia {
    /// Peer RTP address from SDP; an unspecified IP (0.0.0.0/::) or port 0 means hold.
    pub addr: SocketAddr,
    /// Codec we send (and expect).
    pub codec: Codec,
    /// Payload type the peer uses for `codec`.
    pub pt: u8,
    /// Peer's telephone-event payload type, if it does RFC 4733.
    pub telephone_event_pt: Option<u8>,
}

impl From<&Negotiated> for RemoteMedia {
    /// Maps a negotiation result; a hold (sendonly/inactive) becomes an unspecified
    /// address so the leg stops sending.
    fn from(n: &Negotiated) -> Self {
        let addr = if n.is_hold() {
            let ip = match n.remote.ip() {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            SocketAddr::new(ip, n.remote.port())
        } else {
            n.remote
        };
        RemoteMedia {
            addr,
            codec: n.codec,
            pt: n.pt,
            telephone_event_pt: n.telephone_event_pt,
        }
    }
}

/// How a received DTMF digit arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DtmfSource {
    /// RFC 4733 telephone-event packets.
    Rfc4733,
    /// Tones in the audio, found by the Goertzel detector.
    Inband,
}

/// Something that happened on a leg, delivered through [`MediaLeg::take_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The peer pressed a key.
    Dtmf {
        /// `0-9 * # A-D`.
        digit: char,
        /// Which mechanism carried it.
        source: DtmfSource,
    },
    /// A [`MediaLeg::play`] item finished.
    PlayFinished {
        /// The id `play` returned.
        id: u64,
        /// `false` if it was cut short by `stop_play` or the leg closing.
        completed: bool,
    },
    /// No RTP arrived for the configured timeout (default 60 s) after media had
    /// started. Reported once per silence; re-armed by the next packet.
    RtpTimeout,
}

/// Which way a tapped frame went (see [`MediaHandle::tap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// Audio the peer sent us, decoded.
    Inbound,
    /// Audio we sent the peer (prompts, streamed audio, silence), before encoding.
    Outbound,
}

/// One frame of a leg's audio, 8 kHz linear, for a tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapFrame {
    /// Which way it went.
    pub track: Track,
    /// One packet's (inbound) or one 20 ms tick's (outbound) samples.
    pub samples: Vec<i16>,
}

/// Snapshot of a leg's stream counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StreamStats {
    /// RTP packets accepted from the peer (RTCP, garbage and foreign sources excluded).
    pub packets_received: u64,
    /// RTP packets sent to the peer (playback, DTMF and relayed bridge audio).
    pub packets_sent: u64,
    /// RTP payload octets received (RFC 3550 octet count: headers excluded).
    pub bytes_received: u64,
    /// RTP payload octets sent.
    pub bytes_sent: u64,
    /// Packets missing from the sequence (expected - received, cumulative).
    pub lost: u64,
    /// RFC 3550 interarrival jitter estimate, in milliseconds.
    pub jitter_ms: f64,
    /// Packets that arrived after a later sequence number (reordered or duplicated).
    pub late_frames: u64,
    /// When the last accepted packet arrived.
    pub last_received_at: Option<Instant>,
}

// ---------------------------------------------------------------------------
// Shared state

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS per thread; hashing a counter and the clock
    // gives unpredictable SSRCs/sequence starts without a rand dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The outgoing RTP stream of a leg (what its socket sends to its peer). Whoever
/// sends on the socket — the leg's own task for playback/DTMF or the bridged peer's
/// task for relayed audio — takes sequence numbers and timestamps from here, so the
/// far end sees one continuous stream with one SSRC.
#[derive(Debug)]
struct OutStream {
    ssrc: u32,
    next_seq: AtomicU32,
    next_ts: AtomicU32,
    /// Microseconds since the leg's base instant + 1 of the last packet; 0 = never.
    last_send_us: AtomicU64,
    /// Bumped each time a sender starts a talkspurt; a sender whose epoch is no longer
    /// current knows someone else sent in between and re-syncs.
    epoch: AtomicU32,
}

impl OutStream {
    fn new() -> Self {
        let r = random_u64();
        OutStream {
            ssrc: r as u32,
            next_seq: AtomicU32::new((r >> 32) as u16 as u32),
            next_ts: AtomicU32::new((r >> 48) as u32 * 7919),
            last_send_us: AtomicU64::new(0),
            epoch: AtomicU32::new(0),
        }
    }

    /// Start a talkspurt: returns the new epoch. Advances the timestamp by the idle
    /// time since the last packet so the RTP clock tracks the wall clock.
    fn begin(&self, now_us: u64) -> u32 {
        let mut e = self.epoch.fetch_add(1, Relaxed).wrapping_add(1);
        if e == 0 {
            e = self.epoch.fetch_add(1, Relaxed).wrapping_add(1);
        }
        let last = self.last_send_us.load(Relaxed);
        let frame_us = FRAME.as_micros() as u64;
        if last != 0 && now_us > last + frame_us {
            let idle_samples = (now_us - last - frame_us) * 8 / 1000;
            self.next_ts.fetch_add(idle_samples as u32, Relaxed);
        }
        e
    }

    fn is_current(&self, epoch: u32) -> bool {
        epoch != 0 && self.epoch.load(Relaxed) == epoch
    }

    /// Take the next sequence number and advance the timestamp by `samples`.
    fn next(&self, samples: u32, now_us: u64) -> (u16, u32) {
        let seq = self.next_seq.fetch_add(1, Relaxed) as u16;
        let ts = self.next_ts.fetch_add(samples, Relaxed);
        self.last_send_us.store(now_us, Relaxed);
        (seq, ts)
    }

    /// Record that a relayed packet used (seq, ts) covering `samples`.
    fn advance_to(&self, seq: u16, ts: u32, samples: u32, now_us: u64) {
        let next_seq = seq.wrapping_add(1);
        if rtp::seq_newer(next_seq, self.next_seq.load(Relaxed) as u16) {
            self.next_seq.store(next_seq as u32, Relaxed);
        }
        let next_ts = ts.wrapping_add(samples);
        if (next_ts.wrapping_sub(self.next_ts.load(Relaxed)) as i32) > 0 {
            self.next_ts.store(next_ts, Relaxed);
        }
        self.last_send_us.store(now_us, Relaxed);
    }
}

#[derive(Debug, Default)]
struct AtomicStats {
    packets_received: AtomicU64,
    packets_sent: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    lost: AtomicU64,
    late: AtomicU64,
    jitter_ms_bits: AtomicU64,
    /// Microseconds since base + 1; 0 = nothing received yet.
    last_rx_us: AtomicU64,
}

/// State shared by a leg's handle, its task and a bridged peer's task.
#[derive(Debug)]
struct LegShared {
    id: u64,
    base: Instant,
    out: OutStream,
    stats: AtomicStats,
    /// The leg's own task is sending (playback or DTMF); a bridged peer drops relayed
    /// audio meanwhile instead of interleaving two streams.
    busy: AtomicBool,
    next_play_id: AtomicU64,
}

impl LegShared {
    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_micros() as u64 + 1
    }

    fn count_sent(&self, payload: usize) {
        self.stats.packets_sent.fetch_add(1, Relaxed);
        self.stats.bytes_sent.fetch_add(payload as u64, Relaxed);
    }
}

/// Unmap IPv4-mapped IPv6 so addresses compare equal whatever the socket family.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Address in the family the sending socket needs.
fn wire_addr(addr: SocketAddr, socket_v6: bool) -> SocketAddr {
    match (addr, socket_v6) {
        (SocketAddr::V4(v4), true) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => canonical(addr),
    }
}

// ---------------------------------------------------------------------------
// Engine

#[derive(Debug)]
struct EngineInner {
    cfg: MediaConfig,
    cursor: AtomicU32,
    next_leg_id: AtomicU64,
    base: Instant,
    /// Live legs (for totals) and the counters of legs already closed. Locked only
    /// when a leg starts or ends and when totals are read, never per packet.
    registry: Mutex<Registry>,
    /// What the rooms do (atomics; see `room_io::RoomStats`).
    rooms: Arc<room_io::RoomStats>,
}

#[derive(Debug, Default)]
struct Registry {
    live: HashMap<u64, Weak<LegShared>>,
    closed: MediaTotals,
}

impl EngineInner {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Engine-wide counters over all legs, open and closed (see [`MediaEngine::totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaTotals {
    /// Legs currently open.
    pub legs: u64,
    /// RTP packets accepted from peers.
    pub packets_received: u64,
    /// RTP packets sent to peers.
    pub packets_sent: u64,
    /// RTP payload octets received.
    pub bytes_received: u64,
    /// RTP payload octets sent.
    pub bytes_sent: u64,
    /// Packets missing from received sequences.
    pub packets_lost: u64,
    /// Packets that arrived late or out of order.
    pub late_frames: u64,
}

impl MediaTotals {
    fn add(&mut self, s: &AtomicStats) {
        self.packets_received += s.packets_received.load(Relaxed);
        self.packets_sent += s.packets_sent.load(Relaxed);
        self.bytes_received += s.bytes_received.load(Relaxed);
        self.bytes_sent += s.bytes_sent.load(Relaxed);
        self.packets_lost += s.lost.load(Relaxed);
        self.late_frames += s.late.load(Relaxed);
    }
}

/// Allocates [`MediaLeg`]s. Cheap to clone (an `Arc` inside).
#[derive(Debug, Clone)]
pub struct MediaEngine {
    inner: Arc<EngineInner>,
}

impl MediaEngine {
    /// An engine allocating from `cfg`'s port range. No I/O happens until `allocate`.
    pub fn new(cfg: MediaConfig) -> Self {
        MediaEngine {
            inner: Arc::new(EngineInner {
                cfg,
                // Random start so a restart does not immediately reuse the ports of
                // calls that were just torn down (late packets would land in new calls).
                cursor: AtomicU32::new(random_u64() as u32),
                next_leg_id: AtomicU64::new(1),
                base: Instant::now(),
                registry: Mutex::new(Registry::default()),
                rooms: Arc::default(),
            }),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &MediaConfig {
        &self.inner.cfg
    }

    /// Counters summed over every leg this engine has allocated (closed legs included)
    /// and the number of legs open now. For metrics; takes a short lock.
    pub fn totals(&self) -> MediaTotals {
        let reg = self.inner.registry();
        let mut t = reg.closed;
        t.legs = 0;
        for leg in reg.live.values().filter_map(Weak::upgrade) {
            t.add(&leg.stats);
            t.legs += 1;
        }
        t
    }

    /// Binds a UDP socket on a free even port in the range (RTP convention) and
    /// spawns the leg's task. Must be called within a tokio runtime.
    pub async fn allocate(&self) -> Result<MediaLeg, MediaError> {
        let cfg = &self.inner.cfg;
        let (min, max) = (cfg.port_min, cfg.port_max);
        let first = min.saturating_add(min & 1);
        if min == 0 || first > max || first & 1 == 1 {
            return Err(MediaError::InvalidPortRange { min, max });
        }
        let count = (max - first) as u32 / 2 + 1;
        let start = self.inner.cursor.fetch_add(1, Relaxed) % count;
        for i in 0..count {
            let port = first + (((start + i) % count) * 2) as u16;
            match UdpSocket::bind(SocketAddr::new(cfg.bind_ip, port)).await {
                Ok(sock) => {
                    if i > 0 {
                        self.inner.cursor.fetch_add(i, Relaxed);
                    }
                    return Ok(self.spawn_leg(sock, port));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(MediaError::NoFreePort { min, max })
    }

    fn spawn_leg(&self, sock: UdpSocket, port: u16) -> MediaLeg {
        let cfg = &self.inner.cfg;
        let id = self.inner.next_leg_id.fetch_add(1, Relaxed);
        let shared = Arc::new(LegShared {
            id,
            base: self.inner.base,
            out: OutStream::new(),
            stats: AtomicStats::default(),
            busy: AtomicBool::new(false),
            next_play_id: AtomicU64::new(1),
        });
        let socket_v6 = sock.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        let socket = Arc::new(sock);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_CAPACITY);
        self.inner
            .registry()
            .live
            .insert(id, Arc::downgrade(&shared));
        let task = LegTask {
            engine: self.inner.clone(),
            shared: shared.clone(),
            socket,
            socket_v6,
            self_cmd: cmd_tx.downgrade(),
            cmd_rx,
            events: ev_tx,
            events_dropped: false,
            remote: None,
            latched: None,
            peer: None,
            expected_peer: None,
            rx: RxTracker::default(),
            te_rx: Rfc4733Receiver::new(),
            inband: None,
            seen_telephone_event: false,
            recorder: None,
            rtp_timeout: Some(DEFAULT_RTP_TIMEOUT),
            last_rx: None,
            timed_out: false,
            queue: VecDeque::new(),
            dtmf_queue: VecDeque::new(),
            dtmf_tx: None,
            tx_epoch: 0,
            talkspurt: false,
            busy: false,
            room: None,
            fill_silence: None,
            filling: false,
            tap: None,
        };
        tokio::spawn(task.run());
        let ip = if cfg.advertise_ip.is_unspecified() {
            cfg.bind_ip
        } else {
            cfg.advertise_ip
        };
        MediaLeg {
            handle: MediaHandle {
                shared,
                cmd: cmd_tx,
                local_addr: SocketAddr::new(ip, port),
            },
            events: Some(ev_rx),
        }
    }
}

// ---------------------------------------------------------------------------
// Handle

/// Handle to one RTP endpoint. Dropping it (or calling [`MediaLeg::close`]) stops the
/// leg's task, unbridges it, finalizes any recording and frees the port.
///
/// All methods are non-blocking: they queue a command for the leg's task, which
/// applies them in order.
///
/// The leg's controls are on [`MediaHandle`] (this derefs to it): whoever drives the leg — a
/// session, a bridge — may hold a handle, while the `MediaLeg` itself stays with the owner of
/// the endpoint (the SIP leg's task), so the endpoint lives exactly as long as its dialog.
#[derive(Debug)]
pub struct MediaLeg {
    handle: MediaHandle,
    events: Option<mpsc::Receiver<MediaEvent>>,
}

impl std::ops::Deref for MediaLeg {
    type Target = MediaHandle;
    fn deref(&self) -> &MediaHandle {
        &self.handle
    }
}

impl MediaLeg {
    /// Its event stream (DTMF, RTP timeout, playback finished), once.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<MediaEvent>> {
        self.events.take()
    }

    /// A handle that drives this leg without owning it (dropping the handle closes nothing).
    pub fn handle(&self) -> MediaHandle {
        self.handle.clone()
    }
}

/// Drives one RTP endpoint (see [`MediaLeg`]); clones drive the same endpoint. Commands to an
/// endpoint that was closed are ignored.
#[derive(Debug, Clone)]
pub struct MediaHandle {
    shared: Arc<LegShared>,
    cmd: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
}

impl MediaHandle {
    /// Advertise IP + bound port, to put in SDP.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Unique id of this leg within its engine.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// A handle to the same endpoint that commands nothing: what an owner keeps once the
    /// leg moved to another owner (its statistics still read; its commands go nowhere).
    pub fn detached(&self) -> MediaHandle {
        let (cmd, _) = mpsc::unbounded_channel();
        MediaHandle {
            shared: self.shared.clone(),
            cmd,
            local_addr: self.local_addr,
        }
    }

    /// Set (or change, on re-INVITE) where and how to send. An unspecified address
    /// (0.0.0.0 / ::) or port 0 means hold: nothing is sent until a real address is
    /// set. Symmetric RTP: the source of the first packet received after this call is
    /// latched and used as the destination; packets from other sources are dropped.
    pub fn set_remote(&self, r: RemoteMedia) {
        self.send(Command::SetRemote(r));
    }

    /// Queue 8 kHz mono audio after anything already queued. Returns the play id
    /// reported in `MediaEvent::PlayFinished`. Playback runs in real time even while
    /// nothing can be sent (no remote yet, or hold).
    pub fn play(&self, samples: Arc<[i16]>) -> u64 {
        let id = self.shared.next_play_id.fetch_add(1, Relaxed);
        self.send(Command::Play { id, samples });
        id
    }

    /// Stop the current and all queued playback (barge-in); each gets
    /// `PlayFinished { completed: false }`. DTMF being sent is not interrupted.
    pub fn stop_play(&self) {
        self.send(Command::StopPlay);
    }

    /// Send a DTMF digit (`0-9 * # A-D`; others ignored): RFC 4733 if the peer offered
    /// telephone-event, else 100 ms of in-band tone. Digits queue up; playback pauses
    /// while they are sent.
    pub fn send_dtmf(&self, digit: char) {
        if dtmf::char_to_event(digit).is_some() {
            self.send(Command::SendDtmf(digit));
        }
    }

    /// Turn in-band (Goertzel) DTMF detection of received audio on or off. Once the
    /// peer has sent any RFC 4733 packet, in-band detection is skipped so one key
    /// press is not reported twice.
    pub fn set_inband_detection(&self, on: bool) {
        self.send(Command::SetInband(on));
    }

    /// Record what this leg receives to `path` as 8 kHz 16-bit mono WAV (replacing any
    /// recording in progress). Timestamp gaps (loss, silence suppression, DTMF) are
    /// filled with silence so the file keeps real time. The file is written from the
    /// leg's task through a buffer; use a local disk.
    pub fn start_recording(&self, path: PathBuf) {
        self.send(Command::StartRecording(path));
    }

    /// Copies every audio frame (received, decoded; sent, before encoding) to `tap`, or stops
    /// copying (`None`). The leg never waits for the tap: a frame that does not fit is
    /// dropped for it.
    pub fn tap(&self, tap: Option<mpsc::Sender<TapFrame>>) {
        self.send(Command::Tap(tap));
    }

    /// Finish the recording (the WAV sizes are fixed up asynchronously, right after).
    pub fn stop_recording(&self) {
        self.send(Command::StopRecording);
    }

    /// Keep the outgoing stream continuous: while nothing is played and the leg is not
    /// bridged, send a silence frame every 20 ms (an answered phone with an RTP timeout,
    /// such as linphone's 30 s, would otherwise hang up while a plan waits for digits).
    pub fn set_fill_silence(&self, on: bool) {
        self.send(Command::SetFillSilence(on));
    }

    /// Change the RTP inactivity timeout (`None` disables it). It is never armed before
    /// the first packet nor while the remote is on hold.
    pub fn set_rtp_timeout(&self, timeout: Option<Duration>) {
        self.send(Command::SetRtpTimeout(timeout));
    }

    /// Relay RTP both ways between this leg and `other`: what this leg receives goes
    /// out of `other`'s socket to `other`'s remote and vice versa, with SSRC, sequence
    /// and timestamp rewritten into each leg's own continuous stream. Same codec: the
    /// payload is copied; PCMU<->PCMA: transcoded by table. Telephone-event packets
    /// are forwarded with the payload type rewritten (dropped if the other side has no
    /// telephone-event; DTMF events are still reported on the receiving leg). Any
    /// previous bridge of either leg is replaced. Playback/DTMF on a leg temporarily
    /// takes precedence over the audio relayed to it.
    pub fn bridge(&self, other: &MediaHandle) {
        if other.shared.id == self.shared.id {
            return;
        }
        self.send(Command::BridgeWith {
            peer_id: other.shared.id,
            peer_cmd: other.cmd.downgrade(),
            room: None,
        });
        other.send(Command::BridgeWith {
            peer_id: self.shared.id,
            peer_cmd: self.cmd.downgrade(),
            room: None,
        });
    }

    /// End the bridge (both directions).
    pub fn unbridge(&self) {
        self.send(Command::Unbridge);
    }

    /// Snapshot of the stream counters (lock-free).
    pub fn stats(&self) -> StreamStats {
        let s = &self.shared.stats;
        let last = s.last_rx_us.load(Relaxed);
        StreamStats {
            packets_received: s.packets_received.load(Relaxed),
            packets_sent: s.packets_sent.load(Relaxed),
            bytes_received: s.bytes_received.load(Relaxed),
            bytes_sent: s.bytes_sent.load(Relaxed),
            lost: s.lost.load(Relaxed),
            jitter_ms: f64::from_bits(s.jitter_ms_bits.load(Relaxed)),
            late_frames: s.late.load(Relaxed),
            last_received_at: (last != 0)
                .then(|| self.shared.base + Duration::from_micros(last - 1)),
        }
    }

    /// Stop the leg now (same as dropping the handle, but `stats()` stays readable).
    /// Pending playback gets `PlayFinished { completed: false }`.
    pub fn close(&self) {
        self.send(Command::Close);
    }

    /// True once the leg's task has exited.
    pub fn is_closed(&self) -> bool {
        self.cmd.is_closed()
    }

    fn send(&self, c: Command) {
        // An error only means the task has already stopped: nothing left to do.
        let _ = self.cmd.send(c);
    }
}

impl Drop for MediaLeg {
    fn drop(&mut self) {
        let _ = self.cmd.send(Command::Close);
    }
}

// ---------------------------------------------------------------------------
// Task

#[derive(Debug)]
enum Command {
    SetRemote(RemoteMedia),
    Play {
        id: u64,
        samples: Arc<[i16]>,
    },
    StopPlay,
    SendDtmf(char),
    SetInband(bool),
    StartRecording(PathBuf),
    StopRecording,
    SetRtpTimeout(Option<Duration>),
    SetFillSilence(bool),
    Tap(Option<mpsc::Sender<TapFrame>>),
    /// From the handle (`room: None`: a plain bridge, which takes the leg out of any room) or
    /// from a room on its fast path (`room: Some(id)`, ignored unless the leg is still in it):
    /// this leg should bridge with `peer_id`.
    BridgeWith {
        peer_id: u64,
        peer_cmd: mpsc::WeakUnboundedSender<Command>,
        room: Option<u64>,
    },
    /// From a peer task: here is my socket/stream and where I send. `reply` asks for
    /// the same back (the two legs process their BridgeWith in either order).
    PeerHello {
        link: PeerLink,
        target: Option<Target>,
        reply: bool,
    },
    /// From a peer task: my destination changed (re-INVITE, hold, latching).
    PeerTarget {
        from: u64,
        target: Option<Target>,
    },
    /// From a peer task: the bridge is over (unbridge or close).
    PeerGone {
        from: u64,
    },
    Unbridge,
    /// From a room leaving its fast path or ending: unbridge, if the leg is still in it (a
    /// leg that moved on to another room or bridge keeps its new peer).
    RoomUnbridge {
        room_id: u64,
        member: crate::room::MemberId,
    },
    /// Become a member of a room (see `room_io`).
    JoinRoom(room_io::RoomLink),
    /// From the room: hand decoded audio to it (mixer) or not (relay fast path).
    RoomMix(bool),
    LeaveRoom {
        room_id: u64,
        member: crate::room::MemberId,
    },
    Close,
}

/// What a task needs to send on its bridged peer's socket.
#[derive(Debug, Clone)]
struct PeerLink {
    shared: Arc<LegShared>,
    socket: Arc<UdpSocket>,
    cmd: mpsc::WeakUnboundedSender<Command>,
}

/// Destination of a leg's outgoing stream, already in the leg socket's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    addr: SocketAddr,
    codec: Codec,
    pt: u8,
    te_pt: Option<u8>,
}

/// Maps an incoming stream's seq/ts onto the peer's outgoing stream.
#[derive(Debug, Default)]
struct Translator {
    epoch: u32,
    in_ssrc: u32,
    seq_off: u16,
    ts_off: u32,
}

impl Translator {
    fn map(
        &mut self,
        out: &OutStream,
        pkt: &RtpPacket<'_>,
        is_audio: bool,
        samples: u32,
        now_us: u64,
    ) -> (u16, u32, bool) {
        let mut marker = pkt.marker;
        if !out.is_current(self.epoch) || pkt.ssrc != self.in_ssrc {
            self.epoch = out.begin(now_us);
            self.in_ssrc = pkt.ssrc;
            self.seq_off = (out.next_seq.load(Relaxed) as u16).wrapping_sub(pkt.sequence);
            self.ts_off = out.next_ts.load(Relaxed).wrapping_sub(pkt.timestamp);
            // A new talkspurt for the far end's jitter buffer; for telephone-event
            // the marker means "new event", so leave it as received.
            marker |= is_audio;
        }
        let seq = pkt.sequence.wrapping_add(self.seq_off);
        let ts = pkt.timestamp.wrapping_add(self.ts_off);
        out.advance_to(seq, ts, samples, now_us);
        (seq, ts, marker)
    }
}

#[derive(Debug)]
struct Peer {
    id: u64,
    cmd: mpsc::WeakUnboundedSender<Command>,
    link: PeerLink,
    target: Option<Target>,
    xlate: Translator,
}

#[derive(Debug)]
struct PlayItem {
    /// `None` for internal items (in-band DTMF tones): no PlayFinished, not stoppable.
    id: Option<u64>,
    samples: Arc<[i16]>,
    pos: usize,
}

#[derive(Debug)]
struct DtmfTx {
    seq: Rfc4733Sender,
    timestamp: u32,
}

/// RFC 3550 receive statistics for the current source.
#[derive(Debug, Default)]
struct RxTracker {
    ssrc: Option<u32>,
    max_seq: u16,
    /// Extended highest sequence relative to the first packet.
    ext_max: u64,
    received: u64,
    lost_before: u64,
    late: u64,
    last_transit: Option<u32>,
    jitter: f64,
}

impl RxTracker {
    fn lost_now(&self) -> u64 {
        (self.ext_max + 1).saturating_sub(self.received)
    }

    fn restart(&mut self, seq: u16) {
        self.lost_before += self.lost_now();
        self.max_seq = seq;
        self.ext_max = 0;
        self.received = 1;
        self.last_transit = None;
    }

    /// Returns true if this packet starts a new stream (new SSRC).
    fn on_packet(&mut self, pkt: &RtpPacket<'_>, arrival_units: u32, is_audio: bool) -> bool {
        let new_stream = self.ssrc != Some(pkt.ssrc);
        if new_stream {
            if self.ssrc.is_some() {
                self.restart(pkt.sequence);
            } else {
                self.max_seq = pkt.sequence;
                self.received = 1;
            }
            self.ssrc = Some(pkt.ssrc);
        } else {
            let delta = pkt.sequence.wrapping_sub(self.max_seq) as i16 as i32;
            if !(-MAX_MISORDER..=MAX_DROPOUT).contains(&delta) {
                // The sender restarted its sequence without changing SSRC.
                self.restart(pkt.sequence);
            } else if delta > 0 {
                self.max_seq = pkt.sequence;
                self.ext_max += delta as u64;
                self.received += 1;
            } else {
                self.late += 1;
                self.received += 1;
            }
        }
        if is_audio {
            // Interarrival jitter (RFC 3550 6.4.1) in timestamp units.
            let transit = arrival_units.wrapping_sub(pkt.timestamp);
            if let Some(prev) = self.last_transit {
                let d = (transit.wrapping_sub(prev) as i32).unsigned_abs() as f64;
                self.jitter += (d - self.jitter) / 16.0;
            }
            self.last_transit = Some(transit);
        }
        new_stream
    }
}

#[derive(Debug)]
struct Recorder {
    writer: WavWriter,
    next_ts: Option<u32>,
}

impl Recorder {
    fn write(&mut self, ts: u32, pcm: &[i16]) -> Result<(), crate::wav::WavError> {
        if let Some(expected) = self.next_ts {
            let gap = ts.wrapping_sub(expected) as i32;
            if gap < 0 && gap > -(MAX_RECORD_GAP as i32) {
                // Late or duplicate: its slot has already been written.
                return Ok(());
            }
            if gap > 0 && gap as u32 <= MAX_RECORD_GAP {
                self.writer.write_silence(gap as usize)?;
            }
        }
        self.writer.write_samples(pcm)?;
        self.next_ts = Some(ts.wrapping_add(pcm.len() as u32));
        Ok(())
    }
}

/// Per-task buffers, allocated once.
struct Scratch {
    pcm: [i16; RECV_BUF],
    out: [u8; RTP_HEADER_LEN + RECV_BUF],
    frame: [i16; FRAME_SAMPLES],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Audio(Codec),
    Event,
}

struct LegTask {
    engine: Arc<EngineInner>,
    shared: Arc<LegShared>,
    socket: Arc<UdpSocket>,
    socket_v6: bool,
    self_cmd: mpsc::WeakUnboundedSender<Command>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<MediaEvent>,
    events_dropped: bool,
    remote: Option<RemoteMedia>,
    latched: Option<SocketAddr>,
    peer: Option<Peer>,
    /// Set by BridgeWith: a PeerHello from this leg is accepted.
    expected_peer: Option<(u64, mpsc::WeakUnboundedSender<Command>)>,
    rx: RxTracker,
    te_rx: Rfc4733Receiver,
    inband: Option<Box<GoertzelDetector>>,
    seen_telephone_event: bool,
    recorder: Option<Recorder>,
    rtp_timeout: Option<Duration>,
    last_rx: Option<Instant>,
    timed_out: bool,
    queue: VecDeque<PlayItem>,
    dtmf_queue: VecDeque<char>,
    dtmf_tx: Option<DtmfTx>,
    tx_epoch: u32,
    talkspurt: bool,
    busy: bool,
    /// The room this leg is a member of.
    room: Option<room_io::RoomLink>,
    /// Send silence when there is nothing else to send (see `MediaLeg::set_fill_silence`):
    /// the `now_us` it was turned on at.
    fill_silence: Option<u64>,
    /// Where a copy of every audio frame goes (an audio stream to a bot); full: the frame is
    /// dropped for the tap only, never waited for.
    tap: Option<mpsc::Sender<TapFrame>>,
    /// Silence has started: every idle tick sends a frame from now on.
    filling: bool,
}

impl LegTask {
    async fn run(mut self) {
        let socket = self.socket.clone();
        let mut buf = vec![0u8; RECV_BUF].into_boxed_slice();
        let mut scratch = Box::new(Scratch {
            pcm: [0; RECV_BUF],
            out: [0; RTP_HEADER_LEN + RECV_BUF],
            frame: [0; FRAME_SAMPLES],
        });
        // Burst: after a short scheduling hiccup, catch up so the stream keeps exactly
        // 8000 samples/s (the far end's jitter buffer absorbs it); long stalls are cut
        // off in on_tick instead.
        let mut pace = tokio::time::interval(FRAME);
        pace.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let timeout = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timeout);
        let mut timeout_armed = false;

        loop {
            let pacing = self.paced();
            tokio::select! {
                cmd = self.cmd_rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if matches!(cmd, Command::Close) {
                        break;
                    }
                    if matches!(cmd, Command::SetRtpTimeout(_) | Command::SetRemote(_)) {
                        timeout_armed = false;
                    }
                    let was_idle = !pacing;
                    self.handle(cmd);
                    if was_idle && self.paced() {
                        pace.reset_immediately();
                    }
                }
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, src)) => {
                        if let Some(data) = buf.get(..n) {
                            self.on_datagram(data, src, &mut scratch).await;
                        }
                    }
                    Err(e) => {
                        // Unconnected UDP rarely errors (ICMP on some platforms); don't spin.
                        tracing::debug!(leg = self.shared.id, error = %e, "RTP recv error");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                },
                tick = pace.tick(), if pacing => {
                    if Instant::now().saturating_duration_since(tick.into_std()) > MAX_PACING_LAG {
                        // Stalled: restart timing rather than bursting; the marker bit
                        // and the timestamp jump (OutStream::begin) tell the far end.
                        pace.reset();
                        self.talkspurt = false;
                    }
                    self.on_tick(&mut scratch).await;
                }
                () = &mut timeout, if timeout_armed => {
                    timeout_armed = false;
                    if let (Some(t), Some(last)) = (self.rtp_timeout, self.last_rx) {
                        if Instant::now() >= last + t && !self.on_hold() {
                            self.timed_out = true;
                            self.emit(MediaEvent::RtpTimeout);
                        }
                    }
                }
            }
            let busy = self.has_tx_work();
            if busy != self.busy {
                self.busy = busy;
                self.shared.busy.store(busy, Relaxed);
                if !busy && !self.paced() {
                    // Silence fill keeps the same talkspurt: the stream stays continuous.
                    self.talkspurt = false;
                }
            }
            if !timeout_armed && !self.timed_out && !self.on_hold() {
                if let (Some(t), Some(last)) = (self.rtp_timeout, self.last_rx) {
                    timeout.as_mut().reset((last + t).into());
                    timeout_armed = true;
                }
            }
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.detach_peer();
        if let Some(r) = self.room.take() {
            r.tell(room_io::RoomCmd::LegClosed { member: r.member });
        }
        self.shared.busy.store(false, Relaxed);
        {
            let mut reg = self.engine.registry();
            reg.live.remove(&self.shared.id);
            reg.closed.add(&self.shared.stats);
        }
        for item in self.queue.drain(..) {
            if let Some(id) = item.id {
                let _ = self.events.try_send(MediaEvent::PlayFinished {
                    id,
                    completed: false,
                });
            }
        }
        if let Some(r) = self.recorder.take() {
            if let Err(e) = r.writer.finalize() {
                tracing::warn!(leg = self.shared.id, error = %e, "recording finalize failed");
            }
        }
        tracing::debug!(leg = self.shared.id, "media leg closed");
    }

    fn emit(&mut self, ev: MediaEvent) {
        match self.events.try_send(ev) {
            Ok(()) => self.events_dropped = false,
            Err(mpsc::error::TrySendError::Full(ev)) => {
                if !self.events_dropped {
                    tracing::warn!(
                        leg = self.shared.id,
                        ?ev,
                        "media event queue full, dropping"
                    );
                    self.events_dropped = true;
                }
            }
            // Nobody listens: fine.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn on_hold(&self) -> bool {
        self.remote
            .is_some_and(|r| r.addr.ip().is_unspecified() || r.addr.port() == 0)
    }

    /// Where our outgoing stream goes right now.
    fn target(&self) -> Option<Target> {
        let r = self.remote?;
        if self.on_hold() {
            return None;
        }
        let addr = self.latched.unwrap_or(canonical(r.addr));
        Some(Target {
            addr: wire_addr(addr, self.socket_v6),
            codec: r.codec,
            pt: r.pt,
            te_pt: r.telephone_event_pt,
        })
    }

    fn my_link(&self) -> PeerLink {
        PeerLink {
            shared: self.shared.clone(),
            socket: self.socket.clone(),
            cmd: self.self_cmd.clone(),
        }
    }

    fn notify_peer_target(&self) {
        if let Some(r) = &self.room {
            r.tell(room_io::RoomCmd::LegTarget {
                member: r.member,
                target: self.target(),
            });
        }
        if let Some(p) = &self.peer {
            if let Some(tx) = p.cmd.upgrade() {
                let _ = tx.send(Command::PeerTarget {
                    from: self.shared.id,
                    target: self.target(),
                });
            }
        }
    }

    fn detach_peer(&mut self) {
        let expected = self.expected_peer.take();
        let peer = self.peer.take();
        // Tell the installed peer, or the one we asked but which has not answered yet
        // (it may install us from our hello after we gave up).
        let notify = match (&peer, &expected) {
            (Some(p), _) => Some(p.cmd.clone()),
            (None, Some((_, cmd))) => Some(cmd.clone()),
            (None, None) => None,
        };
        if let Some(tx) = notify.and_then(|c| c.upgrade()) {
            let _ = tx.send(Command::PeerGone {
                from: self.shared.id,
            });
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::SetRemote(r) => {
                let changed_addr = self.remote.is_none_or(|old| old.addr != r.addr);
                self.remote = Some(r);
                if r.telephone_event_pt.is_none() {
                    // A peer without telephone-event cannot send it: in-band is live again.
                    self.seen_telephone_event = false;
                }
                if changed_addr {
                    self.latched = None;
                }
                self.restart_timeout_clock();
                self.notify_peer_target();
            }
            Command::Play { id, samples } => self.queue.push_back(PlayItem {
                id: Some(id),
                samples,
                pos: 0,
            }),
            Command::StopPlay => {
                let mut stopped = Vec::new();
                self.queue.retain(|item| match item.id {
                    Some(id) => {
                        stopped.push(id);
                        false
                    }
                    None => true,
                });
                for id in stopped {
                    self.emit(MediaEvent::PlayFinished {
                        id,
                        completed: false,
                    });
                }
            }
            Command::SendDtmf(d) => self.dtmf_queue.push_back(d),
            Command::SetInband(on) => {
                if !on {
                    self.inband = None;
                } else if self.inband.is_none() {
                    self.inband = Some(Box::new(GoertzelDetector::new()));
                }
            }
            Command::StartRecording(path) => {
                if let Some(old) = self.recorder.take() {
                    if let Err(e) = old.writer.finalize() {
                        tracing::warn!(leg = self.shared.id, error = %e, "recording finalize failed");
                    }
                }
                match WavWriter::create(&path) {
                    Ok(writer) => {
                        self.recorder = Some(Recorder {
                            writer,
                            next_ts: None,
                        })
                    }
                    Err(e) => {
                        tracing::warn!(leg = self.shared.id, path = %path.display(), error = %e, "cannot start recording")
                    }
                }
            }
            Command::StopRecording => {
                if let Some(r) = self.recorder.take() {
                    if let Err(e) = r.writer.finalize() {
                        tracing::warn!(leg = self.shared.id, error = %e, "recording finalize failed");
                    }
                }
            }
            Command::SetRtpTimeout(t) => {
                self.rtp_timeout = t;
                self.restart_timeout_clock();
            }
            Command::Tap(tap) => self.tap = tap,
            Command::SetFillSilence(on) => {
                self.fill_silence = on.then(|| self.shared.now_us(Instant::now()));
                self.filling &= on;
            }
            Command::BridgeWith {
                peer_id,
                peer_cmd,
                room,
            } => {
                match room {
                    // A room's relay for a leg that has left it since: stale.
                    Some(id) if self.room.as_ref().map(|r| r.room_id) != Some(id) => return,
                    Some(_) => {}
                    // A plain bridge: out of the room first.
                    None => {
                        if let Some(old) = self.room.take() {
                            old.tell(room_io::RoomCmd::LegClosed { member: old.member });
                        }
                    }
                }
                if self.peer.as_ref().is_some_and(|p| p.id != peer_id) {
                    self.detach_peer();
                }
                self.expected_peer = Some((peer_id, peer_cmd.clone()));
                if let Some(tx) = peer_cmd.upgrade() {
                    let _ = tx.send(Command::PeerHello {
                        link: self.my_link(),
                        target: self.target(),
                        reply: true,
                    });
                }
            }
            Command::PeerHello {
                link,
                target,
                reply,
            } => {
                let from = link.shared.id;
                if self.expected_peer.as_ref().map(|(id, _)| *id) != Some(from) {
                    return; // stale or not (yet) asked for; our own BridgeWith will say hello
                }
                let reply_to = link.cmd.clone();
                match self.peer.as_mut() {
                    Some(p) if p.id == from => {
                        p.link = link;
                        p.target = target;
                    }
                    _ => {
                        self.peer = Some(Peer {
                            id: from,
                            cmd: reply_to.clone(),
                            link,
                            target,
                            xlate: Translator::default(),
                        })
                    }
                }
                if reply {
                    if let Some(tx) = reply_to.upgrade() {
                        let _ = tx.send(Command::PeerHello {
                            link: self.my_link(),
                            target: self.target(),
                            reply: false,
                        });
                    }
                }
            }
            Command::PeerTarget { from, target } => {
                if let Some(p) = self.peer.as_mut().filter(|p| p.id == from) {
                    p.target = target;
                }
            }
            Command::PeerGone { from } => {
                // The relay to it stops. What this leg was asked for (`expected_peer`) stays:
                // only its own commands change that. The peer's goodbye may be older than a
                // bridge both legs have since been asked for (it said goodbye to an earlier
                // one), and its hello for the new one follows the goodbye (one sender, in
                // order), so a stale hello can never come after it.
                if self.peer.as_ref().is_some_and(|p| p.id == from) {
                    self.peer = None;
                }
            }
            Command::Unbridge => self.detach_peer(),
            Command::RoomUnbridge { room_id, member } => {
                // Still that membership (not a later one in the same room, after a re-join).
                if self
                    .room
                    .as_ref()
                    .is_some_and(|r| r.room_id == room_id && r.member == member)
                {
                    self.detach_peer();
                }
            }
            Command::JoinRoom(link) => {
                if let Some(old) = self.room.take() {
                    old.tell(room_io::RoomCmd::LegClosed { member: old.member });
                }
                link.tell(room_io::RoomCmd::LegLink {
                    member: link.member,
                    link: self.my_link(),
                    target: self.target(),
                });
                self.room = Some(link);
            }
            Command::RoomMix(on) => {
                if let Some(r) = self.room.as_mut() {
                    r.mixing = on;
                }
            }
            Command::LeaveRoom { room_id, member } => {
                if self
                    .room
                    .as_ref()
                    .is_some_and(|r| r.room_id == room_id && r.member == member)
                {
                    self.room = None;
                }
            }
            Command::Close => {}
        }
    }

    /// A new remote (e.g. resuming from hold) or timeout setting counts as activity:
    /// the peer gets a full timeout period from now, not from its last packet.
    fn restart_timeout_clock(&mut self) {
        self.timed_out = false;
        if self.last_rx.is_some() {
            self.last_rx = Some(Instant::now());
        }
    }

    fn has_tx_work(&self) -> bool {
        !self.queue.is_empty() || self.dtmf_tx.is_some() || !self.dtmf_queue.is_empty()
    }

    /// Whether the 20 ms clock runs: something to send, or silence to keep the stream going.
    /// Silence does not make the leg `busy`: a bridge peer's relayed audio is never held back
    /// for it (and a bridged leg sends none).
    fn paced(&self) -> bool {
        self.has_tx_work()
            || (self.fill_silence.is_some()
                && self.peer.is_none()
                && self.room.as_ref().is_none_or(|r| !r.mixing)
                && self.target().is_some())
    }

    // --- receive path -------------------------------------------------------

    async fn on_datagram(&mut self, data: &[u8], src: SocketAddr, scratch: &mut Scratch) {
        if rtp::is_rtcp(data) {
            return;
        }
        let Ok(pkt) = RtpPacket::parse(data) else {
            tracing::trace!(leg = self.shared.id, %src, len = data.len(), "dropping non-RTP datagram");
            return;
        };
        let Some(remote) = self.remote else {
            return;
        };
        let kind = if Some(pkt.payload_type) == remote.telephone_event_pt {
            Kind::Event
        } else if pkt.payload_type == remote.pt {
            Kind::Audio(remote.codec)
        } else if let Some(c) = Codec::from_payload_type(pkt.payload_type) {
            // The peer may send any format of the answer; accept either G.711.
            Kind::Audio(c)
        } else {
            return; // comfort noise, unknown formats
        };
        let src = canonical(src);
        match self.latched {
            Some(a) if a != src => return,
            Some(_) => {}
            None => {
                self.latched = Some(src);
                if src != canonical(remote.addr) {
                    tracing::debug!(leg = self.shared.id, %src, sdp = %remote.addr, "latched RTP source");
                }
                self.notify_peer_target();
            }
        }

        let now = Instant::now();
        let now_us = self.shared.now_us(now);
        self.last_rx = Some(now);
        self.timed_out = false;
        let stats = &self.shared.stats;
        stats.packets_received.fetch_add(1, Relaxed);
        stats
            .bytes_received
            .fetch_add(pkt.payload.len() as u64, Relaxed);
        stats.last_rx_us.store(now_us, Relaxed);
        let arrival_units = (now_us.wrapping_mul(8) / 1000) as u32;
        let new_stream = self
            .rx
            .on_packet(&pkt, arrival_units, matches!(kind, Kind::Audio(_)));
        stats
            .lost
            .store(self.rx.lost_before + self.rx.lost_now(), Relaxed);
        stats.late.store(self.rx.late, Relaxed);
        stats
            .jitter_ms_bits
            .store((self.rx.jitter / 8.0).to_bits(), Relaxed);
        if new_stream {
            self.te_rx.reset();
            if let Some(r) = self.recorder.as_mut() {
                r.next_ts = None;
            }
        }

        match kind {
            Kind::Event => {
                self.seen_telephone_event = true;
                if let Ok(ev) = TelephoneEvent::parse(pkt.payload) {
                    if let Some(digit) = self.te_rx.on_event(pkt.timestamp, &ev) {
                        self.emit(MediaEvent::Dtmf {
                            digit,
                            source: DtmfSource::Rfc4733,
                        });
                    }
                }
            }
            Kind::Audio(codec) => {
                let detect = self.inband.is_some() && !self.seen_telephone_event;
                if detect || self.recorder.is_some() || self.tap.is_some() {
                    let n = codec.decode(pkt.payload, &mut scratch.pcm);
                    let pcm = &scratch.pcm[..n];
                    self.copy_to_tap(Track::Inbound, pcm);
                    if let Some(rec) = self.recorder.as_mut() {
                        if let Err(e) = rec.write(pkt.timestamp, pcm) {
                            tracing::warn!(leg = self.shared.id, error = %e, "recording stopped");
                            self.recorder = None;
                        }
                    }
                    if detect {
                        let mut found: [Option<char>; 4] = [None; 4];
                        let mut k = 0;
                        if let Some(det) = self.inband.as_mut() {
                            det.process(pcm, |c| {
                                if let Some(slot) = found.get_mut(k) {
                                    *slot = Some(c);
                                    k += 1;
                                }
                            });
                        }
                        for digit in found.into_iter().flatten() {
                            self.emit(MediaEvent::Dtmf {
                                digit,
                                source: DtmfSource::Inband,
                            });
                        }
                    }
                }
            }
        }

        if let Some(peer) = self.peer.as_mut() {
            relay(peer, &pkt, kind, &mut scratch.out, now_us).await;
        } else if let (Some(r), Kind::Audio(codec)) = (&self.room, kind) {
            if r.mixing {
                room_io::to_room(r, codec, pkt.payload);
            }
        }
    }

    // --- send path ----------------------------------------------------------

    /// Start a talkspurt if needed; returns whether this packet carries the marker.
    fn ensure_talkspurt(&mut self, now_us: u64) -> bool {
        if self.talkspurt && self.shared.out.is_current(self.tx_epoch) {
            return false;
        }
        self.tx_epoch = self.shared.out.begin(now_us);
        self.talkspurt = true;
        true
    }

    async fn send_packet(&self, target: Option<Target>, packet: &[u8]) {
        let Some(t) = target else { return };
        match self.socket.send_to(packet, t.addr).await {
            Ok(_) => self
                .shared
                .count_sent(packet.len().saturating_sub(RTP_HEADER_LEN)),
            Err(e) => tracing::debug!(leg = self.shared.id, error = %e, "RTP send failed"),
        }
    }

    /// One 20 ms tick: a telephone-event packet, or a frame of queued audio.
    /// A copy of a frame for the tap, if there is one and it has room.
    fn copy_to_tap(&mut self, track: Track, samples: &[i16]) {
        let Some(tap) = &self.tap else { return };
        match tap.try_send(TapFrame {
            track,
            samples: samples.to_vec(),
        }) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => self.tap = None,
        }
    }

    async fn on_tick(&mut self, scratch: &mut Scratch) {
        let now_us = self.shared.now_us(Instant::now());
        let target = self.target();

        // One DTMF at a time: not while an event or an in-band tone (id None) is going out.
        if self.dtmf_tx.is_none() && self.queue.front().is_none_or(|i| i.id.is_some()) {
            if let Some(d) = self.dtmf_queue.pop_front() {
                let te = self.remote.and_then(|r| r.telephone_event_pt);
                match (te, Rfc4733Sender::new(d)) {
                    (Some(_), Some(seq)) => {
                        self.ensure_talkspurt(now_us);
                        self.dtmf_tx = Some(DtmfTx {
                            seq,
                            timestamp: self.shared.out.next_ts.load(Relaxed),
                        });
                    }
                    _ => {
                        let mut tone = dtmf::generate_dtmf(
                            d,
                            INBAND_TONE_SAMPLES,
                            TONE_AMPLITUDE_MINUS_10_DBM0,
                        )
                        .unwrap_or_default();
                        tone.resize(tone.len() + INBAND_GAP_SAMPLES, 0);
                        self.queue.push_front(PlayItem {
                            id: None,
                            samples: tone.into(),
                            pos: 0,
                        });
                    }
                }
            }
        }

        let step = self
            .dtmf_tx
            .as_mut()
            .map(|tx| (tx.timestamp, tx.seq.next(), tx.seq.size_hint().0 == 0));
        if let Some((timestamp, packet, exhausted)) = step {
            if exhausted || packet.is_none() {
                self.dtmf_tx = None;
            }
            if let Some(p) = packet {
                let te_pt = self
                    .remote
                    .and_then(|r| r.telephone_event_pt)
                    .unwrap_or(101);
                if !self.shared.out.is_current(self.tx_epoch) {
                    self.ensure_talkspurt(now_us);
                }
                // The event keeps its timestamp; the stream clock still advances.
                let (seq, _) = self.shared.out.next(FRAME_SAMPLES as u32, now_us);
                let out = &mut scratch.out;
                let h =
                    write_rtp_header(out, p.marker, te_pt, seq, timestamp, self.shared.out.ssrc);
                if let Some(dst) = out.get_mut(h..h + TelephoneEvent::LEN) {
                    dst.copy_from_slice(&p.event.to_bytes());
                }
                let len = h + TelephoneEvent::LEN;
                self.send_packet(target, &scratch.out[..len]).await;
                return;
            }
        }

        // Audio: fill one frame from the queue, across item boundaries.
        let mut filled = 0;
        while filled < FRAME_SAMPLES {
            let Some(item) = self.queue.front_mut() else {
                break;
            };
            let rest = item.samples.get(item.pos..).unwrap_or(&[]);
            let n = rest.len().min(FRAME_SAMPLES - filled);
            scratch.frame[filled..filled + n].copy_from_slice(&rest[..n]);
            item.pos += n;
            filled += n;
            if item.pos >= item.samples.len() {
                if let Some(PlayItem { id: Some(id), .. }) = self.queue.pop_front() {
                    // Its last samples go out in this frame, just below.
                    self.emit(MediaEvent::PlayFinished {
                        id,
                        completed: true,
                    });
                }
            }
        }
        let silence = filled == 0 && self.paced() && {
            // Once anything went out the stream simply continues; before that, a short wait
            // lets a plan's first prompt start the stream itself.
            let sent = self.shared.out.last_send_us.load(Relaxed) != 0;
            let since = self.fill_silence.unwrap_or(now_us);
            self.filling || sent || now_us.saturating_sub(since) >= SILENCE_FILL_AFTER_US
        };
        self.filling |= silence;
        if filled > 0 || silence {
            scratch.frame[filled..].fill(0);
            self.copy_to_tap(Track::Outbound, &scratch.frame);
            let marker = self.ensure_talkspurt(now_us);
            let (seq, ts) = self.shared.out.next(FRAME_SAMPLES as u32, now_us);
            let (codec, pt) = match self.remote {
                Some(r) => (r.codec, r.pt),
                None => (Codec::Pcmu, 0),
            };
            let out = &mut scratch.out;
            let h = write_rtp_header(out, marker, pt, seq, ts, self.shared.out.ssrc);
            let n = codec.encode(&scratch.frame, &mut out[h..]);
            self.send_packet(target, &scratch.out[..h + n]).await;
        }
    }
}

/// Forward one received packet out of the bridged peer's socket.
async fn relay(peer: &mut Peer, pkt: &RtpPacket<'_>, kind: Kind, out: &mut [u8], now_us: u64) {
    let Some(t) = peer.target else { return };
    let link = &peer.link;
    if link.shared.busy.load(Relaxed) {
        return; // the peer leg is playing/sending DTMF itself
    }
    let Some(body) = out.get_mut(RTP_HEADER_LEN..) else {
        return;
    };
    let (pt, n, samples) = match kind {
        Kind::Event => {
            let Some(te) = t.te_pt else { return };
            let n = pkt.payload.len().min(body.len());
            body[..n].copy_from_slice(&pkt.payload[..n]);
            (te, n, 0)
        }
        Kind::Audio(codec) => {
            let n = codec.transcode(t.codec, pkt.payload, body);
            (t.pt, n, n as u32)
        }
    };
    let (seq, ts, marker) = peer.xlate.map(
        &link.shared.out,
        pkt,
        matches!(kind, Kind::Audio(_)),
        samples,
        now_us,
    );
    write_rtp_header(out, marker, pt, seq, ts, link.shared.out.ssrc);
    let len = RTP_HEADER_LEN + n;
    match link.socket.send_to(&out[..len], t.addr).await {
        Ok(_) => link.shared.count_sent(n),
        Err(e) => tracing::debug!(leg = link.shared.id, error = %e, "RTP relay send failed"),
    }
}

mod room_io;
pub use room_io::{Room, RoomEvent, RoomTotals, TICK_BUCKETS};

#[cfg(test)]
mod tests;
