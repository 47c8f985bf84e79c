//! Maglev hashing: a lookup table of prime size filled from per-backend
//! permutations (Eisenbud et al., *Maglev: A Fast and Reliable Software
//! Network Load Balancer*, NSDI 2016).
//!
//! Each backend has a permutation of the table's slots, `offset + j × skip
//! (mod M)`, with `offset` and `skip` taken from SipHash-1-3 of its id under
//! the fixed keys in [`MAGLEV_HASH_KEYS`]. Backends take turns claiming the
//! next free slot of their own permutation until the table is full. A key is
//! hashed to one slot and owned by the backend written there. So:
//!
//! * the spread is near perfect: with equal weights every backend owns
//!   `⌊M/n⌋` or `⌈M/n⌉` slots (a ring of 160 points per backend leaves its
//!   busiest backend 20–30% above the mean);
//! * a lookup is one hash, one multiply and one array read, `O(1)`;
//! * every process and every replica builds the same table: the table
//!   depends on the ids and weights only, not on the order backends are
//!   listed in (turns are taken in id order);
//! * removing one of `n` backends moves its keys and, unlike the ring, some
//!   of others' keys too, as the refill shifts their slots: the fewer slots
//!   a backend, the more. With 65,537 slots that is 1.5 times the ideal
//!   `1/n` at 100 backends and 7 times at 1,000; with 655,373 slots, 1.15
//!   and 4.3 times (the crate's `spread` example measures it). Size the table at 1,000 slots a
//!   backend or more where keys moving costs (caches), or use the ring.
//!
//! Weights are honoured by the turn order: a backend's `c`-th slot is taken
//! at "time" `c / weight`, so a backend of weight 3 claims three slots for
//! each one of a backend of weight 1 (Envoy's weighted Maglev does the same
//! with a different schedule). Every backend claims one slot before any
//! claims a second, so none is left without a slot while the table has room.
//!
//! A down backend keeps its slots, as it keeps its points on the ring. A key
//! whose backend is down probes further slots, `slot + i × step (mod M)`
//! with a `step` from the key's hash, and goes to the first backend that is
//! up: each key has its own fixed fallback sequence, so the keys of a down
//! backend spread over all the others in proportion to their weights, and
//! come back when it is up again. [`failover`](Balancer::failover) lists the
//! same sequence.
//!
//! A pick without a key falls back to round robin over the backends that are
//! up, as [`ConsistentHash`](super::ConsistentHash) does.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use siphasher::sip::SipHasher13;

use crate::balancer::{rotation_after, up_indices, Distinct};
use crate::strategy::shared_build::{layout_of, same_layout, Layout, RecentBuilds};
use crate::{no_pick_error, Balancer, Error, Member};

/// The table size used unless another is asked for: the prime 65,537, as
/// in the Maglev paper's smaller configuration. Memory: 4 bytes a slot
/// (256 KiB).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// The largest table size accepted: the smallest prime above 2²⁴ (64 MiB of
/// slots), as large as the largest ring ([`MAX_RING_POINTS`]).
///
/// [`MAX_RING_POINTS`]: super::consistent_hash::MAX_RING_POINTS
pub const MAX_TABLE_SIZE: u32 = 16_777_259;

/// The SipHash-1-3 keys `(k0, k1)` for Maglev permutations and affinity
/// keys: the ASCII bytes of `tower-lb` and `maglev01`, big-endian. Part of
/// the crate's stable behaviour, like
/// [`RING_HASH_KEYS`](super::consistent_hash::RING_HASH_KEYS).
pub const MAGLEV_HASH_KEYS: (u64, u64) = (0x746f_7765_722d_6c62, 0x6d61_676c_6576_3031);

/// Maglev hashing over the members (up or down).
///
/// ```
/// use tower_lb::{Balancer, Maglev, Member};
///
/// let members: Vec<Member> = (1..=3)
///     .map(|i| Ok(Member::new(format!("http://10.0.0.{i}").parse()?)))
///     .collect::<Result<_, tower_lb::Error>>()?;
/// let maglev = Maglev::new(&members)?;
/// let first = maglev.pick(Some(b"user-42"))?;
/// assert_eq!(maglev.pick(Some(b"user-42"))?, first); // same key, same backend
///
/// // Equal weights own equal shares of the table: 21,845 or 21,846 slots.
/// assert!(maglev.slots().iter().all(|&s| s.abs_diff(21_846) <= 1));
///
/// // When that backend is down the key goes to its first fallback.
/// let mut down = members.clone();
/// down[first] = down[first].clone().with_up(false);
/// let maglev2 = Maglev::new(&down)?;
/// assert_eq!(maglev2.pick(Some(b"user-42"))?, maglev.failover(Some(b"user-42"), first)[0]);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug)]
pub struct Maglev {
    /// The table, shared with other balancers over the same backends and
    /// weights.
    table: Arc<Table>,
    up: Vec<bool>,
    up_list: Vec<u32>,
    /// Round-robin counter for picks without a key.
    keyless: AtomicUsize,
}

/// What depends on the backends' ids, weights and order, and not on which
/// of them are up.
#[derive(Debug)]
struct Table {
    /// The member owning each slot.
    slots: Vec<u32>,
    /// What the table was built from: (id, weight) in listing order, and the
    /// table size asked for.
    layout: Layout,
    asked_size: u32,
}

/// Tables built recently and still in use somewhere, so that marking a
/// backend down or up does not refill the table.
static RECENT_TABLES: RecentBuilds<Table, 8> = RecentBuilds::new();

/// One backend's turn in the filling order: its next slot is taken at time
/// `taken / weight`; ties go to the smaller id (`rank`).
#[derive(Debug, PartialEq, Eq)]
struct Turn {
    taken: u64,
    weight: u64,
    rank: u32,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (u128::from(self.taken) * u128::from(other.weight))
            .cmp(&(u128::from(other.taken) * u128::from(self.weight)))
            .then(self.rank.cmp(&other.rank))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

/// Whether `n` is prime (trial division: at most 2,048 steps up to
/// [`MAX_TABLE_SIZE`]).
fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// The size of the table for `members` members when `asked` was asked for:
/// `asked` while it is at least the number of members, else the smallest
/// prime at or above 100 slots a member, at most [`MAX_TABLE_SIZE`].
fn table_size(asked: u32, members: usize) -> Result<u32, Error> {
    if members <= asked as usize {
        return Ok(asked);
    }
    if members > MAX_TABLE_SIZE as usize {
        return Err(Error::InvalidConfig {
            reason: format!(
                "maglev holds at most {MAX_TABLE_SIZE} backends (one table slot each); {members} were given"
            ),
        });
    }
    let mut size = members.saturating_mul(100).min(MAX_TABLE_SIZE as usize) as u32;
    while !is_prime(size) {
        size += 1;
    }
    Ok(size)
}

impl Table {
    fn built_from(&self, members: &[Member], asked_size: u32) -> bool {
        self.asked_size == asked_size && same_layout(&self.layout, members)
    }

    fn shared(members: &[Member], asked_size: u32) -> Result<Arc<Table>, Error> {
        RECENT_TABLES.share_or_build(
            |table| table.built_from(members, asked_size),
            || Table::build(members, asked_size),
        )
    }

    fn build(members: &[Member], asked_size: u32) -> Result<Table, Error> {
        let size = table_size(asked_size, members.len())?;
        let m = u64::from(size);
        // Turns are taken in id order, so the table does not depend on the
        // order the backends were listed in.
        let mut by_id: Vec<usize> = (0..members.len()).collect();
        by_id.sort_by(|&a, &b| {
            members[a]
                .backend()
                .id()
                .cmp(members[b].backend().id())
                .then(a.cmp(&b))
        });
        // Per member: the next slot of its permutation, and its skip.
        let mut next = vec![0u64; members.len()];
        let mut skip = vec![1u64; members.len()];
        let mut turns = BinaryHeap::with_capacity(members.len());
        for (rank, &index) in by_id.iter().enumerate() {
            let backend = members[index].backend();
            if backend.weight() == 0 {
                continue;
            }
            let id = backend.id().as_bytes();
            next[index] = id_hash(id, 0) % m;
            skip[index] = if m > 1 {
                id_hash(id, 1) % (m - 1) + 1
            } else {
                1
            };
            turns.push(Reverse(Turn {
                taken: 0,
                weight: u64::from(backend.weight()),
                rank: rank as u32,
            }));
        }
        const FREE: u32 = u32::MAX;
        let mut slots = vec![FREE; size as usize];
        let mut filled = 0;
        while filled < slots.len() {
            let Some(Reverse(mut turn)) = turns.pop() else {
                // No member with a weight: an empty table.
                slots.clear();
                break;
            };
            let index = by_id[turn.rank as usize];
            // A permutation of a prime-sized table visits every slot, so a
            // free one is found before the table is full.
            let mut slot = next[index];
            while slots[slot as usize] != FREE {
                slot += skip[index];
                if slot >= m {
                    slot -= m;
                }
            }
            slots[slot as usize] = index as u32;
            filled += 1;
            next[index] = if slot + skip[index] >= m {
                slot + skip[index] - m
            } else {
                slot + skip[index]
            };
            turn.taken += 1;
            turns.push(Reverse(turn));
        }
        Ok(Table {
            slots,
            layout: layout_of(members),
            asked_size,
        })
    }
}

/// SipHash-1-3 under [`MAGLEV_HASH_KEYS`] of the id's length (u64,
/// little-endian), the id and one byte (0 for the offset, 1 for the skip).
fn id_hash(id: &[u8], which: u8) -> u64 {
    let mut h = SipHasher13::new_with_keys(MAGLEV_HASH_KEYS.0, MAGLEV_HASH_KEYS.1);
    h.write(&(id.len() as u64).to_le_bytes());
    h.write(id);
    h.write(&[which]);
    h.finish()
}

/// `hash` scaled to `0..n` by multiply-shift (Lemire): no division.
#[inline]
fn scale(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

impl Maglev {
    /// A table of [`DEFAULT_TABLE_SIZE`] slots.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for more than [`MAX_TABLE_SIZE`] members.
    pub fn new(members: &[Member]) -> Result<Self, Error> {
        Self::with_table_size(members, DEFAULT_TABLE_SIZE)
    }

    /// A table of `table_size` slots, a prime. The paper advises at least
    /// 100 slots a backend for a spread within 1%; a set with more members
    /// than `table_size` gets the smallest prime at or above 100 slots a
    /// member instead (so every key moves when a set grows past it).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `table_size` is not a prime or is above
    /// [`MAX_TABLE_SIZE`], or for more than [`MAX_TABLE_SIZE`] members.
    ///
    /// ```
    /// use tower_lb::{Error, Maglev, Member};
    ///
    /// let members = vec![Member::new("http://10.0.0.1".parse()?)];
    /// assert_eq!(Maglev::with_table_size(&members, 251)?.table_size(), 251);
    /// assert!(matches!(Maglev::with_table_size(&members, 256), Err(Error::InvalidConfig { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn with_table_size(members: &[Member], table_size: u32) -> Result<Self, Error> {
        if table_size > MAX_TABLE_SIZE || !is_prime(table_size) {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "the maglev table size must be a prime from 2 to {MAX_TABLE_SIZE}, such as {DEFAULT_TABLE_SIZE}; {table_size} is not"
                ),
            });
        }
        Ok(Maglev {
            table: Table::shared(members, table_size)?,
            up: members.iter().map(Member::takes_new_picks).collect(),
            up_list: up_indices(members),
            keyless: AtomicUsize::new(0),
        })
    }

    /// The position of an affinity key: SipHash-1-3 of the key's bytes
    /// under [`MAGLEV_HASH_KEYS`]. Its slot is `hash × M >> 64`.
    pub fn hash_key(key: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(MAGLEV_HASH_KEYS.0, MAGLEV_HASH_KEYS.1);
        h.write(key);
        h.finish()
    }

    /// How many slots the table holds.
    pub fn table_size(&self) -> usize {
        self.table.slots.len()
    }

    /// How many slots each member owns, in listing order (down members
    /// keep theirs).
    pub fn slots(&self) -> Vec<u32> {
        let mut owned = vec![0u32; self.up.len()];
        for &owner in &self.table.slots {
            owned[owner as usize] += 1;
        }
        owned
    }

    /// Heap bytes the table uses (slots and the layout it was built from;
    /// the table may be shared with other balancers over the same backends).
    pub fn heap_bytes(&self) -> usize {
        let table = &self.table;
        table.slots.capacity() * 4
            + table.layout.capacity() * std::mem::size_of::<(Box<str>, u32)>()
            + table.layout.iter().map(|(id, _)| id.len()).sum::<usize>()
            + self.up.capacity()
            + self.up_list.capacity() * 4
    }

    /// The owners of the key's slots in probe order, the first being the
    /// key's own: `slot + i × step (mod M)` for `i` in `0..M`, which visits
    /// every slot once. Down members are included.
    pub(crate) fn owners_for(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let slots = &self.table.slots;
        let m = slots.len();
        let first = scale(hash, m);
        // The step comes from the hash's other half, so that keys sharing a
        // slot do not share a fallback sequence.
        let step = 1 + scale(hash.rotate_left(32), m.saturating_sub(1));
        let mut slot = first;
        (0..m).map(move |_| {
            let owner = slots[slot] as usize;
            slot += step;
            if slot >= m {
                slot -= m;
            }
            owner
        })
    }

    pub(crate) fn up(&self) -> &[bool] {
        &self.up
    }

    pub(crate) fn up_list(&self) -> &[u32] {
        &self.up_list
    }
}

impl Balancer for Maglev {
    #[inline]
    fn pick(&self, key: Option<&[u8]>) -> Result<usize, Error> {
        if self.up_list.is_empty() {
            return Err(no_pick_error(self.up.len()));
        }
        let ticket = match key {
            Some(key) if !self.table.slots.is_empty() => {
                let hash = Self::hash_key(key);
                let owner = self.table.slots[scale(hash, self.table.slots.len())] as usize;
                if self.up[owner] {
                    return Ok(owner);
                }
                if let Some(owner) = self.owners_for(hash).find(|&o| self.up[o]) {
                    return Ok(owner);
                }
                // Only members without slots are up: none has a weight.
                hash as usize
            }
            _ => self.keyless.fetch_add(1, Ordering::Relaxed),
        };
        Ok(self.up_list[ticket % self.up_list.len()] as usize)
    }

    /// The next distinct backends that are up in the key's probe sequence;
    /// for no key, the round-robin order.
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
        for owner in self.owners_for(Self::hash_key(key)) {
            if self.up[owner] && order.take(owner) {
                break;
            }
        }
        // Members without a slot (none, while weights are at least 1) last.
        for &i in &self.up_list {
            if order.is_complete() {
                break;
            }
            order.take(i as usize);
        }
        order.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_members;

    #[test]
    fn maglev_positions_are_pinned() {
        // Part of the crate's stable behaviour: replicas built from different
        // versions must agree.
        assert_eq!(Maglev::hash_key(b"user-42"), 0xb3b9_c3ea_2c11_ee76);
        assert_eq!(id_hash(b"10.0.0.1:80", 0), 0x0567_71b7_c0dc_8a8a);
        assert_eq!(id_hash(b"10.0.0.1:80", 1), 0x7156_6f86_3233_1329);
        let table = Maglev::with_table_size(&test_members(&[1, 2, 3]), 13).unwrap();
        assert_eq!(table.table.slots, [0, 1, 2, 2, 1, 2, 2, 1, 0, 2, 1, 2, 0]);
    }

    #[test]
    fn primes_are_recognised() {
        let primes: Vec<u32> = (0..40).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]);
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(is_prime(MAX_TABLE_SIZE));
        assert!(!is_prime(MAX_TABLE_SIZE - 2));
        assert!(!is_prime(65_535));
    }

    #[test]
    fn equal_weights_own_equal_shares() {
        let maglev = Maglev::new(&test_members(&[1; 100])).unwrap();
        let slots = maglev.slots();
        assert_eq!(slots.iter().sum::<u32>(), DEFAULT_TABLE_SIZE);
        assert!(slots.iter().all(|&s| s == 655 || s == 656), "{slots:?}");
    }

    #[test]
    fn weights_set_the_shares() {
        let maglev = Maglev::with_table_size(&test_members(&[1, 2, 3, 1_000_000]), 1009).unwrap();
        let slots = maglev.slots();
        // Every member gets a slot; the rest follows the weights.
        assert_eq!(slots[..3], [1, 1, 1]);
        assert_eq!(slots[3], 1006);
        let maglev = Maglev::new(&test_members(&[1, 2, 3])).unwrap();
        let slots = maglev.slots();
        let unit = f64::from(DEFAULT_TABLE_SIZE) / 6.0;
        for (i, &s) in slots.iter().enumerate() {
            let want = unit * (i + 1) as f64;
            assert!((f64::from(s) - want).abs() <= 1.0, "{slots:?}");
        }
    }

    #[test]
    fn the_table_does_not_depend_on_the_listing_order() {
        let members = test_members(&[1, 2, 3, 4, 5]);
        let a = Maglev::with_table_size(&members, 251).unwrap();
        let mut reversed = members.clone();
        reversed.reverse();
        let b = Maglev::with_table_size(&reversed, 251).unwrap();
        for (x, y) in a.table.slots.iter().zip(&b.table.slots) {
            assert_eq!(*x as usize, 4 - *y as usize);
        }
    }

    #[test]
    fn a_set_larger_than_the_table_grows_the_table() {
        let maglev = Maglev::with_table_size(&test_members(&[1; 5]), 3).unwrap();
        assert_eq!(maglev.table_size(), 503);
        assert!(maglev.slots().iter().all(|&s| s >= 100));
    }

    #[test]
    fn bad_table_sizes_are_errors() {
        let m = test_members(&[1]);
        for size in [0, 1, 4, 65_536, MAX_TABLE_SIZE + 2] {
            assert!(
                matches!(
                    Maglev::with_table_size(&m, size),
                    Err(Error::InvalidConfig { .. })
                ),
                "{size}"
            );
        }
    }

    #[test]
    fn marking_a_backend_down_reuses_the_table_and_moves_only_its_keys() {
        let members = test_members(&[1, 2, 3]);
        let a = Maglev::new(&members).unwrap();
        let mut down = members.clone();
        down[1] = down[1].clone().with_up(false);
        let b = Maglev::new(&down).unwrap();
        assert!(Arc::ptr_eq(&a.table, &b.table));
        let mut moved = [0; 3];
        for i in 0..3000u32 {
            let key = i.to_le_bytes();
            let owner = a.pick(Some(&key)).unwrap();
            let now = b.pick(Some(&key)).unwrap();
            if owner != 1 {
                assert_eq!(now, owner);
            } else {
                assert_eq!(now, a.failover(Some(&key), 1)[0]);
                moved[now] += 1;
            }
        }
        // Backend 1's keys spread over 0 and 2 by weight (1 : 3).
        assert!(moved[0] > 150 && moved[2] > 3 * moved[0] / 2, "{moved:?}");
    }

    #[test]
    fn the_probe_sequence_visits_every_slot() {
        let maglev = Maglev::with_table_size(&test_members(&[1; 7]), 101).unwrap();
        for hash in [0, 1, u64::MAX, 0x1234_5678_9abc_def0] {
            let mut owned = [0; 7];
            for owner in maglev.owners_for(hash) {
                owned[owner] += 1;
            }
            assert_eq!(
                owned.to_vec(),
                maglev.slots().iter().map(|&s| s as i32).collect::<Vec<_>>()
            );
        }
    }
}
