//! Pseudonymous subjects: a keyed, non-reversible, stable substitute for (issuer, subject).
//! Twins see only this, so a twin's logs and data never hold a production identity.

use crate::config::secret::Secret;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The issuer name under which service accounts are pseudonymized.
pub const SERVICE_ACCOUNT_ISSUER: &str = "twinward:service-account";

#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(…)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("pseudonym key must be at least 32 bytes, got {0}")]
pub struct WeakKey(pub usize);

impl Pseudonymizer {
    pub fn new(key: &Secret) -> Result<Self, WeakKey> {
        let k = key.expose();
        if k.len() < 32 {
            return Err(WeakKey(k.len()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(k).map_err(|_| WeakKey(k.len()))?;
        Ok(Pseudonymizer { mac })
    }

    /// HMAC-SHA-256 over a length-prefixed (issuer, subject), base64url without padding.
    /// Length prefixes keep ("a", "bc") and ("ab", "c") apart.
    pub fn subject(&self, issuer: &str, subject: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"twinward-pseudonym-v1");
        mac.update(&(issuer.len() as u64).to_be_bytes());
        mac.update(issuer.as_bytes());
        mac.update(&(subject.len() as u64).to_be_bytes());
        mac.update(subject.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_keyed_and_separated() {
        let a = Pseudonymizer::new(&Secret::new(vec![1; 32])).unwrap();
        let b = Pseudonymizer::new(&Secret::new(vec![2; 32])).unwrap();
        assert_eq!(a.subject("iss", "alice"), a.subject("iss", "alice"));
        assert_ne!(a.subject("iss", "alice"), b.subject("iss", "alice"));
        assert_ne!(a.subject("a", "bc"), a.subject("ab", "c"));
        assert!(!a.subject("iss", "alice").contains("alice"));
        assert!(Pseudonymizer::new(&Secret::new(vec![1; 16])).is_err());
    }
}
