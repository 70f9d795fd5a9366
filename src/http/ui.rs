//! The gateway's own pages: minijinja templates and static files from `web/`, embedded at
//! build time so the binary is self-contained. Every page goes out with a strict CSP (no
//! inline script or style, nothing third-party) and `no-store`.

use axum::body::Body;
use axum::extract::Path;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use std::sync::OnceLock;

pub const STATIC_PREFIX: &str = "/.twinward/static";

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../web/templates/base.html")),
    (
        "signin.html",
        include_str!("../../web/templates/signin.html"),
    ),
    ("mfa.html", include_str!("../../web/templates/mfa.html")),
    (
        "portal.html",
        include_str!("../../web/templates/portal.html"),
    ),
    (
        "denied.html",
        include_str!("../../web/templates/denied.html"),
    ),
    ("error.html", include_str!("../../web/templates/error.html")),
];

const STATIC_FILES: &[(&str, &str, &str)] = &[
    (
        "twinward.css",
        "text/css; charset=utf-8",
        include_str!("../../web/static/twinward.css"),
    ),
    (
        "passkey.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/static/passkey.js"),
    ),
    (
        "portal.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/static/portal.js"),
    ),
];

fn env() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        // `.html` names turn auto-escaping on.
        for (name, src) in TEMPLATES {
            if let Err(e) = env.add_template(name, src) {
                tracing::error!(template = name, error = %e, "template does not parse");
            }
        }
        env
    })
}

/// Adds the headers every gateway page carries.
pub fn secure_headers(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
}

/// Renders a page; `ctx` is merged over the values every template gets.
pub fn render(status: StatusCode, template: &str, ctx: serde_json::Value) -> Response<Body> {
    let mut full = serde_json::json!({ "product": "twinward", "static": STATIC_PREFIX });
    if let (Some(base), serde_json::Value::Object(extra)) = (full.as_object_mut(), ctx) {
        base.extend(extra);
    }
    let html = env()
        .get_template(template)
        .and_then(|t| t.render(minijinja::Value::from_serialize(&full)));
    let (status, body) = match html {
        Ok(h) => (status, h),
        Err(e) => {
            tracing::error!(template, error = %e, "page rendering failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Error</title><p>The page could not be shown.</p>".to_owned(),
            )
        }
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(&mut resp);
    resp
}

pub async fn static_file(Path(name): Path<String>) -> Response<Body> {
    let Some((_, ct, body)) = STATIC_FILES.iter().find(|(n, _, _)| *n == name) else {
        return super::error::not_found(false);
    };
    let mut resp = Response::new(Body::from(*body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(resp: Response<Body>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(http_body_util::BodyExt::collect(resp.into_body()))
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn every_template_renders_and_escapes() {
        let me = json!({"email": "<script>@x", "subject": "s", "roles": ["twin-viewer"]});
        let cases = [
            (
                "signin.html",
                json!({"login_url": "/.twinward/login", "signed_out": true}),
            ),
            (
                "mfa.html",
                json!({"mode": "enroll", "return_to": "/\"><x", "csrf": "c", "me": me}),
            ),
            (
                "mfa.html",
                json!({"mode": "stepup", "return_to": "/", "csrf": "c", "me": me, "reason": "fresh"}),
            ),
            (
                "portal.html",
                json!({
                    "me": {"email": "<script>@x", "subject": "s", "roles": ["twin-viewer"], "mfa_age_s": 3, "session_expires": "t", "idle_expires": "t"},
                    "routes": [{"name": "r", "url": "/plant-7/", "twin": "plant-7"}],
                    "passkeys": [{"id": "p", "name": "<b>key</b>", "created": "t", "last_used": null, "aaguid": "0"}],
                    "tokens": [{"id": "t", "name": "n", "roles": ["twin-viewer"], "twins": [], "created": "t", "expires": "t"}],
                    "sessions": [{"id": "s", "created": "t", "last_seen": "t", "user_agent": "ua", "current": true}],
                    "new_token": "twt_x", "csrf": "c", "available_roles": ["twin-viewer"], "available_twins": ["plant-7"],
                    "max_ttl_days": 90, "mfa_fresh": false
                }),
            ),
            (
                "denied.html",
                json!({"status": 403, "title": "t", "message": "<i>m</i>", "decision_id": "d"}),
            ),
            (
                "error.html",
                json!({"status": 502, "title": "t", "message": "m", "retry_url": "/x"}),
            ),
        ];
        for (name, ctx) in cases {
            let resp = render(StatusCode::OK, name, ctx);
            assert_eq!(resp.status(), StatusCode::OK, "{name}");
            assert_eq!(resp.headers()[CONTENT_SECURITY_POLICY], CSP);
            let html = body(resp);
            assert!(!html.contains("<script>@x"), "{name} did not escape");
            assert!(!html.contains("<b>key</b>"), "{name} did not escape");
            assert!(!html.contains("<i>m</i>"), "{name} did not escape");
            assert!(
                !html.contains("onclick") && !html.contains("style="),
                "{name} has inline code"
            );
        }
    }
}
