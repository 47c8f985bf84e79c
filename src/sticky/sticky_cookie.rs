//! `StickyCookie`: the configuration and the checks of an inserted cookie.

use std::cell::Cell;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{CACHE_CONTROL, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use super::base64url;
use super::codec::{unverified_expiry, TokenFormat, MAX_TOKEN, MIN_TOKEN};
use super::cookie::{remove_cookie, Cookies};
use super::extract::check_cookie_name;
use super::secret::{CookieKeys, Secrets};
use super::token::NEVER;
use crate::{Error, MAX_ID_LEN};

/// The longest [`max_age`](StickyCookie::max_age) accepted: 400 days, the
/// cap browsers put on any cookie's lifetime (RFC 6265bis §5.5).
pub const MAX_COOKIE_AGE: Duration = Duration::from_secs(400 * 86_400);

/// The latest expiry a token is given, whatever clock it was issued by:
/// the last second of year 9999, the latest an HTTP date can say, and a
/// time every platform's `SystemTime` can hold.
const LATEST_EXPIRY: u64 = 253_402_300_799;

/// How many cookies of the sticky name one request may make the gateway
/// check. A client holds at most a few (one per path or domain); more are
/// an attempt to make the gateway work, and are ignored.
const MAX_CANDIDATES: usize = 4;

/// The `SameSite` attribute of the inserted cookie (RFC 6265bis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SameSite {
    /// Sent only with requests from the same site.
    Strict,
    /// Sent with same-site requests and top-level navigations.
    Lax,
    /// Sent with every request; browsers require [`secure`](StickyCookie::secure)
    /// with it.
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// Session persistence by cookie insertion, as HAProxy's
/// `cookie NAME insert indirect nocache` with `option redispatch`.
///
/// The load-balance layer calls [`verify`](Self::verify) on each request:
/// a valid cookie names the backend to use. When a request has none (or its
/// backend is down or gone), the layer picks as usual and adds
/// [`set_cookie`](Self::set_cookie) for the chosen backend to the response.
/// [`strip`](Self::strip) removes the cookie from the request sent upstream.
///
/// The cookie's value is an opaque token: the backend's id, encrypted and
/// authenticated under the secret (see the [module docs](super) for the
/// format). A client can neither read which backend it names nor make one
/// that names another: a tampered, forged, expired or unknown token counts
/// as no cookie at all, so no cookie value can send a request anywhere but
/// to a configured backend.
///
/// **Several gateway replicas** honour each other's cookies when they are
/// given the same [`Secret`](super::Secret) and the same backend ids (ids
/// default to the backend's `host:port`; set them with
/// [`Backend::with_id`](crate::Backend::with_id) when replicas see the
/// backends under different addresses). Load the secret from your secret
/// store; never compile it in.
///
/// **Rotating the secret** without a restart or lost sessions: keep a clone
/// of the [`Secrets`] handle the cookie was made with and rotate through it
/// while requests run; cookies made with a previous secret still route and
/// are re-issued under the current one (see [`Secrets`] for the rolling
/// procedure across replicas).
///
/// ```
/// use std::time::Duration;
/// use http::HeaderMap;
/// use tower_lb::sticky::{SameSite, Secret, StickyCookie};
///
/// # std::env::set_var("STICKY_SECRET", Secret::generate()?.to_base64());
/// // 32 random bytes in base64, from `openssl rand -base64 32`, given to
/// // every replica through the environment.
/// let secret: Secret = std::env::var("STICKY_SECRET").unwrap().parse()?;
/// let sticky = StickyCookie::new("lb", secret)?
///     .max_age(Duration::from_secs(3600))?
///     .secure(true)
///     .same_site(SameSite::Lax);
///
/// // A response gets the cookie naming the chosen backend...
/// let set_cookie = sticky.set_cookie("game-7")?;
/// let value = set_cookie.to_str().unwrap();
/// assert!(value.starts_with("lb="));
/// assert!(value.contains("; Path=/; Max-Age=3600; Expires="));
/// assert!(value.ends_with(" GMT; HttpOnly; Secure; SameSite=Lax"));
/// assert!(!value.contains("game-7"));
///
/// // ...and the client's next request names it again.
/// let token = value.split(';').next().unwrap();
/// let mut headers = HeaderMap::new();
/// headers.insert("cookie", format!("theme=dark; {token}").parse().unwrap());
/// assert_eq!(sticky.verify(&headers).unwrap().id(), "game-7");
///
/// // Anything else is no cookie.
/// headers.insert("cookie", "lb=10.0.0.9:8080".parse().unwrap());
/// assert!(sticky.verify(&headers).is_none());
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone)]
pub struct StickyCookie {
    name: Box<str>,
    keys: Arc<CookieKeys>,
    /// The format new tokens are made in.
    format: TokenFormat,
    /// The formats accepted, as a set of `TokenFormat::bit`s.
    accepted: u8,
    path: Option<Box<str>>,
    domain: Option<Box<str>>,
    max_age: Option<u64>,
    http_only: bool,
    secure: bool,
    same_site: Option<SameSite>,
    strip_upstream: bool,
    nocache: bool,
    preserve: bool,
}

impl StickyCookie {
    /// A sticky cookie called `name`, authenticated under `secrets`: a
    /// [`Secret`](super::Secret), or a [`Secrets`] handle to rotate it
    /// later while requests run.
    ///
    /// Defaults: `Path=/`, `HttpOnly`, no `Domain`, no `Secure`, no
    /// `SameSite`, a session cookie (no `Max-Age`), stripped from the
    /// request sent upstream, responses that carry it marked
    /// `Cache-Control: private`, tokens in [`TokenFormat::SipHash`].
    ///
    /// Anyone who knows the secret can make cookies for any configured
    /// backend: generate it ([`Secret::generate`](super::Secret::generate),
    /// `openssl rand -base64 32`) and keep it in a secret store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `name` is not a valid cookie name.
    pub fn new(name: &str, secrets: impl Into<Secrets>) -> Result<Self, Error> {
        check_cookie_name(name)?;
        let cookie = StickyCookie {
            name: name.into(),
            keys: Arc::new(CookieKeys::new(name, secrets.into())),
            format: TokenFormat::SipHash,
            accepted: TokenFormat::SipHash.bit(),
            path: Some("/".into()),
            domain: None,
            max_age: None,
            http_only: true,
            secure: false,
            same_site: None,
            strip_upstream: true,
            nocache: true,
            preserve: false,
        };
        // Browsers keep `__Secure-` and `__Host-` cookies only when Secure.
        let secure = cookie.requires_secure();
        Ok(cookie.secure(secure))
    }

    /// The handle of the secrets this cookie uses: rotate them through it
    /// (or through any clone of the handle given to [`new`](Self::new)).
    pub fn secrets(&self) -> &Secrets {
        self.keys.secrets()
    }

    /// Makes new tokens in `format` (default [`TokenFormat::SipHash`]),
    /// and accepts only that format, until
    /// [`accept_token_format`](Self::accept_token_format) adds another.
    ///
    /// ```
    /// # #[cfg(feature = "aead")] {
    /// use tower_lb::sticky::{Secret, StickyCookie, TokenFormat};
    ///
    /// // A fleet moving to the AEAD, step 2 of 3: issue it, still accept
    /// // the default format (re-issued as clients come back).
    /// let sticky = StickyCookie::new("lb", Secret::generate()?)?
    ///     .token_format(TokenFormat::XChaCha20Poly1305)
    ///     .accept_token_format(TokenFormat::SipHash);
    /// assert_eq!(sticky.issued_token_format(), TokenFormat::XChaCha20Poly1305);
    /// # }
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn token_format(mut self, format: TokenFormat) -> Self {
        self.format = format;
        self.accepted = format.bit();
        self
    }

    /// Also accepts tokens in `format`, re-issuing them in the
    /// [`token_format`](Self::token_format): for moving a fleet from one
    /// format to another without losing sessions, in the three steps of a
    /// secret rotation (accept the new format everywhere, issue it
    /// everywhere while accepting the old, stop accepting the old after
    /// the cookie's `max_age`).
    pub fn accept_token_format(mut self, format: TokenFormat) -> Self {
        self.accepted |= format.bit();
        self
    }

    /// The format new tokens are made in.
    pub fn issued_token_format(&self) -> TokenFormat {
        self.format
    }

    /// Sets the `Path` attribute (default `/`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] unless `path` starts with `/` and holds only
    /// visible ASCII other than `;`.
    pub fn path(mut self, path: &str) -> Result<Self, Error> {
        if self.name.starts_with("__Host-") && path != "/" {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "a `__Host-` cookie must have Path=/ (browsers drop it otherwise), not `{path}`"
                ),
            });
        }
        let ok = path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic() && b != b';');
        if !ok {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "`{path}` is not a usable cookie Path: start it with `/`, without spaces, `;` or control characters"
                ),
            });
        }
        self.path = Some(path.into());
        Ok(self)
    }

    /// Sets the `Domain` attribute (by default there is none, and the
    /// cookie goes back only to the host that set it).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] unless `domain` is a host name: letters,
    /// digits, `-` and `.`, at most 253 bytes.
    pub fn domain(mut self, domain: &str) -> Result<Self, Error> {
        if self.name.starts_with("__Host-") {
            return Err(Error::InvalidConfig {
                reason: "a `__Host-` cookie may not have a Domain (browsers drop it otherwise)"
                    .into(),
            });
        }
        let host = domain.strip_prefix('.').unwrap_or(domain);
        let ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "`{domain}` is not a usable cookie Domain: give a host name such as `example.com`"
                ),
            });
        }
        self.domain = Some(domain.into());
        Ok(self)
    }

    /// Makes the cookie persistent: `Max-Age` and `Expires` attributes, and
    /// a token that expires at the same time (whole seconds). While a client
    /// keeps using it, the cookie is re-issued once past half its lifetime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a lifetime under one second or over
    /// [`MAX_COOKIE_AGE`] (400 days), the most browsers keep a cookie.
    pub fn max_age(mut self, max_age: Duration) -> Result<Self, Error> {
        if max_age.as_secs() == 0 {
            return Err(Error::InvalidConfig {
                reason: "the sticky cookie's max_age must be at least one second".into(),
            });
        }
        if max_age > MAX_COOKIE_AGE {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "the sticky cookie's max_age of {} s is over 400 days ({} s), which browsers \
                     cap cookie lifetimes at (RFC 6265bis §5.5): give at most 400 days",
                    max_age.as_secs(),
                    MAX_COOKIE_AGE.as_secs()
                ),
            });
        }
        self.max_age = Some(max_age.as_secs());
        Ok(self)
    }

    /// Sets the `HttpOnly` attribute (default on: page scripts never need
    /// the balancer's cookie).
    pub fn http_only(mut self, on: bool) -> Self {
        self.http_only = on;
        self
    }

    /// Sets the `Secure` attribute (default off; turn it on when clients
    /// reach the gateway over TLS). It stays on, whatever `on` says, for
    /// names with the `__Secure-` or `__Host-` prefix and with
    /// `SameSite=None`, which browsers reject without it.
    pub fn secure(mut self, on: bool) -> Self {
        self.secure = on || self.requires_secure();
        self
    }

    fn requires_secure(&self) -> bool {
        self.name.starts_with("__Secure-")
            || self.name.starts_with("__Host-")
            || self.same_site == Some(SameSite::None)
    }

    /// Sets the `SameSite` attribute (by default there is none, and browsers
    /// treat the cookie as `Lax`). `SameSite::None` turns `Secure` on too:
    /// browsers drop a `SameSite=None` cookie that is not `Secure`.
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        if same_site == SameSite::None {
            self.secure = true;
        }
        self.same_site = Some(same_site);
        self
    }

    /// Whether the load-balance layer removes the sticky cookie from the
    /// request it sends upstream (default `true`: backends never see it).
    pub fn strip_upstream(mut self, on: bool) -> Self {
        self.strip_upstream = on;
        self
    }

    /// Whether a response that gets the cookie is also marked
    /// `Cache-Control: private` (default `true`, HAProxy's `nocache`), so
    /// that a shared cache does not hand one client's cookie, and so its
    /// backend, to everyone who asks for the same page.
    pub fn nocache(mut self, on: bool) -> Self {
        self.nocache = on;
        self
    }

    /// Whether a backend may set the sticky cookie itself (default
    /// `false`), as HAProxy's `preserve`: when a response from the backend
    /// already carries a `Set-Cookie` of the sticky name, it is left as it
    /// is and no cookie is inserted, so that an application can end
    /// persistence itself (a logout that expires the cookie). Without it,
    /// a backend's cookie of that name is removed from every response
    /// ([`remove_backend_cookie`](Self::remove_backend_cookie)): only the
    /// balancer decides where the client sticks.
    pub fn preserve(mut self, on: bool) -> Self {
        self.preserve = on;
        self
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the cookie is removed from requests sent upstream.
    pub fn strips_upstream(&self) -> bool {
        self.strip_upstream
    }

    /// The backend named by the request's sticky cookie, if it carries a
    /// valid one: made with the secret (or the previous one), untampered,
    /// not expired. Several `Cookie` headers, other cookies and quotes are
    /// handled; anything else counts as no cookie.
    pub fn verify(&self, headers: &HeaderMap) -> Option<VerifiedCookie> {
        self.verify_with(headers, SystemTime::now)
    }

    /// [`verify`](Self::verify) as of `now`.
    pub fn verify_at(&self, headers: &HeaderMap, now: SystemTime) -> Option<VerifiedCookie> {
        self.verify_with(headers, || now)
    }

    /// Checks one cookie value (a token as made by
    /// [`token_at`](Self::token_at)) as of `now`.
    pub fn verify_token_at(&self, token: &[u8], now: SystemTime) -> Option<VerifiedCookie> {
        self.check(token, || now)
    }

    fn verify_with(
        &self,
        headers: &HeaderMap,
        now: impl Fn() -> SystemTime,
    ) -> Option<VerifiedCookie> {
        Cookies::new(headers)
            .named(self.name.as_bytes())
            .take(MAX_CANDIDATES)
            .find_map(|value| self.check(value, &now))
    }

    /// The cookie `token` is, if valid. The clock is read only for a token
    /// that can expire.
    fn check(&self, token: &[u8], now: impl Fn() -> SystemTime) -> Option<VerifiedCookie> {
        let encoded_range = base64url::encoded_len(MIN_TOKEN)..=base64url::encoded_len(MAX_TOKEN);
        if !encoded_range.contains(&token.len()) {
            return None;
        }
        let mut buf = [0u8; MAX_TOKEN];
        let raw_len = base64url::decode_into(token, &mut buf)?;
        let raw = &mut buf[..raw_len];
        // An expired token is rejected before any hashing; the expiry is
        // authenticated below with the rest.
        let expiry = unverified_expiry(raw)?;
        let mut now_secs = None;
        if expiry != NEVER {
            let now = unix_seconds(now());
            if expiry <= now {
                return None;
            }
            now_secs = Some(now);
        }
        // Decrypted in place; a token the current keys reject is untouched,
        // and tried under the previous ones.
        let accepted = self.accepted;
        let (id, previous) = self.keys.with(|keys| {
            if let Some(id) = keys.current.open_in_place(raw, accepted) {
                return Some((id, false));
            }
            keys.previous
                .iter()
                .find_map(|k| k.open_in_place(raw, accepted))
                .map(|id| (id, true))
        })?;
        // Made with a previous secret or in a format being migrated from.
        let previous = previous || raw[0] != self.format.version();
        // Ids are nearly always ASCII, checked without a call.
        let id_bytes = &raw[id.clone()];
        if !id_bytes.is_ascii() && std::str::from_utf8(id_bytes).is_err() {
            return None;
        }
        // Renewed when made with the previous secret, when past half its
        // lifetime, or when it outlives the lifetime configured now (a
        // session token, or one made under a longer max_age): so that
        // turning max_age on or shortening it reaches cookies already out.
        let reissue = previous
            || match (self.max_age, now_secs) {
                (Some(_), None) => true,
                (Some(max_age), Some(now)) => {
                    let left = expiry - now;
                    left < max_age.div_ceil(2) || left > max_age.saturating_add(CLOCK_SKEW)
                }
                (None, _) => false,
            };
        Some(VerifiedCookie {
            id: StoredId::new(&buf, id),
            expiry,
            reissue,
        })
    }

    /// The `Set-Cookie` value naming the backend `id`:
    /// `name=token; Path=/; ...`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBackendId`] if `id` is empty or longer than
    /// [`MAX_ID_LEN`] bytes.
    pub fn set_cookie(&self, id: &str) -> Result<HeaderValue, Error> {
        self.set_cookie_at(id, SystemTime::now())
    }

    /// [`set_cookie`](Self::set_cookie) as of `now`.
    ///
    /// # Errors
    ///
    /// As [`set_cookie`](Self::set_cookie).
    pub fn set_cookie_at(&self, id: &str, now: SystemTime) -> Result<HeaderValue, Error> {
        let mut out = String::with_capacity(160);
        out.push_str(&self.name);
        out.push('=');
        self.write_token(id, now, &mut out)?;
        if let Some(path) = &self.path {
            out.push_str("; Path=");
            out.push_str(path);
        }
        if let Some(domain) = &self.domain {
            out.push_str("; Domain=");
            out.push_str(domain);
        }
        if let Some(max_age) = self.max_age {
            out.push_str("; Max-Age=");
            out.push_str(&max_age.to_string());
            out.push_str("; Expires=");
            write_http_date(unix_seconds(now).saturating_add(max_age), &mut out);
        }
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        if self.secure {
            out.push_str("; Secure");
        }
        if let Some(same_site) = self.same_site {
            out.push_str("; SameSite=");
            out.push_str(same_site.as_str());
        }
        // Every part was validated to be visible ASCII.
        HeaderValue::try_from(out).map_err(|_| Error::InvalidConfig {
            reason: "the sticky cookie's attributes do not form a valid header value".into(),
        })
    }

    /// The cookie value alone (the opaque token) naming backend `id`, as of
    /// `now`: for carrying it somewhere other than a `Set-Cookie` header.
    ///
    /// # Errors
    ///
    /// As [`set_cookie`](Self::set_cookie).
    pub fn token_at(&self, id: &str, now: SystemTime) -> Result<String, Error> {
        let mut out = String::new();
        self.write_token(id, now, &mut out)?;
        Ok(out)
    }

    fn write_token(&self, id: &str, now: SystemTime, out: &mut String) -> Result<(), Error> {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(Error::InvalidBackendId {
                id: id.to_owned(),
                max: MAX_ID_LEN,
            });
        }
        let expiry = match self.max_age {
            Some(max_age) => unix_seconds(now).saturating_add(max_age).min(LATEST_EXPIRY),
            None => NEVER,
        };
        let mut raw = [0u8; MAX_TOKEN];
        let len = self.keys.with(|keys| {
            keys.current
                .seal(self.format, id.as_bytes(), expiry, &mut raw)
        });
        base64url::encode_into(&raw[..len], out);
        Ok(())
    }

    /// Adds the cookie naming backend `id` to a response's headers: a
    /// `Set-Cookie` header and, with [`nocache`](Self::nocache), a
    /// `Cache-Control: private` directive unless the response already says
    /// `private` or `no-store`.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tower_lb::sticky::{Secret, StickyCookie};
    ///
    /// let sticky = StickyCookie::new("lb", Secret::generate()?)?;
    /// let mut headers = HeaderMap::new();
    /// headers.insert("cache-control", "max-age=60".parse().unwrap());
    /// sticky.insert(&mut headers, "game-7")?;
    /// assert!(headers["set-cookie"].to_str().unwrap().starts_with("lb="));
    /// let cache: Vec<_> = headers.get_all("cache-control").iter().collect();
    /// assert_eq!(cache, ["max-age=60", "private"]);
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`set_cookie`](Self::set_cookie); the headers are unchanged then.
    pub fn insert(&self, headers: &mut HeaderMap, id: &str) -> Result<(), Error> {
        let value = self.set_cookie(id)?;
        headers.append(SET_COOKIE, value);
        if self.nocache && !is_private(headers) {
            headers.append(CACHE_CONTROL, HeaderValue::from_static("private"));
        }
        Ok(())
    }

    /// Deals with a `Set-Cookie` of the sticky name that the backend put in
    /// its response: with [`preserve`](Self::preserve) it stays, and this
    /// returns `true` (the balancer then inserts no cookie of its own);
    /// otherwise every such line is removed, the other `Set-Cookie` lines
    /// kept in order, and this returns `false`. Allocates only when it
    /// removes something.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tower_lb::sticky::{Secret, StickyCookie};
    ///
    /// let sticky = StickyCookie::new("lb", Secret::generate()?)?;
    /// let mut headers = HeaderMap::new();
    /// headers.append("set-cookie", "lb=; Max-Age=0".parse().unwrap());
    /// headers.append("set-cookie", "session=abc; HttpOnly".parse().unwrap());
    /// assert!(!sticky.remove_backend_cookie(&mut headers));
    /// let left: Vec<_> = headers.get_all("set-cookie").iter().collect();
    /// assert_eq!(left, ["session=abc; HttpOnly"]);
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn remove_backend_cookie(&self, headers: &mut HeaderMap) -> bool {
        let is_sticky = |value: &HeaderValue| {
            // `Set-Cookie: name=value; attributes` (RFC 6265 §4.1.1).
            let pair = value.as_bytes().split(|&b| b == b';').next();
            let name = pair.and_then(|p| p.split(|&b| b == b'=').next());
            name.is_some_and(|n| n.trim_ascii() == self.name.as_bytes())
        };
        if !headers.get_all(SET_COOKIE).iter().any(is_sticky) {
            return false;
        }
        if self.preserve {
            return true;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .filter(|v| !is_sticky(v))
            .cloned()
            .collect();
        headers.remove(SET_COOKIE);
        for value in kept {
            headers.append(SET_COOKIE, value);
        }
        false
    }

    /// Removes the sticky cookie from the request's `Cookie` headers,
    /// keeping every other cookie; a header left empty is removed. Returns
    /// whether it was there. Allocates only when it removes something.
    pub fn strip(&self, headers: &mut HeaderMap) -> bool {
        remove_cookie(headers, self.name.as_bytes())
    }
}

/// Whether `Cache-Control` already keeps shared caches from storing the
/// response.
fn is_private(headers: &HeaderMap) -> bool {
    headers.get_all(CACHE_CONTROL).iter().any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|directive| {
            let name = directive.split(|&b| b == b'=').next().unwrap_or_default();
            let name = name.trim_ascii();
            name.eq_ignore_ascii_case(b"private") || name.eq_ignore_ascii_case(b"no-store")
        })
    })
}

/// Seconds a token's expiry may lie beyond `now + max_age` (clocks of
/// gateway replicas differ a little) before it is renewed.
const CLOCK_SKEW: u64 = 300;

impl fmt::Debug for StickyCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyCookie")
            .field("name", &self.name)
            .field("secrets", self.keys.secrets())
            .field("token_format", &self.format)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("max_age", &self.max_age.map(Duration::from_secs))
            .field("http_only", &self.http_only)
            .field("secure", &self.secure)
            .field("same_site", &self.same_site)
            .field("strip_upstream", &self.strip_upstream)
            .field("nocache", &self.nocache)
            .field("preserve", &self.preserve)
            .finish()
    }
}

/// A valid sticky cookie: the backend id it names, read from the request
/// without allocating when the id is at most [`INLINE_ID_LEN`] bytes long.
#[derive(Clone)]
pub struct VerifiedCookie {
    id: StoredId,
    expiry: u64,
    reissue: bool,
}

/// The longest backend id a [`VerifiedCookie`] holds without allocating:
/// room for `host:port` with a DNS name such as a Kubernetes service's.
/// Longer ids (up to [`MAX_ID_LEN`]) cost one allocation per verified
/// cookie, and work the same.
///
/// ```
/// use std::time::SystemTime;
/// use tower_lb::sticky::{Secret, StickyCookie, INLINE_ID_LEN};
///
/// let sticky = StickyCookie::new("lb", Secret::generate()?)?;
/// let now = SystemTime::now();
/// for id in ["checkout.shop.svc.cluster.local:8080", &"x".repeat(INLINE_ID_LEN + 1)] {
///     let token = sticky.token_at(id, now)?;
///     assert_eq!(sticky.verify_token_at(token.as_bytes(), now).unwrap().id(), id);
/// }
/// # Ok::<(), tower_lb::Error>(())
/// ```
pub const INLINE_ID_LEN: usize = 64;

// `StoredId` keeps the length of an inline id in a byte.
const _: () = assert!(INLINE_ID_LEN <= u8::MAX as usize);

/// A verified id, kept small so that a `VerifiedCookie` moves cheaply.
///
/// The inline bytes come first and the whole is 16-byte aligned: moving it
/// reads back 16-byte pieces exactly as they were written, which the CPU
/// forwards from its store buffer, where an enum's odd offsets made it
/// stall (about 10 ns a verification on the benchmark machine).
#[derive(Clone)]
#[repr(C, align(16))]
struct StoredId {
    /// The id in its first `len` bytes (UTF-8, checked before it was
    /// stored), unless it is on the heap.
    inline: [u8; INLINE_ID_LEN],
    /// An id longer than `INLINE_ID_LEN` bytes.
    heap: Option<Box<str>>,
    len: u8,
}

impl StoredId {
    /// The id at `range` in `buf`, which must be valid UTF-8.
    #[inline(always)]
    fn new(buf: &[u8], range: Range<usize>) -> StoredId {
        let len = range.len();
        // Copied as a whole block of INLINE_ID_LEN bytes when `buf` has
        // them: a copy of fixed size is a few wide moves. The bytes past
        // the id are never read.
        let block = buf
            .get(range.start..)
            .and_then(<[u8]>::first_chunk::<INLINE_ID_LEN>);
        match block {
            Some(&inline) if len <= INLINE_ID_LEN => StoredId {
                inline,
                heap: None,
                // At most INLINE_ID_LEN, so it fits.
                len: len as u8,
            },
            _ => StoredId {
                inline: [0; INLINE_ID_LEN],
                heap: Some(String::from_utf8_lossy(&buf[range]).into()),
                len: 0,
            },
        }
    }

    fn as_str(&self) -> &str {
        match &self.heap {
            None => std::str::from_utf8(&self.inline[..usize::from(self.len)]).unwrap_or_default(),
            Some(id) => id,
        }
    }
}

impl VerifiedCookie {
    /// The id of the backend the cookie names. It may no longer be
    /// configured, or be down: the load-balance layer then redispatches.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// When the cookie expires, or `None` for a session cookie.
    pub fn expires_at(&self) -> Option<SystemTime> {
        if self.expiry == NEVER {
            return None;
        }
        // Issued tokens expire by year 9999; one from elsewhere that says
        // later reads as the latest time this crate issues.
        UNIX_EPOCH.checked_add(Duration::from_secs(self.expiry.min(LATEST_EXPIRY)))
    }

    /// Whether the response should carry a fresh cookie for the same
    /// backend: the cookie was made with the previous secret, is past half
    /// its lifetime, or outlives the `max_age` configured now (a session
    /// cookie after `max_age` was turned on, or one made under a longer
    /// `max_age`), so that a changed lifetime reaches cookies already out.
    pub fn should_reissue(&self) -> bool {
        self.reissue
    }
}

impl fmt::Debug for VerifiedCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCookie")
            .field("id", &self.id())
            .field("expires_at", &self.expires_at())
            .field("should_reissue", &self.reissue)
            .finish()
    }
}

/// `t` in whole seconds since the Unix epoch (0 before it).
///
/// `SystemTime::duration_since` is a call into std that costs about a third
/// as much as reading the clock; requests mostly come many to a second, so
/// each thread keeps the bounds of the last second it converted and
/// compares `t` with them (two inlined comparisons) before converting.
fn unix_seconds(t: SystemTime) -> u64 {
    thread_local! {
        /// The start and end of a second, and its number.
        static LAST_SECOND: Cell<Option<(SystemTime, SystemTime, u64)>> =
            const { Cell::new(None) };
    }
    LAST_SECOND.with(|last| {
        if let Some((start, end, secs)) = last.get() {
            if start <= t && t < end {
                return secs;
            }
        }
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let start = UNIX_EPOCH.checked_add(Duration::from_secs(secs));
        let end = start.and_then(|s| s.checked_add(Duration::from_secs(1)));
        if let (Some(start), Some(end), true) = (start, end, UNIX_EPOCH <= t) {
            last.set(Some((start, end, secs)));
        }
        secs
    })
}

/// Writes an IMF-fixdate (RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
fn write_http_date(secs: u64, out: &mut String) {
    // Past year 9999 the format has no room; browsers cap lifetimes at 400
    // days anyway.
    let date = crate::http_date::imf_fixdate(secs.min(LATEST_EXPIRY));
    out.push_str(std::str::from_utf8(&date).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;
    use proptest::prelude::*;

    use crate::sticky::{Secret, Secrets};

    fn secret() -> Secret {
        Secret::from_base64("xW2OUVNzjeeS1bhYiwtlLt8XW1PavVYrCu/jXEQDzOI=").unwrap()
    }

    fn old() -> Secret {
        Secret::from_base64("grkV3RiIf4G0RwNi5gwTIXax/tE7anhUHv3tvltR5uM=").unwrap()
    }

    /// Every token format this build knows, for the tests that must hold
    /// for each.
    fn formats() -> impl Strategy<Value = TokenFormat> {
        proptest::sample::select(TokenFormat::ALL)
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn token_of(set_cookie: &HeaderValue) -> String {
        let v = set_cookie.to_str().unwrap();
        let pair = v.split(';').next().unwrap();
        pair.split_once('=').unwrap().1.to_owned()
    }

    fn with_cookies(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(COOKIE, HeaderValue::from_str(line).unwrap());
        }
        h
    }

    #[test]
    fn a_bad_name_or_attribute_is_a_configuration_error() {
        assert!(StickyCookie::new("l b", secret()).is_err());
        let s = StickyCookie::new("lb", secret()).unwrap();
        assert!(s.clone().path("no-slash").is_err());
        assert!(s.clone().path("/a;b").is_err());
        assert!(s.clone().domain("a b").is_err());
        assert!(s.clone().domain("").is_err());
        assert!(s.clone().max_age(Duration::from_millis(500)).is_err());
        assert!(s.clone().max_age(MAX_COOKIE_AGE).is_ok());
        for too_long in [MAX_COOKIE_AGE + Duration::from_secs(1), Duration::MAX] {
            let err = s.clone().max_age(too_long).unwrap_err();
            assert!(matches!(&err, Error::InvalidConfig { reason } if reason.contains("400 days")));
        }
        assert!(s.clone().domain(".example.com").is_ok());
    }

    #[test]
    fn the_default_cookie_is_a_session_cookie_for_the_whole_site() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        let v = s.set_cookie("b1").unwrap();
        let v = v.to_str().unwrap();
        let token = v
            .strip_prefix("lb=")
            .unwrap()
            .strip_suffix("; Path=/; HttpOnly")
            .unwrap();
        assert!(!token.is_empty());
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn set_cookie_carries_every_configured_attribute() {
        let s = StickyCookie::new("SRV", secret())
            .unwrap()
            .path("/game")
            .unwrap()
            .domain("example.com")
            .unwrap()
            .max_age(Duration::from_secs(3600))
            .unwrap()
            .http_only(false)
            .secure(true)
            .same_site(SameSite::None);
        let v = s.set_cookie_at("b1", at(784_111_777)).unwrap();
        let v = v.to_str().unwrap();
        let attrs = v.split_once("; ").unwrap().1;
        assert_eq!(
            attrs,
            "Path=/game; Domain=example.com; Max-Age=3600; Expires=Sun, 06 Nov 1994 09:49:37 GMT; Secure; SameSite=None"
        );
    }

    #[test]
    fn http_dates_match_known_values() {
        let date = |secs| {
            let mut s = String::new();
            write_http_date(secs, &mut s);
            s
        };
        assert_eq!(date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(date(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
        assert_eq!(date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn a_cookie_round_trips_among_other_cookies_and_headers() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        let token = token_of(&s.set_cookie("10.0.0.1:8080").unwrap());
        let h = with_cookies(&["a=1; b=2", &format!("c=3; lb=\"{token}\"; d=4"), "e=5"]);
        let v = s.verify(&h).unwrap();
        assert_eq!(v.id(), "10.0.0.1:8080");
        assert_eq!(v.expires_at(), None);
        assert!(!v.should_reissue());
    }

    #[test]
    fn the_first_valid_cookie_of_the_name_wins_and_garbage_ones_are_skipped() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        let token = token_of(&s.set_cookie("b2").unwrap());
        let h = with_cookies(&["lb=garbage", &format!("lb={token}")]);
        assert_eq!(s.verify(&h).unwrap().id(), "b2");
    }

    #[test]
    fn only_a_few_cookies_of_the_name_are_checked() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        let token = token_of(&s.set_cookie("b2").unwrap());
        let mut line = "lb=x; ".repeat(MAX_CANDIDATES);
        line.push_str(&format!("lb={token}"));
        assert!(s.verify(&with_cookies(&[&line])).is_none());
    }

    #[test]
    fn ids_and_addresses_are_never_accepted_as_values() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        for value in [
            "b1",
            "10.0.0.1:8080",
            "http://evil.example",
            "",
            "\"\"",
            "AAAA",
        ] {
            let h = with_cookies(&[&format!("lb={value}")]);
            assert!(s.verify(&h).is_none(), "{value}");
        }
    }

    #[test]
    fn another_secret_rejects_the_cookie() {
        let a = StickyCookie::new("lb", secret()).unwrap();
        let b = StickyCookie::new("lb", old()).unwrap();
        let h = with_cookies(&[&format!("lb={}", token_of(&a.set_cookie("b1").unwrap()))]);
        assert!(b.verify(&h).is_none());
        assert_eq!(a.verify(&h).unwrap().id(), "b1");
    }

    #[test]
    fn replicas_with_the_same_secret_honour_each_other() {
        let replica_a = StickyCookie::new("lb", secret()).unwrap();
        // Given the same secret as base64, as a replica reads it.
        let replica_b =
            StickyCookie::new("lb", secret().to_base64().parse::<Secret>().unwrap()).unwrap();
        let h = with_cookies(&[&format!(
            "lb={}",
            token_of(&replica_a.set_cookie("b1").unwrap())
        )]);
        assert_eq!(replica_b.verify(&h).unwrap().id(), "b1");
    }

    #[test]
    fn rotating_the_handle_reaches_every_clone_and_thread_at_the_next_request() {
        let secrets = Secrets::new(old());
        let sticky = StickyCookie::new("lb", secrets.clone()).unwrap();
        let other_name = StickyCookie::new("lb2", secrets.clone()).unwrap();
        let clone = sticky.clone();
        let before = sticky.token_at("b1", at(1)).unwrap();
        let before2 = other_name.token_at("b2", at(1)).unwrap();
        let verify = |s: &StickyCookie, t: &str| s.verify_token_at(t.as_bytes(), at(1));
        // Warm this thread's cache with the old keys.
        assert!(!verify(&clone, &before).unwrap().should_reissue());

        secrets.rotate(secret()).unwrap();
        for s in [&sticky, &clone] {
            let v = verify(s, &before).unwrap();
            assert_eq!(v.id(), "b1");
            assert!(v.should_reissue(), "made with a previous secret");
        }
        assert!(verify(&other_name, &before2).unwrap().should_reissue());
        let after = sticky.token_at("b1", at(1)).unwrap();
        assert!(!verify(&clone, &after).unwrap().should_reissue());
        let fresh = StickyCookie::new("lb", secret()).unwrap();
        assert!(
            verify(&fresh, &after).is_some(),
            "issued with the new secret"
        );
        std::thread::scope(|scope| {
            scope.spawn(|| assert!(verify(&sticky, &before).unwrap().should_reissue()));
        });

        assert!(secrets.retire(&old()));
        assert!(verify(&sticky, &before).is_none());
        assert!(verify(&other_name, &before2).is_none());
        std::thread::scope(|scope| {
            scope.spawn(|| assert!(verify(&clone, &before).is_none()));
        });
        assert!(verify(&sticky, &after).is_some());
    }

    #[test]
    fn many_cookies_on_one_thread_each_keep_their_own_keys() {
        // More cookies than the per-thread cache holds, verified in turn.
        let cookies: Vec<StickyCookie> = (0..7)
            .map(|i| StickyCookie::new(&format!("c{i}"), Secret::generate().unwrap()).unwrap())
            .collect();
        let tokens: Vec<String> = cookies
            .iter()
            .map(|c| c.token_at("b", at(1)).unwrap())
            .collect();
        for _ in 0..3 {
            for (i, c) in cookies.iter().enumerate() {
                for (j, t) in tokens.iter().enumerate() {
                    assert_eq!(c.verify_token_at(t.as_bytes(), at(1)).is_some(), i == j);
                }
            }
        }
    }

    #[test]
    fn a_token_format_not_accepted_counts_as_no_cookie() {
        for &format in TokenFormat::ALL {
            let issuer = StickyCookie::new("lb", secret())
                .unwrap()
                .token_format(format);
            let token = issuer.token_at("b1", at(1)).unwrap();
            for &other in TokenFormat::ALL {
                let verifier = StickyCookie::new("lb", secret())
                    .unwrap()
                    .token_format(other);
                let v = verifier.verify_token_at(token.as_bytes(), at(1));
                assert_eq!(v.is_some(), other == format, "{format:?} under {other:?}");
                let migrating = verifier.accept_token_format(format);
                let v = migrating.verify_token_at(token.as_bytes(), at(1)).unwrap();
                assert_eq!(v.id(), "b1");
                assert_eq!(
                    v.should_reissue(),
                    other != format,
                    "re-issued in {other:?}"
                );
            }
        }
    }

    #[test]
    fn rotation_accepts_the_old_secret_and_issues_with_the_new() {
        let old = StickyCookie::new("lb", old()).unwrap();
        let rotated = StickyCookie::new(
            "lb",
            Secrets::with_previous(secret(), [self::old()]).unwrap(),
        )
        .unwrap();
        let new_only = StickyCookie::new("lb", secret()).unwrap();

        let from_old = with_cookies(&[&format!("lb={}", token_of(&old.set_cookie("b1").unwrap()))]);
        let v = rotated.verify(&from_old).unwrap();
        assert_eq!(v.id(), "b1");
        assert!(
            v.should_reissue(),
            "a cookie made with the old secret is re-issued"
        );
        assert!(new_only.verify(&from_old).is_none());

        let issued = with_cookies(&[&format!(
            "lb={}",
            token_of(&rotated.set_cookie("b1").unwrap())
        )]);
        assert!(!rotated.verify(&issued).unwrap().should_reissue());
        assert!(
            new_only.verify(&issued).is_some(),
            "issued with the new secret"
        );
        assert!(old.verify(&issued).is_none());
    }

    #[test]
    fn tokens_expire_with_max_age_and_are_refreshed_past_half_life() {
        let s = StickyCookie::new("lb", secret())
            .unwrap()
            .max_age(Duration::from_secs(100))
            .unwrap();
        let h = with_cookies(&[&format!(
            "lb={}",
            token_of(&s.set_cookie_at("b1", at(1_000)).unwrap())
        )]);
        let fresh = s.verify_at(&h, at(1_010)).unwrap();
        assert_eq!(fresh.expires_at(), Some(at(1_100)));
        assert!(!fresh.should_reissue());
        assert!(s.verify_at(&h, at(1_060)).unwrap().should_reissue());
        assert!(s.verify_at(&h, at(1_099)).is_some());
        assert!(s.verify_at(&h, at(1_100)).is_none());
        assert!(s.verify_at(&h, at(u64::MAX / 2)).is_none());
    }

    #[test]
    fn a_session_token_does_not_expire() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        let h = with_cookies(&[&format!(
            "lb={}",
            token_of(&s.set_cookie_at("b1", at(5)).unwrap())
        )]);
        assert!(s.verify_at(&h, at(u64::MAX / 4)).is_some());
    }

    #[test]
    fn tokens_differ_each_time_so_they_do_not_identify_the_backend() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        let a = s.token_at("b1", at(1)).unwrap();
        let b = s.token_at("b1", at(1)).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), b.len());
        // Ids of up to 15 bytes give tokens of the same length, 71 characters.
        assert_eq!(s.token_at("10.0.0.1:8080", at(1)).unwrap().len(), 71);
        assert_eq!(
            s.token_at("b", at(1)).unwrap().len(),
            s.token_at("abcdefghijklmno", at(1)).unwrap().len()
        );
    }

    #[test]
    fn invalid_ids_cannot_be_issued() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        assert!(matches!(
            s.set_cookie(""),
            Err(Error::InvalidBackendId { .. })
        ));
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(s.set_cookie(&long).is_err());
        let longest = "x".repeat(MAX_ID_LEN);
        let h = with_cookies(&[&format!(
            "lb={}",
            token_of(&s.set_cookie(&longest).unwrap())
        )]);
        assert_eq!(s.verify(&h).unwrap().id(), longest);
    }

    #[test]
    fn ids_round_trip_on_both_sides_of_the_inline_length() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        for len in [1, INLINE_ID_LEN - 1, INLINE_ID_LEN, INLINE_ID_LEN + 1] {
            // Multi-byte characters too: the inline copy keeps them whole.
            let id: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
            assert_eq!(id.len(), len);
            let h = with_cookies(&[&format!("lb={}", token_of(&s.set_cookie(&id).unwrap()))]);
            let verified = s.verify(&h).unwrap();
            assert_eq!(verified.id(), id);
            assert_eq!(verified.clone().id(), id);
        }
    }

    #[test]
    fn expiries_stay_within_what_a_system_time_and_an_http_date_hold() {
        let s = StickyCookie::new("lb", secret())
            .unwrap()
            .max_age(MAX_COOKIE_AGE)
            .unwrap();
        // Issued by a clock set to the year 9999.
        let late = at(LATEST_EXPIRY - 10);
        let token = s.token_at("a", late).unwrap();
        let verified = s.verify_token_at(token.as_bytes(), late).unwrap();
        assert_eq!(verified.expires_at(), Some(at(LATEST_EXPIRY)));
        // Debug reads expires_at too.
        assert!(format!("{verified:?}").contains("expires_at"));
        let cookie = s.set_cookie_at("a", late).unwrap();
        assert!(cookie
            .to_str()
            .unwrap()
            .contains("Fri, 31 Dec 9999 23:59:59 GMT"));
    }

    #[test]
    fn unix_seconds_agrees_with_duration_since_in_any_order() {
        let direct = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let s = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        let times = [
            s(1_700_000_000, 0),
            s(1_700_000_000, 999_999_999),
            s(1_700_000_001, 0),
            s(1_700_000_000, 500),
            s(1_699_999_999, 999_999_999),
            UNIX_EPOCH,
            UNIX_EPOCH - Duration::from_nanos(1),
            UNIX_EPOCH - Duration::from_secs(86_400),
            s(0, 1),
            s(1_700_000_001, 1),
            SystemTime::now(),
        ];
        for t in times.iter().chain(times.iter().rev()) {
            assert_eq!(unix_seconds(*t), direct(*t), "{t:?}");
        }
    }

    #[test]
    fn only_set_cookie_lines_of_the_sticky_name_are_removed() {
        let lines = [
            "a=1",
            "lb=x; Path=/",
            "lbx=2",
            "LB=3",
            "garbage without equals",
            "  lb  =y",
            "b=4; lb=5",
        ];
        let response = || {
            let mut h = HeaderMap::new();
            for line in lines {
                h.append(SET_COOKIE, HeaderValue::from_static(line));
            }
            h
        };
        let left = |h: &HeaderMap| {
            h.get_all(SET_COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let s = StickyCookie::new("lb", secret()).unwrap();
        let mut h = response();
        assert!(!s.remove_backend_cookie(&mut h));
        assert_eq!(
            left(&h),
            [
                "a=1",
                "lbx=2",
                "LB=3",
                "garbage without equals",
                "b=4; lb=5"
            ]
        );
        // Preserved: left as it was.
        let mut h = response();
        assert!(s.clone().preserve(true).remove_backend_cookie(&mut h));
        assert_eq!(left(&h), lines);
        // Nothing of the name: nothing changes, either way.
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("a=1"));
        assert!(!s.remove_backend_cookie(&mut h));
        assert!(!s.clone().preserve(true).remove_backend_cookie(&mut h));
        assert_eq!(left(&h), ["a=1"]);
    }

    #[test]
    fn strip_removes_only_the_sticky_cookie() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        let mut h = with_cookies(&["a=1; lb=x; b=2", "lb=y"]);
        assert!(s.strip(&mut h));
        let lines: Vec<_> = h
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(lines, ["a=1; b=2"]);
    }

    #[test]
    fn insert_marks_the_response_private_unless_it_already_is() {
        let s = StickyCookie::new("lb", secret()).unwrap();
        let cache = |initial: &[&str], sticky: &StickyCookie| {
            let mut h = HeaderMap::new();
            for v in initial {
                h.append(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            }
            sticky.insert(&mut h, "b1").unwrap();
            assert_eq!(h.get_all(SET_COOKIE).iter().count(), 1);
            h.get_all(CACHE_CONTROL)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(cache(&[], &s), ["private"]);
        assert_eq!(
            cache(&["public, max-age=60"], &s),
            ["public, max-age=60", "private"]
        );
        assert_eq!(cache(&["max-age=0, Private"], &s), ["max-age=0, Private"]);
        assert_eq!(
            cache(&["private=\"set-cookie\""], &s),
            ["private=\"set-cookie\""]
        );
        assert_eq!(cache(&["no-store"], &s), ["no-store"]);
        assert!(cache(&[], &s.clone().nocache(false)).is_empty());
        assert!(s.insert(&mut HeaderMap::new(), "").is_err());
    }

    #[test]
    fn debug_output_does_not_show_the_secret() {
        let s =
            StickyCookie::new("lb", Secrets::with_previous(secret(), [old()]).unwrap()).unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("previous: 1"));
        for bytes in [secret(), old()] {
            assert!(!shown.contains(bytes.to_base64().trim_end_matches('=')));
        }
    }

    proptest! {
        #[test]
        fn any_id_round_trips(format in formats(), id in "[^\\x00]{1,64}", now in 0u64..4_000_000_000) {
            prop_assume!(id.len() <= MAX_ID_LEN);
            let s = StickyCookie::new("lb", secret()).unwrap().token_format(format).max_age(Duration::from_secs(60)).unwrap();
            let token = s.token_at(&id, at(now)).unwrap();
            let v = s.verify_token_at(token.as_bytes(), at(now)).unwrap();
            prop_assert_eq!(v.id(), id.as_str());
        }

        #[test]
        fn any_single_character_change_is_rejected(format in formats(), pos in any::<prop::sample::Index>(), c in "[A-Za-z0-9_-]") {
            let s = StickyCookie::new("lb", secret()).unwrap().token_format(format);
            let token = s.token_at("backend-1", at(1)).unwrap();
            let i = pos.index(token.len());
            let mut changed = token.clone().into_bytes();
            changed[i] = c.as_bytes()[0];
            prop_assume!(changed != token.as_bytes());
            prop_assert!(s.verify_token_at(&changed, at(1)).is_none());
        }

        #[test]
        fn every_bit_flip_of_the_encoded_cookie_is_rejected(format in formats(), id in "[a-z0-9.:-]{1,24}") {
            let s = StickyCookie::new("lb", secret()).unwrap().token_format(format);
            let token = s.token_at(&id, at(1)).unwrap().into_bytes();
            for bit in 0..token.len() * 8 {
                let mut t = token.clone();
                t[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(s.verify_token_at(&t, at(1)).is_none(), "bit {}", bit);
            }
        }

        #[test]
        fn garbage_cookie_headers_never_verify_or_panic(
            format in formats(),
            lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..4),
        ) {
            let s = StickyCookie::new("lb", secret()).unwrap().token_format(format);
            let mut h = HeaderMap::new();
            for raw in &lines {
                let mut prefixed = b"lb=".to_vec();
                prefixed.extend_from_slice(raw);
                for line in [&prefixed[..], &raw[..]] {
                    if let Ok(v) = HeaderValue::from_bytes(line) {
                        h.append(COOKIE, v);
                    }
                }
            }
            prop_assert!(s.verify(&h).is_none());
            s.strip(&mut h);
        }
    }
}
