//! Put the client's address on the request from what another server
//! recorded: a director hook.
//!
//! tower-lb reads the client's address from the [`ClientAddr`] extension
//! (for `X-Forwarded-For` and [`ClientIp`](crate::sticky::ClientIp)).
//! `tower_lb::proxy::serve` fills it; a server that is not ours records the
//! peer in its own type, such as axum's `ConnectInfo<SocketAddr>`.
//! [`client_addr_from`] copies it over, without tower-lb depending on that
//! server:
//!
//! ```
//! use std::net::SocketAddr;
//! use http::Request;
//! use tower_lb::layer::{client_addr_from, Direct, DirectorLayer};
//! use tower_lb::sticky::ClientAddr;
//!
//! // Stands in for axum's `ConnectInfo<SocketAddr>`.
//! #[derive(Clone)]
//! struct ConnectInfo<T>(T);
//!
//! let mut hook = client_addr_from(|info: &ConnectInfo<SocketAddr>| info.0);
//! let mut req = Request::new(());
//! req.extensions_mut().insert(ConnectInfo("192.0.2.7:50000".parse::<SocketAddr>().unwrap()));
//! hook.direct(&mut req).unwrap();
//! assert_eq!(req.extensions().get::<ClientAddr>().unwrap().0.port(), 50000);
//!
//! // Outermost, before LoadBalanceLayer and the ProxyDirector.
//! let layer = DirectorLayer::new(client_addr_from(|info: &ConnectInfo<SocketAddr>| info.0));
//! # let _ = layer;
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;

use http::Request;

use crate::layer::Direct;
use crate::sticky::ClientAddr;
use crate::BoxError;

/// A [`Direct`] hook that inserts a [`ClientAddr`] read from an extension
/// of type `T`; a request without a `T` is left as it is (and its
/// `X-Forwarded-For` is then dropped by the
/// [`ProxyDirector`](crate::layer::ProxyDirector): nothing vouches for it).
/// An existing `ClientAddr` is kept.
pub fn client_addr_from<T, F>(read: F) -> ClientAddrFrom<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> SocketAddr,
{
    ClientAddrFrom {
        read,
        _extension: PhantomData,
    }
}

/// The hook [`client_addr_from`] returns; see the [module docs](self).
pub struct ClientAddrFrom<T, F> {
    read: F,
    _extension: PhantomData<fn(&T)>,
}

impl<T, F: Clone> Clone for ClientAddrFrom<T, F> {
    fn clone(&self) -> Self {
        ClientAddrFrom {
            read: self.read.clone(),
            _extension: PhantomData,
        }
    }
}

impl<T, F> fmt::Debug for ClientAddrFrom<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAddrFrom")
            .field("extension", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<B, T, F> Direct<B> for ClientAddrFrom<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> SocketAddr,
{
    fn direct(&mut self, req: &mut Request<B>) -> Result<(), BoxError> {
        if req.extensions().get::<ClientAddr>().is_none() {
            if let Some(addr) = req.extensions().get::<T>().map(&self.read) {
                req.extensions_mut().insert(ClientAddr(addr));
            }
        }
        Ok(())
    }
}
