//! The sticky-cookie token sealed with a standard AEAD: XChaCha20-Poly1305
//! (RustCrypto's `chacha20poly1305`), format version 2.
//!
//! ```text
//! token      = base64url-nopad( version ‖ nonce ‖ expiry ‖ ciphertext ‖ tag )
//! version    = 0x02                                       1 byte
//! nonce      = random (thread RNG)                        24 bytes
//! expiry     = Unix seconds, u64 little-endian            8 bytes
//!              (u64::MAX for a session cookie)
//! plaintext  = id ‖ 0x80 ‖ 0x00…                          to a multiple of 16
//! ciphertext, tag = XChaCha20-Poly1305(key, nonce, plaintext,
//!                   aad = version ‖ expiry ‖ u64_le(len(name)) ‖ name)
//! key        = the secret's bytes XOR-ed into 32 (byte j into j mod 32)
//! ```
//!
//! The secret is at least 32 bytes that look random ([`Secret`]), so the
//! folded key is as strong as the AEAD's; the cookie's name and the clear
//! expiry are bound by the associated data. XChaCha's 192-bit nonces are
//! drawn at random with no bound worth stating on how many tokens one key
//! seals. Poly1305 is checked (in constant time, by the crate) before
//! anything is decrypted, and a rejected token is left as it was.
//!
//! [`Secret`]: super::Secret

use std::ops::Range;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};

use super::token::{padded, unpadded_len, BLOCK, MARK, TAG_LEN};
use crate::MAX_ID_LEN;

pub(crate) const VERSION: u8 = 2;
pub(crate) const NONCE_LEN: usize = 24;
const EXPIRY_LEN: usize = 8;
const HEADER_LEN: usize = 1 + NONCE_LEN + EXPIRY_LEN;
pub(crate) const MIN_TOKEN: usize = HEADER_LEN + BLOCK + TAG_LEN;
pub(crate) const MAX_TOKEN: usize = HEADER_LEN + padded(MAX_ID_LEN + 1) + TAG_LEN;

/// Cookie names up to this long build the associated data on the stack.
const INLINE_NAME: usize = 64;

/// The AEAD keyed for one secret and one cookie name.
#[derive(Clone)]
pub(crate) struct Keys {
    aead: XChaCha20Poly1305,
    name: Box<[u8]>,
}

/// The expiry written in a token, read before it is authenticated.
pub(crate) fn unverified_expiry(token: &[u8]) -> Option<u64> {
    let bytes = token.get(1 + NONCE_LEN..HEADER_LEN)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

impl Keys {
    pub(crate) fn derive(secret: &[u8], name: &[u8]) -> Keys {
        let mut key = [0u8; 32];
        for (i, b) in secret.iter().enumerate() {
            key[i % 32] ^= b;
        }
        let keys = Keys {
            aead: XChaCha20Poly1305::new(&Key::from(key)),
            name: name.into(),
        };
        key.fill(0);
        keys
    }

    /// Runs `f` with the associated data of a token with `expiry`.
    fn with_aad<T>(&self, expiry: u64, f: impl FnOnce(&[u8]) -> T) -> T {
        let head = |aad: &mut [u8]| {
            aad[0] = VERSION;
            aad[1..9].copy_from_slice(&expiry.to_le_bytes());
            aad[9..17].copy_from_slice(&(self.name.len() as u64).to_le_bytes());
            aad[17..].copy_from_slice(&self.name);
        };
        let len = 17 + self.name.len();
        if self.name.len() <= INLINE_NAME {
            let mut aad = [0u8; 17 + INLINE_NAME];
            head(&mut aad[..len]);
            f(&aad[..len])
        } else {
            let mut aad = vec![0u8; len];
            head(&mut aad);
            f(&aad)
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
        let out = &mut out[..total];
        out.fill(0);
        out[0] = VERSION;
        out[1..1 + NONCE_LEN].copy_from_slice(&nonce);
        out[1 + NONCE_LEN..HEADER_LEN].copy_from_slice(&expiry.to_le_bytes());
        let (body, tag) = out[HEADER_LEN..].split_at_mut(plain_len);
        body[..id.len()].copy_from_slice(id);
        body[id.len()] = MARK;
        let sealed = self.with_aad(expiry, |aad| {
            self.aead
                .encrypt_inout_detached(&XNonce::from(nonce), aad, body.into())
        });
        // Encryption fails only for messages of 256 GiB and more.
        if let Ok(t) = sealed {
            tag.copy_from_slice(&t);
        }
        total
    }

    /// Checks a token and decrypts it in place: where the id now is in
    /// `token`, or `None` if the token is malformed or was not made with
    /// these keys; `token` is then left as it was.
    pub(crate) fn open_in_place(&self, token: &mut [u8]) -> Option<Range<usize>> {
        let len = token.len();
        if !(MIN_TOKEN..=MAX_TOKEN).contains(&len)
            || (len - HEADER_LEN - TAG_LEN) % BLOCK != 0
            || token[0] != VERSION
        {
            return None;
        }
        let expiry = unverified_expiry(token)?;
        let (signed, tag) = token.split_at_mut(len - TAG_LEN);
        let nonce: [u8; NONCE_LEN] = *signed[1..].first_chunk()?;
        let tag: [u8; TAG_LEN] = (&*tag).try_into().ok()?;
        let body = &mut signed[HEADER_LEN..];
        self.with_aad(expiry, |aad| {
            self.aead.decrypt_inout_detached(
                &XNonce::from(nonce),
                aad,
                (&mut *body).into(),
                &Tag::from(tag),
            )
        })
        .ok()?;
        let id_len = unpadded_len(body)?;
        Some(HEADER_LEN..HEADER_LEN + id_len)
    }
}
