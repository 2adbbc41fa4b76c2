//! The consumer side against a real RabbitMQ (`TALLY_TEST_AMQP_URL`): what the worker relies
//! on — deliveries in queue order, one active consumer per shard queue (the next one takes
//! over the unacked deliveries, in order), ack-through settling a prefix, a rejected delivery
//! dead-lettered exactly once, and each withdraw_request reply routed back to the caller that
//! waits under its correlation id. Each test has its own topology prefix, deleted at the end.

use std::time::Duration;
use tally_bus::publisher::PublisherConfig;
use tally_bus::{
    command_properties, Connection, Consumer, Delivery, Endpoints, Publisher, Topology,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

use tally_testkit::amqp_url;

/// A one-shard topology of its own, a publisher (the API's) and a worker-side connection;
/// the queues and exchanges are deleted when it is dropped, even by a failed assertion.
struct Bus {
    topology: Topology,
    publisher: Publisher,
    connection: Connection,
    stop: CancellationToken,
}

impl Bus {
    async fn start() -> Self {
        let topology = Topology {
            prefix: format!("bus-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            shard_count: 1,
            delivery_limit: 20,
            replicas: 3,
        };
        let stop = CancellationToken::new();
        let publisher = Publisher::start(
            PublisherConfig {
                endpoints: Endpoints::one(amqp_url()),
                name: "bus-test-publisher".into(),
                topology: topology.clone(),
                connect_timeout: Duration::from_secs(5),
                confirm_timeout: Duration::from_secs(5),
            },
            stop.clone(),
        );
        assert!(publisher.wait_connected(WAIT).await, "publisher connected");
        let connection = Connection::open(
            &Endpoints::one(amqp_url()),
            "bus-test-worker",
            Duration::from_secs(5),
            None,
        )
        .await
        .expect("broker");
        // The publisher declared it already; declaring again is idempotent.
        connection.declare(&topology).await.expect("topology");
        Self {
            topology,
            publisher,
            connection,
            stop,
        }
    }

    async fn shard_consumer(&self, tag: &str) -> Consumer {
        self.connection
            .consume(&self.topology.shard_queue(0), tag, 50)
            .await
            .expect("consume")
    }

    /// Publishes `id` (body = its id) to shard 0, confirmed.
    async fn publish(&self, id: &str) {
        self.publisher
            .publish(
                &Topology::routing_key(0),
                id.as_bytes(),
                command_properties(id, &format!("req-{id}")),
            )
            .await
            .expect("confirmed");
    }

    /// Ready messages of (shard 0, dead letters).
    async fn depths(&self) -> (u32, u32) {
        let depths = self
            .connection
            .queue_depths(&self.topology)
            .await
            .expect("depths");
        (depths[0].1, depths[1].1)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop.cancel();
        tally_testkit::queues::delete_test_topology(self.topology.clone());
    }
}

/// Takes batches until `n` deliveries are in hand.
async fn take(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout(WAIT, consumer.next_batch(n - got.len()))
            .await
            .expect("deliveries in time")
            .expect("delivery");
        got.extend(batch);
    }
    got
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect()
}

/// Waits until `check` holds, polling; panics past [`WAIT`].
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn deliveries_come_in_publish_order_with_their_ids() {
    let bus = Bus::start().await;
    let ids: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    for id in &ids {
        bus.publish(id).await;
    }
    let mut consumer = bus.shard_consumer("order").await;
    let got = take(&mut consumer, ids.len()).await;
    assert_eq!(bodies(&got), ids);
    for (delivery, id) in got.iter().zip(&ids) {
        assert_eq!(delivery.message_id(), Some(id.as_str()));
        assert_eq!(delivery.request_id_or_dash(), format!("req-{id}").as_str());
        assert!(delivery.reply_to().is_none() && delivery.death().is_none());
    }
    consumer
        .ack_through(&got[got.len() - 1].tag)
        .await
        .expect("ack");
    consumer.close("done").await;
}

#[tokio::test]
async fn ack_through_settles_the_prefix_and_a_closed_consumer_hands_the_rest_back_in_order() {
    let bus = Bus::start().await;
    for id in ["a", "b", "c", "d", "e"] {
        bus.publish(id).await;
    }
    let mut first = bus.shard_consumer("first").await;
    let got = take(&mut first, 5).await;
    // One frame settles a, b and c.
    first.ack_through(&got[2].tag).await.expect("ack through");
    first.close("handing over").await;

    let mut second = bus.shard_consumer("second").await;
    let rest = take(&mut second, 2).await;
    assert_eq!(bodies(&rest), ["d", "e"]);
    second.ack_through(&rest[1].tag).await.expect("ack through");
    second.close("done").await;
    until("an empty shard queue", || async {
        bus.depths().await == (0, 0)
    })
    .await;
}

#[tokio::test]
async fn a_rejected_delivery_is_dead_lettered_once_and_the_others_go_on() {
    let bus = Bus::start().await;
    for id in ["good-1", "poison", "good-2"] {
        bus.publish(id).await;
    }
    let mut shard = bus.shard_consumer("shard").await;
    let got = take(&mut shard, 3).await;
    shard.dead_letter(&got[1].tag).await.expect("reject");
    // Acking through the last one settles the first; the rejected one is settled already.
    shard.ack_through(&got[2].tag).await.expect("ack through");
    shard.close("done").await;
    until("the dead letter", || async { bus.depths().await == (0, 1) }).await;

    let mut dead = bus
        .connection
        .consume(&bus.topology.dead_queue(), "dead", 10)
        .await
        .expect("consume dead letters");
    let letter = tokio::time::timeout(WAIT, dead.next())
        .await
        .expect("a dead letter in time")
        .expect("dead letter");
    assert_eq!(letter.body, b"poison");
    assert_eq!(letter.message_id(), Some("poison"));
    let death = letter.death().expect("x-death");
    assert_eq!(death.queue, Some(bus.topology.shard_queue(0)));
    assert_eq!(death.reason.as_deref(), Some("rejected"));
    assert_eq!(death.routing_key.as_deref(), Some("0"));
    assert!(death.time.is_some());
    dead.ack(&letter.tag).await.expect("ack");
    // Once: nothing else arrives.
    let more = tokio::time::timeout(Duration::from_millis(500), dead.next()).await;
    assert!(more.is_err(), "a second dead letter: {more:?}");
    dead.close("done").await;
    until("empty queues", || async { bus.depths().await == (0, 0) }).await;
}

#[tokio::test]
async fn each_reply_reaches_the_request_with_its_correlation_id() {
    let bus = Bus::start().await;
    let ask = |id: &'static str| {
        let publisher = bus.publisher.clone();
        async move {
            publisher
                .request(
                    &Topology::routing_key(0),
                    id.as_bytes(),
                    command_properties(id, id),
                    Instant::now() + WAIT,
                )
                .await
        }
    };
    let worker = async {
        let mut shard = bus.shard_consumer("replies").await;
        let got = take(&mut shard, 2).await;
        let replier = bus.connection.replier().await.expect("replier");
        // Answered in reverse order: routing is by correlation id, not by arrival.
        for delivery in got.iter().rev() {
            let to = delivery.reply_to().expect("reply_to");
            let body = format!("answer to {}", String::from_utf8_lossy(&delivery.body));
            replier.send(&to, body.as_bytes()).await.expect("reply");
        }
        assert_ne!(
            got[0].reply_to().map(|r| r.correlation_id),
            got[1].reply_to().map(|r| r.correlation_id)
        );
        shard.ack_through(&got[1].tag).await.expect("ack");
        shard.close("done").await;
    };
    let (first, second, ()) = tokio::join!(ask("first"), ask("second"), worker);
    assert_eq!(first.expect("published"), Some(b"answer to first".to_vec()));
    assert_eq!(
        second.expect("published"),
        Some(b"answer to second".to_vec())
    );
}

#[tokio::test]
async fn a_second_consumer_waits_and_takes_over_the_unacked_deliveries_in_order() {
    let bus = Bus::start().await;
    let mut active = bus.shard_consumer("active").await;
    let mut waiting = bus.shard_consumer("waiting").await;
    for id in ["p", "q", "r"] {
        bus.publish(id).await;
    }
    assert_eq!(bodies(&take(&mut active, 3).await), ["p", "q", "r"]);
    // Single active consumer: the second one gets nothing while the first is attached.
    let idle = tokio::time::timeout(Duration::from_millis(300), waiting.next()).await;
    assert!(idle.is_err(), "the waiting consumer got {idle:?}");
    active.close("handing over").await;
    let got = take(&mut waiting, 3).await;
    assert_eq!(bodies(&got), ["p", "q", "r"]);
    waiting.ack_through(&got[2].tag).await.expect("ack through");
    waiting.close("done").await;
}
