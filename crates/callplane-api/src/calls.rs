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
use callplane_engine::call::Originate;
use callplane_engine::events::EventSubscriber;
use callplane_engine::hangup::HangupCause;
use callplane_engine::registry::{CallInfo, CommandRefused, ControlCommand, PlayRefused};
use serde_json::Value;
use std::sync::Arc;

use crate::auth::{CallScope, Caller};
use crate::body::{decode, object, JsonBody, OptionalJsonBody};
use crate::error::ApiError;
use crate::requests::{
    BlocksRequest, CallbackRequest, DtmfRequest, HangupRequest, OriginateRequest, PartyRequest,
    RecordRequest, RedirectRequest, SuperviseRequest, TransferRequest,
};
use crate::resources::P;
use crate::ApiState;
use callplane_store::ApiRealm;

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
    /// Places a call; answers it as it starts.
    fn originate(&self, req: Originate) -> CallInfo;
    /// Sends keypad digits to one leg (by index); `None` when the call is gone.
    fn send_dtmf(&self, call_id: &str, leg: u32, digits: String) -> HangupFuture;
    /// Whether the SIP user has a registered device now.
    fn is_registered(&self, user: &str) -> bool;
    /// Holds, mutes, records… (see [`ControlCommand`]); `None` when the call is gone.
    fn control(&self, call_id: &str, cmd: ControlCommand) -> HangupFuture;
    /// A call that ended within the last few minutes.
    fn ended_call(&self, call_id: &str) -> Option<callplane_engine::registry::EndedCall>;
    /// Attended transfer of `call_id` (from leg `from`) to the party of call `consult`;
    /// `None` when `call_id` is gone.
    fn attended_transfer(&self, call_id: &str, from: Option<u32>, consult: &str) -> HangupFuture;
    /// Supervision of `call_id` in `mode` by leg `leg` of call `leg_call`, which moves in;
    /// `None` when `call_id` is gone.
    fn supervise_with_leg(
        &self,
        call_id: &str,
        mode: callplane_engine::registry::SuperviseMode,
        leg_call: &str,
        leg: u32,
    ) -> HangupFuture;
    /// The live conferences whose tenant `keep` accepts.
    fn list_conferences(
        &self,
        keep: Box<dyn Fn(&str) -> bool + Send>,
    ) -> Vec<callplane_engine::conference::ConferenceInfo>;
    /// One live conference.
    fn conference(
        &self,
        tenant: &str,
        name: &str,
    ) -> Option<callplane_engine::conference::ConferenceInfo>;
    /// The call and leg index of a conference's present participant.
    fn locate_participant(&self, tenant: &str, name: &str, leg_id: &str) -> Option<(String, u32)>;
    /// An application (`by`, through events session `session` if any) claims an offered
    /// call; `None` when it is gone.
    fn claim(&self, call_id: &str, by: String, session: Option<String>) -> HangupFuture;
    /// The events session that claimed `call_id` is gone: the call goes back to its plan.
    fn release_claim(&self, call_id: &str, session: String);
    /// Runs blocks on a call now; `None` when it is gone.
    fn run_blocks(&self, call_id: &str, blocks: Vec<Block>) -> HangupFuture;
    /// Calls to `number` of `tenant` are offered to an application until the returned
    /// registration is dropped.
    fn control_number(&self, tenant: &str, number: &str) -> Box<dyn std::any::Any + Send + Sync>;
}

/// Which calls `list_calls` keeps, by `(tenant, number)`.
pub type CallFilter = Box<dyn Fn(&str, &str) -> bool + Send>;

/// The answer of [`CallControl::hangup`] and the other commands that answer with the call.
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

    fn originate(&self, req: Originate) -> CallInfo {
        callplane_engine::Engine::originate(self, req)
    }

    fn send_dtmf(&self, call_id: &str, leg: u32, digits: String) -> HangupFuture {
        let engine = self.clone();
        let call_id = call_id.to_string();
        Box::pin(async move { engine.send_dtmf(&call_id, leg, digits).await })
    }

    fn is_registered(&self, user: &str) -> bool {
        callplane_engine::Engine::is_registered(self, user)
    }

    fn control(&self, call_id: &str, cmd: ControlCommand) -> HangupFuture {
        let engine = self.clone();
        let call_id = call_id.to_string();
        Box::pin(async move { engine.control(&call_id, cmd).await })
    }

    fn ended_call(&self, call_id: &str) -> Option<callplane_engine::registry::EndedCall> {
        callplane_engine::Engine::ended_call(self, call_id)
    }

    fn list_conferences(
        &self,
        keep: Box<dyn Fn(&str) -> bool + Send>,
    ) -> Vec<callplane_engine::conference::ConferenceInfo> {
        self.conferences().list(keep)
    }

    fn claim(&self, call_id: &str, by: String, session: Option<String>) -> HangupFuture {
        let engine = self.clone();
        let call_id = call_id.to_string();
        Box::pin(
            async move { callplane_engine::Engine::claim(&engine, &call_id, by, session).await },
        )
    }

    fn release_claim(&self, call_id: &str, session: String) {
        callplane_engine::Engine::release_claim(self, call_id, session);
    }

    fn run_blocks(&self, call_id: &str, blocks: Vec<Block>) -> HangupFuture {
        let engine = self.clone();
        let call_id = call_id.to_string();
        Box::pin(
            async move { callplane_engine::Engine::run_blocks(&engine, &call_id, blocks).await },
        )
    }

    fn control_number(&self, tenant: &str, number: &str) -> Box<dyn std::any::Any + Send + Sync> {
        Box::new(callplane_engine::Engine::control_number(
            self, tenant, number,
        ))
    }

    fn conference(
        &self,
        tenant: &str,
        name: &str,
    ) -> Option<callplane_engine::conference::ConferenceInfo> {
        self.conferences().get(tenant, name)
    }

    fn locate_participant(&self, tenant: &str, name: &str, leg_id: &str) -> Option<(String, u32)> {
        self.conferences().locate(tenant, name, leg_id)
    }

    fn attended_transfer(&self, call_id: &str, from: Option<u32>, consult: &str) -> HangupFuture {
        let engine = self.clone();
        let (call_id, consult) = (call_id.to_string(), consult.to_string());
        Box::pin(async move { engine.attended_transfer(&call_id, from, &consult).await })
    }

    fn supervise_with_leg(
        &self,
        call_id: &str,
        mode: callplane_engine::registry::SuperviseMode,
        leg_call: &str,
        leg: u32,
    ) -> HangupFuture {
        let engine = self.clone();
        let (call_id, leg_call) = (call_id.to_string(), leg_call.to_string());
        Box::pin(async move {
            engine
                .supervise_with_leg(&call_id, mode, &leg_call, leg)
                .await
        })
    }
}

/// The call `id` a command is for, if it runs and the key's scope covers it; else `404`
/// whether or not it runs — but `409` for a call in scope that ended a short while ago (the
/// command came too late). For an `account` key the call's lines decide, so its snapshot is
/// taken: it is returned.
async fn scoped_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<Option<CallInfo>, ApiError> {
    match scoped_running_call(st, caller, id).await {
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            let ended = st.calls.ended_call(id);
            match ended {
                Some(c)
                    if caller
                        .call_scope(&st.store)?
                        .covers(Some(&c.tenant), &c.lines) =>
                {
                    Err(ApiError::conflict(format!("the call \"{id}\" has ended"))
                        .with_field("state"))
                }
                _ => Err(e),
            }
        }
        other => other,
    }
}

/// The call a command is for, as it is now ([`scoped_call`]'s refusals), read once.
async fn scoped_call_info(st: &ApiState, caller: &Caller, id: &str) -> Result<CallInfo, ApiError> {
    match scoped_call(st, caller, id).await? {
        Some(info) => Ok(info),
        None => st
            .calls
            .call_info(id)
            .await
            .ok_or_else(|| call_not_found(id)),
    }
}

/// The call `id`, if it runs and the key's scope covers it; else `404`.
async fn scoped_running_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<Option<CallInfo>, ApiError> {
    let tenant = st.calls.call_tenant(id).ok_or_else(|| call_not_found(id))?;
    let scope = caller.call_scope(&st.store)?;
    if !scope.may_cover_tenant(&tenant) {
        return Err(call_not_found(id));
    }
    if let CallScope::Line { .. } = scope {
        let info = st
            .calls
            .call_info(id)
            .await
            .ok_or_else(|| call_not_found(id))?;
        if !scope.covers(Some(&info.tenant), &info.lines) {
            return Err(call_not_found(id));
        }
        return Ok(Some(info));
    }
    Ok(None)
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
    if let Some(info) = scoped_running_call(st, caller, id).await? {
        return Ok(info);
    }
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
    body: serde_json::Map<String, Value>,
) -> Result<CallInfo, ApiError> {
    let req: HangupRequest = decode(Value::Object(body))?;
    let mut cause = HangupCause::NormalClearing;
    if let Some(s) = req.hangup_cause {
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
    scoped_call(st, caller, id).await?;
    match st.calls.hangup(id, cause).await {
        None => Err(call_not_found(id)),
        Some(Err(why)) => Err(ApiError::conflict(why.message()).with_field("state")),
        Some(Ok(info)) => Ok(info),
    }
}

/// `POST /v1/calls/{id}/dtmf` `{"digits": "12#", "leg": "<leg id>"}` — keypad digits to one
/// leg (default the call's first leg: the caller, or the party a placed call reached), RFC
/// 4733 where it negotiated telephone-event, else in band.
pub async fn dtmf(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<CallInfo>, ApiError> {
    send_dtmf(&st, &caller, &id, object(body)?).await.map(Json)
}

pub(crate) async fn send_dtmf(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    body: serde_json::Map<String, Value>,
) -> Result<CallInfo, ApiError> {
    let DtmfRequest { digits, leg } = decode(Value::Object(body))?;
    if !(1..=64).contains(&digits.len())
        || !digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
    {
        return Err(ApiError::invalid_field(
            "dtmf",
            "digits",
            "1 to 64 of 0-9 * # A B C D",
        ));
    }
    let leg = leg_index(id, "dtmf", leg)?.unwrap_or(0);
    scoped_call(st, caller, id).await?;
    command_answer(id, st.calls.send_dtmf(id, leg, digits).await)
}

/// A body's `leg` (a leg id `<call id>.<index>` of call `id`): its index, `None` when left
/// out. A leg id of another call, or one that is not a leg id, is refused naming `leg`.
pub(crate) fn leg_index(
    id: &str,
    object: &str,
    leg: Option<String>,
) -> Result<Option<u32>, ApiError> {
    match leg {
        None => Ok(None),
        Some(l) => {
            let index = l
                .rsplit_once('.')
                .filter(|(call, _)| *call == id)
                .and_then(|(_, i)| i.parse::<u32>().ok());
            match index {
                Some(i) => Ok(Some(i)),
                None if l
                    .rsplit_once('.')
                    .is_some_and(|(_, i)| i.parse::<u32>().is_ok()) =>
                {
                    Err(ApiError::not_found(format!("call {id} has no leg {l}")).with_field("leg"))
                }
                None => Err(ApiError::invalid_field(
                    object,
                    "leg",
                    "not a leg id (leg ids are <call id>.<index>)",
                )),
            }
        }
    }
}

/// `POST /v1/calls/{id}/interrupt`'s answer: what runs on the call was asked to stop.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Interrupted {
    pub call_id: String,
    #[schemars(extend("const" = true))]
    pub interrupted: bool,
}

/// `POST /v1/calls/{id}/blocks`'s answer (`202`).
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BlocksAccepted {
    pub call_id: String,
    /// How many blocks were accepted.
    #[schemars(range(min = 1))]
    pub blocks: usize,
    /// `bridge`: mixed into the connected call; null: run as the call's blocks.
    #[schemars(extend("enum" = ["bridge", null]))]
    pub mixed_into: Option<&'static str>,
}

/// A call command's answer as the API gives it: the call, `404` when it is gone (or has no
/// such leg), `409` naming why the command cannot apply.
fn command_answer(
    id: &str,
    answer: Option<Result<CallInfo, CommandRefused>>,
) -> Result<CallInfo, ApiError> {
    match answer {
        None => Err(call_not_found(id)),
        Some(Err(CommandRefused::NoSuchLeg)) => {
            Err(ApiError::not_found(format!("call {id} has no such leg")).with_field("leg"))
        }
        Some(Err(why)) => Err(ApiError::conflict(why.message()).with_field(why.field())),
        Some(Ok(info)) => Ok(info),
    }
}

/// Sends `cmd` to call `id` if the key's scope covers it; the call as it is then, or why not.
pub(crate) async fn control_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    cmd: ControlCommand,
) -> Result<CallInfo, ApiError> {
    scoped_call(st, caller, id).await?;
    command_answer(id, st.calls.control(id, cmd).await)
}

/// The party commands: hold, unhold, mute and unmute one leg of the connected call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartyCommand {
    Hold,
    Unhold,
    Mute,
    Unmute,
}

impl PartyCommand {
    fn name(self) -> &'static str {
        match self {
            PartyCommand::Hold => "hold",
            PartyCommand::Unhold => "unhold",
            PartyCommand::Mute => "mute",
            PartyCommand::Unmute => "unmute",
        }
    }

    fn command(self, leg: Option<u32>) -> ControlCommand {
        match self {
            PartyCommand::Hold => ControlCommand::Hold { leg },
            PartyCommand::Unhold => ControlCommand::Unhold { leg },
            PartyCommand::Mute => ControlCommand::Mute { leg },
            PartyCommand::Unmute => ControlCommand::Unmute { leg },
        }
    }
}

/// `POST /v1/calls/{id}/hold` (and `unhold`, `mute`, `unmute`) `{"leg": "<leg id>"}`
/// (optional; default leg 0): answers the call as it is then.
pub(crate) async fn party_command(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    what: PartyCommand,
    body: serde_json::Map<String, Value>,
) -> Result<CallInfo, ApiError> {
    let PartyRequest { leg } = decode(Value::Object(body))?;
    let leg = leg_index(id, what.name(), leg)?;
    control_call(st, caller, id, what.command(leg)).await
}

/// An optional JSON body as an object (empty when left out).
fn optional_object(body: OptionalJsonBody) -> Result<serde_json::Map<String, Value>, ApiError> {
    match body.0 {
        Some(v) => object(v),
        None => Ok(Default::default()),
    }
}

macro_rules! party_route {
    ($name:ident, $what:expr) => {
        pub async fn $name(
            State(st): State<ApiState>,
            caller: Caller,
            P(id): P<String>,
            body: OptionalJsonBody,
        ) -> Result<Json<CallInfo>, ApiError> {
            party_command(&st, &caller, &id, $what, optional_object(body)?)
                .await
                .map(Json)
        }
    };
}

party_route!(hold, PartyCommand::Hold);
party_route!(unhold, PartyCommand::Unhold);
party_route!(mute, PartyCommand::Mute);
party_route!(unmute, PartyCommand::Unmute);

/// `POST /v1/calls/{id}/record` `{"stereo": false}` (optional): records the connected call
/// (both parties mixed, or stereo: caller left, callee right). Answers the call with its
/// `recording`.
pub async fn record(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
    body: OptionalJsonBody,
) -> Result<Json<CallInfo>, ApiError> {
    start_recording(&st, &caller, &id, optional_object(body)?)
        .await
        .map(Json)
}

pub(crate) async fn start_recording(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    body: serde_json::Map<String, Value>,
) -> Result<CallInfo, ApiError> {
    let RecordRequest { stereo } = decode(Value::Object(body))?;
    let stereo = stereo.unwrap_or(false);
    control_call(st, caller, id, ControlCommand::StartRecording { stereo }).await
}

/// `DELETE /v1/calls/{id}/record`: stops the recording; its file is listed on the call's CDR
/// and served by `GET /v1/recordings/{id}` once complete.
pub async fn stop_record(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
) -> Result<Json<CallInfo>, ApiError> {
    stop_recording(&st, &caller, &id).await.map(Json)
}

pub(crate) async fn stop_recording(
    st: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<CallInfo, ApiError> {
    control_call(st, caller, id, ControlCommand::StopRecording).await
}

pub async fn interrupt(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
) -> Result<(StatusCode, Json<Interrupted>), ApiError> {
    interrupt_call(&st, &caller, &id)
        .await
        .map(|v| (StatusCode::ACCEPTED, Json(v)))
}

pub(crate) async fn interrupt_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<Interrupted, ApiError> {
    scoped_call(st, caller, id).await?;
    if !st.calls.interrupt(id) {
        // Ended between the two questions.
        return Err(call_not_found(id));
    }
    Ok(Interrupted {
        call_id: id.to_string(),
        interrupted: true,
    })
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
) -> Result<(StatusCode, Json<BlocksAccepted>), ApiError> {
    run_blocks_on(&st, &caller, &id, object(body)?)
        .await
        .map(|v| (StatusCode::ACCEPTED, Json(v)))
}

/// `POST /v1/calls/{id}/blocks`: ANNOUNCEMENT and SAY blocks on a connected call are mixed
/// into it (both parties hear them and each other); any blocks on a call in its plan or one
/// an application claimed run now (custom IVR) — the plan goes on after them, a claimed call
/// waits for more. A call dialling or connected refuses the other blocks (`409`).
pub(crate) async fn run_blocks_on(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    body: serde_json::Map<String, Value>,
) -> Result<BlocksAccepted, ApiError> {
    scoped_call(st, caller, id).await?;
    let BlocksRequest { blocks } = decode(Value::Object(body))?;
    let list = match blocks {
        Some(list) => list,
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
    let n = blocks.len();
    let not_mixable = blocks
        .iter()
        .position(|b| !matches!(b, Block::Announcement(_) | Block::Say(_)));
    if not_mixable.is_none() {
        match st.calls.play_into_bridge(id, blocks.clone()).await {
            None => return Err(call_not_found(id)),
            Some(Ok(())) => {
                return Ok(BlocksAccepted {
                    call_id: id.to_string(),
                    blocks: n,
                    mixed_into: Some("bridge"),
                })
            }
            Some(Err(PlayRefused::NotConnected)) => {}
        }
    }
    match st.calls.run_blocks(id, blocks).await {
        None => Err(call_not_found(id)),
        Some(Ok(_)) => Ok(BlocksAccepted {
            call_id: id.to_string(),
            blocks: n,
            mixed_into: None,
        }),
        Some(Err(CommandRefused::BlocksWhileConnected)) => Err(match not_mixable {
            Some(i) => ApiError::conflict(CommandRefused::BlocksWhileConnected.message())
                .with_field(format!("blocks[{i}].blockType")),
            None => ApiError::conflict(
                "the call has no connected callee yet to play into (it is ringing one)",
            )
            .with_field("state"),
        }),
        Some(Err(why)) => Err(ApiError::conflict(why.message()).with_field(why.field())),
    }
}

/// `POST /v1/calls/{id}/claim`: an application claims a call offered to it (the first claim
/// wins; the call's plan will not run). Answers the call.
pub async fn claim(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
) -> Result<Json<CallInfo>, ApiError> {
    claim_call(&st, &caller, &id, None).await.map(Json)
}

/// A claim through the events socket passes its `session`: the claim then lasts as long as
/// that session (see `events_ws`); through REST it lasts until the call ends.
pub(crate) async fn claim_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    session: Option<String>,
) -> Result<CallInfo, ApiError> {
    scoped_call(st, caller, id).await?;
    command_answer(id, st.calls.claim(id, caller.0.name.clone(), session).await)
}

/// `POST /v1/calls/{id}/answer`: answers a call an application claimed.
pub async fn answer(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
) -> Result<Json<CallInfo>, ApiError> {
    control_call(&st, &caller, &id, ControlCommand::Answer)
        .await
        .map(Json)
}

/// A BRIDGE destination object of a request (named `field`: `to`, …), checked by the BRIDGE
/// block's own rules (errors name `<field>.destinationType`, `<field>.destination`…; a left
/// out `timeout` is [`DEFAULT_RING_SECONDS`]). A SIP user must be of `tenant`: another
/// tenant's is not ours to ring, nor to learn whether it is online.
pub(crate) fn destination(
    st: &ApiState,
    value: Option<Value>,
    field: &str,
    object_name: &str,
    tenant: &str,
) -> Result<callplane_engine::blocks::BridgeDestination, ApiError> {
    let invalid = |f: &str, msg: String| ApiError::invalid_field(object_name, f, msg);
    let mut to = match value {
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::invalid_json(
                format!(
                "`{field}` must be a destination object: {{\"destinationType\", \"destination\"}}"
            ),
                Some(field.into()),
            ))
        }
        None => {
            return Err(ApiError::invalid_json(
                format!("missing field `{field}`"),
                Some(field.into()),
            ))
        }
    };
    to.entry("timeout".to_string())
        .or_insert(Value::from(DEFAULT_RING_SECONDS));
    let probe = serde_json::json!([{
        "blockType": "BRIDGE", "bridgeMode": "SEQUENTIAL", "destinations": [to]
    }]);
    let destination = match callplane_engine::blocks::parse_blocks(&probe) {
        Ok(mut b) => match b.pop() {
            Some(Block::Bridge(mut bridge)) if !bridge.destinations.is_empty() => {
                bridge.destinations.remove(0)
            }
            _ => return Err(invalid(field, "not a destination".into())),
        },
        Err(errors) => {
            let list = errors
                .into_iter()
                .map(|e| callplane_store::FieldError {
                    object: object_name.to_string(),
                    field: e
                        .field
                        .strip_prefix("destinations[0]")
                        .map(|rest| format!("{field}{rest}"))
                        .unwrap_or_else(|| field.to_string()),
                    message: e.to_string(),
                })
                .collect();
            return Err(ApiError::validation(list));
        }
    };
    if destination.destination_type == callplane_engine::blocks::DestinationType::SipUser {
        match st.store.get_sip_user(&destination.destination)? {
            Some(u) if u.tenant == tenant => {}
            _ => {
                return Err(invalid(
                    &format!("{field}.destination"),
                    format!(
                        "no SIP user \"{}\" in tenant \"{tenant}\"",
                        destination.destination
                    ),
                ))
            }
        }
    }
    Ok(destination)
}

/// `409` naming `field` when `to` is a SIP user with no registered device (nothing would
/// ring).
pub(crate) fn check_registered(
    st: &ApiState,
    to: &callplane_engine::blocks::BridgeDestination,
    field: &str,
) -> Result<(), ApiError> {
    if to.destination_type == callplane_engine::blocks::DestinationType::SipUser
        && !st.calls.is_registered(&to.destination)
    {
        return Err(ApiError::conflict(format!(
            "SIP user \"{}\" has no registered device",
            to.destination
        ))
        .with_field(field));
    }
    Ok(())
}

/// `POST /v1/calls/{id}/transfer` `{"to": <destination>, "from": "<leg id>"}`: blind
/// transfer — leg `from` (default: the connected callee) is hung up and its other party (the
/// caller) is connected to `to`. Answers the call as it is then (dialling `to`).
pub async fn transfer(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<CallInfo>, ApiError> {
    transfer_call(&st, &caller, &id, object(body)?)
        .await
        .map(Json)
}

pub(crate) async fn transfer_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    body: serde_json::Map<String, Value>,
) -> Result<CallInfo, ApiError> {
    let TransferRequest {
        to,
        from,
        consult_call_id,
    } = decode(Value::Object(body))?;
    let info = scoped_call_info(st, caller, id).await?;
    let from = leg_index(id, "transfer", from)?;
    // The leg a transfer names is its `from`.
    let rename_leg = |e: ApiError| e.field_renamed("leg", "from");
    match consult_call_id {
        None => {}
        Some(consult) => {
            if !matches!(to, None | Some(Value::Null)) {
                return Err(ApiError::invalid_field(
                    "transfer",
                    "to",
                    "an attended transfer (consultCallId) connects the consultation call's \
                     party: no `to`",
                ));
            }
            // The consultation call must be in the key's scope too, and of the same tenant
            // (a leg does not move between tenants' calls and CDRs).
            let consulted = scoped_call_info(st, caller, &consult)
                .await
                .map_err(|e| e.with_field("consultCallId"))?;
            if consulted.tenant != info.tenant {
                return Err(
                    ApiError::conflict("the consultation call belongs to another tenant")
                        .with_field("consultCallId"),
                );
            }
            let answer = st.calls.attended_transfer(id, from, &consult).await;
            return command_answer(id, answer).map_err(rename_leg);
        }
    }
    let to = destination(st, to, "to", "transfer", &info.tenant)?;
    check_registered(st, &to, "to.destination")?;
    let answer = st
        .calls
        .control(id, ControlCommand::Transfer { to, from })
        .await;
    command_answer(id, answer).map_err(rename_leg)
}

/// `POST /v1/calls/{id}/redirect` `{"to": <destination>}`: sends the call — ringing or
/// answered, in its plan or connected — to `to`: what runs stops and the rest of its plan is a
/// BRIDGE to `to`.
pub async fn redirect(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<CallInfo>, ApiError> {
    redirect_call(&st, &caller, &id, object(body)?)
        .await
        .map(Json)
}

pub(crate) async fn redirect_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    body: serde_json::Map<String, Value>,
) -> Result<CallInfo, ApiError> {
    let RedirectRequest { to } = decode(Value::Object(body))?;
    let info = scoped_call_info(st, caller, id).await?;
    let to = destination(st, to, "to", "redirect", &info.tenant)?;
    check_registered(st, &to, "to.destination")?;
    command_answer(
        id,
        st.calls.control(id, ControlCommand::Redirect { to }).await,
    )
}

/// `POST /v1/calls/{id}/supervise` `{"mode": "listen|whisper|barge|intercept", "supervisor":
/// <destination or leg id>}`: dials the supervisor into the connected call (or moves the
/// named leg of another call into it), or (without `supervisor`) switches the mode of the
/// one on it. Answers the call as it is then.
pub async fn supervise(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<CallInfo>, ApiError> {
    supervise_call(&st, &caller, &id, object(body)?)
        .await
        .map(Json)
}

pub(crate) async fn supervise_call(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    body: serde_json::Map<String, Value>,
) -> Result<CallInfo, ApiError> {
    use callplane_engine::registry::SuperviseMode;
    let SuperviseRequest { mode, supervisor } = decode(Value::Object(body))?;
    let mode = SuperviseMode::parse(&mode).ok_or_else(|| {
        ApiError::invalid_field(
            "supervise",
            "mode",
            "one of listen, whisper, barge, intercept",
        )
    })?;
    let info = scoped_call_info(st, caller, id).await?;
    let supervisor = match supervisor {
        None | Some(Value::Null) => None,
        Some(Value::String(leg)) => {
            return supervise_with_leg(st, caller, id, &info, mode, &leg).await;
        }
        v => {
            let to = destination(st, v, "supervisor", "supervise", &info.tenant)?;
            check_registered(st, &to, "supervisor.destination")?;
            Some(to)
        }
    };
    command_answer(
        id,
        st.calls
            .control(id, ControlCommand::Supervise { mode, supervisor })
            .await,
    )
}

/// Supervision by a leg already up in another call (`"supervisor": "<call id>.<index>"`: a
/// supervisor's phone that called in, or that a console called through the API): that call
/// must be in the key's scope and of the same tenant; the leg must be its answered first leg
/// or its connected callee. It moves into this call (the other call ends if it was its first
/// leg) and joins in `mode`.
async fn supervise_with_leg(
    st: &ApiState,
    caller: &Caller,
    id: &str,
    info: &CallInfo,
    mode: callplane_engine::registry::SuperviseMode,
    leg: &str,
) -> Result<CallInfo, ApiError> {
    let Some((leg_call, index)) = leg
        .rsplit_once('.')
        .and_then(|(call, i)| Some((call, i.parse::<u32>().ok()?)))
        .filter(|(call, _)| !call.is_empty())
    else {
        return Err(ApiError::invalid_field(
            "supervise",
            "supervisor",
            "a destination object to dial, or the leg id (<call id>.<index>) of a leg of \
             another call",
        ));
    };
    // The leg's call must be the key's to command, and of the same tenant (a leg does not
    // move between tenants' calls and CDRs).
    let other = scoped_call_info(st, caller, leg_call)
        .await
        .map_err(|e| e.with_field("supervisor"))?;
    if other.tenant != info.tenant {
        return Err(
            ApiError::conflict("the supervisor's leg belongs to another tenant's call")
                .with_field("supervisor"),
        );
    }
    let answer = st.calls.supervise_with_leg(id, mode, leg_call, index).await;
    match answer {
        Some(Err(CommandRefused::SupervisorLeg(why))) if *why == CommandRefused::NoSuchLeg => Err(
            ApiError::not_found(format!("call {leg_call} has no leg {leg}"))
                .with_field("supervisor"),
        ),
        answer => command_answer(id, answer),
    }
}

/// `DELETE /v1/calls/{id}/supervise`: hangs up the call's supervisor.
pub async fn stop_supervise(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
) -> Result<Json<CallInfo>, ApiError> {
    stop_supervising(&st, &caller, &id).await.map(Json)
}

pub(crate) async fn stop_supervising(
    st: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<CallInfo, ApiError> {
    control_call(st, caller, id, ControlCommand::StopSupervising).await
}

/// What `POST /v1/calls` and the callback answer: `201` with the call and its `Location`.
type Placed = (
    StatusCode,
    [(axum::http::HeaderName, String); 1],
    Json<CallInfo>,
);

/// Places the call, unless it would ring a SIP user with no registered device (`409` naming
/// `field`: nothing is dialled).
fn place(st: &ApiState, req: Originate, field: &str) -> Result<Placed, ApiError> {
    let to = callplane_engine::blocks::BridgeDestination {
        destination_type: req.destination_type,
        destination: req.destination.clone(),
        timeout: None,
    };
    check_registered(st, &to, field)?;
    let info = st.calls.originate(req);
    Ok((
        StatusCode::CREATED,
        [(
            axum::http::header::LOCATION,
            format!("/v1/calls/{}", info.id),
        )],
        Json(info),
    ))
}

/// Default ring time of a placed call, seconds.
pub const DEFAULT_RING_SECONDS: u64 = 30;

/// `POST /v1/calls` — places a call: dials `to` (a BRIDGE destination object) showing
/// `callerId`, and runs `blocks` (or the tenant's routing plan `plan`) once it answers.
/// Answers `201` with the call as it starts (`state: calling`) and its `Location`.
pub async fn create(
    State(st): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Placed, ApiError> {
    let req = originate_request(&st, &caller, decode(body)?, "call")?;
    place(&st, req, "to.destination")
}

/// The call a `POST /v1/calls` body asks for, checked field by field (errors name them).
pub(crate) fn originate_request(
    st: &ApiState,
    caller: &Caller,
    body: OriginateRequest,
    object_name: &str,
) -> Result<Originate, ApiError> {
    let invalid = |field: &str, msg: String| ApiError::invalid_field(object_name, field, msg);
    // The tenant: the key's own, or (admin, reseller) the one named.
    let named = body.tenant;
    let key = &caller.0;
    let tenant_name = match key.realm {
        ApiRealm::Customer | ApiRealm::Account => {
            let own = key.tenant.clone().unwrap_or_default();
            if named.as_ref().is_some_and(|n| *n != own) {
                return Err(ApiError::not_found(format!(
                    "tenant \"{}\" not found",
                    named.unwrap_or_default()
                )));
            }
            own
        }
        ApiRealm::Admin | ApiRealm::Reseller => named
            .ok_or_else(|| invalid("tenant", "required for an admin or reseller key".into()))?,
    };
    let tenant = if key.realm == ApiRealm::Account {
        // An account key's tenant is its SIP user's (no tenant route is in its scope).
        st.store
            .get_tenant(&tenant_name)?
            .ok_or_else(|| ApiError::not_found(format!("tenant \"{tenant_name}\" not found")))?
    } else {
        caller.tenant(&st.store, &tenant_name)?
    };
    // `from`: the SIP user the call is made for (an account key: its own).
    let mut from = body.from;
    if key.realm == ApiRealm::Account {
        let own = key.sip_user.clone().unwrap_or_default();
        if from.as_ref().is_some_and(|f| *f != own) {
            return Err(ApiError::forbidden(
                "an account key places calls for its own SIP user only",
            )
            .with_field("from"));
        }
        from = Some(own);
    }
    if let Some(f) = &from {
        match st.store.get_sip_user(f)? {
            Some(u) if u.tenant == tenant.name => {}
            _ => {
                return Err(invalid(
                    "from",
                    format!("no SIP user \"{f}\" in tenant \"{}\"", tenant.name),
                ))
            }
        }
    }
    let destination = destination(st, body.to, "to", object_name, &tenant.name)?;
    let timeout = match body.timeout {
        None => destination
            .timeout
            .map(u64::from)
            .unwrap_or(DEFAULT_RING_SECONDS),
        Some(t) if (1..=600).contains(&t) => t,
        Some(_) => return Err(invalid("timeout", "must be whole seconds, 1 to 600".into())),
    };
    let caller_id = match body.caller_id {
        Some(c) => {
            if !crate::auth::valid_caller_id(&c) {
                return Err(invalid("callerId", crate::auth::CALLER_ID_RULE.into()));
            }
            c
        }
        None => from.clone().ok_or_else(|| {
            invalid(
                "callerId",
                "required when `from` does not name a SIP user".into(),
            )
        })?,
    };
    let callstate_url = body.callstate_info_url;
    if let Some(u) = &callstate_url {
        if !callplane_store::model::is_http_url(u) {
            return Err(invalid(
                "callstateInfoUrl",
                "must start with http:// or https://".into(),
            ));
        }
    }
    let blocks = match (body.blocks, body.plan) {
        (Some(_), Some(_)) => {
            return Err(invalid("plan", "give `blocks` or `plan`, not both".into()))
        }
        (None, None) => {
            return Err(invalid(
                "blocks",
                "a call needs `blocks` or a routing `plan` to run once answered".into(),
            ))
        }
        (None, Some(plan)) => {
            let p = st
                .store
                .get_routing_plan(&tenant.name, &plan)?
                .ok_or_else(|| {
                    invalid(
                        "plan",
                        format!("no routing plan \"{plan}\" in tenant \"{}\"", tenant.name),
                    )
                })?;
            callplane_engine::blocks::parse_blocks(&Value::Array(p.blocks))
                .map_err(|_| invalid("plan", format!("routing plan \"{plan}\" does not parse")))?
        }
        (Some(list), None) => {
            if list.is_empty() {
                return Err(invalid("blocks", "must hold at least one block".into()));
            }
            let errors = crate::validation::block_errors(object_name, &list);
            if !errors.is_empty() {
                return Err(ApiError::validation(errors));
            }
            parse_blocks(&Value::Array(list))
                .map_err(|_| invalid("blocks", "invalid blocks".into()))?
        }
    };
    Ok(Originate {
        callstate_url,
        destination_type: destination.destination_type,
        destination: destination.destination,
        caller_id,
        from_display: None,
        headers: Vec::new(),
        ring_timeout: std::time::Duration::from_secs(timeout),
        blocks,
        number: None,
        lines: from.into_iter().collect(),
        variables: Vec::new(),
        bridge_as: Default::default(),
        call_uuid: None,
        tenant,
    })
}

/// The number part of a destination, as a caller ID (`4930111@trunk` → `4930111`).
fn as_caller_id(destination: &Value) -> Option<Value> {
    let d = destination.get("destination")?.as_str()?;
    Some(Value::from(d.split('@').next().unwrap_or(d)))
}

/// `POST /v1/calls/callback` — connects two parties: calls `first` (showing `firstCallerId`,
/// default the second party's number); when it answers, calls `second` (showing `callerId`,
/// default the first party's number) and bridges them. `billingAccount` is kept in the call's
/// variables and CDR (`billing_account`). Answers `201` with the call (its first leg
/// `calling`); the second party is the BRIDGE's leg once dialled.
pub async fn callback(
    State(st): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Placed, ApiError> {
    let CallbackRequest {
        tenant,
        from,
        first,
        second,
        caller_id: second_sees,
        first_caller_id,
        timeout,
        billing_account,
        callstate_info_url,
    } = decode(body)?;
    let first = first
        .ok_or_else(|| ApiError::invalid_json("missing field `first`", Some("first".into())))?;
    let second = match second {
        Some(Value::Object(m)) => Value::Object(m),
        Some(_) => {
            return Err(ApiError::invalid_json(
                "`second` must be a destination object",
                Some("second".into()),
            ))
        }
        None => {
            return Err(ApiError::invalid_json(
                "missing field `second`",
                Some("second".into()),
            ))
        }
    };
    let billing = match billing_account {
        None => None,
        Some(s) if (1..=128).contains(&s.len()) && !s.chars().any(char::is_control) => Some(s),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "callback",
                "billingAccount",
                "a string of 1 to 128 characters without control characters",
            ))
        }
    };
    // The second leg: a one-destination SEQUENTIAL BRIDGE, checked by the block's rules.
    let mut second_dest = second.clone();
    if let Value::Object(m) = &mut second_dest {
        m.entry("timeout".to_string())
            .or_insert(Value::from(DEFAULT_RING_SECONDS));
    }
    let bridge = serde_json::json!([{
        "blockType": "BRIDGE", "bridgeMode": "SEQUENTIAL", "destinations": [second_dest]
    }]);
    let errors = crate::validation::block_errors(
        "callback",
        bridge.as_array().map(Vec::as_slice).unwrap_or(&[]),
    );
    if !errors.is_empty() {
        let errors = errors
            .into_iter()
            .map(|mut e| {
                e.field = e
                    .field
                    .strip_prefix("blocks[0].destinations[0]")
                    .map(|rest| format!("second{rest}"))
                    .unwrap_or_else(|| "second".into());
                e
            })
            .collect();
        return Err(ApiError::validation(errors));
    }
    let first_sees = first_caller_id
        .or_else(|| as_caller_id(&second).and_then(|v| v.as_str().map(str::to_string)));
    let call = OriginateRequest {
        tenant,
        from,
        to: Some(first.clone()),
        caller_id: first_sees,
        timeout,
        blocks: bridge.as_array().cloned(),
        plan: None,
        callstate_info_url,
    };
    let mut req = originate_request(&st, &caller, call, "callback").map_err(|mut e| {
        // The first leg's fields by their callback names.
        if let Some(f) = e.field.take() {
            let renamed = match f.strip_prefix("to") {
                Some(rest) => format!("first{rest}"),
                None if f == "callerId" => "firstCallerId".into(),
                None => f,
            };
            e.field = Some(renamed);
            for fe in &mut e.errors {
                if let Some(rest) = fe.field.strip_prefix("to") {
                    fe.field = format!("first{rest}");
                }
            }
        }
        e
    })?;
    let second_id =
        second_sees.or_else(|| as_caller_id(&first).and_then(|v| v.as_str().map(str::to_string)));
    if let Some(c) = &second_id {
        if !crate::auth::valid_caller_id(c) {
            return Err(ApiError::invalid_field(
                "callback",
                "callerId",
                crate::auth::CALLER_ID_RULE,
            ));
        }
    }
    req.bridge_as.caller_id = second_id;
    if let Some(b) = billing {
        req.variables.push(("billing_account".into(), b));
    }
    place(&st, req, "first.destination")
}
