//! Server-rendered pages of the demo servers: one minijinja environment with HTML
//! auto-escaping, and the security headers every page carries.
//!
//! INVARIANT: pages carry no scripts and every value is escaped by the template engine;
//! the CSP forbids scripts, so a missed escape still cannot run code.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;

/// Shared by every page; inline styles only, no external resources.
const BASE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:42rem;padding:1rem;line-height:1.5;color:#1b1b1b;background:#fafafa}
h1{font-size:1.5rem;margin:.5rem 0 1rem}
.banner{background:#b00020;color:#fff;font-weight:700;font-size:1.1rem;padding:1rem;border-radius:.5rem;margin-bottom:1rem}
.notice{background:#e8f0fe;border-left:.3rem solid #1a56db;padding:.75rem 1rem;margin:1rem 0}
.error{background:#fdecea;border-left:.3rem solid #b00020;padding:.75rem 1rem;margin:1rem 0}
.user{border:1px solid #ccc;border-radius:.5rem;padding:.75rem 1rem;margin:.75rem 0;background:#fff}
.user p{margin:.25rem 0}
button{font-size:1rem;padding:.6rem 1rem;border-radius:.4rem;border:1px solid #1a56db;background:#1a56db;color:#fff;width:100%;cursor:pointer}
button.secondary{background:#fff;color:#1b1b1b;border-color:#888}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.4rem .5rem;border-bottom:1px solid #ddd;vertical-align:top;word-break:break-all}
th{width:35%;word-break:normal}
code{font-size:.95em}
</style>
</head>
<body>
{% block body %}{% endblock %}
</body>
</html>
"#;

const IDP_AUTHORIZE: &str = r#"{% extends "base.html" %}
{% block title %}Sign in: demo identity provider{% endblock %}
{% block body %}
<div class="banner" role="alert">Demo identity provider — for trying twinward on this computer only. Never use it in production.</div>
<h1>Choose who to sign in as</h1>
<p>The application <code>{{ client_id }}</code> asks you to sign in. After you choose, you will be sent back to <code>{{ redirect_uri }}</code>.</p>
<form method="post" action="/authorize">
<input type="hidden" name="request_id" value="{{ request_id }}">
{% for user in users %}
<div class="user">
<button type="submit" name="user" value="{{ user.id }}" aria-describedby="about-{{ user.id }}">Sign in as {{ user.name }}</button>
<div id="about-{{ user.id }}">
<p><strong>{{ user.name }}</strong> &lt;{{ user.email }}&gt;</p>
<p>Groups: {% for g in user.groups %}<code>{{ g }}</code>{% if not loop.last %}, {% endif %}{% else %}none{% endfor %}</p>
<p>{{ user.about }}</p>
</div>
</div>
{% endfor %}
<div class="user">
<button type="submit" name="cancel" value="1" class="secondary">Cancel and go back</button>
</div>
</form>
{% endblock %}
"#;

const ERROR_PAGE: &str = r#"{% extends "base.html" %}
{% block title %}{{ title }}{% endblock %}
{% block body %}
{% if banner %}<div class="banner" role="alert">Demo identity provider — for trying twinward on this computer only. Never use it in production.</div>{% endif %}
<h1>{{ title }}</h1>
<div class="error" role="alert"><p>{{ detail }}</p></div>
{% endblock %}
"#;

const TWIN_PAGE: &str = r#"{% extends "base.html" %}
{% block title %}{{ plant_title }} digital twin{% endblock %}
{% block body %}
<h1>{{ plant_title }} digital twin</h1>
<p>Served by the demo twin at <code>/{{ plant }}/</code>, behind the twinward gateway.</p>
{% if claims %}
<h2>Who this twin thinks you are</h2>
<div class="notice"><p>This service never sees your company identity. It trusts only the credential the gateway signed for this request, and that names you by a pseudonym.</p></div>
<table>
<tr><th scope="row">Subject (pseudonymous)</th><td><code>{{ claims.sub }}</code></td></tr>
<tr><th scope="row">Roles</th><td>{% for r in claims.roles %}<code>{{ r }}</code>{% if not loop.last %}, {% endif %}{% else %}none{% endfor %}</td></tr>
<tr><th scope="row">Scope (allowed actions)</th><td><code>{{ claims.scope }}</code></td></tr>
<tr><th scope="row">Authentication methods</th><td>{% for a in claims.amr %}<code>{{ a }}</code>{% if not loop.last %}, {% endif %}{% else %}none{% endfor %}</td></tr>
<tr><th scope="row">Twin</th><td><code>{{ claims.twin }}</code></td></tr>
<tr><th scope="row">Audience (route)</th><td><code>{{ claims.aud }}</code></td></tr>
<tr><th scope="row">Issuer</th><td><code>{{ claims.iss }}</code></td></tr>
<tr><th scope="row">Expires</th><td>{{ claims.exp }} (in {{ claims.expires_in }} s)</td></tr>
</table>
<h2>Telemetry</h2>
<table>
<tr><th scope="row">Turbine speed</th><td>{{ telemetry.turbine_rpm }} rpm</td></tr>
<tr><th scope="row">Temperature</th><td>{{ telemetry.temperature_c }} °C</td></tr>
<tr><th scope="row">Pressure</th><td>{{ telemetry.pressure_bar }} bar</td></tr>
<tr><th scope="row">Temperature setpoint</th><td>{{ telemetry.setpoint_c }} °C</td></tr>
<tr><th scope="row">Measured at</th><td>{{ telemetry.time }}</td></tr>
</table>
<p>JSON: <code>GET /{{ plant }}/api/telemetry</code>. Change the setpoint (policy decides whether you may): <code>POST /{{ plant }}/api/setpoint</code> with <code>{"value": 70}</code>.</p>
{% else %}
<div class="error" role="alert">
<p><strong>No valid gateway credential: this twin will not show you anything.</strong></p>
<p>{{ reason }}</p>
<p>The twin trusts only credentials signed by the gateway. Reach it through twinward, not directly.</p>
</div>
{% endif %}
{% endblock %}
"#;

/// The demo servers' templates.
pub(crate) struct Pages {
    env: Environment<'static>,
}

impl Pages {
    pub(crate) fn new() -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        // A misspelt variable fails the render (and the tests) instead of printing nothing.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template("base.html", BASE)?;
        env.add_template("idp_authorize.html", IDP_AUTHORIZE)?;
        env.add_template("error.html", ERROR_PAGE)?;
        env.add_template("twin.html", TWIN_PAGE)?;
        Ok(Pages { env })
    }

    /// Renders `name` (auto-escaped as HTML by its extension) into a response with `csp`.
    pub(crate) fn render<S: Serialize>(
        &self,
        name: &str,
        status: StatusCode,
        csp: &str,
        ctx: S,
    ) -> Response {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(body) => html(status, csp, body),
            Err(e) => {
                tracing::error!(template = name, error = %e, "demo page failed to render");
                html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    STRICT_CSP,
                    "<!doctype html><title>Error</title><p>Internal error.</p>".to_owned(),
                )
            }
        }
    }
}

/// For pages that submit no forms.
pub(crate) const STRICT_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// An HTML response with the headers every demo page carries.
pub(crate) fn html(status: StatusCode, csp: &str, body: String) -> Response {
    let mut resp = (status, Html(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(csp).unwrap_or(HeaderValue::from_static(STRICT_CSP)),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_are_escaped() {
        let pages = Pages::new().unwrap();
        let resp = pages.render(
            "error.html",
            StatusCode::BAD_REQUEST,
            STRICT_CSP,
            minijinja::context! { title => "t", detail => "<script>alert(1)</script>", banner => false },
        );
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            resp.headers()[CONTENT_SECURITY_POLICY],
            STRICT_CSP,
            "pages carry the strict CSP"
        );
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains("<script>"), "{body}");
        assert!(body.contains("&lt;script&gt;"), "{body}");
        assert!(body.contains(r#"name="viewport""#));
    }
}
