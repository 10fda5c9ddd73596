//! `wsload --port P --key K --clients N --duration S`: N WebSocket subscribers on
//! `ws://127.0.0.1:P/v1/events`, each subscribed to everything in the key's scope, reading for
//! S seconds. Prints one JSON line: clients connected, events received (total, least and most
//! per client), frames closed by the server, and the delivery delay — arrival time minus the
//! event's `time` (milliseconds, both on this machine's clock) — p50/p99/max.
//!
//! The event's time is parsed from its fixed RFC 3339 form (`…T18:17:43.279Z`) by hand, and the
//! WebSocket client is a minimal one of its own (`lean.rs`: 64 KiB reads, frames parsed in
//! place, no copy or allocation per event): the load runs on the server's machine, and every
//! cycle it spends is taken from the server being measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Delay histogram, 1 ms buckets up to 10 s.
const BUCKETS: usize = 10_000;

mod args;
mod lean;
use args::arg;

/// Milliseconds since the epoch of `…"time":"2026-12-04T18:17:43.279Z"…`, without a date
/// library: days from the civil date (Howard Hinnant's algorithm).
fn event_ms(text: &str) -> Option<i64> {
    let i = text.find("\"time\":\"")? + 8;
    let t = text.get(i..i + 24)?.as_bytes();
    let n =
        |a: usize, b: usize| -> Option<i64> { std::str::from_utf8(&t[a..b]).ok()?.parse().ok() };
    let (y, m, d) = (n(0, 4)?, n(5, 7)?, n(8, 10)?);
    let (hh, mm, ss, ms) = (n(11, 13)?, n(14, 16)?, n(17, 19)?, n(20, 23)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

/// The `type` of an event frame.
fn event_type(text: &str) -> Option<&str> {
    let i = text.find("\"type\":\"")? + 8;
    let len = text.get(i..)?.find('"')?;
    text.get(i..i + len)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Totals {
    hist: Vec<u64>,
    per_client: Vec<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = arg(&args, "--port", "8080").parse().expect("--port");
    let key = arg(&args, "--key", "");
    let clients: usize = arg(&args, "--clients", "100").parse().expect("--clients");
    let duration: u64 = arg(&args, "--duration", "30").parse().expect("--duration");
    let connected = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    // Clients whose connection or subscription failed.
    let refused = Arc::new(AtomicU64::new(0));
    let totals = Arc::new(Mutex::new(Totals {
        hist: vec![0; BUCKETS],
        per_client: Vec::new(),
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(duration);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (key, connected, closed, refused, totals) = (
            key.clone(),
            connected.clone(),
            closed.clone(),
            refused.clone(),
            totals.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Ok(mut ws) = lean::Client::connect(port, &key).await else {
                refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            // `hello`, then `subscribed` in answer to the subscription.
            if ws.next_text().await.is_none()
                || ws.send_text(r#"{"op":"subscribe"}"#).await.is_err()
                || ws.next_text().await.is_none()
            {
                refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            connected.fetch_add(1, Ordering::Relaxed);
            let mut hist = vec![0u64; BUCKETS];
            let mut count = 0u64;
            // The first client also keeps each event type's delays (printed on stderr).
            let mut by_type: Vec<(String, Vec<i64>)> = Vec::new();
            let end = tokio::time::sleep_until(deadline);
            tokio::pin!(end);
            'read: loop {
                let got = tokio::select! {
                    r = ws.fill() => r,
                    _ = &mut end => break,
                };
                if got.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                let now = now_ms();
                while let Some(frame) = ws.frame() {
                    match frame {
                        lean::Frame::Text(t) => {
                            if let Some(at) = event_ms(t) {
                                let delay = (now - at).clamp(0, BUCKETS as i64 - 1) as usize;
                                hist[delay] += 1;
                                count += 1;
                                if client == 0 {
                                    let ty = event_type(t).unwrap_or("?").to_string();
                                    match by_type.iter_mut().find(|(n, _)| *n == ty) {
                                        Some((_, v)) => v.push(delay as i64),
                                        None => by_type.push((ty, vec![delay as i64])),
                                    }
                                }
                            }
                        }
                        lean::Frame::Ping(payload) => {
                            if ws.send_pong(&payload).await.is_err() {
                                closed.fetch_add(1, Ordering::Relaxed);
                                break 'read;
                            }
                        }
                        lean::Frame::Close => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            break 'read;
                        }
                        lean::Frame::Other => {}
                    }
                }
            }
            for (ty, mut v) in by_type {
                v.sort_unstable();
                let at = |q: f64| v[((q * v.len() as f64) as usize).min(v.len() - 1)];
                eprintln!(
                    "{ty}: {} events, delay p50 {} ms, p99 {} ms",
                    v.len(),
                    at(0.5),
                    at(0.99)
                );
            }
            let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
            for (a, b) in t.hist.iter_mut().zip(hist) {
                *a += b;
            }
            t.per_client.push(count);
        }));
        // Connect gradually: the server's accept queue is not the subject here.
        if tasks.len() % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Ready once every client has subscribed or failed to (10 s at most).
    let settle = tokio::time::Instant::now() + Duration::from_secs(10);
    while connected.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed) < clients as u64
        && tokio::time::Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("{{\"ready\":{}}}", connected.load(Ordering::Relaxed));
    for t in tasks {
        let _ = t.await;
    }
    let t = totals.lock().unwrap_or_else(|e| e.into_inner());
    let total: u64 = t.hist.iter().sum();
    let pct = |q: f64| -> usize {
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, n) in t.hist.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return i;
            }
        }
        0
    };
    let max = t.hist.iter().rposition(|n| *n > 0).unwrap_or(0);
    println!(
        "{{\"clients\":{clients},\"connected\":{},\"closed_by_server\":{},\"events\":{total},\
         \"per_client_min\":{},\"per_client_max\":{},\"delay_ms\":{{\"p50\":{},\"p99\":{},\"max\":{}}}}}",
        connected.load(Ordering::Relaxed),
        closed.load(Ordering::Relaxed),
        t.per_client.iter().min().copied().unwrap_or(0),
        t.per_client.iter().max().copied().unwrap_or(0),
        pct(0.50),
        pct(0.99),
        max
    );
}
