//! The two baselines every tally figure is compared with, measured by the same tool in the
//! same run:
//!
//! - `one-commit`: the naive ledger — each transfer its own PostgreSQL transaction (UPDATE the
//!   account's balance, INSERT a history row, COMMIT), from C concurrent connections; several
//!   C are tried and the best is reported. Zipf over the accounts, or one hot row.
//! - `broker-ceiling`: confirmed persistent publishes per second into the same quorum shard
//!   queues the API publishes to (same arguments, mandatory, routed by shard), pipelined on one
//!   channel with a window of unconfirmed publishes, no HTTP and no consumer. The API cannot
//!   accept faster than this.

use anyhow::{Context, Result};
use chrono::Utc;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::procs::{self, CpuSnapshot};
use crate::stats::{round1, Latency};
use crate::workload::{run_id, Gen, Workload, HOT_ACCOUNT};
use crate::{bus, db};
use tally_testkit::database;
use tally_testkit::rng::Zipf;

#[derive(Debug, Clone)]
pub struct OneCommitSpec {
    pub label: String,
    pub admin_database_url: String,
    pub database: String,
    pub concurrencies: Vec<usize>,
    pub hot: bool,
    pub duration: Duration,
    pub accounts: usize,
    pub zipf_s: f64,
    pub seed: u64,
    pub keep_database: bool,
    pub progress: bool,
}

/// A naive ledger: balances plus a history row per transfer, indexed for per-account history
/// like tally's own `transactions`. Money is numeric, commits are synchronous (the server's
/// defaults, as for tally).
const SCHEMA: &str = "
    CREATE TABLE accounts (
        id text PRIMARY KEY,
        balance numeric NOT NULL DEFAULT 0,
        version bigint NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE history (
        id text PRIMARY KEY,
        account_id text NOT NULL,
        amount numeric NOT NULL,
        balance_after numeric NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now());
    CREATE INDEX history_by_account ON history (account_id, created_at);";

pub async fn one_commit(spec: OneCommitSpec) -> Result<Value> {
    let url = database::with_name(&spec.admin_database_url, &spec.database);
    db::recreate_database(&spec.admin_database_url, &spec.database).await?;
    let setup = db::connect(&url).await?;
    setup.batch_execute(SCHEMA).await?;
    // Accounts exist up front: the baseline measures transfers, not account creation.
    setup
        .execute(
            "INSERT INTO accounts (id) SELECT 'acc-' || g FROM generate_series(1, $1::int) g \
             UNION ALL SELECT $2",
            &[&(spec.accounts as i32), &HOT_ACCOUNT],
        )
        .await?;
    setup.batch_execute("VACUUM ANALYZE").await?;
    let zipf = Arc::new(Zipf::new(spec.accounts, spec.zipf_s));
    let workload = if spec.hot {
        Workload::Hot
    } else {
        Workload::Deposits
    };
    let mut levels = Vec::new();
    for &c in &spec.concurrencies {
        let level = one_level(&spec, &url, zipf.clone(), workload, c).await?;
        if spec.progress {
            println!(
                "  one-commit {} concurrency {c:>3}: {:>7.0} transfers/s  {}  ({})",
                workload.as_str(),
                level["per_s"].as_f64().unwrap_or(0.0),
                level["line"].as_str().unwrap_or(""),
                procs::cpu_line(&level["cpu"]),
            );
        }
        levels.push(level);
    }
    drop(setup);
    if !spec.keep_database {
        let _ = db::drop_database(&spec.admin_database_url, &spec.database).await;
    }
    let best = fastest(&levels);
    Ok(json!({
        "kind": "one-commit",
        "label": spec.label,
        "hot": spec.hot,
        "best_per_s": best["per_s"],
        "best_concurrency": best["concurrency"],
        "levels": levels,
    }))
}

/// What the clients of one level count together.
#[derive(Default)]
struct Counts {
    done: AtomicU64,
    errors: AtomicU64,
    latency: Mutex<Latency>,
}

async fn one_level(
    spec: &OneCommitSpec,
    url: &str,
    zipf: Arc<Zipf>,
    workload: Workload,
    concurrency: usize,
) -> Result<Value> {
    let run = run_id();
    let counts = Arc::new(Counts::default());
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        clients.push(db::connect(url).await?);
    }
    let cpu_start = CpuSnapshot::take();
    let start = Instant::now();
    let end = start + spec.duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let gen = Gen::new(
                workload,
                zipf.clone(),
                format!("o{run}-{i}"),
                spec.seed.wrapping_add(i as u64),
                0.0,
            );
            tokio::spawn(one_commit_client(client, gen, end, counts.clone()))
        })
        .collect();
    // CPU is read while the connections are still open: a PostgreSQL backend that exits
    // when its client is dropped would take its share of the window with it.
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu_start.delta_json(&CpuSnapshot::take());
    for t in tasks {
        t.await.context("one-commit task")??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = counts.done.load(Ordering::Relaxed);
    let latency = counts
        .latency
        .lock()
        .map(|l| l.clone())
        .unwrap_or_else(|_| Latency::new());
    Ok(json!({
        "concurrency": concurrency,
        "transfers": n,
        "errors": counts.errors.load(Ordering::Relaxed),
        "per_s": round1(n as f64 / elapsed),
        "latency": latency.summary(),
        "line": latency.line(),
        "cpu": cpu,
    }))
}

/// One connection of the baseline: until `end`, each transfer is its own transaction
/// (update the balance, insert the history row, commit).
async fn one_commit_client(
    mut client: tokio_postgres::Client,
    mut gen: Gen,
    end: Instant,
    counts: Arc<Counts>,
) -> Result<()> {
    let update = client
        .prepare(
            "UPDATE accounts SET balance = balance + $2, version = version + 1, \
             updated_at = now() WHERE id = $1 RETURNING balance",
        )
        .await?;
    let insert = client
        .prepare(
            "INSERT INTO history (id, account_id, amount, balance_after) \
             VALUES ($1, $2, $3, $4)",
        )
        .await?;
    let mut local = Latency::new();
    while Instant::now() < end {
        let tx = gen.next_tx();
        let amount = tx.amount();
        let t = Instant::now();
        let outcome: Result<(), tokio_postgres::Error> = async {
            let db_tx = client.transaction().await?;
            let row = db_tx.query_one(&update, &[&tx.account, &amount]).await?;
            let balance: rust_decimal::Decimal = row.get(0);
            db_tx
                .execute(&insert, &[&tx.id, &tx.account, &amount, &balance])
                .await?;
            db_tx.commit().await
        }
        .await;
        match outcome {
            Ok(()) => {
                local.record(t.elapsed());
                counts.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Ok(mut l) = counts.latency.lock() {
        l.add(&local);
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct CeilingSpec {
    pub label: String,
    pub broker_url: String,
    pub prefix: String,
    pub shards: u16,
    pub windows: Vec<usize>,
    pub duration: Duration,
    pub accounts: usize,
    pub zipf_s: f64,
    pub seed: u64,
    pub progress: bool,
}

pub async fn broker_ceiling(spec: CeilingSpec) -> Result<Value> {
    let conn = bus::connect(&spec.broker_url, "tally-bench-ceiling").await?;
    let topology = bus::topology(&spec.prefix, spec.shards);
    // Real envelopes, built before the clock starts: the ceiling is the broker's, not the cost
    // of building messages in the bench.
    let mut gen = Gen::new(
        Workload::Deposits,
        Arc::new(Zipf::new(spec.accounts, spec.zipf_s)),
        format!("c{}", run_id()),
        spec.seed,
        0.0,
    );
    let pool: Vec<(String, String, Vec<u8>)> = (0..20_000)
        .map(|_| {
            let tx = gen.next_tx();
            let body = tx.envelope(Utc::now()).encode();
            (topology.shard_of(&tx.account).to_string(), tx.id, body)
        })
        .collect();
    let body_bytes = pool.first().map_or(0, |p| p.2.len());
    let mut levels = Vec::new();
    for &window in &spec.windows {
        bus::delete_topology(&conn, &topology).await?;
        topology.declare(&conn).await?;
        let ch = bus::confirm_channel(&conn).await?;
        let cpu_start = CpuSnapshot::take();
        let mut i = 0usize;
        let published = bus::publish_window(
            &ch,
            &topology,
            window,
            Some(Instant::now() + spec.duration),
            || {
                let (key, id, body) = &pool[i % pool.len()];
                i += 1;
                Some(bus::Message {
                    routing_key: key.clone(),
                    id: id.clone(),
                    body: body.clone(),
                })
            },
        )
        .await?;
        let cpu = cpu_start.delta_json(&CpuSnapshot::take());
        let _ = ch.close(200, "done".into()).await;
        let per_s = published.confirmed as f64 / published.elapsed.as_secs_f64();
        if spec.progress {
            println!(
                "  broker ceiling window {window:>4}: {per_s:>7.0} confirmed publishes/s  confirm {}  ({})",
                published.latency.line(),
                procs::cpu_line(&cpu)
            );
        }
        levels.push(json!({
            "window": window,
            "confirmed": published.confirmed,
            "per_s": round1(per_s),
            "confirm_latency": published.latency.summary(),
            "cpu": cpu,
        }));
    }
    bus::delete_topology(&conn, &topology).await?;
    let _ = conn.close(200, "done".into()).await;
    let best = fastest(&levels);
    Ok(json!({
        "kind": "broker-ceiling",
        "label": spec.label,
        "shards": spec.shards,
        "message_bytes": body_bytes,
        "best_per_s": best["per_s"],
        "best_window": best["window"],
        "levels": levels,
    }))
}

/// The level with the highest `per_s` (Null when there is none).
fn fastest(levels: &[Value]) -> Value {
    levels
        .iter()
        .max_by(|a, b| {
            let rate = |v: &Value| v["per_s"].as_f64().unwrap_or(0.0);
            rate(a).total_cmp(&rate(b))
        })
        .cloned()
        .unwrap_or(Value::Null)
}
