//! Session affinity: affinity-key extractors and sticky cookies.
//!
//! A [`KeyExtractor`] reads an affinity key from a request (a cookie, a
//! header, the client address...). With [`ConsistentHash`](crate::ConsistentHash)
//! the key gives hash-based affinity: the same key goes to the same backend
//! while it is up.

use std::fmt;

use http::Request;

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
/// `Fn(&Request<B>) -> Option<AffinityKey<'_>>` function.
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
