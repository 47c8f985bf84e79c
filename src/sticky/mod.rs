//! Session affinity: affinity-key extractors and sticky cookies.
//!
//! Two ways to keep a client on one backend:
//!
//! * **Hash-based affinity.** A [`KeyExtractor`] reads an affinity key from
//!   a request: a cookie ([`CookieKey`]), a header ([`HeaderKey`]), the
//!   client's address ([`ClientIp`]), a query parameter ([`QueryKey`]), the
//!   path ([`PathKey`]), or the first of several ([`FirstOf`]). With
//!   [`ConsistentHash`](crate::ConsistentHash) the same key goes to the same
//!   backend while it is up. Extracting a key never allocates.
//! * **Cookie insertion** ([`StickyCookie`]), HAProxy's
//!   `cookie SRV insert indirect nocache` with `option redispatch`: the
//!   balancer picks as usual for a new client and inserts a cookie naming the
//!   chosen backend into the response; the client sends it back and is routed
//!   to the same backend, whatever the strategy, until that backend is down
//!   or removed, when the request fails over and the cookie is re-issued.
//!
//! # Why a cookie and not the client's IP
//!
//! A game client on a WebSocket reconnects after a network drop, often from
//! another address (Wi-Fi to 4G). Affinity keyed on the client IP sends it to
//! another backend and its session is lost. The WebSocket handshake is plain
//! HTTP, so the `101 Switching Protocols` response can carry the inserted
//! cookie, and the reconnect's handshake carries it back: the client lands
//! on the same backend from any address.
//!
//! # The cookie reveals nothing and cannot be forged
//!
//! The value is an opaque token naming the backend by its id, encrypted and
//! authenticated under a [`Secret`]: at least 32 bytes, generated or read
//! as base64 or hex, and refused when plainly not random. A [`Secrets`]
//! handle rotates it while requests run. A client cannot tell
//! which backend (or address) it names, and a tampered, forged, expired or
//! unknown token counts as no cookie: the request is balanced as if it had
//! none. No header or cookie value can route a request anywhere but to a
//! configured backend.
//!
//! The token, base64url without padding, in the default
//! [`TokenFormat::SipHash`] (the AEAD format, behind the `aead` feature, is
//! described at [`TokenFormat`]):
//!
//! ```text
//! version (1 byte, 0x01) ‖ nonce (12 random bytes) ‖ expiry ‖ ciphertext ‖ tag (16 bytes)
//!
//! expiry     = Unix seconds, u64 little-endian (u64::MAX: a session cookie);
//!              authenticated, not encrypted: it is the Expires the client got
//! plaintext  = id ‖ 0x80 ‖ 0x00… to a multiple of 16 bytes (ISO/IEC 7816-4 padding)
//! ciphertext = plaintext ⊕ keystream,
//!              block i = SipHash-2-4-128(k_enc, nonce ‖ i as u8)
//! tag        = SipHash-2-4-128(k_mac, version ‖ nonce ‖ expiry ‖ ciphertext)
//! k_enc, k_mac = SipHash-2-4-128(fold(secret),
//!                "tower-lb/sticky-cookie/v1/" ‖ "enc" | "mac" ‖ "/"
//!                ‖ u64_le(len(name)) ‖ name ‖ "/" ‖ secret),
//!              where fold XORs the secret's bytes into 16 and name is the
//!              cookie's name
//! ```
//!
//! An expired token is rejected on its expiry alone; otherwise the tag is
//! checked, in constant time, and nothing is decrypted unless it matches.
//! A backend id of up to 15 bytes (`10.0.0.1:8080`) gives a 71-character
//! cookie value; each 16 more bytes of id add about 21 characters. See
//! [`Secrets`] for sharing the secret across gateway replicas and the
//! rolling procedure for rotating it.

use std::fmt;

use http::Request;

mod base64url;
mod codec;
mod cookie;
mod extract;
mod secret;
mod sticky_cookie;
mod token;
#[cfg(feature = "aead")]
mod token_aead;

pub use self::codec::TokenFormat;
pub use self::cookie::{Cookies, Named};
pub use self::extract::{ClientIp, CookieKey, FirstOf, HeaderKey, PathKey, QueryKey};
pub use self::secret::{Secret, Secrets, MAX_PREVIOUS_SECRETS, MAX_SECRET_LEN, MIN_SECRET_LEN};
pub use self::sticky_cookie::{
    SameSite, StickyCookie, VerifiedCookie, INLINE_ID_LEN, MAX_COOKIE_AGE,
};

/// The longest key kept inline, without allocating.
const INLINE: usize = 16;

/// An affinity key borrowed from a request, or a short one held inline (an
/// IP address): extracting a key never allocates.
///
/// ```
/// use tower_lb::sticky::AffinityKey;
///
/// let borrowed = AffinityKey::from(&b"session-1"[..]);
/// assert_eq!(borrowed.as_bytes(), b"session-1");
/// let ip = AffinityKey::inline(&[10, 0, 0, 1]).unwrap();
/// assert_eq!(ip.as_bytes(), [10, 0, 0, 1]);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AffinityKey<'a>(Repr<'a>);

#[derive(Clone, PartialEq, Eq)]
enum Repr<'a> {
    Borrowed(&'a [u8]),
    Inline { len: u8, bytes: [u8; INLINE] },
}

impl<'a> AffinityKey<'a> {
    /// A key of at most 16 bytes, copied inline; `None` if longer.
    pub fn inline(bytes: &[u8]) -> Option<AffinityKey<'static>> {
        if bytes.len() > INLINE {
            return None;
        }
        let mut buf = [0; INLINE];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(AffinityKey(Repr::Inline {
            len: bytes.len() as u8,
            bytes: buf,
        }))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Borrowed(b) => b,
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
        }
    }
}

impl<'a> From<&'a [u8]> for AffinityKey<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        AffinityKey(Repr::Borrowed(bytes))
    }
}

impl<'a> From<&'a str> for AffinityKey<'a> {
    fn from(s: &'a str) -> Self {
        AffinityKey(Repr::Borrowed(s.as_bytes()))
    }
}

impl fmt::Debug for AffinityKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AffinityKey({:?})",
            String::from_utf8_lossy(self.as_bytes())
        )
    }
}

/// Reads an affinity key from a request.
///
/// Implemented by the built-in extractors and by any
/// `Fn(&Request<B>) -> Option<AffinityKey<'_>>` function. A closure whose
/// key borrows from the request compiles when it is given to
/// [`LoadBalanceLayer::key_fn`](crate::layer::LoadBalanceLayer::key_fn),
/// whose bound tells Rust that the result borrows from the argument (given
/// to a method without that bound, such a closure fails with "lifetime may
/// not live long enough"); a `fn` item works anywhere:
///
/// ```
/// use http::Request;
/// use tower_lb::sticky::{AffinityKey, KeyExtractor};
///
/// fn tenant<B>(req: &Request<B>) -> Option<AffinityKey<'_>> {
///     req.headers().get("x-tenant").map(|v| AffinityKey::from(v.as_bytes()))
/// }
///
/// let req = Request::builder().header("x-tenant", "acme").body(()).unwrap();
/// assert_eq!(tenant.extract(&req).unwrap().as_bytes(), b"acme");
/// ```
pub trait KeyExtractor<B> {
    /// The key, or `None` when the request has none.
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<AffinityKey<'r>>;
}

impl<B, F> KeyExtractor<B> for F
where
    F: for<'r> Fn(&'r Request<B>) -> Option<AffinityKey<'r>>,
{
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<AffinityKey<'r>> {
        self(req)
    }
}

/// The extractor that finds no key: strategies pick without affinity.
///
/// ```
/// use tower_lb::sticky::{KeyExtractor, NoKey};
///
/// let req = http::Request::new(());
/// assert!(NoKey.extract(&req).is_none());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKey;

impl<B> KeyExtractor<B> for NoKey {
    fn extract<'r>(&self, _req: &'r Request<B>) -> Option<AffinityKey<'r>> {
        None
    }
}

/// The address of the client that sent a request, as the server accepted
/// the connection: the server inserts it into each request's extensions.
///
/// The director appends it to `X-Forwarded-For` and the client-IP extractor
/// reads it. With hyper, insert it where the connection is accepted:
///
/// ```
/// use std::net::SocketAddr;
/// use tower_lb::sticky::ClientAddr;
///
/// let peer: SocketAddr = "192.0.2.7:50123".parse().unwrap();
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ClientAddr(peer));
/// assert_eq!(req.extensions().get::<ClientAddr>().unwrap().0.ip().to_string(), "192.0.2.7");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub std::net::SocketAddr);
