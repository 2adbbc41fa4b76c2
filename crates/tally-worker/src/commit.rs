//! Group commit: one PostgreSQL transaction for the batches that several shard loops of this
//! worker have ready at the same time. PostgreSQL spends 1.4–2 ms of CPU on a batch
//! transaction whatever its size (a fence, a load, a write and a commit, each a fixed handful
//! of statements), against ≈ 0.02 ms per row (BENCHMARKS.md), and under moderate load every
//! shard loop's batches are 1–5 commands. Sharing the transaction divides that fixed cost by
//! the number of shards with work.
//!
//! No timer: a batch that finds a free slot is committed at once; the batches that arrive
//! while every slot is busy go together in the next group. Two groups may be in flight
//! (`IN_FLIGHT`): with one, PostgreSQL idled while the worker decoded and acked between
//! commits, and a full queue drained a third slower than with a transaction per shard
//! (BENCHMARKS.md). Each shard loop has at most one batch here (it waits for the outcome
//! before acking and taking the next), so a group never holds two batches of one shard, and
//! two groups in flight never touch the same shard's accounts.
//!
//! A batch of `ALONE_FROM` commands or more is committed by its own loop, in a transaction of
//! its own, as before group commit: its shard is backlogged, the commit's fixed cost is
//! already a small share of its rows', and backlogged shards drain faster side by side than
//! through the committer's slots (a 1-worker drain of a full queue: 53k rows/s alone, 36k/s
//! grouped, same sitting).
//!
//! A group that fails never fails another shard's batch: when the transaction of several
//! batches fails (a lease lost, a command that can never be applied, a lost connection),
//! each batch is applied again in its own transaction, and each loop gets only its own
//! result — the same result it would have had alone.

use std::sync::Arc;
use tally_core::ledger::Rules;
use tally_core::{Command, Outcome};
use tally_store::leases::Lease;
use tally_store::{Pool, StoreError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::apply::{apply_commands, apply_group, ShardBatch};

/// What a shard loop hands over, and where its outcome goes.
struct Job {
    lease: Lease,
    /// Shared with the loop, which keeps the batch for its acks and replies (no copy).
    commands: Arc<[Command]>,
    done: oneshot::Sender<Result<Vec<Option<Outcome>>, StoreError>>,
}

/// Why a batch handed to the committer has no result.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The committer's task is gone (it panicked): nothing more is committed in this
    /// session; the batch in hand stays unacked.
    #[error("the worker's committer stopped")]
    Stopped,
}

/// The handle the shard loops of one broker session share. The committing task ends when
/// the last handle is dropped.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::UnboundedSender<Job>,
    pool: Pool,
    rules: Rules,
}

/// Batches this large commit alone (see the module doc).
const ALONE_FROM: usize = 100;

impl Committer {
    /// Starts the committing task on `pool`.
    pub fn spawn(pool: Pool, rules: Rules) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(pool.clone(), rules, queue));
        Self { jobs, pool, rules }
    }

    /// Applies `commands` of `lease`'s shard, alone or with other shards' batches; the
    /// outcomes are the ones [`crate::apply::apply_commands`] gives.
    pub async fn apply(
        &self,
        lease: &Lease,
        commands: &Arc<[Command]>,
    ) -> Result<Vec<Option<Outcome>>, CommitError> {
        if commands.len() >= ALONE_FROM {
            return Ok(apply_commands(&self.pool, lease, commands, &self.rules).await?);
        }
        let (done, outcome) = oneshot::channel();
        let job = Job {
            lease: lease.clone(),
            commands: Arc::clone(commands),
            done,
        };
        self.jobs.send(job).map_err(|_| CommitError::Stopped)?;
        outcome
            .await
            .map_err(|_| CommitError::Stopped)?
            .map_err(CommitError::from)
    }
}

/// Group transactions of one worker in flight at once.
const IN_FLIGHT: usize = 2;

async fn run(pool: Pool, rules: Rules, mut queue: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A slot first, then the jobs: whatever arrived while every slot was busy is one group.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut group = Vec::new();
        if queue.recv_many(&mut group, usize::MAX).await == 0 {
            return;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            commit_and_answer(&pool, &rules, group).await;
            drop(slot);
        });
    }
}

async fn commit_and_answer(pool: &Pool, rules: &Rules, group: Vec<Job>) {
    let batches: Vec<ShardBatch<'_>> = group
        .iter()
        .map(|job| ShardBatch {
            lease: &job.lease,
            commands: &job.commands,
        })
        .collect();
    let results = commit(pool, &batches, rules).await;
    for (job, result) in group.into_iter().zip(results) {
        // A loop that stopped waiting (its task was aborted) leaves its batch unacked:
        // redelivered, it is recognised as a duplicate.
        let _ = job.done.send(result);
    }
}

/// Commits `batches` in one transaction or, if that fails and there are several, each in a
/// transaction of its own; one result per batch.
pub async fn commit(
    pool: &Pool,
    batches: &[ShardBatch<'_>],
    rules: &Rules,
) -> Vec<Result<Vec<Option<Outcome>>, StoreError>> {
    let error = match apply_group(pool, batches, rules).await {
        Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
        Err(e) if batches.len() == 1 => return vec![Err(e)],
        Err(e) => e,
    };
    tracing::debug!(%error, batches = batches.len(),
        "group commit failed; committing its batches one by one");
    let mut results = Vec::with_capacity(batches.len());
    for batch in batches {
        let alone = apply_group(pool, std::slice::from_ref(batch), rules).await;
        results.push(alone.map(|mut outcomes| outcomes.pop().unwrap_or_default()));
    }
    results
}
