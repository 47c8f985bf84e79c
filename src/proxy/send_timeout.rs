//! A client connection whose writes may not stall for longer than
//! [`SEND_TIMEOUT`](super::SEND_TIMEOUT): nginx's `send_timeout`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};

use super::stall::StallClock;

/// `io`, with a clock on each stalled write: started when a write cannot
/// go through, stopped when one does. A write that has waited `limit` fails
/// with [`io::ErrorKind::TimedOut`]. Nothing is timed while writes go
/// through, so the usual request pays one branch.
pub(crate) struct SendTimeout<I> {
    io: I,
    clock: StallClock,
}

impl<I> SendTimeout<I> {
    pub(crate) fn new(io: I, limit: Duration) -> Self {
        SendTimeout {
            io,
            clock: StallClock::new(Some(limit)),
        }
    }

    /// What a write that went through, or did not, leaves the clock at.
    fn timed<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.clock.stop();
            return poll;
        }
        if !self.clock.expired(cx) {
            return Poll::Pending;
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took nothing for {:?}", self.clock.limit()),
        )))
    }
}

impl<I: Read + Unpin> Read for SendTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for SendTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.timed(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.timed(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.timed(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        this.timed(cx, poll)
    }
}
