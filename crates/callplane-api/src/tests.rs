//! The router driven in-process (`tower::ServiceExt::oneshot`) against an in-memory store and a
//! fake call controller: realms and scopes, the error shape and the fields it names, object
//! life cycles, uploads, API keys, the interrupt command, and the OpenAPI document's coverage.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use callplane_store::{ApiKey, ApiRealm, Provisioning, Store};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::body::field_of;
use crate::validation::block_errors;
use crate::{app, hash_key, ApiState, CallControl, MetricsSource, OPENAPI_JSON, ROUTES};

const ADMIN: &str = "test-admin-key-0001";
const RESELLER: &str = "test-reseller-key-0001";
const CUSTOMER: &str = "test-customer-key-acme";
const CUSTOMER_BETA: &str = "test-customer-key-beta";
const ACCOUNT: &str = "test-account-key-alice";

struct NoMetrics;

impl MetricsSource for NoMetrics {
    fn encode(
        &self,
        _encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        Ok(())
    }
}

/// Calls in progress by id → (tenant, lines); records interrupts and hang-ups. It stands in
/// for the engine only to check the API's routing, realms and bodies; the end-to-end tests
/// drive real calls.
#[derive(Default)]
struct FakeCalls {
    calls: HashMap<String, (String, Vec<String>)>,
    interrupted: Mutex<Vec<String>>,
    hung_up: Mutex<Vec<(String, String)>>,
}

impl FakeCalls {
    fn info(&self, id: &str, state: &'static str) -> Option<callplane_engine::registry::CallInfo> {
        let (tenant, lines) = self.calls.get(id)?;
        Some(callplane_engine::registry::CallInfo {
            id: id.to_string(),
            sip_call_id: format!("sip-{id}"),
            tenant: tenant.clone(),
            direction: "inbound",
            from: "caller".into(),
            to: "100".into(),
            number: "100".into(),
            lines: lines.clone(),
            state,
            bridged_to: None,
            conference: None,
            recording: None,
            start_time: chrono::DateTime::from_timestamp(0, 0).unwrap_or_default(),
            answer_time: None,
            legs: Vec::new(),
            variables: Default::default(),
        })
    }
}

impl CallControl for FakeCalls {
    fn call_tenant(&self, call_id: &str) -> Option<String> {
        self.calls.get(call_id).map(|c| c.0.clone())
    }

    fn call_info(
        &self,
        call_id: &str,
    ) -> crate::BoxFuture<Option<callplane_engine::registry::CallInfo>> {
        let info = self.info(call_id, "answered");
        Box::pin(async move { info })
    }

    fn list_calls(
        &self,
        keep: crate::CallFilter,
    ) -> crate::BoxFuture<Vec<callplane_engine::registry::CallInfo>> {
        let mut ids: Vec<&String> = self.calls.keys().collect();
        ids.sort();
        let list = ids
            .into_iter()
            .filter_map(|id| self.info(id, "answered"))
            .filter(|c| keep(&c.tenant, &c.number))
            .collect();
        Box::pin(async move { list })
    }

    fn hangup(
        &self,
        call_id: &str,
        cause: callplane_engine::hangup::HangupCause,
    ) -> crate::HangupFuture {
        let answer = self.info(call_id, "ending").map(|info| {
            let mut done = self.hung_up.lock().unwrap_or_else(|e| e.into_inner());
            if done.iter().any(|(id, _)| id == call_id) {
                return Err(callplane_engine::registry::CommandRefused::Ending);
            }
            done.push((call_id.to_string(), cause.as_str().to_string()));
            Ok(info)
        });
        Box::pin(async move { answer })
    }

    fn subscribe(&self, _subscriber: Arc<dyn callplane_engine::events::EventSubscriber>) {}

    fn originate(
        &self,
        req: callplane_engine::call::Originate,
    ) -> callplane_engine::registry::CallInfo {
        let mut info = self.info("call-acme", "calling").expect("fixture call");
        info.id = "placed".into();
        info.tenant = req.tenant.name;
        info.direction = "outbound";
        info.to = req.destination;
        info.from = req.caller_id;
        info.lines = req.lines;
        info
    }

    fn is_registered(&self, user: &str) -> bool {
        user == "alice"
    }

    fn supervise_with_leg(
        &self,
        call_id: &str,
        _mode: callplane_engine::registry::SuperviseMode,
        leg_call: &str,
        _leg: u32,
    ) -> crate::HangupFuture {
        use callplane_engine::registry::CommandRefused;
        let answer = self.info(call_id, "answered").map(|info| {
            if leg_call == call_id {
                Err(CommandRefused::SupervisorInCall)
            } else {
                Ok(info)
            }
        });
        Box::pin(async move { answer })
    }

    fn attended_transfer(
        &self,
        call_id: &str,
        _from: Option<u32>,
        consult: &str,
    ) -> crate::HangupFuture {
        use callplane_engine::registry::CommandRefused;
        let answer = self.info(call_id, "answered").map(|info| {
            if consult == call_id {
                Err(CommandRefused::ConsultIsTheCall)
            } else {
                Ok(info)
            }
        });
        Box::pin(async move { answer })
    }

    fn list_conferences(
        &self,
        _keep: Box<dyn Fn(&str) -> bool + Send>,
    ) -> Vec<callplane_engine::conference::ConferenceInfo> {
        Vec::new()
    }

    fn claim(&self, call_id: &str, _by: String, _session: Option<String>) -> crate::HangupFuture {
        let answer = self.info(call_id, "ringing").map(Ok);
        Box::pin(async move { answer })
    }

    fn release_claim(&self, _call_id: &str, _session: String) {}

    fn run_blocks(
        &self,
        call_id: &str,
        _blocks: Vec<callplane_engine::blocks::Block>,
    ) -> crate::HangupFuture {
        use callplane_engine::registry::CommandRefused;
        // The fake calls are all connected: blocks other than prompts cannot run.
        let answer = self
            .info(call_id, "answered")
            .map(|_| Err(CommandRefused::BlocksWhileConnected));
        Box::pin(async move { answer })
    }

    fn control_number(&self, _tenant: &str, _number: &str) -> Box<dyn std::any::Any + Send + Sync> {
        Box::new(())
    }

    fn conference(
        &self,
        _tenant: &str,
        _name: &str,
    ) -> Option<callplane_engine::conference::ConferenceInfo> {
        None
    }

    fn locate_participant(
        &self,
        _tenant: &str,
        _name: &str,
        _leg_id: &str,
    ) -> Option<(String, u32)> {
        None
    }

    fn ended_call(&self, call_id: &str) -> Option<callplane_engine::registry::EndedCall> {
        (call_id == "call-ended").then(|| callplane_engine::registry::EndedCall {
            tenant: "acme".into(),
            number: "100".into(),
            lines: vec!["carol".into()],
        })
    }

    fn control(
        &self,
        call_id: &str,
        cmd: callplane_engine::registry::ControlCommand,
    ) -> crate::HangupFuture {
        use callplane_engine::registry::{CommandRefused, ControlCommand};
        // Leg 0 is a party and nothing else is; the fake call is held, muted and recorded
        // by nothing, so undoing any of those is refused.
        let answer = self.info(call_id, "answered").map(|info| match cmd {
            ControlCommand::Hold {
                leg: None | Some(0),
            }
            | ControlCommand::Mute {
                leg: None | Some(0),
            }
            | ControlCommand::StartRecording { .. }
            | ControlCommand::Redirect { .. } => Ok(info),
            ControlCommand::Transfer { .. } => Err(CommandRefused::NotConnected),
            ControlCommand::Supervise { .. } => Ok(info),
            ControlCommand::StopSupervising => Err(CommandRefused::NoSupervisor),
            ControlCommand::CheckTransfer { .. }
            | ControlCommand::CheckSupervise
            | ControlCommand::CheckHandOff => Ok(info),
            ControlCommand::MakeConference { .. } => Ok(info),
            ControlCommand::Remove { .. } => Err(CommandRefused::NotAParty),
            ControlCommand::Answer => Err(CommandRefused::NotClaimed),
            ControlCommand::Hold { .. } | ControlCommand::Mute { .. } => {
                Err(CommandRefused::NoSuchLeg)
            }
            ControlCommand::Unhold { .. } => Err(CommandRefused::NotHeld),
            ControlCommand::Unmute { .. } => Err(CommandRefused::NotMuted),
            ControlCommand::StopRecording => Err(CommandRefused::NotRecording),
        });
        Box::pin(async move { answer })
    }

    fn send_dtmf(&self, call_id: &str, leg: u32, _digits: String) -> crate::HangupFuture {
        let answer = self.info(call_id, "answered").map(|info| {
            if leg == 0 {
                Ok(info)
            } else {
                Err(callplane_engine::registry::CommandRefused::NoSuchLeg)
            }
        });
        Box::pin(async move { answer })
    }

    fn interrupt(&self, call_id: &str) -> bool {
        if let Ok(mut v) = self.interrupted.lock() {
            v.push(call_id.to_string());
        }
        self.calls.contains_key(call_id)
    }

    fn play_into_bridge(
        &self,
        call_id: &str,
        _blocks: Vec<callplane_engine::blocks::Block>,
    ) -> crate::calls::PlayFuture {
        // The fake's calls are never bridged.
        let known = self.calls.contains_key(call_id);
        Box::pin(async move {
            known.then_some(Err(callplane_engine::registry::PlayRefused::NotConnected))
        })
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "callplane-api-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Fixture {
    app: Router,
    store: Store,
    calls: Arc<FakeCalls>,
    dir: TempDir,
}

fn provisioning() -> Provisioning {
    serde_json::from_value(json!({
        "tenants": [
            {"name": "acme", "customerNumber": 1001, "reseller": "ws"},
            {"name": "beta", "customerNumber": 1002, "reseller": "other"},
            {"name": "gamma", "customerNumber": 1003, "reseller": "ws"}
        ],
        "routingPlans": [
            {"tenant": "acme", "name": "main", "blocks": [{"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}]},
            {"tenant": "beta", "name": "main", "blocks": [{"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}]}
        ],
        "numbers": [
            {"number": "100", "tenant": "acme", "routingPlan": "main"},
            {"number": "200", "tenant": "beta", "routingPlan": "main"}
        ],
        "sipUsers": [
            {"tenant": "acme", "username": "alice", "password": "pw-alice"},
            {"tenant": "acme", "username": "carol", "password": "pw-carol"},
            {"tenant": "beta", "username": "bob", "password": "pw-bob"}
        ]
    }))
    .expect("fixture provisioning")
}

fn key(name: &str, realm: ApiRealm) -> ApiKey {
    ApiKey {
        name: name.into(),
        realm,
        tenant: None,
        reseller: None,
        sip_user: None,
        rate_limit: None,
        created: None,
    }
}

fn fixture() -> Fixture {
    let store = Store::open_in_memory().expect("store");
    store.apply_provisioning(&provisioning()).expect("apply");
    let keys = [
        (key("admin", ApiRealm::Admin), ADMIN),
        (
            ApiKey {
                reseller: Some("ws".into()),
                ..key("ws", ApiRealm::Reseller)
            },
            RESELLER,
        ),
        (
            ApiKey {
                tenant: Some("acme".into()),
                ..key("acme-app", ApiRealm::Customer)
            },
            CUSTOMER,
        ),
        (
            ApiKey {
                tenant: Some("beta".into()),
                ..key("beta-app", ApiRealm::Customer)
            },
            CUSTOMER_BETA,
        ),
        (
            ApiKey {
                tenant: Some("acme".into()),
                sip_user: Some("alice".into()),
                ..key("alice-phone", ApiRealm::Account)
            },
            ACCOUNT,
        ),
    ];
    for (k, secret) in keys {
        store.create_api_key(&k, &hash_key(secret)).expect("key");
    }
    let calls = Arc::new(FakeCalls {
        calls: [
            ("call-acme", "acme", "alice"),
            ("call-beta", "beta", "bob"),
            ("call-carol", "acme", "carol"),
        ]
        .into_iter()
        .map(|(a, b, l)| (a.to_string(), (b.to_string(), vec![l.to_string()])))
        .collect(),
        ..FakeCalls::default()
    });
    let dir = TempDir::new();
    let state = ApiState::new(store.clone(), dir.0.clone(), calls.clone());
    Fixture {
        app: app(Arc::new(NoMetrics), state),
        store,
        calls,
        dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn expect(&self, status: u16, code: &str, field: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.code(), code, "{}", self.body);
        assert_eq!(
            self.body["error"]["field"].as_str(),
            field,
            "field in {}",
            self.body
        );
        assert!(self.body["error"]["message"].is_string(), "{}", self.body);
    }
}

impl Fixture {
    async fn raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req.body(Body::from(body)).expect("request");
        let res = self.app.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {path}: body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        match body {
            Some(b) => {
                self.raw(
                    method,
                    path,
                    key,
                    Some("application/json"),
                    b.to_string().into_bytes(),
                )
                .await
            }
            None => self.raw(method, path, key, None, Vec::new()).await,
        }
    }
}

/// A 16 kHz stereo 16-bit PCM WAV: a 1 kHz tone on the left, silence on the right.
fn wav_16k_stereo(frames: usize) -> Vec<u8> {
    let data_len = (frames * 4) as u32;
    let mut v = Vec::new();
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&16000u32.to_le_bytes());
    v.extend_from_slice(&(16000u32 * 4).to_le_bytes());
    v.extend_from_slice(&4u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        let s = (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 16000.0).sin()) as i16;
        v.extend_from_slice(&s.to_le_bytes());
        v.extend_from_slice(&0i16.to_le_bytes());
    }
    v
}

#[tokio::test]
async fn no_key_or_an_unknown_one_is_401_with_www_authenticate() {
    let f = fixture();
    for (key, what) in [(None, "none"), (Some("not-a-key-at-all"), "unknown")] {
        let a = f.call("GET", "/v1/tenants", key, None).await;
        a.expect(401, "unauthorized", None);
        assert_eq!(
            a.headers
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "{what}"
        );
    }
    let req = Request::builder()
        .uri("/v1/tenants")
        .header(header::AUTHORIZATION, format!("Basic {ADMIN}"))
        .body(Body::empty())
        .expect("request");
    let res = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // The scheme is case-insensitive.
    let req = Request::builder()
        .uri("/v1/tenants")
        .header(header::AUTHORIZATION, format!("bearer {ADMIN}"))
        .body(Body::empty())
        .expect("request");
    let res = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    // Health and metrics stay open.
    assert_eq!(
        f.call("GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let f = fixture();
    let a = f.call("GET", "/v1/nothing/here", Some(ADMIN), None).await;
    a.expect(404, "not_found", None);
    assert!(a.body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("no route")));
    f.call("PATCH", "/v1/tenants", Some(ADMIN), None)
        .await
        .expect(405, "method_not_allowed", None);
}

#[tokio::test]
async fn openapi_is_public_and_describes_every_route() {
    let f = fixture();
    let a = f.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["openapi"], "3.1.0");
    let doc: Value = serde_json::from_str(crate::openapi_document()).expect("the document is JSON");
    assert_eq!(a.body, doc);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for schema in [
        "Error",
        "Tenant",
        "Number",
        "SipUser",
        "Trunk",
        "RoutingPlan",
        "Announcement",
        "ApiKey",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
            documented.insert((method.clone(), path.clone()));
        }
    }
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes served but not in openapi.json"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "operations in openapi.json that the router does not serve"
    );
    // Every path parameter is declared on its operation.
    for (method, path) in &served {
        let op = &doc["paths"][path][method];
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["$ref"].as_str())
                    .filter_map(|r| r.rsplit('/').next())
                    .map(|n| &doc["components"]["parameters"][n])
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let used: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        assert_eq!(declared, used, "{method} {path}");
    }
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let f = fixture();
    for (method, path) in ROUTES {
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let a = f
            .raw(
                &method.to_uppercase(),
                &concrete,
                Some(ADMIN),
                None,
                Vec::new(),
            )
            .await;
        let no_route = a.status == StatusCode::METHOD_NOT_ALLOWED
            || a.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no route"));
        assert!(!no_route, "{method} {path} is not served: {}", a.body);
    }
}

#[tokio::test]
async fn customer_keys_see_their_tenant_only() {
    let f = fixture();
    let a = f.call("GET", "/v1/tenants", Some(CUSTOMER), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.as_array().map(Vec::len), Some(1), "{}", a.body);
    assert_eq!(a.body[0]["name"], "acme");
    let a = f
        .call("GET", "/v1/tenants/acme", Some(CUSTOMER), None)
        .await;
    assert_eq!(
        (a.status, &a.body["customerNumber"]),
        (StatusCode::OK, &json!(1001))
    );
    let a = f
        .call("GET", "/v1/tenants/acme/numbers/100", Some(CUSTOMER), None)
        .await;
    assert_eq!(
        (a.status, &a.body["routingPlan"]),
        (StatusCode::OK, &json!("main"))
    );

    // Another tenant's objects do not exist for this key; an absent tenant looks the same.
    for path in [
        "/v1/tenants/beta",
        "/v1/tenants/beta/numbers",
        "/v1/tenants/beta/numbers/200",
        "/v1/tenants/beta/sipusers/bob",
        "/v1/tenants/nobody/numbers",
    ] {
        f.call("GET", path, Some(CUSTOMER), None)
            .await
            .expect(404, "not_found", None);
    }
    // A number of another tenant, asked for under the key's own tenant.
    f.call("GET", "/v1/tenants/acme/numbers/200", Some(CUSTOMER), None)
        .await
        .expect(404, "not_found", None);
    // Tenants themselves are not the customer's to create, change or delete.
    f.call(
        "POST",
        "/v1/tenants",
        Some(CUSTOMER),
        Some(json!({"name": "new", "customerNumber": 5})),
    )
    .await
    .expect(403, "forbidden", None);
    f.call(
        "PUT",
        "/v1/tenants/acme",
        Some(CUSTOMER),
        Some(json!({"customerNumber": 5})),
    )
    .await
    .expect(403, "forbidden", None);
    f.call("DELETE", "/v1/tenants/acme", Some(CUSTOMER), None)
        .await
        .expect(403, "forbidden", None);
    // Writing into another tenant: 404, and nothing is stored.
    f.call(
        "POST",
        "/v1/tenants/beta/numbers",
        Some(CUSTOMER),
        Some(json!({"number": "201", "routingPlan": "main"})),
    )
    .await
    .expect(404, "not_found", None);
    assert_eq!(f.store.get_number("201").ok().flatten(), None);
}

#[tokio::test]
async fn account_keys_read_their_own_sip_user_only() {
    let f = fixture();
    let a = f
        .call(
            "GET",
            "/v1/tenants/acme/sipusers/alice",
            Some(ACCOUNT),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["username"], "alice");
    for (method, path) in [
        ("GET", "/v1/tenants/acme/sipusers/carol"),
        ("GET", "/v1/tenants/beta/sipusers/bob"),
        ("GET", "/v1/tenants/acme/sipusers"),
        ("GET", "/v1/tenants/acme/numbers"),
        ("GET", "/v1/tenants/acme/numbers/100"),
        ("GET", "/v1/tenants"),
        ("GET", "/v1/tenants/acme"),
        ("DELETE", "/v1/tenants/acme/sipusers/alice"),
        ("GET", "/v1/apikeys"),
    ] {
        f.call(method, path, Some(ACCOUNT), None)
            .await
            .expect(403, "forbidden", None);
    }
    f.call(
        "PUT",
        "/v1/tenants/acme/sipusers/alice",
        Some(ACCOUNT),
        Some(json!({"password": "new"})),
    )
    .await
    .expect(403, "forbidden", None);
}

#[tokio::test]
async fn reseller_keys_manage_their_own_tenants() {
    let f = fixture();
    let a = f.call("GET", "/v1/tenants", Some(RESELLER), None).await;
    let names: Vec<&str> = a
        .body
        .as_array()
        .map(|v| v.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["acme", "gamma"]);
    f.call("GET", "/v1/tenants/beta", Some(RESELLER), None)
        .await
        .expect(404, "not_found", None);
    f.call("DELETE", "/v1/tenants/beta", Some(RESELLER), None)
        .await
        .expect(404, "not_found", None);
    f.call(
        "PUT",
        "/v1/tenants/beta",
        Some(RESELLER),
        Some(json!({"customerNumber": 1002})),
    )
    .await
    .expect(404, "not_found", None);

    // A new tenant is the reseller's, whether or not the body says so.
    let a = f
        .call(
            "POST",
            "/v1/tenants",
            Some(RESELLER),
            Some(json!({"name": "delta", "customerNumber": 1004})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["reseller"], "ws");
    assert_eq!(
        a.headers.get(header::LOCATION).map(|v| v.as_bytes()),
        Some(&b"/v1/tenants/delta"[..])
    );
    f.call(
        "POST",
        "/v1/tenants",
        Some(RESELLER),
        Some(json!({"name": "epsilon", "customerNumber": 1005, "reseller": "other"})),
    )
    .await
    .expect(403, "forbidden", Some("reseller"));
    // Its tenant's objects are its to manage.
    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme/sipusers/dave",
            Some(RESELLER),
            Some(json!({"password": "pw"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["tenant"], "acme");
    // An emptied tenant can be deleted.
    let a = f
        .call("DELETE", "/v1/tenants/delta", Some(RESELLER), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn malformed_bodies_are_400_naming_the_field() {
    let f = fixture();
    let post = |body: &'static str| {
        f.raw(
            "POST",
            "/v1/tenants/acme/numbers",
            Some(CUSTOMER),
            Some("application/json"),
            body.as_bytes().to_vec(),
        )
    };
    let a = post("{\"number\": \"101\",").await;
    a.expect(400, "invalid_json", None);
    assert!(a.body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("line 1")));
    post("[1, 2]").await.expect(400, "invalid_json", None);
    post("{\"number\": \"101\", \"routingPlan\": \"main\", \"colour\": \"red\"}")
        .await
        .expect(400, "invalid_json", Some("colour"));
    post("{\"number\": \"101\"}")
        .await
        .expect(400, "invalid_json", Some("routingPlan"));
    post("{\"number\": 101, \"routingPlan\": \"main\"}")
        .await
        .expect(400, "invalid_json", Some("number"));
    let a = f
        .raw(
            "POST",
            "/v1/tenants/acme/trunks",
            Some(CUSTOMER),
            Some("application/json"),
            br#"{"name": "t", "host": "h", "transport": "sctp"}"#.to_vec(),
        )
        .await;
    a.expect(400, "invalid_json", Some("transport"));
    let a = f
        .raw(
            "POST",
            "/v1/tenants/acme/trunks",
            Some(CUSTOMER),
            Some("application/json"),
            br#"{"name": "t", "host": "h", "inboundAddresses": ["10.0.0.1", 7]}"#.to_vec(),
        )
        .await;
    a.expect(400, "invalid_json", Some("inboundAddresses[1]"));

    // Content type and size.
    f.raw(
        "POST",
        "/v1/tenants/acme/numbers",
        Some(CUSTOMER),
        Some("text/plain"),
        b"{}".to_vec(),
    )
    .await
    .expect(415, "unsupported_media_type", None);
    f.raw(
        "POST",
        "/v1/tenants/acme/numbers",
        Some(CUSTOMER),
        None,
        b"{}".to_vec(),
    )
    .await
    .expect(415, "unsupported_media_type", None);
    let a = f
        .raw(
            "POST",
            "/v1/tenants/acme/numbers",
            Some(CUSTOMER),
            Some("application/json; charset=utf-8"),
            br#"{"number": "101", "routingPlan": "main"}"#.to_vec(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let big = format!(
        "{{\"number\": \"102\", \"routingPlan\": \"{}\"}}",
        "x".repeat(3 << 19)
    );
    f.raw(
        "POST",
        "/v1/tenants/acme/numbers",
        Some(CUSTOMER),
        Some("application/json"),
        big.into_bytes(),
    )
    .await
    .expect(413, "payload_too_large", Some("body"));
    // Bad percent-encoding in the path.
    f.call("GET", "/v1/tenants/%FF/numbers", Some(ADMIN), None)
        .await
        .expect(400, "invalid_path", None);
}

#[tokio::test]
async fn out_of_range_values_are_validation_errors_of_the_models_own_checks() {
    let f = fixture();
    let a = f
        .call(
            "POST",
            "/v1/tenants/acme/numbers",
            Some(CUSTOMER),
            Some(json!({"number": "12ab", "routingPlan": "main"})),
        )
        .await;
    a.expect(400, "validation_failed", Some("number"));
    assert_eq!(a.body["error"]["errors"][0]["object"], "number 12ab");
    f.call(
        "POST",
        "/v1/tenants/acme/numbers",
        Some(CUSTOMER),
        Some(json!({"number": "101", "routingPlan": "nope"})),
    )
    .await
    .expect(400, "validation_failed", Some("routingPlan"));
    // A plan of another tenant with that name does not count.
    f.call(
        "PUT",
        "/v1/tenants/gamma/numbers/300",
        Some(ADMIN),
        Some(json!({"routingPlan": "main"})),
    )
    .await
    .expect(400, "validation_failed", Some("routingPlan"));

    let a = f
        .call(
            "POST",
            "/v1/tenants/acme/routingplans",
            Some(CUSTOMER),
            Some(json!({"name": "ivr", "blocks": [
                {"blockType": "ANNOUNCEMENT", "announcementName": "welcome"},
                {"blockType": "COLLECT_DIGITS", "announcementName": "a", "variableName": "pin",
                 "minDigits": 3, "maxDigits": 40},
                "oops"
            ]})),
        )
        .await;
    a.expect(400, "validation_failed", Some("blocks[1].maxDigits"));
    let fields: Vec<&str> = a.body["error"]["errors"]
        .as_array()
        .map(|v| v.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    assert!(fields.contains(&"blocks[2]"), "{fields:?}");
    assert_eq!(f.store.get_routing_plan("acme", "ivr").ok().flatten(), None);

    f.call(
        "POST",
        "/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "zeta", "customerNumber": 0})),
    )
    .await
    .expect(400, "validation_failed", Some("customerNumber"));
    f.call(
        "POST",
        "/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "zeta", "customerNumber": 9, "defaultTrunk": "none"})),
    )
    .await
    .expect(400, "validation_failed", Some("defaultTrunk"));
    f.call(
        "POST",
        "/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": "zeta", "customerNumber": 1001})),
    )
    .await
    .expect(409, "conflict", Some("customerNumber"));
    f.call(
        "POST",
        "/v1/tenants/acme/sipusers",
        Some(CUSTOMER),
        Some(json!({"username": "bad user", "password": ""})),
    )
    .await
    .expect(400, "validation_failed", Some("username"));
    f.call(
        "POST",
        "/v1/tenants/acme/trunks",
        Some(CUSTOMER),
        Some(json!({"name": "t", "host": "h", "port": 0})),
    )
    .await
    .expect(400, "validation_failed", Some("port"));
}

#[tokio::test]
async fn the_url_decides_tenant_and_key() {
    let f = fixture();
    f.call(
        "POST",
        "/v1/tenants/acme/numbers",
        Some(CUSTOMER),
        Some(json!({"number": "101", "tenant": "beta", "routingPlan": "main"})),
    )
    .await
    .expect(400, "validation_failed", Some("tenant"));
    f.call(
        "PUT",
        "/v1/tenants/acme/numbers/101",
        Some(CUSTOMER),
        Some(json!({"number": "102", "routingPlan": "main"})),
    )
    .await
    .expect(400, "validation_failed", Some("number"));
    f.call(
        "PUT",
        "/v1/tenants/acme",
        Some(ADMIN),
        Some(json!({"name": "other", "customerNumber": 1001})),
    )
    .await
    .expect(400, "validation_failed", Some("name"));
    // Given and equal, or left out: both fine.
    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme/numbers/101",
            Some(CUSTOMER),
            Some(json!({"number": "101", "tenant": "acme", "routingPlan": "main"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"number": "101", "tenant": "acme", "routingPlan": "main", "callstateInfoUrl": null})
    );
}

#[tokio::test]
async fn objects_are_created_replaced_listed_and_deleted() {
    let f = fixture();
    let a = f
        .call(
            "POST",
            "/v1/tenants/acme/numbers",
            Some(CUSTOMER),
            Some(json!({"number": "+4922155400300", "routingPlan": "main"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(
        a.headers.get(header::LOCATION).map(|v| v.as_bytes()),
        Some(&b"/v1/tenants/acme/numbers/%2B4922155400300"[..])
    );
    // Visible to the next call at once: the store is the only copy.
    let stored = f.store.find_number("+4922155400300").ok().flatten();
    assert_eq!(
        stored.map(|(n, t)| (n.routing_plan, t.name)),
        Some(("main".into(), "acme".into()))
    );
    f.call(
        "POST",
        "/v1/tenants/acme/numbers",
        Some(CUSTOMER),
        Some(json!({"number": "+4922155400300", "routingPlan": "main"})),
    )
    .await
    .expect(409, "conflict", Some("number"));
    // Numbers are global: another tenant's number is not taken over by PUT or POST.
    f.call(
        "PUT",
        "/v1/tenants/acme/numbers/200",
        Some(CUSTOMER),
        Some(json!({"routingPlan": "main"})),
    )
    .await
    .expect(409, "conflict", Some("number"));
    assert_eq!(
        f.store.get_number("200").ok().flatten().map(|n| n.tenant),
        Some("beta".to_string())
    );

    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme/routingplans/second",
            Some(CUSTOMER),
            Some(json!({"blocks": [{"blockType": "HANGUP", "hangupCause": "USER_BUSY"}]})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme/numbers/+4922155400300",
            Some(CUSTOMER),
            Some(json!({"routingPlan": "second", "callstateInfoUrl": "https://acme.example/cs"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["routingPlan"], "second");
    let a = f
        .call("GET", "/v1/tenants/acme/numbers", Some(CUSTOMER), None)
        .await;
    let numbers: Vec<&str> = a
        .body
        .as_array()
        .map(|v| v.iter().filter_map(|n| n["number"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(numbers, ["+4922155400300", "100"]);

    // A plan in use, a tenant that owns objects: 409 naming why.
    let a = f
        .call(
            "DELETE",
            "/v1/tenants/acme/routingplans/second",
            Some(CUSTOMER),
            None,
        )
        .await;
    a.expect(409, "conflict", None);
    assert!(a.body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("+4922155400300")));
    let a = f
        .call("DELETE", "/v1/tenants/acme", Some(ADMIN), None)
        .await;
    a.expect(409, "conflict", None);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 numbers")),
        "{}",
        a.body
    );

    let a = f
        .call(
            "DELETE",
            "/v1/tenants/acme/numbers/%2B4922155400300",
            Some(CUSTOMER),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    f.call(
        "DELETE",
        "/v1/tenants/acme/numbers/%2B4922155400300",
        Some(CUSTOMER),
        None,
    )
    .await
    .expect(404, "not_found", None);
    let a = f
        .call(
            "DELETE",
            "/v1/tenants/acme/routingplans/second",
            Some(CUSTOMER),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);

    // A trunk that is the tenant's default cannot go.
    let a = f
        .call(
            "POST",
            "/v1/tenants/acme/trunks",
            Some(CUSTOMER),
            Some(
                json!({"name": "carrier", "host": "192.0.2.1", "inboundAddresses": ["192.0.2.1"]}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(
        (a.body["port"].as_u64(), a.body["transport"].as_str()),
        (Some(5060), Some("udp"))
    );
    f.call(
        "POST",
        "/v1/tenants/beta/trunks",
        Some(CUSTOMER_BETA),
        Some(json!({"name": "other", "host": "h", "inboundAddresses": ["192.0.2.1"]})),
    )
    .await
    .expect(400, "validation_failed", Some("inboundAddresses[0]"));
    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme",
            Some(ADMIN),
            Some(json!({"customerNumber": 1001, "reseller": "ws", "defaultTrunk": "carrier"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    f.call(
        "DELETE",
        "/v1/tenants/acme/trunks/carrier",
        Some(CUSTOMER),
        None,
    )
    .await
    .expect(409, "conflict", None);
}

#[tokio::test]
async fn announcements_are_uploaded_converted_and_deleted() {
    let f = fixture();
    let wav = wav_16k_stereo(16000);
    let a = f
        .raw(
            "PUT",
            "/v1/tenants/acme/announcements/greeting",
            Some(CUSTOMER),
            Some("audio/wav"),
            wav.clone(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let file = PathBuf::from(a.body["file"].as_str().unwrap_or_default());
    assert_eq!(
        file,
        f.dir
            .0
            .join("announcements")
            .join("acme")
            .join("greeting.wav")
    );
    let stored = std::fs::read(&file).expect("stored file");
    // 8 kHz, mono, 16-bit PCM; one second of audio.
    assert_eq!(&stored[0..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([stored[20], stored[21]]), 1);
    assert_eq!(u16::from_le_bytes([stored[22], stored[23]]), 1);
    assert_eq!(
        u32::from_le_bytes([stored[24], stored[25], stored[26], stored[27]]),
        8000
    );
    assert_eq!(u16::from_le_bytes([stored[34], stored[35]]), 16);
    let samples = (stored.len() - 44) / 2;
    assert!((7990..=8010).contains(&samples), "{samples} samples");
    let a = f
        .call(
            "GET",
            "/v1/tenants/acme/announcements/greeting",
            Some(CUSTOMER),
            None,
        )
        .await;
    assert_eq!(
        a.body["file"].as_str(),
        Some(file.to_string_lossy().as_ref())
    );

    // Replacing is 200; no type is fine, a JSON type is not; garbage is a 400 on `body`.
    let a = f
        .raw(
            "PUT",
            "/v1/tenants/acme/announcements/greeting",
            Some(CUSTOMER),
            None,
            wav_16k_stereo(8000),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    f.raw(
        "PUT",
        "/v1/tenants/acme/announcements/greeting",
        Some(CUSTOMER),
        Some("application/json"),
        wav.clone(),
    )
    .await
    .expect(415, "unsupported_media_type", None);
    f.raw(
        "PUT",
        "/v1/tenants/acme/announcements/other",
        Some(CUSTOMER),
        Some("audio/wav"),
        b"this is not a wav file".to_vec(),
    )
    .await
    .expect(400, "validation_failed", Some("body"));
    f.raw(
        "PUT",
        "/v1/tenants/acme/announcements/huge",
        Some(CUSTOMER),
        Some("audio/wav"),
        vec![0u8; crate::WAV_BODY_LIMIT + 1],
    )
    .await
    .expect(413, "payload_too_large", Some("body"));
    f.raw(
        "PUT",
        "/v1/tenants/beta/announcements/greeting",
        Some(CUSTOMER),
        Some("audio/wav"),
        wav.clone(),
    )
    .await
    .expect(404, "not_found", None);
    // A name cannot reach outside the tenant's folder.
    let a = f
        .raw(
            "PUT",
            "/v1/tenants/acme/announcements/..%2F..%2Fescape",
            Some(CUSTOMER),
            Some("audio/wav"),
            wav,
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let escaped = PathBuf::from(a.body["file"].as_str().unwrap_or_default());
    assert_eq!(
        escaped.parent(),
        Some(f.dir.0.join("announcements").join("acme").as_path())
    );

    let a = f
        .call(
            "GET",
            "/v1/tenants/acme/announcements",
            Some(CUSTOMER),
            None,
        )
        .await;
    assert_eq!(a.body.as_array().map(Vec::len), Some(2), "{}", a.body);
    let a = f
        .call(
            "DELETE",
            "/v1/tenants/acme/announcements/greeting",
            Some(CUSTOMER),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(
        !file.exists(),
        "the uploaded file is removed with the announcement"
    );
}

#[tokio::test]
async fn api_keys_are_created_within_realm_and_scope_and_shown_once() {
    let f = fixture();
    let a = f
        .call(
            "POST",
            "/v1/apikeys",
            Some(CUSTOMER),
            Some(json!({"name": "carol-phone", "realm": "account", "sipUser": "carol"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let secret = a.body["key"].as_str().unwrap_or_default().to_string();
    assert!(
        secret.len() == 43
            && secret.starts_with("cp_")
            && secret[3..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{secret}"
    );
    assert_eq!(a.body["tenant"], "acme");
    assert_eq!(a.body["realm"], "account");
    // The new key works, and nothing but its hash was stored.
    let me = f
        .call(
            "GET",
            "/v1/tenants/acme/sipusers/carol",
            Some(&secret),
            None,
        )
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    let listed = f.call("GET", "/v1/apikeys", Some(CUSTOMER), None).await;
    let text = listed.body.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(&hash_key(&secret)),
        "{text}"
    );
    let names: Vec<&str> = listed
        .body
        .as_array()
        .map(|v| v.iter().filter_map(|k| k["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["acme-app", "alice-phone", "carol-phone"]);

    // Above the caller's realm, or outside its scope.
    f.call(
        "POST",
        "/v1/apikeys",
        Some(CUSTOMER),
        Some(json!({"name": "x", "realm": "admin"})),
    )
    .await
    .expect(403, "forbidden", Some("realm"));
    f.call(
        "POST",
        "/v1/apikeys",
        Some(CUSTOMER),
        Some(json!({"name": "x", "realm": "customer", "tenant": "beta"})),
    )
    .await
    .expect(400, "validation_failed", Some("tenant"));
    f.call(
        "POST",
        "/v1/apikeys",
        Some(CUSTOMER),
        Some(json!({"name": "x", "realm": "account", "sipUser": "bob"})),
    )
    .await
    .expect(400, "validation_failed", Some("sipUser"));
    f.call(
        "POST",
        "/v1/apikeys",
        Some(RESELLER),
        Some(json!({"name": "x", "realm": "reseller", "reseller": "other"})),
    )
    .await
    .expect(403, "forbidden", Some("reseller"));
    f.call(
        "POST",
        "/v1/apikeys",
        Some(ADMIN),
        Some(json!({"name": "x", "realm": "customer"})),
    )
    .await
    .expect(400, "validation_failed", Some("tenant"));
    f.call(
        "POST",
        "/v1/apikeys",
        Some(ADMIN),
        Some(json!({"name": "acme-app", "realm": "admin"})),
    )
    .await
    .expect(409, "conflict", Some("name"));

    // A reseller sees its own keys and those of its tenants.
    let a = f
        .call(
            "POST",
            "/v1/apikeys",
            Some(RESELLER),
            Some(json!({"name": "gamma-app", "realm": "customer", "tenant": "gamma"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let listed = f.call("GET", "/v1/apikeys", Some(RESELLER), None).await;
    let names: Vec<&str> = listed
        .body
        .as_array()
        .map(|v| v.iter().filter_map(|k| k["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        ["acme-app", "alice-phone", "carol-phone", "gamma-app", "ws"]
    );
    f.call("DELETE", "/v1/apikeys/beta-app", Some(RESELLER), None)
        .await
        .expect(404, "not_found", None);
    f.call("DELETE", "/v1/apikeys/admin", Some(CUSTOMER), None)
        .await
        .expect(404, "not_found", None);
    let a = f
        .call("DELETE", "/v1/apikeys/carol-phone", Some(CUSTOMER), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    f.call(
        "GET",
        "/v1/tenants/acme/sipusers/carol",
        Some(&secret),
        None,
    )
    .await
    .expect(401, "unauthorized", None);
}

#[tokio::test]
async fn interrupt_reaches_calls_in_scope_only() {
    let f = fixture();
    let a = f
        .call(
            "POST",
            "/v1/calls/call-acme/interrupt",
            Some(CUSTOMER),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.body, json!({"callId": "call-acme", "interrupted": true}));
    f.call(
        "POST",
        "/v1/calls/call-beta/interrupt",
        Some(CUSTOMER),
        None,
    )
    .await
    .expect(404, "not_found", None);
    f.call(
        "POST",
        "/v1/calls/no-such-call/interrupt",
        Some(ADMIN),
        None,
    )
    .await
    .expect(404, "not_found", None);
    f.call(
        "POST",
        "/v1/calls/call-beta/interrupt",
        Some(RESELLER),
        None,
    )
    .await
    .expect(404, "not_found", None);
    let a = f
        .call(
            "POST",
            "/v1/calls/call-acme/interrupt",
            Some(RESELLER),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let a = f
        .call("POST", "/v1/calls/call-beta/interrupt", Some(ADMIN), None)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let done = f
        .calls
        .interrupted
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    assert_eq!(done, ["call-acme", "call-acme", "call-beta"]);
}

#[tokio::test]
async fn run_blocks_checks_scope_body_and_blocks_before_the_call() {
    let f = fixture();
    let chime = || json!({"blocks": [{"blockType": "ANNOUNCEMENT", "announcementName": "chime"}]});
    let path = "/v1/calls/call-acme/blocks";
    f.call("POST", path, None, Some(chime()))
        .await
        .expect(401, "unauthorized", None);
    // An account key reaches the calls on its own line only.
    f.call(
        "POST",
        "/v1/calls/call-carol/blocks",
        Some(ACCOUNT),
        Some(chime()),
    )
    .await
    .expect(404, "not_found", None);
    // Out of scope or unknown: 404, as if it did not exist.
    f.call(
        "POST",
        "/v1/calls/call-beta/blocks",
        Some(CUSTOMER),
        Some(chime()),
    )
    .await
    .expect(404, "not_found", None);
    f.call("POST", "/v1/calls/nope/blocks", Some(ADMIN), Some(chime()))
        .await
        .expect(404, "not_found", None);
    // The body: an object with a non-empty `blocks` list of valid blocks.
    f.call("POST", path, Some(CUSTOMER), Some(json!({"blocks": []})))
        .await
        .expect(400, "validation_failed", Some("blocks"));
    f.call("POST", path, Some(CUSTOMER), Some(json!({})))
        .await
        .expect(400, "invalid_json", Some("blocks"));
    f.call(
        "POST",
        path,
        Some(CUSTOMER),
        Some(json!({"blocks": [], "extra": 1})),
    )
    .await
    .expect(400, "invalid_json", Some("extra"));
    f.call(
        "POST",
        path,
        Some(CUSTOMER),
        Some(json!({"blocks": [{"blockType": "ANNOUNCEMENT"}]})),
    )
    .await
    .expect(400, "validation_failed", Some("blocks[0].announcementName"));
    // Valid, but not a block that can run on a call yet.
    f.call(
        "POST",
        path,
        Some(CUSTOMER),
        Some(json!({"blocks": [
            {"blockType": "SAY", "text": "hello"},
            {"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}
        ]})),
    )
    .await
    .expect(409, "conflict", Some("blocks[1].blockType"));
    // The fake's calls have no connected callee yet (they are dialling one): nothing to
    // mix prompts into, and blocks do not run on a call that dials.
    f.call("POST", path, Some(CUSTOMER), Some(chime()))
        .await
        .expect(409, "conflict", Some("state"));
}

#[test]
fn serde_messages_map_to_fields() {
    assert_eq!(
        field_of(".", "unknown field `colour`, expected one of `a`, `b`"),
        Some("colour".into())
    );
    assert_eq!(
        field_of(".", "missing field `routingPlan`"),
        Some("routingPlan".into())
    );
    assert_eq!(
        field_of("destinations[0]", "missing field `timeout`"),
        Some("destinations[0].timeout".into())
    );
    assert_eq!(
        field_of("number", "invalid type: integer `5`, expected a string"),
        Some("number".into())
    );
    assert_eq!(field_of(".", "expected value"), None);
}

#[test]
fn block_errors_are_named_by_index_and_field() {
    let blocks = vec![
        json!({"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}),
        json!({"blockType": "COLLECT_DIGITS", "announcementName": "a", "variableName": "pin",
               "minDigits": 3, "maxDigits": 40}),
        json!(7),
    ];
    let errors = block_errors("routing plan t/p", &blocks);
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"blocks[1].maxDigits"), "{fields:?}");
    assert!(fields.contains(&"blocks[2]"), "{fields:?}");
    assert!(errors.iter().all(|e| e.object == "routing plan t/p"));
    assert!(block_errors("x", &blocks[..1]).is_empty());
}

/// Every string anywhere in an answer, to look for a secret whatever field it hides in.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn secrets_are_write_only() {
    let f = fixture();
    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme",
            Some(ADMIN),
            Some(json!({"customerNumber": 1001, "reseller": "ws", "signingSecret": "tenant-hmac-secret"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["signingSecretSet"], true);
    let a = f
        .call(
            "POST",
            "/v1/tenants/acme/trunks",
            Some(CUSTOMER),
            Some(json!({"name": "carrier", "host": "sip.example", "username": "u", "password": "trunk-pw-secret"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["passwordSet"], true);
    let a = f
        .call(
            "POST",
            "/v1/tenants/acme/sipusers",
            Some(CUSTOMER),
            Some(json!({"username": "dave", "password": "sip-pw-secret"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["passwordSet"], true);

    let secrets = [
        "tenant-hmac-secret",
        "trunk-pw-secret",
        "sip-pw-secret",
        "pw-alice",
    ];
    for (key, path) in [
        (RESELLER, "/v1/tenants"),
        (CUSTOMER, "/v1/tenants/acme"),
        (CUSTOMER, "/v1/tenants/acme/trunks"),
        (CUSTOMER, "/v1/tenants/acme/trunks/carrier"),
        (CUSTOMER, "/v1/tenants/acme/sipusers"),
        (CUSTOMER, "/v1/tenants/acme/sipusers/dave"),
        (ACCOUNT, "/v1/tenants/acme/sipusers/alice"),
        (ADMIN, "/v1/tenants/acme/sipusers/alice"),
    ] {
        let a = f.call("GET", path, Some(key), None).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        let mut found = Vec::new();
        strings(&a.body, &mut found);
        for s in secrets {
            assert!(
                !found.iter().any(|x| x.contains(s)),
                "{path} gives {s} away: {}",
                a.body
            );
        }
        let text = a.body.to_string();
        assert!(
            !text.contains("\"password\"") && !text.contains("\"signingSecret\""),
            "{text}"
        );
    }
    let t = f.call("GET", "/v1/tenants/beta", Some(ADMIN), None).await;
    assert_eq!(t.body["signingSecretSet"], false);

    // A replace that leaves the secret out keeps it; null removes it; the answer's
    // output-only field may be sent back as it came.
    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme/trunks/carrier",
            Some(CUSTOMER),
            Some(json!({"host": "sip2.example", "passwordSet": true})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["passwordSet"], true);
    let stored = f.store.get_trunk("acme", "carrier").unwrap().unwrap();
    assert_eq!(stored.password.as_deref(), Some("trunk-pw-secret"));
    assert_eq!(stored.host, "sip2.example");
    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme/trunks/carrier",
            Some(CUSTOMER),
            Some(json!({"host": "sip2.example", "password": null})),
        )
        .await;
    assert_eq!(a.body["passwordSet"], false, "{}", a.body);
    assert_eq!(
        f.store
            .get_trunk("acme", "carrier")
            .unwrap()
            .unwrap()
            .password,
        None
    );

    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme",
            Some(ADMIN),
            Some(json!({"customerNumber": 1001, "reseller": "ws", "signingSecretSet": true})),
        )
        .await;
    assert_eq!(a.body["signingSecretSet"], true, "{}", a.body);
    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme",
            Some(ADMIN),
            Some(json!({"customerNumber": 1001, "reseller": "ws", "signingSecret": null})),
        )
        .await;
    assert_eq!(a.body["signingSecretSet"], false, "{}", a.body);

    // A SIP user's password left out keeps the HA1 values; null is refused; a new user
    // needs one.
    let before = f.store.sip_user_credentials("dave").unwrap().unwrap();
    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme/sipusers/dave",
            Some(CUSTOMER),
            Some(json!({"displayName": "Dave"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(f.store.sip_user_credentials("dave").unwrap(), Some(before));
    f.call(
        "PUT",
        "/v1/tenants/acme/sipusers/dave",
        Some(CUSTOMER),
        Some(json!({"password": null})),
    )
    .await
    .expect(400, "validation_failed", Some("password"));
    let a = f
        .call(
            "PUT",
            "/v1/tenants/acme/sipusers/erin",
            Some(CUSTOMER),
            Some(json!({"displayName": "Erin"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(a.body["error"]["field"], "password", "{}", a.body);
}

#[tokio::test]
async fn api_keys_may_not_delete_themselves_nor_the_last_admin() {
    let f = fixture();
    let a = f
        .call("DELETE", "/v1/apikeys/acme-app", Some(CUSTOMER), None)
        .await;
    a.expect(409, "conflict", None);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("may not delete itself"),
        "{}",
        a.body
    );
    assert!(f.store.get_api_key("acme-app").unwrap().is_some());
    // The only admin key: refused as the last one.
    let a = f
        .call("DELETE", "/v1/apikeys/admin", Some(ADMIN), None)
        .await;
    a.expect(409, "conflict", None);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("last key of realm admin"),
        "{}",
        a.body
    );
    // With a second admin key, either may delete the other, but not the last one left.
    let a = f
        .call(
            "POST",
            "/v1/apikeys",
            Some(ADMIN),
            Some(json!({"name": "admin2", "realm": "admin"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let second = a.body["key"].as_str().unwrap_or_default().to_string();
    let a = f
        .call("DELETE", "/v1/apikeys/admin", Some(&second), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    let a = f
        .call("DELETE", "/v1/apikeys/admin2", Some(&second), None)
        .await;
    a.expect(409, "conflict", None);
    // The store refuses the last admin key on its own too (whoever asks).
    assert!(matches!(
        f.store.delete_api_key("admin2"),
        Err(callplane_store::StoreError::Refused(_))
    ));
    // Another key of the scope may delete a customer key.
    let a = f
        .call("DELETE", "/v1/apikeys/acme-app", Some(RESELLER), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
}

fn ids(a: &Answer) -> Vec<String> {
    a.body
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn calls_are_listed_and_read_within_the_key_realm() {
    let f = fixture();
    let all = f.call("GET", "/v1/calls", Some(ADMIN), None).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(ids(&all), ["call-acme", "call-beta", "call-carol"]);
    let acme = f.call("GET", "/v1/calls", Some(CUSTOMER), None).await;
    assert_eq!(ids(&acme), ["call-acme", "call-carol"]);
    let reseller = f.call("GET", "/v1/calls", Some(RESELLER), None).await;
    assert_eq!(ids(&reseller), ["call-acme", "call-carol"]);
    // An account key sees the calls on its own line only.
    let alice = f.call("GET", "/v1/calls", Some(ACCOUNT), None).await;
    assert_eq!(ids(&alice), ["call-acme"]);
    let line = f
        .call("GET", "/v1/calls?line=carol", Some(CUSTOMER), None)
        .await;
    assert_eq!(ids(&line), ["call-carol"]);
    let none = f
        .call("GET", "/v1/calls?number=999", Some(ADMIN), None)
        .await;
    assert_eq!(ids(&none), Vec::<String>::new());
    f.call("GET", "/v1/calls?colour=red", Some(ADMIN), None)
        .await
        .expect(400, "validation_failed", Some("colour"));
    f.call("GET", "/v1/calls", None, None)
        .await
        .expect(401, "unauthorized", None);

    let one = f
        .call("GET", "/v1/calls/call-acme", Some(ACCOUNT), None)
        .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    assert_eq!(one.body["tenant"], "acme");
    assert_eq!(one.body["lines"], json!(["alice"]));
    for (path, key) in [
        ("/v1/calls/call-carol", ACCOUNT),
        ("/v1/calls/call-beta", CUSTOMER),
        ("/v1/calls/call-beta", RESELLER),
        ("/v1/calls/nothing", ADMIN),
    ] {
        f.call("GET", path, Some(key), None)
            .await
            .expect(404, "not_found", None);
    }
}

#[tokio::test]
async fn hangup_takes_a_cause_checks_it_and_refuses_a_call_already_ending() {
    let f = fixture();
    let path = "/v1/calls/call-acme/hangup";
    f.call(
        "POST",
        path,
        Some(CUSTOMER),
        Some(json!({"hangupCause": "BUSY"})),
    )
    .await
    .expect(400, "validation_failed", Some("hangupCause"));
    f.call(
        "POST",
        path,
        Some(CUSTOMER),
        Some(json!({"cause": "USER_BUSY"})),
    )
    .await
    .expect(400, "invalid_json", Some("cause"));
    f.call(
        "POST",
        path,
        Some(CUSTOMER),
        Some(json!({"hangupCause": 17})),
    )
    .await
    .expect(400, "invalid_json", Some("hangupCause"));
    f.call(
        "POST",
        "/v1/calls/call-acme/hangup",
        Some(CUSTOMER_BETA),
        None,
    )
    .await
    .expect(404, "not_found", None);
    let a = f
        .call(
            "POST",
            path,
            Some(CUSTOMER),
            Some(json!({"hangupCause": "USER_BUSY"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["state"], "ending");
    f.call("POST", path, Some(CUSTOMER), None)
        .await
        .expect(409, "conflict", Some("state"));
    // No body at all: NORMAL_CLEARING.
    let b = f
        .call("POST", "/v1/calls/call-carol/hangup", Some(ADMIN), None)
        .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    let done = f
        .calls
        .hung_up
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    assert_eq!(
        done,
        [
            ("call-acme".to_string(), "USER_BUSY".to_string()),
            ("call-carol".to_string(), "NORMAL_CLEARING".to_string())
        ]
    );
}

#[tokio::test]
async fn an_account_key_commands_the_calls_on_its_line_only() {
    let f = fixture();
    let a = f
        .call("POST", "/v1/calls/call-acme/interrupt", Some(ACCOUNT), None)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    f.call(
        "POST",
        "/v1/calls/call-carol/interrupt",
        Some(ACCOUNT),
        None,
    )
    .await
    .expect(404, "not_found", None);
    f.call("POST", "/v1/calls/call-carol/hangup", Some(ACCOUNT), None)
        .await
        .expect(404, "not_found", None);
}

#[tokio::test]
async fn placing_a_call_checks_its_fields_realm_and_destination() {
    let f = fixture();
    let to_alice = json!({"destinationType": "SIP_USER", "destination": "alice"});
    let hangup = json!([{"blockType": "HANGUP", "hangupCause": "NORMAL_CLEARING"}]);
    // A customer key places calls in its tenant.
    let a = f
        .call(
            "POST",
            "/v1/calls",
            Some(CUSTOMER),
            Some(json!({"to": to_alice, "callerId": "+4922100", "blocks": hangup})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.headers["location"], "/v1/calls/placed");
    assert_eq!(a.body["direction"], "outbound");
    assert_eq!(a.body["to"], "alice");
    // An account key: for its own SIP user only, which is also the default caller ID.
    let b = f
        .call(
            "POST",
            "/v1/calls",
            Some(ACCOUNT),
            Some(json!({"to": to_alice, "plan": "main"})),
        )
        .await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    assert_eq!(b.body["from"], "alice");
    assert_eq!(b.body["lines"], json!(["alice"]));
    f.call(
        "POST",
        "/v1/calls",
        Some(ACCOUNT),
        Some(json!({"to": to_alice, "from": "carol", "plan": "main"})),
    )
    .await
    .expect(403, "forbidden", Some("from"));
    // Admin keys name the tenant.
    f.call(
        "POST",
        "/v1/calls",
        Some(ADMIN),
        Some(json!({"to": to_alice, "callerId": "1", "blocks": hangup})),
    )
    .await
    .expect(400, "validation_failed", Some("tenant"));
    f.call(
        "POST",
        "/v1/calls",
        Some(CUSTOMER),
        Some(json!({"tenant": "beta", "to": to_alice, "callerId": "1", "blocks": hangup})),
    )
    .await
    .expect(404, "not_found", None);
    // A SIP user without a registered device.
    f.call(
        "POST",
        "/v1/calls",
        Some(CUSTOMER),
        Some(json!({"to": {"destinationType": "SIP_USER", "destination": "carol"}, "callerId": "1", "blocks": hangup})),
    )
    .await
    .expect(409, "conflict", Some("to.destination"));
    for (body, code, field) in [
        (
            json!({"callerId": "1", "blocks": hangup}),
            "invalid_json",
            "to",
        ),
        // Another tenant's SIP user: not ours to ring, nor to learn whether it is online.
        (
            json!({"to": {"destinationType": "SIP_USER", "destination": "bob"}, "callerId": "1", "blocks": hangup}),
            "validation_failed",
            "to.destination",
        ),
        (
            json!({"to": {"destinationType": "FAX", "destination": "1"}, "callerId": "1", "blocks": hangup}),
            "validation_failed",
            "to.destinationType",
        ),
        (
            json!({"to": {"destinationType": "EXTERNALNUMBER", "destination": "12ab"}, "callerId": "1", "blocks": hangup}),
            "validation_failed",
            "to.destination",
        ),
        (
            json!({"to": to_alice, "blocks": hangup}),
            "validation_failed",
            "callerId",
        ),
        (
            json!({"to": to_alice, "callerId": "1"}),
            "validation_failed",
            "blocks",
        ),
        (
            json!({"to": to_alice, "callerId": "1", "plan": "main", "blocks": hangup}),
            "validation_failed",
            "plan",
        ),
        (
            json!({"to": to_alice, "callerId": "1", "plan": "nope"}),
            "validation_failed",
            "plan",
        ),
        (
            json!({"to": to_alice, "callerId": "1", "blocks": [{"blockType": "HANGUP", "hangupCause": "LATER"}]}),
            "validation_failed",
            "blocks[0].hangupCause",
        ),
        (
            json!({"to": to_alice, "callerId": "1", "blocks": hangup, "timeout": 0}),
            "validation_failed",
            "timeout",
        ),
        (
            json!({"to": to_alice, "callerId": "1", "blocks": hangup, "callstateInfoUrl": "ftp://x"}),
            "validation_failed",
            "callstateInfoUrl",
        ),
        (
            json!({"to": to_alice, "callerId": "1", "blocks": hangup, "colour": 1}),
            "invalid_json",
            "colour",
        ),
    ] {
        f.call("POST", "/v1/calls", Some(CUSTOMER), Some(body.clone()))
            .await
            .expect(400, code, Some(field));
    }
}

#[tokio::test]
async fn a_command_retried_with_its_idempotency_key_runs_once() {
    let f = fixture();
    let send = |key: &'static str, body: &'static str| {
        let app = f.app.clone();
        async move {
            let req = Request::builder()
                .method("POST")
                .uri("/v1/calls/call-acme/hangup")
                .header(header::AUTHORIZATION, format!("Bearer {CUSTOMER}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", key)
                .body(Body::from(body))
                .expect("request");
            app.oneshot(req).await.expect("infallible")
        }
    };
    let first = send("k-1", r#"{"hangupCause":"USER_BUSY"}"#).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    // The retry: the same answer, not a second hang-up (which the fake would refuse, 409).
    let again = send("k-1", r#"{"hangupCause":"USER_BUSY"}"#).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let body = axum::body::to_bytes(again.into_body(), usize::MAX)
        .await
        .expect("body");
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["state"], "ending");
    // The key names one request: another body under it is refused.
    let other = send("k-1", r#"{"hangupCause":"CALL_REJECTED"}"#).await;
    assert_eq!(other.status(), StatusCode::CONFLICT);
    // Without the key the fake sees the second hang-up, and refuses it.
    let plain = f
        .call("POST", "/v1/calls/call-acme/hangup", Some(CUSTOMER), None)
        .await;
    plain.expect(409, "conflict", Some("state"));
    let done = f.calls.hung_up.lock().map(|v| v.len()).unwrap_or(0);
    assert_eq!(done, 1, "executed once");
}

#[tokio::test]
async fn party_and_recording_commands_check_scope_body_and_state() {
    let f = fixture();
    // In scope: the fake takes hold and mute of leg 0 and a recording.
    for path in ["hold", "mute", "record"] {
        let a = f
            .call(
                "POST",
                &format!("/v1/calls/call-acme/{path}"),
                Some(CUSTOMER),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        assert_eq!(a.body["id"], "call-acme");
    }
    let a = f
        .call(
            "POST",
            "/v1/calls/call-acme/hold",
            Some(CUSTOMER),
            Some(json!({"leg": "call-acme.0"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // Refusals of the call's state are 409 naming `state`; an unknown leg 404 naming `leg`.
    f.call("POST", "/v1/calls/call-acme/unhold", Some(CUSTOMER), None)
        .await
        .expect(409, "conflict", Some("state"));
    f.call("POST", "/v1/calls/call-acme/unmute", Some(CUSTOMER), None)
        .await
        .expect(409, "conflict", Some("state"));
    f.call("DELETE", "/v1/calls/call-acme/record", Some(CUSTOMER), None)
        .await
        .expect(409, "conflict", Some("state"));
    f.call(
        "POST",
        "/v1/calls/call-acme/mute",
        Some(CUSTOMER),
        Some(json!({"leg": "call-acme.3"})),
    )
    .await
    .expect(404, "not_found", Some("leg"));
    // A leg of another call, or not a leg id, or a bad body.
    f.call(
        "POST",
        "/v1/calls/call-acme/hold",
        Some(CUSTOMER),
        Some(json!({"leg": "call-beta.1"})),
    )
    .await
    .expect(404, "not_found", Some("leg"));
    f.call(
        "POST",
        "/v1/calls/call-acme/hold",
        Some(CUSTOMER),
        Some(json!({"leg": "first"})),
    )
    .await
    .expect(400, "validation_failed", Some("leg"));
    f.call(
        "POST",
        "/v1/calls/call-acme/hold",
        Some(CUSTOMER),
        Some(json!({"party": "caller"})),
    )
    .await
    .expect(400, "invalid_json", Some("party"));
    f.call(
        "POST",
        "/v1/calls/call-acme/record",
        Some(CUSTOMER),
        Some(json!({"stereo": "yes"})),
    )
    .await
    .expect(400, "invalid_json", Some("stereo"));
    // Out of scope or gone: 404, as if it did not exist; no key: 401.
    f.call("POST", "/v1/calls/call-beta/hold", Some(CUSTOMER), None)
        .await
        .expect(404, "not_found", None);
    f.call("POST", "/v1/calls/call-carol/mute", Some(ACCOUNT), None)
        .await
        .expect(404, "not_found", None);
    f.call("POST", "/v1/calls/no-such-call/hold", Some(ADMIN), None)
        .await
        .expect(404, "not_found", None);
    f.call("POST", "/v1/calls/call-acme/hold", None, None)
        .await
        .expect(401, "unauthorized", None);
    // A call in scope that ended a short while ago: 409 for commands, 404 to read; out of
    // scope (another tenant, another line) 404.
    f.call("POST", "/v1/calls/call-ended/hold", Some(CUSTOMER), None)
        .await
        .expect(409, "conflict", Some("state"));
    f.call("POST", "/v1/calls/call-ended/hangup", Some(CUSTOMER), None)
        .await
        .expect(409, "conflict", Some("state"));
    f.call("GET", "/v1/calls/call-ended", Some(CUSTOMER), None)
        .await
        .expect(404, "not_found", None);
    f.call(
        "POST",
        "/v1/calls/call-ended/hold",
        Some(CUSTOMER_BETA),
        None,
    )
    .await
    .expect(404, "not_found", None);
    f.call("POST", "/v1/calls/call-ended/hold", Some(ACCOUNT), None)
        .await
        .expect(404, "not_found", None);
    // Recordings: unknown ids are 404 (in scope or not).
    f.call("GET", "/v1/recordings/nope", Some(ADMIN), None)
        .await
        .expect(404, "not_found", None);
}

/// The answer types' schemas come from the types themselves: the served document has them,
/// resolved where the paths refer to them, and the written part does not repeat them.
#[test]
fn the_answer_schemas_are_generated_from_the_handler_types() {
    let written: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
    let served: Value = serde_json::from_str(crate::openapi_document()).expect("JSON");
    let generated = crate::generated_schemas();
    for name in [
        "Call",
        "CallLeg",
        "RecordingRun",
        "Conference",
        "ConferenceParticipant",
        "Cdr",
        "CdrLeg",
        "Recording",
        "Error",
        "ErrorDetail",
        "ErrorCode",
        "FieldError",
        "Interrupted",
        "BlocksAccepted",
        "CdrPage",
        "ApiKey",
        "ApiKeyCreate",
        "ApiKeyCreated",
        "ApiRealm",
        "Announcement",
        "MakecallInit",
        "MakecallStatus",
        "InterruptEccBlock",
        "Block",
        "MakecallAccepted",
        "MakecallState",
        "MakecallRequestState",
        "EccBlockInterrupted",
        "TeniosError",
    ] {
        assert!(
            written["components"]["schemas"].get(name).is_none(),
            "{name} is written by hand in openapi.json as well"
        );
        assert_eq!(
            served["components"]["schemas"][name], generated[name],
            "{name}"
        );
    }
    // TENIOS's bodies: its field names, the ones it needs required, anything else let in.
    let init = &served["components"]["schemas"]["MakecallInit"];
    assert_eq!(
        init["required"],
        serde_json::json!(["access_key", "destination_number", "tenios_number"])
    );
    assert_eq!(
        init["properties"]["caller_id"]["type"],
        serde_json::json!(["string", "number"])
    );
    assert!(init.get("additionalProperties").is_none());
    let call = &served["components"]["schemas"]["Call"];
    assert_eq!(
        call["properties"]["legs"]["items"]["$ref"],
        "#/components/schemas/CallLeg"
    );
    assert_eq!(call["properties"]["state"]["enum"][0], "calling");
    let leg = &served["components"]["schemas"]["CallLeg"];
    assert_eq!(
        leg["properties"]["state"]["enum"],
        serde_json::json!([
            "calling",
            "ringing",
            "early_media",
            "answered",
            "held",
            "ending",
            "ended"
        ])
    );
    assert_eq!(
        leg["properties"]["direction"]["enum"],
        serde_json::json!(["inbound", "outbound"])
    );
    assert!(call["required"]
        .as_array()
        .expect("required")
        .contains(&Value::from("bridgedTo")));
    // Every reference in the served document resolves.
    let text = crate::openapi_document();
    for r in text.split("\"$ref\":\"").skip(1) {
        let target = &r[..r.find('"').expect("end of ref")];
        let pointer = target.trim_start_matches('#');
        assert!(
            served.pointer(pointer).is_some(),
            "{target} does not resolve"
        );
    }
}

/// The request bodies of the call and conference commands are the handlers' request types:
/// their schemas are generated, none is written by hand, and the document refers to them.
#[test]
fn the_command_request_schemas_are_generated_from_the_handler_types() {
    let written: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
    let served: Value = serde_json::from_str(crate::openapi_document()).expect("JSON");
    let generated = crate::generated_schemas();
    let mut seen = 0;
    for (path, ops) in served["paths"].as_object().expect("paths") {
        if !(path.starts_with("/v1/calls") || path.starts_with("/v1/conferences")) {
            continue;
        }
        for (method, op) in ops.as_object().expect("operations") {
            let Some(schema) = op.pointer("/requestBody/content/application~1json/schema") else {
                continue;
            };
            let name = schema["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .unwrap_or_else(|| panic!("{method} {path}: an inline request schema"));
            assert!(
                generated.contains_key(name),
                "{method} {path}: {name} is not generated"
            );
            assert!(
                written["components"]["schemas"].get(name).is_none(),
                "{name} is written by hand in openapi.json as well"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 15, "command request bodies");
    // Their destinations are the BRIDGE block's.
    let originate = &served["components"]["schemas"]["OriginateRequest"];
    assert_eq!(
        originate["properties"]["to"]["$ref"],
        "#/components/schemas/Destination"
    );
    assert_eq!(originate["required"], serde_json::json!(["to"]));
    assert_eq!(originate["additionalProperties"], false);
    let destination = &served["components"]["schemas"]["Destination"];
    assert_eq!(
        destination["required"],
        serde_json::json!(["destinationType", "destination"])
    );
    let supervise = &served["components"]["schemas"]["SuperviseRequest"];
    assert_eq!(supervise["properties"]["mode"]["enum"][0], "listen");
    assert_eq!(
        supervise["properties"]["supervisor"]["oneOf"][1]["$ref"],
        "#/components/schemas/Destination"
    );
}

/// The provisioned objects' schemas, and their create and replace bodies, are generated from
/// the store's model types; none is written by hand, and the provisioning routes refer to
/// them.
#[test]
fn the_provisioning_schemas_are_generated_from_the_model_types() {
    let written: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
    let served: Value = serde_json::from_str(crate::openapi_document()).expect("JSON");
    let generated = crate::generated_schemas();
    for object in ["Tenant", "Number", "SipUser", "Trunk", "RoutingPlan"] {
        for name in [
            object.to_string(),
            format!("{object}Create"),
            format!("{object}Replace"),
        ] {
            assert!(generated.contains_key(&name), "{name} is generated");
            assert!(
                written["components"]["schemas"].get(&name).is_none(),
                "{name} is written by hand in openapi.json as well"
            );
        }
    }
    let trunk = &served["components"]["schemas"]["Trunk"];
    // Answers carry the flag, never the secret.
    assert_eq!(trunk["properties"]["passwordSet"]["readOnly"], true);
    assert!(trunk["required"].as_array().is_some_and(
        |r| r.contains(&Value::from("passwordSet")) && !r.contains(&Value::from("password"))
    ));
    assert_eq!(trunk["properties"]["password"]["writeOnly"], true);
    // A nested create takes the URL's tenant; a replace the URL's key too.
    let create = &served["components"]["schemas"]["SipUserCreate"];
    assert_eq!(
        create["required"],
        serde_json::json!(["username", "password"])
    );
    let replace = &served["components"]["schemas"]["SipUserReplace"];
    assert_eq!(replace["required"], serde_json::json!([]));
    assert_eq!(
        replace["properties"]["username"]["type"],
        serde_json::json!(["string", "null"])
    );
    let tenant_create = &served["components"]["schemas"]["TenantCreate"];
    assert_eq!(
        tenant_create["required"],
        serde_json::json!(["name", "customerNumber"])
    );
    // The routes use them.
    let body = |path: &str, method: &str| {
        served["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"]
            .clone()
    };
    assert_eq!(
        body("/v1/tenants/{tenant}/trunks", "post"),
        "#/components/schemas/TrunkCreate"
    );
    assert_eq!(
        body("/v1/tenants/{tenant}/trunks/{name}", "put"),
        "#/components/schemas/TrunkReplace"
    );
}
