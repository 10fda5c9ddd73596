//! Call history: `GET /v1/cdrs?from=&to=&number=&line=&limit=&cursor=`, a page of CDRs newest
//! first in the key's scope, with the cursor of the next page.

use axum::extract::{RawQuery, State};
use axum::Json;
use callplane_store::model::{format_time, parse_time};
use callplane_store::CdrQuery;

use crate::auth::{CallScope, Caller};
use crate::error::ApiError;
use crate::ApiState;

/// Page size when `limit` is left out, and the largest one.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

fn bad(field: &str, message: &str) -> ApiError {
    ApiError::invalid_field("query", field, message)
}

/// The cursor after a CDR: its start time and call id, hex-encoded (opaque to clients).
fn cursor_of(start: &chrono::DateTime<chrono::Utc>, call_id: &str) -> String {
    format!("{}|{call_id}", format_time(start))
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_cursor(c: &str) -> Option<(chrono::DateTime<chrono::Utc>, String)> {
    if !c.len().is_multiple_of(2) || c.len() > 1024 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (t, id) = text.split_once('|')?;
    Some((parse_time(t).ok()?, id.to_string()))
}

/// `GET /v1/cdrs` → `{"items": [CDR…], "next": cursor | null}`.
pub async fn list(
    State(st): State<ApiState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<CdrPage>, ApiError> {
    let mut q = CdrQuery {
        limit: DEFAULT_LIMIT,
        ..CdrQuery::default()
    };
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "from" | "to" => {
                let t = chrono::DateTime::parse_from_rfc3339(&v)
                    .map_err(|_| bad(&k, "an RFC 3339 time, e.g. 2026-12-04T18:00:00Z"))?
                    .with_timezone(&chrono::Utc);
                if k == "from" {
                    q.from = Some(t);
                } else {
                    q.to = Some(t);
                }
            }
            "number" => q.number = Some(v),
            "line" => q.line = Some(v),
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| bad("limit", "a whole number from 1 to 1000"))?
            }
            "cursor" if v.is_empty() => {}
            "cursor" => {
                q.after = Some(
                    parse_cursor(&v)
                        .ok_or_else(|| bad("cursor", "not a cursor this server gave out"))?,
                )
            }
            other => {
                return Err(bad(
                    other,
                    "unknown query parameter (expected from, to, number, line, limit, cursor)",
                ))
            }
        }
    }
    match caller.call_scope(&st.store)? {
        CallScope::All => {}
        CallScope::Tenants(t) => q.tenants = Some(t.into_iter().collect()),
        CallScope::Line { tenant, user } => {
            if q.line.as_ref().is_some_and(|l| *l != user) {
                return Err(
                    ApiError::forbidden("an account key sees its own line's history only")
                        .with_field("line"),
                );
            }
            q.tenants = Some(vec![tenant]);
            q.line = Some(user);
        }
    }
    let items = st.store.query_cdrs(&q)?;
    let next = (items.len() == q.limit)
        .then(|| items.last().map(|c| cursor_of(&c.start_time, &c.call_id)))
        .flatten();
    Ok(Json(CdrPage { items, next }))
}

/// A page of `GET /v1/cdrs`.
#[derive(serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CdrPage {
    /// The CDRs, newest first (by start time).
    pub items: Vec<callplane_store::Cdr>,
    /// The cursor of the next page (`?cursor=`); null on the last.
    pub next: Option<String>,
}

/// `GET /v1/recordings/{id}`: a finished recording's WAV file, in the key's scope (its call's
/// tenant, and for an `account` key its call's lines), with single-range requests (`Range:
/// bytes=…` → `206`, an unsatisfiable one `416`). Streamed from the file, never read whole.
pub async fn recording(
    State(st): State<ApiState>,
    caller: Caller,
    crate::resources::P(id): crate::resources::P<String>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::{header, StatusCode};
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let not_found = || ApiError::not_found(format!("recording \"{id}\" not found"));
    let found = {
        let store = st.store.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || store.get_recording(&id))
            .await
            .map_err(|e| ApiError::internal("recording look-up", &e))??
    };
    let Some((rec, lines)) = found else {
        return Err(not_found());
    };
    if !caller
        .call_scope(&st.store)?
        .covers(rec.tenant.as_deref(), &lines)
    {
        return Err(not_found());
    }
    let mut file = tokio::fs::File::open(&rec.path).await.map_err(|e| {
        tracing::warn!(recording = %rec.id, path = %rec.path, error = %e, "recording file unreadable");
        ApiError::new(
            StatusCode::GONE,
            crate::error::ErrorCode::Gone,
            format!("the file of recording \"{id}\" is no longer there"),
        )
    })?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal("recording file", &e))?
        .len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| byte_range(v, len));
    let (status, start, end) = match range {
        None | Some(RangeAnswer::Whole) => (StatusCode::OK, 0, len),
        Some(RangeAnswer::Part(a, b)) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Some(RangeAnswer::Unsatisfiable) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [
                    (header::CONTENT_RANGE, format!("bytes */{len}")),
                    (header::CONTENT_TYPE, "application/json".to_string()),
                ],
                ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    crate::error::ErrorCode::RangeNotSatisfiable,
                    format!("the recording has {len} bytes"),
                )
                .with_field("Range")
                .body_json()
                .to_string(),
            )
                .into_response());
        }
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::internal("recording file", &e))?;
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file.take(end - start)));
    let mut resp = axum::response::Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("audio/wav"),
    );
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    h.insert(header::CONTENT_LENGTH, (end - start).into());
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = format!("bytes {start}-{}/{len}", end - 1).parse() {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

use axum::response::IntoResponse;

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// Not a single byte range we serve (another unit, several ranges, malformed): the whole
    /// file, as RFC 9110 lets a server answer.
    Whole,
    /// Bytes `first..=last`.
    Part(u64, u64),
    Unsatisfiable,
}

fn byte_range(header: &str, len: u64) -> RangeAnswer {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeAnswer::Unsatisfiable,
            Ok(n) => Some((len.saturating_sub(n), len.saturating_sub(1))),
            Err(_) => None,
        },
        (false, true) => a.parse::<u64>().ok().map(|a| (a, len.saturating_sub(1))),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b => Some((a, b.min(len.saturating_sub(1)))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => RangeAnswer::Whole,
        Some((a, _)) if len == 0 || a >= len => RangeAnswer::Unsatisfiable,
        Some((a, b)) => RangeAnswer::Part(a, b),
    }
}

#[cfg(test)]
mod range_tests {
    use super::{byte_range, RangeAnswer::*};

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-99", 1000), Part(0, 99));
        assert_eq!(byte_range("bytes=900-", 1000), Part(900, 999));
        assert_eq!(byte_range("bytes=-100", 1000), Part(900, 999));
        assert_eq!(byte_range("bytes=-5000", 1000), Part(0, 999));
        assert_eq!(byte_range("bytes=990-2000", 1000), Part(990, 999));
        assert_eq!(byte_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(byte_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(byte_range("bytes=5-2", 1000), Whole);
        assert_eq!(byte_range("bytes=0-1,5-6", 1000), Whole);
        assert_eq!(byte_range("items=0-1", 1000), Whole);
        assert_eq!(byte_range("bytes=abc", 1000), Whole);
        assert_eq!(byte_range("bytes=0-0", 0), Unsatisfiable);
    }
}
