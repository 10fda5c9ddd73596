//! Callplane's HTTP server. For now it serves the read-only operational endpoints — `/healthz`
//! and Prometheus `/metrics` — from counters the binary hands it; the provisioning and call
//! control APIs (with their authentication) build on this router.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;

/// Where the server reads the figures it reports.
pub trait MetricsSource: Send + Sync + 'static {
    /// `(name, help, kind, value)` rows in Prometheus terms (`gauge` or `counter`).
    fn metrics(&self) -> Vec<(&'static str, &'static str, &'static str, f64)>;
}

type Shared = Arc<dyn MetricsSource>;

pub fn router(source: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(source)
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(source): State<Shared>) -> impl IntoResponse {
    let mut out = String::new();
    for (name, help, kind, value) in source.metrics() {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Binds the listener; the returned future serves until the process ends.
pub async fn bind(
    addr: SocketAddr,
    source: Shared,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(source);
    Ok((local, async move { axum::serve(listener, app).await }))
}
