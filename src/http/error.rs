//! The one place refusals and failures become responses. Browsers get an HTML page; API
//! clients (`Accept: application/json` or a bearer token) get `application/problem+json`
//! (RFC 9457) with the `decision_id` admins find in the audit log. 5xx bodies stay generic;
//! the detail goes to the log.

use crate::access::tokens::AuthError;
use crate::access::{Refusal, Refused};
use axum::body::Body;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

/// Whether the client wants an HTML page rather than problem+json.
pub fn wants_html(headers: &http::HeaderMap) -> bool {
    if headers.contains_key(http::header::AUTHORIZATION) {
        return false;
    }
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
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

/// The response for a refused request.
pub fn refusal(r: &Refused, html: bool) -> Response<Body> {
    let id = Some(r.decision_id.as_str());
    match &r.refusal {
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
        Refusal::Denied { reason } => problem(StatusCode::FORBIDDEN, "Forbidden", reason, id, html),
        Refusal::Unavailable => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "the gateway cannot decide right now; try again shortly",
            id,
            html,
        ),
    }
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
