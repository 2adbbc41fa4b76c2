//! The consumer loop of one shard queue. Greedy batching: wait for one delivery, take what is
//! already buffered up to `batch_max` (an idle queue adds no latency), apply them in one
//! transaction, then ack (`multiple`) and send withdraw_request replies.
//!
//! Failure handling: a retryable store error keeps the batch in hand and retries with
//! back-off (no nack, which would count against the delivery limit); a permanent one is
//! narrowed down by applying the batch's commands one by one, and the single command that
//! still fails — like an envelope that does not decode — is rejected to the dead-letter queue.
//!
//! Every committed batch feeds the batch metrics; each command's debug log line carries the
//! API's request id (AMQP header `x-request-id`).

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Consumer};
use std::sync::Arc;
use std::time::Duration;
use tally_core::{AmountRules, Envelope, Kind, Outcome};
use tally_store::leases::Lease;
use tally_store::{Pool, StoreError};
use tally_telemetry::metrics;
use tokio_util::sync::CancellationToken;

use crate::apply::{apply_batch, sweep_holds};
use crate::ledger::Rules;

/// Longest wait for the broker to answer a channel close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every shard loop of a worker shares.
pub struct ShardContext {
    pub pool: Pool,
    pub rules: Rules,
    /// What an amount must respect: a message is checked against the API's rules again, so
    /// one published by hand cannot bypass them.
    pub amount_rules: AmountRules,
    /// Most deliveries per transaction.
    pub batch_max: usize,
    /// Channel for withdraw_request replies (best effort: a lost reply makes the API time
    /// out and deny, which the void command then makes true in the ledger).
    pub replies: Channel,
    pub sweep_every: Duration,
}

/// Why a shard loop stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("consumer ended (channel or connection closed)")]
    ConsumerEnded,
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// Another worker owns the shard now; the batch in hand was not committed.
    #[error("lease lost: {0}")]
    Fenced(StoreError),
}

/// Runs until `stop` is cancelled (returns Ok after finishing the batch in hand), the lease is
/// lost, or the consumer fails. Closes its channel on the way out, which hands unacked
/// deliveries back to the queue — in order — for the shard's next owner.
pub async fn run(
    ctx: Arc<ShardContext>,
    lease: Lease,
    channel: Channel,
    consumer: Consumer,
    stop: CancellationToken,
) -> Result<(), ShardError> {
    let result = consume(&ctx, &lease, consumer, &stop).await;
    // Bounded: on a connection the broker already dropped, a close may never be answered.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "shard released".into())).await;
    result
}

async fn consume(
    ctx: &ShardContext,
    lease: &Lease,
    mut consumer: Consumer,
    stop: &CancellationToken,
) -> Result<(), ShardError> {
    let shard = lease.shard;
    let mut sweep = tokio::time::interval(ctx.sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
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
            next = consumer.next() => next,
        };
        let mut deliveries = vec![first.ok_or(ShardError::ConsumerEnded)??];
        while deliveries.len() < ctx.batch_max {
            match consumer.next().now_or_never() {
                Some(Some(Ok(d))) => deliveries.push(d),
                Some(Some(Err(e))) => return Err(e.into()),
                Some(None) => return Err(ShardError::ConsumerEnded),
                None => break,
            }
        }
        process(ctx, lease, deliveries, stop).await?;
    }
}

async fn process(
    ctx: &ShardContext,
    lease: &Lease,
    deliveries: Vec<Delivery>,
    stop: &CancellationToken,
) -> Result<(), ShardError> {
    let shard = lease.shard;
    let mut good: Vec<(Delivery, Envelope)> = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match Envelope::decode(&delivery.data, &ctx.amount_rules) {
            Ok(env) => good.push((delivery, env)),
            Err(reason) => {
                tracing::error!(shard, %reason, message_id = ?delivery.properties.message_id(),
                    request_id = request_id(&delivery),
                    "dead-lettering a message that can never be applied");
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
    }
    if good.is_empty() {
        return Ok(());
    }
    let envelopes: Vec<Envelope> = good.iter().map(|(_, e)| e.clone()).collect();
    let started = std::time::Instant::now();
    match apply_retrying(ctx, lease, &envelopes, stop).await {
        Applied::Done(outcomes) => {
            // The last good delivery acks everything before it (rejected ones are settled).
            if let Some((last, _)) = good.last() {
                last.acker.ack(BasicAckOptions { multiple: true }).await?;
            }
            metrics::batch(good.len(), started.elapsed());
            tracing::debug!(shard, size = good.len(), elapsed = ?started.elapsed(), "batch applied");
            log_outcomes(shard, &good, &outcomes);
            reply_all(ctx, &good, &outcomes).await;
        }
        Applied::Stopped => {}
        Applied::Fenced(e) => return Err(ShardError::Fenced(e)),
        Applied::Permanent(error) => {
            tracing::warn!(shard, %error, size = good.len(),
                "batch failed permanently; applying its commands one by one");
            for (delivery, env) in good {
                let started = std::time::Instant::now();
                match apply_retrying(ctx, lease, std::slice::from_ref(&env), stop).await {
                    Applied::Done(outcomes) => {
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                        metrics::batch(1, started.elapsed());
                        let one = [(delivery, env)];
                        log_outcomes(shard, &one, &outcomes);
                        reply_all(ctx, &one, &outcomes).await;
                    }
                    Applied::Stopped => return Ok(()),
                    Applied::Fenced(e) => return Err(ShardError::Fenced(e)),
                    Applied::Permanent(error) => {
                        tracing::error!(shard, id = %env.id, request_id = request_id(&delivery),
                            %error, "dead-lettering a command the ledger cannot apply");
                        delivery
                            .acker
                            .reject(BasicRejectOptions { requeue: false })
                            .await?;
                    }
                }
            }
        }
    }
    Ok(())
}

enum Applied {
    Done(Vec<Outcome>),
    /// Shutdown while the store was failing: the batch stays unacked and is redelivered.
    Stopped,
    /// The lease is gone: stop, uncommitted.
    Fenced(StoreError),
    Permanent(StoreError),
}

async fn apply_retrying(
    ctx: &ShardContext,
    lease: &Lease,
    envelopes: &[Envelope],
    stop: &CancellationToken,
) -> Applied {
    let shard = lease.shard;
    let mut backoff = Duration::from_millis(50);
    loop {
        match apply_batch(&ctx.pool, lease, envelopes, &ctx.rules).await {
            Ok(outcomes) => return Applied::Done(outcomes),
            Err(e @ StoreError::Fenced { .. }) => return Applied::Fenced(e),
            Err(e) if e.is_retryable() => {
                tracing::warn!(shard, error = %e, retry_in = ?backoff, "batch failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Applied::Stopped,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Applied::Permanent(e),
        }
    }
}

/// The API's request id of a delivery (the `x-request-id` header), for its log lines.
fn request_id(delivery: &Delivery) -> &str {
    let header = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(REQUEST_ID_HEADER));
    match header {
        Some(AMQPValue::LongString(id)) => std::str::from_utf8(id.as_bytes()).unwrap_or("-"),
        _ => "-",
    }
}

const REQUEST_ID_HEADER: &str = "x-request-id";

/// One debug line per committed command, carrying its request id. Skipped as a whole when
/// debug is off: nothing per message on the hot path.
fn log_outcomes(shard: u16, batch: &[(Delivery, Envelope)], outcomes: &[Outcome]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    for ((delivery, env), outcome) in batch.iter().zip(outcomes) {
        tracing::debug!(
            shard,
            request_id = request_id(delivery),
            id = %env.id,
            kind = env.kind.as_str(),
            status = outcome.status.as_str(),
            "transaction processed"
        );
    }
}

/// Sends each withdraw_request's outcome to the API replica that waits for it.
async fn reply_all(ctx: &ShardContext, batch: &[(Delivery, Envelope)], outcomes: &[Outcome]) {
    for ((delivery, env), outcome) in batch.iter().zip(outcomes) {
        if env.kind != Kind::WithdrawRequest {
            continue;
        }
        let props = &delivery.properties;
        let (Some(reply_to), Some(correlation_id)) = (props.reply_to(), props.correlation_id())
        else {
            continue;
        };
        let body = match serde_json::to_vec(outcome) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a reply");
                continue;
            }
        };
        let sent = ctx
            .replies
            .basic_publish(
                "".into(),
                reply_to.clone(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_correlation_id(correlation_id.clone())
                    .with_content_type("application/json".into()),
            )
            .await;
        if let Err(e) = sent {
            tracing::warn!(id = %env.id, request_id = request_id(delivery), error = %e,
                "reply not sent");
        }
    }
}
