//! The API side of RabbitMQ: one long-lived connection with a confirm-mode channel for
//! publishing and an exclusive reply queue for withdraw_request decisions, kept alive by a
//! supervisor task that reconnects with back-off after the broker goes away.
//!
//! Publishes are pipelined: each awaits its own confirm, never `wait_for_confirms` on the
//! shared channel, so one slow confirm does not serialize the others.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tally_telemetry::metrics::{self, PublishOutcome};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{connect, BusError, Topology};

/// Why a publish did not become "RabbitMQ has it". Every variant means: nothing accepted,
/// the client may retry with the same id.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable")]
    Unavailable,
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker did not confirm in time")]
    Timeout,
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was unroutable (no shard queue bound)")]
    Unroutable,
}

/// Properties of a command message, whoever publishes it (the API, `tally import`):
/// `message_id` is the transaction id, and `x-request-id` traces it across processes.
pub fn command_properties(id: &str, request_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-request-id".into(),
        AMQPValue::LongString(request_id.into()),
    );
    BasicProperties::default()
        .with_message_id(id.into())
        .with_content_type("application/json".into())
        .with_headers(headers)
}

/// Connection settings of a [`Publisher`].
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub url: String,
    /// Shown in the broker's connection list.
    pub name: String,
    pub topology: Topology,
    pub connect_timeout: Duration,
    /// Bound on waiting for one publisher confirm.
    pub confirm_timeout: Duration,
}

/// A live connection: replaced as a whole after any failure.
struct Session {
    connection: Connection,
    channel: Channel,
    /// Server-named exclusive queue where workers send this replica's replies.
    reply_queue: String,
}

struct Inner {
    config: PublisherConfig,
    session: RwLock<Option<Arc<Session>>>,
    /// Callers waiting for a reply, by correlation id.
    pending: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
    /// Wakes the supervisor when a caller saw the session fail.
    broken: Notify,
    /// Wakes callers of `wait_connected` when a session comes up.
    connected: Notify,
}

/// Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl Publisher {
    /// Starts the supervisor; returns at once, connected or not (the API serves 503 until the
    /// broker is reachable).
    pub fn start(config: PublisherConfig, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            config,
            session: RwLock::new(None),
            pending: Mutex::new(HashMap::new()),
            broken: Notify::new(),
            connected: Notify::new(),
        });
        tokio::spawn(supervise(inner.clone(), shutdown));
        Self { inner }
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.config.topology
    }

    /// Whether a session is up right now (readiness).
    pub fn is_connected(&self) -> bool {
        self.current()
            .is_some_and(|s| s.connection.status().connected() && s.channel.status().connected())
    }

    /// Waits until connected or `timeout` passes.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.connected.notified();
            if self.is_connected() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_connected();
            }
        }
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.inner
            .session
            .read()
            .ok()
            .and_then(|guard| guard.as_ref().cloned())
    }

    /// Ready messages per queue of the topology (see [`Topology::queue_depths`]). Uses a
    /// short-lived channel: a failed passive declare closes its channel, never the publisher's.
    pub async fn queue_depths(&self) -> Result<Vec<(String, u32)>, PublishError> {
        let session = self.current().ok_or(PublishError::Unavailable)?;
        let channel = session.connection.create_channel().await?;
        let depths = self.inner.config.topology.queue_depths(&channel).await;
        let _ = channel.close(200, "done".into()).await;
        Ok(depths?)
    }

    /// Publishes a persistent, mandatory message to the command exchange and waits for its
    /// confirm. `Ok` means the broker stored it in a shard queue.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let Some(session) = self.current() else {
            metrics::publish(PublishOutcome::Unavailable);
            return Err(PublishError::Unavailable);
        };
        self.publish_on(&session, routing_key, body, properties)
            .await
    }

    async fn publish_on(
        &self,
        session: &Session,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let exchange = self.inner.config.topology.exchange();
        let confirmed = async {
            session
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties.with_delivery_mode(2),
                )
                .await?
                .await
        };
        let result = match tokio::time::timeout(self.inner.config.confirm_timeout, confirmed).await
        {
            Err(_) => Err(PublishError::Timeout),
            Ok(Err(e)) => {
                self.inner.broken.notify_one();
                Err(PublishError::Broker(e))
            }
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            // The channel is always put in confirm mode; this would be a bug, treat as a loss.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        };
        metrics::publish(match &result {
            Ok(()) => PublishOutcome::Confirmed,
            Err(PublishError::Nacked) => PublishOutcome::Nacked,
            Err(PublishError::Unroutable) => PublishOutcome::Returned,
            Err(PublishError::Timeout) => PublishOutcome::Timeout,
            Err(PublishError::Broker(_)) => PublishOutcome::BrokerError,
            Err(PublishError::Unavailable) => PublishOutcome::Unavailable,
        });
        result
    }

    /// Publishes a request whose reply comes back on this replica's reply queue, then waits
    /// for the reply until `deadline`. `Ok(None)`: published and confirmed, but no reply in
    /// time.
    pub async fn request(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, PublishError> {
        let Some(session) = self.current() else {
            metrics::publish(PublishOutcome::Unavailable);
            return Err(PublishError::Unavailable);
        };
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        // Registered before publishing: a fast worker may reply before the confirm arrives.
        let _pending = PendingGuard::register(&self.inner, &correlation_id, tx);
        let properties = properties
            .with_correlation_id(correlation_id.as_str().into())
            .with_reply_to(session.reply_queue.as_str().into());
        let publish = self.publish_on(&session, routing_key, body, properties);
        match tokio::time::timeout_at(deadline, publish).await {
            // The publish was dropped before it counted itself.
            Err(_) => {
                metrics::publish(PublishOutcome::Timeout);
                return Err(PublishError::Timeout);
            }
            Ok(result) => result?,
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(Some(reply)),
            // Sender dropped (session replaced) or deadline passed: no reply will come here.
            Ok(Err(_)) | Err(_) => Ok(None),
        }
    }
}

/// Removes a pending reply slot however the waiting call ends (reply, timeout, cancel).
struct PendingGuard<'a> {
    inner: &'a Inner,
    correlation_id: String,
}

impl<'a> PendingGuard<'a> {
    fn register(inner: &'a Inner, correlation_id: &str, tx: oneshot::Sender<Vec<u8>>) -> Self {
        if let Ok(mut pending) = inner.pending.lock() {
            pending.insert(correlation_id.to_string(), tx);
        }
        Self {
            inner,
            correlation_id: correlation_id.to_string(),
        }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.remove(&self.correlation_id);
        }
    }
}

async fn open_session(config: &PublisherConfig) -> Result<(Session, Consumer), BusError> {
    let connection = connect(&config.url, &config.name, config.connect_timeout).await?;
    let channel = connection.create_channel().await?;
    config.topology.declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // Replies get their own channel so a slow reply reader never blocks confirms.
    let reply_channel = connection.create_channel().await?;
    let reply_queue = reply_channel
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
    let consumer = reply_channel
        .basic_consume(
            reply_queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((
        Session {
            connection,
            channel,
            reply_queue: reply_queue.name().as_str().to_string(),
        },
        consumer,
    ))
}

/// Keeps one session alive: open, serve replies until it fails, drop it, back off, repeat.
async fn supervise(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => break,
            opened = open_session(&inner.config) => opened,
        };
        let (session, mut replies) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "broker connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let session = Arc::new(session);
        if let Ok(mut slot) = inner.session.write() {
            *slot = Some(session.clone());
        }
        inner.connected.notify_waiters();
        tracing::info!(reply_queue = %session.reply_queue, "broker connected");

        let mut health = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = inner.broken.notified() => {}
                _ = health.tick() => {}
                delivery = replies.next() => match delivery {
                    Some(Ok(delivery)) => route_reply(&inner, delivery),
                    // The consumer ends or errors when its channel or connection dies.
                    Some(Err(_)) | None => break,
                },
            }
            if !(session.connection.status().connected() && session.channel.status().connected()) {
                break;
            }
        }
        if let Ok(mut slot) = inner.session.write() {
            *slot = None;
        }
        // Waiting callers will not get their reply on this queue any more.
        if let Ok(mut pending) = inner.pending.lock() {
            pending.clear();
        }
        // Bounded: after a broker restart the old connection may never answer the close.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            session.connection.close(200, "closing".into()),
        )
        .await;
        if !shutdown.is_cancelled() {
            tracing::warn!("broker connection lost; reconnecting");
        }
    }
}

fn route_reply(inner: &Inner, delivery: lapin::message::Delivery) {
    let Some(correlation_id) = delivery.properties.correlation_id().as_ref() else {
        return;
    };
    let waiter = inner
        .pending
        .lock()
        .ok()
        .and_then(|mut pending| pending.remove(correlation_id.as_str()));
    if let Some(tx) = waiter {
        let _ = tx.send(delivery.data);
    }
}
