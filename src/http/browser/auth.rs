//! `GET /.twinward/login`, `GET /.twinward/callback` and `POST /.twinward/logout`.

use super::{error_page, Browser};
use crate::audit::AuditEvent;
use crate::http::{cookies, error, ui, AppState, Peer};
use crate::identity::oidc::{OidcError, PendingLogin};
use crate::session::{hashed, put_json, random_token, SignedInUser};
use crate::storage::UserRecord;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::Extension;
use http::{HeaderMap, Response, StatusCode};
use std::collections::HashMap;
use std::time::Duration;

/// How long a sign-in may take at the IdP.
const LOGIN_TTL: Duration = Duration::from_secs(600);
const LOGIN_KIND: &str = "login";

fn login_retry(return_to: &str) -> String {
    format!(
        "/.twinward/login?return_to={}",
        percent_encoding::utf8_percent_encode(return_to, percent_encoding::NON_ALPHANUMERIC)
    )
}

#[tracing::instrument(skip_all)]
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let return_to = b.return_to(q.get("return_to").map(String::as_str));
    // Sign-in happens on the auth host only: its cookies and the redirect URI live there.
    if !on_auth_host(&b, &headers) {
        return error::redirect(&error::login_location(&b.signin.cfg, &return_to));
    }
    // Already signed in (passkey included): no new sign-in, just go on, handing the
    // session to the route host the browser is headed for.
    if let Some(live) = b.session(&headers).await {
        if b.signin.second_factor_done(&live.session) {
            return hand_off(&b, &live.session, &return_to).await;
        }
    }
    let binding = random_token();
    let start = match b
        .signin
        .oidc
        .start(return_to.clone(), hashed(&binding), b.now)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start sign-in");
            return error_page(
                StatusCode::BAD_GATEWAY,
                "Sign-in is unavailable",
                "The sign-in service of your organisation cannot be reached right now. Try again in a minute.",
                Some(&login_retry(&return_to)),
            );
        }
    };
    let sessions = b.signin.sessions.as_ref();
    if let Err(e) = put_json(
        sessions,
        LOGIN_KIND,
        &start.state,
        &start.pending,
        b.now,
        LOGIN_TTL,
    )
    .await
    {
        tracing::error!(error = %e, "cannot store the sign-in state");
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable",
            "Try again in a minute.",
            None,
        );
    }
    let mut resp = error::redirect(&start.authorize_url);
    resp.headers_mut().append(
        http::header::SET_COOKIE,
        cookies::login(&b.signin.cfg, &binding, LOGIN_TTL.as_secs()),
    );
    resp
}

/// How long a session handoff code lives: only the redirect to the other host uses it.
const HANDOFF_TTL: Duration = Duration::from_secs(30);
const HANDOFF_KIND: &str = "handoff";

/// A session handed from the auth host to a route host, kept server-side under the code.
///
/// A code alone would let a signed-in attacker carry their own fresh code to someone
/// else's browser and sign it in as themselves on that host. So the handoff takes three
/// steps, each under a new single-use code: the route host ties it to the browser (a
/// random value in its own cookie, the value's hash here), the auth host checks that this
/// browser holds the session being handed over, and the route host, seeing its cookie
/// again, sets the session.
#[derive(serde::Serialize, serde::Deserialize)]
struct Handoff {
    session: crate::session::SessionKey,
    /// `host[:port]` the code is for; redeemed anywhere else it is refused.
    host: String,
    /// Path and query on that host to continue to.
    path: String,
    /// The hash of the route host's handoff cookie, once the route host has set it.
    #[serde(default)]
    browser: Option<String>,
    /// The auth host has seen its session in that browser.
    #[serde(default)]
    confirmed: bool,
}

/// Stores `record` under a new single-use code and returns the code.
async fn store_handoff(b: &Browser, record: &Handoff) -> Option<String> {
    let code = random_token();
    let sessions = b.signin.sessions.as_ref();
    match put_json(sessions, HANDOFF_KIND, &code, record, b.now, HANDOFF_TTL).await {
        Ok(()) => Some(code),
        Err(e) => {
            tracing::error!(error = %e, "cannot store a session handoff");
            None
        }
    }
}

fn handoff_unavailable() -> Response<Body> {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is unavailable",
        "Try again in a minute.",
        None,
    )
}

fn handoff_expired() -> Response<Body> {
    error_page(
        StatusCode::BAD_REQUEST,
        "This sign-in link is no longer valid",
        "It has expired, was already used, or was made for another browser. Open the twin again to continue.",
        None,
    )
}

/// Sends a signed-in browser on to `return_to`: directly on the auth host, or through
/// `/.twinward/session?code=…` on a route host. The code is single use, lives 30 seconds and
/// is bound to this session and that host; the session id never appears in a URL.
async fn hand_off(
    b: &Browser,
    session: &crate::session::Session,
    return_to: &str,
) -> Response<Body> {
    if return_to.starts_with('/') {
        return error::redirect(return_to);
    }
    let Ok(url) = url::Url::parse(return_to) else {
        return error::redirect(super::DEFAULT_RETURN);
    };
    let Some(host) = url.host_str() else {
        return error::redirect(super::DEFAULT_RETURN);
    };
    let host = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let mut path = url.path().to_owned();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let record = Handoff {
        session: session.key.clone(),
        host: host.clone(),
        path,
        browser: None,
        confirmed: false,
    };
    let Some(code) = store_handoff(b, &record).await else {
        return handoff_unavailable();
    };
    error::redirect(&format!(
        "{}://{host}/.twinward/session?code={code}",
        url.scheme()
    ))
}

/// `GET /.twinward/session?code=…` on a route host: redeems a handoff code server-side and
/// sets this host's own cookie for a session of the same sign-in.
#[tracing::instrument(skip_all)]
pub async fn session_handoff(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let record: Option<Handoff> = b.take_once(HANDOFF_KIND, q.get("code")).await;
    let Some(mut record) = record else {
        return handoff_expired();
    };
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    if host.as_deref() != Some(record.host.to_ascii_lowercase().as_str()) {
        return handoff_expired();
    }
    match (&record.browser, record.confirmed) {
        // First step: tie the handoff to this browser, then let the auth host check it.
        (None, _) => {
            let nonce = random_token();
            record.browser = Some(hashed(&nonce));
            let Some(code) = store_handoff(&b, &record).await else {
                return handoff_unavailable();
            };
            let mut resp = error::redirect(&format!(
                "{}/.twinward/session/confirm?code={code}",
                b.signin.cfg.origin()
            ));
            resp.headers_mut().append(
                http::header::SET_COOKIE,
                cookies::handoff(&b.signin.cfg, &nonce, HANDOFF_TTL.as_secs()),
            );
            return resp;
        }
        // Back from the auth host: only the browser holding the cookie goes on.
        (Some(bound), true) => {
            let held = cookies::get(&headers, cookies::handoff_cookie_name(&b.signin.cfg));
            if !held.is_some_and(|n| {
                subtle::ConstantTimeEq::ct_eq(hashed(n).as_bytes(), bound.as_bytes()).into()
            }) {
                return handoff_expired();
            }
        }
        (Some(_), false) => return handoff_expired(),
    }
    let source = match b.signin.sessions.get(&record.session).await {
        Ok(Some(s))
            if s.is_live(b.now, b.signin.session_cfg.idle_timeout)
                && b.signin.second_factor_done(&s) =>
        {
            s
        }
        _ => return handoff_expired(),
    };
    // A session this browser already had on this host gives way to the fresh one.
    if let Some(old) = b.session(&headers).await {
        let _ = b.signin.end(&old.session.key).await;
    }
    let (id, branch) = match b.signin.branch(&source, b.now).await {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot hand a session over");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable",
                "Try again in a minute.",
                None,
            );
        }
    };
    let mut ev = AuditEvent::new("session.handoff", "ok", b.now);
    ev.actor = Some(branch.user.email.as_str().into());
    ev.actor_pseudonym = Some(branch.user.subject.as_str().into());
    ev.detail = serde_json::json!({ "host": record.host, "from": source.key.short(), "session": branch.key.short() }).into();
    b.gw.audit.record(ev).await;
    let mut resp = error::redirect(&record.path);
    resp.headers_mut().append(
        http::header::SET_COOKIE,
        cookies::session(&b.signin.cfg, id.cookie_value()),
    );
    resp.headers_mut().append(
        http::header::SET_COOKIE,
        cookies::clear_handoff(&b.signin.cfg),
    );
    resp
}

/// `GET /.twinward/session/confirm?code=…` on the auth host, the middle step of a handoff:
/// goes on only if this browser holds the session being handed over.
#[tracing::instrument(skip_all)]
pub async fn session_confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    if !on_auth_host(&b, &headers) {
        return handoff_expired();
    }
    let record: Option<Handoff> = b.take_once(HANDOFF_KIND, q.get("code")).await;
    let Some(mut record) = record else {
        return handoff_expired();
    };
    let own = b.session(&headers).await;
    if record.browser.is_none()
        || record.confirmed
        || own.is_none_or(|l| l.session.key != record.session)
    {
        return handoff_expired();
    }
    record.confirmed = true;
    let Some(code) = store_handoff(&b, &record).await else {
        return handoff_unavailable();
    };
    error::redirect(&format!(
        "{}://{}/.twinward/session?code={code}",
        b.signin.cfg.public_url.scheme(),
        record.host
    ))
}

fn on_auth_host(b: &Browser, headers: &HeaderMap) -> bool {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let u = &b.signin.cfg.public_url;
    let expected = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => return false,
    };
    host.as_deref() == Some(expected.as_str())
}

#[tracing::instrument(skip_all)]
pub async fn callback(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let client_ip = match crate::http::proxy::client_ip(&b.gw, peer.ip(), &headers) {
        Ok(ip) => ip.to_string(),
        Err(e) => return crate::http::proxy::unattested(e, true),
    };
    let mut ev = AuditEvent::new("signin", "fail", b.now);
    ev.detail = serde_json::json!({ "client_ip": client_ip }).into();
    let fail = |mut ev: AuditEvent,
                reason: String,
                status: StatusCode,
                title: &str,
                message: &str,
                retry: Option<String>| {
        let gw = b.gw.clone();
        let signin = b.signin.clone();
        let title = title.to_owned();
        let message = message.to_owned();
        async move {
            if let Some(d) = ev.detail.as_object_mut() {
                d.insert("reason".into(), reason.into());
            }
            gw.audit.record(ev).await;
            let mut resp = error_page(status, &title, &message, retry.as_deref());
            resp.headers_mut()
                .append(http::header::SET_COOKIE, cookies::clear_login(&signin.cfg));
            resp
        }
    };

    // The state names a sign-in this gateway started and has not finished yet.
    let pending: Option<PendingLogin> = b.take_once(LOGIN_KIND, q.get("state")).await;
    let Some(pending) = pending else {
        return fail(
            ev,
            "unknown or reused state".into(),
            StatusCode::BAD_REQUEST,
            "This sign-in link is no longer valid",
            "It has expired or was already used. Start again.",
            Some(login_retry(super::DEFAULT_RETURN)),
        )
        .await;
    };
    let retry = Some(login_retry(&pending.return_to));
    // ...and was started by this browser.
    let bound =
        cookies::get(&headers, cookies::login_cookie_name(&b.signin.cfg)).is_some_and(|c| {
            subtle::ConstantTimeEq::ct_eq(hashed(c).as_bytes(), pending.binding_hash.as_bytes())
                .into()
        });
    if !bound {
        return fail(
            ev,
            "state not bound to this browser".into(),
            StatusCode::BAD_REQUEST,
            "This sign-in was started elsewhere",
            "The sign-in did not start in this browser, or its cookie expired. Start again.",
            retry,
        )
        .await;
    }
    if let Some(err) = q.get("error") {
        let desc = q.get("error_description").cloned().unwrap_or_default();
        let message = if err == "access_denied" {
            "The identity provider did not sign you in (access denied).".to_owned()
        } else {
            format!("The identity provider reported an error: {}", clip(err, 64))
        };
        return fail(
            ev,
            format!("idp error {}: {}", clip(err, 64), clip(&desc, 200)),
            StatusCode::FORBIDDEN,
            "Sign-in did not complete",
            &message,
            retry,
        )
        .await;
    }
    let Some(code) = q.get("code") else {
        return fail(
            ev,
            "no code".into(),
            StatusCode::BAD_REQUEST,
            "Sign-in did not complete",
            "The identity provider sent no authorization code.",
            retry,
        )
        .await;
    };
    let identity = match b.signin.oidc.finish(code, &pending, b.now).await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "sign-in failed");
            let (status, message) = match &e {
                OidcError::Unreachable(_) => (StatusCode::BAD_GATEWAY, "The sign-in service of your organisation cannot be reached right now."),
                OidcError::Exchange(_) => (StatusCode::BAD_REQUEST, "The identity provider did not accept this sign-in (the code may have been used already)."),
                _ => (StatusCode::BAD_REQUEST, "The identity provider's answer could not be verified, so you were not signed in."),
            };
            return fail(
                ev,
                e.to_string(),
                status,
                "Sign-in did not complete",
                message,
                retry,
            )
            .await;
        }
    };

    let subject = b.gw.pseudonyms.subject(&identity.issuer, &identity.subject);
    let user = match b
        .gw
        .store
        .upsert_user(&UserRecord {
            subject: subject.clone(),
            issuer: identity.issuer.clone(),
            idp_subject: identity.subject.clone(),
            email: identity.email.clone(),
            name: identity.name.clone(),
            webauthn_id: uuid::Uuid::new_v4(),
            created_at: b.now.unix_secs(),
            last_login_at: b.now.unix_secs(),
        })
        .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "cannot record the user");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable",
                "Try again in a minute.",
                retry.as_deref(),
            );
        }
    };
    // A new sign-in always gets a new session id; whatever session the browser had ends.
    if let Some(old) = b.session(&headers).await {
        let _ = b.signin.end(&old.session.key).await;
    }
    let ua = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let signed_in = SignedInUser {
        subject: subject.clone(),
        issuer: identity.issuer.clone(),
        idp_subject: identity.subject.clone(),
        email: identity.email.clone(),
        name: identity.name.clone(),
        roles: identity.roles.clone(),
        idp_amr: identity.amr.clone(),
        webauthn_id: user.webauthn_id,
    };
    let (id, session) = match b.signin.create(signed_in, ua, &client_ip, b.now).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot create a session");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable",
                "Try again in a minute.",
                retry.as_deref(),
            );
        }
    };
    ev.outcome = "ok";
    ev.actor = Some(identity.email.as_str().into());
    ev.actor_pseudonym = Some(subject.into());
    ev.detail = serde_json::json!({
        "client_ip": client_ip,
        "issuer": identity.issuer,
        "roles": identity.roles,
        "amr": identity.amr,
        "session": session.key.short(),
    })
    .into();
    b.gw.audit.record(ev).await;

    let next = if b.signin.cfg.webauthn.required {
        error::mfa_location(&b.signin.cfg, &pending.return_to, false)
    } else {
        super::via_login(&pending.return_to)
    };
    let mut resp = error::redirect(&next);
    resp.headers_mut().append(
        http::header::SET_COOKIE,
        cookies::session(&b.signin.cfg, id.cookie_value()),
    );
    resp.headers_mut().append(
        http::header::SET_COOKIE,
        cookies::clear_login(&b.signin.cfg),
    );
    resp
}

fn clip(s: &str, n: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(n).collect()
}

/// Ends the session server-side and clears the cookie. Needs the session's CSRF token and
/// a same-origin request, so another site cannot sign people out.
#[tracing::instrument(skip_all)]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if let Some(live) = b.session(&headers).await {
        if let Err(resp) = b.check_signout(&headers, &live, form.get("csrf").map(String::as_str)) {
            return resp;
        }
        // The whole sign-in ends: this session and those handed to other route hosts.
        let _ = b.signin.end_family(&live.session).await;
        let mut ev = AuditEvent::new("signout", "ok", b.now);
        ev.actor = Some(live.session.user.email.as_str().into());
        ev.actor_pseudonym = Some(live.session.user.subject.as_str().into());
        ev.detail = serde_json::json!({ "session": live.session.key.short() }).into();
        b.gw.audit.record(ev).await;
    }
    let mut resp = ui::render(
        StatusCode::OK,
        "signin.html",
        serde_json::json!({ "login_url": "/.twinward/login", "signed_out": true }),
    );
    resp.headers_mut().append(
        http::header::SET_COOKIE,
        cookies::clear_session(&b.signin.cfg),
    );
    resp
}
