//! A twin's response head on the fast path, read in place and rewritten for the client:
//! hop-by-hop headers and gateway cookies removed, the framing the gateway's own. Its body
//! is relayed by length, by chunks (`chunked.rs`) or until the twin closes.

use super::super::proxy::{is_gateway_set_cookie, HOP_BY_HOP};
use super::write::{push, push_content_length, push_date, push_decimal, push_header};
use crate::clock::Timestamp;

/// Headers of a twin's response: more make the response a bad one.
const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, 204 or 304.
    Empty,
    Length(u64),
    Chunked,
    /// The body ends when the twin closes the connection.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// The twin keeps the connection open after this response.
    pub keep_alive: bool,
    /// The twin announced a body (a length above zero, or chunked) that the response's
    /// semantics say is not there (HEAD, 204, 304): a twin that sends it anyway leaves
    /// bytes on the connection.
    pub body_announced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("the twin's response head is malformed")]
    Malformed,
    #[error("the twin's response framing is ambiguous or unsupported")]
    Framing,
    #[error("the twin switched protocols unasked")]
    Switched,
    #[error("the twin's chunked body is malformed")]
    Chunk,
}

pub enum Parsed {
    /// The buffer holds no whole head yet.
    Partial,
    /// A 1xx interim response of this length, to skip.
    Interim(usize),
    /// A final head of this length; the client's head is in `out`.
    Final(usize, Head),
}

/// Reads the response head at the start of `buf` and, for a final response, writes the
/// client's head into `out`. `head_request`: the request was HEAD (no body follows);
/// `close`: the gateway closes the client connection after this response.
pub fn translate_head(
    buf: &[u8],
    head_request: bool,
    close: bool,
    now: Timestamp,
    out: &mut Vec<u8>,
) -> Result<Parsed, BadResponse> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut lines);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(BadResponse::Malformed),
    };
    let status = resp.code.ok_or(BadResponse::Malformed)?;
    if status == 101 {
        return Err(BadResponse::Switched);
    }
    if (100..200).contains(&status) {
        return Ok(Parsed::Interim(len));
    }
    let headers: &[httparse::Header<'_>] = resp.headers;

    let mut connection_close = resp.version != Some(1);
    let mut named: [&str; 8] = [""; 8];
    let mut n_named = 0;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            let v = std::str::from_utf8(h.value).map_err(|_| BadResponse::Malformed)?;
            for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if t.eq_ignore_ascii_case("close") {
                    connection_close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    // Keep-alive is HTTP/1.1's default; an HTTP/1.0 twin's is not relied on.
                } else if named[..n_named].iter().any(|n| n.eq_ignore_ascii_case(t)) {
                    // Named again (a twin may repeat its `Connection` line): one is enough.
                } else if n_named < named.len() {
                    named[n_named] = t;
                    n_named += 1;
                } else {
                    // More distinct names than any twin needs; a head this unusual is
                    // refused (502) rather than given an unbounded list.
                    return Err(BadResponse::Malformed);
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only exactly `chunked` is understood; anything else (another coding, a
            // repeated line) would need guessing where the body ends.
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(BadResponse::Framing);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or(BadResponse::Framing)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse::Framing);
            }
            length = Some(n);
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (true, Some(_)) => return Err(BadResponse::Framing),
            (true, None) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::UntilClose,
        }
    };

    push(out, b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    push(out, b" ");
    let reason = resp.reason.filter(|r| !r.is_empty());
    match reason.or_else(|| http::StatusCode::from_u16(status).ok()?.canonical_reason()) {
        Some(r) => push(out, r.as_bytes()),
        None => push(out, b"Unknown"),
    }
    push(out, b"\r\n");
    let named = &named[..n_named];
    // The framing the client gets is the gateway's own, written once below, whatever the
    // twin's lines and its `Connection` header say: a twin naming `content-length` there
    // would otherwise leave the client reading to a close that never comes. Only a
    // bodiless response keeps the twin's length (of what a GET would have returned).
    let mut length_kept = false;
    let mut has_date = false;
    for h in headers {
        let name = h.name;
        if is_hop_by_hop(name)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
            || (name.eq_ignore_ascii_case("set-cookie") && is_gateway_set_cookie(h.value))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            if framing != Framing::Empty || length_kept {
                continue;
            }
            length_kept = true;
        }
        has_date |= name.eq_ignore_ascii_case("date");
        push_header(out, name.as_bytes(), h.value);
    }
    if !has_date {
        push_date(out, now);
    }
    match framing {
        Framing::Chunked | Framing::UntilClose => {
            push_header(out, b"transfer-encoding", b"chunked")
        }
        Framing::Length(n) => push_content_length(out, n),
        Framing::Empty => {}
    }
    if close {
        push_header(out, b"connection", b"close");
    }
    push(out, b"\r\n");
    Ok(Parsed::Final(
        len,
        Head {
            status,
            framing,
            keep_alive: !connection_close && framing != Framing::UntilClose,
            body_announced: chunked || length.is_some_and(|n| n > 0),
        },
    ))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, head_request: bool) -> Result<(Head, String), BadResponse> {
        let mut out = Vec::new();
        match translate_head(
            raw.as_bytes(),
            head_request,
            false,
            Timestamp::from_unix_secs(0),
            &mut out,
        )? {
            Parsed::Final(n, h) => {
                assert_eq!(n, raw.len());
                Ok((h, String::from_utf8(out).unwrap()))
            }
            _ => panic!("not a final head"),
        }
    }

    #[test]
    fn heads_are_rewritten_for_the_client() {
        let (h, text) = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             Set-Cookie: __Host-twinward=evil\r\nSet-Cookie: theme=dark\r\nDate: Thu, 26 Nov 2026 07:00:00 GMT\r\nX-Keep: 1\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                framing: Framing::Length(5),
                keep_alive: true,
                body_announced: true,
            }
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nSet-Cookie: theme=dark\r\nDate: Thu, 26 Nov 2026 07:00:00 GMT\r\nX-Keep: 1\r\ncontent-length: 5\r\n\r\n"
        );
        let (h, text) = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                framing: Framing::Chunked,
                keep_alive: false,
                body_announced: true,
            }
        );
        assert!(text.contains("transfer-encoding: chunked\r\n") && text.contains("date: "));
        let (h, _) = head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!h.keep_alive);
        // A 204 or 304 announcing a body, or any answer to a HEAD, has none here, but the
        // twin may still send one: the pool must know.
        let (h, _) = head(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(h.framing == Framing::Empty && h.body_announced);
        let (h, _) = head(
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(h.framing == Framing::Empty && !h.body_announced);
        let (h, text) = head("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive && text.contains("transfer-encoding: chunked"));
        let (h, text) = head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true).unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(text.contains("Content-Length: 10"));
        assert_eq!(
            head("HTTP/1.1 304 Not Modified\r\n\r\n", false)
                .unwrap()
                .0
                .framing,
            Framing::Empty
        );
    }

    #[test]
    fn connection_names_count_once_and_are_bounded() {
        // The same names again and again: each is dropped, and the head passes.
        let repeated = "Connection: date, x-hop\r\n".repeat(6);
        let (_, text) = head(
            &format!("HTTP/1.1 200 OK\r\n{repeated}X-Hop: 1\r\nContent-Length: 0\r\n\r\n"),
            false,
        )
        .unwrap();
        assert!(!text.to_ascii_lowercase().contains("x-hop"), "{text}");
        // Nine different names: more than the list holds.
        let nine = (1..=9)
            .map(|i| format!("x-h{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(matches!(
            head(
                &format!("HTTP/1.1 200 OK\r\nConnection: {nine}\r\nContent-Length: 0\r\n\r\n"),
                false
            ),
            Err(BadResponse::Malformed)
        ));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(head(raw, false).unwrap_err(), BadResponse::Framing, "{raw}");
        }
        assert_eq!(
            head("HTTP/1.1 101 Switching Protocols\r\n\r\n", false).unwrap_err(),
            BadResponse::Switched
        );
        let mut out = Vec::new();
        assert!(matches!(
            translate_head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200", false, false, Timestamp::from_unix_secs(0), &mut out),
            Ok(Parsed::Interim(n)) if n == "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n".len()
        ));
        assert!(matches!(
            translate_head(
                b"HTTP/1.1 200 OK\r\nA: b\r\n",
                false,
                false,
                Timestamp::from_unix_secs(0),
                &mut out
            ),
            Ok(Parsed::Partial)
        ));
        assert!(out.is_empty());
    }

    use proptest::prelude::*;

    fn twin_lines() -> impl Strategy<Value = Vec<&'static str>> {
        let line = prop::sample::select(vec![
            "Content-Length: 5",
            "content-length: 5",
            "Content-Length: 7",
            "Content-Length:  5 ",
            "Content-Length: 5, 5",
            "Transfer-Encoding: chunked",
            "transfer-encoding: Chunked",
            "Transfer-Encoding: gzip, chunked",
            "Connection: close",
            "Connection: keep-alive",
            "Connection: x-hop",
            "Connection: content-length",
            "Connection: date, set-cookie",
            "Connection: Transfer-Encoding",
            "X-Hop: 1",
            "Keep-Alive: timeout=5",
            "Upgrade: h2c",
            "Trailer: X-T",
            "TE: trailers",
            "Proxy-Authenticate: Basic",
            "Proxy-Connection: x",
            "Set-Cookie: __Host-twinward=planted",
            "Set-Cookie: twinward-login=x; Path=/",
            "Set-Cookie: theme=dark",
            "Date: Thu, 26 Nov 2026 07:00:00 GMT",
            "Server: twin",
            "X-Twin: a",
            "Cache-Control: no-store",
        ]);
        proptest::collection::vec(line, 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever head a twin sends, the client's head is well formed, carries one
        /// framing of the gateway's own that matches the body the gateway relays, one
        /// date, and the twin's end-to-end headers in order: no hop-by-hop header, none the
        /// twin's `Connection` names, no cookie in the gateway's name.
        #[test]
        fn the_client_gets_one_framing_of_the_gateways_own_and_the_twins_other_headers(
            status in prop::sample::select(vec![200u16, 201, 204, 304, 404, 502]),
            version in prop::sample::select(vec!["1.1", "1.0"]),
            lines in twin_lines(),
            head_request in any::<bool>(),
            close in any::<bool>(),
        ) {
            let mut raw = format!("HTTP/{version} {status} X\r\n");
            for l in &lines {
                raw.push_str(l);
                raw.push_str("\r\n");
            }
            raw.push_str("\r\n");
            let mut out = Vec::new();
            let parsed = translate_head(raw.as_bytes(), head_request, close, Timestamp::from_unix_secs(0), &mut out);
            let lower: Vec<(String, String)> = lines
                .iter()
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
                .collect();
            let sent = |name: &str| lower.iter().filter(|(n, _)| n == name).count();
            let bodiless = head_request || status == 204 || status == 304;
            let head = match parsed {
                Ok(Parsed::Final(n, head)) => {
                    prop_assert_eq!(n, raw.len());
                    head
                }
                Ok(_) => return Err(TestCaseError::fail("a whole final head read as partial or interim")),
                Err(BadResponse::Framing) => {
                    let lengths: std::collections::BTreeSet<&str> =
                        lower.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| v.as_str()).collect();
                    let odd_te = lower.iter().any(|(n, v)| n == "transfer-encoding" && v != "chunked");
                    prop_assert!(
                        lengths.len() > 1 || lengths.contains("5, 5") || odd_te || sent("transfer-encoding") > 1
                            || (!bodiless && sent("transfer-encoding") == 1 && !lengths.is_empty()),
                        "refused a clear framing: {}", raw
                    );
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(format!("{e}: {raw}"))),
            };
            let mut parsed_lines = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut parsed_lines);
            prop_assert_eq!(resp.parse(&out), Ok(httparse::Status::Complete(out.len())));
            prop_assert_eq!(resp.code, Some(status));
            let got: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let values = |name: &str| -> Vec<&str> {
                got.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
            };
            let length = lower.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<u64>().ok());
            let chunked = sent("transfer-encoding") == 1;
            let expected = if bodiless {
                Framing::Empty
            } else if chunked {
                Framing::Chunked
            } else if let Some(n) = length {
                Framing::Length(n)
            } else {
                Framing::UntilClose
            };
            prop_assert_eq!(head.framing, expected);
            match head.framing {
                Framing::Chunked | Framing::UntilClose => {
                    prop_assert_eq!(values("transfer-encoding"), vec!["chunked"]);
                    prop_assert!(values("content-length").is_empty());
                }
                Framing::Length(n) => {
                    let n = n.to_string();
                    prop_assert_eq!(values("content-length"), vec![n.as_str()]);
                    prop_assert!(values("transfer-encoding").is_empty());
                }
                Framing::Empty => {
                    prop_assert!(values("transfer-encoding").is_empty());
                    prop_assert!(values("content-length").len() <= 1);
                }
            }
            prop_assert_eq!(values("connection"), if close { vec!["close"] } else { vec![] });
            let twin_closes = version == "1.0" || lower.iter().any(|(n, v)| n == "connection" && v == "close");
            prop_assert_eq!(head.keep_alive, !twin_closes && head.framing != Framing::UntilClose);
            // The twin's own end-to-end lines, in order.
            let named: Vec<&str> = lower
                .iter()
                .filter(|(n, _)| n == "connection")
                .flat_map(|(_, v)| v.split(',').map(str::trim))
                .collect();
            // A date: the twin's, else the gateway's.
            let twin_dates = lower.iter().filter(|(n, _)| n == "date" && !named.contains(&"date")).count();
            prop_assert_eq!(values("date").len(), twin_dates.max(1));
            let framing_or_date = |n: &str| ["content-length", "transfer-encoding", "connection", "date"].contains(&n);
            let passed: Vec<&(String, String)> = got.iter().filter(|(n, _)| !framing_or_date(n)).collect();
            let expected: Vec<(String, String)> = lines
                .iter()
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
                .filter(|(n, v)| {
                    let dropped = framing_or_date(n)
                        || HOP_BY_HOP.contains(&n.as_str())
                        || named.contains(&n.as_str())
                        || (n == "set-cookie" && is_gateway_set_cookie(v.as_bytes()));
                    !dropped
                })
                .collect();
            prop_assert_eq!(passed.into_iter().cloned().collect::<Vec<_>>(), expected);
        }
    }
}
