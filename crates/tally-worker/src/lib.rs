//! The tally worker: consumes the shard queues and applies their commands to PostgreSQL in
//! batches, exactly once and in order per account (see `../shared/ARCHITECTURE.md` §4).
//!
//! - [`ledger`]: the rules, as a pure function.
//! - [`apply`]: one batch = one transaction (dedupe + effects commit together).
//! - [`shard`]: the greedy consumer loop of one shard queue.
//! - [`dead_letters`]: archiving what the broker dead-lettered, and re-publishing it.
//! - [`Worker`]: connection, topology, one loop per shard, reconnection and shutdown.

pub mod apply;
pub mod dead_letters;
pub mod ledger;
pub mod shard;

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::time::Duration;
use tally_bus::Topology;
use tally_core::settings::Settings;
use tally_store::{Pool, StoreError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ledger::Rules;
use crate::shard::ShardContext;

/// Failures that stop a worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] tally_bus::BusError),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
}

/// A configured worker, ready to run.
pub struct Worker {
    settings: Settings,
    pool: Pool,
    topology: Topology,
}

impl Worker {
    /// Connects to PostgreSQL and checks the recorded shard count (a mismatch refuses to
    /// start). Migrations must have been applied (`tally-worker migrate`).
    pub async fn build(settings: Settings) -> Result<Self, WorkerError> {
        let pool = tally_store::connect(&settings.database)?;
        tally_store::meta::ensure_shard_count(&pool, settings.ledger.shard_count).await?;
        let topology = Topology {
            prefix: settings.broker.prefix.clone(),
            shard_count: settings.ledger.shard_count,
            delivery_limit: settings.broker.delivery_limit,
        };
        Ok(Self {
            settings,
            pool,
            topology,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Opens a short-lived broker connection for the operator commands.
    pub async fn broker(&self) -> Result<lapin::Connection, WorkerError> {
        let b = &self.settings.broker;
        Ok(tally_bus::connect(
            b.url.expose(),
            "tally-worker-cli",
            Duration::from_millis(b.connect_timeout_ms),
        )
        .await?)
    }

    fn rules(&self) -> Rules {
        Rules {
            withdraw_policy: self.settings.ledger.withdraw_policy,
            hold_ttl: chrono::Duration::seconds(
                i64::try_from(self.settings.ledger.hold_ttl_secs).unwrap_or(i64::MAX / 1000),
            ),
        }
    }

    /// Consumes until `shutdown` is cancelled, reconnecting with back-off whenever the broker
    /// connection is lost. On shutdown every shard loop finishes and acks its batch in hand.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.run_session(&shutdown).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "broker session failed"),
            }
            if shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        tracing::info!("worker stopped");
    }

    /// One broker connection: a channel and consumer per shard. Returns when the connection
    /// fails, a shard loop fails, or shutdown is requested.
    async fn run_session(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let b = &self.settings.broker;
        let name = format!("tally-worker-{}", std::process::id());
        let connection = tally_bus::connect(
            b.url.expose(),
            &name,
            Duration::from_millis(b.connect_timeout_ms),
        )
        .await?;
        let setup = connection.create_channel().await?;
        self.topology.declare(&setup).await?;
        let ctx = Arc::new(ShardContext {
            pool: self.pool.clone(),
            rules: self.rules(),
            batch_max: self.settings.worker.batch_max,
            replies: connection.create_channel().await?,
            sweep_every: Duration::from_secs(self.settings.worker.hold_sweep_secs.max(1)),
        });

        let session = shutdown.child_token();
        let tracker = TaskTracker::new();
        for shard in 0..self.topology.shard_count {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(self.settings.worker.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    self.topology.shard_queue(shard).into(),
                    format!("{name}-shard-{shard}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let (ctx, session) = (ctx.clone(), session.clone());
            tracker.spawn(async move {
                if let Err(e) = shard::run(ctx, shard, consumer, session.clone()).await {
                    tracing::warn!(shard, error = %e, "shard loop stopped");
                }
                // Any loop ending ends the session: reconnecting restores all of them.
                session.cancel();
            });
        }
        // Every worker archives dead letters: the archive is idempotent, so competing
        // archivers are harmless and any live worker keeps the dead-letter queue empty.
        let dead = connection.create_channel().await?;
        dead.basic_qos(100, BasicQosOptions::default()).await?;
        let dead_consumer = dead
            .basic_consume(
                self.topology.dead_queue().into(),
                format!("{name}-dead-letters").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (pool, stop) = (self.pool.clone(), session.clone());
        tracker.spawn(async move {
            if let Err(e) = dead_letters::archive(pool, dead_consumer, stop.clone()).await {
                tracing::warn!(error = %e, "dead-letter archiver stopped");
            }
            stop.cancel();
        });
        tracker.close();
        tracing::info!(shards = self.topology.shard_count, "worker consuming");

        let mut health = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = session.cancelled() => break,
                _ = health.tick() => {
                    if !connection.status().connected() {
                        break;
                    }
                }
            }
        }
        session.cancel();
        tracker.wait().await;
        let _ = connection.close(200, "worker stopping".into()).await;
        Ok(())
    }
}
