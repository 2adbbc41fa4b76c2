//! RabbitMQ side of the bench: the tally topology under the bench's own prefix (declared,
//! measured, deleted), and confirmed publishing with a window of outstanding publishes — the
//! way the API publishes (each request awaits its own confirm while others are in flight).

use anyhow::{bail, Context, Result};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::time::{Duration, Instant};
use tally_bus::Topology;

use crate::stats::Latency;

pub async fn connect(url: &str, name: &str) -> Result<Connection> {
    tally_bus::connect(url, name, Duration::from_secs(5))
        .await
        .context("connecting to RabbitMQ")
}

pub fn topology(prefix: &str, shards: u16) -> Topology {
    Topology {
        prefix: prefix.to_string(),
        shard_count: shards,
        // The API's and worker's default: the queue arguments must match what they declare.
        delivery_limit: 50,
        replicas: 3,
    }
}

/// Deletes every queue and exchange of `topology` (missing ones are fine), so a run starts
/// from empty queues whatever an earlier, interrupted run left behind.
pub async fn delete_topology(conn: &Connection, topology: &Topology) -> Result<()> {
    tally_testkit::queues::delete_topology(conn, topology)
        .await
        .with_context(|| format!("deleting the queues of {}", topology.prefix))
}

/// Ready messages over all shard queues, or None if they cannot be read (not declared yet).
pub async fn ready_total(conn: &Connection, topology: &Topology) -> Option<u64> {
    let ch = conn.create_channel().await.ok()?;
    let depths = topology.queue_depths(&ch).await.ok();
    let _ = ch.close(200, "done".into()).await;
    depths.map(|d| {
        d.iter()
            .filter(|(name, _)| *name != topology.dead_queue())
            .map(|(_, n)| u64::from(*n))
            .sum()
    })
}

/// A message for the command exchange.
pub struct Message {
    pub routing_key: String,
    pub id: String,
    pub body: Vec<u8>,
}

/// What a publishing run achieved.
pub struct Published {
    pub confirmed: u64,
    pub elapsed: Duration,
    /// Publish → confirm of each message.
    pub latency: Latency,
}

/// A confirm-mode channel.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Publishes persistent, mandatory messages to `topology`'s command exchange with up to
/// `window` unconfirmed at a time, until `next` returns None or `until` passes. A nack or an
/// unroutable message is an error: the bench never counts what the broker did not take.
pub async fn publish_window(
    ch: &Channel,
    topology: &Topology,
    window: usize,
    until: Option<Instant>,
    mut next: impl FnMut() -> Option<Message>,
) -> Result<Published> {
    let exchange = topology.exchange();
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut latency = Latency::new();
    let mut confirmed = 0u64;
    let mut exhausted = false;
    loop {
        while !exhausted && inflight.len() < window.max(1) {
            if until.is_some_and(|u| Instant::now() >= u) {
                exhausted = true;
                break;
            }
            let Some(m) = next() else {
                exhausted = true;
                break;
            };
            let sent = Instant::now();
            let confirm = ch
                .basic_publish(
                    exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &m.body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(m.id.as_str().into())
                        .with_content_type("application/json".into()),
                )
                .await
                .context("publishing")?;
            inflight.push(async move { (sent, confirm.await) });
        }
        let Some((sent, result)) = inflight.next().await else {
            break;
        };
        match result.context("waiting for a confirm")? {
            Confirmation::Ack(None) => {
                confirmed += 1;
                latency.record(sent.elapsed());
            }
            Confirmation::Ack(Some(_)) => bail!("the broker returned an unroutable message"),
            Confirmation::Nack(_) => bail!("the broker nacked a message"),
            Confirmation::NotRequested => bail!("the channel is not in confirm mode"),
        }
    }
    Ok(Published {
        confirmed,
        elapsed: start.elapsed(),
        latency,
    })
}
