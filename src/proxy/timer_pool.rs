//! Tokio timers kept for the next request: [`TimerPool`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::task::{Context, Poll, RawWakerVTable, Waker};
use std::time::Duration;

use tokio::runtime::{Handle, Id};
use tokio::time::Instant;

use crate::layer::Sleep;

/// How many idle timers a thread keeps (as many again kept by task).
const KEPT_PER_THREAD: usize = 1024;

/// Timers for longer are not kept: a kept timer holds the waker of the
/// task that last waited on it (and its runtime's handle) until its
/// deadline passes or it is reused.
const KEPT_UP_TO: Duration = Duration::from_secs(5 * 60);

/// An [`Alarm`] set up to this much before its next deadline is left as it
/// is, and moved on if it rings first: most requests (and heads) on a busy
/// connection come within a second of the last, and moving a tokio timer
/// is three atomic operations.
const SLACK: Duration = Duration::from_secs(1);

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
}

/// A thread's idle timers.
#[derive(Default)]
struct Kept {
    /// Each the timer of the last request its task (a client connection)
    /// made: the task's next request finds it still armed, with the task's
    /// waker in it, and needs neither to poll it again nor to move it.
    by_task: HashMap<tokio::task::Id, Timer, BuildHasherDefault<TaskIdHasher>>,
    /// The others (made outside a task, or more than one at a time in a
    /// task), newest last.
    idle: Vec<Timer>,
}

/// A hash of a task id, a number from a counter: one multiplication
/// (SipHash took 150 instructions a look-up, twice a request).
#[derive(Default)]
struct TaskIdHasher(u64);

impl Hasher for TaskIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A tokio timer moved from deadline to deadline, and polled only when it
/// may not hold the waker of the task waiting on it: polling a tokio timer
/// swaps in a fresh copy of the waker, four atomic operations, even when it
/// holds the same task's. What `TimerPool` keeps, and each plain client
/// connection's head clock.
///
/// It leans on a tokio timer waking the waker it was last polled with when
/// it rings, and giving it away then: one that has rung is polled again,
/// and so is one that was moved (moved after it rang, perhaps on another
/// worker between the look and the move, it holds no waker).
pub(super) struct Alarm {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The waker it was last polled with (its data and vtable addresses),
    /// which it holds until it rings or is moved.
    waker: Option<(usize, usize)>,
}

impl Alarm {
    /// An alarm for `deadline`.
    pub(super) fn new(deadline: Instant) -> Self {
        Alarm {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            waker: None,
        }
    }

    /// Whether it will wake the task `cx` wakes, with no poll.
    fn holds(&self, cx: &Context<'_>) -> bool {
        self.waker == Some(identity(cx.waker())) && !self.sleep.is_elapsed()
    }

    /// Ready once `deadline` has passed. Set to ring at it or up to
    /// [`SLACK`] before it; an early ring moves it on to the deadline.
    pub(super) fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let set = self.sleep.deadline();
        if set > deadline || set + SLACK < deadline {
            self.sleep.as_mut().reset(deadline);
            self.waker = None;
        }
        if self.holds(cx) {
            return Poll::Pending;
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                self.waker = Some(identity(cx.waker()));
                return Poll::Pending;
            }
            self.waker = None;
            // A fresh reading: the timer rang, so time has moved since any
            // reading this poll shares, and a shared one below the
            // deadline would move it and poll it round and round.
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// A kept alarm, with the runtime whose clock it runs on.
struct Timer {
    runtime: Id,
    alarm: Alarm,
}

impl Timer {
    fn new(runtime: Id, deadline: Instant) -> Self {
        Timer {
            runtime,
            alarm: Alarm::new(deadline),
        }
    }
}

/// What a waker wakes, as [`Waker::will_wake`] compares it.
fn identity(waker: &Waker) -> (usize, usize) {
    (
        waker.data() as usize,
        waker.vtable() as *const RawWakerVTable as usize,
    )
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
/// after request) is one compare-and-swap: no wheel operation, no system call.
/// A timer that went off, or one moved to an earlier deadline, is put on
/// the wheel again as a new one would be. A timer is only reused on the
/// runtime that made it; the pool is per thread and keeps up to 1,024,
/// each for at most five minutes (a longer one is not kept).
///
/// A timer goes back first to the task that used it (a client connection,
/// whose next request is timed the same way), up to 1,024 tasks a thread.
/// That task's next sleep finds it armed with the task's own waker, and
/// one that ends up to a second after the timer's deadline leaves it as it
/// is: no atomic operation at all (polling a tokio timer again swaps in a
/// fresh copy of the waker, four; moving it, three). A timer left a second
/// early rings early once, and is moved on to the deadline then.
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
pub struct PooledSleep {
    timer: Option<Timer>,
    /// When it is done.
    deadline: Instant,
    /// The task it was made in, whose timer it goes back to.
    task: Option<tokio::task::Id>,
    /// Whether the timer goes back to the pool when dropped.
    keep: bool,
}

impl std::fmt::Debug for PooledSleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledSleep")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl PooledSleep {
    fn new(duration: Duration) -> Self {
        let deadline = deadline_after(duration);
        let task = tokio::task::try_id();
        // This task's own timer. Which runtime it is on is checked when it
        // is next polled (see `poll`), not here: a request finds it armed
        // with its task's waker, and never polls it.
        let own = task.and_then(|task| {
            KEPT.try_with(|kept| kept.borrow_mut().by_task.remove(&task))
                .ok()
                .flatten()
        });
        // A timer kept is moved to the deadline when it is polled.
        let timer = match own {
            Some(timer) => timer,
            None => {
                // Outside a runtime this panics, as `tokio::time::sleep` does.
                let runtime = Handle::current().id();
                let kept = KEPT
                    .try_with(|kept| {
                        let mut kept = kept.borrow_mut();
                        match kept.idle.last() {
                            Some(timer) if timer.runtime == runtime => kept.idle.pop(),
                            // Another runtime's (an earlier one on this
                            // thread, shut down by now, most likely): of no
                            // use here.
                            Some(_) => {
                                let stale = std::mem::take(&mut kept.idle);
                                drop(kept);
                                drop(stale);
                                None
                            }
                            None => None,
                        }
                    })
                    .ok()
                    .flatten();
                kept.unwrap_or_else(|| Timer::new(runtime, deadline))
            }
        };
        PooledSleep {
            timer: Some(timer),
            deadline,
            task,
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
        let this = self.get_mut();
        let Some(timer) = &mut this.timer else {
            return Poll::Ready(());
        };
        // A timer is polled only on its own runtime (one shut down would
        // panic): a task's own timer was kept by its task id, which tokio
        // says names one task at a time, not for ever. One that holds this
        // task's waker is on this task's runtime. (Polled outside any
        // runtime's context, as a tokio timer may be, it is polled as is.)
        if !timer.alarm.holds(cx) {
            if let Ok(current) = Handle::try_current() {
                let runtime = current.id();
                if timer.runtime != runtime {
                    *timer = Timer::new(runtime, this.deadline);
                }
            }
        }
        timer.alarm.poll_until(this.deadline, cx)
    }
}

impl Drop for PooledSleep {
    fn drop(&mut self) {
        let Some(timer) = self.timer.take().filter(|_| self.keep) else {
            return;
        };
        // At thread exit the pool may be gone: the timer is dropped. What
        // is let go is dropped after the pool is let go of.
        let _let_go = KEPT.try_with(|kept| {
            let mut kept = kept.borrow_mut();
            let mut ended = None;
            let spare = match self.task {
                Some(task) => {
                    // Tasks that ended leave their timers here: when the
                    // map is full, one of them goes for each that comes.
                    if kept.by_task.len() >= KEPT_PER_THREAD && !kept.by_task.contains_key(&task) {
                        let any = kept.by_task.keys().next().copied();
                        ended = any.and_then(|any| kept.by_task.remove(&any));
                    }
                    // Two at once in one task: the other one is idle.
                    kept.by_task.insert(task, timer)
                }
                None => Some(timer),
            };
            let spare = match spare {
                Some(timer) if kept.idle.len() < KEPT_PER_THREAD => {
                    kept.idle.push(timer);
                    None
                }
                spare => spare,
            };
            (ended, spare)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> usize {
        KEPT.with(|kept| kept.borrow().idle.len())
    }

    fn kept_by_task() -> usize {
        KEPT.with(|kept| kept.borrow().by_task.len())
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_task_gets_its_own_timer_back_and_it_rings_at_each_deadline() {
        tokio::spawn(async {
            let before = kept_by_task();
            drop(TimerPool.sleep(Duration::from_secs(30)));
            assert_eq!(kept_by_task(), before + 1);
            // Earlier than the kept timer: moved back.
            let start = Instant::now();
            TimerPool.sleep(Duration::from_millis(50)).await;
            assert_eq!(start.elapsed(), Duration::from_millis(50));
            assert_eq!(kept_by_task(), before + 1);
            // Armed by this task and left set within the slack of the next
            // deadline: the second sleep is not polled into the timer
            // again, and the timer's early ring moves it on.
            let start = Instant::now();
            let mut first = TimerPool.sleep(Duration::from_secs(10));
            assert!(futures_poll_once(&mut first).await.is_pending());
            drop(first);
            let second = TimerPool.sleep(Duration::from_millis(10_500));
            second.await;
            assert_eq!(start.elapsed(), Duration::from_millis(10_500));
            // Later than the slack: moved on at once.
            let start = Instant::now();
            drop(TimerPool.sleep(Duration::from_secs(1)));
            TimerPool.sleep(Duration::from_secs(40)).await;
            assert_eq!(start.elapsed(), Duration::from_secs(40));
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_timer_that_rang_while_kept_wakes_its_task_when_used_again() {
        tokio::spawn(async {
            let mut first = TimerPool.sleep(Duration::from_secs(30));
            assert!(futures_poll_once(&mut first).await.is_pending());
            drop(first);
            // The kept timer rings with no one waiting on it, and gives its
            // waker away.
            tokio::time::sleep(Duration::from_secs(31)).await;
            // Moved on after it rang, it holds no waker: it must be polled
            // again to wake this task.
            let start = Instant::now();
            let second = TimerPool.sleep(Duration::from_secs(30));
            tokio::time::timeout(Duration::from_secs(60), second)
                .await
                .expect("the timer woke its task");
            assert_eq!(start.elapsed(), Duration::from_secs(30));
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn two_sleeps_at_once_in_a_task_each_ring_at_their_deadline() {
        tokio::spawn(async {
            let start = Instant::now();
            let near = TimerPool.sleep(Duration::from_millis(200));
            let far = TimerPool.sleep(Duration::from_millis(700));
            near.await;
            assert_eq!(start.elapsed(), Duration::from_millis(200));
            far.await;
            assert_eq!(start.elapsed(), Duration::from_millis(700));
            // Both kept: one as the task's, one idle.
            let idle = kept();
            let mut again = TimerPool.sleep(Duration::from_millis(100));
            let also = TimerPool.sleep(Duration::from_millis(300));
            assert_eq!(kept(), idle - 1);
            (&mut again).await;
            also.await;
            assert_eq!(start.elapsed(), Duration::from_millis(1_000));
        })
        .await
        .unwrap();
    }

    /// Polls `future` once, with the task's own waker.
    async fn futures_poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
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
