//! Minting twin credentials, with reuse: a credential for the same principal, route and
//! policy generation is reused until it is within 20% of its expiry, so the signature
//! (20–40 µs) is paid once per principal and route every few minutes, not per request.

use super::keys::{KeyRing, KeyStoreError, SigningKey};
use crate::clock::Timestamp;
use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::Serialize;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a credential asserts.
#[derive(Debug, Clone)]
pub struct CredentialRequest<'a> {
    /// Stable key of the authenticated principal (token id or session), for reuse.
    pub cache_key: &'a str,
    /// The pseudonymous subject.
    pub subject: &'a str,
    /// The route name.
    pub audience: &'a str,
    pub twin: &'a str,
    pub roles: &'a [String],
    pub amr: &'a [&'a str],
    /// Policy generation that decided; a reload invalidates reuse.
    pub generation: u64,
    /// Shorter lifetime than the configured one, e.g. for a token expiring sooner.
    pub not_after: Option<Timestamp>,
}

/// A signed credential.
#[derive(Debug, Clone)]
pub struct Credential {
    pub token: Arc<str>,
    /// The token as a header value, built once: every request the credential is reused
    /// for attaches it by reference. `None` only if the token were not a valid header value.
    pub header: Option<http::HeaderValue>,
    pub jti: String,
    pub kid: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// Space-separated actions policy allows on the resource at mint time.
    pub scope: String,
}

impl Credential {
    pub fn expires_in(&self, now: Timestamp) -> Duration {
        self.expires_at.saturating_since(now)
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: &'a str,
    scope: &'a str,
    roles: &'a [String],
    amr: &'a [&'a str],
    twin: &'a str,
}

const SHARDS: usize = 16;
const MAX_ENTRIES_PER_SHARD: usize = 4096;

pub struct Minter {
    issuer: String,
    ttl: Duration,
    keys: ArcSwap<KeyRing>,
    cache: [Mutex<CredentialMap>; SHARDS],
    /// Picks a key's shard; the same for every lookup of a key, whatever its form.
    shards: foldhash::fast::FixedState,
}

/// Cached credentials are looked up on every request: the map is searched with borrowed
/// parts ([`KeyParts`]), so a hit builds no key, and hashed with foldhash (its keys are
/// token ids, session keys and route names, never chosen freely by a client).
type CredentialMap = HashMap<CacheKey, Arc<Credential>, foldhash::fast::RandomState>;

#[derive(Debug, Clone)]
struct CacheKey {
    principal: String,
    audience: String,
    generation: u64,
}

/// A cache key's parts, owned ([`CacheKey`]) or borrowed (a lookup). Both hash and
/// compare through `parts`, as `HashMap`'s `Borrow` contract requires.
trait KeyParts {
    fn parts(&self) -> (&str, &str, u64);
}

impl KeyParts for CacheKey {
    fn parts(&self) -> (&str, &str, u64) {
        (&self.principal, &self.audience, self.generation)
    }
}

impl KeyParts for (&str, &str, u64) {
    fn parts(&self) -> (&str, &str, u64) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn KeyParts + 'a> for CacheKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.parts().hash(h)
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.parts().hash(h)
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for CacheKey {}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Key(#[from] KeyStoreError),
    #[error("credential claims: {0}")]
    Claims(String),
}

impl Minter {
    pub fn new(issuer: String, ttl: Duration, keys: KeyRing) -> Self {
        Minter {
            issuer,
            ttl,
            keys: ArcSwap::from_pointee(keys),
            cache: std::array::from_fn(|_| Mutex::new(CredentialMap::default())),
            shards: foldhash::fast::FixedState::default(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.load_full()
    }

    /// Replaces the key ring (after rotation). Cached credentials stay in use while their
    /// key is published (a rotated key is, for the overlap); those of a key that was
    /// removed (say, compromised) are dropped, since twins can no longer verify them.
    pub fn set_keys(&self, ring: KeyRing) {
        let published: Vec<String> = ring.published.iter().map(|k| k.kid.clone()).collect();
        self.keys.store(Arc::new(ring));
        for shard in &self.cache {
            if let Ok(mut map) = shard.lock() {
                map.retain(|_, c| published.contains(&c.kid));
            }
        }
    }

    /// The cached credential when its scope is exactly `scope` and more than a fifth of its
    /// lifetime is left, else a new one. Returns whether a new one was minted.
    pub fn get_or_mint(
        &self,
        req: &CredentialRequest<'_>,
        scope: &str,
        now: Timestamp,
    ) -> Result<(Arc<Credential>, bool), MintError> {
        let parts = (req.cache_key, req.audience, req.generation);
        let shard = &self.cache[self.shard_of(&parts)];
        if let Ok(map) = shard.lock() {
            if let Some(c) = map.get(&parts as &dyn KeyParts) {
                let lifetime = c.expires_at.saturating_since(c.issued_at);
                if c.expires_in(now) > lifetime / 5 && c.scope == scope {
                    return Ok((c.clone(), false));
                }
            }
        }
        let cred = Arc::new(self.mint(req, scope, now)?);
        if let Ok(mut map) = shard.lock() {
            if map.len() >= MAX_ENTRIES_PER_SHARD {
                map.retain(|_, c| c.expires_at > now);
                if map.len() >= MAX_ENTRIES_PER_SHARD {
                    map.clear();
                }
            }
            let key = CacheKey {
                principal: req.cache_key.to_owned(),
                audience: req.audience.to_owned(),
                generation: req.generation,
            };
            map.insert(key, cred.clone());
        }
        Ok((cred, true))
    }

    fn shard_of(&self, parts: &(&str, &str, u64)) -> usize {
        use std::hash::BuildHasher;
        (self.shards.hash_one(parts) as usize) % SHARDS
    }

    /// Signs a new credential.
    pub fn mint(
        &self,
        req: &CredentialRequest<'_>,
        scope: &str,
        now: Timestamp,
    ) -> Result<Credential, MintError> {
        let ring = self.keys.load();
        let key: &SigningKey = &ring.current;
        let mut exp = now.saturating_add(self.ttl);
        if let Some(limit) = req.not_after {
            exp = exp.min(limit);
        }
        let jti = uuid::Uuid::new_v4().simple().to_string();
        let claims = Claims {
            iss: &self.issuer,
            sub: req.subject,
            aud: req.audience,
            exp: exp.unix_secs(),
            iat: now.unix_secs(),
            nbf: now.unix_secs(),
            jti: &jti,
            scope,
            roles: req.roles,
            amr: req.amr,
            twin: req.twin,
        };
        let payload = serde_json::to_vec(&claims).map_err(|e| MintError::Claims(e.to_string()))?;
        let mut token = String::with_capacity(key.header_b64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&key.header_b64);
        token.push('.');
        B64.encode_string(&payload, &mut token);
        let signature = key.sign(token.as_bytes())?;
        token.push('.');
        token.push_str(&signature);
        Ok(Credential {
            header: http::HeaderValue::from_str(&token).ok(),
            token: token.into(),
            jti,
            kid: key.kid.clone(),
            issued_at: now,
            expires_at: exp,
            scope: scope.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SigningAlgorithm;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

    fn minter(alg: SigningAlgorithm) -> (tempfile::TempDir, Minter) {
        let d = tempfile::tempdir().unwrap();
        let ring = super::super::keys::load(
            d.path(),
            alg,
            super::super::keys::KeyTiming {
                activation_delay: Duration::ZERO,
                overlap: Duration::from_secs(3600),
            },
            Timestamp::from_unix_secs(1000),
            true,
        )
        .unwrap();
        (
            d,
            Minter::new("https://gw.test".into(), Duration::from_secs(300), ring),
        )
    }

    fn req<'a>(roles: &'a [String]) -> CredentialRequest<'a> {
        CredentialRequest {
            cache_key: "sa:ci",
            subject: "pseudo",
            audience: "plant-7",
            twin: "plant-7",
            roles,
            amr: &["api_token"],
            generation: 1,
            not_after: None,
        }
    }

    #[test]
    fn credentials_verify_with_an_independent_jose_library() {
        for alg in [SigningAlgorithm::EdDsa, SigningAlgorithm::Es256] {
            let (_d, m) = minter(alg);
            let roles = vec!["twin-viewer".to_owned()];
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            let c = m.mint(&req(&roles), "read", now).unwrap();
            let jwk: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(super::super::jwks::document(&m.keys())["keys"][0].clone())
                    .unwrap();
            let header = decode_header(c.token.as_ref()).unwrap();
            assert_eq!(header.kid.as_deref(), Some(c.kid.as_str()));
            let mut v = Validation::new(if alg == SigningAlgorithm::EdDsa {
                Algorithm::EdDSA
            } else {
                Algorithm::ES256
            });
            v.set_audience(&["plant-7"]);
            v.set_issuer(&["https://gw.test"]);
            let data = decode::<serde_json::Value>(
                c.token.as_ref(),
                &DecodingKey::from_jwk(&jwk).unwrap(),
                &v,
            )
            .unwrap();
            assert_eq!(data.claims["sub"], "pseudo");
            assert_eq!(data.claims["scope"], "read");
            assert_eq!(data.claims["twin"], "plant-7");
            assert_eq!(
                data.claims["exp"].as_i64().unwrap() - data.claims["iat"].as_i64().unwrap(),
                300
            );
        }
    }

    #[test]
    fn reuses_until_eighty_percent_of_lifetime_then_mints_anew() {
        let (_d, m) = minter(SigningAlgorithm::EdDsa);
        let roles = vec![];
        let t0 = Timestamp::from_unix_secs(10_000);
        let (a, minted) = m.get_or_mint(&req(&roles), "read", t0).unwrap();
        assert!(minted);
        let (b, minted) = m
            .get_or_mint(
                &req(&roles),
                "read",
                t0.saturating_add(Duration::from_secs(239)),
            )
            .unwrap();
        assert!(!minted);
        assert_eq!(a.jti, b.jti);
        let (c, minted) = m
            .get_or_mint(
                &req(&roles),
                "read",
                t0.saturating_add(Duration::from_secs(241)),
            )
            .unwrap();
        assert!(minted);
        assert_ne!(a.jti, c.jti);
        // A scope that changed either way (an action added, or one policy no longer allows),
        // or a new policy generation, mints anew.
        let (_, minted) = m
            .get_or_mint(
                &req(&roles),
                "read write",
                t0.saturating_add(Duration::from_secs(242)),
            )
            .unwrap();
        assert!(minted);
        let (d, minted) = m
            .get_or_mint(
                &req(&roles),
                "read",
                t0.saturating_add(Duration::from_secs(242)),
            )
            .unwrap();
        assert!(minted);
        assert_eq!(d.scope, "read");
        let mut r = req(&roles);
        r.generation = 2;
        let (_, minted) = m
            .get_or_mint(&r, "read", t0.saturating_add(Duration::from_secs(243)))
            .unwrap();
        assert!(minted);
    }

    #[test]
    fn a_removed_keys_credentials_are_not_reused_and_a_rotated_keys_are() {
        let (d, m) = minter(SigningAlgorithm::EdDsa);
        let roles = vec![];
        let t0 = Timestamp::from_unix_secs(10_000);
        let timing = super::super::keys::KeyTiming {
            activation_delay: Duration::ZERO,
            overlap: Duration::from_secs(3600),
        };
        let (a, _) = m.get_or_mint(&req(&roles), "read", t0).unwrap();
        // Rotation: the old key stays published, its credential stays in use.
        super::super::keys::generate(d.path(), SigningAlgorithm::EdDsa, t0).unwrap();
        m.set_keys(
            super::super::keys::load(d.path(), SigningAlgorithm::EdDsa, timing, t0, false).unwrap(),
        );
        assert_ne!(m.keys().current.kid, a.kid);
        let t1 = t0.saturating_add(Duration::from_secs(10));
        let (b, minted) = m.get_or_mint(&req(&roles), "read", t1).unwrap();
        assert!(!minted);
        assert_eq!(b.jti, a.jti);
        // The old key's file removed: its credential goes with it.
        let old = m
            .keys()
            .published
            .iter()
            .find(|k| k.kid == a.kid)
            .map(|k| k.path.clone())
            .unwrap();
        std::fs::remove_file(old).unwrap();
        m.set_keys(
            super::super::keys::load(d.path(), SigningAlgorithm::EdDsa, timing, t1, false).unwrap(),
        );
        let (c, minted) = m.get_or_mint(&req(&roles), "read", t1).unwrap();
        assert!(minted);
        assert_eq!(c.kid, m.keys().current.kid);
    }

    /// A credential is reused only for the very principal and route it was minted for:
    /// a lookup borrows the key's parts, and every part must match.
    #[test]
    fn a_cached_credential_serves_only_its_own_principal_and_route() {
        let (_d, m) = minter(SigningAlgorithm::EdDsa);
        let roles = vec![];
        let t0 = Timestamp::from_unix_secs(10_000);
        let mut first = req(&roles);
        first.cache_key = "token:a";
        first.subject = "subject-a";
        first.audience = "plant-7";
        let (a, _) = m.get_or_mint(&first, "read", t0).unwrap();
        // The same characters split differently between principal and route, other
        // principals, other routes: each gets a credential of its own. Many of them, so
        // that some share the first key's shard and its map is really searched.
        let mut others = vec![("token:aplant".to_owned(), "-7".to_owned())];
        for i in 0..64 {
            others.push((format!("token:{i}"), "plant-7".to_owned()));
            others.push(("token:a".to_owned(), format!("plant-{}", i + 100)));
        }
        for (key, audience) in &others {
            let mut other = req(&roles);
            other.cache_key = key;
            other.subject = "subject-b";
            other.audience = audience;
            let (c, minted) = m.get_or_mint(&other, "read", t0).unwrap();
            assert!(minted, "{key} / {audience} was served a cached credential");
            assert_ne!(c.jti, a.jti);
        }
        let (again, minted) = m.get_or_mint(&first, "read", t0).unwrap();
        assert!(!minted);
        assert_eq!(again.jti, a.jti);
    }
}
