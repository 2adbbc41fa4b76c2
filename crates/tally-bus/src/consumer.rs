//! The consumer side: a queue consumer (opened by [`crate::Connection::consume`]) that hands
//! deliveries over as plain values and settles them by their [`Tag`]: ack one, ack through
//! (`multiple`: this one and every earlier unsettled one of the channel), or reject to the
//! queue's dead-letter exchange.
//!
//! A shard queue has a single active consumer (see [`crate::Topology`]), so the deliveries of
//! one [`Consumer`] come in queue order; closing it hands the unsettled ones back to the queue,
//! in order, for the next consumer.

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use lapin::Acker;
use lapin::Channel;

use crate::connection::close_channel;
use crate::headers::{self, text};
use crate::reply::ReplyTo;
use crate::BusError;

/// Settles one delivery; only meaningful on the consumer that received it.
#[derive(Debug, Clone)]
pub struct Tag(Acker);

/// One message as the worker sees it. Its properties are read on demand: the shard loop needs
/// only the body on its hot path, the rest when it logs, replies or archives.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tag: Tag,
    pub body: Vec<u8>,
    properties: lapin::BasicProperties,
}

impl Delivery {
    /// The transaction id (publishers set it; consumers dedupe by it).
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|m| m.as_str())
    }

    /// The API's request id ([`headers::REQUEST_ID`]) for a log line; `-` when the message has
    /// none (or not as UTF-8 text).
    pub fn request_id_or_dash(&self) -> &str {
        headers::request_id(&self.properties).unwrap_or("-")
    }

    /// Where the publisher waits for a reply (withdraw_request), if it does.
    pub fn reply_to(&self) -> Option<ReplyTo> {
        let props = &self.properties;
        match (props.reply_to(), props.correlation_id()) {
            (Some(queue), Some(correlation_id)) => Some(ReplyTo {
                queue: queue.as_str().to_string(),
                correlation_id: correlation_id.as_str().to_string(),
            }),
            _ => None,
        }
    }

    /// The broker's record of the first death, on a dead-lettered message.
    pub fn death(&self) -> Option<Death> {
        Death::of(&self.properties)
    }

    fn from_lapin(delivery: lapin::message::Delivery) -> Self {
        Self {
            tag: Tag(delivery.acker),
            body: delivery.data,
            properties: delivery.properties,
        }
    }
}

/// Where and why RabbitMQ dead-lettered a message (its first death).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Death {
    pub queue: Option<String>,
    /// `rejected`, `delivery_limit`, `expired`, …
    pub reason: Option<String>,
    pub routing_key: Option<String>,
    /// Seconds since the Unix epoch.
    pub time: Option<i64>,
}

impl Death {
    fn of(properties: &lapin::BasicProperties) -> Option<Self> {
        let headers = properties.headers().as_ref()?;
        let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get(headers::DEATH) else {
            return None;
        };
        // The newest death comes first; with one death it is also the first.
        let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().last() else {
            return Some(Self::default());
        };
        let d = death.inner();
        let routing_key = match d.get("routing-keys") {
            Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(text),
            _ => None,
        };
        let time = match d.get("time") {
            Some(AMQPValue::Timestamp(t)) => i64::try_from(*t).ok(),
            _ => None,
        };
        Some(Self {
            queue: d.get("queue").and_then(text),
            reason: d.get("reason").and_then(text),
            routing_key,
            time,
        })
    }
}

/// Deliveries of one queue on a channel of their own, with a prefetch bound.
pub struct Consumer {
    channel: Channel,
    deliveries: lapin::Consumer,
}

impl Consumer {
    pub(crate) fn new(channel: Channel, deliveries: lapin::Consumer) -> Self {
        Self {
            channel,
            deliveries,
        }
    }

    /// The next delivery. Cancel-safe. Fails when the channel or connection is gone.
    pub async fn next(&mut self) -> Result<Delivery, BusError> {
        match self.deliveries.next().await {
            Some(delivery) => Ok(Delivery::from_lapin(delivery?)),
            None => Err(BusError::ConsumerEnded),
        }
    }

    /// Waits for one delivery, then takes what is already buffered, up to `max` in all: an
    /// idle queue adds no latency, a busy one fills the batch. Cancel-safe (nothing is taken
    /// before the first delivery arrives, and nothing is awaited after).
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, BusError> {
        let mut batch = vec![self.next().await?];
        while batch.len() < max {
            match self.deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(Delivery::from_lapin(delivery?)),
                Some(None) => return Err(BusError::ConsumerEnded),
                None => break,
            }
        }
        Ok(batch)
    }

    /// Acks this delivery alone.
    pub async fn ack(&self, tag: &Tag) -> Result<(), BusError> {
        tag.0.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Acks this delivery and every earlier unsettled one of this consumer (`multiple`): one
    /// frame settles a whole batch.
    pub async fn ack_through(&self, tag: &Tag) -> Result<(), BusError> {
        tag.0.ack(BasicAckOptions { multiple: true }).await?;
        Ok(())
    }

    /// Rejects this delivery without requeueing: the broker moves it to the queue's
    /// dead-letter exchange, once.
    pub async fn dead_letter(&self, tag: &Tag) -> Result<(), BusError> {
        tag.0.reject(BasicRejectOptions { requeue: false }).await?;
        Ok(())
    }

    /// Closes the channel, which hands unsettled deliveries back to the queue, in order.
    pub async fn close(self, reason: &str) {
        close_channel(self.channel, reason).await;
    }
}
