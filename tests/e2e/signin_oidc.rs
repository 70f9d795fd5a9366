//! Browser sign-in at the OpenID provider, driven over plain HTTP as a browser would (the
//! provider's login form posted by hand): what the callback refuses (`state`, the login
//! cookie, a reused code, every ID-token check, the provider's own error), key rotation at
//! the provider, and the open-redirect table of `return_to`.

use crate::common::signin::*;
use crate::common::{sync, RawResponse};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use std::collections::HashMap;
use std::time::Duration;

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// `url` with query parameter `name` set to `value`.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == name {
                (k, value.to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

/// A refused callback: a calm 4xx error page (never a 5xx), no session cookie, and the
/// login cookie cleared.
fn assert_refused(what: &str, r: &RawResponse, status: u16, agent: &Agent) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{what}: {:?}",
        r.headers
    );
    assert!(
        r.body.contains("Sign-in did not complete") || r.body.contains("sign-in"),
        "{what}: {}",
        r.body
    );
    assert_eq!(
        set_cookie_value(r, "twinward"),
        None,
        "{what}: a session cookie was set"
    );
    assert!(agent.cookie("twinward").is_none(), "{what}");
    assert_eq!(
        set_cookie_value(r, "twinward-login").as_deref(),
        Some(""),
        "{what}: the login cookie stays"
    );
}

/// A callback that signed the user in: to the passkey page, with a session cookie.
fn assert_signed_in(env: &SigninEnv, r: &RawResponse) -> String {
    assert_eq!(r.status, 302, "{}\n{}", r.body, env.gw.log());
    let to = r.header("location").unwrap();
    assert!(
        to.starts_with(&env.url("/.twinward/mfa?return_to=")),
        "{to}"
    );
    let cookie = set_cookie_value(r, "twinward").expect("a session cookie");
    assert_eq!(cookie.len(), 43, "{cookie}");
    cookie
}

/// The `signin` `fail` audit event whose reason contains `reason`.
fn failure_audited(env: &SigninEnv, reason: &str) -> serde_json::Value {
    sync(|| {
        env.gw.wait_audit(|e| {
            e["kind"] == "signin"
                && e["outcome"] == "fail"
                && e["detail"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(reason))
        })
    })
}

/// Whether a session cookie value is accepted by the gateway.
fn session_works(env: &SigninEnv, cookie: &str) -> bool {
    let c = format!("twinward={cookie}");
    let r = env.request(
        "GET",
        "/.twinward/api/me",
        &[("Cookie", c.as_str()), ("Accept", "application/json")],
        None,
    );
    r.status == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_login_cookie_and_code_are_each_single_use_and_bound_to_the_browser() {
    let env = SigninEnv::start().await;
    sync(|| {
        // A tampered state names no sign-in the gateway started.
        let mut a = Agent::new();
        let authorize = a.start_login(&env, "%2Fplant-7%2F");
        // The authorization request: code flow with PKCE (S256), state and nonce.
        let q = query_of(&authorize);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "twinward");
        assert_eq!(q["redirect_uri"], env.url("/.twinward/callback"));
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"].len(), 43);
        assert!(q["state"].len() >= 22 && q["nonce"].len() >= 22, "{q:?}");
        assert!(q["scope"].split(' ').any(|s| s == "openid"), "{q:?}");
        assert!(
            !authorize.contains("plant-7"),
            "return_to leaked: {authorize}"
        );
        let callback = a.at_idp(&env, &authorize, ("user", "alice"));
        let params = query_of(&callback);
        assert!(params.contains_key("code") && params.contains_key("state"));
        let forged = with_param(
            &callback,
            "state",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        );
        let r = a.get(&forged);
        assert_refused("tampered state", &r, 400, &a);
        failure_audited(&env, "unknown or reused state");
        // No state at all.
        let mut a = Agent::new();
        let authorize = a.start_login(&env, "%2F");
        let callback = a.at_idp(&env, &authorize, ("user", "alice"));
        let mut u = url::Url::parse(&callback).unwrap();
        let code = query_of(&callback)["code"].clone();
        u.set_query(Some(&format!("code={code}")));
        assert_refused("no state", &a.get(u.as_str()), 400, &a);

        // The state of a sign-in started in one browser, finished in another: refused,
        // whether the other browser has no login cookie or one of its own sign-in.
        let mut victim = Agent::new();
        let authorize = victim.start_login(&env, "%2Fplant-7%2F");
        let callback = victim.at_idp(&env, &authorize, ("user", "alice"));
        let mut stranger = Agent::new();
        let r = stranger.get(&callback);
        assert_refused("no login cookie", &r, 400, &stranger);
        failure_audited(&env, "state not bound to this browser");
        // (the state is spent: the victim's own browser cannot finish it either)
        assert_refused("spent state", &victim.get(&callback), 400, &victim);

        let mut victim = Agent::new();
        let authorize = victim.start_login(&env, "%2F");
        let victims_callback = victim.at_idp(&env, &authorize, ("user", "alice"));
        let mut attacker = Agent::new();
        let _ = attacker.start_login(&env, "%2F");
        let r = attacker.get(&victims_callback);
        assert_refused("another browser's login cookie", &r, 400, &attacker);

        // A good sign-in, then the same callback again: refused, and the first session
        // is unaffected.
        let mut a = Agent::new();
        let (callback, r) = a.sign_in(&env, "alice", "%2Fplant-7%2F");
        let session = assert_signed_in(&env, &r);
        assert!(session_works(&env, &session));
        let mut again = a.clone();
        again.forget("twinward");
        let r = again.get(&callback);
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(set_cookie_value(&r, "twinward"), None);
        assert!(session_works(&env, &session));

        // A used code under a fresh state of this browser: the provider refuses it.
        let used_code = query_of(&callback)["code"].clone();
        let authorize = a.start_login(&env, "%2F");
        let fresh = a.at_idp(&env, &authorize, ("user", "alice"));
        let replay = with_param(&fresh, "code", &used_code);
        let mut b = a.clone();
        b.forget("twinward");
        let r = b.get(&replay);
        assert_refused("replayed code", &r, 400, &b);
        failure_audited(&env, "refused the code");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tampered_id_token_is_refused_without_a_session() {
    let env = SigninEnv::start().await;
    sync(|| {
        let mut a = Agent::new();
        // One clean sign-in first: discovery and keys are in place, the provider knows the
        // browser (later logins are silent).
        let (_, r) = a.sign_in(&env, "alice", "%2F");
        assert_signed_in(&env, &r);
        env.audit_until("signin", 1);
        for mode in [
            "issuer",
            "audience",
            "azp",
            "nonce",
            "expired",
            "iat_future",
            "wrong_key",
            "alg_none",
        ] {
            let before = env.audit_of("signin");
            let mut b = a.clone();
            b.forget("twinward");
            env.idp.tamper(mode);
            let issued = env.idp.tokens_issued();
            let (_, r) = b.sign_in(&env, "alice", "%2Fplant-7%2F");
            assert_eq!(
                env.idp.tokens_issued(),
                issued + 1,
                "{mode}: no token response"
            );
            assert_eq!(env.idp.state()["tamper"], "none", "{mode} not used");
            assert_refused(mode, &r, 400, &b);
            assert!(
                r.body.contains("could not be verified"),
                "{mode}: {}",
                r.body
            );
            let after = env.audit_until("signin", before.len() + 1);
            let new: Vec<_> = after.iter().skip(before.len()).collect();
            assert_eq!(new.len(), 1, "{mode}: {new:?}");
            assert_eq!(new[0]["outcome"], "fail", "{mode}: {new:?}");
            assert!(
                new[0]["detail"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("ID token")),
                "{mode}: {new:?}"
            );
        }
        // Nothing tampered: signed in again.
        let mut b = a.clone();
        b.forget("twinward");
        let (_, r) = b.sign_in(&env, "alice", "%2F");
        assert_signed_in(&env, &r);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_errors_and_key_rotation() {
    let env = SigninEnv::start().await;
    sync(|| {
        // The user cancels at the provider: a clear page, no session.
        let mut a = Agent::new();
        let authorize = a.start_login(&env, "%2Fplant-7%2F");
        let callback = a.at_idp(&env, &authorize, ("cancel", "1"));
        assert_eq!(
            query_of(&callback).get("error").map(String::as_str),
            Some("access_denied")
        );
        let r = a.get(&callback);
        assert_refused("access_denied", &r, 403, &a);
        assert!(r.body.contains("access denied"), "{}", r.body);
        // The retry link starts a new sign-in back to where the user was going.
        assert!(
            html_unescape(&r.body).contains("href=\"/.twinward/login?return_to=%2Fplant%2D7%2F\""),
            "{}",
            r.body
        );
        failure_audited(&env, "idp error access_denied");

        // A sign-in, then the provider rotates its key (dropping the old one): the next
        // sign-in is signed with a kid the gateway has not seen, and it refetches the JWKS.
        let mut a = Agent::new();
        let (_, r) = a.sign_in(&env, "bob", "%2F");
        assert_signed_in(&env, &r);
        let old = env.idp.kid();
        let new = env.idp.rotate(false);
        assert_ne!(old, new);
        // The refetch is rate limited to once per `jwks_refresh_interval` (1s here).
        std::thread::sleep(Duration::from_millis(1100));
        let mut b = Agent::new();
        let (_, r) = b.sign_in(&env, "bob", "%2F");
        let cookie = assert_signed_in(&env, &r);
        assert!(session_works(&env, &cookie));
        assert!(
            env.gw
                .log()
                .contains("refetched the identity provider's JWKS"),
            "{}",
            env.gw.log()
        );
        // One failure (the cancel) and two sign-ins.
        let ok = env
            .audit_until("signin", 3)
            .into_iter()
            .filter(|e| e["outcome"] == "ok")
            .count();
        assert_eq!(ok, 2);
    });
}

/// `return_to` values and whether the gateway may keep them as given.
const RETURN_TO: &[(&str, bool)] = &[
    ("//evil.example", false),
    ("/\\evil.example", false),
    ("\\/evil.example", false),
    ("https:evil.example", false),
    ("https://evil.example/", false),
    ("http://localhost:1/", false),
    ("/%2F%2Fevil.example", false),
    ("%2F%2Fevil.example", false),
    ("/%5Cevil.example", false),
    ("javascript:alert(1)", false),
    ("data:text/html,x", false),
    ("//localhost@evil.example", false),
    (" //evil.example", false),
    ("/\t/evil.example", false),
    ("http://evil.example@localhost/", false),
    ("/ok/path?x=1", true),
    ("/.twinward/", true),
    ("/plant-7/a/b?c=d&e=f", true),
];

/// A `return_to` the gateway hands back: a path on its own origin.
fn assert_own_path(env: &SigninEnv, what: &str, got: &str) {
    assert!(
        got.starts_with('/') && !got.starts_with("//") && !got.contains('\\'),
        "{what:?} became {got:?}"
    );
    let resolved = url::Url::parse(&env.origin).unwrap().join(got).unwrap();
    assert_eq!(
        resolved.origin().ascii_serialization(),
        env.origin,
        "{what:?} became {got:?}"
    );
}

/// The passkey page's `data-return-to`, HTML-unescaped.
fn data_return_to(html: &str) -> String {
    let (_, rest) = html
        .split_once("data-return-to=\"")
        .unwrap_or_else(|| panic!("no data-return-to: {html}"));
    html_unescape(rest.split('"').next().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_to_never_leads_off_the_gateway() {
    let env = SigninEnv::start().await;
    sync(|| {
        let mut a = Agent::new();
        for (raw, kept) in RETURN_TO {
            let raw = raw.replace("localhost:1", &format!("localhost:{}", env.idp.addr.port()));
            // The sign-in starts (to the provider) whatever the value...
            let (_, r) = a.sign_in(&env, "alice", &enc(&raw));
            assert_signed_in(&env, &r);
            // ...and after it the browser is sent to the passkey page on the gateway, which
            // is told to continue to a path on the gateway's own origin.
            let to = r.header("location").unwrap();
            let return_to = query_of(to)["return_to"].clone();
            assert_own_path(&env, &raw, &return_to);
            if *kept {
                assert_eq!(return_to, raw);
            } else {
                assert_eq!(return_to, "/.twinward/", "{raw:?}");
            }
            // The passkey page hands the same value to its script.
            let page = a.get(to);
            assert_eq!(page.status, 200, "{}", page.body);
            assert_eq!(data_return_to(&page.body), return_to, "{raw:?}");

            // The passkey page itself, given the raw value, keeps only a safe one.
            let page = a.get(&env.url(&format!("/.twinward/mfa?return_to={}", enc(&raw))));
            assert_eq!(page.status, 200);
            let expect = if *kept { raw.as_str() } else { "/.twinward/" };
            assert_eq!(data_return_to(&page.body), expect, "{raw:?}");
            a.forget("twinward");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_after_the_idle_timeout_and_at_their_absolute_end() {
    let env = SigninEnv::start_with_session(
        "idle_timeout = \"10s\"\nmax_lifetime = \"21s\"\nmfa_max_age = \"5m\"",
    )
    .await;
    sync(|| {
        let mut a = Agent::new();
        let (_, r) = a.sign_in(&env, "alice", "%2F");
        let busy = assert_signed_in(&env, &r);
        let busy_since = std::time::Instant::now();
        let mut b = Agent::new();
        let (_, r) = b.sign_in(&env, "bob", "%2F");
        let idle = assert_signed_in(&env, &r);
        let idle_since = std::time::Instant::now();
        // Sleeps until `secs` after `since`.
        let at = |since: std::time::Instant, secs: u64| {
            if let Some(wait) = Duration::from_secs(secs).checked_sub(since.elapsed()) {
                std::thread::sleep(wait);
            }
        };

        // In use every six seconds, a session outlives the idle timeout (10s)...
        for t in [6, 12] {
            at(busy_since, t);
            assert!(session_works(&env, &busy), "busy at {t}s");
        }
        // ...an unused one does not...
        at(idle_since, 12);
        assert!(!session_works(&env, &idle));
        // ...and none outlives its absolute lifetime (21s), however busy.
        at(busy_since, 18);
        assert!(session_works(&env, &busy), "busy at 18s");
        at(busy_since, 23);
        assert!(!session_works(&env, &busy), "busy after its lifetime");
        let c = format!("twinward={busy}");
        let r = env.request(
            "GET",
            "/plant-7/",
            &[("Cookie", c.as_str()), ("Accept", "text/html")],
            None,
        );
        assert_eq!(r.status, 302);
        assert!(r
            .header("location")
            .unwrap()
            .starts_with(&env.url("/.twinward/login?")));
    });
}

/// With the IdP down the gateway still starts and serves tools; a browser that tries to
/// sign in gets a calm 502 page with a retry link, never a 500 or a stack trace, and sign-in
/// works without a restart once the IdP answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_idp_is_a_clear_page_and_tools_keep_working() {
    use crate::common::{free_port, raw, Gateway, GatewayOptions, RouteSpec, Upstream};
    let up = Upstream::start().await;
    let port = free_port();
    let dead_idp = free_port();
    let gw = sync(|| {
        Gateway::start(GatewayOptions {
            routes: vec![RouteSpec::new("plant-7", "/plant-7", up.addr, "plant-7", 2)],
            server_extra: format!("public_url = \"http://localhost:{port}\""),
            extra: format!(
                "[oidc]\nissuer = \"http://localhost:{dead_idp}\"\nclient_id = \"twinward\"\nclient_secret_file = \"secret\"\nroles = {{ \"twin-viewers\" = \"twin-viewer\" }}\n"
            ),
            port: Some(port),
            policies: None,
            files: vec![("secret".into(), "s3cret".into())],
            ..Default::default()
        })
    });
    let r = sync(|| {
        raw(
            gw.addr,
            &format!("GET /.twinward/login?return_to=%2Fplant-7%2F HTTP/1.1\r\nHost: localhost:{port}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
    });
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("Sign-in is unavailable"), "{}", r.body);
    assert!(
        r.body.contains("login?return_to=%2Fplant%2D7%2F") && r.body.contains("Try again"),
        "no retry link: {}",
        r.body
    );
    assert!(
        !r.body.contains("panicked") && !r.body.contains("error sending request"),
        "{}",
        r.body
    );
    assert!(r.header("set-cookie").is_none(), "no half-started sign-in");

    // Tools are unaffected.
    let token = sync(|| gw.token("sim", &["sim-runner"], &[], "1d"));
    let r = sync(|| {
        raw(
            gw.addr,
            &format!("GET /plant-7/x HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
    });
    assert_eq!(r.status, 200, "{r:?}");
}
