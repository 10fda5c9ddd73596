//! rtpconf: the media side of `bench/conference.py`. Binds rooms × members UDP sockets on
//! 127.0.0.1 and writes them as a SIPp injection file (`port;number;`, the calls of room r to
//! number `base + r`). Once a socket has heard from Callplane (symmetric RTP: we answer where
//! its packets come from), a speaking member sends 160-byte PCMU of its own tone every 20 ms;
//! every socket counts what Callplane sends it: packets that arrive in the measurement window,
//! sequence gaps, the gaps between arrivals, and whether each payload is silence or audio.
//! Twice a second per socket it also decodes the mix and measures every speaker's tone in it
//! (Goertzel; the tones are 50 Hz apart, exactly one frame's bins): each member must hear every
//! other speaker of its room and never itself.
//!
//! Control on stdin, one word a line, as rtpload: `start` / `end` open and close the
//! measurement window (by arrival time at the receiver), `report` waits for packets in flight
//! and writes the result JSON, `quit`. A `status` line goes to stdout every second.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const HDR: usize = 12;
const PAYLOAD: usize = 160;
const SILENCE: u8 = 0xFF; // PCMU 0, what Callplane sends as comfort silence
const SLOTS: u64 = 20; // streams spread over the 20 ms frame in 1 ms slots, like unsynchronised phones
const FLOWING_NS: u64 = 1_000_000_000;
const OPEN: u64 = u64::MAX;
/// Two arrivals further apart than this mean a frame is missing (or late) there.
const GAP_NS: u64 = 30_000_000;
const BIG_GAP_NS: u64 = 50_000_000;
/// Amplitude of each speaker's tone (about -18 dBm0): ten of them summed rarely clip.
const AMPLITUDE: f64 = 3000.0;
/// A tone counts as heard above this amplitude, as absent below the second.
const HEARD: f64 = 1000.0;
const ABSENT: f64 = 300.0;
/// Check what a socket hears in every this many packets of the window.
const CHECK_EVERY: u64 = 25;
const TONES: usize = 24;

fn tone_freq(member: usize) -> f64 {
    300.0 + 50.0 * (member % TONES) as f64
}

struct Sock {
    sock: UdpSocket,
    port: u16,
    /// Connected to Callplane's address (learned from its first packet).
    peer: AtomicBool,
    /// When a packet last arrived here (ns since start + 1); 0 = never.
    last_rx_ns: AtomicU64,
}

#[derive(Default, Clone)]
struct TxStream {
    ssrc: u32,
    seq: u16,
    ts: u32,
    sent: u64,
    win_sent: u64,
}

#[derive(Default)]
struct TxState {
    streams: Vec<TxStream>,
    sent: u64,
    send_errors: u64,
    slots: u64,
    slots_late_5ms: u64,
    max_lag_ns: u64,
    win_slots: u64,
    win_slots_late_5ms: u64,
    win_max_lag_ns: u64,
}

/// What arrived on one socket.
#[derive(Default, Clone)]
struct RxSock {
    received: u64,
    last_ns: Option<u64>,
    last_seq: Option<u16>,
    last_ssrc: Option<u32>,
    ssrc_changes: u64,
    win_received: u64,
    win_silent: u64,
    win_audio: u64,
    win_seq_gaps: u64,
    win_seq_back: u64,
    win_gaps_30ms: u64,
    win_gaps_50ms: u64,
    win_max_gap_ns: u64,
    /// Mixes checked, speakers expected in them, and what was wrong.
    checks: u64,
    speaker_checks: u64,
    speaker_missed: u64,
    self_heard: u64,
}

struct RxState {
    socks: Vec<RxSock>,
    non_rtp: u64,
    recv_errors: u64,
    received: u64,
}

struct Shared {
    start: Instant,
    rooms: usize,
    members: usize,
    speaking: usize,
    socks: Vec<Sock>,
    win_start: AtomicU64,
    win_end: AtomicU64,
    stop: AtomicBool,
    tx: Mutex<TxState>,
    rx: Mutex<RxState>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn member(&self, i: usize) -> usize {
        i % self.members
    }

    fn speaks(&self, i: usize) -> bool {
        self.member(i) < self.speaking
    }

    fn in_window(&self, t: u64) -> bool {
        self.win_start.load(SeqCst) <= t && t < self.win_end.load(SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Args {
    rooms: usize,
    members: usize,
    speaking: usize,
    number_base: u64,
    csv: String,
    result: String,
    drain_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rooms: 0,
        members: 0,
        speaking: usize::MAX,
        number_base: 3000,
        csv: String::new(),
        result: String::new(),
        drain_ms: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{k}: {e}"));
        match k.as_str() {
            "--rooms" => a.rooms = num(&v)? as usize,
            "--members" => a.members = num(&v)? as usize,
            "--speaking" => {
                a.speaking = if v == "all" {
                    usize::MAX
                } else {
                    num(&v)? as usize
                }
            }
            "--number-base" => a.number_base = num(&v)?,
            "--csv" => a.csv = v,
            "--result" => a.result = v,
            "--drain-ms" => a.drain_ms = num(&v)?,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.rooms == 0 || a.members == 0 || a.csv.is_empty() || a.result.is_empty() {
        return Err("usage: rtpconf --rooms R --members M [--speaking all|K] [--number-base B] --csv F --result F [--drain-ms MS]".into());
    }
    a.speaking = a.speaking.min(a.members);
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rtpconf: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("rtpconf: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let n = args.rooms * args.members;
    let mut socks = Vec::with_capacity(n);
    let mut csv = String::from("SEQUENTIAL\n");
    for i in 0..n {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
        sock.set_nonblocking(true)
            .map_err(|e| format!("nonblocking: {e}"))?;
        let port = sock.local_addr().map_err(|e| e.to_string())?.port();
        let _ = writeln!(
            csv,
            "{port};{};",
            args.number_base + (i / args.members) as u64
        );
        socks.push(Sock {
            sock,
            port,
            peer: AtomicBool::new(false),
            last_rx_ns: AtomicU64::new(0),
        });
    }
    std::fs::write(&args.csv, csv).map_err(|e| format!("{}: {e}", args.csv))?;
    let seed = std::process::id();
    let tx_streams = (0..n)
        .map(|i| TxStream {
            ssrc: 0xC0F0_0000 ^ seed.rotate_left(7) ^ (i as u32).wrapping_mul(2_654_435_761),
            seq: (i as u16).wrapping_mul(7919),
            ts: (i as u32).wrapping_mul(104_729),
            ..TxStream::default()
        })
        .collect();
    let shared = Arc::new(Shared {
        start: Instant::now(),
        rooms: args.rooms,
        members: args.members,
        speaking: args.speaking,
        socks,
        win_start: AtomicU64::new(OPEN),
        win_end: AtomicU64::new(OPEN),
        stop: AtomicBool::new(false),
        tx: Mutex::new(TxState {
            streams: tx_streams,
            ..TxState::default()
        }),
        rx: Mutex::new(RxState {
            socks: vec![RxSock::default(); n],
            non_rtp: 0,
            recv_errors: 0,
            received: 0,
        }),
    });

    let rx_thread = {
        let s = shared.clone();
        std::thread::Builder::new()
            .name("rx".into())
            .spawn(move || receiver(&s))
            .map_err(|e| e.to_string())?
    };
    let tx_thread = {
        let s = shared.clone();
        std::thread::Builder::new()
            .name("tx".into())
            .spawn(move || sender(&s))
            .map_err(|e| e.to_string())?
    };
    let (cmd_tx, cmd_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if cmd_tx.send(line.trim().to_string()).is_err() {
                break;
            }
        }
    });
    say("ready");

    let mut next_status = Instant::now();
    loop {
        let wait = next_status.saturating_duration_since(Instant::now());
        match cmd_rx.recv_timeout(wait) {
            Ok(cmd) => match cmd.as_str() {
                "start" => {
                    let t = shared.now_ns();
                    shared.win_start.store(t, SeqCst);
                    say(&format!("started {t}"));
                }
                "end" => {
                    let t = shared.now_ns();
                    shared.win_end.store(t, SeqCst);
                    say(&format!("ended {t}"));
                }
                "report" => {
                    std::thread::sleep(Duration::from_millis(args.drain_ms));
                    let json = report(&shared);
                    std::fs::write(&args.result, json)
                        .map_err(|e| format!("{}: {e}", args.result))?;
                    say("reported");
                }
                "quit" => break,
                "" => {}
                other => say(&format!("error unknown command {other}")),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {
                status(&shared);
                next_status += Duration::from_secs(1);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    shared.stop.store(true, SeqCst);
    let _ = rx_thread.join();
    let _ = tx_thread.join();
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn status(s: &Shared) {
    let now = s.now_ns() + 1;
    let learned = s.socks.iter().filter(|x| x.peer.load(SeqCst)).count();
    let flowing = s
        .socks
        .iter()
        .filter(|x| {
            let t = x.last_rx_ns.load(SeqCst);
            t != 0 && now.saturating_sub(t) < FLOWING_NS
        })
        .count();
    let sent = lock(&s.tx).sent;
    let received = lock(&s.rx).received;
    say(&format!(
        "status t={:.1} learned={learned} flowing={flowing} sent={sent} received={received}",
        now as f64 / 1e9
    ));
}

// --- sending ------------------------------------------------------------------------------

/// µ-law (G.711) of one linear sample.
fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut x = i32::from(sample);
    let sign = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    x = x.min(CLIP) + BIAS;
    let mut exp = 7;
    let mut mask = 0x4000;
    while exp > 0 && x & mask == 0 {
        exp -= 1;
        mask >>= 1;
    }
    let mant = (x >> (exp + 3)) & 0x0F;
    !(sign | (exp << 4) | mant) as u8
}

/// One 20 ms PCMU frame of a tone whose frequency is a multiple of 50 Hz, so that the same
/// frame repeated is a continuous tone.
fn tone_frame(freq: f64) -> [u8; PAYLOAD] {
    let mut f = [SILENCE; PAYLOAD];
    for (i, b) in f.iter_mut().enumerate() {
        let v = AMPLITUDE * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin();
        *b = linear_to_ulaw(v as i16);
    }
    f
}

fn sender(s: &Shared) {
    // Each member of a room its own tone: 300, 350, ... 1450 Hz.
    let tones: Vec<[u8; PAYLOAD]> = (0..TONES).map(|k| tone_frame(tone_freq(k))).collect();
    let t0 = Instant::now();
    let mut pkt = [SILENCE; HDR + PAYLOAD];
    let mut k: u64 = 0;
    let total = s.socks.len();
    while !s.stop.load(SeqCst) {
        let due = t0 + Duration::from_millis(k);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let lag = Instant::now().saturating_duration_since(due).as_nanos() as u64;
        let slot_ns = s.now_ns();
        let in_win = s.in_window(slot_ns);
        let mut tx = lock(&s.tx);
        tx.slots += 1;
        tx.max_lag_ns = tx.max_lag_ns.max(lag);
        if lag > 5_000_000 {
            tx.slots_late_5ms += 1;
        }
        if in_win {
            tx.win_slots += 1;
            tx.win_max_lag_ns = tx.win_max_lag_ns.max(lag);
            if lag > 5_000_000 {
                tx.win_slots_late_5ms += 1;
            }
        }
        let mut i = (k % SLOTS) as usize;
        while i < total {
            let st = &s.socks[i];
            if s.speaks(i) && st.peer.load(SeqCst) {
                let ts = &mut tx.streams[i];
                pkt[0] = 0x80;
                pkt[1] = if ts.sent == 0 { 0x80 } else { 0x00 }; // marker on the first, PT 0
                pkt[2..4].copy_from_slice(&ts.seq.to_be_bytes());
                pkt[4..8].copy_from_slice(&ts.ts.to_be_bytes());
                pkt[8..12].copy_from_slice(&ts.ssrc.to_be_bytes());
                pkt[HDR..].copy_from_slice(&tones[s.member(i) % TONES]);
                match st.sock.send(&pkt) {
                    Ok(_) => {
                        ts.sent += 1;
                        if in_win {
                            ts.win_sent += 1;
                        }
                        ts.seq = ts.seq.wrapping_add(1);
                        ts.ts = ts.ts.wrapping_add(PAYLOAD as u32);
                        tx.sent += 1;
                    }
                    Err(_) => tx.send_errors += 1,
                }
            }
            i += SLOTS as usize;
        }
        drop(tx);
        k += 1;
    }
}

// --- receiving ----------------------------------------------------------------------------

fn receiver(s: &Shared) {
    // SAFETY: plain epoll syscalls on descriptors owned by `s.socks`, which outlive this loop.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        eprintln!(
            "rtpconf: epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    for (i, st) in s.socks.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: see above; `ev` is a valid epoll_event.
        let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, st.sock.as_raw_fd(), &mut ev) };
        if r < 0 {
            eprintln!("rtpconf: epoll_ctl: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    let mut buf = [0u8; 2048];
    while !s.stop.load(SeqCst) {
        // SAFETY: `events` has room for its length in entries.
        let got = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        if got < 0 {
            continue; // EINTR
        }
        let mut rx = lock(&s.rx);
        for ev in &events[..got as usize] {
            let idx = ev.u64 as usize;
            // Level-triggered: one datagram per readiness; epoll reports the socket again if more wait.
            match s.socks[idx].sock.recv_from(&mut buf) {
                Ok((len, src)) => {
                    let st = &s.socks[idx];
                    if !st.peer.load(SeqCst) && st.sock.connect(src).is_ok() {
                        // Symmetric RTP: answer where Callplane sends from, and hear only that.
                        st.peer.store(true, SeqCst);
                    }
                    on_datagram(s, &mut rx, idx, &buf[..len]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => rx.recv_errors += 1,
            }
        }
    }
    // SAFETY: closing the epoll descriptor we created.
    unsafe { libc::close(ep) };
}

fn on_datagram(s: &Shared, rx: &mut RxState, idx: usize, data: &[u8]) {
    let now = s.now_ns();
    if data.len() < HDR || data[0] >> 6 != 2 || (200..=204).contains(&data[1]) {
        rx.non_rtp += 1; // RTCP or garbage
        return;
    }
    rx.received += 1;
    s.socks[idx].last_rx_ns.store(now + 1, SeqCst);
    let cc = usize::from(data[0] & 0x0F);
    let payload = data.get(HDR + 4 * cc..).unwrap_or(&[]);
    let seq = u16::from_be_bytes([data[2], data[3]]);
    let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    let in_win = s.in_window(now);
    let r = &mut rx.socks[idx];
    r.received += 1;
    if r.last_ssrc.is_some_and(|x| x != ssrc) {
        r.ssrc_changes += 1;
    }
    r.last_ssrc = Some(ssrc);
    if in_win {
        r.win_received += 1;
        if payload.iter().all(|&b| b == SILENCE) {
            r.win_silent += 1;
        } else {
            r.win_audio += 1;
        }
        if let Some(last) = r.last_seq {
            let d = seq.wrapping_sub(last);
            if d == 0 || d >= 0x8000 {
                r.win_seq_back += 1;
            } else if d > 1 {
                r.win_seq_gaps += u64::from(d - 1);
            }
        }
        if r.win_received.is_multiple_of(CHECK_EVERY) && payload.len() == PAYLOAD {
            check_mix(s, r, idx, payload);
        }
        if let Some(last) = r.last_ns {
            let gap = now.saturating_sub(last);
            r.win_max_gap_ns = r.win_max_gap_ns.max(gap);
            if gap > GAP_NS {
                r.win_gaps_30ms += 1;
            }
            if gap > BIG_GAP_NS {
                r.win_gaps_50ms += 1;
            }
        }
    }
    r.last_seq = Some(seq);
    r.last_ns = Some(now);
}

/// Linear sample of one µ-law byte (G.711).
fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let exp = (u >> 4) & 0x07;
    let x = (((i32::from(u & 0x0F) << 3) + 0x84) << exp) - 0x84;
    (if u & 0x80 != 0 { -x } else { x }) as i16
}

/// Amplitude of the `freq` component of `pcm` (Goertzel).
fn amplitude(pcm: &[i16], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.max(0.0).sqrt() / pcm.len() as f64
}

/// Whether socket `idx`'s mix has every other speaker of its room in it and not its own tone.
fn check_mix(s: &Shared, r: &mut RxSock, idx: usize, payload: &[u8]) {
    let mut pcm = [0i16; PAYLOAD];
    for (o, &b) in pcm.iter_mut().zip(payload) {
        *o = ulaw_to_linear(b);
    }
    let me = s.member(idx);
    r.checks += 1;
    for j in 0..s.speaking.min(TONES) {
        let a = amplitude(&pcm, tone_freq(j));
        if j == me {
            if a > ABSENT {
                r.self_heard += 1;
            }
        } else {
            r.speaker_checks += 1;
            if a < HEARD {
                r.speaker_missed += 1;
            }
        }
    }
}

// --- report -------------------------------------------------------------------------------

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".into()
    }
}

fn report(s: &Shared) -> String {
    let tx = lock(&s.tx);
    let rx = lock(&s.rx);
    let ws = s.win_start.load(SeqCst);
    let we = s.win_end.load(SeqCst);
    let window_s = if ws != OPEN && we != OPEN {
        (we - ws) as f64 / 1e9
    } else {
        f64::NAN
    };
    let expected = window_s * 50.0;
    // A member receives floor(W·50) or one more packet in a window of W s, depending on its
    // stream's phase; one more may cross either edge in flight.
    let floor = if expected.is_finite() {
        expected.floor() as u64
    } else {
        0
    };
    let allowed = floor.saturating_sub(1);
    let n = s.socks.len();
    let (mut recv, mut silent, mut audio, mut seq_gaps, mut seq_back) = (0u64, 0, 0, 0, 0);
    let (mut gaps30, mut gaps50, mut max_gap, mut ssrc_changes) = (0u64, 0u64, 0u64, 0u64);
    let (mut short_members, mut shortfall, mut no_audio) = (0u64, 0u64, 0u64);
    let (mut over_members, mut checks, mut spk_checks, mut spk_missed, mut self_heard) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut members_missing_speaker = 0u64;
    let (mut min_r, mut max_r) = (u64::MAX, 0u64);
    let mut worst = String::new();
    let mut listed = 0;
    for (i, r) in rx.socks.iter().enumerate() {
        recv += r.win_received;
        silent += r.win_silent;
        audio += r.win_audio;
        seq_gaps += r.win_seq_gaps;
        seq_back += r.win_seq_back;
        gaps30 += r.win_gaps_30ms;
        gaps50 += r.win_gaps_50ms;
        ssrc_changes += r.ssrc_changes;
        max_gap = max_gap.max(r.win_max_gap_ns);
        min_r = min_r.min(r.win_received);
        max_r = max_r.max(r.win_received);
        if r.win_audio == 0 {
            no_audio += 1;
        }
        // More than one packet over 50/s: a second stream reaches this member.
        if r.win_received > floor + 2 {
            over_members += 1;
        }
        checks += r.checks;
        spk_checks += r.speaker_checks;
        spk_missed += r.speaker_missed;
        self_heard += r.self_heard;
        // A speaker missing from more than a tenth of a member's checked mixes.
        if r.speaker_missed * 10 > r.checks.max(1) {
            members_missing_speaker += 1;
        }
        if r.win_received < allowed {
            short_members += 1;
            shortfall += allowed - r.win_received;
            if listed < 50 {
                listed += 1;
                let _ = write!(
                    worst,
                    "{}{{\"socket\": {i}, \"port\": {}, \"room\": {}, \"member\": {}, \"received\": {}, \"seq_gaps\": {}, \"gaps_over_30ms\": {}, \"max_gap_ms\": {}}}",
                    if worst.is_empty() { "" } else { ",\n    " },
                    s.socks[i].port,
                    i / s.members,
                    s.member(i),
                    r.win_received,
                    r.win_seq_gaps,
                    r.win_gaps_30ms,
                    num(r.win_max_gap_ns as f64 / 1e6)
                );
            }
        }
    }
    let speakers = (0..n).filter(|&i| s.speaks(i)).count();
    let spk_sent: u64 = (0..n)
        .filter(|&i| s.speaks(i))
        .map(|i| tx.streams[i].win_sent)
        .sum();
    let spk_min = (0..n)
        .filter(|&i| s.speaks(i))
        .map(|i| tx.streams[i].win_sent)
        .min()
        .unwrap_or(0);
    format!(
        "{{\n  \"rooms\": {},\n  \"members_per_room\": {},\n  \"speaking_per_room\": {},\n  \"members\": {n},\n  \"window_s\": {},\n  \"expected_per_member\": {},\n  \"allowed_per_member\": {allowed},\n  \"received\": {{\"total\": {recv}, \"min_member\": {}, \"max_member\": {max_r}, \"silent\": {silent}, \"audio\": {audio}, \"members_without_audio\": {no_audio}}},\n  \"short_members\": {short_members},\n  \"over_members\": {over_members},\n  \"audibility\": {{\"checks\": {checks}, \"speaker_checks\": {spk_checks}, \"speaker_missed\": {spk_missed}, \"self_heard\": {self_heard}, \"members_missing_a_speaker\": {members_missing_speaker}}},\n  \"shortfall_packets\": {shortfall},\n  \"deficit_vs_expected\": {},\n  \"seq_gaps\": {seq_gaps},\n  \"seq_backwards\": {seq_back},\n  \"ssrc_changes\": {ssrc_changes},\n  \"arrival_gaps_over_30ms\": {gaps30},\n  \"arrival_gaps_over_50ms\": {gaps50},\n  \"max_arrival_gap_ms\": {},\n  \"speakers\": {{\"streams\": {speakers}, \"window_sent\": {spk_sent}, \"window_sent_min_stream\": {spk_min}}},\n  \"non_rtp\": {},\n  \"recv_errors\": {},\n  \"send_errors\": {},\n  \"sent_total\": {},\n  \"received_total\": {},\n  \"sender\": {{\"slots\": {}, \"slots_late_5ms\": {}, \"max_lag_ms\": {}, \"window_slots\": {}, \"window_slots_late_5ms\": {}, \"window_max_lag_ms\": {}}},\n  \"short_member_list\": [\n    {worst}\n  ]\n}}\n",
        s.rooms,
        s.members,
        s.speaking,
        num(window_s),
        num(expected),
        if min_r == u64::MAX { 0 } else { min_r },
        num(expected * n as f64 - recv as f64),
        num(max_gap as f64 / 1e6),
        rx.non_rtp,
        rx.recv_errors,
        tx.send_errors,
        tx.sent,
        rx.received,
        tx.slots,
        tx.slots_late_5ms,
        num(tx.max_lag_ns as f64 / 1e6),
        tx.win_slots,
        tx.win_slots_late_5ms,
        num(tx.win_max_lag_ns as f64 / 1e6),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_matches_g711_reference_points() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(32767), 0x80);
        assert_eq!(linear_to_ulaw(-32768), 0x00);
        assert_eq!(linear_to_ulaw(1000), 0xCE);
    }

    #[test]
    fn tone_frames_are_not_silence() {
        assert!(tone_frame(300.0).iter().any(|&b| b != SILENCE));
    }

    #[test]
    fn ulaw_round_trips_and_tones_are_told_apart() {
        for v in [0i16, 100, -100, 1000, -5000, 30000] {
            let back = ulaw_to_linear(linear_to_ulaw(v));
            assert!(
                (i32::from(back) - i32::from(v)).abs() <= i32::from(v).abs() / 16 + 8,
                "{v} -> {back}"
            );
        }
        // Two speakers mixed: both tones are there, a third is not.
        let (a, b) = (tone_frame(tone_freq(0)), tone_frame(tone_freq(3)));
        let mix: Vec<i16> = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| ulaw_to_linear(x) + ulaw_to_linear(y))
            .collect();
        assert!(amplitude(&mix, tone_freq(0)) > HEARD);
        assert!(amplitude(&mix, tone_freq(3)) > HEARD);
        assert!(amplitude(&mix, tone_freq(1)) < ABSENT);
    }
}
