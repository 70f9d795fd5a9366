//! Reading request headers in either form the gateway holds them: hyper's `HeaderMap` (a
//! request served through hyper) or the header lines of a head parsed in place (the
//! HTTP/1.1 fast path, [`super::fastpath`]). What authentication and forwarding read from
//! a request (bearer token, cookies, purpose, forwarding headers) is read by the same code
//! from both, so the two paths cannot drift apart.

use http::HeaderMap;

/// Header lines by name.
pub trait HeaderLines {
    /// Every value of header `name` (given in lower case), in the order received.
    fn lines<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// The first value of `name`, as text when it is visible ASCII (what
    /// `HeaderValue::to_str` accepts).
    fn text(&self, name: &'static str) -> Option<&str> {
        self.lines(name).next().and_then(visible_ascii)
    }

    fn has(&self, name: &'static str) -> bool {
        self.lines(name).next().is_some()
    }
}

impl HeaderLines for HeaderMap {
    fn lines<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).iter().map(|v| v.as_bytes())
    }
}

impl HeaderLines for [httparse::Header<'_>] {
    fn lines<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// `bytes` as text when every byte is visible ASCII, space or tab: the same rule as
/// `http::HeaderValue::to_str`, so both header forms read alike.
pub fn visible_ascii(bytes: &[u8]) -> Option<&str> {
    if bytes
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn both_forms_read_alike() {
        let mut map = HeaderMap::new();
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        map.append("x-b", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        let lines = [
            httparse::Header {
                name: "X-A",
                value: b"1",
            },
            httparse::Header {
                name: "x-b",
                value: b"caf\xc3\xa9",
            },
            httparse::Header {
                name: "x-a",
                value: b"2",
            },
        ];
        let raw: &[httparse::Header<'_>] = &lines;
        assert_eq!(
            map.lines("x-a").collect::<Vec<_>>(),
            raw.lines("x-a").collect::<Vec<_>>()
        );
        assert_eq!(map.text("x-a"), Some("1"));
        assert_eq!(raw.text("x-a"), Some("1"));
        // Not visible ASCII: unreadable as text in both, as `HeaderValue::to_str` has it.
        assert!(map.get("x-b").unwrap().to_str().is_err());
        assert_eq!(map.text("x-b"), None);
        assert_eq!(raw.text("x-b"), None);
        assert!(raw.has("x-b") && !raw.has("x-c"));
    }
}
