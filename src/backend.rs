//! Backends: where requests can go.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use http::HeaderValue;

use crate::health::Health;
use crate::Error;

/// The largest weight a backend may have.
///
/// HAProxy caps weights at 256 and nginx at `INT_MAX`; one million leaves room
/// for fine-grained ratios while keeping the sum of 10,000 weights far from
/// overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// The longest backend id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// A target that requests can be sent to: scheme, authority, an optional
/// path prefix, a stable id and a weight.
///
/// The id names the backend in hashing and in sticky cookies, so it must stay
/// the same across restarts and gateway replicas. It defaults to the URI's
/// authority (`127.0.0.1:8081`).
///
/// ```
/// use tower_lb::Backend;
///
/// let b = Backend::new("http://127.0.0.1:8081")?.with_weight(5)?;
/// assert_eq!(b.id(), "127.0.0.1:8081");
/// assert_eq!(b.weight(), 5);
///
/// let named = Backend::new("https://api.internal/v2")?.with_id("api-eu-1")?;
/// assert_eq!(named.id(), "api-eu-1");
/// assert_eq!(named.path_prefix(), "/v2");
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Backend {
    uri: Uri,
    id: Arc<str>,
    weight: u32,
    /// The authority as a `Host` header value, made once.
    host: HeaderValue,
    /// Per-backend passive health overrides (nginx's `server ... max_fails=
    /// fail_timeout=`); `None` takes the balancer's policy.
    max_fails: Option<u32>,
    fail_timeout: Option<Duration>,
}

impl Backend {
    /// Parses a backend from a URI such as `http://10.0.0.1:8080` or
    /// `https://api.internal/prefix`, with weight 1 and its authority as id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBackendUri`] when the input is not an absolute
    /// `http`/`https` URI with a host, has a port that is not a number from
    /// 1 to 65535, or carries credentials.
    pub fn new(uri: &str) -> Result<Self, Error> {
        let bad = |reason| Error::InvalidBackendUri {
            uri: uri.to_owned(),
            reason,
        };
        let parsed: Uri = uri.parse().map_err(|_| bad("not a valid URI"))?;
        let scheme = parsed
            .scheme()
            .ok_or_else(|| bad("a scheme is required (http:// or https://)"))?;
        if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
            return Err(bad("the scheme must be http or https"));
        }
        let authority = parsed
            .authority()
            .ok_or_else(|| bad("a host is required"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URI are not allowed"));
        }
        if authority.host().is_empty() {
            return Err(bad("a host is required"));
        }
        // `http` accepts any text after the host's `:` and then reports no
        // port, which clients read as the scheme's default: a typo such as
        // `:80800` would silently send requests to port 80.
        let after_host = &authority.as_str()[authority.host().len()..];
        if !after_host.is_empty() {
            let port = after_host
                .strip_prefix(':')
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u16>().ok());
            if !matches!(port, Some(1..)) {
                return Err(bad("the port must be a number from 1 to 65535"));
            }
        }
        if authority.as_str().len() > MAX_ID_LEN {
            return Err(Error::InvalidBackendId {
                id: authority.as_str().to_owned(),
                max: MAX_ID_LEN,
            });
        }
        let id: Arc<str> = Arc::from(authority.as_str());
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| bad("the host is not a valid Host header value"))?;
        Ok(Backend {
            uri: parsed,
            id,
            weight: 1,
            host,
            max_fails: None,
            fail_timeout: None,
        })
    }

    /// Sets the stable id used by hashing and sticky cookies.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBackendId`] when the id is empty or longer than
    /// [`MAX_ID_LEN`] bytes.
    pub fn with_id(mut self, id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(Error::InvalidBackendId {
                id,
                max: MAX_ID_LEN,
            });
        }
        self.id = Arc::from(id);
        Ok(self)
    }

    /// Sets the weight (0 to [`MAX_WEIGHT`]).
    ///
    /// A weight of 0 *drains* the backend, as HAProxy's `drain` does (and as
    /// Consul, DNS SRV and Kubernetes terminating endpoints mean it): no
    /// strategy picks it for new requests, while clients holding a valid
    /// sticky cookie for it keep reaching it.
    ///
    /// ```
    /// let b = tower_lb::Backend::new("http://10.0.0.1")?.with_weight(0)?;
    /// assert_eq!(b.weight(), 0);
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidWeight`] for anything above [`MAX_WEIGHT`].
    pub fn with_weight(mut self, weight: u32) -> Result<Self, Error> {
        check_weight(&self.id, weight)?;
        self.weight = weight;
        Ok(self)
    }

    /// Overrides the balancer's passive-health `max_fails` for this backend
    /// (nginx's `server ... max_fails=N`); 0 disables passive ejection for it.
    ///
    /// ```
    /// let b = tower_lb::Backend::new("http://10.0.0.1")?.with_max_fails(3);
    /// assert_eq!(b.max_fails(), Some(3));
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn with_max_fails(mut self, max_fails: u32) -> Self {
        self.max_fails = Some(max_fails);
        self
    }

    /// Overrides the balancer's passive-health `fail_timeout` for this
    /// backend (nginx's `server ... fail_timeout=T`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = tower_lb::Backend::new("http://10.0.0.1")?.with_fail_timeout(Duration::from_secs(30));
    /// assert_eq!(b.fail_timeout(), Some(Duration::from_secs(30)));
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn with_fail_timeout(mut self, fail_timeout: Duration) -> Self {
        self.fail_timeout = Some(fail_timeout);
        self
    }

    /// This backend's `max_fails` override, if any.
    #[inline]
    pub fn max_fails(&self) -> Option<u32> {
        self.max_fails
    }

    /// This backend's `fail_timeout` override, if any.
    #[inline]
    pub fn fail_timeout(&self) -> Option<Duration> {
        self.fail_timeout
    }

    /// The stable id.
    #[inline]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The weight; 0 means draining.
    #[inline]
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The full URI as configured.
    #[inline]
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The scheme, `http` or `https`.
    #[inline]
    pub fn scheme(&self) -> &Scheme {
        // `new` guarantees a scheme.
        self.uri.scheme().unwrap_or(&Scheme::HTTP)
    }

    /// The authority (`host:port`).
    #[inline]
    pub fn authority(&self) -> &Authority {
        // `new` guarantees an authority; the fallback is never reached.
        self.uri
            .authority()
            .expect("Backend::new checked that the URI has an authority")
    }

    /// The authority as a `Host` header value.
    #[inline]
    pub fn host_header(&self) -> &HeaderValue {
        &self.host
    }

    /// The path prefix, `/` when none was given.
    #[inline]
    pub fn path_prefix(&self) -> &str {
        self.uri.path()
    }

    /// The query configured on the backend URI, if any; the director merges
    /// it with each request's query.
    #[inline]
    pub fn query(&self) -> Option<&str> {
        self.uri.query()
    }
}

pub(crate) fn check_weight(id: &str, weight: u32) -> Result<(), Error> {
    if weight > MAX_WEIGHT {
        return Err(Error::InvalidWeight {
            id: id.to_owned(),
            weight: u64::from(weight),
            max: MAX_WEIGHT,
        });
    }
    Ok(())
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::new(s)
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("id", &&*self.id)
            .field("uri", &self.uri)
            .field("weight", &self.weight)
            .finish()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.id, self.uri)
    }
}

/// Live counters for one backend, shared by every snapshot of the set.
///
/// The load-balance layer keeps `in_flight` up to date and reports each
/// outcome here; strategies such as least-request read it, and health
/// tracking uses the failure counters. All operations are single atomic
/// instructions: reporting never blocks a request.
#[derive(Debug, Default)]
pub struct Load {
    in_flight: AtomicU64,
    started: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU64,
    /// The sum of `in_flight` over every member of one load balancer, kept
    /// beside it so that bounded-load hashing reads the mean in `O(1)`.
    pool: Option<Arc<AtomicU64>>,
}

impl Load {
    /// Requests sent to the backend and not yet answered.
    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests started on the backend ([`Load::start`] calls): how often
    /// the load-balance layer sent a request there.
    #[inline]
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Requests that completed successfully.
    #[inline]
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Requests that failed (inner error or a status the policy counts as
    /// failure).
    #[inline]
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Failures since the last success.
    #[inline]
    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Counters showing `in_flight` requests that never finish: the load the
    /// testing kit simulates.
    #[cfg(feature = "testing")]
    pub(crate) fn with_in_flight(in_flight: u64) -> Load {
        Load {
            in_flight: AtomicU64::new(in_flight),
            ..Load::default()
        }
    }

    /// Counters counted also in `pool`, the total of a load balancer's
    /// members.
    pub(crate) fn pooled(pool: &Arc<AtomicU64>) -> Load {
        Load {
            pool: Some(Arc::clone(pool)),
            ..Load::default()
        }
    }

    /// The total these counters are counted in, if any.
    #[inline]
    pub(crate) fn pool(&self) -> Option<&Arc<AtomicU64>> {
        self.pool.as_ref()
    }

    /// Counts one request as started; the returned guard counts it as
    /// finished when dropped.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_lb::Load;
    ///
    /// let load = Arc::new(Load::default());
    /// let guard = Load::start(&load);
    /// assert_eq!(load.in_flight(), 1);
    /// drop(guard);
    /// assert_eq!(load.in_flight(), 0);
    /// ```
    #[inline]
    pub fn start(this: &Arc<Load>) -> InFlight {
        this.begin();
        InFlight {
            load: Arc::clone(this),
        }
    }

    /// Counts one request as started, with no guard: [`end`](Self::end)
    /// counts it finished.
    #[inline]
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        if let Some(pool) = &self.pool {
            pool.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request [`begin`](Self::begin) counted as finished.
    #[inline]
    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(pool) = &self.pool {
            pool.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Records the outcome of one request.
    pub fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                // A plain store would race with a concurrent failure the same
                // way; consecutive failures are advisory.
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
            }
            Outcome::Failure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Guard for one request in flight; see [`Load::start`].
#[derive(Debug)]
pub struct InFlight {
    load: Arc<Load>,
}

impl InFlight {
    /// The guard of a request [`Load::begin`] counted.
    pub(crate) fn adopt(load: Arc<Load>) -> Self {
        InFlight { load }
    }

    /// The counters this request is counted in.
    #[inline]
    pub fn load(&self) -> &Load {
        &self.load
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        self.load.end();
    }
}

/// How one request to a backend ended, as passive feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered and the answer did not count as a failure.
    Success,
    /// The backend failed: a connection error, a timeout, or a status the
    /// failure policy counts (by default 502, 503, 504).
    Failure,
}

/// One backend as a [`Balancer`](crate::Balancer) sees it when it is built:
/// the backend, whether it is up, and its live [`Load`].
///
/// ```
/// use tower_lb::{Backend, Member};
///
/// let m = Member::new(Backend::new("http://10.0.0.1:80")?).with_up(false);
/// assert!(!m.is_up());
/// assert_eq!(m.backend().id(), "10.0.0.1:80");
/// # Ok::<(), tower_lb::Error>(())
/// ```
///
/// Cloning is one reference-count increment: picks hand out clones.
#[derive(Clone)]
pub struct Member {
    inner: Arc<MemberInner>,
}

struct MemberInner {
    /// Up with a weight above 0: what strategies pick from. Kept beside the
    /// health pointer so that a pick reads one cache line.
    takes_new_picks: bool,
    health: Arc<Health>,
    backend: Arc<Backend>,
    up: bool,
    load: Arc<Load>,
}

impl Member {
    /// A member that is up, with fresh counters.
    pub fn new(backend: Backend) -> Self {
        Member::from_parts(Arc::new(backend), true, Arc::default(), Arc::default())
    }

    pub(crate) fn from_parts(
        backend: Arc<Backend>,
        up: bool,
        load: Arc<Load>,
        health: Arc<Health>,
    ) -> Self {
        Member {
            inner: Arc::new(MemberInner {
                takes_new_picks: up && backend.weight() > 0,
                health,
                backend,
                up,
                load,
            }),
        }
    }

    /// The same member (same backend, same counters), marked up or down.
    pub fn with_up(self, up: bool) -> Self {
        if self.inner.up == up {
            return self;
        }
        Member::from_parts(
            self.inner.backend.clone(),
            up,
            self.inner.load.clone(),
            self.inner.health.clone(),
        )
    }

    /// The same member (same counters and health) with another backend
    /// description, as after a reweight.
    pub(crate) fn with_backend(&self, backend: Arc<Backend>) -> Self {
        Member::from_parts(
            backend,
            self.inner.up,
            self.inner.load.clone(),
            self.inner.health.clone(),
        )
    }

    /// Whether strategies may pick this member for a new request: it is up
    /// and its weight is above 0 (a weight of 0 drains it; see
    /// [`Backend::with_weight`]).
    ///
    /// ```
    /// use tower_lb::{Backend, Member};
    ///
    /// let draining = Member::new(Backend::new("http://10.0.0.1")?.with_weight(0)?);
    /// assert!(draining.is_up() && !draining.takes_new_picks());
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    #[inline]
    pub fn takes_new_picks(&self) -> bool {
        self.inner.takes_new_picks
    }

    /// The backend's health state, shared by every snapshot of the set.
    #[inline]
    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.inner.health
    }

    /// The backend.
    #[inline]
    pub fn backend(&self) -> &Arc<Backend> {
        &self.inner.backend
    }

    /// Whether the backend may be picked.
    #[inline]
    pub fn is_up(&self) -> bool {
        self.inner.up
    }

    /// The backend's live counters.
    #[inline]
    pub fn load(&self) -> &Arc<Load> {
        &self.inner.load
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("backend", &self.inner.backend)
            .field("up", &self.inner.up)
            .field("load", &self.inner.load)
            .finish()
    }
}
