//! One built structure (a hash ring, a Maglev table) shared by every
//! balancer built over the same layout.
//!
//! Marking a backend down or up builds a new balancer over the same ids and
//! weights; it finds the structure already built here instead of building
//! it again (tens of milliseconds at 1,000 backends).

use std::sync::{Arc, Mutex, Weak};

use crate::{Error, Member};

/// What a structure was built from: (id, weight) of each member, in
/// listing order.
pub(crate) type Layout = Vec<(Box<str>, u32)>;

/// The layout of `members`.
pub(crate) fn layout_of(members: &[Member]) -> Layout {
    members
        .iter()
        .map(|m| (Box::from(m.backend().id()), m.backend().weight()))
        .collect()
}

/// Whether `layout` is the layout of `members`.
pub(crate) fn same_layout(layout: &[(Box<str>, u32)], members: &[Member]) -> bool {
    layout.len() == members.len()
        && layout
            .iter()
            .zip(members)
            .all(|((id, weight), m)| **id == *m.backend().id() && *weight == m.backend().weight())
}

/// Structures built recently and still in use somewhere, at most `SLOTS`
/// remembered (one per load balancer, roughly).
pub(crate) struct RecentBuilds<T, const SLOTS: usize>(Mutex<Vec<Weak<T>>>);

impl<T, const SLOTS: usize> RecentBuilds<T, SLOTS> {
    pub(crate) const fn new() -> Self {
        RecentBuilds(Mutex::new(Vec::new()))
    }

    /// One in use elsewhere that `fits`, else a new one from `build`.
    pub(crate) fn share_or_build(
        &self,
        fits: impl Fn(&T) -> bool,
        build: impl FnOnce() -> Result<T, Error>,
    ) -> Result<Arc<T>, Error> {
        let lock = || {
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        let find = |recent: &[Weak<T>]| {
            recent
                .iter()
                .filter_map(Weak::upgrade)
                .find(|built| fits(built))
        };
        if let Some(built) = find(&lock()) {
            return Ok(built);
        }
        let built = Arc::new(build()?);
        let mut recent = lock();
        // Another thread may have built the same one meanwhile: share
        // theirs, so that one layout has one structure in use.
        if let Some(other) = find(&recent) {
            return Ok(other);
        }
        recent.retain(|weak| weak.strong_count() > 0);
        if recent.len() >= SLOTS {
            recent.remove(0);
        }
        recent.push(Arc::downgrade(&built));
        Ok(built)
    }
}
