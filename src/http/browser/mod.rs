//! The browser side of the gateway: sign-in ([`auth`]), passkeys ([`passkey`]) and the
//! portal ([`portal`]). Shared here: finding the session, the `Origin` and CSRF checks that
//! every state-changing endpoint makes, and `return_to` validation (no open redirects).

pub mod auth;
pub mod passkey;
pub mod portal;

use super::error;
use super::AppState;
use crate::access::signin::{LiveSession, Signin};
use crate::access::Gateway;
use crate::clock::Timestamp;
use axum::body::Body;
use http::{HeaderMap, Response, StatusCode};
use std::sync::Arc;

/// Where a browser goes when no (valid) `return_to` is given.
pub const DEFAULT_RETURN: &str = "/.twinward/";

pub struct Browser {
    pub gw: Arc<Gateway>,
    pub signin: Arc<Signin>,
    pub now: Timestamp,
}

impl Browser {
    /// Consumes the one-time sign-in record `kind` named by `key` (a query parameter).
    /// Missing, used, expired and unreadable records are all `None`; so is a store failure
    /// (logged), so the step it guards is refused rather than let through.
    pub async fn take_once<T: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        key: Option<&String>,
    ) -> Option<T> {
        let key = key?;
        match crate::session::take_json(self.signin.sessions.as_ref(), kind, key, self.now).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, kind, "one-time record lookup failed");
                None
            }
        }
    }

    pub fn of(state: &AppState) -> Option<Browser> {
        let signin = state.gateway.signin.clone()?;
        Some(Browser {
            now: state.gateway.now(),
            gw: state.gateway.clone(),
            signin,
        })
    }

    /// The live session the request's cookie names, if any. A store failure is logged and
    /// treated as no session, which sends the browser to sign in rather than to a loop.
    pub async fn session(&self, headers: &HeaderMap) -> Option<LiveSession> {
        let cookie = super::cookies::get(headers, self.signin.cfg.cookie_name)?;
        match self.signin.session(cookie, self.now).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed");
                None
            }
        }
    }

    /// The auth host's origin must be where a state-changing request comes from: `Origin`
    /// when the browser sends it, else `Sec-Fetch-Site: same-origin`.
    pub fn same_origin(&self, headers: &HeaderMap) -> bool {
        match headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
        {
            Some(o) => o == self.signin.cfg.origin(),
            None => headers
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|s| s == "same-origin"),
        }
    }

    /// For sign-out only: the request may also come from the pages of the route host it is
    /// sent to (the portal and passkey pages shown there post to their own host), so that a
    /// session handed to a route host can be ended from it. Every other change is made on
    /// the auth host alone.
    pub fn from_own_host(&self, headers: &HeaderMap) -> bool {
        if self.same_origin(headers) {
            return true;
        }
        let text = |n: http::header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
        let (Some(origin), Some(host)) = (text(http::header::ORIGIN), text(http::header::HOST))
        else {
            return false;
        };
        let own = format!("{}://{host}", self.signin.cfg.public_url.scheme());
        let name = crate::routing::host_without_port(host);
        origin.eq_ignore_ascii_case(&own)
            && self
                .gw
                .config
                .routes
                .iter()
                .filter_map(|r| r.host.as_deref())
                .any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Checks `Origin` and the session's CSRF token for a state-changing request.
    #[allow(clippy::result_large_err)]
    pub fn check_write(
        &self,
        headers: &HeaderMap,
        session: &LiveSession,
        presented: Option<&str>,
    ) -> Result<(), Response<Body>> {
        self.check_write_from(headers, session, presented, self.same_origin(headers))
    }

    /// [`Browser::check_write`] for sign-out, which a route host's own pages may send.
    #[allow(clippy::result_large_err)]
    pub fn check_signout(
        &self,
        headers: &HeaderMap,
        session: &LiveSession,
        presented: Option<&str>,
    ) -> Result<(), Response<Body>> {
        self.check_write_from(headers, session, presented, self.from_own_host(headers))
    }

    #[allow(clippy::result_large_err)]
    fn check_write_from(
        &self,
        headers: &HeaderMap,
        session: &LiveSession,
        presented: Option<&str>,
        origin_ok: bool,
    ) -> Result<(), Response<Body>> {
        if !origin_ok {
            return Err(error::problem(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "this request did not come from the gateway's own pages",
                None,
                false,
            ));
        }
        let presented =
            presented.or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
        let ok = presented.is_some_and(|p| {
            subtle::ConstantTimeEq::ct_eq(p.as_bytes(), session.session.csrf.as_bytes()).into()
        });
        if ok {
            Ok(())
        } else {
            Err(error::problem(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "the form has expired; reload the page and try again",
                None,
                false,
            ))
        }
    }

    /// A safe place to send the browser: `raw` resolved against the auth host, accepted
    /// only if it lands on the auth host or a host a route names (same scheme). The
    /// resolved URL is what the browser gets, never the raw text, so no two parsers can
    /// disagree about where it points.
    pub fn return_to(&self, raw: Option<&str>) -> String {
        safe_return_to(&self.gw, &self.signin, raw).unwrap_or_else(|| DEFAULT_RETURN.to_owned())
    }

    pub fn me(&self, s: &LiveSession) -> serde_json::Value {
        serde_json::json!({
            "email": s.session.user.email,
            "subject": s.session.user.subject,
            "roles": s.session.user.roles,
        })
    }
}

/// Where to send a browser that has just finished signing in on the auth host: a path
/// there directly; a URL on another route host through `/.twinward/login`, which hands
/// the session to that host (the auth host's cookie does not reach it).
pub fn via_login(return_to: &str) -> String {
    if return_to.starts_with('/') {
        return_to.to_owned()
    } else {
        format!(
            "/.twinward/login?return_to={}",
            percent_encoding::utf8_percent_encode(return_to, percent_encoding::NON_ALPHANUMERIC)
        )
    }
}

pub fn safe_return_to(gw: &Gateway, signin: &Signin, raw: Option<&str>) -> Option<String> {
    let route_hosts = gw.config.routes.iter().filter_map(|r| r.host.as_deref());
    resolve_return_to(&signin.cfg.public_url, route_hosts, raw?)
}

/// `raw` resolved against the auth host `base`: its path (and query) when it lands on the
/// auth host, the full URL when it lands on one of `route_hosts` (same scheme and port),
/// else nothing.
fn resolve_return_to<'a>(
    base: &url::Url,
    mut route_hosts: impl Iterator<Item = &'a str>,
    raw: &str,
) -> Option<String> {
    if raw.is_empty()
        || raw.len() > 2048
        || raw
            .chars()
            .any(|c| c.is_control() || c == '\\' || c.is_whitespace())
    {
        return None;
    }
    let lower = raw.to_ascii_lowercase();
    // Encoded slashes and backslashes have no business in a return address.
    if lower.contains("%5c") || lower.contains("%2f%2f") || lower.starts_with("/%2f") {
        return None;
    }
    let resolved = base.join(raw).ok()?;
    if resolved.scheme() != base.scheme()
        || !resolved.username().is_empty()
        || resolved.password().is_some()
    {
        return None;
    }
    let host = resolved.host_str()?.to_ascii_lowercase();
    let port = resolved.port_or_known_default();
    let same_port = port == base.port_or_known_default();
    let auth_host = base.host_str().map(str::to_ascii_lowercase);
    // Dot segments can leave a path that starts with `//` (`/.//evil.example` resolves to
    // the path `//evil.example`), which a browser reads as another host when it is sent
    // back as a relative `Location`.
    if resolved.path().starts_with("//") {
        return None;
    }
    let mut path = resolved.path().to_owned();
    if let Some(q) = resolved.query() {
        path.push('?');
        path.push_str(q);
    }
    if Some(&host) == auth_host.as_ref() && same_port {
        return Some(path);
    }
    let served = route_hosts.any(|h| h.eq_ignore_ascii_case(&host));
    (served && same_port).then(|| resolved.to_string())
}

/// A JSON problem for the browser's own fetch calls, optionally with where to step up.
pub fn json_problem(
    status: StatusCode,
    title: &str,
    detail: &str,
    step_up_url: Option<&str>,
) -> Response<Body> {
    let mut v = serde_json::json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail});
    if let (Some(u), Some(o)) = (step_up_url, v.as_object_mut()) {
        o.insert("step_up_url".into(), u.into());
    }
    let mut resp = Response::new(Body::from(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

pub fn json_ok(v: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(v.to_string()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The calm error page for sign-in failures.
pub fn error_page(
    status: StatusCode,
    title: &str,
    message: &str,
    retry_url: Option<&str>,
) -> Response<Body> {
    super::ui::render(
        status,
        "error.html",
        serde_json::json!({"status": status.as_u16(), "title": title, "message": message, "retry_url": retry_url}),
    )
}

pub fn not_configured() -> Response<Body> {
    error::not_found(true)
}

#[cfg(test)]
mod tests {
    use super::resolve_return_to;

    fn resolve(raw: &str) -> Option<String> {
        let base = url::Url::parse("http://localhost:8080").unwrap();
        resolve_return_to(&base, ["twins-b.example"].into_iter(), raw)
    }

    #[test]
    fn return_to_stays_on_the_gateway() {
        let refused = [
            "",
            "//evil.example",
            "/\\evil.example",
            "\\/evil.example",
            "https:evil.example",
            "https://evil.example/",
            "http://evil.example/",
            "http:///evil.example",
            "http://localhost:9090/",
            "http://localhost/",
            "http://127.0.0.1:8080/",
            "/%2F%2Fevil.example",
            "/%2f/evil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%5cevil.example",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,x",
            "//localhost@evil.example",
            "//localhost:8080@evil.example",
            "http://evil.example@localhost:8080/",
            "http://u:p@localhost:8080/",
            " //evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ok\r\nSet-Cookie: x=1",
            "http://twins-b.example:9090/",
            "https://twins-b.example/",
            // Dot segments that leave `//` at the start of the path.
            "/.//evil.example",
            "/..//evil.example",
            "/x/..//evil.example",
            "/%2e//evil.example",
            "http://twins-b.example:8080/.//evil.example",
            "http://localhost:8080/.//evil.example",
        ];
        for raw in refused {
            assert_eq!(resolve(raw), None, "{raw:?}");
        }
        let long = format!("/{}", "a".repeat(2048));
        assert_eq!(resolve(&long), None);

        let kept = [
            ("/ok/path?x=1", "/ok/path?x=1"),
            ("/.twinward/", "/.twinward/"),
            ("/plant-7/a/../b", "/plant-7/b"),
            ("plant-7/x", "/plant-7/x"),
            ("http:evil.example", "/evil.example"),
            ("http://LOCALHOST:8080/x?y=1#frag", "/x?y=1"),
            ("/%09/x", "/%09/x"),
            (
                "http://twins-b.example:8080/p?q=1",
                "http://twins-b.example:8080/p?q=1",
            ),
        ];
        for (raw, want) in kept {
            assert_eq!(resolve(raw).as_deref(), Some(want), "{raw:?}");
        }
    }
}
