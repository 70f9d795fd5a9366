//! The API token format: `twt_` + 43 base62 characters of randomness (256 bits) + a 6
//! character base62 CRC-32 of everything before it. The checksum lets secret scanners
//! recognise a real token and lets the gateway refuse a mistyped or forged one before any
//! storage lookup. Only the SHA-256 of a token is stored.

use std::fmt;

pub const PREFIX: &str = "twt_";
const BODY_LEN: usize = 43;
const CHECK_LEN: usize = 6;
pub const TOKEN_LEN: usize = PREFIX.len() + BODY_LEN + CHECK_LEN;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a presented bearer is not a usable twinward token, decided without storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("only twinward API tokens (twt_...) are accepted here")]
    NotTwinward,
    #[error("malformed twinward API token")]
    Malformed,
    #[error("twinward API token checksum does not match")]
    BadChecksum,
}

/// A freshly generated token. Its text is shown once and never stored.
pub struct NewToken {
    pub text: String,
    pub hash: TokenHash,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("hash", &self.hash)
            .finish()
    }
}

/// SHA-256 of the whole token text: the only form storage keeps.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first bytes suffice to tell tokens apart in logs.
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

/// Generates a token from 32 random bytes.
pub fn generate(random: [u8; 32]) -> NewToken {
    let mut text = String::with_capacity(TOKEN_LEN);
    text.push_str(PREFIX);
    text.push_str(&base62_fixed(&random, BODY_LEN));
    let check = crc32fast::hash(text.as_bytes());
    text.push_str(&base62_fixed(&check.to_be_bytes(), CHECK_LEN));
    let hash = hash_of(&text);
    NewToken { text, hash }
}

/// Checks a presented bearer's shape and checksum and returns its hash for lookup.
pub fn parse(presented: &str) -> Result<TokenHash, TokenFormatError> {
    if !presented.starts_with(PREFIX) {
        return Err(TokenFormatError::NotTwinward);
    }
    if presented.len() != TOKEN_LEN
        || !presented
            .bytes()
            .skip(PREFIX.len())
            .all(|b| b.is_ascii_alphanumeric())
    {
        return Err(TokenFormatError::Malformed);
    }
    let (head, check) = presented.split_at(TOKEN_LEN - CHECK_LEN);
    let mut expected = [0u8; CHECK_LEN];
    base62_into(
        &crc32fast::hash(head.as_bytes()).to_be_bytes(),
        &mut expected,
    );
    if expected != check.as_bytes() {
        return Err(TokenFormatError::BadChecksum);
    }
    Ok(hash_of(presented))
}

/// True when a bearer looks like a JWT (three base64url parts), e.g. an IdP access token.
pub fn looks_like_jwt(presented: &str) -> bool {
    let mut parts = 0;
    for p in presented.split('.') {
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        {
            return false;
        }
        parts += 1;
    }
    parts == 3 || parts == 5
}

/// A short, non-secret label for lists: the first characters after the prefix.
pub fn display_prefix(text: &str) -> String {
    text.chars().take(PREFIX.len() + 6).collect()
}

fn hash_of(text: &str) -> TokenHash {
    TokenHash(crate::digest::sha256(text.as_bytes()))
}

/// Big-endian base62 of `bytes`, left-padded with '0' to exactly `width` digits.
/// Big-endian `bytes` as exactly `out.len()` base-62 digits (most significant first).
fn base62_into(bytes: &[u8; 4], out: &mut [u8]) {
    let mut num = *bytes;
    for slot in out.iter_mut().rev() {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = ALPHABET.get(rem as usize).copied().unwrap_or(b'0');
    }
}

fn base62_fixed(bytes: &[u8], width: usize) -> String {
    let mut num: Vec<u8> = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    while digits.len() < width {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        digits.push(ALPHABET.get(rem as usize).copied().unwrap_or(b'0'));
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_digits_match_the_general_encoding() {
        for v in [0u32, 1, 61, 62, 0xdead_beef, u32::MAX] {
            let mut out = [0u8; CHECK_LEN];
            base62_into(&v.to_be_bytes(), &mut out);
            assert_eq!(out, base62_fixed(&v.to_be_bytes(), CHECK_LEN).as_bytes());
        }
    }

    #[test]
    fn generated_tokens_parse_and_hash_consistently() {
        let t = generate([7u8; 32]);
        assert_eq!(t.text.len(), TOKEN_LEN);
        assert!(t.text.starts_with("twt_"));
        assert_eq!(parse(&t.text), Ok(t.hash));
        let other = generate([8u8; 32]);
        assert_ne!(other.text, t.text);
        assert_ne!(other.hash, t.hash);
    }

    #[test]
    fn max_random_value_fits_the_width() {
        let t = generate([0xff; 32]);
        assert_eq!(t.text.len(), TOKEN_LEN);
        assert!(parse(&t.text).is_ok());
    }

    #[test]
    fn any_single_character_change_breaks_the_checksum() {
        let t = generate([42u8; 32]);
        for i in PREFIX.len()..TOKEN_LEN {
            let mut b = t.text.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let s = String::from_utf8(b).unwrap();
            assert_eq!(
                parse(&s),
                Err(TokenFormatError::BadChecksum),
                "position {i}"
            );
        }
    }

    #[test]
    fn foreign_and_malformed_bearers_are_refused() {
        assert_eq!(
            parse("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
            Err(TokenFormatError::NotTwinward)
        );
        assert_eq!(parse("ghp_abc"), Err(TokenFormatError::NotTwinward));
        assert_eq!(parse("twt_short"), Err(TokenFormatError::Malformed));
        let t = generate([1u8; 32]).text;
        assert_eq!(parse(&format!("{t}x")), Err(TokenFormatError::Malformed));
        let with_symbol = format!("{}!{}", &t[..10], &t[11..]);
        assert_eq!(parse(&with_symbol), Err(TokenFormatError::Malformed));
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt(&t));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = generate([3u8; 32]);
        assert!(!format!("{t:?}").contains(&t.text[4..]));
    }
}
