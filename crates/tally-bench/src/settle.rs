//! `tally-bench settlement`: one settlement job over a seeded ledger, end to end through a
//! real worker process. A throw-away database is created and migrated, [`seed`] fills it
//! (N transactions over the last D days), ONE release worker starts under a broker prefix of
//! its own, a job over the whole range is created the way the API creates it
//! (`tally_store::settlement::create`), and the bench polls it to COMPLETED.
//!
//! Reported: wall time from the job's creation to COMPLETED (pickup included) and from its
//! start, the worker's peak RSS (VmHWM), the settlement rows written and the size of the CSV
//! download (streamed from the same `COPY` the API's download route forwards), plus the
//! seed's own throughput.

use anyhow::{bail, Context, Result};
use chrono::{Days, Utc};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tally_settings::{DatabaseSettings, Secret};
use tally_store::settlement::{self, JobStatus};
use tokio::process::{Child, Command};

use crate::procs;
use crate::seed::{self, SeedSpec};
use crate::stats::round1;
use crate::{bus, db};
use tally_testkit::database;

pub struct SettleSpec {
    pub label: String,
    pub transactions: u64,
    pub accounts: u64,
    /// Days of data, ending yesterday (UTC).
    pub days: u64,
    pub seed: u64,
    pub admin_database_url: String,
    pub database: String,
    pub broker_url: String,
    pub prefix: String,
    pub shards: u16,
    pub worker_bin: PathBuf,
    pub timeout: Duration,
    pub log_dir: PathBuf,
    pub keep_database: bool,
    pub progress: bool,
}

pub async fn run(spec: SettleSpec) -> Result<Value> {
    if !spec.worker_bin.exists() {
        bail!(
            "{} not found: build first (cargo build --release --bins)",
            spec.worker_bin.display()
        );
    }
    if spec.days == 0 {
        bail!("--days must be positive");
    }
    let db_url = database::with_name(&spec.admin_database_url, &spec.database);
    let env = db::worker_env(&db_url, &spec.broker_url, &spec.prefix, spec.shards);
    std::fs::create_dir_all(&spec.log_dir)?;

    db::recreate_migrated(
        &spec.admin_database_url,
        &spec.database,
        &spec.worker_bin,
        &env,
    )
    .await?;

    let today = Utc::now().date_naive();
    let to = today - Days::new(1);
    let from = today - Days::new(spec.days);
    if spec.progress {
        eprintln!(
            "settlement {}: seeding {} transactions over {} accounts, {from}..{to}",
            spec.label, spec.transactions, spec.accounts
        );
    }
    let seeded = seed::run(SeedSpec {
        database_url: db_url.clone(),
        transactions: spec.transactions,
        accounts: spec.accounts,
        from,
        to,
        seed: spec.seed,
        shards: spec.shards,
        withdraw_share: 0.4,
        progress: spec.progress,
    })
    .await?;

    // The worker also consumes its (empty) shard queues: a prefix of our own keeps it off
    // anyone else's.
    let conn = bus::connect(&spec.broker_url, "tally-bench-settlement").await?;
    let topology = bus::topology(&spec.prefix, spec.shards);
    bus::delete_topology(&conn, &topology).await?;
    let log = std::fs::File::create(spec.log_dir.join(format!("{}-worker.log", spec.label)))?;
    let mut worker = Command::new(&spec.worker_bin)
        .arg("run")
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting tally-worker run")?;
    let outcome = measure(&spec, &db_url, &mut worker).await;
    stop(&mut worker).await;
    let _ = bus::delete_topology(&conn, &topology).await;
    let _ = conn.close(200, "done".into()).await;
    if !spec.keep_database {
        let _ = db::drop_database(&spec.admin_database_url, &spec.database).await;
    }
    let mut result = outcome?;
    result["seed"] = seeded;
    Ok(result)
}

async fn measure(spec: &SettleSpec, db_url: &str, worker: &mut Child) -> Result<Value> {
    let pid = worker.id().context("worker pid")?;
    let pool = tally_store::connect(&DatabaseSettings {
        url: Secret::new(db_url.to_string()),
        pool_size: 2,
        timeout_ms: 30_000,
    })?;
    wait_for_leases(&pool, worker, spec.shards).await?;
    let base_hwm = procs::rss(pid).map_or(0, |r| r.hwm_kb);

    let today = Utc::now().date_naive();
    let job = settlement::create(&pool, today - Days::new(spec.days), today - Days::new(1)).await?;
    let (done, peak_kb) = wait_for_job(spec, &pool, worker, &job, base_hwm).await?;
    let secs = |a: chrono::DateTime<Utc>, b: chrono::DateTime<Utc>| {
        (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6
    };
    let finished = done.finished_at.context("finished_at")?;
    let wall = secs(done.created_at, finished);
    let running = done.started_at.map(|s| secs(s, finished));

    let rows: i64 = pool
        .get()
        .await?
        .query_one("SELECT count(*) FROM settlements", &[])
        .await?
        .get(0);
    let csv = Instant::now();
    let csv_bytes = csv_size(&pool, &done).await?;
    let csv_s = csv.elapsed().as_secs_f64();

    if spec.progress {
        eprintln!(
            "  settlement of {} days: {wall:.2}s from creation ({:.2}s running), worker peak RSS {:.1} MB, \
             {rows} settlement rows, CSV {:.1} MB in {csv_s:.1}s",
            spec.days,
            running.unwrap_or(0.0),
            peak_kb as f64 / 1024.0,
            csv_bytes as f64 / 1e6
        );
    }
    Ok(json!({
        "kind": "settlement",
        "label": spec.label,
        "transactions": spec.transactions,
        "accounts": spec.accounts,
        "days": spec.days,
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "running_s": running.map(|r| (r * 1000.0).round() / 1000.0),
        "worker_peak_rss_mb": round1(peak_kb as f64 / 1024.0),
        "worker_idle_rss_mb": round1(base_hwm as f64 / 1024.0),
        "settlement_rows": rows,
        "csv_bytes": csv_bytes,
        "csv_s": round1(csv_s),
        "targets": {
            "wall_le_10s": wall <= 10.0,
            "peak_rss_le_100mb": peak_kb <= 100 * 1024,
        },
    }))
}

/// Waits until the worker holds all `shards` leases: it is up and polling for jobs.
async fn wait_for_leases(pool: &tally_store::Pool, worker: &mut Child, shards: u16) -> Result<()> {
    let up = Instant::now();
    loop {
        if let Some(status) = worker.try_wait()? {
            bail!("the worker exited at start ({status}); see its log");
        }
        let owned: i64 = pool
            .get()
            .await?
            .query_one(
                "SELECT count(*) FROM shard_leases WHERE owner IS NOT NULL AND expires_at > now()",
                &[],
            )
            .await?
            .get(0);
        if owned >= i64::from(shards) {
            return Ok(());
        }
        if up.elapsed() > Duration::from_secs(60) {
            bail!("the worker took no shard lease within 60 s; see its log");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the job until it is final, sampling the worker's peak RSS (from `base_hwm` KB);
/// returns the completed job and the peak. A job that did not complete is an error.
async fn wait_for_job(
    spec: &SettleSpec,
    pool: &tally_store::Pool,
    worker: &mut Child,
    job: &settlement::Job,
    base_hwm: u64,
) -> Result<(settlement::Job, u64)> {
    let pid = worker.id().context("worker pid")?;
    let created = Instant::now();
    let mut last_print = Instant::now();
    let mut peak_kb = base_hwm;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(r) = procs::rss(pid) {
            peak_kb = peak_kb.max(r.hwm_kb);
        }
        let Some(j) = settlement::get(pool, job.id).await? else {
            bail!("job {} vanished", job.id);
        };
        if j.status.is_final() {
            if j.status != JobStatus::Completed {
                bail!("job ended {}: {:?}", j.status.as_str(), j.error);
            }
            return Ok((j, peak_kb));
        }
        if spec.progress && last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "  [{:>5.1}s] {} {}/{} days",
                created.elapsed().as_secs_f64(),
                j.status.as_str(),
                j.processed,
                j.total
            );
            last_print = Instant::now();
        }
        if created.elapsed() > spec.timeout {
            bail!("job not finished after {:?}", spec.timeout);
        }
        if let Some(status) = worker.try_wait()? {
            bail!("the worker exited during the job ({status})");
        }
    }
}

/// Bytes of the job's CSV export, streamed to the end.
async fn csv_size(pool: &tally_store::Pool, job: &settlement::Job) -> Result<u64> {
    let (_conn, stream) = settlement::csv(pool, job).await?;
    futures_util::pin_mut!(stream);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len() as u64;
    }
    Ok(bytes)
}

/// SIGTERM (graceful), then SIGKILL after 10 s.
async fn stop(worker: &mut Child) {
    if let Some(pid) = worker.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), worker.wait())
        .await
        .is_err()
    {
        let _ = worker.kill().await;
    }
}
