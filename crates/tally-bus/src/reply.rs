//! Reply routing for withdraw_request, both ends side by side. The API publishes a request
//! with `reply_to` (its replica's exclusive reply queue) and a fresh `correlation_id`
//! ([`ReplyTo`]), and waits in [`Waiting`]; the worker answers through a [`Replier`] on the
//! default exchange straight to that queue; the API's reply consumer hands the body to the
//! caller with that correlation id.
//!
//! Replies are best effort: a lost one makes the API time out and look the outcome up
//! elsewhere (see `tally-api`'s submit protocol).

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

use crate::BusError;

/// Where a reply goes: the requester's queue and the id it waits under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub queue: String,
    pub correlation_id: String,
}

impl ReplyTo {
    /// `properties` asking for a reply here.
    pub(crate) fn ask(&self, properties: BasicProperties) -> BasicProperties {
        properties
            .with_correlation_id(self.correlation_id.as_str().into())
            .with_reply_to(self.queue.as_str().into())
    }
}

/// The worker's end: sends replies on a channel of its own.
pub struct Replier {
    channel: Channel,
}

impl Replier {
    pub(crate) fn new(channel: Channel) -> Self {
        Self { channel }
    }

    /// Publishes `body` (JSON) to the requester's queue under its correlation id.
    pub async fn send(&self, to: &ReplyTo, body: &[u8]) -> Result<(), BusError> {
        self.channel
            .basic_publish(
                "".into(),
                to.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_correlation_id(to.correlation_id.as_str().into())
                    .with_content_type("application/json".into()),
            )
            .await?;
        Ok(())
    }
}

/// Declares a server-named exclusive reply queue on its own channel (so a slow reply reader
/// never blocks the publisher's confirms) and consumes it; returns its name and consumer.
pub(crate) async fn listen(connection: &Connection) -> Result<(String, lapin::Consumer), BusError> {
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().as_str().to_string(), consumer))
}

/// The API's end: callers waiting for a reply, by correlation id.
#[derive(Default)]
pub(crate) struct Waiting {
    pending: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
}

impl Waiting {
    /// A slot for replies under `correlation_id`, removed when the slot is dropped.
    pub(crate) fn slot(&self, correlation_id: &str) -> Slot<'_> {
        Slot {
            waiting: self,
            correlation_id: correlation_id.to_string(),
        }
    }

    /// Hands a reply to the caller waiting under its correlation id (if any still is).
    pub(crate) fn route(&self, delivery: lapin::message::Delivery) {
        let Some(correlation_id) = delivery.properties.correlation_id().as_ref() else {
            return;
        };
        let waiter = self
            .pending
            .lock()
            .ok()
            .and_then(|mut pending| pending.remove(correlation_id.as_str()));
        if let Some(tx) = waiter {
            let _ = tx.send(delivery.data);
        }
    }

    /// Drops every waiter: their replies will not come to this (dead) queue.
    pub(crate) fn clear(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }
}

/// Removes a pending reply slot however the waiting call ends (reply, timeout, cancel).
pub(crate) struct Slot<'a> {
    waiting: &'a Waiting,
    correlation_id: String,
}

impl Slot<'_> {
    /// Where the reply to the next copy goes (replaces the slot of an earlier copy).
    pub(crate) fn register(&mut self) -> oneshot::Receiver<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.waiting.pending.lock() {
            pending.insert(self.correlation_id.clone(), tx);
        }
        rx
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.waiting.pending.lock() {
            pending.remove(&self.correlation_id);
        }
    }
}
