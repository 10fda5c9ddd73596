//! `Idempotency-Key` on commands: a `POST` retried with the same key (by the same API key, to
//! the same route, with the same body) is not executed again — its first answer is replayed,
//! with `Idempotent-Replayed: true`. The events socket's commands use their `id` the same way.
//!
//! Answers are kept for [`KEEP`] (in memory at most [`CAPACITY`] of them, oldest dropped
//! first; and in the store, so a retry after a restart — or after its answer left memory — is
//! still not run twice). A retry while the first request still runs is `409`; the same key
//! with another route or body is `409` too (the key names one request). Server errors (5xx)
//! are not kept: a retry after one runs again.

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
    /// Answers written to the store since it was last pruned.
    written: u32,
}

/// The kept answers: in memory, and in the store when there is one.
#[derive(Default)]
pub struct Idempotency {
    inner: Mutex<Inner>,
    store: Option<callplane_store::Store>,
}

/// The store is pruned of answers older than [`KEEP`] after this many writes.
const PRUNE_EVERY: u32 = 1000;

impl Stored {
    fn from_kept(a: callplane_store::IdempotentAnswer) -> Option<Stored> {
        Some(Stored {
            status: StatusCode::from_u16(a.status).ok()?,
            content_type: a.content_type.and_then(|v| HeaderValue::from_str(&v).ok()),
            location: a.location.and_then(|v| HeaderValue::from_str(&v).ok()),
            body: Bytes::from(a.body),
        })
    }

    fn to_kept(&self, request: [u8; 32]) -> callplane_store::IdempotentAnswer {
        let text =
            |v: &Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string);
        callplane_store::IdempotentAnswer {
            request,
            status: self.status.as_u16(),
            content_type: text(&self.content_type),
            location: text(&self.location),
            body: self.body.to_vec(),
        }
    }
}

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

/// What the answer kept for `id` in memory says about a request `request` with its key;
/// `None` when memory holds nothing for it.
fn in_memory(inner: &Inner, id: &[u8; 32], request: [u8; 32]) -> Option<Claim> {
    Some(match inner.entries.get(id)? {
        (Entry::Running { .. }, _) => {
            Claim::Conflict("a request with this Idempotency-Key is still being processed")
        }
        (Entry::Done { request: r, answer }, _) => replay_or_conflict(*r, answer.clone(), request),
    })
}

/// A request with the key of a request `answered` that was answered `answer`.
fn replay_or_conflict(answered: [u8; 32], answer: Stored, request: [u8; 32]) -> Claim {
    if answered == request {
        Claim::Replay(answer)
    } else {
        Claim::Conflict("this Idempotency-Key was used for another request")
    }
}

impl Idempotency {
    /// Answers kept in `store` too.
    pub fn durable(store: callplane_store::Store) -> Self {
        Idempotency {
            inner: Mutex::default(),
            store: Some(store),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer the store kept under `id` (within [`KEEP`]).
    fn kept(&self, id: &[u8; 32]) -> Option<([u8; 32], Stored)> {
        let store = self.store.as_ref()?;
        let since = chrono::Utc::now() - chrono::Duration::from_std(KEEP).ok()?;
        match store.get_idempotent(id, since) {
            Ok(Some(a)) => {
                let request = a.request;
                Some((request, Stored::from_kept(a)?))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a kept idempotent answer");
                None
            }
        }
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
        if let Some(claim) = in_memory(&inner, &id, request) {
            return (claim, id);
        }
        // Not in memory: perhaps answered before this process (or before memory let it go).
        // The store is read without the lock, so keyed requests never queue behind it.
        drop(inner);
        let kept = self.kept(&id);
        let mut inner = self.lock();
        // A claim of the same key may have come meanwhile: memory decides again.
        if let Some(claim) = in_memory(&inner, &id, request) {
            return (claim, id);
        }
        let now = Instant::now();
        let (entry, claim) = match kept {
            Some((r, answer)) => (
                Entry::Done {
                    request: r,
                    answer: answer.clone(),
                },
                replay_or_conflict(r, answer, request),
            ),
            None => (Entry::Running { request }, Claim::Run),
        };
        inner.entries.insert(id, (entry, now));
        inner.order.push_back((id, now));
        (claim, id)
    }

    /// The request claimed as `id` answered `answer` (`None`: not kept, a retry runs again).
    pub fn finish(&self, id: [u8; 32], answer: Option<Stored>) {
        self.finish_kept(id, answer, true)
    }

    /// As [`Idempotency::finish`]; `durable: false` keeps the answer in memory only (an answer
    /// carrying a secret, such as a new API key's, is never written to the database).
    pub fn finish_kept(&self, id: [u8; 32], answer: Option<Stored>, durable: bool) {
        // Memory under the lock; the database after it, so keyed requests never queue behind
        // a write.
        let (kept, prune) = {
            let mut inner = self.lock();
            let Some(answer) = answer else {
                inner.entries.remove(&id);
                return;
            };
            let Some((entry, _)) = inner.entries.get_mut(&id) else {
                return;
            };
            let Entry::Running { request } = *entry else {
                return;
            };
            let kept = (durable && self.store.is_some()).then(|| answer.to_kept(request));
            *entry = Entry::Done { request, answer };
            if kept.is_some() {
                inner.written += 1;
            }
            let prune = inner.written >= PRUNE_EVERY;
            if prune {
                inner.written = 0;
            }
            (kept, prune)
        };
        let Some(store) = &self.store else { return };
        if let Some(kept) = kept {
            if let Err(e) = store.put_idempotent(&id, &kept) {
                tracing::warn!(error = %e, "cannot keep an idempotent answer");
            }
        }
        if let (true, Ok(keep)) = (prune, chrono::Duration::from_std(KEEP)) {
            let _ = store.prune_idempotent(chrono::Utc::now() - keep);
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
            // A new API key's answer holds its secret: never written to the database.
            let durable = path != b"/v1/apikeys";
            st.idempotency.finish_kept(id, Some(stored), durable);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &'static str) -> Stored {
        Stored {
            status: StatusCode::CREATED,
            content_type: Some(HeaderValue::from_static("application/json")),
            location: Some(HeaderValue::from_static("/v1/things/1")),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn an_answer_is_replayed_by_the_next_process_but_a_secret_one_is_not() {
        let store = callplane_store::Store::open_in_memory().expect("store");
        let before = Idempotency::durable(store.clone());
        let req: [&[u8]; 2] = [b"POST", b"/v1/things"];
        let (claim, id) = before.claim(b"who", b"k-1", &req);
        assert!(matches!(claim, Claim::Run));
        before.finish(id, Some(answer("{\"id\":1}")));
        let (claim, id2) = before.claim(b"who", b"k-2", &req);
        assert!(matches!(claim, Claim::Run));
        before.finish_kept(id2, Some(answer("{\"key\":\"secret\"}")), false);

        // A restart: a new process on the same database.
        let after = Idempotency::durable(store);
        match after.claim(b"who", b"k-1", &req) {
            (Claim::Replay(s), _) => {
                assert_eq!(s.status, StatusCode::CREATED);
                assert_eq!(&s.body[..], b"{\"id\":1}");
                assert_eq!(
                    s.location.as_ref().map(|v| v.as_bytes()),
                    Some(&b"/v1/things/1"[..])
                );
            }
            _ => panic!("the answer is replayed"),
        }
        let other: [&[u8]; 2] = [b"POST", b"/v1/other"];
        assert!(matches!(
            after.claim(b"who", b"k-1", &other).0,
            Claim::Conflict(_)
        ));
        assert!(
            matches!(after.claim(b"who", b"k-2", &req).0, Claim::Run),
            "the secret answer was not written"
        );
    }
}
