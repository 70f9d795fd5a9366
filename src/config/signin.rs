//! The browser sign-in sections: `[oidc]`, `[webauthn]` and `[session]`.

use super::file::{OidcFile, SessionFile, WebauthnFile};
use super::secret::SecretRef;
use super::{duration, ServerConfig, Validator};
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    pub scopes: Vec<String>,
    pub roles_claim: String,
    /// IdP claim value → gateway role. Values not listed never become roles.
    pub roles: BTreeMap<String, String>,
    pub clock_skew: Duration,
    pub jwks_refresh_interval: Duration,
    pub display_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WebauthnConfig {
    pub rp_id: String,
    pub rp_name: String,
    pub origins: Vec<url::Url>,
    pub required: bool,
    /// Empty: any authenticator. Otherwise only these AAGUIDs may enroll.
    pub trusted_aaguids: Vec<uuid::Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStoreKind {
    Memory,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub store: SessionStoreKind,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub mfa_max_age: Duration,
}

/// Everything browser sign-in needs, present only when `[oidc]` is configured.
#[derive(Debug, Clone)]
pub struct SigninConfig {
    pub oidc: OidcConfig,
    pub webauthn: WebauthnConfig,
    /// The auth host's origin, e.g. `https://twins.example.com`.
    pub public_url: url::Url,
    /// `__Host-twinward`, or plain `twinward` on http://localhost.
    pub cookie_name: &'static str,
    /// Whether cookies carry `Secure` (false only on http://localhost).
    pub secure_cookies: bool,
}

impl SigninConfig {
    pub fn redirect_uri(&self) -> String {
        format!(
            "{}/.twinward/callback",
            self.public_url.as_str().trim_end_matches('/')
        )
    }

    /// The origin (scheme://host[:port]) state-changing requests must come from.
    pub fn origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }
}

fn dur(
    v: Option<Spanned<super::duration::HumanDuration>>,
    default: Duration,
) -> (Duration, Option<usize>) {
    v.map_or((default, None), |d| (d.get_ref().0, Some(d.span().start)))
}

/// Hosts where browsers accept cookies and WebAuthn over plain http.
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host == "127.0.0.1" || host == "[::1]"
}

impl Validator<'_> {
    pub(super) fn session(&mut self, raw: SessionFile) -> SessionConfig {
        let store = match raw.store.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("memory") => SessionStoreKind::Memory,
            Some(other) => {
                let at = raw.store.as_ref().map(|s| s.span().start);
                if other.starts_with("redis://") || other.starts_with("rediss://") {
                    self.problem_at(
                        at,
                        "session.store: Redis sessions are not available in this version; use \"memory\"",
                    );
                } else {
                    self.problem_at(
                        at,
                        format!("session.store {other:?} is not \"memory\" or a redis:// URL"),
                    );
                }
                SessionStoreKind::Memory
            }
        };
        let (idle_timeout, idle_at) = dur(raw.idle_timeout, Duration::from_secs(30 * 60));
        let (max_lifetime, max_at) = dur(raw.max_lifetime, Duration::from_secs(8 * 3600));
        let (mfa_max_age, mfa_at) = dur(raw.mfa_max_age, Duration::from_secs(5 * 60));
        if idle_timeout < Duration::from_secs(10) {
            self.problem_at(idle_at, "session.idle_timeout must be at least 10s");
        }
        if max_lifetime < idle_timeout {
            self.problem_at(
                max_at,
                format!(
                    "session.max_lifetime {} is shorter than session.idle_timeout {}",
                    duration::format(max_lifetime),
                    duration::format(idle_timeout)
                ),
            );
        }
        if mfa_max_age.is_zero() {
            self.problem_at(mfa_at, "session.mfa_max_age must be more than 0s");
        }
        SessionConfig {
            store,
            idle_timeout,
            max_lifetime,
            mfa_max_age,
        }
    }

    pub(super) fn signin(
        &mut self,
        oidc: Option<Spanned<OidcFile>>,
        webauthn: WebauthnFile,
        server: &ServerConfig,
    ) -> Option<SigninConfig> {
        let oidc = oidc?;
        let section_at = Some(oidc.span().start);
        let raw = oidc.into_inner();
        let public_url = match &server.public_url {
            Some(u) => url::Url::parse(u).ok(),
            None => {
                self.problem_at(
                    section_at,
                    "[oidc] needs server.public_url: the sign-in callback and passkeys live on that host",
                );
                None
            }
        };
        let mut required = |v: Option<Spanned<String>>, key: &str| match v {
            Some(s) if !s.get_ref().trim().is_empty() => Some(s.into_inner()),
            Some(s) => {
                self.problem_at(Some(s.span().start), format!("oidc.{key} is empty"));
                None
            }
            None => {
                self.problem_at(section_at, format!("oidc.{key} is required"));
                None
            }
        };
        let issuer = required(raw.issuer, "issuer");
        let client_id = required(raw.client_id, "client_id");
        if let Some(i) = &issuer {
            match url::Url::parse(i) {
                Ok(u) if u.scheme() == "https" => {}
                Ok(u) if u.scheme() == "http" && u.host_str().is_some_and(is_loopback_host) => {}
                _ => self.problem_at(
                    section_at,
                    format!("oidc.issuer {i:?} must be an https URL (http only on localhost)"),
                ),
            }
        }
        let client_secret = match (raw.client_secret_file, raw.client_secret_env) {
            (Some(f), None) => Some(SecretRef::File(self.path(f.get_ref()))),
            (None, Some(e)) => Some(SecretRef::Env(e.into_inner())),
            (Some(f), Some(_)) => {
                self.problem_at(
                    Some(f.span().start),
                    "set oidc.client_secret_file or oidc.client_secret_env, not both",
                );
                None
            }
            (None, None) => {
                self.problem_at(
                    section_at,
                    "oidc needs client_secret_file or client_secret_env",
                );
                None
            }
        };
        let mut scopes = raw
            .scopes
            .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        let roles_claim = raw
            .roles_claim
            .map_or_else(|| "groups".to_owned(), |c| c.into_inner());
        let mut roles = BTreeMap::new();
        for (claim, role) in raw.roles {
            if role.get_ref().trim().is_empty() {
                self.problem_at(
                    Some(role.span().start),
                    format!("oidc.roles: {claim:?} maps to an empty role"),
                );
                continue;
            }
            roles.insert(claim, role.into_inner());
        }
        if roles.is_empty() {
            self.problem_at(
                section_at,
                "oidc.roles is empty: no one signing in would have a role (map IdP values to roles, e.g. roles = { \"twin-operators\" = \"twin-operator\" })",
            );
        }
        let (clock_skew, skew_at) = dur(raw.clock_skew, Duration::from_secs(60));
        if clock_skew > Duration::from_secs(300) {
            self.problem_at(skew_at, "oidc.clock_skew must be at most 5m");
        }
        let (jwks_refresh_interval, _) = dur(raw.jwks_refresh_interval, Duration::from_secs(10));

        let public_url = public_url?;
        let host = public_url.host_str().unwrap_or_default().to_owned();
        let loopback_http = public_url.scheme() == "http" && is_loopback_host(&host);
        if public_url.scheme() == "http" && !loopback_http {
            self.problem_at(
                None,
                "server.public_url must be https for browser sign-in (http only on localhost)",
            );
        }
        let webauthn = self.webauthn(webauthn, &public_url, &host);
        Some(SigninConfig {
            oidc: OidcConfig {
                issuer: issuer?,
                client_id: client_id?,
                client_secret: client_secret?,
                scopes,
                roles_claim,
                roles,
                clock_skew,
                jwks_refresh_interval,
                display_name: raw.display_name,
            },
            webauthn,
            public_url,
            cookie_name: if loopback_http {
                "twinward"
            } else {
                "__Host-twinward"
            },
            secure_cookies: !loopback_http,
        })
    }

    fn webauthn(&mut self, raw: WebauthnFile, public_url: &url::Url, host: &str) -> WebauthnConfig {
        let rp_id = match raw.rp_id {
            Some(r) => {
                let id = r.get_ref().to_ascii_lowercase();
                // The rp_id must be the auth host or a parent domain of it (WebAuthn §5.1.4).
                if !(host == id || host.ends_with(&format!(".{id}"))) {
                    self.problem_at(
                        Some(r.span().start),
                        format!("webauthn.rp_id {id:?} is neither the host of server.public_url ({host:?}) nor a parent domain of it"),
                    );
                }
                id
            }
            None => host.to_owned(),
        };
        if rp_id.parse::<std::net::IpAddr>().is_ok() || rp_id.starts_with('[') {
            self.problem_at(
                None,
                format!("webauthn.rp_id {rp_id:?} is an IP address; passkeys need a domain name (use localhost instead of 127.0.0.1)"),
            );
        }
        let mut origins = Vec::new();
        match raw.origins {
            Some(list) => {
                for o in list {
                    match url::Url::parse(o.get_ref()) {
                        Ok(u) if u.host_str().is_some() => origins.push(u),
                        _ => self.problem_at(
                            Some(o.span().start),
                            format!("webauthn.origins: {:?} is not an origin such as \"https://twins.example.com\"", o.get_ref()),
                        ),
                    }
                }
            }
            None => origins.push(public_url.clone()),
        }
        let mut trusted_aaguids = Vec::new();
        if let Some(first) = raw.trusted_aaguids.first() {
            // Without attestation (passkeys register with "none") an authenticator names its
            // own AAGUID, so a list here would look like a control and be none.
            self.problem_at(
                Some(first.span().start),
                "webauthn.trusted_aaguids needs verified attestation, which this version does not do (an authenticator could claim any AAGUID); remove it",
            );
        }
        for a in raw.trusted_aaguids {
            match uuid::Uuid::parse_str(a.get_ref()) {
                Ok(u) => trusted_aaguids.push(u),
                Err(_) => self.problem_at(
                    Some(a.span().start),
                    format!("webauthn.trusted_aaguids: {:?} is not a UUID", a.get_ref()),
                ),
            }
        }
        WebauthnConfig {
            rp_id,
            rp_name: raw.rp_name.unwrap_or_else(|| "twinward".to_owned()),
            origins,
            required: raw.required.unwrap_or(true),
            trusted_aaguids,
        }
    }
}
