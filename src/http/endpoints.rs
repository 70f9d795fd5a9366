//! The gateway's own endpoints under `/.twinward/` and `/.well-known/jwks.json`: JWKS,
//! forward-auth (`/verify`) and RFC 8693 token exchange.

use super::error;
use super::proxy::{bearer, purpose, ASSERTION_HEADER};
use super::{AppState, Peer};
use crate::access::{AccessRequest, Refusal};
use crate::credentials::jwks;
use crate::routing::path;
use axum::body::Body;
use axum::extract::{Form, State};
use axum::Extension;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode, Uri};
use serde::Deserialize;

pub async fn jwks(State(state): State<AppState>) -> Response<Body> {
    let doc = jwks::document(&state.gateway.minter.keys());
    let mut resp = Response::new(Body::from(doc.to_string()));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    resp.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp
}

/// The original request a forward-auth call asks about.
struct Original {
    method: String,
    host: Option<String>,
    path_and_query: String,
}

impl Original {
    /// The URL the browser asked for, to come back to after sign-in.
    fn url(&self, cfg: &crate::config::signin::SigninConfig) -> String {
        let uri: Uri = self.path_and_query.parse().unwrap_or_default();
        super::error::return_url(cfg, self.host.as_deref(), &uri)
    }
}

/// nginx `auth_request` sends `X-Original-URL` and `X-Original-Method`; Traefik and Caddy
/// send `X-Forwarded-Method/Proto/Host/Uri`.
fn original(headers: &HeaderMap) -> Option<Original> {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(url) = h("x-original-url") {
        let uri: Uri = url.parse().ok()?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| h("x-forwarded-host"))
            .or_else(|| h("host"));
        return Some(Original {
            method: h("x-original-method")
                .or_else(|| h("x-forwarded-method"))
                .unwrap_or_else(|| "GET".into()),
            host,
            path_and_query: uri
                .path_and_query()
                .map_or("/".into(), |p| p.as_str().to_owned()),
        });
    }
    let uri = h("x-forwarded-uri")?;
    Some(Original {
        method: h("x-forwarded-method").unwrap_or_else(|| "GET".into()),
        host: h("x-forwarded-host"),
        path_and_query: uri,
    })
}

pub async fn verify(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
) -> Response<Body> {
    let gw = &state.gateway;
    // INVARIANT: the headers describing the original request are believed only from a
    // trusted proxy; anyone else could name any URL.
    if !gw.network.is_trusted(peer.ip()) {
        return error::problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "forward-auth is answered only for trusted proxies",
            None,
            false,
        );
    }
    let Some(orig) = original(&headers) else {
        return error::problem(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "forward-auth needs X-Original-URL or X-Forwarded-Uri",
            None,
            false,
        );
    };
    let raw_path = orig.path_and_query.split('?').next().unwrap_or("/");
    let normalized = match path::normalize(raw_path) {
        Ok(p) => p,
        // A 403, not a 400: nginx turns any other status from auth_request into a 500.
        Err(e) => {
            return error::problem(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("refused path: {e}"),
                None,
                false,
            )
        }
    };
    let Some(route) = gw.routes.find(orig.host.as_deref(), &normalized) else {
        return error::problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "nothing is served at this address",
            None,
            false,
        );
    };
    let client_ip = super::proxy::client_ip(gw, peer.ip(), &headers);
    let access = AccessRequest {
        route,
        method: &orig.method,
        path: normalized.as_str(),
        bearer: bearer(&headers),
        session_cookie: gw
            .signin
            .as_ref()
            .and_then(|s| super::cookies::get(&headers, s.cfg.cookie_name)),
        client_ip,
        purpose: purpose(&headers),
    };
    match gw.authorize(&access).await {
        Err(refused) => {
            // The proxy in front sends the browser on; the location says where to sign in.
            let back = gw.signin.as_ref().map(|s| orig.url(&s.cfg));
            let mut resp = error::refusal(&refused, false, None);
            if let (Some(s), Some(back)) = (&gw.signin, &back) {
                let login = error::login_location(&s.cfg, back);
                if let Ok(v) = HeaderValue::from_str(&login) {
                    resp.headers_mut().insert(http::header::LOCATION, v);
                }
            }
            resp
        }
        Ok(grant) => {
            let mut resp = Response::new(Body::empty());
            if let Ok(v) = HeaderValue::from_str(&grant.credential.token) {
                resp.headers_mut().insert(ASSERTION_HEADER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&grant.decision_id) {
                resp.headers_mut().insert("x-twinward-decision-id", v);
            }
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
    }
}

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

#[derive(Debug, Deserialize)]
pub struct ExchangeForm {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    audience: Option<String>,
    requested_token_type: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
}

fn oauth_error(
    status: StatusCode,
    code: &str,
    description: &str,
    decision_id: Option<&str>,
) -> Response<Body> {
    let mut v = serde_json::json!({ "error": code, "error_description": description });
    if let (Some(id), Some(o)) = (decision_id, v.as_object_mut()) {
        o.insert("decision_id".into(), id.into());
    }
    let mut resp = Response::new(Body::from(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub async fn token_exchange(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    form: Result<Form<ExchangeForm>, axum::extract::rejection::FormRejection>,
) -> Response<Body> {
    let bad = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", d, None);
    let Ok(Form(f)) = form else {
        return bad("send an application/x-www-form-urlencoded body");
    };
    if f.grant_type.as_deref() != Some(GRANT_TOKEN_EXCHANGE) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange",
            None,
        );
    }
    let Some(subject) = f.subject_token.filter(|s| !s.is_empty()) else {
        return bad("subject_token is required");
    };
    if f.subject_token_type.as_deref() != Some(TOKEN_TYPE_ACCESS) {
        return bad("subject_token_type must be urn:ietf:params:oauth:token-type:access_token");
    }
    if let Some(t) = f.requested_token_type.as_deref() {
        if t != TOKEN_TYPE_JWT {
            return bad("requested_token_type must be urn:ietf:params:oauth:token-type:jwt");
        }
    }
    if f.resource.is_some() || f.scope.is_some() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "name the route with audience; resource and scope are not supported",
            None,
        );
    }
    let gw = &state.gateway;
    let Some(route) = f.audience.as_deref().and_then(|a| gw.routes.by_name(a)) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "audience must name a route",
            None,
        );
    };
    let client_ip = super::proxy::client_ip(gw, peer.ip(), &headers);
    match gw
        .exchange(&subject, route, client_ip, purpose(&headers))
        .await
    {
        Ok(c) => {
            let now = gw.now();
            let body = serde_json::json!({
                "access_token": c.token.as_ref(),
                "issued_token_type": TOKEN_TYPE_JWT,
                "token_type": "Bearer",
                "expires_in": c.expires_in(now).as_secs(),
                "scope": c.scope,
            });
            let mut resp = Response::new(Body::from(body.to_string()));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(r) => match &r.refusal {
            Refusal::SecondFactorRequired | Refusal::StepUp => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "subject_token: only twinward API tokens are accepted here",
                Some(&r.decision_id),
            ),
            Refusal::Unauthenticated(e) => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("subject_token: {e}"),
                Some(&r.decision_id),
            ),
            Refusal::Denied { reason } => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                reason,
                Some(&r.decision_id),
            ),
            Refusal::Unavailable => oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again shortly",
                Some(&r.decision_id),
            ),
        },
    }
}
