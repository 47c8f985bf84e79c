//! The clock as nginx reads it: once per turn, not once per question.
//!
//! One request through [`serve_connection`](super::serve_connection) asks
//! the time several times in one poll of its connection's task: the retry
//! budget's start, the response timer's deadline, the pooled backend
//! connection's idle time, and, once the answer is written, that
//! connection's idle stamp and the next head's deadline. Each reading is a
//! `clock_gettime` (about 40 ns here, a fifth of a microsecond a request),
//! and all of them fall within microseconds of one another. nginx reads
//! its clock once per turn of its event loop (`ngx_time_update`) and
//! serves every question from that reading; [`task_now`] does the same
//! for each poll of a connection's task.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

thread_local! {
    /// How many [`Scoped`] polls are under way on this thread, and the
    /// reading the outermost one has made, if any.
    static TURN: Cell<(u32, Option<tokio::time::Instant>)> = const { Cell::new((0, None)) };
}

/// The time on the runtime's clock (tokio's, which follows
/// `tokio::time::pause`), read at most once per poll of a
/// [`serve_connection`](super::serve_connection) task: every reading
/// during one poll of a connection's task is the same, as every reading in
/// one turn of nginx's event loop is. Outside such a poll it reads the
/// clock each time.
///
/// A poll does not wait: it lasts as long as the work the task can do at
/// once (microseconds), so a reading is that old at most. Timeouts of
/// seconds, idle stamps and retry budgets do not see the difference. Work
/// that blocks inside a poll (a hook that takes a contended lock, a
/// `block_in_place`) ages the reading as it ages nginx's: a timer started
/// after it in the same poll (a [`TimerPool`](super::TimerPool) response
/// timeout, the next head's deadline) is measured from before the block,
/// and rings that much sooner. Under `tokio::time::pause` it follows the
/// paused clock, so compare it with `tokio::time::Instant`, not with
/// `std::time::Instant::now()`.
///
/// For [`NextUpstreamLayer::clock`](crate::layer::NextUpstreamLayer::clock),
/// so that a retry budget shares the reading:
///
/// ```
/// use std::time::Duration;
/// use tower_lb::layer::NextUpstreamLayer;
///
/// let layer = NextUpstreamLayer::new()
///     .timeout(Duration::from_secs(10))
///     .clock(tower_lb::proxy::task_now);
/// # let _ = layer;
/// ```
pub fn task_now() -> std::time::Instant {
    now().into_std()
}

/// [`task_now`] as tokio's `Instant`.
pub(crate) fn now() -> tokio::time::Instant {
    TURN.with(|turn| match turn.get() {
        (0, _) => tokio::time::Instant::now(),
        (_, Some(read)) => read,
        (depth, None) => {
            let read = tokio::time::Instant::now();
            turn.set((depth, Some(read)));
            read
        }
    })
}

/// Marks a poll under way; its reading goes with the outermost one.
struct Turn;

impl Turn {
    fn enter() -> Self {
        TURN.with(|turn| {
            let (depth, read) = turn.get();
            turn.set((depth + 1, read));
        });
        Turn
    }
}

impl Drop for Turn {
    // Also on a panic: a reading never outlives its poll.
    fn drop(&mut self) {
        TURN.with(|turn| {
            let (depth, read) = turn.get();
            let depth = depth.saturating_sub(1);
            turn.set((depth, if depth == 0 { None } else { read }));
        });
    }
}

pin_project! {
    /// `future`, each of whose polls shares one reading of the clock
    /// ([`now`]).
    pub(crate) struct Scoped<F> {
        #[pin]
        future: F,
    }
}

impl<F> Scoped<F> {
    pub(crate) fn new(future: F) -> Self {
        Scoped { future }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _turn = Turn::enter();
        self.project().future.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outside_a_poll_each_reading_is_new() {
        let first = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > first);
    }

    #[test]
    fn one_poll_reads_the_clock_once_and_the_next_poll_again() {
        let mut readings = Vec::new();
        let mut polls = 0;
        {
            let mut future = std::pin::pin!(Scoped::new(std::future::poll_fn(|cx| {
                readings.push(now());
                std::thread::sleep(Duration::from_millis(2));
                readings.push(now());
                polls += 1;
                if polls == 2 {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            })));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(future.as_mut().poll(&mut cx).is_pending());
            assert!(future.as_mut().poll(&mut cx).is_ready());
        }
        assert_eq!(readings[0], readings[1], "one reading within a poll");
        assert_eq!(readings[2], readings[3], "one reading within a poll");
        assert!(readings[2] > readings[1], "a new reading for the next poll");
        // And none is left behind once the poll is over.
        let after = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > after);
    }

    #[test]
    fn a_nested_poll_shares_the_outer_reading_and_a_panic_leaves_none() {
        let outer = Scoped::new(async {
            let before = now();
            let inner = Scoped::new(async { now() }).await;
            assert_eq!(before, inner);
        });
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut outer = std::pin::pin!(outer);
        assert!(outer.as_mut().poll(&mut cx).is_ready());

        let caught = std::panic::catch_unwind(|| {
            let mut panics = std::pin::pin!(Scoped::new(async {
                let _ = now();
                panic!("in a poll");
            }));
            let _ = panics
                .as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()));
        });
        assert!(caught.is_err());
        assert_eq!(TURN.with(Cell::get), (0, None));
    }
}
