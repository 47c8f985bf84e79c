//! A clock on waits for I/O, shared by [`SendTimeout`](super::send_timeout)
//! (writes to the client) and [`UpstreamBody`](super::UpstreamBody) (reads
//! of a backend's response body).

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

/// Started when an operation cannot go through, stopped when one does;
/// [`expired`](Self::expired) once a wait has lasted the limit. One tokio
/// timer, made on the first wait and moved on for the next (one atomic
/// operation while its last deadline is still ahead, a re-registration
/// after it passed); a timer left armed after a wait ended fires at most
/// once into a task that is not waiting on it (a spurious wake-up).
pub(crate) struct StallClock {
    limit: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    running: bool,
}

impl StallClock {
    /// A clock for waits of up to `limit` (`None`: no limit).
    pub(crate) fn new(limit: Option<Duration>) -> Self {
        StallClock {
            limit,
            sleep: None,
            running: false,
        }
    }

    /// The limit, for an error message.
    pub(crate) fn limit(&self) -> Duration {
        self.limit.unwrap_or_default()
    }

    /// An operation went through.
    pub(crate) fn stop(&mut self) {
        self.running = false;
    }

    /// An operation could not go through: whether the wait has now lasted
    /// the limit. Polls the timer with `cx`, so the task is woken when it
    /// runs out.
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        if !self.running {
            // A limit too far to reach is no limit (and cannot overflow).
            let Some(deadline) = super::clock::now().checked_add(limit) else {
                return false;
            };
            self.running = true;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}
