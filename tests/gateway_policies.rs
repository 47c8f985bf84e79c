//! The gateway's protective policies from tower (`--concurrency-limit`,
//! `--load-shed`, `--rate-limit`) over loopback sockets: what they refuse
//! is answered `503` with `Retry-After` and never reaches a backend.

#[path = "../examples/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tower::ServiceBuilder;
use tower_lb::layer::{DirectorLayer, LoadBalanceLayer, ProxyDirector};
use tower_lb::{Backend, LoadBalancer, Strategy};

use support::policy::{parse_concurrency_limit, parse_rate_limit, Policies};

/// A backend that reports each request as it arrives and answers only when
/// the test lets one through the gate: requests in flight for as long as
/// the test wants, with no timing involved.
async fn gated_backend() -> (SocketAddr, mpsc::UnboundedReceiver<String>, Arc<Semaphore>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived, arrivals) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let open = Arc::clone(&gate);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let arrived = arrived.clone();
            let gate = Arc::clone(&open);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let arrived = arrived.clone();
                    let gate = Arc::clone(&gate);
                    async move {
                        let _ = arrived.send(req.uri().path().to_owned());
                        gate.acquire().await.unwrap().forget();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done\n"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, arrivals, gate)
}

/// The gateway's stack with `policies`, in front of `backend`.
async fn protected_gateway(policies: Policies, backend: SocketAddr) -> (SocketAddr, LoadBalancer) {
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        [Backend::new(&format!("http://{backend}"))
            .unwrap()
            .with_id("a")
            .unwrap()],
    )
    .unwrap();
    let stack = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(support::Upstream::new());
    let stack = support::policy::protect(policies, stack);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(support::serve_proxy(listener, stack));
    (addr, lb)
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: String,
}

async fn get(proxy: SocketAddr, path: &str) -> Answer {
    let req = Request::get(format!("http://{proxy}{path}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = support::client().request(req).await.unwrap();
    let status = res.status();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

const REFUSED: &str = "503 Service Unavailable: the gateway is over its limit, retry later\n";

#[tokio::test]
async fn over_the_concurrency_limit_with_load_shed_is_answered_503_at_once() {
    let (backend, mut arrivals, gate) = gated_backend().await;
    let policies = Policies {
        concurrency_limit: Some(2),
        load_shed: true,
        ..Policies::default()
    };
    let (proxy, lb) = protected_gateway(policies, backend).await;

    let first = tokio::spawn(get(proxy, "/1"));
    let second = tokio::spawn(get(proxy, "/2"));
    let mut arrived = vec![
        arrivals.recv().await.unwrap(),
        arrivals.recv().await.unwrap(),
    ];
    arrived.sort();
    assert_eq!(arrived, ["/1", "/2"]);

    // Two in flight: the third and fourth are shed, not queued.
    for path in ["/3", "/4"] {
        let shed = get(proxy, path).await;
        assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.retry_after.as_deref(), Some("1"));
        assert_eq!(shed.body, REFUSED);
    }
    assert!(
        arrivals.try_recv().is_err(),
        "a shed request reached the backend"
    );

    gate.add_permits(2);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(second.await.unwrap().status, StatusCode::OK);
    // Permits are back: the next request goes through.
    let next = tokio::spawn(get(proxy, "/5"));
    assert_eq!(arrivals.recv().await.unwrap(), "/5");
    gate.add_permits(1);
    let next = next.await.unwrap();
    assert_eq!(
        (next.status, next.body.as_str()),
        (StatusCode::OK, "done\n")
    );
    // The refusals never touched the balancer's counters.
    let load = lb.get("a").unwrap().load().clone();
    assert_eq!(
        (load.successes(), load.failures(), load.in_flight()),
        (3, 0, 0)
    );
}

#[tokio::test]
async fn over_the_concurrency_limit_without_load_shed_a_request_waits_its_turn() {
    let (backend, mut arrivals, gate) = gated_backend().await;
    let policies = Policies {
        concurrency_limit: Some(1),
        ..Policies::default()
    };
    let (proxy, _lb) = protected_gateway(policies, backend).await;

    let first = tokio::spawn(get(proxy, "/1"));
    assert_eq!(arrivals.recv().await.unwrap(), "/1");
    let second = tokio::spawn(get(proxy, "/2"));
    // While the first holds the only permit the second does not reach the
    // backend (a bounded wait: proving a negative needs one).
    let early = tokio::time::timeout(Duration::from_millis(150), arrivals.recv()).await;
    assert!(early.is_err(), "the second request passed the limit");

    gate.add_permits(1);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(arrivals.recv().await.unwrap(), "/2");
    gate.add_permits(1);
    let second = second.await.unwrap();
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.retry_after, None);
}

#[tokio::test]
async fn over_the_rate_limit_is_answered_503_with_the_period_as_retry_after() {
    let backend = support::spawn_backend("a").await.unwrap();
    let policies = Policies {
        rate_limit: Some((3, Duration::from_secs(60))),
        ..Policies::default()
    };
    let (proxy, lb) = protected_gateway(policies, backend).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let answer = get(proxy, &format!("/r/{i}")).await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(answer.retry_after.as_deref(), Some("60"));
            assert_eq!(answer.body, REFUSED);
        } else {
            assert_eq!(answer.retry_after, None);
        }
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 503, 503, 503]);
    // One bucket for the whole gateway, though the server clones the
    // stack per connection and per request: the backend saw three.
    assert_eq!(lb.get("a").unwrap().load().successes(), 3);
}

#[tokio::test]
async fn without_policies_the_stack_answers_as_before() {
    let backend = support::spawn_backend("a").await.unwrap();
    let (proxy, lb) = protected_gateway(Policies::default(), backend).await;
    for i in 0..20 {
        let answer = get(proxy, &format!("/r/{i}")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, format!("a: GET /r/{i} host={proxy}\n"));
    }
    // tower-lb's own errors still pass through unchanged.
    lb.mark_down("a").unwrap();
    let down = get(proxy, "/").await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        down.body,
        "503 Service Unavailable: no backend is available\n"
    );
    assert_eq!(down.retry_after, None);
}

#[test]
fn policy_flags_parse_and_refuse_bad_values_clearly() {
    assert_eq!(parse_rate_limit("100"), Ok((100, Duration::from_secs(1))));
    assert_eq!(parse_rate_limit("5/60"), Ok((5, Duration::from_secs(60))));
    for bad in ["", "0", "-1", "5/0", "5/", "x/1", "5/3601", "1000001"] {
        let error = parse_rate_limit(bad).unwrap_err();
        assert_eq!(
            error,
            format!("--rate-limit {bad}: takes N or N/SECONDS, like 100 or 5/60")
        );
    }
    assert_eq!(parse_concurrency_limit("64"), Ok(64));
    assert!(parse_concurrency_limit("0").is_err());
    assert!(parse_concurrency_limit("many").is_err());
    let shed_alone = Policies {
        load_shed: true,
        ..Policies::default()
    };
    assert!(shed_alone
        .check()
        .unwrap_err()
        .contains("give --concurrency-limit N too"));
    let both = Policies {
        concurrency_limit: Some(8),
        load_shed: true,
        rate_limit: Some((5, Duration::from_secs(60))),
    };
    assert_eq!(both.check(), Ok(()));
    assert_eq!(
        both.describe(),
        "concurrency limit 8 (shed), rate limit 5 per 60s"
    );
}
