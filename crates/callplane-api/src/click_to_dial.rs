//! Click-to-dial, `GET /v1/call-init` with LocaPhone's parameters: ring the user's registered
//! phone first (showing `to` as the caller), and when it answers dial `to` through the tenant's
//! default trunk and bridge the two. See `docs/api.md` ("Click-to-dial") for the choices.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use callplane_engine::blocks::{parse_blocks, DestinationType};
use callplane_engine::call::{BridgeIdentity, Originate};
use callplane_engine::registry::CallInfo;
use callplane_sip::Network;
use callplane_store::ApiRealm;
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::ApiState;

/// Who may use the route (`[clickToDial]` in the config file).
#[derive(Debug, Clone)]
pub struct ClickToDialConfig {
    /// Source networks allowed; any other source is `403`, key or not.
    pub allow_from: Vec<Network>,
    /// Whether a request from an allowed network needs no API key.
    pub keyless: bool,
}

impl Default for ClickToDialConfig {
    fn default() -> Self {
        ClickToDialConfig {
            allow_from: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| Network::parse(n))
                .collect(),
            keyless: false,
        }
    }
}

/// How long the user's phone rings, and then the target.
const USER_RING_SECONDS: u64 = 30;
const TARGET_RING_SECONDS: u64 = 60;

fn flag(field: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" | "" => Ok(false),
        _ => Err(ApiError::invalid_field(
            "call-init",
            field,
            "must be 1 or 0",
        )),
    }
}

/// `GET /v1/call-init?user=&to=[&from=&cidnum=&clir=1&prv=1&autoAnswer=1]`.
pub async fn call_init(
    State(st): State<ApiState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<CallInfo>, ApiError> {
    let source = peer.map(|Extension(ConnectInfo(a))| a.ip());
    if !source.is_some_and(|ip| st.click_to_dial.allow_from.iter().any(|n| n.contains(ip))) {
        return Err(ApiError::forbidden(
            "click-to-dial is not allowed from this address (clickToDial.allowFrom)",
        ));
    }
    let (mut user, mut to, mut from, mut cidnum, mut token) = (None, None, None, None, None);
    let (mut clir, mut prv, mut auto_answer) = (false, false, None);
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "user" => user = Some(v),
            "to" => to = Some(v),
            "from" => from = Some(v).filter(|f| !f.is_empty()),
            "cidnum" => cidnum = Some(v).filter(|c| !c.is_empty()),
            "clir" => clir = flag("clir", &v)?,
            "prv" => prv = flag("prv", &v)?,
            "autoAnswer" | "autoanswer" => auto_answer = Some(flag("autoAnswer", &v)?),
            "token" => token = Some(v),
            other => return Err(ApiError::invalid_field(
                "call-init",
                other,
                "unknown parameter (expected user, to, from, cidnum, clir, prv, autoAnswer, token)",
            )),
        }
    }
    // A key as everywhere else; without one only where the operator allowed keyless links.
    let caller = match crate::auth::bearer(&headers).or(token) {
        Some(t) => Some(Caller::admitted(&st, Some(&t))?),
        None if st.click_to_dial.keyless => None,
        None => {
            return Err(ApiError::unauthorized(
                "an API key is required: Authorization: Bearer <key> or ?token=",
            ))
        }
    };
    let user = user.ok_or_else(|| {
        ApiError::invalid_field(
            "call-init",
            "user",
            "required: the SIP user whose phone rings",
        )
    })?;
    let to = to.ok_or_else(|| {
        ApiError::invalid_field("call-init", "to", "required: the number to call")
    })?;
    if !callplane_store::model::is_valid_number(&to) {
        return Err(ApiError::invalid_field(
            "call-init",
            "to",
            "must be a number: optional '+', then 1 to 32 of 0-9 * #",
        ));
    }
    if let Some(c) = &cidnum {
        if !crate::auth::valid_caller_id(c) {
            return Err(ApiError::invalid_field(
                "call-init",
                "cidnum",
                crate::auth::CALLER_ID_RULE,
            ));
        }
    }
    let not_found = |u: &str| ApiError::not_found(format!("SIP user \"{u}\" not found"));
    let sip_user = st
        .store
        .get_sip_user(&user)?
        .ok_or_else(|| not_found(&user))?;
    if let Some(c) = &caller {
        let scope = c.call_scope(&st.store)?;
        let own_line = c.realm() != ApiRealm::Account || c.0.sip_user.as_deref() == Some(&user);
        if !scope.may_cover_tenant(&sip_user.tenant) || !own_line {
            return Err(not_found(&user));
        }
        if c.realm() == ApiRealm::Account && from.as_ref().is_some_and(|f| *f != user) {
            return Err(
                ApiError::forbidden("an account key dials for its own SIP user only")
                    .with_field("from"),
            );
        }
    }
    // `from`: the call is made on behalf of another user of the tenant, whose phone rings.
    let ringing = match &from {
        Some(f) => {
            let u = st.store.get_sip_user(f)?.ok_or_else(|| not_found(f))?;
            if u.tenant != sip_user.tenant {
                return Err(not_found(f));
            }
            u
        }
        None => sip_user.clone(),
    };
    let tenant = st
        .store
        .get_tenant(&sip_user.tenant)?
        .ok_or_else(|| ApiError::not_found("the user's tenant is gone"))?;
    if tenant.default_trunk.is_none() {
        return Err(ApiError::conflict(format!(
            "tenant \"{}\" has no defaultTrunk to call {to} through",
            tenant.name
        )));
    }
    if !st.calls.is_registered(&ringing.username) {
        return Err(ApiError::conflict(format!(
            "SIP user \"{}\" has no registered device",
            ringing.username
        ))
        .with_field(if from.is_some() { "from" } else { "user" }));
    }
    // The target sees `cidnum`, else the user; withheld with clir, private with prv.
    let mut bridge_as = BridgeIdentity {
        caller_id: Some(cidnum.clone().unwrap_or_else(|| ringing.username.clone())),
        display: None,
        headers: Vec::new(),
    };
    let mut privacy = Vec::new();
    if clir {
        bridge_as.caller_id = Some("anonymous".into());
        bridge_as.display = Some("Anonymous".into());
        privacy.push("id");
    }
    if prv {
        privacy.insert(0, "header");
    }
    if !privacy.is_empty() {
        bridge_as
            .headers
            .push(("Privacy".into(), privacy.join(";")));
    }
    let presented = if prv || clir {
        "private".to_string()
    } else {
        bridge_as.caller_id.clone().unwrap_or_default()
    };
    let mut phone_headers = Vec::new();
    // The request decides; without `autoAnswer`, the ringing user's own setting.
    if auto_answer.unwrap_or(ringing.auto_answer) {
        phone_headers.push(("Call-Info".into(), "<sip:127.0.0.1>;answer-after=0".into()));
        phone_headers.push((
            "Alert-Info".into(),
            "<http://127.0.0.1>;info=alert-autoanswer".into(),
        ));
    }
    let blocks = parse_blocks(&json!([{
        "blockType": "BRIDGE", "bridgeMode": "SEQUENTIAL",
        "destinations": [{"destinationType": "EXTERNALNUMBER", "destination": to, "timeout": TARGET_RING_SECONDS}]
    }]))
    .map_err(|_| ApiError::invalid_field("call-init", "to", "cannot be dialled"))?;
    let mut lines = vec![user.clone()];
    if ringing.username != user {
        lines.push(ringing.username.clone());
    }
    let info = st.calls.originate(Originate {
        tenant,
        destination_type: DestinationType::SipUser,
        destination: ringing.username.clone(),
        caller_id: to.clone(),
        from_display: None,
        headers: phone_headers,
        ring_timeout: std::time::Duration::from_secs(USER_RING_SECONDS),
        blocks,
        callstate_url: None,
        number: None,
        lines,
        variables: vec![
            ("click_to_dial_user".into(), user),
            ("click_to_dial_to".into(), to),
            ("presented_number".into(), presented),
        ],
        bridge_as,
        call_uuid: None,
    });
    Ok(Json(info))
}
