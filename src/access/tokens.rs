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
#[derive(Debug, Clone)]
pub struct AuthenticatedToken {
    pub record: TokenRecord,
    pub principal: Principal,
    pub pseudonym: Arc<str>,
    /// Who the audit log names as the actor: the owner of a personal token, else the
    /// service account.
    pub actor: Arc<str>,
    pub id: Arc<str>,
    /// Key for credential reuse: one per token.
    pub cache_key: String,
}

pub struct TokenAuthenticator {
    inner: Arc<Lookup>,
}

/// Storage lookups and the cache they fill; shared with background refreshes.
struct Lookup {
    store: Arc<dyn Store>,
    pseudonyms: Pseudonymizer,
    cache: Mutex<HashMap<TokenHash, Cached, foldhash::fast::RandomState>>,
}

struct Cached {
    token: Arc<AuthenticatedToken>,
    fetched: Instant,
    /// A background refresh is on its way.
    refreshing: bool,
}

/// Age at which a token in use is read again in the background, so steady traffic never
/// finds its entry expired and waits on storage (nor sends every waiting request there at
/// once). The entry is still never used past [`CACHE_TTL`].
const REFRESH_AFTER: Duration = Duration::from_millis(500);

impl TokenAuthenticator {
    pub fn new(store: Arc<dyn Store>, pseudonyms: Pseudonymizer) -> Self {
        TokenAuthenticator {
            inner: Arc::new(Lookup {
                store,
                pseudonyms,
                cache: Mutex::new(HashMap::default()),
            }),
        }
    }

    #[tracing::instrument(skip_all)]
    pub async fn authenticate(
        &self,
        bearer: &str,
        now: Timestamp,
    ) -> Result<Arc<AuthenticatedToken>, AuthError> {
        let hash = api_token::parse(bearer)?;
        let (cached, refresh) = match self.inner.cache.lock() {
            Ok(mut c) => match c.get_mut(&hash) {
                Some(e) => {
                    // One clock read per request: it is on every token request's path.
                    let age = e.fetched.elapsed();
                    if age < CACHE_TTL {
                        let refresh = !e.refreshing && age >= REFRESH_AFTER;
                        e.refreshing |= refresh;
                        (Some(e.token.clone()), refresh)
                    } else {
                        (None, false)
                    }
                }
                None => (None, false),
            },
            Err(_) => (None, false),
        };
        if refresh {
            let lookup = self.inner.clone();
            tokio::spawn(async move { lookup.refresh(hash).await });
        }
        let token = match cached {
            Some(t) => t,
            None => match self.inner.fetch(hash).await? {
                Some(t) => t,
                None => return Err(AuthError::Unknown),
            },
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

impl Lookup {
    /// Reads the token from storage and caches it; `None` if storage does not know it.
    async fn fetch(&self, hash: TokenHash) -> Result<Option<Arc<AuthenticatedToken>>, AuthError> {
        // The entry's age counts from before the read: storage may have answered with what
        // it held at any moment since, and a revocation must show within CACHE_TTL of it.
        let started = Instant::now();
        let record = match self.store.token_by_hash(hash).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                if let Ok(mut c) = self.cache.lock() {
                    c.remove(&hash);
                }
                return Ok(None);
            }
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
                Principal::service_account(&record.service_account, &record.owner, &record.roles),
                self.pseudonyms
                    .subject(SERVICE_ACCOUNT_ISSUER, &record.service_account),
            ),
        };
        let principal = principal.map_err(|e| {
            tracing::error!(error = %e, token_id = %record.id, "stored token cannot form a principal");
            AuthError::Unknown
        })?;
        let token = Arc::new(AuthenticatedToken {
            pseudonym: pseudonym.into(),
            actor: if record.user_subject.is_some() {
                record.owner.as_str().into()
            } else {
                record.service_account.as_str().into()
            },
            id: record.id.as_str().into(),
            cache_key: format!("token:{}", record.id),
            record,
            principal,
        });
        self.keep(hash, token.clone(), started);
        Ok(Some(token))
    }

    /// Caches what a read that started at `started` found, unless a read that started later
    /// has already: a slow read must not put back a record older than the cached one (a
    /// token revoked in between would be accepted again).
    fn keep(&self, hash: TokenHash, token: Arc<AuthenticatedToken>, started: Instant) {
        let Ok(mut c) = self.cache.lock() else {
            return;
        };
        if c.len() > 100_000 {
            c.retain(|_, e| e.fetched.elapsed() < CACHE_TTL);
        }
        if c.get(&hash).is_some_and(|e| e.fetched > started) {
            return;
        }
        c.insert(
            hash,
            Cached {
                token,
                fetched: started,
                refreshing: false,
            },
        );
    }

    /// A background refresh. On failure the entry simply ages out at [`CACHE_TTL`], and the
    /// next request asks storage itself (and fails closed if storage is down).
    async fn refresh(&self, hash: TokenHash) {
        if self.fetch(hash).await.is_err() {
            if let Ok(mut c) = self.cache.lock() {
                if let Some(e) = c.get_mut(&hash) {
                    e.refreshing = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStore;

    #[tokio::test]
    async fn steady_use_refreshes_ahead_and_still_sees_a_revocation_within_the_ttl() {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&format!("sqlite://{}/t.db", d.path().display()))
                .await
                .unwrap(),
        );
        let pseudonyms =
            Pseudonymizer::new(&crate::config::secret::Secret::new(vec![7; 32])).unwrap();
        let now = Timestamp::from_unix_secs(1_000);
        let spec = NewTokenSpec {
            service_account: "ci".into(),
            owner: "ops@example.com".into(),
            roles: vec!["operator".into()],
            twins: vec![],
            ttl: Duration::from_secs(3600),
            user_subject: None,
        };
        let (text, record, _) = issue(
            &*store,
            &spec,
            |_| true,
            |_| true,
            Duration::from_secs(86_400),
            now,
            [3; 32],
        )
        .await
        .unwrap();
        let auth = TokenAuthenticator::new(store.clone(), pseudonyms);
        assert!(auth.authenticate(&text, now).await.is_ok());
        store
            .revoke_token(&record.id, 1_001)
            .await
            .unwrap()
            .unwrap();
        // Requests keep coming every 50 ms: the cached entry is refreshed ahead of its
        // expiry, and the refresh brings the revocation before one TTL has passed.
        let started = Instant::now();
        let refused_after = loop {
            match auth.authenticate(&text, now).await {
                Err(AuthError::Revoked) => break started.elapsed(),
                Ok(_) => {}
                Err(e) => panic!("unexpected {e}"),
            }
            assert!(
                started.elapsed() < CACHE_TTL + Duration::from_millis(200),
                "revocation not seen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(refused_after <= CACHE_TTL, "{refused_after:?}");
        // And the refresh happened in the background: the entry was replaced, not expired.
        let fetched = auth
            .inner
            .cache
            .lock()
            .unwrap()
            .get(&api_token::parse(&text).unwrap())
            .map(|e| e.fetched.elapsed());
        assert!(fetched.is_some_and(|a| a < CACHE_TTL));

        // A slow read that started before the revocation and ends after a newer read must
        // not put the unrevoked record back.
        let hash = api_token::parse(&text).unwrap();
        let revoked = auth.inner.fetch(hash).await.unwrap().unwrap();
        assert!(revoked.record.revoked_at.is_some());
        let mut stale = (*revoked).clone();
        stale.record.revoked_at = None;
        let long_ago = Instant::now() - Duration::from_millis(300);
        auth.inner.keep(hash, Arc::new(stale), long_ago);
        assert!(matches!(
            auth.authenticate(&text, now).await,
            Err(AuthError::Revoked)
        ));
        // The entry's age is that of the read's start, not of its end.
        let age = auth
            .inner
            .cache
            .lock()
            .unwrap()
            .get(&hash)
            .map(|e| e.fetched);
        assert!(age.is_some_and(|f| f <= Instant::now()));
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
    ev.actor = Some(spec.owner.as_str().into());
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
