//! Callplane's HTTP server: the operational endpoints (`/healthz`, Prometheus `/metrics`) from
//! figures the binary hands it, and the `/v1` API — provisioning of tenants and their objects,
//! API keys with realms, live call commands — described by `/v1/openapi.json`.

mod announcements;
mod apikeys;
pub mod auth;
mod body;
mod calls;
pub mod click_to_dial;
mod conferences;
pub mod error;
mod events_wire;
pub mod events_ws;
mod history;
pub mod idempotency;
mod provisioning_schemas;
pub mod ratelimit;
pub mod requests;
mod resources;
mod serve;
pub mod tenios;
pub mod validation;

#[cfg(test)]
mod tests;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use callplane_store::{Announcement, Number, RoutingPlan, SipUser, Store, Trunk};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use auth::{generate_key, hash_key, resolve_api_key, MIN_KEY_CHARS};
pub use body::{JSON_BODY_LIMIT, WAV_BODY_LIMIT};
pub use calls::{BoxFuture, CallControl, CallFilter, HangupFuture, PlayFuture};
pub use error::ApiError;
/// The metrics client `MetricsSource` encodes with, for implementors.
pub use prometheus_client;
pub use serve::{HttpLimits, HttpServer};

/// Where the server reads the figures it reports: encoded on every scrape with
/// prometheus-client (the Prometheus project's client) in the OpenMetrics text format.
pub trait MetricsSource: Send + Sync + 'static {
    /// Encodes every series: `encoder.encode_descriptor(name, help, unit, type)` per metric
    /// (counters without their `_total`, which the encoder appends).
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result;
}

/// The source as a prometheus-client collector.
struct SourceCollector(Shared);

impl std::fmt::Debug for SourceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceCollector")
    }
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.0.encode(&mut encoder)
    }
}

type Shared = Arc<dyn MetricsSource>;

/// What the `/v1` handlers work with.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// Absolute; uploads go to `<data_dir>/announcements/`.
    pub data_dir: PathBuf,
    pub calls: Arc<dyn CallControl>,
    /// The events WebSocket's fan-out.
    pub events: Arc<events_ws::EventHub>,
    /// Cancelled when the server shuts down: WebSockets close with 1001.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Who may use `GET /v1/call-init`.
    pub click_to_dial: click_to_dial::ClickToDialConfig,
    /// TENIOS makecall requests and their states.
    pub makecalls: Arc<tenios::MakecallTracker>,
    /// Answers kept for `Idempotency-Key` retries.
    pub idempotency: Arc<idempotency::Idempotency>,
    /// Per-key request rates.
    pub rate_limits: Arc<ratelimit::RateLimits>,
}

impl ApiState {
    /// `data_dir` is made absolute, since announcement files are recorded by path and the
    /// engine resolves relative paths against the prompts directory.
    /// Starts the events hub (a task: call it inside the runtime) with its default timers.
    pub fn new(store: Store, data_dir: impl Into<PathBuf>, calls: Arc<dyn CallControl>) -> Self {
        Self::with_events(store, data_dir, calls, events_ws::EventsConfig::default())
    }

    /// As [`ApiState::new`], with the events WebSocket's timers and limits.
    pub fn with_events(
        store: Store,
        data_dir: impl Into<PathBuf>,
        calls: Arc<dyn CallControl>,
        events: events_ws::EventsConfig,
    ) -> Self {
        let data_dir = data_dir.into();
        let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        let hub = events_ws::EventHub::start(events, |s| calls.subscribe(s));
        let makecalls = Arc::new(tenios::MakecallTracker::default());
        calls.subscribe(makecalls.clone());
        let idempotency = Arc::new(idempotency::Idempotency::durable(store.clone()));
        ApiState {
            store,
            data_dir,
            calls,
            events: hub,
            shutdown: tokio_util::sync::CancellationToken::new(),
            click_to_dial: click_to_dial::ClickToDialConfig::default(),
            makecalls,
            idempotency,
            rate_limits: Arc::default(),
        }
    }
}

/// The operational endpoints only.
pub fn router(source: Shared) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SourceCollector(source)));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(registry))
}

/// The whole server: the operational endpoints and the `/v1` API, with JSON errors for
/// unknown routes and methods.
pub fn app(source: Shared, api: ApiState) -> Router {
    api_router()
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            idempotency::layer,
        ))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .fallback(no_route)
        .with_state(api)
        .merge(router(source))
        .method_not_allowed_fallback(method_not_allowed)
}

/// Declares the `/v1` routes once: [`ROUTES`] (what the OpenAPI test checks) and the router
/// built from the same lines, so the two cannot drift apart.
macro_rules! api_routes {
    ($( $method:ident $path:literal => $handler:expr $(, limit $limit:expr)? ;)*) => {
        /// Every `(method, path)` the `/v1` API serves, in axum's `{param}` syntax (the same
        /// as OpenAPI's).
        pub const ROUTES: &[(&str, &str)] = &[$( (stringify!($method), $path) ),*];

        fn api_router() -> Router<ApiState> {
            let r = Router::new();
            $(
                let r = r.route(
                    $path,
                    axum::routing::$method($handler)$(.layer(DefaultBodyLimit::max($limit)))?,
                );
            )*
            r
        }
    };
}

api_routes! {
    get "/v1/openapi.json" => openapi;
    get "/v1/tenants" => resources::list_tenants;
    post "/v1/tenants" => resources::create_tenant;
    get "/v1/tenants/{tenant}" => resources::get_tenant;
    put "/v1/tenants/{tenant}" => resources::put_tenant;
    delete "/v1/tenants/{tenant}" => resources::delete_tenant;
    get "/v1/tenants/{tenant}/numbers" => resources::list::<Number>;
    post "/v1/tenants/{tenant}/numbers" => resources::create::<Number>;
    get "/v1/tenants/{tenant}/numbers/{number}" => resources::get_one::<Number>;
    put "/v1/tenants/{tenant}/numbers/{number}" => resources::put::<Number>;
    delete "/v1/tenants/{tenant}/numbers/{number}" => resources::delete::<Number>;
    get "/v1/tenants/{tenant}/sipusers" => resources::list::<SipUser>;
    post "/v1/tenants/{tenant}/sipusers" => resources::create::<SipUser>;
    get "/v1/tenants/{tenant}/sipusers/{username}" => resources::get_one::<SipUser>;
    put "/v1/tenants/{tenant}/sipusers/{username}" => resources::put::<SipUser>;
    delete "/v1/tenants/{tenant}/sipusers/{username}" => resources::delete::<SipUser>;
    get "/v1/tenants/{tenant}/trunks" => resources::list::<Trunk>;
    post "/v1/tenants/{tenant}/trunks" => resources::create::<Trunk>;
    get "/v1/tenants/{tenant}/trunks/{name}" => resources::get_one::<Trunk>;
    put "/v1/tenants/{tenant}/trunks/{name}" => resources::put::<Trunk>;
    delete "/v1/tenants/{tenant}/trunks/{name}" => resources::delete::<Trunk>;
    get "/v1/tenants/{tenant}/routingplans" => resources::list::<RoutingPlan>;
    post "/v1/tenants/{tenant}/routingplans" => resources::create::<RoutingPlan>;
    get "/v1/tenants/{tenant}/routingplans/{name}" => resources::get_one::<RoutingPlan>;
    put "/v1/tenants/{tenant}/routingplans/{name}" => resources::put::<RoutingPlan>;
    delete "/v1/tenants/{tenant}/routingplans/{name}" => resources::delete::<RoutingPlan>;
    get "/v1/tenants/{tenant}/announcements" => resources::list::<Announcement>;
    get "/v1/tenants/{tenant}/announcements/{name}" => resources::get_one::<Announcement>;
    put "/v1/tenants/{tenant}/announcements/{name}" => announcements::upload, limit WAV_BODY_LIMIT;
    delete "/v1/tenants/{tenant}/announcements/{name}" => resources::delete::<Announcement>;
    get "/v1/apikeys" => apikeys::list;
    post "/v1/apikeys" => apikeys::create;
    get "/v1/apikeys/{name}" => apikeys::get_one;
    delete "/v1/apikeys/{name}" => apikeys::delete;
    get "/v1/calls" => calls::list;
    post "/v1/calls" => calls::create;
    post "/v1/calls/callback" => calls::callback;
    get "/v1/call-init" => click_to_dial::call_init;
    get "/v1/calls/{id}" => calls::get_one;
    post "/v1/calls/{id}/hangup" => calls::hangup;
    post "/v1/calls/{id}/dtmf" => calls::dtmf;
    post "/v1/calls/{id}/interrupt" => calls::interrupt;
    post "/v1/calls/{id}/blocks" => calls::run_blocks;
    post "/v1/calls/{id}/transfer" => calls::transfer;
    post "/v1/calls/{id}/redirect" => calls::redirect;
    post "/v1/calls/{id}/supervise" => calls::supervise;
    delete "/v1/calls/{id}/supervise" => calls::stop_supervise;
    post "/v1/calls/{id}/claim" => calls::claim;
    post "/v1/calls/{id}/answer" => calls::answer;
    post "/v1/calls/{id}/conference" => conferences::make;
    get "/v1/conferences" => conferences::list;
    get "/v1/conferences/{name}" => conferences::get_one;
    post "/v1/conferences/{name}/participants" => conferences::add_participant;
    delete "/v1/conferences/{name}/participants/{leg}" => conferences::remove;
    post "/v1/conferences/{name}/participants/{leg}/mute" => conferences::mute;
    post "/v1/conferences/{name}/participants/{leg}/unmute" => conferences::unmute;
    post "/v1/conferences/{name}/participants/{leg}/hold" => conferences::hold;
    post "/v1/conferences/{name}/participants/{leg}/unhold" => conferences::unhold;
    post "/v1/calls/{id}/hold" => calls::hold;
    post "/v1/calls/{id}/unhold" => calls::unhold;
    post "/v1/calls/{id}/mute" => calls::mute;
    post "/v1/calls/{id}/unmute" => calls::unmute;
    post "/v1/calls/{id}/record" => calls::record;
    delete "/v1/calls/{id}/record" => calls::stop_record;
    get "/v1/recordings/{id}" => history::recording;
    get "/v1/events" => events_ws::events;
    get "/v1/cdrs" => history::list;
    post "/makecall/init" => tenios::makecall_init;
    post "/makecall/status" => tenios::makecall_status;
    post "/interrupt-ecc-block" => tenios::interrupt_ecc_block;
}

/// The written part of the OpenAPI 3.1 description of [`ROUTES`]: paths, parameters, request
/// bodies, and the schemas not (yet) generated from types. See [`openapi_document`].
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// The OpenAPI document served at `/v1/openapi.json`: [`OPENAPI_JSON`] with the schemas of the
/// calls', conferences' and history's answers (`Call`, `CallLeg`, `RecordingRun`, `Conference`,
/// `ConferenceParticipant`, `Cdr`, `CdrLeg`, `Recording`) generated from the types the handlers
/// serialize, so those cannot drift from what the API answers.
pub fn openapi_document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(OPENAPI_JSON) else {
            // A unit test keeps the written part well-formed.
            return OPENAPI_JSON.to_string();
        };
        let generated = generated_schemas();
        if let Some(schemas) = doc
            .pointer_mut("/components/schemas")
            .and_then(serde_json::Value::as_object_mut)
        {
            schemas.extend(generated);
        }
        doc.to_string()
    })
}

/// The JSON Schemas of the answer types and of the command request bodies, by their names in
/// the document.
pub fn generated_schemas() -> serde_json::Map<String, serde_json::Value> {
    // Answers are written: their schemas as serde serializes.
    let mut generator = schema_generator(true);
    generator.subschema_for::<callplane_engine::registry::CallInfo>();
    generator.subschema_for::<callplane_engine::conference::ConferenceInfo>();
    generator.subschema_for::<callplane_store::Cdr>();
    generator.subschema_for::<error::Body<'static>>();
    generator.subschema_for::<calls::Interrupted>();
    generator.subschema_for::<calls::BlocksAccepted>();
    generator.subschema_for::<history::CdrPage>();
    generator.subschema_for::<callplane_store::ApiKey>();
    generator.subschema_for::<apikeys::CreatedKey>();
    generator.subschema_for::<callplane_store::model::Announcement>();
    tenios::add_answer_schemas(&mut generator);
    let mut schemas = generator.take_definitions(true);
    // Request bodies are read, not written: their schemas as serde deserializes.
    let mut generator = schema_generator(false);
    requests::add_schemas(&mut generator);
    tenios::add_schemas(&mut generator);
    schemas.extend(generator.take_definitions(true));
    schemas.extend(provisioning_schemas::schemas());
    schemas.insert("Block".into(), block_schema());
    schemas
}

/// `Block`: the `blockType`s the engine's parser knows; the fields are left to the parser's
/// rules, which accept what TENIOS accepts (see docs/decisions.md, "OpenAPI document").
fn block_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "required": ["blockType"],
        "description": "One block of the block vocabulary (see the routing-and-blocks spec). Its fields are checked by the engine's block rules, which accept what TENIOS accepts; errors name `blocks[i].field`.",
        "properties": {
            "blockType": {"type": "string", "enum": callplane_engine::blocks::BLOCK_TYPES},
        },
        "additionalProperties": true,
    })
}

/// A JSON Schema 2020-12 generator (OpenAPI 3.1) whose definitions are the document's
/// `components/schemas`: for answers (`serialize`) or for request bodies.
pub(crate) fn schema_generator(serialize: bool) -> schemars::SchemaGenerator {
    let settings = schemars::generate::SchemaSettings::draft2020_12();
    let mut settings = if serialize {
        settings.for_serialize()
    } else {
        settings.for_deserialize()
    };
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    settings.into_generator()
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        crate::error::ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot encode /metrics");
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "metrics could not be encoded\n".to_string(),
        );
    }
    (
        axum::http::StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

/// Binds the listener (an address in use is an error now) and returns it with the app.
pub fn bind(
    addr: SocketAddr,
    limits: HttpLimits,
    source: Shared,
    api: ApiState,
) -> std::io::Result<(HttpServer, Router)> {
    Ok((HttpServer::bind(addr, limits)?, app(source, api)))
}
