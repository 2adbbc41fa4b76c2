//! Retrying with back-off, the worker's one way: delays from a `backon` exponential schedule
//! ([`ExponentialBuilder`], no jitter), waits that a stop token cuts short, and an attempt in
//! flight never interrupted — a batch being committed finishes, so a shard loop told to stop
//! still acks what it committed.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Delays doubling from a first one up to a cap, never giving up (the caller's stop token
/// or its own rules end the retrying); restarted with [`Delays::reset`] after a success.
pub struct Delays {
    policy: ExponentialBuilder,
    max: Duration,
    delays: backon::ExponentialBackoff,
}

impl Delays {
    pub fn doubling(first: Duration, max: Duration) -> Self {
        let policy = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max)
            .without_max_times();
        Self {
            policy,
            max,
            delays: policy.build(),
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        // Without max times the schedule never ends; the cap is only the type's fallback.
        self.delays.next().unwrap_or(self.max)
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.delays = self.policy.build();
    }
}

/// Waits `delay`, or less if `stop` fires; false if it did.
pub async fn pause(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Runs `op` until it succeeds or fails with an error that `retryable` refuses, waiting the
/// `delays` between attempts (`notify` hears each error and the wait that follows). `None`
/// when `stop` cut a wait short: the last attempt failed and will not be retried here.
pub async fn until_stopped<T, E, Fut>(
    mut delays: Delays,
    stop: &CancellationToken,
    mut op: impl FnMut() -> Fut,
    retryable: impl Fn(&E) -> bool,
    notify: impl Fn(&E, Duration),
) -> Option<Result<T, E>>
where
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match op().await {
            Err(e) if retryable(&e) => {
                let delay = delays.next_delay();
                notify(&e, delay);
                if !pause(stop, delay).await {
                    return None;
                }
            }
            done => return Some(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn delays_double_up_to_the_cap_and_start_over_after_a_reset() {
        let mut delays = Delays::doubling(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<u128> = (0..6).map(|_| delays.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        delays.reset();
        assert_eq!(delays.next_delay(), Duration::from_millis(100));
    }

    fn quick() -> Delays {
        Delays::doubling(Duration::from_millis(1), Duration::from_millis(2))
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_and_others_returned() {
        let stop = CancellationToken::new();
        let attempts = Cell::new(0);
        let op = || {
            attempts.set(attempts.get() + 1);
            let n = attempts.get();
            async move {
                if n < 3 {
                    Err("busy")
                } else {
                    Ok(n)
                }
            }
        };
        let done = until_stopped(quick(), &stop, op, |e| *e == "busy", |_, _| {}).await;
        assert_eq!(done, Some(Ok(3)));

        let fatal = until_stopped(
            quick(),
            &stop,
            || async { Err::<(), _>("bad") },
            |e| *e == "busy",
            |_, _| {},
        )
        .await;
        assert_eq!(fatal, Some(Err("bad")));
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait_but_never_skips_the_attempt_in_hand() {
        let stop = CancellationToken::new();
        stop.cancel();
        let attempts = Cell::new(0);
        let op = || {
            attempts.set(attempts.get() + 1);
            async { Err::<(), _>("busy") }
        };
        let stopped = until_stopped(quick(), &stop, op, |_| true, |_, _| {}).await;
        assert_eq!(stopped, None);
        assert_eq!(attempts.get(), 1);
    }
}
