//! Browser sign-in end to end, in real Chromium against a real OpenID provider: the first
//! sign-in with passkey enrollment, sign-out and sign-in again, a user without a role, step-up
//! for writes and for sensitive reads, personal API tokens from the portal, the WebAuthn
//! ceremonies under attack (replays, another origin, another user's passkey, another
//! session's ceremony, a cloned passkey, an enrollment racing the first one), CSRF and
//! `Origin` checks, and where the browser is sent after sign-in.

use crate::common::browser::{AuthenticatorOptions, Browser, Page};
use crate::common::signin::*;
use crate::common::{jwt_parts, sync, RawResponse};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Signing in from the portal's own sign-in link.
const PORTAL_LOGIN: &str = "/.twinward/login?return_to=%2F.twinward%2F";

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// Signs `user` in from a protected URL and creates their first passkey; returns where the
/// browser landed and the session cookie right after the provider (before the passkey).
async fn first_sign_in(page: &Page, env: &SigninEnv, user: &str, path: &str) -> (String, Value) {
    page.goto(&env.url(path)).await;
    through_idp(page, env, user).await;
    assert_eq!(mfa_mode(page).await, "enroll");
    let before = session_cookie(page)
        .await
        .expect("a session after the provider");
    page.fill("#passkey-name", &format!("{user}'s laptop"))
        .await;
    (press_passkey(page, env).await, before)
}

/// No script errors and no Content-Security-Policy violations on the pages the browser saw.
fn assert_clean_console(page: &Page) {
    let log = page.console_log();
    let bad: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.starts_with("exception:")
                || l.contains("Content Security Policy")
                || l.contains("Refused to")
        })
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The CSRF token of the gateway page the browser shows.
async fn csrf(page: &Page) -> String {
    page.eval("document.querySelector('meta[name=csrf-token]').content")
        .await
        .as_str()
        .unwrap()
        .to_owned()
}

/// A raw request to the gateway with the given session cookie.
fn with_cookie(
    env: &SigninEnv,
    method: &str,
    target: &str,
    cookie: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> RawResponse {
    let c = format!("twinward={cookie}");
    let mut h = vec![("Cookie", c.as_str())];
    h.extend_from_slice(headers);
    sync(|| env.request(method, target, &h, body))
}

/// Whether `/.twinward/api/me` accepts a session cookie value.
fn session_works(env: &SigninEnv, cookie: &str) -> bool {
    with_cookie(
        env,
        "GET",
        "/.twinward/api/me",
        cookie,
        &[("Accept", "application/json")],
        None,
    )
    .status
        == 200
}

fn cookie_value(c: &Value) -> String {
    c["value"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sign_in_enrolls_a_passkey_then_sign_out_and_in_again() {
    let env = SigninEnv::start().await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    let authenticator = page
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;

    // Unauthenticated: the route sends the browser to sign in, then to the provider.
    page.goto(&env.url("/plant-7/hello?x=1")).await;
    through_idp(&page, &env, "alice").await;
    let at = page.url().await;
    assert!(
        at.starts_with(&env.url("/.twinward/mfa?return_to=%2Fplant%2D7%2Fhello%3Fx%3D1")),
        "{at}"
    );
    assert_eq!(mfa_mode(&page).await, "enroll");
    let after_idp = session_cookie(&page).await.expect("a session cookie");
    assert_eq!(after_idp["httpOnly"], true, "{after_idp}");
    assert_eq!(after_idp["sameSite"], "Lax", "{after_idp}");
    assert_eq!(after_idp["path"], "/", "{after_idp}");
    assert_eq!(after_idp["session"], true, "no Max-Age: {after_idp}");
    let after_idp = cookie_value(&after_idp);
    assert!(
        !page
            .cookies()
            .await
            .iter()
            .any(|c| c["name"] == "twinward-login"),
        "the login cookie is cleared after the callback"
    );

    // Signed in at the provider but no passkey yet: the twin is out of reach.
    let r = with_cookie(
        &env,
        "GET",
        "/plant-7/hello",
        &after_idp,
        &[("Accept", "application/json")],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|w| w.contains("insufficient_user_authentication")),
        "{:?}",
        r.headers
    );
    let r = with_cookie(
        &env,
        "GET",
        "/plant-7/hello",
        &after_idp,
        &[("Accept", "text/html")],
        None,
    );
    assert_eq!(r.status, 302);
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&env.url("/.twinward/mfa?")));
    assert_eq!(env.up.count(), 0);

    page.fill("#passkey-name", "Work laptop").await;
    let landed = press_passkey(&page, &env).await;
    assert_eq!(landed, env.url("/plant-7/hello?x=1"));
    assert_eq!(page.last_document_status(), Some(200));

    // Rotation: the session moved to a new id; the one from the callback is dead.
    let session = cookie_value(&session_cookie(&page).await.unwrap());
    assert_ne!(session, after_idp);
    assert!(!session_works(&env, &after_idp));
    assert!(session_works(&env, &session));

    // What the twin saw: a credential for the pseudonym, and none of the browser's
    // credentials.
    let subject = me(&page).await["subject"].as_str().unwrap().to_owned();
    let seen = env.up.last().unwrap();
    assert_eq!(seen.target, "/plant-7/hello?x=1");
    let (_, claims) = jwt_parts(seen.header("x-twinward-assertion").unwrap());
    assert_eq!(claims["sub"], subject.as_str());
    assert!(
        !subject.contains("alice") && !subject.contains('@'),
        "{subject}"
    );
    assert_eq!(claims["roles"], json!(["twin-operator"]));
    assert_eq!(claims["aud"], "plant-7");
    let amr: Vec<&str> = claims["amr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(amr.contains(&"pwd") && amr.contains(&"hwk"), "{claims}");
    assert!(seen.header("authorization").is_none(), "{seen:?}");
    let cookies = seen.headers.get("cookie").cloned().unwrap_or_default();
    assert!(
        !cookies
            .iter()
            .flat_map(|c| c.split(';'))
            .any(|c| c.trim().starts_with("twinward")),
        "a gateway cookie reached the twin: {cookies:?}"
    );

    let creds = page.credentials(&authenticator).await;
    assert_eq!(creds.len(), 1, "{creds:?}");
    assert_eq!(creds[0]["rpId"], "localhost");
    let count_enrolled = creds[0]["signCount"].as_u64().unwrap();

    // The portal lists the passkey under its name.
    page.goto(&env.url("/.twinward/")).await;
    assert!(page.text().await.contains("Work laptop"));
    let token = csrf(&page).await;

    // CSRF and Origin: a foreign Origin or a missing token changes nothing.
    let form = format!("csrf={}", enc(&token));
    let own = env.origin.clone();
    for (what, headers, body) in [
        (
            "foreign Origin",
            vec![("Origin", "http://evil.example")],
            form.as_str(),
        ),
        (
            "same-site but another origin",
            vec![("Origin", "http://localhost:1")],
            form.as_str(),
        ),
        ("no CSRF token", vec![("Origin", own.as_str())], ""),
        ("wrong CSRF token", vec![("Origin", own.as_str())], "csrf=x"),
        ("neither Origin nor Sec-Fetch-Site", vec![], form.as_str()),
    ] {
        let mut h = headers.clone();
        h.push(("Content-Type", "application/x-www-form-urlencoded"));
        let r = with_cookie(&env, "POST", "/.twinward/logout", &session, &h, Some(body));
        assert_eq!(r.status, 403, "logout, {what}: {}", r.body);
        assert_eq!(set_cookie_value(&r, "twinward"), None, "{what}");
        assert!(session_works(&env, &session), "logout, {what}");

        let create = format!("{body}&name=sneaky&role=twin-operator&ttl=1d");
        let r = with_cookie(
            &env,
            "POST",
            "/.twinward/portal/tokens",
            &session,
            &h,
            Some(&create),
        );
        assert_eq!(r.status, 403, "token, {what}: {}", r.body);
        assert!(!r.body.contains("twt_"), "{what}");
    }
    // The same from a real page of another origin on this site (the provider's host):
    // the browser sends the cookie (SameSite=Lax, same site) and its own Origin.
    let other = browser.new_page_in_same_context(&page).await;
    other
        .goto(&env.idp.url("/.well-known/openid-configuration"))
        .await;
    let js = format!(
        "(() => {{ const f = document.createElement('form'); f.method = 'POST'; \
         f.action = {action}; const i = document.createElement('input'); i.name = 'csrf'; \
         i.value = {token}; f.appendChild(i); document.body.appendChild(f); f.submit(); return true; }})()",
        action = json!(env.url("/.twinward/logout")),
        token = json!(token),
    );
    other.eval(&js).await;
    other
        .wait_for_url(&env.url("/.twinward/logout"), WAIT)
        .await;
    assert_eq!(other.last_document_status(), Some(403));
    drop(other);
    assert!(session_works(&env, &session));
    let tokens = sync(|| env.gw.cli(&["token", "list"]));
    assert!(
        !String::from_utf8_lossy(&tokens.stdout).contains("sneaky"),
        "{tokens:?}"
    );
    assert!(env.audit_of("signout").is_empty());

    // Sign out with the header's form.
    page.click("form[action='/.twinward/logout'] button").await;
    page.wait_for(
        "document.body && document.body.innerText.includes('You have signed out')",
        WAIT,
    )
    .await;
    assert!(session_cookie(&page).await.is_none());
    env.audit_until("signout", 1);

    // The cookie from before the sign-out, replayed, is refused and never served.
    let seen_before = env.up.count();
    assert!(!session_works(&env, &session));
    let r = with_cookie(
        &env,
        "GET",
        "/plant-7/replay",
        &session,
        &[("Accept", "text/html")],
        None,
    );
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&env.url("/.twinward/login?")));
    let r = with_cookie(
        &env,
        "GET",
        "/plant-7/replay",
        &session,
        &[("Accept", "application/json")],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(env.up.count(), seen_before);

    // Set back into the browser, it is no session either: the browser goes through the
    // provider again and is asked for the passkey it has (verify, not enroll).
    page.set_cookie("twinward", &session, &env.url("/")).await;
    page.goto(&env.url("/plant-7/again")).await;
    through_idp(&page, &env, "alice").await;
    assert_eq!(env.up.count(), seen_before);
    assert_eq!(mfa_mode(&page).await, "verify");
    let landed = press_passkey(&page, &env).await;
    assert_eq!(landed, env.url("/plant-7/again"));
    assert_eq!(env.up.last().unwrap().target, "/plant-7/again");
    let again = cookie_value(&session_cookie(&page).await.unwrap());
    assert_ne!(again, session);
    assert_eq!(me(&page).await["subject"], subject.as_str());

    // The same passkey signed: its counter went up.
    let creds = page.credentials(&authenticator).await;
    assert_eq!(creds.len(), 1);
    assert!(
        creds[0]["signCount"].as_u64().unwrap() > count_enrolled,
        "{creds:?}"
    );
    let verify = env.audit_until("mfa.verify", 1);
    assert_eq!(verify[0]["outcome"], "ok");
    assert_eq!(verify[0]["actor_pseudonym"], subject.as_str());
    assert_eq!(env.audit_of("mfa.enroll")[0]["outcome"], "ok");
    assert_clean_console(&page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_a_mapped_role_gets_the_denied_page_with_an_audited_decision_id() {
    let env = SigninEnv::start().await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    let (landed, _) = first_sign_in(&page, &env, "carol", "/plant-7/status").await;
    assert_eq!(landed, env.url("/plant-7/status"));
    assert_eq!(page.last_document_status(), Some(403));
    assert!(page.text().await.contains("You do not have access"));
    let id = page
        .eval("document.getElementById('decision-id').textContent")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!id.is_empty());
    assert_eq!(env.up.count(), 0, "the twin saw a request");
    assert_eq!(me(&page).await["roles"], json!([]));

    let event = sync(|| env.gw.wait_audit(|e| e["event_id"] == id.as_str()));
    assert_eq!(event["kind"], "access");
    assert_eq!(event["outcome"], "deny");
    assert_eq!(event["actor"], "carol@example.com");
    assert_eq!(event["route"], "plant-7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_for_writes_and_fresh_reads_then_a_portal_token_for_a_tool() {
    let env = SigninEnv::start().await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    let (landed, _) = first_sign_in(&page, &env, "alice", "/plant-7/").await;
    assert_eq!(landed, env.url("/plant-7/"));

    // Right after the passkey a write is allowed...
    let r = page_fetch(&page, "POST", "/plant-7/valve", "application/json").await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(env.up.last().unwrap().method, "POST");
    let subject = me(&page).await["subject"].as_str().unwrap().to_owned();

    // ...and once the passkey check is older than policy wants, refused with a step-up
    // challenge for API clients (RFC 9470), while reads still pass.
    let deadline = Instant::now() + Duration::from_secs(10);
    while me(&page).await["mfa_age_s"].as_u64().unwrap() < FRESH_S {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = env.up.count();
    let r = page_fetch(&page, "POST", "/plant-7/valve", "application/json").await;
    assert_eq!(r["status"], 401, "{r}");
    let www = r["www"].as_str().unwrap();
    assert!(
        www.starts_with("Bearer") && www.contains("error=\"insufficient_user_authentication\""),
        "{www}"
    );
    let problem: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    let decision = problem["decision_id"].as_str().unwrap().to_owned();
    assert_eq!(env.up.count(), seen, "the refused write reached the twin");
    let event = sync(|| env.gw.wait_audit(|e| e["event_id"] == decision.as_str()));
    assert_eq!(event["outcome"], "step_up");
    let r = page_fetch(&page, "GET", "/plant-7/level", "application/json").await;
    assert_eq!(r["status"], 200, "{r}");
    // The credential of that read says what policy allows now: no longer `write`.
    let assertion = env
        .up
        .last()
        .unwrap()
        .header("x-twinward-assertion")
        .unwrap()
        .to_owned();
    let (_, claims) = jwt_parts(&assertion);
    assert_eq!(claims["scope"], "read", "{claims}");

    // A read policy wants fresh: the browser is sent to the passkey and back.
    let seen = env.up.count();
    page.goto(&env.url("/plant-9/deep/page?q=1")).await;
    let at = page.url().await;
    assert!(
        at.starts_with(&env.url("/.twinward/mfa?return_to=%2Fplant%2D9%2Fdeep%2Fpage%3Fq%3D1"))
            && at.contains("step_up=1"),
        "{at}"
    );
    assert_eq!(env.up.count(), seen);
    assert_eq!(mfa_mode(&page).await, "stepup");
    let landed = press_passkey(&page, &env).await;
    assert_eq!(landed, env.url("/plant-9/deep/page?q=1"));
    assert_eq!(page.last_document_status(), Some(200));
    assert_eq!(env.up.last().unwrap().target, "/plant-9/deep/page?q=1");
    assert_eq!(env.audit_until("mfa.step_up", 1)[0]["outcome"], "ok");
    // Fresh again: the write passes.
    let r = page_fetch(&page, "POST", "/plant-7/valve", "application/json").await;
    assert_eq!(r["status"], 200, "{r}");

    // A personal API token from the portal (the passkey check is recent enough).
    page.goto(&env.url("/.twinward/")).await;
    page.fill("#token-name", "nightly-export").await;
    page.click("form[action='/.twinward/portal/tokens'] button[type=submit]")
        .await;
    let token = page
        .wait_for(
            "document.querySelector('#new-token code')?.textContent",
            WAIT,
        )
        .await
        .as_str()
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.starts_with("twt_"), "{token}");

    // A tool uses it without a browser.
    let bearer = format!("Bearer {token}");
    let tool = |path: &str| {
        sync(|| {
            env.request(
                "GET",
                path,
                &[
                    ("Authorization", bearer.as_str()),
                    ("Accept", "application/json"),
                ],
                None,
            )
        })
    };
    let r = tool("/plant-7/export");
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = env.up.last().unwrap();
    assert_eq!(seen.target, "/plant-7/export");
    assert!(seen.header("authorization").is_none());
    let (_, claims) = jwt_parts(seen.header("x-twinward-assertion").unwrap());
    assert_eq!(claims["sub"], subject.as_str());
    assert_eq!(claims["amr"], json!(["api_token"]));
    assert_eq!(claims["roles"], json!(["twin-operator"]));

    // Revoked in the portal: the tool is refused within a second or two.
    page.eval("window.confirm = () => true").await;
    page.click("form[action^='/.twinward/portal/tokens/'][action$='/revoke'] button")
        .await;
    page.wait_for(
        "document.body && document.body.innerText.includes('Token revoked')",
        WAIT,
    )
    .await;
    let revoked = Instant::now();
    let r = loop {
        let r = tool("/plant-7/export");
        if r.status != 200 || revoked.elapsed() > Duration::from_secs(3) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        revoked.elapsed() <= Duration::from_secs(2),
        "{:?}",
        revoked.elapsed()
    );
    assert!(r
        .header("www-authenticate")
        .is_some_and(|w| w.contains("invalid_token")));
    let revoke = env.audit_until("token.revoke", 1);
    assert_eq!(revoke[0]["actor_pseudonym"], subject.as_str());
}

/// Records every WebAuthn call of the gateway's pages (request body, status, response) in
/// `sessionStorage.ceremonies`, which survives the navigation after a ceremony.
const RECORD_CEREMONIES: &str = r#"(() => {
  const original = window.fetch;
  window.fetch = async function (input, init) {
    const url = typeof input === 'string' ? input : input.url;
    const response = await original.apply(this, arguments);
    if (url.includes('/.twinward/api/webauthn/')) {
      const text = await response.clone().text();
      const log = JSON.parse(sessionStorage.getItem('ceremonies') || '[]');
      log.push({ url, body: init && init.body, status: response.status, response: text });
      sessionStorage.setItem('ceremonies', JSON.stringify(log));
    }
    return response;
  };
})()"#;

/// `(path, body) => {status, body}`: a ceremony call as the page's own script makes it.
const CEREMONY_CALL: &str = r#"async (path, body) => {
  const r = await fetch('/.twinward/api/webauthn/' + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json',
               'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, body: json, text };
}"#;

/// `(publicKey, credentialId?) => assertion`: `navigator.credentials.get` for the options of
/// an authentication start, optionally with one chosen credential, encoded as passkey.js
/// encodes it.
const MAKE_ASSERTION: &str = r#"async (publicKey, credentialId) => {
  const bin = (s) => {
    s = s.replace(/-/g, '+').replace(/_/g, '/');
    s += '='.repeat((4 - (s.length % 4)) % 4);
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0)).buffer;
  };
  const b64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const allow = credentialId
    ? [{ type: 'public-key', id: credentialId }]
    : (publicKey.allowCredentials || []);
  const options = { ...publicKey, challenge: bin(publicKey.challenge),
    allowCredentials: allow.map((d) => ({ ...d, id: bin(d.id) })) };
  const c = await navigator.credentials.get({ publicKey: options });
  return { id: c.id, rawId: b64(c.rawId), type: c.type, extensions: {},
    response: { authenticatorData: b64(c.response.authenticatorData),
      clientDataJSON: b64(c.response.clientDataJSON), signature: b64(c.response.signature),
      userHandle: c.response.userHandle ? b64(c.response.userHandle) : null } };
}"#;

async fn ceremony(page: &Page, path: &str, body: &Value) -> Value {
    page.eval(&format!("({CEREMONY_CALL})({}, {body})", json!(path)))
        .await
}

async fn assertion(page: &Page, public_key: &Value, credential: Option<&str>) -> Value {
    page.eval(&format!(
        "({MAKE_ASSERTION})({public_key}, {})",
        json!(credential)
    ))
    .await
}

/// CDP's standard base64 credential id as WebAuthn's base64url.
fn b64url(v: &Value) -> String {
    v.as_str()
        .unwrap()
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// A refused ceremony call: 400, no redirect, and `why` in the problem's detail.
fn assert_refused(what: &str, r: &Value, why: &str) {
    assert_eq!(r["status"], 400, "{what}: {r}");
    assert!(r["body"]["redirect"].is_null(), "{what}: {r}");
    assert!(
        r["body"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains(why)),
        "{what}: {r}"
    );
}

const SPENT: &str = "expired or was already used";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkey_ceremonies_refuse_replays_other_origins_other_users_and_other_sessions() {
    let env = SigninEnv::start().await;
    let browser = Browser::launch().await;
    let alice = browser.new_page().await;
    alice.add_init_script(RECORD_CEREMONIES).await;
    let alice_auth = alice
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    first_sign_in(&alice, &env, "alice", PORTAL_LOGIN).await;
    let bob = browser.new_page().await;
    let bob_auth = bob
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    first_sign_in(&bob, &env, "bob", PORTAL_LOGIN).await;
    let alice_cred = alice.credentials(&alice_auth).await[0].clone();
    let bob_cred = bob.credentials(&bob_auth).await[0].clone();
    let alice_id = b64url(&alice_cred["credentialId"]);
    let bob_id = b64url(&bob_cred["credentialId"]);

    // The enrollment's finish request, replayed: the ceremony was single use.
    let log: Value = serde_json::from_str(
        alice
            .eval("sessionStorage.getItem('ceremonies')")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let finish = log
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["url"].as_str().unwrap().ends_with("register/finish"))
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(finish["status"], 200);
    let body: Value = serde_json::from_str(finish["body"].as_str().unwrap()).unwrap();
    assert!(alice.url().await.starts_with(&env.url("/.twinward/")));
    let r = ceremony(&alice, "register/finish", &body).await;
    assert_refused("replayed registration", &r, SPENT);

    // A passkey check in the page, recorded; its finish replayed.
    alice
        .goto(&env.url("/.twinward/mfa?return_to=%2F.twinward%2F"))
        .await;
    assert_eq!(mfa_mode(&alice).await, "stepup");
    press_passkey(&alice, &env).await;
    let log: Value = serde_json::from_str(
        alice
            .eval("sessionStorage.getItem('ceremonies')")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let finish = log
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|c| c["url"].as_str().unwrap().ends_with("authenticate/finish"))
        .unwrap_or_else(|| panic!("{log}"))
        .clone();
    assert_eq!(finish["status"], 200, "{finish}");
    let recorded: Value = serde_json::from_str(finish["body"].as_str().unwrap()).unwrap();
    let r = ceremony(&alice, "authenticate/finish", &recorded).await;
    assert_refused("replayed assertion", &r, SPENT);
    // ...and under a new ceremony of this session: the challenge differs.
    let start = ceremony(&alice, "authenticate/start", &json!({})).await;
    assert_eq!(start["status"], 200, "{start}");
    let r = ceremony(
        &alice,
        "authenticate/finish",
        &json!({ "ceremony": start["body"]["ceremony"], "credential": recorded["credential"] }),
    )
    .await;
    assert_refused("old assertion, new ceremony", &r, "challenge");

    // An assertion made on another origin (another port of localhost, same rp id) with a
    // copy of alice's passkey.
    let elsewhere = browser.new_page().await;
    elsewhere
        .goto(&env.idp.url("/.well-known/openid-configuration"))
        .await;
    let elsewhere_auth = elsewhere
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    elsewhere
        .add_credential(&elsewhere_auth, alice_cred.clone())
        .await;
    let start = ceremony(&alice, "authenticate/start", &json!({})).await;
    let foreign = assertion(&elsewhere, &start["body"]["options"]["publicKey"], None).await;
    assert_eq!(foreign["id"], alice_id.as_str());
    let r = ceremony(
        &alice,
        "authenticate/finish",
        &json!({ "ceremony": start["body"]["ceremony"], "credential": foreign }),
    )
    .await;
    assert_refused("another origin", &r, "origin");

    // Bob's passkey in alice's ceremony.
    alice.add_credential(&alice_auth, bob_cred.clone()).await;
    let start = ceremony(&alice, "authenticate/start", &json!({})).await;
    let bobs = assertion(
        &alice,
        &start["body"]["options"]["publicKey"],
        Some(&bob_id),
    )
    .await;
    assert_eq!(bobs["id"], bob_id.as_str());
    let r = ceremony(
        &alice,
        "authenticate/finish",
        &json!({ "ceremony": start["body"]["ceremony"], "credential": bobs }),
    )
    .await;
    assert_refused("another user's passkey", &r, "not yours");

    // A ceremony bob's session started, finished by alice's session with her own passkey.
    bob.goto(&env.url("/.twinward/")).await;
    let bobs_start = ceremony(&bob, "authenticate/start", &json!({})).await;
    assert_eq!(bobs_start["status"], 200, "{bobs_start}");
    let mine = assertion(
        &alice,
        &bobs_start["body"]["options"]["publicKey"],
        Some(&alice_id),
    )
    .await;
    let r = ceremony(
        &alice,
        "authenticate/finish",
        &json!({ "ceremony": bobs_start["body"]["ceremony"], "credential": mine }),
    )
    .await;
    assert_refused("another session's ceremony", &r, SPENT);

    // None of that moved alice's session: same cookie, and her own passkey still works.
    let before = cookie_value(&session_cookie(&alice).await.unwrap());
    let start = ceremony(&alice, "authenticate/start", &json!({})).await;
    let good = assertion(
        &alice,
        &start["body"]["options"]["publicKey"],
        Some(&alice_id),
    )
    .await;
    let r = ceremony(
        &alice,
        "authenticate/finish",
        &json!({ "ceremony": start["body"]["ceremony"], "credential": good }),
    )
    .await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"]["redirect"], "/.twinward/");
    assert_ne!(cookie_value(&session_cookie(&alice).await.unwrap()), before);
    // Two checks passed; the five refusals of an assertion are on record.
    let fails = env
        .audit_until("mfa.step_up", 7)
        .into_iter()
        .filter(|e| e["outcome"] == "fail")
        .count();
    assert_eq!(fails, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_passkey_check_the_browser_never_leaves_the_gateway() {
    let env = SigninEnv::start().await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.add_init_script(RECORD_CEREMONIES).await;
    page.add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    let other = format!("http://localhost:{}/", env.idp.addr.port());

    // A whole sign-in that started with a hostile return_to ends on the portal.
    page.goto(&env.url("/.twinward/login?return_to=%2F%2Fevil.example"))
        .await;
    through_idp(&page, &env, "alice").await;
    assert_eq!(mfa_mode(&page).await, "enroll");
    let landed = press_passkey(&page, &env).await;
    assert_eq!(landed, env.url("/.twinward/"));

    // Each value handed to the passkey page: the server's answer and where the browser
    // goes both stay on the gateway.
    let cases: Vec<(String, Option<&str>)> = [
        ("//evil.example", None),
        ("/\\evil.example", None),
        ("\\/evil.example", None),
        ("https:evil.example", None),
        ("https://evil.example/", None),
        (other.as_str(), None),
        ("/%2F%2Fevil.example", None),
        ("%2F%2Fevil.example", None),
        ("/%5Cevil.example", None),
        ("javascript:alert(1)", None),
        ("data:text/html,x", None),
        ("//localhost@evil.example", None),
        (" //evil.example", None),
        ("/plant-7/ok/path?x=1", Some("/plant-7/ok/path?x=1")),
        ("/.twinward/", Some("/.twinward/")),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b))
    .collect();
    for (raw, kept) in cases {
        page.goto(&env.url(&format!("/.twinward/mfa?return_to={}", enc(&raw))))
            .await;
        assert_eq!(mfa_mode(&page).await, "stepup", "{raw:?}");
        page.eval("sessionStorage.removeItem('ceremonies')").await;
        let landed = press_passkey(&page, &env).await;
        let expect = kept.unwrap_or("/.twinward/");
        assert_eq!(landed, env.url(expect), "{raw:?}");
        let log: Value = serde_json::from_str(
            page.eval("sessionStorage.getItem('ceremonies')")
                .await
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let finish = log.as_array().unwrap().last().unwrap();
        let answer: Value = serde_json::from_str(finish["response"].as_str().unwrap()).unwrap();
        assert_eq!(answer["redirect"], expect, "{raw:?}: {answer}");
    }
}

/// Presses the passkey button and waits for the page's error message.
async fn passkey_error(page: &Page) -> String {
    page.click("#passkey-go").await;
    page.wait_for(
        "(() => { const e = document.getElementById('passkey-error'); return e && !e.hidden && e.textContent; })()",
        WAIT,
    )
    .await
    .as_str()
    .unwrap()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_passkey_is_locked_for_both_copies_and_the_users_sessions_end() {
    let env = SigninEnv::start().await;
    let browser = Browser::launch().await;
    let alice = browser.new_page().await;
    let original = alice
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    first_sign_in(&alice, &env, "alice", "/plant-7/").await;
    // A copy of the key taken now, before the original signs again.
    let copy = alice.credentials(&original).await[0].clone();
    alice
        .goto(&env.url("/.twinward/mfa?return_to=%2Fplant-7%2F"))
        .await;
    press_passkey(&alice, &env).await;
    let session = cookie_value(&session_cookie(&alice).await.unwrap());
    assert!(session_works(&env, &session));

    // The copy in another browser: its counter is behind the original's.
    let thief = browser.new_page().await;
    let cloned = thief
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    thief.add_credential(&cloned, copy).await;
    thief.goto(&env.url("/plant-7/")).await;
    through_idp(&thief, &env, "alice").await;
    assert_eq!(mfa_mode(&thief).await, "verify");
    let served = env.up.count();
    let error = passkey_error(&thief).await;
    assert!(error.contains("cloned"), "{error}");
    let event = env.audit_until("mfa.counter_regression", 1)[0].clone();
    assert_eq!(event["outcome"], "fail");
    assert!(event["detail"]["passkey"].is_string(), "{event}");

    // Its next try has a higher counter than the gateway stored, and is still refused:
    // the passkey is locked. (The failed check also ended alice's sessions.)
    assert!(!session_works(&env, &session));
    thief.goto(&env.url("/plant-7/")).await;
    through_idp(&thief, &env, "alice").await;
    assert_eq!(mfa_mode(&thief).await, "verify");
    let error = passkey_error(&thief).await;
    assert!(error.contains("locked"), "{error}");
    // The original is locked out as well, until an administrator resets the passkey.
    alice.goto(&env.url("/plant-7/")).await;
    through_idp(&alice, &env, "alice").await;
    assert_eq!(mfa_mode(&alice).await, "verify");
    let error = passkey_error(&alice).await;
    assert!(error.contains("locked"), "{error}");
    assert_eq!(
        env.up.count(),
        served,
        "a copy of the cloned passkey got through"
    );
    let revoked = env.audit_until("session.revoke", 1);
    assert!(revoked
        .iter()
        .all(|e| e["detail"]["by"] == "counter_regression"));

    // An administrator sees the locked passkey and removes it; alice enrolls anew at her
    // next sign-in.
    let out = sync(|| {
        env.gw
            .cli(&["passkey", "list", "--user", "alice@example.com"])
    });
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = listed
        .lines()
        .find(|l| l.contains("alice@example.com"))
        .unwrap();
    assert!(line.trim_end().ends_with("locked"), "{listed}");
    let id = line.split_whitespace().next().unwrap().to_owned();
    let out = sync(|| env.gw.cli(&["passkey", "remove", &id]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.audit_until("mfa.remove", 1)[0]["detail"]["by"], "admin");
    let fresh = browser.new_page().await;
    fresh
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    let (landed, _) = first_sign_in(&fresh, &env, "alice", "/plant-7/").await;
    assert_eq!(landed, env.url("/plant-7/"));
}

/// Holds `navigator.credentials.create` until the test sets `window.releaseCreate`.
const HOLD_CREATE: &str = r#"(() => {
  const create = navigator.credentials.create.bind(navigator.credentials);
  navigator.credentials.create = async (options) => {
    while (!window.releaseCreate) await new Promise((r) => setTimeout(r, 50));
    return create(options);
  };
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_started_before_the_first_passkey_cannot_finish_after_it() {
    let env = SigninEnv::start().await;
    let browser = Browser::launch().await;
    // Someone with alice's password at the provider starts enrolling a passkey of theirs
    // while alice has none...
    let intruder = browser.new_page().await;
    intruder.add_init_script(HOLD_CREATE).await;
    intruder
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    intruder.goto(&env.url("/plant-7/")).await;
    through_idp(&intruder, &env, "alice").await;
    assert_eq!(mfa_mode(&intruder).await, "enroll");
    intruder.click("#passkey-go").await;
    intruder
        .wait_for(
            "document.getElementById('passkey-status').textContent.includes('Waiting')",
            WAIT,
        )
        .await;

    // ...alice enrolls hers...
    let alice = browser.new_page().await;
    alice
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    let (landed, _) = first_sign_in(&alice, &env, "alice", "/plant-7/").await;
    assert_eq!(landed, env.url("/plant-7/"));
    let served = env.up.count();

    // ...and the earlier enrollment is refused: a further passkey needs a check with one
    // alice already has, so the page asks for that instead.
    intruder.eval("window.releaseCreate = true").await;
    let at = intruder
        .wait_for_url_matching(|u| u.contains("step_up=1"), WAIT)
        .await;
    assert!(at.starts_with(&env.url("/.twinward/mfa?")), "{at}");
    assert_eq!(mfa_mode(&intruder).await, "verify");
    assert_eq!(me(&intruder).await["second_factor_done"], false);
    let refused = env.audit_until("mfa.enroll", 2);
    assert_eq!(refused[1]["outcome"], "fail", "{refused:?}");
    let r = page_fetch(&intruder, "GET", "/plant-7/", "application/json").await;
    assert_eq!(r["status"], 401, "{r}");
    assert_eq!(env.up.count(), served);
    let passkeys = sync(|| env.gw.audit())
        .into_iter()
        .filter(|e| e["kind"] == "mfa.enroll" && e["outcome"] == "ok")
        .count();
    assert_eq!(passkeys, 1);
}

/// A passkey that becomes synced (its backup state flips) still signs in: webauthn-rs
/// accepts it, the stored state follows, and the change is in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_state_change_is_accepted_recorded_and_audited() {
    let env = SigninEnv::start().await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.cdp("WebAuthn.enable", json!({ "enableUI": false }))
        .await;
    let auth = page
        .cdp(
            "WebAuthn.addVirtualAuthenticator",
            json!({ "options": {
                "protocol": "ctap2", "transport": "internal", "hasResidentKey": true,
                "hasUserVerification": true, "isUserVerified": true,
                "automaticPresenceSimulation": true,
                "defaultBackupEligibility": true, "defaultBackupState": false,
            }}),
        )
        .await["authenticatorId"]
        .as_str()
        .unwrap()
        .to_owned();
    first_sign_in(&page, &env, "bob", "/plant-7/").await;
    let enrolled = env.audit_until("mfa.enroll", 1);
    assert_eq!(enrolled[0]["detail"]["backup_eligible"], true);

    let creds = page
        .cdp(
            "WebAuthn.getCredentials",
            json!({ "authenticatorId": auth }),
        )
        .await;
    let id = creds["credentials"][0]["credentialId"]
        .as_str()
        .unwrap()
        .to_owned();
    page.cdp(
        "WebAuthn.setCredentialProperties",
        json!({ "authenticatorId": auth, "credentialId": id, "backupEligibility": true, "backupState": true }),
    )
    .await;

    page.goto(&env.url("/.twinward/mfa?return_to=%2Fplant-7%2F"))
        .await;
    assert_eq!(mfa_mode(&page).await, "stepup");
    let landed = press_passkey(&page, &env).await;
    assert_eq!(landed, env.url("/plant-7/"));
    let changed = env.audit_until("mfa.backup_state", 1);
    assert_eq!(changed[0]["detail"]["backup_state_before"], false);
    assert_eq!(changed[0]["detail"]["backup_state"], true);
    assert_eq!(changed[0]["actor"], "bob@example.com");
}

/// The ids of the passkey remove forms on the portal, by passkey name.
async fn passkey_forms(page: &Page) -> Vec<(String, String)> {
    let v = page
        .eval(
            "[...document.querySelectorAll(\"form[action*='/portal/passkeys/']\")].map(f => [f.closest('tr').querySelector('th').textContent.trim(), f.getAttribute('action')])",
        )
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Several passkeys per user: a second one is added from the portal, removing one needs a
/// passkey check within `session.mfa_max_age` (else the browser steps up first), and the
/// last one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkeys_are_added_and_removed_from_the_portal_with_a_fresh_check() {
    let env = SigninEnv::start_with_session(
        "idle_timeout = \"30m\"\nmax_lifetime = \"8h\"\nmfa_max_age = \"3s\"",
    )
    .await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    // The portal's remove forms ask for confirmation; accept it.
    page.add_init_script("window.confirm = () => true").await;
    let laptop = page
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    first_sign_in(&page, &env, "bob", "/plant-7/").await;

    // A second authenticator (the first one already holds bob's passkey for this site).
    page.remove_virtual_authenticator(&laptop).await;
    page.add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    page.goto(&env.url("/.twinward/")).await;
    page.fill("#passkey-name", "security-key").await;
    page.click("#passkey-add").await;
    page.wait_for(
        "document.querySelectorAll(\"form[action*='/portal/passkeys/']\").length === 2",
        WAIT,
    )
    .await;
    let forms = passkey_forms(&page).await;
    assert_eq!(forms.len(), 2, "{forms:?}");
    assert_eq!(env.audit_until("mfa.enroll", 2).len(), 2);

    // Once the check is older than mfa_max_age, removing sends the browser to step up, and
    // back to the portal where the removal is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    while me(&page).await["mfa_age_s"].as_u64().unwrap() <= 3 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, laptop_form) = forms
        .iter()
        .find(|(name, _)| name.contains("bob's laptop"))
        .unwrap()
        .clone();
    page.click(&format!("form[action='{laptop_form}'] button"))
        .await;
    let at = page.wait_for_url(&env.url("/.twinward/mfa"), WAIT).await;
    assert!(at.contains("step_up=1"), "{at}");
    assert_eq!(
        removals_audited(&env),
        0,
        "nothing removed before the check"
    );
    let back = press_passkey(&page, &env).await;
    assert_eq!(back, env.url("/.twinward/"));
    page.click(&format!("form[action='{laptop_form}'] button"))
        .await;
    page.wait_for(
        "document.querySelectorAll(\"form[action*='/portal/passkeys/']\").length === 1",
        WAIT,
    )
    .await;
    assert!(page.text().await.contains("Passkey removed."));
    // The writer commits in the background: wait for the removal, then count.
    assert_eq!(env.audit_until("mfa.remove", 1).len(), 1);

    // The last passkey stays.
    let (_, last) = passkey_forms(&page).await.remove(0);
    page.click(&format!("form[action='{last}'] button")).await;
    page.wait_for(
        "document.body.innerText.includes('This is your only passkey')",
        WAIT,
    )
    .await;
    assert_eq!(passkey_forms(&page).await.len(), 1);
    // The writer commits in the background: wait for the removal, then count.
    assert_eq!(env.audit_until("mfa.remove", 1).len(), 1);
}

fn removals_audited(env: &SigninEnv) -> usize {
    env.audit_of("mfa.remove").len()
}

/// `fetch` from the page with the page's CSRF token (or without it), returning status and
/// the parsed JSON body.
async fn api(
    page: &Page,
    method: &str,
    path: &str,
    body: Option<Value>,
    csrf: bool,
) -> (u64, Value) {
    let js = format!(
        r#"(async () => {{
            const h = {{ 'Content-Type': 'application/json', 'Accept': 'application/json' }};
            if ({csrf}) h['X-CSRF-Token'] = document.querySelector('meta[name=csrf-token]').content;
            const r = await fetch({path}, {{ method: {method}, headers: h, body: {body} }});
            return [r.status, await r.text()];
        }})()"#,
        csrf = csrf,
        path = json!(path),
        method = json!(method),
        body = body.map_or("undefined".to_owned(), |b| json!(b.to_string()).to_string()),
    );
    let r = page.eval(&js).await;
    let status = r[0].as_u64().unwrap();
    (
        status,
        serde_json::from_str(r[1].as_str().unwrap()).unwrap_or(Value::Null),
    )
}

/// The JSON token API: create (fresh passkey check, own roles, served twins, capped
/// expiry, CSRF), list, use by a tool within its twin scope, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_api_creates_scoped_tokens_for_the_signed_in_user_only() {
    let env = SigninEnv::start().await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    first_sign_in(&page, &env, "bob", "/plant-7/").await;
    page.goto(&env.url("/.twinward/")).await;

    let ask = |roles: Value, ttl: &str| json!({ "name": "ci-job", "roles": roles, "twins": ["plant-7"], "ttl": ttl });
    let (status, body) = api(
        &page,
        "POST",
        "/.twinward/api/tokens",
        Some(ask(json!(["twin-viewer"]), "1d")),
        false,
    )
    .await;
    assert_eq!(status, 403, "no CSRF token: {body}");
    let (status, body) = api(
        &page,
        "POST",
        "/.twinward/api/tokens",
        Some(ask(json!(["twin-operator"]), "1d")),
        true,
    )
    .await;
    assert_eq!(status, 400, "a role bob does not have: {body}");
    let (status, body) = api(
        &page,
        "POST",
        "/.twinward/api/tokens",
        Some(ask(json!(["twin-viewer"]), "400d")),
        true,
    )
    .await;
    assert_eq!(status, 400, "longer than api_tokens.max_ttl: {body}");
    let (status, body) = api(
        &page,
        "POST",
        "/.twinward/api/tokens",
        Some(json!({"name": "x", "roles": ["twin-viewer"], "twins": ["plant-7"]})),
        true,
    )
    .await;
    assert_eq!(status, 400, "no expiry: {body}");
    let (status, body) = api(
        &page,
        "POST",
        "/.twinward/api/tokens",
        Some(ask(json!(["twin-viewer"]), "1d")),
        true,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("twt_"));

    let (status, list) = api(&page, "GET", "/.twinward/api/tokens", None, false).await;
    assert_eq!(status, 200);
    let listed = list["tokens"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        !list.to_string().contains(&token),
        "a listing never shows the token"
    );

    let bearer = format!("Bearer {token}");
    let tool = |path: &str| {
        sync(|| {
            env.request(
                "GET",
                path,
                &[
                    ("Authorization", bearer.as_str()),
                    ("Accept", "application/json"),
                ],
                None,
            )
        })
        .status
    };
    assert_eq!(tool("/plant-7/state"), 200);
    assert_eq!(
        tool("/plant-9/state"),
        403,
        "the token is scoped to plant-7"
    );

    let (status, _) = api(
        &page,
        "DELETE",
        &format!("/.twinward/api/tokens/{id}"),
        None,
        false,
    )
    .await;
    assert_eq!(status, 403, "deleting needs the CSRF token too");
    let (status, body) = api(
        &page,
        "DELETE",
        &format!("/.twinward/api/tokens/{id}"),
        None,
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while tool("/plant-7/state") != 401 {
        assert!(Instant::now() < deadline, "the revoked token still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Signed out, the API answers 401 and creates nothing.
    page.clear_cookies().await;
    let (status, _) = api(&page, "GET", "/.twinward/api/tokens", None, false).await;
    assert_eq!(status, 401);
}

/// `page`, a browser the handoff was carried into, is not signed in on the twin host: asking
/// for `twin_url` leaves it elsewhere, and the twin saw no request beyond the `before` it had.
async fn assert_not_signed_in(page: &Page, env: &SigninEnv, twin_url: &str, before: usize) {
    page.goto(twin_url).await;
    assert_ne!(
        page.url().await,
        twin_url,
        "the other browser is signed in on the twin host"
    );
    assert_eq!(env.up.count(), before);
}

/// A route on another host: after signing in on the auth host, the browser reaches it
/// through a single-use handoff code that host redeems for its own cookie; the code cannot
/// be used twice; logging out on the auth host ends the route host's session too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_handed_to_another_route_host_once_and_ends_with_logout() {
    let mut b_route = crate::common::RouteSpec::new(
        "plant-b",
        "/b",
        "127.0.0.1:1".parse().unwrap(),
        "plant-7",
        2,
    );
    b_route.host = Some("twins-b.localhost");
    let env = SigninEnv::start_with(
        "idle_timeout = \"30m\"\nmax_lifetime = \"8h\"\nmfa_max_age = \"5m\"",
        vec![b_route],
    )
    .await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    let mut requests = page.events("Network.requestWillBeSent");
    let b_url = format!("http://twins-b.localhost:{}/b/x?y=1", env.port);

    page.goto(&b_url).await;
    through_idp(&page, &env, "bob").await;
    assert_eq!(mfa_mode(&page).await, "enroll");
    page.fill("#passkey-name", "bob's laptop").await;
    let landed = press_passkey(&page, &env).await;
    let landed = if landed == b_url {
        landed
    } else {
        page.wait_for_url(&b_url, WAIT).await
    };
    assert_eq!(landed, b_url);
    assert_eq!(page.last_document_status(), Some(200));
    let seen = env.up.last().unwrap();
    assert_eq!(seen.target, "/b/x?y=1");
    assert!(seen.header("x-twinward-assertion").is_some());

    // The code went through the browser once; the twin host's cookie is its own.
    let mut handoff = None;
    while let Ok(ev) = requests.try_recv() {
        let url = ev["request"]["url"].as_str().unwrap_or_default().to_owned();
        if url.contains("/.twinward/session?code=") {
            handoff = Some(url);
        }
    }
    let handoff = handoff.expect("the browser went through /.twinward/session");
    let target = handoff
        .split_once(&format!(":{}", env.port))
        .unwrap()
        .1
        .to_owned();
    let host = format!("twins-b.localhost:{}", env.port);
    let again = sync(|| {
        crate::common::raw(
            env.gw.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
    });
    assert_eq!(again.status, 400, "a handoff code is single use: {again:?}");
    assert!(again.header("set-cookie").is_none());
    assert_eq!(env.audit_until("session.handoff", 1).len(), 1);

    // A code is bound to the host it was made for.
    page.goto(&env.url("/.twinward/api/me")).await;
    let auth_cookie = cookie_value(&session_cookie(&page).await.unwrap());
    let auth_host = format!("localhost:{}", env.port);
    let raw_get = |host: &str, target: &str, cookie: Option<&str>| {
        let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
        let req =
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{cookie}Connection: close\r\n\r\n");
        sync(|| crate::common::raw(env.gw.addr, &req).unwrap())
    };
    let bob = format!("twinward={auth_cookie}");
    let login_target = format!(
        "/.twinward/login?return_to={}",
        utf8_percent_encode(&b_url, NON_ALPHANUMERIC)
    );
    let login = raw_get(&auth_host, &login_target, Some(&bob));
    let to = login.header("location").unwrap().to_owned();
    assert!(
        to.starts_with(&format!("http://{host}/.twinward/session?code=")),
        "signed in, login hands off without the provider: {to}"
    );
    let code_target = to.split_once(&host).unwrap().1.to_owned();
    let elsewhere = raw_get(&auth_host, &code_target, None);
    assert_eq!(elsewhere.status, 400, "{elsewhere:?}");
    assert!(elsewhere.header("set-cookie").is_none());

    // A code carried to another browser (an attacker's own fresh code, sent to a victim)
    // signs nobody in there: the auth host finds no such session in that browser.
    let login = raw_get(&auth_host, &login_target, Some(&bob));
    let carried = login.header("location").unwrap().to_owned();
    let victim = browser.new_page().await;
    victim.goto(&carried).await;
    let at = victim.url().await;
    assert!(
        at.starts_with(&env.url("/.twinward/session/confirm?")),
        "{at}"
    );
    assert_eq!(victim.last_document_status(), Some(400));
    let before = env.up.count();
    assert_not_signed_in(&victim, &env, &b_url, before).await;

    // Nor does the last step's code, taken through the first two by the attacker: the
    // route host wants the cookie it set in the browser the handoff started in.
    let login = raw_get(&auth_host, &login_target, Some(&bob));
    let first = login.header("location").unwrap().to_owned();
    let step = raw_get(&host, first.split_once(&host).unwrap().1, None);
    let confirm = step.header("location").unwrap().to_owned();
    assert!(
        step.header("set-cookie")
            .is_some_and(|c| c.starts_with("twinward-handoff=")),
        "{step:?}"
    );
    let back = raw_get(
        &auth_host,
        confirm.split_once(&auth_host).unwrap().1,
        Some(&bob),
    );
    let last = back.header("location").unwrap().to_owned();
    assert!(
        last.starts_with(&format!("http://{host}/.twinward/session?code=")),
        "{last}"
    );
    let victim = browser.new_page().await;
    victim.goto(&last).await;
    assert_eq!(victim.last_document_status(), Some(400));
    assert_not_signed_in(&victim, &env, &b_url, before).await;

    // Logging out on the auth host ends the twin host's session as well.
    page.goto(&env.url("/.twinward/")).await;
    page.click("form[action='/.twinward/logout'] button").await;
    page.wait_for("document.body.innerText.includes('signed out')", WAIT)
        .await;
    let before = env.up.count();
    page.goto(&b_url).await;
    // The twin host's cookie names no session any more: the browser signs in again (the
    // provider remembers bob, so it is straight back at the passkey step).
    let at = page.url().await;
    assert!(
        at.starts_with(&env.url("/.twinward/mfa?")),
        "still signed in on the twin host: {at}"
    );
    assert_eq!(mfa_mode(&page).await, "verify");
    assert_eq!(env.up.count(), before);

    // Signed in again, the sign-out on the twin host's own portal ends the sign-in too.
    let landed = press_passkey(&page, &env).await;
    let landed = if landed == b_url {
        landed
    } else {
        page.wait_for_url(&b_url, WAIT).await
    };
    assert_eq!(landed, b_url);
    page.goto(&format!("http://twins-b.localhost:{}/.twinward/", env.port))
        .await;
    page.click("form[action='/.twinward/logout'] button").await;
    page.wait_for("document.body.innerText.includes('signed out')", WAIT)
        .await;
    let before = env.up.count();
    page.goto(&b_url).await;
    let at = page.url().await;
    assert!(
        at.starts_with(&env.url("/.twinward/mfa?")),
        "still signed in on the twin host after signing out there: {at}"
    );
    assert_eq!(env.up.count(), before);
}
