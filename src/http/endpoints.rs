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

/// Why the headers that describe the original request cannot be believed.
#[derive(Debug, PartialEq, Eq)]
enum OriginalError {
    /// The proxy left out a header its convention always sends: a configuration error.
    Missing(&'static str),
    /// `X-Original-URL` without scheme and host, so the host would come from a header the
    /// client can write.
    NotAbsolute,
    /// A header sent twice, not visible ASCII, or not a URL.
    Malformed(&'static str),
    /// Both conventions present and naming different requests. A proxy copies the client's
    /// headers onto the auth request and overwrites only its own convention's, so the other
    /// set is what the client wrote.
    Disagree(&'static str),
}

impl OriginalError {
    fn status(&self) -> StatusCode {
        match self {
            // nginx turns any other status from auth_request into a 500; a spoofing attempt
            // is refused, not an outage.
            OriginalError::Disagree(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn detail(&self) -> String {
        match self {
            OriginalError::Missing(h) => format!("forward-auth request without {h}"),
            OriginalError::NotAbsolute => {
                "X-Original-URL must be absolute ($scheme://$http_host$request_uri)".into()
            }
            OriginalError::Malformed(h) => format!("{h} is sent more than once or is not readable"),
            OriginalError::Disagree(h) => {
                format!("{h} disagrees with the other forward-auth headers")
            }
        }
    }
}

/// The one value of `name`: absent, or exactly one line of visible ASCII.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, OriginalError> {
    let mut lines = headers.get_all(name).iter();
    let Some(first) = lines.next() else {
        return Ok(None);
    };
    if lines.next().is_some() {
        return Err(OriginalError::Malformed(name));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| OriginalError::Malformed(name))
}

/// The request the proxy asks about. nginx `auth_request` sends `X-Original-URL` (absolute)
/// and `X-Original-Method`; Traefik and Caddy send `X-Forwarded-Method/Host/Uri`. Each proxy
/// passes the client's other headers through untouched, so whichever set it does not write
/// is the client's: when both are present they must name the same request.
fn original(headers: &HeaderMap) -> Result<Original, OriginalError> {
    let url = single(headers, "x-original-url")?;
    let url_method = single(headers, "x-original-method")?;
    let fwd_uri = single(headers, "x-forwarded-uri")?;
    let fwd_method = single(headers, "x-forwarded-method")?;
    let fwd_host = single(headers, "x-forwarded-host")?;
    let Some(url) = url else {
        if url_method.is_some() {
            return Err(OriginalError::Missing("x-original-url"));
        }
        let path_and_query = fwd_uri.ok_or(OriginalError::Missing("x-forwarded-uri"))?;
        let method = fwd_method.ok_or(OriginalError::Missing("x-forwarded-method"))?;
        let host = fwd_host.ok_or(OriginalError::Missing("x-forwarded-host"))?;
        // Held to the rule for `Host` itself (`framing::valid_host`): the route is found
        // by it, so it may name a host and port and nothing else.
        if super::framing::valid_host(host.as_bytes()).is_none() {
            return Err(OriginalError::Malformed("x-forwarded-host"));
        }
        return Ok(Original {
            method: method.to_owned(),
            host: Some(host.to_owned()),
            path_and_query: path_and_query.to_owned(),
        });
    };
    let method = url_method.ok_or(OriginalError::Missing("x-original-method"))?;
    let uri: Uri = url
        .parse()
        .map_err(|_| OriginalError::Malformed("x-original-url"))?;
    let Some(authority) = uri.authority() else {
        return Err(OriginalError::NotAbsolute);
    };
    if super::framing::valid_host(authority.as_str().as_bytes()).is_none() {
        return Err(OriginalError::Malformed("x-original-url"));
    }
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    if fwd_uri.is_some_and(|u| u != path_and_query) {
        return Err(OriginalError::Disagree("x-forwarded-uri"));
    }
    if fwd_method.is_some_and(|m| m != method) {
        return Err(OriginalError::Disagree("x-forwarded-method"));
    }
    let same_host = |h: &str| {
        crate::routing::host_without_port(h)
            .eq_ignore_ascii_case(crate::routing::host_without_port(authority.as_str()))
    };
    if fwd_host.is_some_and(|h| !same_host(h)) {
        return Err(OriginalError::Disagree("x-forwarded-host"));
    }
    Ok(Original {
        method: method.to_owned(),
        host: Some(authority.as_str().to_owned()),
        path_and_query: path_and_query.to_owned(),
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
    let orig = match original(&headers) {
        Ok(o) => o,
        Err(e) => {
            let status = e.status();
            let title = status.canonical_reason().unwrap_or("Bad Request");
            return error::problem(status, title, &e.detail(), None, false);
        }
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
    let client_ip = match super::proxy::client_ip(gw, peer.ip(), &headers) {
        Ok(ip) => ip,
        // 403 for the same reason as a refused path.
        Err(e) => {
            return error::problem(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &e.to_string(),
                None,
                false,
            )
        }
    };
    if let Some(name) = super::proxy::method_override_conflict(&orig.method, &headers) {
        return error::problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!("{name} names a method other than the request's"),
            None,
            false,
        );
    }
    let access = AccessRequest {
        route,
        method: &orig.method,
        path: normalized.shared(),
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
    let client_ip = match super::proxy::client_ip(gw, peer.ip(), &headers) {
        Ok(ip) => ip,
        Err(e) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &e.to_string(),
                None,
            )
        }
    };
    match gw
        .exchange(
            &subject,
            f.audience.as_deref().unwrap_or_default(),
            client_ip,
            purpose(&headers),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TRAEFIK: [(&str, &str); 4] = [
        ("x-forwarded-method", "POST"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "twins.test"),
        ("x-forwarded-uri", "/plant-9/admin?x=1"),
    ];

    #[test]
    fn each_convention_alone_names_the_request() {
        let o = original(&headers(&TRAEFIK)).unwrap();
        assert_eq!(
            (
                o.method.as_str(),
                o.host.as_deref(),
                o.path_and_query.as_str()
            ),
            ("POST", Some("twins.test"), "/plant-9/admin?x=1")
        );
        let o = original(&headers(&[
            ("x-original-url", "https://twins.test:8443/plant-7/x?y"),
            ("x-original-method", "DELETE"),
        ]))
        .unwrap();
        assert_eq!(
            (
                o.method.as_str(),
                o.host.as_deref(),
                o.path_and_query.as_str()
            ),
            ("DELETE", Some("twins.test:8443"), "/plant-7/x?y")
        );
    }

    #[test]
    fn a_client_written_set_that_disagrees_with_the_proxys_is_refused() {
        // Traefik and Caddy pass the client's X-Original-* through: it must not win.
        let spoof = |extra: &[(&'static str, &str)]| {
            let mut lines = TRAEFIK.to_vec();
            lines.extend_from_slice(extra);
            original(&headers(&lines)).map(|o| o.path_and_query)
        };
        assert_eq!(
            spoof(&[
                ("x-original-url", "https://twins.test/public/"),
                ("x-original-method", "POST"),
            ]),
            Err(OriginalError::Disagree("x-forwarded-uri"))
        );
        assert_eq!(
            spoof(&[
                ("x-original-url", "https://twins.test/plant-9/admin?x=1"),
                ("x-original-method", "GET"),
            ]),
            Err(OriginalError::Disagree("x-forwarded-method"))
        );
        assert_eq!(
            spoof(&[
                ("x-original-url", "https://public.test/plant-9/admin?x=1"),
                ("x-original-method", "POST"),
            ]),
            Err(OriginalError::Disagree("x-forwarded-host"))
        );
        // The same request named twice is fine, whatever the case and port of the host.
        assert_eq!(
            spoof(&[
                ("x-original-url", "https://Twins.Test:443/plant-9/admin?x=1"),
                ("x-original-method", "POST"),
            ]),
            Ok("/plant-9/admin?x=1".into())
        );
        // A method without its URL is half of nginx's set.
        assert_eq!(
            spoof(&[("x-original-method", "GET")]),
            Err(OriginalError::Missing("x-original-url"))
        );
    }

    #[test]
    fn nothing_is_assumed_for_a_missing_or_unreadable_header() {
        for (lines, want) in [
            (vec![], OriginalError::Missing("x-forwarded-uri")),
            (
                vec![("x-forwarded-uri", "/a"), ("x-forwarded-host", "h")],
                OriginalError::Missing("x-forwarded-method"),
            ),
            (
                vec![("x-forwarded-uri", "/a"), ("x-forwarded-method", "GET")],
                OriginalError::Missing("x-forwarded-host"),
            ),
            (
                vec![("x-original-url", "https://twins.test/a")],
                OriginalError::Missing("x-original-method"),
            ),
            (
                vec![("x-original-url", "/a"), ("x-original-method", "GET")],
                OriginalError::NotAbsolute,
            ),
            (
                vec![
                    ("x-original-url", "https://evil@twins.test/a"),
                    ("x-original-method", "GET"),
                ],
                OriginalError::Malformed("x-original-url"),
            ),
            (
                vec![
                    ("x-forwarded-uri", "/a"),
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-host", "evil@twins.test"),
                ],
                OriginalError::Malformed("x-forwarded-host"),
            ),
            (
                vec![
                    ("x-forwarded-uri", "/a"),
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-host", "twins.test/plant-9"),
                ],
                OriginalError::Malformed("x-forwarded-host"),
            ),
            (
                vec![
                    ("x-forwarded-uri", "/a"),
                    ("x-forwarded-uri", "/b"),
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-host", "h"),
                ],
                OriginalError::Malformed("x-forwarded-uri"),
            ),
            (
                vec![
                    ("x-forwarded-uri", "/a"),
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-method", "POST"),
                    ("x-forwarded-host", "h"),
                ],
                OriginalError::Malformed("x-forwarded-method"),
            ),
        ] {
            assert_eq!(
                original(&headers(&lines)).map(|o| o.path_and_query),
                Err(want),
                "{lines:?}"
            );
        }
    }
}
