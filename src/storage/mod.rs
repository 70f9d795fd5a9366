//! Durable state: API tokens and the audit chain. [`Store`] is the seam the backends fit
//! behind; [`sqlite`] is the embedded default. Storage never decides anything: callers check
//! expiry and revocation with their own `now`.

pub mod sqlite;

use crate::audit::{AuditEvent, StoredEvent};
use crate::identity::api_token::TokenHash;
use futures_util::future::BoxFuture;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage migration failed: {0}")]
    Migration(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StorageError::Conflict(d.to_string())
            }
            other => StorageError::Unavailable(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

/// A stored API token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub hash: TokenHash,
    pub display_prefix: String,
    pub service_account: String,
    pub owner: String,
    pub roles: Vec<String>,
    pub twins: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// Personal tokens: the pseudonymous subject of the user they act for.
    pub user_subject: Option<String>,
}

/// A person who signed in through the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub subject: String,
    pub issuer: String,
    pub idp_subject: String,
    pub email: String,
    pub name: String,
    /// The user handle authenticators store (random, not derived from the identity).
    pub webauthn_id: uuid::Uuid,
    pub created_at: i64,
    pub last_login_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyRecord {
    pub id: String,
    pub user_subject: String,
    /// base64url credential id.
    pub credential_id: String,
    pub name: String,
    pub aaguid: uuid::Uuid,
    /// webauthn-rs's serialized passkey (public key, counter, flags).
    pub passkey: String,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub sign_count: u32,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// Appends audit events from the audit writer's own thread (blocking), without the async
/// runtime between the writer and the database.
pub trait AuditAppender: Send {
    /// Appends events to the chain in one transaction, in order (as [`Store::append_audit`]).
    fn append(&mut self, events: &[AuditEvent]) -> Result<(), StorageError>;

    /// Appends events in one transaction, `step` at a time, taking each step after the
    /// first only while `go_on()` holds; commits the steps taken and returns how many events
    /// they held. A writer that may be preempted commits once for several steps (each
    /// commit rewrites the chain's last pages) yet hands the chain over within one step to a
    /// writer that asks for it. The default commits every step on its own.
    fn append_in_steps(
        &mut self,
        events: &[AuditEvent],
        step: usize,
        go_on: &dyn Fn() -> bool,
    ) -> Result<usize, StorageError> {
        let _ = go_on;
        let first = first_step(events, step);
        self.append(first)?;
        Ok(first.len())
    }

    /// Upkeep that appending needs now and then but need not wait for (SQLite: moving the
    /// write-ahead log into the database file), for a thread that runs only when a core is
    /// idle. Once it is taken, the appender leaves that work to it unless it falls far behind.
    /// `None` where the backend has no such work.
    fn housekeeper(&mut self) -> Result<Option<Arc<dyn AuditHousekeeper>>, StorageError> {
        Ok(None)
    }

    /// The part of the housekeeper's upkeep that has to run between two of this appender's
    /// transactions, once [`AuditHousekeeper::wants_finish`] says so (SQLite: moving the
    /// frames committed since the housekeeper's checkpoint began, so that the next
    /// transaction starts the log over). Appending waits while it runs, through an `fsync`
    /// or two: run it where waking from them does not wait long for a core.
    fn finish_upkeep(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// The events of a stepped append's first step, which is taken without asking (see
/// [`AuditAppender::append_in_steps`]), for appenders that commit each step on its own.
pub fn first_step(events: &[AuditEvent], step: usize) -> &[AuditEvent] {
    &events[..step.max(1).min(events.len())]
}

/// See [`AuditAppender::housekeeper`]. Shared: one thread asks whether upkeep is due (cheap,
/// often), another does it.
pub trait AuditHousekeeper: Send + Sync {
    /// Enough has been appended since the last upkeep to make another worth its cost.
    fn is_due(&self) -> bool;
    fn tidy(&self) -> Result<(), StorageError>;
    /// The last upkeep left a part for the appender: [`AuditAppender::finish_upkeep`].
    fn wants_finish(&self) -> bool {
        false
    }
}

pub trait Store: Send + Sync + 'static {
    /// A blocking appender for the audit writer thread, for backends that have one; with
    /// `None` the writer uses [`Store::append_audit`].
    fn audit_appender(&self) -> Result<Option<Box<dyn AuditAppender>>, StorageError> {
        Ok(None)
    }

    fn insert_token(&self, t: &TokenRecord) -> BoxFuture<'_, Result<(), StorageError>>;
    fn token_by_hash(
        &self,
        hash: TokenHash,
    ) -> BoxFuture<'_, Result<Option<TokenRecord>, StorageError>>;
    fn list_tokens(&self) -> BoxFuture<'_, Result<Vec<TokenRecord>, StorageError>>;
    /// Revokes by id, or by a unique id prefix. Returns the revoked record.
    fn revoke_token<'a>(
        &'a self,
        id: &'a str,
        at: i64,
    ) -> BoxFuture<'a, Result<Option<TokenRecord>, StorageError>>;
    /// Appends events to the chain in one transaction, in order.
    fn append_audit<'a>(
        &'a self,
        events: &'a [AuditEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>>;
    /// Events with `seq > after`, oldest first, at most `limit`.
    fn audit_events(
        &self,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StorageError>>;
    fn ping(&self) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Records a sign-in: inserts the user on first sight (keeping the given webauthn id),
    /// otherwise refreshes email, name and last login. Returns the stored user.
    fn upsert_user(&self, u: &UserRecord) -> BoxFuture<'_, Result<UserRecord, StorageError>>;
    fn passkeys_of<'a>(
        &'a self,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PasskeyRecord>, StorageError>>;
    fn insert_passkey(&self, p: &PasskeyRecord) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Saves what an authentication changed (counter, backup state, last use).
    fn update_passkey(&self, p: &PasskeyRecord) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Deletes one of the user's passkeys; false when the user has no such passkey.
    fn delete_passkey<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;
    fn tokens_of_user<'a>(
        &'a self,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<Vec<TokenRecord>, StorageError>>;
    /// Every passkey with its user's e-mail, optionally of one user (e-mail or subject).
    fn list_passkeys<'a>(
        &'a self,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<(PasskeyRecord, String)>, StorageError>>;
    /// Deletes a passkey by id (an administrator's reset); returns what was deleted.
    fn remove_passkey<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<PasskeyRecord>, StorageError>>;
}

/// Opens the store a URL names, applying migrations.
/// [`open`] for commands that only read or change what is stored (`audit verify`,
/// `token list`, …): a database file that is not there is an error naming the path, not an
/// empty database made on the spot, which would pass for an intact, empty audit log.
pub async fn open_existing(url: &str) -> Result<std::sync::Arc<dyn Store>, StorageError> {
    if let Some(path) = sqlite::file_path(url) {
        if !path.exists() {
            return Err(StorageError::Unavailable(format!(
                "no database at {} (the gateway creates it when it first starts; check storage.url)",
                path.display()
            )));
        }
    }
    open(url).await
}

pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StorageError> {
    if url.starts_with("sqlite://") {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url).await?))
    } else {
        Err(StorageError::Unavailable(format!(
            "storage URL scheme of {:?} is not available in this version (use sqlite://)",
            url.split("://").next().unwrap_or_default()
        )))
    }
}
