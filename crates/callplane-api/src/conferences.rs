//! Conferences: `POST /v1/calls/{id}/conference` turns a connected call into one;
//! `GET /v1/conferences[/{name}]` lists them with their present and departed participants;
//! participants are dialled in (`POST …/participants`), muted, held and removed by leg. The
//! API only sends commands: each participant's leg is held by a call, which carries them out.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use callplane_engine::blocks::{Block, ConferenceBlock};
use callplane_engine::call::Originate;
use callplane_engine::conference::ConferenceInfo;
use callplane_engine::registry::{CallInfo, ControlCommand};

use crate::auth::{CallScope, Caller};
use crate::body::{decode, JsonBody, OptionalJsonBody};
use crate::error::ApiError;
use crate::requests::{ConferenceRequest, ParticipantRequest};
use crate::resources::P;
use crate::ApiState;

/// The tenants whose conferences the key sees; account keys see none (`403`).
fn scope(st: &ApiState, caller: &Caller) -> Result<CallScope, ApiError> {
    match caller.call_scope(&st.store)? {
        CallScope::Line { .. } => Err(ApiError::forbidden(
            "an account key does not see conferences (a customer key does)",
        )),
        s => Ok(s),
    }
}

/// The `?tenant=` of a conference request, the only parameter taken.
fn tenant_param(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut tenant = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "tenant" => tenant = Some(v.into_owned()),
            other => {
                return Err(ApiError::invalid_field(
                    "query",
                    other,
                    "unknown query parameter (expected tenant)",
                ))
            }
        }
    }
    Ok(tenant)
}

/// `GET /v1/conferences?tenant=`: the live conferences in the key's scope.
pub async fn list(
    State(st): State<ApiState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<ConferenceInfo>>, ApiError> {
    let scope = scope(&st, &caller)?;
    let tenant = tenant_param(query.as_deref())?;
    Ok(Json(st.calls.list_conferences(Box::new(move |t| {
        scope.may_cover_tenant(t) && tenant.as_deref().is_none_or(|w| w == t)
    }))))
}

/// The conference `name` in the key's scope (`?tenant=` picks among tenants' conferences
/// of the same name; several without it is `409`).
fn find(
    st: &ApiState,
    caller: &Caller,
    name: &str,
    query: Option<&str>,
) -> Result<ConferenceInfo, ApiError> {
    let scope = scope(st, caller)?;
    let tenant = tenant_param(query)?;
    let name_owned = name.to_string();
    let mut found = st.calls.list_conferences(Box::new(move |t| {
        scope.may_cover_tenant(t) && tenant.as_deref().is_none_or(|w| w == t)
    }));
    found.retain(|c| c.name == name_owned);
    match found.len() {
        0 => Err(ApiError::not_found(format!(
            "conference \"{name}\" not found"
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(ApiError::conflict(format!(
            "several tenants have a conference \"{name}\": name one with ?tenant="
        ))
        .with_field("tenant")),
    }
}

/// `GET /v1/conferences/{name}?tenant=`: one conference, present participants first, then
/// the departed ones.
pub async fn get_one(
    State(st): State<ApiState>,
    caller: Caller,
    P(name): P<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ConferenceInfo>, ApiError> {
    find(&st, &caller, &name, query.as_deref()).map(Json)
}

/// `POST /v1/calls/{id}/conference` `{"owner": "<leg id>"}` (optional; default the connected
/// callee): turns the connected call into the conference `call-<id>`. Answers the call.
pub async fn make(
    State(st): State<ApiState>,
    caller: Caller,
    P(id): P<String>,
    body: OptionalJsonBody,
) -> Result<Json<CallInfo>, ApiError> {
    let ConferenceRequest { owner } = match body.0 {
        Some(v) => decode(v)?,
        None => ConferenceRequest::default(),
    };
    let owner = crate::calls::leg_index(&id, "conference", owner)
        .map_err(|e| e.field_renamed("leg", "owner"))?;
    crate::calls::control_call(&st, &caller, &id, ControlCommand::MakeConference { owner })
        .await
        .map_err(|e| e.field_renamed("leg", "owner"))
        .map(Json)
}

/// `POST /v1/conferences/{name}/participants` `{"to": <destination>, "callerId": "…"}`: dials
/// a participant in (a call of its own that joins the conference when it answers). `201` with
/// that call.
pub async fn add_participant(
    State(st): State<ApiState>,
    caller: Caller,
    P(name): P<String>,
    RawQuery(query): RawQuery,
    JsonBody(body): JsonBody,
) -> Result<
    (
        StatusCode,
        [(axum::http::HeaderName, String); 1],
        Json<CallInfo>,
    ),
    ApiError,
> {
    let conf = find(&st, &caller, &name, query.as_deref())?;
    let ParticipantRequest {
        to,
        caller_id,
        timeout,
    } = decode(body)?;
    let to = crate::calls::destination(&st, to, "to", "participant", &conf.tenant)?;
    crate::calls::check_registered(&st, &to, "to.destination")?;
    let caller_id = match caller_id {
        None => None,
        Some(c) if crate::auth::valid_caller_id(&c) => Some(c),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "participant",
                "callerId",
                crate::auth::CALLER_ID_RULE,
            ))
        }
    };
    let timeout = match timeout {
        None => to
            .timeout
            .map(u64::from)
            .unwrap_or(crate::calls::DEFAULT_RING_SECONDS),
        Some(t) if (1..=600).contains(&t) => t,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "participant",
                "timeout",
                "must be whole seconds, 1 to 600",
            ))
        }
    };
    let tenant = st
        .store
        .get_tenant(&conf.tenant)?
        .ok_or_else(|| ApiError::not_found(format!("conference \"{name}\" not found")))?;
    // Shown as the conference's first participant (the caller of the call it was made of).
    let caller_id = caller_id
        .or_else(|| conf.participants.first().map(|p| p.party.clone()))
        .unwrap_or_default();
    let lines = if to.destination_type == callplane_engine::blocks::DestinationType::SipUser {
        vec![to.destination.clone()]
    } else {
        Vec::new()
    };
    let info = st.calls.originate(Originate {
        tenant,
        destination_type: to.destination_type,
        destination: to.destination.clone(),
        caller_id,
        from_display: None,
        headers: Vec::new(),
        ring_timeout: std::time::Duration::from_secs(timeout),
        blocks: vec![Block::Conference(ConferenceBlock {
            conference_name: conf.name.clone(),
            join_muted: false,
            listen_only: false,
            end_conference_on_exit: false,
            max_participants: 1000,
            enter_announcement_name: None,
            standard_enter_announcement: false,
        })],
        callstate_url: None,
        number: None,
        lines,
        variables: vec![("conference_name".into(), conf.name.clone())],
        bridge_as: Default::default(),
        call_uuid: None,
    });
    Ok((
        StatusCode::CREATED,
        [(
            axum::http::header::LOCATION,
            format!("/v1/calls/{}", info.id),
        )],
        Json(info),
    ))
}

/// What a participant command does to a leg.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ParticipantCommand {
    Mute,
    Unmute,
    Hold,
    Unhold,
    Remove,
}

/// `POST /v1/conferences/{name}/participants/{leg}/mute` (and `unmute`, `hold`, `unhold`),
/// `DELETE /v1/conferences/{name}/participants/{leg}`: the command goes to the call holding
/// that leg. Answers the conference as it is then.
pub(crate) async fn participant(
    st: &ApiState,
    caller: &Caller,
    name: &str,
    leg_id: &str,
    query: Option<&str>,
    what: ParticipantCommand,
) -> Result<ConferenceInfo, ApiError> {
    let conf = find(st, caller, name, query)?;
    let Some((call, leg)) = st
        .calls
        .locate_participant(&conf.tenant, &conf.name, leg_id)
    else {
        return Err(ApiError::not_found(format!(
            "conference \"{name}\" has no participant {leg_id}"
        ))
        .with_field("leg"));
    };
    let leg = Some(leg);
    let cmd = match what {
        ParticipantCommand::Mute => ControlCommand::Mute { leg },
        ParticipantCommand::Unmute => ControlCommand::Unmute { leg },
        ParticipantCommand::Hold => ControlCommand::Hold { leg },
        ParticipantCommand::Unhold => ControlCommand::Unhold { leg },
        ParticipantCommand::Remove => ControlCommand::Remove { leg },
    };
    crate::calls::control_call(st, caller, &call, cmd).await?;
    Ok(st
        .calls
        .conference(&conf.tenant, &conf.name)
        .unwrap_or_else(|| {
            // The last participant was removed: the conference is over, as it was but for it.
            let mut last = conf;
            for p in &mut last.participants {
                if p.leg_id == leg_id && p.left_at.is_none() {
                    p.left_at = Some(chrono::Utc::now());
                }
            }
            last.present = last
                .participants
                .iter()
                .filter(|p| p.left_at.is_none())
                .count();
            last
        }))
}

macro_rules! participant_route {
    ($fn:ident, $what:expr) => {
        pub async fn $fn(
            State(st): State<ApiState>,
            caller: Caller,
            P((name, leg)): P<(String, String)>,
            RawQuery(query): RawQuery,
        ) -> Result<Json<ConferenceInfo>, ApiError> {
            participant(&st, &caller, &name, &leg, query.as_deref(), $what)
                .await
                .map(Json)
        }
    };
}

participant_route!(mute, ParticipantCommand::Mute);
participant_route!(unmute, ParticipantCommand::Unmute);
participant_route!(hold, ParticipantCommand::Hold);
participant_route!(unhold, ParticipantCommand::Unhold);
participant_route!(remove, ParticipantCommand::Remove);
