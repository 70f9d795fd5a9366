//! Pseudonymous subjects: a keyed, non-reversible, stable substitute for (issuer, subject).
//! Twins see only this, so a twin's logs and data never hold a production identity.

use crate::config::secret::Secret;
use crate::digest::HmacSha256;
use base64::Engine;

/// The issuer name under which service accounts are pseudonymized.
pub const SERVICE_ACCOUNT_ISSUER: &str = "twinward:service-account";

#[derive(Clone)]
pub struct Pseudonymizer {
    mac: HmacSha256,
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
        Ok(Pseudonymizer {
            mac: HmacSha256::new(k),
        })
    }

    /// HMAC-SHA-256 over a length-prefixed (issuer, subject), base64url without padding.
    /// Length prefixes keep ("a", "bc") and ("ab", "c") apart.
    pub fn subject(&self, issuer: &str, subject: &str) -> String {
        let tag = self.mac.sign(&[
            b"twinward-pseudonym-v1",
            &(issuer.len() as u64).to_be_bytes(),
            issuer.as_bytes(),
            &(subject.len() as u64).to_be_bytes(),
            subject.as_bytes(),
        ]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
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

    /// Twins key their records by the pseudonym, so its value must never change with the
    /// implementation: this one was computed with Python's `hmac` over the documented input.
    #[test]
    fn the_value_is_the_documented_hmac() {
        let p = Pseudonymizer::new(&Secret::new(vec![1; 32])).unwrap();
        assert_eq!(
            p.subject("iss", "alice"),
            "jfIVvb56cQavUjNFm9nhyP1Jo2P-PX6rczwPrbHPJUI"
        );
    }
}
