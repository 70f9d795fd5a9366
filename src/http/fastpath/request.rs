//! Which requests the fast path answers, and the head it sends upstream for them.

use super::super::headers::visible_ascii;
use super::super::headers::HeaderLines;
use super::super::proxy::{
    forwardable_cookies, ASSERTION_HEADER, INBOUND_FORWARDING, METHOD_OVERRIDE,
};
use super::write::{push, push_header};

/// A request the fast path may answer: HTTP/1.1; GET, HEAD, DELETE or OPTIONS (idempotent,
/// so a request a stale pooled connection lost may be sent again, RFC 9110 §9.2.2); no
/// body and no framing header at all; an origin-form target of plain URI characters (no
/// fragment, quote, backslash or non-ASCII: characters parsers disagree on go to hyper);
/// exactly one valid `Host`; no hop-by-hop header but `Connection: keep-alive` or
/// `close`; no method-override header (hyper's path judges those).
pub struct Plain<'a> {
    pub method: &'a str,
    /// The path as sent, before normalization.
    pub path: &'a str,
    /// The query with its `?`, or empty.
    pub query: &'a str,
    pub host: &'a str,
    /// The client asked to close the connection after this response.
    pub close: bool,
    pub headers: &'a [httparse::Header<'a>],
}

impl<'a> Plain<'a> {
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Headers that make a request something other than a plain bodiless one (framing,
/// expectations, upgrades) or that are hop-by-hop and would need removing.
const NOT_PLAIN: [&str; 11] = [
    "content-length",
    "transfer-encoding",
    "upgrade",
    "expect",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

pub fn classify<'a>(
    method: &'a str,
    target: &'a str,
    version: u8,
    headers: &'a [httparse::Header<'a>],
) -> Option<Plain<'a>> {
    if version != 1 || !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS") {
        return None;
    }
    if !target.starts_with('/') || !target.bytes().all(plain_target_byte) {
        return None;
    }
    let (path, query) = match target.find('?') {
        Some(i) => target.split_at(i),
        None => (target, ""),
    };
    let mut host = None;
    let mut close = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return None;
            }
            host = Some(crate::http::framing::valid_host(h.value)?);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in visible_ascii(h.value)?.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case("keep-alive") {
                    return None;
                }
            }
        } else if NOT_PLAIN
            .iter()
            .chain(&METHOD_OVERRIDE)
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return None;
        }
    }
    Some(Plain {
        method,
        path,
        query,
        host: host?,
        close,
        headers,
    })
}

/// Unreserved, sub-delims, `:` `@` `/` `?` and `%` (RFC 3986): every parser reads a target
/// made of these alike.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Client headers handled separately (host, connection) or replaced by the gateway's own
/// (credentials, cookies: filtered below); the forwarding headers are
/// [`INBOUND_FORWARDING`].
const HANDLED: [&str; 4] = ["host", "connection", "authorization", "cookie"];

/// What the gateway adds to a forwarded request.
pub struct Additions<'a> {
    pub upstream_host: Option<&'a [u8]>,
    pub forwarded_for: &'a str,
    pub forwarded_proto: &'a str,
    pub assertion: &'a [u8],
    /// The credential again as `Authorization: Bearer …`, when the route asks for it.
    pub bearer: Option<&'a str>,
}

/// Writes the request head sent upstream: the normalized `path` with the query as sent,
/// the client's headers without its credentials, gateway cookies, `X-Twinward-*` and
/// forwarding headers, then the gateway's own.
pub fn write_upstream_head(out: &mut Vec<u8>, req: &Plain<'_>, path: &str, add: &Additions<'_>) {
    push(out, req.method.as_bytes());
    push(out, b" ");
    push(out, path.as_bytes());
    push(out, req.query.as_bytes());
    push(out, b" HTTP/1.1\r\n");
    push_header(
        out,
        b"host",
        add.upstream_host.unwrap_or(req.host.as_bytes()),
    );
    for h in req.headers {
        let name = h.name;
        if HANDLED
            .iter()
            .chain(INBOUND_FORWARDING)
            .any(|n| name.eq_ignore_ascii_case(n))
            || starts_with_ignore_case(name, "x-twinward-")
        {
            continue;
        }
        push_header(out, name.as_bytes(), h.value);
    }
    if let Some(c) = forwardable_cookies(req.headers.lines("cookie")) {
        push_header(out, b"cookie", c.as_bytes());
    }
    push_header(out, b"x-forwarded-for", add.forwarded_for.as_bytes());
    push_header(out, b"x-forwarded-proto", add.forwarded_proto.as_bytes());
    push_header(out, b"x-forwarded-host", req.host.as_bytes());
    if let Some(b) = add.bearer {
        push(out, b"authorization: Bearer ");
        push(out, b.as_bytes());
        push(out, b"\r\n");
    }
    push_header(out, ASSERTION_HEADER.as_bytes(), add.assertion);
    push(out, b"\r\n");
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], f: impl FnOnce(Option<Plain<'_>>)) {
        let mut lines = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut lines);
        assert!(req.parse(raw).unwrap().is_complete());
        let (m, t, v) = (req.method.unwrap(), req.path.unwrap(), req.version.unwrap());
        f(classify(m, t, v, req.headers));
    }

    #[test]
    fn plain_requests_are_recognized() {
        parse(
            b"GET /plant-7/state?x=1 HTTP/1.1\r\nHost: twin.example\r\nConnection: keep-alive\r\nAuthorization: Bearer t\r\n\r\n",
            |p| {
                let p = p.expect("plain");
                assert_eq!((p.path, p.query, p.host, p.close), ("/plant-7/state", "?x=1", "twin.example", false));
            },
        );
        parse(
            b"HEAD / HTTP/1.1\r\nhost: a\r\nconnection: Close\r\n\r\n",
            |p| {
                let p = p.expect("plain");
                assert!(p.close && p.is_head());
            },
        );
    }

    #[test]
    fn anything_else_goes_to_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-secret\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a{b} HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        ] {
            parse(raw, |p| {
                assert!(p.is_none(), "{}", String::from_utf8_lossy(raw));
            });
        }
    }

    #[test]
    fn the_upstream_head_carries_no_client_credentials() {
        let raw = b"GET /a/../b?q=%2e HTTP/1.1\r\nHost: twin.example\r\nAuthorization: Bearer twt_secret\r\nX-Twinward-Assertion: forged\r\nx-twinward-purpose: p\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nCookie: a=1; __Host-twinward=s\r\nCookie: twinward-login=x; b=2\r\nAccept: */*\r\n\r\n";
        parse(raw, |p| {
            let p = p.expect("plain");
            let mut out = Vec::new();
            write_upstream_head(
                &mut out,
                &p,
                "/b",
                &Additions {
                    upstream_host: Some(b"127.0.0.1:9"),
                    forwarded_for: "192.0.2.1",
                    forwarded_proto: "http",
                    assertion: b"ey.jwt",
                    bearer: None,
                },
            );
            let text = String::from_utf8(out).unwrap();
            assert_eq!(
                text,
                "GET /b?q=%2e HTTP/1.1\r\nhost: 127.0.0.1:9\r\nAccept: */*\r\ncookie: a=1; b=2\r\n\
                 x-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: twin.example\r\n\
                 x-twinward-assertion: ey.jwt\r\n\r\n"
            );
        });
    }

    use proptest::prelude::*;

    fn header_lines() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
        let name = prop::sample::select(vec![
            "Host",
            "host",
            "HOST",
            "Authorization",
            "authorization",
            "Cookie",
            "cookie",
            "X-Twinward-Assertion",
            "x-twinward-purpose",
            "X-TWINWARD-SESSION",
            "X-Forwarded-For",
            "x-forwarded-proto",
            "X-Forwarded-Host",
            "X-Forwarded-Uri",
            "X-Forwarded-Method",
            "X-Original-URL",
            "X-Original-Method",
            "X-Real-IP",
            "Forwarded",
            "Connection",
            "Content-Length",
            "Transfer-Encoding",
            "Upgrade",
            "TE",
            "Expect",
            "Keep-Alive",
            "Proxy-Authorization",
            "Accept",
            "X-Custom",
        ]);
        let value = prop::sample::select(vec![
            "a",
            "twin.example",
            "Bearer twt_secret",
            "close",
            "keep-alive",
            "Keep-Alive, close",
            "upgrade",
            "keep-alive, x-custom",
            "__Host-twinward=s; a=1",
            "twinward-login=x",
            "b=2;twinward=z",
            "6.6.6.6",
            "for=6.6.6.6",
            "0",
            "chunked",
            "caf\u{e9}",
            "x\ty",
        ]);
        proptest::collection::vec((name, value), 0..10)
    }

    fn target() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "/", "plant-7", "state", "%2F", "%2e", "..", ".", "?", "q=1", "&", "#", "\"", "\\",
            "{", "\u{e9}", "~", ";",
        ]);
        proptest::collection::vec(piece, 0..8).prop_map(|p| format!("/{}", p.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever a client sends, a request the fast path takes is a plain one, and the
        /// twin gets its own headers back with none of the client's credentials, gateway
        /// cookies, `X-Twinward-*` or forwarding headers, and the gateway's own exactly once.
        #[test]
        fn the_twin_gets_the_clients_headers_and_only_the_gateways_own(
            method in prop::sample::select(vec!["GET", "HEAD", "DELETE", "OPTIONS", "POST", "get"]),
            target in target(),
            lines in header_lines(),
            bearer in prop::option::of(Just("ey.bearer")),
            upstream_host in prop::option::of(Just("127.0.0.1:9")),
        ) {
            let mut raw = format!("{method} {target} HTTP/1.1\r\n");
            for (n, v) in &lines {
                raw.push_str(&format!("{n}: {v}\r\n"));
            }
            raw.push_str("\r\n");
            let mut parsed = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut parsed);
            let Ok(httparse::Status::Complete(_)) = req.parse(raw.as_bytes()) else {
                return Ok(());
            };
            let (m, t, v) = (req.method.unwrap(), req.path.unwrap(), req.version.unwrap());
            let Some(p) = classify(m, t, v, req.headers) else {
                return Ok(());
            };
            let is = |n: &str, name: &str| n.eq_ignore_ascii_case(name);
            prop_assert!(["GET", "HEAD", "DELETE", "OPTIONS"].contains(&p.method));
            prop_assert!(t.bytes().all(plain_target_byte));
            prop_assert_eq!(lines.iter().filter(|(n, _)| is(n, "host")).count(), 1);
            for (n, _) in &lines {
                prop_assert!(!NOT_PLAIN.iter().any(|h| is(n, h)), "{} taken as plain", n);
            }

            let mut out = Vec::new();
            write_upstream_head(&mut out, &p, p.path, &Additions {
                upstream_host: upstream_host.map(str::as_bytes),
                forwarded_for: "192.0.2.1",
                forwarded_proto: "https",
                assertion: b"ey.assertion",
                bearer,
            });
            let mut sent = [httparse::EMPTY_HEADER; 64];
            let mut up = httparse::Request::new(&mut sent);
            prop_assert_eq!(up.parse(&out), Ok(httparse::Status::Complete(out.len())));
            prop_assert_eq!(up.method, Some(p.method));
            prop_assert_eq!(up.path, Some(t));
            let got: Vec<(String, &str)> = up
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), std::str::from_utf8(h.value).unwrap()))
                .collect();
            let values = |name: &str| -> Vec<&str> {
                got.iter().filter(|(n, _)| n == name).map(|(_, v)| *v).collect()
            };
            prop_assert_eq!(values("host"), vec![upstream_host.unwrap_or(p.host)]);
            prop_assert_eq!(values("x-twinward-assertion"), vec!["ey.assertion"]);
            prop_assert_eq!(got.iter().filter(|(n, _)| n.starts_with("x-twinward-")).count(), 1);
            let authorization = bearer.map(|b| format!("Bearer {b}"));
            prop_assert_eq!(values("authorization"), authorization.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(values("x-forwarded-for"), vec!["192.0.2.1"]);
            prop_assert_eq!(values("x-forwarded-proto"), vec!["https"]);
            prop_assert_eq!(values("x-forwarded-host"), vec![p.host]);
            for h in INBOUND_FORWARDING.iter().skip(3) {
                prop_assert!(values(h).is_empty(), "{} passed on", h);
            }
            prop_assert!(values("connection").is_empty());
            let cookies = values("cookie");
            prop_assert!(cookies.len() <= 1);
            for pair in cookies.iter().flat_map(|c| c.split(';')) {
                let name = pair.split('=').next().unwrap_or_default().trim();
                prop_assert!(!crate::http::proxy::GATEWAY_COOKIES.contains(&name), "{} passed on", name);
            }
            // The client's other headers, all of them, in order.
            let own = |n: &str| {
                HANDLED.contains(&n) || INBOUND_FORWARDING.contains(&n) || n.starts_with("x-twinward-")
            };
            let theirs: Vec<(String, &str)> = lines
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), *v))
                .filter(|(n, _)| !own(n))
                .collect();
            let passed: Vec<(String, &str)> = got.iter().filter(|(n, _)| !own(n)).cloned().collect();
            prop_assert_eq!(passed, theirs);
        }
    }
}
