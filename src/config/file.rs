//! The file schema of `twinward.toml`, exactly as admins write it. Unknown keys are errors.
//! [`super::load`] turns this into a validated [`super::Config`].

use super::duration::HumanDuration;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]

pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub storage: StorageFile,
    #[serde(default)]
    pub credentials: CredentialsFile,
    #[serde(default)]
    pub identity: IdentityFile,
    #[serde(default)]
    pub policy: PolicyFile,
    #[serde(default)]
    pub location: LocationFile,
    #[serde(default)]
    pub api_tokens: ApiTokensFile,
    #[serde(default)]
    pub audit: AuditFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub oidc: Option<Spanned<OidcFile>>,
    #[serde(default)]
    pub webauthn: WebauthnFile,
    #[serde(default)]
    pub session: SessionFile,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteFile>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct OidcFile {
    pub issuer: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub client_secret_env: Option<Spanned<String>>,
    pub scopes: Option<Vec<String>>,
    pub roles_claim: Option<Spanned<String>>,
    #[serde(default)]
    pub roles: BTreeMap<String, Spanned<String>>,
    /// Tolerated clock difference with the IdP for `iat`/`exp`.
    pub clock_skew: Option<Spanned<HumanDuration>>,
    /// The least time between two JWKS fetches caused by an unknown `kid`.
    pub jwks_refresh_interval: Option<Spanned<HumanDuration>>,
    /// How the sign-in page names the IdP ("your organisation account" when absent).
    pub display_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WebauthnFile {
    pub rp_id: Option<Spanned<String>>,
    pub rp_name: Option<String>,
    pub origins: Option<Vec<Spanned<String>>>,
    pub required: Option<bool>,
    #[serde(default)]
    pub trusted_aaguids: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SessionFile {
    pub store: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    pub max_lifetime: Option<Spanned<HumanDuration>>,
    /// How recent a passkey check must be for sensitive self-service changes.
    pub mfa_max_age: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Default, Deserialize)]

pub struct ServerFile {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub public_url: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// The forwarding header the trusted proxies append to: `X-Forwarded-For` or `Forwarded`.
    pub client_ip_header: Option<Spanned<String>>,
    #[serde(default)]
    pub production_hosts: Vec<Spanned<String>>,
    pub tls: Option<Spanned<TlsFile>>,
    /// Worker threads; defaults to the number of cores.
    pub workers: Option<Spanned<usize>>,
    /// Client connections served at once.
    pub max_connections: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]

pub struct TlsFile {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Default, Deserialize)]

pub struct StorageFile {
    pub url: Option<Spanned<String>>,
    pub url_env: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]

pub struct CredentialsFile {
    pub issuer: Option<Spanned<String>>,
    pub ttl: Option<Spanned<HumanDuration>>,
    pub max_ttl: Option<Spanned<HumanDuration>>,
    pub algorithm: Option<Spanned<String>>,
    pub keys_dir: Option<Spanned<String>>,
    /// How long a rotated-out key stays in the JWKS.
    pub rotation_overlap: Option<Spanned<HumanDuration>>,
    /// How long a rotated-in key is published before it signs.
    pub activation_delay: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Default, Deserialize)]

pub struct IdentityFile {
    pub pseudonym_key_file: Option<Spanned<String>>,
    pub pseudonym_key_env: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]

pub struct PolicyFile {
    pub dir: Option<Spanned<String>>,
    /// Watch the directory and reload on change (SIGHUP always reloads).
    pub watch: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]

pub struct LocationFile {
    pub timezone: Option<Spanned<String>>,
    #[serde(default)]
    pub zones: BTreeMap<String, Spanned<Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]

pub struct ApiTokensFile {
    pub max_ttl: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Default, Deserialize)]

pub struct AuditFile {
    pub sink: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]

pub struct LogFile {
    pub format: Option<Spanned<String>>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]

pub struct RouteFile {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: String,
    pub twin: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, toml::Value>,
    /// `"authorization"` also sends the credential as `Authorization: Bearer`.
    pub credential_header: Option<String>,
    pub websocket: Option<bool>,
    /// Speak HTTP/2 with prior knowledge to a cleartext upstream.
    pub http2: Option<bool>,
    pub connect_timeout: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
}
