//! Node loss on the highly available services of `deploy/local/ha.sh`: a RabbitMQ cluster of
//! three nodes and PostgreSQL under pg_auto_failover. `make test-ha` starts them on ports of
//! their own and runs these tests one at a time; `make test` skips them (ignored: they need
//! those services and take minutes).
//!
//! Each test runs an API and a worker in this process — never restarted — under a load of
//! clients that retry with the same id after a 503, kills a node with `kill -9`, measures the
//! time until a deposit is accepted and applied on every shard again (the RTO), brings the
//! node back, and then holds every answer to its promise: each id answered 200 is applied
//! exactly once, each 201 is an approval with the same hold, each 402 a denial (the RPO:
//! nothing answered is lost).

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::helpers::{eventually, Options, TestApp};

/// Concurrent clients of the load.
const CLIENTS: usize = 12;

/// Runs `deploy/local/ha.sh args` with the environment of `make test-ha` (its `HA_*`
/// variables) and `prefix` as the broker prefix whose queues it looks at.
fn ha(args: &[&str], prefix: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/local/ha.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .env("TALLY_BROKER__PREFIX", prefix)
        .output()
        .expect("running ha.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "ha.sh {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.trim_end());
    stdout
}

/// An API and a worker on every node of the HA services.
async fn spawn() -> TestApp {
    let urls = std::env::var("TALLY_HA_AMQP_URLS").expect("TALLY_HA_AMQP_URLS: run make test-ha");
    TestApp::spawn_with(Options {
        broker_urls: urls.split(',').map(str::to_string).collect(),
        ..Options::default()
    })
    .await
}

/// What the clients were told, by id.
#[derive(Default)]
struct Answers {
    /// 200 accepted: account of the deposit.
    accepted: HashMap<String, String>,
    /// 201 approved: the hold id.
    approved: HashMap<String, String>,
    /// 402 denied.
    denied: Vec<String>,
}

/// Posts `body` until it gets a final answer (anything but a 503), retrying with the same id
/// as a client does; `None` if `stop` came first.
async fn answer(app: &TestApp, body: &Value, stop: &CancellationToken) -> Option<(u16, Value)> {
    loop {
        if stop.is_cancelled() {
            return None;
        }
        let response = app
            .client
            .post(format!("{}/transaction", app.address))
            .json(body)
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        if let Ok(response) = response {
            let status = response.status().as_u16();
            let value = response.json().await.unwrap_or(Value::Null);
            assert!(
                matches!(status, 200 | 201 | 402 | 503),
                "{body}: unexpected {status} {value}"
            );
            if status != 503 {
                return Some((status, value));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client: deposits of 1 on its own accounts, and now and then a withdraw_request of 1.
async fn client(
    app: Arc<TestApp>,
    n: usize,
    answers: Arc<Mutex<Answers>>,
    stop: CancellationToken,
) {
    let mut i = 0u64;
    while !stop.is_cancelled() {
        i += 1;
        let account = format!("ha-{n}-{}", i % 4);
        let (id, kind) = if i.is_multiple_of(5) {
            (format!("req-{n}-{i}"), "withdraw_request")
        } else {
            (format!("dep-{n}-{i}"), "deposit")
        };
        let body = json!({"id": id, "type": kind, "amount": 1, "accountId": account});
        let Some((status, value)) = answer(&app, &body, &stop).await else {
            return;
        };
        let mut answers = answers.lock().expect("answers");
        match status {
            200 => {
                answers.accepted.insert(id, account);
            }
            201 => {
                let hold = value["holdId"].as_str().expect("holdId").to_string();
                answers.approved.insert(id, hold);
            }
            _ => answers.denied.push(id),
        }
    }
}

/// Time from `since` until a fresh deposit on every shard is accepted and applied.
async fn every_shard_writes_again(app: &TestApp, since: Instant, tag: &str) -> Duration {
    let never = CancellationToken::new();
    let mut slowest = Duration::ZERO;
    let probes = (0..app.topology.shard_count).map(|shard| {
        let account = (0u32..)
            .map(|k| format!("probe-{tag}-{k}"))
            .find(|a| app.topology.shard_of(a) == shard)
            .expect("an account on every shard");
        let never = never.clone();
        async move {
            let id = format!("probe-{tag}-{shard}");
            let body = json!({"id": id, "type": "deposit", "amount": 1, "accountId": account});
            answer(app, &body, &never).await.expect("answered");
            eventually(Duration::from_secs(120), || async {
                let (status, _) = app.get(&format!("/transactions/{id}")).await;
                (status == 200).then_some(())
            })
            .await;
            since.elapsed()
        }
    });
    for took in futures_util::future::join_all(probes).await {
        slowest = slowest.max(took);
    }
    slowest
}

/// Every answer held to its promise against the final ledger.
async fn check(app: &TestApp, answers: &Answers) {
    let client = app.pool.get().await.expect("database");
    // Everything accepted gets applied; the worker may still be catching up.
    let ids: Vec<String> = answers.accepted.keys().cloned().collect();
    let applied = eventually(Duration::from_secs(120), || async {
        let row = client
            .query_one(
                "SELECT count(*) FROM transactions WHERE id = ANY($1) AND status = 'applied'",
                &[&ids],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) as usize == ids.len()).then_some(ids.len())
    })
    .await;
    let rows = client
        .query(
            "SELECT id, status, hold_id::text FROM transactions WHERE id = ANY($1)",
            &[&answers
                .approved
                .keys()
                .chain(answers.denied.iter())
                .cloned()
                .collect::<Vec<_>>()],
        )
        .await
        .expect("records");
    let records: HashMap<String, (String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    for (id, hold) in &answers.approved {
        assert_eq!(
            records.get(id),
            Some(&("approved".to_string(), Some(hold.clone()))),
            "{id} was answered 201 with hold {hold}"
        );
    }
    for id in &answers.denied {
        assert_eq!(
            records.get(id).map(|r| r.0.as_str()),
            Some("denied"),
            "{id} was answered 402"
        );
    }
    // Each deposit counted once: the balances are the accepted deposits minus the approvals
    // still holding (holds do not move the balance).
    let mut expected: HashMap<&str, i64> = HashMap::new();
    for account in answers.accepted.values() {
        *expected.entry(account).or_default() += 1;
    }
    for (account, deposits) in expected {
        let balance = app.balance(account).await;
        let applied_here = client
            .query_one(
                "SELECT count(*) FROM transactions WHERE account_id = $1 AND kind = 'deposit'",
                &[&account],
            )
            .await
            .expect("count")
            .get::<_, i64>(0);
        assert_eq!(
            balance,
            applied_here.to_string(),
            "{account}: deposits applied once"
        );
        assert!(applied_here >= deposits, "{account}: a 200 is missing");
    }
    eprintln!(
        "checked: {applied} deposits answered 200, {} approvals (201), {} denials (402)",
        answers.approved.len(),
        answers.denied.len()
    );
}

/// Load, then the `faults` (ha.sh arguments, one after the other) after a few seconds of it,
/// the RTO from the first, every node back (`ha.sh up`), then the check.
async fn node_loss(faults: &[&[&str]], tag: &str) -> Duration {
    let app = Arc::new(spawn().await);
    let prefix = app.topology.prefix.clone();
    let answers = Arc::new(Mutex::new(Answers::default()));
    let stop = CancellationToken::new();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(app.clone(), n, answers.clone(), stop.clone())))
        .collect();
    // Load before the loss: accepted answers are coming.
    eventually(Duration::from_secs(30), || async {
        (answers.lock().expect("answers").accepted.len() > 200).then_some(())
    })
    .await;
    let killed = Instant::now();
    for fault in faults {
        ha(fault, &prefix);
    }
    let rto = every_shard_writes_again(&app, killed, tag).await;
    eprintln!("RTO after {faults:?}: {rto:?}");
    // A few more seconds of load on the survivors, then the node back, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ha(&["up"], &prefix);
    stop.cancel();
    for c in clients {
        c.await.expect("client");
    }
    let answers = std::mem::take(&mut *answers.lock().expect("answers"));
    check(&app, &answers).await;
    rto
}

#[tokio::test]
#[ignore = "needs the HA services: make test-ha"]
async fn kill_9_of_the_broker_node_leading_the_most_shard_queues_loses_no_200() {
    let rto = node_loss(&[&["kill", "rabbit-leader"]], "rabbit").await;
    assert!(rto <= Duration::from_secs(10), "RTO {rto:?}");
}

#[tokio::test]
#[ignore = "needs the HA services: make test-ha"]
async fn kill_9_of_the_postgres_primary_loses_no_200_or_201_and_needs_no_restart() {
    let rto = node_loss(&[&["kill", "pg-primary"]], "pg").await;
    assert!(rto <= Duration::from_secs(30), "RTO {rto:?}");
}

#[tokio::test]
#[ignore = "needs the HA services: make test-ha"]
async fn a_rolling_restart_of_the_broker_nodes_loses_no_200() {
    // Each node stopped and started in turn, the next only once the last one is back.
    node_loss(
        &[
            &["restart", "rabbit", "1"],
            &["restart", "rabbit", "2"],
            &["restart", "rabbit", "3"],
        ],
        "rolling",
    )
    .await;
}

#[tokio::test]
#[ignore = "needs the HA services: make test-ha"]
async fn losing_the_postgres_standby_loses_nothing_and_writes_resume() {
    // Commits wait for the synchronous standby until the monitor gives up on it and lets the
    // primary commit alone (wait_primary); it rejoins with `ha.sh up`.
    let rto = node_loss(&[&["kill", "pg-standby"]], "standby").await;
    assert!(rto <= Duration::from_secs(30), "RTO {rto:?}");
}
