//! The hash chain. `hash = SHA-256(prev_hash ‖ 0x0a ‖ seq ‖ 0x0a ‖ canonical JSON of the
//! event)`; the first event's `prev_hash` is [`GENESIS`]. Canonical JSON is serde_json's
//! output of [`OwnedEvent`] (fixed field order, object keys sorted).

use super::StoredEvent;
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `event` is an [`super::OwnedEvent`] or an [`super::AuditEvent`]; both serialize identically.
pub fn hash_event<E: serde::Serialize>(prev_hash: &str, seq: i64, event: &E) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    // Serialized into a buffer kept per thread (the writer hashes every event). Serializing
    // plain data cannot fail; a failure would leave a hash that never verifies.
    SCRATCH.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        let _ = serde_json::to_writer(&mut *b, event);
        h.update(&b[..]);
        if b.capacity() > 1 << 20 {
            *b = Vec::new();
        }
    });
    hex::encode(h.finalize())
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
