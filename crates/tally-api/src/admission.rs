//! Admission control: refuse at once what cannot be served in time, instead of letting it time
//! out. A background task polls the shard queue depths; each request compares against them in
//! memory (see `[admission]` in config/default.toml for the thresholds and their reasoning).
//! The same depths are the `tally_queue_depth` gauges of `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tally_bus::Publisher;
use tally_core::Kind;
use tally_settings::AdmissionSettings;
use tally_telemetry::metrics;
use tokio_util::sync::CancellationToken;

/// The latest known depth of every shard queue.
pub struct Admission {
    settings: AdmissionSettings,
    depths: Vec<AtomicU32>,
    /// False until a poll succeeded, and again after one failed: unknown depths shed nothing.
    known: AtomicBool,
}

impl Admission {
    /// Starts polling `publisher`'s queue depths until `shutdown`.
    pub fn start(
        publisher: Publisher,
        settings: AdmissionSettings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let shards = usize::from(publisher.topology().shard_count);
        let admission = Arc::new(Self {
            depths: (0..shards).map(|_| AtomicU32::new(0)).collect(),
            known: AtomicBool::new(false),
            settings,
        });
        let poller = admission.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis(poller.settings.poll_ms.max(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match publisher.queue_depths().await {
                    // Shard queues come first, in shard order; the dead-letter queue last.
                    Ok(depths) => {
                        let dead = depths.get(shards).map(|(_, depth)| *depth);
                        for (shard, (slot, (_, depth))) in
                            (0u16..).zip(poller.depths.iter().zip(depths))
                        {
                            slot.store(depth, Ordering::Relaxed);
                            metrics::set_queue_depth(shard, depth);
                        }
                        if let Some(dead) = dead {
                            metrics::set_dead_letter_depth(dead);
                        }
                        poller.known.store(true, Ordering::Relaxed);
                    }
                    Err(_) => poller.known.store(false, Ordering::Relaxed),
                }
            }
        });
        admission
    }

    /// Whether a command of `kind` for `shard` should be refused now.
    pub fn overloaded(&self, kind: Kind, shard: u16) -> bool {
        if !self.known.load(Ordering::Relaxed) {
            return false;
        }
        let depth = self
            .depths
            .get(usize::from(shard))
            .map_or(0, |d| d.load(Ordering::Relaxed));
        match kind {
            Kind::WithdrawRequest => depth > self.settings.request_backlog,
            Kind::Deposit | Kind::Withdraw => depth > self.settings.max_backlog,
        }
    }
}
