//! TENIOS-compatible side APIs, for applications written against TENIOS: `POST /makecall/init`,
//! `POST /makecall/status` and `POST /interrupt-ecc-block`, with TENIOS's bodies (`access_key`
//! in the body, snake_case fields) and answers (`{"id": 66195}`, `{"success": true}`, errors
//! `400 {"error_code", "error_message", "fields"}`). The `access_key` is an API key of ours.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use callplane_engine::blocks::{parse_blocks, DestinationType};
use callplane_engine::call::{BridgeIdentity, Originate};
use callplane_engine::events::{CallEvent, EventKind, EventSubscriber};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::ApiState;

/// How many makecall requests are followed in memory (oldest forgotten first); an older one's
/// state comes from its call's CDR.
const TRACKED: usize = 10_000;

/// A makecall request's state, as `/makecall/status` reports it (the states of TENIOS's
/// callback API that apply to one outbound call running a plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(rename = "MakecallRequestState")]
enum MakecallStatus {
    /// Accepted; the destination is not being called yet.
    Requested,
    /// The destination is being called.
    CallingA,
    /// The destination did not answer, was busy or unreachable.
    CallAFailed,
    /// The destination answered; the number's routing plan runs.
    Connected,
    /// The call ended after it was answered.
    Disconnected,
}

/// `POST /makecall/init`'s answer.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[schemars(rename = "MakecallAccepted")]
pub struct MakecallAccepted {
    /// The request's id, for `/makecall/status` (and the call's `callback_id` variable).
    #[schemars(range(min = 1))]
    id: u64,
}

/// `POST /makecall/status`'s answer.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[schemars(rename = "MakecallState")]
pub struct MakecallState {
    id: u64,
    status: MakecallStatus,
}

/// `POST /interrupt-ecc-block`'s answer.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[schemars(rename = "EccBlockInterrupted")]
pub struct EccBlockInterrupted {
    #[schemars(extend("const" = true))]
    success: bool,
}

struct Tracked {
    call_id: String,
    tenant: String,
    status: MakecallStatus,
}

#[derive(Default)]
struct TrackerState {
    by_id: BTreeMap<u64, Tracked>,
    by_call: HashMap<String, u64>,
}

/// Numbers makecall requests and follows their calls' events (a bus subscriber).
#[derive(Default)]
pub struct MakecallTracker(Mutex<TrackerState>);

impl MakecallTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows request `id` (numbered by the store) for the call `call_id`.
    fn track(&self, id: u64, call_id: &str, tenant: &str) {
        let mut s = self.lock();
        s.by_id.insert(
            id,
            Tracked {
                call_id: call_id.to_string(),
                tenant: tenant.to_string(),
                status: MakecallStatus::Requested,
            },
        );
        s.by_call.insert(call_id.to_string(), id);
        while s.by_id.len() > TRACKED {
            if let Some((_, old)) = s.by_id.pop_first() {
                s.by_call.remove(&old.call_id);
            }
        }
    }

    fn status(&self, id: u64) -> Option<(String, MakecallStatus)> {
        self.lock()
            .by_id
            .get(&id)
            .map(|t| (t.tenant.clone(), t.status))
    }
}

impl EventSubscriber for MakecallTracker {
    fn on_event(&self, event: &CallEvent) {
        let mut s = self.lock();
        let Some(id) = s.by_call.get(&event.call_id).copied() else {
            return;
        };
        let Some(t) = s.by_id.get_mut(&id) else {
            return;
        };
        t.status = match (&event.kind, t.status) {
            (EventKind::Created { .. }, _) => MakecallStatus::CallingA,
            (EventKind::Answered, _) => MakecallStatus::Connected,
            (EventKind::Hangup { .. }, MakecallStatus::Connected) => MakecallStatus::Disconnected,
            (EventKind::Hangup { .. }, _) => MakecallStatus::CallAFailed,
            (_, status) => status,
        };
        if matches!(event.kind, EventKind::Finished { .. }) {
            let call = t.call_id.clone();
            s.by_call.remove(&call);
        }
    }
}

/// A TENIOS-style error: `400 {"error_code", "error_message", "fields"}` (with
/// `"success": false` on the routes that answer `success`).
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct TeniosError {
    #[serde(rename = "error_code")]
    code: &'static str,
    #[serde(rename = "error_message")]
    message: String,
    /// The request fields at fault.
    fields: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("const" = false))]
    success: Option<bool>,
}

impl TeniosError {
    fn new(code: &'static str, message: impl Into<String>, fields: &[&'static str]) -> Self {
        TeniosError {
            code,
            message: message.into(),
            fields: fields.to_vec(),
            success: None,
        }
    }

    fn bad_credentials() -> Self {
        TeniosError::new("BAD_CREDENTIALS", "Bad credentials", &[])
    }

    fn with_success(mut self) -> Self {
        self.success = Some(false);
        self
    }
}

impl IntoResponse for TeniosError {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(self)).into_response()
    }
}

/// One field of a TENIOS body. Clients send ids and numbers as strings or as JSON numbers
/// (numbers are taken as written); an empty string, or any other JSON value, reads as left out,
/// and the handler answers for the field with TENIOS's error code for it.
#[derive(Debug, Clone, Default)]
pub struct Field(Option<String>);

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through `Option`, so that a field left out reads as `None` too (serde asks a
        // missing field's type for an option).
        Ok(Field(match Option::<Value>::deserialize(d)? {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }))
    }
}

impl schemars::JsonSchema for Field {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TeniosField".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["string", "number"],
            "minLength": 1,
        })
    }
}

impl Field {
    fn get(&self) -> Option<String> {
        self.0.clone()
    }
}

/// `POST /makecall/init`, as TENIOS names the fields (others are ignored). Sent as JSON or as
/// a form.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "MakecallInit")]
pub struct MakecallInitRequest {
    /// An API key of ours (a customer's, or above).
    access_key: Field,
    /// The number called first (optional '+', digits), through the account's default trunk.
    destination_number: Field,
    /// One of the account's numbers: its routing plan runs once the destination answers.
    tenios_number: Field,
    /// The caller ID the destination sees; left out, `tenios_number`.
    #[serde(default)]
    caller_id: Field,
    /// Where the call's state changes are posted; left out, the number's own.
    #[serde(default)]
    callstate_info_url: Field,
}

/// `POST /makecall/status`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "MakecallStatus")]
pub struct MakecallStatusRequest {
    access_key: Field,
    /// The `id` `/makecall/init` answered.
    id: Field,
}

/// `POST /interrupt-ecc-block`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "InterruptEccBlock")]
pub struct InterruptEccBlockRequest {
    access_key: Field,
    /// The call whose running Call Control block is stopped.
    call_uuid: Field,
}

/// The answers' schemas, generated from the types the handlers answer with.
pub fn add_answer_schemas(generator: &mut schemars::SchemaGenerator) {
    generator.subschema_for::<MakecallAccepted>();
    generator.subschema_for::<MakecallState>();
    generator.subschema_for::<EccBlockInterrupted>();
    generator.subschema_for::<TeniosError>();
}

/// The request bodies' schemas, generated from the types the handlers read them into.
pub fn add_schemas(generator: &mut schemars::SchemaGenerator) {
    generator.subschema_for::<MakecallInitRequest>();
    generator.subschema_for::<MakecallStatusRequest>();
    generator.subschema_for::<InterruptEccBlockRequest>();
}

/// The request: a JSON object (what TENIOS's clients send) or a form, read into `T` (whose
/// fields take any value, so this fails only for a body that is neither).
fn request<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, TeniosError> {
    let m = fields(headers, body)?;
    serde_json::from_value(Value::Object(m)).map_err(|e| {
        TeniosError::new(
            "INVALID_REQUEST",
            format!("the body cannot be read: {e}"),
            &[],
        )
    })
}

/// The request's fields: a JSON object (what TENIOS's clients send) or a form.
fn fields(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, TeniosError> {
    let form =
        crate::body::media_type(headers).is_some_and(|m| m == "application/x-www-form-urlencoded");
    if form {
        return Ok(form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TeniosError::new(
            "INVALID_REQUEST",
            "the body must be a JSON object",
            &[],
        )),
    }
}

fn caller(st: &ApiState, access_key: &Field) -> Result<Caller, TeniosError> {
    let key = access_key.get().ok_or_else(TeniosError::bad_credentials)?;
    match Caller::admitted(st, Some(&key)) {
        Ok(c) => Ok(c),
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
            Err(TeniosError::new("TOO_MANY_REQUESTS", e.message, &[]))
        }
        Err(_) => Err(TeniosError::bad_credentials()),
    }
}

/// `POST /makecall/init` — calls `destination_number`; when it answers, runs the routing plan of
/// `tenios_number` (one of the key's numbers) with `callback_id` and `callback_bleg_uuid` among
/// its variables. Answers `{"id": <request id>}`.
pub async fn makecall_init(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<MakecallAccepted>, TeniosError> {
    let req: MakecallInitRequest = request(&headers, &body)?;
    let caller = caller(&st, &req.access_key)?;
    let destination = req
        .destination_number
        .get()
        .filter(|d| callplane_store::model::is_valid_number(d))
        .ok_or_else(|| {
            TeniosError::new(
                "INVALID_DESTINATION_NUMBER",
                "destination_number must be a phone number (optional '+', digits)",
                &["destination_number"],
            )
        })?;
    let invalid_number = || {
        TeniosError::new(
            "INVALID_TENIOS_NUMBER",
            "tenios_number must be a number of your account",
            &["tenios_number"],
        )
    };
    let tenios_number = req.tenios_number.get().ok_or_else(invalid_number)?;
    let (number, tenant) = st
        .store
        .find_number(&tenios_number)
        .ok()
        .flatten()
        .ok_or_else(invalid_number)?;
    let scope = caller
        .call_scope(&st.store)
        .map_err(|_| TeniosError::bad_credentials())?;
    if !scope.covers(Some(&tenant.name), &[]) {
        return Err(invalid_number());
    }
    let caller_id = match req.caller_id.get() {
        Some(c) => {
            if !crate::auth::valid_caller_id(&c) {
                return Err(TeniosError::new(
                    "INVALID_CALLER_ID",
                    "caller_id must be a phone number",
                    &["caller_id"],
                ));
            }
            c
        }
        None => tenios_number.clone(),
    };
    let callstate_url = req.callstate_info_url.get();
    if callstate_url
        .as_deref()
        .is_some_and(|u| !callplane_store::model::is_http_url(u))
    {
        return Err(TeniosError::new(
            "INVALID_CALLSTATE_INFO_URL",
            "callstate_info_url must be an http(s) URL",
            &["callstate_info_url"],
        ));
    }
    if tenant.default_trunk.is_none() {
        return Err(TeniosError::new(
            "NO_TRUNK",
            "the account has no default trunk to call destination_number through",
            &["destination_number"],
        ));
    }
    let plan = st
        .store
        .get_routing_plan(&tenant.name, &number.routing_plan)
        .ok()
        .flatten()
        .and_then(|p| parse_blocks(&Value::Array(p.blocks)).ok())
        .ok_or_else(|| {
            TeniosError::new(
                "INVALID_TENIOS_NUMBER",
                "tenios_number has no valid routing plan",
                &["tenios_number"],
            )
        })?;
    let call_uuid = uuid::Uuid::new_v4();
    // Numbered by the store (ids go on across restarts) and tracked before the call starts,
    // so that none of its events is missed.
    let request_id = st
        .store
        .insert_makecall(&call_uuid.to_string(), &tenant.name)
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot store a makecall request");
            TeniosError::new("INTERNAL_ERROR", "the request could not be stored", &[])
        })?;
    st.makecalls
        .track(request_id, &call_uuid.to_string(), &tenant.name);
    st.calls.originate(Originate {
        destination_type: DestinationType::ExternalNumber,
        destination: destination.clone(),
        caller_id,
        from_display: None,
        headers: Vec::new(),
        ring_timeout: std::time::Duration::from_secs(crate::calls::DEFAULT_RING_SECONDS),
        blocks: plan,
        callstate_url: callstate_url.or(number.callstate_info_url.clone()),
        number: Some(number.number.clone()),
        lines: Vec::new(),
        variables: vec![
            ("callback_id".into(), request_id.to_string()),
            ("callback_bleg_uuid".into(), call_uuid.to_string()),
        ],
        bridge_as: BridgeIdentity::default(),
        call_uuid: Some(call_uuid),
        tenant: tenant.clone(),
    });
    Ok(Json(MakecallAccepted { id: request_id }))
}

/// `POST /makecall/status` `{access_key, id}` → `{"id", "status"}`.
pub async fn makecall_status(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<MakecallState>, TeniosError> {
    let req: MakecallStatusRequest = request(&headers, &body)?;
    let caller = caller(&st, &req.access_key)?;
    let unknown = || TeniosError::new("INVALID_ID", "no makecall request with this id", &["id"]);
    let id: u64 = req
        .id
        .get()
        .and_then(|s| s.parse().ok())
        .ok_or_else(unknown)?;
    // A request followed in memory, else one of before a restart (or long ago): its call's
    // CDR says how it ended.
    let (tenant, status) = match st.makecalls.status(id) {
        Some(s) => s,
        None => {
            let (call_id, tenant) = st
                .store
                .get_makecall(id)
                .ok()
                .flatten()
                .ok_or_else(unknown)?;
            let status = match st.store.get_cdr(&call_id).ok().flatten() {
                Some(cdr) if cdr.answer_time.is_some() => MakecallStatus::Disconnected,
                Some(_) => MakecallStatus::CallAFailed,
                // Never started (the server stopped first): it will not be.
                None => MakecallStatus::CallAFailed,
            };
            (tenant, status)
        }
    };
    let scope = caller
        .call_scope(&st.store)
        .map_err(|_| TeniosError::bad_credentials())?;
    if !scope.covers(Some(&tenant), &[]) {
        return Err(unknown());
    }
    Ok(Json(MakecallState { id, status }))
}

/// `POST /interrupt-ecc-block` `{access_key, call_uuid}` — stops the call's running Call Control
/// block, so its next request goes out at once → `{"success": true}`.
pub async fn interrupt_ecc_block(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<EccBlockInterrupted>, TeniosError> {
    let req: InterruptEccBlockRequest =
        request(&headers, &body).map_err(TeniosError::with_success)?;
    let caller = caller(&st, &req.access_key).map_err(TeniosError::with_success)?;
    let call = req.call_uuid.get().ok_or_else(|| {
        TeniosError::new("INVALID_CALL_UUID", "call_uuid is required", &["call_uuid"])
            .with_success()
    })?;
    match crate::calls::interrupt_call(&st, &caller, &call).await {
        Ok(_) => Ok(Json(EccBlockInterrupted { success: true })),
        Err(_) => Err(TeniosError::new(
            "CALL_NOT_FOUND",
            "no call in progress with this call_uuid",
            &["call_uuid"],
        )
        .with_success()),
    }
}
