//! Live call control. For now `POST /v1/calls/{id}/interrupt`; the API reaches calls only
//! through [`CallControl`], so it sends commands and never runs call logic itself.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use callplane_store::ApiRealm;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::resources::P;
use crate::ApiState;

/// What the API may ask of the calls in progress. Implemented by the engine; tests use a fake.
pub trait CallControl: Send + Sync + 'static {
    /// The tenant of a call in progress, `None` when no such call is running.
    fn call_tenant(&self, call_id: &str) -> Option<String>;
    /// Stops the call's running block; false when the call is gone.
    fn interrupt(&self, call_id: &str) -> bool;
}

impl CallControl for callplane_engine::Engine {
    fn call_tenant(&self, call_id: &str) -> Option<String> {
        callplane_engine::Engine::call_tenant(self, call_id)
    }

    fn interrupt(&self, call_id: &str) -> bool {
        callplane_engine::Engine::interrupt(self, call_id)
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
