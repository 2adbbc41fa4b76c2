//! One clock: a worker whose host clock is a day ahead (the real `tally-worker` binary under
//! `faketime`) still decides and stamps by PostgreSQL's clock — `applied_at` is the
//! database's time, a withdraw_request whose `decide_by` is still ahead by the database's
//! clock is decided (not denied as late), and its hold expires a TTL after the database's now.
//!
//! Needs `faketime` (Debian package `faketime`, installed by `deploy/local/services.sh`).

mod common;

use chrono::{DateTime, Duration, Utc};
use std::process::{Command, Stdio};
use tally_bus::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tally_bus::lapin::BasicProperties;
use tally_bus::Topology;
use tally_core::Kind;
use tally_testkit::process::{libfaketime, skewed_clock, KillOnDrop};
use tally_testkit::{amqp_url, queues};

/// The test's queues and exchanges, deleted when the test ends.
struct Queues(Topology);

impl Drop for Queues {
    fn drop(&mut self) {
        queues::delete_test_topology(self.0.clone());
    }
}

#[tokio::test]
async fn a_worker_with_a_clock_a_day_ahead_decides_and_stamps_by_the_database_clock() {
    let db = common::fresh_database().await;
    let pool = db.pool(2);
    let prefix = format!("clock-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let topology = Topology {
        prefix: prefix.clone(),
        shard_count: 1,
        delivery_limit: 20,
        replicas: 3,
    };
    let queues = Queues(topology.clone());
    let conn = tally_bus::connect(&amqp_url(), "test", std::time::Duration::from_secs(5))
        .await
        .expect("broker");
    queues.0.declare(&conn).await.expect("topology");
    let channel = conn.create_channel().await.expect("channel");

    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // libfaketime preloaded into the worker itself (the `faketime` command would fork, and
    // killing it would leave the worker running).
    let worker = Command::new(env!("CARGO_BIN_EXE_tally-worker"))
        .arg("run")
        // A day ahead; timers and timeouts keep the real monotonic clock.
        .envs(skewed_clock(&libfaketime(), 86_400))
        .env("TALLY_PROFILE", "local")
        .env("TALLY_DATABASE__URL", &db.url)
        .env("TALLY_BROKER__URL", amqp_url())
        .env("TALLY_BROKER__PREFIX", &prefix)
        .env("TALLY_BROKER__DELIVERY_LIMIT", "20")
        .env("TALLY_LEDGER__SHARD_COUNT", "1")
        .env(
            "TALLY_WORKER__METRICS_ADDR",
            format!("127.0.0.1:{metrics_port}"),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start tally-worker");
    let _worker = KillOnDrop(worker);

    // Commands as the API publishes them, with its (true) clock.
    let now = Utc::now();
    let deposit = common::envelope("clock-d", Kind::Deposit, "clock", common::dec("100"), now);
    let mut request = common::envelope(
        "clock-r",
        Kind::WithdrawRequest,
        "clock",
        common::dec("40"),
        now,
    );
    request.decide_by = Some(now + Duration::seconds(60));
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for envelope in [&deposit, &request] {
        channel
            .basic_publish(
                topology.exchange().into(),
                Topology::routing_key(0).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &envelope.encode(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    let client = pool.get().await.expect("connection");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let rows = loop {
        let rows = client
            .query(
                "SELECT t.id, t.status, t.applied_at, now(), h.expires_at FROM transactions t \
                 LEFT JOIN holds h ON h.request_id = t.id ORDER BY t.seq",
                &[],
            )
            .await
            .expect("query");
        if rows.len() == 2 {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not apply both commands within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // The worker's clock really is a day ahead (else this test would prove nothing): the
    // offset it measured to PostgreSQL's clock, from its /metrics.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let offset: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_clock_offset_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("tally_clock_offset_seconds");
    assert!(
        offset < -86_000.0,
        "the worker's clock is not a day ahead: {offset}"
    );
    let ttl = Duration::seconds(900); // ledger.hold_ttl_secs of the local profile
    for row in &rows {
        let id: String = row.get(0);
        let applied_at: DateTime<Utc> = row.get(2);
        let database_now: DateTime<Utc> = row.get(3);
        let skew = (database_now - applied_at).num_seconds().abs();
        assert!(
            skew < 60,
            "{id}: applied_at {applied_at} is {skew} s off the database's {database_now}"
        );
    }
    assert_eq!(
        rows[1].get::<_, String>(1),
        "approved",
        "decided by the database's clock"
    );
    let expires_at: DateTime<Utc> = rows[1].get(4);
    let applied_at: DateTime<Utc> = rows[1].get(2);
    assert_eq!(expires_at - applied_at, ttl);
    drop(queues);
}
