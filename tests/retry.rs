//! `NextUpstream` and `ResponseTimeout` over `service_fn` backends that fail
//! on purpose: where each retry goes, when a retry is safe, what is
//! replayed, and what counts against a backend.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_lb::layer::{
    LoadBalanceLayer, NextUpstreamLayer, ReplayBody, ResponseTimeoutLayer, TriedBackends,
};
use tower_lb::sticky::{AffinityKey, ClientAddr, Secret, StickyCookie};
use tower_lb::{BoxError, Error, LoadBalancer, Member, Strategy};

/// How a fake backend answers.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// The connection is refused: the request never reached it.
    Refused,
    /// The connection is reset after the request was sent.
    Reset,
    /// Never answers.
    Hang,
    /// A gRPC error in the headers ("Trailers-Only"): HTTP 200 with this
    /// `grpc-status`.
    Grpc(u32),
}

/// One attempt as a backend saw it: backend id, body, whether the attempt
/// carried `TriedBackends`.
type Seen = Arc<Mutex<Vec<(String, Bytes, usize)>>>;

const IDS: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];

fn balancer(strategy: Strategy) -> LoadBalancer {
    LoadBalancer::new(strategy, IDS.map(|id| format!("http://{id}"))).unwrap()
}

/// An inner service whose backends answer as `answers` says (200 if absent).
fn backends<B>(
    answers: HashMap<&'static str, Answer>,
    seen: Seen,
) -> impl Service<Request<ReplayBody<B>>, Response = Response<String>, Error = BoxError> + Clone
where
    B: Body + Unpin + Send + 'static,
    B::Data: Clone + Send,
    B::Error: Into<BoxError> + std::fmt::Debug,
{
    tower::service_fn(move |req: Request<ReplayBody<B>>| {
        let answers = answers.clone();
        let seen = seen.clone();
        async move {
            let id = req.extensions().get::<Member>().unwrap().id().to_owned();
            let tried = req
                .extensions()
                .get::<TriedBackends>()
                .map_or(0, |t| t.len());
            let answer = answers
                .get(id.as_str())
                .copied()
                .unwrap_or(Answer::Status(200));
            if let Answer::Refused = answer {
                // The client never sent it: the body is not read.
                seen.lock().unwrap().push((id, Bytes::new(), tried));
                return Err(io::Error::from(io::ErrorKind::ConnectionRefused).into());
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push((id.clone(), body, tried));
            match answer {
                Answer::Status(code) => Ok(Response::builder().status(code).body(id).unwrap()),
                Answer::Reset => Err(io::Error::from(io::ErrorKind::ConnectionReset).into()),
                Answer::Hang => std::future::pending().await,
                Answer::Grpc(code) => Ok(Response::builder()
                    .header("grpc-status", code.to_string())
                    .body(id)
                    .unwrap()),
                Answer::Refused => unreachable!(),
            }
        }
    })
}

fn ids(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(id, ..)| id.clone())
        .collect()
}

fn get() -> Request<Full<Bytes>> {
    Request::new(Full::default())
}

fn post(body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

async fn send<B>(
    layer: NextUpstreamLayer,
    lb: &LoadBalancer,
    answers: &[(&'static str, Answer)],
    req: Request<B>,
) -> (Result<Response<String>, Error>, Seen)
where
    B: Body + Unpin + Send + 'static,
    B::Data: Clone + Send,
    B::Error: Into<BoxError> + std::fmt::Debug,
{
    let seen = Seen::default();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .layer(LoadBalanceLayer::new(lb.clone()))
        .service(backends(answers.iter().copied().collect(), seen.clone()));
    let result = svc.ready().await.unwrap().call(req).await;
    (result, seen)
}

#[tokio::test]
async fn a_refused_connection_moves_to_the_next_backend_and_counts_against_the_first() {
    let lb = balancer(Strategy::RoundRobin);
    let (res, seen) = send(
        NextUpstreamLayer::new(),
        &lb,
        &[("10.0.0.1", Answer::Refused)],
        get(),
    )
    .await;
    assert_eq!(res.unwrap().body(), "10.0.0.2");
    assert_eq!(ids(&seen), ["10.0.0.1", "10.0.0.2"]);
    // The retry carried the backend it must avoid.
    assert_eq!(seen.lock().unwrap()[1].2, 1);
    assert_eq!(lb.get("10.0.0.1").unwrap().load().failures(), 1);
    assert_eq!(lb.get("10.0.0.2").unwrap().load().successes(), 1);
}

#[tokio::test]
async fn a_round_robin_retry_takes_the_rotations_next_turn_as_nginx_does() {
    // nginx 1.22, three servers, the first refusing, max_fails=1: the
    // clients are served by b c b c b, since the retry is a fresh pick that
    // moves the rotation on and the refusing server is then ejected.
    let lb = balancer(Strategy::RoundRobin);
    assert_eq!(lb.health_policy().get_max_fails(), 1);
    let seen = Seen::default();
    let mut svc = ServiceBuilder::new()
        .layer(NextUpstreamLayer::new())
        .layer(LoadBalanceLayer::new(lb.clone()))
        .service(backends(
            [("10.0.0.1", Answer::Refused)].into_iter().collect(),
            seen.clone(),
        ));
    let mut served = Vec::new();
    for _ in 0..5 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        served.push(res.into_body());
    }
    assert_eq!(
        served,
        ["10.0.0.2", "10.0.0.3", "10.0.0.2", "10.0.0.3", "10.0.0.2"]
    );
    // One attempt on the refusing backend: it was out for the rest.
    assert_eq!(
        ids(&seen),
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.2", "10.0.0.3", "10.0.0.2"]
    );
}

#[test]
fn a_key_the_strategy_ignores_leaves_a_retry_a_fresh_draw() {
    // The gateway example extracts a key from `x-user` whatever the
    // strategy: under round robin it changes nothing.
    let key = Some(&b"user-7"[..]);
    let lb = balancer(Strategy::RoundRobin);
    assert_eq!(lb.pick(key).unwrap().id(), "10.0.0.1");
    assert_eq!(
        lb.pick_excluding(key, &["10.0.0.1"]).unwrap().id(),
        "10.0.0.2"
    );
    assert_eq!(lb.pick(key).unwrap().id(), "10.0.0.3");
    // Consistent hashing follows the key: every retry of it goes to the
    // same ring successor.
    let ring = balancer(Strategy::consistent_hash());
    let home = ring.pick(key).unwrap();
    let next = ring.pick_excluding(key, &[home.id()]).unwrap();
    assert_ne!(next.id(), home.id());
    for _ in 0..10 {
        assert_eq!(
            ring.pick_excluding(key, &[home.id()]).unwrap().id(),
            next.id()
        );
    }
}

#[tokio::test]
async fn a_random_retry_draws_again_among_the_backends_not_tried() {
    // Passive health off, so `.1` refuses every time it is drawn and each
    // of those requests is retried. A fresh draw spreads the retries evenly
    // over `.2` and `.3`; a failover list in rotation from a random start
    // would send two in three to `.2`.
    let lb = balancer(Strategy::Random).with_health_policy(tower_lb::health::HealthPolicy::off());
    let mut retried_to: HashMap<String, u32> = HashMap::new();
    for _ in 0..1800 {
        let (res, seen) = send(
            NextUpstreamLayer::new(),
            &lb,
            &[("10.0.0.1", Answer::Refused)],
            get(),
        )
        .await;
        let served = res.unwrap().into_body();
        assert_ne!(served, "10.0.0.1");
        if ids(&seen)[0] == "10.0.0.1" {
            *retried_to.entry(served).or_default() += 1;
        }
    }
    // About 600 retries, ~300 each (binomial sd ~12): [240, 360] is 5 sd
    // wide, and the rotation's 400 / 200 falls outside it.
    let retries: u32 = retried_to.values().sum();
    assert!((450..=750).contains(&retries), "{retries} retries");
    for id in ["10.0.0.2", "10.0.0.3"] {
        let n = retried_to.get(id).copied().unwrap_or(0);
        let share = f64::from(n) / f64::from(retries);
        assert!(
            (0.4..=0.6).contains(&share),
            "{id} took {n} of {retries} retries"
        );
    }
}

#[tokio::test]
async fn consistent_hash_retries_go_to_the_ring_successors_in_failover_order() {
    let lb = LoadBalancer::new(
        Strategy::consistent_hash(),
        IDS.map(|id| format!("http://{id}")),
    )
    .unwrap();
    fn user(req: &Request<ReplayBody<Full<Bytes>>>) -> Option<AffinityKey<'_>> {
        req.headers().get("x-user").map(|v| v.as_bytes().into())
    }
    let key = b"alice";
    let home = lb.pick(Some(key)).unwrap().id().to_owned();
    let order: Vec<String> = lb
        .failover(Some(key), &home)
        .iter()
        .map(|m| m.id().to_owned())
        .collect();
    let answers: HashMap<_, _> = IDS.iter().map(|&id| (id, Answer::Reset)).collect();
    let seen = Seen::default();
    let mut svc = ServiceBuilder::new()
        .layer(NextUpstreamLayer::new())
        .layer(LoadBalanceLayer::new(lb.clone()).key(user))
        .service(backends(answers, seen.clone()));
    let req = Request::builder()
        .header("x-user", "alice")
        .body(Full::default())
        .unwrap();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    // Every backend once, home first, then the ring's order; the answer is
    // the last failure, not "no backend left".
    let mut expected = vec![home];
    expected.extend(order);
    assert_eq!(ids(&seen), expected);
    assert!(matches!(&err, Error::Upstream { backend, .. } if *backend == expected[2]));
    assert_eq!(err.status_code(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn tries_bounds_the_attempts_and_the_last_failure_is_the_answer() {
    let lb = balancer(Strategy::RoundRobin);
    let all_reset: Vec<_> = IDS.iter().map(|&id| (id, Answer::Reset)).collect();
    let (res, seen) = send(NextUpstreamLayer::new().tries(2), &lb, &all_reset, get()).await;
    assert_eq!(ids(&seen), ["10.0.0.1", "10.0.0.2"]);
    assert!(matches!(res, Err(Error::Upstream { backend, .. }) if backend == "10.0.0.2"));

    let (res, seen) = send(NextUpstreamLayer::new().tries(1), &lb, &all_reset, get()).await;
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(matches!(res, Err(Error::Upstream { .. })));
}

#[tokio::test]
async fn with_every_retry_condition_off_a_failure_is_answered_after_one_attempt() {
    let lb = balancer(Strategy::RoundRobin);
    let all_reset: Vec<_> = IDS.iter().map(|&id| (id, Answer::Reset)).collect();
    let nothing = NextUpstreamLayer::new()
        .retry_on_error(false)
        .retry_on_timeout(false);
    // A POST too: with nothing to retry on, no `NotRetried` either.
    for req in [get(), post(b"hello")] {
        let (res, seen) = send(nothing.clone(), &lb, &all_reset, req).await;
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert!(matches!(res, Err(Error::Upstream { .. })), "{res:?}");
    }
}

#[tokio::test]
async fn statuses_are_retried_only_when_chosen_and_the_last_response_is_passed_on() {
    let lb = balancer(Strategy::RoundRobin);
    let answers = [
        ("10.0.0.1", Answer::Status(503)),
        ("10.0.0.2", Answer::Status(502)),
        ("10.0.0.3", Answer::Status(504)),
    ];
    // nginx's default: statuses are not retried, and a status that is not
    // moved on from counts as a success, as in nginx.
    let (res, seen) = send(NextUpstreamLayer::new(), &lb, &answers, get()).await;
    assert_eq!(res.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);
    let first = lb.get("10.0.0.1").unwrap().load().clone();
    assert_eq!((first.failures(), first.successes()), (0, 1));

    let lb = balancer(Strategy::RoundRobin);
    let layer = NextUpstreamLayer::new().retry_on_status(|s| matches!(s.as_u16(), 502..=504));
    let (res, seen) = send(layer, &lb, &answers, get()).await;
    let res = res.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    // The two the request moved on from failed; the last one's answer went
    // to the client, a success (nginx's `proxy_next_upstream http_50x`).
    let counts = |id| {
        let load = lb.get(id).unwrap().load().clone();
        (load.failures(), load.successes())
    };
    assert_eq!(counts("10.0.0.1"), (1, 0));
    assert_eq!(counts("10.0.0.2"), (1, 0));
    assert_eq!(counts("10.0.0.3"), (0, 1));
}

#[tokio::test]
async fn a_status_not_moved_on_from_never_ejects_its_backend() {
    // nginx counts a 502/503/504 against a server only when
    // `proxy_next_upstream` passes the request on because of it: one POST,
    // or one request with a single try, to a page that fails must not take
    // a healthy backend out.
    let retry = || NextUpstreamLayer::new().retry_on_status(|s| matches!(s.as_u16(), 502..=504));
    let answers = [
        ("10.0.0.1", Answer::Status(502)),
        ("10.0.0.2", Answer::Status(502)),
        ("10.0.0.3", Answer::Status(502)),
    ];
    for (layer, req) in [(retry(), post(b"order")), (retry().tries(1), get())] {
        let lb = balancer(Strategy::RoundRobin)
            .with_health_policy(tower_lb::health::HealthPolicy::default());
        let (res, seen) = send(layer, &lb, &answers, req).await;
        assert_eq!(res.unwrap().status(), StatusCode::BAD_GATEWAY);
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert!(lb
            .stats()
            .iter()
            .all(|s| s.state == tower_lb::health::BackendState::Up));
        assert_eq!(lb.get("10.0.0.1").unwrap().load().failures(), 0);
    }
    // A gRPC error in the headers is an HTTP 200, which no retry moves on
    // from: it counts at once, as without a retry layer.
    let lb = balancer(Strategy::RoundRobin);
    let (res, seen) = send(retry(), &lb, &[("10.0.0.1", Answer::Grpc(14))], get()).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(lb.get("10.0.0.1").unwrap().load().failures(), 1);
    // Moved on from, it counts, and ejects (max_fails=1), as in nginx.
    let lb = balancer(Strategy::RoundRobin)
        .with_health_policy(tower_lb::health::HealthPolicy::default());
    let (res, seen) = send(retry().tries(2), &lb, &answers, get()).await;
    assert_eq!(res.unwrap().status(), StatusCode::BAD_GATEWAY);
    assert_eq!(ids(&seen), ["10.0.0.1", "10.0.0.2"]);
    let states: Vec<_> = lb.stats().iter().map(|s| (s.id.clone(), s.state)).collect();
    assert_eq!(
        states,
        [
            (
                "10.0.0.1".to_owned(),
                tower_lb::health::BackendState::Ejected
            ),
            ("10.0.0.2".to_owned(), tower_lb::health::BackendState::Up),
            ("10.0.0.3".to_owned(), tower_lb::health::BackendState::Up),
        ]
    );
}

#[tokio::test]
async fn a_post_is_retried_with_its_body_when_the_connection_was_refused() {
    let lb = balancer(Strategy::RoundRobin);
    let (res, seen) = send(
        NextUpstreamLayer::new(),
        &lb,
        &[("10.0.0.1", Answer::Refused)],
        post(b"order #42"),
    )
    .await;
    assert_eq!(res.unwrap().body(), "10.0.0.2");
    let seen = seen.lock().unwrap();
    assert_eq!(seen[1].0, "10.0.0.2");
    assert_eq!(seen[1].1, Bytes::from_static(b"order #42"));
}

#[tokio::test]
async fn a_post_that_reached_its_backend_is_not_retried_unless_opted_in() {
    let lb = balancer(Strategy::RoundRobin);
    let reset = [("10.0.0.1", Answer::Reset)];
    let (res, seen) = send(NextUpstreamLayer::new(), &lb, &reset, post(b"pay")).await;
    assert_eq!(ids(&seen), ["10.0.0.1"]);
    let err = res.unwrap_err();
    match &err {
        Error::NotRetried { reason, source } => {
            assert!(reason.contains("not idempotent"), "{reason}");
            assert!(matches!(**source, Error::Upstream { .. }));
        }
        other => panic!("expected NotRetried, got {other:?}"),
    }
    assert_eq!(err.status_code(), StatusCode::BAD_GATEWAY);

    let lb = balancer(Strategy::RoundRobin);
    let (res, seen) = send(
        NextUpstreamLayer::new().non_idempotent(true),
        &lb,
        &reset,
        post(b"pay"),
    )
    .await;
    assert_eq!(res.unwrap().body(), "10.0.0.2");
    assert_eq!(seen.lock().unwrap()[1].1, Bytes::from_static(b"pay"));
}

#[tokio::test]
async fn put_and_delete_are_idempotent_and_retried_after_reaching_the_backend() {
    for method in [Method::PUT, Method::DELETE] {
        let lb = balancer(Strategy::RoundRobin);
        let req = Request::builder()
            .method(method.clone())
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        let (res, _) = send(
            NextUpstreamLayer::new(),
            &lb,
            &[("10.0.0.1", Answer::Reset)],
            req,
        )
        .await;
        assert_eq!(res.unwrap().body(), "10.0.0.2", "{method}");
    }
}

/// A body of unknown length (chunked), one chunk.
struct Chunked(Option<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn a_streamed_body_is_sent_once_and_the_error_says_why_it_was_not_retried() {
    let lb = balancer(Strategy::RoundRobin);
    let req = Request::builder()
        .method(Method::PUT)
        .body(Chunked(Some(Bytes::from_static(b"streamed"))))
        .unwrap();
    let (res, seen) = send(
        NextUpstreamLayer::new(),
        &lb,
        &[("10.0.0.1", Answer::Reset)],
        req,
    )
    .await;
    assert_eq!(ids(&seen), ["10.0.0.1"]);
    assert_eq!(seen.lock().unwrap()[0].1, Bytes::from_static(b"streamed"));
    match res.unwrap_err() {
        Error::NotRetried { reason, .. } => assert!(reason.contains("streamed"), "{reason}"),
        other => panic!("expected NotRetried, got {other:?}"),
    }
}

#[tokio::test]
async fn a_body_over_the_buffer_limit_is_streamed_and_not_retried() {
    let lb = balancer(Strategy::RoundRobin);
    let (res, seen) = send(
        NextUpstreamLayer::new().buffer_limit(4),
        &lb,
        &[("10.0.0.1", Answer::Reset)],
        Request::put("/")
            .body(Full::new(Bytes::from_static(b"12345")))
            .unwrap(),
    )
    .await;
    assert_eq!(ids(&seen), ["10.0.0.1"]);
    assert!(matches!(res, Err(Error::NotRetried { .. })));

    // At the limit it is buffered and replayed.
    let lb = balancer(Strategy::RoundRobin);
    let (res, seen) = send(
        NextUpstreamLayer::new().buffer_limit(5),
        &lb,
        &[("10.0.0.1", Answer::Reset)],
        Request::put("/")
            .body(Full::new(Bytes::from_static(b"12345")))
            .unwrap(),
    )
    .await;
    assert_eq!(res.unwrap().body(), "10.0.0.2");
    assert_eq!(seen.lock().unwrap()[1].1, Bytes::from_static(b"12345"));
}

fn upgrade() -> Request<Full<Bytes>> {
    Request::get("/play")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn a_websocket_handshake_is_retried_only_before_it_reached_a_backend() {
    let lb = balancer(Strategy::RoundRobin);
    let (res, _) = send(
        NextUpstreamLayer::new(),
        &lb,
        &[("10.0.0.1", Answer::Refused)],
        upgrade(),
    )
    .await;
    assert_eq!(res.unwrap().body(), "10.0.0.2");

    let lb = balancer(Strategy::RoundRobin);
    let (res, seen) = send(
        NextUpstreamLayer::new(),
        &lb,
        &[("10.0.0.1", Answer::Reset)],
        upgrade(),
    )
    .await;
    assert_eq!(ids(&seen), ["10.0.0.1"]);
    match res.unwrap_err() {
        Error::NotRetried { reason, .. } => assert!(reason.contains("upgrade"), "{reason}"),
        other => panic!("expected NotRetried, got {other:?}"),
    }
}

static FAKE_NOW_MS: AtomicU64 = AtomicU64::new(0);

fn fake_now() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now) + Duration::from_millis(FAKE_NOW_MS.load(Ordering::SeqCst))
}

#[tokio::test]
async fn no_new_attempt_starts_once_the_time_budget_is_spent() {
    let lb = balancer(Strategy::RoundRobin);
    let seen = Seen::default();
    // Each attempt takes 600 ms of the fake clock.
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
            let seen = seen.clone();
            async move {
                FAKE_NOW_MS.fetch_add(600, Ordering::SeqCst);
                let id = req.extensions().get::<Member>().unwrap().id().to_owned();
                seen.lock().unwrap().push((id, Bytes::new(), 0));
                Err::<Response<String>, BoxError>(
                    io::Error::from(io::ErrorKind::ConnectionReset).into(),
                )
            }
        })
    };
    let mut svc = ServiceBuilder::new()
        .layer(
            NextUpstreamLayer::new()
                .timeout(Duration::from_secs(1))
                .clock(fake_now),
        )
        .layer(LoadBalanceLayer::new(lb))
        .service(inner);
    let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
    // 0 ms: first; 600 ms: second; 1200 ms: over budget, no third.
    assert_eq!(ids(&seen), ["10.0.0.1", "10.0.0.2"]);
    assert!(matches!(err, Error::Upstream { backend, .. } if backend == "10.0.0.2"));
}

#[tokio::test]
async fn a_response_head_timeout_is_a_504_counted_against_the_backend_and_retried() {
    let lb = balancer(Strategy::RoundRobin);
    let seen = Seen::default();
    let mut svc = ServiceBuilder::new()
        .layer(NextUpstreamLayer::new())
        .layer(LoadBalanceLayer::new(lb.clone()))
        // A timer that has always run out: an attempt that is not answered
        // at its first poll times out, deterministically.
        .layer(ResponseTimeoutLayer::new(Duration::from_secs(30), |_| {
            std::future::ready(())
        }))
        .service(backends(
            [("10.0.0.1", Answer::Hang)].into_iter().collect(),
            seen.clone(),
        ));
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.body(), "10.0.0.2");
    assert_eq!(lb.get("10.0.0.1").unwrap().load().failures(), 1);
    assert_eq!(lb.get("10.0.0.1").unwrap().load().in_flight(), 0);

    // Without retries the timeout is the answer: 504, naming the backend.
    let lb = balancer(Strategy::RoundRobin);
    let mut svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(ResponseTimeoutLayer::new(Duration::from_secs(30), |_| {
            std::future::ready(())
        }))
        .service_fn(|_: Request<()>| std::future::pending::<Result<Response<()>, BoxError>>());
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { backend, waited_for: "the response head", .. } if backend == "10.0.0.1"),
        "{err:?}"
    );
    assert_eq!(err.status_code(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(lb.get("10.0.0.1").unwrap().load().failures(), 1);
}

#[tokio::test]
async fn a_connect_timeout_from_the_client_is_a_timeout_error() {
    let lb = balancer(Strategy::RoundRobin);
    let mut svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .service_fn(|_: Request<()>| async {
            // hyper-util's HttpConnector reports its connect timeout so.
            let timed_out = io::Error::new(io::ErrorKind::TimedOut, "connect timeout");
            Err::<Response<()>, BoxError>(Box::new(io::Error::other(timed_out)))
        });
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { backend, source: Some(_), .. } if backend == "10.0.0.1"),
        "{err:?}"
    );
    assert_eq!(err.status_code(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(lb.get("10.0.0.1").unwrap().load().failures(), 1);
}

#[tokio::test]
async fn a_retry_overrules_the_sticky_cookie_and_reissues_it_for_the_backend_that_served() {
    let lb = balancer(Strategy::RoundRobin);
    let sticky = StickyCookie::new("lb", Secret::generate().unwrap()).unwrap();
    let mut cookies = http::HeaderMap::new();
    sticky.insert(&mut cookies, "10.0.0.3").unwrap();
    let set_cookie = cookies[header::SET_COOKIE].to_str().unwrap();
    let pair = set_cookie.split(';').next().unwrap().to_owned();

    let seen = Seen::default();
    let mut svc = ServiceBuilder::new()
        .layer(NextUpstreamLayer::new())
        .layer(LoadBalanceLayer::new(lb.clone()).sticky(sticky.clone()))
        .service(backends(
            [("10.0.0.3", Answer::Refused)].into_iter().collect(),
            seen.clone(),
        ));
    let req = Request::builder()
        .header(header::COOKIE, &pair)
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let served = res.body().clone();
    assert_eq!(ids(&seen)[0], "10.0.0.3");
    assert_ne!(served, "10.0.0.3");
    // The new cookie names the backend that served.
    let verified = sticky
        .verify(&cookie_header(&res))
        .expect("a fresh sticky cookie");
    assert_eq!(verified.id(), served);
}

/// The response's `Set-Cookie`, sent back as a `Cookie` header.
fn cookie_header<B>(res: &Response<B>) -> http::HeaderMap {
    let set_cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        header::COOKIE,
        set_cookie.split(';').next().unwrap().parse().unwrap(),
    );
    headers
}

#[tokio::test]
async fn a_request_refused_for_what_it_is_is_not_retried() {
    let lb = balancer(Strategy::RoundRobin);
    let seen = Seen::default();
    let attempts = seen.clone();
    let mut svc = ServiceBuilder::new()
        .layer(NextUpstreamLayer::new())
        .layer(LoadBalanceLayer::new(lb))
        .service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
            let id = req.extensions().get::<Member>().unwrap().id().to_owned();
            attempts.lock().unwrap().push((id, Bytes::new(), 0));
            async {
                Err::<Response<String>, BoxError>(Box::new(Error::BadRequest {
                    reason: "two Host lines".into(),
                }))
            }
        });
    let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
    assert!(matches!(err, Error::BadRequest { .. }));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn without_load_balance_inside_only_an_explicit_tries_allows_retries() {
    let calls = Arc::new(AtomicU64::new(0));
    let make = |tries| {
        let calls = calls.clone();
        ServiceBuilder::new()
            .layer(NextUpstreamLayer::new().tries(tries))
            .service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<Response<()>, BoxError>(
                        io::Error::from(io::ErrorKind::ConnectionRefused).into(),
                    )
                }
            })
    };
    let err = make(0).oneshot(get()).await.unwrap_err();
    assert!(matches!(err, Error::Upstream { .. }));
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1);
    make(3).oneshot(get()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

proptest::proptest! {
    /// Successive retries of one request visit every backend that is up
    /// exactly once, starting with the strategy's own pick, whatever the
    /// strategy, set, down states and key.
    #[test]
    fn successive_retries_visit_every_up_backend_exactly_once(
        strategy in proptest::sample::select(Strategy::NAMES.to_vec()),
        down in proptest::collection::vec(proptest::bool::ANY, 1..8),
        key in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
    ) {
        let strategy: Strategy = strategy.parse().unwrap();
        let ids: Vec<String> = (0..down.len()).map(|i| format!("10.0.0.{}", i + 1)).collect();
        let lb = LoadBalancer::new(strategy, ids.iter().map(|id| format!("http://{id}"))).unwrap();
        for (id, &is_down) in ids.iter().zip(&down) {
            if is_down {
                lb.mark_down(id).unwrap();
            }
        }
        let key = key.as_deref();
        let up = down.iter().filter(|d| !**d).count();
        let mut tried: Vec<String> = Vec::new();
        loop {
            let refs: Vec<&str> = tried.iter().map(String::as_str).collect();
            match lb.pick_excluding(key, &refs) {
                Ok(member) => {
                    proptest::prop_assert!(member.is_up());
                    proptest::prop_assert!(!tried.contains(&member.id().to_owned()));
                    tried.push(member.id().to_owned());
                }
                Err(error) => {
                    let all_tried = matches!(error, Error::AllBackendsDown { .. });
                    proptest::prop_assert!(all_tried, "{}", error);
                    break;
                }
            }
            proptest::prop_assert!(tried.len() <= up);
        }
        proptest::prop_assert_eq!(tried.len(), up);
    }
}

/// A body of three chunks and trailers, its length declared.
struct Chunks(std::collections::VecDeque<Frame<Bytes>>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(9)
    }
}

#[tokio::test]
async fn a_buffered_body_of_many_chunks_is_replayed_whole_with_its_trailers() {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let body = Chunks(
        [
            Frame::data(Bytes::from_static(b"one")),
            Frame::data(Bytes::from_static(b"two")),
            Frame::data(Bytes::from_static(b"six")),
            Frame::trailers(trailers),
        ]
        .into(),
    );
    let lb = balancer(Strategy::RoundRobin);
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    let mut svc = ServiceBuilder::new()
        .layer(NextUpstreamLayer::new())
        .layer(LoadBalanceLayer::new(lb))
        .service_fn(move |req: Request<ReplayBody<Chunks>>| {
            let log = log.clone();
            async move {
                let id = req.extensions().get::<Member>().unwrap().id().to_owned();
                assert_eq!(req.body().size_hint().exact(), Some(9));
                let collected = req.into_body().collect().await.unwrap();
                let trailer = collected
                    .trailers()
                    .and_then(|t| t.get("x-checksum"))
                    .map(|v| v.to_str().unwrap().to_owned());
                log.lock()
                    .unwrap()
                    .push((id.clone(), collected.to_bytes(), trailer));
                if id == "10.0.0.1" {
                    return Err::<Response<()>, BoxError>(
                        io::Error::from(io::ErrorKind::ConnectionReset).into(),
                    );
                }
                Ok(Response::new(()))
            }
        });
    let req = Request::put("/doc").body(body).unwrap();
    svc.ready().await.unwrap().call(req).await.unwrap();
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 2);
    for (_, bytes, trailer) in received.iter() {
        assert_eq!(bytes, &Bytes::from_static(b"onetwosix"));
        assert_eq!(trailer.as_deref(), Some("abc"));
    }
    assert_eq!(received[1].0, "10.0.0.2");
}

#[tokio::test]
async fn never_sent_lets_a_client_say_which_errors_left_the_request_unsent() {
    // A connect timeout, as hyper-util reports it: a timeout that reached
    // nothing. By default it counts as sent, so a POST is not retried...
    let timed_out_connecting = || {
        let seen = Seen::default();
        let log = seen.clone();
        let svc = tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
            let id = req.extensions().get::<Member>().unwrap().id().to_owned();
            log.lock().unwrap().push((id.clone(), Bytes::new(), 0));
            async move {
                if id == "10.0.0.1" {
                    let connect = io::Error::new(io::ErrorKind::TimedOut, "connect timeout");
                    return Err::<Response<String>, BoxError>(Box::new(connect));
                }
                Ok(Response::new(id))
            }
        });
        (svc, seen)
    };
    let (inner, seen) = timed_out_connecting();
    let mut svc = ServiceBuilder::new()
        .layer(NextUpstreamLayer::new())
        .layer(LoadBalanceLayer::new(balancer(Strategy::RoundRobin)))
        .service(inner);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(post(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotRetried { source, .. } if matches!(**source, Error::Timeout { .. }))
    );
    assert_eq!(err.status_code(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(ids(&seen), ["10.0.0.1"]);

    // ...unless the client's classifier says it never left.
    let (inner, seen) = timed_out_connecting();
    let mut svc = ServiceBuilder::new()
        .layer(NextUpstreamLayer::new().never_sent(|e| e.to_string() == "connect timeout"))
        .layer(LoadBalanceLayer::new(balancer(Strategy::RoundRobin)))
        .service(inner);
    let res = svc.ready().await.unwrap().call(post(b"x")).await.unwrap();
    assert_eq!(res.body(), "10.0.0.2");
    assert_eq!(ids(&seen), ["10.0.0.1", "10.0.0.2"]);
}

/// A user's own extension, for the test below.
#[derive(Clone, Debug, PartialEq)]
struct Tenant(&'static str);

#[tokio::test]
async fn every_attempt_gets_the_clients_head_and_extensions_whatever_the_map_holds() {
    // With only the client's address in the map (what the crate's server
    // puts there) and with an extension of the user's beside it.
    for tenant in [None, Some(Tenant("blue"))] {
        let lb = balancer(Strategy::RoundRobin);
        let peer: std::net::SocketAddr = "192.0.2.7:4444".parse().unwrap();
        let mut req = Request::builder()
            .uri("/a?b=c")
            .header("x-user", "u1")
            .header("x-user", "u2")
            .body(Full::<Bytes>::default())
            .unwrap();
        let mut secret = http::HeaderValue::from_static("Bearer s3cr3t");
        secret.set_sensitive(true);
        req.headers_mut().insert(header::AUTHORIZATION, secret);
        req.extensions_mut().insert(ClientAddr(peer));
        if let Some(tenant) = &tenant {
            req.extensions_mut().insert(tenant.clone());
        }
        type Attempt = (
            String,
            String,
            Vec<String>,
            Option<ClientAddr>,
            Option<Tenant>,
            Option<(String, bool)>,
        );
        let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
        let seen = attempts.clone();
        let mut svc = ServiceBuilder::new()
            .layer(NextUpstreamLayer::new())
            .layer(LoadBalanceLayer::new(lb.clone()))
            .service(tower::service_fn(
                move |req: Request<ReplayBody<Full<Bytes>>>| {
                    let id = req.extensions().get::<Member>().unwrap().id().to_owned();
                    let users = req
                        .headers()
                        .get_all("x-user")
                        .iter()
                        .map(|v| v.to_str().unwrap().to_owned())
                        .collect();
                    seen.lock().unwrap().push((
                        id.clone(),
                        req.uri().to_string(),
                        users,
                        req.extensions().get::<ClientAddr>().copied(),
                        req.extensions().get::<Tenant>().cloned(),
                        req.headers()
                            .get(header::AUTHORIZATION)
                            .map(|v| (v.to_str().unwrap().to_owned(), v.is_sensitive())),
                    ));
                    async move {
                        if id == "10.0.0.1" {
                            Err(BoxError::from(io::Error::from(
                                io::ErrorKind::ConnectionRefused,
                            )))
                        } else {
                            Ok(Response::new(id))
                        }
                    }
                },
            ));
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.body(), "10.0.0.2");
        let attempts = attempts.lock().unwrap();
        assert_eq!(attempts.len(), 2);
        for (attempt, id) in attempts.iter().zip(["10.0.0.1", "10.0.0.2"]) {
            assert_eq!(attempt.0, id);
            assert_eq!(attempt.1, "/a?b=c");
            assert_eq!(attempt.2, ["u1", "u2"]);
            assert_eq!(attempt.3, Some(ClientAddr(peer)));
            assert_eq!(attempt.4, tenant);
            assert_eq!(attempt.5, Some(("Bearer s3cr3t".to_owned(), true)));
        }
        // The refusal counted against the first backend (the retry kept
        // this layer's say over statuses, and errors count at once).
        assert_eq!(lb.get("10.0.0.1").unwrap().load().failures(), 1);
    }
}
