//! Membership from service discovery: `apply`, `apply_all` and the
//! `follow` future over a `tower::discover::Discover` stream.

use std::cell::Cell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::stream;
use proptest::prelude::*;
use tower::discover::Change;
use tower_lb::{
    Backend, BackendChange, Error, LoadBalancer, Outcome, Strategy, MAX_BACKENDS, MAX_ID_LEN,
};

fn backend(port: u16) -> Backend {
    Backend::new(&format!("http://10.0.0.1:{port}")).unwrap()
}

fn insert(id: &str, port: u16) -> BackendChange {
    BackendChange::Insert(id.to_owned(), backend(port))
}

fn remove(id: &str) -> BackendChange {
    BackendChange::Remove(id.to_owned())
}

fn ids(lb: &LoadBalancer) -> Vec<String> {
    lb.members().iter().map(|m| m.id().to_owned()).collect()
}

fn empty(strategy: Strategy) -> LoadBalancer {
    LoadBalancer::new(strategy, Vec::<Backend>::new()).unwrap()
}

#[test]
fn a_batch_of_a_hundred_changes_is_one_rebuild() {
    let lb = empty(Strategy::consistent_hash());
    lb.apply_all((0..100).map(|i| insert(&format!("b{i}"), 1000 + i)))
        .unwrap();
    assert_eq!(lb.len(), 100);
    assert_eq!(lb.version(), 1);
    // A deploy: 50 endpoints replaced by 50 new ones, one rebuild again.
    lb.apply_all(
        (0..50)
            .map(|i| remove(&format!("b{i}")))
            .chain((100..150).map(|i| insert(&format!("b{i}"), 1000 + i))),
    )
    .unwrap();
    assert_eq!(lb.len(), 100);
    assert_eq!(lb.version(), 2);
    assert!(lb.get("b0").is_none());
    assert!(lb.get("b149").is_some());
}

#[test]
fn the_change_key_becomes_the_backend_id() {
    let lb = empty(Strategy::RoundRobin);
    lb.apply(insert("api-1", 8080)).unwrap();
    assert_eq!(ids(&lb), ["api-1"]);
    assert_eq!(lb.pick(None).unwrap().uri(), "http://10.0.0.1:8080/");
    lb.apply(remove("api-1")).unwrap();
    assert!(lb.is_empty());
}

#[test]
fn inserting_a_taken_id_replaces_the_backend_keeping_its_state_and_counters() {
    let lb = empty(Strategy::WeightedRoundRobin);
    lb.apply_all([insert("a", 1), insert("b", 2)]).unwrap();
    let before = lb.get("a").unwrap();
    lb.report(&before, Outcome::Failure);
    lb.mark_down("a").unwrap();

    let moved = Backend::new("http://10.0.0.2:9000")
        .unwrap()
        .with_weight(7)
        .unwrap();
    lb.apply(BackendChange::Insert("a".into(), moved)).unwrap();

    let after = lb.get("a").unwrap();
    assert_eq!(after.uri(), "http://10.0.0.2:9000/");
    assert_eq!(after.weight(), 7);
    assert!(!after.is_up(), "discovery does not overrule health");
    assert_eq!(after.load().failures(), 1);
    assert!(Arc::ptr_eq(before.load(), after.load()));
    assert_eq!(ids(&lb), ["a", "b"], "replaced in place");
}

#[test]
fn an_identical_insert_or_an_unknown_remove_changes_nothing() {
    let lb = empty(Strategy::RoundRobin);
    lb.apply_all([insert("a", 1), insert("b", 2)]).unwrap();
    let version = lb.version();
    lb.apply(insert("a", 1)).unwrap();
    lb.apply(remove("zzz")).unwrap();
    lb.apply_all([insert("b", 2), remove("nope")]).unwrap();
    assert_eq!(lb.version(), version);
    assert_eq!(ids(&lb), ["a", "b"]);
}

#[test]
fn removals_keep_the_order_of_the_rest_and_inserts_append() {
    let lb = empty(Strategy::RoundRobin);
    lb.apply_all([insert("a", 1), insert("b", 2), insert("c", 3)])
        .unwrap();
    lb.apply_all([remove("b"), insert("d", 4), remove("a"), insert("a", 5)])
        .unwrap();
    assert_eq!(ids(&lb), ["c", "d", "a"]);
    assert_eq!(lb.get("a").unwrap().uri(), "http://10.0.0.1:5/");
}

#[test]
fn a_batch_with_a_bad_change_applies_nothing() {
    let lb = empty(Strategy::RoundRobin);
    lb.apply(insert("a", 1)).unwrap();
    let version = lb.version();
    let too_long = "x".repeat(MAX_ID_LEN + 1);
    let err = lb
        .apply_all([insert("b", 2), remove("a"), insert(&too_long, 3)])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidBackendId { .. }), "{err:?}");
    assert_eq!(ids(&lb), ["a"]);
    assert_eq!(lb.version(), version);
    assert!(matches!(
        lb.apply(insert("", 4)),
        Err(Error::InvalidBackendId { .. })
    ));
}

#[test]
fn more_than_max_backends_fails_before_any_backend_is_parsed() {
    let parsed = Cell::new(0usize);
    let uris = (0..=MAX_BACKENDS).map(|i| {
        parsed.set(parsed.get() + 1);
        format!(
            "http://10.{}.{}.{}:80",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        )
    });
    let err = LoadBalancer::new(Strategy::RoundRobin, uris).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { reason } if reason.contains("at most")),
        "{err:?}"
    );
    assert_eq!(parsed.get(), 0);

    let lb = empty(Strategy::RoundRobin);
    let err = lb
        .set_backends((0..=MAX_BACKENDS).map(|_| -> &str {
            parsed.set(parsed.get() + 1);
            "http://10.0.0.1:80"
        }))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert_eq!(parsed.get(), 0);
    assert!(lb.is_empty());
}

#[test]
fn replicas_fed_the_same_changes_in_any_order_route_every_key_alike() {
    let changes: Vec<BackendChange> = (1..=20).map(|i| insert(&format!("b{i}"), i)).collect();
    let first = empty(Strategy::consistent_hash());
    first.apply_all(changes.clone()).unwrap();
    first.apply_all([remove("b3"), remove("b11")]).unwrap();
    // The second replica started later: it saw a relist, in another order.
    let second = empty(Strategy::consistent_hash());
    second
        .apply_all(
            changes.into_iter().rev().filter(
                |c| !matches!(c, BackendChange::Insert(id, _) if id == "b3" || id == "b11"),
            ),
        )
        .unwrap();
    assert_ne!(ids(&first), ids(&second));
    for key in 0..10_000u32 {
        let key = key.to_be_bytes();
        assert_eq!(
            first.pick(Some(&key)).unwrap().id(),
            second.pick(Some(&key)).unwrap().id()
        );
    }
}

#[test]
fn weight_zero_from_discovery_drains_the_backend() {
    let lb = empty(Strategy::WeightedRoundRobin);
    lb.apply_all([insert("a", 1), insert("b", 2)]).unwrap();
    let draining = backend(1).with_weight(0).unwrap();
    lb.apply(BackendChange::Insert("a".into(), draining))
        .unwrap();
    assert_eq!(lb.get("a").unwrap().weight(), 0);
    assert_eq!(lb.len(), 2, "a draining backend stays a member");
    for _ in 0..100 {
        assert_eq!(lb.pick(None).unwrap().id(), "b");
    }
}

fn arb_change() -> impl Strategy_<Value = BackendChange> {
    let id = prop::sample::select(vec!["a", "b", "c", "d", "e"]);
    prop_oneof![
        (id.clone(), 1u16..4, 1u32..4).prop_map(|(id, port, weight)| BackendChange::Insert(
            id.to_owned(),
            backend(port).with_weight(weight).unwrap()
        )),
        id.prop_map(remove),
    ]
}

use proptest::strategy::Strategy as Strategy_;

proptest! {
    #[test]
    fn a_batch_ends_where_the_same_changes_one_by_one_end(
        start in prop::collection::vec(arb_change(), 0..8),
        changes in prop::collection::vec(arb_change(), 0..24),
    ) {
        let batched = empty(Strategy::WeightedRoundRobin);
        let single = empty(Strategy::WeightedRoundRobin);
        batched.apply_all(start.clone()).unwrap();
        single.apply_all(start).unwrap();
        let version = batched.version();
        batched.apply_all(changes.clone()).unwrap();
        for change in changes {
            single.apply(change).unwrap();
        }
        let view = |lb: &LoadBalancer| -> Vec<(String, String, u32)> {
            lb.members()
                .iter()
                .map(|m| (m.id().to_owned(), m.uri().to_string(), m.weight()))
                .collect()
        };
        prop_assert_eq!(view(&batched), view(&single));
        prop_assert!(batched.version() <= version + 1);
    }
}

/// A discovery feed that yields what the test scripted, `None` meaning
/// "nothing ready yet" (`Pending`).
fn scripted(
    steps: Vec<Option<Result<Change<&'static str, Backend>, &'static str>>>,
) -> impl futures_util::Stream<Item = Result<Change<&'static str, Backend>, &'static str>> {
    let mut steps: VecDeque<_> = steps.into();
    stream::poll_fn(move |_cx| match steps.pop_front() {
        Some(Some(item)) => Poll::Ready(Some(item)),
        // A real feed would wake the task later; the test polls again.
        Some(None) => Poll::Pending,
        None => Poll::Ready(None),
    })
}

fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn follow_applies_every_ready_change_in_one_rebuild_and_ends_with_the_feed() {
    let lb = empty(Strategy::RoundRobin);
    let feed = scripted(vec![
        Some(Ok(Change::Insert("a", backend(1)))),
        Some(Ok(Change::Insert("b", backend(2)))),
        Some(Ok(Change::Insert("c", backend(3)))),
        None,
        Some(Ok(Change::Remove("a"))),
        Some(Ok(Change::Insert("d", backend(4)))),
    ]);
    let mut follow = pin!(lb.follow(feed));
    assert!(poll_once(follow.as_mut()).is_pending());
    assert_eq!(ids(&lb), ["a", "b", "c"]);
    assert_eq!(lb.version(), 1);
    assert_eq!(poll_once(follow.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(ids(&lb), ["b", "c", "d"]);
    assert_eq!(lb.version(), 2);
    // Polled again after the end: still done, nothing changes.
    assert_eq!(poll_once(follow.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(lb.version(), 2);
}

#[test]
fn follow_ends_with_the_feeds_error_and_keeps_the_last_membership() {
    let lb = empty(Strategy::RoundRobin);
    let feed = scripted(vec![
        Some(Ok(Change::Insert("a", backend(1)))),
        Some(Err("watch lost")),
        Some(Ok(Change::Remove("a"))),
    ]);
    let mut follow = pin!(lb.follow(feed));
    assert_eq!(poll_once(follow.as_mut()), Poll::Ready(Err("watch lost")));
    assert_eq!(ids(&lb), ["a"]);
    assert_eq!(lb.pick(None).unwrap().id(), "a");
}

#[test]
fn follow_reports_a_refused_change_and_applies_the_rest() {
    let lb = empty(Strategy::RoundRobin);
    let feed = scripted(vec![
        Some(Ok(Change::Insert("a", backend(1)))),
        Some(Ok(Change::Insert("", backend(2)))),
        Some(Ok(Change::Insert("c", backend(3)))),
    ]);
    let refused = Arc::new(Mutex::new(Vec::new()));
    let seen = refused.clone();
    let mut follow = pin!(lb.follow(feed).on_rejected(move |change, error| {
        seen.lock().unwrap().push((change, error.to_string()));
    }));
    assert_eq!(poll_once(follow.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(ids(&lb), ["a", "c"]);
    let refused = refused.lock().unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].0,
        BackendChange::Insert(String::new(), backend(2))
    );
    assert!(
        refused[0].1.contains("invalid backend id"),
        "{}",
        refused[0].1
    );
}

#[test]
fn a_tower_change_applies_as_is() {
    let lb = empty(Strategy::RoundRobin);
    lb.apply(Change::Insert("a".to_owned(), backend(1)))
        .unwrap();
    lb.apply(Change::<&str, Backend>::Remove("a")).unwrap();
    assert!(lb.is_empty());
}

#[tokio::test]
async fn a_spawned_follow_wakes_on_new_changes_and_ends_when_the_feed_closes() {
    let lb = empty(Strategy::consistent_hash());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Change<String, Backend>>();
    let feed = stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok::<_, Infallible>)));
    let follow = tokio::spawn(lb.follow(feed));

    async fn members_become(lb: &LoadBalancer, expected: &[&str]) {
        for _ in 0..1000 {
            if ids(lb) == expected {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("members are {:?}, not {expected:?}", ids(lb));
    }
    tx.send(Change::Insert("a".into(), backend(1))).unwrap();
    members_become(&lb, &["a"]).await;
    tx.send(Change::Insert("b".into(), backend(2))).unwrap();
    tx.send(Change::Remove("a".into())).unwrap();
    members_become(&lb, &["b"]).await;
    drop(tx);
    assert!(matches!(follow.await.unwrap(), Ok(())));
    assert_eq!(ids(&lb), ["b"], "the last membership stays");
}
