//! The source article's gateway, in Rust: a reverse proxy on loopback,
//! balancing real HTTP backends with tower-lb.
//!
//! ```text
//! cargo run --example gateway                       # 2 backends, round robin, serve until Ctrl-C
//! cargo run --example gateway -- --strategy weighted_round_robin --backends 3 --demo
//! cargo run --example gateway -- --strategy consistent_hash --demo
//! cargo run --example gateway -- --backend http://127.0.0.1:9001=3 --backend http://127.0.0.1:9002
//! ```
//!
//! `--backend URL[=WEIGHT]` (repeatable) balances services that are already
//! running instead of starting built-in ones; without it the gateway starts
//! its own backends, so it works on a fresh machine.
//!
//! Options: `--strategy NAME` (random, round_robin, weighted_round_robin,
//! consistent_hash, least_request), `--backends N` (default 2), `--weights 5,1,1` (default:
//! the first backend 3, the others 1, for weighted_round_robin; all 1
//! otherwise), `--listen ADDR` (default 127.0.0.1:8080, or any free port if
//! that is taken), `--demo` (send a batch of requests, print who answered,
//! exit), `--requests N` (for `--demo`, default 12), `--sticky` (insert a
//! sticky cookie `lb`, as HAProxy's `cookie lb insert`; the secret comes from
//! `TOWER_LB_SECRET`, at least 32 random bytes in base64 or hex, made with
//! `openssl rand -base64 32`, or is generated for this run), `--workers N`
//! (default: one per CPU this process may run on; see
//! `examples/support/workers.rs`: nginx's worker model, a current-thread
//! runtime and an `SO_REUSEPORT` listener per worker).
//!
//! The affinity key is the `x-user` request header: with `consistent_hash`
//! every request of one user reaches the same backend.

mod support;
#[path = "support/workers.rs"]
mod workers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_lb::layer::{DirectorLayer, LoadBalanceLayer, ProxyDirector};
use tower_lb::sticky::{AffinityKey, Secret, StickyCookie};
use tower_lb::{Backend, LoadBalancer, Strategy};

struct Options {
    strategy: Strategy,
    /// `--backend URL[=WEIGHT]`: existing services to balance.
    external: Vec<Backend>,
    backends: usize,
    weights: Option<Vec<u32>>,
    listen: SocketAddr,
    demo: bool,
    requests: usize,
    sticky: bool,
    /// Worker threads, each with its own runtime and listener.
    workers: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        strategy: Strategy::RoundRobin,
        external: Vec::new(),
        backends: 2,
        weights: None,
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        demo: false,
        requests: 12,
        sticky: false,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--strategy" => {
                o.strategy = value("--strategy")?.parse().map_err(|e| format!("{e}"))?
            }
            "--backends" => {
                o.backends = value("--backends")?
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or("--backends takes a number from 1 to 64")?
            }
            "--weights" => {
                o.weights = Some(
                    value("--weights")?
                        .split(',')
                        .map(|w| w.trim().parse::<u32>())
                        .collect::<Result<_, _>>()
                        .map_err(|_| "--weights takes numbers like 5,1,1")?,
                )
            }
            "--listen" => {
                o.listen = value("--listen")?
                    .parse()
                    .map_err(|_| "--listen takes an address like 127.0.0.1:8080")?
            }
            "--requests" => {
                o.requests = value("--requests")?
                    .parse()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .ok_or("--requests takes a number from 1 to 100000")?
            }
            "--backend" => o
                .external
                .push(support::parse_backend(&value("--backend")?)?),
            "--workers" => {
                o.workers = value("--workers")?
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or("--workers takes a number from 1 to 256")?
            }
            "--demo" => o.demo = true,
            "--sticky" => o.sticky = true,
            "-h" | "--help" => {
                return Err(
                    "usage: gateway [--strategy NAME] [--backend URL[=WEIGHT]]... [--backends N] \
                     [--weights 5,1,1] [--listen ADDR] [--demo] [--requests N] [--sticky] \
                     [--workers N]"
                        .into(),
                )
            }
            other => return Err(format!("unknown option `{other}` (try --help)")),
        }
    }
    // `--weights` names one weight per backend, so it sets the count too.
    if let Some(w) = &o.weights {
        if !(1..=64).contains(&w.len()) {
            return Err("--weights takes 1 to 64 weights".into());
        }
        o.backends = w.len();
    }
    Ok(o)
}

/// The affinity key: the `x-user` header.
fn user_key(req: &Request<Incoming>) -> Option<AffinityKey<'_>> {
    req.headers().get("x-user").map(|v| v.as_bytes().into())
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
            eprintln!("gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(o: Options) -> Result<(), Box<dyn std::error::Error>> {
    let weights = o.weights.clone().unwrap_or_else(|| {
        (0..o.backends)
            .map(|i| match (o.strategy, i) {
                (Strategy::WeightedRoundRobin, 0) => 3,
                _ => 1,
            })
            .collect()
    });

    let mut backends = o.external.clone();
    for backend in &backends {
        println!(
            "{:>10}  {}  weight {}",
            backend.id(),
            backend.uri(),
            backend.weight()
        );
    }
    let built_in = if backends.is_empty() {
        &weights[..]
    } else {
        &[]
    };
    for (i, &weight) in built_in.iter().enumerate() {
        let name = format!("backend-{}", i + 1);
        let addr = support::spawn_backend(&name).await?;
        let backend = Backend::new(&format!("http://{addr}"))?
            .with_id(name.clone())?
            .with_weight(weight)?;
        println!("{name:>10}  http://{addr}  weight {weight}");
        backends.push(backend);
    }
    let lb = LoadBalancer::new(o.strategy, backends)?;

    let mut balance = LoadBalanceLayer::new(lb.clone()).key(user_key);
    if o.sticky {
        // Base64 or hex: an environment variable cannot hold every byte
        // string (NUL), and a refusal says how to make a good secret.
        let secret = match std::env::var("TOWER_LB_SECRET") {
            Ok(encoded) => encoded.parse::<Secret>()?,
            Err(std::env::VarError::NotPresent) => Secret::generate()?,
            Err(e) => return Err(format!("TOWER_LB_SECRET: {e}").into()),
        };
        balance = balance.sticky(StickyCookie::new("lb", secret)?);
    }
    // Each worker builds its own stack: its own upstream pool.
    let serve = move |listener: TcpListener| {
        let stack = ServiceBuilder::new()
            .layer(balance.clone())
            .layer(DirectorLayer::new(ProxyDirector::new()))
            .service(support::WorkerUpstream::new());
        support::serve_proxy(listener, stack)
    };

    let sockets = match workers::bind(o.listen, o.workers) {
        Ok(s) => s,
        Err(e) if !o.demo => {
            eprintln!("cannot listen on {} ({e}); using a free port", o.listen);
            workers::bind(([127, 0, 0, 1], 0).into(), o.workers)?
        }
        Err(_) => workers::bind(([127, 0, 0, 1], 0).into(), o.workers)?,
    };
    let proxy = sockets[0].local_addr()?;
    println!(
        "   gateway  http://{proxy}  strategy {}{}",
        o.strategy,
        if o.sticky { ", sticky cookie `lb`" } else { "" }
    );
    workers::spawn(sockets, serve)?;

    if o.demo {
        return demo(proxy, o.requests, o.strategy, o.sticky).await;
    }
    println!("\ntry: curl -i http://{proxy}/hello   (Ctrl-C to stop)");
    tokio::signal::ctrl_c().await?;
    println!("stopped");
    Ok(())
}

/// Sends `requests` requests through the proxy and prints who answered.
/// With `sticky`, each of the four users keeps the cookie it was given, as a
/// browser would.
async fn demo(
    proxy: SocketAddr,
    requests: usize,
    strategy: Strategy,
    sticky: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = support::client();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut jar: BTreeMap<String, String> = BTreeMap::new();
    println!();
    for i in 0..requests {
        let user = format!("user-{}", i % 4);
        let mut req = Request::get(format!("http://{proxy}/demo/{i}")).header("x-user", &user);
        if let Some(cookie) = jar.get(&user) {
            req = req.header("cookie", cookie);
        }
        let res = client.request(req.body(Full::<Bytes>::default())?).await?;
        if sticky {
            if let Some(cookie) = support::cookie_pair(&res) {
                jar.insert(user.clone(), cookie);
            }
        }
        let status = res.status();
        let backend = res
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body = res.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            println!(
                "request {i:>3} ({user}) -> {status} {}",
                String::from_utf8_lossy(&body).trim()
            );
            continue;
        }
        println!("request {i:>3} ({user}) -> {backend}");
        *counts.entry(backend).or_default() += 1;
    }
    println!("\n{strategy}: requests per backend");
    // One `#` a request, scaled down so that the longest bar is 60 wide.
    let most = counts.values().copied().max().unwrap_or(0);
    for (backend, count) in &counts {
        let bar = if most <= 60 {
            *count
        } else {
            count * 60 / most
        };
        println!("{backend:>10}  {count:>4}  {}", "#".repeat(bar));
    }
    Ok(())
}
