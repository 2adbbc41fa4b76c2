//! The dead-letter archive's two ends: the archiver, which moves what RabbitMQ dead-lettered
//! into PostgreSQL (insert, then ack: a crash in between archives it again, idempotently),
//! and the operator's re-publish, which sends archived letters back to their shard after a
//! fix (confirmed, mandatory) and marks them.

use chrono::{TimeZone, Utc};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tally_bus::{Connection, Consumer, Delivery, Topology};
use tally_core::{AmountRules, Envelope};
use tally_store::dead_letters::{self, DeadLetter};
use tally_store::Pool;
use tokio_util::sync::CancellationToken;

use crate::retry::{self, Delays};
use crate::shard::ShardError;

/// What the archive stores for one delivery of the dead-letter queue; `rules` are the ones the
/// shard loop judged it by, so the detail says why it was refused.
pub fn letter_of(delivery: &Delivery, rules: &AmountRules) -> DeadLetter {
    let death = delivery.death().unwrap_or_default();
    let dead_at = death
        .time
        .and_then(|s| Utc.timestamp_opt(s, 0).single())
        .unwrap_or_else(Utc::now);
    let queue = death.queue.unwrap_or_else(|| "unknown".into());
    let detail = match Envelope::decode(&delivery.body, rules) {
        Err(why) => why.to_string(),
        Ok(_) => "the envelope decodes; the worker could not apply it (see its log)".into(),
    };
    let mut hash = Sha256::new();
    hash.update(queue.as_bytes());
    hash.update(dead_at.timestamp().to_be_bytes());
    hash.update(&delivery.body);
    // The first 16 bytes of the digest, in hex.
    let mut id = format!("{:x}", hash.finalize());
    id.truncate(32);
    DeadLetter {
        id,
        queue,
        routing_key: death.routing_key.unwrap_or_default(),
        reason: death.reason.unwrap_or_else(|| "unknown".into()),
        detail,
        message_id: delivery.message_id().map(str::to_string),
        body: delivery.body.clone(),
        dead_at,
        archived_at: Utc::now(),
        republished_at: None,
    }
}

/// Archives dead letters until `stop` is cancelled or the consumer fails.
pub async fn archive(
    pool: Pool,
    mut consumer: Consumer,
    rules: &AmountRules,
    stop: CancellationToken,
) -> Result<(), ShardError> {
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = consumer.next() => next?,
        };
        let letter = letter_of(&delivery, rules);
        // Every error is retried: the letter must reach the archive before it is acked.
        let archived = retry::until_stopped(
            Delays::doubling(Duration::from_millis(100), Duration::from_secs(5)),
            &stop,
            || dead_letters::archive(&pool, &letter),
            |_| true,
            |e, retry_in| tracing::warn!(error = %e, ?retry_in, "cannot archive a dead letter yet"),
        )
        .await;
        // `None`: stopped while the database was failing; the letter stays in the queue.
        let Some(Ok(new)) = archived else {
            return Ok(());
        };
        if new {
            tracing::warn!(id = %letter.id, queue = %letter.queue, reason = %letter.reason,
                detail = %letter.detail, "dead letter archived");
        }
        consumer.ack(&delivery.tag).await?;
    }
}

/// Why a re-publish failed.
#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
    #[error(transparent)]
    Bus(#[from] tally_bus::BusError),
    #[error("the broker did not confirm dead letter {0}")]
    NotConfirmed(String),
}

/// Publishes pending dead letters (all, or those in `ids`) back to their shard queue and
/// marks them; returns their ids. A letter is marked only after the broker confirmed it.
pub async fn republish(
    pool: &Pool,
    connection: &Connection,
    topology: &Topology,
    rules: &AmountRules,
    ids: Option<&[String]>,
) -> Result<Vec<String>, RepublishError> {
    let channel = connection.confirmed(topology).await?;
    let mut done = Vec::new();
    for letter in dead_letters::pending(pool, ids).await? {
        let routing_key = topology.dead_letter_route(&letter.body, &letter.routing_key, rules);
        let confirmed = channel
            .publish(&routing_key, &letter.body, letter.message_id.as_deref())
            .await?;
        if !confirmed {
            return Err(RepublishError::NotConfirmed(letter.id));
        }
        dead_letters::mark_republished(pool, &letter.id).await?;
        done.push(letter.id);
    }
    Ok(done)
}
