//! `streamecho --sip-port P --ws-port W --calls N --duration S`: the far ends of
//! `bench/stream_echo.py`. It is at once
//! - the **bot**: a WebSocket server on 127.0.0.1:W speaking the Twilio Media Streams format
//!   that sends every inbound `media` payload straight back (an echo bot);
//! - the **callers**: N calls over SIP/UDP to number 100 on 127.0.0.1:P (raw INVITE/ACK, a
//!   BYE answered; PCMU and telephone-event offered, as phones do), each with its own RTP socket sending 20 ms PCMU frames whose payload
//!   carries the call, a counter and the send time, written in bytes 0x10–0x1F (G.711 μ-law
//!   decodes and re-encodes those unchanged, so the tag survives Callplane's decode, the bot
//!   and Callplane's playback).
//!
//! The round trip of a frame — caller → Callplane → bot → Callplane → caller — is the time from
//! its send to its tag coming back on the same socket. Frames sent in the measured window
//! (after every call is streaming, for S seconds) count for loss. Prints one JSON line.

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio_tungstenite::tungstenite::Message;

#[path = "../args.rs"]
mod args;
use args::arg;

/// Tag bytes: a nibble each, 0x10 | n.
const TAG_NIBBLES: usize = 4 + 8 + 16; // call (16 bit), counter (32), send time µs (64)

fn put(out: &mut Vec<u8>, value: u64, nibbles: usize) {
    for i in (0..nibbles).rev() {
        out.push(0x10 | ((value >> (i * 4)) & 0xF) as u8);
    }
}

fn tag(call: u16, counter: u32, sent_us: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(160);
    put(&mut p, call.into(), 4);
    put(&mut p, counter.into(), 8);
    put(&mut p, sent_us, 16);
    p.resize(160, 0x55); // a quiet, non-zero μ-law code, not silence
    p
}

fn untag(p: &[u8]) -> Option<(u16, u32, u64)> {
    if p.len() < TAG_NIBBLES || p[..TAG_NIBBLES].iter().any(|b| b & 0xF0 != 0x10) {
        return None;
    }
    let get = |from: usize, n: usize| {
        p[from..from + n]
            .iter()
            .fold(0u64, |acc, b| (acc << 4) | u64::from(b & 0xF))
    };
    Some((get(0, 4) as u16, get(4, 8) as u32, get(12, 16)))
}

struct Stats {
    start: Instant,
    /// Round trips in the window, µs.
    rtts: Mutex<Vec<u32>>,
    sent_in_window: AtomicU64,
    echoed_in_window: AtomicU64,
    streaming: AtomicUsize,
    window: Mutex<Option<(u64, u64)>>,
    answered: AtomicUsize,
    failed: AtomicUsize,
}

impl Stats {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
    fn in_window(&self, t: u64) -> bool {
        matches!(*self.window.lock().unwrap(), Some((a, b)) if t >= a && t < b)
    }
}

/// The echo bot: every inbound media payload goes straight back.
async fn bot(listener: TcpListener, stats: Arc<Stats>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let stats = stats.clone();
        tokio::spawn(async move {
            // A small read buffer: tungstenite zero-fills all of it before every read.
            let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(8 * 1024);
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(cfg)).await else {
                return;
            };
            stats.streaming.fetch_add(1, Relaxed);
            let (mut tx, mut rx) = ws.split();
            let mut sid = String::new();
            while let Some(Ok(msg)) = rx.next().await {
                let Message::Text(t) = msg else { continue };
                let t = t.as_str();
                if sid.is_empty() && t.contains("\"event\":\"start\"") {
                    if let Some(i) = t.find("\"streamSid\":\"") {
                        sid = t[i + 13..].split('"').next().unwrap_or("").to_owned();
                    }
                }
                if !t.contains("\"event\":\"media\"") {
                    continue;
                }
                let Some(i) = t.find("\"payload\":\"") else {
                    continue;
                };
                let payload = t[i + 11..].split('"').next().unwrap_or("");
                let back = format!(
                    "{{\"event\":\"media\",\"streamSid\":\"{sid}\",\"media\":{{\"payload\":\"{payload}\"}}}}"
                );
                if tx.send(Message::text(back)).await.is_err() {
                    break;
                }
            }
            stats.streaming.fetch_sub(1, Relaxed);
        });
    }
}

fn invite(i: usize, local: SocketAddr, server: SocketAddr, rtp: u16) -> String {
    let sdp = format!(
        "v=0\r\no=bench {i} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
    );
    format!(
        "INVITE sip:100@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-se-{i}\r\nFrom: <sip:{}@127.0.0.1>;tag=f{i}\r\nTo: <sip:100@{server}>\r\nCall-ID: streamecho-{i}\r\nCSeq: 1 INVITE\r\nContact: <sip:se{i}@{local}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        1_000_000 + i,
        sdp.len()
    )
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n\r\n").next()?.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The audio address in an SDP body.
fn sdp_addr(msg: &str) -> Option<SocketAddr> {
    let body = msg.split("\r\n\r\n").nth(1)?;
    let ip = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim();
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split(' ')
        .next()?;
    format!("{ip}:{port}").parse().ok()
}

fn reply_ok(msg: &str) -> String {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    let keep: Vec<&str> = head
        .split("\r\n")
        .skip(1)
        .filter(|l| {
            let k = l
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(k.as_str(), "via" | "from" | "to" | "call-id" | "cseq")
        })
        .collect();
    format!(
        "SIP/2.0 200 OK\r\n{}\r\nContent-Length: 0\r\n\r\n",
        keep.join("\r\n")
    )
}

/// One caller's media: 20 ms tagged frames out, echoes timed in.
async fn caller_media(
    i: usize,
    rtp: Arc<UdpSocket>,
    remote: SocketAddr,
    stats: Arc<Stats>,
    until: Instant,
) {
    let rx_sock = rtp.clone();
    let rx_stats = stats.clone();
    let call = i as u16;
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok(n) = rx_sock.recv(&mut buf).await {
            let Some((c, _, sent)) = buf.get(12..n).and_then(untag) else {
                continue;
            };
            if c != call {
                continue;
            }
            let now = rx_stats.now_us();
            if rx_stats.in_window(sent) {
                rx_stats.echoed_in_window.fetch_add(1, Relaxed);
                rx_stats.rtts.lock().unwrap().push((now - sent) as u32);
            }
        }
    });
    let mut seq: u16 = 0;
    let mut ts: u32 = 0;
    let ssrc = 0x5eed_0000 | i as u32;
    let mut counter: u32 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while Instant::now() < until {
        tick.tick().await;
        let sent = stats.now_us();
        let mut pkt = Vec::with_capacity(172);
        pkt.extend_from_slice(&[0x80, 0, 0, 0]);
        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&ts.to_be_bytes());
        pkt.extend_from_slice(&ssrc.to_be_bytes());
        pkt.extend_from_slice(&tag(call, counter, sent));
        if rtp.send_to(&pkt, remote).await.is_ok() && stats.in_window(sent) {
            stats.sent_in_window.fetch_add(1, Relaxed);
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
        counter += 1;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sip_port: u16 = arg(&args, "--sip-port", "5060").parse().unwrap_or(5060);
    let ws_port: u16 = arg(&args, "--ws-port", "9000").parse().unwrap_or(9000);
    let calls: usize = arg(&args, "--calls", "200").parse().unwrap_or(200);
    let duration: u64 = arg(&args, "--duration", "30").parse().unwrap_or(30);
    let rate: f64 = arg(&args, "--rate", "50").parse().unwrap_or(50.0);
    let stats = Arc::new(Stats {
        start: Instant::now(),
        rtts: Mutex::new(Vec::new()),
        sent_in_window: AtomicU64::new(0),
        echoed_in_window: AtomicU64::new(0),
        streaming: AtomicUsize::new(0),
        window: Mutex::new(None),
        answered: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let listener = TcpListener::bind(("127.0.0.1", ws_port))
        .await
        .expect("bind the bot's port");
    tokio::spawn(bot(listener, stats.clone()));

    let sip = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind SIP"));
    let local = sip.local_addr().expect("SIP address");
    let server: SocketAddr = format!("127.0.0.1:{sip_port}")
        .parse()
        .expect("server address");
    let mut sockets: Vec<Arc<UdpSocket>> = Vec::new();
    for _ in 0..calls {
        sockets.push(Arc::new(
            UdpSocket::bind("127.0.0.1:0").await.expect("bind RTP"),
        ));
    }
    // Ramp + warm-up + window + drain: every call streams until the window is over.
    let ramp = Duration::from_secs_f64(calls as f64 / rate);
    let window_start = ramp + Duration::from_secs(3);
    let until = stats.start + window_start + Duration::from_secs(duration) + Duration::from_secs(1);
    let answered: Arc<Mutex<HashMap<usize, SocketAddr>>> = Arc::default();
    {
        let sip = sip.clone();
        let stats = stats.clone();
        let sockets = sockets.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = sip.recv_from(&mut buf).await {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.starts_with("BYE") {
                    let _ = sip.send_to(reply_ok(&msg).as_bytes(), server).await;
                    continue;
                }
                let cseq = header(&msg, "CSeq").unwrap_or("");
                if !cseq.ends_with("INVITE") {
                    continue;
                }
                let Some(i) = header(&msg, "Call-ID")
                    .and_then(|c| c.rsplit('-').next())
                    .and_then(|c| c.parse::<usize>().ok())
                else {
                    continue;
                };
                let status: u16 = msg.get(8..11).and_then(|s| s.parse().ok()).unwrap_or(0);
                if status >= 300 {
                    stats.failed.fetch_add(1, Relaxed);
                    continue;
                }
                if status != 200 {
                    continue;
                }
                let to = header(&msg, "To").unwrap_or("");
                let from = header(&msg, "From").unwrap_or("");
                let ack = format!(
                    "ACK sip:100@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-ack-{i}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: streamecho-{i}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                );
                let _ = sip.send_to(ack.as_bytes(), server).await;
                let mut seen = answered.lock().unwrap();
                if seen.contains_key(&i) {
                    continue;
                }
                let Some(remote) = sdp_addr(&msg) else {
                    continue;
                };
                seen.insert(i, remote);
                stats.answered.fetch_add(1, Relaxed);
                tokio::spawn(caller_media(
                    i,
                    sockets[i].clone(),
                    remote,
                    stats.clone(),
                    until,
                ));
            }
        });
    }
    for (i, s) in sockets.iter().enumerate() {
        let rtp = s.local_addr().map(|a| a.port()).unwrap_or(0);
        let _ = sip
            .send_to(invite(i, local, server, rtp).as_bytes(), server)
            .await;
        tokio::time::sleep(Duration::from_secs_f64(1.0 / rate)).await;
    }
    tokio::time::sleep_until((stats.start + window_start).into()).await;
    let a = stats.now_us();
    let streaming_at_start = stats.streaming.load(Relaxed);
    *stats.window.lock().unwrap() = Some((a, a + duration * 1_000_000));
    tokio::time::sleep(Duration::from_secs(duration + 2)).await;
    let mut rtts = std::mem::take(&mut *stats.rtts.lock().unwrap());
    rtts.sort_unstable();
    let pct = |p: f64| -> f64 {
        if rtts.is_empty() {
            return f64::NAN;
        }
        let k = ((p / 100.0 * rtts.len() as f64).ceil() as usize).clamp(1, rtts.len()) - 1;
        f64::from(rtts[k]) / 1000.0
    };
    let sent = stats.sent_in_window.load(Relaxed);
    let echoed = stats.echoed_in_window.load(Relaxed);
    println!(
        "{{\"calls\":{calls},\"answered\":{},\"failed\":{},\"streaming\":{streaming_at_start},\"sent\":{sent},\"echoed\":{echoed},\"lost\":{},\"rtt_ms\":{{\"p50\":{:.2},\"p99\":{:.2},\"max\":{:.2}}}}}",
        stats.answered.load(Relaxed),
        stats.failed.load(Relaxed),
        sent.saturating_sub(echoed),
        pct(50.0),
        pct(99.0),
        rtts.last().map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
    );
    // The calls end when the bot's sockets close with this process (the plan's HANGUP).
}
