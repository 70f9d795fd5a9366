//! A twin's chunked body, decoded as it arrives and written re-chunked for the client, so
//! neither chunk extensions nor trailers reach it.
//!
//! The decoder reads exactly RFC 9112 §7.1 and refuses everything else. Where the twin and
//! the gateway could read a body's end differently (a size line without digits, a bare LF
//! or CR, a control character inside an extension, whitespace that the grammar does not
//! allow, a malformed trailer line), the rest of the twin's bytes would be read as the next
//! response on the pooled connection: another client's answer. Such a body is a bad
//! response (502, or a closed connection once the head is out) and the connection is not
//! reused. Its verdict does not depend on how the bytes were split into reads.

use super::response::BadResponse;
use super::write::{push, push_chunk, LAST_CHUNK};

/// A chunk-size line (digits and extensions) or a trailer line longer than this is refused.
const MAX_LINE: usize = 4096;
/// The whole trailer section, which is dropped, is refused past this.
const MAX_TRAILERS: usize = 16 * 1024;
/// Hex digits in a chunk size: 15 keep every size below 2^60, far from overflow.
const MAX_SIZE_DIGITS: usize = 15;

#[derive(Debug, Default)]
pub struct Dechunk {
    state: State,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// What is at the start of the input, when it is a whole line.
enum Line {
    /// No CRLF yet, and nothing wrong so far.
    Partial,
    /// A line of this many bytes, CRLF included.
    Complete(usize),
}

impl Dechunk {
    /// Consumes what it can of `input`, writing the data re-chunked (and the last chunk,
    /// at the end) into `out`; returns how many bytes it consumed. Bytes of an unfinished
    /// size line or trailer line stay unconsumed until more arrive.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BadResponse> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => return Ok(at),
                State::Size => match size_line(rest)? {
                    None => return Ok(at),
                    Some((n, 0)) => {
                        at += n;
                        self.state = State::Trailers;
                    }
                    Some((n, size)) => {
                        at += n;
                        self.state = State::Data(size);
                    }
                },
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    push_chunk(out, &rest[..take]);
                    at += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => {
                    // Checked a byte at a time, so that a wrong first byte is refused at
                    // once whatever the split.
                    match rest {
                        [] | [b'\r'] => return Ok(at),
                        [b'\r', b'\n', ..] => {
                            at += 2;
                            self.state = State::Size;
                        }
                        _ => return Err(BadResponse::Chunk),
                    }
                }
                State::Trailers => {
                    let n = match trailer_line(rest)? {
                        Line::Partial => {
                            if self.trailer_bytes + rest.len() > MAX_TRAILERS {
                                return Err(BadResponse::Chunk);
                            }
                            return Ok(at);
                        }
                        Line::Complete(n) => n,
                    };
                    at += n;
                    self.trailer_bytes += n;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(BadResponse::Chunk);
                    }
                    if n == 2 {
                        push(out, LAST_CHUNK);
                        self.state = State::Done;
                    }
                }
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

/// `chunk-size [ chunk-ext ] CRLF` at the start of `buf`: its length and the size, `None`
/// while incomplete. `chunk-size = 1*HEXDIG`; `chunk-ext = *( BWS ";" BWS name [ BWS "="
/// BWS value ] )` with `value = token / quoted-string`. The extensions are dropped, so
/// their bytes are only held to the grammar's alphabet: no control character but HTAB,
/// and nothing after the digits but whitespace leading to `;`.
fn size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, BadResponse> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > MAX_SIZE_DIGITS {
        return Err(BadResponse::Chunk);
    }
    if digits == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err(BadResponse::Chunk);
    }
    let mut size = 0u64;
    for &d in &buf[..digits] {
        // At most 15 hex digits: no overflow.
        size = size << 4 | u64::from(hex_value(d));
    }
    let rest = &buf[digits..];
    // Whitespace after the digits is allowed only before an extension.
    let blank = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let line_end = match rest[blank..].first() {
        None => None,
        Some(b';') => {
            let ext = &rest[blank..];
            ext.iter().position(|&b| !text_byte(b)).map(|i| blank + i)
        }
        Some(_) if blank == 0 => Some(0),
        Some(_) => return Err(BadResponse::Chunk),
    };
    let Some(end) = line_end else {
        return unfinished(buf.len(), None);
    };
    let len = digits + end;
    match &rest[end..] {
        [b'\r'] => unfinished(len + 1, None),
        [b'\r', b'\n', ..] if len + 2 <= MAX_LINE => Ok(Some((len + 2, size))),
        _ => Err(BadResponse::Chunk),
    }
}

/// A line not finished after `seen` bytes: `partial` while it may still end in time, else
/// refused.
fn unfinished<T>(seen: usize, partial: T) -> Result<T, BadResponse> {
    if seen >= MAX_LINE {
        Err(BadResponse::Chunk)
    } else {
        Ok(partial)
    }
}

fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

/// Bytes a chunk extension or a trailer value may hold: visible ASCII, space, HTAB and
/// obs-text. No CR, LF or other control character.
fn text_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// A trailer line: the empty line (CRLF) that ends the body, or a field line
/// `name ":" value CRLF` with a token for a name and no control character but HTAB in the
/// value.
fn trailer_line(buf: &[u8]) -> Result<Line, BadResponse> {
    let name = buf.iter().take_while(|&&b| token_byte(b)).count();
    if name == buf.len() {
        return unfinished(buf.len(), Line::Partial);
    }
    let value_start = match buf[name] {
        b':' if name > 0 => name + 1,
        b'\r' if name == 0 => {
            return match buf.get(1) {
                None => Ok(Line::Partial),
                Some(b'\n') => Ok(Line::Complete(2)),
                Some(_) => Err(BadResponse::Chunk),
            };
        }
        _ => return Err(BadResponse::Chunk),
    };
    let value = &buf[value_start..];
    let Some(end) = value.iter().position(|&b| !text_byte(b)) else {
        return unfinished(buf.len(), Line::Partial);
    };
    let len = value_start + end;
    match &value[end..] {
        [b'\r'] => unfinished(len + 1, Line::Partial),
        [b'\r', b'\n', ..] if len + 2 <= MAX_LINE => Ok(Line::Complete(len + 2)),
        _ => Err(BadResponse::Chunk),
    }
}

/// `tchar` (RFC 9110 §5.6.2).
fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What feeding `input` in the given pieces came to: refused, or the data decoded, the
    /// bytes consumed and whether the body ended.
    #[derive(Debug, PartialEq, Eq)]
    enum Verdict {
        Refused,
        Read {
            data: Vec<u8>,
            consumed: usize,
            done: bool,
        },
    }

    /// Feeds `input` as the relay does: each read appended to what is still unconsumed.
    /// `cuts` are the read boundaries.
    fn feed_in_pieces(input: &[u8], cuts: &[usize]) -> Verdict {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.push(input.len());
        cuts.sort_unstable();
        let mut d = Dechunk::default();
        let mut out = Vec::new();
        let mut consumed = 0;
        for cut in cuts {
            if cut < consumed {
                continue;
            }
            match d.feed(&input[consumed..cut], &mut out) {
                Ok(n) => consumed += n,
                Err(_) => return Verdict::Refused,
            }
            if d.is_done() {
                break;
            }
        }
        Verdict::Read {
            data: unchunk(&out, d.is_done()),
            consumed,
            done: d.is_done(),
        }
    }

    /// The data of what the decoder wrote, checking that it is canonical chunked encoding:
    /// lower-case hex sizes without extensions, the last chunk only at the end.
    fn unchunk(mut body: &[u8], done: bool) -> Vec<u8> {
        let mut data = Vec::new();
        loop {
            if body.is_empty() && !done {
                return data;
            }
            let nl = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("size line");
            let digits = &body[..nl];
            assert!(!digits.is_empty() && digits.iter().all(|b| b"0123456789abcdef".contains(b)));
            let size = usize::from_str_radix(std::str::from_utf8(digits).unwrap(), 16).unwrap();
            body = &body[nl + 2..];
            if size == 0 {
                assert!(done, "a last chunk before the end");
                assert_eq!(body, b"\r\n");
                return data;
            }
            data.extend_from_slice(&body[..size]);
            assert_eq!(&body[size..size + 2], b"\r\n");
            body = &body[size + 2..];
        }
    }

    /// RFC 9112 §7.1, read over a whole buffer, line by line: the data and the length of a
    /// complete chunked body at the start of `input`, or `None` (malformed or incomplete).
    /// Written apart from the decoder, to be compared with it.
    fn reference(input: &[u8]) -> Option<(usize, Vec<u8>)> {
        fn line(input: &[u8], at: usize) -> Option<&[u8]> {
            let len = input[at..].windows(2).position(|w| w == b"\r\n")?;
            Some(&input[at..at + len])
        }
        let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
        let text = |b: &u8| *b == b'\t' || (0x20..0x7f).contains(b) || *b >= 0x80;
        let mut at = 0;
        let mut data = Vec::new();
        loop {
            let l = line(input, at)?;
            at += l.len() + 2;
            let hex = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if hex == 0 || hex > 15 {
                return None;
            }
            // Nothing after the digits, or `;` after optional blanks and then text.
            let ext = &l[hex..];
            let blank = ext
                .iter()
                .take_while(|b| **b == b' ' || **b == b'\t')
                .count();
            if !ext.is_empty() && (ext.get(blank) != Some(&b';') || !ext.iter().all(text)) {
                return None;
            }
            let size = usize::from_str_radix(std::str::from_utf8(&l[..hex]).ok()?, 16).ok()?;
            if size == 0 {
                break;
            }
            let chunk = input.get(at..at.checked_add(size)?)?;
            data.extend_from_slice(chunk);
            at += size;
            if input.get(at..at + 2)? != b"\r\n" {
                return None;
            }
            at += 2;
        }
        loop {
            let l = line(input, at)?;
            at += l.len() + 2;
            if l.is_empty() {
                return Some((at, data));
            }
            let name = l.iter().take_while(|b| tchar(b)).count();
            if name == 0 || l.get(name) != Some(&b':') || !l[name + 1..].iter().all(text) {
                return None;
            }
        }
    }

    /// A well-formed chunked body: its encoding and its data.
    fn body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let chunk = (
            proptest::collection::vec(any::<u8>(), 1..40),
            0usize..3,
            any::<bool>(),
            prop::sample::select(vec![
                "",
                ";a",
                ";a=b",
                " ; a = \"q;\\\"x\"",
                "\t;x;y=1",
                ";\u{e9}",
            ]),
        );
        let trailer =
            prop::sample::select(vec!["X-T: 1", "a:", "Server-Timing: db;dur=53", "x:\tv v"]);
        (
            proptest::collection::vec(chunk, 0..5),
            prop::sample::select(vec!["0", "000"]),
            prop::sample::select(vec!["", ";end"]),
            proptest::collection::vec(trailer, 0..3),
        )
            .prop_map(|(chunks, last, last_ext, trailers)| {
                let mut enc = Vec::new();
                let mut data = Vec::new();
                for (bytes, zeros, upper, ext) in chunks {
                    let size = format!("{}{:x}", "0".repeat(zeros), bytes.len());
                    let size = if upper { size.to_uppercase() } else { size };
                    enc.extend_from_slice(size.as_bytes());
                    enc.extend_from_slice(ext.as_bytes());
                    enc.extend_from_slice(b"\r\n");
                    enc.extend_from_slice(&bytes);
                    enc.extend_from_slice(b"\r\n");
                    data.extend_from_slice(&bytes);
                }
                enc.extend_from_slice(format!("{last}{last_ext}\r\n").as_bytes());
                for t in trailers {
                    enc.extend_from_slice(t.as_bytes());
                    enc.extend_from_slice(b"\r\n");
                }
                enc.extend_from_slice(b"\r\n");
                (enc, data)
            })
    }

    /// A well-formed body with a few bytes changed, inserted or removed: mostly malformed
    /// bodies close to well-formed ones, where lenient readers differ.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        let edit = (
            0usize..3,
            any::<prop::sample::Index>(),
            prop::sample::select(b"\r\n \t;:=\"0aF\x00\x7f\x0bx".to_vec()),
        );
        (body(), proptest::collection::vec(edit, 1..3)).prop_map(|((mut enc, _), edits)| {
            for (kind, at, byte) in edits {
                let i = at.index(enc.len() + 1);
                match kind {
                    0 => enc.insert(i, byte),
                    1 if i < enc.len() => {
                        enc.remove(i);
                    }
                    _ if i < enc.len() => enc[i] = byte,
                    _ => enc.push(byte),
                }
            }
            enc
        })
    }

    fn cuts() -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(any::<usize>(), 0..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn well_formed_bodies_decode_to_their_data_in_any_split((enc, data) in body(), cuts in cuts()) {
            let mut input = enc.clone();
            input.extend_from_slice(b"NEXT");
            let v = feed_in_pieces(&input, &cuts);
            prop_assert_eq!(v, Verdict::Read { data, consumed: enc.len(), done: true });
        }

        #[test]
        fn the_verdict_does_not_depend_on_how_the_bytes_arrive(input in mutated(), cuts in cuts()) {
            prop_assert_eq!(feed_in_pieces(&input, &cuts), feed_in_pieces(&input, &[]));
        }

        #[test]
        fn a_body_ends_exactly_where_the_grammar_says(input in mutated()) {
            let ours = match feed_in_pieces(&input, &[]) {
                Verdict::Read { data, consumed, done: true } => Some((consumed, data)),
                _ => None,
            };
            prop_assert_eq!(ours, reference(&input), "{:?}", String::from_utf8_lossy(&input));
        }

        #[test]
        fn any_bytes_are_decoded_or_refused_without_panicking(
            input in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in cuts(),
        ) {
            let v = feed_in_pieces(&input, &cuts);
            if let Verdict::Read { consumed, .. } = v {
                prop_assert!(consumed <= input.len());
            }
        }
    }

    #[test]
    fn chunked_bodies_are_rechunked_in_any_split() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer-A: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut d = Dechunk::default();
            let mut out = Vec::new();
            let mut pending = body[..split].to_vec();
            let used = d.feed(&pending, &mut out).unwrap();
            pending.drain(..used);
            pending.extend_from_slice(&body[split..]);
            let used = d.feed(&pending, &mut out).unwrap();
            assert!(d.is_done(), "split {split}");
            assert_eq!(&pending[used..], b"NEXT");
            let text = String::from_utf8(out.clone()).unwrap();
            assert!(!text.contains("ext") && !text.contains("Trailer"), "{text}");
            assert!(text.ends_with("0\r\n\r\n"));
            let plain = String::from_utf8(unchunk(&out, true)).unwrap();
            assert_eq!(plain, "hello world");
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for body in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"ffffffffffffffffff\r\n",
            // What lenient readers accept and read differently:
            b"\r\n",                 // a size line without digits
            b";ext\r\n",             // the same, with an extension
            b"5;a\nhello\r\n",       // a bare LF inside an extension
            b"5;a\rb\r\nhello\r\n",  // a bare CR inside an extension
            b"5;a\x00\r\nhello\r\n", // a control character inside an extension
            b"5\nhello\r\n",         // a size line ended by a bare LF
            b"5 \r\nhello\r\n",      // blanks after the size without an extension
            b"5x\r\nhello\r\n",      // something else after the digits
            b"-5\r\n",
            b"0x5\r\nhello\r\n",
            b"5\r\nhello\n",                   // a bare LF after the data
            b"0\r\n\n",                        // a bare LF ending the body
            b"0\r\nX-T: 1\n\r\n",              // a bare LF ending a trailer line
            b"0\r\nX-T : 1\r\n\r\n",           // a blank before a trailer's colon
            b"0\r\n: 1\r\n\r\n",               // a trailer without a name
            b"0\r\nX-T 1\r\n\r\n",             // a trailer without a colon
            b"0\r\nX-T: 1\r\n folded\r\n\r\n", // an obsolete line folding
            b"0\r\nX-T: a\x7fb\r\n\r\n",       // a control character in a trailer
        ] {
            let mut d = Dechunk::default();
            assert_eq!(
                d.feed(body, &mut Vec::new()).unwrap_err(),
                BadResponse::Chunk,
                "{:?}",
                body
            );
        }
        let mut d = Dechunk::default();
        let mut long = b"1;".to_vec();
        long.resize(MAX_LINE + 1, b'x');
        assert!(d.feed(&long, &mut Vec::new()).is_err());
    }
}
