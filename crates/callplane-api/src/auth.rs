//! API keys and realms: `Authorization: Bearer <key>` is hashed (SHA-256) and looked up; the
//! key's realm and scope then decide. A kind of request the realm may never make is 403; an
//! object of a tenant outside the key's scope is 404, exactly as if it did not exist.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use callplane_store::{ApiKey, ApiRealm, FieldError, Store, StoreError, Tenant};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::ApiState;

/// Shortest secret accepted from the config file.
pub const MIN_KEY_CHARS: usize = 16;

/// SHA-256 of a key, lowercase hex: all the database ever holds of it.
pub fn hash_key(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random secret: `cp_` and 40 hex digits (160 bits from the OS-seeded CSPRNG).
pub fn generate_key() -> String {
    let bytes: [u8; 20] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("cp_{hex}")
}

/// Checks a key's references against the database and completes it: a customer key's tenant
/// and an account key's SIP user must exist, and an account key takes its SIP user's tenant
/// (a `tenant` given with it must be that one). Field checks are `Validate::validate_as`, run
/// first. The config file, the CLI and `POST /v1/apikeys` all go through here.
pub fn resolve_api_key(
    store: &Store,
    key: &mut ApiKey,
    object: &str,
) -> Result<Vec<FieldError>, StoreError> {
    use callplane_store::model::Validate;
    let mut errors = key.validate_as(object);
    if !errors.is_empty() {
        return Ok(errors);
    }
    let mut push = |field: &str, message: String| {
        errors.push(FieldError {
            object: object.to_string(),
            field: field.to_string(),
            message,
        })
    };
    match key.realm {
        ApiRealm::Customer => {
            if let Some(t) = &key.tenant {
                if store.get_tenant(t)?.is_none() {
                    push("tenant", format!("tenant \"{t}\" not found"));
                }
            }
        }
        ApiRealm::Account => {
            if let Some(u) = &key.sip_user {
                match store.get_sip_user(u)? {
                    None => push("sipUser", format!("SIP user \"{u}\" not found")),
                    Some(user) => match &key.tenant {
                        Some(t) if *t != user.tenant => push(
                            "tenant",
                            format!("SIP user \"{u}\" does not belong to tenant \"{t}\""),
                        ),
                        _ => key.tenant = Some(user.tenant),
                    },
                }
            }
        }
        ApiRealm::Admin | ApiRealm::Reseller => {}
    }
    Ok(errors)
}

/// The authenticated key of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub ApiKey);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        // Already looked up by the idempotency layer: only its rate is left to count.
        if let Some(c) = parts.extensions.remove::<Caller>() {
            state
                .rate_limits
                .admit(&c.0)
                .map_err(ApiError::rate_limited)?;
            return Ok(c);
        }
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "an API key is required: Authorization: Bearer <key>",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(bearer_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be: Bearer <key>")
            })?;
        Caller::admitted(state, Some(token))
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The bearer token of a request's `Authorization` header, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    bearer_token(v).map(str::to_string)
}

/// A caller ID we present (a From user): 1 to 64 of `A-Z a-z 0-9 + - _ . * #`.
pub fn valid_caller_id(c: &str) -> bool {
    (1..=64).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-_.*#".contains(&b))
}

/// What [`valid_caller_id`] allows, for error messages.
pub const CALLER_ID_RULE: &str = "1 to 64 of A-Z a-z 0-9 + - _ . * #";

impl Caller {
    /// The key of a bearer token, counted against its request rate (`429` when over it).
    pub fn admitted(state: &ApiState, token: Option<&str>) -> Result<Caller, ApiError> {
        let caller = Caller::from_token(&state.store, token)?;
        state
            .rate_limits
            .admit(&caller.0)
            .map_err(ApiError::rate_limited)?;
        Ok(caller)
    }

    /// The key of a bearer token (from the header, or `?token=` where headers cannot be set).
    pub fn from_token(store: &Store, token: Option<&str>) -> Result<Caller, ApiError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(ApiError::unauthorized(
                "an API key is required: Authorization: Bearer <key>",
            ));
        };
        match store.find_api_key(&hash_key(token))? {
            Some(key) => Ok(Caller(key)),
            None => Err(ApiError::unauthorized("unknown API key")),
        }
    }

    pub fn realm(&self) -> ApiRealm {
        self.0.realm
    }

    /// 403 unless the key's realm is at least `min`.
    pub fn require(&self, min: ApiRealm, what: &str) -> Result<(), ApiError> {
        if self.realm() >= min {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a key of realm {} may not {what}",
                self.realm()
            )))
        }
    }

    /// Whether the key's scope includes this tenant.
    pub fn covers(&self, tenant: &Tenant) -> bool {
        let key = &self.0;
        match key.realm {
            ApiRealm::Admin => true,
            ApiRealm::Reseller => key.reseller.is_some() && tenant.reseller == key.reseller,
            ApiRealm::Customer => key.tenant.as_deref() == Some(tenant.name.as_str()),
            ApiRealm::Account => false,
        }
    }

    /// What of the calls in progress (and their events) the key may see and command.
    pub fn call_scope(&self, store: &Store) -> Result<CallScope, ApiError> {
        let key = &self.0;
        Ok(match key.realm {
            ApiRealm::Admin => CallScope::All,
            ApiRealm::Reseller => match &key.reseller {
                Some(r) => CallScope::Tenants(
                    store
                        .list_tenants_of_reseller(r)?
                        .into_iter()
                        .map(|t| t.name)
                        .collect(),
                ),
                None => CallScope::Tenants(Default::default()),
            },
            ApiRealm::Customer => CallScope::Tenants(key.tenant.iter().cloned().collect()),
            ApiRealm::Account => match (&key.tenant, &key.sip_user) {
                (Some(tenant), Some(user)) => CallScope::Line {
                    tenant: tenant.clone(),
                    user: user.clone(),
                },
                _ => CallScope::Tenants(Default::default()),
            },
        })
    }

    /// Whether the key's scope includes the tenant of this name (absent tenants are not).
    pub fn covers_name(&self, store: &Store, tenant: &str) -> Result<bool, ApiError> {
        Ok(match self.realm() {
            ApiRealm::Admin => true,
            ApiRealm::Customer => self.0.tenant.as_deref() == Some(tenant),
            _ => store.get_tenant(tenant)?.is_some_and(|t| self.covers(&t)),
        })
    }

    /// The tenant named in a URL, if the key's scope includes it; else 404 whether or not it
    /// exists.
    pub fn tenant(&self, store: &Store, name: &str) -> Result<Tenant, ApiError> {
        match store.get_tenant(name)? {
            Some(t) if self.covers(&t) => Ok(t),
            _ => Err(ApiError::not_found(format!("tenant \"{name}\" not found"))),
        }
    }

    /// Whether the key may see (and delete) another key: its own realm's scope includes it.
    pub fn covers_key(&self, store: &Store, other: &ApiKey) -> Result<bool, ApiError> {
        let me = &self.0;
        Ok(match me.realm {
            ApiRealm::Admin => true,
            ApiRealm::Account => false,
            ApiRealm::Reseller => match other.realm {
                ApiRealm::Admin => false,
                ApiRealm::Reseller => other.reseller.is_some() && other.reseller == me.reseller,
                ApiRealm::Customer | ApiRealm::Account => match &other.tenant {
                    Some(t) => self.covers_name(store, t)?,
                    None => false,
                },
            },
            ApiRealm::Customer => {
                matches!(other.realm, ApiRealm::Customer | ApiRealm::Account)
                    && other.tenant.is_some()
                    && other.tenant == me.tenant
            }
        })
    }
}

/// The calls a key covers: every call (`admin`), the calls of some tenants (`reseller`: its
/// tenants as of when the scope was read; `customer`: its one tenant), or the calls on one line
/// (`account`: calls its SIP user placed or that dialled it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallScope {
    All,
    Tenants(std::collections::BTreeSet<String>),
    Line { tenant: String, user: String },
}

impl CallScope {
    /// Whether calls of this tenant may be in scope at all (a pre-filter: a line scope still
    /// needs [`CallScope::covers_lines`]).
    pub fn may_cover_tenant(&self, tenant: &str) -> bool {
        match self {
            CallScope::All => true,
            CallScope::Tenants(t) => t.contains(tenant),
            CallScope::Line { tenant: t, .. } => t == tenant,
        }
    }

    /// Whether a call of `tenant` involving `lines` is in scope.
    pub fn covers(&self, tenant: Option<&str>, lines: &[String]) -> bool {
        match (self, tenant) {
            (CallScope::All, _) => true,
            (_, None) => false,
            (CallScope::Tenants(t), Some(tenant)) => t.contains(tenant),
            (CallScope::Line { tenant: t, user }, Some(tenant)) => {
                t == tenant && lines.iter().any(|l| l == user)
            }
        }
    }
}
