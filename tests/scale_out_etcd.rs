//! Many gateway replicas that agree, proven on a real etcd.
//!
//! A real `etcd` (Debian's etcd-server) on loopback, backends that register
//! under a key prefix with a one-second lease and keep it alive, and two
//! gateway replicas, each with its own `LoadBalancer` following the prefix
//! through `LoadBalancer::follow`, and its own hyper proxy. The replicas
//! share nothing but etcd and the sticky-cookie secret. Checked:
//!
//! * both converge on the same membership after a backend is added, and
//!   after one dies (its lease expires; nobody deregisters it);
//! * 10,000 affinity keys reach the same backend through either replica;
//! * a sticky cookie issued by one replica is honoured by the other, before,
//!   during and after a secret rotation rolled through both;
//! * with etcd stopped the replicas keep serving their last membership, and
//!   catch up with what changed meanwhile once it is back.
//!
//! Opt-in, since it needs etcd: `cargo test --test scale_out_etcd -- --ignored`
//! (`.ci/run` does it). With etcd missing or unable to start it fails.

#[path = "../examples/support/etcd.rs"]
mod etcd;
#[path = "../examples/support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_lb::layer::{
    strip_hop_by_hop_response, DirectorLayer, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector,
};
use tower_lb::sticky::{AffinityKey, Secret, Secrets, StickyCookie};
use tower_lb::{Backend, LoadBalancer, Strategy};

use etcd::{BackendProcess, Etcd, EtcdServer};

const PREFIX: &str = "/tower-lb/scale-out-test/backends/";
/// The lease TTL, in seconds (etcd's minimum).
const TTL: i64 = 1;
/// How long replicas may take to see a new backend: one lease TTL (it
/// takes tens of milliseconds).
const ADD_SEEN_WITHIN: Duration = Duration::from_secs(TTL as u64);
/// How long replicas may take to drop a dead backend: its lease must run
/// out (the TTL, less the time since its last renewal), etcd must sweep it
/// (every 500 ms) and the watch deliver it; with room for a busy machine.
const DEATH_SEEN_WITHIN: Duration = Duration::from_secs(TTL as u64 + 2);
/// How long replicas may take to catch up once etcd is back: its leader
/// election, the leases it restores expiring one TTL later, the feed's
/// reconnect and relist.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(TTL as u64 + 5);

/// The strategies whose picks replicas must agree on, each checked on the
/// same 10,000 keys. Adding one (Maglev) is one line.
fn agreeing_strategies() -> Vec<Strategy> {
    vec![Strategy::consistent_hash(), Strategy::maglev()]
}

const KEYS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian's etcd-server): cargo test --test scale_out_etcd -- --ignored"]
async fn replicas_following_etcd_agree_through_a_backend_death_and_an_etcd_restart() {
    let mut server = EtcdServer::start()
        .await
        .unwrap_or_else(|e| panic!("etcd could not start: {e}"));
    let etcd = Etcd::new(&server.endpoint());

    // Two backends first; each is its own "process" (a runtime of its own).
    let mut backends = HashMap::new();
    for name in ["a", "b"] {
        backends.insert(
            name,
            BackendProcess::start(&etcd, PREFIX, name, 1, TTL).await,
        );
    }

    // The secret every replica is given (from the secret store, in production).
    let old_secret = Secret::generate().unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(Replica::start(&etcd, Secrets::new(old_secret.clone())).await);
    }
    converge(&replicas, &["a", "b"], ADD_SEEN_WITHIN).await;

    // Added, with weight 2: both replicas learn of it within the TTL.
    backends.insert("c", BackendProcess::start(&etcd, PREFIX, "c", 2, TTL).await);
    let took = converge(&replicas, &["a", "b", "c"], ADD_SEEN_WITHIN).await;
    eprintln!("a backend added: both replicas agreed after {took:?}");
    for gateway in replicas.iter().flat_map(|r| &r.gateways) {
        assert_eq!(
            gateway.lb.get("c").unwrap().weight(),
            2,
            "the weight came through"
        );
    }

    // 10,000 keys, through either replica's proxy.
    let timer = Instant::now();
    let routes = same_routes_through_both(&replicas, KEYS).await;
    eprintln!(
        "{KEYS} keys through both replicas agreed in {:?}",
        timer.elapsed()
    );
    let owners: BTreeSet<&str> = routes.values().map(String::as_str).collect();
    assert_eq!(
        owners,
        BTreeSet::from(["a", "b", "c"]),
        "every backend owns keys"
    );

    // Sticky cookies: issued by A, honoured by B; then the secret rolls.
    sticky_cookies_cross_replicas_through_a_rotation(&replicas, &old_secret).await;

    // A backend dies: no deregistration, its lease expires.
    let died = Instant::now();
    backends.remove("b").unwrap().kill();
    let took = converge(&replicas, &["a", "c"], DEATH_SEEN_WITHIN).await;
    eprintln!(
        "a backend died: both replicas dropped it after {took:?} ({:?} since it died)",
        died.elapsed()
    );
    let after = same_routes_through_both(&replicas, 500).await;
    for (key, backend) in &routes {
        if backend != "b" {
            assert_eq!(&after[key], backend, "{key} moved though its backend lives");
        }
    }

    // etcd goes away, for longer than a lease: the replicas keep serving
    // what they knew.
    server.stop();
    let during = Instant::now();
    let mut served = BTreeSet::new();
    let mut user = 0;
    while during.elapsed() < Duration::from_millis(1500) {
        for replica in &replicas {
            for gateway in &replica.gateways {
                assert_eq!(gateway.members(), ["a", "c"]);
                user += 1;
                let answer = get(gateway.addr, None, Some(&format!("user-{user}"))).await;
                assert_eq!(answer.status, StatusCode::OK);
                served.insert(answer.backend);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, BTreeSet::from(["a".to_owned(), "c".to_owned()]));
    // Meanwhile c dies and d starts: nobody can tell etcd yet.
    backends.remove("c").unwrap().kill();
    backends.insert("d", BackendProcess::start(&etcd, PREFIX, "d", 1, TTL).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for replica in &replicas {
        for gateway in &replica.gateways {
            assert_eq!(gateway.members(), ["a", "c"]);
        }
    }

    // etcd is back: d registers, c's lease runs out, and both replicas see it.
    server
        .resume()
        .await
        .unwrap_or_else(|e| panic!("etcd could not restart: {e}"));
    let took = converge(&replicas, &["a", "d"], CATCH_UP_WITHIN).await;
    eprintln!("etcd restarted: both replicas caught up after {took:?}");
    same_routes_through_both(&replicas, 500).await;
    for replica in &replicas {
        for gateway in &replica.gateways {
            assert!(!gateway.follow.is_finished(), "the discovery feed ended");
        }
    }

    drop(backends);
    drop(replicas);
    drop(server);
}

/// One gateway replica: for each agreeing strategy a load balancer that
/// follows etcd, behind a proxy of its own. Replicas share nothing but etcd
/// and the secret.
struct Replica {
    gateways: Vec<Gateway>,
    secrets: Secrets,
}

struct Gateway {
    lb: LoadBalancer,
    addr: SocketAddr,
    follow: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Gateway {
    fn members(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .lb
            .members()
            .iter()
            .map(|m| m.id().to_owned())
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.follow.abort();
        self.server.abort();
    }
}

impl Replica {
    async fn start(etcd: &Etcd, secrets: Secrets) -> Replica {
        let sticky = StickyCookie::new("lb", secrets.clone()).unwrap();
        let mut gateways = Vec::new();
        for strategy in agreeing_strategies() {
            let lb = LoadBalancer::new(strategy, Vec::<Backend>::new()).unwrap();
            let feed = etcd::discover(etcd.clone(), PREFIX);
            let following = lb.follow(feed).on_rejected(|change, error| {
                panic!("the load balancer refused {change:?}: {error}")
            });
            let follow = tokio::spawn(async move {
                following.await.unwrap();
            });
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stack = RotatingStack {
                lb: lb.clone(),
                sticky: sticky.clone(),
                upstream: support::Upstream::new(),
            };
            let server = tokio::spawn(support::serve_proxy(listener, stack));
            gateways.push(Gateway {
                lb,
                addr,
                follow,
                server,
            });
        }
        Replica { gateways, secrets }
    }

    /// This replica's sticky-cookie secrets, rotated while it serves.
    fn secrets(&self) -> &Secrets {
        &self.secrets
    }
}

/// The gateway's stack; its sticky cookie reads the replica's rotating
/// secrets on every request.
#[derive(Clone)]
struct RotatingStack {
    lb: LoadBalancer,
    sticky: StickyCookie,
    upstream: support::Upstream,
}

fn user_key(req: &Request<tower_lb::proxy::RequestBody>) -> Option<AffinityKey<'_>> {
    req.headers().get("x-user").map(|v| v.as_bytes().into())
}

impl Service<Request<tower_lb::proxy::RequestBody>> for RotatingStack {
    type Response = Response<Incoming>;
    type Error = tower_lb::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, tower_lb::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tower_lb::proxy::RequestBody>) -> Self::Future {
        let sticky = self.sticky.clone();
        let stack = ServiceBuilder::new()
            .layer(ModifyResponseLayer::new(
                strip_hop_by_hop_response::<Incoming>,
            ))
            .layer(
                LoadBalanceLayer::new(self.lb.clone())
                    .key(user_key)
                    .sticky(sticky),
            )
            .layer(DirectorLayer::new(ProxyDirector::new()))
            .service(self.upstream.clone());
        Box::pin(stack.oneshot(req))
    }
}

/// Waits until every load balancer of every replica holds exactly
/// `expected`, failing after `within`; how long it took.
async fn converge(replicas: &[Replica], expected: &[&str], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let all = replicas
            .iter()
            .flat_map(|r| &r.gateways)
            .all(|g| g.members() == expected);
        if all {
            return start.elapsed();
        }
        let seen: Vec<Vec<String>> = replicas
            .iter()
            .flat_map(|r| &r.gateways)
            .map(Gateway::members)
            .collect();
        assert!(
            start.elapsed() < within,
            "replicas did not converge on {expected:?} within {within:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Answer {
    status: StatusCode,
    backend: String,
    set_cookie: Option<String>,
}

async fn get(proxy: SocketAddr, cookie: Option<&str>, user: Option<&str>) -> Answer {
    send(&support::client(), proxy, cookie, user).await
}

async fn send(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    proxy: SocketAddr,
    cookie: Option<&str>,
    user: Option<&str>,
) -> Answer {
    let mut req = Request::get(format!("http://{proxy}/scale-out"));
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    let res = client
        .request(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let answer = Answer {
        status: res.status(),
        backend: res
            .headers()
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        set_cookie: support::cookie_pair(&res),
    };
    res.into_body().collect().await.unwrap();
    answer
}

/// Checks that each of the same `KEYS` affinity keys reaches the same
/// backend through either replica, for every agreeing strategy: the first
/// `over_http` keys through the replicas' proxies (where the answer must
/// also be the load balancer's pick), the rest by asking each replica's
/// load balancer. Returns the route of each key (for the first strategy).
async fn same_routes_through_both(
    replicas: &[Replica],
    over_http: usize,
) -> HashMap<String, String> {
    let mut first_routes = None;
    for (s, strategy) in agreeing_strategies().into_iter().enumerate() {
        let mut routes: Vec<Vec<String>> = Vec::new();
        for replica in replicas {
            let gateway = &replica.gateways[s];
            let mut seen = routes_through(gateway.addr, over_http).await;
            for (key, backend) in seen.iter().enumerate() {
                let pick = gateway.lb.pick(Some(user(key).as_bytes())).unwrap();
                assert_eq!(pick.id(), backend, "the proxy's answer is the pick");
            }
            seen.extend((over_http..KEYS).map(|key| {
                let pick = gateway.lb.pick(Some(user(key).as_bytes())).unwrap();
                pick.id().to_owned()
            }));
            routes.push(seen);
        }
        let differ = (0..KEYS).filter(|&k| routes[0][k] != routes[1][k]).count();
        assert_eq!(
            differ, 0,
            "{differ} of {KEYS} keys reach another backend through the second replica ({strategy:?})"
        );
        first_routes.get_or_insert_with(|| {
            (0..KEYS)
                .map(|k| (user(k), routes[0][k].clone()))
                .collect::<HashMap<_, _>>()
        });
    }
    first_routes.unwrap_or_default()
}

fn user(key: usize) -> String {
    format!("user-{key}")
}

/// The backend each of the first `keys` keys reaches through `proxy`.
async fn routes_through(proxy: SocketAddr, keys: usize) -> Vec<String> {
    const WORKERS: usize = 16;
    let client = support::client();
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for key in (worker..keys).step_by(WORKERS) {
                let answer = send(&client, proxy, None, Some(&user(key))).await;
                assert_eq!(answer.status, StatusCode::OK, "key {key}");
                seen.push((key, answer.backend));
            }
            seen
        }));
    }
    let mut routes = vec![String::new(); keys];
    for task in tasks {
        for (key, backend) in task.await.unwrap() {
            routes[key] = backend;
        }
    }
    routes
}

/// A cookie issued by replica A reaches the same backend through replica B
/// (without a cookie B would spread those requests); then the secret rolls
/// through both in the two phases that keep every cookie valid.
async fn sticky_cookies_cross_replicas_through_a_rotation(
    replicas: &[Replica],
    old_secret: &Secret,
) {
    let (a, b) = (&replicas[0], &replicas[1]);
    let (a_addr, b_addr) = (a.gateways[0].addr, b.gateways[0].addr);

    // Without a cookie or key, B spreads requests (round robin fallback).
    let mut spread = BTreeSet::new();
    for _ in 0..6 {
        spread.insert(get(b_addr, None, None).await.backend);
    }
    assert!(spread.len() > 1, "B sends keyless requests to {spread:?}");

    let issued = get(a_addr, None, None).await;
    let old_cookie = issued.set_cookie.expect("A issues a sticky cookie");
    let pinned = issued.backend;
    honoured(b_addr, &old_cookie, &pinned, false).await;

    // Phase 1, on A then B: accept the new secret, still issue with the old.
    let new_secret = Secret::generate().unwrap();
    a.secrets().add_previous(new_secret.clone()).unwrap();
    honoured(a_addr, &old_cookie, &pinned, false).await;
    honoured(b_addr, &old_cookie, &pinned, false).await;
    b.secrets().add_previous(new_secret.clone()).unwrap();

    // Phase 2, on A then B: issue with the new secret, accept the old.
    a.secrets().rotate(new_secret.clone()).unwrap();
    // A honours the old cookie and re-issues it under the new secret...
    let reissued = honoured(a_addr, &old_cookie, &pinned, true).await;
    let new_cookie = reissued.expect("A re-issues an old-secret cookie");
    assert_ne!(new_cookie, old_cookie);
    // ...which B, still in phase 1, already honours.
    honoured(b_addr, &new_cookie, &pinned, true).await;
    b.secrets().rotate(new_secret.clone()).unwrap();
    honoured(b_addr, &new_cookie, &pinned, false).await;
    honoured(b_addr, &old_cookie, &pinned, true).await;
    let fresh = get(b_addr, None, None).await;
    let fresh_cookie = fresh.set_cookie.expect("B issues cookies");
    honoured(a_addr, &fresh_cookie, &fresh.backend, false).await;

    // Phase 3, once old cookies have expired: the old secret is retired.
    for replica in replicas {
        assert!(replica.secrets().retire(old_secret));
    }
    honoured(a_addr, &new_cookie, &pinned, false).await;
    honoured(b_addr, &new_cookie, &pinned, false).await;
    let stale = get(b_addr, Some(&old_cookie), None).await;
    assert!(
        stale.set_cookie.is_some(),
        "an old-secret cookie is no cookie now: a fresh one is issued"
    );
}

/// Sends four requests with `cookie` through `proxy`; each must reach
/// `backend`. Whether a fresh cookie came back must be `reissue`; returns it.
async fn honoured(proxy: SocketAddr, cookie: &str, backend: &str, reissue: bool) -> Option<String> {
    let mut fresh = None;
    for _ in 0..4 {
        let answer = get(proxy, Some(cookie), None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.backend, backend,
            "the cookie was not honoured by {proxy}"
        );
        assert_eq!(
            answer.set_cookie.is_some(),
            reissue,
            "re-issue expected: {reissue}, got {:?}",
            answer.set_cookie
        );
        fresh = answer.set_cookie;
    }
    fresh
}
