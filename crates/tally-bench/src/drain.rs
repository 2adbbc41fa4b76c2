//! `tally-bench drain`: how fast the workers empty a pre-filled queue — the ledger's apply
//! throughput with no HTTP in front.
//!
//! In a database and under a broker prefix of its own (so no other worker, and no other run,
//! shares its shard leases or queues): create and migrate the database, publish N deposit
//! envelopes straight to the shard queues with confirms while no worker runs, then start M
//! release `tally-worker run` processes and time until every envelope is a ledger row. Times
//! come from the rows (`applied_at`), not from polling, so the figure is exact whatever the
//! polling interval. With M > 1 the first worker grabs every shard and hands them over on
//! its next lease ticks; the rate after the leases are balanced is reported separately.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

use crate::procs::{self, CpuSnapshot, RssTracker};
use crate::stats::round1;
use crate::workload::{run_id, Gen, Workload};
use crate::{bus, db};
use tally_testkit::database;
use tally_testkit::rng::Zipf;

#[derive(Debug, Clone)]
pub struct DrainSpec {
    pub label: String,
    pub messages: u64,
    /// All messages on one account (one shard) instead of Zipf over `accounts`.
    pub hot: bool,
    pub workers: usize,
    pub accounts: usize,
    pub zipf_s: f64,
    pub seed: u64,
    /// A database the bench may connect to for CREATE/DROP DATABASE.
    pub admin_database_url: String,
    /// Name of the throw-away database (dropped and created).
    pub database: String,
    pub broker_url: String,
    pub prefix: String,
    pub shards: u16,
    pub worker_bin: PathBuf,
    /// Unconfirmed publishes in flight while pre-filling.
    pub window: usize,
    /// Worker settings to try (env TALLY_WORKER__BATCH_MAX / __PREFETCH); None: defaults.
    pub batch_max: Option<usize>,
    pub prefetch: Option<u16>,
    pub timeout: Duration,
    pub log_dir: PathBuf,
    pub keep_database: bool,
    pub progress: bool,
}

/// The environment a worker of this run gets.
fn worker_env(spec: &DrainSpec, db_url: &str) -> Vec<(String, String)> {
    let mut env = db::worker_env(db_url, &spec.broker_url, &spec.prefix, spec.shards);
    if let Some(b) = spec.batch_max {
        env.push(("TALLY_WORKER__BATCH_MAX".into(), b.to_string()));
    }
    if let Some(p) = spec.prefetch {
        env.push(("TALLY_WORKER__PREFETCH".into(), p.to_string()));
    }
    env
}

pub async fn run(spec: DrainSpec) -> Result<Value> {
    if !spec.worker_bin.exists() {
        bail!(
            "{} not found: build first (cargo build --release --bins)",
            spec.worker_bin.display()
        );
    }
    let db_url = database::with_name(&spec.admin_database_url, &spec.database);
    let env = worker_env(&spec, &db_url);
    std::fs::create_dir_all(&spec.log_dir)?;

    // 1. Fresh database, migrated by the worker binary itself.
    db::recreate_migrated(
        &spec.admin_database_url,
        &spec.database,
        &spec.worker_bin,
        &env,
    )
    .await?;
    let ledger = db::connect(&db_url).await?;

    // 2. Empty topology under our prefix, then pre-fill it.
    let conn = bus::connect(&spec.broker_url, "tally-bench-drain").await?;
    let topology = bus::topology(&spec.prefix, spec.shards);
    bus::delete_topology(&conn, &topology).await?;
    topology.declare(&conn).await?;
    let published_wall = Utc::now();
    let published = prefill(&spec, &conn, &topology).await?;

    // 3. Start the workers and wait until every envelope is a row.
    let cpu_start = CpuSnapshot::take();
    let started_wall = Utc::now();
    let started = Instant::now();
    let mut children = spawn_workers(&spec, &env)?;
    let outcome = watch(&spec, &ledger, &conn, &topology, &children, started).await;
    let cpu = cpu_start.delta_json(&CpuSnapshot::take());
    let (rss, balanced_at) = match &outcome {
        Ok((rss, balanced_at)) => (rss.json(), *balanced_at),
        Err(_) => (json!(null), None),
    };
    stop_workers(&mut children).await;
    outcome?;

    // 4. Results from the rows; 5. clean up.
    let mut result = json!({
        "kind": "drain",
        "label": spec.label,
        "messages": spec.messages,
        "hot": spec.hot,
        "workers": spec.workers,
        "shards": spec.shards,
        "batch_max": spec.batch_max,
        "prefetch": spec.prefetch,
        "publish": {
            "per_s": round1(published.confirmed as f64 / published.elapsed.as_secs_f64()),
            "seconds": round1(published.elapsed.as_secs_f64()),
            "window": spec.window,
            "confirm_latency": published.latency.summary(),
        },
        "batches": db::batches_since(&ledger, published_wall).await?,
        "cpu": cpu,
        "rss": rss,
    });
    applied_result(
        &ledger,
        published_wall,
        started_wall,
        balanced_at,
        &mut result,
    )
    .await?;
    if spec.progress {
        print_result(&result);
    }

    drop(ledger);
    clean_up(&spec, conn, &topology).await;
    Ok(result)
}

/// Removes what only this run used: its queues and (unless kept) its database.
async fn clean_up(spec: &DrainSpec, conn: lapin::Connection, topology: &tally_bus::Topology) {
    let _ = bus::delete_topology(&conn, topology).await;
    let _ = conn.close(200, "done".into()).await;
    if !spec.keep_database {
        let _ = db::drop_database(&spec.admin_database_url, &spec.database).await;
    }
}

/// Publishes the run's envelopes to the shard queues, `window` unconfirmed at a time.
async fn prefill(
    spec: &DrainSpec,
    conn: &lapin::Connection,
    topology: &tally_bus::Topology,
) -> Result<bus::Published> {
    let channel = bus::confirm_channel(conn).await?;
    let workload = if spec.hot {
        Workload::Hot
    } else {
        Workload::Deposits
    };
    let mut gen = Gen::new(
        workload,
        Arc::new(Zipf::new(spec.accounts, spec.zipf_s)),
        format!("d{}", run_id()),
        spec.seed,
        0.0,
    );
    let mut left = spec.messages;
    if spec.progress {
        println!(
            "drain {}: publishing {} envelopes ({}) to {}.shard.* ...",
            spec.label,
            spec.messages,
            workload.as_str(),
            spec.prefix
        );
    }
    let published = bus::publish_window(&channel, topology, spec.window, None, || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let tx = gen.next_tx();
        let env = tx.envelope(Utc::now());
        Some(bus::Message {
            routing_key: topology.shard_of(&tx.account).to_string(),
            id: tx.id,
            body: env.encode(),
        })
    })
    .await?;
    if spec.progress {
        println!(
            "  published {} in {:.1}s ({:.0}/s, confirm {})",
            published.confirmed,
            published.elapsed.as_secs_f64(),
            published.confirmed as f64 / published.elapsed.as_secs_f64(),
            published.latency.line()
        );
    }
    Ok(published)
}

/// `tally-worker run` × `spec.workers`, each logging to a file of its own.
fn spawn_workers(spec: &DrainSpec, env: &[(String, String)]) -> Result<Vec<Child>> {
    (1..=spec.workers)
        .map(|i| {
            let log =
                std::fs::File::create(spec.log_dir.join(format!("{}-worker-{i}.log", spec.label)))?;
            Command::new(&spec.worker_bin)
                .arg("run")
                .envs(env.iter().cloned())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Never leave a worker behind if the bench dies.
                .kill_on_drop(true)
                .spawn()
                .context("starting tally-worker run")
        })
        .collect()
}

/// The applied rows of the run: how many, how fast overall, from the first commit, and
/// once the leases were balanced.
async fn applied_result(
    ledger: &tokio_postgres::Client,
    published_wall: DateTime<Utc>,
    started_wall: DateTime<Utc>,
    balanced_at: Option<DateTime<Utc>>,
    result: &mut Value,
) -> Result<()> {
    let (count, first, last) = db::applied_since(ledger, published_wall).await?;
    let (Some(first), Some(last)) = (first, last) else {
        bail!("no rows applied");
    };
    let secs =
        |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let wall = secs(started_wall, last).max(1e-3);
    let steady = secs(first, last).max(1e-3);
    result["after_balance"] = match balanced_at {
        Some(at) if at < last => {
            let n =
                db::applied_between(ledger, at, last + chrono::Duration::milliseconds(1)).await?;
            json!({
                "balanced_after_s": round1(secs(started_wall, at)),
                "applied": n,
                "per_s": round1(n as f64 / secs(at, last).max(1e-3)),
            })
        }
        _ => Value::Null,
    };
    result["applied"] = json!(count);
    result["wall_s"] = json!(round1(wall));
    result["applied_per_s"] = json!(round1(count as f64 / wall));
    result["first_applied_after_s"] = json!(round1(secs(started_wall, first)));
    result["steady_per_s"] = json!(round1(count as f64 / steady));
    result["longest_gap_s"] = json!(db::longest_gap_s(ledger, started_wall)
        .await?
        .map(|g| (g * 1000.0).round() / 1000.0));
    Ok(())
}

fn print_result(result: &Value) {
    let f = |key: &str| result[key].as_f64().unwrap_or(0.0);
    println!(
        "  applied {} in {:.1}s after the workers started: {:.0}/s overall, {:.0}/s from the first commit{}",
        result["applied"],
        f("wall_s"),
        f("applied_per_s"),
        f("steady_per_s"),
        result["after_balance"]["per_s"]
            .as_f64()
            .map_or(String::new(), |r| format!(", {r:.0}/s once leases were balanced")),
    );
    println!(
        "  batches {}, longest time between two commits {} s",
        result["batches"], result["longest_gap_s"]
    );
    println!("  cpu: {}", procs::cpu_line(&result["cpu"]));
    println!("  worker peak RSS {} MB", result["rss"]["worker_peak_mb"]);
}

/// Polls until every message is applied; returns the workers' peak RSS and when the shard
/// leases were first balanced across the workers.
async fn watch(
    spec: &DrainSpec,
    ledger: &tokio_postgres::Client,
    conn: &lapin::Connection,
    topology: &tally_bus::Topology,
    children: &[Child],
    started: Instant,
) -> Result<(RssTracker, Option<DateTime<Utc>>)> {
    let pids: Vec<(String, u32)> = children
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.id().map(|p| (format!("worker-{}", i + 1), p)))
        .collect();
    let mut rss = RssTracker::default();
    let mut balanced_at = None;
    let mut last_print = Instant::now();
    let mut last_est = db::inserted_estimate(ledger).await.unwrap_or(0);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss.sample(&pids);
        if balanced_at.is_none() && balanced(ledger, spec.workers, spec.shards).await {
            balanced_at = Some(Utc::now());
        }
        let ready = bus::ready_total(conn, topology).await;
        // Count rows once the queues look empty, or every time when they cannot be read (our
        // broker connection died, e.g. the chaos suite restarted RabbitMQ).
        if matches!(ready, Some(0) | None) {
            let n: i64 = match ledger
                .query_one("SELECT count(*) FROM transactions", &[])
                .await
            {
                Ok(row) => row.get(0),
                Err(e) if ledger.is_closed() => bail!("lost the ledger database: {e}"),
                Err(_) => 0,
            };
            if n as u64 >= spec.messages {
                return Ok((rss, balanced_at));
            }
        }
        if spec.progress && last_print.elapsed() >= Duration::from_secs(1) {
            let est = db::inserted_estimate(ledger).await.unwrap_or(last_est);
            println!(
                "  [{:>4.1}s] applied ~{}/s, ready in queues {}",
                started.elapsed().as_secs_f64(),
                ((est - last_est) as f64 / last_print.elapsed().as_secs_f64()) as i64,
                ready.map_or("-".into(), |r| r.to_string())
            );
            last_est = est;
            last_print = Instant::now();
        }
        if started.elapsed() > spec.timeout {
            bail!("not drained after {:?}", spec.timeout);
        }
    }
}

/// Every shard owned, by exactly `workers` owners, evenly (±1).
async fn balanced(ledger: &tokio_postgres::Client, workers: usize, shards: u16) -> bool {
    let Ok(rows) = ledger
        .query(
            "SELECT count(*) FROM shard_leases WHERE owner IS NOT NULL AND expires_at > now() \
             GROUP BY owner",
            &[],
        )
        .await
    else {
        return false;
    };
    let counts: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let total: i64 = counts.iter().sum();
    let (min, max) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    counts.len() == workers && total == i64::from(shards) && max - min <= 1
}

/// SIGTERM (graceful: the worker releases its leases), then SIGKILL after 10 s.
async fn stop_workers(children: &mut [Child]) {
    for c in children.iter() {
        if let Some(pid) = c.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
    }
    for c in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
}
