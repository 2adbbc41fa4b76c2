//! Wake-ups of the settlement job runner and the webhook sender: one listening PostgreSQL
//! connection per worker process ([`tally_store::notify::listen`]) whose notifications wake
//! the task that owns the channel, so that new work starts at once instead of at the next
//! poll. Owns the reconnection: a lost connection is reopened with back-off, and each new
//! session wakes every task once, because notifications sent while nobody listened are lost.
//!
//! A [`Notify`] keeps one permit: a notification that arrives while its task is busy is not
//! lost, the task claims again as soon as it next waits.

use std::sync::Arc;
use std::time::Duration;
use tally_settings::DatabaseSettings;
use tally_store::notify;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::retry::{self, Delays};

/// What the listener wakes.
#[derive(Clone)]
pub struct Wakeups {
    /// Settlement jobs became QUEUED.
    pub jobs: Arc<Notify>,
    /// Webhook deliveries were scheduled.
    pub webhooks: Arc<Notify>,
    /// Listening sessions started so far (0: not listening yet): tests wait for the first
    /// before creating work whose pickup must prove the notification.
    pub sessions: watch::Receiver<u64>,
}

impl Wakeups {
    /// Wake-ups that nothing ever sends: the tasks fall back to polling.
    pub fn none() -> Self {
        let (_, sessions) = watch::channel(0);
        Self {
            jobs: Arc::new(Notify::new()),
            webhooks: Arc::new(Notify::new()),
            sessions,
        }
    }

    fn wake_all(&self) {
        self.jobs.notify_one();
        self.webhooks.notify_one();
    }

    fn wake(&self, channel: &str) {
        match channel {
            notify::SETTLEMENT_JOBS => self.jobs.notify_one(),
            notify::WEBHOOK_DELIVERIES => self.webhooks.notify_one(),
            _ => {}
        }
    }
}

/// Longest wait between two attempts to reconnect the listener.
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Starts listening until `stop`; returns the wake-ups and the listener's task.
pub fn spawn(
    database: DatabaseSettings,
    stop: CancellationToken,
) -> (Wakeups, tokio::task::JoinHandle<()>) {
    let (sessions_tx, sessions) = watch::channel(0);
    let wakeups = Wakeups {
        sessions,
        ..Wakeups::none()
    };
    let task = tokio::spawn(listen(database, wakeups.clone(), sessions_tx, stop));
    (wakeups, task)
}

async fn listen(
    database: DatabaseSettings,
    wakeups: Wakeups,
    sessions: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut delays = Delays::doubling(Duration::from_millis(200), RECONNECT_MAX);
    let channels = [notify::SETTLEMENT_JOBS, notify::WEBHOOK_DELIVERIES];
    while !stop.is_cancelled() {
        let result = notify::listen(
            &database,
            &channels,
            || {
                delays.reset();
                sessions.send_modify(|n| *n += 1);
                // Whatever was notified while we were not listening: look now.
                wakeups.wake_all();
                tracing::debug!("listening for settlement jobs and webhook deliveries");
            },
            |channel| wakeups.wake(channel),
            &stop,
        )
        .await;
        match result {
            Ok(()) => break,
            Err(e) => {
                let retry_in = delays.next_delay();
                tracing::warn!(error = %e, ?retry_in,
                    "listening connection lost; jobs and webhooks poll until it is back");
                if !retry::pause(&stop, retry_in).await {
                    break;
                }
            }
        }
    }
}
