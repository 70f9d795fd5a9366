//! Building a [`Gateway`] from a validated config: storage, keys, pseudonym key, policy.

use super::signin::Signin;
use super::tokens::TokenAuthenticator;
use super::Gateway;
use crate::audit::AuditSink;
use crate::clock::Clock;
use crate::config::secret::{Secret, SecretError};
use crate::config::Config;
use crate::credentials::keys::{self, KeyStoreError};
use crate::credentials::Minter;
use crate::identity::oidc::OidcClient;
use crate::identity::pseudonym::{Pseudonymizer, WeakKey};
use crate::metrics::Metrics;
use crate::mfa::Passkeys;
use crate::policy::engine::TwinSpec;
use crate::policy::{Engine, PolicyError};
use crate::routing::RouteTable;
use crate::session::memory::MemoryStore;
use crate::session::SessionStore;
use crate::signals::network::NetworkSignals;
use crate::storage::{self, StorageError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyStoreError),
    #[error("pseudonym key: {0}")]
    Secret(#[from] SecretError),
    #[error("pseudonym key: {0}")]
    WeakKey(#[from] WeakKey),
    #[error("pseudonym key file {path}: {message}")]
    PseudonymFile { path: String, message: String },
    #[error("policy:\n{0}")]
    Policy(#[from] PolicyError),
    #[error("oidc: {0}")]
    Oidc(#[from] crate::identity::oidc::OidcError),
    #[error("oidc client secret: {0}")]
    ClientSecret(SecretError),
    #[error("webauthn: {0}")]
    Webauthn(#[from] crate::mfa::MfaError),
}

/// The admin listener's bearer token, written at every start inside the keys directory
/// (mode 0600) for the local CLI (`twinward session …`); it changes on every restart.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

fn write_admin_token(dir: &Path) -> Result<String, StartError> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    let err = |m: String| StartError::PseudonymFile {
        path: path.display().to_string(),
        message: m,
    };
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    let token = hex::encode(raw);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| err(e.to_string()))?;
    f.write_all(token.as_bytes())
        .map_err(|e| err(e.to_string()))?;
    Ok(token)
}

/// The generated pseudonym key's file name inside the keys directory.
pub const PSEUDONYM_KEY_FILE: &str = "pseudonym.key";

/// Reads the configured pseudonym key, or the generated one (creating it on first run).
pub fn pseudonym_key(config: &Config, create: bool) -> Result<Secret, StartError> {
    if let Some(r) = &config.identity.pseudonym_key {
        return Ok(r.load()?);
    }
    let dir = &config.credentials.keys_dir;
    let path = dir.join(PSEUDONYM_KEY_FILE);
    let err = |m: String| StartError::PseudonymFile {
        path: path.display().to_string(),
        message: m,
    };
    if !path.exists() {
        if !create {
            return Err(err(
                "missing (run `twinward serve` once, or set identity.pseudonym_key_file)".into(),
            ));
        }
        keys::ensure_dir(dir)?;
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| err(e.to_string()))?;
        f.write_all(hex::encode(key).as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let owner = keys::ensure_dir(dir)?;
    let text = crate::private_file::read_key(&path, Some(owner)).map_err(|e| err(e.to_string()))?;
    let bytes =
        hex::decode(String::from_utf8_lossy(&text).trim()).map_err(|_| err("not hex".into()))?;
    Ok(Secret::new(bytes))
}

impl Gateway {
    /// Opens storage, loads (or creates) keys, loads policy, and starts the audit writer.
    pub async fn start(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<(Arc<Gateway>, crate::audit::sink::AuditTask), StartError> {
        let now = clock.now();
        let store = storage::open(&config.storage.url).await?;
        let ring = keys::load(
            &config.credentials.keys_dir,
            config.credentials.algorithm,
            config.credentials.timing(),
            now,
            true,
        )?;
        let pseudonyms = Pseudonymizer::new(&pseudonym_key(&config, true)?)?;
        let twins = TwinSpec::from_routes(&config.routes, &config.file);
        let engine = Arc::new(Engine::load(&config.policy.dir, twins)?);
        let metrics = Metrics::new();
        let (audit, audit_task) = AuditSink::start(store.clone(), metrics.audit.clone())?;
        let sessions: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let signin = match &config.signin {
            None => None,
            Some(cfg) => {
                let secret = cfg
                    .oidc
                    .client_secret
                    .load()
                    .map_err(StartError::ClientSecret)?;
                let oidc = OidcClient::new(&cfg.oidc, &cfg.redirect_uri(), &secret)?;
                let passkeys = Passkeys::new(&cfg.webauthn, store.clone(), sessions.clone())?;
                Some(Arc::new(Signin::new(
                    cfg.clone(),
                    config.session.clone(),
                    oidc,
                    passkeys,
                    sessions.clone(),
                )))
            }
        };
        let admin_token = write_admin_token(&config.credentials.keys_dir)?;
        let gw = Gateway {
            admin_token,
            sessions,
            signin,
            routes: RouteTable::new(&config.routes),
            tokens: TokenAuthenticator::new(store.clone(), pseudonyms.clone()),
            minter: Minter::new(
                config.credentials.issuer.clone(),
                config.credentials.ttl,
                ring,
            ),
            network: NetworkSignals::new(
                config.server.trusted_proxies.clone(),
                config.server.client_ip_header,
                config.location.zones.clone(),
            ),
            config: Arc::new(config),
            engine,
            audit,
            clock,
            pseudonyms,
            metrics,
            store,
        };
        Ok((Arc::new(gw), audit_task))
    }
}
