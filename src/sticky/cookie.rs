//! Reading the `Cookie` request header without allocating.
//!
//! A request may carry several `Cookie` header lines (HTTP/2 and HTTP/3 split
//! them, RFC 9113 §8.2.3, and some clients do so over HTTP/1.1), each holding
//! `name=value` pairs separated by `;` (RFC 6265 §4.2.1). Clients and
//! intermediaries also send garbage; the parser is lenient the way browsers
//! and servers are:
//!
//! * whitespace around names and values is ignored;
//! * a pair without `=` is skipped (it names no cookie);
//! * a value wrapped in double quotes is returned without them (RFC 6265
//!   allows `DQUOTE *cookie-octet DQUOTE`);
//! * bytes that are not UTF-8 are passed through: names and values are byte
//!   slices.

use http::header::{GetAll, ValueIter, COOKIE};
use http::{HeaderMap, HeaderValue};

/// The `name=value` pairs of every `Cookie` header of a request, in order.
///
/// ```
/// use http::HeaderMap;
/// use tower_lb::sticky::Cookies;
///
/// let mut headers = HeaderMap::new();
/// headers.append("cookie", "theme=dark; sid=\"abc\"".parse().unwrap());
/// headers.append("cookie", "lang=fr".parse().unwrap());
///
/// let pairs: Vec<_> = Cookies::new(&headers).collect();
/// assert_eq!(pairs, [
///     (&b"theme"[..], &b"dark"[..]),
///     (&b"sid"[..], &b"abc"[..]),
///     (&b"lang"[..], &b"fr"[..]),
/// ]);
/// assert_eq!(Cookies::new(&headers).get(b"sid"), Some(&b"abc"[..]));
/// ```
#[derive(Debug)]
pub struct Cookies<'h> {
    lines: ValueIter<'h, HeaderValue>,
    rest: &'h [u8],
}

impl<'h> Cookies<'h> {
    /// The cookies of `headers`.
    pub fn new(headers: &'h HeaderMap) -> Self {
        let all: GetAll<'h, HeaderValue> = headers.get_all(COOKIE);
        Cookies {
            lines: all.into_iter(),
            rest: &[],
        }
    }

    /// The value of the first cookie called `name`.
    pub fn get(self, name: &[u8]) -> Option<&'h [u8]> {
        self.named(name).next()
    }

    /// The values of every cookie called `name`, in order: a client may hold
    /// several cookies of one name (for different paths or domains) and
    /// sends them all.
    ///
    /// Faster than filtering the pairs: other cookies are skipped without
    /// being parsed.
    pub fn named(self, name: &[u8]) -> Named<'h, '_> {
        Named {
            lines: self.lines,
            rest: self.rest,
            name,
        }
    }
}

/// The values of the cookies of one name; see [`Cookies::named`].
#[derive(Debug)]
pub struct Named<'h, 'n> {
    lines: ValueIter<'h, HeaderValue>,
    rest: &'h [u8],
    name: &'n [u8],
}

impl<'h> Iterator for Named<'h, '_> {
    type Item = &'h [u8];

    fn next(&mut self) -> Option<&'h [u8]> {
        loop {
            if self.rest.is_empty() {
                self.rest = self.lines.next()?.as_bytes();
            }
            let (segment, rest) = split_segment(self.rest);
            self.rest = rest;
            // Most segments are other cookies: reject them on their first
            // bytes before parsing.
            let start = segment
                .iter()
                .position(|&b| b != b' ' && b != b'\t')
                .unwrap_or(segment.len());
            if !starts_with(&segment[start..], self.name) {
                continue;
            }
            if let Some((name, value)) = parse_pair(segment) {
                if name.len() == self.name.len() && starts_with(name, self.name) {
                    return Some(value);
                }
            }
        }
    }
}

impl<'h> Iterator for Cookies<'h> {
    type Item = (&'h [u8], &'h [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                self.rest = self.lines.next()?.as_bytes();
            }
            let (segment, rest) = split_segment(self.rest);
            self.rest = rest;
            if let Some(pair) = parse_pair(segment) {
                return Some(pair);
            }
        }
    }
}

/// `haystack.starts_with(prefix)`, inlined: names are short, and a call to
/// `memcmp` per cookie costs more than the comparison.
#[inline]
fn starts_with(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack.iter().zip(prefix).all(|(a, b)| a == b)
}

/// Splits off everything up to the first `;`.
fn split_segment(line: &[u8]) -> (&[u8], &[u8]) {
    match find_byte(line, b';') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}

/// The position of the first `needle` in `haystack`, eight bytes at a time.
fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = haystack.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        // A byte equal to the needle becomes zero; the lowest flagged byte
        // of `(w - LO) & !w & HI` is the first zero byte.
        let w = u64::from_le_bytes(bytes) ^ pattern;
        let zeros = w.wrapping_sub(LO) & !w & HI;
        if zeros != 0 {
            return Some(offset + (zeros.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    haystack[offset..]
        .iter()
        .position(|&b| b == needle)
        .map(|i| offset + i)
}

/// `name=value` with whitespace trimmed and quotes removed; `None` for a
/// segment without `=` or with an empty name.
fn parse_pair(segment: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = segment.iter().position(|&b| b == b'=')?;
    let name = trim(&segment[..eq]);
    if name.is_empty() {
        return None;
    }
    let mut value = trim(&segment[eq + 1..]);
    if let [b'"', inner @ .., b'"'] = value {
        value = inner;
    }
    Some((name, value))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Removes every cookie called `name` from the `Cookie` headers, keeping the
/// other pairs (and any garbage) in order, joined into one `Cookie` line
/// with `"; "` (as RFC 9113 §8.2.3 requires before a request goes on over
/// HTTP/1.1: HTTP/2 clients may split cookies over several lines, and many
/// HTTP/1 servers read only the first). No pair left: no `Cookie` header.
/// Returns whether anything was removed. Allocates only when it removes.
pub(crate) fn remove_cookie(headers: &mut HeaderMap, name: &[u8]) -> bool {
    if !Cookies::new(headers).any(|(n, _)| n == name) {
        return false;
    }
    let total: usize = headers.get_all(COOKIE).iter().map(|l| l.len() + 2).sum();
    let mut out: Vec<u8> = Vec::with_capacity(total);
    for line in headers.get_all(COOKIE) {
        let mut rest = line.as_bytes();
        while !rest.is_empty() {
            let (segment, tail) = split_segment(rest);
            rest = tail;
            let trimmed = trim(segment);
            if trimmed.is_empty() || parse_pair(segment).is_some_and(|(n, _)| n == name) {
                continue;
            }
            if !out.is_empty() {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(trimmed);
        }
    }
    headers.remove(COOKIE);
    // The bytes come from valid header values, joined by "; ", so this
    // cannot fail; if it somehow did, no line is kept rather than one with
    // the sticky cookie in it.
    if !out.is_empty() {
        if let Ok(value) = HeaderValue::from_bytes(&out) {
            headers.insert(COOKIE, value);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(lines: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(COOKIE, HeaderValue::from_bytes(line).unwrap());
        }
        h
    }

    fn lines(h: &HeaderMap) -> Vec<&str> {
        h.get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn reads_pairs_across_several_cookie_headers_in_order() {
        let h = headers(&[b"a=1; b=2", b"c=3", b"b=4"]);
        let pairs: Vec<_> = Cookies::new(&h).collect();
        assert_eq!(
            pairs,
            [
                (&b"a"[..], &b"1"[..]),
                (b"b", b"2"),
                (b"c", b"3"),
                (b"b", b"4")
            ]
        );
        assert_eq!(Cookies::new(&h).get(b"b"), Some(&b"2"[..]));
        assert_eq!(
            Cookies::new(&h).named(b"b").collect::<Vec<_>>(),
            [&b"2"[..], b"4"]
        );
        assert_eq!(Cookies::new(&h).get(b"z"), None);
    }

    #[test]
    fn tolerates_whitespace_quotes_empty_segments_and_garbage() {
        let h = headers(&[b" ;; a = 1 ;\tq=\"x y\"; junk; =nameless; e=; \"=\"; b=2;"]);
        let pairs: Vec<_> = Cookies::new(&h).collect();
        assert_eq!(
            pairs,
            [
                (&b"a"[..], &b"1"[..]),
                (b"q", b"x y"),
                (b"e", b""),
                (b"\"", b"\""),
                (b"b", b"2")
            ]
        );
    }

    #[test]
    fn a_lone_quote_is_kept_as_the_value() {
        let h = headers(&[b"a=\"; b=\"\""]);
        let pairs: Vec<_> = Cookies::new(&h).collect();
        assert_eq!(pairs, [(&b"a"[..], &b"\""[..]), (b"b", b"")]);
    }

    #[test]
    fn names_are_case_sensitive_and_exact() {
        let h = headers(&[b"SID=1; sid2=2; sid=3"]);
        assert_eq!(Cookies::new(&h).get(b"sid"), Some(&b"3"[..]));
    }

    #[test]
    fn non_utf8_bytes_pass_through() {
        let h = headers(&[b"a=\xff\xfe; b=2"]);
        assert_eq!(Cookies::new(&h).get(b"a"), Some(&b"\xff\xfe"[..]));
        assert_eq!(Cookies::new(&h).get(b"b"), Some(&b"2"[..]));
    }

    #[test]
    fn removing_a_cookie_keeps_the_others_in_order() {
        let mut h = headers(&[b"a=1; lb=x; b=2", b"lb=y", b"c=3;lb=z"]);
        assert!(remove_cookie(&mut h, b"lb"));
        assert_eq!(lines(&h), ["a=1; b=2; c=3"]);
        assert!(!remove_cookie(&mut h, b"lb"));
        assert_eq!(lines(&h), ["a=1; b=2; c=3"]);
    }

    #[test]
    fn removing_the_only_cookie_removes_the_header() {
        let mut h = headers(&[b"lb=x"]);
        h.insert("x-other", HeaderValue::from_static("kept"));
        assert!(remove_cookie(&mut h, b"lb"));
        assert!(h.get(COOKIE).is_none());
        assert_eq!(h.get("x-other").unwrap(), "kept");
    }

    #[test]
    fn removing_keeps_garbage_and_similar_names() {
        let mut h = headers(&[b"junk; lb2=1; lb = 2 ; xlb=3"]);
        assert!(remove_cookie(&mut h, b"lb"));
        assert_eq!(lines(&h), ["junk; lb2=1; xlb=3"]);
    }

    #[test]
    fn named_skips_prefixes_of_the_name() {
        let h = headers(&[b"lbx=1; lb =2; \tlb=3"]);
        assert_eq!(
            Cookies::new(&h).named(b"lb").collect::<Vec<_>>(),
            [&b"2"[..], b"3"]
        );
    }

    proptest! {
        #[test]
        fn find_byte_agrees_with_position(hay in proptest::collection::vec(prop_oneof![Just(b';'), any::<u8>()], 0..40)) {
            prop_assert_eq!(find_byte(&hay, b';'), hay.iter().position(|&b| b == b';'));
        }

        #[test]
        fn named_agrees_with_filtering_the_pairs(
            lines in proptest::collection::vec("[ab =;\"\t]{0,24}", 0..3),
        ) {
            let mut h = HeaderMap::new();
            for line in &lines {
                h.append(COOKIE, HeaderValue::from_str(line).unwrap());
            }
            for name in [&b"a"[..], b"ab", b"b"] {
                let named: Vec<_> = Cookies::new(&h).named(name).collect();
                let filtered: Vec<_> = Cookies::new(&h).filter(|(n, _)| *n == name).map(|(_, v)| v).collect();
                prop_assert_eq!(named, filtered);
            }
        }

        #[test]
        fn any_header_bytes_parse_without_panicking(
            raw in proptest::collection::vec(
                prop_oneof![Just(b';'), Just(b'='), Just(b'"'), Just(b' '), Just(b'a'), 0x21u8..0x7f, 0x80u8..=0xff],
                0..64,
            ),
        ) {
            if let Ok(value) = HeaderValue::from_bytes(&raw) {
                let mut h = HeaderMap::new();
                h.append(COOKIE, value.clone());
                h.append(COOKIE, value);
                for (name, val) in Cookies::new(&h) {
                    prop_assert!(!name.is_empty());
                    prop_assert!(!name.contains(&b';') && !val.contains(&b';'));
                }
                remove_cookie(&mut h, b"a");
                prop_assert!(Cookies::new(&h).all(|(n, _)| n != b"a"));
            }
        }

        #[test]
        fn removal_keeps_every_other_pair(
            pairs in proptest::collection::vec(("[a-c]{1,2}", "[a-z0-9]{0,4}"), 0..8),
        ) {
            let line = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ");
            let mut h = HeaderMap::new();
            if !line.is_empty() {
                h.append(COOKIE, HeaderValue::from_str(&line).unwrap());
            }
            remove_cookie(&mut h, b"a");
            let left: Vec<(Vec<u8>, Vec<u8>)> =
                Cookies::new(&h).map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
                .iter()
                .filter(|(n, _)| n != "a")
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            prop_assert_eq!(left, expected);
        }
    }
}
