//! The one retry policy of the service's write path. A write seals under the subject's
//! current key and stores with a check that the key did not change meanwhile; when another
//! write or a key job won the race (the store answers `Conflict`, or the key turned out to
//! be exhausted, stale or re-wrapped), the whole attempt (key, seal, store) starts again.
//! That one loop (`records::write`) is the only retry level of the service. Below it, each
//! backend's transaction primitive retries on its own terms (sled's conflict retry, the
//! PostgreSQL backend's serialization retry): those are part of one attempt.

use std::time::Duration;

/// How often and how patiently a contended operation is tried again.
#[derive(Clone, Copy, Debug)]
pub(super) struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Pause between attempts. Zero only yields to other tasks (the winner of the race
    /// has already committed when the loser learns of it, so there is nothing to wait for).
    pub backoff: Duration,
}

/// The write path's policy: enough rounds for every writer of one subject to get through
/// a burst of key changes (a usage-limit rotation, a re-wrap) without giving up.
pub(super) const WRITE: RetryPolicy = RetryPolicy {
    attempts: 64,
    backoff: Duration::ZERO,
};

/// What one attempt of a retried operation came to.
pub(super) enum Attempt<T> {
    Done(T),
    /// Lost a race; try again.
    Again,
}

impl RetryPolicy {
    /// Runs `attempt` until it is done or fails, at most `attempts` times; `exhausted` is
    /// the error once every attempt lost its race.
    pub(super) async fn run<T, E, Fut>(
        &self, mut attempt: impl FnMut() -> Fut, exhausted: impl FnOnce() -> E,
    ) -> Result<T, E>
    where
        Fut: std::future::Future<Output = Result<Attempt<T>, E>>,
    {
        for n in 1..=self.attempts {
            if n > 1 {
                self.pause().await;
            }
            match attempt().await? {
                Attempt::Done(value) => return Ok(value),
                Attempt::Again => continue,
            }
        }
        Err(exhausted())
    }

    async fn pause(&self) {
        if self.backoff.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(self.backoff).await;
        }
    }
}
