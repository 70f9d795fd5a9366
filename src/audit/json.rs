//! The audit writer's JSON, written directly: the text of an event that is stored and that
//! the chain hashes. Byte for byte what serde_json writes for the same values (tests
//! compare the two on generated events); only cheaper, because strings that need no
//! escaping, nearly all of them, are copied as they are instead of being escaped a byte at
//! a time. It writes into a `String`, so the text is UTF-8 by construction and the chain
//! needs no pass over it to say so.

use super::{AccessDetail, AuditEvent, Detail};
use std::fmt::Write;

/// A JSON string, escaped exactly as serde_json escapes it.
pub fn push_str(out: &mut String, s: &str) {
    if needs_escape(s.as_bytes()) {
        // Rare (a quote, a backslash or a control character); serializing a string cannot
        // fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Whether any byte is one serde_json escapes: a control character, `"` or `\\`. Checks
/// eight bytes at a time (the writer checks every string of every event).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Exact for "some byte is zero" / "some byte is below n <= 128": a borrow only spreads
    // upward from a byte that already matched.
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
        if control
            || has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

pub fn push_str_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, s);
    }
    out.push(']');
}

/// An address as `Display` writes it; IPv4, the common case, without the formatting
/// machinery (it showed in the writer's profile).
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            // Writing into a String cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// The detail of an access event as stored (`serde_json::to_string(&detail)`).
pub fn write_access_detail(out: &mut String, d: &AccessDetail) {
    out.push_str("{\"method\":");
    push_str(out, &d.method);
    out.push_str(",\"path\":");
    push_str(out, &d.path);
    out.push_str(",\"client_ip\":\"");
    push_ip(out, d.client_ip);
    out.push_str("\",\"twin\":");
    push_str(out, &d.twin);
    out.push_str(",\"purpose\":");
    push_opt_str(out, d.purpose.as_deref());
    if let Some(t) = &d.token_id {
        out.push_str(",\"token_id\":");
        push_str(out, t);
    }
    if let Some(s) = &d.session {
        out.push_str(",\"session\":");
        push_str(out, s);
    }
    if !d.errors.is_empty() {
        out.push_str(",\"errors\":");
        push_str_array(out, &d.errors);
    }
    if let Some(r) = &d.reason {
        out.push_str(",\"reason\":");
        push_str(out, r);
    }
    out.push('}');
}

/// An event's stored text, which the chain hashes: what `serde_json::to_writer(&event)`
/// writes.
pub fn write_event(out: &mut String, e: &AuditEvent) {
    out.push_str("{\"event_id\":");
    push_str(out, &e.event_id);
    out.push_str(",\"at_ms\":");
    out.push_str(itoa::Buffer::new().format(e.at_ms));
    out.push_str(",\"kind\":");
    push_str(out, e.kind);
    out.push_str(",\"outcome\":");
    push_str(out, e.outcome);
    out.push_str(",\"actor\":");
    push_opt_str(out, e.actor.as_deref());
    out.push_str(",\"actor_pseudonym\":");
    push_opt_str(out, e.actor_pseudonym.as_deref());
    out.push_str(",\"route\":");
    push_opt_str(out, e.route.as_deref());
    out.push_str(",\"action\":");
    push_opt_str(out, e.action);
    out.push_str(",\"policies\":");
    push_str_array(out, &e.policies);
    out.push_str(",\"detail\":");
    match &e.detail {
        Detail::Access(d) => write_access_detail(out, d),
        // Events other than access (credentials minted, tokens, sign-ins): far rarer than
        // requests, so the allocation does not matter. A JSON value always serializes.
        Detail::Json(v) => out.push_str(&serde_json::to_string(v).unwrap_or_default()),
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use proptest::prelude::*;

    /// Text with the characters JSON escapes (quotes, backslashes, controls), DEL and
    /// non-ASCII, as often as plain text.
    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just('"'),
                Just('\\'),
                Just('\n'),
                Just('\u{1}'),
                Just('\u{1f}'),
                Just('\u{7f}'),
                Just('é'),
                Just('😀'),
                prop::char::range('a', 'z'),
                prop::char::range(' ', '~'),
            ],
            0..24,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    prop_compose! {
        fn event()(
            strings in prop::collection::vec(text(), 12),
            opts in prop::collection::vec(any::<bool>(), 8),
            at in any::<i64>(),
            ip in any::<[u8; 16]>(),
            v4 in any::<bool>(),
            n_policies in 0usize..3,
            n_errors in 0usize..3,
        ) -> AuditEvent {
            let opt = |i: usize, s: &String| opts[i].then(|| s.clone());
            let mut e = AuditEvent::new("access", "allow", Timestamp::from_unix_secs(0));
            e.at_ms = at;
            e.actor = opt(0, &strings[1]).map(Into::into);
            e.actor_pseudonym = opt(1, &strings[2]).map(Into::into);
            e.route = opt(2, &strings[3]).map(Into::into);
            // Actions are static names; these need escaping.
            e.action = opts[3].then_some(["read", "q\"uote\\", "\u{1}ctl"][strings[4].len() % 3]);
            e.policies = strings[5..5 + n_policies].to_vec().into();
            let client_ip = if v4 {
                std::net::IpAddr::from([ip[0], ip[1], ip[2], ip[3]])
            } else {
                std::net::IpAddr::from(ip)
            };
            e.detail = Detail::Access(AccessDetail {
                method: strings[8].clone().into(),
                path: strings[9].as_str().into(),
                client_ip,
                twin: strings[10].as_str().into(),
                purpose: opt(4, &strings[11]),
                token_id: opt(5, &strings[1]).map(Into::into),
                session: opt(6, &strings[2]),
                errors: strings[3..3 + n_errors].to_vec(),
                reason: opt(7, &strings[4]),
            });
            e
        }
    }

    #[test]
    fn finds_every_escaped_byte_at_every_position() {
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for len in 1..20 {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    assert!(needs_escape(&bytes), "{special:#x} at {at} of {len}");
                }
            }
        }
        for plain in [
            &b"plant-7/state"[..],
            b"\x7f\x20~!#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}",
            "é😀".as_bytes(),
        ] {
            assert!(!needs_escape(plain), "{plain:?}");
        }
    }

    proptest! {
        #[test]
        fn writes_what_serde_json_writes(e in event()) {
            let Detail::Access(d) = &e.detail else { unreachable!() };
            let mut fast = String::new();
            write_access_detail(&mut fast, d);
            prop_assert_eq!(&fast, &serde_json::to_string(d).unwrap());

            let mut text = String::new();
            write_event(&mut text, &e);
            prop_assert_eq!(&text, &serde_json::to_string(&e).unwrap());
        }

        #[test]
        fn a_json_detail_is_written_as_serde_json_writes_it(
            keys in prop::collection::vec(text(), 0..4),
            values in prop::collection::vec(text(), 4),
        ) {
            let mut e = AuditEvent::new("token.create", "ok", Timestamp::from_unix_secs(0));
            let mut m = serde_json::Map::new();
            for (k, v) in keys.iter().zip(&values) {
                m.insert(k.clone(), serde_json::json!({ "v": v, "n": [1, null, true] }));
            }
            e.detail = Detail::Json(serde_json::Value::Object(m));
            let mut text = String::new();
            write_event(&mut text, &e);
            prop_assert_eq!(&text, &serde_json::to_string(&e).unwrap());
        }
    }
}
