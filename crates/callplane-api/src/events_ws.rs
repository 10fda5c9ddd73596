//! The events WebSocket, `GET /v1/events`: every call event of the bus, in the key's realm,
//! filtered by what the client subscribed to, numbered per session; commands on the same
//! socket. See `docs/api.md` ("Events WebSocket") for the protocol.
//!
//! How it is built, so that a slow client never slows calls:
//! - The [`EventHub`] is a bus subscriber whose `on_event` only queues the event for the hub's
//!   own task (nothing at all while no session exists). That task renders each event's JSON
//!   once and keeps it for the next flush (`FLUSH_AFTER` after the first event of a batch).
//! - At a flush, each session takes the batch's events it matches into its ring, and the hub
//!   frames what the client has not had yet straight into the session's connection and writes
//!   it, one non-blocking write per session (`events_wire.rs`). Only what a socket cannot take
//!   at once is left to the session's own task, which waits for the socket.
//! - A session's ring holds its last `queue` events. When an event would push out one that was
//!   not sent while the client's socket takes nothing more (or while no socket is attached),
//!   the session has overflowed and is closed with a reason (`queue_overflow`). A session that
//!   is behind only because the server has not got round to it (a busy machine) is not closed
//!   for it, up to a hard bound.
//! - The hub and every socket run on one thread of their own, below the calls' priority.
//! - A session whose socket went away is kept for the resume window: events go on being
//!   numbered into its ring, and a client reconnecting with `?session=<id>&resume=<last seq>`
//!   gets exactly what it missed, in order, or `resume_failed` saying why.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use callplane_engine::events::{CallEvent, EventKind, EventScope, EventSubscriber};
use callplane_engine::registry::leg_id;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::auth::{CallScope, Caller};
use crate::error::ApiError;
use crate::events_wire::{push_text_frame, Flush, Upgrade, Wire, WireIo};
use crate::ApiState;

type WebSocket = tokio_tungstenite::WebSocketStream<WireIo>;

/// The WebSocket's timers and limits (`[server] events…` in the config file).
#[derive(Debug, Clone, Copy)]
pub struct EventsConfig {
    /// The server pings this often; a client that has not answered the last ping by the next
    /// one is closed.
    pub ping_interval: Duration,
    /// A client that sends no message of its own (`subscribe`, `ping`, a command) for this
    /// long is closed; `None`: never.
    pub inactivity_timeout: Option<Duration>,
    /// Events a session holds for its client (sent or not, for resuming); one more unsent
    /// than this and the session is closed.
    pub queue: usize,
    /// How long a session outlives its socket, resumable.
    pub resume_window: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            ping_interval: Duration::from_secs(20),
            inactivity_timeout: None,
            queue: 1000,
            resume_window: Duration::from_secs(60),
        }
    }
}

/// The hub writes to the sessions this long after the first event of a batch: what arrives
/// meanwhile shares each session's write (one write per session per batch, however many events
/// and calls it holds), and one timer serves every session.
const FLUSH_AFTER: Duration = Duration::from_millis(12);

/// A flush gives the thread's core away (if anything waits for it) after writing to this
/// many sessions.
const YIELD_EVERY: usize = 50;

/// Frames put in a socket's queue at a time before it is written.
const DELIVER_BATCH: usize = 256;

/// Events queued for the hub's task at most (calls never wait for it).
const HUB_QUEUE: usize = 65_536;

/// A write to a socket that does not complete in this long ends the connection (the session
/// stays resumable): a client that reads nothing cannot hold its task and connection forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Unsent events a session may hold while its socket still takes what it is given: the
/// server's own delay (the events thread not scheduled on a busy machine, the hub handing over
/// a burst) is not the client's fault, but memory stays bounded.
fn server_behind_limit(cap: usize) -> usize {
    (cap * 4).max(cap + 4096)
}

/// Close codes (RFC 6455 §7.4; 4000–4999 are the application's).
const CLOSE_OVERFLOW: u16 = 4008;
const CLOSE_PONG_TIMEOUT: u16 = 4001;
const CLOSE_INACTIVE: u16 = 4002;
const CLOSE_SHUTDOWN: u16 = 1001;
const CLOSE_KEY_REVOKED: u16 = 4003;
const CLOSE_TAKEN_OVER: u16 = 4009;

/// One event as the hub fans it out: what filters look at, and its JSON without `seq`.
struct Frame {
    call_id: String,
    tenant: Option<String>,
    scope: Arc<EventScope>,
    /// The conference the call is in (or the event is about).
    conference: Option<String>,
    /// The event's JSON object minus its opening `{`: a session's frame is `{"seq":N,` + it.
    tail: Arc<str>,
}

/// What a client subscribed to; empty lists mean everything in the key's scope.
#[derive(Debug, Clone, Default)]
struct Subscription {
    lines: BTreeSet<String>,
    numbers: BTreeSet<String>,
    calls: BTreeSet<String>,
    conferences: BTreeSet<String>,
}

impl Subscription {
    fn is_everything(&self) -> bool {
        self.lines.is_empty()
            && self.numbers.is_empty()
            && self.calls.is_empty()
            && self.conferences.is_empty()
    }

    fn matches(&self, f: &Frame) -> bool {
        if self.is_everything() {
            return true;
        }
        self.calls.contains(&f.call_id)
            || f.scope.lines.iter().any(|l| self.lines.contains(l))
            || f.scope
                .number
                .as_ref()
                .is_some_and(|n| self.numbers.contains(n))
            || f.conference
                .as_ref()
                .is_some_and(|c| self.conferences.contains(c))
    }
}

struct Filter {
    scope: CallScope,
    /// `None` until the client's first `subscribe`: nothing is delivered before it.
    sub: Option<Subscription>,
}

struct Queue {
    /// `(seq, tail)` of the last `queue` events, oldest first.
    ring: VecDeque<(u64, Arc<str>)>,
    /// The seq the next event gets.
    next_seq: u64,
    /// The last seq handed to the client's socket.
    sent: u64,
    attached: bool,
    detached_at: Option<Instant>,
    /// Counts the sockets the session was served on: a socket that lost it to a newer one
    /// (a resume while the old connection was half-open) changes nothing any more.
    attachment: u64,
}

struct Session {
    id: String,
    /// The API key's name: only the same key may resume the session.
    key: String,
    filter: Mutex<Filter>,
    /// The key's scope is the whole system and the subscription names nothing: every event
    /// passes, and the hub does not look at the filter.
    takes_everything: std::sync::atomic::AtomicBool,
    queue: Mutex<Queue>,
    /// The connection of the socket attached (with its `attachment`), once it said `hello`:
    /// the hub writes the session's events to it.
    wire: Mutex<Option<(u64, Arc<Wire>)>>,
    /// Wakes the session's task to write what its socket could not take at once.
    notify: Notify,
    /// Set while the client's socket takes nothing more (the client is not reading): the
    /// session's task waits to write the rest, and the hub leaves the socket to it.
    socket_full: std::sync::atomic::AtomicBool,
    /// Cancelled when the session must close: overflow (the reason is kept), shutdown.
    closed: CancellationToken,
    close_reason: Mutex<Option<(u16, String)>>,
    /// Cancelled when a newer socket takes the session over.
    taken_over: Mutex<CancellationToken>,
    /// The numbers this session controls (`"control": true`): their calls are offered to it
    /// while the session exists (also while it waits to be resumed).
    control: Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>,
    /// The calls this session claimed: when the session ends, they go back to their plans.
    claims: Mutex<Vec<ClaimHold>>,
}

/// A call claimed through a session; dropped with the session (closed for good, or not
/// resumed within the window), it hands the call back to its routing plan.
struct ClaimHold {
    calls: Arc<dyn crate::calls::CallControl>,
    call_id: String,
    session: String,
}

impl Drop for ClaimHold {
    fn drop(&mut self) {
        self.calls
            .release_claim(&self.call_id, std::mem::take(&mut self.session));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Session {
    /// A new session, attached to the socket that opened it, not subscribed yet.
    fn new(key: String, scope: CallScope) -> Session {
        Session {
            id: uuid_like(),
            key,
            filter: Mutex::new(Filter { scope, sub: None }),
            takes_everything: std::sync::atomic::AtomicBool::new(false),
            queue: Mutex::new(Queue {
                ring: VecDeque::new(),
                next_seq: 1,
                sent: 0,
                attached: true,
                detached_at: None,
                attachment: 1,
            }),
            wire: Mutex::new(None),
            notify: Notify::new(),
            socket_full: std::sync::atomic::AtomicBool::new(false),
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            control: Mutex::new(Vec::new()),
            claims: Mutex::new(Vec::new()),
            taken_over: Mutex::new(CancellationToken::new()),
        }
    }

    /// Keeps a claim of `call_id` for as long as the session lives; claims of calls that
    /// have ended are let go on the way.
    fn hold_claim(&self, st: &ApiState, call_id: String) {
        let mut claims = lock(&self.claims);
        claims.retain(|c| st.calls.call_tenant(&c.call_id).is_some());
        claims.push(ClaimHold {
            calls: st.calls.clone(),
            call_id,
            session: self.id.clone(),
        });
    }

    /// Appends the frames the session's realm and subscription let through; true if any.
    fn offer(&self, frames: &[Frame], cap: usize) -> bool {
        let everything = self.takes_everything.load(Ordering::Relaxed);
        let filter = (!everything).then(|| lock(&self.filter));
        // Nothing is delivered before the client's first `subscribe`.
        let filter = match &filter {
            Some(f) => match &f.sub {
                Some(sub) => Some((&f.scope, sub)),
                None => return false,
            },
            None => None,
        };
        let mut q = lock(&self.queue);
        let mut any = false;
        for f in frames {
            if let Some((scope, sub)) = filter {
                if !scope.covers(f.tenant.as_deref(), &f.scope.lines) || !sub.matches(f) {
                    continue;
                }
            }
            let seq = q.next_seq;
            q.next_seq += 1;
            q.ring.push_back((seq, f.tail.clone()));
            any = true;
            // What was sent goes first (the ring may have grown past `cap` while the server
            // was behind).
            while q.ring.len() > cap && q.ring.front().is_some_and(|&(first, _)| first <= q.sent) {
                q.ring.pop_front();
            }
            // More than `cap` unsent: overflow if the client is behind (its socket takes
            // nothing more, or it has none), or the server itself very far behind; a session
            // the server simply has not written to yet (a busy machine) is not to blame.
            if q.ring.len() > cap
                && (!q.attached
                    || self.socket_full.load(Ordering::Relaxed)
                    || q.ring.len() > server_behind_limit(cap))
            {
                drop(q);
                self.close(
                    CLOSE_OVERFLOW,
                    format!("queue_overflow: more than {cap} events unread"),
                );
                return false;
            }
        }
        any
    }

    /// Writes the events the client has not had to its socket, as far as the socket takes
    /// them without waiting. `Blocked` leaves the rest to the session's task.
    fn deliver(&self) -> Flush {
        let Some((attachment, wire)) = lock(&self.wire).clone() else {
            return Flush::Done;
        };
        loop {
            let more = {
                let mut q = lock(&self.queue);
                if q.attachment != attachment {
                    return Flush::Done;
                }
                let Some(&(front, _)) = q.ring.front() else {
                    return Flush::Done;
                };
                // The ring's seqs are consecutive: the first unsent one is found by offset.
                let skip = (q.sent + 1).saturating_sub(front) as usize;
                let (n, last) = wire.append(|out| {
                    let mut n = 0;
                    let mut last = None;
                    for (seq, tail) in q.ring.iter().skip(skip).take(DELIVER_BATCH) {
                        push_event_frame(out, *seq, tail);
                        n += 1;
                        last = Some(*seq);
                    }
                    (n, last)
                });
                if let Some(last) = last {
                    q.sent = last;
                }
                n == DELIVER_BATCH
            };
            match wire.try_flush() {
                Flush::Done if more => continue,
                done => return done,
            }
        }
    }

    fn close(&self, code: u16, reason: String) {
        let mut r = lock(&self.close_reason);
        if r.is_none() {
            *r = Some((code, reason));
        }
        drop(r);
        self.closed.cancel();
    }
}

/// Fans the bus's events out to the WebSocket sessions.
pub struct EventHub {
    cfg: EventsConfig,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    count: AtomicUsize,
    tx: mpsc::Sender<CallEvent>,
    /// Set when an event could not be queued for the hub (its task fell [`HUB_QUEUE`] behind):
    /// every session then misses it, and is closed rather than left with a gap.
    dropped: std::sync::atomic::AtomicBool,
}

/// The hub as a bus subscriber: queues each event for the hub's task, without waiting.
struct HubSubscriber(Arc<EventHub>);

impl EventSubscriber for HubSubscriber {
    fn on_event(&self, event: &CallEvent) {
        // Conference membership always goes through, so the hub's map of who is in which
        // conference stays right while no socket is open (a call that ends in a conference
        // leaves it first, with its own event).
        let membership = matches!(
            event.kind,
            EventKind::ConferenceJoined { .. } | EventKind::ConferenceLeft { .. }
        );
        if (membership || self.0.count.load(Ordering::Relaxed) > 0)
            && self.0.tx.try_send(event.clone()).is_err()
        {
            self.0.dropped.store(true, Ordering::Relaxed);
        }
    }
}

impl EventHub {
    /// Starts the hub's task; `subscribe` hands the subscriber to the event bus.
    pub fn start(
        cfg: EventsConfig,
        subscribe: impl FnOnce(Arc<dyn EventSubscriber>),
    ) -> Arc<EventHub> {
        let (tx, rx) = mpsc::channel(HUB_QUEUE);
        let hub = Arc::new(EventHub {
            cfg,
            sessions: RwLock::default(),
            count: AtomicUsize::new(0),
            tx,
            dropped: std::sync::atomic::AtomicBool::new(false),
        });
        subscribe(Arc::new(HubSubscriber(hub.clone())));
        // Unconstrained by tokio's cooperative budget: a flush writes to every session's
        // socket in one go, and past the budget (128 operations) each write would be refused
        // as if the socket were full, handing the rest to the sessions' tasks.
        events_runtime().spawn(tokio::task::unconstrained(fan_out(
            Arc::downgrade(&hub),
            rx,
        )));
        hub
    }

    pub fn config(&self) -> EventsConfig {
        self.cfg
    }

    /// Sessions open or resumable.
    pub fn sessions(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn insert(&self, s: Arc<Session>) {
        let mut m = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        m.insert(s.id.clone(), s);
        self.count.store(m.len(), Ordering::Relaxed);
    }

    fn remove(&self, id: &str) {
        let mut m = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        m.remove(id);
        self.count.store(m.len(), Ordering::Relaxed);
    }

    fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Drops sessions detached longer than the resume window, and closed ones.
    fn sweep(&self) {
        let window = self.cfg.resume_window;
        let expired: Vec<String> = self
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| {
                let q = lock(&s.queue);
                !q.attached
                    && (s.closed.is_cancelled()
                        || q.detached_at.is_some_and(|t| t.elapsed() >= window))
            })
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
        }
    }
}

/// The hub's task: renders each event once and offers it to every session.
async fn fan_out(hub: std::sync::Weak<EventHub>, mut rx: mpsc::Receiver<CallEvent>) {
    // The conference each call is in, for `conferences` subscriptions.
    let mut in_conference: HashMap<String, String> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    // The events since the last flush, and the flush timer, armed by the first of them: when
    // it fires, each session takes its share of the batch and gets it written.
    let mut batch: Vec<Frame> = Vec::new();
    let flush = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(flush);
    let mut flush_armed = false;
    loop {
        tokio::select! {
            _ = &mut flush, if flush_armed => {
                flush_armed = false;
                let Some(hub) = hub.upgrade() else { return };
                let cap = hub.cfg.queue;
                let sessions = hub.sessions.read().unwrap_or_else(PoisonError::into_inner);
                for (i, s) in sessions.values().enumerate() {
                    if i % YIELD_EVERY == YIELD_EVERY - 1 {
                        // A round is milliseconds of writes: a call's thread waiting for
                        // this core gets it now rather than at the end of the time slice.
                        std::thread::yield_now();
                    }
                    if !s.offer(&batch, cap) || s.socket_full.load(Ordering::Relaxed) {
                        // Nothing new, or its task is waiting to write (and writes it after).
                        continue;
                    }
                    if s.deliver() != Flush::Done {
                        // Its task waits for the socket to take the rest (or finds it failed).
                        s.socket_full.store(true, Ordering::Relaxed);
                        s.notify.notify_one();
                    }
                }
                batch.clear();
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                let Some(hub) = hub.upgrade() else { return };
                if hub.dropped.swap(false, Ordering::Relaxed) {
                    let sessions = hub.sessions.read().unwrap_or_else(PoisonError::into_inner);
                    tracing::warn!(sessions = sessions.len(), "events hub fell behind: closing every events session");
                    for s in sessions.values() {
                        s.close(CLOSE_OVERFLOW, "hub_overflow: the server dropped events; reconnect".into());
                    }
                }
                let conference = match &ev.kind {
                    EventKind::ConferenceJoined { conference, .. } => {
                        in_conference.insert(ev.call_id.clone(), conference.clone());
                        Some(conference.clone())
                    }
                    EventKind::ConferenceLeft { conference } => {
                        in_conference.remove(&ev.call_id);
                        Some(conference.clone())
                    }
                    EventKind::Finished { .. } => in_conference.remove(&ev.call_id),
                    _ => in_conference.get(&ev.call_id).cloned(),
                };
                if hub.count.load(Ordering::Relaxed) == 0 {
                    // Only kept the conference map up to date: nobody to send it to.
                    continue;
                }
                let happened = ev.time;
                batch.push(Frame {
                    tail: render_tail(&ev).into(),
                    call_id: ev.call_id,
                    tenant: ev.tenant,
                    scope: ev.scope,
                    conference,
                });
                if !flush_armed {
                    // FLUSH_AFTER counts from when the event happened: one that waited in the
                    // hub's queue (while the last batch was written) goes out that much sooner.
                    let waited = (chrono::Utc::now() - happened).to_std().unwrap_or_default();
                    flush_armed = true;
                    flush
                        .as_mut()
                        .reset(tokio::time::Instant::now() + FLUSH_AFTER.saturating_sub(waited));
                }
            }
            _ = sweep.tick() => {
                let Some(hub) = hub.upgrade() else { return };
                hub.sweep();
            }
        }
    }
}

/// An event's JSON without `seq` and without the opening brace.
fn render_tail(ev: &CallEvent) -> String {
    let v = json!({
        "type": ev.kind.name(),
        "callId": ev.call_id,
        "legId": ev.leg.map(|i| leg_id(&ev.call_id, i)),
        "time": ev.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "callSeq": ev.seq,
        "tenant": ev.tenant,
        "data": ev.kind.data(),
    });
    let s = v.to_string();
    s.strip_prefix('{').map(str::to_string).unwrap_or(s)
}

/// Appends the frame of one event: `{"seq":N,` and the event's tail, as a text frame.
fn push_event_frame(out: &mut Vec<u8>, seq: u64, tail: &str) {
    // The decimal digits by hand: this runs for every event and every client.
    let mut digits = [0u8; 20];
    let mut n = seq;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[i..];
    let comma = tail != "}";
    let len = b"{\"seq\":".len() + digits.len() + usize::from(comma) + tail.len();
    push_text_frame(out, len, |out| {
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(digits);
        if comma {
            out.push(b',');
        }
        out.extend_from_slice(tail.as_bytes());
    });
}

/// `GET /v1/events` — upgrades to the events WebSocket. The key comes as `Authorization:
/// Bearer <key>` or `?token=<key>` (browsers cannot set headers on a WebSocket); a request that
/// is not a WebSocket handshake is `426`;
/// `?session=<id>&resume=<last seq>` resumes a session.
pub(crate) async fn events(
    State(st): State<ApiState>,
    permit: Option<axum::Extension<crate::serve::ConnectionPermit>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<Upgrade, &'static str>,
) -> Result<Response, ApiError> {
    let mut token = None;
    let mut session = None;
    let mut resume = None;
    // The key first: a request without one is 401, whatever else is wrong with it.
    let mut bad_param = None;
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "token" => token = Some(v.into_owned()),
            "session" => session = Some(v.into_owned()),
            "resume" => match v.parse::<u64>() {
                Ok(r) => resume = Some(r),
                Err(_) => {
                    bad_param.get_or_insert(ApiError::invalid_field(
                        "query",
                        "resume",
                        "must be the last seq received (a whole number)",
                    ));
                }
            },
            other => {
                bad_param.get_or_insert(ApiError::invalid_field(
                    "query",
                    other,
                    "unknown query parameter (expected token, session, resume)",
                ));
            }
        }
    }
    let caller = Caller::admitted(&st, crate::auth::bearer(&headers).or(token).as_deref())?;
    if let Some(e) = bad_param {
        return Err(e);
    }
    let upgrade = upgrade.map_err(|why| {
        ApiError::new(
            axum::http::StatusCode::UPGRADE_REQUIRED,
            crate::error::ErrorCode::UpgradeRequired,
            format!("GET /v1/events is a WebSocket (Upgrade: websocket): {why}"),
        )
    })?;
    let scope = caller.call_scope(&st.store)?;
    // The socket is served on the events thread (see `events_runtime`).
    Ok(
        upgrade.accept(events_runtime().clone(), move |wire| async move {
            // Clients send short commands; tungstenite zeroes its read buffer before every
            // read. Its writes go straight to the wire's queue (events never pass through it).
            let config = WebSocketConfig::default()
                .max_message_size(Some(64 * 1024))
                .max_frame_size(Some(64 * 1024))
                .read_buffer_size(1024)
                .write_buffer_size(0);
            let socket =
                WebSocket::from_raw_socket(WireIo(wire.clone()), Role::Server, Some(config)).await;
            run(socket, wire, st, caller, scope, session, resume).await;
            drop(permit);
        }),
    )
}

/// The runtime the hub and every events socket run on: one thread of its own, a
/// single-threaded runtime apart from the calls' runtime (calls hand their events over without
/// waiting), at a lower priority than the calls ([`EVENTS_NICE`]): on a machine short of CPU,
/// events wait, calls do not. Two such threads (sockets shared out) made both the delays and
/// call setup worse on the 2-core VM, competing with the calls' threads for the same cores.
fn events_runtime() -> &'static tokio::runtime::Handle {
    static RT: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                lower_priority();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = tx.send(Some(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the events runtime");
                        let _ = tx.send(None);
                    }
                }
            });
        let handle = spawned.ok().and_then(|_| rx.recv().ok().flatten());
        // Without a thread of its own, the events share the caller's runtime.
        handle.unwrap_or_else(tokio::runtime::Handle::current)
    })
}

/// The events thread's nice value. Measured with 1,000 subscribers of 100 calls/s
/// (`bench/events_fanout.py`, docs/performance.md): at +10, INVITE→200 p99 rose by about 1 ms
/// with the subscribers instead of 3–4 ms at normal priority, and the delivery delay stayed
/// under 50 ms.
const EVENTS_NICE: libc::c_int = 10;

/// Gives the calling thread [`EVENTS_NICE`] (Linux schedules threads one by one: this thread
/// only). Any user may lower its own priority; failing that, the thread runs as it is.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id.
        let r = unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS,
                libc::gettid() as libc::id_t,
                EVENTS_NICE,
            )
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the events thread's priority");
        }
    }
}

/// What the client asked to resume, and whether it could.
enum Resumed {
    No,
    Yes(Arc<Session>),
    Failed(&'static str),
}

fn resume_session(
    hub: &EventHub,
    key: &str,
    session: Option<String>,
    resume: Option<u64>,
) -> Resumed {
    let (id, last) = match (session, resume) {
        (None, None) => return Resumed::No,
        (Some(_), None) | (None, Some(_)) => {
            return Resumed::Failed("resuming needs both session and resume")
        }
        (Some(id), Some(last)) => (id, last),
    };
    let Some(s) = hub.get(&id) else {
        return Resumed::Failed("no such session (or its resume window is over)");
    };
    if s.key != key {
        return Resumed::Failed("no such session (or its resume window is over)");
    }
    if s.closed.is_cancelled() {
        return Resumed::Failed("the session was closed (its queue overflowed)");
    }
    let mut q = lock(&s.queue);
    if last >= q.next_seq {
        return Resumed::Failed("resume names a seq the session never sent");
    }
    let oldest = q.ring.front().map(|(s, _)| *s).unwrap_or(q.next_seq);
    if last + 1 < oldest {
        return Resumed::Failed("events after that seq are no longer held");
    }
    q.sent = last;
    q.attached = true;
    q.detached_at = None;
    // A socket still attached (a half-open connection the client gave up on) loses the
    // session to this one.
    q.attachment += 1;
    drop(q);
    let fresh = CancellationToken::new();
    std::mem::replace(&mut *lock(&s.taken_over), fresh).cancel();
    Resumed::Yes(s)
}

async fn run(
    mut socket: WebSocket,
    wire: Arc<Wire>,
    st: ApiState,
    caller: Caller,
    scope: CallScope,
    session: Option<String>,
    resume: Option<u64>,
) {
    let hub = st.events.clone();
    let cfg = hub.cfg;
    let key = caller.0.name.clone();
    let (s, resumed) = match resume_session(&hub, &key, session, resume) {
        Resumed::Yes(s) => (s, true),
        other => {
            if let Resumed::Failed(reason) = other {
                let msg = json!({"type": "resume_failed", "reason": reason});
                if socket
                    .send(Message::Text(msg.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let s = Arc::new(Session::new(key.clone(), scope));
            hub.insert(s.clone());
            (s, false)
        }
    };
    let (mine, taken_over) = (lock(&s.queue).attachment, lock(&s.taken_over).clone());
    let hello = {
        let q = lock(&s.queue);
        json!({
            "type": "hello",
            "session": s.id,
            "resumed": resumed,
            "lastSeq": q.next_seq - 1,
            "pingInterval": cfg.ping_interval.as_secs_f64(),
            "resumeWindow": cfg.resume_window.as_secs_f64(),
        })
    };
    let mut open = socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_ok();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.ping_interval,
        cfg.ping_interval,
    );
    let mut awaiting_pong = false;
    let mut last_heard = tokio::time::Instant::now();
    let mut close: Option<(u16, String)> = None;
    // From here on the hub writes the session's events to this socket; frames already
    // waiting (a resumed session) go out first. Unless a newer socket took the session over
    // meanwhile (while this one said hello): its connection stays the session's.
    {
        let q = lock(&s.queue);
        if q.attachment == mine {
            *lock(&s.wire) = Some((mine, wire.clone()));
        }
    }
    s.notify.notify_one();
    while open {
        let inactive_at = cfg.inactivity_timeout.map(|t| last_heard + t);
        tokio::select! {
            biased;
            _ = s.closed.cancelled() => {
                close = lock(&s.close_reason).clone();
                break;
            }
            _ = taken_over.cancelled() => {
                close = Some((CLOSE_TAKEN_OVER, "taken_over: the session was resumed on another connection".into()));
                break;
            }
            msg = socket.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Ping(_) | Message::Binary(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(t))) => {
                    last_heard = tokio::time::Instant::now();
                    let reply = on_client_message(&st, &caller, &s, t.as_str()).await;
                    if let Some(r) = reply {
                        open = send_or_close(&mut socket, &s, r.to_string()).await;
                    }
                }
            },
            _ = s.notify.notified() => {
                // The socket took only part of what the hub (or this task) gave it.
                open = drive(&s, &wire).await;
            }
            _ = ping.tick() => {
                // A key deleted since the handshake (or with its tenant or SIP user) ends the
                // socket, and its session.
                if !matches!(st.store.get_api_key(&key), Ok(Some(_))) {
                    close = Some((CLOSE_KEY_REVOKED, "key_revoked: the API key no longer exists".into()));
                    s.closed.cancel();
                    break;
                }
                if awaiting_pong {
                    close = Some((CLOSE_PONG_TIMEOUT, "pong_timeout: no answer to the last ping".into()));
                    break;
                }
                awaiting_pong = true;
                open = send_or_close_msg(&mut socket, &s, Message::Ping(Default::default())).await;
            }
            _ = sleep_until_opt(inactive_at) => {
                close = Some((CLOSE_INACTIVE, "inactive: no message from the client within the inactivity timeout".into()));
                break;
            }
            _ = st.shutdown.cancelled() => {
                close = Some((CLOSE_SHUTDOWN, "the server is shutting down".into()));
                break;
            }
        }
    }
    if s.closed.is_cancelled() && close.is_none() {
        close = lock(&s.close_reason).clone();
    }
    if let Some((code, reason)) = close.clone() {
        tracing::info!(session = %s.id, key = %key, code, %reason, "events socket closed");
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        // A client that reads nothing cannot take a close frame either: do not wait for it.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
    // Overflowed, revoked, or the server going down: gone. A connection lost (or closed for
    // a missed pong or inactivity) leaves the session resumable for the window.
    let ends_session =
        s.closed.is_cancelled() || matches!(close, Some((CLOSE_SHUTDOWN | CLOSE_KEY_REVOKED, _)));
    {
        let mut w = lock(&s.wire);
        if w.as_ref().is_some_and(|(a, _)| *a == mine) {
            *w = None;
        }
    }
    if ends_session {
        s.closed.cancel();
        hub.remove(&s.id);
    } else {
        let mut q = lock(&s.queue);
        if q.attachment == mine {
            q.attached = false;
            q.detached_at = Some(Instant::now());
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Sends a text frame unless the session is closed meanwhile (a blocked send to a client that
/// reads nothing is abandoned when its queue overflows). False when the socket is done.
async fn send_or_close(socket: &mut WebSocket, s: &Session, text: String) -> bool {
    send_or_close_msg(socket, s, Message::Text(text.into())).await
}

/// Writes what the socket could not take at once, then what came meanwhile, until the session
/// is caught up. False when the connection is done (failed, or the client read nothing for
/// [`SEND_TIMEOUT`], or the session was closed meanwhile).
async fn drive(s: &Session, wire: &Wire) -> bool {
    loop {
        match s.deliver() {
            Flush::Done => {
                s.socket_full.store(false, Ordering::Relaxed);
                return true;
            }
            Flush::Failed => return false,
            Flush::Blocked => {}
        }
        let flushed = std::future::poll_fn(|cx| wire.poll_flush(cx));
        if !wait_for_socket(s, flushed).await {
            return false;
        }
    }
}

/// Runs a write to the client's socket; while it waits for the socket to take more (the client
/// is not reading), the session says so (`socket_full`). Abandoned (false) when the session is
/// closed meanwhile or after [`SEND_TIMEOUT`].
async fn wait_for_socket<E>(
    s: &Session,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(r) = first {
        return r.is_ok();
    }
    s.socket_full.store(true, Ordering::Relaxed);
    let ok = tokio::select! {
        r = write => r.is_ok(),
        _ = s.closed.cancelled() => false,
        // A client that takes nothing for this long (events, replies, pings) is gone.
        _ = tokio::time::sleep(SEND_TIMEOUT) => false,
    };
    s.socket_full.store(false, Ordering::Relaxed);
    // The hub left the socket to this task meanwhile: what it queued goes out now.
    s.notify.notify_one();
    ok
}

async fn send_or_close_msg(socket: &mut WebSocket, s: &Session, msg: Message) -> bool {
    wait_for_socket(s, socket.send(msg)).await
}

fn uuid_like() -> String {
    let b: [u8; 16] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Strings of a subscription list, or the field at fault.
fn string_set(v: Option<&Value>, field: &str) -> Result<BTreeSet<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(BTreeSet::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid_json(
                        format!("`{field}` must be an array of strings"),
                        Some(format!("{field}[{i}]")),
                    )
                })
            })
            .collect(),
        Some(_) => Err(ApiError::invalid_json(
            format!("`{field}` must be an array of strings"),
            Some(field.to_string()),
        )),
    }
}

fn error_reply(op: &str, id: Option<&Value>, e: &ApiError) -> Value {
    json!({
        "type": "error",
        "op": op,
        "id": id,
        "status": e.status.as_u16(),
        "error": e.to_json(),
    })
}

/// One message from the client: `subscribe`, `ping` or `command`. Returns the reply.
async fn on_client_message(
    st: &ApiState,
    caller: &Caller,
    s: &Session,
    text: &str,
) -> Option<Value> {
    let msg: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let err = ApiError::invalid_json(format!("not JSON: {e}"), None);
            return Some(error_reply("", None, &err));
        }
    };
    let op = msg.get("op").and_then(Value::as_str).unwrap_or("");
    let id = msg.get("id");
    match op {
        "ping" => Some(json!({"type": "pong", "id": id})),
        "subscribe" => {
            let parsed = (|| {
                Ok::<_, ApiError>(Subscription {
                    lines: string_set(msg.get("lines"), "lines")?,
                    numbers: string_set(msg.get("numbers"), "numbers")?,
                    calls: string_set(msg.get("calls"), "calls")?,
                    conferences: string_set(msg.get("conferences"), "conferences")?,
                })
            })();
            let sub = match parsed {
                Ok(sub) => sub,
                Err(e) => return Some(error_reply(op, id, &e)),
            };
            let control = match msg.get("control") {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(_) => {
                    let e = ApiError::invalid_json(
                        "`control` must be a boolean",
                        Some("control".into()),
                    );
                    return Some(error_reply(op, id, &e));
                }
            };
            // A reseller's tenants are read again on every subscribe.
            let scope = match caller.call_scope(&st.store) {
                Ok(scope) => scope,
                Err(e) => return Some(error_reply(op, id, &e)),
            };
            // Control: the numbers, each in the key's scope, are offered to this session.
            let registrations = if control {
                match control_numbers(st, &scope, &sub.numbers) {
                    Ok(r) => r,
                    Err(e) => return Some(error_reply(op, id, &e)),
                }
            } else {
                Vec::new()
            };
            *lock(&s.control) = registrations;
            let reply = json!({
                "type": "subscribed",
                "id": id,
                "lines": sub.lines,
                "numbers": sub.numbers,
                "calls": sub.calls,
                "conferences": sub.conferences,
                "control": control,
            });
            let mut f = lock(&s.filter);
            let everything = matches!(scope, CallScope::All) && sub.is_everything();
            f.scope = scope;
            f.sub = Some(sub);
            s.takes_everything.store(everything, Ordering::Relaxed);
            drop(f);
            Some(reply)
        }
        "command" => {
            if let Err(secs) = st.rate_limits.admit(&caller.0) {
                return Some(error_reply(op, id, &ApiError::rate_limited(secs)));
            }
            if !matches!(st.store.get_api_key(&caller.0.name), Ok(Some(_))) {
                s.close(
                    CLOSE_KEY_REVOKED,
                    "key_revoked: the API key no longer exists".into(),
                );
                return None;
            }
            Some(command(st, caller, s, id, &msg).await)
        }
        "" => Some(error_reply(
            op,
            id,
            &ApiError::invalid_json("a message needs an `op`", Some("op".into())),
        )),
        other => Some(error_reply(
            op,
            id,
            &ApiError::invalid_field(
                "message",
                "op",
                format!("unknown op \"{other}\" (expected subscribe, ping, command)"),
            ),
        )),
    }
}

/// The control registrations of a `"control": true` subscription: `numbers` must name at
/// least one number, each of a tenant in the key's scope (account keys cannot control).
fn control_numbers(
    st: &ApiState,
    scope: &CallScope,
    numbers: &BTreeSet<String>,
) -> Result<Vec<Box<dyn std::any::Any + Send + Sync>>, ApiError> {
    if matches!(scope, CallScope::Line { .. }) {
        return Err(ApiError::forbidden(
            "an account key cannot control numbers (a customer key can)",
        )
        .with_field("control"));
    }
    if numbers.is_empty() {
        return Err(ApiError::invalid_field(
            "subscribe",
            "numbers",
            "`control: true` needs the numbers whose calls are offered",
        ));
    }
    let mut out = Vec::with_capacity(numbers.len());
    for n in numbers {
        match st.store.find_number(n)? {
            Some((number, tenant)) if scope.may_cover_tenant(&tenant.name) => {
                out.push(st.calls.control_number(&tenant.name, &number.number));
            }
            _ => {
                return Err(ApiError::invalid_field(
                    "subscribe",
                    "numbers",
                    format!("no number \"{n}\" in the key's scope"),
                ))
            }
        }
    }
    Ok(out)
}

/// `{"op":"command","id":…,"method":"calls.hangup","params":{…}}` → `{"type":"reply",…}`.
/// A command that changes a call and carries an `id` is run once per key and id: a retry gets
/// the first reply again (`"replayed": true`).
async fn command(
    st: &ApiState,
    caller: &Caller,
    s: &Session,
    id: Option<&Value>,
    msg: &Value,
) -> Value {
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let changes = matches!(
        method,
        "calls.hangup"
            | "calls.interrupt"
            | "calls.dtmf"
            | "calls.hold"
            | "calls.unhold"
            | "calls.mute"
            | "calls.unmute"
            | "calls.record"
            | "calls.stopRecording"
            | "calls.transfer"
            | "calls.redirect"
            | "calls.supervise"
            | "calls.stopSupervising"
            | "calls.claim"
            | "calls.answer"
            | "calls.blocks"
    );
    let key = id.filter(|_| changes).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let Some(key) = key else {
        return run_command(st, caller, s, id, msg).await;
    };
    let request = format!("{method}\n{}", msg.get("params").unwrap_or(&Value::Null));
    let (claim, slot) =
        crate::idempotency::socket_claim(st, &caller.0.name, &key, request.as_bytes());
    match claim {
        crate::idempotency::Claim::Replay(stored) => {
            let mut v: Value = serde_json::from_slice(&stored.body).unwrap_or(Value::Null);
            v["replayed"] = Value::Bool(true);
            v
        }
        crate::idempotency::Claim::Conflict(why) => {
            let e = ApiError::conflict(why).with_field("id");
            json!({"type": "reply", "id": id, "method": method, "ok": false,
                   "status": 409, "error": e.to_json()})
        }
        crate::idempotency::Claim::Run => {
            let reply = run_command(st, caller, s, id, msg).await;
            let status = reply["status"].as_u64().unwrap_or(200);
            let keep = status < 500;
            st.idempotency.finish(
                slot,
                keep.then(|| crate::idempotency::Stored {
                    status: axum::http::StatusCode::OK,
                    content_type: None,
                    location: None,
                    body: reply.to_string().into(),
                }),
            );
            reply
        }
    }
}

async fn run_command(
    st: &ApiState,
    caller: &Caller,
    s: &Session,
    id: Option<&Value>,
    msg: &Value,
) -> Value {
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let mut params = match msg.get("params") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            let e = ApiError::invalid_json("`params` must be an object", Some("params".into()));
            return error_reply("command", id, &e);
        }
    };
    let mut call_id = || match params.remove("callId") {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ApiError::invalid_json(
            "`params.callId` (a string) is required",
            Some("params.callId".into()),
        )),
    };
    let result: Result<Value, ApiError> = match method {
        "calls.list" => {
            let line = params
                .get("line")
                .and_then(Value::as_str)
                .map(str::to_string);
            let number = params
                .get("number")
                .and_then(Value::as_str)
                .map(str::to_string);
            crate::calls::list_calls(st, caller, line, number)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default())
        }
        "calls.get" => match call_id() {
            Ok(c) => crate::calls::get_call(st, caller, &c)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.hangup" => match call_id() {
            Ok(c) => crate::calls::hangup_call(st, caller, &c, params)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.interrupt" => match call_id() {
            Ok(c) => crate::calls::interrupt_call(st, caller, &c)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.dtmf" => match call_id() {
            Ok(c) => crate::calls::send_dtmf(st, caller, &c, params)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.hold" | "calls.unhold" | "calls.mute" | "calls.unmute" => {
            use crate::calls::PartyCommand;
            let what = match method {
                "calls.hold" => PartyCommand::Hold,
                "calls.unhold" => PartyCommand::Unhold,
                "calls.mute" => PartyCommand::Mute,
                _ => PartyCommand::Unmute,
            };
            match call_id() {
                Ok(c) => crate::calls::party_command(st, caller, &c, what, params)
                    .await
                    .map(|v| serde_json::to_value(v).unwrap_or_default()),
                Err(e) => Err(e),
            }
        }
        "calls.record" => match call_id() {
            Ok(c) => crate::calls::start_recording(st, caller, &c, params)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.transfer" => match call_id() {
            Ok(c) => crate::calls::transfer_call(st, caller, &c, params)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.claim" => match call_id() {
            Ok(c) => {
                let claimed = crate::calls::claim_call(st, caller, &c, Some(s.id.clone())).await;
                if claimed.is_ok() {
                    s.hold_claim(st, c);
                }
                claimed.map(|v| serde_json::to_value(v).unwrap_or_default())
            }
            Err(e) => Err(e),
        },
        "calls.answer" => match call_id() {
            Ok(c) => crate::calls::control_call(
                st,
                caller,
                &c,
                callplane_engine::registry::ControlCommand::Answer,
            )
            .await
            .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.blocks" => match call_id() {
            Ok(c) => crate::calls::run_blocks_on(st, caller, &c, params)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.supervise" => match call_id() {
            Ok(c) => crate::calls::supervise_call(st, caller, &c, params)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.stopSupervising" => match call_id() {
            Ok(c) => crate::calls::stop_supervising(st, caller, &c)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.redirect" => match call_id() {
            Ok(c) => crate::calls::redirect_call(st, caller, &c, params)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        "calls.stopRecording" => match call_id() {
            Ok(c) => crate::calls::stop_recording(st, caller, &c)
                .await
                .map(|v| serde_json::to_value(v).unwrap_or_default()),
            Err(e) => Err(e),
        },
        other => Err(ApiError::invalid_field(
            "command",
            "method",
            format!(
                "unknown method \"{other}\" (expected calls.list, calls.get, calls.hangup, \
                 calls.interrupt, calls.dtmf, calls.hold, calls.unhold, calls.mute, \
                 calls.unmute, calls.record, calls.stopRecording, calls.transfer, \
                 calls.redirect, calls.supervise, calls.stopSupervising, calls.claim, \
                 calls.answer, calls.blocks)"
            ),
        )),
    };
    match result {
        Ok(v) => json!({"type": "reply", "id": id, "method": method, "ok": true, "result": v}),
        Err(e) => json!({
            "type": "reply", "id": id, "method": method, "ok": false,
            "status": e.status.as_u16(), "error": e.to_json(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Frame {
        Frame {
            call_id: format!("c{n}"),
            tenant: None,
            scope: Arc::new(EventScope::default()),
            conference: None,
            tail: format!("\"n\":{n}}}").into(),
        }
    }

    fn subscribed() -> Session {
        let s = Session::new("k".into(), CallScope::All);
        lock(&s.filter).sub = Some(Subscription::default());
        s
    }

    #[test]
    fn a_session_behind_only_because_the_server_is_is_not_closed() {
        let s = subscribed();
        for n in 0..30 {
            s.offer(&[frame(n)], 10);
        }
        assert!(
            !s.closed.is_cancelled(),
            "its socket takes what it is given"
        );
        assert_eq!(lock(&s.queue).ring.len(), 30);
        // Once it caught up, the ring is back to `cap` at the next event.
        lock(&s.queue).sent = 30;
        s.offer(&[frame(30)], 10);
        let q = lock(&s.queue);
        assert_eq!(q.ring.len(), 10);
        assert_eq!(q.ring.front().map(|f| f.0), Some(22));
    }

    #[test]
    fn a_session_whose_socket_takes_nothing_more_is_closed_for_overflow() {
        let s = subscribed();
        s.socket_full.store(true, Ordering::Relaxed);
        for n in 0..11 {
            s.offer(&[frame(n)], 10);
        }
        assert!(s.closed.is_cancelled());
        let reason = lock(&s.close_reason).clone().expect("a reason");
        assert_eq!(reason.0, CLOSE_OVERFLOW);
        assert!(reason.1.starts_with("queue_overflow"), "{reason:?}");
    }

    #[test]
    fn a_detached_session_that_would_lose_events_is_closed() {
        let s = subscribed();
        lock(&s.queue).attached = false;
        for n in 0..10 {
            s.offer(&[frame(n)], 10);
        }
        assert!(
            !s.closed.is_cancelled(),
            "it holds `cap` events for a resume"
        );
        s.offer(&[frame(10)], 10);
        assert!(s.closed.is_cancelled());
    }

    #[test]
    fn the_server_falling_very_far_behind_closes_the_session_all_the_same() {
        let s = subscribed();
        for n in 0..=server_behind_limit(10) as u64 {
            s.offer(&[frame(n)], 10);
        }
        assert!(s.closed.is_cancelled());
    }

    fn event_frame(seq: u64, tail: &str) -> String {
        let mut out = Vec::new();
        push_event_frame(&mut out, seq, tail);
        let header = if out[1] == 126 { 4 } else { 2 };
        assert_eq!(out[0], 0x81, "a final text frame");
        String::from_utf8(out[header..].to_vec()).expect("UTF-8")
    }

    #[test]
    fn a_frame_is_the_seq_then_the_event() {
        assert_eq!(event_frame(0, "}"), r#"{"seq":0}"#);
        assert_eq!(event_frame(7, r#""type":"x"}"#), r#"{"seq":7,"type":"x"}"#);
        assert_eq!(
            event_frame(u64::MAX, r#""a":1}"#),
            format!("{{\"seq\":{},\"a\":1}}", u64::MAX)
        );
        assert_eq!(event_frame(1_000_000, "}"), r#"{"seq":1000000}"#);
        let long = format!("\"data\":\"{}\"}}", "x".repeat(200));
        assert_eq!(event_frame(3, &long), format!("{{\"seq\":3,{long}"));
    }
}
