//! SHA-256 and HMAC-SHA-256, the one place the gateway hashes.
//!
//! Both come from aws-lc, the library that already signs twin credentials, for its
//! assembly: on a CPU without the SHA extensions it hashes an audit event (about 500
//! bytes) in about 60% of the time a portable implementation takes, and the audit chain
//! hashes every decision (`cargo bench --bench audit -- sha256` compares the two).

use aws_lc_rs::{digest, hmac};

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(data);
    h.finish()
}

/// SHA-256 over data given in pieces.
#[derive(Clone)]
pub struct Sha256(digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        Sha256(digest::Context::new(&digest::SHA256))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// An HMAC-SHA-256 key, ready to sign messages given in pieces.
#[derive(Clone)]
pub struct HmacSha256(hmac::Key);

impl HmacSha256 {
    pub fn new(key: &[u8]) -> Self {
        HmacSha256(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// The tag over the concatenation of `parts`.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-2 appendix B and RFC 4231 test case 2: the answers any implementation gives.
    #[test]
    fn known_answers() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut pieces = Sha256::new();
        pieces.update(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq");
        assert_eq!(
            hex::encode(pieces.finish()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let key = HmacSha256::new(b"Jefe");
        assert_eq!(
            hex::encode(key.sign(&[b"what do ya want ", b"for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// Pieces hash as their concatenation, whatever the split: the chain and the token
    /// store feed them in different shapes.
    #[test]
    fn pieces_hash_as_their_concatenation() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for split in [0, 1, 55, 56, 63, 64, 65, 500, 1000] {
            let mut h = Sha256::new();
            h.update(&data[..split]);
            h.update(&data[split..]);
            assert_eq!(h.finish(), sha256(&data), "split at {split}");
        }
    }
}
