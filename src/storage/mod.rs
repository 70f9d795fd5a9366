//! Durable state: API tokens and the audit chain. [`Store`] is the seam the backends fit
//! behind; [`sqlite`] is the embedded default. Storage never decides anything: callers check
//! expiry and revocation with their own `now`.

pub mod sqlite;

use crate::audit::{AuditEvent, StoredEvent};
use crate::identity::api_token::TokenHash;
use futures_util::future::BoxFuture;

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
}

pub trait Store: Send + Sync + 'static {
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
    fn append_audit(&self, events: Vec<AuditEvent>) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Events with `seq > after`, oldest first, at most `limit`.
    fn audit_events(
        &self,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StorageError>>;
    fn ping(&self) -> BoxFuture<'_, Result<(), StorageError>>;
}

/// Opens the store a URL names, applying migrations.
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
