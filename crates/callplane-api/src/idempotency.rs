//! `Idempotency-Key` on commands: a `POST` retried with the same key (by the same API key, to
//! the same route, with the same body) is not executed again — its first answer is replayed,
//! with `Idempotent-Replayed: true`. The events socket's commands use their `id` the same way.
//!
//! Answers are kept for [`KEEP`] (at most [`CAPACITY`] of them, oldest dropped first). A retry
//! while the first request still runs is `409`; the same key with another route or body is
//! `409` too (the key names one request). Server errors (5xx) are not kept: a retry after one
//! runs again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::ApiState;

/// How long an answer is replayed.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// How many answers are kept at most.
pub const CAPACITY: usize = 10_000;

pub const HEADER: &str = "idempotency-key";
/// A first request still "running" after this long is taken as abandoned.
const ABANDONED: Duration = Duration::from_secs(120);
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What is known of one key.
#[derive(Clone)]
enum Entry {
    Running { request: [u8; 32] },
    Done { request: [u8; 32], answer: Stored },
}

/// A kept answer.
#[derive(Clone)]
pub struct Stored {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub location: Option<HeaderValue>,
    pub body: Bytes,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<[u8; 32], (Entry, Instant)>,
    order: VecDeque<([u8; 32], Instant)>,
}

/// The kept answers of one process.
#[derive(Default)]
pub struct Idempotency(Mutex<Inner>);

/// What to do with a request that carries a key.
pub enum Claim {
    /// First time: run it, then [`Idempotency::finish`].
    Run,
    /// Seen: this is its answer.
    Replay(Stored),
    /// Seen but not finished, or the key was used for another request.
    Conflict(&'static str),
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

impl Idempotency {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `who` is the caller's credential (hashed here, never kept), `key` its idempotency key,
    /// `request` what the request is (method, route, body).
    pub fn claim(&self, who: &[u8], key: &[u8], request: &[&[u8]]) -> (Claim, [u8; 32]) {
        let id = digest(&[who, key]);
        let request = digest(request);
        let mut inner = self.lock();
        let now = Instant::now();
        // Forget what is too old or too many.
        while let Some(&(old, at)) = inner.order.front() {
            if now.duration_since(at) < KEEP && inner.entries.len() < CAPACITY {
                break;
            }
            inner.order.pop_front();
            if inner.entries.get(&old).is_some_and(|(_, t)| *t == at) {
                inner.entries.remove(&old);
            }
        }
        // A first request that never finished (its task died) does not block the key forever.
        if inner.entries.get(&id).is_some_and(|(e, at)| {
            matches!(e, Entry::Running { .. }) && now.duration_since(*at) > ABANDONED
        }) {
            inner.entries.remove(&id);
        }
        let claim = match inner.entries.get(&id) {
            Some((Entry::Running { .. }, _)) => {
                Claim::Conflict("a request with this Idempotency-Key is still being processed")
            }
            Some((Entry::Done { request: r, answer }, _)) => {
                if *r == request {
                    Claim::Replay(answer.clone())
                } else {
                    Claim::Conflict("this Idempotency-Key was used for another request")
                }
            }
            None => {
                inner.entries.insert(id, (Entry::Running { request }, now));
                inner.order.push_back((id, now));
                Claim::Run
            }
        };
        (claim, id)
    }

    /// The request claimed as `id` answered `answer` (`None`: not kept, a retry runs again).
    pub fn finish(&self, id: [u8; 32], answer: Option<Stored>) {
        let mut inner = self.lock();
        match answer {
            Some(answer) => {
                if let Some((entry, _)) = inner.entries.get_mut(&id) {
                    if let Entry::Running { request } = entry {
                        *entry = Entry::Done {
                            request: *request,
                            answer,
                        };
                    }
                }
            }
            None => {
                inner.entries.remove(&id);
            }
        }
    }
}

fn conflict(message: &'static str) -> Response {
    ApiError::conflict(message)
        .with_field("Idempotency-Key")
        .into_response()
}

/// The middleware on every API route: `POST` requests with an `Idempotency-Key` go through the
/// cache; everything else passes untouched.
pub async fn layer(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    if key.is_empty() || key.len() > 255 {
        return ApiError::invalid_field("request", "Idempotency-Key", "1 to 255 characters")
            .into_response();
    }
    // Only an authenticated key has answers kept (by its name): a request without one is
    // answered 401 by its route and must not touch anyone's kept answers.
    let Some(caller) = crate::auth::bearer(req.headers())
        .and_then(|t| crate::auth::Caller::from_token(&st.store, Some(&t)).ok())
    else {
        return next.run(req).await;
    };
    let who = format!("http\u{0}{}", caller.0.name).into_bytes();
    let (mut parts, body) = req.into_parts();
    // The route's `Caller` extractor takes it from here instead of looking the key up again.
    parts.extensions.insert(caller);
    let bytes = match axum::body::to_bytes(body, crate::JSON_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return ApiError::payload_too_large(crate::JSON_BODY_LIMIT).into_response(),
    };
    let path = parts.uri.path().as_bytes().to_vec();
    let (claim, id) = st
        .idempotency
        .claim(&who, key.as_bytes(), &[b"POST", &path, &bytes]);
    match claim {
        Claim::Conflict(why) => conflict(why),
        Claim::Replay(stored) => replay(stored),
        Claim::Run => {
            let res = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            let status = res.status();
            // Not kept: server errors and refusals that a retry may pass (auth, rate).
            if status.is_server_error()
                || status == StatusCode::UNAUTHORIZED
                || status == StatusCode::TOO_MANY_REQUESTS
            {
                st.idempotency.finish(id, None);
                return res;
            }
            let (parts, body) = res.into_parts();
            let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
                .await
                .unwrap_or_default();
            let stored = Stored {
                status,
                content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                location: parts.headers.get(header::LOCATION).cloned(),
                body: body.clone(),
            };
            st.idempotency.finish(id, Some(stored));
            Response::from_parts(parts, Body::from(body))
        }
    }
}

fn replay(s: Stored) -> Response {
    let mut res = Response::new(Body::from(s.body));
    *res.status_mut() = s.status;
    let h = res.headers_mut();
    if let Some(v) = s.content_type {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(v) = s.location {
        h.insert(header::LOCATION, v);
    }
    h.insert(REPLAYED, HeaderValue::from_static("true"));
    res
}

/// For the events socket: the reply to a command whose `id` was seen from this key.
pub fn socket_claim(st: &ApiState, key_name: &str, id: &str, request: &[u8]) -> (Claim, [u8; 32]) {
    let who = format!("socket\u{0}{key_name}");
    st.idempotency
        .claim(who.as_bytes(), id.as_bytes(), &[b"socket", request])
}
