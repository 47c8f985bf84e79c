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
//!  │ ┌ LoadBalance ─────── picks a backend, puts it in the   records the outcome (passive
//!  │ │                     request's extensions              feedback), adds Set-Cookie
//!  │ │ ┌ Director ──────── strips hop-by-hop headers, then     strips the response's
//!  │ │ │                   rewrites URI, Host, X-Forwarded-*   hop-by-hop headers
//!  │ │ │ ┌ inner service (e.g. hyper client) ── sends to the backend
//! ```
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
pub mod proxy_director;

#[cfg(feature = "http-body")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-body")))]
#[doc(inline)]
pub use self::in_flight_body::{InFlightBody, InFlightBodyLayer, InFlightBodyService};
#[doc(inline)]
pub use self::{
    client_addr::{client_addr_from, ClientAddrFrom},
    director::{Direct, Director, DirectorLayer},
    load_balance::{FailurePolicy, InFlightGuard, LoadBalance, LoadBalanceLayer, PickedBackend},
    modify_response::{ModifyResponse, ModifyResponseHook, ModifyResponseLayer},
    proxy_director::{
        remove_hop_by_hop_headers, strip_hop_by_hop_response, ForwardedFor, HostHeader,
        ProxyDirector,
    },
};

/// Turns an inner service's error into a tower-lb [`Error`]: an error that
/// already is one passes through (an upstream error gains the backend id it
/// lacked), anything else becomes [`Error::Upstream`].
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
            other => other,
        },
        Err(source) => Error::Upstream {
            backend: backend.to_owned(),
            source,
        },
    }
}
