//! The admin listener: liveness, readiness and Prometheus metrics. Bind it to a private
//! address; it is never served on the public listener.

use crate::access::Gateway;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use http::header::CONTENT_TYPE;
use http::StatusCode;
use std::sync::Arc;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(gw)
}

/// Ready when a policy set is loaded and storage answers.
async fn readyz(State(gw): State<Arc<Gateway>>) -> (StatusCode, String) {
    let generation = gw.engine.current().generation;
    match gw.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            format!("ready: policy generation {generation}, storage ok\n"),
        ),
        Err(e) => {
            tracing::error!(error = %e, "readiness: storage unreachable");
            gw.metrics.store_errors.inc();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: storage unreachable\n".to_owned(),
            )
        }
    }
}

async fn metrics(
    State(gw): State<Arc<Gateway>>,
) -> ([(http::HeaderName, &'static str); 1], String) {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.encode(),
    )
}
