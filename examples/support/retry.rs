//! The gateway's retries and timeouts: flags, defaults, and the layers and
//! upstream client they configure.
//!
//! Defaults, nginx-like for a gateway: try up to 3 backends on an error, a
//! timeout or a 502/503/504 (`proxy_next_upstream error timeout http_502
//! http_503 http_504; proxy_next_upstream_tries 3`), start no new attempt
//! after 10 s (`proxy_next_upstream_timeout`), connect within 2 s
//! (`proxy_connect_timeout`), response head within 30 s, no pause of more
//! than 60 s in a response body from a plain-http backend
//! (`proxy_read_timeout`; `WorkerUpstream`'s, not applied to `https` ones).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tower_lb::layer::{NextUpstreamLayer, ReplayBody, ResponseTimeoutLayer};

use super::WorkerUpstream;
use tower_lb::proxy::TimerPool;

/// What the retry and timeout flags set.
#[derive(Clone, Copy, Debug)]
pub struct RetryOptions {
    /// Backends tried per request, in all (0: every backend once).
    pub tries: usize,
    /// No new attempt after this long (`None`: no limit).
    pub next_upstream_timeout: Option<Duration>,
    /// For the connector (`None`: the OS's).
    pub connect_timeout: Option<Duration>,
    /// For each attempt's response head (`None`: no limit).
    pub response_timeout: Option<Duration>,
    /// For each wait on a response body from an http backend (`None`: no
    /// limit).
    pub read_timeout: Option<Duration>,
    /// Kill the first backend and restart it, over and over.
    pub chaos: bool,
}

/// The flags, for `--help`.
pub const USAGE: &str = "[--tries N] [--next-upstream-timeout DUR] [--connect-timeout DUR] \
                         [--response-timeout DUR] [--read-timeout DUR] [--chaos]   \
                         (DUR: 500ms, 2s; 0 = no limit)";

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            tries: 3,
            next_upstream_timeout: Some(Duration::from_secs(10)),
            connect_timeout: Some(Duration::from_secs(2)),
            response_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(tower_lb::proxy::DEFAULT_READ_TIMEOUT),
            chaos: false,
        }
    }
}

impl RetryOptions {
    /// Takes `flag`'s value if it is one of ours: `Ok(true)` if it was.
    pub fn parse_flag(
        &mut self,
        flag: &str,
        value: impl FnOnce() -> Result<String, String>,
    ) -> Result<bool, String> {
        match flag {
            "--tries" => {
                self.tries =
                    value()?.parse().ok().filter(|n| *n <= 64).ok_or(
                        "--tries takes a number from 0 (every backend) to 64 (1: no retries)",
                    )?
            }
            "--next-upstream-timeout" => self.next_upstream_timeout = duration(flag, &value()?)?,
            "--connect-timeout" => self.connect_timeout = duration(flag, &value()?)?,
            "--response-timeout" => self.response_timeout = duration(flag, &value()?)?,
            "--read-timeout" => self.read_timeout = duration(flag, &value()?)?,
            "--chaos" => self.chaos = true,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Retries on the next backend, as configured.
    pub fn next_upstream(&self) -> NextUpstreamLayer {
        let layer = NextUpstreamLayer::new()
            .tries(self.tries)
            // A short body is read whole first: nginx's client_body_timeout.
            .body_timeout(tower_lb::proxy::DEFAULT_CLIENT_BODY_TIMEOUT, TimerPool)
            // The budget's start shares the clock reading the rest of the
            // request's first poll makes.
            .clock(tower_lb::proxy::task_now)
            .retry_on_status(|s| matches!(s.as_u16(), 502..=504))
            // Both clients know when they never connected (refused, connect
            // timeout, DNS): such a request may be retried, POST included.
            .never_sent(|e| {
                e.is::<tower_lb::proxy::ConnectError>()
                    || e.downcast_ref::<hyper_util::client::legacy::Error>()
                        .is_some_and(|e| e.is_connect())
            });
        match self.next_upstream_timeout {
            Some(budget) => layer.timeout(budget),
            None => layer,
        }
    }

    /// The per-attempt response-head timeout (a day when there is no limit),
    /// on tokio timers kept from one request to the next.
    pub fn response_timeout(&self) -> ResponseTimeoutLayer<TimerPool> {
        ResponseTimeoutLayer::new(
            self.response_timeout
                .unwrap_or(Duration::from_secs(24 * 60 * 60)),
            TimerPool,
        )
    }

    /// The upstream client the gateway runs for plain http backends, its
    /// connects timed as configured.
    pub fn upstream(&self) -> WorkerUpstream<ReplayBody<tower_lb::proxy::RequestBody>> {
        WorkerUpstream::new()
            .read_timeout(self.read_timeout)
            .connect_timeout(self.connect_timeout)
    }

    /// Starts backend number `index` (from 0) for the gateway: the usual
    /// one, or with `--chaos` for the first, one that is killed and
    /// restarted every 200 ms (down first), to watch retries hide it.
    pub async fn spawn_backend(&self, name: &str, index: usize) -> std::io::Result<SocketAddr> {
        if !(self.chaos && index == 0) {
            return super::spawn_backend(name).await;
        }
        let backend = KillableBackend::spawn(name).await?;
        let addr = backend.addr;
        println!("{name:>10}  (--chaos: killed and restarted every 200 ms)");
        tokio::spawn(async move {
            loop {
                backend.kill();
                tokio::time::sleep(Duration::from_millis(200)).await;
                if backend.start().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(addr)
    }

    /// One line for the gateway's banner.
    pub fn describe(&self) -> String {
        let show = |d: Option<Duration>| d.map_or("none".to_owned(), |d| format!("{d:?}"));
        format!(
            "retries: tries {} (on error, timeout, 502/503/504), budget {}; timeouts: connect {}, response {}, body read {} (http backends)",
            if self.tries == 0 {
                "all".to_owned()
            } else {
                self.tries.to_string()
            },
            show(self.next_upstream_timeout),
            show(self.connect_timeout),
            show(self.response_timeout),
            show(self.read_timeout),
        )
    }
}

/// `500ms`, `2s` or a bare number of seconds; `0` is no limit.
fn duration(flag: &str, text: &str) -> Result<Option<Duration>, String> {
    let bad = || format!("{flag} takes a duration like 500ms or 2s (0: no limit)");
    let (number, millis) = match text.strip_suffix("ms") {
        Some(n) => (n, true),
        None => (text.strip_suffix('s').unwrap_or(text), false),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    Ok(match (n, millis) {
        (0, _) => None,
        (n, true) => Some(Duration::from_millis(n)),
        (n, false) => Some(Duration::from_secs(n)),
    })
}

/// A backend that can crash: [`kill`](Self::kill) closes its listener and
/// every connection at once, as a crashed process does; [`start`](Self::start)
/// listens again on the same port. It answers like [`super::spawn_backend`]'s
/// (`x-backend: NAME`, a body naming itself), and echoes a POST's body.
pub struct KillableBackend {
    pub name: &'static str,
    pub addr: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl KillableBackend {
    pub async fn spawn(name: &str) -> std::io::Result<KillableBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let backend = KillableBackend {
            name: Box::leak(name.to_owned().into_boxed_str()),
            addr: listener.local_addr()?,
            tasks: Arc::default(),
        };
        backend.serve(listener);
        Ok(backend)
    }

    fn serve(&self, listener: TcpListener) {
        let name = self.name;
        let tasks = Arc::clone(&self.tasks);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| async move {
                        // A little work, so that a kill finds requests in flight.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let body = if req.method() == http::Method::POST {
                            req.into_body().collect().await?.to_bytes()
                        } else {
                            Bytes::from(format!("{name}: {} {}\n", req.method(), req.uri()))
                        };
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .header("x-backend", name)
                                .body(Full::new(body))
                                .expect("static response parts are valid"),
                        )
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Closes the listener and every connection.
    pub fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn start(&self) -> std::io::Result<()> {
        // The port was just freed; the OS may take a moment to let it go.
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.serve(listener);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(last.expect("the loop ran"))
    }
}
