//! The one place refusals and failures become responses. Browsers get an HTML page; API
//! clients (`Accept: application/json` or a bearer token) get `application/problem+json`
//! (RFC 9457) with the `decision_id` admins find in the audit log. 5xx bodies stay generic;
//! the detail goes to the log.

use crate::access::tokens::AuthError;
use crate::access::{Refusal, Refused};
use crate::config::signin::SigninConfig;
use axum::body::Body;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

/// Whether the client wants an HTML page rather than problem+json.
pub fn wants_html<H: super::headers::HeaderLines + ?Sized>(headers: &H) -> bool {
    if headers.has("authorization") {
        return false;
    }
    headers
        .text("accept")
        .is_some_and(|a| a.contains("text/html") && !a.starts_with("application/json"))
}

/// A problem+json or HTML response.
pub fn problem(
    status: StatusCode,
    title: &str,
    detail: &str,
    decision_id: Option<&str>,
    html: bool,
) -> Response<Body> {
    let body = if html {
        page(status, title, detail, decision_id)
    } else {
        let mut v = serde_json::json!({
            "type": "about:blank",
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        if let (Some(id), Some(o)) = (decision_id, v.as_object_mut()) {
            o.insert("decision_id".into(), id.into());
        }
        v.to_string()
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let ct = if html {
        "text/html; charset=utf-8"
    } else {
        "application/problem+json"
    };
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(id) = decision_id.and_then(|i| HeaderValue::from_str(i).ok()) {
        resp.headers_mut().insert("x-twinward-decision-id", id);
    }
    if html {
        super::ui::secure_headers(&mut resp);
    }
    resp
}

fn page(status: StatusCode, title: &str, detail: &str, decision_id: Option<&str>) -> String {
    let id = decision_id
        .map(|i| format!("<p>Decision id: <code>{}</code> (your administrator can look it up in the audit log)</p>", escape(i)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{code} {t}</title></head><body><main><h1>{t}</h1><p>{d}</p>{id}</main></body></html>",
        code = status.as_u16(),
        t = escape(title),
        d = escape(detail),
    )
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Where a browser comes back to after signing in: a path on the auth host, or the full
/// URL on another host the gateway serves.
pub fn return_url(cfg: &SigninConfig, host: Option<&str>, uri: &http::Uri) -> String {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let auth_host = cfg
        .public_url
        .host_str()
        .map(|h| match cfg.public_url.port() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_owned(),
        });
    match host {
        Some(h) if Some(h.to_ascii_lowercase()) != auth_host => {
            format!("{}://{h}{pq}", cfg.public_url.scheme())
        }
        _ => pq.to_owned(),
    }
}

fn on_auth_host(cfg: &SigninConfig, path: &str, return_to: &str) -> String {
    format!(
        "{}{path}?return_to={}",
        cfg.public_url.as_str().trim_end_matches('/'),
        percent_encoding::utf8_percent_encode(return_to, percent_encoding::NON_ALPHANUMERIC)
    )
}

/// The sign-in URL that comes back to `return_to`.
pub fn login_location(cfg: &SigninConfig, return_to: &str) -> String {
    on_auth_host(cfg, "/.twinward/login", return_to)
}

pub fn mfa_location(cfg: &SigninConfig, return_to: &str, step_up: bool) -> String {
    let mut l = on_auth_host(cfg, "/.twinward/mfa", return_to);
    if step_up {
        l.push_str("&step_up=1");
    }
    l
}

pub fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Browser sign-in config and the URL to come back to, for refusals a browser can act on.
pub type Comeback<'a> = Option<(&'a SigninConfig, &'a str)>;

/// The response for a refused request.
pub fn refusal(r: &Refused, html: bool, comeback: Comeback<'_>) -> Response<Body> {
    let id = Some(r.decision_id.as_str());
    let browser_flow = if html { comeback } else { None };
    match &r.refusal {
        Refusal::Unauthenticated(AuthError::Missing) if browser_flow.is_some() => {
            match browser_flow {
                Some((cfg, back)) => redirect(&login_location(cfg, back)),
                None => not_found(html),
            }
        }
        Refusal::Unauthenticated(e) => {
            let mut resp = problem(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                &e.to_string(),
                id,
                html,
            );
            let challenge = match e {
                AuthError::Missing => "Bearer realm=\"twinward\"".to_owned(),
                other => format!(
                    "Bearer realm=\"twinward\", error=\"invalid_token\", error_description=\"{}\"",
                    other.to_string().replace('"', "'")
                ),
            };
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(WWW_AUTHENTICATE, v);
            }
            resp
        }
        Refusal::SecondFactorRequired | Refusal::StepUp => {
            let step_up = r.refusal == Refusal::StepUp;
            if let Some((cfg, back)) = browser_flow {
                return redirect(&mfa_location(cfg, back, step_up));
            }
            let (detail, challenge) = if step_up {
                (
                    "this request needs a fresh passkey check; sign in again in the browser",
                    "Bearer realm=\"twinward\", error=\"insufficient_user_authentication\", error_description=\"A fresh passkey check is required\"",
                )
            } else {
                (
                    "finish signing in with your passkey first",
                    "Bearer realm=\"twinward\", error=\"insufficient_user_authentication\", error_description=\"A passkey check is required\"",
                )
            };
            let mut resp = problem(StatusCode::UNAUTHORIZED, "Unauthorized", detail, id, html);
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            resp
        }
        Refusal::Denied { reason } => {
            if html {
                super::ui::render(
                    StatusCode::FORBIDDEN,
                    "denied.html",
                    serde_json::json!({
                        "status": 403,
                        "title": "You do not have access",
                        "message": "Policy does not allow this request for your account right now.",
                        "decision_id": r.decision_id,
                    }),
                )
            } else {
                problem(StatusCode::FORBIDDEN, "Forbidden", reason, id, html)
            }
        }
        Refusal::Unavailable => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "the gateway cannot decide right now; try again shortly",
            id,
            html,
        ),
    }
}

/// 504: the twin did not answer within the route's timeout.
pub fn upstream_timeout(decision_id: &str) -> Response<Body> {
    problem(
        StatusCode::GATEWAY_TIMEOUT,
        "Gateway Timeout",
        "the twin service did not answer in time",
        Some(decision_id),
        false,
    )
}

/// 502: the twin could not be reached, or answered in a way that cannot be passed on.
pub fn bad_gateway(detail: &str, decision_id: &str) -> Response<Body> {
    problem(
        StatusCode::BAD_GATEWAY,
        "Bad Gateway",
        detail,
        Some(decision_id),
        false,
    )
}

pub const UNREACHABLE: &str = "the twin service is unreachable";
pub const SWITCHED_UNASKED: &str = "the twin service switched protocols unasked";
pub const CANNOT_PASS_ON: &str = "the twin service sent a response the gateway cannot pass on";

/// 500: an allowed request whose credential could not be attached (fail closed).
pub fn credential_unattached(decision_id: &str, html: bool) -> Response<Body> {
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        "credential could not be attached",
        Some(decision_id),
        html,
    )
}

pub fn not_found(html: bool) -> Response<Body> {
    problem(
        StatusCode::NOT_FOUND,
        "Not Found",
        "nothing is served at this address",
        None,
        html,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_error_pages_carry_the_strict_headers_and_escape() {
        let resp = problem(
            StatusCode::BAD_GATEWAY,
            "Bad <Gateway>",
            "x",
            Some("d-1"),
            true,
        );
        assert_eq!(
            resp.headers()[http::header::CONTENT_SECURITY_POLICY],
            super::super::ui::CSP
        );
        assert_eq!(resp.headers()["x-frame-options"], "DENY");
        assert_eq!(resp.headers()["x-twinward-decision-id"], "d-1");
        let json = problem(StatusCode::BAD_GATEWAY, "Bad Gateway", "x", None, false);
        assert_eq!(json.headers()[CONTENT_TYPE], "application/problem+json");
        assert!(page(StatusCode::BAD_GATEWAY, "<b>", "<i>", Some("<id>")).contains("&lt;b&gt;"));
        assert!(!page(StatusCode::BAD_GATEWAY, "<b>", "<i>", Some("<id>")).contains("<b>"));
    }
}
