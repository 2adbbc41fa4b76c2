//! The shard queues' replication arguments against a real RabbitMQ (`TALLY_TEST_AMQP_URL`):
//! a new queue carries them, a queue created before them (an upgrade) keeps working, any
//! other difference is still refused, and a connection goes to a live node when the first
//! one named is down. Each test has its own prefix, deleted at the end.

use std::time::Duration;
use tally_bus::lapin::options::QueueDeclareOptions;
use tally_bus::lapin::types::{AMQPValue, FieldTable};
use tally_bus::{Connection, Endpoints, Topology};

use tally_testkit::amqp_url;

async fn broker() -> tally_bus::lapin::Connection {
    tally_bus::connect(&amqp_url(), "topology-test", Duration::from_secs(5))
        .await
        .expect("broker")
}

/// A one-shard topology of its own, deleted when dropped (even by a failed assertion).
struct Prefix(Topology);

impl Prefix {
    fn new(delivery_limit: u32) -> Self {
        Self(Topology {
            prefix: format!("topo-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            shard_count: 1,
            delivery_limit,
            replicas: 3,
        })
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        tally_testkit::queues::delete_test_topology(self.0.clone());
    }
}

/// The arguments a shard queue was created with before the replication arguments existed.
fn arguments_before_replication(topology: &Topology) -> FieldTable {
    let mut args = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(topology.delivery_limit as i32),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        text(&topology.dead_exchange()),
    );
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args
}

async fn declare_shard_queue(
    conn: &tally_bus::lapin::Connection,
    topology: &Topology,
    args: FieldTable,
) -> Result<(), tally_bus::lapin::Error> {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        topology.shard_queue(0).as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await?;
    let _ = ch.close(200, "done".into()).await;
    Ok(())
}

#[tokio::test]
async fn a_new_shard_queue_carries_its_replica_count_and_leader_placement() {
    let prefix = Prefix::new(20);
    let conn = broker().await;
    prefix.0.declare(&conn).await.expect("declare");
    // RabbitMQ compares the arguments of every declaration: the old set no longer matches.
    let error = declare_shard_queue(&conn, &prefix.0, arguments_before_replication(&prefix.0))
        .await
        .expect_err("the queue has the replication arguments");
    let message = error.to_string();
    assert!(
        message.contains("x-quorum-initial-group-size")
            || message.contains("x-queue-leader-locator"),
        "{message}"
    );
    // Declaring again is idempotent.
    prefix.0.declare(&conn).await.expect("declare again");
}

#[tokio::test]
async fn a_shard_queue_created_before_the_replication_arguments_keeps_working() {
    let prefix = Prefix::new(20);
    let conn = broker().await;
    declare_shard_queue(&conn, &prefix.0, arguments_before_replication(&prefix.0))
        .await
        .expect("old queue");
    let connection = Connection::open(
        &Endpoints::one(amqp_url()),
        "topology-test",
        Duration::from_secs(5),
        None,
    )
    .await
    .expect("connection");
    connection
        .declare(&prefix.0)
        .await
        .expect("the upgraded topology declares over the old queue");
    // The queue is the same one, bound and usable.
    let confirmed = connection
        .confirmed(&prefix.0)
        .await
        .expect("channel")
        .publish(&Topology::routing_key(0), b"{}", Some("upgrade-1"))
        .await
        .expect("publish");
    assert!(confirmed, "routed to the old queue and confirmed");
    let depths = connection.queue_depths(&prefix.0).await.expect("depths");
    assert_eq!(depths[0].1, 1, "{depths:?}");
}

#[tokio::test]
async fn another_difference_in_a_shard_queue_is_still_refused() {
    let prefix = Prefix::new(20);
    let conn = broker().await;
    prefix.0.declare(&conn).await.expect("declare");
    let mut other = prefix.0.clone();
    other.delivery_limit = 21;
    assert!(
        other.declare(&conn).await.is_err(),
        "a different delivery limit must not pass for an old queue"
    );
}

#[tokio::test]
async fn a_connection_goes_to_the_next_node_when_the_first_is_down() {
    // A port nobody listens on: bind one, then let it go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let broker: tally_settings::BrokerSettings = {
        let mut s = tally_settings::Settings::load_profile("local").expect("settings");
        s.broker.urls = vec![
            tally_settings::Secret::new(format!("amqp://guest:guest@127.0.0.1:{closed}/%2f")),
            tally_settings::Secret::new(amqp_url()),
        ];
        s.broker
    };
    let endpoints = Endpoints::from_settings(&broker);
    // Whichever node the process starts with, every attempt ends on the live one.
    for _ in 0..3 {
        let connection =
            Connection::open(&endpoints, "endpoints-test", Duration::from_secs(5), None)
                .await
                .expect("the live node");
        assert!(connection.is_connected());
        connection.close("done", Duration::from_secs(2)).await;
    }
}
