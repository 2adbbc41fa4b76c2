//! A worker process stopped (SIGSTOP) inside a batch transaction must not freeze its shards:
//! PostgreSQL ends its idle-in-transaction session (releasing the lease fence) and RabbitMQ
//! drops its silent connection (releasing its single-active consumers), so another worker
//! takes the shards over within about the lease TTL; when the stopped worker resumes, its
//! batch in hand never commits and nothing is applied twice.
//!
//! Real processes: the `tally-worker` binary of this build, configured through `TALLY_*`
//! variables, on a database and a queue prefix of this test only.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_bus::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tally_bus::lapin::{BasicProperties, Confirmation};
use tally_bus::Topology;
use tally_core::command::NewTransaction;
use tally_core::{Envelope, Kind};
use tally_testkit::{amqp_url, fresh_database, queues, TestDb};
use tokio::time::Instant;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

const SHARDS: u16 = 4;
const LEASE_TTL: Duration = Duration::from_millis(4000);

/// Polls `check` until it returns `Some`, failing with `what` past `deadline`.
async fn until<T, F, Fut>(deadline: Instant, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within the deadline");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything this test creates outside itself — worker processes, a database, queues — is
/// removed when it is dropped, also when an assertion failed.
struct Fixture {
    url: String,
    topology: Topology,
    logs: PathBuf,
    workers: Vec<Child>,
    /// Dropped after the workers are killed (in `drop`).
    _db: TestDb,
}

impl Fixture {
    async fn new() -> Self {
        let db = fresh_database().await;
        let fixture = Self {
            url: db.url.clone(),
            topology: Topology {
                prefix: queues::test_prefix(),
                shard_count: SHARDS,
                delivery_limit: 50,
                replicas: 3,
            },
            logs: std::env::temp_dir().join(format!("{}.log", db.name)),
            workers: Vec::new(),
            _db: db,
        };
        let connection = fixture.broker().await;
        fixture
            .topology
            .declare(&connection)
            .await
            .expect("topology");
        fixture
    }

    async fn broker(&self) -> tally_bus::lapin::Connection {
        tally_bus::connect(&amqp_url(), "pause-test", Duration::from_secs(5))
            .await
            .expect("broker")
    }

    /// Starts a `tally-worker` process on this test's database and queues; returns its pid.
    fn spawn_worker(&mut self) -> u32 {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.logs)
            .expect("worker log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally-worker"));
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TALLY_")) {
            command.env_remove(key);
        }
        let child = command
            .arg("run")
            .env("TALLY_PROFILE", "local")
            .env("TALLY_DATABASE__URL", &self.url)
            .env("TALLY_DATABASE__POOL_SIZE", "4")
            .env("TALLY_BROKER__URL", amqp_url())
            .env("TALLY_BROKER__PREFIX", &self.topology.prefix)
            .env("TALLY_LEDGER__SHARD_COUNT", SHARDS.to_string())
            .env(
                "TALLY_WORKER__LEASE_TTL_MS",
                LEASE_TTL.as_millis().to_string(),
            )
            .env("TALLY_WORKER__LEASE_TICK_MS", "500")
            .env("TALLY_WORKER__METRICS_ADDR", "off")
            .env("TALLY_LOG__LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start tally-worker");
        let pid = child.id();
        self.workers.push(child);
        pid
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.workers {
            // A stopped process dies of SIGKILL too; CONT first lets it be reaped at once.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(&self.logs) {
                let tail: Vec<&str> = log.lines().rev().take(80).collect();
                eprintln!("--- worker logs (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let _ = std::fs::remove_file(&self.logs);
        queues::delete_test_topology(self.topology.clone());
    }
}

/// Publishes a deposit of 1 straight onto its shard queue, confirmed.
async fn deposit(
    channel: &tally_bus::lapin::Channel,
    topology: &Topology,
    id: &str,
    account: &str,
) {
    try_deposit(channel, topology, id, account)
        .await
        .expect("a confirmed deposit");
}

async fn try_deposit(
    channel: &tally_bus::lapin::Channel,
    topology: &Topology,
    id: &str,
    account: &str,
) -> Result<(), String> {
    let tx = NewTransaction {
        id: id.into(),
        kind: Kind::Deposit,
        account_id: account.into(),
        amount: 1.into(),
        occurred_at: None,
        request_id: None,
        user_id: None,
        client_id: None,
        key_name: None,
    };
    let body = Envelope::new(&tx, chrono::Utc::now()).encode();
    let confirmation = channel
        .basic_publish(
            topology.exchange().into(),
            Topology::routing_key(topology.shard_of(account)).into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.into()),
        )
        .await
        .map_err(|e| format!("{id}: {e}"))?
        .await
        .map_err(|e| format!("{id}: {e}"))?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        other => Err(format!("{id}: {other:?}")),
    }
}

/// One account per shard, so a probe reaches every shard.
fn account_per_shard(topology: &Topology) -> Vec<String> {
    let mut by_shard = BTreeMap::new();
    for i in 0.. {
        let account = format!("acc-{i}");
        by_shard
            .entry(topology.shard_of(&account))
            .or_insert(account);
        if by_shard.len() == usize::from(topology.shard_count) {
            break;
        }
    }
    by_shard.into_values().collect()
}

/// Owners of the shards whose lease is live, by shard.
async fn owners(pool: &tally_store::Pool) -> Vec<Option<String>> {
    tally_store::leases::owners(pool)
        .await
        .map(|rows| rows.into_iter().map(|(_, owner, _)| owner).collect())
        .unwrap_or_default()
}

fn owned_by(owner: &Option<String>, pid: u32) -> bool {
    owner
        .as_deref()
        .is_some_and(|o| o.starts_with(&format!("tally-worker-{pid}-")))
}

async fn applied(client: &tokio_postgres::Client, ids: &[String]) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM transactions WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_inside_a_batch_loses_its_shards_and_never_commits_it() {
    let mut fixture = Fixture::new().await;
    let topology = fixture.topology.clone();
    let pool = tally_store::connect(&tally_settings::DatabaseSettings {
        url: tally_settings::Secret::new(fixture.url.clone()),
        pool_size: 4,
        timeout_ms: 5000,
    })
    .expect("pool");
    let (client, conn) = tokio_postgres::connect(&fixture.url, NoTls)
        .await
        .expect("db");
    tokio::spawn(conn);
    let (mut locker, conn) = tokio_postgres::connect(&fixture.url, NoTls)
        .await
        .expect("db");
    tokio::spawn(conn);

    let paused = fixture.spawn_worker();
    until(
        Instant::now() + Duration::from_secs(30),
        "the first worker owns every shard",
        || async {
            owners(&pool)
                .await
                .iter()
                .all(|o| owned_by(o, paused))
                .then_some(())
        },
    )
    .await;

    // Load: deposits of 1 on one account per shard, all the time, every one confirmed.
    let connection = fixture.broker().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let accounts = account_per_shard(&topology);
    let published: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop_load = CancellationToken::new();
    let load = {
        let (channel, topology, accounts) = (channel.clone(), topology.clone(), accounts.clone());
        let (published, stop) = (published.clone(), stop_load.clone());
        // Returns its first failure rather than panicking: after a failed assertion the
        // fixture deletes the queues under it.
        tokio::spawn(async move {
            for n in 0.. {
                if stop.is_cancelled() {
                    break;
                }
                let (id, account) = (format!("load-{n}"), &accounts[n % accounts.len()]);
                try_deposit(&channel, &topology, &id, account).await?;
                published.lock().expect("lock").push((id, account.clone()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<(), String>(())
        })
    };

    // The batch in hand: the test locks an account row, so the worker's batch blocks in its
    // FOR UPDATE load, inside the transaction that holds the shard's lease row (the fence).
    deposit(&channel, &topology, "locked-1", "locked").await;
    until(
        Instant::now() + Duration::from_secs(10),
        "the first deposit on the locked account is applied",
        || async { (applied(&client, &["locked-1".into()]).await == 1).then_some(()) },
    )
    .await;
    let lock = locker.transaction().await.expect("begin");
    lock.execute("SELECT 1 FROM accounts WHERE id = 'locked' FOR UPDATE", &[])
        .await
        .expect("lock the account");
    deposit(&channel, &topology, "locked-2", "locked").await;
    let backend: i32 = until(
        Instant::now() + Duration::from_secs(10),
        "the worker's batch waits for the account lock",
        || async {
            client
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                     AND wait_event_type = 'Lock' AND query LIKE '%FROM accounts%FOR UPDATE'",
                    &[],
                )
                .await
                .expect("pg_stat_activity")
                .first()
                .map(|r| r.get(0))
        },
    )
    .await;
    signal(paused, "-STOP");
    let stopped_at = Instant::now();
    lock.commit().await.expect("release the account");
    // The stopped worker's session got its rows and now sits idle inside its transaction.
    until(
        Instant::now() + Duration::from_secs(2),
        "the stopped worker's session is idle in transaction",
        || async {
            client
                .query_opt(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = $1 \
                     AND state = 'idle in transaction'",
                    &[&backend],
                )
                .await
                .expect("pg_stat_activity")
                .map(|_| ())
        },
    )
    .await;

    // Takeover: a second worker owns every shard and applies on each of them within the
    // lease TTL plus a few seconds.
    let taker = fixture.spawn_worker();
    let takeover = stopped_at + LEASE_TTL + Duration::from_secs(5);
    until(takeover, "the second worker owns every shard", || async {
        owners(&pool)
            .await
            .iter()
            .all(|o| owned_by(o, taker))
            .then_some(())
    })
    .await;
    let probes: Vec<String> = (0..accounts.len()).map(|i| format!("probe-{i}")).collect();
    for (probe, account) in probes.iter().zip(&accounts) {
        deposit(&channel, &topology, probe, account).await;
    }
    until(
        takeover,
        "every shard applies again (probes and the blocked batch)",
        || async {
            let mut ids = probes.clone();
            ids.push("locked-2".into());
            (applied(&client, &ids).await == i64::try_from(ids.len()).unwrap_or(0)).then_some(())
        },
    )
    .await;

    // The pause lasts 3 × TTL; meanwhile the load keeps being applied.
    tokio::time::sleep_until(stopped_at + LEASE_TTL * 3).await;
    let so_far: Vec<String> = published
        .lock()
        .expect("lock")
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    until(
        Instant::now() + Duration::from_secs(10),
        "the load published during the pause is applied",
        || async {
            (applied(&client, &so_far).await == i64::try_from(so_far.len()).unwrap_or(0))
                .then_some(())
        },
    )
    .await;
    let resumed_at: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT now()", &[])
        .await
        .expect("now")
        .get(0);
    signal(paused, "-CONT");

    // The resumed worker rejoins and gets its share back; its old batch is gone.
    until(
        Instant::now() + Duration::from_secs(30),
        "the resumed worker takes its share again",
        || async {
            let owners = owners(&pool).await;
            (owners.iter().any(|o| owned_by(o, paused))
                && owners.iter().any(|o| owned_by(o, taker)))
            .then_some(())
        },
    )
    .await;
    stop_load.cancel();
    load.await
        .expect("load task")
        .expect("every load deposit confirmed");
    let published = published.lock().expect("lock").clone();
    let mut all: Vec<String> = published.iter().map(|(id, _)| id.clone()).collect();
    all.extend(probes.iter().cloned());
    all.extend(["locked-1".to_string(), "locked-2".to_string()]);
    until(
        Instant::now() + Duration::from_secs(15),
        "every confirmed deposit is applied",
        || async {
            (applied(&client, &all).await == i64::try_from(all.len()).unwrap_or(0)).then_some(())
        },
    )
    .await;

    // Exactly once: one record per id, each balance the number of its deposits, and the
    // blocked batch applied by the taker during the pause, not by the resumed worker.
    let records: i64 = client
        .query_one("SELECT count(*) FROM transactions", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(records, i64::try_from(all.len()).unwrap_or(0));
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (_, account) in &published {
        *expected.entry(account.clone()).or_default() += 1;
    }
    for account in &accounts {
        *expected.entry(account.clone()).or_default() += 1; // its probe
    }
    expected.insert("locked".into(), 2);
    let rows = client
        .query("SELECT id, balance::bigint FROM accounts ORDER BY id", &[])
        .await
        .expect("balances");
    let balances: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(balances, expected);
    let blocked_applied_at: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT applied_at FROM transactions WHERE id = 'locked-2'",
            &[],
        )
        .await
        .expect("locked-2")
        .get(0);
    assert!(
        blocked_applied_at < resumed_at,
        "locked-2 applied after the resume"
    );
    let (checks, _) = tally_store::audit::run(&pool).await.expect("audit");
    for check in checks {
        assert!(check.pass, "{}: {:?}", check.name, check.offending);
    }
}
