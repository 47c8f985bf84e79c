//! The gateway's retries and timeouts: flags, defaults, and the layers and
//! upstream client they configure.
//!
//! Defaults, nginx-like for a gateway: try up to 3 backends on an error, a
//! timeout or a 502/503/504 (`proxy_next_upstream error timeout http_502
//! http_503 http_504; proxy_next_upstream_tries 3`), start no new attempt
//! after 10 s (`proxy_next_upstream_timeout`), connect within 2 s
//! (`proxy_connect_timeout`), response head within 30 s.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_lb::layer::{NextUpstreamLayer, ReplayBody, ResponseTimeoutLayer};

use super::Upstream;

/// The timer the response-head timeout uses.
pub type TokioSleep = fn(Duration) -> tokio::time::Sleep;

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
}

/// The flags, for `--help`.
pub const USAGE: &str = "[--tries N] [--next-upstream-timeout DUR] [--connect-timeout DUR] \
                         [--response-timeout DUR]   (DUR: 500ms, 2s; 0 = no limit)";

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            tries: 3,
            next_upstream_timeout: Some(Duration::from_secs(10)),
            connect_timeout: Some(Duration::from_secs(2)),
            response_timeout: Some(Duration::from_secs(30)),
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
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Retries on the next backend, as configured.
    pub fn next_upstream(&self) -> NextUpstreamLayer {
        let layer = NextUpstreamLayer::new()
            .tries(self.tries)
            .retry_on_status(|s| matches!(s.as_u16(), 502..=504))
            // hyper-util knows when it never connected (refused, connect
            // timeout, DNS): such a request may be retried, POST included.
            .never_sent(|e| {
                e.downcast_ref::<hyper_util::client::legacy::Error>()
                    .is_some_and(|e| e.is_connect())
            });
        match self.next_upstream_timeout {
            Some(budget) => layer.timeout(budget),
            None => layer,
        }
    }

    /// The per-attempt response-head timeout (a day when there is no limit).
    pub fn response_timeout(&self) -> ResponseTimeoutLayer<TokioSleep> {
        ResponseTimeoutLayer::new(
            self.response_timeout
                .unwrap_or(Duration::from_secs(24 * 60 * 60)),
            tokio::time::sleep as TokioSleep,
        )
    }

    /// The upstream client, its connector timed as configured.
    pub fn upstream(&self) -> Upstream<ReplayBody<Incoming>> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(self.connect_timeout);
        Upstream::with_connector(connector)
    }

    /// One line for the gateway's banner.
    pub fn describe(&self) -> String {
        let show = |d: Option<Duration>| d.map_or("none".to_owned(), |d| format!("{d:?}"));
        format!(
            "retries: tries {} (on error, timeout, 502/503/504), budget {}; timeouts: connect {}, response {}",
            if self.tries == 0 {
                "all".to_owned()
            } else {
                self.tries.to_string()
            },
            show(self.next_upstream_timeout),
            show(self.connect_timeout),
            show(self.response_timeout),
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
