//! Request-path normalization: the single canonical form of a request path.
//!
//! This runs once per request, after the caller has split off the query (`?...`) and handled
//! the authority, and *before* route matching and before policy. Everything downstream of it
//! (route matching, policy decisions, audit, and the request sent upstream) uses the one
//! [`NormalizedPath`] it returns: the upstream receives exactly the normalized path that policy
//! saw, byte for byte. It never passes on an ambiguous path.
//!
//! The guiding principle is that a path whose meaning could differ between two normalizers
//! (ours, the upstream's, nginx's, a web framework's, a servlet container's) is refused, never
//! passed on. Path-confusion bugs live in exactly those differences: `/a/%2e%2e/admin`,
//! `/..;/admin`, `/a%2Fb`, `\`-as-separator, overlong UTF-8, double encoding. So instead of
//! guessing what some upstream would make of such a path, we reject it with a [`PathError`]
//! (the gateway answers 400), and we only forward paths that every reasonable normalizer reads
//! the same way.
//!
//! What an accepted path looks like afterwards:
//! - starts with `/`, pure ASCII, at most [`MAX_PATH_LEN`] bytes;
//! - no empty segments (duplicate slashes collapsed), no `.` or `..` segments;
//! - a trailing slash is kept when the input had one (or ended in `.`/`..`);
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded;
//! - every other escape is kept, with uppercase hex;
//! - raw characters that may not appear unencoded in a path (space, `"`, `<`, `>`, `[`, `]`,
//!   `^`, `` ` ``, `{`, `|`, `}`, and every non-ASCII character) are percent-encoded
//!   (UTF-8 bytes, uppercase hex); they are unambiguous, so encoding beats refusing;
//! - normalizing it again returns it unchanged (idempotence).
//!
//! Not handled here (on purpose): Unicode normalization or "best-fit" mappings of non-ASCII
//! look-alikes (e.g. U+FF0F FULLWIDTH SOLIDUS). Those stay percent-encoded and are forwarded as
//! opaque bytes; an upstream that maps them to ASCII is misconfigured.

use smol_str::SmolStr;
use std::fmt;

/// Longest path accepted, in bytes, both for the raw input and for the normalized output
/// (percent-encoding raw non-ASCII can make the output longer than the input; checking the
/// output too keeps [`normalize`] idempotent).
pub const MAX_PATH_LEN: usize = 8192;

/// Why a path was refused. Every variant is a 400 for the client; none is retried or repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Empty, `*` (asterisk-form), absolute-form (`http://...`), or anything else not starting
    /// with `/`.
    NotAbsolute,
    /// Raw input or normalized output longer than [`MAX_PATH_LEN`].
    TooLong,
    /// A raw `\`: some servers (IIS, some Windows-backed frameworks) treat it as a separator.
    Backslash,
    /// `%5C`: decodes to `\`, same problem as [`PathError::Backslash`] one decoding later.
    EncodedBackslash,
    /// `%2F`: whether it separates segments differs between servers.
    EncodedSlash,
    /// A raw NUL byte: C-string truncation in upstreams.
    NulByte,
    /// `%00`: decodes to NUL.
    EncodedNulByte,
    /// A raw ASCII control character (0x01–0x1F, 0x7F); includes CR/LF (header injection).
    ControlChar,
    /// A percent-encoded ASCII control character (`%01`–`%1F`, `%7F`), e.g. `%0D%0A`.
    EncodedControlChar,
    /// A raw `#`: a fragment must never reach the server; its presence means a confused client
    /// or an attempt to hide the rest of the path from one of the parsers.
    Fragment,
    /// A raw `?`: the caller splits the query off before normalizing, so a `?` here means the
    /// path and query were not separated the way the upstream will separate them.
    Query,
    /// A raw `;` in a segment (path parameters such as `/a;x=1/b` or `/..;/`): Tomcat and
    /// Jetty strip them, others do not, which is the root of several path-confusion CVEs.
    PathParameter,
    /// `%3B`: some frameworks decode before stripping path parameters, so an encoded `;` is as
    /// ambiguous as a raw one (Spring's strict firewall refuses it for the same reason).
    EncodedSemicolon,
    /// A `%` not followed by two hex digits.
    InvalidPercentEncoding,
    /// `%25` followed by two hex digits after decoding (e.g. `%252e`): an upstream that decodes
    /// twice would see a different path than we did.
    DoubleEncoding,
    /// The fully decoded path is not valid UTF-8 (overlong forms such as `%C0%AF`, lone
    /// continuation bytes, truncated sequences, surrogates).
    InvalidUtf8,
    /// A segment that is `.` or `..` only after percent-decoding (`%2e%2e`, `.%2E`, `%2e`).
    /// Servers disagree on whether to resolve those, so we refuse instead of resolving.
    DotSegmentAfterDecoding,
    /// A `..` that would climb above `/`. Refused rather than clamped: a client sending it is
    /// probing, and clamping would hide that from the audit log.
    EscapesRoot,
    /// A `..` whose segment to remove is an empty one (`/a//../b`, `/a/.//../b`): RFC 3986
    /// and WHATWG parsers remove the empty segment (`/a/b`), slash-merging servers such as
    /// nginx remove `a` (`/b`).
    DotDotAfterEmptySegment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NotAbsolute => f.write_str("path does not start with '/'"),
            PathError::TooLong => write!(f, "path is longer than {MAX_PATH_LEN} bytes"),
            PathError::Backslash => f.write_str("path contains a backslash"),
            PathError::EncodedBackslash => f.write_str("path contains an encoded backslash (%5C)"),
            PathError::EncodedSlash => f.write_str("path contains an encoded slash (%2F)"),
            PathError::NulByte => f.write_str("path contains a NUL byte"),
            PathError::EncodedNulByte => f.write_str("path contains an encoded NUL byte (%00)"),
            PathError::ControlChar => f.write_str("path contains an ASCII control character"),
            PathError::EncodedControlChar => {
                f.write_str("path contains an encoded ASCII control character")
            }
            PathError::Fragment => f.write_str("path contains a fragment marker '#'"),
            PathError::Query => {
                f.write_str("path contains '?' (the query must be split off before normalizing)")
            }
            PathError::PathParameter => f.write_str("path contains a ';' path parameter"),
            PathError::EncodedSemicolon => f.write_str("path contains an encoded semicolon (%3B)"),
            PathError::InvalidPercentEncoding => {
                f.write_str("path contains a '%' not followed by two hex digits")
            }
            PathError::DoubleEncoding => f.write_str(
                "path contains a double-encoded escape (%25 followed by two hex digits)",
            ),
            PathError::InvalidUtf8 => f.write_str("path does not decode to valid UTF-8"),
            PathError::DotSegmentAfterDecoding => {
                f.write_str("path contains a percent-encoded '.' or '..' segment")
            }
            PathError::EscapesRoot => f.write_str("path climbs above the root with '..'"),
            PathError::DotDotAfterEmptySegment => {
                f.write_str("path has '..' after an empty segment ('//..')")
            }
        }
    }
}

impl std::error::Error for PathError {}

/// A request path in canonical form (see the module docs for what that guarantees).
/// Only [`normalize`] constructs it, so holding one proves the path was checked.
///
/// Held as a `SmolStr`: the policy context and the audit event each keep the path, and a
/// short one (most are) is copied inline and a long one shared, never allocated again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath(SmolStr);

impl NormalizedPath {
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path as a string the context and the audit event can keep.
    #[must_use]
    pub fn shared(&self) -> &SmolStr {
        &self.0
    }

    /// Segment-wise prefix match, for route prefixes.
    ///
    /// True when `prefix` is `/`, when the path equals `prefix`, or when the path continues
    /// with `/` right after `prefix`. So `/plant-7` matches `/plant-7` and `/plant-7/x` but not
    /// `/plant-70`.
    ///
    /// `prefix` should itself be the output of [`normalize`] with trailing slashes trimmed
    /// (config loading does this). Defensively: a prefix not starting with `/` (including
    /// the empty string) never matches, since every normalized path starts with `/`; and
    /// trailing slashes on `prefix` are ignored, so `/plant-7/` behaves like `/plant-7`
    /// rather than silently matching only `/plant-7/` itself.
    #[must_use]
    pub fn starts_with_segment_prefix(&self, prefix: &str) -> bool {
        if !prefix.starts_with('/') {
            return false;
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            // The prefix was "/" (or "//..."): the root matches every path.
            return true;
        }
        match self.0.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

impl AsRef<str> for NormalizedPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Normalizes the path part of a request target (no query; the caller splits off '?...').
///
/// The checks run in fixed phases so the reported reason is deterministic: length and
/// absoluteness, then raw characters, then percent-escapes (left to right), then double
/// encoding, then UTF-8 validity of the decoded path, then dot segments (left to right),
/// then the output length.
///
/// # Errors
///
/// Returns the [`PathError`] for the first reason, in that phase order, that the path is
/// refused. A refused path must be answered with 400, never forwarded or repaired.
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    // Bound all later work by the input size before looking at anything else.
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    // Covers "", "*" and absolute-form ("http://host/..."): the caller deals with authority.
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(raw) {
        return Ok(NormalizedPath(SmolStr::new(raw)));
    }
    normalize_in_full(raw)
}

/// Every phase of [`normalize`] after the length and absoluteness checks.
fn normalize_in_full(raw: &str) -> Result<NormalizedPath, PathError> {
    screen_raw(raw)?;
    let Decoded { segments, bytes } = decode(raw)?;
    check_double_encoding(&bytes)?;
    // Validate the whole decoded byte string, not escape by escape: a multibyte sequence can
    // mix escapes and raw bytes, and only the whole tells overlong/truncated forms apart.
    if std::str::from_utf8(&bytes).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    let out = resolve(segments)?;
    if out.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    Ok(NormalizedPath(out.into()))
}

/// Whether `raw` (starting with `/`, at most [`MAX_PATH_LEN`] bytes) is already its own
/// normal form, as the paths tools send nearly always are: only raw `pchar` bytes and
/// slashes (no escape, nothing to encode or refuse), no empty segment but a trailing one,
/// no `.` or `..` segment. For such a path every phase of [`normalize`] is the identity:
/// `decode` copies each byte into its segment, `resolve` keeps every segment and the
/// trailing slash. One pass and no allocation but the result; a property test checks it
/// against the full pass.
fn is_canonical(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    // Index 0 is the leading '/'; `start` is where the current segment begins.
    let mut start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if b == b'/' {
            if !is_plain_segment(&bytes[start..i]) {
                return false;
            }
            start = i + 1;
        } else if !is_raw_allowed(b) {
            return false;
        }
    }
    // The last segment may be empty: the trailing slash `resolve` keeps.
    let last = &bytes[start..];
    last.is_empty() || is_plain_segment(last)
}

/// A segment `resolve` keeps as it is: not empty, not `.` or `..`.
fn is_plain_segment(segment: &[u8]) -> bool {
    !matches!(segment, b"" | b"." | b"..")
}

/// Refuses raw bytes that are ambiguous or dangerous before any decoding happens.
fn screen_raw(raw: &str) -> Result<(), PathError> {
    for b in raw.bytes() {
        match b {
            0 => return Err(PathError::NulByte),
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::Fragment),
            b'?' => return Err(PathError::Query),
            b';' => return Err(PathError::PathParameter),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlChar),
            _ => {}
        }
    }
    Ok(())
}

/// One path segment (the text between two slashes) in normalized, still-encoded form.
#[derive(Debug, Default)]
struct Segment {
    /// The segment as it will be emitted: unreserved escapes decoded, other escapes uppercase,
    /// raw characters outside `pchar` encoded.
    text: String,
    /// Whether any escape was decoded into `text`. A segment that reads `.` or `..` with this
    /// set is an encoded dot segment, which we refuse rather than resolve.
    decoded_escape: bool,
}

/// Output of the decoding pass.
struct Decoded {
    /// Segments after the leading '/', in order; empty ones included (they encode duplicate
    /// and trailing slashes, which `resolve` interprets).
    segments: Vec<Segment>,
    /// The whole path with every escape decoded (slashes included), for the double-encoding
    /// and UTF-8 checks.
    bytes: Vec<u8>,
}

/// Splits the path into segments and canonicalizes each one's encoding.
///
/// Works on bytes with `get()` throughout: a `%` may be followed by a multibyte character or by
/// nothing at all, and neither may cause a panic.
fn decode(raw: &str) -> Result<Decoded, PathError> {
    let input = raw.as_bytes();
    let mut segments = Vec::new();
    let mut current = Segment::default();
    let mut bytes = Vec::with_capacity(input.len());
    // Index 0 is the leading '/', checked by the caller.
    let mut i = 1;
    while let Some(&b) = input.get(i) {
        match b {
            b'/' => {
                segments.push(std::mem::take(&mut current));
                bytes.push(b'/');
                i += 1;
            }
            b'%' => {
                let hi = input.get(i + 1).and_then(|&h| hex_value(h));
                let lo = input.get(i + 2).and_then(|&l| hex_value(l));
                let value = match (hi, lo) {
                    (Some(hi), Some(lo)) => (hi << 4) | lo,
                    _ => return Err(PathError::InvalidPercentEncoding),
                };
                check_escaped_byte(value)?;
                bytes.push(value);
                if is_unreserved(value) {
                    // RFC 3986 §2.3: encoded unreserved characters are equivalent to the
                    // characters themselves, so decoding them cannot change the meaning; it
                    // also lets `%2e%2e` be recognized as a dot segment below.
                    current.text.push(char::from(value));
                    current.decoded_escape = true;
                } else {
                    // Reserved and non-ASCII bytes stay encoded: decoding `%3A` or `%3F` could
                    // change how the upstream splits the path. Uppercase hex is the canonical
                    // form (RFC 3986 §6.2.2.1), so equal paths compare equal.
                    push_escaped(&mut current.text, value);
                }
                i += 3;
            }
            _ => {
                bytes.push(b);
                if is_raw_allowed(b) {
                    current.text.push(char::from(b));
                } else {
                    // Not allowed unencoded in a path (space, '"', '<', ..., or a byte of a
                    // non-ASCII character). Its meaning is unambiguous, so encoding it is safe
                    // and keeps the forwarded path pure ASCII.
                    push_escaped(&mut current.text, b);
                }
                i += 1;
            }
        }
    }
    segments.push(current);
    Ok(Decoded { segments, bytes })
}

/// Refuses escapes whose decoded byte is a separator, a parameter marker, or a control char.
fn check_escaped_byte(value: u8) -> Result<(), PathError> {
    match value {
        0 => Err(PathError::EncodedNulByte),
        b'/' => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::EncodedBackslash),
        b';' => Err(PathError::EncodedSemicolon),
        v if v < 0x20 || v == 0x7f => Err(PathError::EncodedControlChar),
        _ => Ok(()),
    }
}

/// Refuses a decoded `%` (which can only come from `%25`, since a raw `%` always starts an
/// escape) followed by two hex digits. Checked on the decoded bytes rather than the raw text so
/// that `%25%34%31` (which we would emit as `%2541`) is caught too; that keeps the output free
/// of `%25XX` and therefore idempotent.
fn check_double_encoding(decoded: &[u8]) -> Result<(), PathError> {
    let doubled = decoded
        .windows(3)
        .any(|w| matches!(w, [b'%', a, b] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit()));
    if doubled {
        Err(PathError::DoubleEncoding)
    } else {
        Ok(())
    }
}

/// Collapses empty segments and resolves `.`/`..` (RFC 3986 §5.2.4, minus clamping at the
/// root), then assembles the output path.
fn resolve(segments: Vec<Segment>) -> Result<String, PathError> {
    let count = segments.len();
    let mut stack: Vec<String> = Vec::with_capacity(count);
    // The same walk as RFC 3986 §5.2.4 does it, keeping empty segments (true): a `..` that
    // removes one there removes a different segment here.
    let mut kept_empty: Vec<bool> = Vec::with_capacity(count);
    let mut trailing_slash = false;
    for (index, segment) in segments.into_iter().enumerate() {
        let is_dot = segment.text == "." || segment.text == "..";
        if is_dot && segment.decoded_escape {
            return Err(PathError::DotSegmentAfterDecoding);
        }
        // "/a/", "/a/." and "/a/b/.." all end in a directory: keep the trailing slash, as
        // RFC 3986 §5.2.4 does. Only the last segment decides.
        if index + 1 == count {
            trailing_slash = segment.text.is_empty() || is_dot;
        }
        match segment.text.as_str() {
            // Empty: a duplicate slash (collapsed) or, when last, the trailing slash above.
            "." => {}
            "" => kept_empty.push(true),
            ".." => {
                if stack.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                if kept_empty.pop() == Some(true) {
                    return Err(PathError::DotDotAfterEmptySegment);
                }
            }
            _ => {
                stack.push(segment.text);
                kept_empty.push(false);
            }
        }
    }
    let mut out = String::with_capacity(stack.iter().map(|s| s.len() + 1).sum::<usize>() + 1);
    for segment in &stack {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// RFC 3986 §2.3 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Raw bytes emitted as-is inside a segment: RFC 3986 `pchar` minus `%` (always an escape
/// here) and minus `;` (refused earlier). Everything else that reaches `decode` is encoded.
fn is_raw_allowed(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `%XX` with uppercase hex.
fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    // Both indices are < 16, so these lookups cannot fail; `get` keeps that visible anyway.
    for nibble in [b >> 4, b & 0x0f] {
        if let Some(&c) = HEX.get(usize::from(nibble)) {
            out.push(char::from(c));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case = (String, Result<String, PathError>);

    fn ok(input: &str, output: &str) -> Case {
        (input.to_owned(), Ok(output.to_owned()))
    }

    fn err(input: &str, e: PathError) -> Case {
        (input.to_owned(), Err(e))
    }

    fn cases() -> Vec<Case> {
        use PathError::*;
        vec![
            // Plain paths.
            ok("/", "/"),
            ok("/a/b/c", "/a/b/c"),
            ok("/api/v1/users", "/api/v1/users"),
            ok("/plant-7/history", "/plant-7/history"),
            ok("/!$&'()*+,=:@", "/!$&'()*+,=:@"),
            // Trailing slashes.
            ok("/a/b/", "/a/b/"),
            ok("/a/b/./", "/a/b/"),
            // Dot segments.
            ok("/a/./b", "/a/b"),
            ok("/a/../b", "/b"),
            ok("/a/b/..", "/a/"),
            ok("/a/.", "/a/"),
            ok("/a/..", "/"),
            ok("/.", "/"),
            ok("/./", "/"),
            ok("/./a", "/a"),
            ok("/a/b/../../c", "/c"),
            ok("/a/...", "/a/..."),
            ok("/a/..b/.c", "/a/..b/.c"),
            // Duplicate slashes.
            ok("//a///b", "/a/b"),
            ok("/a//", "/a/"),
            ok("//", "/"),
            // `..` after an empty segment: the two readings of `//` disagree.
            err("/a//../b", DotDotAfterEmptySegment),
            err("/a/.//../b", DotDotAfterEmptySegment),
            err("/a/b//..", DotDotAfterEmptySegment),
            ok("/a//b/../c", "/a/c"),
            ok("/a/b/..//c", "/a/c"),
            // Escaping above the root.
            err("/..", EscapesRoot),
            err("/../a", EscapesRoot),
            err("/a/../..", EscapesRoot),
            err("/a/../../b", EscapesRoot),
            err("//..//a", EscapesRoot),
            // Encoded dots forming dot segments, in all case mixes.
            err("/a/%2e%2e/b", DotSegmentAfterDecoding),
            err("/a/%2E%2E/b", DotSegmentAfterDecoding),
            err("/a/%2e%2E/b", DotSegmentAfterDecoding),
            err("/a/%2E%2e/b", DotSegmentAfterDecoding),
            err("/a/.%2e/b", DotSegmentAfterDecoding),
            err("/a/%2e./b", DotSegmentAfterDecoding),
            err("/a/.%2E/b", DotSegmentAfterDecoding),
            err("/%2E/x", DotSegmentAfterDecoding),
            err("/%2e", DotSegmentAfterDecoding),
            err("/a/%2e%2e", DotSegmentAfterDecoding),
            // Encoded dots inside a longer segment are just dots.
            ok("/a%2eb", "/a.b"),
            ok("/.%2e.", "/..."),
            ok("/file%2Etxt", "/file.txt"),
            // Encoded slash / backslash, raw backslash.
            err("/a%2Fb", EncodedSlash),
            err("/a%2fb", EncodedSlash),
            err("/%2e%2e%2f", EncodedSlash),
            err("/a%5Cb", EncodedBackslash),
            err("/a%5cb", EncodedBackslash),
            err("/a\\b", Backslash),
            err("/..\\..\\etc", Backslash),
            // Path parameters.
            err("/..;/admin", PathParameter),
            err("/a;x=1/b", PathParameter),
            err("/a;", PathParameter),
            err("/a%3Bb", EncodedSemicolon),
            err("/..%3b/admin", EncodedSemicolon),
            // NUL and control characters, raw and encoded.
            err("/a\0b", NulByte),
            err("/a%00b", EncodedNulByte),
            err("/a\tb", ControlChar),
            err("/a\r\nb", ControlChar),
            err("/a\x7fb", ControlChar),
            err("/a%0d%0aSet-Cookie:x=1", EncodedControlChar),
            err("/a%0A", EncodedControlChar),
            err("/a%1f", EncodedControlChar),
            err("/a%7F", EncodedControlChar),
            // Overlong and otherwise invalid UTF-8.
            err("/%C0%AE%C0%AE/", InvalidUtf8),
            err("/a%C0%AFb", InvalidUtf8),
            err("/a%E0%80%AFb", InvalidUtf8),
            err("/%FF", InvalidUtf8),
            err("/%80", InvalidUtf8),
            err("/%C3", InvalidUtf8),
            err("/%C3/%A9", InvalidUtf8),
            err("/%ED%A0%80", InvalidUtf8),
            err("/%C3\u{e9}", InvalidUtf8),
            // Valid multibyte, encoded or raw.
            ok("/caf%C3%A9", "/caf%C3%A9"),
            ok("/caf%c3%a9", "/caf%C3%A9"),
            ok("/caf\u{e9}", "/caf%C3%A9"),
            ok("/\u{65e5}\u{672c}", "/%E6%97%A5%E6%9C%AC"),
            ok("/%F0%9F%A6%80", "/%F0%9F%A6%80"),
            // Encoded unreserved characters are decoded.
            ok("/%41%42c", "/ABc"),
            ok("/%7E%7euser", "/~~user"),
            ok("/%2D%5f%30", "/-_0"),
            // Other escapes are kept, with uppercase hex.
            ok("/a%3ab", "/a%3Ab"),
            ok("/a%20b", "/a%20b"),
            ok("/a%3F%23", "/a%3F%23"),
            ok("/100%25", "/100%25"),
            ok("/50%25off", "/50%25off"),
            // Raw characters not allowed in a path are encoded.
            ok("/a b", "/a%20b"),
            ok("/\"<>^`{|}", "/%22%3C%3E%5E%60%7B%7C%7D"),
            ok("/a[b]", "/a%5Bb%5D"),
            // Incomplete or invalid escapes.
            err("/%", InvalidPercentEncoding),
            err("/a%", InvalidPercentEncoding),
            err("/%4", InvalidPercentEncoding),
            err("/%zz", InvalidPercentEncoding),
            err("/%4g", InvalidPercentEncoding),
            err("/%\u{e9}", InvalidPercentEncoding),
            err("/%4\u{e9}", InvalidPercentEncoding),
            // Double encoding.
            err("/%252e%252e/", DoubleEncoding),
            err("/%25%32%65", DoubleEncoding),
            err("/%2541", DoubleEncoding),
            // Fragment and unsplit query.
            err("/a#frag", Fragment),
            err("/a?b=1", Query),
            // Not origin-form.
            err("", NotAbsolute),
            err("*", NotAbsolute),
            err("http://example.com/a", NotAbsolute),
            err("a/b", NotAbsolute),
            err(" /a", NotAbsolute),
            // Length limits: raw input, and output grown by encoding.
            (
                format!("/{}", "a".repeat(MAX_PATH_LEN - 1)),
                Ok(format!("/{}", "a".repeat(MAX_PATH_LEN - 1))),
            ),
            err(&format!("/{}", "a".repeat(MAX_PATH_LEN)), TooLong),
            err(&format!("/{}", "\u{e9}".repeat(3000)), TooLong),
            err(&"/".repeat(100_000), TooLong),
        ]
    }

    #[test]
    fn table() {
        let cases = cases();
        assert!(cases.len() >= 45);
        for (input, expected) in &cases {
            let got = normalize(input).map(|p| p.as_str().to_owned());
            assert_eq!(&got, expected, "input {input:?}");
        }
    }

    #[test]
    fn idempotent_over_table() {
        for (input, _) in cases() {
            if let Ok(once) = normalize(&input) {
                let twice = normalize(once.as_str());
                assert_eq!(twice.as_ref(), Ok(&once), "input {input:?}");
            }
        }
    }

    #[test]
    fn segment_prefix() {
        let p = |s: &str| normalize(s).unwrap();
        assert!(p("/plant-7").starts_with_segment_prefix("/plant-7"));
        assert!(p("/plant-7/").starts_with_segment_prefix("/plant-7"));
        assert!(p("/plant-7/x").starts_with_segment_prefix("/plant-7"));
        assert!(p("/plant-7/x/y").starts_with_segment_prefix("/plant-7/x"));
        assert!(!p("/plant-70").starts_with_segment_prefix("/plant-7"));
        assert!(!p("/plant-7x/y").starts_with_segment_prefix("/plant-7"));
        assert!(!p("/plant").starts_with_segment_prefix("/plant-7"));
        assert!(!p("/other/plant-7").starts_with_segment_prefix("/plant-7"));
        // The root prefix matches everything.
        assert!(p("/").starts_with_segment_prefix("/"));
        assert!(p("/anything/at/all").starts_with_segment_prefix("/"));
        // Dot segments are resolved before matching.
        assert!(!p("/plant-7/../admin").starts_with_segment_prefix("/plant-7"));
        assert!(p("/x/../plant-7/a").starts_with_segment_prefix("/plant-7"));
        // Defensive cases: relative or empty prefixes never match; trailing slashes ignored.
        assert!(!p("/plant-7").starts_with_segment_prefix(""));
        assert!(!p("/plant-7").starts_with_segment_prefix("plant-7"));
        assert!(p("/plant-7/x").starts_with_segment_prefix("/plant-7/"));
        assert!(!p("/plant-70").starts_with_segment_prefix("/plant-7/"));
    }

    #[test]
    fn accessors_and_display() {
        let p = normalize("/a/%7e").unwrap();
        assert_eq!(p.as_str(), "/a/~");
        assert_eq!(p.as_ref(), "/a/~");
        assert_eq!(p.to_string(), "/a/~");
        assert_eq!(
            PathError::EncodedSlash.to_string(),
            "path contains an encoded slash (%2F)"
        );
    }

    #[test]
    fn error_messages_are_lowercase_without_period() {
        use PathError::*;
        let all = [
            NotAbsolute,
            TooLong,
            Backslash,
            EncodedBackslash,
            EncodedSlash,
            NulByte,
            EncodedNulByte,
            ControlChar,
            EncodedControlChar,
            Fragment,
            Query,
            PathParameter,
            EncodedSemicolon,
            InvalidPercentEncoding,
            DoubleEncoding,
            InvalidUtf8,
            DotSegmentAfterDecoding,
            EscapesRoot,
        ];
        for e in all {
            let m = e.to_string();
            assert!(m.starts_with("path "), "{m}");
            assert!(!m.ends_with('.'), "{m}");
            let _: &dyn std::error::Error = &e;
        }
    }

    /// Pseudo-random inputs: must never panic; whatever is accepted must be canonical.
    #[test]
    fn random_inputs_never_panic() {
        // xorshift64: deterministic, no dependencies.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Biased toward the bytes that matter so the interesting paths are actually reached.
        const INTERESTING: &[u8] = b"/./%2eE5cCfF0a;\\#?~ A:@\x00\x7f\xc3\xa9\xc0\xaf";
        let mut accepted = 0;
        for _ in 0..5000 {
            let len = (next() % 40) as usize;
            let mut bytes = Vec::with_capacity(len + 1);
            if next() % 4 != 0 {
                bytes.push(b'/');
            }
            for _ in 0..len {
                let r = next();
                let b = if r % 3 == 0 {
                    (r >> 8) as u8
                } else {
                    let i = ((r >> 8) as usize) % INTERESTING.len();
                    INTERESTING[i]
                };
                bytes.push(b);
            }
            let input = String::from_utf8_lossy(&bytes);
            if let Ok(once) = normalize(&input) {
                accepted += 1;
                let s = once.as_str();
                assert!(s.starts_with('/'), "{input:?} -> {s:?}");
                assert!(s.is_ascii(), "{input:?} -> {s:?}");
                assert!(!s.contains("//"), "{input:?} -> {s:?}");
                assert!(
                    s.split('/').all(|seg| seg != "." && seg != ".."),
                    "{input:?} -> {s:?}"
                );
                assert_eq!(normalize(s).as_ref(), Ok(&once), "input {input:?}");
            }
        }
        // Make sure the generator exercises the accepting path, not only refusals.
        assert!(accepted > 100, "only {accepted} inputs accepted");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// The short cut for paths already in normal form gives what the full pass gives,
        /// on paths built from the bytes that decide it (slashes, dots, escapes, characters
        /// that are encoded or refused) and on arbitrary ones.
        #[test]
        fn the_canonical_short_cut_agrees_with_the_full_pass(
            tail in "[a/.%2eE;~:@ \\\\#?\u{e9}-]{0,24}",
            any in ".{0,24}",
        ) {
            for raw in [format!("/{tail}"), format!("/{any}")] {
                let full = normalize_in_full(&raw);
                if is_canonical(&raw) {
                    proptest::prop_assert_eq!(full.as_ref().map(NormalizedPath::as_str), Ok(raw.as_str()));
                }
                proptest::prop_assert_eq!(normalize(&raw), full);
            }
        }
    }

    /// RFC 3986 §5.2.4 `remove_dot_segments`, as written there, on a path of plain
    /// segments: empty segments stay until a `..` removes them.
    fn rfc3986_remove_dot_segments(path: &str) -> String {
        let mut input = path.to_owned();
        let mut output = String::new();
        while !input.is_empty() {
            if let Some(rest) = input.strip_prefix("../") {
                input = rest.to_owned();
            } else if let Some(rest) = input.strip_prefix("./") {
                input = rest.to_owned();
            } else if input.starts_with("/./") {
                input.replace_range(..3, "/");
            } else if input == "/." {
                input = "/".into();
            } else if input.starts_with("/../") || input == "/.." {
                let cut = if input == "/.." { 3 } else { 4 };
                input.replace_range(..cut, "/");
                let last = output.rfind('/').unwrap_or(0);
                output.truncate(last);
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let start = usize::from(input.starts_with('/'));
                let end = input[start..].find('/').map_or(input.len(), |i| i + start);
                output.push_str(&input[..end]);
                input.replace_range(..end, "");
            }
        }
        output
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Where a path is accepted, reading it the RFC 3986 way (dot segments first, empty
        /// segments kept) and merging slashes afterwards, as an upstream may, gives the
        /// path policy saw.
        #[test]
        fn an_accepted_path_means_the_same_to_a_reader_that_keeps_empty_segments(
            segments in proptest::collection::vec(
                proptest::sample::select(vec!["a", "b", "", ".", ".."]),
                0..10,
            ),
        ) {
            let raw = format!("/{}", segments.join("/"));
            if let Ok(ours) = normalize(&raw) {
                let rfc = rfc3986_remove_dot_segments(&raw);
                let mut merged = String::new();
                for c in rfc.chars() {
                    if !(c == '/' && merged.ends_with('/')) {
                        merged.push(c);
                    }
                }
                if merged.is_empty() {
                    merged.push('/');
                }
                proptest::prop_assert_eq!(ours.as_str(), merged.as_str(), "raw {}", raw);
            }
        }
    }

    #[test]
    fn the_short_cut_takes_only_paths_in_normal_form() {
        for raw in ["/", "/plant-7/state", "/a/", "/a:b/@c/~d_e.f", "/a/..b/.c/"] {
            assert!(is_canonical(raw), "{raw}");
        }
        for raw in [
            "//", "/a//b", "/./a", "/a/..", "/a/../", "/%41", "/a b", "/a;b", "/\u{e9}",
        ] {
            assert!(!is_canonical(raw), "{raw}");
        }
    }
}
