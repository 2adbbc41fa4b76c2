//! The settlement job runner: one per worker process, beside the shard loops. It claims a
//! job (`FOR UPDATE SKIP LOCKED`, so runners of several workers share the queue), runs it
//! chunk by chunk (one day each; a few computing at once on their own connections, committing
//! in day order) while a heartbeat proves it alive, and checks for cancellation and shutdown
//! between chunks. An idle runner is woken by PostgreSQL when a job becomes QUEUED
//! (`LISTEN/NOTIFY`, see [`crate::wakeups`]); its poll is only a fallback.
//!
//! Jobs survive their runner: a runner that dies (process killed, task aborted) leaves its
//! job RUNNING with an aging heartbeat; after [`JobsConfig::stale_after`] another runner
//! resumes it from its recorded progress (each chunk commits with its progress, and chunks are
//! idempotent), or, after [`JobsConfig::max_attempts`] lost runners, marks it FAILED with the
//! reason. A graceful shutdown hands the job back as QUEUED at once.

use chrono::{Days, NaiveDate};
use futures_util::stream::{FuturesOrdered, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tally_settings::DatabaseSettings;
use tally_store::settlement::{self, Claim, JobStatus, Step};
use tally_store::{Pool, StoreError};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::retry::{self, Delays};

/// How a runner paces itself. The defaults suit production; tests shrink them.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Name recorded on claimed jobs, for operators.
    pub runner: String,
    /// Pause between looks for work when the queue is empty and no notification came: the
    /// fallback for a runner whose listener was disconnected (see [`run_woken`]).
    pub poll_every: Duration,
    /// Heartbeat period; well below `stale_after` so a busy runner is never taken for dead.
    pub heartbeat_every: Duration,
    /// A RUNNING job without a heartbeat for this long has lost its runner.
    pub stale_after: Duration,
    /// Claims after which an abandoned job is FAILED instead of resumed: a job that kills its
    /// worker every time must not take every worker down in turn.
    pub max_attempts: i32,
    /// Days per chunk (one transaction). One day keeps progress fine-grained and a chunk
    /// short; a day is aggregated in SQL whatever its size, so memory does not grow with it.
    pub chunk_days: u64,
    /// Chunks computed at once, each on its own connection (they still commit in day order).
    /// PostgreSQL runs one INSERT … SELECT on one core; two chunks use two. Each costs a
    /// pooled connection while it runs, on top of the heartbeat's.
    pub parallel_chunks: usize,
    /// Pause after each chunk. Zero in production; tests set it to make a job slow
    /// deterministically (to cancel it, or kill its runner, mid-way).
    pub chunk_pause: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            runner: format!(
                "worker-{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            poll_every: Duration::from_secs(5),
            heartbeat_every: Duration::from_secs(3),
            stale_after: settlement::STALE_AFTER,
            max_attempts: 3,
            chunk_days: 1,
            parallel_chunks: 2,
            chunk_pause: Duration::ZERO,
        }
    }
}

/// A pool of the runner's own, sized for its chunks and its heartbeat, so that a settlement
/// never takes connections the shard loops need (nor waits behind them). Falls back to
/// `shared` if it cannot be built (it is built lazily, so only a bad setting could fail, and
/// the shared pool was built from the same settings).
pub fn own_pool(database: &DatabaseSettings, config: &JobsConfig, shared: &Pool) -> Pool {
    let mut settings = database.clone();
    // Chunks in flight, the heartbeat, and the planning probe / claim.
    settings.pool_size = config.parallel_chunks.max(1) + 2;
    tally_store::connect(&settings).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "settlement jobs share the worker's pool");
        shared.clone()
    })
}

/// Runs jobs until `stop` is cancelled, polling every [`JobsConfig::poll_every`] only. A job
/// in hand is handed back (QUEUED) at the next chunk boundary.
pub async fn run(pool: Pool, config: JobsConfig, stop: CancellationToken) {
    run_woken(pool, config, Arc::new(Notify::new()), stop).await;
}

/// [`run`], also woken by `wake` (the listener's notification that a job became QUEUED):
/// an idle runner then claims at once, and `poll_every` is only the fallback for
/// notifications lost while the listener was disconnected.
pub async fn run_woken(pool: Pool, config: JobsConfig, wake: Arc<Notify>, stop: CancellationToken) {
    // After a failed poll the next waits twice the poll interval, doubling up to the cap.
    let mut failing = Delays::doubling((config.poll_every * 2).min(POLL_MAX), POLL_MAX);
    while !stop.is_cancelled() {
        match next(&pool, &config).await {
            Ok(Some(claim)) => {
                failing.reset();
                tracing::info!(job = %claim.job.id, from = %claim.job.from, to = %claim.job.to,
                    processed = claim.job.processed, attempt = claim.job.attempts,
                    "settlement job claimed");
                run_job(&pool, &config, claim, &stop).await;
            }
            Ok(None) => {
                failing.reset();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(config.poll_every) => {}
                }
            }
            Err(e) => {
                let retry_in = failing.next_delay();
                tracing::warn!(error = %e, ?retry_in, "settlement job poll failed");
                if !retry::pause(&stop, retry_in).await {
                    break;
                }
            }
        }
    }
}

/// Longest wait between two polls while polling fails.
const POLL_MAX: Duration = Duration::from_secs(10);

async fn next(pool: &Pool, config: &JobsConfig) -> Result<Option<Claim>, StoreError> {
    let ended = settlement::fail_abandoned(pool, config.stale_after, config.max_attempts).await?;
    if ended > 0 {
        tracing::warn!(
            jobs = ended,
            "abandoned settlement jobs ended (out of attempts, or cancelled)"
        );
    }
    settlement::claim(
        pool,
        &config.runner,
        config.stale_after,
        config.max_attempts,
    )
    .await
}

/// How a job run ended, for the log.
#[derive(Debug)]
enum Outcome {
    Completed,
    Cancelled,
    Failed(String),
    HandedBack,
    Lost,
}

/// Runs one claimed job to its end, or until the claim is lost or `stop` is cancelled.
pub async fn run_job(pool: &Pool, config: &JobsConfig, claim: Claim, stop: &CancellationToken) {
    let id = claim.job.id;
    // The heartbeat runs in this same future (not a spawned task): if the runner dies, its
    // heartbeat dies with it, which is what lets another runner take over.
    let outcome = tokio::select! {
        outcome = chunks(pool, config, &claim, stop) => outcome,
        () = heartbeat(pool, config, &claim) => Outcome::Lost,
    };
    match outcome {
        Outcome::Completed => tracing::info!(job = %id, "settlement job completed"),
        Outcome::Cancelled => tracing::info!(job = %id, "settlement job cancelled"),
        Outcome::Failed(e) => tracing::error!(job = %id, error = %e, "settlement job failed"),
        Outcome::HandedBack => tracing::info!(job = %id, "settlement job handed back"),
        Outcome::Lost => {
            tracing::warn!(job = %id, "settlement job taken over or ended by someone else")
        }
    }
}

/// Returns when the claim is lost; heartbeats until then.
async fn heartbeat(pool: &Pool, config: &JobsConfig, claim: &Claim) {
    loop {
        tokio::time::sleep(config.heartbeat_every).await;
        match settlement::heartbeat(pool, claim).await {
            Ok(true) => {}
            Ok(false) => return,
            // The database is unreachable: keep trying; if this lasts past the stale limit
            // another runner may take over, and the fenced writes then tell us.
            Err(e) => tracing::warn!(job = %claim.job.id, error = %e, "heartbeat failed"),
        }
    }
}

/// The day `offset` days after `day` (ranges are validated, so the calendar's end is never
/// reached; saturate rather than panic if it were).
fn day_after(day: NaiveDate, offset: i64) -> NaiveDate {
    day.checked_add_days(Days::new(u64::try_from(offset).unwrap_or(0)))
        .unwrap_or(NaiveDate::MAX)
}

/// Why a pipeline run stopped before the job's end.
enum Interrupted {
    /// A chunk (or its planning) failed; retry from the committed prefix if `retryable`.
    Error(StoreError),
    /// Stop at once with this outcome.
    Done(Outcome),
}

async fn chunks(
    pool: &Pool,
    config: &JobsConfig,
    claim: &Claim,
    stop: &CancellationToken,
) -> Outcome {
    if claim.job.cancel_requested {
        return end(pool, claim, JobStatus::Cancelled, None).await;
    }
    let mut committed = claim.job.processed;
    let mut delays = Delays::doubling(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match pipeline(pool, config, claim, stop, &mut committed).await {
            Interrupted::Done(outcome) => return outcome,
            // Connection lost, pool exhausted, deadlock with an overlapping job, …: the
            // uncommitted chunks rolled back; go again from the committed prefix. A stop cuts
            // the wait short: the pipeline then hands the job back at its first boundary.
            Interrupted::Error(e) if e.is_retryable() => {
                let retry_in = delays.next_delay();
                tracing::warn!(job = %claim.job.id, error = %e, ?retry_in,
                    "settlement chunk failed, retrying");
                retry::pause(stop, retry_in).await;
            }
            Interrupted::Error(e) => {
                let reason = format!("settlement chunk failed: {e}");
                return end(pool, claim, JobStatus::Failed, Some(&reason)).await;
            }
        }
    }
}

/// Runs the job from `committed` days on: up to `parallel_chunks` chunks compute at once on
/// their own connections, and commit in day order (each waits for the one before it), so the
/// recorded progress is always a prefix of the range. Dropping the pipeline rolls back every
/// chunk not yet committed.
async fn pipeline(
    pool: &Pool,
    config: &JobsConfig,
    claim: &Claim,
    stop: &CancellationToken,
    committed: &mut i64,
) -> Interrupted {
    let job = &claim.job;
    let mut planned = *committed;
    let mut previous: Option<oneshot::Receiver<()>> = None;
    let mut inflight = FuturesOrdered::new();
    // Whether the chunk that completes the job is planned.
    let mut closed = false;
    loop {
        // Plan more chunks while there is room and days left.
        while inflight.len() < config.parallel_chunks.max(1) && !closed && !stop.is_cancelled() {
            let busy = if planned >= job.total {
                None
            } else {
                let next = day_after(job.from, planned);
                match settlement::next_busy_day(pool, next, job.to).await {
                    Ok(busy) => busy,
                    Err(e) => return Interrupted::Error(e),
                }
            };
            // No transaction left in the range: one closing chunk records the rest as done.
            let (days, through) = match busy {
                None => (None, job.total),
                Some(first) => {
                    let chunk_days = i64::try_from(config.chunk_days.max(1)).unwrap_or(1);
                    let last = day_after(first, chunk_days - 1).min(job.to);
                    (Some((first, last)), (last - job.from).num_days() + 1)
                }
            };
            closed = through >= job.total;
            let (committed_tx, committed_rx) = oneshot::channel::<()>();
            let before = previous.replace(committed_rx);
            inflight.push_back(async move {
                let before = before.map(|rx| async move { rx.await.is_ok() });
                let step = settlement::chunk(pool, claim, days, through, before).await;
                if matches!(step, Ok(Step::Progressed { .. } | Step::Completed)) {
                    let _ = committed_tx.send(());
                }
                step
            });
            planned = through;
        }
        let Some(step) = inflight.next().await else {
            // Nothing in flight and nothing planned: only a stop request gets here.
            return Interrupted::Done(hand_back(pool, claim).await);
        };
        match step {
            Ok(Step::Completed) => return Interrupted::Done(Outcome::Completed),
            Ok(Step::Lost) => return Interrupted::Done(Outcome::Lost),
            // Its predecessor did not commit; that one's result came first and was handled.
            Ok(Step::Abandoned) => continue,
            Ok(Step::Progressed {
                processed,
                cancel_requested,
            }) => {
                *committed = processed;
                if cancel_requested {
                    drop(inflight);
                    return Interrupted::Done(end(pool, claim, JobStatus::Cancelled, None).await);
                }
                if !config.chunk_pause.is_zero() {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(config.chunk_pause) => {}
                    }
                }
            }
            Err(e) => return Interrupted::Error(e),
        }
        if stop.is_cancelled() {
            drop(inflight);
            return Interrupted::Done(hand_back(pool, claim).await);
        }
    }
}

/// Graceful shutdown: the job goes back to the queue at once.
async fn hand_back(pool: &Pool, claim: &Claim) -> Outcome {
    match settlement::release(pool, claim).await {
        Ok(true) => Outcome::HandedBack,
        // Not handed back: the heartbeat stops with us, so the job is resumed after the stale
        // limit anyway.
        Ok(false) | Err(_) => Outcome::Lost,
    }
}

async fn end(pool: &Pool, claim: &Claim, status: JobStatus, error: Option<&str>) -> Outcome {
    match settlement::finish(pool, claim, status, error).await {
        Ok(true) => match status {
            JobStatus::Cancelled => Outcome::Cancelled,
            _ => Outcome::Failed(error.unwrap_or_default().to_string()),
        },
        Ok(false) => Outcome::Lost,
        Err(e) => {
            // Left RUNNING: it is resumed or ended after the stale limit.
            tracing::warn!(job = %claim.job.id, error = %e, "could not record the job's end");
            Outcome::Lost
        }
    }
}
