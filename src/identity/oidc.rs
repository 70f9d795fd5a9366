//! Sign-in at the organisation's OpenID provider: authorization code flow with PKCE (S256),
//! `state` bound to the browser, and `nonce`; ID token verified against the provider's JWKS
//! (`iss`, `aud`, `azp`, `exp`, `iat` within the configured skew, `nonce`). Discovery is lazy
//! and retried, so the gateway starts (and serves API tokens) while the IdP is down; an
//! unknown `kid` refetches the JWKS, at most once per `jwks_refresh_interval`.

use crate::clock::Timestamp;
use crate::config::secret::Secret;
use crate::config::signin::OidcConfig;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreIdTokenVerifier, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, IdToken, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    SignatureVerificationError,
};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every claim of the ID token that the standard set does not name (the roles claim lives here).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OtherClaims(serde_json::Map<String, serde_json::Value>);
impl AdditionalClaims for OtherClaims {}

type RawIdToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// The RFC 8176 values passed on from the IdP's `amr`; anything else is dropped.
const RFC8176_AMR: &[&str] = &[
    "face", "fpt", "geo", "hwk", "iris", "kba", "mca", "mfa", "otp", "pin", "pwd", "rba", "retina",
    "sc", "sms", "swk", "tel", "user", "vbm", "wia",
];

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider is unreachable: {0}")]
    Unreachable(String),
    #[error("the identity provider's token endpoint refused the code: {0}")]
    Exchange(String),
    #[error("the identity provider returned no ID token")]
    NoIdToken,
    #[error("the ID token is not valid: {0}")]
    InvalidIdToken(String),
    #[error("misconfigured: {0}")]
    Config(String),
}

/// A sign-in in progress, kept server-side under its `state` until the callback.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PendingLogin {
    pub pkce_verifier: String,
    pub nonce: String,
    /// Where to go after sign-in (already checked to be a host the gateway serves).
    pub return_to: String,
    /// SHA-256 of the random value in the browser's login cookie: the callback must come
    /// from the browser that started the sign-in.
    pub binding_hash: String,
    pub started: Timestamp,
}

pub struct LoginStart {
    pub authorize_url: String,
    pub state: String,
    pub pending: PendingLogin,
}

/// Who the IdP says signed in, with roles already mapped and filtered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpIdentity {
    pub issuer: String,
    pub subject: String,
    pub email: String,
    pub name: String,
    pub roles: Vec<String>,
    pub amr: Vec<String>,
}

struct Discovered {
    authorize_url: openidconnect::AuthUrl,
    token_url: openidconnect::TokenUrl,
    jwks_url: openidconnect::JsonWebKeySetUrl,
    issuer: IssuerUrl,
}

struct Keys {
    set: CoreJsonWebKeySet,
    fetched: Option<Instant>,
}

pub struct OidcClient {
    cfg: OidcConfig,
    redirect_uri: RedirectUrl,
    secret: String,
    http: openidconnect::reqwest::Client,
    discovered: Mutex<Option<std::sync::Arc<Discovered>>>,
    keys: Mutex<Keys>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OidcClient {
    pub fn new(cfg: &OidcConfig, redirect_uri: &str, secret: &Secret) -> Result<Self, OidcError> {
        let secret = String::from_utf8(secret.expose().to_vec())
            .map_err(|_| OidcError::Config("the client secret is not UTF-8".into()))?
            .trim()
            .to_owned();
        // No redirects: an IdP endpoint that redirects elsewhere is a misconfiguration or
        // an attempt to make the gateway fetch something it should not.
        let http = openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| OidcError::Config(e.to_string()))?;
        Ok(OidcClient {
            cfg: cfg.clone(),
            redirect_uri: RedirectUrl::new(redirect_uri.to_owned())
                .map_err(|e| OidcError::Config(format!("redirect URI: {e}")))?,
            secret,
            http,
            discovered: Mutex::new(None),
            keys: Mutex::new(Keys {
                set: CoreJsonWebKeySet::new(Vec::new()),
                fetched: None,
            }),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    async fn discover(&self) -> Result<std::sync::Arc<Discovered>, OidcError> {
        if let Some(d) = lock(&self.discovered).clone() {
            return Ok(d);
        }
        let issuer = IssuerUrl::new(self.cfg.issuer.clone())
            .map_err(|e| OidcError::Config(format!("issuer: {e}")))?;
        // Discovery also fetches the JWKS and checks the document's issuer is ours.
        let meta = CoreProviderMetadata::discover_async(issuer.clone(), &self.http)
            .await
            .map_err(|e| OidcError::Unreachable(error_chain(&e)))?;
        let token_url = meta
            .token_endpoint()
            .cloned()
            .ok_or_else(|| OidcError::Config("the provider has no token endpoint".into()))?;
        let d = std::sync::Arc::new(Discovered {
            authorize_url: meta.authorization_endpoint().clone(),
            token_url,
            jwks_url: meta.jwks_uri().clone(),
            issuer,
        });
        {
            let mut k = lock(&self.keys);
            k.set = meta.jwks().clone();
            k.fetched = Some(Instant::now());
        }
        *lock(&self.discovered) = Some(d.clone());
        Ok(d)
    }

    fn client(
        &self,
        d: &Discovered,
    ) -> CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
    > {
        CoreClient::new(
            ClientId::new(self.cfg.client_id.clone()),
            d.issuer.clone(),
            CoreJsonWebKeySet::new(Vec::new()),
        )
        .set_client_secret(ClientSecret::new(self.secret.clone()))
        .set_auth_uri(d.authorize_url.clone())
        .set_token_uri(d.token_url.clone())
        .set_redirect_uri(self.redirect_uri.clone())
    }

    /// Starts a sign-in: the IdP URL to send the browser to and what to keep until the
    /// callback.
    pub async fn start(
        &self,
        return_to: String,
        binding_hash: String,
        now: Timestamp,
    ) -> Result<LoginStart, OidcError> {
        let d = self.discover().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client(&d);
        let mut req = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in self.cfg.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        Ok(LoginStart {
            authorize_url: url.to_string(),
            state: state.secret().clone(),
            pending: PendingLogin {
                pkce_verifier: verifier.secret().clone(),
                nonce: nonce.secret().clone(),
                return_to,
                binding_hash,
                started: now,
            },
        })
    }

    /// Redeems the code and verifies the ID token. `now` is the gateway's clock.
    pub async fn finish(
        &self,
        code: &str,
        pending: &PendingLogin,
        now: Timestamp,
    ) -> Result<IdpIdentity, OidcError> {
        let d = self.discover().await?;
        let client = self.client(&d);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| match &e {
                openidconnect::RequestTokenError::ServerResponse(r) => {
                    OidcError::Exchange(r.to_string())
                }
                other => OidcError::Unreachable(error_chain(other)),
            })?;
        use openidconnect::TokenResponse as _;
        let raw = response.id_token().ok_or(OidcError::NoIdToken)?.to_string();
        let token: RawIdToken = raw
            .parse()
            .map_err(|e: serde_json::Error| OidcError::InvalidIdToken(e.to_string()))?;
        let nonce = Nonce::new(pending.nonce.clone());

        let claims = match self.verify(&d, &token, &nonce, now) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if self.may_refresh_keys() => {
                // The IdP rotated its keys: fetch the set again, once, and retry.
                self.refresh_keys(&d).await?;
                self.verify(&d, &token, &nonce, now)
            }
            other => other,
        }
        .map_err(|e| OidcError::InvalidIdToken(e.to_string()))?;

        if let Some(azp) = claims.authorized_party() {
            if azp.as_str() != self.cfg.client_id {
                return Err(OidcError::InvalidIdToken(format!(
                    "authorized party {:?} is not this client",
                    azp.as_str()
                )));
            }
        } else if claims.audiences().len() > 1 {
            return Err(OidcError::InvalidIdToken(
                "several audiences and no authorized party".into(),
            ));
        }
        let email = claims
            .email()
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default();
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned())
            .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()))
            .unwrap_or_else(|| email.clone());
        let amr = claims
            .auth_method_refs()
            .map(|v| {
                v.iter()
                    .map(|a| a.as_str().to_owned())
                    .filter(|a| RFC8176_AMR.contains(&a.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let roles = map_roles(
            claims.additional_claims().0.get(&self.cfg.roles_claim),
            &self.cfg.roles,
        );
        Ok(IdpIdentity {
            issuer: claims.issuer().as_str().to_owned(),
            subject: claims.subject().as_str().to_owned(),
            email,
            name,
            roles,
            amr,
        })
    }

    fn verify<'t>(
        &self,
        d: &Discovered,
        token: &'t RawIdToken,
        nonce: &Nonce,
        now: Timestamp,
    ) -> Result<
        &'t openidconnect::IdTokenClaims<OtherClaims, CoreGenderClaim>,
        ClaimsVerificationError,
    > {
        let keys = lock(&self.keys).set.clone();
        let skew = self.cfg.clock_skew;
        let now_dt = chrono::DateTime::from_timestamp(now.unix_secs(), 0).unwrap_or_default();
        let skew_dt = chrono::Duration::from_std(skew).unwrap_or_default();
        // A public-client verifier: the client secret is never a verification key, so an
        // HS256 token "signed" with it is refused.
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.cfg.client_id.clone()),
            d.issuer.clone(),
            keys,
        )
        .set_allowed_algs([
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
            CoreJwsSigningAlgorithm::RsaSsaPssSha256,
            CoreJwsSigningAlgorithm::RsaSsaPssSha384,
            CoreJwsSigningAlgorithm::RsaSsaPssSha512,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            CoreJwsSigningAlgorithm::EcdsaP384Sha384,
            CoreJwsSigningAlgorithm::EdDsa,
        ])
        // `exp` gets the skew as leeway by checking against a clock that far behind.
        .set_time_fn(move || now_dt - skew_dt)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > now_dt + skew_dt {
                return Err(format!("issued in the future ({iat})"));
            }
            if iat < now_dt - skew_dt - chrono::Duration::minutes(10) {
                return Err(format!("issued too long ago ({iat})"));
            }
            Ok(())
        });
        token.claims(&verifier, nonce)
    }

    fn may_refresh_keys(&self) -> bool {
        lock(&self.keys)
            .fetched
            .is_none_or(|t| t.elapsed() >= self.cfg.jwks_refresh_interval)
    }

    async fn refresh_keys(&self, d: &Discovered) -> Result<(), OidcError> {
        // Claim the refresh slot first, so concurrent callbacks do not all fetch.
        lock(&self.keys).fetched = Some(Instant::now());
        let set = CoreJsonWebKeySet::fetch_async(&d.jwks_url, &self.http)
            .await
            .map_err(|e| OidcError::Unreachable(error_chain(&e)))?;
        tracing::info!(
            keys = set.keys().len(),
            "refetched the identity provider's JWKS after an unknown key id"
        );
        lock(&self.keys).set = set;
        Ok(())
    }
}

/// IdP claim values → gateway roles: only values the config maps become roles.
pub fn map_roles(
    claim: Option<&serde_json::Value>,
    map: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let values: Vec<&str> = match claim {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    let mut roles: Vec<String> = values
        .into_iter()
        .filter_map(|v| map.get(v).cloned())
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_mapped_values_become_roles() {
        let map = std::collections::BTreeMap::from([
            ("twin-operators".to_owned(), "twin-operator".to_owned()),
            ("ops-2".to_owned(), "twin-operator".to_owned()),
        ]);
        assert_eq!(
            map_roles(Some(&json!(["twin-operators", "admins", "ops-2", 7])), &map),
            vec!["twin-operator"]
        );
        assert_eq!(
            map_roles(Some(&json!("twin-operators")), &map),
            vec!["twin-operator"]
        );
        assert!(map_roles(Some(&json!({"twin-operators": true})), &map).is_empty());
        assert!(map_roles(None, &map).is_empty());
    }
}
