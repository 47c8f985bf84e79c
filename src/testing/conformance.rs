//! The conformance suite: the [`Balancer`] contract as properties.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};

use proptest::collection::vec;
use proptest::prelude::{Just, Strategy};
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

use super::generators::{
    affinity_keys, backend_sets, describe_key, membership_ops, optional_keys, BackendSet,
};
use crate::{Balancer, BuildBalancer, Error, Member, MAX_WEIGHT};

/// Cases per check unless [`Conformance::cases`] or `PROPTEST_CASES` says
/// otherwise.
pub const DEFAULT_CASES: u32 = 64;

/// The largest generated set unless [`Conformance::max_backends`] says
/// otherwise.
pub const DEFAULT_MAX_BACKENDS: usize = 8;

/// The proportionality check makes at least this many picks per case.
const PROPORTIONAL_MIN_PICKS: u64 = 4000;
/// Weights in the proportionality check stay small, so that whole periods of
/// a weighted rotation fit in the picks.
const PROPORTIONAL_MAX_WEIGHT: u32 = 16;
/// Threads picking at once in the thread-safety check.
const THREADS: usize = 4;
/// Picks per thread in the thread-safety check.
const PICKS_PER_THREAD: usize = 200;
/// Membership changes applied per case in the minimal-disruption check.
const MAX_OPS: usize = 6;

/// One property of the [`Balancer`] contract that [`Conformance`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Check {
    /// `pick` returns the position of a member that is up, for any key.
    Picks,
    /// On an empty set `pick` returns [`Error::NoBackends`]; when every
    /// member is down, [`Error::AllBackendsDown`] with the number of
    /// members; `failover` then lists nothing.
    NoPickErrors,
    /// `failover(key, first)` lists every member that is up except `first`,
    /// each once, and nothing else.
    Failover,
    /// Picks and failovers made from several threads at once are all valid.
    Threads,
    /// Opt-in: without a key, each member's share of the picks is its share
    /// of the weight, within a tolerance.
    Proportional,
    /// Opt-in: a key picks the same backend every time, from a rebuilt
    /// balancer, and whatever order the backends are listed in.
    Deterministic,
    /// Opt-in: adding a backend (or marking it up, or raising its weight)
    /// moves keys only to it; removing one (or marking it down, or lowering
    /// its weight) moves only the keys it had.
    MinimalDisruption,
}

impl Check {
    /// A short name: `picks`, `no_pick_errors`, `failover`, `threads`,
    /// `proportional`, `deterministic`, `minimal_disruption`.
    pub fn name(self) -> &'static str {
        match self {
            Check::Picks => "picks",
            Check::NoPickErrors => "no_pick_errors",
            Check::Failover => "failover",
            Check::Threads => "threads",
            Check::Proportional => "proportional",
            Check::Deterministic => "deterministic",
            Check::MinimalDisruption => "minimal_disruption",
        }
    }

    /// The property, in words.
    pub fn property(self) -> &'static str {
        match self {
            Check::Picks => "pick returns a member that is up",
            Check::NoPickErrors => {
                "an empty set gives NoBackends and an all-down set AllBackendsDown"
            }
            Check::Failover => "failover lists every other member that is up, once",
            Check::Threads => "picks from several threads at once are valid",
            Check::Proportional => "picks follow the weights",
            Check::Deterministic => "a key always picks the same backend",
            Check::MinimalDisruption => "a membership change moves only the keys it must",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name(), self.property())
    }
}

/// The conformance suite for a [`Balancer`]: give it a way to build the
/// balancer, opt into the checks your strategy promises, and call
/// [`check`](Conformance::check) from a `#[test]`.
///
/// Every run checks [`Check::Picks`], [`Check::NoPickErrors`],
/// [`Check::Failover`] and [`Check::Threads`], and that neither building
/// nor any call panics. [`proportional`](Conformance::proportional),
/// [`deterministic_keys`](Conformance::deterministic_keys) and
/// [`minimal_disruption`](Conformance::minimal_disruption) add the checks
/// only some strategies promise.
///
/// Each check is a proptest run over generated backend sets (see
/// [`backend_sets`]): on failure proptest shrinks the case, and the panic
/// message describes the smallest one in words.
///
/// ```
/// use tower_lb::testing::Conformance;
/// use tower_lb::{Member, RoundRobin};
///
/// Conformance::new(|members: &[Member]| Ok(RoundRobin::new(members)))
///     .name("round robin")
///     .check();
/// ```
///
/// A balancer that ignores whether members are up fails, with the smallest
/// counter-example:
///
/// ```
/// use tower_lb::testing::{Check, Conformance};
/// use tower_lb::{Balancer, Error, Member};
///
/// struct AlwaysFirst(usize);
///
/// impl Balancer for AlwaysFirst {
///     fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
///         if self.0 == 0 { Err(Error::NoBackends) } else { Ok(0) }
///     }
///     fn failover(&self, _key: Option<&[u8]>, _first: usize) -> Vec<usize> {
///         Vec::new()
///     }
/// }
///
/// let err = Conformance::new(|m: &[Member]| Ok(AlwaysFirst(m.len())))
///     .run()
///     .unwrap_err();
/// let Error::ConformanceFailed(failure) = err else { panic!("{err}") };
/// assert_eq!(failure.check(), Check::Picks);
/// // The shrunk case: "with backends [a (weight 1, down)], pick(None) returned
/// // 0 (a), but every backend is down: expected the error AllBackendsDown { count: 1 }"
/// assert!(failure.detail().contains("down"), "{failure}");
/// ```
#[must_use = "the suite runs when `check` or `run` is called"]
pub struct Conformance<B> {
    build: B,
    name: Option<String>,
    cases: Option<u32>,
    seed: Option<u64>,
    max_backends: usize,
    max_weight: u32,
    duplicate_ids: bool,
    proportional: Option<f64>,
    deterministic_keys: bool,
    minimal_disruption: bool,
}

impl<B: BuildBalancer> Conformance<B> {
    /// The suite for the balancers `build` makes: a
    /// [`Strategy`](crate::Strategy), or a closure
    /// `Fn(&[Member]) -> Result<impl Balancer, Error>`.
    pub fn new(build: B) -> Self {
        Conformance {
            build,
            name: None,
            cases: None,
            seed: None,
            max_backends: DEFAULT_MAX_BACKENDS,
            max_weight: MAX_WEIGHT,
            duplicate_ids: true,
            proportional: None,
            deterministic_keys: false,
            minimal_disruption: false,
        }
    }

    /// Names the balancer in reports and failures.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Cases per check: by default `PROPTEST_CASES` if set, else
    /// [`DEFAULT_CASES`].
    pub fn cases(mut self, cases: u32) -> Self {
        self.cases = Some(cases.max(1));
        self
    }

    /// Fixes the seed of the generated cases, to replay a failure (its
    /// message gives the seed). By default `PROPTEST_RNG_SEED` if set, else
    /// a random seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The largest set generated (default [`DEFAULT_MAX_BACKENDS`]).
    pub fn max_backends(mut self, max: usize) -> Self {
        self.max_backends = max.max(1);
        self
    }

    /// The largest weight generated (default
    /// [`MAX_WEIGHT`](crate::MAX_WEIGHT)), for strategies whose build cost
    /// grows with the weights, such as a hash ring.
    ///
    /// A builder may also refuse a set by returning an error (other than
    /// for an empty or all-down set, which must build): such a case is
    /// skipped and counted in the [`Report`], and the check fails only if
    /// it refuses more than twice as many sets as there are cases (about
    /// two thirds of those drawn).
    pub fn max_weight(mut self, max: u32) -> Self {
        self.max_weight = max.clamp(1, MAX_WEIGHT);
        self
    }

    /// Only sets whose ids are distinct, as in a
    /// [`LoadBalancer`](crate::LoadBalancer). By default some sets list two
    /// members with one id, which the [`Balancer`] contract (positions, not
    /// ids) allows; turn that off if your balancer relies on distinct ids.
    pub fn distinct_ids(mut self) -> Self {
        self.duplicate_ids = false;
        self
    }

    /// Opts into [`Check::Proportional`]: over many picks without a key, each
    /// member that is up gets its share of the weight (its weight over the
    /// sum of the weights of the members that are up), within `tolerance`
    /// as an absolute difference of shares (`0.05` is ±5 percentage
    /// points).
    ///
    /// Each case makes the smallest multiple of the total weight that is at
    /// least 4000 picks, from a fresh balancer, with weights of 1 to 16. So
    /// a weighted rotation can be held to `0.0`: exact over whole periods.
    /// For a random strategy, `0.05` is more than six standard deviations.
    pub fn proportional(mut self, tolerance: f64) -> Self {
        self.proportional = Some(tolerance.max(0.0));
        self
    }

    /// Opts into [`Check::Deterministic`]: a key picks the same backend
    /// (compared by id) on repeated picks, from a second build of the same
    /// set, and from a build with the backends listed in another order.
    pub fn deterministic_keys(mut self) -> Self {
        self.deterministic_keys = true;
        self
    }

    /// Opts into [`Check::MinimalDisruption`]: after each change in a
    /// generated sequence of [`MembershipOp`](super::MembershipOp)s, keys
    /// move only as consistent hashing promises. Adding a backend, marking
    /// it up or raising its weight moves keys only to it; removing it,
    /// marking it down or lowering its weight moves only the keys it had.
    pub fn minimal_disruption(mut self) -> Self {
        self.minimal_disruption = true;
        self
    }

    /// The checks this suite runs, in order.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks = vec![
            Check::Picks,
            Check::NoPickErrors,
            Check::Failover,
            Check::Threads,
        ];
        if self.proportional.is_some() {
            checks.push(Check::Proportional);
        }
        if self.deterministic_keys {
            checks.push(Check::Deterministic);
        }
        if self.minimal_disruption {
            checks.push(Check::MinimalDisruption);
        }
        checks
    }

    /// Runs every check; panics with the first failure, described in words.
    /// Use it in a `#[test]`.
    ///
    /// # Panics
    ///
    /// When a check fails: the message is the [`Failure`]'s.
    #[track_caller]
    pub fn check(&self) -> Report {
        match self.run_checks() {
            Ok(report) => report,
            Err(failure) => panic!("{failure}"),
        }
    }

    /// Runs every check, stopping at the first failure.
    ///
    /// # Errors
    ///
    /// [`Error::ConformanceFailed`] with the first [`Failure`], which holds
    /// the smallest counter-example found.
    pub fn run(&self) -> Result<Report, Error> {
        self.run_checks()
            .map_err(|failure| Error::ConformanceFailed(Box::new(failure)))
    }

    fn run_checks(&self) -> Result<Report, Failure> {
        let defaults = Config::default();
        let cases = self
            .cases
            .unwrap_or(if std::env::var_os("PROPTEST_CASES").is_some() {
                defaults.cases.max(1)
            } else {
                DEFAULT_CASES
            });
        let seed = self.seed.unwrap_or(match defaults.rng_seed {
            RngSeed::Fixed(seed) => seed,
            RngSeed::Random => rand::random(),
        });
        let mut report = Report {
            name: self.display_name(),
            seed,
            cases,
            checks: Vec::new(),
        };
        for (n, check) in self.checks().into_iter().enumerate() {
            // Each check draws its own cases, all derived from the one seed.
            let refused = self.run_check(check, cases, seed.wrapping_add(n as u64), seed)?;
            report.checks.push((check, refused));
        }
        Ok(report)
    }

    fn display_name(&self) -> String {
        match &self.name {
            Some(name) => format!("`{name}`"),
            None => "the balancer".to_owned(),
        }
    }

    fn sets(&self) -> super::BackendSets {
        let sets = backend_sets(self.max_backends).max_weight(self.max_weight);
        if self.duplicate_ids {
            sets
        } else {
            sets.distinct_ids()
        }
    }

    /// Runs one check; returns how many cases the builder refused.
    fn run_check(
        &self,
        check: Check,
        cases: u32,
        check_seed: u64,
        seed: u64,
    ) -> Result<u32, Failure> {
        let refusals = Refusals::default();
        let keys = || vec(optional_keys(), 0..=8);
        let result = match check {
            Check::Picks => {
                self.property(cases, check_seed, &(self.sets(), keys()), |(set, keys)| {
                    self.picks(&set, &keys, &refusals)
                })
            }
            Check::NoPickErrors => self.property(
                cases,
                check_seed,
                &(self.sets().all_down(), keys()),
                |(set, keys)| self.no_pick_errors(&set, &keys, &refusals),
            ),
            Check::Failover => {
                self.property(cases, check_seed, &(self.sets(), keys()), |(set, keys)| {
                    self.failover(&set, &keys, &refusals)
                })
            }
            Check::Threads => {
                self.property(cases, check_seed, &(self.sets(), keys()), |(set, keys)| {
                    self.threads(&set, &keys, &refusals)
                })
            }
            Check::Proportional => {
                let tolerance = self.proportional.unwrap_or(0.0);
                let sets = self
                    .sets()
                    .at_least_one_up()
                    .max_weight(self.max_weight.min(PROPORTIONAL_MAX_WEIGHT))
                    .idle();
                self.property(cases, check_seed, &sets, |set| {
                    self.proportions(&set, tolerance, &refusals)
                })
            }
            Check::Deterministic => {
                let listings = self
                    .sets()
                    .distinct_ids()
                    .at_least_one_up()
                    .prop_flat_map(|set| {
                        let order = Just((0..set.len()).collect::<Vec<_>>()).prop_shuffle();
                        (Just(set), order)
                    });
                let cases_of = (listings, vec(affinity_keys(), 1..=16));
                self.property(cases, check_seed, &cases_of, |((set, order), keys)| {
                    self.determinism(&set, &order, &keys, &refusals)
                })
            }
            Check::MinimalDisruption => {
                let cases_of = (
                    self.sets().distinct_ids(),
                    membership_ops(MAX_OPS).max_weight(self.max_weight),
                    vec(affinity_keys(), 8..=32),
                );
                self.property(cases, check_seed, &cases_of, |(set, ops, keys)| {
                    self.disruption(set, &ops, &keys, &refusals)
                })
            }
        };
        match result {
            Ok(()) => Ok(refusals.count.get()),
            Err(detail) => {
                let (detail, shrunk) = match detail {
                    Verdict::Failed(detail) => (detail, true),
                    Verdict::Aborted(reason) => (refusals.explain(&reason), false),
                };
                Err(Failure {
                    name: self.display_name(),
                    check,
                    detail,
                    shrunk,
                    seed,
                    cases,
                })
            }
        }
    }

    fn property<S: Strategy>(
        &self,
        cases: u32,
        seed: u64,
        strategy: &S,
        test: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) -> Result<(), Verdict> {
        let config = Config {
            cases,
            failure_persistence: None,
            source_file: None,
            max_global_rejects: cases.saturating_mul(2).max(16),
            max_shrink_iters: 4096,
            rng_seed: RngSeed::Fixed(seed),
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        runner.run(strategy, test).map_err(|e| match e {
            TestError::Fail(reason, _) => Verdict::Failed(reason.message().to_owned()),
            TestError::Abort(reason) => Verdict::Aborted(reason.message().to_owned()),
        })
    }

    /// Builds the balancer for `set`; a refusal skips the case unless the
    /// set is empty or all down, which must build.
    fn build(
        &self,
        set: &BackendSet,
        members: &[Member],
        refusals: &Refusals,
    ) -> Result<Box<dyn Balancer>, TestCaseError> {
        match guard(|| self.build.build(members)) {
            Ok(Ok(balancer)) => Ok(balancer),
            Ok(Err(e)) if set.up_count() == 0 => Err(TestCaseError::fail(format!(
                "with backends {set}, building the balancer failed: {e}. An empty or all-down \
                 set must build, and report the error on pick"
            ))),
            Ok(Err(e)) => {
                refusals.count.set(refusals.count.get() + 1);
                *refusals.last.borrow_mut() = Some(format!("backends {set}: {e}"));
                Err(TestCaseError::reject(format!(
                    "the builder refused {set}: {e}"
                )))
            }
            Err(panic) => Err(TestCaseError::fail(format!(
                "with backends {set}, building the balancer {panic}"
            ))),
        }
    }

    fn picks(
        &self,
        set: &BackendSet,
        keys: &[Option<Vec<u8>>],
        refusals: &Refusals,
    ) -> Result<(), TestCaseError> {
        let members = set.members();
        let balancer = self.build(set, &members, refusals)?;
        // Enough picks to go round any rotation twice.
        let rounds = 2 * set.len() + 2;
        for key in with_no_key(keys) {
            for _ in 0..rounds {
                check_pick(set, "", key, guard(|| balancer.pick(key))).map_err(fail)?;
            }
        }
        Ok(())
    }

    fn no_pick_errors(
        &self,
        set: &BackendSet,
        keys: &[Option<Vec<u8>>],
        refusals: &Refusals,
    ) -> Result<(), TestCaseError> {
        let members = set.members();
        let balancer = self.build(set, &members, refusals)?;
        for key in with_no_key(keys) {
            check_pick(set, "", key, guard(|| balancer.pick(key))).map_err(fail)?;
            for first in 0..set.len() {
                failover_checked(set, &*balancer, key, first)?;
            }
        }
        Ok(())
    }

    fn failover(
        &self,
        set: &BackendSet,
        keys: &[Option<Vec<u8>>],
        refusals: &Refusals,
    ) -> Result<(), TestCaseError> {
        let members = set.members();
        let balancer = self.build(set, &members, refusals)?;
        let keys: Vec<Option<&[u8]>> = with_no_key(keys).collect();
        // After each member fails, with the keys in turn; then after each
        // key's own pick, as a load balancer calls it.
        for first in 0..set.len() {
            failover_checked(set, &*balancer, keys[first % keys.len()], first)?;
        }
        for &key in &keys {
            if let Some(first) =
                check_pick(set, "", key, guard(|| balancer.pick(key))).map_err(fail)?
            {
                failover_checked(set, &*balancer, key, first)?;
            }
        }
        Ok(())
    }

    fn threads(
        &self,
        set: &BackendSet,
        keys: &[Option<Vec<u8>>],
        refusals: &Refusals,
    ) -> Result<(), TestCaseError> {
        let members = set.members();
        let balancer = self.build(set, &members, refusals)?;
        let keys: Vec<Option<&[u8]>> = with_no_key(keys).collect();
        let first_problem: Mutex<Option<String>> = Mutex::new(None);
        let stop = AtomicBool::new(false);
        let context = format!("while {THREADS} threads picked at once, ");
        // All threads start picking together, for as much contention as the
        // machine allows.
        let start = Barrier::new(THREADS);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (balancer, keys, context) = (&balancer, &keys, &context);
                let (first_problem, stop, start) = (&first_problem, &stop, &start);
                scope.spawn(move || {
                    start.wait();
                    for i in 0..PICKS_PER_THREAD {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let key = keys[(i + thread) % keys.len()];
                        let mut outcome =
                            check_pick(set, context, key, guard(|| balancer.pick(key)));
                        if let (Ok(Some(first)), 0) = (&outcome, i % 32) {
                            let got = guard(|| balancer.failover(key, *first));
                            outcome = check_failover(set, context, key, *first, got).map(|()| None);
                        }
                        if let Err(problem) = outcome {
                            stop.store(true, Ordering::Relaxed);
                            let mut slot = first_problem.lock().unwrap_or_else(|p| p.into_inner());
                            slot.get_or_insert(problem);
                            return;
                        }
                    }
                });
            }
        });
        match first_problem
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(problem) => Err(fail(problem)),
            None => Ok(()),
        }
    }

    fn proportions(
        &self,
        set: &BackendSet,
        tolerance: f64,
        refusals: &Refusals,
    ) -> Result<(), TestCaseError> {
        let members = set.members();
        let balancer = self.build(set, &members, refusals)?;
        let total: u64 = set
            .backends()
            .iter()
            .filter(|b| b.up)
            .map(|b| u64::from(b.weight))
            .sum();
        let picks = PROPORTIONAL_MIN_PICKS.div_ceil(total) * total;
        let mut counts = vec![0u64; set.len()];
        for _ in 0..picks {
            if let Some(i) =
                check_pick(set, "", None, guard(|| balancer.pick(None))).map_err(fail)?
            {
                counts[i] += 1;
            }
        }
        let mut worst: Option<(f64, usize)> = None;
        for (i, b) in set.backends().iter().enumerate().filter(|(_, b)| b.up) {
            let expected = picks * u64::from(b.weight) / total;
            let deviation = counts[i].abs_diff(expected) as f64 / picks as f64;
            if deviation > tolerance + 1e-12 && worst.is_none_or(|(d, _)| deviation > d) {
                worst = Some((deviation, i));
            }
        }
        let Some((_, i)) = worst else {
            return Ok(());
        };
        let b = &set.backends()[i];
        let expected = picks * u64::from(b.weight) / total;
        let percent = |n: u64| 100.0 * n as f64 / picks as f64;
        let allowed = if tolerance == 0.0 {
            format!("exactly {expected} times")
        } else {
            format!(
                "{expected} times ({:.1}%), within ±{:.1} points",
                percent(expected),
                100.0 * tolerance
            )
        };
        Err(fail(format!(
            "with backends {set}, over {picks} picks without a key, {i} ({}) was picked {} times \
             ({:.1}%), but with weight {} of {total} it should be picked {allowed}",
            b.id,
            counts[i],
            percent(counts[i]),
            b.weight,
        )))
    }

    fn determinism(
        &self,
        set: &BackendSet,
        order: &[usize],
        keys: &[Vec<u8>],
        refusals: &Refusals,
    ) -> Result<(), TestCaseError> {
        let members = set.members();
        let first = self.build(set, &members, refusals)?;
        let second = self.build(set, &members, refusals)?;
        let relisted = set.reordered(order);
        let relisted_members = relisted.members();
        let third = self.build(&relisted, &relisted_members, refusals)?;
        for key in keys {
            let key = Some(key.as_slice());
            let pick = |b: &dyn Balancer, s: &BackendSet| {
                check_pick(s, "", key, guard(|| b.pick(key)))
                    .map_err(fail)
                    .map(|i| i.map(|i| s.backends()[i].id.clone()))
            };
            let Some(a) = pick(&*first, set)? else {
                continue;
            };
            let key = describe_key(key);
            if let Some(again) = pick(&*first, set)? {
                if again != a {
                    return Err(fail(format!(
                        "with backends {set}, pick({key}) returned {a}, then {again} from the \
                         same balancer"
                    )));
                }
            }
            if let Some(b) = pick(&*second, set)? {
                if b != a {
                    return Err(fail(format!(
                        "with backends {set}, pick({key}) returned {a} from one build and {b} \
                         from another build of the same set"
                    )));
                }
            }
            if let Some(c) = pick(&*third, &relisted)? {
                if c != a && relisted == *set {
                    return Err(fail(format!(
                        "with backends {set}, pick({key}) returned {a} from one build and {c} \
                         from another build of the same set"
                    )));
                }
                if c != a {
                    return Err(fail(format!(
                        "with backends {set}, pick({key}) returned {a}, but {c} from a build \
                         listing the same backends as {relisted}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn disruption(
        &self,
        mut set: BackendSet,
        ops: &[super::MembershipOp],
        keys: &[Vec<u8>],
        refusals: &Refusals,
    ) -> Result<(), TestCaseError> {
        let owners = |set: &BackendSet| -> Result<Vec<Option<String>>, TestCaseError> {
            let members = set.members();
            let balancer = self.build(set, &members, refusals)?;
            keys.iter()
                .map(|key| {
                    let key = Some(key.as_slice());
                    check_pick(set, "", key, guard(|| balancer.pick(key)))
                        .map_err(fail)
                        .map(|i| i.map(|i| set.backends()[i].id.clone()))
                })
                .collect()
        };
        let mut before = owners(&set)?;
        for op in ops {
            let previous = set.clone();
            let Some(change) = set.apply(op) else {
                continue;
            };
            let after = owners(&set)?;
            for ((key, was), now) in keys.iter().zip(&before).zip(&after) {
                let (Some(was), Some(now)) = (was, now) else {
                    continue;
                };
                let allowed = if change.gains() {
                    now == was || now == change.id()
                } else {
                    was == change.id() || now == was
                };
                if !allowed {
                    let rule = if change.gains() {
                        format!("`{change}` may only move keys to {}", change.id())
                    } else {
                        format!("`{change}` may only move the keys {} had", change.id())
                    };
                    return Err(fail(format!(
                        "with backends {previous}, after `{change}` the key b\"{}\" moved from \
                         {was} to {now}: {rule}",
                        key.escape_ascii(),
                    )));
                }
            }
            before = after;
        }
        Ok(())
    }
}

impl<B> fmt::Debug for Conformance<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conformance")
            .field("name", &self.name)
            .field("cases", &self.cases)
            .field("seed", &self.seed)
            .field("max_backends", &self.max_backends)
            .field("max_weight", &self.max_weight)
            .field("duplicate_ids", &self.duplicate_ids)
            .field("proportional", &self.proportional)
            .field("deterministic_keys", &self.deterministic_keys)
            .field("minimal_disruption", &self.minimal_disruption)
            .finish_non_exhaustive()
    }
}

/// Cases the builder refused, for the report and for the message when it
/// refuses too many.
#[derive(Default)]
struct Refusals {
    count: Cell<u32>,
    last: RefCell<Option<String>>,
}

impl Refusals {
    /// Why proptest gave up, and what to do about it.
    fn explain(&self, reason: &str) -> String {
        let last = self.last.borrow();
        format!(
            "the builder refused {} of the generated sets and proptest gave up ({reason}); for \
             example it refused {}. Narrow the sets to what it accepts with `max_weight` or \
             `max_backends`",
            self.count.get(),
            last.as_deref().unwrap_or("(no error recorded)"),
        )
    }
}

enum Verdict {
    Failed(String),
    Aborted(String),
}

fn fail(detail: String) -> TestCaseError {
    TestCaseError::fail(detail)
}

/// `None`, then each key.
fn with_no_key(keys: &[Option<Vec<u8>>]) -> impl Iterator<Item = Option<&[u8]>> {
    std::iter::once(None).chain(keys.iter().map(Option::as_deref))
}

/// Runs `f`, turning a panic into its message.
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        format!("panicked: {message}")
    })
}

/// `there are only 3 backends`, `there is only 1 backend`.
fn count_backends(n: usize) -> String {
    match n {
        1 => "there is only 1 backend".to_owned(),
        n => format!("there are only {n} backends"),
    }
}

/// `2 (c)`: a position and the id there.
fn at(set: &BackendSet, i: usize) -> String {
    format!("{i} ({})", set.backends()[i].id)
}

/// Checks one pick: `Ok(Some(i))` for a valid pick, `Ok(None)` for the
/// documented error when nothing can be picked, else the problem in words.
fn check_pick(
    set: &BackendSet,
    context: &str,
    key: Option<&[u8]>,
    got: Result<Result<usize, Error>, String>,
) -> Result<Option<usize>, String> {
    let len = set.len();
    let up = set.up_count();
    let problem = match got {
        Err(panic) => panic,
        Ok(Ok(i)) if i >= len && len == 0 => {
            format!("returned {i}, but the set is empty: expected the error NoBackends")
        }
        Ok(Ok(i)) if i >= len => format!(
            "returned {i}, but {} (positions 0 to {})",
            count_backends(len),
            len - 1
        ),
        Ok(Ok(i)) if up == 0 => format!(
            "returned {}, but every backend is down: expected the error \
             AllBackendsDown {{ count: {len} }}",
            at(set, i)
        ),
        Ok(Ok(i)) if !set.backends()[i].up => format!("returned {}, which is down", at(set, i)),
        Ok(Ok(i)) => return Ok(Some(i)),
        Ok(Err(e)) if up > 0 => {
            format!("returned the error {e:?} although {up} of the {len} backends are up")
        }
        Ok(Err(Error::NoBackends)) if len == 0 => return Ok(None),
        Ok(Err(Error::AllBackendsDown { count })) if len > 0 && count == len => return Ok(None),
        Ok(Err(Error::AllBackendsDown { count })) if len > 0 => format!(
            "returned AllBackendsDown {{ count: {count} }}, but the count must be the number of \
             backends, down ones included: {len}"
        ),
        Ok(Err(e)) if len == 0 => {
            format!("returned the error {e:?}, but an empty set must give NoBackends")
        }
        Ok(Err(e)) => format!(
            "returned the error {e:?}, but when every backend is down it must be \
             AllBackendsDown {{ count: {len} }}"
        ),
    };
    Err(format!(
        "with backends {set}, {context}pick({}) {problem}",
        describe_key(key)
    ))
}

/// Asks `balancer` for its failover list after `first` (catching a panic)
/// and checks it.
fn failover_checked(
    set: &BackendSet,
    balancer: &dyn Balancer,
    key: Option<&[u8]>,
    first: usize,
) -> Result<(), TestCaseError> {
    let got = guard(|| balancer.failover(key, first));
    check_failover(set, "", key, first, got).map_err(fail)
}

/// Checks one failover list against the members that are up.
fn check_failover(
    set: &BackendSet,
    context: &str,
    key: Option<&[u8]>,
    first: usize,
    got: Result<Vec<usize>, String>,
) -> Result<(), String> {
    let call = format!(
        "with backends {set}, {context}failover({}, first = {})",
        describe_key(key),
        at(set, first)
    );
    let list = match got {
        Ok(list) => list,
        Err(panic) => return Err(format!("{call} {panic}")),
    };
    let shown = list
        .iter()
        .map(|&i| {
            if i < set.len() {
                at(set, i)
            } else {
                i.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let problem = |what: String| Err(format!("{call} returned [{shown}]: {what}"));
    let mut seen = vec![0usize; set.len()];
    for &i in &list {
        if i >= set.len() {
            return problem(format!(
                "{i} is out of range: {}",
                count_backends(set.len())
            ));
        }
        if i == first {
            return problem(format!("it lists {}, the backend that failed", at(set, i)));
        }
        if !set.backends()[i].up {
            return problem(format!("it lists {}, which is down", at(set, i)));
        }
        seen[i] += 1;
        if seen[i] == 2 {
            return problem(format!("it lists {} more than once", at(set, i)));
        }
    }
    let missing: Vec<String> = (0..set.len())
        .filter(|&i| i != first && set.backends()[i].up && seen[i] == 0)
        .map(|i| at(set, i))
        .collect();
    match missing.as_slice() {
        [] => Ok(()),
        [one] => problem(format!("it leaves out {one}, which is up")),
        many => problem(format!("it leaves out {}, which are up", many.join(", "))),
    }
}

/// What a failed check found: which property, and the smallest
/// counter-example in words.
///
/// `Display` gives the whole message that [`Conformance::check`] panics
/// with.
#[derive(Clone, Debug)]
pub struct Failure {
    name: String,
    check: Check,
    detail: String,
    /// Whether `detail` is a shrunk counter-example (else proptest gave up).
    shrunk: bool,
    seed: u64,
    cases: u32,
}

impl Failure {
    /// The check that failed.
    pub fn check(&self) -> Check {
        self.check
    }

    /// The counter-example in words, such as `with backends [a (weight 1,
    /// down)], pick(None) returned 0 (a), but every backend is down: ...`.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The seed that generated the cases; pass it to
    /// [`Conformance::seed`] to replay them.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} failed the conformance check `{}` ({}):\n    {}",
            self.name,
            self.check.name(),
            self.check.property(),
            self.detail,
        )?;
        if self.shrunk {
            write!(
                f,
                "This is the smallest failing case proptest found in {} cases; replay them \
                 with `.seed({:#x})`.",
                self.cases, self.seed
            )
        } else {
            write!(f, "Replay the cases with `.seed({:#x})`.", self.seed)
        }
    }
}

impl std::error::Error for Failure {}

/// What a passing run checked.
///
/// ```
/// use tower_lb::testing::{Check, Conformance};
/// use tower_lb::Strategy;
///
/// let report = Conformance::new(Strategy::RoundRobin).cases(8).check();
/// assert!(report.checks().any(|c| c == Check::Failover));
/// println!("{report}");
/// ```
#[derive(Clone, Debug)]
pub struct Report {
    name: String,
    seed: u64,
    cases: u32,
    checks: Vec<(Check, u32)>,
}

impl Report {
    /// The checks that passed, in the order they ran.
    pub fn checks(&self) -> impl Iterator<Item = Check> + '_ {
        self.checks.iter().map(|&(check, _)| check)
    }

    /// Cases per check.
    pub fn cases(&self) -> u32 {
        self.cases
    }

    /// How many generated sets the builder refused (they were skipped).
    pub fn refused(&self) -> u32 {
        self.checks.iter().map(|&(_, refused)| refused).sum()
    }

    /// The seed that generated the cases.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed {} conformance checks, {} cases each (seed {:#x}):",
            self.name,
            self.checks.len(),
            self.cases,
            self.seed
        )?;
        for &(check, refused) in &self.checks {
            write!(f, "\n    ok  {check}")?;
            if refused > 0 {
                write!(f, " ({refused} sets refused by the builder, skipped)")?;
            }
        }
        Ok(())
    }
}
