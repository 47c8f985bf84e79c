//! The load-balance layer as health's source of truth: which outcomes count,
//! gRPC statuses, drain with sticky cookies, sticky stats, the picked
//! backend on the response, and in-flight counts until the exchange ends.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_lb::health::{HealthPolicy, ManualClock};
use tower_lb::layer::{
    FailurePolicy, InFlightBodyLayer, InFlightGuard, LoadBalanceLayer, PickedBackend,
};
use tower_lb::sticky::StickyCookie;
use tower_lb::{Error, LoadBalancer, Strategy};

fn lb(ids: &[&str]) -> LoadBalancer {
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        ids.iter().map(|id| format!("http://{id}")),
    )
    .unwrap();
    lb.set_health_policy(
        HealthPolicy::default()
            .max_fails(100)
            .clock(ManualClock::new()),
    );
    lb
}

fn answer(status: u16, headers: &[(&str, &str)]) -> Response<()> {
    let mut res = Response::builder().status(status);
    for (k, v) in headers {
        res = res.header(*k, *v);
    }
    res.body(()).unwrap()
}

/// Sends one request through LoadBalance to an inner service answering
/// `res` (or failing with `err`); returns the backend's (successes, failures).
async fn outcome(
    policy: FailurePolicy,
    inner: impl Fn() -> Result<Response<()>, Error> + Clone + Send + 'static,
) -> (u64, u64) {
    let lb = lb(&["a"]);
    let _ = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()).failure_policy(policy))
        .service(service_fn(move |_req: Request<()>| {
            let inner = inner.clone();
            async move { inner() }
        }))
        .oneshot(Request::new(()))
        .await;
    let load = lb.get("a").unwrap().load().clone();
    (load.successes(), load.failures())
}

fn io(kind: std::io::ErrorKind) -> Error {
    Error::Upstream {
        backend: String::new(),
        source: std::io::Error::from(kind).into(),
    }
}

#[tokio::test]
async fn only_the_backends_own_faults_count() {
    use std::io::ErrorKind::*;
    let d = FailurePolicy::default;
    for kind in [
        ConnectionRefused,
        ConnectionReset,
        ConnectionAborted,
        TimedOut,
    ] {
        assert_eq!(
            outcome(d(), move || Err(io(kind))).await,
            (0, 1),
            "{kind:?}"
        );
    }
    for kind in [UnexpectedEof, Other, InvalidData] {
        assert_eq!(
            outcome(d(), move || Err(io(kind))).await,
            (0, 0),
            "{kind:?}"
        );
    }
    for code in [502, 503, 504] {
        assert_eq!(outcome(d(), move || Ok(answer(code, &[]))).await, (0, 1));
    }
    for code in [200, 400, 404, 429, 500] {
        assert_eq!(outcome(d(), move || Ok(answer(code, &[]))).await, (1, 0));
    }
    let refused = || {
        Err(Error::BadRequest {
            reason: "no".into(),
        })
    };
    assert_eq!(outcome(d(), refused).await, (0, 0));
}

/// An error wrapping an io reset of the *request body* (hyper: "error from
/// user's Body stream") is the client's, whatever lies beneath it.
#[tokio::test]
async fn a_reset_under_a_request_body_error_is_the_clients() {
    #[derive(Debug)]
    struct UserBody(std::io::Error);
    impl std::fmt::Display for UserBody {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error from user's Body stream")
        }
    }
    impl std::error::Error for UserBody {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let err = || {
        Err(Error::Upstream {
            backend: String::new(),
            source: Box::new(UserBody(std::io::ErrorKind::ConnectionReset.into())),
        })
    };
    assert_eq!(outcome(FailurePolicy::default(), err).await, (0, 0));
}

#[tokio::test]
async fn failure_policies_take_closures_for_statuses_errors_and_grpc_codes() {
    let limit = 500;
    let policy = FailurePolicy::new(move |s| s.as_u16() >= limit)
        .errors(|e| matches!(e, Error::BadRequest { .. }))
        .grpc_codes(|code| code == 13);
    assert_eq!(
        outcome(policy.clone(), || Ok(answer(500, &[]))).await,
        (0, 1)
    );
    let bad = || Err(Error::BadRequest { reason: "x".into() });
    assert_eq!(outcome(policy.clone(), bad).await, (0, 1));
    let internal = || Ok(answer(200, &[("grpc-status", "13")]));
    assert_eq!(outcome(policy, internal).await, (0, 1));
}

#[tokio::test]
async fn grpc_status_in_the_headers_of_a_200_counts() {
    let d = FailurePolicy::default;
    let unavailable = || {
        Ok(answer(
            200,
            &[("content-type", "application/grpc"), ("grpc-status", "14")],
        ))
    };
    assert_eq!(outcome(d(), unavailable).await, (0, 1));
    let invalid_argument = || Ok(answer(200, &[("grpc-status", "3")]));
    assert_eq!(outcome(d(), invalid_argument).await, (1, 0));
}

type Frames =
    futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>>;

fn grpc_body(status: &str) -> StreamBody<Frames> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", status.parse().unwrap());
    StreamBody::new(futures_util::stream::iter(vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
        Ok(http_body::Frame::trailers(trailers)),
    ]))
}

#[tokio::test]
async fn grpc_status_in_the_trailers_counts_when_the_body_is_wrapped() {
    for (status, expected) in [("14", (0, 1)), ("0", (1, 0))] {
        let lb = lb(&["a"]);
        let svc = ServiceBuilder::new()
            .layer(InFlightBodyLayer::new())
            .layer(LoadBalanceLayer::new(lb.clone()).count_until_exchange_ends())
            .service(service_fn(move |_req: Request<()>| async move {
                let res = Response::builder()
                    .header(header::CONTENT_TYPE, "application/grpc")
                    .body(grpc_body(status))
                    .unwrap();
                Ok::<_, Infallible>(res)
            }));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        let load = lb.get("a").unwrap().load().clone();
        assert_eq!(
            (load.in_flight(), load.successes(), load.failures()),
            (1, 0, 0)
        );
        let collected = res.into_body().collect().await.unwrap();
        assert!(collected.trailers().is_some());
        assert_eq!(
            (load.successes(), load.failures()),
            expected,
            "grpc-status {status}"
        );
        assert_eq!(load.in_flight(), 0);
    }
}

#[tokio::test]
async fn a_dropped_body_ends_the_count_and_an_upgrade_keeps_its_guard() {
    let lb = lb(&["a"]);
    let svc = |status: u16| {
        ServiceBuilder::new()
            .layer(InFlightBodyLayer::new())
            .layer(LoadBalanceLayer::new(lb.clone()).count_until_exchange_ends())
            .service(service_fn(move |_req: Request<()>| async move {
                let res = Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(b"long")))
                    .unwrap();
                Ok::<_, Infallible>(res)
            }))
    };
    let load = lb.get("a").unwrap().load().clone();
    let res = svc(200).oneshot(Request::new(())).await.unwrap();
    assert_eq!(load.in_flight(), 1);
    drop(res);
    assert_eq!(load.in_flight(), 0);

    let mut res = svc(101).oneshot(Request::new(())).await.unwrap();
    let tunnel = res.extensions_mut().remove::<InFlightGuard>().unwrap();
    drop(res);
    assert_eq!(load.in_flight(), 1, "the tunnel is still open");
    drop(tunnel);
    assert_eq!(load.in_flight(), 0);
}

#[tokio::test]
async fn the_response_names_the_backend_that_served_it() {
    let lb = lb(&["a", "b"]);
    let svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb))
        .service(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        ids.push(
            res.extensions()
                .get::<PickedBackend>()
                .unwrap()
                .id()
                .to_owned(),
        );
    }
    assert_eq!(ids, ["a", "b", "a"]);
}

#[tokio::test]
async fn a_draining_backend_keeps_its_sticky_clients_and_gets_no_new_ones() {
    let lb = lb(&["a", "b"]);
    let sticky = StickyCookie::new("lb", tower_lb::sticky::Secret::generate().unwrap()).unwrap();
    let pin_a = sticky.set_cookie("a").unwrap();
    let pin_a = pin_a
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let svc = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()).sticky(sticky))
        .service(service_fn(|req: Request<()>| async move {
            let id = req
                .extensions()
                .get::<tower_lb::Member>()
                .unwrap()
                .id()
                .to_owned();
            Ok::<_, Infallible>(Response::new(id))
        }));
    let call = |cookie: Option<String>| {
        let svc = svc.clone();
        async move {
            let mut req = Request::builder();
            if let Some(c) = cookie {
                req = req.header(header::COOKIE, c);
            }
            svc.oneshot(req.body(()).unwrap())
                .await
                .unwrap()
                .into_body()
        }
    };
    lb.set_weight("a", 0).unwrap();
    for _ in 0..3 {
        assert_eq!(call(Some(pin_a.clone())).await, "a");
        assert_eq!(call(None).await, "b");
    }
    let stats = lb.stats();
    assert_eq!((stats[0].sticky_hits, stats[0].sticky_misses), (3, 0));
    assert_eq!((stats[1].sticky_hits, stats[1].sticky_misses), (0, 3));
    // Ejected, the sticky client falls back to b, counted on a.
    lb.set_weight("a", 1).unwrap();
    lb.set_health_policy(HealthPolicy::default().clock(ManualClock::new()));
    lb.report(&lb.get("a").unwrap(), tower_lb::Outcome::Failure);
    assert_eq!(call(Some(pin_a.clone())).await, "b");
    assert_eq!(lb.stats()[0].sticky_fallbacks, 1);
}
