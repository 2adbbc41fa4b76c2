//! The dead-letter archive's two ends: the archiver, which moves what RabbitMQ dead-lettered
//! into PostgreSQL (insert, then ack: a crash in between archives it again, idempotently),
//! and the operator's re-publish, which sends archived letters back to their shard after a
//! fix (confirmed, mandatory) and marks them.

use chrono::{DateTime, TimeZone, Utc};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tally_bus::Topology;
use tally_core::{AmountRules, Envelope};
use tally_store::dead_letters::{self, DeadLetter};
use tally_store::Pool;
use tokio_util::sync::CancellationToken;

use crate::shard::ShardError;

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Reads the broker's record of the first death: (queue, reason, routing key, time).
fn first_death(headers: Option<&FieldTable>) -> (String, String, String, DateTime<Utc>) {
    let mut queue = String::from("unknown");
    let mut reason = String::from("unknown");
    let mut routing_key = String::new();
    let mut time = Utc::now();
    let Some(headers) = headers else {
        return (queue, reason, routing_key, time);
    };
    let map = headers.inner();
    if let Some(AMQPValue::FieldArray(deaths)) = map.get("x-death") {
        // The newest death comes first; with one death it is also the first.
        if let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().last() {
            let d = death.inner();
            if let Some(q) = d.get("queue").and_then(text) {
                queue = q;
            }
            if let Some(r) = d.get("reason").and_then(text) {
                reason = r;
            }
            if let Some(AMQPValue::FieldArray(keys)) = d.get("routing-keys") {
                if let Some(k) = keys.as_slice().first().and_then(text) {
                    routing_key = k;
                }
            }
            if let Some(AMQPValue::Timestamp(t)) = d.get("time") {
                if let Some(at) = i64::try_from(*t)
                    .ok()
                    .and_then(|s| Utc.timestamp_opt(s, 0).single())
                {
                    time = at;
                }
            }
        }
    }
    (queue, reason, routing_key, time)
}

/// What the archive stores for one delivery of the dead-letter queue; `rules` are the ones the
/// shard loop judged it by, so the detail says why it was refused.
pub fn letter_of(delivery: &Delivery, rules: &AmountRules) -> DeadLetter {
    let (queue, reason, routing_key, dead_at) = first_death(delivery.properties.headers().as_ref());
    let detail = match Envelope::decode(&delivery.data, rules) {
        Err(why) => why.to_string(),
        Ok(_) => "the envelope decodes; the worker could not apply it (see its log)".into(),
    };
    let mut hash = Sha256::new();
    hash.update(queue.as_bytes());
    hash.update(dead_at.timestamp().to_be_bytes());
    hash.update(&delivery.data);
    let id = hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    DeadLetter {
        id,
        queue,
        routing_key,
        reason,
        detail,
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string()),
        body: delivery.data.clone(),
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
            next = consumer.next() => next.ok_or(ShardError::ConsumerEnded)??,
        };
        let letter = letter_of(&delivery, rules);
        let mut backoff = Duration::from_millis(100);
        loop {
            match dead_letters::archive(&pool, &letter).await {
                Ok(new) => {
                    if new {
                        tracing::warn!(id = %letter.id, queue = %letter.queue, reason = %letter.reason,
                            detail = %letter.detail, "dead letter archived");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot archive a dead letter yet");
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
}

/// Why a re-publish failed.
#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not confirm dead letter {0}")]
    NotConfirmed(String),
}

/// Publishes pending dead letters (all, or those in `ids`) back to their shard queue and
/// marks them; returns their ids. A letter is marked only after the broker confirmed it.
pub async fn republish(
    pool: &Pool,
    channel: &Channel,
    topology: &Topology,
    rules: &AmountRules,
    ids: Option<&[String]>,
) -> Result<Vec<String>, RepublishError> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut done = Vec::new();
    for letter in dead_letters::pending(pool, ids).await? {
        // Route by the account when the body decodes (the shard count is fixed), else by the
        // routing key it had.
        let routing_key = match Envelope::decode(&letter.body, rules) {
            Ok(env) => Topology::routing_key(topology.shard_of(&env.account_id)),
            Err(_) => letter.routing_key.clone(),
        };
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = &letter.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        let confirmation = channel
            .basic_publish(
                topology.exchange().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &letter.body,
                props,
            )
            .await?
            .await?;
        if !matches!(confirmation, Confirmation::Ack(None)) {
            return Err(RepublishError::NotConfirmed(letter.id));
        }
        dead_letters::mark_republished(pool, &letter.id).await?;
        done.push(letter.id);
    }
    Ok(done)
}
