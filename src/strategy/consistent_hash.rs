//! Consistent hashing: a ring of virtual nodes hashed with SipHash.
//!
//! Each backend is placed on a ring of 64-bit positions at `vnodes × weight`
//! points (160 per unit of weight by default, like nginx's `hash ...
//! consistent`, which uses 160 points per weight). A key is hashed onto the
//! ring and owned by the first point at or after it, clockwise. So:
//!
//! * the same key lands on the same backend in every process and every build:
//!   the hash is SipHash-1-3 under the fixed key documented in
//!   [`RING_HASH_KEYS`], over a fixed byte layout (the id's length as a
//!   little-endian u64, the id's bytes, the point's number as a little-endian
//!   u32), independent of the order backends are listed in;
//! * removing one of `n` backends moves only the keys it owned, each to the
//!   next point clockwise; adding one moves keys only to it;
//! * when a key's backend is down, the key moves to the next point clockwise
//!   whose backend is up (the source article's "the key moves to the next
//!   node on the ring"), and comes back when the backend does.
//!
//! A pick without a key is handled as HAProxy handles a hash-based `balance`
//! whose input is missing: it falls back to round robin over the backends
//! that are up.
//!
//! Lookups are `O(1)` expected: a table indexed by the hash's top bits narrows
//! the binary search to a handful of points.
//!
//! Builds are linear in the points (two counting sorts; about 5 ms for 1,000
//! backends, see docs/benchmarks.md). A thread that builds a ring keeps the
//! buffer it hashed the points into for its next build, up to 32 MiB (a ring
//! of 2^22 points, about 26,000 backends at 160 points each): fresh memory
//! of that size costs as much in page faults as the sort itself.

use std::hash::Hasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use siphasher::sip::SipHasher13;

use crate::balancer::{rotation_after, up_indices, Distinct};
use crate::strategy::shared_build::{layout_of, same_layout, Layout, RecentBuilds};
use crate::{no_pick_error, Balancer, Error, Member};

/// Virtual nodes per unit of weight, by default.
pub const DEFAULT_VNODES: u32 = 160;

/// The most points one ring may hold (about 300 MiB at 16 bytes a point).
///
/// This is a memory limit, and it is what bounds the weights: a ring holds
/// `vnodes × Σ weight` points, so at the default 160 points a weight the
/// total weight may not pass 104,857, although one backend may weigh up to
/// [`MAX_WEIGHT`](crate::MAX_WEIGHT). For larger total weights lower the
/// points per weight, or use [`Maglev`](super::Maglev), whose table size
/// does not depend on the weights.
pub const MAX_RING_POINTS: u64 = 1 << 24;

/// The SipHash-1-3 keys `(k0, k1)` for ring points and affinity keys: the
/// ASCII bytes of `tower-lb` and `ring-v01`, big-endian. They are part of the
/// crate's stable behaviour: changing them would move every key, so they only
/// change with a major version.
pub const RING_HASH_KEYS: (u64, u64) = (0x746f_7765_722d_6c62, 0x7269_6e67_2d76_3031);

/// A consistent-hash ring over the members (up or down).
///
/// ```
/// use tower_lb::{Balancer, ConsistentHash, Member};
///
/// let members: Vec<Member> = (1..=3)
///     .map(|i| Ok(Member::new(format!("http://10.0.0.{i}").parse()?)))
///     .collect::<Result<_, tower_lb::Error>>()?;
/// let ring = ConsistentHash::new(&members)?;
/// let first = ring.pick(Some(b"user-42"))?;
/// assert_eq!(ring.pick(Some(b"user-42"))?, first); // same key, same backend
///
/// // When that backend is down the key moves on, clockwise.
/// let mut down = members.clone();
/// down[first] = down[first].clone().with_up(false);
/// let ring2 = ConsistentHash::new(&down)?;
/// assert_eq!(ring2.pick(Some(b"user-42"))?, ring.failover(Some(b"user-42"), first)[0]);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug)]
pub struct ConsistentHash {
    /// The points, shared with other balancers over the same backends and
    /// weights (see [`Ring::shared`]).
    ring: Arc<Ring>,
    up: Vec<bool>,
    up_list: Vec<u32>,
    /// Round-robin counter for picks without a key.
    keyless: AtomicUsize,
}

/// The points of a ring: what depends on the backends' ids, weights and
/// order, and not on which of them are up.
#[derive(Debug)]
struct Ring {
    /// Ring positions, ascending.
    hashes: Vec<u64>,
    /// The member owning each position.
    owners: Vec<u32>,
    /// `table[b]` is the first position whose top bits are `>= b`.
    table: Vec<u32>,
    shift: u32,
    /// What the ring was built from: (id, weight) in listing order, and the
    /// virtual nodes per weight.
    layout: Layout,
    vnodes: u32,
}

/// Rings built recently and still in use somewhere. Marking a backend down
/// or up builds a new balancer over the same ids and weights: it finds its
/// ring here instead of hashing and sorting every point again (tens of
/// milliseconds at 1,000 backends).
static RECENT_RINGS: RecentBuilds<Ring, 8> = RecentBuilds::new();

impl Ring {
    fn built_from(&self, members: &[Member], vnodes: u32) -> bool {
        self.vnodes == vnodes && same_layout(&self.layout, members)
    }

    /// The ring for `members`: one in use elsewhere if it has the same ids,
    /// weights and order, else a new one.
    fn shared(members: &[Member], vnodes: u32) -> Result<Arc<Ring>, Error> {
        RECENT_RINGS.share_or_build(
            |ring| ring.built_from(members, vnodes),
            || Ring::build(members, vnodes),
        )
    }

    fn build(members: &[Member], vnodes: u32) -> Result<Ring, Error> {
        // Saturating: a sum past u64 is as much "too large" as any other.
        let points: u64 = members.iter().fold(0u64, |sum, m| {
            sum.saturating_add(u64::from(m.backend().weight()).saturating_mul(u64::from(vnodes)))
        });
        if points > MAX_RING_POINTS {
            return Err(Error::RingTooLarge {
                points,
                max: MAX_RING_POINTS,
            });
        }
        // Every point's position, in listing order (each member's points
        // after the previous member's), in this thread's scratch buffer.
        let points_of = |member: &Member| member.backend().weight() * vnodes;
        let mut positions = SCRATCH.take();
        positions.clear();
        positions.reserve(points as usize);
        for member in members {
            // The id is hashed once; each replica continues from that state.
            PointHasher::new(member.backend().id().as_bytes())
                .extend(points_of(member), &mut positions);
        }
        // About one point per bucket: between 2^4 buckets and 2^24, as many
        // as a ring may hold points.
        let bits = (positions.len().max(1).next_power_of_two().trailing_zeros()).clamp(4, 24);
        let runs = members
            .iter()
            .enumerate()
            .map(|(index, m)| (index as u32, points_of(m) as usize));
        // Ties by id, then (for members sharing an id, which only a
        // hand-built member list can have) by listing order.
        let (hashes, owners, table) = sort_points(&positions, runs, bits, |a, b| {
            members[a as usize]
                .backend()
                .id()
                .cmp(members[b as usize].backend().id())
                .then(a.cmp(&b))
        });
        if positions.capacity() <= SCRATCH_KEEP {
            SCRATCH.set(positions);
        }
        let shift = 64 - bits;

        Ok(Ring {
            hashes,
            owners,
            table,
            shift,
            layout: layout_of(members),
            vnodes,
        })
    }

    /// The index of the first point at or after `hash`, wrapping to 0.
    #[inline]
    fn first_point(&self, hash: u64) -> usize {
        let bucket = (hash >> self.shift) as usize;
        let lo = self.table[bucket] as usize;
        let hi = self.table[bucket + 1] as usize;
        let pos = lo + self.hashes[lo..hi].partition_point(|&p| p < hash);
        if pos == self.hashes.len() {
            0
        } else {
            pos
        }
    }
}

impl ConsistentHash {
    /// A ring with [`DEFAULT_VNODES`] points per unit of weight.
    ///
    /// # Errors
    ///
    /// [`Error::RingTooLarge`] when the weights ask for more than
    /// [`MAX_RING_POINTS`] points.
    pub fn new(members: &[Member]) -> Result<Self, Error> {
        Self::with_vnodes(members, DEFAULT_VNODES)
    }

    /// A ring with `vnodes` points per unit of weight.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `vnodes` is 0, [`Error::RingTooLarge`]
    /// when the ring would exceed [`MAX_RING_POINTS`].
    pub fn with_vnodes(members: &[Member], vnodes: u32) -> Result<Self, Error> {
        if vnodes == 0 {
            return Err(Error::InvalidConfig {
                reason: "consistent hashing needs at least 1 virtual node per weight".into(),
            });
        }
        Ok(ConsistentHash {
            ring: Ring::shared(members, vnodes)?,
            up: members.iter().map(Member::takes_new_picks).collect(),
            up_list: up_indices(members),
            keyless: AtomicUsize::new(0),
        })
    }

    /// The ring position of an affinity key: SipHash-1-3 of the key's bytes
    /// under [`RING_HASH_KEYS`].
    pub fn hash_key(key: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(RING_HASH_KEYS.0, RING_HASH_KEYS.1);
        h.write(key);
        h.finish()
    }

    /// How many points the ring holds.
    pub fn points(&self) -> usize {
        self.ring.hashes.len()
    }

    /// Heap bytes the ring uses (positions, owners, lookup table and the
    /// layout it was built from; the ring itself may be shared with other
    /// balancers over the same backends).
    pub fn heap_bytes(&self) -> usize {
        let ring = &self.ring;
        ring.hashes.capacity() * 8
            + ring.owners.capacity() * 4
            + ring.table.capacity() * 4
            + ring.layout.capacity() * std::mem::size_of::<(Box<str>, u32)>()
            + ring.layout.iter().map(|(id, _)| id.len()).sum::<usize>()
            + self.up.capacity()
            + self.up_list.capacity() * 4
    }

    /// The index of the first point at or after `hash`, wrapping to 0.
    #[inline]
    fn first_point(&self, hash: u64) -> usize {
        self.ring.first_point(hash)
    }

    /// The owners of the points clockwise from `hash`, once round the ring;
    /// down members included.
    pub(crate) fn owners_for(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let owners = &self.ring.owners;
        let (before, from) = owners.split_at(self.first_point(hash));
        from.iter().chain(before).map(|&owner| owner as usize)
    }

    /// The fraction of the hash space each member owns, in listing order:
    /// the arcs ending at its points (down members keep theirs).
    pub fn ownership(&self) -> Vec<f64> {
        let ring = &self.ring;
        let mut owned = vec![0f64; self.up.len()];
        let n = ring.hashes.len();
        for i in 0..n {
            // The arc from the previous point (exclusive) to this one.
            let prev = ring.hashes[(i + n - 1) % n];
            let arc = ring.hashes[i].wrapping_sub(prev);
            let arc = if n == 1 { u64::MAX } else { arc };
            owned[ring.owners[i] as usize] += arc as f64 / 18_446_744_073_709_551_616.0;
        }
        owned
    }

    pub(crate) fn up(&self) -> &[bool] {
        &self.up
    }

    pub(crate) fn up_list(&self) -> &[u32] {
        &self.up_list
    }
}

/// The ring position of replica `replica` of the backend with id `id`:
/// SipHash-1-3 under [`RING_HASH_KEYS`] of the id's length (u64,
/// little-endian), the id's bytes and the replica number (u32,
/// little-endian).
#[cfg(test)]
fn point_hash(id: &[u8], replica: u32) -> u64 {
    let mut h = SipHasher13::new_with_keys(RING_HASH_KEYS.0, RING_HASH_KEYS.1);
    h.write(&(id.len() as u64).to_le_bytes());
    h.write(id);
    h.write(&replica.to_le_bytes());
    h.finish()
}

thread_local! {
    /// The positions of the ring being built on this thread, in listing
    /// order. Kept for the next build: fresh memory the size of a ring costs
    /// as much in page faults as sorting it does.
    static SCRATCH: std::cell::Cell<Vec<u64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest scratch buffer a thread keeps, in points (32 MiB).
const SCRATCH_KEEP: usize = 1 << 22;

/// Sorts a ring's points by position, ties by `owner_order` (the owners'
/// ids): `positions` are owned in runs (`(owner, count)`, in order). Returns
/// the positions, their owners and the lookup table for `bits`: `table[b]`
/// is the index of the first point whose top `bits` bits are `>= b`.
///
/// Two counting sorts, most significant digit first. The first places every
/// point in its group by the top [`TOP_BITS`] bits (at most 256 places
/// written at once, which stay in cache). The second orders each group (a
/// few hundred points at 160,000, in cache) by the rest of the table's
/// `bits`, through a copy of that group, and the offsets it counts are the
/// group's stretch of the table. Positions are uniform hashes and there
/// are about as many buckets as points, so the only points left to order
/// are the few sharing a bucket: by insertion, or by a comparison sort for a
/// bucket longer than [`SHORT_RUN`] (only crafted ids crowd one). Linear in
/// the points.
fn sort_points(
    positions: &[u64],
    runs: impl Iterator<Item = (u32, usize)>,
    bits: u32,
    owner_order: impl Fn(u32, u32) -> std::cmp::Ordering,
) -> (Vec<u64>, Vec<u32>, Vec<u32>) {
    let top = bits.min(TOP_BITS);
    let sub = bits - top;
    let shift = 64 - bits;
    let group_of = |hash: u64| (hash >> (64 - top)) as usize;
    let n = positions.len();

    // Both sorts keep their counts where the second one's table wants its
    // offsets: slot `k + 1` counts key `k`, then holds where key `k` starts,
    // then (each point placed moves it on) where it ends, which is where
    // `k + 1` starts. Once placed, slot `k` is where key `k` starts.

    // First digit: `starts[d]` ends as where group `d` starts.
    let mut starts = vec![0u32; (1 << top) + 1];
    for &hash in positions {
        starts[group_of(hash) + 1] += 1;
    }
    prefix_sums(&mut starts[1..], 0);
    let mut hashes = vec![0u64; n];
    let mut owners = vec![0u32; n];
    let mut from = 0;
    for (owner, count) in runs {
        for &hash in &positions[from..from + count] {
            let next = &mut starts[group_of(hash) + 1];
            hashes[*next as usize] = hash;
            owners[*next as usize] = owner;
            *next += 1;
        }
        from += count;
    }
    debug_assert_eq!(from, n, "the runs cover every position");

    // The rest of the digits, group by group, in the table itself.
    let mut table = vec![0u32; (1 << bits) + 1];
    let mut group: Vec<(u64, u32)> = Vec::new();
    for d in 0..1usize << top {
        let (lo, hi) = (starts[d] as usize, starts[d + 1] as usize);
        let first = d << sub;
        let stretch = &mut table[first + 1..=first + (1 << sub)];
        for &hash in &hashes[lo..hi] {
            stretch[(hash >> shift) as usize - first] += 1;
        }
        prefix_sums(stretch, lo as u32);
        group.clear();
        group.extend(
            hashes[lo..hi]
                .iter()
                .copied()
                .zip(owners[lo..hi].iter().copied()),
        );
        for &(hash, owner) in &group {
            let next = &mut table[(hash >> shift) as usize + 1];
            hashes[*next as usize] = hash;
            owners[*next as usize] = owner;
            *next += 1;
        }
        for bucket in first..first + (1 << sub) {
            let (lo, hi) = (table[bucket] as usize, table[bucket + 1] as usize);
            if hi - lo > 1 {
                order_bucket(&mut hashes[lo..hi], &mut owners[lo..hi], &owner_order);
            }
        }
    }
    (hashes, owners, table)
}

/// The bits of [`sort_points`]' first digit: 256 groups (fewer for a table
/// of fewer bits).
const TOP_BITS: u32 = 8;

/// Buckets up to this long are put in order by insertion.
const SHORT_RUN: usize = 16;

/// Turns counts into where each count's items start, from `base`.
fn prefix_sums(counts: &mut [u32], base: u32) {
    let mut start = base;
    for slot in counts {
        let count = *slot;
        *slot = start;
        start += count;
    }
}

/// Orders one bucket's points by position, ties by `owner_order`.
fn order_bucket(
    hashes: &mut [u64],
    owners: &mut [u32],
    owner_order: &impl Fn(u32, u32) -> std::cmp::Ordering,
) {
    let order = |a: (u64, u32), b: (u64, u32)| a.0.cmp(&b.0).then_with(|| owner_order(a.1, b.1));
    let len = hashes.len();
    if len > SHORT_RUN {
        let mut pairs: Vec<(u64, u32)> =
            hashes.iter().copied().zip(owners.iter().copied()).collect();
        pairs.sort_unstable_by(|a, b| order(*a, *b));
        for (k, (hash, owner)) in pairs.into_iter().enumerate() {
            hashes[k] = hash;
            owners[k] = owner;
        }
        return;
    }
    for j in 1..len {
        let mut k = j;
        while k > 0 && order((hashes[k - 1], owners[k - 1]), (hashes[k], owners[k])).is_gt() {
            hashes.swap(k - 1, k);
            owners.swap(k - 1, k);
            k -= 1;
        }
    }
}

/// [`point_hash`] for every replica of one backend, with the id's prefix
/// hashed once: the hasher's state after the id is copied for each replica,
/// which gives the same positions.
struct PointHasher(SipHasher13);

impl PointHasher {
    fn new(id: &[u8]) -> Self {
        let mut h = SipHasher13::new_with_keys(RING_HASH_KEYS.0, RING_HASH_KEYS.1);
        h.write(&(id.len() as u64).to_le_bytes());
        h.write(id);
        PointHasher(h)
    }

    /// Pushes the positions of replicas `0..count`. Four at a time: the
    /// four hashes are independent, so the processor overlaps them.
    fn extend(&self, count: u32, out: &mut Vec<u64>) {
        let quads = count / 4 * 4;
        for r in (0..quads).step_by(4) {
            out.extend_from_slice(&[
                self.point(r),
                self.point(r + 1),
                self.point(r + 2),
                self.point(r + 3),
            ]);
        }
        out.extend((quads..count).map(|r| self.point(r)));
    }

    #[inline]
    fn point(&self, replica: u32) -> u64 {
        let mut h = self.0;
        // The replica's little-endian bytes, as `point_hash` writes them:
        // `write_u32(x)` hashes `x.to_ne_bytes()`, and
        // `replica.to_le().to_ne_bytes()` is `replica.to_le_bytes()`.
        h.write_u32(replica.to_le());
        h.finish()
    }
}

impl Balancer for ConsistentHash {
    #[inline]
    fn pick(&self, key: Option<&[u8]>) -> Result<usize, Error> {
        if self.up_list.is_empty() {
            return Err(no_pick_error(self.up.len()));
        }
        let Some(key) = key else {
            let ticket = self.keyless.fetch_add(1, Ordering::Relaxed);
            return Ok(self.up_list[ticket % self.up_list.len()] as usize);
        };
        let start = self.first_point(Self::hash_key(key));
        let len = self.ring.owners.len();
        // The first point clockwise whose backend is up. Some member is up,
        // and every member with a weight above 0 has points, so this finds one.
        for step in 0..len {
            let owner = self.ring.owners[(start + step) % len] as usize;
            if self.up[owner] {
                return Ok(owner);
            }
        }
        Err(no_pick_error(self.up.len()))
    }

    /// The next distinct backends that are up, clockwise from the key; for no
    /// key, the round-robin order.
    fn failover(&self, key: Option<&[u8]>, first: usize) -> Vec<usize> {
        let Some(key) = key else {
            let pos = self
                .up_list
                .iter()
                .position(|&i| i as usize == first)
                .unwrap_or(0);
            return if self.up_list.is_empty() {
                Vec::new()
            } else {
                rotation_after(&self.up_list, pos, first)
            };
        };
        let mut order = Distinct::new(self.up.len(), &self.up_list, first);
        let start = self.first_point(Self::hash_key(key));
        let len = self.ring.owners.len();
        for step in 0..len {
            let owner = self.ring.owners[(start + step) % len] as usize;
            if self.up[owner] && order.take(owner) {
                break;
            }
        }
        order.into_vec()
    }

    /// Clockwise from the key without building the list: the owners met
    /// on the ring, each asked once in a row.
    fn failover_find(
        &self,
        key: Option<&[u8]>,
        first: usize,
        accept: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        let Some(key) = key else {
            return self.failover(None, first).into_iter().find(|&i| accept(i));
        };
        let start = self.first_point(Self::hash_key(key));
        let len = self.ring.owners.len();
        let mut last = first;
        for step in 0..len {
            let owner = self.ring.owners[(start + step) % len] as usize;
            if owner != last && owner != first && self.up[owner] {
                last = owner;
                if accept(owner) {
                    return Some(owner);
                }
            }
        }
        None
    }

    fn position(&self) -> Option<u64> {
        Some(self.keyless.load(Ordering::Relaxed) as u64)
    }

    fn resume_at(&self, position: u64) {
        self.keyless.store(position as usize, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_positions_are_pinned() {
        // These values are part of the crate's stable behaviour: replicas built
        // from different versions must agree. A change here moves every key.
        assert_eq!(ConsistentHash::hash_key(b"user-42"), 0xa72f_a011_c575_4330);
        assert_eq!(point_hash(b"10.0.0.1:80", 0), 0x4795_887d_35b9_5a49);
        // The build's own hasher (a copied state, `write_u32`) agrees.
        let id = PointHasher::new(b"10.0.0.1:80");
        assert_eq!(id.point(0), 0x4795_887d_35b9_5a49);
        let mut first_five = Vec::new();
        id.extend(5, &mut first_five);
        let expected: Vec<u64> = (0..5).map(|r| point_hash(b"10.0.0.1:80", r)).collect();
        assert_eq!(first_five, expected);
    }

    /// The ring as it was first built: every point hashed from scratch,
    /// then a comparison sort with ties broken by id.
    fn reference_ring(members: &[Member], vnodes: u32) -> Vec<(u64, u32)> {
        let mut ring: Vec<(u64, u32)> = Vec::new();
        for (index, member) in members.iter().enumerate() {
            let id = member.backend().id().as_bytes();
            for replica in 0..member.backend().weight() * vnodes {
                ring.push((point_hash(id, replica), index as u32));
            }
        }
        ring.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                members[a.1 as usize]
                    .backend()
                    .id()
                    .cmp(members[b.1 as usize].backend().id())
            })
        });
        ring
    }

    #[test]
    fn hashing_each_id_once_and_bucket_sorting_gives_the_same_ring() {
        // Ids of many lengths (the hasher's buffered tail differs), weights
        // 1..=5, and vnodes from tiny rings (16 buckets, many points a
        // bucket) to the default.
        let members: Vec<Member> = (0..300)
            .map(|i| {
                let backend =
                    crate::Backend::new(&format!("http://10.0.{}.{}:8080", i / 250, i % 250))
                        .unwrap()
                        .with_id("b".repeat(i % 23) + &i.to_string())
                        .unwrap()
                        .with_weight(1 + i as u32 % 5)
                        .unwrap();
                Member::new(backend)
            })
            .collect();
        for (count, vnodes) in [(1, 1), (3, 2), (40, 7), (300, 160)] {
            let ring = Ring::build(&members[..count], vnodes).unwrap();
            let built: Vec<(u64, u32)> = ring
                .hashes
                .iter()
                .copied()
                .zip(ring.owners.iter().copied())
                .collect();
            assert_eq!(
                built,
                reference_ring(&members[..count], vnodes),
                "{count} backends, {vnodes} vnodes"
            );
            // The lookup table still finds the first point at or after a hash.
            for i in 0..2000u64 {
                let hash = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let expected = ring.hashes.partition_point(|&p| p < hash) % ring.hashes.len();
                assert_eq!(ring.first_point(hash), expected);
            }
        }
    }

    #[test]
    fn counting_sorted_points_equal_a_comparison_sort_with_ties_and_crowded_buckets() {
        // 10,000 points: positions crowded into a few buckets (runs far
        // longer than an insertion sort takes), equal positions tied by
        // owner (descending here, to show the order comes from the
        // comparator); then, listed in reverse, runs of 5 sharing their top
        // 20 bits, in buckets of 14 bits (or 20) holding hundreds (or 5).
        let crowded = (0..10_000u64).map(|i| {
            let hash = ((i % 7) << 60) | (i.wrapping_mul(0x9e37_79b9) % 50);
            (hash, (i % 13) as u32)
        });
        let short_runs = (0..10_000u64).rev().map(|i| {
            let hash = ((i / 5) << 44) | (i % 2);
            (hash, (i % 3) as u32)
        });
        let owner_order = |a: u32, b: u32| b.cmp(&a);
        for (points, bits) in [
            (crowded.collect::<Vec<_>>(), 14),
            (short_runs.clone().collect(), 14),
            (short_runs.collect(), 20),
        ] {
            sorts_as_a_comparison_sort(&points, bits, owner_order);
        }
    }

    /// `sort_points` over `points` (each its own run) gives what a
    /// comparison sort gives, and a table that finds each bucket's first
    /// point.
    fn sorts_as_a_comparison_sort(
        points: &[(u64, u32)],
        bits: u32,
        owner_order: impl Fn(u32, u32) -> std::cmp::Ordering + Copy,
    ) {
        let mut expected = points.to_vec();
        expected.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| owner_order(a.1, b.1)));
        let positions: Vec<u64> = points.iter().map(|p| p.0).collect();
        let runs = points.iter().map(|p| (p.1, 1));
        let (hashes, owners, table) = sort_points(&positions, runs, bits, owner_order);
        let pairs: Vec<(u64, u32)> = hashes.iter().copied().zip(owners).collect();
        assert_eq!(pairs, expected);
        assert_eq!(table.len(), (1 << bits) + 1);
        for (bucket, &start) in table.iter().enumerate() {
            let first = hashes.partition_point(|&h| ((h >> (64 - bits)) as usize) < bucket);
            assert_eq!(start as usize, first, "bucket {bucket}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]

        /// Any positions (crowded top bits, equal positions, few owners)
        /// and any table size: the ring sort equals a comparison sort,
        /// and the table finds each bucket's first point.
        #[test]
        fn any_points_sort_as_a_comparison_sort_does(
            points in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), 0u32..5, 0u32..5), 0..3000),
            bits in 4u32..=16,
        ) {
            // Most positions are kept; the others keep only their top 4, 8
            // or 12 bits, or none, so buckets crowd and positions repeat.
            let points: Vec<(u64, u32)> = points
                .into_iter()
                .map(|(hash, crowd, owner)| match crowd {
                    0 => (hash, owner),
                    4 => (0, owner),
                    _ => (hash & !(u64::MAX >> (crowd * 4)), owner),
                })
                .collect();
            sorts_as_a_comparison_sort(&points, bits, |a: u32, b: u32| a.cmp(&b));
        }
    }

    #[test]
    fn members_sharing_an_id_tie_in_listing_order() {
        // Only a hand-built list can repeat an id (`LoadBalancer` refuses
        // one): each position is then held twice, the first listed first.
        let backend = |uri: &str| crate::Backend::new(uri).unwrap().with_id("same").unwrap();
        let members = vec![
            Member::new(backend("http://a")),
            Member::new(backend("http://b")),
        ];
        let ring = Ring::build(&members, 3000).unwrap();
        assert_eq!(ring.owners.len(), 6000);
        for pair in ring.owners.chunks(2) {
            assert_eq!(pair, [0, 1]);
        }
    }

    #[test]
    fn marking_a_backend_down_reuses_the_ring() {
        let members = crate::strategy::test_members(&[1, 2, 3]);
        let a = ConsistentHash::new(&members).unwrap();
        let mut down = members.clone();
        down[1] = down[1].clone().with_up(false);
        let b = ConsistentHash::new(&down).unwrap();
        assert!(Arc::ptr_eq(&a.ring, &b.ring));
        // Same picks for keys whose backend is up.
        for i in 0..200u32 {
            let key = i.to_le_bytes();
            let owner = a.pick(Some(&key)).unwrap();
            if owner != 1 {
                assert_eq!(b.pick(Some(&key)).unwrap(), owner);
            }
        }
    }

    #[test]
    fn other_weights_order_or_vnodes_build_another_ring() {
        let members = crate::strategy::test_members(&[1, 2, 3]);
        let a = ConsistentHash::new(&members).unwrap();
        let reweighted = crate::strategy::test_members(&[1, 2, 4]);
        let b = ConsistentHash::new(&reweighted).unwrap();
        assert!(!Arc::ptr_eq(&a.ring, &b.ring));
        let mut reordered = members.clone();
        reordered.swap(0, 2);
        let c = ConsistentHash::new(&reordered).unwrap();
        assert!(!Arc::ptr_eq(&a.ring, &c.ring));
        let d = ConsistentHash::with_vnodes(&members, 40).unwrap();
        assert!(!Arc::ptr_eq(&a.ring, &d.ring));
        assert_eq!(d.points(), 40 * 6);
    }

    #[test]
    fn ownership_shares_add_up_to_the_whole_hash_space() {
        let one = ConsistentHash::new(&crate::strategy::test_members(&[1])).unwrap();
        assert!((one.ownership()[0] - 1.0).abs() < 1e-9);
        let ring = ConsistentHash::new(&crate::strategy::test_members(&[1, 1, 2])).unwrap();
        let shares = ring.ownership();
        assert!(
            (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{shares:?}"
        );
        // The member of weight 2 owns about half (160 points a weight).
        assert!((0.4..0.6).contains(&shares[2]), "{shares:?}");
    }

    #[test]
    fn zero_vnodes_is_an_error() {
        let m = vec![Member::new("http://a".parse().unwrap())];
        assert!(matches!(
            ConsistentHash::with_vnodes(&m, 0),
            Err(Error::InvalidConfig { .. })
        ));
    }

    #[test]
    fn oversized_ring_is_an_error() {
        let m = vec![Member::new(
            crate::Backend::new("http://a")
                .unwrap()
                .with_weight(crate::MAX_WEIGHT)
                .unwrap(),
        )];
        assert!(matches!(
            ConsistentHash::new(&m),
            Err(Error::RingTooLarge { .. })
        ));
    }
}
