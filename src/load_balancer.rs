//! The runtime handle: membership, up/down state and the current balancer.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::backend::check_weight;
use crate::health::{
    Admission, BackendState, BackendStats, CheckResult, HealthPolicy, StickyOutcome, WhenAllEjected,
};
use crate::{Backend, BackendChange, Balancer, BuildBalancer, Error, Load, Member, Outcome};

/// Fresh picks a keyless pick draws when its first is out, and a keyless
/// retry when it lands on a tried backend, before walking the failover list:
/// for rotating and random strategies the next draw is as good a choice
/// (nginx's retry is such a draw) and costs no allocation.
const REDRAWS: usize = 4;

/// The most backends one load balancer holds.
pub const MAX_BACKENDS: usize = 1 << 24;

/// Something that names a backend: a [`Backend`] or a URI string.
///
/// ```
/// use tower_lb::IntoBackend;
///
/// let b = "http://10.0.0.1:8080".into_backend()?;
/// assert_eq!(b.id(), "10.0.0.1:8080");
/// # Ok::<(), tower_lb::Error>(())
/// ```
pub trait IntoBackend {
    /// Converts, parsing if needed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBackendUri`] for strings that do not parse.
    fn into_backend(self) -> Result<Backend, Error>;
}

impl IntoBackend for Backend {
    fn into_backend(self) -> Result<Backend, Error> {
        Ok(self)
    }
}

impl IntoBackend for &str {
    fn into_backend(self) -> Result<Backend, Error> {
        Backend::new(self)
    }
}

impl IntoBackend for String {
    fn into_backend(self) -> Result<Backend, Error> {
        Backend::new(&self)
    }
}

impl IntoBackend for &String {
    fn into_backend(self) -> Result<Backend, Error> {
        Backend::new(self)
    }
}

/// A set of backends, their up/down state, and the balancer over them,
/// changeable at runtime while requests pick from it.
///
/// Cloning is cheap (one `Arc`); clones share everything.
///
/// **Consistency.** The set, the up/down states and the balancer built for
/// them form one immutable snapshot. An update (add, remove, weight, down,
/// up) builds the next snapshot aside, then swaps pointers under write locks
/// held for nothing else. A pick reads the snapshot under a read lock held
/// only for the pick itself, so it sees the old set or the new one, never a
/// mix, and waits at most for a pointer swap. Updates are serialized by a
/// separate mutex, so they are linearizable. A failed update (a duplicate
/// id, a ring that would be too large) leaves the state as it was.
///
/// The snapshot pointer is kept in several copies, each behind its own lock
/// on its own cache line, and each thread reads the copy assigned to it: picks
/// on different cores do not contend on a shared lock word. An update holds
/// every copy's write lock at once while it swaps them, so all copies change
/// at one instant.
///
/// ```
/// use tower_lb::{LoadBalancer, Strategy};
///
/// let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://127.0.0.1:8081", "http://127.0.0.1:8082"])?;
/// assert_eq!(lb.pick(None)?.id(), "127.0.0.1:8081");
/// assert_eq!(lb.pick(None)?.id(), "127.0.0.1:8082");
///
/// lb.mark_down("127.0.0.1:8081")?;
/// assert_eq!(lb.pick(None)?.id(), "127.0.0.1:8082");
/// assert_eq!(lb.pick(None)?.id(), "127.0.0.1:8082");
///
/// lb.add("http://127.0.0.1:8083")?;
/// assert!(matches!(lb.add("http://127.0.0.1:8083"), Err(tower_lb::Error::DuplicateId { .. })));
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone)]
pub struct LoadBalancer {
    shared: Arc<Shared>,
}

/// Copies of the snapshot pointer, one cache line each.
const SHARDS: usize = 8;

#[repr(align(128))]
struct Shard(RwLock<Arc<Snapshot>>);

/// The copy this thread reads: threads are dealt copies in turn.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

struct Shared {
    shards: [Shard; SHARDS],
    /// Serializes updates; never taken by picks.
    writer: Mutex<()>,
    builder: Box<dyn BuildBalancer>,
    /// Requests in flight over every member, for bounded-load hashing.
    in_flight_total: Arc<AtomicU64>,
}

/// A new member whose requests in flight also count in `total`.
fn pooled_member(backend: Backend, total: &Arc<AtomicU64>) -> Member {
    Member::from_parts(
        Arc::new(backend),
        true,
        Arc::new(Load::pooled(total)),
        Arc::default(),
    )
}

struct Snapshot {
    members: Vec<Member>,
    by_id: HashMap<Arc<str>, usize>,
    /// Shared with a snapshot that differs only in its health policy.
    balancer: Arc<dyn Balancer>,
    version: u64,
    health: Arc<HealthPolicy>,
}

impl LoadBalancer {
    /// A load balancer over `backends` (URIs or [`Backend`]s, all up) using
    /// `strategy`: a [`Strategy`](crate::Strategy) or any
    /// [`BuildBalancer`]. An empty list is allowed: picks fail with
    /// [`Error::NoBackends`] until a backend is added.
    ///
    /// # Errors
    ///
    /// An unparsable URI, a duplicate id, or a configuration the strategy
    /// rejects.
    pub fn new<I>(strategy: impl BuildBalancer + 'static, backends: I) -> Result<Self, Error>
    where
        I: IntoIterator,
        I::Item: IntoBackend,
    {
        let in_flight_total = Arc::default();
        let members = at_most_max_backends(backends)
            .map(|b| {
                b?.into_backend()
                    .map(|b| pooled_member(b, &in_flight_total))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let builder: Box<dyn BuildBalancer> = Box::new(strategy);
        let snapshot = Snapshot::build(&*builder, members, 0, Arc::new(HealthPolicy::default()))?;
        Ok(LoadBalancer {
            shared: Arc::new(Shared {
                shards: {
                    let snapshot = Arc::new(snapshot);
                    std::array::from_fn(|_| Shard(RwLock::new(Arc::clone(&snapshot))))
                },
                writer: Mutex::new(()),
                builder,
                in_flight_total,
            }),
        })
    }

    /// Picks a backend for a request, by affinity key where the strategy
    /// uses one.
    ///
    /// # Errors
    ///
    /// [`Error::NoBackends`] or [`Error::AllBackendsDown`]; a custom
    /// balancer that answers an index outside the set gets
    /// [`Error::InvalidConfig`] rather than a panic.
    /// A backend that is ejected or failing its checks (see [`health`](crate::health))
    /// is not returned: the pick walks the strategy's failover order instead,
    /// and fails with [`Error::AllBackendsEjected`] when nothing is left
    /// (unless the policy says [`WhenAllEjected::UseAll`]).
    #[inline]
    pub fn pick(&self, key: Option<&[u8]>) -> Result<Member, Error> {
        let current = self.read();
        let index = current.balancer.pick(key)?;
        let member = current.member(index)?;
        if member.takes_new_picks() && member.health().is_clear() {
            return Ok(member.clone());
        }
        current.pick_healthy(key, index)
    }

    /// Picks a backend as [`pick`](Self::pick) does and hands it to `use_member`
    /// by reference, for a caller that needs the member only for a moment
    /// (to read its URI, say): no reference count is taken or released.
    ///
    /// `use_member` runs under this thread's read lock on the member set,
    /// so updates wait for it: keep it short, and do not update this load
    /// balancer from inside it. A request that holds on to its backend
    /// (the [`LoadBalanceLayer`](crate::layer::LoadBalanceLayer), which
    /// counts it in flight until the response) takes an owned [`Member`].
    ///
    /// ```
    /// use tower_lb::{LoadBalancer, Strategy};
    ///
    /// let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1:8080"])?;
    /// let port = lb.pick_with(None, |member| member.backend().uri().port_u16())?;
    /// assert_eq!(port, Some(8080));
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`pick`](Self::pick).
    #[inline]
    pub fn pick_with<R>(
        &self,
        key: Option<&[u8]>,
        use_member: impl FnOnce(&Member) -> R,
    ) -> Result<R, Error> {
        let current = self.read();
        let index = current.balancer.pick(key)?;
        let member = current.member(index)?;
        if member.takes_new_picks() && member.health().is_clear() {
            return Ok(use_member(member));
        }
        // Ejected, draining or ramping: the slow path, as `pick` takes it.
        current.pick_healthy(key, index).map(|m| use_member(&m))
    }

    /// The backends to try after `failed` failed, in the strategy's order:
    /// every other backend that is up, each once. If `failed` is no longer
    /// a member, the list starts with a fresh pick.
    pub fn failover(&self, key: Option<&[u8]>, failed: &str) -> Vec<Member> {
        let current = self.snapshot();
        let (first, mut order) = match current.by_id.get(failed) {
            Some(&index) => (index, Vec::new()),
            None => match current
                .balancer
                .pick(key)
                .and_then(|i| Ok((i, current.member(i)?.clone())))
            {
                Ok((index, member)) => (index, vec![member]),
                Err(_) => return Vec::new(),
            },
        };
        // Indices outside the set (a custom balancer's bug) are skipped, and
        // so are backends that are ejected or failing their checks.
        let now = current.health.now();
        order.extend(
            current
                .balancer
                .failover(key, first)
                .into_iter()
                .filter_map(|i| current.members.get(i))
                .filter(|m| current.available(m, now))
                .cloned(),
        );
        order
    }

    /// Whether a request holding a sticky cookie for `member` may go to it:
    /// it is up (draining is fine) and not ejected or failing its checks.
    /// Like any pick, it may use up an ejected backend's one probe. Counts
    /// the sticky hit or fallback in the stats.
    pub fn admit_sticky(&self, member: &Member) -> bool {
        let current = self.read();
        let health = member.health();
        let admitted = member.is_up()
            && (health.is_clear()
                || health.admit(
                    &current.health.rules(member.backend()),
                    current.health.now(),
                    true,
                ) != Admission::Refuse);
        health.count_sticky(if admitted {
            StickyOutcome::Hit
        } else {
            StickyOutcome::Fallback
        });
        admitted
    }

    /// Counts a request that came without a valid sticky cookie and was
    /// balanced to `member`, in its stats.
    pub fn count_sticky_miss(&self, member: &Member) {
        member.health().count_sticky(StickyOutcome::Miss);
    }

    /// Picks a backend for a retry, never one whose id is in `tried`, so
    /// every attempt of one request goes to a backend not yet tried.
    ///
    /// Without a key (or with one the strategy ignores, see
    /// [`Balancer::uses_key`]) the retry is a fresh pick, as nginx's is: the
    /// strategy draws again (round robin moves its rotation on, random draws
    /// anew) until it lands on a backend that is neither tried nor out. With
    /// a key the strategy follows (consistent hashing), and when the draws
    /// keep landing on tried backends, it is the first backend of
    /// [`failover`](Self::failover)`(key, tried[0])` not in `tried`: for
    /// consistent hashing, the ring successor of the key's backend. With
    /// `tried` empty this is [`pick`](Self::pick).
    ///
    /// ```
    /// use tower_lb::{LoadBalancer, Strategy};
    ///
    /// let lb = LoadBalancer::new(
    ///     Strategy::RoundRobin,
    ///     ["http://10.0.0.1", "http://10.0.0.2", "http://10.0.0.3"],
    /// )?;
    /// // The first request went to .1 and failed: its retry takes the
    /// // rotation's next turn, and the next request the one after.
    /// assert_eq!(lb.pick(None)?.id(), "10.0.0.1");
    /// assert_eq!(lb.pick_excluding(None, &["10.0.0.1"])?.id(), "10.0.0.2");
    /// assert_eq!(lb.pick(None)?.id(), "10.0.0.3");
    /// // A draw that lands on a tried backend draws again.
    /// assert_eq!(lb.pick_excluding(None, &["10.0.0.1", "10.0.0.3"])?.id(), "10.0.0.2");
    /// assert!(lb.pick_excluding(None, &["10.0.0.1", "10.0.0.2", "10.0.0.3"]).is_err());
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`pick`](Self::pick); [`Error::AllBackendsDown`] also when
    /// every backend that is up has been tried already.
    pub fn pick_excluding(&self, key: Option<&[u8]>, tried: &[&str]) -> Result<Member, Error> {
        let Some(&first) = tried.first() else {
            return self.pick(key);
        };
        {
            let current = self.read();
            if key.is_none() || !current.balancer.uses_key() {
                if let Some(member) = current.redraw_untried(tried) {
                    return Ok(member);
                }
            }
        }
        self.failover(key, first)
            .into_iter()
            .find(|m| !tried.contains(&m.id()))
            .ok_or_else(|| match self.len() {
                0 => Error::NoBackends,
                count => Error::AllBackendsDown { count },
            })
    }

    /// The member with this id, if any, up or down.
    pub fn get(&self, id: &str) -> Option<Member> {
        let id = &*backend_id(id);
        let current = self.read();
        current.by_id.get(id).map(|&i| current.members[i].clone())
    }

    /// Every member, in listing order.
    pub fn members(&self) -> Vec<Member> {
        self.snapshot().members.clone()
    }

    /// How many backends are configured, up or down.
    pub fn len(&self) -> usize {
        self.read().members.len()
    }

    /// Whether no backend is configured.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A number that grows with every successful update.
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// Adds a backend, up.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateId`] if its id is taken; nothing changes then.
    ///
    /// With a slow-start window in the [`HealthPolicy`] it ramps up over it.
    pub fn add(&self, backend: impl IntoBackend) -> Result<(), Error> {
        let backend = backend.into_backend()?;
        let policy = self.health_policy();
        self.update(|members| {
            if members.len() >= MAX_BACKENDS {
                return Err(crate::discover::too_many_backends());
            }
            let member = pooled_member(backend, &self.shared.in_flight_total);
            member
                .health()
                .start_ramp(&policy.rules(member.backend()), policy.now());
            members.push(member);
            Ok(true)
        })
    }

    /// Removes the backend with this id and returns it.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownBackend`] if no backend has this id.
    pub fn remove(&self, id: &str) -> Result<Arc<Backend>, Error> {
        let mut removed = None;
        self.update(|members| {
            let index = position(members, id)?;
            removed = Some(members.remove(index).backend().clone());
            Ok(true)
        })?;
        Ok(removed.expect("update ran the closure successfully"))
    }

    /// Changes a backend's weight; 0 drains it (see
    /// [`Backend::with_weight`]).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownBackend`] or [`Error::InvalidWeight`].
    pub fn set_weight(&self, id: &str, weight: u32) -> Result<(), Error> {
        check_weight(id, weight)?;
        self.update(|members| {
            let index = position(members, id)?;
            let m = &members[index];
            if m.backend().weight() == weight {
                return Ok(false);
            }
            let backend = Backend::clone(m.backend()).with_weight(weight)?;
            members[index] = m.with_backend(Arc::new(backend));
            Ok(true)
        })
    }

    /// Marks a backend down: no strategy picks it until [`mark_up`](Self::mark_up).
    ///
    /// Like every method taking an `id`, it takes the backend's id
    /// (`host:port` for a backend built from a URI, unless
    /// [`Backend::with_id`] named it) or the URI it was built from:
    ///
    /// ```
    /// use tower_lb::{LoadBalancer, Strategy};
    ///
    /// let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://127.0.0.1:8081", "http://127.0.0.1:8082"])?;
    /// lb.mark_down("127.0.0.1:8081")?;
    /// lb.mark_up("http://127.0.0.1:8081")?;
    /// assert!(lb.get("http://127.0.0.1:8081").unwrap().is_up());
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::UnknownBackend`].
    pub fn mark_down(&self, id: &str) -> Result<(), Error> {
        self.set_up(id, false)
    }

    /// Marks a backend up again (into slow start, if the policy has a
    /// window).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownBackend`].
    pub fn mark_up(&self, id: &str) -> Result<(), Error> {
        self.set_up(id, true)
    }

    /// Replaces the whole set (as service discovery does). Backends whose id
    /// stays keep their up/down state and counters.
    ///
    /// A list identical to the current one (same backends, weights and
    /// order) changes nothing: the balancer is not rebuilt and the version
    /// stays, so a discovery loop that re-sends an unchanged list does not
    /// restart the rotation at the first backend on every refresh.
    ///
    /// # Errors
    ///
    /// An unparsable URI or a duplicate id; nothing changes then.
    pub fn set_backends<I>(&self, backends: I) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: IntoBackend,
    {
        let backends = at_most_max_backends(backends)
            .map(|b| b?.into_backend())
            .collect::<Result<Vec<_>, _>>()?;
        self.update(|members| {
            let unchanged = members.len() == backends.len()
                && members
                    .iter()
                    .zip(&backends)
                    .all(|(m, b)| **m.backend() == *b);
            if unchanged {
                return Ok(false);
            }
            let old: HashMap<&str, &Member> =
                members.iter().map(|m| (m.backend().id(), m)).collect();
            let policy = self.health_policy();
            let next = backends
                .into_iter()
                .map(|b| match old.get(b.id()) {
                    Some(m) => m.with_backend(Arc::new(b)),
                    None => {
                        let member = pooled_member(b, &self.shared.in_flight_total);
                        member
                            .health()
                            .start_ramp(&policy.rules(member.backend()), policy.now());
                        member
                    }
                })
                .collect();
            *members = next;
            Ok(true)
        })
    }

    /// Applies one membership change from service discovery: inserts (or
    /// replaces) a backend under an id, or removes one. See
    /// [`BackendChange`] for what each change means; with the `discover`
    /// feature a `tower::discover::Change<K, Backend>` is accepted as is.
    ///
    /// ```
    /// use tower_lb::{Backend, BackendChange, LoadBalancer, Strategy};
    ///
    /// let lb = LoadBalancer::new(Strategy::WeightedRoundRobin, ["http://10.0.0.1:80"])?;
    /// let heavier = Backend::new("http://10.0.0.1:80")?.with_weight(3)?;
    /// lb.apply(BackendChange::Insert("10.0.0.1:80".into(), heavier))?; // replaced in place
    /// assert_eq!(lb.get("10.0.0.1:80").unwrap().weight(), 3);
    /// lb.apply(BackendChange::Remove("10.0.0.9:80".into()))?;        // not a member: no change
    /// assert_eq!(lb.len(), 1);
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBackendId`] for an id that cannot be one,
    /// [`Error::InvalidConfig`] past [`MAX_BACKENDS`], or what the strategy
    /// refuses for the new set (such as [`Error::RingTooLarge`]); nothing
    /// changes then.
    pub fn apply(&self, change: impl Into<BackendChange>) -> Result<(), Error> {
        self.apply_all([change.into()])
    }

    /// Applies many membership changes, in order, with one rebuild of the
    /// balancer: a deploy that replaces 100 endpoints builds one ring, not
    /// 100. The batch applies whole or not at all, and picks see the set
    /// before it or after it, never half of it.
    ///
    /// ```
    /// use tower_lb::{Backend, BackendChange, LoadBalancer, Strategy};
    ///
    /// let lb = LoadBalancer::new(Strategy::consistent_hash(), ["http://10.0.0.1:80"])?;
    /// let before = lb.version();
    /// lb.apply_all((2..=100).map(|i| {
    ///     let backend = Backend::new(&format!("http://10.0.0.{i}:80")).unwrap();
    ///     BackendChange::Insert(format!("api-{i}"), backend)
    /// }))?;
    /// assert_eq!(lb.len(), 100);
    /// assert_eq!(lb.version(), before + 1);
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply), for the first change that fails; nothing
    /// changes then.
    pub fn apply_all<I>(&self, changes: I) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: Into<BackendChange>,
    {
        let policy = self.health_policy();
        self.update(|members| {
            crate::discover::apply_changes(
                members,
                changes.into_iter().map(Into::into),
                // As `add` and `set_backends` make and keep members (a new
                // one slow-starts; a replaced one keeps its health).
                |backend| {
                    let member = pooled_member(backend, &self.shared.in_flight_total);
                    member
                        .health()
                        .start_ramp(&policy.rules(member.backend()), policy.now());
                    member
                },
                |old, backend| old.with_backend(Arc::new(backend)),
            )
        })
    }

    /// Records how a request to `member` ended (passive feedback): the
    /// counters, and nginx's `max_fails` rules of the [`HealthPolicy`].
    /// Atomic adds for a healthy backend's success; a short lock otherwise.
    pub fn report(&self, member: &Member, outcome: Outcome) {
        member.load().record(outcome);
        let health = member.health();
        let failed = outcome == Outcome::Failure;
        if !failed && health.is_clear() {
            return;
        }
        let current = self.read();
        let policy = &current.health;
        health.record(failed, &policy.rules(member.backend()), policy.now());
    }

    /// Reports one active health check of the backend with this id, with
    /// HAProxy's `rise`/`fall` rules: `fall` failures in a row take it out
    /// of the picks, `rise` passes in a row bring it back. Returns whether it
    /// is up as far as checks go. The library does no I/O: your probe loop
    /// (see `examples/active_health.rs`) decides what a pass is.
    ///
    /// ```
    /// use tower_lb::health::{CheckResult, HealthPolicy};
    /// use tower_lb::{LoadBalancer, Strategy};
    ///
    /// let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1", "http://10.0.0.2"])?
    ///     .with_health_policy(HealthPolicy::default().rise(2).fall(2));
    /// assert!(lb.report_check("10.0.0.1", CheckResult::Fail)?);
    /// assert!(!lb.report_check("10.0.0.1", CheckResult::Fail)?); // down
    /// assert!((0..4).all(|_| lb.pick(None).unwrap().id() == "10.0.0.2"));
    /// assert!(!lb.report_check("10.0.0.1", CheckResult::Pass)?);
    /// assert!(lb.report_check("10.0.0.1", CheckResult::Pass)?); // back
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::UnknownBackend`].
    pub fn report_check(&self, id: &str, result: CheckResult) -> Result<bool, Error> {
        let member = self
            .get(id)
            .ok_or_else(|| Error::UnknownBackend { id: id.to_owned() })?;
        let policy = self.health_policy();
        let (rise, fall) = policy.rise_fall();
        Ok(member.health().record_check(
            result,
            rise,
            fall,
            &policy.rules(member.backend()),
            policy.now(),
        ))
    }

    /// Replaces the health policy (passive ejection, checks, slow start,
    /// all-ejected mode, clock). Backends keep their health state.
    pub fn set_health_policy(&self, policy: HealthPolicy) {
        let policy = Arc::new(policy);
        // Only the policy changes: the balancer is shared, not rebuilt, so
        // this cannot fail.
        let _ = self.update_with(|_| Ok(true), Some(policy));
    }

    /// [`set_health_policy`](Self::set_health_policy), builder style.
    pub fn with_health_policy(self, policy: HealthPolicy) -> Self {
        self.set_health_policy(policy);
        self
    }

    /// The health policy in force.
    pub fn health_policy(&self) -> Arc<HealthPolicy> {
        Arc::clone(&self.read().health)
    }

    /// Every backend's counters and state, in listing order: what a metrics
    /// exporter reads.
    pub fn stats(&self) -> Vec<BackendStats> {
        let current = self.snapshot();
        let now = current.health.now();
        current
            .members
            .iter()
            .map(|m| {
                let health = m.health();
                let rules = current.health.rules(m.backend());
                let state = if !m.is_up() {
                    BackendState::Down
                } else {
                    match health.state(&rules, now) {
                        BackendState::Up if m.backend().weight() == 0 => BackendState::Draining,
                        state => state,
                    }
                };
                let (sticky_hits, sticky_misses, sticky_fallbacks) = health.sticky();
                let load = m.load();
                BackendStats {
                    id: m.backend().id().to_owned(),
                    weight: m.backend().weight(),
                    state,
                    picks: load.started(),
                    in_flight: load.in_flight(),
                    successes: load.successes(),
                    failures: load.failures(),
                    current_fails: health.fails(),
                    ejections: health.ejections(),
                    sticky_hits,
                    sticky_misses,
                    sticky_fallbacks,
                }
            })
            .collect()
    }

    fn set_up(&self, id: &str, up: bool) -> Result<(), Error> {
        let policy = self.health_policy();
        self.update(|members| {
            let index = position(members, id)?;
            if members[index].is_up() == up {
                return Ok(false);
            }
            if up {
                let m = &members[index];
                m.health()
                    .start_ramp(&policy.rules(m.backend()), policy.now());
            }
            members[index] = members[index].clone().with_up(up);
            Ok(true)
        })
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.read().clone()
    }

    /// Runs `edit` on a copy of the members; if it reports a change, builds
    /// and swaps in the next snapshot.
    fn update(
        &self,
        edit: impl FnOnce(&mut Vec<Member>) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        self.update_with(edit, None)
    }

    /// [`update`](Self::update), optionally with a new health policy (then
    /// the members and the balancer are kept as they are).
    fn update_with(
        &self,
        edit: impl FnOnce(&mut Vec<Member>) -> Result<bool, Error>,
        policy: Option<Arc<HealthPolicy>>,
    ) -> Result<(), Error> {
        let _writer = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.snapshot();
        let next = match policy {
            Some(health) => Arc::new(Snapshot {
                members: current.members.clone(),
                by_id: current.by_id.clone(),
                balancer: Arc::clone(&current.balancer),
                version: current.version + 1,
                health,
            }),
            None => {
                let mut members = current.members.clone();
                if !edit(&mut members)? {
                    return Ok(());
                }
                Arc::new(Snapshot::build(
                    &*self.shared.builder,
                    members,
                    current.version + 1,
                    Arc::clone(&current.health),
                )?)
            }
        };
        // The rotation goes on where it was rather than restarting at the
        // first backend on every change.
        if !Arc::ptr_eq(&current.balancer, &next.balancer) {
            if let Some(position) = current.balancer.position() {
                next.balancer.resume_at(position);
            }
        }
        drop(current);
        // Take every copy's write lock (always in the same order), then swap
        // them all: readers see the old snapshot or the new one everywhere.
        let mut slots: Vec<_> = self
            .shared
            .shards
            .iter()
            .map(|shard| {
                shard
                    .0
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
            })
            .collect();
        let old: Vec<Arc<Snapshot>> = slots
            .iter_mut()
            .map(|slot| std::mem::replace(&mut **slot, Arc::clone(&next)))
            .collect();
        drop(slots);
        // The old snapshot (and its balancer) is freed outside the locks.
        drop(old);
        Ok(())
    }

    /// Read access to this thread's copy of the snapshot pointer.
    #[inline]
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Arc<Snapshot>> {
        // Nothing panics while a write lock is held (it only swaps a
        // pointer), so a poisoned lock still holds a whole snapshot.
        self.shared.shards[shard_index()]
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The backends, failing as soon as there are more than [`MAX_BACKENDS`]:
/// before any is parsed when the iterator knows its length, so an oversized
/// list costs no memory.
fn at_most_max_backends<I>(backends: I) -> impl Iterator<Item = Result<I::Item, Error>>
where
    I: IntoIterator,
{
    let backends = backends.into_iter();
    let known_too_many = backends.size_hint().0 > MAX_BACKENDS;
    // Callers collect into a `Result`, which stops at the first error.
    known_too_many
        .then(|| Err(crate::discover::too_many_backends()))
        .into_iter()
        .chain(backends.enumerate().map(|(i, b)| {
            if i < MAX_BACKENDS {
                Ok(b)
            } else {
                Err(crate::discover::too_many_backends())
            }
        }))
}

/// The id a caller means: an id as given, or the id of a backend URI
/// (`http://127.0.0.1:8081` names `127.0.0.1:8081`, the id
/// [`Backend::new`] gives it).
fn backend_id(id: &str) -> std::borrow::Cow<'_, str> {
    if id.contains("://") {
        if let Ok(backend) = Backend::new(id) {
            return std::borrow::Cow::Owned(backend.id().to_owned());
        }
    }
    std::borrow::Cow::Borrowed(id)
}

fn position(members: &[Member], id: &str) -> Result<usize, Error> {
    let wanted = &*backend_id(id);
    if let Some(index) = members.iter().position(|m| m.backend().id() == wanted) {
        return Ok(index);
    }
    members
        .iter()
        .position(|m| m.backend().id() == id)
        .ok_or_else(|| Error::UnknownBackend { id: id.to_owned() })
}

impl Snapshot {
    /// The member a balancer's answer names.
    #[inline]
    fn member(&self, index: usize) -> Result<&Member, Error> {
        self.members.get(index).ok_or_else(|| Error::InvalidConfig {
            reason: format!(
                "the balancer picked index {index} of a set of {} backends (a bug in the balancer)",
                self.members.len()
            ),
        })
    }

    /// A keyless retry's fresh draw: the strategy's next pick, drawn again
    /// (up to [`REDRAWS`] times) while it lands on a backend in `tried` or
    /// one that is out. `None` sends the caller to the failover order; so
    /// does a set with nothing left to draw, before any draw (nginx's pass
    /// finds no peer then, and moves no rotation).
    fn redraw_untried(&self, tried: &[&str]) -> Option<Member> {
        let now = self.health.now();
        let untried_left = self
            .members
            .iter()
            .any(|m| !tried.contains(&m.id()) && self.available(m, now));
        if !untried_left {
            return None;
        }
        for _ in 0..REDRAWS {
            let member = self.members.get(self.balancer.pick(None).ok()?)?;
            if !tried.contains(&member.id())
                && self.admission(member, now, false) == Some(Admission::Admit)
            {
                return Some(member.clone());
            }
        }
        None
    }

    /// Whether `member` could take a new pick now, without using up an
    /// ejected backend's probe: for failover lists.
    fn available(&self, member: &Member, now: Instant) -> bool {
        member.takes_new_picks()
            && member
                .health()
                .is_available(&self.health.rules(member.backend()), now)
    }

    /// What a pick may do with `member`: `None` if it takes no new picks
    /// (down or draining), else its health's answer, which may use up an
    /// ejected backend's one probe (`keyed`: a pick by affinity key, which
    /// slow start leaves alone).
    fn admission(&self, member: &Member, now: Instant, keyed: bool) -> Option<Admission> {
        if !member.takes_new_picks() {
            return None;
        }
        let health = member.health();
        if health.is_clear() {
            return Some(Admission::Admit);
        }
        Some(health.admit(&self.health.rules(member.backend()), now, keyed))
    }

    /// The slow path of a pick whose first choice is draining, ejected,
    /// failing its checks or ramping up: redraw (keyless picks), then walk
    /// the failover order, then fall back to a ramping backend, then apply
    /// the all-ejected mode.
    #[cold]
    fn pick_healthy(&self, key: Option<&[u8]>, first: usize) -> Result<Member, Error> {
        let policy = &*self.health;
        let now = policy.now();
        let keyed = key.is_some() && self.balancer.uses_key();
        let mut ramping = None;
        let mut consider = |index: usize| -> Option<Member> {
            let member = self.members.get(index)?;
            match self.admission(member, now, keyed)? {
                Admission::Admit => Some(member.clone()),
                Admission::Ramping => {
                    ramping.get_or_insert(index);
                    None
                }
                Admission::Refuse => None,
            }
        };
        if let Some(member) = consider(first) {
            return Ok(member);
        }
        if !keyed {
            for _ in 0..REDRAWS {
                let index = self.balancer.pick(None)?;
                if let Some(member) = consider(index) {
                    return Ok(member);
                }
            }
        }
        let mut found = None;
        self.balancer.failover_find(key, first, &mut |index| {
            found = consider(index);
            found.is_some()
        });
        if let Some(member) = found {
            return Ok(member);
        }
        if let Some(index) = ramping {
            return self.member(index).cloned();
        }
        // nginx: "if there is only a single server in a group, max_fails,
        // fail_timeout and slow_start parameters are ignored, and such a
        // server will never be considered unavailable" (passively; failing
        // active checks still hold it out).
        if let [only] = self.members.as_slice() {
            if only.takes_new_picks() && !only.health().is_check_down() {
                return Ok(only.clone());
            }
        }
        match policy.all_ejected() {
            WhenAllEjected::UseAll if self.members[first].takes_new_picks() => {
                Ok(self.members[first].clone())
            }
            WhenAllEjected::UseAll => self
                .balancer
                .failover(key, first)
                .into_iter()
                .find_map(|i| self.members.get(i).filter(|m| m.takes_new_picks()).cloned())
                .ok_or_else(|| self.all_ejected()),
            _ => Err(self.all_ejected()),
        }
    }

    fn all_ejected(&self) -> Error {
        Error::AllBackendsEjected {
            count: self.members.len(),
        }
    }

    fn build(
        builder: &dyn BuildBalancer,
        members: Vec<Member>,
        version: u64,
        health: Arc<HealthPolicy>,
    ) -> Result<Snapshot, Error> {
        if members.len() > MAX_BACKENDS {
            return Err(Error::InvalidConfig {
                reason: format!("at most {MAX_BACKENDS} backends are supported"),
            });
        }
        let mut by_id = HashMap::with_capacity(members.len());
        for (index, member) in members.iter().enumerate() {
            let id: Arc<str> = Arc::from(member.backend().id());
            if by_id.insert(id, index).is_some() {
                return Err(Error::DuplicateId {
                    id: member.backend().id().to_owned(),
                });
            }
        }
        let balancer: Arc<dyn Balancer> = Arc::from(builder.build(&members)?);
        Ok(Snapshot {
            members,
            by_id,
            balancer,
            version,
            health,
        })
    }
}

impl fmt::Debug for LoadBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.snapshot();
        f.debug_struct("LoadBalancer")
            .field("version", &current.version)
            .field("members", &current.members)
            .finish()
    }
}

impl Deref for Member {
    type Target = Backend;

    fn deref(&self) -> &Backend {
        self.backend()
    }
}
