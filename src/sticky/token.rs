//! The sticky-cookie token: a backend id, encrypted and authenticated.
//!
//! ```text
//! token      = base64url-nopad( version ‖ nonce ‖ expiry ‖ ciphertext ‖ tag )
//! version    = 0x01                                       1 byte
//! nonce      = random (thread RNG)                        12 bytes
//! expiry     = Unix seconds, u64 little-endian            8 bytes
//!              (u64::MAX for a session cookie)
//! plaintext  = id ‖ 0x80 ‖ 0x00…                          to a multiple of 16
//! ciphertext = plaintext ⊕ keystream
//!   keystream block i (16 bytes) = SipHash-2-4-128(k_enc, nonce ‖ i as u8)
//! tag        = SipHash-2-4-128(k_mac, version ‖ nonce ‖ expiry ‖ ciphertext)
//! ```
//!
//! Encrypt-then-MAC with SipHash as the PRF: the tag is checked first, in
//! constant time, and nothing is decrypted unless it matches. The id is
//! padded as ISO/IEC 7816-4 does (a `0x80` byte, then zeros), so an id of up
//! to 15 bytes takes one block and only its length to within 16 bytes shows.
//! The expiry is authenticated but not encrypted: it is the `Expires` the
//! client was sent anyway, and reading it first rejects an expired token
//! without any hashing.
//!
//! `k_enc` and `k_mac` are derived from the user's secret with domain
//! separation: the secret is XOR-folded into a 16-byte SipHash key `f`, and
//! `k = SipHash-2-4-128(f, "tower-lb/sticky-cookie/v1/" ‖ label ‖ "/" ‖
//! u64_le(len(name)) ‖ name ‖ "/" ‖ secret)` with the labels `enc` and `mac`
//! and the cookie's `name`. Every byte of the secret affects both keys, and a
//! token made for one cookie name does not verify under another.

use std::hash::Hasher;
use std::ops::Range;

use siphasher::sip128::{Hasher128, SipHasher24};

use crate::MAX_ID_LEN;

pub(crate) const VERSION: u8 = 1;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;
pub(crate) const BLOCK: usize = 16;
const EXPIRY_LEN: usize = 8;
const HEADER_LEN: usize = 1 + NONCE_LEN + EXPIRY_LEN;
/// The padding marker after the id.
pub(crate) const MARK: u8 = 0x80;

/// The expiry of a token that never expires (a session cookie).
pub(crate) const NEVER: u64 = u64::MAX;

pub(crate) const fn padded(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// The largest plaintext: the longest id and its padding.
pub(crate) const MAX_PLAIN: usize = padded(MAX_ID_LEN + 1);
/// The smallest and largest tokens, in bytes before encoding.
pub(crate) const MIN_TOKEN: usize = HEADER_LEN + BLOCK + TAG_LEN;
pub(crate) const MAX_TOKEN: usize = HEADER_LEN + MAX_PLAIN + TAG_LEN;

/// The two keys derived from one secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    enc: [u8; 16],
    mac: [u8; 16],
}

/// The expiry written in a token, read before the token is authenticated:
/// only to reject an expired token early.
pub(crate) fn unverified_expiry(token: &[u8]) -> Option<u64> {
    let bytes = token.get(1 + NONCE_LEN..HEADER_LEN)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

impl Keys {
    /// Keys for the cookie called `name`: a token made for one cookie name
    /// does not verify under another, even with the same secret.
    pub(crate) fn derive(secret: &[u8], name: &[u8]) -> Keys {
        let mut fold = [0u8; 16];
        for (i, b) in secret.iter().enumerate() {
            fold[i % 16] ^= b;
        }
        let derive = |label: &[u8]| {
            let mut h = SipHasher24::new_with_key(&fold);
            h.write(b"tower-lb/sticky-cookie/v1/");
            h.write(label);
            h.write(b"/");
            h.write(&(name.len() as u64).to_le_bytes());
            h.write(name);
            h.write(b"/");
            h.write(secret);
            let h = h.finish128();
            let mut key = [0; 16];
            key[..8].copy_from_slice(&h.h1.to_le_bytes());
            key[8..].copy_from_slice(&h.h2.to_le_bytes());
            key
        };
        Keys {
            enc: derive(b"enc"),
            mac: derive(b"mac"),
        }
    }

    /// Writes the token for `id` into `out` and returns its length. `id`
    /// must be 1 to `MAX_ID_LEN` bytes long.
    pub(crate) fn seal(
        &self,
        id: &[u8],
        expiry: u64,
        nonce: [u8; NONCE_LEN],
        out: &mut [u8],
    ) -> usize {
        debug_assert!(!id.is_empty() && id.len() <= MAX_ID_LEN);
        let plain_len = padded(id.len() + 1);
        let total = HEADER_LEN + plain_len + TAG_LEN;
        out[..total].fill(0);
        out[0] = VERSION;
        out[1..1 + NONCE_LEN].copy_from_slice(&nonce);
        out[1 + NONCE_LEN..HEADER_LEN].copy_from_slice(&expiry.to_le_bytes());
        let body = &mut out[HEADER_LEN..HEADER_LEN + plain_len];
        body[..id.len()].copy_from_slice(id);
        body[id.len()] = MARK;
        self.apply_keystream(&nonce, body);
        let tag = self.tag(&out[..HEADER_LEN + plain_len]);
        out[HEADER_LEN + plain_len..total].copy_from_slice(&tag);
        total
    }

    /// Checks a token and decrypts it in place: where the id now is in
    /// `token`, or `None` if the token is malformed or was not made with
    /// these keys. Nothing is
    /// decrypted, and `token` is left as it was, unless the tag matches; so
    /// a token that fails under one key can be tried under another.
    pub(crate) fn open_in_place(&self, token: &mut [u8]) -> Option<Range<usize>> {
        let len = token.len();
        if !(MIN_TOKEN..=MAX_TOKEN).contains(&len)
            || (len - HEADER_LEN - TAG_LEN) % BLOCK != 0
            || token[0] != VERSION
        {
            return None;
        }
        let (signed, tag) = token.split_at_mut(len - TAG_LEN);
        let nonce: [u8; NONCE_LEN] = *signed[1..].first_chunk()?;
        if !equal_in_constant_time(&self.tag(signed), tag) {
            return None;
        }
        let body = &mut signed[HEADER_LEN..];
        self.apply_keystream(&nonce, body);
        let id_len = unpadded_len(body)?;
        Some(HEADER_LEN..HEADER_LEN + id_len)
    }

    fn tag(&self, signed: &[u8]) -> [u8; TAG_LEN] {
        sip128(&self.mac, signed)
    }

    /// XORs the keystream into `body`.
    fn apply_keystream(&self, nonce: &[u8; NONCE_LEN], body: &mut [u8]) {
        for (i, block) in body.chunks_mut(BLOCK).enumerate() {
            xor(block, &sip128(&self.enc, &keystream_input(nonce, i)));
        }
    }
}

/// The length of the id in a decrypted, padded `body`: a genuine token ends
/// in the marker and fewer than 16 zeros, after an id of at least one byte.
pub(crate) fn unpadded_len(body: &[u8]) -> Option<usize> {
    let mark = body.iter().rposition(|&b| b != 0)?;
    if body[mark] != MARK || mark == 0 || body.len() - mark > BLOCK {
        return None;
    }
    Some(mark)
}

/// SipHash-2-4-128 of `msg` under `key`, laid out as `siphasher`'s
/// `Hash128::as_bytes`.
#[inline]
fn sip128(key: &[u8; 16], msg: &[u8]) -> [u8; 16] {
    SipHasher24::new_with_key(key).hash(msg).as_bytes()
}

/// The input of keystream block `i`: the nonce and the block's number.
fn keystream_input(nonce: &[u8; NONCE_LEN], i: usize) -> [u8; NONCE_LEN + 1] {
    let mut input = [0; NONCE_LEN + 1];
    input[..NONCE_LEN].copy_from_slice(nonce);
    // At most MAX_PLAIN / BLOCK = 17 blocks, so the number fits.
    input[NONCE_LEN] = i as u8;
    input
}

fn xor(block: &mut [u8], stream: &[u8; BLOCK]) {
    for (b, s) in block.iter_mut().zip(stream) {
        *b ^= s;
    }
}

/// Compares two tags without an early exit, so that the time taken does not
/// tell an attacker how many leading bytes of a forged tag were right.
fn equal_in_constant_time(expected: &[u8; TAG_LEN], got: &[u8]) -> bool {
    if got.len() != TAG_LEN {
        return false;
    }
    let mut diff = 0u8;
    for (a, b) in expected.iter().zip(got) {
        diff |= a ^ b;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    //! The forgery tests, shared by every format, are in `codec.rs`.

    use super::*;

    fn seal(keys: &Keys, id: &[u8], expiry: u64) -> Vec<u8> {
        let mut out = [0; MAX_TOKEN];
        let n = keys.seal(id, expiry, [7; NONCE_LEN], &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn sizes_follow_the_documented_layout() {
        assert_eq!(MAX_PLAIN, 272);
        assert_eq!(MIN_TOKEN, 53);
        assert_eq!(MAX_TOKEN, 309);
        let keys = Keys::derive(b"0123456789abcdef", b"lb");
        assert_eq!(seal(&keys, b"a", 0).len(), MIN_TOKEN);
        assert_eq!(seal(&keys, &[b'x'; 15], 0).len(), MIN_TOKEN);
        assert_eq!(seal(&keys, &[b'x'; 16], 0).len(), MIN_TOKEN + 16);
        assert_eq!(seal(&keys, &[b'x'; MAX_ID_LEN], 0).len(), MAX_TOKEN);
    }

    #[test]
    fn keys_depend_on_every_byte_of_the_secret() {
        let base = Keys::derive(&[0x55; 32], b"lb");
        for i in 0..32 {
            let mut secret = [0x55; 32];
            secret[i] ^= 1;
            assert!(Keys::derive(&secret, b"lb") != base, "byte {i}");
        }
        // Folding alone would map these two to the same key.
        assert!(Keys::derive(&[1; 32], b"lb") != Keys::derive(&[0; 32], b"lb"));
    }

    #[test]
    fn sip128_is_siphasher_s_and_matches_the_paper_s_first_vector() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            sip128(&key, &[]),
            [
                0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
                0x02, 0x93
            ]
        );
    }
}
