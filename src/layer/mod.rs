//! Tower middleware: pick a backend per request, rewrite the outgoing
//! request, edit the response.
//!
//! The layers work over any inner `Service<http::Request<B>>` answering
//! `http::Response`s (a hyper client, `tower_lb::proxy::Upstream` with the
//! `proxy` feature, a test `service_fn`) and need no async
//! runtime. Not tonic's `Channel`: it overwrites each request's scheme and
//! authority with its own endpoint, so the backend the director wrote would
//! be ignored (see the README's "Other clients").
//! They stack like an onion; the natural order, outermost first, is:
//!
//! ```text
//!            request ─►                                   ◄─ response
//!  ┌ ModifyResponse ──────────────────────────────────────── runs the hook on the response
//!  │ ┌ NextUpstream ────── keeps what a retry needs          retries a failure on the next
//!  │ │                     (feature `http-body`)             backend, when safe
//!  │ │ ┌ LoadBalance ───── picks a backend, puts it in the   records the outcome (passive
//!  │ │ │                   request's extensions              feedback), adds Set-Cookie
//!  │ │ │ ┌ ResponseTimeout  starts the attempt's timer       no head in time: Error::Timeout
//!  │ │ │ │ ┌ Director ──── strips hop-by-hop headers, then   strips the response's
//!  │ │ │ │ │               rewrites URI, Host, X-Forwarded-* hop-by-hop headers
//!  │ │ │ │ │ ┌ inner service (e.g. hyper client) ── sends to the backend
//! ```
//!
//! `NextUpstream` (feature `http-body`) and [`ResponseTimeout`] are optional; the example below
//! leaves them out (see their modules).
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_lb::layer::{DirectorLayer, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector};
//! use tower_lb::{LoadBalancer, Strategy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lb::Error> {
//! let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1:8080", "http://10.0.0.2:8080"])?;
//!
//! let mut proxy = ServiceBuilder::new()
//!     .layer(ModifyResponseLayer::new(|mut res: Response<String>| {
//!         res.headers_mut().insert("via", "1.1 tower-lb".parse().unwrap());
//!         Ok::<_, Infallible>(res)
//!     }))
//!     .layer(LoadBalanceLayer::new(lb))
//!     .layer(DirectorLayer::new(ProxyDirector::new()))
//!     // Stands in for a hyper client: answers with the URI it was asked for.
//!     .service_fn(|req: Request<String>| async move {
//!         Ok::<_, Infallible>(Response::new(req.uri().to_string()))
//!     });
//!
//! let req = Request::builder().header("host", "example.com").body("hi".to_string()).unwrap();
//! let res = proxy.ready().await?.call(req).await?;
//! assert_eq!(res.body(), "http://10.0.0.1:8080/");
//! assert_eq!(res.headers()["via"], "1.1 tower-lb");
//! # Ok(())
//! # }
//! ```

use crate::{BoxError, Error};

pub mod client_addr;
pub mod director;
#[cfg(feature = "http-body")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-body")))]
pub mod in_flight_body;
pub mod load_balance;
pub mod modify_response;
#[cfg(feature = "http-body")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-body")))]
pub mod next_upstream;
pub mod proxy_director;
pub mod response_timeout;

#[cfg(feature = "http-body")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-body")))]
#[doc(inline)]
pub use self::in_flight_body::{InFlightBody, InFlightBodyLayer, InFlightBodyService};
#[doc(inline)]
pub use self::{
    client_addr::{client_addr_from, ClientAddrFrom},
    director::{Direct, Director, DirectorLayer},
    load_balance::{
        FailurePolicy, InFlightGuard, LoadBalance, LoadBalanceLayer, PickedBackend, TriedBackends,
    },
    modify_response::{ModifyResponse, ModifyResponseHook, ModifyResponseLayer},
    proxy_director::{
        remove_hop_by_hop_headers, strip_hop_by_hop_response, ForwardedFor, HostHeader,
        ProxyDirector,
    },
    response_timeout::{ResponseTimeout, ResponseTimeoutLayer, Sleep},
};

#[cfg(feature = "http-body")]
#[doc(inline)]
pub use self::next_upstream::{NextUpstream, NextUpstreamLayer, ReplayBody};

#[cfg(feature = "proxy")]
pub(crate) use self::next_upstream::is_idempotent;
#[cfg(feature = "proxy")]
pub(crate) use self::response_timeout::RequestSent;

/// Whether a comma-separated header value (`Connection`, `Upgrade`, `TE`)
/// lists `token`, case-insensitively.
/// A value that is not text (`HeaderValue::to_str` refuses it) lists
/// nothing.
#[inline]
pub(crate) fn lists_token(value: &http::HeaderValue, token: &str) -> bool {
    lists_token_in(value.as_bytes(), token)
}

/// [`lists_token`] on a field value's bytes.
pub(crate) fn lists_token_in(value: &[u8], token: &str) -> bool {
    let token = token.as_bytes();
    // The usual values, `keep-alive` and `close`: a single token, told
    // apart by its length alone or by one compare, with no list to split.
    if value.len() < token.len() {
        return false;
    }
    if value.eq_ignore_ascii_case(token) {
        return true;
    }
    // Listed, if the value is text as `to_str` takes it (visible ASCII,
    // spaces and tabs: the only blanks `trim` would have trimmed). A value
    // without a comma (`keep-alive` asked about `close`) is one token.
    let listed = if value.contains(&b',') {
        value
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    } else {
        value.trim_ascii().eq_ignore_ascii_case(token)
    };
    listed
        && value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Whether any `name` field of `headers` lists `token` ([`lists_token`]).
pub(crate) fn contains_token(
    headers: &http::HeaderMap,
    name: &http::HeaderName,
    token: &str,
) -> bool {
    headers.get_all(name).iter().any(|v| lists_token(v, token))
}

/// Whether a request asks to switch protocols: an `Upgrade` header and
/// `Connection: upgrade`.
#[cfg(feature = "http-body")]
pub(crate) fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
        && contains_token(headers, &http::header::CONNECTION, "upgrade")
}

/// Turns an inner service's error into a tower-lb [`Error`]: an error that
/// already is one passes through (an upstream error or a timeout gains the
/// backend id it lacked), a timeout reported by the client (an
/// `io::ErrorKind::TimedOut` anywhere in its source chain, as hyper-util's
/// connect timeout gives) becomes [`Error::Timeout`], a failure of the
/// client's request body while it was sent [`Error::BadRequest`] (or
/// [`Error::RequestTimeout`], if it went quiet), anything
/// else [`Error::Upstream`].
pub(crate) fn upstream_error(error: impl Into<BoxError>, backend: &str) -> Error {
    match error.into().downcast::<Error>() {
        Ok(lb_error) => match *lb_error {
            Error::Upstream {
                backend: ref inner,
                source,
            } if inner.is_empty() => Error::Upstream {
                backend: backend.to_owned(),
                source,
            },
            Error::Timeout {
                backend: ref inner,
                waited_for,
                source,
            } if inner.is_empty() => Error::Timeout {
                backend: backend.to_owned(),
                waited_for,
                source,
            },
            other => other,
        },
        Err(source) => {
            if let Some(error) = client_body_failure(&*source) {
                return error;
            }
            if has_io_error(&*source, std::io::ErrorKind::TimedOut) {
                return Error::Timeout {
                    backend: backend.to_owned(),
                    waited_for: "the backend",
                    source: Some(source),
                };
            }
            Error::Upstream {
                backend: backend.to_owned(),
                source,
            }
        }
    }
}

/// If the client's request body failed while it was being sent (a
/// malformed chunk, a client gone mid-upload, one that went quiet), the
/// error: the request's fault, not the backend's, so a `400` (nginx answers
/// a bad chunk with one) or a `408` (a body that stopped arriving) rather
/// than a `502`. hyper's clients (`WorkerUpstream`,
/// `Upstream`) report it as `error from user's Body stream`, with the
/// body's own error as its source; the crate does not depend on hyper, so
/// the message is read (as `health::backend_fault` does).
fn client_body_failure(error: &(dyn std::error::Error + 'static)) -> Option<Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if error
            .to_string()
            .starts_with("error from user's Body stream")
        {
            let mut reason = String::from("reading the request body failed");
            let mut cause = error.source();
            while let Some(error) = cause {
                reason.push_str(": ");
                reason.push_str(&error.to_string());
                cause = error.source();
            }
            // `WorkerUpstream::client_body_timeout`: the client went quiet.
            let timed_out = error
                .source()
                .is_some_and(|cause| has_io_error(cause, std::io::ErrorKind::TimedOut));
            return Some(if timed_out {
                Error::RequestTimeout { reason }
            } else {
                Error::BadRequest { reason }
            });
        }
        next = error.source();
    }
    None
}

/// Whether an `io::Error` of this kind is anywhere in `error`'s source chain.
pub(crate) fn has_io_error(
    error: &(dyn std::error::Error + 'static),
    kind: std::io::ErrorKind,
) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == kind => return true,
            // An `io::Error`'s `source()` skips the error it wraps.
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => error.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::lists_token;
    use http::HeaderValue;

    /// The byte-wise reading agrees with splitting the text.
    #[test]
    fn lists_token_reads_as_the_text_does() {
        fn by_text(value: &HeaderValue, token: &str) -> bool {
            value
                .to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        }
        let values: &[&[u8]] = &[
            b"close",
            b"Close",
            b"keep-alive",
            b"keep-alive, close",
            b"close,keep-alive",
            b" \tclose\t ",
            b"closed",
            b"clos",
            b"",
            b",",
            b"upgrade, close",
            b"Upgrade",
            b"x, , close ,",
            b"close, \xff",
            b"\xe9close",
            b"a\tb, close",
        ];
        for value in values {
            let value = HeaderValue::from_bytes(value).unwrap();
            for token in ["close", "upgrade", "keep-alive", "trailers"] {
                assert_eq!(
                    lists_token(&value, token),
                    by_text(&value, token),
                    "{value:?} {token}"
                );
            }
        }
    }
}
