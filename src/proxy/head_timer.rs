//! The clock behind [`HEADER_READ_TIMEOUT`](super::HEADER_READ_TIMEOUT): one
//! tokio timer per connection, moved on for each request head.
//!
//! hyper asks its timer for a new sleep every time it starts waiting for a
//! head, and drops it once the head is in: with hyper-util's `TokioTimer`
//! that is a tokio timer registered and removed per request (a lock on the
//! timer wheel each way; ~1,600 instructions per proxied request, 4 % of the
//! gateway's). Here every sleep of a connection is a handle on one tokio
//! timer that stays registered: waiting for the next head moves its
//! deadline later, which tokio does with one atomic operation and no lock.
//! A timer left armed after its head arrived fires at most once per timeout
//! into a connection that is not waiting for it (a spurious wake-up, which
//! hyper ignores).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// One connection's head clock (hyper's [`Timer`](hyper::rt::Timer)).
#[derive(Default)]
pub(crate) struct HeadTimer {
    shared: Arc<Mutex<Option<Pin<Box<Sleep>>>>>,
    /// A deadline the first head must meet even if hyper would give it
    /// longer: a head begun before hyper took the connection.
    first_by: Mutex<Option<Instant>>,
}

impl HeadTimer {
    /// A timer whose first sleep ends by `deadline` at the latest.
    pub(crate) fn first_by(deadline: Instant) -> Self {
        HeadTimer {
            shared: Arc::default(),
            first_by: Mutex::new(Some(deadline)),
        }
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let first_by = self
            .first_by
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let deadline = first_by.map_or(deadline, |by| by.min(deadline));
        Box::pin(HeadSleep {
            deadline: tokio::time::Instant::from_std(deadline),
            shared: Arc::clone(&self.shared),
        })
    }

    /// tokio's clock, so that a runtime with a paused clock (tests) times
    /// heads by it, as `TokioTimer` does.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A sleep until `deadline` on the connection's shared timer.
struct HeadSleep {
    deadline: tokio::time::Instant,
    shared: Arc<Mutex<Option<Pin<Box<Sleep>>>>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let sleep = shared.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            // Later than the last head's deadline: tokio moves it without
            // touching the wheel. (Earlier would re-register: also right.)
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}
