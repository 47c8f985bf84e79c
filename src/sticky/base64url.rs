//! Base64url without padding (RFC 4648 §5), the alphabet of cookie values.
//!
//! Decoding is strict so that every token has exactly one spelling: a length
//! of `4k + 1`, a byte outside the alphabet, padding, or non-zero bits left
//! over in the last character are all rejected.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Marks a byte outside the alphabet in the decoding tables: no sextet
/// shifted into place reaches this bit.
const INVALID: u32 = 1 << 31;

/// The sextet of every byte, shifted to where it lands in the 24 bits of a
/// four-character quantum: one table per position, so that decoding a
/// quantum is four loads and three ORs, and the OR of everything decoded
/// has [`INVALID`] set if any byte was outside the alphabet.
const fn sextets_shifted_by(shift: u32) -> [u32; 256] {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = (i as u32) << shift;
        i += 1;
    }
    table
}

// Statics, not consts: one copy of each table in the binary, never rebuilt
// on the stack.
static FIRST: [u32; 256] = sextets_shifted_by(18);
static SECOND: [u32; 256] = sextets_shifted_by(12);
static THIRD: [u32; 256] = sextets_shifted_by(6);
static FOURTH: [u32; 256] = sextets_shifted_by(0);

/// The 24 bits of one quantum, with [`INVALID`] set if a byte was foreign.
#[inline(always)]
fn quantum(c: &[u8; 4]) -> u32 {
    FIRST[usize::from(c[0])]
        | SECOND[usize::from(c[1])]
        | THIRD[usize::from(c[2])]
        | FOURTH[usize::from(c[3])]
}

/// The length of the encoding of `n` bytes.
pub(crate) const fn encoded_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Appends the encoding of `input` to `out`.
pub(crate) fn encode_into(input: &[u8], out: &mut String) {
    out.reserve(encoded_len(input.len()));
    let mut chunks = input.chunks_exact(3);
    for c in &mut chunks {
        let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        for shift in [18, 12, 6, 0] {
            out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
        }
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.push(char::from(ALPHABET[(n >> 18) as usize & 63]));
            out.push(char::from(ALPHABET[(n >> 12) as usize & 63]));
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            out.push(char::from(ALPHABET[(n >> 18) as usize & 63]));
            out.push(char::from(ALPHABET[(n >> 12) as usize & 63]));
            out.push(char::from(ALPHABET[(n >> 6) as usize & 63]));
        }
        _ => {}
    }
}

/// Decodes `input` into the front of `out` and returns the decoded length;
/// `None` if `input` is not canonical base64url or does not fit in `out`.
pub(crate) fn decode_into(input: &[u8], out: &mut [u8]) -> Option<usize> {
    if input.len() % 4 == 1 {
        return None;
    }
    let len = input.len() / 4 * 3 + (input.len() % 4).saturating_sub(1);
    let out = out.get_mut(..len)?;
    // Every quantum is OR-ed in, and checked once at the end: the loop has
    // no branch but its own.
    let mut seen = 0u32;
    // Eight characters (six bytes) a round: two independent quanta.
    let mut pairs = input.chunks_exact(8);
    let mut outs = out.chunks_exact_mut(6);
    for (c, o) in (&mut pairs).zip(&mut outs) {
        let (a, b) = c.split_at(4);
        let (Ok(a), Ok(b)) = (<&[u8; 4]>::try_from(a), <&[u8; 4]>::try_from(b)) else {
            return None;
        };
        let (a, b) = (quantum(a), quantum(b));
        seen |= a | b;
        let six = (u64::from(a) << 24 | u64::from(b)).to_be_bytes();
        o.copy_from_slice(&six[2..]);
    }
    let mut at = len - outs.into_remainder().len();
    let mut rest = pairs.remainder();
    if let Some((c, tail)) = rest.split_first_chunk::<4>() {
        let n = quantum(c);
        seen |= n;
        out[at..at + 3].copy_from_slice(&n.to_be_bytes()[1..]);
        at += 3;
        rest = tail;
    }
    match *rest {
        [a, b] => {
            let n = quantum(&[a, b, b'A', b'A']);
            // The bits past the last whole byte must be zero.
            seen |= n | u32::from(n & 0xFFFF != 0) << 31;
            out[at] = (n >> 16) as u8;
        }
        [a, b, c] => {
            let n = quantum(&[a, b, c, b'A']);
            seen |= n | u32::from(n & 0xFF != 0) << 31;
            out[at] = (n >> 16) as u8;
            out[at + 1] = (n >> 8) as u8;
        }
        _ => {}
    }
    if seen & INVALID != 0 {
        return None;
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(input: &[u8]) -> String {
        let mut s = String::new();
        encode_into(input, &mut s);
        s
    }

    #[test]
    fn matches_rfc_4648_test_vectors_without_padding() {
        let vectors: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (raw, encoded) in vectors {
            assert_eq!(encode(raw), encoded);
            let mut buf = [0; 8];
            let n = decode_into(encoded.as_bytes(), &mut buf).unwrap();
            assert_eq!(&buf[..n], raw);
        }
        assert_eq!(encode(&[0xFB, 0xFF]), "-_8");
    }

    #[test]
    fn rejects_padding_foreign_bytes_bad_lengths_and_leftover_bits() {
        let mut buf = [0; 16];
        for bad in [
            "Zg==", "Zm9v+", "Zm9v/", "Z", "Zm9vY", "Zh", "Zm9", "Zm+v", "Zm 9v",
        ] {
            assert_eq!(decode_into(bad.as_bytes(), &mut buf), None, "{bad}");
        }
        // Valid, but longer than the buffer.
        assert_eq!(decode_into(b"Zm9vYmFy", &mut [0; 5]), None);
    }

    #[test]
    fn a_foreign_byte_anywhere_is_rejected() {
        // Lengths that reach every path: eight-character rounds, a whole
        // quantum after them, and two- and three-character tails.
        for len in [2, 3, 4, 6, 7, 8, 11, 12, 14, 16, 18, 19, 24, 71] {
            let valid: Vec<u8> = (0..len).map(|i| ALPHABET[i * 7 % 64]).collect();
            // Canonical: the last character carries no leftover bits.
            let mut valid = valid;
            if let Some(last) = valid.last_mut() {
                *last = b'A';
            }
            let mut buf = [0; 64];
            assert!(decode_into(&valid, &mut buf).is_some(), "{len}");
            for pos in 0..len {
                for foreign in [b'=', b'+', b'/', b'.', b' ', b';', 0, 0x80, 0xFF] {
                    let mut bad = valid.clone();
                    bad[pos] = foreign;
                    assert_eq!(decode_into(&bad, &mut buf), None, "{len} {pos} {foreign}");
                }
            }
        }
    }

    /// A decoder written for clarity, not speed.
    fn reference_decode(input: &[u8]) -> Option<Vec<u8>> {
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut out = Vec::new();
        for &c in input {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            bits = bits << 6 | v;
            nbits += 6;
            if nbits >= 8 {
                nbits -= 8;
                out.push((bits >> nbits) as u8);
                bits &= (1 << nbits) - 1;
            }
        }
        // A lone character, or leftover bits that are not zero, cannot
        // come from an encoder.
        (nbits < 6 && bits == 0).then_some(out)
    }

    proptest! {
        #[test]
        fn agrees_with_a_plain_decoder(
            input in proptest::collection::vec(
                prop_oneof![
                    20 => proptest::sample::select(ALPHABET.to_vec()),
                    1 => any::<u8>(),
                ],
                0..100,
            ),
        ) {
            let mut buf = [0; 100];
            let fast = decode_into(&input, &mut buf).map(|n| buf[..n].to_vec());
            prop_assert_eq!(fast, reference_decode(&input));
        }

        #[test]
        fn decoding_inverts_encoding(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let encoded = encode(&bytes);
            prop_assert_eq!(encoded.len(), encoded_len(bytes.len()));
            let mut buf = [0; 128];
            let n = decode_into(encoded.as_bytes(), &mut buf).unwrap();
            prop_assert_eq!(&buf[..n], &bytes[..]);
        }

        #[test]
        fn every_accepted_input_is_the_canonical_encoding(input in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut buf = [0; 40];
            if let Some(n) = decode_into(&input, &mut buf) {
                let again = encode(&buf[..n]);
                prop_assert_eq!(again.as_bytes(), &input[..]);
            }
        }
    }
}
