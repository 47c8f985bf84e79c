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

use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;

use super::siphash::{sip128, sip128_pair};
use std::ops::Range;

use crate::MAX_ID_LEN;

pub(crate) const VERSION: u8 = 1;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;
const BLOCK: usize = 16;
const EXPIRY_LEN: usize = 8;
const HEADER_LEN: usize = 1 + NONCE_LEN + EXPIRY_LEN;
/// The padding marker after the id.
const MARK: u8 = 0x80;

/// The expiry of a token that never expires (a session cookie).
pub(crate) const NEVER: u64 = u64::MAX;

const fn padded(n: usize) -> usize {
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
        out: &mut [u8; MAX_TOKEN],
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
        self.apply_keystream(&nonce, 0, body);
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
        // The tag and the first block of keystream, in one pass.
        let (expected, first) =
            sip128_pair(&self.mac, signed, &self.enc, &keystream_input(&nonce, 0));
        if !equal_in_constant_time(&expected, tag) {
            return None;
        }
        let body = &mut signed[HEADER_LEN..];
        let (head, rest) = body.split_at_mut(BLOCK);
        xor(head, &first);
        self.apply_keystream(&nonce, 1, rest);
        // A genuine token ends in the marker and fewer than 16 zeros.
        let mark = body.iter().rposition(|&b| b != 0)?;
        if body[mark] != MARK || mark == 0 || body.len() - mark > BLOCK {
            return None;
        }
        Some(HEADER_LEN..HEADER_LEN + mark)
    }

    fn tag(&self, signed: &[u8]) -> [u8; TAG_LEN] {
        sip128(&self.mac, signed)
    }

    /// XORs the keystream into `body`, starting at block `first`.
    fn apply_keystream(&self, nonce: &[u8; NONCE_LEN], first: usize, body: &mut [u8]) {
        for (i, block) in body.chunks_mut(BLOCK).enumerate() {
            xor(
                block,
                &sip128(&self.enc, &keystream_input(nonce, first + i)),
            );
        }
    }
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
    use super::*;
    use proptest::prelude::*;

    fn seal(keys: &Keys, id: &[u8], expiry: u64) -> Vec<u8> {
        let mut out = [0; MAX_TOKEN];
        let n = keys.seal(id, expiry, [7; NONCE_LEN], &mut out);
        out[..n].to_vec()
    }

    /// The id in `token`, if it opens.
    fn open(keys: &Keys, mut token: Vec<u8>) -> Option<Vec<u8>> {
        let id = keys.open_in_place(&mut token)?;
        Some(token[id].to_vec())
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
    fn ids_ending_in_zero_or_marker_bytes_round_trip() {
        let keys = Keys::derive(b"0123456789abcdef", b"lb");
        for id in [
            &b"a\0"[..],
            b"\x80",
            b"\0\0\x80\0",
            &[0x80; 16],
            &[0; MAX_ID_LEN],
        ] {
            assert_eq!(open(&keys, seal(&keys, id, 9)).as_deref(), Some(id));
        }
    }

    #[test]
    fn the_id_does_not_appear_in_the_token() {
        let keys = Keys::derive(b"0123456789abcdef", b"lb");
        let token = seal(&keys, b"10.0.0.1:8080", 0);
        assert!(!token.windows(4).any(|w| w == b"10.0"));
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

    proptest! {
        #[test]
        fn open_inverts_seal(
            id in proptest::collection::vec(any::<u8>(), 1..=MAX_ID_LEN),
            expiry in any::<u64>(),
        ) {
            let keys = Keys::derive(b"a secret of sixteen bytes or more", b"lb");
            let token = seal(&keys, &id, expiry);
            prop_assert_eq!(unverified_expiry(&token), Some(expiry));
            prop_assert_eq!(open(&keys, token), Some(id));
        }

        #[test]
        fn every_single_bit_flip_is_rejected(
            id in proptest::collection::vec(any::<u8>(), 1..40),
            expiry in any::<u64>(),
        ) {
            let keys = Keys::derive(b"a secret of sixteen bytes or more", b"lb");
            let token = seal(&keys, &id, expiry);
            for bit in 0..token.len() * 8 {
                let mut t = token.clone();
                t[bit / 8] ^= 1 << (bit % 8);
                let flipped = t.clone();
                prop_assert!(keys.open_in_place(&mut t).is_none(), "bit {}", bit);
                // A rejected token is left as it was, for the next key.
                prop_assert_eq!(&t, &flipped);
            }
        }

        #[test]
        fn truncated_or_extended_tokens_are_rejected(
            id in proptest::collection::vec(any::<u8>(), 1..40),
            cut in 1usize..64,
            extra in proptest::collection::vec(any::<u8>(), 1..32),
        ) {
            let keys = Keys::derive(b"a secret of sixteen bytes or more", b"lb");
            let token = seal(&keys, &id, 1);
            let cut = cut.min(token.len());
            let mut shorter = token[..token.len() - cut].to_vec();
            prop_assert!(keys.open_in_place(&mut shorter).is_none());
            let mut longer = token.clone();
            longer.extend_from_slice(&extra);
            prop_assert!(keys.open_in_place(&mut longer).is_none());
        }

        #[test]
        fn another_secret_rejects_the_token(
            id in proptest::collection::vec(any::<u8>(), 1..40),
            other in proptest::collection::vec(any::<u8>(), 16..48),
        ) {
            let secret = b"a secret of sixteen bytes or more";
            prop_assume!(other != secret);
            let mut token = seal(&Keys::derive(secret, b"lb"), &id, 1);
            prop_assert!(Keys::derive(&other, b"lb").open_in_place(&mut token).is_none());
        }

        #[test]
        fn random_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..320)) {
            let keys = Keys::derive(b"a secret of sixteen bytes or more", b"lb");
            let mut bytes = bytes;
            prop_assert!(keys.open_in_place(&mut bytes).is_none());
        }
    }
}
