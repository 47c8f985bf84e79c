//! Time as health tracking sees it: injectable, so that tests are exact.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where health tracking reads the time.
///
/// [`SystemClock`] reads [`Instant::now`]; [`ManualClock`] moves only when
/// told to, so that a test of `fail_timeout` or slow start runs in
/// microseconds and asserts exact sequences.
///
/// ```
/// use std::time::Instant;
/// use tower_lb::health::Clock;
///
/// #[derive(Debug)]
/// struct Frozen(Instant);
/// impl Clock for Frozen {
///     fn now(&self) -> Instant {
///         self.0
///     }
/// }
/// let clock = Frozen(Instant::now());
/// assert_eq!(clock.now(), clock.now());
/// ```
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The operating system's monotonic clock.
///
/// ```
/// use tower_lb::health::{Clock, SystemClock};
/// let a = SystemClock.now();
/// assert!(SystemClock.now() >= a);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that stands still until [`advance`](ManualClock::advance)d: for
/// tests. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(10));
/// assert_eq!(clock.now() - start, Duration::from_secs(10));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl ManualClock {
    /// A clock standing at the present instant.
    pub fn new() -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock").finish_non_exhaustive()
    }
}
