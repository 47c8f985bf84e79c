//! Membership from etcd, and two gateway replicas that agree.
//!
//! ```text
//! cargo run --example etcd_discovery                              # starts its own etcd (needs etcd-server)
//! cargo run --example etcd_discovery -- --etcd http://127.0.0.1:2379
//! ```
//!
//! Three backends register under `/tower-lb/example/backends/` with a
//! two-second lease that each keeps alive. Two gateway replicas, each its
//! own `LoadBalancer` (consistent hashing) and its own proxy, follow that
//! prefix with `LoadBalancer::follow`; they share nothing but etcd and the
//! sticky-cookie secret. The example shows both replicas routing the same
//! users to the same backends, a cookie issued by one replica honoured by
//! the other, and a backend killed without deregistering: its lease
//! expires and both replicas drop it.
//!
//! Options: `--etcd URL` (an etcd to use instead of starting one; the
//! example then writes only under its prefix), `--users N` (default 8).

#[path = "support/etcd.rs"]
mod etcd;
mod support;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_lb::layer::{
    strip_hop_by_hop_response, DirectorLayer, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector,
};
use tower_lb::sticky::{AffinityKey, Secret, StickyCookie};
use tower_lb::{Backend, LoadBalancer, Strategy};

use etcd::{BackendProcess, Etcd, EtcdServer};

const PREFIX: &str = "/tower-lb/example/backends/";
const TTL: i64 = 2;

struct Options {
    etcd: Option<String>,
    users: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        etcd: None,
        users: 8,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--etcd" => o.etcd = Some(args.next().ok_or("--etcd needs a URL")?),
            "--users" => {
                o.users = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or("--users takes a number from 1 to 1000")?
            }
            "-h" | "--help" => {
                return Err("usage: etcd_discovery [--etcd URL] [--users N]".into());
            }
            other => return Err(format!("unknown option `{other}` (try --help)")),
        }
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("etcd_discovery: {message}");
            ExitCode::FAILURE
        }
    }
}

fn user_key(req: &Request<tower_lb::proxy::RequestBody>) -> Option<AffinityKey<'_>> {
    req.headers().get("x-user").map(|v| v.as_bytes().into())
}

/// A gateway replica: a load balancer following etcd, and a proxy in front.
async fn replica(
    etcd: &Etcd,
    secret: &Secret,
) -> Result<(LoadBalancer, SocketAddr), etcd::BoxError> {
    let lb = LoadBalancer::new(Strategy::consistent_hash(), Vec::<Backend>::new())?;
    let following = lb
        .follow(etcd::discover(etcd.clone(), PREFIX))
        .on_rejected(|change, error| eprintln!("refused {change:?}: {error}"));
    tokio::spawn(following);
    let stack = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(
            strip_hop_by_hop_response::<Incoming>,
        ))
        .layer(
            LoadBalanceLayer::new(lb.clone())
                .key(user_key)
                .sticky(StickyCookie::new("lb", secret.clone())?),
        )
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(support::Upstream::new());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(support::serve_proxy(listener, stack));
    Ok((lb, addr))
}

fn members(lb: &LoadBalancer) -> Vec<String> {
    let mut ids: Vec<String> = lb.members().iter().map(|m| m.id().to_owned()).collect();
    ids.sort();
    ids
}

/// Waits until both replicas hold `expected`; how long that took.
async fn converge(
    a: &LoadBalancer,
    b: &LoadBalancer,
    expected: &[&str],
) -> Result<Duration, etcd::BoxError> {
    let start = Instant::now();
    while members(a) != expected || members(b) != expected {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "the replicas did not converge on {expected:?}: {:?} and {:?}",
                members(a),
                members(b)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

/// The backend that answered, and the sticky cookie if one was set.
async fn ask(
    proxy: SocketAddr,
    user: Option<&str>,
    cookie: Option<&str>,
) -> Result<(String, Option<String>), etcd::BoxError> {
    let mut req = Request::get(format!("http://{proxy}/hello"));
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    let res = support::client()
        .request(req.body(Full::<Bytes>::default())?)
        .await?;
    let backend = res
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let cookie = support::cookie_pair(&res);
    res.into_body().collect().await?;
    Ok((backend, cookie))
}

async fn show_users(users: usize, a: SocketAddr, b: SocketAddr) -> Result<(), etcd::BoxError> {
    for i in 0..users {
        let user = format!("user-{i}");
        let (via_a, _) = ask(a, Some(&user), None).await?;
        let (via_b, _) = ask(b, Some(&user), None).await?;
        let verdict = if via_a == via_b { "same" } else { "DIFFERENT" };
        println!("  {user:>8}  via A -> {via_a:<10} via B -> {via_b:<10} {verdict}");
        if via_a != via_b {
            return Err("the replicas disagree".into());
        }
    }
    Ok(())
}

async fn run(o: Options) -> Result<(), etcd::BoxError> {
    // An etcd of our own unless one was given; killed when `_server` drops.
    let (_server, endpoint) = match o.etcd {
        Some(url) => (None, url),
        None => {
            let server = EtcdServer::start().await?;
            let endpoint = server.endpoint();
            println!("etcd        {endpoint}  (started for this run)");
            (Some(server), endpoint)
        }
    };
    let etcd = Etcd::new(&endpoint);

    let mut backends = Vec::new();
    for name in ["backend-1", "backend-2", "backend-3"] {
        let process = BackendProcess::start(&etcd, PREFIX, name, 1, TTL).await;
        println!(
            "{name}   http://{}  registered as {PREFIX}{name} (lease {TTL} s, kept alive)",
            process.addr()
        );
        backends.push(process);
    }

    // Both replicas take the secret from the same place (a vault, an env
    // variable, base64 in `TOWER_LB_SECRET`); generated here when unset.
    let secret = match std::env::var("TOWER_LB_SECRET") {
        Ok(encoded) => encoded.parse::<Secret>()?,
        Err(_) => Secret::generate()?,
    };
    let (lb_a, addr_a) = replica(&etcd, &secret).await?;
    let (lb_b, addr_b) = replica(&etcd, &secret).await?;
    println!("gateway A   http://{addr_a}  following {PREFIX}");
    println!("gateway B   http://{addr_b}  following {PREFIX}");

    let all = ["backend-1", "backend-2", "backend-3"];
    let took = converge(&lb_a, &lb_b, &all).await?;
    println!("\nboth replicas see {all:?} (after {took:?})");
    println!("\nthe same users, through either replica (consistent hashing on x-user):");
    show_users(o.users, addr_a, addr_b).await?;

    let (pinned, cookie) = ask(addr_a, None, None).await?;
    let cookie = cookie.ok_or("gateway A set no cookie")?;
    println!("\nA pinned a new client to {pinned} with a sticky cookie;");
    for _ in 0..3 {
        let (via_b, _) = ask(addr_b, None, Some(&cookie)).await?;
        println!("  with that cookie, B sends it to {via_b}");
        if via_b != pinned {
            return Err("B did not honour A's cookie".into());
        }
    }

    let killed = backends.remove(1);
    killed.kill();
    let died = Instant::now();
    println!("\nbackend-2 killed (nobody deregisters it; its lease runs out)");
    let rest = ["backend-1", "backend-3"];
    converge(&lb_a, &lb_b, &rest).await?;
    println!(
        "both replicas see {rest:?} {:.1} s after the kill",
        died.elapsed().as_secs_f64()
    );
    show_users(o.users, addr_a, addr_b).await?;
    Ok(())
}
