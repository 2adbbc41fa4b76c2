//! `tally-bench load`: HTTP load through nginx, open loop at a fixed rate or closed loop at a
//! fixed concurrency, with progress every second and a JSON result.
//!
//! Coordinated omission: in the open loop request i is *due* at `start + i / rate`, whatever
//! happened to the requests before it, and its latency is measured from that due time, not
//! from when a connection got round to sending it. A stalled server therefore shows up as
//! latency on every request that should have been sent during the stall (as a real client
//! population would see it), instead of silently lowering the offered rate. Connections
//! claim due times from one shared counter, so a slow connection never delays the schedule,
//! only its own requests.
//!
//! "Applied" comes from the ledger itself: the rows the workers wrote since the run began
//! (`transactions.applied_at`), their count in the run's window, the time until the last
//! accepted command was applied, and `applied_at − accepted_at` of every row.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_core::{Kind, Reason};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use crate::http::{Conn, Target};
use crate::procs::{self, CpuSnapshot, RssTracker};
use crate::stats::{round1, Latency};
use crate::workload::{run_id, Gen, Tx, Workload};
use crate::{bus, db};
use tally_testkit::rng::Zipf;

/// Open or closed loop.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Requests due at a fixed rate (per second), sent over `connections` connections.
    Open { rate: f64, connections: usize },
    /// `concurrency` connections, each sending its next request when the last answered.
    Closed { concurrency: usize },
}

/// Everything a load run needs.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub label: String,
    pub url: String,
    pub workload: Workload,
    pub mode: Mode,
    pub duration: Duration,
    pub accounts: usize,
    pub zipf_s: f64,
    /// Mixed workload: share of withdraw_requests among new transfers.
    pub request_share: f64,
    pub seed: u64,
    /// Ledger database (the stack's): applied counts and lag. None: not measured.
    pub database_url: Option<String>,
    /// Broker and the stack's prefix/shard count: queue depth in progress lines.
    pub broker: Option<(String, String, u16)>,
    /// `.run/pids` of the stack: RSS of the API replicas and workers.
    pub pids_dir: Option<PathBuf>,
    /// How long to wait after the run for the workers to apply what was accepted.
    pub drain_timeout: Duration,
    pub request_timeout: Duration,
    pub progress: bool,
}

const KINDS: [Kind; 3] = [Kind::Deposit, Kind::WithdrawRequest, Kind::Withdraw];

fn kind_index(k: Kind) -> usize {
    match k {
        Kind::Deposit => 0,
        Kind::WithdrawRequest => 1,
        Kind::Withdraw => 2,
    }
}

/// Shared results, behind one mutex: a lock per request is ~100 ns, nothing next to an HTTP
/// round trip, and keeps the code simple.
#[derive(Default)]
struct Stats {
    total: [Latency; 3],
    /// Latency of the current second (all kinds), for progress lines.
    interval: Latency,
    /// (kind, outcome) → count; outcome is the HTTP status, with the 402 reason.
    outcomes: BTreeMap<(usize, String), u64>,
    interval_done: u64,
    interval_accepted: u64,
    interval_failed: u64,
    /// A sample of failures, to say what went wrong.
    errors: Vec<String>,
}

struct Shared {
    spec: LoadSpec,
    start: Instant,
    end: Instant,
    /// No new request starts after this (an overloaded open loop would otherwise run on).
    hard_stop: Instant,
    next_slot: AtomicU64,
    /// Requests sent, follow-up withdraws included.
    sent: AtomicU64,
    /// Scheduled (or, closed loop, new) requests sent: follow-ups excluded.
    new_sent: AtomicU64,
    stats: Mutex<Stats>,
    stop: AtomicBool,
}

/// Whether the system took the command: 200 accepted, 201 approved, 402 decided-denied.
fn accepted(status: u16) -> bool {
    matches!(status, 200 | 201 | 402)
}

impl Shared {
    fn record(&self, kind: Kind, outcome: Result<(u16, &[u8]), String>, latency: Duration) {
        let Ok(mut s) = self.stats.lock() else {
            return;
        };
        let k = kind_index(kind);
        s.total[k].record(latency);
        s.interval.record(latency);
        s.interval_done += 1;
        let label = match outcome {
            Ok((402, body)) => {
                let text = String::from_utf8_lossy(body);
                let reason = if text.contains(Reason::DeadlineExceeded.as_str()) {
                    Reason::DeadlineExceeded
                } else {
                    Reason::InsufficientFunds
                };
                format!("402:{reason}")
            }
            Ok((status, body)) => {
                if accepted(status) {
                    s.interval_accepted += 1;
                } else {
                    s.interval_failed += 1;
                    if s.errors.len() < 10 {
                        let text: String =
                            String::from_utf8_lossy(body).chars().take(200).collect();
                        s.errors.push(format!("{} {status}: {text}", kind.as_str()));
                    }
                }
                status.to_string()
            }
            Err(e) => {
                s.interval_failed += 1;
                if s.errors.len() < 10 {
                    s.errors.push(format!("{}: {e}", kind.as_str()));
                }
                "io_error".to_string()
            }
        };
        if label.starts_with("402") {
            s.interval_accepted += 1;
        }
        *s.outcomes.entry((k, label)).or_default() += 1;
    }
}

/// One connection's loop.
async fn connection(shared: Arc<Shared>, mut gen: Gen, target: Target) {
    let spec = &shared.spec;
    let mut conn = Conn::new(target, spec.request_timeout);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // When is this request due?
        let due = match spec.mode {
            Mode::Open { rate, .. } => {
                let i = shared.next_slot.fetch_add(1, Ordering::Relaxed);
                let due = shared.start + Duration::from_secs_f64(i as f64 / rate);
                if due >= shared.end || Instant::now() >= shared.hard_stop {
                    break;
                }
                sleep_until(due.into()).await;
                due
            }
            Mode::Closed { .. } => {
                let now = Instant::now();
                if now >= shared.end {
                    break;
                }
                now
            }
        };
        let tx = gen.next_tx();
        let approved = send(&shared, &mut conn, &tx, due).await;
        shared.new_sent.fetch_add(1, Ordering::Relaxed);
        if approved {
            // The capture follows its approval at once, on the same connection; it was not
            // scheduled, so its latency counts from its own send.
            let w = gen.follow_up(&tx);
            send(&shared, &mut conn, &w, Instant::now()).await;
        }
    }
}

/// Sends one transfer; returns whether it was an approved withdraw_request.
async fn send(shared: &Shared, conn: &mut Conn, tx: &Tx, due: Instant) -> bool {
    let body = tx.json();
    let result = conn.request("POST", "/transaction", Some(&body)).await;
    let latency = due.elapsed();
    shared.sent.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(r) => {
            shared.record(tx.kind, Ok((r.status, &r.body)), latency);
            tx.kind == Kind::WithdrawRequest && r.status == 201
        }
        Err(e) => {
            shared.record(tx.kind, Err(e.to_string()), latency);
            false
        }
    }
}

/// What a run watches besides its own requests: the ledger database (applied counts, lag),
/// the broker (queue depth) and the stack's processes (RSS).
struct Probes {
    ledger: Option<tokio_postgres::Client>,
    broker: Option<(lapin::Connection, tally_bus::Topology)>,
    stack: Vec<(String, u32)>,
}

impl Probes {
    /// Opens what the spec names; a probe that cannot be opened is left out (with a warning
    /// for the ledger, whose figures the result would otherwise have).
    async fn open(spec: &LoadSpec) -> Self {
        let ledger = match &spec.database_url {
            Some(url) => match db::connect(url).await {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!(
                        "warning: no ledger database ({e:#}); applied counts and lag omitted"
                    );
                    None
                }
            },
            None => None,
        };
        let broker = match &spec.broker {
            Some((url, prefix, shards)) => bus::connect(url, "tally-bench-load")
                .await
                .ok()
                .map(|c| (c, bus::topology(prefix, *shards))),
            None => None,
        };
        let stack = spec
            .pids_dir
            .as_deref()
            .map(procs::stack_pids)
            .unwrap_or_default();
        Self {
            ledger,
            broker,
            stack,
        }
    }
}

/// What the once-a-second watcher collected over the run.
struct Watched {
    progress: Vec<Value>,
    rss: RssTracker,
    /// CPU at the end of the nominal window (stragglers after it are not the steady state).
    cpu_end: Option<CpuSnapshot>,
}

/// Connections the mode opens (at least one).
fn connection_count(mode: Mode) -> usize {
    match mode {
        Mode::Open { connections, .. } => connections,
        Mode::Closed { concurrency } => concurrency,
    }
    .max(1)
}

/// Runs one load measurement and returns its JSON result.
pub async fn run(spec: LoadSpec) -> Result<Value> {
    let target = Target::parse(&spec.url)?;
    // Fail fast (and clearly) when nothing listens.
    Conn::new(target.clone(), Duration::from_secs(3))
        .request("GET", "/health/live", None)
        .await
        .with_context(|| format!("{} does not answer /health/live", spec.url))?;
    let probes = Probes::open(&spec).await;
    let started_wall: DateTime<Utc> = Utc::now();
    let shared = Arc::new(Shared::new(spec.clone()));
    let cpu_start = CpuSnapshot::take();
    let tasks = spawn_connections(&shared, &target);
    if spec.progress {
        print_start(&spec);
    }
    let watched = watch(&shared, &tasks, &probes).await;
    for t in tasks {
        let _ = t.await;
    }
    let finished = Instant::now();
    let ended_wall = Utc::now();
    let cpu_end = watched.cpu_end.unwrap_or_else(CpuSnapshot::take);
    let mut result = requests_result(&shared, finished, cpu_start.delta_json(&cpu_end))?;
    result["progress"] = json!(watched.progress);

    // A fresh connection if ours died during the run (PostgreSQL restarted under us).
    let ledger = match (probes.ledger, &spec.database_url) {
        (Some(c), Some(url)) if c.is_closed() => db::connect(url).await.ok(),
        (c, _) => c,
    };
    if let Some(client) = &ledger {
        applied_result(&spec, client, started_wall, ended_wall, &mut result).await?;
    }
    if !probes.stack.is_empty() {
        result["rss"] = watched.rss.json();
    }
    if spec.progress {
        print_summary(&result);
    }
    Ok(result)
}

impl Shared {
    fn new(spec: LoadSpec) -> Self {
        let start = Instant::now() + Duration::from_millis(20);
        Self {
            start,
            end: start + spec.duration,
            hard_stop: start + spec.duration + Duration::from_secs(5).max(spec.duration / 4),
            next_slot: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            new_sent: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
            stop: AtomicBool::new(false),
            spec,
        }
    }

    /// The current second's counters and latency, reset for the next one.
    fn take_interval(&self) -> (u64, u64, u64, Latency) {
        match self.stats.lock() {
            Ok(mut s) => {
                let snap = (
                    s.interval_done,
                    s.interval_accepted,
                    s.interval_failed,
                    s.interval.clone(),
                );
                s.interval_done = 0;
                s.interval_accepted = 0;
                s.interval_failed = 0;
                s.interval.reset();
                snap
            }
            Err(_) => (0, 0, 0, Latency::new()),
        }
    }
}

/// One task per connection, each with its own transfers (id space and seed).
fn spawn_connections(shared: &Arc<Shared>, target: &Target) -> Vec<JoinHandle<()>> {
    let spec = &shared.spec;
    let zipf = Arc::new(Zipf::new(spec.accounts, spec.zipf_s));
    let run = run_id();
    (0..connection_count(spec.mode))
        .map(|c| {
            let gen = Gen::new(
                spec.workload,
                zipf.clone(),
                format!("b{run}-{c}"),
                spec.seed.wrapping_add(c as u64 * 7919),
                spec.request_share,
            );
            tokio::spawn(connection(shared.clone(), gen, target.clone()))
        })
        .collect()
}

fn print_start(spec: &LoadSpec) {
    println!(
        "load {}: {} {} for {:?} -> {}",
        spec.label,
        spec.workload.as_str(),
        match spec.mode {
            Mode::Open { rate, connections } =>
                format!("open loop {rate:.0}/s over {connections} connections"),
            Mode::Closed { concurrency } => format!("closed loop, concurrency {concurrency}"),
        },
        spec.duration,
        spec.url
    );
}

/// Once a second until every connection is done: a progress line (printed and kept), RSS
/// samples, and the CPU snapshot at the end of the nominal window. Past the hard stop plus
/// one request timeout the connections are told to stop.
async fn watch(shared: &Shared, tasks: &[JoinHandle<()>], probes: &Probes) -> Watched {
    let mut watched = Watched {
        progress: Vec::new(),
        rss: RssTracker::default(),
        cpu_end: None,
    };
    let mut last_inserted = match &probes.ledger {
        Some(c) => db::inserted_estimate(c).await.ok(),
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for second in 1u64.. {
        let all_done = tasks.iter().all(|t| t.is_finished());
        if !all_done {
            tick.tick().await;
        }
        watched.rss.sample(&probes.stack);
        let (done, acc, failed, interval) = shared.take_interval();
        let applied = applied_estimate(probes, &mut last_inserted).await;
        let queued = match &probes.broker {
            Some((c, t)) => bus::ready_total(c, t).await,
            None => None,
        };
        if shared.spec.progress && (done > 0 || !all_done) {
            println!(
                "[{second:>3}s] done {done:>6}/s accepted {acc:>6} failed {failed:>4} | {} | applied {} queued {}",
                interval.line(),
                applied.map_or("-".into(), |a| format!("{a}/s")),
                queued.map_or("-".into(), |q| q.to_string()),
            );
        }
        watched.progress.push(json!({
            "t": second, "done": done, "accepted": acc, "failed": failed,
            "p50_ms": interval.ms(0.5), "p99_ms": interval.ms(0.99),
            "applied_estimate": applied, "queued": queued,
        }));
        if Instant::now() >= shared.end && watched.cpu_end.is_none() {
            watched.cpu_end = Some(CpuSnapshot::take());
        }
        if all_done {
            break;
        }
        if Instant::now() > shared.hard_stop + shared.spec.request_timeout {
            shared.stop.store(true, Ordering::Relaxed);
        }
    }
    watched
}

/// Rows inserted since the last call (from the statistics collector), if the ledger is read.
async fn applied_estimate(probes: &Probes, last: &mut Option<i64>) -> Option<i64> {
    let (Some(c), Some(prev)) = (&probes.ledger, *last) else {
        return None;
    };
    let now = db::inserted_estimate(c).await.ok()?;
    *last = Some(now);
    Some(now - prev)
}

/// The result as the clients saw it: what was offered, sent and accepted, outcomes and
/// latency per kind.
fn requests_result(shared: &Shared, finished: Instant, cpu: Value) -> Result<Value> {
    let spec = &shared.spec;
    let stats = shared
        .stats
        .lock()
        .map_err(|_| anyhow::anyhow!("stats lock poisoned"))?;
    let new_sent = shared.new_sent.load(Ordering::Relaxed);
    let nominal = spec.duration.as_secs_f64();
    let (outcomes, accepted_total) = outcomes(&stats);
    // Accepted per second over the nominal duration: the schedule's window (open loop) or the
    // time connections kept sending (closed loop).
    let accepted_per_s = accepted_total as f64 / nominal;
    let (offered, scheduled) = match spec.mode {
        Mode::Open { rate, .. } => (rate, Some((rate * nominal).ceil() as u64)),
        Mode::Closed { .. } => (new_sent as f64 / nominal, None),
    };
    Ok(json!({
        "kind": "load",
        "label": spec.label,
        "url": spec.url,
        "workload": spec.workload.as_str(),
        "mode": match spec.mode { Mode::Open { .. } => "open", Mode::Closed { .. } => "closed" },
        "rate": match spec.mode { Mode::Open { rate, .. } => Some(rate), Mode::Closed { .. } => None },
        "connections": connection_count(spec.mode),
        "duration_s": nominal,
        "wall_s": round1(finished.duration_since(shared.start).as_secs_f64()),
        "offered_per_s": round1(offered),
        "scheduled": scheduled,
        "sent": shared.sent.load(Ordering::Relaxed),
        // Due but never sent: the run hit its hard stop (the system fell far behind).
        "not_sent": scheduled.map(|s| s.saturating_sub(new_sent)),
        "accepted": accepted_total,
        "accepted_per_s": round1(accepted_per_s),
        "outcomes": outcomes,
        "latency": latency(&stats),
        "errors_sample": stats.errors,
        "cpu": cpu,
    }))
}

/// Latency summaries per kind sent, and over all of them.
fn latency(stats: &Stats) -> Map<String, Value> {
    let mut latency = Map::new();
    let mut all = Latency::new();
    for (i, k) in KINDS.iter().enumerate() {
        if stats.total[i].count() > 0 {
            latency.insert(k.as_str().into(), stats.total[i].summary());
            all.add(&stats.total[i]);
        }
    }
    latency.insert("all".into(), all.summary());
    latency
}

/// Counts per kind and outcome, and how many the system took (200, 201, 402).
fn outcomes(stats: &Stats) -> (Map<String, Value>, u64) {
    let mut outcomes = Map::new();
    let mut accepted_total = 0u64;
    for ((k, label), n) in &stats.outcomes {
        let entry = outcomes
            .entry(KINDS[*k].as_str().to_string())
            .or_insert_with(|| json!({}));
        entry[label.as_str()] = json!(n);
        if label.starts_with("200") || label.starts_with("201") || label.starts_with("402") {
            accepted_total += n;
        }
    }
    (outcomes, accepted_total)
}

/// The result as the ledger saw it: waits for the workers to apply what was accepted, then
/// reads the run's rows (applied in the window, lag, batches) into `result`.
async fn applied_result(
    spec: &LoadSpec,
    client: &tokio_postgres::Client,
    started_wall: DateTime<Utc>,
    ended_wall: DateTime<Utc>,
    result: &mut Value,
) -> Result<()> {
    let accepted_total = result["accepted"].as_u64().unwrap_or(0);
    let nominal = spec.duration.as_secs_f64();
    let accepted_per_s = accepted_total as f64 / nominal;
    let deadline = Instant::now() + spec.drain_timeout;
    let mut applied = db::applied_since(client, started_wall).await?;
    while (applied.0 as u64) < accepted_total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        applied = db::applied_since(client, started_wall).await?;
    }
    let (count, _first, last) = applied;
    let run_end = started_wall
        + chrono::Duration::from_std(spec.duration).unwrap_or_else(|_| chrono::Duration::zero());
    let in_window = db::applied_between(client, started_wall, run_end).await?;
    let applied_per_s = in_window as f64 / nominal;
    let drained_after = last.map(|l| (l - ended_wall).num_milliseconds() as f64 / 1000.0);
    result["applied"] = json!({
        "count": count,
        "complete": count as u64 >= accepted_total,
        "in_window": in_window,
        "in_window_per_s": round1(applied_per_s),
        "last_applied_after_run_s": drained_after.map(|d| round1(d.max(0.0))),
    });
    result["sustainable_per_s"] = json!(round1(accepted_per_s.min(applied_per_s)));
    result["e2e_lag"] = db::lag_since(client, started_wall).await?;
    result["batches"] = db::batches_since(client, started_wall).await?;
    Ok(())
}

/// A few lines summing up a load result.
pub fn print_summary(r: &Value) {
    println!(
        "  offered {}/s, accepted {}/s, applied {}/s (in window), sustainable {}/s",
        r["offered_per_s"],
        r["accepted_per_s"],
        r["applied"]["in_window_per_s"],
        r["sustainable_per_s"]
    );
    if let Some(lat) = r["latency"].as_object() {
        for (k, v) in lat {
            println!(
                "  {k:<17} n={:<7} p50 {}ms p99 {}ms p99.9 {}ms max {}ms",
                v["count"], v["p50_ms"], v["p99_ms"], v["p999_ms"], v["max_ms"]
            );
        }
    }
    println!("  outcomes {}", r["outcomes"]);
    if let Some(lag) = r["e2e_lag"]["all"].as_object() {
        println!(
            "  e2e lag (accepted -> applied) p50 {}ms p99 {}ms max {}ms over {} rows",
            lag["p50_ms"], lag["p99_ms"], lag["max_ms"], lag["count"]
        );
    }
    println!("  cpu: {}", procs::cpu_line(&r["cpu"]));
    if r["rss"].is_object() {
        println!(
            "  peak RSS: api {} MB, worker {} MB",
            r["rss"]["api_peak_mb"], r["rss"]["worker_peak_mb"]
        );
    }
}
