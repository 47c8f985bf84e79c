//! The load-balancing algorithms, one module each, and the [`Strategy`]
//! factory that builds any of them by name.
//!
//! | strategy | picks | key | failover order |
//! |---|---|---|---|
//! | [`Random`] | at random among the backends that are up, in proportion to weight | ignored | rotation from a random start |
//! | [`RoundRobin`] | strict rotation, lock-free | ignored | rotation after the failed one |
//! | [`WeightedRoundRobin`] | nginx's smooth weighted round robin, `O(1)` | ignored | the sequence's next picks |
//! | [`ConsistentHash`] | ring with virtual nodes, SipHash | the affinity key | clockwise on the ring |
//! | [`LeastRequest`] | fewer requests in flight of two random backends (power of two choices) | ignored | least loaded first |
//! | [`Maglev`] | Maglev lookup table of prime size, `O(1)`, near-perfect spread | the affinity key | the key's probe sequence in the table |
//! | [`BoundedLoad`] | consistent hashing (ring or Maglev) skipping backends at `(1 + ε) ×` their share of requests in flight | the affinity key | the key's hash order, those under their cap first |
//!
//! The failover order is where a keyed pick goes when its backend is out,
//! and where its retries go. A strategy that ignores the key
//! ([`Balancer::uses_key`] is `false`) draws
//! again instead, as nginx does: round robin's rotation moves on past a
//! retry. It walks its failover order only when those draws keep landing
//! on backends that are out or already tried.

use std::fmt;
use std::str::FromStr;

use crate::{Balancer, BuildBalancer, Error, Member};

pub mod bounded_load;
pub mod consistent_hash;
pub mod least_request;
pub mod maglev;
pub mod random;
pub mod round_robin;
mod shared_build;
pub mod weighted_round_robin;

#[doc(inline)]
pub use self::{bounded_load::BoundedLoad, maglev::Maglev};
#[doc(inline)]
pub use self::{
    consistent_hash::ConsistentHash, least_request::LeastRequest, random::Random,
    round_robin::RoundRobin, weighted_round_robin::WeightedRoundRobin,
};

/// Members `b0`, `b1`, ... with the given weights, all up: for unit tests.
#[cfg(test)]
pub(crate) fn test_members(weights: &[u32]) -> Vec<Member> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Member::new(
                crate::Backend::new(&format!("http://b{i}"))
                    .and_then(|b| b.with_weight(w))
                    .expect("test backends are valid"),
            )
        })
        .collect()
}

/// Picks an algorithm by value or by name: the factory.
///
/// ```
/// use tower_lb::{LoadBalancer, Strategy};
///
/// let strategy: Strategy = "weighted_round_robin".parse()?;
/// assert_eq!(strategy, Strategy::WeightedRoundRobin);
/// assert_eq!(strategy.to_string(), "weighted_round_robin");
///
/// let lb = LoadBalancer::new(strategy, ["http://127.0.0.1:8081", "http://127.0.0.1:8082"])?;
/// assert_eq!(lb.pick(None)?.id(), "127.0.0.1:8081");
///
/// let err = "fastest".parse::<Strategy>().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "unknown strategy `fastest`: expected one of random, round_robin, weighted_round_robin, consistent_hash, least_request, maglev, bounded_load, maglev_bounded_load"
/// );
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Strategy {
    /// [`Random`], in proportion to weight as nginx's `random` and
    /// HAProxy's `balance random` are ([`Random::weighted`]; uniform, and
    /// `O(1)`, when every weight is the same).
    Random,
    /// Round robin as nginx, HAProxy and Pingora do it: [`RoundRobin`]'s
    /// lock-free rotation while every weight is the same, nginx's smooth
    /// [`WeightedRoundRobin`] as soon as weights differ (nginx's
    /// `round-robin` *is* the smooth weighted algorithm). Configured weights
    /// are never ignored.
    RoundRobin,
    /// [`WeightedRoundRobin`], nginx's smooth variant.
    WeightedRoundRobin,
    /// [`ConsistentHash`] with `vnodes` points per unit of weight.
    ConsistentHash {
        /// Virtual nodes per unit of weight (default
        /// [`DEFAULT_VNODES`](consistent_hash::DEFAULT_VNODES)).
        vnodes: u32,
    },
    /// [`LeastRequest`]: the fewer requests in flight of two random
    /// backends.
    LeastRequest,
    /// [`Maglev`] with a table of `table_size` slots.
    Maglev {
        /// Slots in the lookup table, a prime (default
        /// [`DEFAULT_TABLE_SIZE`](maglev::DEFAULT_TABLE_SIZE)).
        table_size: u32,
    },
    /// [`BoundedLoad`] over a [`ConsistentHash`] ring with `vnodes` points
    /// per unit of weight.
    BoundedLoad {
        /// Virtual nodes per unit of weight (default
        /// [`DEFAULT_VNODES`](consistent_hash::DEFAULT_VNODES)).
        vnodes: u32,
        /// `100 × (1 + ε)`, HAProxy's `hash-balance-factor` (default
        /// [`DEFAULT_BALANCE_FACTOR`](bounded_load::DEFAULT_BALANCE_FACTOR)).
        balance_factor: u32,
    },
    /// [`BoundedLoad`] over a [`Maglev`] table of `table_size` slots.
    MaglevBoundedLoad {
        /// Slots in the lookup table, a prime (default
        /// [`DEFAULT_TABLE_SIZE`](maglev::DEFAULT_TABLE_SIZE)).
        table_size: u32,
        /// `100 × (1 + ε)`, HAProxy's `hash-balance-factor` (default
        /// [`DEFAULT_BALANCE_FACTOR`](bounded_load::DEFAULT_BALANCE_FACTOR)).
        balance_factor: u32,
    },
}

impl Strategy {
    /// The names [`FromStr`] accepts, in the order they are listed in errors.
    pub const NAMES: [&'static str; 8] = [
        "random",
        "round_robin",
        "weighted_round_robin",
        "consistent_hash",
        "least_request",
        "maglev",
        "bounded_load",
        "maglev_bounded_load",
    ];

    /// Consistent hashing with the default number of virtual nodes.
    pub const fn consistent_hash() -> Strategy {
        Strategy::ConsistentHash {
            vnodes: consistent_hash::DEFAULT_VNODES,
        }
    }

    /// Maglev with the default table size.
    pub const fn maglev() -> Strategy {
        Strategy::Maglev {
            table_size: maglev::DEFAULT_TABLE_SIZE,
        }
    }

    /// Consistent hashing with bounded loads over the ring, with the default
    /// virtual nodes and balance factor.
    pub const fn bounded_load() -> Strategy {
        Strategy::BoundedLoad {
            vnodes: consistent_hash::DEFAULT_VNODES,
            balance_factor: bounded_load::DEFAULT_BALANCE_FACTOR,
        }
    }

    /// Bounded loads over Maglev, with the default table size and balance
    /// factor.
    pub const fn maglev_bounded_load() -> Strategy {
        Strategy::MaglevBoundedLoad {
            table_size: maglev::DEFAULT_TABLE_SIZE,
            balance_factor: bounded_load::DEFAULT_BALANCE_FACTOR,
        }
    }

    /// The strategy's name, as [`FromStr`] accepts it.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Random => Self::NAMES[0],
            Strategy::RoundRobin => Self::NAMES[1],
            Strategy::WeightedRoundRobin => Self::NAMES[2],
            Strategy::ConsistentHash { .. } => Self::NAMES[3],
            Strategy::LeastRequest => Self::NAMES[4],
            Strategy::Maglev { .. } => Self::NAMES[5],
            Strategy::BoundedLoad { .. } => Self::NAMES[6],
            Strategy::MaglevBoundedLoad { .. } => Self::NAMES[7],
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = Error;

    /// Parses `random`, `round_robin`, `weighted_round_robin`,
    /// `consistent_hash`, `least_request`, `maglev`, `bounded_load` (also
    /// `consistent_hash_bounded`) or `maglev_bounded_load` (also with `-`
    /// for `_`, in any case), each with its default parameters, and nginx's
    /// and HAProxy's names for the same algorithms: `roundrobin` (HAProxy)
    /// for round robin, `least_conn` (nginx) and `leastconn` (HAProxy) for
    /// least request.
    ///
    /// ```
    /// use tower_lb::Strategy;
    ///
    /// assert_eq!("roundrobin".parse::<Strategy>()?, Strategy::RoundRobin);
    /// assert_eq!("least_conn".parse::<Strategy>()?, Strategy::LeastRequest);
    /// assert_eq!("leastconn".parse::<Strategy>()?, Strategy::LeastRequest);
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normal = s.trim().to_ascii_lowercase().replace('-', "_");
        match normal.as_str() {
            "random" => Ok(Strategy::Random),
            // HAProxy's `balance roundrobin`.
            "round_robin" | "roundrobin" => Ok(Strategy::RoundRobin),
            "weighted_round_robin" => Ok(Strategy::WeightedRoundRobin),
            "consistent_hash" => Ok(Strategy::consistent_hash()),
            // nginx's `least_conn`, HAProxy's `balance leastconn`: both
            // count requests (connections) in flight, as LeastRequest does.
            "least_request" | "least_conn" | "leastconn" => Ok(Strategy::LeastRequest),
            "maglev" => Ok(Strategy::maglev()),
            "bounded_load" | "consistent_hash_bounded" => Ok(Strategy::bounded_load()),
            "maglev_bounded_load" => Ok(Strategy::maglev_bounded_load()),
            _ => Err(Error::UnknownStrategy { name: s.to_owned() }),
        }
    }
}

impl BuildBalancer for Strategy {
    fn build(&self, members: &[Member]) -> Result<Box<dyn Balancer>, Error> {
        Ok(match *self {
            Strategy::Random => Box::new(if same_weights(members) {
                Random::new(members)
            } else {
                Random::weighted(members)
            }),
            // nginx, HAProxy and Pingora all weight their round robin: a
            // weight that differs must not be silently ignored.
            Strategy::RoundRobin if !same_weights(members) => {
                Box::new(WeightedRoundRobin::new(members))
            }
            Strategy::RoundRobin => Box::new(RoundRobin::new(members)),
            Strategy::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(members)),
            Strategy::ConsistentHash { vnodes } => {
                Box::new(ConsistentHash::with_vnodes(members, vnodes)?)
            }
            Strategy::LeastRequest => Box::new(LeastRequest::new(members)),
            Strategy::Maglev { table_size } => {
                Box::new(Maglev::with_table_size(members, table_size)?)
            }
            Strategy::BoundedLoad {
                vnodes,
                balance_factor,
            } => Box::new(BoundedLoad::ring(members, vnodes, balance_factor)?),
            Strategy::MaglevBoundedLoad {
                table_size,
                balance_factor,
            } => Box::new(BoundedLoad::maglev(members, table_size, balance_factor)?),
        })
    }
}

/// Whether every member has the same weight.
fn same_weights(members: &[Member]) -> bool {
    let weight = |m: &Member| m.backend().weight();
    members.windows(2).all(|w| weight(&w[0]) == weight(&w[1]))
}
