//! The gateway's protective policies, taken from tower rather than
//! rewritten: a concurrency limit (`tower::limit::GlobalConcurrencyLimit`),
//! a rate limit (`tower::limit::RateLimit`) and load shedding
//! (`tower::load_shed`), wrapped around the whole balancing stack so that
//! they protect the gateway itself. Work refused by them is answered `503
//! Service Unavailable` with `Retry-After` (1 second when shed over the
//! concurrency limit, the rate's period over the rate limit), as nginx's
//! `limit_req` and `limit_conn` answer 503 by default.
//!
//! Outermost first (docs/design.md draws it):
//!
//! ```text
//! refusals → 503 ─ LoadShed? ─ GlobalConcurrencyLimit ─ Buffer ─ LoadShed ─ RateLimit ─ LoadBalance ─ Director ─ Upstream
//! ```
//!
//! * The concurrency limit counts requests in flight, from the call until
//!   the response head comes back (a WebSocket's tunnel, once `101` is
//!   sent, no longer counts). Over the limit a request waits for a permit,
//!   as in HAProxy's `maxconn` queue; with load shedding it is refused at
//!   once instead.
//! * The rate limit is one token bucket for the whole gateway. Tower's
//!   `RateLimit` keeps its state per service value and the server clones
//!   the stack for every connection (and, on hyper's path, for every
//!   request), so it sits behind a `Buffer` (one shared worker) and a
//!   `LoadShed` of its own: over the rate a request is refused
//!   at once, like nginx's `limit_req` without `burst`, instead of piling up
//!   in the buffer.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tower::buffer::Buffer;
use tower::limit::rate::Rate;
use tower::limit::{GlobalConcurrencyLimitLayer, RateLimit};
use tower::load_shed::error::Overloaded;
use tower::load_shed::LoadShed;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

use super::ProxyBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A proxy stack as the server wants it.
pub type Protected<B = Incoming> =
    BoxCloneService<Request<tower_lb::proxy::RequestBody>, Response<ProxyBody<B>>, tower_lb::Error>;

/// How many requests may wait for the rate limiter's shared worker. They
/// wait only while it hands the previous one on, never for a token.
const RATE_LIMIT_QUEUE: usize = 1024;

/// Over the rate limit: the limiter's period, in seconds.
#[derive(Debug)]
struct OverRate {
    period: u64,
}

impl std::fmt::Display for OverRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "over the rate limit (period {}s)", self.period)
    }
}

impl std::error::Error for OverRate {}

/// What a client is told to wait before trying again when shed over the
/// concurrency limit, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// The policy flags of the gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policies {
    /// `--concurrency-limit N`: at most `N` requests in flight.
    pub concurrency_limit: Option<usize>,
    /// `--rate-limit N[/SECONDS]`: at most `N` requests per period.
    pub rate_limit: Option<(u64, Duration)>,
    /// `--load-shed`: refuse over the concurrency limit instead of waiting.
    pub load_shed: bool,
}

impl Policies {
    /// Whether any policy is on.
    pub fn any(&self) -> bool {
        self.concurrency_limit.is_some() || self.rate_limit.is_some()
    }

    /// The flags checked together: `--load-shed` sheds what the
    /// concurrency limit would queue, so it needs one.
    pub fn check(&self) -> Result<(), String> {
        if self.load_shed && self.concurrency_limit.is_none() {
            return Err(
                "--load-shed refuses what --concurrency-limit would queue: give --concurrency-limit N too"
                    .into(),
            );
        }
        Ok(())
    }

    /// A short description for the start-up banner.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.concurrency_limit {
            parts.push(format!(
                "concurrency limit {n} ({})",
                if self.load_shed { "shed" } else { "queue" }
            ));
        }
        if let Some((n, per)) = self.rate_limit {
            parts.push(format!("rate limit {n} per {}s", per.as_secs_f64()));
        }
        parts.join(", ")
    }
}

/// `--concurrency-limit N`: a number from 1 to 1,000,000.
pub fn parse_concurrency_limit(arg: &str) -> Result<usize, String> {
    arg.parse()
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))
        .ok_or_else(|| format!("--concurrency-limit {arg}: takes a number from 1 to 1000000"))
}

/// `--rate-limit N[/SECONDS]`: `N` requests (1 to 1,000,000) per `SECONDS`
/// (1 to 3,600; default 1).
pub fn parse_rate_limit(arg: &str) -> Result<(u64, Duration), String> {
    let bad = || format!("--rate-limit {arg}: takes N or N/SECONDS, like 100 or 5/60");
    let (n, secs) = match arg.split_once('/') {
        Some((n, secs)) => (n, secs),
        None => (arg, "1"),
    };
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    let secs: u64 = secs.trim().parse().map_err(|_| bad())?;
    if !(1..=1_000_000).contains(&n) || !(1..=3_600).contains(&secs) {
        return Err(bad());
    }
    Ok((n, Duration::from_secs(secs)))
}

/// Wraps `stack` (the balancing layers and the upstream) in `policies`.
/// Must run inside a tokio runtime: the rate limiter's buffer spawns its
/// worker.
pub fn protect<S, B>(policies: Policies, stack: S) -> Protected<B>
where
    S: Service<
            Request<tower_lb::proxy::RequestBody>,
            Response = Response<B>,
            Error = tower_lb::Error,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    let mut svc: BoxCloneService<
        Request<tower_lb::proxy::RequestBody>,
        Response<ProxyBody<B>>,
        BoxError,
    > = BoxCloneService::new(
        stack
            .map_response(|res| res.map(Either::Left))
            .map_err(BoxError::from),
    );
    if let Some((n, per)) = policies.rate_limit {
        let period = per.as_secs();
        let shed = LoadShed::new(RateLimit::new(svc, Rate::new(n, per))).map_err(
            move |error: BoxError| -> BoxError {
                if error.is::<Overloaded>() {
                    Box::new(OverRate { period })
                } else {
                    error
                }
            },
        );
        let shared = Buffer::new(shed, RATE_LIMIT_QUEUE);
        svc = BoxCloneService::new(shared);
    }
    if let Some(n) = policies.concurrency_limit {
        let limited = GlobalConcurrencyLimitLayer::new(n).layer(svc);
        svc = if policies.load_shed {
            BoxCloneService::new(LoadShed::new(limited))
        } else {
            BoxCloneService::new(limited)
        };
    }
    BoxCloneService::new(svc.map_result(answer_refusals).map_err(lb_error))
}

/// A policy's refusal becomes `503` with `Retry-After`.
fn answer_refusals<B>(
    result: Result<Response<ProxyBody<B>>, BoxError>,
) -> Result<Response<ProxyBody<B>>, BoxError> {
    match result {
        Err(error) if error.is::<Overloaded>() => Ok(refusal(RETRY_AFTER_SECS)),
        Err(error) => match error.downcast::<OverRate>() {
            // A new period's tokens come within one period.
            Ok(over) => Ok(refusal(over.period)),
            Err(error) => Err(error),
        },
        other => other,
    }
}

/// tower-lb's errors go on to the server as they are, which answers them
/// without naming a backend. Nothing else fails in the stack but the rate
/// limiter's buffer if its worker died (only a panic does that), which is
/// no backend's fault but answered as its failure: `502`.
fn lb_error(error: BoxError) -> tower_lb::Error {
    match error.downcast::<tower_lb::Error>() {
        Ok(error) => *error,
        Err(source) => tower_lb::Error::Upstream {
            backend: String::new(),
            source,
        },
    }
}

fn refusal<B>(retry_after_secs: u64) -> Response<ProxyBody<B>> {
    let text = "503 Service Unavailable: the gateway is over its limit, retry later\n";
    let mut res = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = res.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs),
    );
    res
}
