//! A broker connection for the worker and the operator commands: everything they do with
//! RabbitMQ goes through it — declaring the topology, consuming (shard queues, dead letters),
//! replying, re-publishing, reading queue depths — so no other crate drives lapin.
//!
//! Unlike the API's [`crate::Publisher`] it does not reconnect by itself: a worker rebuilds
//! its whole session (consumers, leases) on a new connection, as ownership must restart too;
//! opened from [`Endpoints`], that new connection goes to another node when the old one's died.

use lapin::options::ConfirmSelectOptions;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation};
use std::time::Duration;

use crate::consumer::Consumer;
use crate::reply::Replier;
use crate::{BusError, Endpoints, Topology};

/// One AMQP connection.
pub struct Connection {
    inner: lapin::Connection,
}

impl Connection {
    /// Opens a connection to a live node of `endpoints`, each attempt bounded by `timeout`
    /// (see [`Endpoints::connect`]). A worker asks for a short `heartbeat` (see
    /// [`crate::connect_with_heartbeat`]): a stalled worker loses its consumers, so its
    /// shards pass on.
    pub async fn open(
        endpoints: &Endpoints,
        name: &str,
        timeout: Duration,
        heartbeat: Option<Duration>,
    ) -> Result<Self, BusError> {
        let inner = endpoints.connect(name, timeout, heartbeat).await?;
        Ok(Self { inner })
    }

    pub fn is_connected(&self) -> bool {
        self.inner.status().connected()
    }

    /// Declares `topology` (idempotent) on a channel of its own.
    pub async fn declare(&self, topology: &Topology) -> Result<(), BusError> {
        topology.declare(&self.inner).await?;
        Ok(())
    }

    /// Ready messages per queue of `topology` (see [`Topology::queue_depths`]), on a
    /// short-lived channel: a failed passive declare closes its channel, nothing else.
    pub async fn queue_depths(&self, topology: &Topology) -> Result<Vec<(String, u32)>, BusError> {
        queue_depths(&self.inner, topology).await
    }

    /// Consumes `queue` on a channel of its own with at most `prefetch` unsettled deliveries,
    /// under the consumer tag `tag` (shown by the broker). On a shard queue (single active
    /// consumer), a consumer attached while the previous one is still there waits, and takes
    /// over — with the unacked messages, in order — when it goes away.
    pub async fn consume(
        &self,
        queue: &str,
        tag: &str,
        prefetch: u16,
    ) -> Result<Consumer, BusError> {
        let channel = self.inner.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let deliveries = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer::new(channel, deliveries))
    }

    /// A sender of withdraw_request replies, on a channel of its own.
    pub async fn replier(&self) -> Result<Replier, BusError> {
        Ok(Replier::new(self.inner.create_channel().await?))
    }

    /// A confirm-mode channel to the command exchange of `topology`.
    pub async fn confirmed(&self, topology: &Topology) -> Result<ConfirmedChannel, BusError> {
        let channel = self.inner.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(ConfirmedChannel {
            channel,
            exchange: topology.exchange(),
        })
    }

    /// Closes the connection, waiting at most `within`: after a broker restart the old
    /// connection may never answer.
    pub async fn close(&self, reason: &str, within: Duration) {
        let _ = tokio::time::timeout(within, self.inner.close(200, reason.into())).await;
    }
}

/// Publishes to the command exchange and waits for each confirm: for operator commands
/// (re-publishing dead letters), where one message at a time is fast enough.
pub struct ConfirmedChannel {
    channel: Channel,
    exchange: String,
}

impl ConfirmedChannel {
    /// Publishes a persistent, mandatory message; `Ok(true)` when the broker confirmed it and
    /// routed it to a queue, `Ok(false)` when it nacked or returned it.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: Option<&str>,
    ) -> Result<bool, BusError> {
        let properties = crate::republish_properties(message_id).with_delivery_mode(2);
        let confirmation = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?
            .await?;
        Ok(matches!(confirmation, Confirmation::Ack(None)))
    }
}

/// [`Connection::queue_depths`], shared with the API's publisher.
pub(crate) async fn queue_depths(
    connection: &lapin::Connection,
    topology: &Topology,
) -> Result<Vec<(String, u32)>, BusError> {
    let channel = connection.create_channel().await?;
    let depths = topology.queue_depths(&channel).await;
    close_channel(channel, "done").await;
    Ok(depths?)
}

/// Longest wait for the broker to answer a channel close: on a connection the broker already
/// dropped, a close may never be answered.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes a channel; best effort and bounded by [`CLOSE_TIMEOUT`].
pub(crate) async fn close_channel(channel: Channel, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason.into())).await;
}
