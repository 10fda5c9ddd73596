//! The provisioned objects under `/v1/tenants`: tenants themselves, and per tenant its
//! numbers, SIP users, trunks, routing plans and announcements, as the model's JSON shapes.
//! Every write is validated by the model's own `validate_as` (the config file's code), plus
//! its references against the database, before it is stored.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use callplane_store::model::Validate;
use callplane_store::{
    Announcement, ApiRealm, FieldError, Number, Provisioning, RoutingPlan, SipUser, Store,
    StoreError, Tenant, Trunk,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::body::{decode, object, JsonBody};
use crate::error::ApiError;
use crate::{validation, ApiState};

/// Path parameters, with axum's rejection turned into our error shape.
pub struct P<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(t) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(P(t))
    }
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/v1/tenants/acme/numbers/%2B4922…`.
pub(crate) fn location(segments: &[&str]) -> String {
    let mut out = String::from("/v1");
    for s in segments {
        out.push('/');
        out.push_str(&segment(s));
    }
    out
}

/// 201 with `Location` and the stored object.
pub(crate) fn created<T: Serialize>(location: String, body: T) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response()
}

/// Fills `field` with `value` when the body leaves it out (or null); a different value is a
/// 400 naming the field: in a URL like `/v1/tenants/{tenant}/…` the path decides.
pub(crate) fn fill_or_check(
    body: &mut Map<String, Value>,
    object: &str,
    field: &str,
    value: &str,
    whence: &str,
) -> Result<(), ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => {
            body.insert(field.to_string(), Value::String(value.to_string()));
            Ok(())
        }
        Some(Value::String(s)) if s == value => Ok(()),
        // Another type is left to serde, which names it as a type error.
        Some(Value::String(s)) => Err(ApiError::invalid_field(
            object,
            field,
            format!(
                "is {s:?} but the URL names {whence} {value:?}; leave it out or make them equal"
            ),
        )),
        Some(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Write-only fields

/// Replaces the secret `field` of an answer by `set_field: true|false`: a secret is taken on
/// input and never given back (nor is its hash).
fn write_only(mut v: Value, field: &str, set_field: &str, is_set: bool) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove(field);
        m.insert(set_field.to_string(), Value::Bool(is_set));
    }
    v
}

/// A tenant as answered: `signingSecretSet` instead of `signingSecret`.
pub(crate) fn tenant_answer(t: &Tenant) -> Value {
    let v = serde_json::to_value(t).unwrap_or(Value::Null);
    write_only(
        v,
        "signingSecret",
        "signingSecretSet",
        t.signing_secret.is_some(),
    )
}

/// The output-only fields of a body, dropped on input like `created` of API keys, so that
/// an answer can be sent back as it came.
fn drop_read_only(body: &mut Map<String, Value>, fields: &[&str]) {
    for f in fields {
        body.remove(*f);
    }
}

/// On a replace, a write-only secret that the body leaves out keeps its stored value; an
/// explicit `null` removes it.
fn keep_secret(body: &mut Map<String, Value>, field: &str, stored: Option<&String>) {
    if !body.contains_key(field) {
        if let Some(secret) = stored {
            body.insert(field.to_string(), Value::String(secret.clone()));
        }
    }
}

fn invalid(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// A store error from a create: an existing object is a 409 naming the key field.
fn create_error(e: StoreError, key_field: &str) -> ApiError {
    match e {
        StoreError::Exists { object } => {
            ApiError::conflict(format!("{object} already exists")).with_field(key_field)
        }
        e => e.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Tenants

/// A reseller's tenants are its own: the body's `reseller` is filled with the key's, and
/// naming another reseller is refused.
fn own_reseller(caller: &Caller, body: &mut Map<String, Value>) -> Result<(), ApiError> {
    if caller.realm() != ApiRealm::Reseller {
        return Ok(());
    }
    let own = caller.0.reseller.clone().unwrap_or_default();
    match body.get("reseller") {
        None | Some(Value::Null) => {
            body.insert("reseller".into(), Value::String(own));
            Ok(())
        }
        Some(Value::String(s)) if *s == own => Ok(()),
        Some(_) => Err(ApiError::forbidden(format!(
            "a reseller key may only manage tenants of reseller {own:?}"
        ))
        .with_field("reseller")),
    }
}

/// `customerNumber` identifies the tenant in webhooks: it must be unique.
fn customer_number_free(store: &Store, t: &Tenant) -> Result<(), ApiError> {
    match store.find_tenant_by_customer_number(t.customer_number)? {
        Some(other) if other.name != t.name => Err(ApiError::conflict(format!(
            "customerNumber {} is already in use",
            t.customer_number
        ))
        .with_field("customerNumber")),
        _ => Ok(()),
    }
}

pub async fn list_tenants(
    State(st): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<Value>>, ApiError> {
    caller.require(ApiRealm::Customer, "read tenants")?;
    let key = &caller.0;
    let list = match key.realm {
        ApiRealm::Admin => st.store.list_tenants()?,
        ApiRealm::Reseller => match &key.reseller {
            Some(r) => st.store.list_tenants_of_reseller(r)?,
            None => Vec::new(),
        },
        _ => match &key.tenant {
            Some(t) => st.store.get_tenant(t)?.into_iter().collect(),
            None => Vec::new(),
        },
    };
    Ok(Json(list.iter().map(tenant_answer).collect()))
}

pub async fn create_tenant(
    State(st): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    caller.require(ApiRealm::Reseller, "create tenants")?;
    let mut body = object(body)?;
    drop_read_only(&mut body, &["signingSecretSet"]);
    own_reseller(&caller, &mut body)?;
    let t: Tenant = decode(Value::Object(body))?;
    invalid(validation::check_tenant(&st.store, &t)?)?;
    customer_number_free(&st.store, &t)?;
    st.store
        .create_provisioning(&Provisioning {
            tenants: vec![t.clone()],
            ..Provisioning::default()
        })
        .map_err(|e| create_error(e, "name"))?;
    let stored = st.store.get_tenant(&t.name)?.unwrap_or(t);
    Ok(created(
        location(&["tenants", &stored.name]),
        tenant_answer(&stored),
    ))
}

pub async fn get_tenant(
    State(st): State<ApiState>,
    caller: Caller,
    P(name): P<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ApiRealm::Customer, "read tenants")?;
    Ok(Json(tenant_answer(&caller.tenant(&st.store, &name)?)))
}

pub async fn put_tenant(
    State(st): State<ApiState>,
    caller: Caller,
    P(name): P<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    caller.require(ApiRealm::Reseller, "change tenants")?;
    let existing = st.store.get_tenant(&name)?;
    if matches!(&existing, Some(t) if !caller.covers(t)) {
        return Err(ApiError::not_found(format!("tenant \"{name}\" not found")));
    }
    let mut body = object(body)?;
    drop_read_only(&mut body, &["signingSecretSet"]);
    keep_secret(
        &mut body,
        "signingSecret",
        existing.as_ref().and_then(|t| t.signing_secret.as_ref()),
    );
    fill_or_check(
        &mut body,
        &format!("tenant {name}"),
        "name",
        &name,
        "tenant",
    )?;
    own_reseller(&caller, &mut body)?;
    let t: Tenant = decode(Value::Object(body))?;
    invalid(validation::check_tenant(&st.store, &t)?)?;
    customer_number_free(&st.store, &t)?;
    st.store.apply_provisioning(&Provisioning {
        tenants: vec![t.clone()],
        ..Provisioning::default()
    })?;
    let stored = tenant_answer(&st.store.get_tenant(&name)?.unwrap_or(t));
    Ok(match existing {
        Some(_) => Json(stored).into_response(),
        None => created(location(&["tenants", &name]), stored),
    })
}

pub async fn delete_tenant(
    State(st): State<ApiState>,
    caller: Caller,
    P(name): P<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(ApiRealm::Reseller, "delete tenants")?;
    let t = caller.tenant(&st.store, &name)?;
    // Refused rather than cascaded: deleting a tenant must not silently take its numbers
    // (and live routing) with it. API keys of the tenant do go with it.
    let usage = st.store.tenant_usage(&t.name)?;
    if !usage.is_empty() {
        return Err(ApiError::conflict(format!(
            "tenant \"{name}\" still owns {}; delete them first",
            usage.describe()
        )));
    }
    st.store.delete_tenant(&t.name)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Objects of a tenant

/// What the generic handlers need to know about one kind of tenant object.
pub trait Resource:
    Serialize + DeserializeOwned + Validate + Clone + Send + Sync + 'static
{
    /// Name in messages: `number`, `SIP user`.
    const KIND: &'static str;
    /// URL segment under the tenant: `numbers`.
    const PATH: &'static str;
    /// JSON field holding the key named by the URL: `number`, `username`, `name`.
    const KEY: &'static str;

    fn tenant(&self) -> &str;
    fn key(&self) -> &str;
    fn list(store: &Store, tenant: &str) -> Result<Vec<Self>, StoreError>;
    /// The object with this key: in any tenant for kinds whose keys are global (numbers, SIP
    /// usernames), else in this tenant.
    fn find(store: &Store, tenant: &str, key: &str) -> Result<Option<Self>, StoreError>;
    fn delete(store: &Store, tenant: &str, key: &str) -> Result<bool, StoreError>;
    fn provisioning(self) -> Provisioning;
    /// Field checks and references against the database.
    fn check(&self, store: &Store) -> Result<Vec<FieldError>, StoreError>;
    /// Why it cannot be deleted now, if something refers to it.
    fn blockers(&self, _store: &Store) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    /// Clean-up after a delete (files).
    fn deleted(&self, _st: &ApiState) {}
    /// Whether an `account` key may read this object (only its own SIP user).
    fn account_may_read(&self, _caller: &Caller) -> bool {
        false
    }
    /// The object as answered; write-only secrets become `…Set: true|false`.
    fn answer(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
    /// Prepares a write's body: drops output-only fields, and on a replace of `existing`
    /// keeps write-only secrets that the body leaves out.
    fn prepare_body(
        _body: &mut Map<String, Value>,
        _object: &str,
        _existing: Option<&Self>,
    ) -> Result<(), ApiError> {
        Ok(())
    }
}

impl Resource for Number {
    const KIND: &'static str = "number";
    const PATH: &'static str = "numbers";
    const KEY: &'static str = "number";

    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn key(&self) -> &str {
        &self.number
    }
    fn list(store: &Store, tenant: &str) -> Result<Vec<Self>, StoreError> {
        store.list_numbers_of(tenant)
    }
    fn find(store: &Store, _tenant: &str, key: &str) -> Result<Option<Self>, StoreError> {
        store.get_number(key)
    }
    fn delete(store: &Store, _tenant: &str, key: &str) -> Result<bool, StoreError> {
        store.delete_number(key)
    }
    fn provisioning(self) -> Provisioning {
        Provisioning {
            numbers: vec![self],
            ..Provisioning::default()
        }
    }
    fn check(&self, store: &Store) -> Result<Vec<FieldError>, StoreError> {
        validation::check_number(store, self)
    }
}

impl Resource for SipUser {
    const KIND: &'static str = "SIP user";
    const PATH: &'static str = "sipusers";
    const KEY: &'static str = "username";

    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn key(&self) -> &str {
        &self.username
    }
    fn list(store: &Store, tenant: &str) -> Result<Vec<Self>, StoreError> {
        store.list_sip_users_of(tenant)
    }
    fn find(store: &Store, _tenant: &str, key: &str) -> Result<Option<Self>, StoreError> {
        store.get_sip_user(key)
    }
    fn delete(store: &Store, _tenant: &str, key: &str) -> Result<bool, StoreError> {
        store.delete_sip_user(key)
    }
    fn provisioning(self) -> Provisioning {
        Provisioning {
            sip_users: vec![self],
            ..Provisioning::default()
        }
    }
    fn check(&self, _store: &Store) -> Result<Vec<FieldError>, StoreError> {
        Ok(self.validate_as(&self.label()))
    }
    fn account_may_read(&self, caller: &Caller) -> bool {
        caller.0.sip_user.as_deref() == Some(self.username.as_str())
    }
    fn answer(&self) -> Value {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        write_only(v, "password", "passwordSet", self.password_set)
    }
    fn prepare_body(
        body: &mut Map<String, Value>,
        object: &str,
        _existing: Option<&Self>,
    ) -> Result<(), ApiError> {
        drop_read_only(body, &["passwordSet"]);
        // Left out keeps the stored HA1 values (the store's rule); a SIP user cannot be
        // without credentials, so `null` is refused rather than read as "left out".
        if body.get("password") == Some(&Value::Null) {
            return Err(ApiError::invalid_field(
                object,
                "password",
                "must be a string; leave it out to keep the current password",
            ));
        }
        Ok(())
    }
}

impl Resource for Trunk {
    const KIND: &'static str = "trunk";
    const PATH: &'static str = "trunks";
    const KEY: &'static str = "name";

    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn key(&self) -> &str {
        &self.name
    }
    fn list(store: &Store, tenant: &str) -> Result<Vec<Self>, StoreError> {
        store.list_trunks_of(tenant)
    }
    fn find(store: &Store, tenant: &str, key: &str) -> Result<Option<Self>, StoreError> {
        store.get_trunk(tenant, key)
    }
    fn delete(store: &Store, tenant: &str, key: &str) -> Result<bool, StoreError> {
        store.delete_trunk(tenant, key)
    }
    fn provisioning(self) -> Provisioning {
        Provisioning {
            trunks: vec![self],
            ..Provisioning::default()
        }
    }
    fn check(&self, store: &Store) -> Result<Vec<FieldError>, StoreError> {
        validation::check_trunk(store, self)
    }
    fn answer(&self) -> Value {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        write_only(v, "password", "passwordSet", self.password.is_some())
    }
    fn prepare_body(
        body: &mut Map<String, Value>,
        _object: &str,
        existing: Option<&Self>,
    ) -> Result<(), ApiError> {
        drop_read_only(body, &["passwordSet"]);
        keep_secret(body, "password", existing.and_then(|t| t.password.as_ref()));
        Ok(())
    }
    fn blockers(&self, store: &Store) -> Result<Option<String>, StoreError> {
        let default = store
            .get_tenant(&self.tenant)?
            .and_then(|t| t.default_trunk)
            .is_some_and(|d| d == self.name);
        Ok(default.then(|| {
            format!(
                "trunk \"{}\" is the defaultTrunk of tenant \"{}\"; change that first",
                self.name, self.tenant
            )
        }))
    }
}

impl Resource for RoutingPlan {
    const KIND: &'static str = "routing plan";
    const PATH: &'static str = "routingplans";
    const KEY: &'static str = "name";

    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn key(&self) -> &str {
        &self.name
    }
    fn list(store: &Store, tenant: &str) -> Result<Vec<Self>, StoreError> {
        store.list_routing_plans_of(tenant)
    }
    fn find(store: &Store, tenant: &str, key: &str) -> Result<Option<Self>, StoreError> {
        store.get_routing_plan(tenant, key)
    }
    fn delete(store: &Store, tenant: &str, key: &str) -> Result<bool, StoreError> {
        store.delete_routing_plan(tenant, key)
    }
    fn provisioning(self) -> Provisioning {
        Provisioning {
            routing_plans: vec![self],
            ..Provisioning::default()
        }
    }
    fn check(&self, _store: &Store) -> Result<Vec<FieldError>, StoreError> {
        Ok(validation::check_routing_plan(self))
    }
    fn blockers(&self, store: &Store) -> Result<Option<String>, StoreError> {
        let numbers = store.numbers_using_plan(&self.tenant, &self.name)?;
        Ok((!numbers.is_empty()).then(|| {
            format!(
                "routing plan \"{}\" is used by number(s) {}; point them elsewhere first",
                self.name,
                numbers.join(", ")
            )
        }))
    }
}

impl Resource for Announcement {
    const KIND: &'static str = "announcement";
    const PATH: &'static str = "announcements";
    const KEY: &'static str = "name";

    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn key(&self) -> &str {
        &self.name
    }
    fn list(store: &Store, tenant: &str) -> Result<Vec<Self>, StoreError> {
        store.list_announcements_of(tenant)
    }
    fn find(store: &Store, tenant: &str, key: &str) -> Result<Option<Self>, StoreError> {
        store.get_announcement(tenant, key)
    }
    fn delete(store: &Store, tenant: &str, key: &str) -> Result<bool, StoreError> {
        store.delete_announcement(tenant, key)
    }
    fn provisioning(self) -> Provisioning {
        Provisioning {
            announcements: vec![self],
            ..Provisioning::default()
        }
    }
    fn check(&self, _store: &Store) -> Result<Vec<FieldError>, StoreError> {
        Ok(self.validate_as(&self.label()))
    }
    fn deleted(&self, st: &ApiState) {
        crate::announcements::remove_uploaded_file(st, self);
    }
}

fn not_found<R: Resource>(key: &str) -> ApiError {
    ApiError::not_found(format!("{} \"{key}\" not found", R::KIND))
}

/// The tenant of a nested URL for a key that may manage its objects: `account` keys may not
/// (403); a tenant outside the scope is 404.
fn managed_tenant<R: Resource>(
    st: &ApiState,
    caller: &Caller,
    tenant: &str,
) -> Result<Tenant, ApiError> {
    caller.require(ApiRealm::Customer, &format!("use {}", R::PATH))?;
    caller.tenant(&st.store, tenant)
}

pub async fn list<R: Resource>(
    State(st): State<ApiState>,
    caller: Caller,
    P(tenant): P<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let t = managed_tenant::<R>(&st, &caller, &tenant)?;
    Ok(Json(
        R::list(&st.store, &t.name)?.iter().map(R::answer).collect(),
    ))
}

pub async fn get_one<R: Resource>(
    State(st): State<ApiState>,
    caller: Caller,
    P((tenant, key)): P<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    if caller.realm() == ApiRealm::Account {
        // Only its own SIP user, under its own tenant; everything else is out of its realm.
        return match R::find(&st.store, &tenant, &key)? {
            Some(o) if o.tenant() == tenant && o.account_may_read(&caller) => Ok(Json(o.answer())),
            _ => Err(ApiError::forbidden(format!(
                "a key of realm account may only read its own SIP user, not this {}",
                R::KIND
            ))),
        };
    }
    let t = managed_tenant::<R>(&st, &caller, &tenant)?;
    match R::find(&st.store, &t.name, &key)? {
        Some(o) if o.tenant() == t.name => Ok(Json(o.answer())),
        _ => Err(not_found::<R>(&key)),
    }
}

pub async fn create<R: Resource>(
    State(st): State<ApiState>,
    caller: Caller,
    P(tenant): P<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let t = managed_tenant::<R>(&st, &caller, &tenant)?;
    let mut body = object(body)?;
    let object_name = format!("{} (new)", R::KIND);
    R::prepare_body(&mut body, &object_name, None)?;
    fill_or_check(&mut body, &object_name, "tenant", &t.name, "tenant")?;
    let o: R = decode(Value::Object(body))?;
    invalid(o.check(&st.store)?)?;
    let key = o.key().to_string();
    st.store
        .create_provisioning(&o.clone().provisioning())
        .map_err(|e| create_error(e, R::KEY))?;
    let stored = R::find(&st.store, &t.name, &key)?.unwrap_or(o);
    Ok(created(
        location(&["tenants", &t.name, R::PATH, &key]),
        stored.answer(),
    ))
}

pub async fn put<R: Resource>(
    State(st): State<ApiState>,
    caller: Caller,
    P((tenant, key)): P<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let t = managed_tenant::<R>(&st, &caller, &tenant)?;
    let mut body = object(body)?;
    let object_name = format!("{} {key}", R::KIND);
    let existing = R::find(&st.store, &t.name, &key)?;
    R::prepare_body(
        &mut body,
        &object_name,
        existing.as_ref().filter(|e| e.tenant() == t.name),
    )?;
    fill_or_check(&mut body, &object_name, "tenant", &t.name, "tenant")?;
    fill_or_check(&mut body, &object_name, R::KEY, &key, R::KIND)?;
    let o: R = decode(Value::Object(body))?;
    if matches!(&existing, Some(e) if e.tenant() != t.name) {
        // Numbers and usernames are global; another tenant's is not ours to take over.
        return Err(
            ApiError::conflict(format!("{} \"{key}\" is already in use", R::KIND))
                .with_field(R::KEY),
        );
    }
    invalid(o.check(&st.store)?)?;
    st.store.apply_provisioning(&o.clone().provisioning())?;
    let stored = R::find(&st.store, &t.name, &key)?.unwrap_or(o).answer();
    Ok(match existing {
        Some(_) => Json(stored).into_response(),
        None => created(location(&["tenants", &t.name, R::PATH, &key]), stored),
    })
}

pub async fn delete<R: Resource>(
    State(st): State<ApiState>,
    caller: Caller,
    P((tenant, key)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let t = managed_tenant::<R>(&st, &caller, &tenant)?;
    let o = match R::find(&st.store, &t.name, &key)? {
        Some(o) if o.tenant() == t.name => o,
        _ => return Err(not_found::<R>(&key)),
    };
    if let Some(why) = o.blockers(&st.store)? {
        return Err(ApiError::conflict(why));
    }
    if !R::delete(&st.store, &t.name, &key)? {
        return Err(not_found::<R>(&key));
    }
    o.deleted(&st);
    Ok(StatusCode::NO_CONTENT)
}
