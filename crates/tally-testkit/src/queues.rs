//! Broker prefixes of their own: a test's queues and exchanges live under a random prefix
//! (so tests run in parallel against one RabbitMQ), and whoever made a prefix deletes its
//! topology afterwards — the tests on drop, the fault suite after each seed, the bench
//! before each run (whatever an interrupted run left behind).

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use std::time::Duration;
use tally_bus::Topology;

use crate::services::amqp_url;

/// A prefix no other test uses.
pub fn test_prefix() -> String {
    format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Deletes every queue and exchange of `topology` (missing ones are fine).
pub async fn delete_topology(
    conn: &lapin::Connection,
    topology: &Topology,
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    for shard in 0..topology.shard_count {
        ch.queue_delete(
            topology.shard_queue(shard).into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    }
    ch.queue_delete(topology.dead_queue().into(), QueueDeleteOptions::default())
        .await?;
    for exchange in [topology.exchange(), topology.dead_exchange()] {
        ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = ch.close(200, "done".into()).await;
    Ok(())
}

/// Deletes a test's topology on the tests' broker, from a `Drop` (which cannot await: on a
/// thread with a runtime of its own). Best effort: a test's teardown never fails it.
pub fn delete_test_topology(topology: Topology) {
    let cleanup = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(conn) =
                tally_bus::connect(&amqp_url(), "test-cleanup", Duration::from_secs(5)).await
            {
                let _ = delete_topology(&conn, &topology).await;
                let _ = conn.close(200, "done".into()).await;
            }
        });
    });
    let _ = cleanup.join();
}
