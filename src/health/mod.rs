//! Backend health: passive ejection, active check results, drain, slow start
//! and the per-backend stats, all without I/O or an async runtime.
//!
//! A [`LoadBalancer`](crate::LoadBalancer) carries one [`HealthPolicy`]
//! (see [`LoadBalancer::set_health_policy`](crate::LoadBalancer::set_health_policy))
//! and every backend carries its own health state beside its
//! [`Load`](crate::Load), shared by every snapshot of the set, so it
//! survives add, remove and reweight of the other backends.
//!
//! * **Passive ejection**, to the letter of nginx's `max_fails` /
//!   `fail_timeout` (`ngx_http_upstream_round_robin.c`): failures the
//!   [`FailurePolicy`] blames on the backend
//!   are counted; at `max_fails` the backend is out for `fail_timeout`; then
//!   one probe request goes through, a failed probe ejects it for another
//!   full `fail_timeout` and a success clears the count. Defaults as nginx:
//!   `max_fails = 1`, `fail_timeout = 10s`; `max_fails = 0` disables it, per
//!   balancer or per backend ([`Backend::with_max_fails`](crate::Backend::with_max_fails)).
//! * **Active checks** without I/O: your probe loop reports each result with
//!   [`LoadBalancer::report_check`](crate::LoadBalancer::report_check);
//!   HAProxy's `fall` failures in a row take the backend down, `rise` passes
//!   in a row bring it back.
//! * **Ejection happens at pick time**: a pick whose backend is out walks the
//!   strategy's [`failover`](crate::Balancer::failover) order instead. No
//!   table or ring is rebuilt, so with consistent hashing an ejected
//!   backend's keys go to their ring successors and come back when it
//!   recovers.
//! * **Drain**: weight 0 ([`Backend::with_weight`](crate::Backend::with_weight)).
//! * **All ejected**: [`Error::AllBackendsEjected`](crate::Error::AllBackendsEjected)
//!   by default, or Envoy's panic mode ([`WhenAllEjected::UseAll`]).
//! * **Slow start** (HAProxy `slowstart`, Envoy slow start): a backend
//!   coming back, or added, takes a share of its picks that grows linearly
//!   from 10% to 100% over the window.
//!
//! ```
//! use std::time::Duration;
//! use tower_lb::health::{HealthPolicy, ManualClock};
//! use tower_lb::{LoadBalancer, Outcome, Strategy};
//!
//! let clock = ManualClock::new();
//! let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1", "http://10.0.0.2"])?
//!     .with_health_policy(HealthPolicy::default().clock(clock.clone()));
//!
//! let a = lb.pick(None)?;
//! lb.report(&a, Outcome::Failure); // max_fails = 1: ejected for 10 s
//! assert!((0..4).all(|_| lb.pick(None).unwrap().id() == "10.0.0.2"));
//!
//! clock.advance(Duration::from_secs(11)); // one probe goes through
//! let probe = (0..2).map(|_| lb.pick(None).unwrap()).find(|m| m.id() == "10.0.0.1").unwrap();
//! lb.report(&probe, Outcome::Success); // recovered
//! assert!((0..4).any(|_| lb.pick(None).unwrap().id() == "10.0.0.1"));
//! # Ok::<(), tower_lb::Error>(())
//! ```
//!
//! The state machine of one backend (admin `mark_down` and drain are set by
//! you, outside it):
//!
//! ```text
//!            failure (fails < max_fails)          fall failed checks
//!               +-----+                         +------------------> DOWN
//!               v     |                         |                     |
//!   --> UP (fails counted) --fails = max_fails--> EJECTED      rise passed checks
//!        ^   ^                                  | fail_timeout        |
//!        |   |                                  v   passes            |
//!        |   +--- probe succeeds (no ramp) --- PROBE (one request)    |
//!        |                                      |  probe fails:       |
//!        |                                      |  EJECTED again      |
//!        +-- ramp over --- SLOW-STARTING <------+---------------------+
//! ```

use std::sync::Arc;
use std::time::Duration;

mod classify;
mod clock;
mod state;

pub use self::classify::{backend_fault, FailurePolicy};
pub use self::clock::{Clock, ManualClock, SystemClock};
pub(crate) use self::state::{Admission, Health, Rules, StickyOutcome};

use crate::Backend;

/// What a pick does when every backend that takes new picks is ejected or
/// failing its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenAllEjected {
    /// Fail the pick with [`Error::AllBackendsEjected`](crate::Error::AllBackendsEjected)
    /// (a proxy answers 503).
    #[default]
    Fail,
    /// Envoy's panic mode: ignore health and spread the requests over every
    /// backend the strategy would pick, on the bet that some get through.
    UseAll,
}

/// The result of one active health check, reported by your probe loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// The backend answered the check as expected.
    Pass,
    /// It did not (refused, timed out, wrong status).
    Fail,
}

impl From<bool> for CheckResult {
    fn from(passed: bool) -> Self {
        if passed {
            CheckResult::Pass
        } else {
            CheckResult::Fail
        }
    }
}

/// How a load balancer judges its backends' health.
///
/// [`HealthPolicy::default`] is nginx's passive defaults (`max_fails=1`,
/// `fail_timeout=10s`) with HAProxy's check defaults (`rise 2`, `fall 3`),
/// no slow start, and an error when every backend is ejected.
/// [`HealthPolicy::off`], what a [`LoadBalancer`](crate::LoadBalancer)
/// starts with, never ejects on passive feedback (active checks you report
/// still count).
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::{HealthPolicy, WhenAllEjected};
///
/// let policy = HealthPolicy::default()
///     .max_fails(3)
///     .fail_timeout(Duration::from_secs(30))
///     .slow_start(Duration::from_secs(60))
///     .when_all_ejected(WhenAllEjected::UseAll);
/// assert_eq!(policy.get_max_fails(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct HealthPolicy {
    max_fails: u32,
    fail_timeout: Duration,
    rise: u32,
    fall: u32,
    slow_start: Duration,
    when_all_ejected: WhenAllEjected,
    clock: Arc<dyn Clock>,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            rise: 2,
            fall: 3,
            slow_start: Duration::ZERO,
            when_all_ejected: WhenAllEjected::Fail,
            clock: Arc::new(SystemClock),
        }
    }
}

impl HealthPolicy {
    /// No passive ejection (`max_fails = 0`); everything else as the default.
    ///
    /// ```
    /// assert_eq!(tower_lb::health::HealthPolicy::off().get_max_fails(), 0);
    /// ```
    pub fn off() -> Self {
        HealthPolicy::default().max_fails(0)
    }

    /// Failures within `fail_timeout` that eject a backend; 0 disables
    /// passive ejection.
    pub fn max_fails(mut self, max_fails: u32) -> Self {
        self.max_fails = max_fails;
        self
    }

    /// The window failures are counted in, and how long an ejected backend
    /// stays out before a probe.
    pub fn fail_timeout(mut self, fail_timeout: Duration) -> Self {
        self.fail_timeout = fail_timeout;
        self
    }

    /// Passed checks in a row that bring a backend down by checks back up
    /// (HAProxy `rise`, default 2; 0 counts as 1).
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise;
        self
    }

    /// Failed checks in a row that take a backend down (HAProxy `fall`,
    /// default 3; 0 counts as 1).
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall;
        self
    }

    /// The slow-start window: a backend recovering or added takes a share of
    /// its picks growing from 10% to 100% over it. Zero (the default)
    /// disables it.
    pub fn slow_start(mut self, window: Duration) -> Self {
        self.slow_start = window;
        self
    }

    /// What to do when every backend is ejected.
    pub fn when_all_ejected(mut self, mode: WhenAllEjected) -> Self {
        self.when_all_ejected = mode;
        self
    }

    /// Where time is read: a [`ManualClock`] in tests.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The configured `max_fails`.
    pub fn get_max_fails(&self) -> u32 {
        self.max_fails
    }

    /// The configured `fail_timeout`.
    pub fn get_fail_timeout(&self) -> Duration {
        self.fail_timeout
    }

    pub(crate) fn rise_fall(&self) -> (u32, u32) {
        (self.rise, self.fall)
    }

    pub(crate) fn all_ejected(&self) -> WhenAllEjected {
        self.when_all_ejected
    }

    pub(crate) fn now(&self) -> std::time::Instant {
        self.clock.now()
    }

    /// The rules for one backend: its overrides, else the policy's.
    #[inline]
    pub(crate) fn rules(&self, backend: &Backend) -> Rules {
        Rules {
            max_fails: backend.max_fails().unwrap_or(self.max_fails),
            fail_timeout: backend.fail_timeout().unwrap_or(self.fail_timeout),
            slow_start: self.slow_start,
        }
    }
}

/// A backend's state, as the stats report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendState {
    /// Taking new picks at its full weight.
    Up,
    /// Out after `max_fails` failures, until a probe succeeds.
    Ejected,
    /// Weight 0: no new picks; sticky clients still reach it.
    Draining,
    /// Back or new, taking a growing share of its picks.
    SlowStarting,
    /// Marked down, or failing its active checks.
    Down,
}

impl BackendState {
    /// A lowercase name, for metrics labels: `up`, `ejected`, `draining`,
    /// `slow_starting`, `down`.
    ///
    /// ```
    /// assert_eq!(tower_lb::health::BackendState::SlowStarting.as_str(), "slow_starting");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Ejected => "ejected",
            BackendState::Draining => "draining",
            BackendState::SlowStarting => "slow_starting",
            BackendState::Down => "down",
        }
    }
}

/// One backend's counters and state at one instant: export them to any
/// metrics system. See [`LoadBalancer::stats`](crate::LoadBalancer::stats).
///
/// ```
/// use tower_lb::{LoadBalancer, Strategy};
/// use tower_lb::health::BackendState;
///
/// let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1"])?;
/// let stats = lb.stats();
/// assert_eq!(stats[0].id, "10.0.0.1");
/// assert_eq!(stats[0].state, BackendState::Up);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStats {
    /// The backend's id.
    pub id: String,
    /// Its configured weight.
    pub weight: u32,
    /// Its state now.
    pub state: BackendState,
    /// Requests the load-balance layer sent to it.
    pub picks: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Requests that succeeded.
    pub successes: u64,
    /// Requests counted as its failure.
    pub failures: u64,
    /// Failures in the current passive-health window.
    pub current_fails: u32,
    /// Times it was ejected (passive) or taken down by checks.
    pub ejections: u64,
    /// Requests with a valid sticky cookie for it that it served.
    pub sticky_hits: u64,
    /// Requests without a valid sticky cookie balanced to it.
    pub sticky_misses: u64,
    /// Requests with a valid sticky cookie for it that went elsewhere
    /// because it could not take them.
    pub sticky_fallbacks: u64,
}
