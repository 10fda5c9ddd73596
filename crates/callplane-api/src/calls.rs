//! Live call control. For now `POST /v1/calls/{id}/interrupt`, and `POST /v1/calls/{id}/blocks`
//! for ANNOUNCEMENT and SAY blocks played into a connected bridge; the API reaches calls only
//! through [`CallControl`], so it sends commands and never runs call logic itself.

use std::future::Future;
use std::pin::Pin;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use callplane_engine::blocks::{parse_blocks, Block};
use callplane_engine::registry::PlayRefused;
use callplane_store::ApiRealm;
use serde_json::Value;

use crate::auth::Caller;
use crate::body::{object, JsonBody};
use crate::error::ApiError;
use crate::resources::P;
use crate::ApiState;

/// What the API may ask of the calls in progress. Implemented by the engine; tests use a fake.
pub trait CallControl: Send + Sync + 'static {
    /// The tenant of a call in progress, `None` when no such call is running.
    fn call_tenant(&self, call_id: &str) -> Option<String>;
    /// Stops the call's running block; false when the call is gone.
    fn interrupt(&self, call_id: &str) -> bool;
    /// Plays ANNOUNCEMENT / SAY blocks into the call's connected bridge, mixed; `None` when
    /// the call is gone.
    fn play_into_bridge(&self, call_id: &str, blocks: Vec<Block>) -> PlayFuture;
}

/// The answer of [`CallControl::play_into_bridge`].
pub type PlayFuture = Pin<Box<dyn Future<Output = Option<Result<(), PlayRefused>>> + Send>>;

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
}

pub async fn interrupt(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    // Calls on one line for `account` keys come with the calls API; until then, not allowed.
    caller.require(ApiRealm::Customer, "control calls")?;
    let not_found = || ApiError::not_found(format!("call \"{id}\" not found"));
    let tenant = st.calls.call_tenant(&id).ok_or_else(not_found)?;
    if !caller.covers_name(&st.store, &tenant)? {
        return Err(not_found());
    }
    if !st.calls.interrupt(&id) {
        // Ended between the two questions.
        return Err(not_found());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "callId": id, "interrupted": true })),
    ))
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
    caller.require(ApiRealm::Customer, "control calls")?;
    let not_found = || ApiError::not_found(format!("call \"{id}\" not found"));
    let tenant = st.calls.call_tenant(&id).ok_or_else(not_found)?;
    if !caller.covers_name(&st.store, &tenant)? {
        return Err(not_found());
    }
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
        None => Err(not_found()),
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
