//! `tally-bench suite`, run by `make bench`: the standard set, end to end, in one go.
//!
//! 1. Baselines: broker ceiling (windows 64, 256), one-commit-per-transfer on Zipf accounts
//!    and on one hot row (several concurrencies each, the best counts).
//! 2. Worker drain of a 200k pre-filled queue with 1, 2 and 4 workers, and 200k on one hot
//!    account with 1 worker.
//! 3. Settlement: one job over 1,000,000 seeded transactions (30 days, 100k accounts) run
//!    by one worker: wall time and the worker's peak RSS.
//! 4. HTTP through nginx against `make up` stacks in a database and broker prefix of the
//!    bench's own (recreated at every restart, so every configuration starts from the same
//!    empty ledger): 3 API replicas + 2 workers for the saturation, half-rate and hot runs;
//!    then 1 replica + 2 workers, 3 + 1 and 3 + 4 for scaling.
//!
//! Every figure lands in one JSON file under `target/bench/` and a summary table on stdout
//! (also written next to it as Markdown), with each target of issue 5 and whether it was met.
//! Nothing here asserts: the figures are benchmarks, not tests.

use anyhow::{bail, Context, Result};
use chrono::Utc;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

use crate::cli::SuiteArgs;
use crate::load::{LoadSpec, Mode};
use crate::workload::Workload;
use crate::{baseline, bus, db, drain, load, procs, settle};
use tally_testkit::database;

struct Config {
    port: u16,
    api_base_port: u16,
    prefix: String,
    database: String,
    admin_url: String,
    broker_url: String,
    bin_dir: PathBuf,
    out_dir: PathBuf,
    duration: Duration,
    drain_messages: u64,
    skip: Vec<String>,
    quick: bool,
}

impl Config {
    fn skips(&self, phase: &str) -> bool {
        self.skip.iter().any(|s| s == phase)
    }

    fn stack_db_url(&self) -> String {
        database::with_name(&self.admin_url, &self.database)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl From<&SuiteArgs> for Config {
    fn from(a: &SuiteArgs) -> Self {
        let quick = a.quick;
        Config {
            port: a.port,
            api_base_port: a.api_base_port,
            prefix: a.prefix.clone(),
            database: a.database.clone(),
            admin_url: a.admin.database_url.clone(),
            broker_url: a.broker_url.clone(),
            bin_dir: a.bin_dir.path(),
            out_dir: a.out_dir.clone(),
            duration: a
                .duration
                .unwrap_or(Duration::from_secs(if quick { 3 } else { 10 })),
            drain_messages: a
                .drain_messages
                .unwrap_or(if quick { 20_000 } else { 200_000 }),
            skip: a.skip.clone(),
            quick,
        }
    }
}

pub async fn main(a: SuiteArgs) -> Result<()> {
    let cfg = Config::from(&a);
    // Someone else's stack under .run/ would be stopped by our `make up`: refuse by default.
    if !cfg.skips("stack") && stack_running().await && !a.restart_stack {
        bail!(
            "a stack started by `make up` is running (see `make status`); it may be someone \
             else's. Stop it (`make down`) or pass --restart-stack"
        );
    }
    let quiet = wait_until_quiet(a.wait_quiet).await;
    let started = Utc::now();
    let stamp = started.format("%Y%m%dT%H%M%SZ").to_string();
    std::fs::create_dir_all(&cfg.out_dir)?;
    let mut report = json!({
        "kind": "suite",
        "started_at": started.to_rfc3339(),
        "quick": cfg.quick,
        "machine": machine(&cfg).await,
        "quiet": quiet,
    });
    println!(
        "== tally-bench suite {stamp}\n{}",
        serde_json::to_string_pretty(&report["machine"])?
    );

    let outcome = phases(&cfg, &mut report).await;
    if !cfg.skips("stack") {
        // Always leave the machine as we found it, whatever failed.
        let _ = make(&cfg, &["down"], &[]).await;
        let _ = db::drop_database(&cfg.admin_url, &cfg.database).await;
        if let Ok(conn) = bus::connect(&cfg.broker_url, "tally-bench-suite").await {
            let _ = bus::delete_topology(&conn, &bus::topology(&cfg.prefix, 8)).await;
        }
    }
    report["finished_at"] = json!(Utc::now().to_rfc3339());
    if let Err(e) = &outcome {
        report["error"] = json!(format!("{e:#}"));
    }
    report["targets"] = targets(&report);
    let table = summary(&report);
    println!("\n{table}");
    let json_path = cfg.out_dir.join(format!("suite-{stamp}.json"));
    crate::write_json(&json_path, &report)?;
    crate::write_json(&cfg.out_dir.join("latest.json"), &report)?;
    std::fs::write(cfg.out_dir.join(format!("summary-{stamp}.md")), &table)?;
    println!("results: {}", json_path.display());
    outcome
}

async fn phases(cfg: &Config, report: &mut Value) -> Result<()> {
    if !cfg.skips("baselines") {
        baselines(cfg, report).await;
    }
    if !cfg.skips("drain") {
        drains(cfg, report).await;
    }
    if !cfg.skips("settlement") {
        settlement(cfg, report).await;
    }
    if !cfg.skips("stack") {
        stack_phase(cfg, report).await?;
    }
    Ok(())
}

/// `quick` runs last at most 3 s.
fn secs(cfg: &Config, s: u64) -> Duration {
    Duration::from_secs(if cfg.quick { s.min(3) } else { s })
}

/// Broker ceiling and one-commit (Zipf and hot); a failed one is recorded, not fatal.
async fn baselines(cfg: &Config, report: &mut Value) {
    println!("\n== baselines");
    report["broker_ceiling"] = baseline::broker_ceiling(baseline::CeilingSpec {
        label: "broker-ceiling".into(),
        broker_url: cfg.broker_url.clone(),
        prefix: format!("{}ceil", cfg.prefix),
        shards: 8,
        windows: vec![64, 256],
        duration: secs(cfg, 8),
        accounts: 100_000,
        zipf_s: 1.0,
        seed: 1,
        progress: true,
    })
    .await
    .unwrap_or_else(|e| failed("broker-ceiling", &e));
    for hot in [false, true] {
        let key = if hot { "one_commit_hot" } else { "one_commit" };
        report[key] = baseline::one_commit(baseline::OneCommitSpec {
            label: key.replace('_', "-"),
            admin_database_url: cfg.admin_url.clone(),
            database: format!("{}_baseline", cfg.database),
            concurrencies: if hot { vec![1, 4, 16] } else { vec![4, 16, 64] },
            hot,
            duration: secs(cfg, 5),
            accounts: 100_000,
            zipf_s: 1.0,
            seed: 1,
            keep_database: false,
            progress: true,
        })
        .await
        .unwrap_or_else(|e| failed(key, &e));
    }
}

/// Worker drains with 1, 2 and 4 workers, and 1 on one hot account.
async fn drains(cfg: &Config, report: &mut Value) {
    println!("\n== worker drain");
    let mut drains = Vec::new();
    for (workers, hot) in [(1, false), (2, false), (4, false), (1, true)] {
        let label = if hot {
            format!("drain-hot-{workers}w")
        } else {
            format!("drain-{workers}w")
        };
        drains.push(
            drain::run(drain::DrainSpec {
                label: label.clone(),
                messages: cfg.drain_messages,
                hot,
                workers,
                accounts: 100_000,
                zipf_s: 1.0,
                seed: 1,
                admin_database_url: cfg.admin_url.clone(),
                database: format!("{}_drain", cfg.database),
                broker_url: cfg.broker_url.clone(),
                prefix: format!("{}drain", cfg.prefix),
                shards: 8,
                worker_bin: cfg.bin_dir.join("tally-worker"),
                window: 512,
                batch_max: None,
                prefetch: None,
                timeout: Duration::from_secs(300),
                log_dir: cfg.out_dir.join("logs"),
                keep_database: false,
                progress: true,
            })
            .await
            .unwrap_or_else(|e| failed(&label, &e)),
        );
        report["drain"] = json!(drains);
    }
}

/// One settlement job over seeded transactions.
async fn settlement(cfg: &Config, report: &mut Value) {
    println!("\n== settlement over seeded transactions");
    report["settlement"] = settle::run(settle::SettleSpec {
        label: "settlement".into(),
        transactions: if cfg.quick { 100_000 } else { 1_000_000 },
        accounts: 100_000,
        days: 30,
        seed: 1,
        admin_database_url: cfg.admin_url.clone(),
        database: format!("{}_settlement", cfg.database),
        broker_url: cfg.broker_url.clone(),
        prefix: format!("{}settle", cfg.prefix),
        shards: 8,
        worker_bin: cfg.bin_dir.join("tally-worker"),
        timeout: Duration::from_secs(300),
        log_dir: cfg.out_dir.join("logs"),
        keep_database: false,
        progress: true,
    })
    .await
    .unwrap_or_else(|e| failed("settlement", &e));
}

fn load_spec(cfg: &Config, label: &str, workload: Workload, mode: Mode, d: Duration) -> LoadSpec {
    LoadSpec {
        label: label.into(),
        url: cfg.url(),
        workload,
        mode,
        duration: d,
        accounts: 100_000,
        zipf_s: 1.0,
        request_share: 0.2,
        seed: 1,
        database_url: Some(cfg.stack_db_url()),
        broker: Some((cfg.broker_url.clone(), cfg.prefix.clone(), 8)),
        pids_dir: Some(PathBuf::from(".run/pids")),
        drain_timeout: Duration::from_secs(120),
        request_timeout: Duration::from_secs(15),
        progress: true,
    }
}

async fn stack_phase(cfg: &Config, report: &mut Value) -> Result<()> {
    let d = cfg.duration;
    let half_d = d.mul_f64(1.5);
    let closed = Mode::Closed { concurrency: 64 };
    let mut loads: Vec<Value> = Vec::new();
    // Runs one load and keeps its result, or its error: one failed measurement (say the
    // chaos suite restarted RabbitMQ under it) must not cost the others.
    async fn step(loads: &mut Vec<Value>, report: &mut Value, spec: LoadSpec) -> Result<Value> {
        let label = spec.label.clone();
        let r = match load::run(spec).await {
            Ok(r) => with_cpu_per_tx(r),
            Err(e) => failed(&label, &e),
        };
        loads.push(r.clone());
        report["loads"] = json!(loads);
        Ok(r)
    }
    let open = |rate: f64| Mode::Open {
        rate: rate.max(50.0),
        connections: 256,
    };

    println!("\n== HTTP through nginx: 3 API replicas, 2 workers");
    stack_up(cfg, 3, 2).await?;
    warm_up(cfg).await?;
    // Two concurrencies: with greedy batching, more requests in flight make bigger batches,
    // so the ceiling may lie above 64 connections.
    let mut dep_max: f64 = 0.0;
    for c in [64, 256] {
        let mode = Mode::Closed { concurrency: c };
        let spec = load_spec(cfg, &format!("deposits-c{c}"), Workload::Deposits, mode, d);
        dep_max = dep_max.max(sustainable(&step(&mut loads, report, spec).await?));
    }
    let spec = load_spec(
        cfg,
        "deposits-half",
        Workload::Deposits,
        open(dep_max / 2.0),
        half_d,
    );
    step(&mut loads, report, spec).await?;
    let spec = load_spec(cfg, "mixed-c64", Workload::Mixed, closed, d);
    let mixed = step(&mut loads, report, spec).await?;
    // Rate of new transfers (follow-up withdraws excluded) the system sustained.
    let mixed_max = sustainable(&mixed) * new_share(&mixed);
    let spec = load_spec(
        cfg,
        "mixed-half",
        Workload::Mixed,
        open(mixed_max / 2.0),
        half_d,
    );
    step(&mut loads, report, spec).await?;
    let spec = load_spec(cfg, "hot-c64", Workload::Hot, closed, d);
    step(&mut loads, report, spec).await?;

    if !cfg.skips("scaling") {
        for (api, workers) in [(1, 2), (3, 1), (3, 4)] {
            println!("\n== HTTP through nginx: {api} API replicas, {workers} workers");
            if let Err(e) = stack_up(cfg, api, workers).await {
                loads.push(failed(&format!("scale-{api}api-{workers}w"), &e));
                report["loads"] = json!(loads);
                continue;
            }
            warm_up(cfg).await?;
            let label = format!("scale-{api}api-{workers}w");
            let spec = load_spec(cfg, &label, Workload::Deposits, closed, d);
            step(&mut loads, report, spec).await?;
        }
    }
    Ok(())
}

/// min(accepted/s, applied/s) of a closed-loop run: what the system can keep up with.
fn sustainable(r: &Value) -> f64 {
    r["sustainable_per_s"]
        .as_f64()
        .or_else(|| r["accepted_per_s"].as_f64())
        .unwrap_or(0.0)
}

/// The processes of the system under test (the load generator and dev processes excluded).
const SYSTEM: [&str; 5] = ["postgres", "rabbitmq", "nginx", "tally-api", "tally-worker"];

/// Adds `cpu_ms_per_tx`: CPU milliseconds per sustained transaction (min of accepted/s and
/// applied/s), per component and summed over the system under test. CPU per transaction
/// does not depend on how busy the machine is, so it is the figure to compare across runs.
fn with_cpu_per_tx(mut r: Value) -> Value {
    let per_s = sustainable(&r);
    let Some(pct) = r["cpu"]["percent_of_one_core"].as_object().cloned() else {
        return r;
    };
    if per_s <= 0.0 {
        return r;
    }
    let ms = |p: f64| ((p / 100.0 / per_s * 1000.0) * 1000.0).round() / 1000.0;
    let mut per = serde_json::Map::new();
    let mut system = 0.0;
    for (k, v) in &pct {
        let p = v.as_f64().unwrap_or(0.0);
        per.insert(k.clone(), json!(ms(p)));
        if SYSTEM.contains(&k.as_str()) {
            system += p;
        }
    }
    per.insert("system".into(), json!(ms(system)));
    r["cpu_ms_per_tx"] = Value::Object(per);
    r
}

/// Answers of a run that were neither accepted (200/201) nor decided (402).
fn errors(r: &Value) -> Option<u64> {
    let kinds = r["outcomes"].as_object()?;
    Some(
        kinds
            .values()
            .filter_map(Value::as_object)
            .flat_map(|labels| labels.iter())
            .filter(|(label, _)| !["200", "201", "402"].iter().any(|ok| label.starts_with(ok)))
            .filter_map(|(_, n)| n.as_u64())
            .sum(),
    )
}

/// Share of new transfers among all requests of a mixed run (the rest are follow-ups).
fn new_share(r: &Value) -> f64 {
    let sent = r["sent"].as_f64().unwrap_or(0.0);
    let offered =
        r["offered_per_s"].as_f64().unwrap_or(0.0) * r["duration_s"].as_f64().unwrap_or(0.0);
    if sent > 0.0 {
        (offered / sent).clamp(0.0, 1.0)
    } else {
        1.0
    }
}

/// The result of a measurement that failed: its label and why (printed too).
fn failed(label: &str, e: &anyhow::Error) -> Value {
    eprintln!("!! {label} failed: {e:#}");
    json!({"label": label, "error": format!("{e:#}")})
}

/// A short closed-loop run whose figures are thrown away: opens nginx's and the replicas'
/// connections, fills statement caches and lets the workers finish balancing their leases.
async fn warm_up(cfg: &Config) -> Result<()> {
    let mut spec = load_spec(
        cfg,
        "warm-up",
        Workload::Deposits,
        Mode::Closed { concurrency: 16 },
        Duration::from_secs(3),
    );
    spec.progress = false;
    spec.pids_dir = None;
    if let Err(e) = load::run(spec).await {
        eprintln!("warm-up failed (continuing): {e:#}");
    }
    // Planner statistics as a running ledger has them. The stack's database is new: the
    // workers' cached plans for `… WHERE id = ANY($1)` were made while `transactions` and
    // `accounts` held a page or two, and stay sequential scans until autovacuum analyzes the
    // tables (its naptime is a minute), so the first run measured a brand-new database's
    // first minute (a profile found 36 % of the batches scanning `transactions` whole, texteq
    // in ~25 % of PostgreSQL's samples). ANALYZE also invalidates those cached plans.
    match db::connect(&cfg.stack_db_url()).await {
        Ok(client) => {
            if let Err(e) = client.batch_execute("ANALYZE").await {
                eprintln!("ANALYZE after the warm-up failed (continuing): {e:#}");
            }
        }
        Err(e) => eprintln!("ANALYZE after the warm-up: no connection (continuing): {e:#}"),
    }
    Ok(())
}

/// `make <args>` from the workspace root with the bench stack's settings.
async fn make(cfg: &Config, args: &[&str], extra: &[(&str, String)]) -> Result<()> {
    let status = Command::new(std::env::var("MAKE").unwrap_or_else(|_| "make".into()))
        .args(args)
        // Never rebuild between runs (`make bench` built once): others may be editing the
        // tree, and a rebuild would both take minutes and change what is measured.
        .arg("CARGO=true")
        // On the command line too: they then win over whatever an outer `make bench PORT=…`
        // passed down in MAKEFLAGS.
        .arg(format!("PORT={}", cfg.port))
        .arg(format!("API_BASE_PORT={}", cfg.api_base_port))
        // The load generator sends no API key: the stack runs with authentication off (one
        // in-memory lookup per request, not what these figures are about).
        .arg("AUTH=off")
        .args(extra.iter().map(|(k, v)| format!("{k}={v}")))
        .env("PORT", cfg.port.to_string())
        .env("API_BASE_PORT", cfg.api_base_port.to_string())
        .env("TALLY_DATABASE__URL", cfg.stack_db_url())
        .env("TALLY_BROKER__URL", &cfg.broker_url)
        .env("TALLY_BROKER__PREFIX", &cfg.prefix)
        .env("BIN_DIR", &cfg.bin_dir)
        // Beside a default stack's workers (9101…).
        .env("WORKER_METRICS_BASE_PORT", "9201")
        // The stack's logs: warnings only, so logging is not what is measured.
        .env("RUST_LOG", "warn")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running make {}", args.join(" ")))?;
    if !status.success() {
        bail!("make {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Restarts the stack with `api` replicas and `workers` workers on a fresh database and
/// empty queues.
async fn stack_up(cfg: &Config, api: usize, workers: usize) -> Result<()> {
    make(cfg, &["down"], &[]).await?;
    db::recreate_database(&cfg.admin_url, &cfg.database).await?;
    let conn = bus::connect(&cfg.broker_url, "tally-bench-suite").await?;
    bus::delete_topology(&conn, &bus::topology(&cfg.prefix, 8)).await?;
    let _ = conn.close(200, "done".into()).await;
    make(
        cfg,
        &["up"],
        &[
            ("API_REPLICAS", api.to_string()),
            ("WORKERS", workers.to_string()),
        ],
    )
    .await
}

async fn stack_running() -> bool {
    let out = Command::new("bash")
        .args(["deploy/local/stack.sh", "status"])
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) => !String::from_utf8_lossy(&o.stdout).contains("not running"),
        Err(_) => false,
    }
}

/// Waits (re-checking every 30 s) until no cargo/nextest/tally-chaos process runs, for at
/// most `limit`; returns what was seen, for the report.
async fn wait_until_quiet(limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let busy = procs::noisy_neighbours();
        if busy.is_empty() {
            return json!({"quiet": true, "waited_s": start.elapsed().as_secs()});
        }
        if start.elapsed() >= limit {
            println!("machine NOT quiet: {busy:#?}");
            return json!({"quiet": false, "waited_s": start.elapsed().as_secs(), "busy": busy});
        }
        println!(
            "waiting for a quiet machine ({} busy processes, e.g. {})",
            busy.len(),
            busy[0]
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

async fn output(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output().await {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if s.is_empty() {
                s = String::from_utf8_lossy(&o.stderr).trim().to_string();
            }
            s
        }
        Err(_) => String::new(),
    }
}

async fn machine(cfg: &Config) -> Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let postgres = match db::connect(&cfg.admin_url).await {
        Ok(c) => db::server_version(&c).await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let dpkg =
        |p: &'static str| async move { output("dpkg-query", &["-W", "-f", "${Version}", p]).await };
    json!({
        "nproc": output("nproc", &[]).await,
        "cpu_model": cpu_model,
        "mem_gib": mem_gib,
        "kernel": output("uname", &["-r"]).await,
        "postgresql": postgres,
        "rabbitmq": dpkg("rabbitmq-server").await,
        "erlang": dpkg("erlang-base").await,
        "nginx": output("nginx", &["-v"]).await,
        "rustc": output("rustc", &["--version"]).await,
        "commit": head_commit(Path::new(".git")),
    })
}

/// The checked-out commit, read from `.git` files (no git command).
fn head_commit(git: &Path) -> Option<String> {
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    match head.strip_prefix("ref: ") {
        None => Some(head.to_string()),
        Some(r) => std::fs::read_to_string(git.join(r))
            .ok()
            .map(|s| s.trim().to_string())
            .or_else(|| {
                let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
                packed
                    .lines()
                    .find(|l| l.ends_with(r))
                    .and_then(|l| l.split_whitespace().next())
                    .map(String::from)
            }),
    }
}

fn find<'a>(report: &'a Value, key: &str, label: &str) -> &'a Value {
    report[key]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["label"] == label))
        .unwrap_or(&Value::Null)
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// One target: what was measured against its goal, and whether it was met.
fn target(
    name: &str,
    measured: Option<f64>,
    unit: &str,
    goal: &str,
    met: Option<bool>,
    note: String,
) -> Value {
    json!({
        "target": name, "measured": measured.map(|m| (m * 10.0).round() / 10.0),
        "unit": unit, "goal": goal, "met": met, "note": note,
    })
}

/// `a / b` when both are there and `b` is positive.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The run of `runs` with the highest `key`.
fn best_by<'a>(runs: impl Iterator<Item = &'a Value>, key: &str) -> Option<&'a Value> {
    runs.max_by(|a, b| {
        f(&a[key])
            .unwrap_or(0.0)
            .total_cmp(&f(&b[key]).unwrap_or(0.0))
    })
}

/// Each target (issue 14's, then the earlier ones still tracked) with the measured value and
/// whether it was met.
fn targets(r: &Value) -> Value {
    let mut out = vec![cpu_target(r), drain_target(r), hot_drain_target(r)];
    out.extend(latency_targets(r));
    out.push(ceiling_target(r));
    out.extend(rss_targets(r));
    json!(out)
}

/// CPU of the whole system per accepted-and-applied deposit, closed loop at 64 connections.
fn cpu_target(r: &Value) -> Value {
    let run = find(r, "loads", "deposits-c64");
    let ms = f(&run["cpu_ms_per_tx"]["system"]);
    target(
        "CPU per accepted-and-applied deposit, all processes",
        ms,
        "ms",
        "<= 0.5 ms",
        ms.map(|m| m <= 0.5),
        format!(
            "deposits closed loop c=64 at {}/s; per component in the CPU table",
            run["sustainable_per_s"]
        ),
    )
}

/// Best drain over the worker counts tried vs the best one-commit, and no stall: the longest
/// time between two commits of that drain under a second.
fn drain_target(r: &Value) -> Value {
    let drains = r["drain"].as_array().into_iter().flatten();
    let best_drain = best_by(drains.filter(|d| d["hot"] == false), "applied_per_s");
    let x = ratio(
        best_drain.and_then(|d| f(&d["applied_per_s"])),
        f(&r["one_commit"]["best_per_s"]),
    );
    let gap = best_drain.and_then(|d| f(&d["longest_gap_s"]));
    target(
        "worker drain vs one-commit (zipf), no multi-second stall",
        x,
        "x",
        ">= 10x, no gap of 1 s between commits",
        x.map(|x| x >= 10.0 && gap.is_some_and(|g| g < 1.0)),
        format!(
            "drain {}/s ({} workers) vs one-commit {}/s (concurrency {}); longest gap between commits {} s",
            best_drain.map_or(Value::Null, |d| d["applied_per_s"].clone()),
            best_drain.map_or(Value::Null, |d| d["workers"].clone()),
            r["one_commit"]["best_per_s"],
            r["one_commit"]["best_concurrency"],
            gap.map_or("–".into(), |g| format!("{g:.2}"))
        ),
    )
}

fn hot_drain_target(r: &Value) -> Value {
    let hot = find(r, "drain", "drain-hot-1w");
    let x = ratio(
        f(&hot["applied_per_s"]),
        f(&r["one_commit_hot"]["best_per_s"]),
    );
    target(
        "one hot account: drain vs one-commit on one hot row",
        x,
        "x",
        ">= 10x",
        x.map(|x| x >= 10.0),
        format!(
            "drain {}/s vs one-commit {}/s (concurrency {})",
            hot["applied_per_s"],
            r["one_commit_hot"]["best_per_s"],
            r["one_commit_hot"]["best_concurrency"]
        ),
    )
}

/// p99 of withdraw_requests and of deposits, each at half its max sustainable rate.
fn latency_targets(r: &Value) -> [Value; 2] {
    let mh = find(r, "loads", "mixed-half");
    let wr = f(&mh["latency"]["withdraw_request"]["p99_ms"]);
    let dh = find(r, "loads", "deposits-half");
    let dep = f(&dh["latency"]["deposit"]["p99_ms"]);
    [
        target(
            "withdraw_request p99 at half the max sustainable rate",
            wr,
            "ms",
            "<= 50 ms",
            wr.map(|p| p <= 50.0),
            format!("open loop at {}/s (mixed)", mh["offered_per_s"]),
        ),
        target(
            "accept p99 (deposits, half the max rate)",
            dep,
            "ms",
            "<= 25 ms",
            dep.map(|p| p <= 25.0),
            format!("open loop at {}/s", dh["offered_per_s"]),
        ),
    ]
}

/// The closed-loop deposit run at 256 connections on 3 replicas + 2 workers vs the broker's
/// ceiling of the same run, with no error answer.
fn ceiling_target(r: &Value) -> Value {
    let dm = find(r, "loads", "deposits-c256");
    let share = ratio(
        f(&dm["accepted_per_s"]),
        f(&r["broker_ceiling"]["best_per_s"]),
    )
    .map(|x| x * 100.0);
    let errors = errors(dm);
    target(
        "e2e accepted/s vs broker ceiling, 0 errors at 256 connections",
        share,
        "%",
        ">= 40%, 0 errors",
        share.map(|s| s >= 40.0 && errors == Some(0)),
        format!(
            "{}/s through nginx (3 API, 2 workers, 256 connections, {} error answers) vs {}/s confirmed publishes",
            dm["accepted_per_s"],
            errors.map_or("?".into(), |e| e.to_string()),
            r["broker_ceiling"]["best_per_s"]
        ),
    )
}

/// Peak RSS of an API replica and of a worker over every run of the stack.
fn rss_targets(r: &Value) -> [Value; 2] {
    let peak = |key: &str| {
        r["loads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| f(&l["rss"][key]))
            .reduce(f64::max)
    };
    let (api, worker) = (peak("api_peak_mb"), peak("worker_peak_mb"));
    [
        target(
            "RSS of an API replica (peak, VmHWM)",
            api,
            "MB",
            "<= 50 MB",
            api.map(|m| m <= 50.0),
            String::new(),
        ),
        target(
            "RSS of a worker (peak, VmHWM)",
            worker,
            "MB",
            "<= 100 MB",
            worker.map(|m| m <= 100.0),
            String::new(),
        ),
    ]
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.fract() == 0.0 || x.abs() >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A run's label, with its error when it failed.
fn label_cell(run: &Value) -> String {
    match run["error"].as_str() {
        Some(e) => format!(
            "{} (FAILED: {})",
            cell(&run["label"]),
            e.chars().take(100).collect::<String>().replace('|', "/")
        ),
        None => cell(&run["label"]),
    }
}

/// The Markdown summary: targets, then every run's headline figures.
fn summary(r: &Value) -> String {
    let mut s = targets_table(r);
    s.push_str(&baselines_table(r));
    s.push_str(&drain_table(r));
    s.push_str(&http_table(r));
    s.push_str(&cpu_table(r));
    s.push_str(&scaling_table(r));
    if !r["quiet"]["quiet"].as_bool().unwrap_or(true) {
        s.push_str(&format!(
            "\nMachine NOT quiet during the run: {}\n",
            r["quiet"]["busy"]
        ));
    }
    if let Some(e) = r["error"].as_str() {
        s.push_str(&format!("\nSuite stopped early: {e}\n"));
    }
    s
}

fn targets_table(r: &Value) -> String {
    let mut s = String::from(
        "## Targets\n\n| target | measured | goal | met | detail |\n|---|---|---|---|---|\n",
    );
    if let Some(ts) = r["targets"].as_array() {
        for t in ts {
            s.push_str(&format!(
                "| {} | {} {} | {} | {} | {} |\n",
                cell(&t["target"]),
                cell(&t["measured"]),
                cell(&t["unit"]),
                cell(&t["goal"]),
                match t["met"].as_bool() {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                },
                cell(&t["note"])
            ));
        }
    }
    s
}

fn baselines_table(r: &Value) -> String {
    let mut s = String::new();
    s.push_str(
        "\n## Baselines\n\n| baseline | best/s | at | levels (per s) |\n|---|---|---|---|\n",
    );
    for (key, at) in [
        ("broker_ceiling", "best_window"),
        ("one_commit", "best_concurrency"),
        ("one_commit_hot", "best_concurrency"),
    ] {
        let b = &r[key];
        if b.is_null() {
            continue;
        }
        let levels: Vec<String> = b["levels"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .map(|l| {
                        format!(
                            "{}={}",
                            cell(if l["window"].is_null() {
                                &l["concurrency"]
                            } else {
                                &l["window"]
                            }),
                            cell(&l["per_s"])
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "| {} | {} | {} {} | {} |\n",
            key.replace('_', "-"),
            cell(&b["best_per_s"]),
            if key == "broker_ceiling" {
                "window"
            } else {
                "concurrency"
            },
            cell(&b[at]),
            levels.join(", ")
        ));
    }
    s
}

fn drain_table(r: &Value) -> String {
    let mut s = String::new();
    s.push_str("\n## Worker drain (pre-filled queue, no HTTP)\n\n| run | msgs | workers | applied/s (wall) | from 1st commit/s | after lease balance/s | rows per commit (per shard batch) | publish/s | worker RSS MB | CPU % of a core (pg / worker) |\n|---|---|---|---|---|---|---|---|---|---|\n");
    if let Some(ds) = r["drain"].as_array() {
        for d in ds {
            let cpu = &d["cpu"]["percent_of_one_core"];
            let per_commit = format!(
                "{} ({})",
                cell(&d["batches"]["rows_per_commit"]),
                cell(&d["batches"]["avg_size"])
            );
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
                label_cell(d),
                cell(&d["messages"]),
                cell(&d["workers"]),
                cell(&d["applied_per_s"]),
                cell(&d["steady_per_s"]),
                cell(&d["after_balance"]["per_s"]),
                per_commit,
                cell(&d["publish"]["per_s"]),
                cell(&d["rss"]["worker_peak_mb"]),
                cell(&cpu["postgres"]),
                cell(&cpu["tally-worker"]),
            ));
        }
    }
    s
}

fn http_table(r: &Value) -> String {
    let mut s = String::new();
    s.push_str("\n## HTTP through nginx\n\n| run | mode | offered/s | accepted/s | applied/s | deposit p50 / p99 / p99.9 / max ms | withdraw_request p50 / p99 / max ms | e2e lag p50 / p99 ms | API / worker RSS MB | CPU % of a core (pg / rmq / nginx / api / worker / bench), machine busy % |\n|---|---|---|---|---|---|---|---|---|---|\n");
    if let Some(ls) = r["loads"].as_array() {
        for l in ls {
            let lat = |k: &str, qs: &[&str]| {
                qs.iter()
                    .map(|q| cell(&l["latency"][k][*q]))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let cpu = &l["cpu"]["percent_of_one_core"];
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} / {} / {} / {} / {}, {} |\n",
                label_cell(l),
                if l["mode"] == "open" { "open".to_string() } else { format!("closed c={}", cell(&l["connections"])) },
                cell(&l["offered_per_s"]),
                cell(&l["accepted_per_s"]),
                cell(&l["applied"]["in_window_per_s"]),
                lat("deposit", &["p50_ms", "p99_ms", "p999_ms", "max_ms"]),
                if l["latency"]["withdraw_request"].is_null() { "–".into() } else { lat("withdraw_request", &["p50_ms", "p99_ms", "max_ms"]) },
                cell(&l["e2e_lag"]["all"]["p50_ms"]),
                cell(&l["e2e_lag"]["all"]["p99_ms"]),
                cell(&l["rss"]["api_peak_mb"]),
                cell(&l["rss"]["worker_peak_mb"]),
                cell(&cpu["postgres"]),
                cell(&cpu["rabbitmq"]),
                cell(&cpu["nginx"]),
                cell(&cpu["tally-api"]),
                cell(&cpu["tally-worker"]),
                cell(&cpu["tally-bench"]),
                cell(&l["cpu"]["machine_busy_percent"]),
            ));
        }
    }
    s
}

/// CPU milliseconds per sustained transaction of every HTTP run, per component.
fn cpu_table(r: &Value) -> String {
    let mut s = String::from(
        "\n## CPU per transaction (ms of CPU per accepted-and-applied transaction)\n\n\
         | run | sustained/s | system | postgres | rabbitmq | nginx | api | worker | bench (load generator) | rows per commit (per shard batch) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for l in r["loads"].as_array().into_iter().flatten() {
        let c = &l["cpu_ms_per_tx"];
        s.push_str(&format!(
            "| {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} ({}) |\n",
            label_cell(l),
            cell(&l["sustainable_per_s"]),
            ms_cell(&c["system"]),
            ms_cell(&c["postgres"]),
            ms_cell(&c["rabbitmq"]),
            ms_cell(&c["nginx"]),
            ms_cell(&c["tally-api"]),
            ms_cell(&c["tally-worker"]),
            ms_cell(&c["tally-bench"]),
            cell(&l["batches"]["rows_per_commit"]),
            cell(&l["batches"]["avg_size"]),
        ));
    }
    // The floor no tally run can go under: what the broker alone spends per confirmed
    // publish at its ceiling (same run, no HTTP, no consumer), and its confirm latency.
    for level in r["broker_ceiling"]["levels"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let per_s = f(&level["per_s"]).unwrap_or(0.0);
        let pct = &level["cpu"]["percent_of_one_core"];
        if per_s > 0.0 {
            let ms = |k: &str| f(&pct[k]).map(|p| json!(p / 100.0 / per_s * 1000.0));
            s.push_str(&format!(
                "| broker ceiling, window {} (baseline) | {} | – | – | {} | – | – | – | {} | – |\n",
                cell(&level["window"]),
                cell(&level["per_s"]),
                ms_cell(&ms("rabbitmq").unwrap_or(Value::Null)),
                ms_cell(&ms("tally-bench").unwrap_or(Value::Null)),
            ));
        }
    }
    s
}

/// Milliseconds with three decimals (tenths of a millisecond matter here).
fn ms_cell(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |m| format!("{m:.3}"))
}

fn scaling_table(r: &Value) -> String {
    let mut s = String::new();
    s.push_str(
        "\n## Scaling\n\n| what | configuration | accepted/s | applied/s |\n|---|---|---|---|\n",
    );
    if let Some(ds) = r["drain"].as_array() {
        for d in ds.iter().filter(|d| d["hot"] == false) {
            s.push_str(&format!(
                "| worker drain (no HTTP) | {} worker(s) | – | {} overall, {} after lease balance |\n",
                cell(&d["workers"]),
                cell(&d["applied_per_s"]),
                cell(&d["after_balance"]["per_s"]),
            ));
        }
    }
    for (label, config) in [
        ("scale-3api-1w", "3 API, 1 worker"),
        ("deposits-c64", "3 API, 2 workers"),
        ("scale-3api-4w", "3 API, 4 workers"),
        ("scale-1api-2w", "1 API, 2 workers"),
    ] {
        let l = find(r, "loads", label);
        if !l.is_null() {
            s.push_str(&format!(
                "| HTTP deposits, closed loop c=64 | {config} | {} | {} |\n",
                cell(&l["accepted_per_s"]),
                cell(&l["applied"]["in_window_per_s"]),
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_transaction_divides_each_component_by_the_sustained_rate() {
        let run = json!({
            "sustainable_per_s": 2000.0,
            "cpu": {"percent_of_one_core": {
                "postgres": 50.0, "rabbitmq": 30.0, "nginx": 10.0, "tally-api": 40.0,
                "tally-worker": 20.0, "tally-bench": 20.0, "other-dev": 5.0,
            }},
        });
        let c = with_cpu_per_tx(run)["cpu_ms_per_tx"].clone();
        // 50 % of a core at 2,000/s: 0.5 s of CPU per s / 2,000 = 0.25 ms.
        assert_eq!(c["postgres"], json!(0.25));
        assert_eq!(c["tally-bench"], json!(0.1));
        // The system under test: everything but the load generator and dev processes.
        assert_eq!(c["system"], json!(0.75));
    }

    #[test]
    fn the_cpu_table_ends_with_the_brokers_own_cost_per_publish_at_its_ceiling() {
        let report = json!({
            "loads": [with_cpu_per_tx(json!({
                "label": "deposits-c64", "sustainable_per_s": 1000.0,
                "cpu": {"percent_of_one_core": {"postgres": 40.0, "rabbitmq": 20.0}},
            }))],
            "broker_ceiling": {"levels": [{
                "window": 64, "per_s": 10000.0,
                "cpu": {"percent_of_one_core": {"rabbitmq": 150.0, "tally-bench": 30.0}},
            }]},
        });
        let table = cpu_table(&report);
        assert!(
            table.contains("| deposits-c64 | 1000 | **0.600** | 0.400 | 0.200 |"),
            "{table}"
        );
        assert!(
            table.contains("| broker ceiling, window 64 (baseline) | 10000 | – | – | 0.150 |"),
            "{table}"
        );
    }

    #[test]
    fn errors_count_every_answer_that_is_neither_accepted_nor_decided() {
        let run = json!({"outcomes": {
            "deposit": {"200": 10, "503 unavailable": 2, "error: connection reset": 1},
            "withdraw_request": {"201": 3, "402": 4},
        }});
        assert_eq!(errors(&run), Some(3));
        assert_eq!(
            errors(&json!({"outcomes": {"deposit": {"200": 1}}})),
            Some(0)
        );
    }
}
