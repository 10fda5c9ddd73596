//! The one HTTP client every customer-facing request goes through (CALL_CONTROL, ASK_URL, leg
//! and call-state callbacks): a shared keep-alive connection pool, a bounded number of requests
//! in flight per customer host, one deadline per request that covers the wait for a slot, DNS,
//! connect and the whole answer, an HMAC-SHA256 signature header, and latency/outcome counters
//! per tenant for `/metrics`.

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Header carrying the hex HMAC-SHA256 of the body under the tenant's signing secret.
pub const SIGNATURE_HEADER: &str = "X-Callplane-Signature";

/// Answers larger than this are refused (a routing decision is a few kB at most).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Which protocol a request belongs to, as labelled in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WebhookKind {
    CallControl,
    AskUrl,
    /// `answer_url` / `hangup_url` of an ASK_URL leg.
    LegCallback,
    /// `callstateInfoUrl` events.
    CallState,
}

impl WebhookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::CallControl => "call_control",
            WebhookKind::AskUrl => "ask_url",
            WebhookKind::LegCallback => "leg_callback",
            WebhookKind::CallState => "callstate",
        }
    }
}

/// How a request ended, as labelled in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    Timeout,
    ConnectError,
    /// A status other than 2xx.
    HttpError,
    /// 2xx, but the body is not what the protocol wants (not JSON, no `dtype`…).
    InvalidAnswer,
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Ok,
    Outcome::Timeout,
    Outcome::ConnectError,
    Outcome::HttpError,
    Outcome::InvalidAnswer,
];

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::HttpError => "http_error",
            Outcome::InvalidAnswer => "invalid_answer",
        }
    }

    /// Its slot in [`OUTCOMES`] (declared in the same order).
    fn index(self) -> usize {
        self as usize
    }
}

/// Why a request produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("invalid answer: {0}")]
    InvalidAnswer(String),
}

impl WebhookError {
    pub fn outcome(&self) -> Outcome {
        match self {
            WebhookError::Timeout(_) => Outcome::Timeout,
            WebhookError::Connect(_) => Outcome::ConnectError,
            WebhookError::Status(_) => Outcome::HttpError,
            WebhookError::InvalidAnswer(_) => Outcome::InvalidAnswer,
        }
    }
}

/// One POST to a customer server.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub kind: WebhookKind,
    /// The tenant it is sent for (metrics label).
    pub tenant: String,
    pub url: String,
    pub content_type: &'static str,
    pub body: Bytes,
    /// Signs the body when set.
    pub signing_secret: Option<String>,
    /// Deadline for the whole exchange, counted from the call to `send`.
    pub timeout: Duration,
}

/// Settings of the shared client.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Requests in flight to one host (scheme://host:port) at most; others wait (within their
    /// own deadline) for a slot.
    pub max_per_host: usize,
    /// Idle keep-alive connections kept per host.
    pub max_idle_per_host: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            max_per_host: 256,
            max_idle_per_host: 64,
        }
    }
}

/// Hex HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is unreachable in practice.
        Err(_) => return String::new(),
    };
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(tag.len() * 2);
    for b in tag {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The pool key of a URL: scheme, host and port; `None` for a URL reqwest cannot use.
fn host_key(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(format!(
        "{}://{}:{}",
        url.scheme(),
        host,
        url.port_or_known_default()?
    ))
}

/// The shared client. Cheap to share behind an `Arc`.
pub struct WebhookClient {
    client: reqwest::Client,
    cfg: WebhookConfig,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    metrics: WebhookMetrics,
}

impl WebhookClient {
    pub fn new(cfg: WebhookConfig) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("Callplane/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(cfg.max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // A redirect is an answer the customer did not mean for us: it counts as non-2xx.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(WebhookClient {
            client,
            cfg,
            hosts: Mutex::new(HashMap::new()),
            metrics: WebhookMetrics::default(),
        })
    }

    pub fn metrics(&self) -> &WebhookMetrics {
        &self.metrics
    }

    fn host_slots(&self, key: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        hosts
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.cfg.max_per_host)))
            .clone()
    }

    /// Sends the request and returns a 2xx answer's body. Everything — waiting for a slot on
    /// the host, DNS, connect, the answer — happens within `req.timeout`. The caller counts
    /// the outcome with [`WebhookMetrics::record`] once it has judged the body.
    pub async fn send(&self, req: &WebhookRequest) -> Result<Bytes, WebhookError> {
        let timeout = req.timeout;
        match tokio::time::timeout(timeout, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => Err(WebhookError::Timeout(timeout.as_millis())),
        }
    }

    /// Like [`send`](Self::send), and records the outcome (for answers that need no judging).
    pub async fn send_and_record(&self, req: &WebhookRequest) -> Result<Bytes, WebhookError> {
        let started = Instant::now();
        let r = self.send(req).await;
        let outcome = r
            .as_ref()
            .map_or_else(WebhookError::outcome, |_| Outcome::Ok);
        self.metrics
            .record(&req.tenant, req.kind, outcome, started.elapsed());
        r
    }

    async fn exchange(&self, req: &WebhookRequest) -> Result<Bytes, WebhookError> {
        let url = reqwest::Url::parse(&req.url)
            .map_err(|e| WebhookError::Connect(format!("bad URL: {e}")))?;
        let key = host_key(&url).ok_or_else(|| WebhookError::Connect("bad URL".into()))?;
        let slots = self.host_slots(&key);
        let _permit = slots
            .acquire_owned()
            .await
            .map_err(|_| WebhookError::Connect("client closed".into()))?;
        let mut builder = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, req.content_type)
            .body(req.body.clone());
        if let Some(secret) = &req.signing_secret {
            builder = builder.header(SIGNATURE_HEADER, sign(secret, &req.body));
        }
        let mut resp = builder
            .send()
            .await
            .map_err(|e| WebhookError::Connect(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(WebhookError::Status(status.as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| WebhookError::Connect(error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(WebhookError::InvalidAnswer(format!(
                    "answer larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }
}

/// reqwest's top-level message is vague ("error sending request"); its sources say why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Upper bounds (seconds) of the latency histogram.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Series {
    outcomes: [u64; OUTCOMES.len()],
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Webhook requests by tenant and kind: outcomes and a latency histogram.
#[derive(Default)]
pub struct WebhookMetrics {
    series: Mutex<HashMap<(String, WebhookKind), Series>>,
}

impl WebhookMetrics {
    pub fn record(&self, tenant: &str, kind: WebhookKind, outcome: Outcome, latency: Duration) {
        let secs = latency.as_secs_f64();
        let mut map = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let s = map.entry((tenant.to_string(), kind)).or_default();
        s.outcomes[outcome.index()] += 1;
        s.count += 1;
        s.sum += secs;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i] += 1;
            }
        }
    }

    /// Every (tenant, kind) seen, sorted, for `/metrics`.
    pub fn series(&self) -> Vec<WebhookSeries> {
        let map = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<&(String, WebhookKind)> = map.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|k| {
                let s = &map[k];
                // Stored cumulative (each request counts in every bucket it fits); handed out
                // per bucket, with the last one unbounded.
                let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
                let mut below = 0;
                for (le, n) in BUCKETS.iter().zip(s.buckets) {
                    buckets.push((*le, n - below));
                    below = n;
                }
                buckets.push((f64::INFINITY, s.count - below));
                WebhookSeries {
                    tenant: k.0.clone(),
                    kind: k.1.as_str(),
                    outcomes: OUTCOMES
                        .iter()
                        .map(|o| (o.as_str(), s.outcomes[o.index()]))
                        .collect(),
                    buckets,
                    sum: s.sum,
                    count: s.count,
                }
            })
            .collect()
    }
}

/// One tenant's requests of one kind: by outcome, and their latency histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSeries {
    pub tenant: String,
    pub kind: &'static str,
    /// `(outcome, requests)` for every outcome, in a fixed order.
    pub outcomes: Vec<(&'static str, u64)>,
    /// `(upper bound in seconds, requests in this bucket)`, not cumulative; the last bound is
    /// infinity.
    pub buckets: Vec<(f64, u64)>,
    /// Seconds, over all requests.
    pub sum: f64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn metrics_series_count_outcomes_and_buckets() {
        let m = WebhookMetrics::default();
        m.record(
            "acme",
            WebhookKind::CallControl,
            Outcome::Ok,
            Duration::from_millis(3),
        );
        m.record(
            "acme",
            WebhookKind::CallControl,
            Outcome::Timeout,
            Duration::from_secs(5),
        );
        let series = m.series();
        assert_eq!(series.len(), 1);
        let s = &series[0];
        assert_eq!(
            (s.tenant.as_str(), s.kind, s.count),
            ("acme", "call_control", 2)
        );
        let outcome = |o: &str| s.outcomes.iter().find(|(n, _)| *n == o).map(|(_, c)| *c);
        assert_eq!(outcome("ok"), Some(1));
        assert_eq!(outcome("timeout"), Some(1));
        assert_eq!(outcome("http_error"), Some(0));
        // 3 ms in the 5 ms bucket, 5 s in the 5 s bucket; per bucket, not cumulative.
        let bucket = |le: f64| s.buckets.iter().find(|(b, _)| *b == le).map(|(_, c)| *c);
        assert_eq!(bucket(0.005), Some(1));
        assert_eq!(bucket(0.01), Some(0));
        assert_eq!(bucket(5.0), Some(1));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 0)));
        assert_eq!(s.buckets.iter().map(|(_, c)| c).sum::<u64>(), 2);
        assert!((s.sum - 5.003).abs() < 1e-9);
    }

    #[test]
    fn outcomes_are_listed_in_declaration_order() {
        for (i, o) in OUTCOMES.iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
    }

    #[tokio::test]
    async fn unreachable_host_is_a_connect_error_and_a_silent_one_a_timeout() {
        let client = WebhookClient::new(WebhookConfig::default()).expect("client");
        // A port nobody listens on: refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let mut req = WebhookRequest {
            kind: WebhookKind::CallControl,
            tenant: "t".into(),
            url: format!("http://127.0.0.1:{port}/hook"),
            content_type: "application/json",
            body: Bytes::from_static(b"{}"),
            signing_secret: None,
            timeout: Duration::from_secs(2),
        };
        let err = client.send(&req).await.expect_err("refused");
        assert_eq!(err.outcome(), Outcome::ConnectError, "{err}");
        // A listener that accepts and never answers: the deadline ends it.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        req.url = format!("http://{}/hook", silent.local_addr().expect("addr"));
        req.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = client.send(&req).await.expect_err("silent");
        assert_eq!(err, WebhookError::Timeout(200));
        assert!(started.elapsed() < Duration::from_millis(400));
    }
}
