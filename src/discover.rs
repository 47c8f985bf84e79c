//! Membership from service discovery.
//!
//! A discovery system (Kubernetes endpoints, Consul, etcd, DNS) reports
//! membership as a feed of changes: *this backend appeared* (or changed),
//! *that one is gone*. The tower ecosystem already names that feed:
//! `tower::discover::Discover`, a stream of
//! `Change::Insert(key, service)` and `Change::Remove(key)`. Here the
//! "service" is a [`Backend`] and the key is its id.
//!
//! * [`LoadBalancer::apply`](crate::LoadBalancer::apply) applies one
//!   [`BackendChange`] (or one `tower::discover::Change<K, Backend>`, with
//!   the `discover` feature);
//!   [`LoadBalancer::apply_all`](crate::LoadBalancer::apply_all) applies
//!   many with **one** rebuild, so a deploy that replaces 100 endpoints
//!   costs one new ring, not 100.
//! * `LoadBalancer::follow` (with the `discover` feature) turns a
//!   `Discover` stream into a future that the user spawns on any runtime:
//!   it applies every change that is ready at once as one batch, and
//!   finishes when the stream ends. The library itself starts nothing.
//!
//! # What a change means
//!
//! * `Insert(id, backend)` adds the backend under `id` (the id hashing and
//!   sticky cookies use, so every gateway replica must derive the same id for
//!   the same backend: take it from the discovery key, never from an
//!   order). If `id` is already a member, the member is *replaced* (a new
//!   URI or weight, as Envoy's EDS updates an endpoint in place), keeping
//!   its up/down state and counters; an identical insert changes nothing.
//! * `Remove(id)` removes the member; removing an id that is not a member
//!   changes nothing, since discovery systems repeat deletions (a watch
//!   resumed after a reconnect, a relist).
//! * The weight travels in the backend. A weight of 0 from discovery means
//!   *drain*: it is passed through as it is, like any other weight.
//!
//! New members are appended in the order they arrive; removals keep the
//! order of the rest. The strategies whose choices replicas must agree on
//! (consistent hashing, sticky cookies) depend on ids and weights only,
//! never on that order.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::{Backend, Error, Member, MAX_BACKENDS};

/// One membership change, as discovery reports it.
///
/// With the `discover` feature, `tower::discover::Change<K, Backend>`
/// converts into it for any key `K: AsRef<str>`.
///
/// ```
/// use tower_lb::{Backend, BackendChange, LoadBalancer, Strategy};
///
/// let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1:80"])?;
/// lb.apply(BackendChange::Insert("api-2".into(), Backend::new("http://10.0.0.2:80")?))?;
/// lb.apply(BackendChange::Remove("10.0.0.1:80".into()))?;
/// assert_eq!(lb.pick(None)?.id(), "api-2");
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendChange {
    /// The backend `.1` is a member under the id `.0` (added, or replaced
    /// if the id is taken).
    Insert(String, Backend),
    /// The member with this id is gone.
    Remove(String),
}

#[cfg(feature = "discover")]
#[cfg_attr(docsrs, doc(cfg(feature = "discover")))]
impl<K: AsRef<str>> From<tower::discover::Change<K, Backend>> for BackendChange {
    fn from(change: tower::discover::Change<K, Backend>) -> Self {
        match change {
            tower::discover::Change::Insert(id, backend) => {
                BackendChange::Insert(id.as_ref().to_owned(), backend)
            }
            tower::discover::Change::Remove(id) => BackendChange::Remove(id.as_ref().to_owned()),
        }
    }
}

/// A member's backend, hashed and compared by id, so that a map keyed by it
/// answers `&str` lookups without copying every id.
struct ById(Arc<Backend>);

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id().hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id()
    }
}

impl Eq for ById {}

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.id()
    }
}

/// Applies `changes`, in order, to a copy of the member list. Reports
/// whether anything changed; on an error the caller discards the copy, so a
/// batch applies whole or not at all. The load balancer says how a member
/// is made for a new backend (`new_member`, as `add` makes one) and how a
/// member takes a new description of its backend (`replaced`, keeping its
/// state, as a reweight does).
pub(crate) fn apply_changes(
    members: &mut Vec<Member>,
    changes: impl IntoIterator<Item = BackendChange>,
    mut new_member: impl FnMut(Backend) -> Member,
    replaced: impl Fn(&Member, Backend) -> Member,
) -> Result<bool, Error> {
    let mut slots: Vec<Option<Member>> = std::mem::take(members).into_iter().map(Some).collect();
    let mut index: HashMap<ById, usize> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, m)| Some((ById(m.as_ref()?.backend().clone()), i)))
        .collect();
    let mut changed = false;
    for change in changes {
        match change {
            BackendChange::Insert(id, backend) => {
                let backend = if backend.id() == id {
                    backend
                } else {
                    backend.with_id(id)?
                };
                match index.get(backend.id()).map(|&i| (i, slots[i].as_ref())) {
                    Some((_, Some(m))) if **m.backend() == backend => {}
                    Some((i, Some(m))) => {
                        // The index keeps the old backend as its key: same id.
                        slots[i] = Some(replaced(m, backend));
                        changed = true;
                    }
                    // The index never names an emptied slot.
                    Some((_, None)) | None => {
                        if index.len() >= MAX_BACKENDS {
                            return Err(too_many_backends());
                        }
                        let member = new_member(backend);
                        index.insert(ById(member.backend().clone()), slots.len());
                        slots.push(Some(member));
                        changed = true;
                    }
                }
            }
            BackendChange::Remove(id) => {
                if let Some(i) = index.remove(id.as_str()) {
                    slots[i] = None;
                    changed = true;
                }
            }
        }
    }
    *members = slots.into_iter().flatten().collect();
    Ok(changed)
}

pub(crate) fn too_many_backends() -> Error {
    Error::InvalidConfig {
        reason: format!(
            "at most {MAX_BACKENDS} backends are supported: split the set across several load balancers"
        ),
    }
}

#[cfg(feature = "discover")]
#[cfg_attr(docsrs, doc(cfg(feature = "discover")))]
pub use self::follow::Follow;

#[cfg(feature = "discover")]
mod follow {
    use std::fmt;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tower::discover::Discover;

    use super::BackendChange;
    use crate::{Backend, Error, LoadBalancer};

    /// The most changes applied as one batch before the future yields, so a
    /// stream that is always ready cannot hold a runtime thread forever.
    const MAX_BATCH: usize = 4096;

    type OnRejected = Box<dyn FnMut(BackendChange, Error) + Send>;

    pin_project_lite::pin_project! {
        /// A future that applies a [`Discover`] stream's changes to a
        /// [`LoadBalancer`]; made by [`LoadBalancer::follow`].
        ///
        /// Each time it is polled it takes every change the stream has
        /// ready (until the stream answers `Pending`) and applies them with
        /// one rebuild. It finishes with `Ok(())` when the stream ends and
        /// with the stream's error if it fails; either way the load balancer
        /// keeps the last membership it was given and goes on serving it.
        ///
        /// A change the load balancer refuses (an id longer than
        /// [`MAX_ID_LEN`](crate::MAX_ID_LEN), a set that would exceed
        /// [`MAX_BACKENDS`](crate::MAX_BACKENDS), a ring that would be too
        /// large) does not stop the feed: the batch is applied change by
        /// change instead, and each refused change goes to the
        /// [`on_rejected`](Follow::on_rejected) hook with its error.
        #[must_use = "futures do nothing unless polled: spawn it on your runtime"]
        pub struct Follow<D> {
            #[pin]
            discover: D,
            lb: LoadBalancer,
            batch: Vec<BackendChange>,
            on_rejected: Option<OnRejected>,
            done: bool,
        }
    }

    impl LoadBalancer {
        /// A future that follows a discovery stream: spawn it on any runtime
        /// (`tokio::spawn(lb.follow(stream))`) and the membership follows
        /// the stream's `Insert`s and `Remove`s, each burst in one rebuild.
        ///
        /// ```
        /// use futures_util::stream;
        /// use tower::discover::Change;
        /// use tower_lb::{Backend, LoadBalancer, Strategy};
        ///
        /// let lb = LoadBalancer::new(Strategy::consistent_hash(), Vec::<Backend>::new())?;
        /// let feed = stream::iter([
        ///     Ok::<_, std::convert::Infallible>(Change::Insert("a", Backend::new("http://10.0.0.1:80")?)),
        ///     Ok(Change::Insert("b", Backend::new("http://10.0.0.2:80")?)),
        ///     Ok(Change::Remove("a")),
        /// ]);
        /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        /// # runtime.block_on(async {
        /// lb.follow(feed).await.unwrap();   // or tokio::spawn(lb.follow(feed))
        /// # });
        /// assert_eq!(lb.pick(Some(b"user-1"))?.id(), "b");
        /// assert_eq!(lb.version(), 1);     // three changes, one rebuild
        /// # Ok::<(), tower_lb::Error>(())
        /// ```
        #[cfg_attr(docsrs, doc(cfg(feature = "discover")))]
        pub fn follow<D>(&self, discover: D) -> Follow<D>
        where
            D: Discover<Service = Backend>,
            D::Key: AsRef<str>,
        {
            Follow {
                discover,
                lb: self.clone(),
                batch: Vec::new(),
                on_rejected: None,
                done: false,
            }
        }
    }

    impl<D> Follow<D> {
        /// Calls `hook` with each change the load balancer refused and why
        /// (to log it, or count it); without a hook refused changes are
        /// dropped and the rest still apply.
        ///
        /// ```
        /// use futures_util::stream;
        /// use tower::discover::Change;
        /// use tower_lb::{Backend, LoadBalancer, Strategy};
        ///
        /// let lb = LoadBalancer::new(Strategy::RoundRobin, Vec::<Backend>::new())?;
        /// let feed = stream::iter([
        ///     Ok::<_, std::convert::Infallible>(Change::Insert("a", Backend::new("http://10.0.0.1:80")?)),
        ///     Ok(Change::Insert("", Backend::new("http://10.0.0.2:80")?)), // not an id
        /// ]);
        /// let following = lb.follow(feed).on_rejected(|change, error| {
        ///     eprintln!("discovery sent {change:?}, refused: {error}");
        /// });
        /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        /// # runtime.block_on(async {
        /// following.await.unwrap(); // or tokio::spawn(following)
        /// # });
        /// assert_eq!(lb.len(), 1);
        /// # Ok::<(), tower_lb::Error>(())
        /// ```
        pub fn on_rejected(
            mut self,
            hook: impl FnMut(BackendChange, Error) + Send + 'static,
        ) -> Self {
            self.on_rejected = Some(Box::new(hook));
            self
        }
    }

    impl<D> Future for Follow<D>
    where
        D: Discover<Service = Backend>,
        D::Key: AsRef<str>,
    {
        type Output = Result<(), D::Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut this = self.project();
            if *this.done {
                return Poll::Ready(Ok(()));
            }
            let mut end = None;
            while this.batch.len() < MAX_BATCH {
                match this.discover.as_mut().poll_discover(cx) {
                    Poll::Ready(Some(Ok(change))) => this.batch.push(change.into()),
                    Poll::Ready(Some(Err(error))) => {
                        end = Some(Err(error));
                        break;
                    }
                    Poll::Ready(None) => {
                        end = Some(Ok(()));
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            let full = this.batch.len() >= MAX_BATCH;
            if !this.batch.is_empty() && this.lb.apply_all(this.batch.iter().cloned()).is_err() {
                // One refused change must not hold back the others.
                for change in this.batch.iter() {
                    if let Err(error) = this.lb.apply(change.clone()) {
                        if let Some(hook) = this.on_rejected.as_mut() {
                            hook(change.clone(), error);
                        }
                    }
                }
            }
            this.batch.clear();
            match end {
                Some(result) => {
                    *this.done = true;
                    Poll::Ready(result)
                }
                None => {
                    if full {
                        // More may be ready: come back after other tasks ran.
                        cx.waker().wake_by_ref();
                    }
                    Poll::Pending
                }
            }
        }
    }

    impl<D> fmt::Debug for Follow<D> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Follow")
                .field("lb", &self.lb)
                .field("done", &self.done)
                .finish_non_exhaustive()
        }
    }
}
