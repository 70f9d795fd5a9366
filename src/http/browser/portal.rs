//! `GET /.twinward/` (the portal), `GET /.twinward/api/me`, `/.twinward/api/tokens` and the
//! portal's form endpoints. Adding or removing passkeys and creating tokens needs a passkey
//! check within `session.mfa_max_age`.

use super::{json_ok, json_problem, Browser};
use crate::access::signin::LiveSession;
use crate::access::tokens::{issue, IssueError, NewTokenSpec};
use crate::access::Caller;
use crate::audit::AuditEvent;
use crate::http::{error, ui, AppState, Peer};
use crate::policy::Action;
use crate::session::Selector;
use crate::storage::TokenRecord;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::Extension;
use http::{HeaderMap, Response, StatusCode};

fn at(secs: i64) -> String {
    crate::clock::Timestamp::from_unix_secs(secs).to_rfc3339()
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn token_json(t: &TokenRecord) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "name": t.service_account, "prefix": t.display_prefix, "roles": t.roles,
        "twins": t.twins, "created": at(t.created_at), "expires": at(t.expires_at),
        "expires_at": t.expires_at, "revoked": t.revoked_at.is_some(),
    })
}

/// Twins served by routes, in route order, without repeats.
fn twins(b: &Browser) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in b.gw.routes.routes() {
        if !out.contains(&r.config.twin) {
            out.push(r.config.twin.clone());
        }
    }
    out
}

async fn portal_page(
    b: &Browser,
    live: &LiveSession,
    client_ip: std::net::IpAddr,
    new_token: Option<&str>,
    notice: Option<&str>,
) -> Response<Body> {
    let s = &live.session;
    let caller = Caller::Browser(Box::new(live.clone()));
    let routes: Vec<serde_json::Value> =
        b.gw.routes
            .routes()
            .iter()
            .filter(|r| b.gw.allows(&caller, r, Action::Read, client_ip))
            .map(|r| {
                let path = format!("{}/", r.config.path_prefix.trim_end_matches('/'));
                let url = match &r.config.host {
                    Some(h) => format!("{}://{h}{path}", b.signin.cfg.public_url.scheme()),
                    None => path,
                };
                serde_json::json!({"name": r.config.name, "url": url, "twin": r.config.twin})
            })
            .collect();
    let passkeys = b
        .signin
        .passkeys
        .passkeys_of(&s.user.subject)
        .await
        .unwrap_or_default();
    let tokens =
        b.gw.store
            .tokens_of_user(&s.user.subject)
            .await
            .unwrap_or_default();
    let sessions = b.signin.sessions.list().await.unwrap_or_default();
    let idle = b.signin.session_cfg.idle_timeout;
    let max_ttl_days = b.gw.config.api_tokens.max_ttl.as_secs() / 86400;
    ui::render(
        StatusCode::OK,
        "portal.html",
        serde_json::json!({
            "me": {
                "email": s.user.email, "subject": s.user.subject, "roles": s.user.roles,
                "mfa_age_s": s.mfa_age(b.now).map(|d| d.as_secs()),
                "session_expires": s.expires.to_rfc3339(),
                "idle_expires": s.idle_expires(idle).to_rfc3339(),
            },
            "routes": routes,
            "passkeys": passkeys.iter().map(|p| serde_json::json!({
                "id": p.id, "name": p.name, "created": at(p.created_at),
                "last_used": p.last_used_at.map(at), "aaguid": p.aaguid.to_string(),
                "locked": crate::mfa::is_locked(p),
            })).collect::<Vec<_>>(),
            "tokens": tokens.iter().filter(|t| t.revoked_at.is_none() && t.expires_at > b.now.unix_secs()).map(token_json).collect::<Vec<_>>(),
            "sessions": sessions.iter().filter(|o| o.user.subject == s.user.subject && o.is_live(b.now, idle)).map(|o| serde_json::json!({
                "id": o.key.short(), "created": o.created.to_rfc3339(), "last_seen": o.last_seen.to_rfc3339(),
                "user_agent": o.user_agent, "current": o.key == s.key,
            })).collect::<Vec<_>>(),
            "new_token": new_token,
            "notice": notice,
            "csrf": s.csrf,
            "mfa_fresh": s.mfa_fresh(b.now, b.signin.session_cfg.mfa_max_age),
            "available_roles": s.user.roles,
            "available_twins": twins(b),
            "max_ttl_days": max_ttl_days,
        }),
    )
}

/// A session that has finished sign-in (passkey included when required), or the response
/// that sends the browser on.
async fn complete_session(b: &Browser, headers: &HeaderMap) -> Result<LiveSession, Response<Body>> {
    let Some(live) = b.session(headers).await else {
        return Err(ui::render(
            StatusCode::OK,
            "signin.html",
            serde_json::json!({"login_url": "/.twinward/login?return_to=%2F.twinward%2F", "signed_out": false}),
        ));
    };
    if !b.signin.second_factor_done(&live.session) {
        return Err(error::redirect(&error::mfa_location(
            &b.signin.cfg,
            "/.twinward/",
            false,
        )));
    }
    Ok(live)
}

pub async fn portal(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let live = match complete_session(&b, &headers).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let ip = match crate::http::proxy::client_ip(&b.gw, peer.ip(), &headers) {
        Ok(ip) => ip,
        Err(e) => return crate::http::proxy::unattested(e, true),
    };
    portal_page(&b, &live, ip, None, None).await
}

pub async fn me(State(state): State<AppState>, headers: HeaderMap) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let Some(live) = b.session(&headers).await else {
        return json_problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "no session; sign in at /.twinward/login",
            None,
        );
    };
    let s = &live.session;
    json_ok(serde_json::json!({
        "subject": s.user.subject,
        "roles": s.user.roles,
        "mfa": s.mfa_at.is_some(),
        "mfa_age_s": s.mfa_age(b.now).map(|d| d.as_secs()),
        "second_factor_done": b.signin.second_factor_done(s),
        "session_expires": s.expires.to_rfc3339(),
        "idle_expires": s.idle_expires(b.signin.session_cfg.idle_timeout).to_rfc3339(),
    }))
}

/// What a user asks for when creating a personal token.
struct TokenAsk {
    name: String,
    roles: Vec<String>,
    twins: Vec<String>,
    ttl: Option<String>,
}

async fn create_token(
    b: &Browser,
    live: &LiveSession,
    ask: TokenAsk,
) -> Result<(String, TokenRecord), String> {
    let s = &live.session;
    let ttl = match ask.ttl.as_deref() {
        None | Some("") => return Err("choose an expiry".into()),
        Some(t) => humantime::parse_duration(t)
            .map_err(|_| format!("expiry {t:?} is not a duration such as 30d"))?,
    };
    let served = twins(b);
    let spec = NewTokenSpec {
        service_account: ask.name.trim().to_owned(),
        owner: s.user.email.clone(),
        roles: ask.roles,
        twins: ask.twins,
        ttl,
        user_subject: Some(s.user.subject.clone()),
    };
    // Only the user's own roles, only twins the gateway serves.
    let own = |r: &str| s.user.roles.iter().any(|x| x == r);
    let known_twin = |t: &str| served.iter().any(|x| x == t);
    let mut random = [0u8; 32];
    rand::fill(&mut random);
    match issue(
        b.gw.store.as_ref(),
        &spec,
        own,
        known_twin,
        b.gw.config.api_tokens.max_ttl,
        b.now,
        random,
    )
    .await
    {
        Ok((text, record, mut ev)) => {
            ev.actor = Some(s.user.email.as_str().into());
            ev.actor_pseudonym = Some(s.user.subject.as_str().into());
            b.gw.audit.record(ev).await;
            Ok((text, record))
        }
        Err(IssueError::Invalid(m)) => Err(m
            .replace("--ttl", "expiry")
            .replace("--role", "role")
            .replace("service account name", "token name")),
        Err(IssueError::Storage(e)) => {
            tracing::error!(error = %e, "cannot store a token");
            Err("tokens cannot be created right now; try again in a minute".into())
        }
    }
}

async fn revoke_own_token(b: &Browser, live: &LiveSession, id: &str) -> Result<(), String> {
    let s = &live.session;
    let mine =
        b.gw.store
            .tokens_of_user(&s.user.subject)
            .await
            .map_err(|_| "tokens are unavailable right now".to_owned())?;
    if !mine.iter().any(|t| t.id == id) {
        return Err("no such token of yours".into());
    }
    b.gw.store
        .revoke_token(id, b.now.unix_secs())
        .await
        .map_err(|_| "tokens are unavailable right now".to_owned())?;
    let mut ev = AuditEvent::new("token.revoke", "ok", b.now);
    ev.actor = Some(s.user.email.as_str().into());
    ev.actor_pseudonym = Some(s.user.subject.as_str().into());
    ev.detail = serde_json::json!({ "token_id": id }).into();
    b.gw.audit.record(ev).await;
    Ok(())
}

fn step_up_needed(b: &Browser, live: &LiveSession) -> bool {
    !live
        .session
        .mfa_fresh(b.now, b.signin.session_cfg.mfa_max_age)
}

// ---- JSON API: /.twinward/api/tokens ----

/// The complete session behind a JSON API call (401 otherwise); for a `write`, also the
/// same-origin and CSRF checks.
async fn api_session(
    b: &Browser,
    headers: &HeaderMap,
    write: bool,
) -> Result<LiveSession, Response<Body>> {
    let Ok(live) = complete_session(b, headers).await else {
        return Err(json_problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "sign in first",
            None,
        ));
    };
    if write {
        b.check_write(headers, &live, None)?;
    }
    Ok(live)
}

pub async fn api_tokens_list(State(state): State<AppState>, headers: HeaderMap) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let live = match api_session(&b, &headers, false).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    match b.gw.store.tokens_of_user(&live.session.user.subject).await {
        Ok(t) => {
            json_ok(serde_json::json!({ "tokens": t.iter().map(token_json).collect::<Vec<_>>() }))
        }
        Err(_) => json_problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "try again in a minute",
            None,
        ),
    }
}

pub async fn api_tokens_create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let live = match api_session(&b, &headers, true).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if step_up_needed(&b, &live) {
        return json_problem(
            StatusCode::UNAUTHORIZED,
            "Passkey check needed",
            "creating a token needs a passkey check from the last few minutes",
            Some(&error::mfa_location(&b.signin.cfg, "/.twinward/", true)),
        );
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return json_problem(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "the body must be JSON: {name, roles, twins, ttl}",
            None,
        );
    };
    let list = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ask = TokenAsk {
        name: v
            .get("name")
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_owned(),
        roles: list("roles"),
        twins: list("twins"),
        ttl: v.get("ttl").and_then(|x| x.as_str()).map(str::to_owned),
    };
    match create_token(&b, &live, ask).await {
        Ok((text, rec)) => {
            let mut j = token_json(&rec);
            if let Some(o) = j.as_object_mut() {
                o.insert("token".into(), text.into());
            }
            let mut resp = json_ok(j);
            *resp.status_mut() = StatusCode::CREATED;
            resp
        }
        Err(m) => json_problem(StatusCode::BAD_REQUEST, "Bad Request", &m, None),
    }
}

pub async fn api_tokens_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let live = match api_session(&b, &headers, true).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    match revoke_own_token(&b, &live, &id).await {
        Ok(()) => json_ok(serde_json::json!({ "revoked": id })),
        Err(m) => json_problem(StatusCode::NOT_FOUND, "Not Found", &m, None),
    }
}

// ---- portal forms ----

/// Common start of a portal form: a complete session, same origin, the form's CSRF token.
async fn form_session(
    b: &Browser,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(LiveSession, Vec<(String, String)>), Response<Body>> {
    let live = complete_session(b, headers).await?;
    let f = form(body);
    b.check_write(headers, &live, field(&f, "csrf"))?;
    Ok((live, f))
}

fn step_up_redirect(b: &Browser) -> Response<Body> {
    let mut r = error::redirect(&error::mfa_location(&b.signin.cfg, "/.twinward/", true));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

pub async fn form_token_create(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let (live, f) = match form_session(&b, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if step_up_needed(&b, &live) {
        return step_up_redirect(&b);
    }
    let all = |k: &str| {
        f.iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let ask = TokenAsk {
        name: field(&f, "name").unwrap_or_default().to_owned(),
        roles: all("role"),
        twins: all("twin"),
        ttl: field(&f, "ttl").map(str::to_owned),
    };
    let ip = match crate::http::proxy::client_ip(&b.gw, peer.ip(), &headers) {
        Ok(ip) => ip,
        Err(e) => return crate::http::proxy::unattested(e, true),
    };
    match create_token(&b, &live, ask).await {
        Ok((text, _)) => {
            portal_page(
                &b,
                &live,
                ip,
                Some(&text),
                Some("Token created. Copy it now: it will not be shown again."),
            )
            .await
        }
        Err(m) => {
            let mut r = portal_page(
                &b,
                &live,
                ip,
                None,
                Some(&format!("The token was not created: {m}")),
            )
            .await;
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }
    }
}

pub async fn form_token_revoke(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let (live, _) = match form_session(&b, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ip = match crate::http::proxy::client_ip(&b.gw, peer.ip(), &headers) {
        Ok(ip) => ip,
        Err(e) => return crate::http::proxy::unattested(e, true),
    };
    let notice = match revoke_own_token(&b, &live, &id).await {
        Ok(()) => "Token revoked.".to_owned(),
        Err(m) => format!("Nothing was revoked: {m}"),
    };
    portal_page(&b, &live, ip, None, Some(&notice)).await
}

pub async fn form_passkey_delete(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let (live, _) = match form_session(&b, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if step_up_needed(&b, &live) {
        return step_up_redirect(&b);
    }
    let s = &live.session;
    let ip = match crate::http::proxy::client_ip(&b.gw, peer.ip(), &headers) {
        Ok(ip) => ip,
        Err(e) => return crate::http::proxy::unattested(e, true),
    };
    let mine = b
        .signin
        .passkeys
        .passkeys_of(&s.user.subject)
        .await
        .unwrap_or_default();
    // With passkeys required, the last one stays: without it the user could not sign in.
    if b.signin.cfg.webauthn.required && mine.len() <= 1 {
        return portal_page(
            &b,
            &live,
            ip,
            None,
            Some("This is your only passkey; add another one before removing it."),
        )
        .await;
    }
    let notice = match b.gw.store.delete_passkey(&s.user.subject, &id).await {
        Ok(true) => {
            let mut ev = AuditEvent::new("mfa.remove", "ok", b.now);
            ev.actor = Some(s.user.email.as_str().into());
            ev.actor_pseudonym = Some(s.user.subject.as_str().into());
            ev.detail = serde_json::json!({ "passkey": id }).into();
            b.gw.audit.record(ev).await;
            "Passkey removed."
        }
        Ok(false) => "No such passkey of yours.",
        Err(_) => "Passkeys are unavailable right now; try again in a minute.",
    };
    portal_page(&b, &live, ip, None, Some(notice)).await
}

pub async fn form_session_revoke(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let (live, _) = match form_session(&b, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = &live.session;
    let ip = match crate::http::proxy::client_ip(&b.gw, peer.ip(), &headers) {
        Ok(ip) => ip,
        Err(e) => return crate::http::proxy::unattested(e, true),
    };
    let sessions = b.signin.sessions.list().await.unwrap_or_default();
    let target = sessions
        .iter()
        .find(|o| o.user.subject == s.user.subject && o.key.short() == id && id.len() >= 16);
    let notice = match target {
        Some(t) => {
            let _ = b
                .signin
                .sessions
                .revoke(Selector::Key(t.key.0.clone()))
                .await;
            let mut ev = AuditEvent::new("session.revoke", "ok", b.now);
            ev.actor = Some(s.user.email.as_str().into());
            ev.actor_pseudonym = Some(s.user.subject.as_str().into());
            ev.detail = serde_json::json!({ "session": t.key.short(), "by": "user" }).into();
            b.gw.audit.record(ev).await;
            if t.key == s.key {
                return error::redirect("/.twinward/");
            }
            "Session ended."
        }
        None => "No such session of yours.",
    };
    portal_page(&b, &live, ip, None, Some(notice)).await
}
