//! The consumer loop of one shard queue. Greedy batching: wait for one delivery, take what is
//! already buffered up to `batch_max` (an idle queue adds no latency), apply them in one
//! transaction — shared with the batches other shard loops of the worker have ready at that
//! moment ([`crate::commit`]) — then ack (`multiple`) and send withdraw_request replies.
//!
//! Failure handling: a retryable store error keeps the batch in hand and retries with
//! back-off (no nack, which would count against the delivery limit); a permanent one is
//! narrowed down by applying the batch's commands one by one, and the single command that
//! still fails — like an envelope that does not decode — is rejected to the dead-letter queue.
//!
//! Every committed batch feeds the batch metrics; each command's debug log line carries the
//! API's request id (see `tally_bus::headers::REQUEST_ID`).

use std::sync::Arc;
use std::time::Duration;
use tally_bus::{BusError, Consumer, Delivery, Replier};
use tally_core::ledger::Rules;
use tally_core::{AmountRules, Command, Outcome};
use tally_store::leases::Lease;
use tally_store::{Pool, StoreError};
use tally_telemetry::metrics;
use tokio_util::sync::CancellationToken;

use crate::apply::sweep_holds;
use crate::commit::{CommitError, Committer};
use crate::retry::{self, Delays};

/// What every shard loop of a worker shares.
pub struct ShardContext {
    pub pool: Pool,
    /// Commits the batches of every shard loop of the session.
    pub committer: Committer,
    pub rules: Rules,
    /// What an amount must respect: a message is checked against the API's rules again, so
    /// one published by hand cannot bypass them.
    pub amount_rules: AmountRules,
    /// Most deliveries per transaction.
    pub batch_max: usize,
    /// Sends the replies API replicas wait for (best effort: after a lost reply the API looks
    /// at the record, or times out: a withdraw_request is then voided, a deposit or withdraw
    /// answered with the ordinary 200 `accepted`).
    pub replies: Replier,
    pub sweep_every: Duration,
}

/// Why a shard loop stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The consumer or its channel failed (`BusError::ConsumerEnded` when it closed).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Another worker owns the shard now; the batch in hand was not committed.
    #[error("lease lost: {0}")]
    Fenced(StoreError),
    /// The session's committer is gone; the batch in hand was not acked.
    #[error(transparent)]
    Committer(CommitError),
}

/// Runs until `stop` is cancelled (returns Ok after finishing the batch in hand), the lease is
/// lost, or the consumer fails. Closes its consumer on the way out, which hands unacked
/// deliveries back to the queue — in order — for the shard's next owner.
pub async fn run(
    ctx: Arc<ShardContext>,
    lease: Lease,
    mut consumer: Consumer,
    stop: CancellationToken,
) -> Result<(), ShardError> {
    let result = consume(&ctx, &lease, &mut consumer, &stop).await;
    consumer.close("shard released").await;
    result
}

async fn consume(
    ctx: &ShardContext,
    lease: &Lease,
    consumer: &mut Consumer,
    stop: &CancellationToken,
) -> Result<(), ShardError> {
    let shard = lease.shard;
    let mut sweep = tokio::time::interval(ctx.sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            _ = sweep.tick() => {
                match sweep_holds(&ctx.pool, lease).await {
                    Err(e @ StoreError::Fenced { .. }) => return Err(ShardError::Fenced(e)),
                    Err(e) => tracing::warn!(shard, error = %e, "hold sweep failed"),
                    Ok(_) => {}
                }
                continue;
            }
            batch = consumer.next_batch(ctx.batch_max) => batch?,
        };
        process(ctx, lease, consumer, batch, stop).await?;
    }
}

/// Applies one batch: undecodable deliveries are dead-lettered at once, the rest applied in
/// one transaction (acked through the last), or one by one if the batch fails permanently.
async fn process(
    ctx: &ShardContext,
    lease: &Lease,
    consumer: &Consumer,
    deliveries: Vec<Delivery>,
    stop: &CancellationToken,
) -> Result<(), ShardError> {
    let good = decode_or_dead_letter(ctx, lease.shard, consumer, deliveries).await?;
    // The last good delivery acks everything before it (rejected ones are settled).
    let Some(last) = good.deliveries.last() else {
        return Ok(());
    };
    let size = good.envelopes.len();
    let started = std::time::Instant::now();
    match apply_retrying(ctx, lease, &good.envelopes, stop).await {
        Applied::Done(outcomes) => {
            consumer.ack_through(&last.tag).await?;
            metrics::batch(size, started.elapsed());
            tracing::debug!(shard = lease.shard, size, elapsed = ?started.elapsed(),
                "batch applied");
            committed(
                ctx,
                lease.shard,
                &good.deliveries,
                &good.envelopes,
                &outcomes,
            )
            .await;
            Ok(())
        }
        Applied::Stopped => Ok(()),
        Applied::Fenced(e) => Err(ShardError::Fenced(e)),
        Applied::CommitterStopped(e) => Err(ShardError::Committer(e)),
        Applied::Permanent(error) => {
            tracing::warn!(shard = lease.shard, %error, size,
                "batch failed permanently; applying its commands one by one");
            one_by_one(ctx, lease, consumer, good, stop).await
        }
    }
}

/// The decodable deliveries of a batch and their envelopes, index-aligned (the envelopes go
/// to the committer, and from it to the store, without a copy).
struct Decoded {
    deliveries: Vec<Delivery>,
    envelopes: Arc<[Command]>,
}

/// Decodes each delivery; one that can never be applied is dead-lettered (in place: the
/// deliveries before it stay unacked, to be acked through a later one).
async fn decode_or_dead_letter(
    ctx: &ShardContext,
    shard: u16,
    consumer: &Consumer,
    deliveries: Vec<Delivery>,
) -> Result<Decoded, ShardError> {
    let mut good = Vec::with_capacity(deliveries.len());
    let mut envelopes = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match Command::decode(&delivery.body, &ctx.amount_rules) {
            Ok(env) => {
                good.push(delivery);
                envelopes.push(env);
            }
            Err(reason) => {
                tracing::error!(shard, %reason, message_id = ?delivery.message_id(),
                    request_id = delivery.request_id_or_dash(),
                    "dead-lettering a message that can never be applied");
                consumer.dead_letter(&delivery.tag).await?;
            }
        }
    }
    Ok(Decoded {
        deliveries: good,
        envelopes: envelopes.into(),
    })
}

/// The commands of a batch that failed permanently, each in its own transaction: the one
/// that still fails is dead-lettered, the others are applied and acked one by one.
async fn one_by_one(
    ctx: &ShardContext,
    lease: &Lease,
    consumer: &Consumer,
    batch: Decoded,
    stop: &CancellationToken,
) -> Result<(), ShardError> {
    for (delivery, command) in batch.deliveries.into_iter().zip(batch.envelopes.iter()) {
        let started = std::time::Instant::now();
        let env: Arc<[Command]> = Arc::from([command.clone()]);
        match apply_retrying(ctx, lease, &env, stop).await {
            Applied::Done(outcomes) => {
                consumer.ack(&delivery.tag).await?;
                metrics::batch(1, started.elapsed());
                let delivery = std::slice::from_ref(&delivery);
                committed(ctx, lease.shard, delivery, &env, &outcomes).await;
            }
            Applied::Stopped => return Ok(()),
            Applied::Fenced(e) => return Err(ShardError::Fenced(e)),
            Applied::CommitterStopped(e) => return Err(ShardError::Committer(e)),
            Applied::Permanent(error) => {
                tracing::error!(shard = lease.shard, id = %command.id(),
                    request_id = delivery.request_id_or_dash(),
                    %error, "dead-lettering a command the ledger cannot apply");
                consumer.dead_letter(&delivery.tag).await?;
            }
        }
    }
    Ok(())
}

/// After a commit (and its ack): the log lines and the withdraw_request replies.
async fn committed(
    ctx: &ShardContext,
    shard: u16,
    deliveries: &[Delivery],
    envelopes: &[Command],
    outcomes: &[Option<Outcome>],
) {
    log_outcomes(shard, deliveries, envelopes, outcomes);
    reply_all(ctx, deliveries, envelopes, outcomes).await;
}

enum Applied {
    Done(Vec<Option<Outcome>>),
    /// Shutdown while the store was failing: the batch stays unacked and is redelivered.
    Stopped,
    /// The lease is gone: stop, uncommitted.
    Fenced(StoreError),
    /// Nothing commits in this session any more: stop, unacked.
    CommitterStopped(CommitError),
    Permanent(StoreError),
}

/// Applies a batch, retrying a retryable store error (a lost connection, a deadlock, …)
/// with back-off until `stop`: the batch stays in hand meanwhile, never nacked, as a nack
/// would count against the delivery limit.
async fn apply_retrying(
    ctx: &ShardContext,
    lease: &Lease,
    envelopes: &Arc<[Command]>,
    stop: &CancellationToken,
) -> Applied {
    let shard = lease.shard;
    let applied = retry::until_stopped(
        Delays::doubling(Duration::from_millis(50), Duration::from_secs(2)),
        stop,
        || ctx.committer.apply(lease, envelopes),
        |e| matches!(e, CommitError::Store(e) if e.is_retryable()),
        |e, retry_in| tracing::warn!(shard, error = %e, ?retry_in, "batch failed; retrying"),
    )
    .await;
    match applied {
        Some(Ok(outcomes)) => Applied::Done(outcomes),
        Some(Err(CommitError::Store(e @ StoreError::Fenced { .. }))) => Applied::Fenced(e),
        Some(Err(CommitError::Store(e))) => Applied::Permanent(e),
        Some(Err(e @ CommitError::Stopped)) => Applied::CommitterStopped(e),
        None => Applied::Stopped,
    }
}

/// One debug line per committed command, carrying its request id and its key's name. Skipped as a whole when
/// debug is off: nothing per message on the hot path.
fn log_outcomes(
    shard: u16,
    deliveries: &[Delivery],
    envelopes: &[Command],
    outcomes: &[Option<Outcome>],
) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    for ((delivery, command), outcome) in deliveries.iter().zip(envelopes).zip(outcomes) {
        let (env, outcome) = match (command, outcome) {
            (Command::Transaction(env), Some(outcome)) => (env, outcome),
            (Command::Policy(change), _) => {
                tracing::debug!(shard, request_id = delivery.request_id_or_dash(),
                    id = %change.id, account = %change.account_id,
                    policy = change.withdraw_policy.as_str(), limit = %change.overdraft_limit,
                    key = change.key_name.as_deref().unwrap_or("-"),
                    "policy change processed");
                continue;
            }
            (Command::Transaction(_), None) => continue,
        };
        tracing::debug!(
            shard,
            request_id = delivery.request_id_or_dash(),
            id = %env.id,
            kind = env.kind.as_str(),
            status = outcome.status.as_str(),
            // The name of the API key that posted it (never the key itself).
            key = env.key_name.as_deref().unwrap_or("-"),
            "transaction processed"
        );
    }
}

/// Sends each outcome that an API replica waits for (the message asked for a reply: a
/// withdraw_request, or a deposit or withdraw posted with `Prefer: wait`) to that replica. Sent
/// after the commit: a reply is never ahead of the record.
async fn reply_all(
    ctx: &ShardContext,
    deliveries: &[Delivery],
    envelopes: &[Command],
    outcomes: &[Option<Outcome>],
) {
    // Every transaction whose message asked for a reply gets one: withdraw_requests always,
    // deposits and withdraws sent with `Prefer: wait`. A policy change has no outcome.
    for ((delivery, command), outcome) in deliveries.iter().zip(envelopes).zip(outcomes) {
        let (Command::Transaction(env), Some(outcome)) = (command, outcome) else {
            continue;
        };
        let Some(reply_to) = delivery.reply_to() else {
            continue;
        };
        let body = match serde_json::to_vec(outcome) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a reply");
                continue;
            }
        };
        if let Err(e) = ctx.replies.send(&reply_to, &body).await {
            tracing::warn!(id = %env.id, request_id = delivery.request_id_or_dash(), error = %e,
                "reply not sent");
        }
    }
}
