//! The rules of RFC 9112 on `Host` and message framing that every request is held to before
//! anything else is read from it, beyond those hyper enforces itself (one `Content-Length`,
//! `chunked` last, no `Transfer-Encoding` on HTTP/1.0). A request that breaks one is one
//! that two HTTP parsers may read differently: the gateway would route or authorize one
//! request while a twin or a proxy behind it reads another (request smuggling, host
//! confusion). So it is refused, and its connection closed, since where its body ends is
//! in doubt.

use super::headers::HeaderLines;
use http::StatusCode;

/// Why a request's `Host` or framing is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("an HTTP/1.1 request must carry a Host header")]
    NoHost,
    #[error("the request carries more than one Host header")]
    ManyHosts,
    #[error("the Host header is not a host with an optional port")]
    BadHost,
    /// An absolute-form target or HTTP/2 `:authority` with userinfo or anything else but
    /// a host and optional port (RFC 9110 §4.2.4 calls userinfo there an error).
    #[error("the request target's authority is not a host with an optional port")]
    BadAuthority,
    /// The target's authority and `Host` name different hosts. RFC 9112 §3.2.2 has an
    /// origin server follow the target and RFC 9113 §8.3.1 calls the pair malformed; a
    /// hop that reads the other one would route or authorize another request.
    #[error("the Host header names another host than the request target")]
    HostDisagrees,
    /// Any coding but `chunked` alone: the gateway does not decode them, and forwarding
    /// the body with the coding's name dropped would change what it means.
    #[error(
        "transfer coding \"{0}\" is not supported; send the body chunked or with a Content-Length"
    )]
    Coding(String),
    /// RFC 9112 §6.1: a sender must not apply chunked more than once.
    #[error("the body is chunked more than once")]
    ChunkedTwice,
}

impl Malformed {
    pub fn status(&self) -> StatusCode {
        match self {
            // RFC 9112 §6.1: a transfer coding the server does not understand is a 501.
            Malformed::Coding(_) => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Checks `Host` (RFC 9112 §3.2: exactly one on HTTP/1.1, at most one otherwise, and a
/// valid one), its agreement with `target`, the authority the request target carries (an
/// absolute-form target, HTTP/2's `:authority`), and the body's transfer coding (§6.1). A
/// request with both `Content-Length` and `Transfer-Encoding` never gets here with both:
/// hyper drops the length, reads the body as chunked and closes the connection after the
/// response, as §6.3 requires.
pub fn check<H: HeaderLines + ?Sized>(
    http11: bool,
    target: Option<&str>,
    headers: &H,
) -> Result<(), Malformed> {
    if target.is_some_and(|a| valid_host(a.as_bytes()).is_none()) {
        return Err(Malformed::BadAuthority);
    }
    let mut hosts = headers.lines("host");
    match (hosts.next(), hosts.next()) {
        (None, _) if http11 => return Err(Malformed::NoHost),
        (Some(_), Some(_)) => return Err(Malformed::ManyHosts),
        (Some(h), None) if valid_host(h).is_none() => return Err(Malformed::BadHost),
        (Some(h), None) if target.is_some_and(|a| !a.as_bytes().eq_ignore_ascii_case(h)) => {
            return Err(Malformed::HostDisagrees)
        }
        _ => {}
    }
    if !headers.has("transfer-encoding") {
        return Ok(());
    }
    let codings = headers.lines("transfer-encoding").flat_map(|v| {
        v.split(|&b| b == b',')
            .map(|c| c.trim_ascii())
            .filter(|c| !c.is_empty())
    });
    let mut chunked = 0;
    for c in codings {
        if !c.eq_ignore_ascii_case(b"chunked") {
            let name = String::from_utf8_lossy(c).chars().take(40).collect();
            return Err(Malformed::Coding(name));
        }
        chunked += 1;
    }
    match chunked {
        1 => Ok(()),
        0 => Err(Malformed::Coding(String::new())),
        _ => Err(Malformed::ChunkedTwice),
    }
}

/// Once [`check`] passed: gives a request whose target alone names its host (HTTP/2's
/// `:authority`, an HTTP/1.0 absolute-form target) the `Host` that says the same, so that
/// routing, forwarding and the sign-in pages all read the host from one place, `Host`,
/// whatever form the client used. Where both were sent, `check` made sure they agree.
pub fn settle_host<B>(req: &mut http::Request<B>) {
    if req.headers().contains_key(http::header::HOST) {
        return;
    }
    let host = req
        .uri()
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
    if let Some(h) = host {
        req.headers_mut().insert(http::header::HOST, h);
    }
}

/// `value` as text when it is a `uri-host [ ":" port ]` of RFC 3986 with a non-empty host
/// (RFC 9110 §4.2.1 rejects an empty one): a reg-name, IPv4 address or bracketed IPv6
/// literal. No userinfo, no path, nothing a router and a twin could split differently.
pub fn valid_host(value: &[u8]) -> Option<&str> {
    let port = if let Some(rest) = value.strip_prefix(b"[") {
        let close = rest.iter().position(|&b| b == b']')?;
        let literal = &rest[..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        &rest[close + 1..]
    } else {
        // A reg-name holds no `:`, so where it ends the port must begin (or the value end).
        let end = value
            .iter()
            .position(|&b| !reg_name_byte(b))
            .unwrap_or(value.len());
        if end == 0 {
            return None;
        }
        &value[end..]
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    port_ok.then(|| std::str::from_utf8(value).ok()).flatten()
}

/// Unreserved, sub-delims and `%` of pct-encoded (RFC 3986 §3.2.2). A table, since the
/// fast path reads every request's `Host` through it.
fn reg_name_byte(b: u8) -> bool {
    REG_NAME[usize::from(b)]
}

const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in lines {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            check(true, None, &headers(&[("host", "twin.example")])),
            Ok(())
        );
        assert_eq!(check(true, None, &headers(&[])), Err(Malformed::NoHost));
        // HTTP/1.0 and HTTP/2 (`:authority`) may go without.
        assert_eq!(check(false, None, &headers(&[])), Ok(()));
        assert_eq!(
            check(true, None, &headers(&[("host", "a"), ("host", "a")])),
            Err(Malformed::ManyHosts)
        );
        assert_eq!(
            check(false, None, &headers(&[("host", "a"), ("host", "b")])),
            Err(Malformed::ManyHosts)
        );
        for bad in [
            "", "a@b", "a b", "a/b", "a:8x", "a:123456", "[::1", "[]", "[::1]x", ":80", "a:1:2",
            "a?",
        ] {
            assert_eq!(
                check(true, None, &headers(&[("host", bad)])),
                Err(Malformed::BadHost),
                "{bad:?}"
            );
        }
        for good in [
            "a",
            "a:",
            "A.example:8443",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "xn--caf-dma.example",
            "a.example.",
        ] {
            assert_eq!(valid_host(good.as_bytes()), Some(good), "{good:?}");
        }
    }

    #[test]
    fn the_target_authority_rules() {
        let gw = ("host", "gw.example:8080");
        assert_eq!(
            check(true, Some("gw.example:8080"), &headers(&[gw])),
            Ok(())
        );
        assert_eq!(
            check(true, Some("GW.example:8080"), &headers(&[gw])),
            Ok(())
        );
        // HTTP/2 carries the host in `:authority` alone; HTTP/1.1 needs `Host` beside it.
        assert_eq!(check(false, Some("gw.example"), &headers(&[])), Ok(()));
        assert_eq!(
            check(true, Some("gw.example:8080"), &headers(&[])),
            Err(Malformed::NoHost)
        );
        for other in ["other.example:8080", "gw.example", "gw.example:80"] {
            assert_eq!(
                check(false, Some(other), &headers(&[gw])),
                Err(Malformed::HostDisagrees),
                "{other:?}"
            );
        }
        for bad in [
            "gw@evil.example",
            "user:pw@gw.example:8080",
            "gw.example:x",
            "",
        ] {
            assert_eq!(
                check(false, Some(bad), &headers(&[])),
                Err(Malformed::BadAuthority),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn framing_rules() {
        let host = ("host", "a");
        assert_eq!(
            check(true, None, &headers(&[host, ("content-length", "3")])),
            Ok(())
        );
        assert_eq!(
            check(
                true,
                None,
                &headers(&[host, ("transfer-encoding", "Chunked")])
            ),
            Ok(())
        );
        for (codings, named) in [
            (&["gzip, chunked"][..], "gzip"),
            (&["gzip", "chunked"][..], "gzip"),
            (&["x-custom , chunked"][..], "x-custom"),
            (&["gzip"][..], "gzip"),
            (&[""][..], ""),
            (&["identity"][..], "identity"),
        ] {
            let mut h = headers(&[host]);
            for c in codings {
                h.append("transfer-encoding", HeaderValue::from_static(c));
            }
            let e = check(true, None, &h).unwrap_err();
            assert_eq!(e, Malformed::Coding(named.into()), "{codings:?}");
            assert_eq!(e.status(), StatusCode::NOT_IMPLEMENTED);
        }
        for twice in [&["chunked, chunked"][..], &["chunked", "Chunked"][..]] {
            let mut h = headers(&[host]);
            for c in twice {
                h.append("transfer-encoding", HeaderValue::from_static(c));
            }
            assert_eq!(
                check(true, None, &h),
                Err(Malformed::ChunkedTwice),
                "{twice:?}"
            );
        }
    }
}
