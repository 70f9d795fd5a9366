//! The hash chain. `hash = SHA-256(prev_hash ‖ 0x0a ‖ seq ‖ 0x0a ‖ event text)`; the first
//! event's `prev_hash` is [`GENESIS`]. The event text is the event's JSON as the writer
//! wrote it (`audit/json.rs`, byte for byte serde_json's compact output of the event), and
//! it is stored as it was hashed: verification hashes the stored bytes themselves, so it
//! depends on no serializer writing an event the same way twice.

use super::StoredEvent;
use crate::digest::Sha256;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of an event stored as `text` at `seq` after `prev_hash`.
pub fn hash_text(prev_hash: &str, seq: i64, text: &str) -> String {
    HexHash::of(&chain_digest(prev_hash.as_bytes(), seq, text.as_bytes()))
        .as_str()
        .to_owned()
}

/// The hash of `event` as the writer would store it at `seq` after `prev_hash`.
#[cfg(test)]
pub fn hash_event<E: serde::Serialize>(prev_hash: &str, seq: i64, event: &E) -> String {
    hash_text(prev_hash, seq, &serde_json::to_string(event).unwrap())
}

fn chain_digest(prev_hash: &[u8], seq: i64, text: &[u8]) -> [u8; 32] {
    let mut seq_text = itoa::Buffer::new();
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(b"\n");
    h.update(seq_text.format(seq).as_bytes());
    h.update(b"\n");
    h.update(text);
    h.finish()
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
/// event's text is written once into a buffer the writer keeps; the hash is taken over it
/// and the same bytes are stored.
pub struct ChainWriter {
    seq: i64,
    prev: HexHash,
    json: String,
}

/// One event's place in the chain and its stored text.
pub struct Linked<'a> {
    pub seq: i64,
    pub hash: HexHash,
    /// The event as a JSON object: what was hashed, to be stored as it is.
    pub text: &'a str,
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
            json: String::with_capacity(1024),
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

    /// Links the next event: `hash = SHA-256(prev_hash ‖ 0x0a ‖ seq ‖ 0x0a ‖ event text)`.
    pub fn link(&mut self, e: &super::AuditEvent) -> Linked<'_> {
        self.seq += 1;
        self.json.clear();
        if self.json.capacity() > 1 << 20 {
            // One huge event must not pin a megabyte for the writer's lifetime.
            self.json = String::with_capacity(1024);
        }
        super::json::write_event(&mut self.json, e);
        let text = self.json.as_str();
        self.prev = HexHash::of(&chain_digest(&self.prev.0, self.seq, text.as_bytes()));
        Linked {
            seq: self.seq,
            hash: self.prev,
            text,
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
        if hash_text(&e.prev_hash, e.seq, &e.text) != e.hash {
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
    use crate::audit::{AuditEvent, Detail, OwnedEvent};
    use crate::clock::Timestamp;
    use sha2::Digest;

    /// The chain's input is a format: `audit verify` and any outside checker must hash the
    /// same bytes. An independent SHA-256 over the documented layout gives the same hash.
    #[test]
    fn the_hash_covers_the_documented_layout() {
        let text = r#"{"kind":"access","outcome":"allow"}"#;
        let expected = hex::encode(sha2::Sha256::digest(format!("{GENESIS}\n42\n{text}")));
        assert_eq!(hash_text(GENESIS, 42, text), expected);
        assert_ne!(hash_text(GENESIS, 43, text), expected);
    }

    #[test]
    fn hashes_are_lower_case_hex_of_the_digest() {
        let h = HexHash::of(&sha2::Sha256::digest(b"").into());
        assert_eq!(h.as_str(), hex::encode(sha2::Sha256::digest(b"")));
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
    fn the_writer_stores_the_text_it_hashed_and_it_reads_back_as_the_event() {
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
            assert_eq!(l.hash.as_str(), hash_text(&prev, seq, l.text));
            // The text is serde_json's own form of the event (rows stored before the text
            // column were hashed over that form), and it reads back as the event.
            assert_eq!(l.text, serde_json::to_string(e).unwrap());
            let read: OwnedEvent = serde_json::from_str(l.text).unwrap();
            assert_eq!(read, OwnedEvent::from(e));
            prev = l.hash.as_str().to_owned();
        }
        assert!(w.continue_after(1, "not a hash").is_none());
        w.restart();
        assert_eq!(w.link(&other).hash.as_str(), hash_event(GENESIS, 1, &other));
    }
}
