//! Browser sessions as the access check sees them: the OIDC client, the passkey service and
//! the session store, with the rules of spec §8 (idle timeout, absolute lifetime, rotation
//! after sign-in and after each passkey check).

use crate::clock::Timestamp;
use crate::config::signin::{SessionConfig, SigninConfig};
use crate::identity::oidc::OidcClient;
use crate::mfa::Passkeys;
use crate::policy::engine::Principal;
use crate::session::{
    random_token, Session, SessionId, SessionKey, SessionStore, SessionStoreError, SignedInUser,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How stale `last_seen` may get before a request writes it back: idle timeouts are
/// minutes, so a few seconds of slack saves a store write per request.
const TOUCH_EVERY: Duration = Duration::from_secs(5);

/// The `amr` values a verified passkey adds (RFC 8176): a hardware-bound key, a user
/// presence test, and together with the IdP sign-in, more than one factor.
pub const PASSKEY_AMR: [&str; 3] = ["hwk", "user", "mfa"];

pub struct Signin {
    pub cfg: SigninConfig,
    pub session_cfg: SessionConfig,
    pub oidc: OidcClient,
    pub passkeys: Passkeys,
    pub sessions: Arc<dyn SessionStore>,
    principals: Mutex<HashMap<SessionKey, Arc<Principal>>>,
}

/// A live session and the policy principal it stands for.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub session: Session,
    pub principal: Arc<Principal>,
}

impl Signin {
    pub fn new(
        cfg: SigninConfig,
        session_cfg: SessionConfig,
        oidc: OidcClient,
        passkeys: Passkeys,
        sessions: Arc<dyn SessionStore>,
    ) -> Self {
        Signin {
            cfg,
            session_cfg,
            oidc,
            passkeys,
            sessions,
            principals: Mutex::new(HashMap::new()),
        }
    }

    /// The session a cookie value names, if it is live. Anything else (malformed, unknown,
    /// expired, revoked) is no session: the caller treats the browser as signed out.
    pub async fn session(
        &self,
        cookie: &str,
        now: Timestamp,
    ) -> Result<Option<LiveSession>, SessionStoreError> {
        let Some(id) = SessionId::parse(cookie) else {
            return Ok(None);
        };
        let key = id.key();
        let Some(mut session) = self.sessions.get(&key).await? else {
            return Ok(None);
        };
        if !session.is_live(now, self.session_cfg.idle_timeout) {
            self.forget(&key);
            self.sessions.remove(&key).await?;
            return Ok(None);
        }
        if now.saturating_since(session.last_seen) >= TOUCH_EVERY {
            session.last_seen = now;
            self.sessions.put(session.clone()).await?;
        }
        let principal = self.principal(&session);
        Ok(principal.map(|principal| LiveSession { session, principal }))
    }

    fn principal(&self, s: &Session) -> Option<Arc<Principal>> {
        let mut cache = self.principals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&s.key) {
            return Some(p.clone());
        }
        let p = match Principal::user(
            &s.user.subject,
            &s.user.email,
            &s.user.issuer,
            &s.user.roles,
        ) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::error!(error = %e, session = %s.key.short(), "session cannot form a principal");
                return None;
            }
        };
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(s.key.clone(), p.clone());
        Some(p)
    }

    /// Drops what is cached for a session (after it left the store).
    pub fn forget(&self, key: &SessionKey) {
        self.principals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Starts a session after a verified OIDC sign-in.
    pub async fn create(
        &self,
        user: SignedInUser,
        user_agent: &str,
        client_ip: &str,
        now: Timestamp,
    ) -> Result<(SessionId, Session), SessionStoreError> {
        let id = SessionId::generate();
        let session = Session {
            key: id.key(),
            family: id.key(),
            user,
            created: now,
            last_seen: now,
            expires: now.saturating_add(self.session_cfg.max_lifetime),
            mfa_at: None,
            csrf: random_token(),
            user_agent: user_agent.chars().take(200).collect(),
            client_ip: client_ip.to_owned(),
        };
        self.sessions.put(session.clone()).await?;
        Ok((id, session))
    }

    /// Moves a session to a new id (after a passkey check), keeping its absolute end.
    pub async fn rotate(
        &self,
        old: &Session,
        mfa_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(SessionId, Session), SessionStoreError> {
        let id = SessionId::generate();
        let mut s = old.clone();
        s.key = id.key();
        s.last_seen = now;
        s.csrf = random_token();
        if mfa_at.is_some() {
            s.mfa_at = mfa_at;
        }
        self.sessions.put(s.clone()).await?;
        self.end(&old.key).await?;
        Ok((id, s))
    }

    /// A session for another route host, of the same sign-in: same user, MFA time and
    /// absolute end, its own id (each host sets its own cookie).
    pub async fn branch(
        &self,
        from: &Session,
        now: Timestamp,
    ) -> Result<(SessionId, Session), SessionStoreError> {
        let id = SessionId::generate();
        let mut s = from.clone();
        s.key = id.key();
        s.last_seen = now;
        s.csrf = random_token();
        self.sessions.put(s.clone()).await?;
        Ok((id, s))
    }

    /// Ends every session of the sign-in `s` belongs to, on every host.
    pub async fn end_family(&self, s: &Session) -> Result<Vec<Session>, SessionStoreError> {
        let gone = self
            .sessions
            .revoke(crate::session::Selector::Family(s.family.clone()))
            .await?;
        for g in &gone {
            self.forget(&g.key);
        }
        self.forget(&s.key);
        Ok(gone)
    }

    pub async fn end(&self, key: &SessionKey) -> Result<Option<Session>, SessionStoreError> {
        self.forget(key);
        self.sessions.remove(key).await
    }

    /// Whether this session may reach twins: with `webauthn.required`, only after a
    /// passkey check.
    pub fn second_factor_done(&self, s: &Session) -> bool {
        !self.cfg.webauthn.required || s.mfa_at.is_some()
    }

    /// The `amr` of a credential minted for this session.
    pub fn amr(&self, s: &Session) -> Vec<String> {
        let mut amr = s.user.idp_amr.clone();
        if s.mfa_at.is_some() {
            amr.extend(PASSKEY_AMR.iter().map(|a| (*a).to_owned()));
        }
        amr.sort();
        amr.dedup();
        amr
    }
}
