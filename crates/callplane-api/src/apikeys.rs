//! `/v1/apikeys`: keys create keys of their own realm or below, inside their own scope. The
//! secret is generated here, returned once in the 201 answer, and only its hash is stored.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use callplane_store::model::Validate;
use callplane_store::{ApiKey, ApiRealm};
use serde::Serialize;
use serde_json::Value;

use crate::auth::{generate_key, hash_key, resolve_api_key, Caller};
use crate::body::{decode, object, JsonBody};
use crate::error::ApiError;
use crate::resources::{created, location, P};
use crate::ApiState;

/// The answer to a create: the key's fields and, this once, its secret (`ApiKeyCreated`).
#[derive(Serialize, schemars::JsonSchema)]
#[schemars(rename = "ApiKeyCreated")]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The secret for `Authorization: Bearer`, shown only in this answer.
    #[serde(rename = "key")]
    #[schemars(extend("pattern" = "^cp_[0-9a-f]{40}$"))]
    pub secret: String,
}

pub async fn list(
    State(st): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<ApiKey>>, ApiError> {
    caller.require(ApiRealm::Customer, "manage API keys")?;
    let mut out = Vec::new();
    for k in st.store.list_api_keys()? {
        if caller.covers_key(&st.store, &k)? {
            out.push(k);
        }
    }
    Ok(Json(out))
}

pub async fn create(
    State(st): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    caller.require(ApiRealm::Customer, "manage API keys")?;
    let mut body = object(body)?;
    // `created` is the store's to set.
    body.remove("created");
    let mut key: ApiKey = decode(Value::Object(body))?;
    if key.realm > caller.realm() {
        return Err(ApiError::forbidden(format!(
            "a key of realm {} may not create keys of realm {}",
            caller.realm(),
            key.realm
        ))
        .with_field("realm"));
    }
    // A key hands out no more than it has: below admin, the new key's request rate may not
    // be above the caller's own (nor unlimited when the caller is limited).
    if caller.realm() != ApiRealm::Admin {
        let own = st.rate_limits.rate_of(&caller.0);
        let asked = st.rate_limits.rate_of(&key);
        let exceeds = match (own, asked) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(o), Some(a)) => a.per_second > o.per_second,
        };
        if exceeds {
            let own = own.map_or(0.0, |r| r.per_second);
            return Err(ApiError::forbidden(format!(
                "a key may not create a key with a higher request rate than its own ({own} per second)"
            ))
            .with_field("rateLimit"));
        }
    }
    let object = key.label();
    let errors = resolve_api_key(&st.store, &mut key, &object)?;
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    // Inside the caller's scope. A tenant or SIP user outside it reads as absent, with the
    // same message as one that does not exist.
    if !caller.covers_key(&st.store, &key)? {
        let err = match key.realm {
            ApiRealm::Reseller => ApiError::forbidden(format!(
                "a reseller key may only create keys of reseller {:?}",
                caller.0.reseller.as_deref().unwrap_or_default()
            ))
            .with_field("reseller"),
            ApiRealm::Account => ApiError::invalid_field(
                &object,
                "sipUser",
                format!(
                    "SIP user \"{}\" not found",
                    key.sip_user.as_deref().unwrap_or_default()
                ),
            ),
            _ => ApiError::invalid_field(
                &object,
                "tenant",
                format!(
                    "tenant \"{}\" not found",
                    key.tenant.as_deref().unwrap_or_default()
                ),
            ),
        };
        return Err(err);
    }
    let secret = generate_key();
    let stored = st
        .store
        .create_api_key(&key, &hash_key(&secret))
        .map_err(|e| match e {
            callplane_store::StoreError::Exists { object } => {
                ApiError::conflict(format!("{object} already exists")).with_field("name")
            }
            e => e.into(),
        })?;
    tracing::info!(name = %stored.name, realm = %stored.realm, "API key created");
    let loc = location(&["apikeys", &stored.name]);
    Ok(created(
        loc,
        CreatedKey {
            key: stored,
            secret,
        },
    ))
}

pub async fn get_one(
    State(st): State<ApiState>,
    caller: Caller,
    P(name): P<String>,
) -> Result<Json<ApiKey>, ApiError> {
    caller.require(ApiRealm::Customer, "manage API keys")?;
    match st.store.get_api_key(&name)? {
        Some(k) if caller.covers_key(&st.store, &k)? => Ok(Json(k)),
        _ => Err(ApiError::not_found(format!("API key \"{name}\" not found"))),
    }
}

pub async fn delete(
    State(st): State<ApiState>,
    caller: Caller,
    P(name): P<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(ApiRealm::Customer, "manage API keys")?;
    let not_found = || ApiError::not_found(format!("API key \"{name}\" not found"));
    let key = st.store.get_api_key(&name)?.ok_or_else(not_found)?;
    if !caller.covers_key(&st.store, &key)? {
        return Err(not_found());
    }
    // The last admin key first: the stronger reason, and the sole admin key deleting itself
    // hits both. The store checks it again inside its write transaction, which settles two
    // admin keys deleting each other at once (its `Refused` is a 409 too).
    if key.realm == ApiRealm::Admin
        && st
            .store
            .list_api_keys()?
            .iter()
            .all(|k| k.realm != ApiRealm::Admin || k.name == key.name)
    {
        return Err(ApiError::conflict(format!(
            "API key \"{name}\" is the last key of realm admin; create another admin key \
             before deleting it"
        )));
    }
    // A key deleting itself would lock its holder out mid-session, by mistake more often
    // than not; another key of the same scope (or above) may delete it.
    if key.name == caller.0.name {
        return Err(ApiError::conflict(format!(
            "API key \"{name}\" is the key making this request; a key may not delete itself"
        )));
    }
    if !st.store.delete_api_key(&name)? {
        return Err(not_found());
    }
    tracing::info!(name = %name, "API key deleted");
    Ok(StatusCode::NO_CONTENT)
}
