//! The built-in key extractors and the fallback chain.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::header::HeaderName;
use http::Request;

use super::cookie::Cookies;
use super::{AffinityKey, ClientAddr, KeyExtractor};
use crate::Error;

/// Adds `.or(next)` to an extractor: try it, then `next`.
macro_rules! or_method {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// This extractor, then `next` when this one finds no key.
            pub fn or<E>(self, next: E) -> FirstOf<(Self, E)> {
                FirstOf((self, next))
            }
        }
    )*};
}

or_method!(CookieKey, HeaderKey, ClientIp, QueryKey, PathKey);

/// The value of a cookie, by name.
///
/// The first cookie of that name in any `Cookie` header wins; an empty value
/// is no key. Quotes around the value are removed.
///
/// ```
/// use http::Request;
/// use tower_lb::sticky::{CookieKey, KeyExtractor};
///
/// let by_session = CookieKey::new("session")?;
/// let req = Request::builder()
///     .header("cookie", "theme=dark; session=u-42")
///     .body(())
///     .unwrap();
/// assert_eq!(by_session.extract(&req).unwrap().as_bytes(), b"u-42");
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieKey {
    name: Box<str>,
}

impl CookieKey {
    /// Reads the cookie called `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `name` is not a valid cookie name (an
    /// RFC 7230 token: letters, digits and ``!#$%&'*+-.^_`|~``).
    pub fn new(name: &str) -> Result<Self, Error> {
        check_cookie_name(name)?;
        Ok(CookieKey { name: name.into() })
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<B> KeyExtractor<B> for CookieKey {
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<AffinityKey<'r>> {
        non_empty(Cookies::new(req.headers()).get(self.name.as_bytes())?)
    }
}

/// Checks that `name` is an RFC 7230 token, as RFC 6265 requires of a cookie
/// name.
pub(crate) fn check_cookie_name(name: &str) -> Result<(), Error> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(Error::InvalidConfig {
            reason: format!(
                "`{name}` is not a valid cookie name: use letters, digits and !#$%&'*+-.^_`|~"
            ),
        });
    }
    Ok(())
}

/// The value of a request header, by name (the first value if the header is
/// repeated). An empty value is no key.
///
/// ```
/// use http::Request;
/// use tower_lb::sticky::{HeaderKey, KeyExtractor};
///
/// let by_tenant = HeaderKey::new("x-tenant")?;
/// let req = Request::builder().header("x-tenant", "acme").body(()).unwrap();
/// assert_eq!(by_tenant.extract(&req).unwrap().as_bytes(), b"acme");
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Reads the header called `name` (case-insensitive).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `name` is not a valid header name.
    pub fn new(name: &str) -> Result<Self, Error> {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::InvalidConfig {
            reason: format!("`{name}` is not a valid header name"),
        })?;
        Ok(HeaderKey { name })
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

impl From<HeaderName> for HeaderKey {
    fn from(name: HeaderName) -> Self {
        HeaderKey { name }
    }
}

impl<B> KeyExtractor<B> for HeaderKey {
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<AffinityKey<'r>> {
        non_empty(req.headers().get(&self.name)?.as_bytes())
    }
}

/// The client's IP address: 4 bytes for IPv4 (IPv4-mapped IPv6 addresses
/// included, so a dual-stack listener gives one key per client), 16 for
/// IPv6, held inline. The port is not part of the key.
///
/// By default the address is the connection's peer, from the [`ClientAddr`]
/// extension the server puts on each request; a request without it has no
/// key. `X-Forwarded-For` is ignored: any client can write it.
///
/// Behind `n` proxies of your own, [`trusted_hops(n)`](Self::trusted_hops)
/// reads `X-Forwarded-For` (all its header lines, in order) as Envoy's
/// `xff_num_trusted_hops` does with `use_remote_address`: each trusted proxy
/// appended the address of the host that connected to it, so the `n`-th
/// entry from the right was written by the outermost trusted proxy and names
/// the real client. (Counting the peer as one more entry on the right: the
/// `n` right-most are your proxies, and the client is the one just left of
/// them.) Entries to its left are whatever the client sent and are never
/// read.
///
/// * With fewer than `n` entries the request did not come through all the
///   proxies, and the peer address is used, as Envoy does.
/// * If the chosen entry is not an IP address (`unknown`, an obfuscated
///   identifier, garbage), there is no key: it would not be safe to guess,
///   and a [`FirstOf`] chain moves on to its next extractor. Falling back to
///   the peer instead would put every client behind that proxy on one key.
///
/// Entries may carry a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`) or
/// brackets; empty list elements are skipped (RFC 9110 §5.6.1).
///
/// ```
/// use http::Request;
/// use tower_lb::sticky::{ClientAddr, ClientIp, KeyExtractor};
///
/// let mut req = Request::builder()
///     .header("x-forwarded-for", "6.6.6.6, 203.0.113.9")
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert(ClientAddr("10.0.0.2:50000".parse().unwrap()));
///
/// // Direct: the peer (a proxy here); the header is not trusted.
/// assert_eq!(ClientIp::new().extract(&req).unwrap().as_bytes(), [10, 0, 0, 2]);
/// // Behind one trusted proxy: the entry it appended. The spoofed
/// // 6.6.6.6 is never used.
/// let behind_one = ClientIp::new().trusted_hops(1);
/// assert_eq!(behind_one.extract(&req).unwrap().as_bytes(), [203, 0, 113, 9]);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientIp {
    trusted_hops: usize,
}

impl ClientIp {
    /// The peer address, no proxy trusted.
    pub fn new() -> Self {
        ClientIp { trusted_hops: 0 }
    }

    /// Trusts `n` proxies in front of the gateway (0: the peer address
    /// only).
    pub fn trusted_hops(mut self, n: usize) -> Self {
        self.trusted_hops = n;
        self
    }

    /// The client's address for `req`, by the rules above.
    pub fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = || req.extensions().get::<ClientAddr>().map(|a| a.0.ip());
        if self.trusted_hops == 0 {
            return peer();
        }
        let entry = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','))
            .map(trim)
            .filter(|entry| !entry.is_empty())
            .nth(self.trusted_hops - 1);
        match entry {
            Some(entry) => parse_forwarded_ip(entry),
            None => peer(),
        }
    }
}

impl<B> KeyExtractor<B> for ClientIp {
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<AffinityKey<'r>> {
        match canonical(self.client_ip(req)?) {
            IpAddr::V4(v4) => AffinityKey::inline(&v4.octets()),
            IpAddr::V6(v6) => AffinityKey::inline(&v6.octets()),
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An `X-Forwarded-For` entry: `ip`, `ipv4:port`, `[ipv6]` or
/// `[ipv6]:port`.
fn parse_forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
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

/// The value of a query parameter, by name, as it appears in the URI
/// (percent-encoding is not decoded, so `a%20b` and `a+b` are different
/// keys). The first occurrence wins; an empty value is no key.
///
/// ```
/// use http::Request;
/// use tower_lb::sticky::{KeyExtractor, QueryKey};
///
/// let by_room = QueryKey::new("room")?;
/// let req = Request::builder().uri("/ws?v=2&room=lobby-7").body(()).unwrap();
/// assert_eq!(by_room.extract(&req).unwrap().as_bytes(), b"lobby-7");
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryKey {
    param: Box<str>,
}

impl QueryKey {
    /// Reads the query parameter called `param`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `param` is empty or contains `&`, `=` or
    /// `#`.
    pub fn new(param: &str) -> Result<Self, Error> {
        if param.is_empty() || param.contains(['&', '=', '#']) {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "`{param}` is not a usable query parameter name: it must be non-empty, without `&`, `=` or `#`"
                ),
            });
        }
        Ok(QueryKey {
            param: param.into(),
        })
    }

    /// The parameter's name.
    pub fn param(&self) -> &str {
        &self.param
    }
}

impl<B> KeyExtractor<B> for QueryKey {
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<AffinityKey<'r>> {
        let query = req.uri().query()?;
        let value = query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == &*self.param).then_some(value)
        })?;
        non_empty(value.as_bytes())
    }
}

/// The request path, whole or one segment of it (the query is not part of
/// it).
///
/// Segments are counted from 0 after the leading `/`, without decoding:
/// in `/users/42/avatar`, segment 0 is `users` and segment 1 is `42`. An
/// empty or missing segment is no key.
///
/// ```
/// use http::Request;
/// use tower_lb::sticky::{KeyExtractor, PathKey};
///
/// let req = Request::builder().uri("/tenants/acme/orders?page=2").body(()).unwrap();
/// assert_eq!(PathKey::whole().extract(&req).unwrap().as_bytes(), b"/tenants/acme/orders");
/// assert_eq!(PathKey::segment(1).extract(&req).unwrap().as_bytes(), b"acme");
/// assert!(PathKey::segment(5).extract(&req).is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathKey {
    segment: Option<usize>,
}

impl PathKey {
    /// The whole path.
    pub fn whole() -> Self {
        PathKey { segment: None }
    }

    /// Segment `index` of the path, from 0.
    pub fn segment(index: usize) -> Self {
        PathKey {
            segment: Some(index),
        }
    }
}

impl<B> KeyExtractor<B> for PathKey {
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<AffinityKey<'r>> {
        let path = req.uri().path();
        match self.segment {
            None => non_empty(path.as_bytes()),
            Some(index) => {
                let rest = path.strip_prefix('/').unwrap_or(path);
                non_empty(rest.split('/').nth(index)?.as_bytes())
            }
        }
    }
}

fn non_empty(bytes: &[u8]) -> Option<AffinityKey<'_>> {
    (!bytes.is_empty()).then(|| AffinityKey::from(bytes))
}

/// A fallback chain: the first key any of the extractors finds, tried in
/// order.
///
/// A tuple of up to eight extractors (of any types), or an array of one
/// type. The built-in extractors' `.or(next)` builds a two-element chain.
///
/// ```
/// use http::Request;
/// use tower_lb::sticky::{ClientAddr, ClientIp, CookieKey, FirstOf, HeaderKey, KeyExtractor};
///
/// let key = FirstOf((CookieKey::new("session")?, HeaderKey::new("x-session")?, ClientIp::new()));
///
/// let mut req = Request::builder().header("x-session", "s-9").body(()).unwrap();
/// req.extensions_mut().insert(ClientAddr("192.0.2.1:4000".parse().unwrap()));
/// assert_eq!(key.extract(&req).unwrap().as_bytes(), b"s-9");
///
/// // The same chain, built with `.or`.
/// let key = CookieKey::new("session")?.or(HeaderKey::new("x-session")?).or(ClientIp::new());
/// assert_eq!(key.extract(&req).unwrap().as_bytes(), b"s-9");
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirstOf<T>(pub T);

impl<T> FirstOf<T> {
    /// This chain, then `next`.
    pub fn or<E>(self, next: E) -> FirstOf<(Self, E)> {
        FirstOf((self, next))
    }
}

macro_rules! first_of_tuple {
    ($($x:ident),+) => {
        impl<B, $($x: KeyExtractor<B>),+> KeyExtractor<B> for FirstOf<($($x,)+)> {
            #[allow(non_snake_case)]
            fn extract<'r>(&self, req: &'r Request<B>) -> Option<AffinityKey<'r>> {
                let ($($x,)+) = &self.0;
                $(
                    if let Some(key) = $x.extract(req) {
                        return Some(key);
                    }
                )+
                None
            }
        }
    };
}

first_of_tuple!(X1, X2);
first_of_tuple!(X1, X2, X3);
first_of_tuple!(X1, X2, X3, X4);
first_of_tuple!(X1, X2, X3, X4, X5);
first_of_tuple!(X1, X2, X3, X4, X5, X6);
first_of_tuple!(X1, X2, X3, X4, X5, X6, X7);
first_of_tuple!(X1, X2, X3, X4, X5, X6, X7, X8);

impl<B, E: KeyExtractor<B>, const N: usize> KeyExtractor<B> for FirstOf<[E; N]> {
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<AffinityKey<'r>> {
        self.0.iter().find_map(|e| e.extract(req))
    }
}

impl<B, E: KeyExtractor<B>> KeyExtractor<B> for FirstOf<Vec<E>> {
    fn extract<'r>(&self, req: &'r Request<B>) -> Option<AffinityKey<'r>> {
        self.0.iter().find_map(|e| e.extract(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req_with(headers: &[(&str, &str)], peer: Option<&str>) -> Request<()> {
        let mut b = Request::builder();
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let mut req = b.body(()).unwrap();
        if let Some(peer) = peer {
            req.extensions_mut()
                .insert(ClientAddr(peer.parse().unwrap()));
        }
        req
    }

    fn key<E: KeyExtractor<()>>(e: &E, req: &Request<()>) -> Option<Vec<u8>> {
        e.extract(req).map(|k| k.as_bytes().to_vec())
    }

    #[test]
    fn cookie_key_finds_its_cookie_among_others_and_ignores_empty_values() {
        let c = CookieKey::new("sid").unwrap();
        let req = req_with(
            &[("cookie", "a=1; sid2=x"), ("cookie", "sid=\"v\"; b=2")],
            None,
        );
        assert_eq!(key(&c, &req).unwrap(), b"v");
        let empty = req_with(&[("cookie", "sid=; sid=later")], None);
        assert_eq!(key(&c, &empty), None);
        assert_eq!(key(&c, &req_with(&[], None)), None);
    }

    #[test]
    fn invalid_names_are_configuration_errors() {
        for bad in ["", "a b", "a;b", "a=b", "é"] {
            assert!(
                matches!(CookieKey::new(bad), Err(Error::InvalidConfig { .. })),
                "{bad:?}"
            );
        }
        assert!(HeaderKey::new("bad header").is_err());
        assert!(QueryKey::new("").is_err());
        assert!(QueryKey::new("a=b").is_err());
    }

    #[test]
    fn header_key_reads_the_first_value() {
        let h = HeaderKey::new("X-Session").unwrap();
        let req = req_with(&[("x-session", "one"), ("x-session", "two")], None);
        assert_eq!(key(&h, &req).unwrap(), b"one");
        assert_eq!(key(&h, &req_with(&[("x-session", "")], None)), None);
    }

    #[test]
    fn client_ip_is_the_peer_and_ignores_forwarded_for_by_default() {
        let req = req_with(&[("x-forwarded-for", "6.6.6.6")], Some("192.0.2.1:4000"));
        assert_eq!(key(&ClientIp::new(), &req).unwrap(), [192, 0, 2, 1]);
        let no_peer = req_with(&[("x-forwarded-for", "6.6.6.6")], None);
        assert_eq!(key(&ClientIp::new(), &no_peer), None);
    }

    #[test]
    fn client_ip_keys_ignore_the_port_and_unmap_ipv4_in_ipv6() {
        let a = req_with(&[], Some("192.0.2.1:1"));
        let b = req_with(&[], Some("[::ffff:192.0.2.1]:2"));
        assert_eq!(key(&ClientIp::new(), &a), key(&ClientIp::new(), &b));
        let v6 = req_with(&[], Some("[2001:db8::1]:2"));
        assert_eq!(key(&ClientIp::new(), &v6).unwrap().len(), 16);
    }

    #[test]
    fn trusted_hops_take_the_nth_entry_from_the_right_across_header_lines() {
        let req = req_with(
            &[
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
                ("x-forwarded-for", "3.3.3.3,, 4.4.4.4 "),
            ],
            Some("10.0.0.1:1"),
        );
        let ip = |n| key(&ClientIp::new().trusted_hops(n), &req);
        assert_eq!(ip(0).unwrap(), [10, 0, 0, 1]);
        assert_eq!(ip(1).unwrap(), [4, 4, 4, 4]);
        assert_eq!(ip(2).unwrap(), [3, 3, 3, 3]);
        assert_eq!(ip(4).unwrap(), [1, 1, 1, 1]);
        // Fewer entries than trusted hops: the peer, as Envoy does.
        assert_eq!(ip(5).unwrap(), [10, 0, 0, 1]);
    }

    #[test]
    fn a_garbage_trusted_entry_gives_no_key() {
        for garbage in ["unknown", "_hidden", "1.2.3", "[::1", "999.1.1.1"] {
            let req = req_with(&[("x-forwarded-for", garbage)], Some("10.0.0.1:1"));
            assert_eq!(
                key(&ClientIp::new().trusted_hops(1), &req),
                None,
                "{garbage}"
            );
        }
    }

    #[test]
    fn forwarded_entries_may_carry_ports_and_brackets() {
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        for (entry, expected) in [
            ("192.0.2.1:4711", vec![192, 0, 2, 1]),
            ("[2001:db8::1]:4711", v6.octets().to_vec()),
            ("[2001:db8::1]", v6.octets().to_vec()),
            ("2001:db8::1", v6.octets().to_vec()),
        ] {
            let req = req_with(&[("x-forwarded-for", entry)], None);
            assert_eq!(
                key(&ClientIp::new().trusted_hops(1), &req).unwrap(),
                expected
            );
        }
    }

    #[test]
    fn query_key_matches_names_exactly_and_skips_empty_values() {
        let q = QueryKey::new("room").unwrap();
        let req = |uri: &str| Request::builder().uri(uri).body(()).unwrap();
        assert_eq!(key(&q, &req("/?xroom=1&room=2&room=3")).unwrap(), b"2");
        assert_eq!(key(&q, &req("/?room=&x=1")), None);
        assert_eq!(key(&q, &req("/?room")), None);
        assert_eq!(key(&q, &req("/")), None);
    }

    #[test]
    fn path_key_segments_count_from_zero_after_the_leading_slash() {
        let req = Request::builder().uri("/a//c").body(()).unwrap();
        assert_eq!(key(&PathKey::whole(), &req).unwrap(), b"/a//c");
        assert_eq!(key(&PathKey::segment(0), &req).unwrap(), b"a");
        assert_eq!(key(&PathKey::segment(1), &req), None);
        assert_eq!(key(&PathKey::segment(2), &req).unwrap(), b"c");
        assert_eq!(key(&PathKey::segment(3), &req), None);
    }

    #[test]
    fn first_of_tries_in_order() {
        let chain = FirstOf((
            CookieKey::new("sid").unwrap(),
            HeaderKey::new("x-sid").unwrap(),
            ClientIp::new(),
        ));
        let peer = Some("192.0.2.1:1");
        let both = req_with(&[("cookie", "sid=c"), ("x-sid", "h")], peer);
        assert_eq!(key(&chain, &both).unwrap(), b"c");
        let header = req_with(&[("x-sid", "h")], peer);
        assert_eq!(key(&chain, &header).unwrap(), b"h");
        let neither = req_with(&[], peer);
        assert_eq!(key(&chain, &neither).unwrap(), [192, 0, 2, 1]);
        assert_eq!(key(&chain, &req_with(&[], None)), None);

        let array = FirstOf([HeaderKey::new("a").unwrap(), HeaderKey::new("b").unwrap()]);
        assert_eq!(key(&array, &req_with(&[("b", "2")], None)).unwrap(), b"2");
    }

    #[test]
    fn functions_chain_with_built_ins() {
        fn tenant<B>(req: &Request<B>) -> Option<AffinityKey<'_>> {
            req.headers()
                .get("x-tenant")
                .map(|v| AffinityKey::from(v.as_bytes()))
        }
        let chain = CookieKey::new("sid").unwrap().or(tenant::<()>);
        assert_eq!(
            key(&chain, &req_with(&[("x-tenant", "t")], None)).unwrap(),
            b"t"
        );
    }

    proptest! {
        #[test]
        fn any_forwarded_for_value_is_read_safely(
            xff in "[0-9a-f:.,\\[\\] ]{0,48}",
            hops in 0usize..6,
        ) {
            let req = req_with(&[("x-forwarded-for", &xff)], Some("10.0.0.1:1"));
            let got = ClientIp::new().trusted_hops(hops).extract(&req);
            if let Some(k) = got {
                prop_assert!(k.as_bytes().len() == 4 || k.as_bytes().len() == 16);
            }
        }
    }
}
