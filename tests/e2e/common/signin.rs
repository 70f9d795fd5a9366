//! Shared setup of the sign-in tests: a real OpenID provider ([`super::idp`]), the gateway on
//! `http://localhost:<port>` with `[oidc]`, `[webauthn]` and `[session]`, test policies that
//! do not depend on the time of day, and an echo upstream. Also a cookie-keeping HTTP agent
//! that walks the code flow without a browser, and the browser steps the passkey tests share.

use super::browser::Page;
use super::idp::Idp;
use super::{free_port, raw, Gateway, GatewayOptions, RawResponse, RouteSpec, Upstream};
use serde_json::Value;
use std::time::{Duration, Instant};

/// How recent a passkey check must be (seconds) for the writes and for the reads of
/// `plant-9` that the test policies allow.
pub const FRESH_S: u64 = 3;

/// Test policies: viewers (and operators) read plant-7; operators read plant-9 and write
/// anything only within [`FRESH_S`] seconds of a passkey check.
pub fn test_policies() -> Vec<(String, String)> {
    let text = format!(
        r#"@id("test-read-plant-7")
permit (
  principal in Twinward::Role::"twin-viewer",
  action == Twinward::Action::"read",
  resource == Twinward::Twin::"plant-7"
);

@id("test-read-plant-9-fresh-mfa")
permit (
  principal in Twinward::Role::"twin-operator",
  action == Twinward::Action::"read",
  resource == Twinward::Twin::"plant-9"
)
when {{ context.auth.mfa && context.auth.mfa_age_s < {FRESH_S} }};

@id("test-write-fresh-mfa")
permit (
  principal in Twinward::Role::"twin-operator",
  action == Twinward::Action::"write",
  resource
)
when {{ context.auth.mfa && context.auth.mfa_age_s < {FRESH_S} }};
"#
    );
    vec![("test.cedar".to_owned(), text)]
}

/// The provider, the gateway in front of the echo upstream, and where the browser finds it.
pub struct SigninEnv {
    pub idp: Idp,
    pub gw: Gateway,
    pub up: Upstream,
    pub port: u16,
    /// `http://localhost:<port>`: the gateway's public URL and WebAuthn origin.
    pub origin: String,
}

impl SigninEnv {
    /// Routes `/plant-7` (twin plant-7) and `/plant-9` (twin plant-9) to one echo upstream.
    pub async fn start() -> SigninEnv {
        Self::start_with_session(
            "idle_timeout = \"30m\"\nmax_lifetime = \"8h\"\nmfa_max_age = \"5m\"",
        )
        .await
    }

    /// [`SigninEnv::start`] with these lines in `[session]`.
    pub async fn start_with_session(session: &str) -> SigninEnv {
        Self::start_with(session, Vec::new()).await
    }

    /// [`SigninEnv::start_with_session`] plus `routes` (their upstream is replaced by the
    /// env's recording upstream).
    pub async fn start_with(session: &str, mut routes: Vec<RouteSpec>) -> SigninEnv {
        let up = Upstream::start().await;
        let port = free_port();
        let origin = format!("http://localhost:{port}");
        let idp = Idp::start(
            &[format!("{origin}/.twinward/callback")],
            &Idp::default_users(),
        );
        let extra = format!(
            r#"[oidc]
issuer = "{issuer}"
client_id = "{client_id}"
client_secret_file = "oidc-client-secret"
scopes = ["openid", "email", "profile", "groups"]
roles_claim = "groups"
roles = {{ "twin-operators" = "twin-operator", "twin-viewers" = "twin-viewer", "contractors" = "contractor" }}
jwks_refresh_interval = "1s"

[webauthn]
rp_name = "Plant twins"

[session]
{session}
"#,
            issuer = idp.issuer,
            client_id = idp.client_id,
        );
        let gw = super::sync(|| {
            Gateway::start(GatewayOptions {
                routes: {
                    for r in &mut routes {
                        r.upstream = format!("http://{}", up.addr);
                    }
                    let mut all = vec![
                        RouteSpec::new("plant-7", "/plant-7", up.addr, "plant-7", 2),
                        RouteSpec::new("plant-9", "/plant-9", up.addr, "plant-9", 3),
                    ];
                    all.append(&mut routes);
                    all
                },
                server_extra: format!("public_url = \"{origin}\""),
                extra,
                port: Some(port),
                policies: Some(test_policies()),
                files: vec![("oidc-client-secret".into(), idp.client_secret.clone())],
                ..Default::default()
            })
        });
        SigninEnv {
            idp,
            gw,
            up,
            port,
            origin,
        }
    }

    /// The gateway's public URL followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.origin, path)
    }

    /// Audit events of `kind`.
    pub fn audit_of(&self, kind: &str) -> Vec<Value> {
        super::sync(|| self.gw.audit())
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// Audit events of `kind`, once there are at least `n` (the audit log is written in
    /// the background); fails after 5 s.
    pub fn audit_until(&self, kind: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = self.audit_of(kind);
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "{} {kind} audit events, expected {n}: {events:?}",
                events.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A request to the gateway as `Host: localhost:<port>`, with no cookie jar.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> RawResponse {
        Agent::new().request(method, &self.url(target), headers, body)
    }
}

/// A cookie jar and a raw HTTP/1.1 client for `http://localhost:<port>` URLs. Like a
/// browser, it keeps cookies per host regardless of port: the gateway and the provider share
/// `localhost` (the provider's cookies are named `idp_*`).
#[derive(Default, Clone)]
pub struct Agent {
    /// (name, value, path)
    pub cookies: Vec<(String, String, String)>,
}

/// `Location` of a redirect, resolved against the URL that answered.
pub fn location(base: &str, r: &RawResponse) -> String {
    let loc = r
        .header("location")
        .unwrap_or_else(|| panic!("no Location in {} {}", r.status, r.body));
    url::Url::parse(base)
        .and_then(|b| b.join(loc))
        .map(|u| u.to_string())
        .unwrap_or_else(|_| loc.to_owned())
}

/// Undoes the HTML escaping of the gateway's templates.
pub fn html_unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Every `Set-Cookie` value of a response.
pub fn set_cookies(r: &RawResponse) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The value a response sets for cookie `name` (empty when it clears it).
pub fn set_cookie_value(r: &RawResponse, name: &str) -> Option<String> {
    set_cookies(r).into_iter().find_map(|c| {
        let (n, v) = c.split(';').next()?.split_once('=')?;
        (n.trim() == name).then(|| v.trim().to_owned())
    })
}

impl Agent {
    pub fn new() -> Agent {
        Agent::default()
    }

    /// The value of cookie `name`, if the jar holds it.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.clone())
    }

    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.retain(|(n, _, _)| n != name);
        self.cookies
            .push((name.to_owned(), value.to_owned(), "/".to_owned()));
    }

    pub fn forget(&mut self, name: &str) {
        self.cookies.retain(|(n, _, _)| n != name);
    }

    /// Sends one request to an absolute `http://localhost:<port>/…` URL, with the jar's
    /// cookies, and stores the cookies the response sets.
    pub fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> RawResponse {
        let u = url::Url::parse(url).unwrap_or_else(|e| panic!("not a URL {url:?}: {e}"));
        assert_eq!(u.host_str(), Some("localhost"), "{url}");
        let port = u.port().unwrap_or(80);
        let target = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        };
        let cookie = self
            .cookies
            .iter()
            .filter(|(_, _, p)| u.path().starts_with(p.as_str()))
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n"
        );
        if !cookie.is_empty() {
            req.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let r = raw(addr, &req).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        for c in set_cookies(&r) {
            self.store(c);
        }
        r
    }

    pub fn get(&mut self, url: &str) -> RawResponse {
        self.request("GET", url, &[("Accept", "text/html")], None)
    }

    fn store(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';').map(str::trim);
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            return;
        };
        let mut path = "/".to_owned();
        let mut expired = value.is_empty();
        for attr in parts {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            if k.eq_ignore_ascii_case("path") {
                path = v.to_owned();
            } else if (k.eq_ignore_ascii_case("expires") && v.contains("1970"))
                || (k.eq_ignore_ascii_case("max-age") && v.trim() == "0")
            {
                expired = true;
            }
        }
        self.cookies.retain(|(n, _, p)| !(n == name && *p == path));
        if !expired {
            self.cookies
                .push((name.to_owned(), value.to_owned(), path.clone()));
        }
    }

    /// `GET /.twinward/login?return_to=…` (the raw, unencoded `return_to` query text);
    /// asserts the redirect to the provider's authorization endpoint and returns its URL.
    pub fn start_login(&mut self, env: &SigninEnv, return_to_query: &str) -> String {
        let url = env.url(&format!("/.twinward/login?return_to={return_to_query}"));
        let r = self.get(&url);
        assert_eq!(r.status, 302, "login {return_to_query:?}: {}", r.body);
        let to = location(&url, &r);
        assert!(
            to.starts_with(&env.idp.url("/auth?")),
            "login {return_to_query:?} did not go to the provider: {to}"
        );
        assert!(
            self.cookie("twinward-login").is_some(),
            "no login cookie: {:?}",
            r.headers
        );
        to
    }

    /// At the provider: from the authorization URL to the redirect back to the gateway,
    /// choosing `user` on the login page (or `cancel`) if the provider shows it. Returns the
    /// callback URL.
    pub fn at_idp(&mut self, env: &SigninEnv, authorize_url: &str, choice: (&str, &str)) -> String {
        let idp = &env.idp;
        let mut url = authorize_url.to_owned();
        for _ in 0..6 {
            if !url.starts_with(&idp.issuer) {
                return url;
            }
            let r = if url.contains("/interaction/") && !url.ends_with("/login") {
                let login = format!("{url}/login");
                let body = super::form_encode(&[choice]);
                let r = self.request(
                    "POST",
                    &login,
                    &[("Content-Type", "application/x-www-form-urlencoded")],
                    Some(&body),
                );
                url = login;
                r
            } else {
                self.request("GET", &url, &[], None)
            };
            assert!(
                r.status == 302 || r.status == 303,
                "provider at {url}: {} {}\n{}",
                r.status,
                r.body,
                idp.log()
            );
            url = location(&url, &r);
        }
        panic!("the provider never sent the browser back: {url}");
    }

    /// The whole sign-in of `user` up to (and including) the gateway's callback; returns
    /// the callback URL and the callback's response.
    pub fn sign_in(
        &mut self,
        env: &SigninEnv,
        user: &str,
        return_to_query: &str,
    ) -> (String, RawResponse) {
        let authorize = self.start_login(env, return_to_query);
        let callback = self.at_idp(env, &authorize, ("user", user));
        assert!(
            callback.starts_with(&env.url("/.twinward/callback?")),
            "not the gateway's callback: {callback}"
        );
        let r = self.get(&callback);
        (callback, r)
    }
}

// ---- browser steps ----

pub const WAIT: Duration = Duration::from_secs(20);

/// Where a navigation to a protected page ends for a browser that has not signed in at the
/// gateway: the provider's login page, or (when the provider remembers the browser) already
/// back at the gateway's passkey page.
pub async fn through_idp(page: &Page, env: &SigninEnv, user: &str) {
    let idp = env.idp.issuer.clone();
    let mfa = env.url("/.twinward/mfa");
    let at = page
        .wait_for_url_matching(
            |u| u.starts_with(&format!("{idp}/interaction/")) || u.starts_with(&mfa),
            WAIT,
        )
        .await;
    if at.starts_with(&idp) {
        page.click(&format!("button[name=user][value={user}]"))
            .await;
        page.wait_for_url(&mfa, WAIT).await;
    }
}

/// The passkey page's mode (`enroll`, `verify`, `stepup`).
pub async fn mfa_mode(page: &Page) -> String {
    page.wait_for(
        "document.getElementById('passkey-go') && document.readyState === 'complete'",
        WAIT,
    )
    .await;
    page.eval("document.getElementById('passkey').dataset.mode")
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Presses the passkey button and waits until the page has left the passkey page.
pub async fn press_passkey(page: &Page, env: &SigninEnv) -> String {
    let mfa = env.url("/.twinward/mfa");
    page.click("#passkey-go").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let url = page.url().await;
        if !url.starts_with(&mfa) {
            return page
                .wait_for_url_matching(|u| !u.starts_with(&mfa), WAIT)
                .await;
        }
        let err = page
            .try_eval("(() => { const e = document.getElementById('passkey-error'); return e && !e.hidden ? e.textContent : ''; })()")
            .await
            .unwrap_or_default();
        if let Some(e) = err.as_str().filter(|e| !e.is_empty()) {
            panic!("the passkey step failed on the page: {e}");
        }
        assert!(
            Instant::now() < deadline,
            "still on the passkey page: {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway session cookie as the browser holds it.
pub async fn session_cookie(page: &Page) -> Option<Value> {
    page.cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == "twinward")
}

/// `fetch` from the page; returns `{status, www, body}`.
pub async fn page_fetch(page: &Page, method: &str, path: &str, accept: &str) -> Value {
    let js = format!(
        "(async () => {{ const r = await fetch({path}, {{ method: {method}, headers: {{ Accept: {accept} }} }}); \
         return {{ status: r.status, www: r.headers.get('www-authenticate'), body: await r.text() }}; }})()",
        path = serde_json::json!(path),
        method = serde_json::json!(method),
        accept = serde_json::json!(accept),
    );
    page.eval(&js).await
}

/// The subject (pseudonym) of the signed-in session, from `/.twinward/api/me`.
pub async fn me(page: &Page) -> Value {
    let v = page_fetch(page, "GET", "/.twinward/api/me", "application/json").await;
    assert_eq!(v["status"], 200, "api/me: {v}");
    serde_json::from_str(v["body"].as_str().unwrap_or_default()).unwrap_or(Value::Null)
}
