//! webhookd: the customer's server in the CALL_CONTROL benchmarks (`bench/webhook_overhead.py`,
//! `bench/call_control_load.py`, `bench/webhook_hang.py`). Callplane POSTs a Call Control request
//! (JSON with `loopCount`) to any path; the answer depends on `--mode`:
//!
//! - `instant-announce`: at once; loopCount 0 gets one ANNOUNCEMENT block (`--announcement NAME`,
//!   a tenant announcement unless `--standard`), later loops get `{"blocks":[]}` (back to the plan).
//! - `empty`: at once, always `{"blocks":[]}`.
//! - `hang`: never. The request is held until Callplane gives up and closes the connection, which
//!   drops (and counts) its task, so a benchmark can check nothing is left behind.
//!
//! Prints `listening on ADDR` once bound, serves `GET /stats` (JSON counts) and prints the counts
//! on SIGTERM / SIGINT. One thread, keep-alive HTTP/1.1, answers prebuilt: it stays a small part
//! of the machine the benchmark measures.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::{json, Value};
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// loopCount values counted one by one; higher ones share the last counter.
const LOOP_SLOTS: usize = 128;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    InstantAnnounce,
    Empty,
    Hang,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "instant-announce" => Some(Mode::InstantAnnounce),
            "empty" => Some(Mode::Empty),
            "hang" => Some(Mode::Hang),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::InstantAnnounce => "instant-announce",
            Mode::Empty => "empty",
            Mode::Hang => "hang",
        }
    }
}

struct Args {
    listen: String,
    mode: Mode,
    announcement: Option<String>,
    standard: bool,
}

const USAGE: &str = "usage: webhookd [--listen 127.0.0.1:0] --mode instant-announce|empty|hang \
                     [--announcement NAME [--standard]]";

fn parse_args() -> Result<Args, String> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut mode = None;
    let mut announcement = None;
    let mut standard = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--listen" => listen = value()?,
            "--mode" => {
                let m = value()?;
                mode = Some(Mode::parse(&m).ok_or_else(|| format!("unknown mode {m:?}\n{USAGE}"))?);
            }
            "--announcement" => announcement = Some(value()?),
            "--standard" => standard = true,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    let mode = mode.ok_or_else(|| format!("--mode is required\n{USAGE}"))?;
    if mode == Mode::InstantAnnounce && announcement.is_none() {
        return Err(format!(
            "--mode instant-announce needs --announcement NAME\n{USAGE}"
        ));
    }
    Ok(Args {
        listen,
        mode,
        announcement,
        standard,
    })
}

struct Stats {
    requests: AtomicU64,
    by_loop: [AtomicU64; LOOP_SLOTS],
    /// `requestStatus: VALIDATION_ERRORS`: Callplane refused blocks we sent.
    validation_errors: AtomicU64,
    /// Not JSON, or no `loopCount`: answered 400.
    bad_requests: AtomicU64,
    /// `hang` mode: requests held now, and those whose connection Callplane has closed.
    hanging: AtomicU64,
    released: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: AtomicU64::new(0),
            by_loop: std::array::from_fn(|_| AtomicU64::new(0)),
            validation_errors: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            hanging: AtomicU64::new(0),
            released: AtomicU64::new(0),
        }
    }
}

struct App {
    mode: Mode,
    announce: Bytes,
    empty: Bytes,
    stats: Stats,
}

impl App {
    fn stats_json(&self) -> Value {
        let s = &self.stats;
        let mut by_loop = serde_json::Map::new();
        for (i, c) in s.by_loop.iter().enumerate() {
            let n = c.load(Relaxed);
            if n > 0 {
                let key = if i == LOOP_SLOTS - 1 {
                    format!("{i}+")
                } else {
                    i.to_string()
                };
                by_loop.insert(key, n.into());
            }
        }
        json!({
            "mode": self.mode.as_str(),
            "requests": s.requests.load(Relaxed),
            "byLoopCount": by_loop,
            "validationErrors": s.validation_errors.load(Relaxed),
            "badRequests": s.bad_requests.load(Relaxed),
            "hangingNow": s.hanging.load(Relaxed),
            "hangReleased": s.released.load(Relaxed),
        })
    }
}

/// Counts a held request while it lives; dropped when hyper drops the handler because the
/// connection closed.
struct Hanging(Arc<App>);

impl Hanging {
    fn new(app: &Arc<App>) -> Hanging {
        app.stats.hanging.fetch_add(1, Relaxed);
        Hanging(app.clone())
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.0.stats.hanging.fetch_sub(1, Relaxed);
        self.0.stats.released.fetch_add(1, Relaxed);
    }
}

fn json_answer(body: &Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.clone(),
    )
        .into_response()
}

async fn call_control(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let s = &app.stats;
    s.requests.fetch_add(1, Relaxed);
    let req: Option<Value> = serde_json::from_slice(&body).ok();
    let Some(loop_count) = req
        .as_ref()
        .and_then(|v| v.get("loopCount"))
        .and_then(Value::as_u64)
    else {
        s.bad_requests.fetch_add(1, Relaxed);
        return (StatusCode::BAD_REQUEST, "expected a Call Control request\n").into_response();
    };
    s.by_loop[(loop_count as usize).min(LOOP_SLOTS - 1)].fetch_add(1, Relaxed);
    let req = req.unwrap_or_default();
    if req.get("requestStatus").and_then(Value::as_str) == Some("VALIDATION_ERRORS") {
        // Only counted by Callplane; say it once here so a wrong announcement name is seen.
        if s.validation_errors.fetch_add(1, Relaxed) == 0 {
            eprintln!(
                "webhookd: Callplane refused our blocks: {}",
                req.get("blocksProcessingResult").unwrap_or(&Value::Null)
            );
        }
        return json_answer(&app.empty);
    }
    match app.mode {
        Mode::Hang => {
            let _held = Hanging::new(&app);
            std::future::pending::<Response>().await
        }
        Mode::Empty => json_answer(&app.empty),
        Mode::InstantAnnounce if loop_count == 0 => json_answer(&app.announce),
        Mode::InstantAnnounce => json_answer(&app.empty),
    }
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    let body = serde_json::to_vec(&app.stats_json()).unwrap_or_default();
    json_answer(&Bytes::from(body))
}

fn print_summary(app: &App) {
    let s = &app.stats;
    let by_loop: Vec<String> = app.stats_json()["byLoopCount"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}: {v}")).collect())
        .unwrap_or_default();
    println!(
        "webhookd ({}): {} requests; by loopCount: {}",
        app.mode.as_str(),
        s.requests.load(Relaxed),
        if by_loop.is_empty() {
            "none".to_string()
        } else {
            by_loop.join(", ")
        }
    );
    println!(
        "  validation errors {}, bad requests {}",
        s.validation_errors.load(Relaxed),
        s.bad_requests.load(Relaxed)
    );
    if app.mode == Mode::Hang {
        println!(
            "  held now {}, released by the client {}",
            s.hanging.load(Relaxed),
            s.released.load(Relaxed)
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("webhookd: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("webhookd: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let announce = json!({"blocks": [{
        "blockType": "ANNOUNCEMENT",
        "standardAnnouncement": args.standard,
        "announcementName": args.announcement.clone().unwrap_or_default(),
    }]});
    let app = Arc::new(App {
        mode: args.mode,
        announce: Bytes::from(serde_json::to_vec(&announce).map_err(|e| e.to_string())?),
        empty: Bytes::from_static(br#"{"blocks":[]}"#),
        stats: Stats::default(),
    });
    let router = Router::new()
        .route("/stats", get(stats))
        .fallback(call_control)
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on {addr}");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        r = axum::serve(listener, router).into_future() => r.map_err(|e| e.to_string())?,
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    print_summary(&app);
    Ok(())
}
