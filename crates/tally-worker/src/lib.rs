//! The tally worker: consumes the shard queues and applies their commands to PostgreSQL in
//! batches, exactly once and in order per account (see the README's Architecture section).
//!
//! - [`cli`]: the `tally-worker` subcommands.
//! - [`apply`]: one batch = one transaction (dedupe + effects commit together).
//! - [`commit`]: group commit — one transaction for the batches several shard loops have
//!   ready at once.
//! - [`audit`]: the conservation auditor on a timer, exported for the alert rules.
//! - [`shard`]: the greedy consumer loop of one shard queue.
//! - [`dead_letters`]: archiving what the broker dead-lettered, and re-publishing it.
//! - [`jobs`]: the settlement job runner (claims, chunks, heartbeats, resumes).
//! - [`metrics`]: the worker's `GET /metrics` listener.
//! - [`retry`]: back-off between attempts, cut short by a stop token.
//! - [`webhooks`]: the balance webhook sender (claims due deliveries, signs, retries).
//! - [`Worker`]: connection, topology, shard leases (about K / live workers each, fenced by
//!   epoch), one loop per owned shard, reconnection and shutdown. Its shard sessions and its
//!   broker connection are bounded (`worker.session_bounds()`), so a stalled worker's shards
//!   pass to another within about the lease TTL.

pub mod apply;
pub mod audit;
pub mod cli;
pub mod commit;
pub mod dead_letters;
pub mod jobs;
pub mod metrics;
pub mod retry;
pub mod shard;
pub mod wakeups;
pub mod webhooks;

use futures_util::future::join_all;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tally_bus::{Connection, Endpoints, Topology};
use tally_core::ledger::Rules;
use tally_settings::Settings;
use tally_store::leases::Lease;
use tally_store::{Pool, StoreError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::commit::Committer;
use crate::retry::Delays;
use crate::shard::{ShardContext, ShardError};

/// Failures that stop a worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] tally_bus::BusError),
    #[error(transparent)]
    Settings(#[from] tally_settings::SettingsError),
    #[error("binding the metrics listener on {addr}: {source}")]
    MetricsListener {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A configured worker, ready to run.
pub struct Worker {
    settings: Settings,
    /// For operator commands, metrics and the jobs' and webhooks' fallback: statements there
    /// may run long (an audit of a big ledger) and take no shard's lock.
    pool: Pool,
    /// For the shard loops and the leases: sessions bounded by `worker.session_bounds()`, so
    /// a stalled worker gives its shards back (see `tally_store::connect_worker`).
    shard_pool: Pool,
    topology: Topology,
    /// The broker's nodes: each session connects to a live one, after a lost connection
    /// starting with the next node.
    endpoints: Endpoints,
    /// This worker's name in leases and in the broker's connection list.
    id: String,
    /// Bound at build (a taken port fails start-up, not later); served by `run`.
    metrics: Option<std::net::TcpListener>,
}

impl Worker {
    /// Connects to PostgreSQL and checks the recorded shard count (a mismatch refuses to
    /// start). Migrations must have been applied (`tally-worker migrate`).
    pub async fn build(settings: Settings) -> Result<Self, WorkerError> {
        tally_telemetry::metrics::init_worker();
        let metrics = match settings.worker.metrics_listen()? {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .map_err(|source| WorkerError::MetricsListener { addr, source })?,
            ),
            None => None,
        };
        let shard_pool = tally_store::connect_worker(&settings).await?;
        // Lazy: opens connections only if a command or a fallback uses it.
        let pool = tally_store::connect(&settings.database)?;
        let topology = Topology::from_settings(&settings);
        let endpoints = Endpoints::from_settings(&settings.broker);
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        Ok(Self {
            settings,
            pool,
            shard_pool,
            topology,
            endpoints,
            id: format!("tally-worker-{}-{}", std::process::id(), &nonce[..8]),
            metrics,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The amount rules messages are checked against (the API's, from `ledger.*`).
    pub fn amount_rules(&self) -> tally_core::AmountRules {
        self.settings.ledger.amount_rules()
    }

    /// The port of the `/metrics` listener, if it is on.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    /// Opens a short-lived broker connection for the operator commands.
    pub async fn broker(&self) -> Result<Connection, WorkerError> {
        Ok(Connection::open(
            &self.endpoints,
            "tally-worker-cli",
            Duration::from_millis(self.settings.broker.connect_timeout_ms),
            None,
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

    /// Consumes its share of the shards until `shutdown` is cancelled, reconnecting with
    /// back-off whenever the broker connection is lost. On shutdown every shard loop finishes
    /// and acks its batch in hand, and the leases are released.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let metrics = self.serve_metrics(&shutdown);
        // Settlement jobs need only PostgreSQL: their runner lives beside the broker sessions,
        // through reconnections. Aborted with this future (a killed worker kills its runner,
        // whose job is then resumed elsewhere); on shutdown it hands its job back.
        // Both are woken by one LISTEN connection (new work starts at once); their polls are
        // only a fallback for notifications lost while it was disconnected.
        let (wake, listener) = wakeups::spawn(self.settings.database.clone(), shutdown.clone());
        let listener = tokio_util::task::AbortOnDropHandle::new(listener);
        let config = jobs::JobsConfig {
            poll_every: Duration::from_millis(self.settings.jobs.poll_ms),
            ..jobs::JobsConfig::default()
        };
        let jobs = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(jobs::run_woken(
            jobs::own_pool(&self.settings.database, &config, &self.pool),
            config,
            wake.jobs.clone(),
            shutdown.clone(),
        )));
        // Webhooks, likewise: killed with the worker (its leases expire, another sender
        // delivers); on shutdown it stops claiming and what it has not sent stays pending.
        let hooks = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(webhooks::run_woken(
            webhooks::own_pool(&self.settings.database, &self.settings.webhooks, &self.pool),
            self.settings.webhooks.clone(),
            wake.webhooks.clone(),
            shutdown.clone(),
        )));
        // The auditor on a timer, for the alert rules; stopped with the worker.
        let audit = (self.settings.worker.audit_every_secs > 0).then(|| {
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(audit::run(
                self.pool.clone(),
                Duration::from_secs(self.settings.worker.audit_every_secs),
                shutdown.clone(),
            )))
        });
        // Decisions use PostgreSQL's clock (see `apply`); this host's offset to it is only
        // watched: logged when large and exported as tally_clock_offset_seconds.
        tally_store::clock::DbClock::start(
            self.pool.clone(),
            Duration::from_millis(self.settings.ledger.clock_check_ms),
            Duration::from_millis(self.settings.ledger.max_clock_skew_ms),
            shutdown.clone(),
        )
        .await;
        self.sessions(&shutdown).await;
        let _ = jobs.await;
        if let Some(task) = metrics {
            finish(task).await;
        }
        let _ = hooks.await;
        let _ = listener.await;
        if let Some(audit) = audit {
            let _ = audit.await;
        }
        tracing::info!("worker stopped");
    }

    /// Starts the `/metrics` listener bound at build, if any.
    fn serve_metrics(&mut self, shutdown: &CancellationToken) -> Option<JoinHandle<()>> {
        let listener = self.metrics.take()?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        match metrics::serve(listener, self.pool.clone(), shutdown.clone()) {
            Ok(task) => {
                tracing::info!(port, "metrics listening");
                Some(task)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener not started");
                None
            }
        }
    }

    /// Broker sessions one after the other until shutdown. Between two, a pause: the first
    /// one after a session that came up, doubling while sessions fail to start.
    async fn sessions(&self, shutdown: &CancellationToken) {
        let mut reconnect = Delays::doubling(Duration::from_millis(100), Duration::from_secs(2));
        while !shutdown.is_cancelled() {
            let session = self.run_session(shutdown).await;
            if session.is_ok() {
                reconnect.reset();
            }
            let retry_in = reconnect.next_delay();
            if let Err(e) = session {
                tracing::warn!(error = %e, ?retry_in, "broker session failed");
            }
            if shutdown.is_cancelled() || !retry::pause(shutdown, retry_in).await {
                break;
            }
        }
    }

    /// One broker connection. Shards are consumed only under a lease; every tick the worker
    /// renews its leases, gives up shards beyond its fair share (after their loop stopped and
    /// acked) and takes free ones up to it. Returns when the connection fails, a shard loop
    /// fails for a broker reason, or shutdown is requested; then every shard loop finishes its
    /// batch in hand and the leases are released so other workers take over at once.
    async fn run_session(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        // A short heartbeat: if this process stalls, the broker drops its consumers within
        // about the lease TTL and the shards' next owners get their deliveries.
        let connection = Connection::open(
            &self.endpoints,
            &self.id,
            Duration::from_millis(self.settings.broker.connect_timeout_ms),
            Some(self.settings.worker.session_bounds().heartbeat),
        )
        .await?;
        connection.declare(&self.topology).await?;
        let ctx = Arc::new(ShardContext {
            pool: self.shard_pool.clone(),
            committer: Committer::spawn(self.shard_pool.clone(), self.rules()),
            rules: self.rules(),
            amount_rules: self.settings.ledger.amount_rules(),
            batch_max: self.settings.worker.batch_max,
            replies: connection.replier().await?,
            sweep_every: Duration::from_secs(self.settings.worker.hold_sweep_secs.max(1)),
        });
        let session = shutdown.child_token();
        let archiver = self.archive_dead_letters(&connection, &session).await?;
        tracing::info!(worker = %self.id, "worker connected");
        let mut owned = HashMap::new();
        self.hold_leases(&connection, &ctx, &mut owned, &session)
            .await;

        // Every wait below is bounded: after a broker restart the old connection may never
        // answer, and a hung teardown would keep the worker from reconnecting or exiting.
        session.cancel();
        let pool = &self.shard_pool;
        join_all(
            owned
                .drain()
                .map(|(_, running)| stop_and_release(pool, running)),
        )
        .await;
        let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, tally_store::leases::leave(pool, &self.id))
            .await;
        finish(archiver).await;
        connection.close("worker stopping", TEARDOWN_TIMEOUT).await;
        Ok(())
    }

    /// Every worker archives dead letters: the archive is idempotent, so competing archivers
    /// are harmless and any live worker keeps the dead-letter queue empty. A failing archiver
    /// cancels `session` (the connection is likely gone).
    async fn archive_dead_letters(
        &self,
        connection: &Connection,
        session: &CancellationToken,
    ) -> Result<JoinHandle<()>, WorkerError> {
        let consumer = connection
            .consume(
                &self.topology.dead_queue(),
                &format!("{}-dead-letters", self.id),
                DEAD_LETTER_PREFETCH,
            )
            .await?;
        let (pool, stop) = (self.pool.clone(), session.clone());
        let rules = self.settings.ledger.amount_rules();
        Ok(tokio::spawn(async move {
            if let Err(e) = dead_letters::archive(pool, consumer, &rules, stop.clone()).await {
                tracing::warn!(error = %e, "dead-letter archiver stopped");
                stop.cancel();
            }
        }))
    }

    /// The lease ticks of a session, until it is cancelled, the connection drops or a shard
    /// loop ends for a broker reason.
    async fn hold_leases(
        &self,
        connection: &Connection,
        ctx: &Arc<ShardContext>,
        owned: &mut HashMap<u16, Running>,
        session: &CancellationToken,
    ) {
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.settings.worker.lease_tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = session.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !connection.is_connected() || reap(owned).await {
                return;
            }
            // A database outage only pauses rebalancing: current loops keep their leases
            // until they expire, and the fence stops them if the shard moved meanwhile.
            if let Err(e) = self.rebalance(connection, ctx, owned, session).await {
                tracing::warn!(error = %e, "lease rebalance failed");
            }
        }
    }

    /// One lease tick: heartbeat, renew, shed extras, take up to the fair share.
    async fn rebalance(
        &self,
        connection: &Connection,
        ctx: &Arc<ShardContext>,
        owned: &mut HashMap<u16, Running>,
        session: &CancellationToken,
    ) -> Result<(), WorkerError> {
        let ttl = Duration::from_millis(self.settings.worker.lease_ttl_ms);
        let live = tally_store::leases::heartbeat(&self.shard_pool, &self.id, ttl)
            .await?
            .max(1);
        let k = i64::from(self.topology.shard_count);
        let fair = (k + live - 1) / live;

        let running: Vec<u16> = owned.keys().copied().collect();
        let held: HashMap<u16, i64> =
            tally_store::leases::renew(&self.shard_pool, &self.id, &running, ttl)
                .await?
                .into_iter()
                .map(|l| (l.shard, l.epoch))
                .collect();
        let lost: Vec<u16> = owned
            .iter()
            .filter(|(shard, r)| held.get(shard) != Some(&r.lease.epoch))
            .map(|(shard, _)| *shard)
            .collect();
        for shard in lost {
            if let Some(running) = owned.remove(&shard) {
                tracing::warn!(shard, "lease lost; stopping the shard");
                running.stop.cancel();
                finish(running.task).await;
            }
        }
        // Shed the highest shards first, so ownership stays stable and predictable.
        let mut mine: Vec<u16> = owned.keys().copied().collect();
        mine.sort_unstable();
        let keep = usize::try_from(fair).unwrap_or(usize::MAX);
        for shard in mine.into_iter().skip(keep) {
            if let Some(running) = owned.remove(&shard) {
                tracing::info!(shard, fair, "handing a shard over");
                stop_and_release(&self.shard_pool, running).await;
            }
        }
        let want = fair - i64::try_from(owned.len()).unwrap_or(i64::MAX);
        for lease in tally_store::leases::acquire(&self.shard_pool, &self.id, want, ttl).await? {
            let shard = lease.shard;
            match self
                .start_shard(connection, ctx, lease.clone(), session)
                .await
            {
                Ok(running) => {
                    tracing::info!(shard, epoch = lease.epoch, "shard acquired");
                    owned.insert(shard, running);
                }
                Err(e) => {
                    let _ = tally_store::leases::release(&self.shard_pool, &lease).await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn start_shard(
        &self,
        connection: &Connection,
        ctx: &Arc<ShardContext>,
        lease: Lease,
        session: &CancellationToken,
    ) -> Result<Running, WorkerError> {
        // Single active consumer: if the previous owner's consumer is still attached, this one
        // waits, and takes over — with the unacked messages, in order — when it goes away.
        let consumer = connection
            .consume(
                &self.topology.shard_queue(lease.shard),
                &format!("{}-shard-{}", self.id, lease.shard),
                self.settings.worker.prefetch,
            )
            .await?;
        let stop = session.child_token();
        let task = tokio::spawn(shard::run(
            ctx.clone(),
            lease.clone(),
            consumer,
            stop.clone(),
        ));
        Ok(Running {
            lease,
            stop,
            task,
            _owned: tally_telemetry::metrics::OwnedShard::new(),
        })
    }
}

/// A shard loop this worker runs under a lease.
struct Running {
    lease: Lease,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ShardError>>,
    /// Counts this shard in `tally_shards_owned` while it runs.
    _owned: tally_telemetry::metrics::OwnedShard,
}

/// Removes finished shard loops; returns true if one ended for a broker reason (the session
/// must be rebuilt). A loop fenced out just ends: its lease is gone.
async fn reap(owned: &mut HashMap<u16, Running>) -> bool {
    let finished: Vec<u16> = owned
        .iter()
        .filter(|(_, r)| r.task.is_finished())
        .map(|(shard, _)| *shard)
        .collect();
    let mut broken = false;
    for shard in finished {
        let Some(running) = owned.remove(&shard) else {
            continue;
        };
        match running.task.await {
            Ok(Err(ShardError::Fenced(e))) => tracing::warn!(shard, error = %e, "shard fenced out"),
            Ok(Err(e)) => {
                tracing::warn!(shard, error = %e, "shard loop stopped");
                broken = true;
            }
            Ok(Ok(())) | Err(_) => {}
        }
    }
    broken
}

/// Unsettled dead letters the archiver holds at a time.
const DEAD_LETTER_PREFETCH: u16 = 100;

/// Longest wait for one step of a teardown: a shard loop finishing its batch in hand, a close
/// the broker may never answer. Past it the step is abandoned (a loop is aborted: its batch is
/// not acked and will be redelivered, deduplicated if it was committed).
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for a task to end, for at most [`TEARDOWN_TIMEOUT`]; aborts it past that.
async fn finish<T>(mut task: JoinHandle<T>) {
    if tokio::time::timeout(TEARDOWN_TIMEOUT, &mut task)
        .await
        .is_err()
    {
        tracing::warn!("a task did not stop in time; aborting it");
        task.abort();
    }
}

/// Stops a shard loop (it finishes and acks its batch in hand) and then releases its lease.
async fn stop_and_release(pool: &Pool, running: Running) {
    running.stop.cancel();
    finish(running.task).await;
    let released = tokio::time::timeout(
        TEARDOWN_TIMEOUT,
        tally_store::leases::release(pool, &running.lease),
    );
    if let Ok(Err(e)) = released.await {
        tracing::warn!(shard = running.lease.shard, error = %e, "lease not released; it will expire");
    }
}
