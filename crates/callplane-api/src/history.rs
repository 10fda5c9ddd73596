//! Call history: `GET /v1/cdrs?from=&to=&number=&line=&limit=&cursor=`, a page of CDRs newest
//! first in the key's scope, with the cursor of the next page.

use axum::extract::{RawQuery, State};
use axum::Json;
use callplane_store::model::{format_time, parse_time};
use callplane_store::CdrQuery;
use serde_json::{json, Value};

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
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "items": items, "next": next })))
}
