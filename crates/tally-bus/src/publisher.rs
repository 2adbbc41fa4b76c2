//! The API side of RabbitMQ: one long-lived connection with a confirm-mode channel for
//! publishing and an exclusive reply queue for the worker's decisions (withdraw_requests, and
//! deposits or withdraws whose client sent `Prefer: wait`), kept alive by a
//! supervisor task that reconnects with back-off after the broker goes away — to another
//! node of the cluster when its node died (see [`Endpoints`]).
//!
//! Publishes are pipelined: each awaits its own confirm, never `wait_for_confirms` on the
//! shared channel, so one slow confirm does not serialize the others.

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tally_telemetry::metrics::{self, PublishOutcome};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::reply::{self, ReplyTo, Waiting};
use crate::{BusError, Endpoints, Topology};

/// Why a publish did not become "RabbitMQ has it". Two families, told apart by
/// [`PublishError::surely_not_accepted`]: the message surely never reached a queue (it was
/// never sent, or the broker said so), or it was sent and nobody knows whether the broker
/// kept it (no confirm in time, the channel or connection failed after the frames left).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No live connection: nothing was sent.
    #[error("broker unavailable")]
    Unavailable,
    /// The channel refused the publish before sending a frame (closed, closing, reconnecting).
    #[error("broker channel refused the publish: {0}")]
    Refused(lapin::Error),
    /// The broker nacked the message. Not a sure "not accepted": RabbitMQ nacks a publish when
    /// a queue it was routed to failed while the message was in flight, and a quorum queue
    /// whose leader node died may still have the message in its replicated log, to be
    /// delivered once a new leader is elected (seen by `make chaos HA=1`, seed 18: a deposit
    /// nacked during a broker node loss was applied). So a nack is settled like a lost
    /// confirm: the same message is published again until a copy is confirmed.
    #[error("broker nacked the message")]
    Nacked,
    /// The broker returned the message: no queue is bound for its routing key.
    #[error("message was unroutable (no shard queue bound)")]
    Unroutable,
    /// Sent; the confirm did not come in time.
    #[error("broker did not confirm in time")]
    Timeout,
    /// Sent (or being sent); then the channel or connection failed.
    #[error("broker error after sending: {0}")]
    Broker(lapin::Error),
}

impl PublishError {
    /// True when the message surely is in no queue: it was never sent, or the broker returned
    /// it as unroutable. Only then may a client be told "not accepted"; every other failure,
    /// a nack included (see [`PublishError::Nacked`]), leaves the outcome unknown (the broker
    /// may have it and a worker may apply it).
    pub fn surely_not_accepted(&self) -> bool {
        matches!(
            self,
            PublishError::Unavailable | PublishError::Refused(_) | PublishError::Unroutable
        )
    }

    /// Classifies an error of `basic_publish` itself (before a confirm is awaited): a channel
    /// or connection in the wrong state refuses up front, without sending anything; any other
    /// error may come after some or all of the frames were written.
    fn from_send(error: lapin::Error) -> Self {
        match error.kind() {
            lapin::ErrorKind::InvalidChannelState(..)
            | lapin::ErrorKind::InvalidConnectionState(..)
            | lapin::ErrorKind::InvalidChannel(..) => PublishError::Refused(error),
            _ => PublishError::Broker(error),
        }
    }
}

/// Connection settings of a [`Publisher`].
#[derive(Debug)]
pub struct PublisherConfig {
    /// The broker's nodes; each new session goes to a live one.
    pub endpoints: Endpoints,
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
    /// Callers waiting for a reply.
    waiting: Waiting,
    /// Wakes the supervisor when a caller saw the session fail.
    broken: Notify,
    /// Wakes callers of `wait_connected` when a session comes up.
    connected: Notify,
}

/// Longest pause between two copies of a message whose outcome is unknown.
const SETTLE_RETRY_MAX: Duration = Duration::from_secs(1);
/// Pauses between copies: from 50 ms, doubling (each cut short by the settle deadline).
const SETTLE_RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(SETTLE_RETRY_MAX)
    .without_max_times();

/// Longest pause between two connection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Pauses between failed connection attempts: from 100 ms, doubling; back to the first once
/// a session came up.
const RECONNECT: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(RECONNECT_MAX)
    .without_max_times();

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
            waiting: Waiting::default(),
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
    pub async fn queue_depths(&self) -> Result<Vec<(String, u32)>, BusError> {
        let session = self.current().ok_or(BusError::NotConnected)?;
        crate::connection::queue_depths(&session.connection, &self.inner.config.topology).await
    }

    /// Publishes a persistent, mandatory message to the command exchange and waits for its
    /// confirm, once. `Ok` means the broker stored it in a shard queue; see [`PublishError`]
    /// for what a failure means.
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

    /// Publishes like [`Publisher::publish`], and when the outcome is unknown (sent, no
    /// confirm) settles it by publishing the same message again — on a fresh channel once the
    /// broker answers — until one copy is confirmed or `settle_by` passes. Consumers dedupe by
    /// message id, so an extra copy has no effect. The error is either "surely not accepted"
    /// (the first publish never reached a queue) or, past `settle_by`, the last unknown one.
    pub async fn publish_settled(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        settle_by: Instant,
    ) -> Result<(), PublishError> {
        self.settled(settle_by, || async {
            self.publish(routing_key, body, properties.clone()).await
        })
        .await
    }

    /// The settle loop shared by [`Publisher::publish_settled`] and [`Publisher::request`]:
    /// `attempt` publishes one copy. A first attempt that surely failed ends it (nothing was
    /// accepted); after an unknown outcome, copies are sent until one is confirmed. A later
    /// copy that surely failed proves nothing about the earlier ones: the outcome stays
    /// unknown.
    async fn settled<F, Fut>(&self, settle_by: Instant, mut attempt: F) -> Result<(), PublishError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), PublishError>>,
    {
        let mut unknown = match tokio::time::timeout_at(settle_by, attempt()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if e.surely_not_accepted() => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => PublishError::Timeout,
        };
        tracing::warn!(error = %unknown, "publish outcome unknown; publishing the same message again to settle it");
        let mut delays = SETTLE_RETRY.build();
        while Instant::now() < settle_by {
            // A confirm that never came usually means a broken or stalled connection: wait
            // for the supervisor's next session rather than hammering the old one.
            if self.wait_connected(settle_by - Instant::now()).await {
                match tokio::time::timeout_at(settle_by, attempt()).await {
                    Ok(Ok(())) => {
                        metrics::publish_settled(true);
                        return Ok(());
                    }
                    Ok(Err(e)) if !e.surely_not_accepted() => unknown = e,
                    Ok(Err(_)) | Err(_) => {}
                }
            }
            let delay = delays.next().unwrap_or(SETTLE_RETRY_MAX);
            tokio::time::sleep_until(settle_by.min(Instant::now() + delay)).await;
        }
        metrics::publish_settled(false);
        Err(unknown)
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
            let confirm = session
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
                .await
                .map_err(PublishError::from_send)?;
            confirm.await.map_err(PublishError::Broker)
        };
        let result = match tokio::time::timeout(self.inner.config.confirm_timeout, confirmed).await
        {
            Err(_) => Err(PublishError::Timeout),
            Ok(Err(e)) => {
                self.inner.broken.notify_one();
                Err(e)
            }
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            // The channel is always put in confirm mode, so this is a bug; nobody can say
            // whether the broker kept the message.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Timeout),
        };
        metrics::publish(match &result {
            Ok(()) => PublishOutcome::Confirmed,
            Err(PublishError::Nacked) => PublishOutcome::Nacked,
            Err(PublishError::Unroutable) => PublishOutcome::Returned,
            Err(PublishError::Timeout) => PublishOutcome::Timeout,
            Err(PublishError::Broker(_)) => PublishOutcome::BrokerError,
            Err(PublishError::Unavailable | PublishError::Refused(_)) => {
                PublishOutcome::Unavailable
            }
        });
        result
    }

    /// Publishes a request whose reply comes back on this replica's reply queue (settled like
    /// [`Publisher::publish_settled`]), then waits for the reply; both until `by`. `Ok(None)`:
    /// the request is in the queue, but no reply came here in time (or the reply queue died
    /// with its connection): the caller must look elsewhere.
    pub async fn request(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        by: Instant,
    ) -> Result<Option<Vec<u8>>, PublishError> {
        self.request_until(routing_key, body, properties, by, by)
            .await
    }

    /// Like [`Publisher::request`], with the publish settled until `settle_by` and the reply
    /// awaited until `reply_by`: a deposit whose client asked to wait for its decision keeps
    /// the ordinary settle budget (its answer without a decision is the ordinary 200), and
    /// waits for the reply only as long as the client asked.
    pub async fn request_until(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        settle_by: Instant,
        reply_by: Instant,
    ) -> Result<Option<Vec<u8>>, PublishError> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let mut reply = None;
        // Every copy asks for its reply on the session it is sent on; the slot is registered
        // before publishing, as a fast worker may reply before the confirm arrives.
        let mut slot = self.inner.waiting.slot(&correlation_id);
        self.settled(settle_by, || {
            reply = Some(slot.register());
            let properties = properties.clone();
            let correlation_id = correlation_id.clone();
            async move {
                let Some(session) = self.current() else {
                    metrics::publish(PublishOutcome::Unavailable);
                    return Err(PublishError::Unavailable);
                };
                let reply_to = ReplyTo {
                    queue: session.reply_queue.clone(),
                    correlation_id,
                };
                self.publish_on(&session, routing_key, body, reply_to.ask(properties))
                    .await
            }
        })
        .await?;
        let Some(rx) = reply else {
            return Ok(None);
        };
        match tokio::time::timeout_at(reply_by, rx).await {
            Ok(Ok(reply)) => Ok(Some(reply)),
            // Sender dropped (session replaced) or deadline passed: no reply will come here.
            Ok(Err(_)) | Err(_) => Ok(None),
        }
    }
}

async fn open_session(config: &PublisherConfig) -> Result<(Session, Consumer), BusError> {
    let connection = config
        .endpoints
        .connect(&config.name, config.connect_timeout, None)
        .await?;
    config.topology.declare(&connection).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (reply_queue, replies) = reply::listen(&connection).await?;
    Ok((
        Session {
            connection,
            channel,
            reply_queue,
        },
        replies,
    ))
}

/// Keeps one session alive: open, serve replies until it fails, drop it, back off, repeat.
async fn supervise(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut delays = RECONNECT.build();
    while !shutdown.is_cancelled() {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => break,
            opened = open_session(&inner.config) => opened,
        };
        let (session, mut replies) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                let retry_in = delays.next().unwrap_or(RECONNECT_MAX);
                tracing::warn!(error = %e, ?retry_in, "broker connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(retry_in) => {}
                }
                continue;
            }
        };
        delays = RECONNECT.build();
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
                    Some(Ok(delivery)) => inner.waiting.route(delivery),
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
        inner.waiting.clear();
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

#[cfg(test)]
mod tests {
    use super::PublishError;

    /// Only a message never sent, or returned unroutable, is surely in no queue; a nack is
    /// not proof (a quorum queue member may have it).
    #[test]
    fn only_unsent_or_unroutable_messages_are_surely_not_accepted() {
        assert!(PublishError::Unavailable.surely_not_accepted());
        assert!(PublishError::Unroutable.surely_not_accepted());
        assert!(!PublishError::Nacked.surely_not_accepted());
        assert!(!PublishError::Timeout.surely_not_accepted());
    }
}
