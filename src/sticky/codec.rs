//! Token formats: the codecs that seal a sticky cookie's token, told apart
//! by the token's first byte so that a fleet can move from one to another.

use std::ops::Range;

use super::token;
#[cfg(feature = "aead")]
use super::token_aead;

/// How a sticky cookie's token is sealed. The token's first byte says which
/// format it is in, so a cookie can issue one format and still accept
/// another while a fleet migrates
/// ([`StickyCookie::accept_token_format`](super::StickyCookie::accept_token_format)).
///
/// | format | version byte | construction | value for an id of up to 15 bytes |
/// | --- | --- | --- | --- |
/// | [`SipHash`](Self::SipHash) (default) | `0x01` | encrypt-then-MAC, SipHash-2-4-128 as the PRF | 71 characters |
/// | [`XChaCha20Poly1305`](Self::XChaCha20Poly1305) (feature `aead`) | `0x02` | the standard AEAD, RustCrypto's `chacha20poly1305` | 87 characters |
///
/// Both hide the backend id and refuse any token not made with the secret;
/// the AEAD is the one to choose where a reviewer asks for a standard
/// construction. The default verifies several times faster (the crate's
/// `sticky` benchmark measures both).
///
/// ```
/// use tower_lb::sticky::{Secret, StickyCookie, TokenFormat};
///
/// let sticky = StickyCookie::new("lb", Secret::generate()?)?;
/// assert_eq!(sticky.issued_token_format(), TokenFormat::SipHash);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TokenFormat {
    /// Version 1: encrypt-then-MAC with SipHash-2-4-128 as the
    /// pseudo-random function, keys derived from the secret and the cookie
    /// name (see the [module docs](super) for the layout). No dependency
    /// beyond `siphasher`.
    #[default]
    SipHash,
    /// Version 2: XChaCha20-Poly1305 from RustCrypto's `chacha20poly1305`.
    /// Needs the `aead` feature.
    ///
    /// ```text
    /// token = 0x02 ‖ nonce (24 random bytes) ‖ expiry (u64 LE) ‖ ciphertext ‖ tag (16 bytes)
    /// ciphertext, tag = XChaCha20-Poly1305(key, nonce, id ‖ 0x80 ‖ 0x00… to a multiple of 16,
    ///                   aad = 0x02 ‖ expiry ‖ u64_le(len(name)) ‖ name)
    /// key   = the secret's bytes XOR-ed into 32
    /// ```
    #[cfg(feature = "aead")]
    #[cfg_attr(docsrs, doc(cfg(feature = "aead")))]
    XChaCha20Poly1305,
}

impl TokenFormat {
    /// Every format this build knows.
    #[cfg(test)]
    pub(crate) const ALL: &'static [TokenFormat] = &[
        TokenFormat::SipHash,
        #[cfg(feature = "aead")]
        TokenFormat::XChaCha20Poly1305,
    ];

    /// The first byte of a token in this format.
    pub(crate) fn version(self) -> u8 {
        match self {
            TokenFormat::SipHash => token::VERSION,
            #[cfg(feature = "aead")]
            TokenFormat::XChaCha20Poly1305 => token_aead::VERSION,
        }
    }

    /// This format as a bit of a set of formats.
    pub(crate) fn bit(self) -> u8 {
        1 << self.version()
    }
}

/// The smallest and largest tokens of any format, in bytes before encoding.
pub(crate) const MIN_TOKEN: usize = token::MIN_TOKEN;
#[cfg(not(feature = "aead"))]
pub(crate) const MAX_TOKEN: usize = token::MAX_TOKEN;
#[cfg(feature = "aead")]
pub(crate) const MAX_TOKEN: usize = if token_aead::MAX_TOKEN > token::MAX_TOKEN {
    token_aead::MAX_TOKEN
} else {
    token::MAX_TOKEN
};

/// The expiry written in a token of any format, read before the token is
/// authenticated: only to reject an expired token early.
pub(crate) fn unverified_expiry(raw: &[u8]) -> Option<u64> {
    match *raw.first()? {
        token::VERSION => token::unverified_expiry(raw),
        #[cfg(feature = "aead")]
        token_aead::VERSION => token_aead::unverified_expiry(raw),
        _ => None,
    }
}

/// The keys one secret gives one cookie name, for every format.
#[derive(Clone)]
pub(crate) struct SecretKeys {
    siphash: token::Keys,
    #[cfg(feature = "aead")]
    aead: token_aead::Keys,
}

impl SecretKeys {
    pub(crate) fn derive(secret: &[u8], name: &[u8]) -> SecretKeys {
        SecretKeys {
            siphash: token::Keys::derive(secret, name),
            #[cfg(feature = "aead")]
            aead: token_aead::Keys::derive(secret, name),
        }
    }

    /// Writes the token for `id`, in `format`, with a fresh random nonce,
    /// into `out` and returns its length. `id` must be 1 to `MAX_ID_LEN`
    /// bytes long.
    pub(crate) fn seal(
        &self,
        format: TokenFormat,
        id: &[u8],
        expiry: u64,
        out: &mut [u8; MAX_TOKEN],
    ) -> usize {
        match format {
            TokenFormat::SipHash => {
                let mut nonce = [0u8; token::NONCE_LEN];
                rand::fill(&mut nonce);
                self.siphash.seal(id, expiry, nonce, out)
            }
            #[cfg(feature = "aead")]
            TokenFormat::XChaCha20Poly1305 => {
                let mut nonce = [0u8; token_aead::NONCE_LEN];
                rand::fill(&mut nonce);
                self.aead.seal(id, expiry, nonce, out)
            }
        }
    }

    /// Checks a token of a format in `accepted` (a set of
    /// [`TokenFormat::bit`]s) and decrypts it in place: where the id now is,
    /// or `None`, the token then left as it was.
    #[inline]
    pub(crate) fn open_in_place(&self, raw: &mut [u8], accepted: u8) -> Option<Range<usize>> {
        let version = *raw.first()?;
        if accepted & (1 << (version & 7)) == 0 {
            return None;
        }
        match version {
            token::VERSION => self.siphash.open_in_place(raw),
            #[cfg(feature = "aead")]
            token_aead::VERSION => self.aead.open_in_place(raw),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The forgery tests every format must pass.

    use super::*;
    use crate::MAX_ID_LEN;
    use proptest::prelude::*;

    const SECRET: &[u8] = &[
        0x5e, 0x0c, 0x9a, 0x41, 0xd2, 0x77, 0x13, 0xb8, 0x6f, 0xe4, 0x2a, 0x90, 0x3d, 0xc1, 0x58,
        0x07, 0xab, 0x64, 0xf9, 0x1e, 0x82, 0x35, 0xcd, 0x4b, 0x96, 0x0a, 0xe7, 0x53, 0x28, 0xbf,
        0x71, 0xd6,
    ];
    const ALL: u8 = 0xff;

    fn seal(keys: &SecretKeys, format: TokenFormat, id: &[u8], expiry: u64) -> Vec<u8> {
        let mut out = [0; MAX_TOKEN];
        let n = keys.seal(format, id, expiry, &mut out);
        out[..n].to_vec()
    }

    /// The id in `token`, if it opens.
    fn open(keys: &SecretKeys, mut token: Vec<u8>) -> Option<Vec<u8>> {
        let id = keys.open_in_place(&mut token, ALL)?;
        Some(token[id].to_vec())
    }

    #[test]
    fn every_format_has_its_own_version_byte_and_sizes() {
        let keys = SecretKeys::derive(SECRET, b"lb");
        let mut versions = Vec::new();
        for &format in TokenFormat::ALL {
            let token = seal(&keys, format, b"10.0.0.1:8080", 1);
            assert_eq!(token[0], format.version());
            versions.push(token[0]);
            let short = seal(&keys, format, b"b", 1).len();
            assert_eq!(seal(&keys, format, &[b'x'; 15], 1).len(), short);
            assert_eq!(seal(&keys, format, &[b'x'; 16], 1).len(), short + 16);
            assert!(seal(&keys, format, &[b'x'; MAX_ID_LEN], 1).len() <= MAX_TOKEN);
            assert!(short >= MIN_TOKEN);
        }
        versions.dedup();
        assert_eq!(versions.len(), TokenFormat::ALL.len());
    }

    #[test]
    fn a_format_outside_the_accepted_set_is_refused() {
        let keys = SecretKeys::derive(SECRET, b"lb");
        for &format in TokenFormat::ALL {
            let mut token = seal(&keys, format, b"b1", 1);
            assert!(keys.open_in_place(&mut token, !format.bit()).is_none());
            assert!(keys.open_in_place(&mut token, format.bit()).is_some());
        }
    }

    #[test]
    fn a_token_made_for_one_cookie_name_does_not_open_under_another() {
        let (api, ws) = (
            SecretKeys::derive(SECRET, b"lb_api"),
            SecretKeys::derive(SECRET, b"lb_ws"),
        );
        let long_name = SecretKeys::derive(SECRET, &[b'n'; 200]);
        for &format in TokenFormat::ALL {
            let token = seal(&api, format, b"b1", 1);
            assert!(open(&ws, token.clone()).is_none(), "{format:?}");
            assert!(open(&long_name, token.clone()).is_none(), "{format:?}");
            assert_eq!(open(&api, token).as_deref(), Some(&b"b1"[..]));
            let token = seal(&long_name, format, b"b1", 1);
            assert_eq!(open(&long_name, token).as_deref(), Some(&b"b1"[..]));
        }
    }

    #[test]
    fn ids_ending_in_zero_or_marker_bytes_round_trip() {
        let keys = SecretKeys::derive(SECRET, b"lb");
        for &format in TokenFormat::ALL {
            for id in [
                &b"a\0"[..],
                b"\x80",
                b"\0\0\x80\0",
                &[0x80; 16],
                &[0; MAX_ID_LEN],
            ] {
                assert_eq!(open(&keys, seal(&keys, format, id, 9)).as_deref(), Some(id));
            }
        }
    }

    #[test]
    fn the_id_does_not_appear_in_the_token() {
        let keys = SecretKeys::derive(SECRET, b"lb");
        for &format in TokenFormat::ALL {
            let token = seal(&keys, format, b"10.0.0.1:8080", 0);
            assert!(!token.windows(4).any(|w| w == b"10.0"), "{format:?}");
        }
    }

    fn format() -> impl Strategy<Value = TokenFormat> {
        proptest::sample::select(TokenFormat::ALL)
    }

    proptest! {
        #[test]
        fn open_inverts_seal(
            format in format(),
            id in proptest::collection::vec(any::<u8>(), 1..=MAX_ID_LEN),
            expiry in any::<u64>(),
        ) {
            let keys = SecretKeys::derive(SECRET, b"lb");
            let token = seal(&keys, format, &id, expiry);
            prop_assert_eq!(unverified_expiry(&token), Some(expiry));
            prop_assert_eq!(open(&keys, token), Some(id));
        }

        #[test]
        fn every_single_bit_flip_is_rejected(
            format in format(),
            id in proptest::collection::vec(any::<u8>(), 1..40),
            expiry in any::<u64>(),
        ) {
            let keys = SecretKeys::derive(SECRET, b"lb");
            let token = seal(&keys, format, &id, expiry);
            for bit in 0..token.len() * 8 {
                let mut t = token.clone();
                t[bit / 8] ^= 1 << (bit % 8);
                let flipped = t.clone();
                prop_assert!(keys.open_in_place(&mut t, ALL).is_none(), "bit {}", bit);
                // A rejected token is left as it was, for the next key.
                prop_assert_eq!(&t, &flipped);
            }
        }

        #[test]
        fn truncated_or_extended_tokens_are_rejected(
            format in format(),
            id in proptest::collection::vec(any::<u8>(), 1..40),
            cut in 1usize..64,
            extra in proptest::collection::vec(any::<u8>(), 1..32),
        ) {
            let keys = SecretKeys::derive(SECRET, b"lb");
            let token = seal(&keys, format, &id, 1);
            let cut = cut.min(token.len());
            let mut shorter = token[..token.len() - cut].to_vec();
            prop_assert!(keys.open_in_place(&mut shorter, ALL).is_none());
            let mut longer = token.clone();
            longer.extend_from_slice(&extra);
            prop_assert!(keys.open_in_place(&mut longer, ALL).is_none());
        }

        #[test]
        fn another_secret_rejects_the_token(
            format in format(),
            id in proptest::collection::vec(any::<u8>(), 1..40),
            other in proptest::collection::vec(any::<u8>(), 32..64),
        ) {
            prop_assume!(other != SECRET);
            let mut token = seal(&SecretKeys::derive(SECRET, b"lb"), format, &id, 1);
            prop_assert!(SecretKeys::derive(&other, b"lb").open_in_place(&mut token, ALL).is_none());
        }

        #[test]
        fn a_token_with_another_version_byte_is_rejected(
            format in format(),
            id in proptest::collection::vec(any::<u8>(), 1..40),
            version in any::<u8>(),
        ) {
            let keys = SecretKeys::derive(SECRET, b"lb");
            let mut token = seal(&keys, format, &id, 1);
            prop_assume!(version != token[0]);
            token[0] = version;
            prop_assert!(keys.open_in_place(&mut token, ALL).is_none());
        }

        #[test]
        fn random_bytes_never_open(
            version in proptest::sample::select(vec![0u8, 1, 2, 3, 0xff]),
            bytes in proptest::collection::vec(any::<u8>(), 0..340),
        ) {
            let keys = SecretKeys::derive(SECRET, b"lb");
            let mut bytes = bytes;
            if let Some(first) = bytes.first_mut() {
                *first = version;
            }
            prop_assert!(keys.open_in_place(&mut bytes, ALL).is_none());
        }
    }
}
