//! rtpload: the media side of `bench/media_bridge.py`. Binds N "caller" and N "callee" UDP
//! sockets on 127.0.0.1, writes their ports as SIPp injection files, and once a socket has heard
//! from Callplane (symmetric RTP: we answer where its packets come from) sends 160-byte PCMU
//! every 20 ms. Each payload carries its stream id, a per-stream counter and its send time, so
//! the far side counts exactly which packets of the measurement window crossed Callplane, and
//! how long they took.
//!
//! Control on stdin, one word a line: `start` / `end` open and close the measurement window
//! (applied by the sender at its next 1 ms slot, so sender and receiver agree on which packets
//! belong to it), `report` waits for packets in flight and writes the result JSON, `quit`.
//! A `status` line goes to stdout every second.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const MAGIC: [u8; 4] = *b"CPLB";
const HDR: usize = 12;
const PAYLOAD: usize = 160;
const TAG: usize = 20; // magic, stream id, counter, send time
const FILL: u8 = 0xFF; // PCMU silence
const SLOTS: u64 = 20; // streams spread over the 20 ms frame in 1 ms slots, like unsynchronised phones
const HIST_BUCKET_NS: u64 = 10_000;
const HIST_BUCKETS: usize = 100_000; // 10 us buckets up to 1 s; later ones land in the last
const FLOWING_NS: u64 = 1_000_000_000;
const OPEN: u64 = u64::MAX;

struct Stream {
    sock: UdpSocket,
    port: u16,
    /// Callplane's address for this socket (ip << 16 | port), from the first packet; 0 = none yet.
    peer: AtomicU64,
    /// When a tagged packet last arrived here (ns since start + 1); 0 = never.
    last_rx_ns: AtomicU64,
}

#[derive(Default, Clone)]
struct TxStream {
    ssrc: u32,
    seq: u16,
    ts: u32,
    counter: u32,
    win_sent: u64,
    win_first: Option<u32>,
    win_last: u32,
}

#[derive(Default)]
struct TxState {
    streams: Vec<TxStream>,
    sent: u64,
    send_errors: u64,
    slots: u64,
    slots_late_5ms: u64,
    max_lag_ns: u64,
    /// The same, for the slots inside the measurement window.
    win_slots: u64,
    win_slots_late_5ms: u64,
    win_max_lag_ns: u64,
}

/// What arrived from one source stream, wherever it arrived.
#[derive(Default, Clone)]
struct RxSource {
    seen: Vec<u64>, // bitmap by counter
    received: u64,
    win_received: u64,
    duplicates: u64,
    reordered: u64,
    max_counter: Option<u32>,
    last_transit_ns: Option<i64>,
    jitter_ns: f64,
}

/// What arrived on one socket.
#[derive(Default, Clone)]
struct RxSocket {
    first_source: Option<u32>,
    misrouted: u64,
    untagged: u64,
    last_seq: Option<u16>,
    win_seq_gaps: u64,
}

struct RxState {
    sources: Vec<RxSource>,
    sockets: Vec<RxSocket>,
    hist: Vec<u64>,
    transit_sum_ns: u128,
    transit_max_ns: u64,
    transit_samples: u64,
    corrupt: u64,
    non_rtp: u64,
    recv_errors: u64,
    received: u64,
}

struct Shared {
    start: Instant,
    n: usize,
    streams: Vec<Stream>,
    win_start: AtomicU64,
    win_end: AtomicU64,
    /// 1 = open the window, 2 = close it; taken by the sender.
    request: AtomicU8,
    stop: AtomicBool,
    tx: Mutex<TxState>,
    rx: Mutex<RxState>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Args {
    calls: usize,
    caller_csv: String,
    callee_csv: String,
    result: String,
    drain_ms: u64,
    rx_batch_us: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        calls: 0,
        caller_csv: String::new(),
        callee_csv: String::new(),
        result: String::new(),
        drain_ms: 2000,
        rx_batch_us: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        match k.as_str() {
            "--calls" => a.calls = v.parse().map_err(|e| format!("--calls: {e}"))?,
            "--caller-csv" => a.caller_csv = v,
            "--callee-csv" => a.callee_csv = v,
            "--result" => a.result = v,
            "--drain-ms" => a.drain_ms = v.parse().map_err(|e| format!("--drain-ms: {e}"))?,
            "--rx-batch-us" => {
                a.rx_batch_us = v.parse().map_err(|e| format!("--rx-batch-us: {e}"))?
            }
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.calls == 0 || a.caller_csv.is_empty() || a.callee_csv.is_empty() || a.result.is_empty() {
        return Err(
            "usage: rtpload --calls N --caller-csv F --callee-csv F --result F [--drain-ms MS] [--rx-batch-us US]"
                .into(),
        );
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rtpload: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("rtpload: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let n = args.calls;
    let mut streams = Vec::with_capacity(2 * n);
    for _ in 0..2 * n {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
        sock.set_nonblocking(true)
            .map_err(|e| format!("nonblocking: {e}"))?;
        let port = sock.local_addr().map_err(|e| e.to_string())?.port();
        streams.push(Stream {
            sock,
            port,
            peer: AtomicU64::new(0),
            last_rx_ns: AtomicU64::new(0),
        });
    }
    for (path, range) in [(&args.caller_csv, 0..n), (&args.callee_csv, n..2 * n)] {
        let mut s = String::from("SEQUENTIAL\n");
        for st in &streams[range] {
            let _ = writeln!(s, "{};", st.port);
        }
        std::fs::write(path, s).map_err(|e| format!("{path}: {e}"))?;
    }
    let seed = std::process::id();
    let tx_streams = (0..2 * n)
        .map(|i| TxStream {
            ssrc: 0x5EED_0000 ^ seed.rotate_left(7) ^ (i as u32).wrapping_mul(2_654_435_761),
            seq: (i as u16).wrapping_mul(7919),
            ts: (i as u32).wrapping_mul(104_729),
            ..TxStream::default()
        })
        .collect();
    let shared = Arc::new(Shared {
        start: Instant::now(),
        n,
        streams,
        win_start: AtomicU64::new(OPEN),
        win_end: AtomicU64::new(OPEN),
        request: AtomicU8::new(0),
        stop: AtomicBool::new(false),
        tx: Mutex::new(TxState {
            streams: tx_streams,
            ..TxState::default()
        }),
        rx: Mutex::new(RxState {
            sources: vec![RxSource::default(); 2 * n],
            sockets: vec![RxSocket::default(); 2 * n],
            hist: vec![0; HIST_BUCKETS],
            transit_sum_ns: 0,
            transit_max_ns: 0,
            transit_samples: 0,
            corrupt: 0,
            non_rtp: 0,
            recv_errors: 0,
            received: 0,
        }),
    });

    let rx_thread = {
        let s = shared.clone();
        let batch = Duration::from_micros(args.rx_batch_us);
        std::thread::Builder::new()
            .name("rx".into())
            .spawn(move || receiver(&s, batch))
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
                "start" => mark(&shared, 1, &shared.win_start, "started"),
                "end" => mark(&shared, 2, &shared.win_end, "ended"),
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

/// Ask the sender to set the window edge and wait (bounded) until it has.
fn mark(s: &Shared, request: u8, edge: &AtomicU64, reply: &str) {
    s.request.store(request, SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge.load(SeqCst) == OPEN && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = edge.load(SeqCst);
    if t == OPEN {
        say(&format!(
            "error sender did not take the {reply} mark within 5 s"
        ));
    } else {
        say(&format!("{reply} {t}"));
    }
}

fn status(s: &Shared) {
    let now = s.now_ns() + 1;
    let n = s.n;
    let learned = |r: std::ops::Range<usize>| {
        s.streams[r]
            .iter()
            .filter(|st| st.peer.load(SeqCst) != 0)
            .count()
    };
    let flowing = |r: std::ops::Range<usize>| {
        s.streams[r]
            .iter()
            .filter(|st| {
                let t = st.last_rx_ns.load(SeqCst);
                t != 0 && now.saturating_sub(t) < FLOWING_NS
            })
            .count()
    };
    let sent = lock(&s.tx).sent;
    let received = lock(&s.rx).received;
    say(&format!(
        "status t={:.1} learned_caller={} learned_callee={} flowing_caller={} flowing_callee={} sent={} received={}",
        now as f64 / 1e9,
        learned(0..n),
        learned(n..2 * n),
        flowing(0..n),
        flowing(n..2 * n),
        sent,
        received
    ));
}

fn addr_key(a: SocketAddr) -> Option<u64> {
    match a {
        SocketAddr::V4(v4) => Some((u64::from(u32::from(*v4.ip())) << 16) | u64::from(v4.port())),
        SocketAddr::V6(_) => None,
    }
}

// --- sending ------------------------------------------------------------------------------

fn sender(s: &Shared) {
    let t0 = Instant::now();
    let mut pkt = [FILL; HDR + PAYLOAD];
    let mut k: u64 = 0;
    let total = 2 * s.n;
    while !s.stop.load(SeqCst) {
        let due = t0 + Duration::from_millis(k);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let lag = Instant::now().saturating_duration_since(due).as_nanos() as u64;
        let slot_ns = s.now_ns();
        match s.request.swap(0, SeqCst) {
            1 => s.win_start.store(slot_ns, SeqCst),
            2 => s.win_end.store(slot_ns, SeqCst),
            _ => {}
        }
        let ws = s.win_start.load(SeqCst);
        let we = s.win_end.load(SeqCst);
        let mut tx = lock(&s.tx);
        tx.slots += 1;
        tx.max_lag_ns = tx.max_lag_ns.max(lag);
        if lag > 5_000_000 {
            tx.slots_late_5ms += 1;
        }
        if ws <= slot_ns && slot_ns < we {
            tx.win_slots += 1;
            tx.win_max_lag_ns = tx.win_max_lag_ns.max(lag);
            if lag > 5_000_000 {
                tx.win_slots_late_5ms += 1;
            }
        }
        let mut i = (k % SLOTS) as usize;
        while i < total {
            let st = &s.streams[i];
            let peer = st.peer.load(SeqCst);
            if peer != 0 {
                let send_ns = s.now_ns().max(slot_ns);
                let ts = &mut tx.streams[i];
                pkt[0] = 0x80;
                pkt[1] = if ts.counter == 0 { 0x80 } else { 0x00 }; // marker on the first, PT 0
                pkt[2..4].copy_from_slice(&ts.seq.to_be_bytes());
                pkt[4..8].copy_from_slice(&ts.ts.to_be_bytes());
                pkt[8..12].copy_from_slice(&ts.ssrc.to_be_bytes());
                pkt[HDR..HDR + 4].copy_from_slice(&MAGIC);
                pkt[HDR + 4..HDR + 8].copy_from_slice(&(i as u32).to_be_bytes());
                pkt[HDR + 8..HDR + 12].copy_from_slice(&ts.counter.to_be_bytes());
                pkt[HDR + 12..HDR + 20].copy_from_slice(&send_ns.to_be_bytes());
                // Connected to Callplane's address when it was learned: no per-packet route lookup.
                match st.sock.send(&pkt) {
                    Ok(_) => {
                        if ws <= send_ns && send_ns < we {
                            ts.win_sent += 1;
                            ts.win_first.get_or_insert(ts.counter);
                            ts.win_last = ts.counter;
                        }
                        ts.counter = ts.counter.wrapping_add(1);
                        ts.seq = ts.seq.wrapping_add(1);
                        ts.ts = ts.ts.wrapping_add(PAYLOAD as u32);
                        tx.sent += 1;
                    }
                    // The packet did not leave: it is not counted and its counter is reused.
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

/// `batch`: sleep this long after a partial batch, so one wake-up collects many datagrams
/// (less CPU taken from Callplane; adds up to `batch` to the measured transit time).
fn receiver(s: &Shared, batch: Duration) {
    // SAFETY: plain epoll syscalls on descriptors owned by `s.streams`, which outlive this loop.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        eprintln!(
            "rtpload: epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    for (i, st) in s.streams.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: see above; `ev` is a valid epoll_event.
        let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, st.sock.as_raw_fd(), &mut ev) };
        if r < 0 {
            eprintln!("rtpload: epoll_ctl: {}", std::io::Error::last_os_error());
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
            match s.streams[idx].sock.recv_from(&mut buf) {
                Ok((len, src)) => on_datagram(s, &mut rx, idx, &buf[..len], src),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => rx.recv_errors += 1,
            }
        }
        drop(rx);
        if !batch.is_zero() && (got as usize) < events.len() {
            std::thread::sleep(batch);
        }
    }
    // SAFETY: closing the epoll descriptor we created.
    unsafe { libc::close(ep) };
}

fn on_datagram(s: &Shared, rx: &mut RxState, idx: usize, data: &[u8], src: SocketAddr) {
    let recv_ns = s.now_ns();
    if data.len() < HDR || data[0] >> 6 != 2 || (200..=204).contains(&data[1]) {
        rx.non_rtp += 1; // RTCP or garbage
        return;
    }
    let st = &s.streams[idx];
    if st.peer.load(SeqCst) == 0 {
        if let Some(k) = addr_key(src) {
            // Symmetric RTP: answer where Callplane sends from, and hear only that address.
            if st.sock.connect(src).is_ok() {
                st.peer.store(k, SeqCst);
            }
        }
    }
    let cc = usize::from(data[0] & 0x0F);
    let mut off = HDR + 4 * cc;
    if data[0] & 0x10 != 0 {
        let Some(ext) = data.get(off + 2..off + 4) else {
            rx.corrupt += 1;
            return;
        };
        off += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let seq = u16::from_be_bytes([data[2], data[3]]);
    let payload = data.get(off..).unwrap_or(&[]);
    if payload.len() < TAG || payload[..4] != MAGIC {
        rx.sockets[idx].untagged += 1; // Callplane's own audio (the announcement)
        rx.sockets[idx].last_seq = Some(seq);
        return;
    }
    let src_id = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let counter = u32::from_be_bytes([payload[8], payload[9], payload[10], payload[11]]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&payload[12..20]);
    let send_ns = u64::from_be_bytes(t);
    let n = s.n;
    let sid = src_id as usize;
    let intact = payload.len() == PAYLOAD && payload[TAG..].iter().all(|&b| b == FILL);
    if sid >= 2 * n || !intact || send_ns > recv_ns {
        rx.corrupt += 1;
        return;
    }
    rx.received += 1;
    st.last_rx_ns.store(recv_ns + 1, SeqCst);
    let ws = s.win_start.load(SeqCst);
    let we = s.win_end.load(SeqCst);
    let in_window = ws <= send_ns && send_ns < we;

    let sock = &mut rx.sockets[idx];
    // A socket must hear only its own call's other side.
    let wrong_side = (sid < n) == (idx < n);
    match sock.first_source {
        None if !wrong_side => sock.first_source = Some(src_id),
        Some(f) if f == src_id => {}
        _ => sock.misrouted += 1,
    }
    if in_window {
        if let Some(last) = sock.last_seq {
            let d = seq.wrapping_sub(last);
            if d > 1 && d < 0x8000 {
                sock.win_seq_gaps += u64::from(d - 1);
            }
        }
    }
    sock.last_seq = Some(seq);

    let source = &mut rx.sources[sid];
    let word = (counter / 64) as usize;
    if source.seen.len() <= word {
        source.seen.resize(word + 1, 0);
    }
    let bit = 1u64 << (counter % 64);
    if source.seen[word] & bit != 0 {
        source.duplicates += 1;
        return;
    }
    source.seen[word] |= bit;
    source.received += 1;
    match source.max_counter {
        Some(m) if counter < m => source.reordered += 1,
        _ => source.max_counter = Some(counter),
    }
    if !in_window {
        return;
    }
    source.win_received += 1;
    let transit = recv_ns - send_ns;
    // RFC 3550 interarrival jitter, on the transit time through Callplane (same clock both ends).
    if let Some(last) = source.last_transit_ns {
        let d = (transit as i64 - last).unsigned_abs() as f64;
        source.jitter_ns += (d - source.jitter_ns) / 16.0;
    }
    source.last_transit_ns = Some(transit as i64);
    let b = ((transit / HIST_BUCKET_NS) as usize).min(HIST_BUCKETS - 1);
    rx.hist[b] += 1;
    rx.transit_sum_ns += u128::from(transit);
    rx.transit_max_ns = rx.transit_max_ns.max(transit);
    rx.transit_samples += 1;
}

// --- report -------------------------------------------------------------------------------

fn percentile_ms(hist: &[u64], total: u64, p: f64) -> f64 {
    if total == 0 {
        return f64::NAN;
    }
    let want = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (i, c) in hist.iter().enumerate() {
        acc += c;
        if acc >= want {
            return ((i as u64 + 1) * HIST_BUCKET_NS) as f64 / 1e6;
        }
    }
    f64::NAN
}

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
    let n = s.n;
    let ws = s.win_start.load(SeqCst);
    let we = s.win_end.load(SeqCst);
    let window_s = if ws != OPEN && we != OPEN {
        (we - ws) as f64 / 1e9
    } else {
        f64::NAN
    };
    let mut lossy = String::new();
    let mut lossy_listed = 0;
    let mut dirs = String::new();
    for (name, range) in [("caller_to_callee", 0..n), ("callee_to_caller", n..2 * n)] {
        let (mut sent, mut received, mut lost, mut extra) = (0u64, 0u64, 0u64, 0u64);
        let (mut with_loss, mut sending, mut dups, mut reord) = (0u64, 0u64, 0u64, 0u64);
        let (mut jit_sum, mut jit_max, mut jit_n) = (0f64, 0f64, 0u64);
        for i in range {
            let t = &tx.streams[i];
            let r = &rx.sources[i];
            sent += t.win_sent;
            received += r.win_received;
            dups += r.duplicates;
            reord += r.reordered;
            if t.win_sent > 0 {
                sending += 1;
            }
            if r.win_received > 1 {
                jit_sum += r.jitter_ns;
                jit_max = jit_max.max(r.jitter_ns);
                jit_n += 1;
            }
            if r.win_received > t.win_sent {
                extra += r.win_received - t.win_sent;
            }
            let l = t.win_sent.saturating_sub(r.win_received);
            if l > 0 {
                lost += l;
                with_loss += 1;
                if lossy_listed < 50 {
                    lossy_listed += 1;
                    let mut missing = Vec::new();
                    if let Some(first) = t.win_first {
                        for c in first..=t.win_last {
                            let got = r
                                .seen
                                .get((c / 64) as usize)
                                .is_some_and(|w| w & (1 << (c % 64)) != 0);
                            if !got {
                                missing.push(c.to_string());
                                if missing.len() >= 10 {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = write!(
                        lossy,
                        "{}{{\"stream\": {i}, \"port\": {}, \"direction\": \"{name}\", \"sent\": {}, \"received\": {}, \"window_counters\": [{}, {}], \"first_missing_counters\": [{}]}}",
                        if lossy.is_empty() { "" } else { ",\n    " },
                        s.streams[i].port,
                        t.win_sent,
                        r.win_received,
                        t.win_first.map_or("null".into(), |c| c.to_string()),
                        t.win_last,
                        missing.join(", ")
                    );
                }
            }
        }
        let _ = write!(
            dirs,
            "{}\"{name}\": {{\"streams\": {n}, \"streams_sending\": {sending}, \"sent\": {sent}, \"received\": {received}, \"lost\": {lost}, \"extra\": {extra}, \"streams_with_loss\": {with_loss}, \"duplicates\": {dups}, \"reordered\": {reord}, \"jitter_ms_mean\": {}, \"jitter_ms_max\": {}}}",
            if dirs.is_empty() { "" } else { ",\n    " },
            num(if jit_n > 0 { jit_sum / jit_n as f64 / 1e6 } else { f64::NAN }),
            num(jit_max / 1e6),
        );
    }
    let misrouted: u64 = rx.sockets.iter().map(|x| x.misrouted).sum();
    let untagged: u64 = rx.sockets.iter().map(|x| x.untagged).sum();
    let seq_gaps: u64 = rx.sockets.iter().map(|x| x.win_seq_gaps).sum();
    let total = rx.transit_samples;
    let mean = if total > 0 {
        rx.transit_sum_ns as f64 / total as f64 / 1e6
    } else {
        f64::NAN
    };
    format!(
        "{{\n  \"calls\": {n},\n  \"window_s\": {},\n  \"directions\": {{\n    {dirs}\n  }},\n  \"transit_ms\": {{\"samples\": {total}, \"mean\": {}, \"p50\": {}, \"p90\": {}, \"p99\": {}, \"p999\": {}, \"max\": {}}},\n  \"endpoint_seq_gaps\": {seq_gaps},\n  \"misrouted\": {misrouted},\n  \"corrupt\": {},\n  \"untagged\": {untagged},\n  \"non_rtp\": {},\n  \"recv_errors\": {},\n  \"send_errors\": {},\n  \"sent_total\": {},\n  \"received_total\": {},\n  \"sender\": {{\"slots\": {}, \"slots_late_5ms\": {}, \"max_lag_ms\": {}, \"window_slots\": {}, \"window_slots_late_5ms\": {}, \"window_max_lag_ms\": {}}},\n  \"lossy_streams\": [\n    {lossy}\n  ]\n}}\n",
        num(window_s),
        num(mean),
        num(percentile_ms(&rx.hist, total, 50.0)),
        num(percentile_ms(&rx.hist, total, 90.0)),
        num(percentile_ms(&rx.hist, total, 99.0)),
        num(percentile_ms(&rx.hist, total, 99.9)),
        num(rx.transit_max_ns as f64 / 1e6),
        rx.corrupt,
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
