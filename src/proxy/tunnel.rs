//! The bytes of an upgraded connection (a WebSocket), copied both ways
//! between the client and the backend, and closed once neither side has
//! sent anything for the idle limit: nginx's `proxy_read_timeout` on an
//! upgraded connection.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Copies `client` ⇄ `backend` until either side closes or fails, or, with
/// `idle`, until no byte has come from either side for that long; then
/// both are dropped (closed).
pub(crate) async fn splice<C, U>(client: C, backend: U, idle: Option<Duration>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Some(limit) = idle else {
        let (mut client, mut backend) = (client, backend);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        return;
    };
    let activity = Activity {
        since: Instant::now(),
        last: Arc::new(AtomicU64::new(0)),
    };
    let mut client = Watched {
        io: client,
        activity: activity.clone(),
    };
    let mut backend = Watched {
        io: backend,
        activity: activity.clone(),
    };
    let mut copy = pin!(tokio::io::copy_bidirectional(&mut client, &mut backend));
    let mut quiet = pin!(activity.quiet_for(limit));
    std::future::poll_fn(|cx| {
        if copy.as_mut().poll(cx).is_ready() || quiet.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// When a byte last came through, as time since `since` (tokio's clock, so
/// a paused clock drives it in tests).
#[derive(Clone)]
struct Activity {
    since: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        let nanos = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    /// Ends once nothing has come through for `limit`.
    async fn quiet_for(&self, limit: Duration) {
        loop {
            let last = self.since + Duration::from_nanos(self.last.load(Ordering::Relaxed));
            // `checked_add`: a limit too large to add is no limit.
            let Some(deadline) = last.checked_add(limit) else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One side of the tunnel; each read that brings bytes counts as activity
/// (everything written was read from the other side first).
struct Watched<T> {
    io: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
