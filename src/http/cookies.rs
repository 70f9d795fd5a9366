//! The gateway's cookies: the session cookie (`__Host-twinward`, plain `twinward` only on
//! http://localhost) and the short-lived sign-in binding cookie. Both HttpOnly,
//! SameSite=Lax, Path=/ and, except on http://localhost, Secure.

use super::headers::{visible_ascii, HeaderLines};
use crate::config::signin::SigninConfig;
use http::HeaderValue;

/// Cookie names the gateway sets; never forwarded upstream, and a twin's `Set-Cookie` for
/// them is dropped.
pub const GATEWAY_COOKIES: [&str; 6] = [
    "__Host-twinward",
    "twinward",
    "__Host-twinward-login",
    "twinward-login",
    "__Host-twinward-handoff",
    "twinward-handoff",
];

/// The value of cookie `name`, from any `Cookie` header line.
pub fn get<'a, H: HeaderLines + ?Sized>(headers: &'a H, name: &str) -> Option<&'a str> {
    headers
        .lines("cookie")
        .filter_map(visible_ascii)
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

pub fn login_cookie_name(cfg: &SigninConfig) -> &'static str {
    if cfg.secure_cookies {
        "__Host-twinward-login"
    } else {
        "twinward-login"
    }
}

fn build(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut s = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if secure {
        s.push_str("; Secure");
    }
    if let Some(a) = max_age {
        s.push_str(&format!("; Max-Age={a}"));
    }
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The session cookie: a browser-session cookie (no Max-Age): the server ends sessions.
pub fn session(cfg: &SigninConfig, value: &str) -> HeaderValue {
    build(cfg.cookie_name, value, None, cfg.secure_cookies)
}

pub fn clear_session(cfg: &SigninConfig) -> HeaderValue {
    build(cfg.cookie_name, "", Some(0), cfg.secure_cookies)
}

pub fn login(cfg: &SigninConfig, value: &str, max_age: u64) -> HeaderValue {
    build(
        login_cookie_name(cfg),
        value,
        Some(max_age),
        cfg.secure_cookies,
    )
}

pub fn clear_login(cfg: &SigninConfig) -> HeaderValue {
    build(login_cookie_name(cfg), "", Some(0), cfg.secure_cookies)
}

/// The route host's cookie that ties a session handoff to the browser it started in.
pub fn handoff_cookie_name(cfg: &SigninConfig) -> &'static str {
    if cfg.secure_cookies {
        "__Host-twinward-handoff"
    } else {
        "twinward-handoff"
    }
}

pub fn handoff(cfg: &SigninConfig, value: &str, max_age: u64) -> HeaderValue {
    build(
        handoff_cookie_name(cfg),
        value,
        Some(max_age),
        cfg.secure_cookies,
    )
}

pub fn clear_handoff(cfg: &SigninConfig) -> HeaderValue {
    build(handoff_cookie_name(cfg), "", Some(0), cfg.secure_cookies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;
    use http::HeaderMap;

    #[test]
    fn finds_a_cookie_among_several_lines() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; twinward-login=x"));
        h.append(COOKIE, HeaderValue::from_static("twinward=abc; b=2"));
        assert_eq!(get(&h, "twinward"), Some("abc"));
        assert_eq!(get(&h, "twinward-login"), Some("x"));
        assert_eq!(get(&h, "twin"), None);
    }
}
