//! Tokio timers kept for the next request: [`TimerPool`].

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::{Handle, Id};
use tokio::time::Instant;

use crate::layer::Sleep;

/// How many idle timers a thread keeps.
const KEPT_PER_THREAD: usize = 1024;

/// Timers for longer are not kept: a kept timer holds the waker of the
/// task that last waited on it (and its runtime's handle) until its
/// deadline passes or it is reused.
const KEPT_UP_TO: Duration = Duration::from_secs(5 * 60);

thread_local! {
    /// Idle timers, each with the runtime whose clock it runs on.
    static KEPT: RefCell<Vec<(Id, Pin<Box<tokio::time::Sleep>>)>> =
        const { RefCell::new(Vec::new()) };
}

/// A [`Sleep`] on tokio's clock that keeps its timers for the next request:
/// what to give [`ResponseTimeoutLayer`](crate::layer::ResponseTimeoutLayer)
/// (and [`NextUpstreamLayer::body_timeout`](crate::layer::NextUpstreamLayer::body_timeout))
/// in a tokio proxy, rather than `tokio::time::sleep`.
///
/// Each `tokio::time::sleep` puts a new timer on the runtime's timer wheel
/// and takes it off again when the response comes first, which is almost
/// always; and when its deadline falls before the time the runtime last
/// planned to wake up at (a response timeout shorter than the idle
/// connections' timers, say), tokio also wakes its own I/O driver with a
/// system call, as if another thread were waiting in it. A timer taken
/// from this pool goes back to it when the request is done; while it is
/// still armed, moving it to a later deadline (the same timeout, request
/// after request) is one atomic store: no wheel operation, no system call.
/// A timer that went off, or one moved to an earlier deadline, is put on
/// the wheel again as a new one would be. A timer is only reused on the
/// runtime that made it; the pool is per thread and keeps up to 1,024,
/// each for at most five minutes (a longer one is not kept).
///
/// A timer left in the pool goes off once at its last deadline, waking
/// the task that last waited on it for nothing (as a timer that a
/// connection keeps between requests does), and holds that task's waker
/// until then; the next use moves it on.
///
/// # Panics
///
/// As `tokio::time::sleep`: a timer must be made inside a tokio runtime with
/// its clock enabled.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::layer::{ResponseTimeoutLayer, Sleep};
/// use tower_lb::proxy::TimerPool;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = ResponseTimeoutLayer::new(Duration::from_secs(30), TimerPool);
/// # let _ = layer;
/// let start = tokio::time::Instant::now();
/// TimerPool.sleep(Duration::from_millis(10)).await;
/// assert!(start.elapsed() >= Duration::from_millis(10));
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TimerPool;

impl Sleep for TimerPool {
    type Future = PooledSleep;

    fn sleep(&self, duration: Duration) -> PooledSleep {
        PooledSleep::new(duration)
    }
}

/// The future of [`TimerPool`]: done once its time has passed. Dropped, it
/// gives its timer back to the pool.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::layer::Sleep;
/// use tower_lb::proxy::TimerPool;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let sleep = TimerPool.sleep(Duration::from_secs(1));
/// assert!(tokio::time::timeout(Duration::from_millis(500), sleep).await.is_err());
/// # }
/// ```
#[derive(Debug)]
pub struct PooledSleep {
    timer: Option<(Id, Pin<Box<tokio::time::Sleep>>)>,
    /// Whether the timer goes back to the pool when dropped.
    keep: bool,
}

impl PooledSleep {
    fn new(duration: Duration) -> Self {
        let deadline = deadline_after(duration);
        // Outside a runtime this panics, as `tokio::time::sleep` does.
        let runtime = Handle::current().id();
        let kept = KEPT
            .try_with(|kept| {
                let mut kept = kept.borrow_mut();
                match kept.last() {
                    Some((id, _)) if *id == runtime => kept.pop().map(|(_, timer)| timer),
                    // Another runtime's (an earlier one on this thread,
                    // shut down by now, most likely): of no use here.
                    Some(_) => {
                        let stale = std::mem::take(&mut *kept);
                        drop(kept);
                        drop(stale);
                        None
                    }
                    None => None,
                }
            })
            .ok()
            .flatten();
        let timer = match kept {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        PooledSleep {
            timer: Some((runtime, timer)),
            keep: duration <= KEPT_UP_TO,
        }
    }
}

/// `duration` from now, or about 30 years from now if that overflows (as
/// `tokio::time::sleep` has it).
fn deadline_after(duration: Duration) -> Instant {
    let now = super::clock::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

impl Future for PooledSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.get_mut().timer {
            Some((_, timer)) => timer.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for PooledSleep {
    fn drop(&mut self) {
        let Some(timer) = self.timer.take().filter(|_| self.keep) else {
            return;
        };
        // At thread exit the pool may be gone: the timer is dropped.
        let _ = KEPT.try_with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() < KEPT_PER_THREAD {
                kept.push(timer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> usize {
        KEPT.with(|kept| kept.borrow().len())
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_timer_is_kept_and_reused() {
        let before = kept();
        let first = TimerPool.sleep(Duration::from_secs(30));
        drop(first);
        assert_eq!(kept(), before + 1);
        // Reused, for a deadline of its own.
        let start = Instant::now();
        let second = TimerPool.sleep(Duration::from_millis(50));
        assert_eq!(kept(), before);
        second.await;
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert_eq!(kept(), before + 1);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_reused_timer_waits_its_full_time() {
        // Kept with a near deadline, reused for a far one: it must not go
        // off at the old deadline.
        let near = TimerPool.sleep(Duration::from_millis(10));
        drop(near);
        let far = TimerPool.sleep(Duration::from_secs(5));
        assert!(tokio::time::timeout(Duration::from_secs(4), far)
            .await
            .is_err());
        // Kept with a far deadline, reused for a near one.
        let far = TimerPool.sleep(Duration::from_secs(60));
        drop(far);
        let start = Instant::now();
        TimerPool.sleep(Duration::from_millis(20)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    }

    #[test]
    fn another_runtime_s_timers_are_not_reused() {
        let one = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        one.block_on(async {
            drop(TimerPool.sleep(Duration::from_secs(30)));
        });
        assert!(kept() >= 1);
        drop(one);
        let two = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        two.block_on(async {
            let start = Instant::now();
            TimerPool.sleep(Duration::from_millis(5)).await;
            assert_eq!(start.elapsed(), Duration::from_millis(5));
        });
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_long_timer_is_not_kept() {
        let before = kept();
        drop(TimerPool.sleep(Duration::from_secs(24 * 60 * 60)));
        assert_eq!(kept(), before);
        drop(TimerPool.sleep(KEPT_UP_TO));
        assert_eq!(kept(), before + 1);
    }

    #[test]
    fn the_pool_is_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let many: Vec<_> = (0..KEPT_PER_THREAD + 10)
                .map(|_| TimerPool.sleep(Duration::from_secs(30)))
                .collect();
            drop(many);
            assert_eq!(kept(), KEPT_PER_THREAD);
        });
    }
}
