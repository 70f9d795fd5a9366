//! API token authentication and issuance. A presented token is checked for shape and
//! checksum before any storage lookup; a verified token is cached for one second, which is
//! also the longest a revocation takes to reach this process.

use crate::audit::AuditEvent;
use crate::clock::Timestamp;
use crate::identity::api_token::{self, TokenFormatError, TokenHash};
use crate::identity::pseudonym::{Pseudonymizer, SERVICE_ACCOUNT_ISSUER};
use crate::policy::engine::Principal;
use crate::storage::{StorageError, Store, TokenRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `idp` attribute of a user principal acting through a personal API token.
pub const PERSONAL_TOKEN_IDP: &str = "twinward:api_token";

/// How long a verified token is trusted without asking storage again.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer twt_...")]
    Missing,
    #[error(transparent)]
    Format(#[from] TokenFormatError),
    #[error("unknown API token")]
    Unknown,
    #[error("API token has expired")]
    Expired,
    #[error("API token has been revoked")]
    Revoked,
    #[error("token store unavailable")]
    Unavailable,
}

/// A verified token and the principal it stands for.
#[derive(Debug)]
pub struct AuthenticatedToken {
    pub record: TokenRecord,
    pub principal: Principal,
    pub pseudonym: String,
    /// Key for credential reuse: one per token.
    pub cache_key: String,
}

pub struct TokenAuthenticator {
    store: Arc<dyn Store>,
    pseudonyms: Pseudonymizer,
    cache:
        Mutex<HashMap<TokenHash, (Arc<AuthenticatedToken>, Instant), foldhash::fast::RandomState>>,
}

impl TokenAuthenticator {
    pub fn new(store: Arc<dyn Store>, pseudonyms: Pseudonymizer) -> Self {
        TokenAuthenticator {
            store,
            pseudonyms,
            cache: Mutex::new(HashMap::default()),
        }
    }

    #[tracing::instrument(skip_all)]
    pub async fn authenticate(
        &self,
        bearer: &str,
        now: Timestamp,
    ) -> Result<Arc<AuthenticatedToken>, AuthError> {
        let hash = api_token::parse(bearer)?;
        let cached = self.cache.lock().ok().and_then(|c| {
            c.get(&hash)
                .filter(|(_, at)| at.elapsed() < CACHE_TTL)
                .map(|(t, _)| t.clone())
        });
        let token = match cached {
            Some(t) => t,
            None => {
                let record = match self.store.token_by_hash(hash).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(AuthError::Unknown),
                    Err(e) => {
                        tracing::error!(error = %e, "token lookup failed");
                        return Err(AuthError::Unavailable);
                    }
                };
                // A personal token acts as its user (with the token's subset of roles);
                // a service-account token as the service account.
                let (principal, pseudonym) = match &record.user_subject {
                    Some(subject) => (
                        Principal::user(subject, &record.owner, PERSONAL_TOKEN_IDP, &record.roles),
                        subject.clone(),
                    ),
                    None => (
                        Principal::service_account(
                            &record.service_account,
                            &record.owner,
                            &record.roles,
                        ),
                        self.pseudonyms
                            .subject(SERVICE_ACCOUNT_ISSUER, &record.service_account),
                    ),
                };
                let principal = principal.map_err(|e| {
                    tracing::error!(error = %e, token_id = %record.id, "stored token cannot form a principal");
                    AuthError::Unknown
                })?;
                let token = Arc::new(AuthenticatedToken {
                    pseudonym,
                    cache_key: format!("token:{}", record.id),
                    record,
                    principal,
                });
                if let Ok(mut c) = self.cache.lock() {
                    if c.len() > 100_000 {
                        c.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                    }
                    c.insert(hash, (token.clone(), Instant::now()));
                }
                token
            }
        };
        // INVARIANT: revocation and expiry are checked on every request, cached or not.
        if token.record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if token.record.expires_at <= now.unix_secs() {
            return Err(AuthError::Expired);
        }
        Ok(token)
    }
}

/// What an admin asks for when creating a service-account token.
#[derive(Debug, Clone)]
pub struct NewTokenSpec {
    pub service_account: String,
    pub owner: String,
    pub roles: Vec<String>,
    pub twins: Vec<String>,
    pub ttl: Duration,
    /// Personal tokens: the user they act for (pseudonymous subject).
    pub user_subject: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Creates a token: checks the request against the known roles and twins and the TTL cap,
/// stores its hash, and returns the token text (to be shown once) with its record and the
/// audit event to append.
pub async fn issue(
    store: &dyn Store,
    spec: &NewTokenSpec,
    known_role: impl Fn(&str) -> bool,
    known_twin: impl Fn(&str) -> bool,
    max_ttl: Duration,
    now: Timestamp,
    random: [u8; 32],
) -> Result<(String, TokenRecord, AuditEvent), IssueError> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    };
    if !name_ok(&spec.service_account) {
        return Err(IssueError::Invalid(format!(
            "service account name {:?} must be 1–128 letters, digits, '-', '_', '.', '@'",
            spec.service_account
        )));
    }
    if spec.roles.is_empty() {
        return Err(IssueError::Invalid(
            "a token needs at least one --role".into(),
        ));
    }
    for r in &spec.roles {
        if !known_role(r) {
            return Err(IssueError::Invalid(format!(
                "role {r:?} is not a Twinward::Role in the policy entities"
            )));
        }
    }
    for t in &spec.twins {
        if !known_twin(t) {
            return Err(IssueError::Invalid(format!(
                "twin {t:?} is not served by any route or declared in the policy entities"
            )));
        }
    }
    if spec.ttl.is_zero() {
        return Err(IssueError::Invalid("--ttl must be longer than zero".into()));
    }
    if spec.ttl > max_ttl {
        return Err(IssueError::Invalid(format!(
            "--ttl {} is longer than api_tokens.max_ttl {}",
            crate::config::duration::format(spec.ttl),
            crate::config::duration::format(max_ttl)
        )));
    }
    let token = api_token::generate(random);
    let record = TokenRecord {
        id: uuid::Uuid::now_v7().to_string(),
        hash: token.hash,
        display_prefix: api_token::display_prefix(&token.text),
        service_account: spec.service_account.clone(),
        owner: spec.owner.clone(),
        roles: spec.roles.clone(),
        twins: spec.twins.clone(),
        created_at: now.unix_secs(),
        expires_at: now
            .unix_secs()
            .saturating_add(i64::try_from(spec.ttl.as_secs()).unwrap_or(i64::MAX)),
        revoked_at: None,
        user_subject: spec.user_subject.clone(),
    };
    store.insert_token(&record).await?;
    let mut ev = AuditEvent::new("token.create", "ok", now);
    ev.actor = Some(spec.owner.clone());
    ev.detail = serde_json::json!({
        "token_id": record.id,
        "service_account": record.service_account,
        "roles": record.roles,
        "twins": record.twins,
        "expires_at": record.expires_at,
    })
    .into();
    Ok((token.text, record, ev))
}
