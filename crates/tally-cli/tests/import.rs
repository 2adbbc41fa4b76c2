//! `tally import` end to end: the real binary against an in-process API and worker on a
//! fresh database and queue prefix (from the test kit), killed mid-way and run again.

#![allow(clippy::unwrap_used)] // a panic in a test is its failure message

use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tally_bus::Topology;
use tally_settings::Settings;
use tally_testkit::{
    amqp_url, eventually, fresh_database, queues, test_keys, test_settings, TestDb,
};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// An API and a worker in this process on a database and broker prefix of their own, all
/// removed on drop.
struct TestApp {
    address: String,
    /// A read/write API key of this test's database (what `--via api` sends).
    key: String,
    settings: Settings,
    pool: tally_store::Pool,
    topology: Topology,
    stop: CancellationToken,
    _db: TestDb,
}

impl TestApp {
    async fn spawn() -> Self {
        let db = fresh_database().await;
        let settings = test_settings(&db.url, &queues::test_prefix());
        let key = test_keys(&db.url).await.read_write;
        let stop = CancellationToken::new();
        let api = tally_api::Application::build(settings.clone(), stop.clone())
            .await
            .unwrap();
        assert!(
            api.publisher()
                .wait_connected(Duration::from_secs(20))
                .await
        );
        let address = format!("http://127.0.0.1:{}", api.port());
        tokio::spawn(api.run_until_stopped(stop.clone()));
        let worker = tally_worker::Worker::build(settings.clone()).await.unwrap();
        tokio::spawn(worker.run(stop.clone()));
        Self {
            address,
            key,
            pool: tally_store::connect(&settings.database).unwrap(),
            topology: Topology::from_settings(&settings),
            settings,
            stop,
            _db: db,
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        let client = self.pool.get().await.unwrap();
        client.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// Waits until the account's balance (read with SQL) is `expected`.
    async fn wait_balance(&self, account: &str, expected: &str) {
        let expected: Decimal = expected.parse().unwrap();
        let client = self.pool.get().await.unwrap();
        eventually(Duration::from_secs(15), || async {
            let row = client
                .query_opt("SELECT balance FROM accounts WHERE id = $1", &[&account])
                .await
                .unwrap();
            row.filter(|r| r.get::<_, Decimal>(0) == expected)
        })
        .await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        queues::delete_test_topology(self.topology.clone());
    }
}

/// A file of `lines` deposits and withdraws over `accounts` accounts (no ids: the importer
/// derives them) and the balances it must produce. Withdraws never overdraw, so the result
/// is the same whatever the policy.
fn write_file(dir: &Path, lines: usize, accounts: usize) -> (PathBuf, BTreeMap<String, Decimal>) {
    let mut expected: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut text = String::with_capacity(lines * 64);
    for i in 0..lines {
        let account = format!("imp-{}", i % accounts);
        let amount = Decimal::new((i % 997 + 1) as i64, 2);
        let balance = expected.entry(account.clone()).or_default();
        let kind = if i % 3 == 2 && *balance >= amount {
            *balance -= amount;
            "withdraw"
        } else {
            *balance += amount;
            "deposit"
        };
        text.push_str(&format!(
            "{{\"type\":\"{kind}\",\"amount\":\"{amount}\",\"accountId\":\"{account}\"}}\n"
        ));
    }
    let path = dir.join("transactions.jsonl");
    std::fs::write(&path, text).unwrap();
    (path, expected)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-import-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tally(app: &TestApp, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally"));
    cmd.arg("import")
        .args(args)
        .env("TALLY_PROFILE", "local")
        .env("TALLY_DATABASE__URL", app.settings.database.url.expose())
        .env("TALLY_BROKER__URL", amqp_url())
        .env("TALLY_BROKER__PREFIX", &app.settings.broker.prefix)
        .env(
            "TALLY_LEDGER__SHARD_COUNT",
            app.settings.ledger.shard_count.to_string(),
        )
        .env("TALLY_API_KEY", &app.key)
        .env_remove("TALLY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn done_through(checkpoint: &Path) -> u64 {
    std::fs::read_to_string(checkpoint)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["doneThroughLine"].as_u64())
        .unwrap_or(0)
}

/// Runs the import, SIGKILLs it once `kill_at` lines are checkpointed, runs it again to the
/// end; returns the second run's stderr.
async fn import_killed_then_rerun(
    app: &TestApp,
    args: &[&str],
    checkpoint: &Path,
    kill_at: u64,
) -> String {
    let mut first = tally(app, args).spawn().unwrap();
    eventually(Duration::from_secs(300), || async {
        (done_through(checkpoint) >= kill_at).then_some(())
    })
    .await;
    first.start_kill().unwrap();
    let status = first.wait().await.unwrap();
    assert!(
        !status.success(),
        "the first run was meant to be killed mid-way"
    );
    let done = done_through(checkpoint);
    assert!(done >= kill_at, "checkpoint {done}");

    let second = tally(app, args).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(second.status.success(), "second run failed: {stderr}");
    assert!(
        stderr.contains(&format!("skipped {done} ")),
        "the rerun must skip the checkpointed prefix ({done}): {stderr}"
    );
    stderr
}

async fn assert_ledger(app: &TestApp, lines: usize, expected: &BTreeMap<String, Decimal>) {
    let lines = lines as i64;
    // Generous: a debug worker on a busy machine; the progress lines explain a timeout.
    let started = std::time::Instant::now();
    let printed = std::cell::Cell::new(0u64);
    eventually(Duration::from_secs(900), || async {
        let n = app.count("SELECT count(*) FROM transactions").await;
        let secs = started.elapsed().as_secs();
        if secs >= printed.get() + 10 {
            printed.set(secs);
            eprintln!("[{secs:>4}s] {n} of {lines} transactions recorded");
        }
        (n >= lines).then_some(())
    })
    .await;
    let client = app.pool.get().await.unwrap();
    let rows = client
        .query("SELECT id, balance FROM accounts ORDER BY id", &[])
        .await
        .unwrap();
    let balances: BTreeMap<String, Decimal> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, Decimal>(1).normalize()))
        .collect();
    let expected: BTreeMap<String, Decimal> = expected
        .iter()
        .map(|(k, v)| (k.clone(), v.normalize()))
        .collect();
    assert_eq!(balances, expected);
    assert_eq!(
        app.count("SELECT count(*) FROM transactions WHERE status = 'applied'")
            .await,
        lines,
        "exactly one effect per line"
    );
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_import_of_100k_lines_killed_halfway_and_rerun_applies_each_line_once() {
    let app = TestApp::spawn().await;
    let dir = temp_dir("queue");
    let (file, expected) = write_file(&dir, 100_000, 1_000);
    let checkpoint = dir.join("transactions.jsonl.checkpoint");
    let file_arg = file.to_str().unwrap();

    import_killed_then_rerun(
        &app,
        &[
            file_arg,
            "--via",
            "queue",
            "--quiet",
            "--concurrency",
            "256",
        ],
        &checkpoint,
        50_000,
    )
    .await;

    assert_ledger(&app, 100_000, &expected).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_import_killed_and_rerun_applies_each_line_once() {
    let app = TestApp::spawn().await;
    let dir = temp_dir("api");
    let (file, expected) = write_file(&dir, 2_000, 50);
    let checkpoint = dir.join("transactions.jsonl.checkpoint");
    let file_arg = file.to_str().unwrap();
    let address = app.address.clone();

    import_killed_then_rerun(
        &app,
        &[
            file_arg,
            "--via",
            "api",
            "--url",
            &address,
            "--quiet",
            "--concurrency",
            "2",
        ],
        &checkpoint,
        500,
    )
    .await;

    assert_ledger(&app, 2_000, &expected).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn invalid_lines_are_reported_by_number_and_the_others_applied() {
    let app = TestApp::spawn().await;
    let dir = temp_dir("invalid");
    let file = dir.join("mixed.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"id\":\"ok-1\",\"type\":\"deposit\",\"amount\":10,\"accountId\":\"inv-a\"}\n",
            "{not json\n",
            "{\"type\":\"deposit\",\"amount\":\"1.234\",\"accountId\":\"inv-a\"}\n",
            "{\"type\":\"deposit\",\"amount\":5}\n",
            "\n",
            "{\"type\":\"withdraw\",\"amount\":4,\"accountId\":\"inv-a\"}\n",
            "{\"type\":\"withdraw_request\",\"amount\":1,\"accountId\":\"inv-a\"}\n",
        ),
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();

    for run in 0..2 {
        let out = tally(&app, &[file_arg, "--via", "queue", "--quiet"])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "run {run}: {stderr}");
        for expected in [
            "line 2: malformed JSON",
            "line 3: invalid_amount",
            "line 4: missing_field (accountId)",
            "line 7: withdraw_request needs a live decision",
        ] {
            assert!(
                stderr.contains(expected),
                "run {run}: {expected:?} in {stderr}"
            );
        }
        assert!(
            !stderr.contains("line 1:") && !stderr.contains("line 6:"),
            "{stderr}"
        );
        let summary = if run == 0 {
            "sent 2, skipped 0 (done by an earlier run), rejected 4"
        } else {
            "sent 0, skipped 2 (done by an earlier run), rejected 4"
        };
        assert!(stderr.contains(summary), "run {run}: {stderr}");
    }
    app.wait_balance("inv-a", "6").await;
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn csv_through_the_api_with_header_named_fields() {
    let app = TestApp::spawn().await;
    let dir = temp_dir("csv");
    let file = dir.join("rows.csv");
    std::fs::write(
        &file,
        "id,type,amount,accountId,timestamp\n\
         c1,deposit,100.50,csv-a,2026-01-01T00:00:00Z\n\
         c2,withdraw,0.5,csv-a,\n\
         ,deposit,2,csv-b,\n",
    )
    .unwrap();
    let address = app.address.clone();
    let out = tally(
        &app,
        &[file.to_str().unwrap(), "--url", &address, "--quiet"],
    )
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.wait_balance("csv-a", "100").await;
    app.wait_balance("csv-b", "2").await;
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
