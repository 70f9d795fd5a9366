//! `GET /.twinward/mfa` and the WebAuthn ceremonies under `/.twinward/api/webauthn/`.

use super::{json_ok, json_problem, Browser};
use crate::access::signin::LiveSession;
use crate::audit::AuditEvent;
use crate::http::{cookies, error, ui, AppState};
use crate::mfa::MfaError;
use crate::session::Selector;
use crate::storage::UserRecord;
use axum::body::Body;
use axum::extract::{Query, State};
use http::{HeaderMap, Response, StatusCode};
use std::collections::HashMap;

#[tracing::instrument(skip_all)]
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let return_to = b.return_to(q.get("return_to").map(String::as_str));
    let Some(live) = b.session(&headers).await else {
        return error::redirect(&error::login_location(&b.signin.cfg, &return_to));
    };
    let passkeys = match b
        .signin
        .passkeys
        .passkeys_of(&live.session.user.subject)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot read passkeys");
            return super::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Passkeys are unavailable",
                "Try again in a minute.",
                None,
            );
        }
    };
    let mode = if passkeys.is_empty() {
        "enroll"
    } else if live.session.mfa_at.is_none() {
        "verify"
    } else {
        "stepup"
    };
    let reason = (mode == "stepup").then(|| {
        "This request needs a recent passkey check. Confirm with your passkey to continue."
            .to_owned()
    });
    ui::render(
        StatusCode::OK,
        "mfa.html",
        serde_json::json!({
            "mode": mode,
            "return_to": return_to,
            "reason": reason,
            "csrf": live.session.csrf,
            "me": b.me(&live),
        }),
    )
}

/// The session and the parsed JSON body of a ceremony call, after the Origin and CSRF checks.
async fn begin(
    b: &Browser,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(LiveSession, serde_json::Value), Response<Body>> {
    let Some(live) = b.session(headers).await else {
        return Err(json_problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "your session has ended; sign in again",
            Some("/.twinward/login"),
        ));
    };
    b.check_write(headers, &live, None)?;
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        json_problem(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "the request body is not JSON",
            None,
        )
    })?;
    Ok((live, v))
}

fn str_field<'a>(v: &'a serde_json::Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(|x| x.as_str())
}

fn mfa_failure(e: &MfaError) -> Response<Body> {
    let status = match e {
        MfaError::Storage(_) | MfaError::Sessions(_) | MfaError::Setup(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let detail = match status {
        StatusCode::SERVICE_UNAVAILABLE => {
            "passkeys are unavailable right now; try again in a minute".to_owned()
        }
        _ => e.to_string(),
    };
    json_problem(status, "Passkey check failed", &detail, None)
}

async fn audit(
    b: &Browser,
    kind: &'static str,
    outcome: &'static str,
    live: &LiveSession,
    detail: serde_json::Value,
) {
    let mut ev = AuditEvent::new(kind, outcome, b.now);
    ev.actor = Some(live.session.user.email.as_str().into());
    ev.actor_pseudonym = Some(live.session.user.subject.as_str().into());
    ev.detail = detail.into();
    b.gw.audit.record(ev).await;
}

/// A cloned passkey may already have been used to sign in: every session of its user ends.
/// The passkey itself is locked (see [`crate::mfa::LOCKED_SIGN_COUNT`]).
async fn end_sessions_of(b: &Browser, live: &LiveSession, passkey_id: &str) {
    let subject = live.session.user.subject.clone();
    match b.signin.sessions.revoke(Selector::User(subject)).await {
        Ok(gone) => {
            for s in gone {
                b.signin.forget(&s.key);
                audit(
                    b,
                    "session.revoke",
                    "ok",
                    live,
                    serde_json::json!({
                        "session": s.key.short(), "by": "counter_regression", "passkey": passkey_id,
                    }),
                )
                .await;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot end the sessions of a cloned passkey's user"),
    }
}

/// After a passkey check: the session moves to a new id with the check's time, and the
/// browser is told where to go.
async fn finish_ok(b: &Browser, live: &LiveSession, return_to: &str) -> Response<Body> {
    match b.signin.rotate(&live.session, Some(b.now), b.now).await {
        Ok((id, _)) => {
            let next = super::via_login(&b.return_to(Some(return_to)));
            let mut resp = json_ok(serde_json::json!({ "redirect": next }));
            resp.headers_mut().append(
                http::header::SET_COOKIE,
                cookies::session(&b.signin.cfg, id.cookie_value()),
            );
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot rotate the session");
            json_problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "try again in a minute",
                None,
            )
        }
    }
}

/// The first passkey is enrolled right after the IdP sign-in; any further one needs a
/// recent check with a passkey the user already has.
#[allow(clippy::result_large_err)]
async fn may_add_passkey(b: &Browser, live: &LiveSession) -> Result<(), Response<Body>> {
    let s = &live.session;
    let existing = b
        .signin
        .passkeys
        .passkeys_of(&s.user.subject)
        .await
        .map_err(|e| mfa_failure(&e))?;
    if !existing.is_empty() && !s.mfa_fresh(b.now, b.signin.session_cfg.mfa_max_age) {
        return Err(json_problem(
            StatusCode::UNAUTHORIZED,
            "Passkey check needed",
            "adding a passkey needs a passkey check from the last few minutes",
            Some(&error::mfa_location(&b.signin.cfg, "/.twinward/", true)),
        ));
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn register_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let (live, v) = match begin(&b, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let return_to = b.return_to(str_field(&v, "return_to"));
    if let Err(r) = may_add_passkey(&b, &live).await {
        return r;
    }
    let s = &live.session;
    let user = UserRecord {
        subject: s.user.subject.clone(),
        issuer: s.user.issuer.clone(),
        idp_subject: s.user.idp_subject.clone(),
        email: s.user.email.clone(),
        name: s.user.name.clone(),
        webauthn_id: s.user.webauthn_id,
        created_at: 0,
        last_login_at: 0,
    };
    match b
        .signin
        .passkeys
        .start_registration(
            s,
            &user,
            str_field(&v, "name").unwrap_or_default(),
            &return_to,
            b.now,
        )
        .await
    {
        Ok((id, options)) => json_ok(serde_json::json!({ "ceremony": id, "options": options })),
        Err(e) => mfa_failure(&e),
    }
}

#[tracing::instrument(skip_all)]
pub async fn register_finish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let (live, v) = match begin(&b, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // The rule of `register_start` holds when the passkey is stored, not only when the
    // ceremony began: a first passkey enrolled in the meantime (perhaps by the real user in
    // another browser) means this one needs a recent check with it.
    if let Err(r) = may_add_passkey(&b, &live).await {
        audit(
            &b,
            "mfa.enroll",
            "fail",
            &live,
            serde_json::json!({ "reason": "a passkey was enrolled since this ceremony began; a passkey check is needed" }),
        )
        .await;
        return r;
    }
    let ceremony = str_field(&v, "ceremony").unwrap_or_default();
    let credential = v.get("credential").cloned().unwrap_or_default();
    match b
        .signin
        .passkeys
        .finish_registration(&live.session, ceremony, &credential, b.now)
        .await
    {
        Ok((record, return_to)) => {
            audit(
                &b,
                "mfa.enroll",
                "ok",
                &live,
                serde_json::json!({
                    "passkey": record.id, "name": record.name, "aaguid": record.aaguid.to_string(),
                    "backup_eligible": record.backup_eligible, "session": live.session.key.short(),
                }),
            )
            .await;
            finish_ok(&b, &live, &return_to).await
        }
        Err(e) => {
            audit(
                &b,
                "mfa.enroll",
                "fail",
                &live,
                serde_json::json!({ "reason": e.to_string() }),
            )
            .await;
            mfa_failure(&e)
        }
    }
}

#[tracing::instrument(skip_all)]
pub async fn authenticate_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let (live, v) = match begin(&b, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let return_to = b.return_to(str_field(&v, "return_to"));
    match b
        .signin
        .passkeys
        .start_authentication(&live.session, &return_to, b.now)
        .await
    {
        Ok((id, options)) => json_ok(serde_json::json!({ "ceremony": id, "options": options })),
        Err(e) => mfa_failure(&e),
    }
}

#[tracing::instrument(skip_all)]
pub async fn authenticate_finish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let Some(b) = Browser::of(&state) else {
        return super::not_configured();
    };
    let (live, v) = match begin(&b, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ceremony = str_field(&v, "ceremony").unwrap_or_default();
    let credential = v.get("credential").cloned().unwrap_or_default();
    let step_up = live.session.mfa_at.is_some();
    match b
        .signin
        .passkeys
        .finish_authentication(&live.session, ceremony, &credential, b.now)
        .await
    {
        Ok((record, return_to, notes)) => {
            if let Some((before, after)) = notes.backup_state_changed {
                audit(
                    &b,
                    "mfa.backup_state",
                    "ok",
                    &live,
                    serde_json::json!({
                        "passkey": record.id, "backup_state_before": before, "backup_state": after,
                    }),
                )
                .await;
            }
            let kind = if step_up { "mfa.step_up" } else { "mfa.verify" };
            audit(&b, kind, "ok", &live, serde_json::json!({
                "passkey": record.id, "aaguid": record.aaguid.to_string(), "sign_count": record.sign_count,
                "session": live.session.key.short(),
            })).await;
            finish_ok(&b, &live, &return_to).await
        }
        Err(e) => {
            let kind = match &e {
                MfaError::CounterRegression { .. } => "mfa.counter_regression",
                _ if step_up => "mfa.step_up",
                _ => "mfa.verify",
            };
            let mut detail = serde_json::json!({ "reason": e.to_string() });
            if let (
                MfaError::CounterRegression { passkey_id } | MfaError::Locked { passkey_id },
                Some(d),
            ) = (&e, detail.as_object_mut())
            {
                d.insert("passkey".into(), passkey_id.clone().into());
            }
            audit(&b, kind, "fail", &live, detail).await;
            if let MfaError::CounterRegression { passkey_id } = &e {
                end_sessions_of(&b, &live, passkey_id).await;
            }
            mfa_failure(&e)
        }
    }
}
