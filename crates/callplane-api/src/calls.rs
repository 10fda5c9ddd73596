//! Live call control: the calls in progress (`GET /v1/calls`, `GET /v1/calls/{id}`), hangup,
//! interrupt, and `POST /v1/calls/{id}/blocks` for ANNOUNCEMENT and SAY blocks played into a
//! connected bridge; the API reaches calls only
//! through [`CallControl`], so it sends commands and never runs call logic itself.

use std::future::Future;
use std::pin::Pin;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use callplane_engine::blocks::{parse_blocks, Block};
use callplane_engine::events::EventSubscriber;
use callplane_engine::hangup::HangupCause;
use callplane_engine::registry::{CallInfo, CommandRefused, PlayRefused};
use serde_json::Value;
use std::sync::Arc;

use crate::auth::{CallScope, Caller};
use crate::body::{object, JsonBody, OptionalJsonBody};
use crate::error::ApiError;
use crate::resources::P;
use crate::ApiState;

/// What the API may ask of the calls in progress. Implemented by the engine; the API's unit
/// tests use a fake (the end-to-end tests drive the real engine).
pub trait CallControl: Send + Sync + 'static {
    /// The tenant of a call in progress, `None` when no such call is running.
    fn call_tenant(&self, call_id: &str) -> Option<String>;
    /// Stops the call's running block; false when the call is gone.
    fn interrupt(&self, call_id: &str) -> bool;
    /// Plays ANNOUNCEMENT / SAY blocks into the call's connected bridge, mixed; `None` when
    /// the call is gone.
    fn play_into_bridge(&self, call_id: &str, blocks: Vec<Block>) -> PlayFuture;
    /// The call as it is now; `None` when it is gone.
    fn call_info(&self, call_id: &str) -> BoxFuture<Option<CallInfo>>;
    /// The calls in progress whose `(tenant, number)` `keep` accepts.
    fn list_calls(&self, keep: CallFilter) -> BoxFuture<Vec<CallInfo>>;
    /// Ends the call with `cause`; `None` when it is gone.
    fn hangup(&self, call_id: &str, cause: HangupCause) -> HangupFuture;
    /// Subscribes to every call event (the events WebSocket's hub).
    fn subscribe(&self, subscriber: Arc<dyn EventSubscriber>);
}

/// Which calls `list_calls` keeps, by `(tenant, number)`.
pub type CallFilter = Box<dyn Fn(&str, &str) -> bool + Send>;

/// The answer of [`CallControl::hangup`].
pub type HangupFuture = BoxFuture<Option<Result<CallInfo, CommandRefused>>>;

/// A boxed future answering a [`CallControl`] question.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The answer of [`CallControl::play_into_bridge`].
pub type PlayFuture = BoxFuture<Option<Result<(), PlayRefused>>>;

impl CallControl for callplane_engine::Engine {
    fn call_tenant(&self, call_id: &str) -> Option<String> {
        callplane_engine::Engine::call_tenant(self, call_id)
    }

    fn interrupt(&self, call_id: &str) -> bool {
        callplane_engine::Engine::interrupt(self, call_id)
    }

    fn play_into_bridge(&self, call_id: &str, blocks: Vec<Block>) -> PlayFuture {
        let engine = self.clone();
        let call_id = call_id.to_string();
        Box::pin(async move { engine.play_into_bridge(&call_id, blocks).await })
    }

    fn call_info(&self, call_id: &str) -> BoxFuture<Option<CallInfo>> {
        let engine = self.clone();
        let call_id = call_id.to_string();
        Box::pin(async move { engine.call_info(&call_id).await })
    }

    fn list_calls(&self, keep: CallFilter) -> BoxFuture<Vec<CallInfo>> {
        let engine = self.clone();
        Box::pin(async move { engine.list_calls(keep).await })
    }

    fn hangup(&self, call_id: &str, cause: HangupCause) -> HangupFuture {
        let engine = self.clone();
        let call_id = call_id.to_string();
        Box::pin(async move { callplane_engine::Engine::hangup(&engine, &call_id, cause).await })
    }

    fn subscribe(&self, subscriber: Arc<dyn EventSubscriber>) {
        callplane_engine::Engine::subscribe(self, subscriber)
    }
}

/// The call `id`, if it runs and the key's scope covers it; else `404` whether or not it runs.
/// Returns the call's tenant; for an `account` key the call's lines are checked too.
async fn scoped_call(st: &ApiState, caller: &Caller, id: &str) -> Result<String, ApiError> {
    let not_found = || ApiError::not_found(format!("call \"{id}\" not found"));
    let tenant = st.calls.call_tenant(id).ok_or_else(not_found)?;
    let scope = caller.call_scope(&st.store)?;
    if !scope.may_cover_tenant(&tenant) {
        return Err(not_found());
    }
    if let CallScope::Line { .. } = scope {
        let info = st.calls.call_info(id).await.ok_or_else(not_found)?;
        if !scope.covers(Some(&info.tenant), &info.lines) {
            return Err(not_found());
        }
    }
    Ok(tenant)
}

fn call_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("call \"{id}\" not found"))
}

/// `GET /v1/calls?line=&number=` — the calls in progress in the key's scope, oldest first;
/// `line` keeps those involving that SIP user, `number` those that came in on that number.
pub async fn list(
    State(st): State<ApiState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<CallInfo>>, ApiError> {
    let mut line = None;
    let mut number = None;
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "line" => line = Some(v.into_owned()),
            "number" => number = Some(v.into_owned()),
            other => {
                return Err(ApiError::invalid_field(
                    "query",
                    other,
                    "unknown query parameter (expected line, number)",
                ))
            }
        }
    }
    list_calls(&st, &caller, line, number).await.map(Json)
}

/// The calls in progress in the key's scope, filtered by line and number.
pub(crate) async fn list_calls(
    st: &ApiState,
    caller: &Caller,
    line: Option<String>,
    number: Option<String>,
) -> Result<Vec<CallInfo>, ApiError> {
    let scope = caller.call_scope(&st.store)?;
    let pre = scope.clone();
    let calls = st
        .calls
        .list_calls(Box::new(move |tenant, n| {
            pre.may_cover_tenant(tenant) && number.as_deref().is_none_or(|w| w == n)
        }))
        .await;
    Ok(calls
        .into_iter()
        .filter(|c| scope.covers(Some(&c.tenant), &c.lines))
        .filter(|c| line.as_ref().is_none_or(|l| c.lines.contains(l)))
        .collect())
}

/// `GET /v1/calls/{id}` — one call in progress: its legs, parties, state, times, variables.
pub async fn get_one(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
) -> Result<Json<CallInfo>, ApiError> {
    get_call(&st, &caller, &id).await.map(Json)
}

pub(crate) async fn get_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<CallInfo, ApiError> {
    scoped_call(st, caller, id).await?;
    st.calls
        .call_info(id)
        .await
        .ok_or_else(|| call_not_found(id))
}

/// `POST /v1/calls/{id}/hangup` `{ "hangupCause": "USER_BUSY" }` (optional; default
/// `NORMAL_CLEARING`, any body may be left out) — ends the call: a BYE once answered, the
/// cause's final response before. Answers the call as it is then (`state: ending`); a call
/// already ending is `409`.
pub async fn hangup(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
    body: OptionalJsonBody,
) -> Result<Json<CallInfo>, ApiError> {
    let body = match body.0 {
        Some(v) => object(v)?,
        None => Default::default(),
    };
    hangup_call(&st, &caller, &id, body).await.map(Json)
}

/// Ends a call in the key's scope; `body` may name `hangupCause`.
pub(crate) async fn hangup_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    mut body: serde_json::Map<String, Value>,
) -> Result<CallInfo, ApiError> {
    let mut cause = HangupCause::NormalClearing;
    if let Some(k) = body.keys().find(|k| k.as_str() != "hangupCause") {
        return Err(ApiError::invalid_json(
            format!("unknown field `{k}`, expected `hangupCause`"),
            Some(k.clone()),
        ));
    }
    match body.remove("hangupCause") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            cause = s.parse().map_err(|_| {
                ApiError::invalid_field(
                    "hangup",
                    "hangupCause",
                    format!(
                        "unknown hangup cause \"{s}\" (a Q.850 name such as NORMAL_CLEARING, \
                         USER_BUSY, CALL_REJECTED)"
                    ),
                )
            })?
        }
        Some(_) => {
            return Err(ApiError::invalid_json(
                "`hangupCause` must be a string",
                Some("hangupCause".into()),
            ))
        }
    }
    scoped_call(st, caller, id).await?;
    match st.calls.hangup(id, cause).await {
        None => Err(call_not_found(id)),
        Some(Err(why)) => Err(ApiError::conflict(why.message()).with_field("state")),
        Some(Ok(info)) => Ok(info),
    }
}

pub async fn interrupt(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    interrupt_call(&st, &caller, &id)
        .await
        .map(|v| (StatusCode::ACCEPTED, Json(v)))
}

pub(crate) async fn interrupt_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<Value, ApiError> {
    scoped_call(st, caller, id).await?;
    if !st.calls.interrupt(id) {
        // Ended between the two questions.
        return Err(call_not_found(id));
    }
    Ok(serde_json::json!({ "callId": id, "interrupted": true }))
}

/// `POST /v1/calls/{id}/blocks` — so far the part of "run a block list now" that plays into a
/// connected call: ANNOUNCEMENT and SAY blocks are mixed into the call's bridge and heard by
/// both parties while they go on talking. Other blocks, or a call with no connected callee,
/// are `409` naming why (the rest of the custom-IVR path comes with the CTI API).
pub async fn run_blocks(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    scoped_call(&st, &caller, &id).await?;
    let mut body = object(body)?;
    if let Some(k) = body.keys().find(|k| k.as_str() != "blocks") {
        return Err(ApiError::invalid_json(
            format!("unknown field `{k}`, expected `blocks`"),
            Some(k.clone()),
        ));
    }
    let list = match body.remove("blocks") {
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(ApiError::invalid_json(
                "`blocks` must be an array of blocks",
                Some("blocks".into()),
            ))
        }
        None => {
            return Err(ApiError::invalid_json(
                "missing field `blocks`",
                Some("blocks".into()),
            ))
        }
    };
    if list.is_empty() {
        return Err(ApiError::invalid_field(
            "blocks",
            "blocks",
            "must hold at least one block",
        ));
    }
    let errors = crate::validation::block_errors("blocks", &list);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let blocks = parse_blocks(&Value::Array(list))
        .map_err(|_| ApiError::invalid_field("blocks", "blocks", "invalid blocks"))?;
    if let Some((i, _)) = blocks
        .iter()
        .enumerate()
        .find(|(_, b)| !matches!(b, Block::Announcement(_) | Block::Say(_)))
    {
        return Err(ApiError::conflict(
            "only ANNOUNCEMENT and SAY blocks can be run on a call so far: they are mixed into \
             its connected bridge",
        )
        .with_field(format!("blocks[{i}].blockType")));
    }
    let n = blocks.len();
    match st.calls.play_into_bridge(&id, blocks).await {
        None => Err(call_not_found(&id)),
        Some(Err(PlayRefused::NotConnected)) => Err(ApiError::conflict(
            "the call has no connected callee to play into (it is in its plan, ringing, or \
             its callee hung up)",
        )),
        Some(Ok(())) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "callId": id, "blocks": n, "mixedInto": "bridge" })),
        )),
    }
}
