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
//! (runtime threads; default: one per CPU the process may run on, and on
//! one CPU a current-thread runtime).
//!
//! Passive health is on with nginx's defaults (`max_fails=1`,
//! `fail_timeout=10s`): stop a backend and its traffic moves to the others
//! after one failed request; start it again and it is back after 10 s.
//! A 502/503/504 counts against a backend only when the request moves on
//! to another backend because of it, as in nginx: one client asking for a
//! page that fails everywhere (or POSTing to one) cannot eject them all.
//!
//! Retries and timeouts are on (see `support/retry.rs`): a request that
//! fails on one backend with an error, a timeout or a 502/503/504 is retried
//! on the next, at most `--tries N` backends (default 3; 1 turns retries
//! off) within `--next-upstream-timeout DUR` (10s); `--connect-timeout DUR`
//! (2s) and `--response-timeout DUR` (30s) time each attempt, and
//! `--read-timeout DUR` (60s, nginx's `proxy_read_timeout`) each wait on a
//! response body from an `http://` backend, and a WebSocket tunnel quiet
//! both ways (`0`: no limit).
//! `--chaos` kills the first backend and restarts it every 200 ms: try
//! `cargo run --example gateway -- --chaos --demo --requests 200`, no request fails.
//!
//! TLS (examples/support/tls.rs): `--tls-cert FILE --tls-key FILE` (PEM)
//! serves HTTPS and WSS; the sticky cookie is then `Secure` and backends
//! see `X-Forwarded-Proto: https`. `https://` backends are verified against
//! the platform's CA certificates, or those in `--upstream-ca FILE`.
//!
//! Policies from tower (examples/support/policy.rs), around the whole
//! balancing stack: `--concurrency-limit N` (requests in flight; more wait),
//! `--load-shed` (over that limit answer 503 at once instead of waiting),
//! `--rate-limit N[/SECONDS]` (over the rate answer 503 at once). Refusals
//! carry `Retry-After`.
//!
//! The affinity key is the `x-user` request header: with `consistent_hash`
//! every request of one user reaches the same backend.
//!
//! The process allocates through mimalloc, as nginx allocates each
//! request's memory from its own pool rather than malloc: the library sets
//! no allocator, and docs/design.md ("The gateway's allocator") gives the
//! figures with and without it.

/// mimalloc's per-thread free lists: a request's allocations and frees,
/// made in bursts of 64 connections at a time, stay off glibc's slow path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_lb::layer::{DirectorLayer, LoadBalanceLayer, ProxyDirector, ReplayBody};
use tower_lb::proxy::RequestBody;
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
    retry: support::retry::RetryOptions,
    /// Runtime threads (`--workers N`).
    workers: usize,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    upstream_ca: Option<PathBuf>,
    policies: support::policy::Policies,
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
        retry: Default::default(),
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        tls_cert: None,
        tls_key: None,
        upstream_ca: None,
        policies: Default::default(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--strategy" => {
                o.strategy = value("--strategy")?.parse().map_err(|e| format!("{e}"))?
            }
            "--backends" => o.backends = count("--backends", value("--backends")?, 64)?,
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
            "--requests" => o.requests = count("--requests", value("--requests")?, 100_000)?,
            "--backend" => o
                .external
                .push(support::parse_backend(&value("--backend")?)?),
            "--workers" => o.workers = count("--workers", value("--workers")?, 256)?,
            "--demo" => o.demo = true,
            "--sticky" => o.sticky = true,
            "--tls-cert" => o.tls_cert = Some(value("--tls-cert")?.into()),
            "--tls-key" => o.tls_key = Some(value("--tls-key")?.into()),
            "--upstream-ca" => o.upstream_ca = Some(value("--upstream-ca")?.into()),
            "--concurrency-limit" => {
                o.policies.concurrency_limit = Some(support::policy::parse_concurrency_limit(
                    &value("--concurrency-limit")?,
                )?)
            }
            "--rate-limit" => {
                o.policies.rate_limit =
                    Some(support::policy::parse_rate_limit(&value("--rate-limit")?)?)
            }
            "--load-shed" => o.policies.load_shed = true,
            "-h" | "--help" => {
                return Err(format!(
                    "usage: gateway [--strategy NAME] [--backend URL[=WEIGHT]]... [--backends N] \
                     [--weights 5,1,1] [--listen ADDR] [--demo] [--requests N] [--sticky] \
                     [--workers N] \
                     [--tls-cert FILE --tls-key FILE] [--upstream-ca FILE] \
                     [--concurrency-limit N [--load-shed]] [--rate-limit N[/SECONDS]] {}",
                    support::retry::USAGE
                ))
            }
            other if o.retry.parse_flag(other, || value(other))? => {}
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
    if o.tls_cert.is_some() != o.tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    o.policies.check()?;
    Ok(o)
}

/// `flag`'s value: a number from 1 to `max`.
fn count(flag: &str, value: String, max: usize) -> Result<usize, String> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("{flag} takes a number from 1 to {max}"))
}

/// The affinity key's header, named once: a look-up by `&str` would check
/// and lower-case the name on every request.
static X_USER: http::HeaderName = http::HeaderName::from_static("x-user");

/// The affinity key: the `x-user` header.
fn user_key(req: &Request<ReplayBody<RequestBody>>) -> Option<AffinityKey<'_>> {
    req.headers().get(&X_USER).map(|v| v.as_bytes().into())
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    // One thread per core the gateway may run on. On one core a
    // current-thread runtime: no work-stealing scheduler, no thread to hand
    // wake-ups to (measured: docs/benchmarks.md).
    let runtime = match options.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The gateway's stack over `upstream`: retries on the next backend,
/// balancing, the response timeout and the director. A macro rather than a
/// function, so that each upstream's stack keeps its own type without a
/// bound spelled out for every layer.
macro_rules! stack_over {
    ($o:expr, $balance:expr, $https:expr, $upstream:expr) => {
        ServiceBuilder::new()
            .layer($o.retry.next_upstream())
            .layer($balance)
            .layer($o.retry.response_timeout())
            .layer(DirectorLayer::new(ProxyDirector::new().https($https)))
            .service($upstream)
    };
}

async fn run(o: Options) -> Result<(), Box<dyn std::error::Error>> {
    let tls = match (&o.tls_cert, &o.tls_key) {
        (Some(cert), Some(key)) => Some(support::tls::server_config_from_files(cert, key)?),
        _ => None,
    };
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
        let addr = o.retry.spawn_backend(&name, i).await?;
        let backend = Backend::new(&format!("http://{addr}"))?
            .with_id(name.clone())?
            .with_weight(weight)?;
        println!("{name:>10}  http://{addr}  weight {weight}");
        backends.push(backend);
    }
    let need_roots = backends
        .iter()
        .any(|b| b.uri().scheme_str() == Some("https"));
    // Passive ejection with nginx's defaults: max_fails=1, fail_timeout=10s.
    let lb = LoadBalancer::new(o.strategy, backends)?
        .with_health_policy(tower_lb::health::HealthPolicy::default());

    let mut balance = LoadBalanceLayer::new(lb).key(user_key);
    if o.sticky {
        // Base64 or hex: an environment variable cannot hold every byte
        // string (NUL), and a refusal says how to make a good secret.
        let secret = match std::env::var("TOWER_LB_SECRET") {
            Ok(encoded) => encoded.parse::<Secret>()?,
            Err(std::env::VarError::NotPresent) => Secret::generate()?,
            Err(e) => return Err(format!("TOWER_LB_SECRET: {e}").into()),
        };
        balance = balance.sticky(StickyCookie::new("lb", secret)?.secure(tls.is_some()));
    }
    // Plain http backends get the per-worker client that drives each
    // backend connection from the request's own task (tower_lb's
    // `WorkerUpstream`); a set with `https://` backends gets hyper-util's
    // client with a TLS connector. Each, behind tower's policies or not,
    // gives the stack a type of its own: without policies nothing stands
    // between the layers on a request's path. (`Either`s choosing between
    // the clients and between the policies or none, with the response body
    // mapped into an `Either` under each, moved every request and response
    // more often: 2-3 % of the gateway's CPU, docs/benchmarks.md, round 13.)
    let https = tls.is_some();
    if need_roots {
        let upstream = support::tls::upstream_with(
            support::tls::upstream_roots(o.upstream_ca.as_deref(), true)?,
            o.retry.connect_timeout,
        )?
        .map_err(tower_lb::BoxError::from);
        serve(&o, tls, stack_over!(o, balance, https, upstream)).await
    } else {
        serve(&o, tls, stack_over!(o, balance, https, o.retry.upstream())).await
    }
}

/// Listens, serves `stack` there (behind tower's policies if any were asked
/// for: they box it; without any, nothing is boxed), and runs the demo or
/// waits for Ctrl-C.
async fn serve<S, B>(
    o: &Options,
    tls: Option<Arc<rustls::ServerConfig>>,
    stack: S,
) -> Result<(), Box<dyn std::error::Error>>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = tower_lb::Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower_lb::BoxError>,
{
    let listener = match TcpListener::bind(o.listen).await {
        Ok(l) => l,
        Err(e) if !o.demo => {
            eprintln!("cannot listen on {} ({e}); using a free port", o.listen);
            TcpListener::bind("127.0.0.1:0").await?
        }
        Err(_) => TcpListener::bind("127.0.0.1:0").await?,
    };
    let proxy = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "   gateway  {scheme}://{proxy}  strategy {}{}{}",
        o.strategy,
        if o.sticky { ", sticky cookie `lb`" } else { "" },
        if o.policies.any() {
            format!(", {}", o.policies.describe())
        } else {
            String::new()
        }
    );
    println!("            {}", o.retry.describe());
    let demo_client = support::tls::demo_client(o.tls_cert.as_deref())?;
    let tls_port = tls.is_some().then_some(proxy.port());
    let policies = o.policies.any().then_some(o.policies);
    match (tls, policies) {
        (Some(config), Some(policies)) => tokio::spawn(support::tls::serve_proxy_tls(
            listener,
            config,
            support::policy::protect(policies, stack),
        )),
        (Some(config), None) => {
            tokio::spawn(support::tls::serve_proxy_tls(listener, config, stack))
        }
        (None, Some(policies)) => tokio::spawn(support::serve_proxy(
            listener,
            support::policy::protect(policies, stack),
        )),
        (None, None) => tokio::spawn(support::serve_proxy(listener, stack)),
    };

    if o.demo {
        // A certificate names a host, not an address: `localhost` over TLS.
        let base = match tls_port {
            Some(port) => format!("https://localhost:{port}"),
            None => format!("http://{proxy}"),
        };
        return demo(demo_client, &base, o.requests, o.strategy, o.sticky).await;
    }
    match &o.tls_cert {
        Some(cert) => println!(
            "\ntry: curl -i --cacert {} https://localhost:{}/hello   (Ctrl-C to stop)",
            cert.display(),
            proxy.port()
        ),
        None => println!("\ntry: curl -i http://{proxy}/hello   (Ctrl-C to stop)"),
    }
    tokio::signal::ctrl_c().await?;
    println!("stopped");
    Ok(())
}

/// Sends `requests` requests through the proxy and prints who answered.
/// With `sticky`, each of the four users keeps the cookie it was given, as a
/// browser would.
async fn demo(
    client: support::tls::DemoClient,
    base: &str,
    requests: usize,
    strategy: Strategy,
    sticky: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut jar: BTreeMap<String, String> = BTreeMap::new();
    println!();
    for i in 0..requests {
        let user = format!("user-{}", i % 4);
        let mut req = Request::get(format!("{base}/demo/{i}")).header("x-user", &user);
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
