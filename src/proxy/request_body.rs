//! The body of a request [`serve_connection`](super::serve_connection)
//! passes to the stack.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The body of each request [`serve`](super::serve) and
/// [`serve_connection`](super::serve_connection) hand the stack: hyper's
/// [`Incoming`] for a request hyper's server read, or nothing at all for a
/// request without a body that the proxy read itself (see
/// [`serve_connection`](super::serve_connection)). Either way it is an
/// [`http_body::Body`] of [`Bytes`], so the layers and
/// [`WorkerUpstream`](super::WorkerUpstream) take it as they took
/// [`Incoming`].
///
/// ```
/// use http_body::Body as _;
/// use tower_lb::proxy::RequestBody;
///
/// let empty = RequestBody::empty();
/// assert!(empty.is_end_stream());
/// assert_eq!(empty.size_hint().exact(), Some(0));
/// ```
#[derive(Debug, Default)]
pub struct RequestBody {
    incoming: Option<Incoming>,
}

impl RequestBody {
    /// A body with nothing in it: what a request without
    /// `Content-Length` or `Transfer-Encoding` has.
    pub fn empty() -> Self {
        RequestBody { incoming: None }
    }
}

impl From<Incoming> for RequestBody {
    /// hyper's body of a request its server read.
    fn from(incoming: Incoming) -> Self {
        RequestBody {
            incoming: Some(incoming),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().incoming {
            Some(incoming) => Pin::new(incoming).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.incoming.as_ref().is_none_or(Body::is_end_stream)
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.incoming {
            Some(incoming) => incoming.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}
