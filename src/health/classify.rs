//! Which outcomes are the backend's fault: trustworthy passive feedback.

use std::fmt;
use std::io;
use std::sync::Arc;

use http::{HeaderMap, Response, StatusCode};

use crate::Error;

type StatusRule = dyn Fn(StatusCode) -> bool + Send + Sync;
type ErrorRule = dyn Fn(&Error) -> bool + Send + Sync;
type GrpcRule = dyn Fn(u32) -> bool + Send + Sync;

/// Which outcomes count as a failure of the backend, for passive health.
///
/// Only the backend's own faults may count, or any client could eject a
/// healthy backend with requests it makes fail on purpose:
///
/// * **Statuses**: by default `502`, `503` and `504` (nginx's
///   `proxy_next_upstream http_502 http_503 http_504`, HAProxy's `observe
///   layer7`); a `4xx` the request caused never, a `500` the application
///   answered neither. Behind a [`NextUpstream`](crate::layer::NextUpstream)
///   retry layer such a status counts only if the request moves on to
///   another backend because of it, as in nginx; one handed to the client
///   (the last try, a `POST`, a status not retried on) counts as a success.
/// * **Errors**: by default only those whose [`source`](std::error::Error::source)
///   chain holds an [`io::Error`] saying the *backend* failed: connection
///   refused, reset or aborted, not connected, unreachable, timed out. Not a
///   client that aborted its upload (hyper reports it as an error *from the
///   request body*, which stops the walk), not a request the director refused
///   (any error whose [`Error::status_code`] is a `4xx`), not a hook's error,
///   not an unknown error.
/// * **gRPC**: a `grpc-status` in the headers of a response (a
///   "Trailers-Only" answer, how gRPC servers report most errors), or in the
///   trailers when the body is wrapped by
///   [`InFlightBodyLayer`](crate::layer::InFlightBodyLayer); by default
///   `UNAVAILABLE` (14) counts, the code gRPC maps `502`/`503`/`504` to.
///
/// Each rule takes a closure:
///
/// ```
/// use http::StatusCode;
/// use tower_lb::layer::FailurePolicy;
/// use tower_lb::Error;
///
/// let default = FailurePolicy::default();
/// assert!(default.is_failure(StatusCode::BAD_GATEWAY));
/// assert!(!default.is_failure(StatusCode::INTERNAL_SERVER_ERROR));
///
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let err = Error::Upstream { backend: "a".into(), source: refused.into() };
/// assert!(default.is_error_failure(&err));
/// assert!(!default.is_error_failure(&Error::BadRequest { reason: "x".into() }));
///
/// let teapots = 418;
/// let strict = FailurePolicy::new(move |s| s.is_server_error() || s.as_u16() == teapots)
///     .errors(|e| !e.status_code().is_client_error())
///     .grpc_codes(|code| matches!(code, 4 | 14));
/// assert!(strict.is_failure(StatusCode::IM_A_TEAPOT));
/// ```
#[derive(Clone)]
pub struct FailurePolicy {
    status: Arc<StatusRule>,
    error: Arc<ErrorRule>,
    grpc: Arc<GrpcRule>,
}

impl FailurePolicy {
    /// A policy whose statuses are those `is_failure` names; errors and gRPC
    /// codes as by default.
    pub fn new(is_failure: impl Fn(StatusCode) -> bool + Send + Sync + 'static) -> Self {
        FailurePolicy {
            status: Arc::new(is_failure),
            ..FailurePolicy::default()
        }
    }

    /// Which errors count (by default [`backend_fault`]).
    pub fn errors(mut self, is_failure: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.error = Arc::new(is_failure);
        self
    }

    /// Which `grpc-status` codes count (by default 14, `UNAVAILABLE`).
    pub fn grpc_codes(mut self, is_failure: impl Fn(u32) -> bool + Send + Sync + 'static) -> Self {
        self.grpc = Arc::new(is_failure);
        self
    }

    /// Whether a response with this status counts as a failure.
    #[inline]
    pub fn is_failure(&self, status: StatusCode) -> bool {
        (self.status)(status)
    }

    /// Whether this error counts as a failure of the backend.
    pub fn is_error_failure(&self, error: &Error) -> bool {
        (self.error)(error)
    }

    /// Whether a response counts as a failure: its status, or a `grpc-status`
    /// in its headers.
    ///
    /// ```
    /// use http::Response;
    /// use tower_lb::layer::FailurePolicy;
    ///
    /// let res = Response::builder().header("grpc-status", "14").body(()).unwrap();
    /// assert!(FailurePolicy::default().is_response_failure(&res));
    /// ```
    #[inline]
    pub fn is_response_failure<B>(&self, res: &Response<B>) -> bool {
        self.is_failure(res.status()) || self.grpc_failure(res.headers()) == Some(true)
    }

    /// What a `grpc-status` in these headers or trailers says: `None` when
    /// there is none (or it is not a number).
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tower_lb::layer::FailurePolicy;
    ///
    /// let mut trailers = HeaderMap::new();
    /// trailers.insert("grpc-status", "0".parse().unwrap());
    /// assert_eq!(FailurePolicy::default().grpc_failure(&trailers), Some(false));
    /// ```
    pub fn grpc_failure(&self, headers: &HeaderMap) -> Option<bool> {
        let code = headers
            .get("grpc-status")?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some((self.grpc)(code))
    }

    /// Whether a response is gRPC whose status will come in the trailers.
    pub(crate) fn awaits_grpc_trailers<B>(res: &Response<B>) -> bool {
        res.status() == StatusCode::OK
            && !res.headers().contains_key("grpc-status")
            && res
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
    }
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            status: Arc::new(|s| {
                matches!(
                    s,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                )
            }),
            error: Arc::new(backend_fault),
            grpc: Arc::new(|code| code == 14),
        }
    }
}

impl fmt::Debug for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailurePolicy").finish_non_exhaustive()
    }
}

/// The default error rule: whether `error` says the backend itself failed.
///
/// An [`Error::Upstream`] counts when its source chain holds an
/// [`io::Error`] of a kind only the backend's side causes (refused, reset,
/// aborted, not connected, unreachable, timed out), found before any error
/// that comes from the request body (a client that aborted its upload).
/// An [`Error::Timeout`] (the backend did not answer in time) counts too.
/// Nothing else does.
///
/// ```
/// use std::io::{Error as IoError, ErrorKind};
/// use tower_lb::{health::backend_fault, Error};
///
/// let upstream = |kind| Error::Upstream { backend: "a".into(), source: IoError::from(kind).into() };
/// assert!(backend_fault(&upstream(ErrorKind::ConnectionReset)));
/// assert!(!backend_fault(&upstream(ErrorKind::UnexpectedEof)));
/// ```
pub fn backend_fault(error: &Error) -> bool {
    match error {
        Error::Upstream { source, .. } => io_fault_in_chain(&**source),
        Error::Timeout { .. } => true,
        _ => false,
    }
}

fn io_fault_in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::TimedOut
            ) {
                return true;
            }
        } else if from_request_body(error) {
            // Whatever follows is the client's connection failing.
            return false;
        }
        next = error.source();
    }
    false
}

/// hyper (client and server) reports an error of the request body it was
/// sending as `error from user's Body stream` (hyper 0.14 and 1.x), and an
/// incoming body cut short as `error reading a body from connection`: the
/// crate does not depend on hyper, so it reads the message.
fn from_request_body(error: &(dyn std::error::Error + 'static)) -> bool {
    let text = error.to_string();
    text.starts_with("error from user's")
        || text.starts_with("error reading a body from connection")
}
