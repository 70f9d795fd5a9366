//! The admin listener: liveness, readiness, Prometheus metrics, and the session API the
//! local CLI uses (`twinward session list|revoke`, with the bearer from the keys
//! directory's `admin.token`). Bind it to a private address; it is never served on the
//! public listener.

use crate::access::Gateway;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use http::header::CONTENT_TYPE;
use http::StatusCode;
use std::sync::Arc;

/// Serves the admin listener until the task is dropped, each connection held to the
/// public listener's bounds: a request head within [`super::HEAD_TIMEOUT`], an HTTP/2 connection ended once
/// quiet ([`super::idle`]).
pub async fn serve(listener: tokio::net::TcpListener, gw: Arc<Gateway>) {
    let router = router(gw);
    let builder = super::connection_builder();
    // The task is aborted at shutdown; nothing here waits for a signal.
    let (_never, stopping) = tokio::sync::watch::channel(false);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let router = router.clone();
        let handle = move |req: http::Request<super::idle::ClientBody>| {
            let resp = tower::ServiceExt::oneshot(router.clone(), req.map(axum::body::Body::new));
            async move {
                match resp.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            }
        };
        let builder = builder.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            super::idle::serve_http(&builder, stream, stopping, handle).await;
        });
    }
}

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/sessions", get(sessions))
        .route("/sessions/revoke", axum::routing::post(revoke))
        .with_state(gw)
}

fn authorized(gw: &Gateway, headers: &http::HeaderMap) -> bool {
    let presented = super::proxy::bearer(headers).unwrap_or_default();
    !gw.admin_token.is_empty()
        && subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), gw.admin_token.as_bytes()).into()
}

fn json(
    status: StatusCode,
    v: serde_json::Value,
) -> (StatusCode, [(http::HeaderName, &'static str); 1], String) {
    (status, [(CONTENT_TYPE, "application/json")], v.to_string())
}

fn session_json(s: &crate::session::Session) -> serde_json::Value {
    serde_json::json!({
        "id": s.key.0,
        "user": s.user.email,
        "subject": s.user.subject,
        "roles": s.user.roles,
        "created": s.created.to_rfc3339(),
        "last_seen": s.last_seen.to_rfc3339(),
        "expires": s.expires.to_rfc3339(),
        "mfa": s.mfa_at.is_some(),
        "client_ip": s.client_ip,
        "user_agent": s.user_agent,
    })
}

async fn sessions(
    State(gw): State<Arc<Gateway>>,
    headers: http::HeaderMap,
) -> impl axum::response::IntoResponse {
    if !authorized(&gw, &headers) {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "admin token required"}),
        );
    }
    let now = gw.now();
    let idle = gw.config.session.idle_timeout;
    match gw.sessions.list().await {
        Ok(mut list) => {
            list.retain(|s| s.is_live(now, idle));
            list.sort_by_key(|s| s.created);
            json(
                StatusCode::OK,
                serde_json::json!({ "sessions": list.iter().map(session_json).collect::<Vec<_>>() }),
            )
        }
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
}

/// Body: `{"session": "<id or unique prefix>"}`, `{"user": "<email or subject>"}` or `{"all": true}`.
async fn revoke(
    State(gw): State<Arc<Gateway>>,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> impl axum::response::IntoResponse {
    use crate::session::Selector;
    if !authorized(&gw, &headers) {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "admin token required"}),
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let selector = if let Some(s) = v.get("session").and_then(|x| x.as_str()) {
        Selector::Key(s.to_owned())
    } else if let Some(u) = v.get("user").and_then(|x| x.as_str()) {
        Selector::User(u.to_owned())
    } else if v.get("all").and_then(|x| x.as_bool()) == Some(true) {
        Selector::All
    } else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "say which: {\"session\": id}, {\"user\": email}, or {\"all\": true}"}),
        );
    };
    match gw.sessions.revoke(selector.clone()).await {
        Ok(gone) => {
            for s in &gone {
                let mut ev = crate::audit::AuditEvent::new("session.revoke", "ok", gw.now());
                ev.actor = Some("admin".into());
                ev.detail = serde_json::json!({ "session": s.key.short(), "user": s.user.email, "subject": s.user.subject, "by": "admin" }).into();
                gw.audit.record(ev).await;
            }
            json(
                StatusCode::OK,
                serde_json::json!({ "revoked": gone.iter().map(session_json).collect::<Vec<_>>() }),
            )
        }
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
}

/// Ready when a policy set is loaded, storage answers and the audit log takes events.
async fn readyz(State(gw): State<Arc<Gateway>>) -> (StatusCode, String) {
    let generation = gw.engine.current().generation;
    if gw.audit.is_failing() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the audit log is not taking events\n".to_owned(),
        );
    }
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
