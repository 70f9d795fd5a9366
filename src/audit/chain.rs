//! The hash chain. `hash = SHA-256(prev_hash ‖ 0x0a ‖ seq ‖ 0x0a ‖ canonical JSON of the
//! event)`; the first event's `prev_hash` is [`GENESIS`]. Canonical JSON is serde_json's
//! compact output of [`OwnedEvent`]: fixed field order, the detail's keys in the order they
//! were written (verification parses the stored detail and writes it again, which keeps
//! that order because this crate enables serde_json's `preserve_order`). The writer produces
//! the same bytes with its own writer (`audit/json.rs`).

use super::StoredEvent;
use sha2::{Digest, Sha256};
use std::io::Write;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `event` is an [`super::OwnedEvent`] or an [`super::AuditEvent`]; both serialize identically.
pub fn hash_event<E: serde::Serialize>(prev_hash: &str, seq: i64, event: &E) -> String {
    // Serializing plain data cannot fail; a failure would leave a hash that never verifies.
    hash_with(prev_hash, seq, |b| {
        let _ = serde_json::to_writer(b, event);
    })
}

/// [`hash_event`] of an event about to be stored, with the writer's cheaper JSON (the same
/// bytes).
pub fn hash_prepared(prev_hash: &str, seq: i64, event: &super::PreparedEvent<'_>) -> String {
    hash_with(prev_hash, seq, |b| super::json::write_prepared(b, event))
}

fn hash_with(prev_hash: &str, seq: i64, write_event: impl FnOnce(&mut Vec<u8>)) -> String {
    // The hashed bytes are assembled in a buffer kept per thread (the writer hashes every
    // event) and hashed in one call.
    SCRATCH.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        b.extend_from_slice(prev_hash.as_bytes());
        b.push(b'\n');
        let _ = write!(b, "{seq}");
        b.push(b'\n');
        write_event(&mut b);
        let digest = Sha256::digest(&b[..]);
        if b.capacity() > 1 << 20 {
            *b = Vec::new();
        }
        hex_lower(&digest)
    })
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_whole() {
        assert_eq!(hex_lower(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(
            hex_lower(&Sha256::digest(b"")),
            hex::encode(Sha256::digest(b""))
        );
    }
}
