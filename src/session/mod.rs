//! Browser sessions: an opaque 256-bit id in a cookie, looked up in a [`SessionStore`].
//! The store keys sessions by the SHA-256 of the id, so whoever reads the store (a dump, a
//! Redis replica) learns no cookie that works. The same store holds the short-lived,
//! single-use records of sign-in and passkey ceremonies.

pub mod memory;

use crate::clock::Timestamp;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use std::time::Duration;

/// The secret half: what the cookie carries. Never logged, never stored.
pub struct SessionId(String);

impl SessionId {
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::fill(&mut b);
        SessionId(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
    }

    /// Parses a cookie value; anything not shaped like an id is no session at all.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == 43
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| SessionId(s.to_owned()))
    }

    pub fn cookie_value(&self) -> &str {
        &self.0
    }

    /// The store key and public handle of the session (what `session list` shows).
    pub fn key(&self) -> SessionKey {
        SessionKey(hex::encode(crate::digest::sha256(self.0.as_bytes())))
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(…)")
    }
}

#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SessionKey(pub String);

impl SessionKey {
    /// A short handle for pages and the CLI; `revoke` accepts any unique prefix.
    pub fn short(&self) -> &str {
        self.0.get(..16).unwrap_or(&self.0)
    }
}

/// Who signed in, as the IdP said and as the gateway maps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedInUser {
    /// The pseudonymous subject: the `Twinward::User` id and the credential's `sub`.
    pub subject: String,
    pub issuer: String,
    /// The IdP's subject (the production identity; audit only).
    pub idp_subject: String,
    pub email: String,
    pub name: String,
    pub roles: Vec<String>,
    /// Authentication methods the IdP reported (`amr`), RFC 8176 values only.
    pub idp_amr: Vec<String>,
    /// The user handle given to authenticators.
    pub webauthn_id: uuid::Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub key: SessionKey,
    pub user: SignedInUser,
    pub created: Timestamp,
    pub last_seen: Timestamp,
    /// Absolute end, whatever the activity.
    pub expires: Timestamp,
    /// The last successful passkey check (enrollment counts).
    pub mfa_at: Option<Timestamp>,
    /// The anti-CSRF token for this session's forms and JSON calls.
    pub csrf: String,
    pub user_agent: String,
    pub client_ip: String,
    /// The sign-in this session belongs to: its own key, or, for a session handed to
    /// another route host, the key of the session it came from. Logout ends the family.
    pub family: SessionKey,
}

impl Session {
    pub fn idle_expires(&self, idle: Duration) -> Timestamp {
        self.last_seen.saturating_add(idle).min(self.expires)
    }

    pub fn is_live(&self, now: Timestamp, idle: Duration) -> bool {
        now < self.expires && now < self.last_seen.saturating_add(idle)
    }

    pub fn mfa_age(&self, now: Timestamp) -> Option<Duration> {
        self.mfa_at.map(|t| now.saturating_since(t))
    }

    pub fn mfa_fresh(&self, now: Timestamp, max_age: Duration) -> bool {
        self.mfa_age(now).is_some_and(|a| a <= max_age)
    }
}

pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

/// What a revocation selects.
#[derive(Debug, Clone)]
pub enum Selector {
    /// One session by its key or a unique prefix of it.
    Key(String),
    /// Every session of a user (pseudonymous subject or email).
    User(String),
    /// Every session of one sign-in, on every host.
    Family(SessionKey),
    All,
}

/// Sessions and single-use ceremony records. Implementations check nothing about time
/// except the `expires` they are given for one-time records; callers decide liveness.
pub trait SessionStore: Send + Sync + 'static {
    fn get<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<Option<Session>, SessionStoreError>>;
    fn put(&self, session: Session) -> BoxFuture<'_, Result<(), SessionStoreError>>;
    fn remove<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<Option<Session>, SessionStoreError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<Session>, SessionStoreError>>;
    /// Removes what `selector` names; returns the removed sessions.
    fn revoke(&self, selector: Selector) -> BoxFuture<'_, Result<Vec<Session>, SessionStoreError>>;
    /// Stores a one-time record (a sign-in in progress, a passkey ceremony).
    fn put_once<'a>(
        &'a self,
        kind: &'static str,
        id: &'a str,
        value: Vec<u8>,
        now: Timestamp,
        expires: Timestamp,
    ) -> BoxFuture<'a, Result<(), SessionStoreError>>;
    /// Takes a one-time record: a second take of the same id finds nothing.
    fn take_once<'a>(
        &'a self,
        kind: &'static str,
        id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, SessionStoreError>>;
}

/// Key derivation for ids that arrive from clients: the store never sees the raw id.
pub fn hashed(id: &str) -> String {
    hex::encode(crate::digest::sha256(id.as_bytes()))
}

/// Stores `value` as a one-time record under the hash of `id` until `now + ttl`.
pub async fn put_json<T: serde::Serialize>(
    store: &dyn SessionStore,
    kind: &'static str,
    id: &str,
    value: &T,
    now: Timestamp,
    ttl: Duration,
) -> Result<(), SessionStoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| {
        SessionStoreError::Unavailable(format!("cannot encode a {kind} record: {e}"))
    })?;
    store
        .put_once(kind, &hashed(id), bytes, now, now.saturating_add(ttl))
        .await
}

/// Takes the one-time record `id` names; gone, expired or unreadable is `None`.
pub async fn take_json<T: serde::de::DeserializeOwned>(
    store: &dyn SessionStore,
    kind: &'static str,
    id: &str,
    now: Timestamp,
) -> Result<Option<T>, SessionStoreError> {
    Ok(store
        .take_once(kind, &hashed(id), now)
        .await?
        .and_then(|v| serde_json::from_slice(&v).ok()))
}
