//! One backend's health over time: nginx's passive counters, HAProxy's
//! `rise`/`fall` check state and the slow-start ramp.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{BackendState, CheckResult};

/// Health of one backend, shared (`Arc`) by every snapshot of the set, like
/// [`Load`](crate::Load): it survives add, remove and reweight of the other
/// backends.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Whether a pick must look at the state at all: false for a backend
    /// with no failures, no failed checks and no ramp, so that healthy picks
    /// cost one relaxed load.
    watched: AtomicBool,
    state: Mutex<State>,
    ejections: AtomicU64,
    sticky_hits: AtomicU64,
    sticky_misses: AtomicU64,
    sticky_fallbacks: AtomicU64,
}

/// nginx's `fails`, `accessed`, `checked` (ngx_http_upstream_rr_peer_t),
/// HAProxy's check counters, and the slow-start origin.
#[derive(Debug, Default)]
struct State {
    fails: u32,
    accessed: Option<Instant>,
    checked: Option<Instant>,
    check_down: bool,
    check_streak: u32,
    ramp_since: Option<Instant>,
}

/// The rules a backend is judged by (the balancer's policy with the
/// backend's own overrides applied).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub(crate) max_fails: u32,
    pub(crate) fail_timeout: Duration,
    pub(crate) slow_start: Duration,
}

/// What a pick may do with a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Send it the request.
    Admit,
    /// Slow start declined this pick: use it only if nothing else will do.
    Ramping,
    /// Out: ejected or failing its checks.
    Refuse,
}

/// Envoy's `min_weight_percent` default: a ramp starts at 10% of the weight,
/// so a lone recovered backend is not starved.
const RAMP_FLOOR: f64 = 0.1;

impl State {
    fn ejected(&self, rules: &Rules, now: Instant) -> bool {
        rules.max_fails > 0
            && self.fails >= rules.max_fails
            && self
                .checked
                .is_some_and(|c| now.saturating_duration_since(c) <= rules.fail_timeout)
    }

    fn ramp(&self, rules: &Rules, now: Instant) -> Option<f64> {
        let since = self.ramp_since?;
        let elapsed = now.saturating_duration_since(since);
        if rules.slow_start.is_zero() || elapsed >= rules.slow_start {
            return None;
        }
        Some((elapsed.as_secs_f64() / rules.slow_start.as_secs_f64()).max(RAMP_FLOOR))
    }

    fn needs_watching(&self) -> bool {
        self.fails > 0 || self.check_down || self.ramp_since.is_some()
    }
}

impl Health {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock with a half-updated state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, state: &State) {
        self.watched
            .store(state.needs_watching(), Ordering::Relaxed);
    }

    /// Whether nothing about this backend can refuse or slow a pick.
    #[inline]
    pub(crate) fn is_clear(&self) -> bool {
        !self.watched.load(Ordering::Relaxed)
    }

    /// nginx's `ngx_http_upstream_get_peer` test for one peer: refused while
    /// `max_fails` failures are less than `fail_timeout` old; once that has
    /// passed the pick goes through and restarts `checked`, so exactly one
    /// probe request goes out per `fail_timeout` until one succeeds.
    /// `keyed`: the pick followed an affinity key, which slow start leaves
    /// alone (a ramp would move keys at random).
    pub(crate) fn admit(&self, rules: &Rules, now: Instant, keyed: bool) -> Admission {
        let mut state = self.lock();
        if state.check_down || state.ejected(rules, now) {
            return Admission::Refuse;
        }
        if state
            .checked
            .is_none_or(|c| now.saturating_duration_since(c) > rules.fail_timeout)
            && state.fails > 0
        {
            state.checked = Some(now);
        }
        let admission = match state.ramp(rules, now) {
            Some(share) if !keyed && rand::random::<f64>() >= share => Admission::Ramping,
            Some(_) => Admission::Admit,
            None => {
                state.ramp_since = None;
                Admission::Admit
            }
        };
        self.settle(&state);
        admission
    }

    /// Whether active checks hold the backend down (`fall` failed checks
    /// and not yet `rise` passing ones), whatever passive ejection says.
    pub(crate) fn is_check_down(&self) -> bool {
        !self.is_clear() && self.lock().check_down
    }

    /// Whether the backend could take a request now, without consuming a
    /// probe: for failover lists and sticky routing.
    pub(crate) fn is_available(&self, rules: &Rules, now: Instant) -> bool {
        if self.is_clear() {
            return true;
        }
        let state = self.lock();
        !(state.check_down || state.ejected(rules, now))
    }

    /// nginx's `ngx_http_upstream_free_round_robin_peer`: a failure counts
    /// and restarts both clocks; a success clears the count only if a pick
    /// came after `fail_timeout` had passed since the last failure
    /// (`accessed < checked`), so failures spread further apart than
    /// `fail_timeout` do not add up while close ones do.
    pub(crate) fn record(&self, failed: bool, rules: &Rules, now: Instant) {
        if rules.max_fails == 0 {
            return;
        }
        if !failed && self.is_clear() {
            return;
        }
        let mut state = self.lock();
        if failed {
            // An ejection is counted when the count reaches max_fails, or
            // when a probe (the first failure a fail_timeout after the
            // last) fails; not for each request already in flight that
            // fails alongside.
            let fresh = state
                .accessed
                .is_none_or(|a| now.saturating_duration_since(a) > rules.fail_timeout);
            state.fails = state.fails.saturating_add(1);
            state.accessed = Some(now);
            state.checked = Some(now);
            if state.fails == rules.max_fails || (state.fails > rules.max_fails && fresh) {
                self.ejections.fetch_add(1, Ordering::Relaxed);
            }
        } else if state.fails > 0 && state.accessed < state.checked {
            let was_ejected = state.fails >= rules.max_fails;
            state.fails = 0;
            if was_ejected && !rules.slow_start.is_zero() {
                state.ramp_since = Some(now);
            }
        }
        self.settle(&state);
    }

    /// HAProxy's `rise`/`fall`: `fall` failed checks in a row take an up
    /// backend down, `rise` passed checks in a row bring it back (into slow
    /// start, with its passive count cleared). Returns whether it is now up
    /// as far as checks go.
    pub(crate) fn record_check(
        &self,
        result: CheckResult,
        rise: u32,
        fall: u32,
        rules: &Rules,
        now: Instant,
    ) -> bool {
        let mut state = self.lock();
        let passed = result == CheckResult::Pass;
        if passed != state.check_down {
            // A result agreeing with the state breaks the opposite streak.
            state.check_streak = 0;
        } else {
            state.check_streak += 1;
            let threshold = if state.check_down { rise } else { fall };
            if state.check_streak >= threshold.max(1) {
                state.check_down = !state.check_down;
                state.check_streak = 0;
                if state.check_down {
                    self.ejections.fetch_add(1, Ordering::Relaxed);
                } else {
                    state.fails = 0;
                    if !rules.slow_start.is_zero() {
                        state.ramp_since = Some(now);
                    }
                }
            }
        }
        self.settle(&state);
        !state.check_down
    }

    /// Starts the slow-start ramp (a backend added or marked up).
    pub(crate) fn start_ramp(&self, rules: &Rules, now: Instant) {
        if rules.slow_start.is_zero() {
            return;
        }
        let mut state = self.lock();
        state.ramp_since = Some(now);
        self.settle(&state);
    }

    /// The state as the stats report it (admin `down` and drain are the
    /// member's and decided by the caller).
    pub(crate) fn state(&self, rules: &Rules, now: Instant) -> BackendState {
        let state = self.lock();
        if state.check_down {
            BackendState::Down
        } else if state.ejected(rules, now) {
            BackendState::Ejected
        } else if state.ramp(rules, now).is_some() {
            BackendState::SlowStarting
        } else {
            BackendState::Up
        }
    }

    /// Failures counted by the passive rules since the last reset.
    pub(crate) fn fails(&self) -> u32 {
        self.lock().fails
    }

    pub(crate) fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub(crate) fn count_sticky(&self, outcome: StickyOutcome) {
        let counter = match outcome {
            StickyOutcome::Hit => &self.sticky_hits,
            StickyOutcome::Miss => &self.sticky_misses,
            StickyOutcome::Fallback => &self.sticky_fallbacks,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sticky(&self) -> (u64, u64, u64) {
        (
            self.sticky_hits.load(Ordering::Relaxed),
            self.sticky_misses.load(Ordering::Relaxed),
            self.sticky_fallbacks.load(Ordering::Relaxed),
        )
    }
}

/// How a sticky request was routed, for the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StickyOutcome {
    /// A valid cookie, and its backend took the request.
    Hit,
    /// No valid cookie: balanced (counted on the backend picked).
    Miss,
    /// A valid cookie whose backend could not take the request: balanced
    /// elsewhere (counted on the cookie's backend).
    Fallback,
}
