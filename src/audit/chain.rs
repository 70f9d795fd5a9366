//! The hash chain. `hash = SHA-256(prev_hash ‖ 0x0a ‖ seq ‖ 0x0a ‖ canonical JSON of the
//! event)`; the first event's `prev_hash` is [`GENESIS`]. Canonical JSON is serde_json's
//! compact output of [`OwnedEvent`]: fixed field order, the detail's keys in the order they
//! were written (verification parses the stored detail and writes it again, which keeps
//! that order because this crate enables serde_json's `preserve_order`). The writer produces
//! the same bytes with its own writer (`audit/json.rs`).

use super::{AuditEvent, StoredEvent};
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `event` is an [`super::OwnedEvent`] or an [`super::AuditEvent`]; both serialize identically.
pub fn hash_event<E: serde::Serialize>(prev_hash: &str, seq: i64, event: &E) -> String {
    // Serializing plain data cannot fail; a failure would leave a hash that never verifies.
    let json = serde_json::to_vec(event).unwrap_or_default();
    HexHash::of(&chain_digest(prev_hash.as_bytes(), seq, &json))
        .as_str()
        .to_owned()
}

fn chain_digest(prev_hash: &[u8], seq: i64, canonical: &[u8]) -> [u8; 32] {
    let mut seq_text = itoa::Buffer::new();
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(b"\n");
    h.update(seq_text.format(seq).as_bytes());
    h.update(b"\n");
    h.update(canonical);
    h.finalize().into()
}

/// An event hash as stored: 64 lower-case hex digits, kept inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexHash([u8; 64]);

impl HexHash {
    fn of(digest: &[u8; 32]) -> Self {
        let mut hex = [0u8; 64];
        // 32 bytes always fit 64 digits.
        let _ = hex::encode_to_slice(digest, &mut hex);
        HexHash(hex)
    }

    /// A stored hash, if it is one (64 lower-case hex digits).
    pub fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; 64] = s.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .then_some(HexHash(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only hex digits are ever stored here.
        std::str::from_utf8(&self.0).unwrap_or(GENESIS)
    }
}

impl std::fmt::Debug for HexHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Links events into the chain one after another, continuing from the stored tail. Each
/// event's canonical JSON is written once into a buffer the writer keeps; the hash is taken
/// over it, and the stored policy list and detail are slices of the same text, so what is
/// stored is exactly what was hashed.
pub struct ChainWriter {
    seq: i64,
    prev: HexHash,
    json: Vec<u8>,
}

/// One event's place in the chain and its stored text.
pub struct Linked<'a> {
    pub seq: i64,
    pub hash: HexHash,
    /// The determining policy ids as a JSON array.
    pub policies: &'a str,
    /// The detail as a JSON object.
    pub detail: &'a str,
}

impl Default for ChainWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainWriter {
    /// A writer at the start of an empty chain.
    pub fn new() -> Self {
        ChainWriter {
            seq: 0,
            prev: HexHash([b'0'; 64]),
            json: Vec::with_capacity(1024),
        }
    }

    /// Continues after the stored tail (the last event's seq and hash); `None` when the
    /// stored hash is not one (the store is corrupt: appending would fork the chain).
    pub fn continue_after(&mut self, seq: i64, hash: &str) -> Option<()> {
        self.prev = HexHash::parse(hash)?;
        self.seq = seq;
        Some(())
    }

    /// Starts over at an empty chain.
    pub fn restart(&mut self) {
        self.seq = 0;
        self.prev = HexHash([b'0'; 64]);
    }

    /// Links the next event: `hash = SHA-256(prev_hash ‖ 0x0a ‖ seq ‖ 0x0a ‖ canonical JSON)`.
    pub fn link(&mut self, e: &AuditEvent) -> Linked<'_> {
        self.seq += 1;
        self.json.clear();
        if self.json.capacity() > 1 << 20 {
            // One huge event must not pin a megabyte for the writer's lifetime.
            self.json = Vec::with_capacity(1024);
        }
        let parts = super::json::write_canonical(&mut self.json, e);
        self.prev = HexHash::of(&chain_digest(&self.prev.0, self.seq, &self.json));
        // The JSON writer writes whole UTF-8 strings and ASCII around them.
        let text = |r: std::ops::Range<usize>| std::str::from_utf8(&self.json[r]).unwrap_or("null");
        Linked {
            seq: self.seq,
            hash: self.prev,
            policies: text(parts.policies),
            detail: text(parts.detail),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event seq {seq}: sequence gap (expected {expected}); events were deleted")]
    Gap { seq: i64, expected: i64 },
    #[error("event seq {seq}: prev_hash does not match the previous event; the chain was cut or reordered")]
    Link { seq: i64 },
    #[error("event seq {seq}: hash does not match its content; the event was edited")]
    Content { seq: i64 },
}

/// Checks events in order, continuing from `(prev_seq, prev_hash)`. Returns the new tail.
pub fn verify_chain(
    events: &[StoredEvent],
    prev_seq: i64,
    prev_hash: &str,
) -> Result<(i64, String), ChainError> {
    let mut seq = prev_seq;
    let mut hash = prev_hash.to_owned();
    for e in events {
        if e.seq != seq + 1 {
            return Err(ChainError::Gap {
                seq: e.seq,
                expected: seq + 1,
            });
        }
        if e.prev_hash != hash {
            return Err(ChainError::Link { seq: e.seq });
        }
        if hash_event(&e.prev_hash, e.seq, &e.event) != e.hash {
            return Err(ChainError::Content { seq: e.seq });
        }
        seq = e.seq;
        hash = e.hash.clone();
    }
    Ok((seq, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Detail, OwnedEvent};
    use crate::clock::Timestamp;

    #[test]
    fn hashes_are_lower_case_hex_of_the_digest() {
        let h = HexHash::of(&Sha256::digest(b"").into());
        assert_eq!(h.as_str(), hex::encode(Sha256::digest(b"")));
        assert_eq!(HexHash::parse(h.as_str()), Some(h));
        assert_eq!(
            HexHash::parse(GENESIS)
                .map(|g| g.as_str().to_owned())
                .as_deref(),
            Some(GENESIS)
        );
        for bad in [
            "",
            "00",
            &GENESIS.to_uppercase().replace('0', "A"),
            &format!("{GENESIS}0"),
            &GENESIS.replace('0', "g"),
        ] {
            assert_eq!(HexHash::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_writer_links_events_as_verification_recomputes_them() {
        let mut access = AuditEvent::new("access", "allow", Timestamp::from_unix_secs(1_000));
        access.actor = Some("ci \"runner\"".into());
        access.route = Some("plant-7".into());
        access.policies = vec!["b".into(), "a".into()].into();
        access.detail =
            Detail::Access(crate::audit::tests::sample_detail(Some("denied by policy")));
        let mut other = AuditEvent::new("policy.reload", "ok", Timestamp::from_unix_secs(1_001));
        other.detail =
            serde_json::json!({ "z": 1, "a": { "y": [1, "ü"], "b": null }, "m": "x\ny" }).into();

        let mut w = ChainWriter::new();
        w.continue_after(41, &"ab".repeat(32)).unwrap();
        let mut prev = "ab".repeat(32);
        for (seq, e) in [(42, &access), (43, &other)] {
            let l = w.link(e);
            assert_eq!(l.seq, seq);
            let owned = OwnedEvent::from(e);
            assert_eq!(l.hash.as_str(), hash_event(&prev, seq, &owned));
            assert_eq!(l.hash.as_str(), hash_event(&prev, seq, e));
            // What is stored reads back as the event's own parts.
            let detail: serde_json::Value = serde_json::from_str(l.detail).unwrap();
            assert_eq!(detail, owned.detail);
            let policies: Vec<String> = serde_json::from_str(l.policies).unwrap();
            assert_eq!(policies[..], e.policies[..]);
            prev = l.hash.as_str().to_owned();
        }
        assert!(w.continue_after(1, "not a hash").is_none());
        w.restart();
        assert_eq!(w.link(&other).hash.as_str(), hash_event(GENESIS, 1, &other));
    }
}
