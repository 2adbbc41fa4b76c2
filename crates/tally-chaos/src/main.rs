//! `tally-chaos`: the fault suite (`make chaos`). For each seed, a fresh installation (own
//! database, own queues, 2 API replicas + 2 workers as real processes, nginx in front) takes a
//! modelled workload while the seed's faults are injected; then the ledger is checked against
//! what the clients were told. A seed decides the workload and the faults, so a failing seed
//! is replayed with `make chaos SEED=<n>`.
//!
//! It restarts (and pauses) the machine's shared RabbitMQ and PostgreSQL: never run it next to
//! the test suite (`make test` runs a short chaos run after the tests, not beside them).

mod checks;
mod cli;
mod cluster;
mod faults;
mod host;
mod model;
mod replay;
mod scoring;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use checks::{Model, Verdict};
use cli::Options;
use cluster::{Cluster, RunConfig};
use faults::{Ctx, FaultKind};
use host::Services;
use model::{Answer, Client, ClientLog, Http, Origin, Stats, Traffic};
use tally_core::Reason;
use tally_testkit::rng::Rng;

/// Load after the last fault has recovered.
const AFTER_LAST_FAULT: Duration = Duration::from_secs(2);

/// One seed's result.
struct SeedResult {
    seed: u64,
    /// Faults injected.
    injected: Vec<FaultKind>,
    /// Those of them that failed: not done, not recovered from, or their own check failed
    /// (a paused worker's shards not taken over).
    broken: Vec<FaultKind>,
    failures: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let opts = Options::parse();
    let seeds = opts.seeds();
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let bin_dir = match &opts.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary has no directory")?
            .to_path_buf(),
    };
    for bin in ["tally-api", "tally-worker"] {
        if !bin_dir.join(bin).exists() {
            bail!(
                "{} missing: run `cargo build --bins` first",
                bin_dir.join(bin).display()
            );
        }
    }
    let (amqp_urls, rabbitmq_node) = ha_services(&opts)?;
    let cfg = RunConfig {
        // target/debug → target/chaos
        out_dir: bin_dir
            .parent()
            .map_or_else(|| bin_dir.join("chaos"), |target| target.join("chaos")),
        bin_dir,
        root,
        admin_url: std::env::var("TALLY_CHAOS_ADMIN_URL")
            .unwrap_or_else(|_| "postgres://tally:tally@127.0.0.1:5432/tally".into()),
        amqp_url: std::env::var("TALLY_CHAOS_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        amqp_urls,
        rabbitmq_node,
        api_replicas: 2,
        workers: 2,
        shard_count: 4,
    };
    let services = Services::detect()?;
    if !opts.no_faults
        && opts.kinds().contains(&FaultKind::SkewWorker)
        && services.faketime.is_none()
    {
        bail!("{}", faults::FAKETIME_MISSING);
    }
    cluster::ensure_services(&cfg).await?;
    let leftovers = cluster::clean_leftovers(&cfg).await?;
    if leftovers > 0 {
        println!(
            "chaos: removed {leftovers} leftovers of an earlier run (databases, queues, exchanges)"
        );
    }

    let started = Instant::now();
    let mut results = Vec::new();
    println!(
        "chaos: {} seed(s) {}, {} clients over {} accounts; logs in {}",
        seeds.len(),
        describe_seeds(&seeds),
        opts.clients,
        opts.accounts,
        cfg.out_dir.display()
    );
    for &seed in &seeds {
        let result = run_seed(&cfg, &services, &opts, seed).await;
        let failed = !result.failures.is_empty();
        results.push(result);
        if failed && opts.fail_fast {
            break;
        }
    }
    summary(&opts, &results, started.elapsed());
    if results.iter().any(|r| !r.failures.is_empty()) {
        std::process::exit(1);
    }
    Ok(())
}

/// With `--ha`: every broker node (`TALLY_CHAOS_AMQP_URLS`) and the node `rabbitmqctl` asks
/// (the first of `HA_RABBIT_NODES`, ha.sh's variable). Without it, no node-loss kind.
fn ha_services(opts: &Options) -> Result<(Vec<String>, Option<String>)> {
    if !opts.ha {
        if let Some(k) = opts.kinds().into_iter().find(|k| k.needs_ha()) {
            bail!(
                "{} needs the HA services: make chaos HA=1 (tally-chaos --ha)",
                k.name()
            );
        }
        return Ok((Vec::new(), None));
    }
    let urls: Vec<String> = std::env::var("TALLY_CHAOS_AMQP_URLS")
        .context("--ha needs TALLY_CHAOS_AMQP_URLS (every broker node; make chaos HA=1 sets it)")?
        .split(',')
        .map(str::to_string)
        .collect();
    let node = std::env::var("HA_RABBIT_NODES")
        .unwrap_or_else(|_| "rabbit@localhost".into())
        .split_whitespace()
        .next()
        .map(str::to_string);
    Ok((urls, node))
}

fn describe_seeds(seeds: &[u64]) -> String {
    match (seeds.first(), seeds.last()) {
        (Some(a), Some(b)) if seeds.len() > 1 && b - a + 1 == seeds.len() as u64 => {
            format!("{a}..{}", b + 1)
        }
        _ => format!("{seeds:?}"),
    }
}

async fn run_seed(cfg: &RunConfig, services: &Services, opts: &Options, seed: u64) -> SeedResult {
    if !opts.no_wait {
        cluster::wait_for_quiet(cfg, Duration::from_secs(30 * 60)).await;
    }
    let t = Instant::now();
    let mut lines = Vec::new();
    let mut verdict = Verdict::default();
    let mut injected = Vec::new();
    let mut summary_line = String::new();
    match Cluster::new(cfg, seed) {
        Ok(mut cluster) => {
            if let Err(e) = cluster::ensure_services(cfg).await {
                verdict.failures.push(format!("services: {e:#}"));
            } else {
                match drive(
                    &mut cluster,
                    cfg,
                    services,
                    opts,
                    &mut verdict,
                    &mut lines,
                    &mut injected,
                )
                .await
                {
                    Ok(line) => summary_line = line,
                    Err(e) => verdict.failures.push(format!("{e:#}")),
                }
            }
            // Teardown first: it notices a crash between the checks and the stop too.
            let problems = cluster.teardown(cfg).await;
            verdict.failures.extend(cluster.crashes());
            verdict.failures.extend(problems);
            write_report(&cluster.log_dir, seed, &verdict, &lines);
        }
        Err(e) => verdict.failures.push(format!("{e:#}")),
    }
    // The next seed (and whoever uses this machine next) needs both services up.
    if let Err(e) = cluster::ensure_services(cfg).await {
        verdict
            .failures
            .push(format!("services after the seed: {e:#}"));
    }
    let status = if verdict.failures.is_empty() {
        "ok  "
    } else {
        "FAIL"
    };
    println!(
        "seed {seed:>3} {status} {:>5.1}s  {summary_line}",
        t.elapsed().as_secs_f64()
    );
    for f in &verdict.failures {
        println!("         FAILED: {f}");
    }
    if !verdict.failures.is_empty() {
        println!("         replay: make chaos SEED={seed}   (logs: target/chaos/{seed}/)");
    }
    let _ = std::io::stdout().flush();
    SeedResult {
        seed,
        broken: injected
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(k, _)| *k)
            .collect(),
        injected: injected.into_iter().map(|(k, _)| k).collect(),
        failures: verdict.failures,
    }
}

/// Start, load with faults, settle, verify. Returns the one-line description of the seed;
/// `injected` gets each fault's kind and whether it was done and recovered from.
async fn drive(
    cluster: &mut Cluster,
    cfg: &RunConfig,
    services: &Services,
    opts: &Options,
    verdict: &mut Verdict,
    lines: &mut Vec<String>,
    injected: &mut Vec<(FaultKind, bool)>,
) -> Result<String> {
    cluster
        .start(cfg)
        .await
        .context("starting the installation")?;
    let seed = cluster.seed;
    let load = Rng::stream(seed, 0).millis(10_000, 15_000);
    let kinds = if opts.no_faults {
        Vec::new()
    } else {
        opts.kinds()
    };
    let plan = faults::plan(
        seed,
        load,
        &kinds,
        cfg.api_replicas,
        cfg.workers,
        cfg.shard_count,
    );
    lines.push(format!("load {:.1}s, plan: {plan:?}", load.as_secs_f64()));

    // From here on every time in logs and reports is an offset into the load phase.
    let load_start = Instant::now();
    cluster.t0 = load_start;
    let http = Arc::new(Http::new(
        &cluster.base_url,
        Duration::from_secs(90),
        load_start,
    )?);
    let traffic = Arc::new(Traffic::default());
    let clients = spawn_clients(seed, opts, &http, &traffic);
    let ctx = Ctx {
        cfg,
        services,
        http: &http,
        traffic: &traffic,
    };
    let mut outcome = faults::inject(cluster, &ctx, &plan, load_start).await;
    // Load goes on for the planned time and at least a little after the last fault recovered,
    // so every fault happens under load and recovery is seen by fresh traffic.
    tokio::time::sleep_until((load_start + load).max(Instant::now() + AFTER_LAST_FAULT)).await;
    traffic.stop.store(true, Ordering::Relaxed);
    let faults = describe_faults(&outcome.injected, injected, lines);
    verdict
        .failures
        .extend(std::mem::take(&mut outcome.problems));
    let (model, stats) = collect(outcome, clients).await?;
    let load_took = load_start.elapsed();

    check(cluster, cfg, &http, &model, &stats, verdict, lines).await?;
    let settled = load_start.elapsed();
    Ok(format!(
        "load {:.1}s (+{:.1}s to settle)  faults: {}  {}",
        load_took.as_secs_f64(),
        (settled - load_took).as_secs_f64(),
        faults,
        describe_answers(&model, &stats)
    ))
}

/// The seed's clients, each on its own stream of the seed's random numbers.
fn spawn_clients(
    seed: u64,
    opts: &Options,
    http: &Arc<Http>,
    traffic: &Arc<Traffic>,
) -> Vec<JoinHandle<ClientLog>> {
    let accounts: Arc<Vec<String>> =
        Arc::new((0..opts.accounts).map(|i| format!("acct-{i}")).collect());
    (0..opts.clients)
        .map(|number| {
            tokio::spawn(
                Client {
                    http: http.clone(),
                    seed,
                    number,
                    clients: opts.clients,
                    accounts: accounts.clone(),
                    traffic: traffic.clone(),
                }
                .run(),
            )
        })
        .collect()
}

/// Every operation and attempt of the load: the fault injector's canaries and poisons, then
/// each client's log.
async fn collect(
    outcome: faults::Outcome,
    clients: Vec<JoinHandle<ClientLog>>,
) -> Result<(Model, Stats)> {
    let mut model = Model {
        ops: outcome.canaries,
        poisons: outcome.poisons,
    };
    let mut stats = Stats::default();
    stats.absorb(outcome.stats);
    for client in clients {
        let log = client.await.context("a client task panicked")?;
        model.ops.extend(log.ops);
        stats.absorb(log.stats);
    }
    Ok((model, stats))
}

/// A report line per injected fault, each fault's kind and whether it went as planned (into
/// `injected`); returns the faults in one line (`kind@start`).
fn describe_faults(
    done: &[faults::Injected],
    injected: &mut Vec<(FaultKind, bool)>,
    lines: &mut Vec<String>,
) -> String {
    for i in done {
        injected.push((i.fault.kind, !i.note.starts_with("FAILED")));
        lines.push(format!(
            "+{:>5.1}s {:<17} {:.1}s  {}",
            i.began.as_secs_f64(),
            i.fault.kind.name(),
            i.took.as_secs_f64(),
            i.note
        ));
    }
    let faults: Vec<String> = done
        .iter()
        .map(|i| format!("{}@{:.1}s", i.fault.kind.name(), i.began.as_secs_f64()))
        .collect();
    faults.join(" ")
}

/// After the load: settle, every worker owns shards again, the ledger against the model,
/// and no HTTP attempt slower than the outage bound.
async fn check(
    cluster: &mut Cluster,
    cfg: &RunConfig,
    http: &Http,
    model: &Model,
    stats: &Stats,
    verdict: &mut Verdict,
    lines: &mut Vec<String>,
) -> Result<()> {
    checks::settle(cluster, cfg, model, Duration::from_secs(60), verdict).await;
    checks::workers_own_shards(cluster, Duration::from_secs(20), verdict).await;
    checks::verify(cluster, http, model, verdict, lines)
        .await
        .context("verifying")?;
    // Issue 4: during an outage the answer is a fast 503, never a hang over 5 s.
    if !stats.slow.is_empty() {
        verdict.failures.push(format!(
            "{} HTTP attempts took over {:?} (slowest {:.1}s), e.g. {}",
            stats.slow.len(),
            model::SLOW_ATTEMPT,
            stats.slowest.as_secs_f64(),
            stats.slow[0]
        ));
        lines.push("slow attempts:".into());
        lines.extend(stats.slow.iter().map(|s| format!("  {s}")));
    }
    Ok(())
}

/// What the clients were told, in one line.
fn describe_answers(model: &Model, stats: &Stats) -> String {
    let finals = |f: fn(&Answer) -> bool| model.ops.iter().filter(|op| f(op.answer())).count();
    let origin = |f: fn(&Origin) -> bool| model.ops.iter().filter(|op| f(&op.origin)).count();
    format!(
        "ops {} (200 {}, 201 {}, 402 {} of which deadline {}, 422 {}, undecided {}), \
         repeats {}, new-id retries {}, attempts {} (not accepted {}, unknown {}, conn errors {}, slowest {:.1}s)",
        model.ops.len(),
        finals(|a| *a == Answer::Accepted),
        finals(|a| matches!(a, Answer::Approved { .. })),
        finals(|a| matches!(a, Answer::Denied { .. })),
        finals(|a| matches!(a, Answer::Denied { reason } if reason == Reason::DeadlineExceeded.as_str())),
        finals(|a| *a == Answer::IdReused),
        finals(|a| matches!(a, Answer::NotAccepted { .. } | Answer::Unknown { .. })),
        origin(|o| matches!(o, Origin::Repeat | Origin::Concurrent | Origin::Conflict)),
        origin(|o| matches!(o, Origin::NewIdFor(_))),
        stats.attempts,
        stats.not_accepted,
        stats.unknown,
        stats.connection_errors,
        stats.slowest.as_secs_f64(),
    )
}

fn write_report(dir: &std::path::Path, seed: u64, verdict: &Verdict, lines: &[String]) {
    let mut text = format!("seed {seed}\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    for f in &verdict.failures {
        text.push_str(&format!("FAILED: {f}\n"));
    }
    let _ = std::fs::write(dir.join("report.txt"), text);
}

fn summary(opts: &Options, results: &[SeedResult], wall: Duration) {
    let failed: Vec<u64> = results
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| r.seed)
        .collect();
    println!();
    println!(
        "chaos: {} of {} seed(s) passed ({}), wall time {}m{:02}s",
        results.len() - failed.len(),
        results.len(),
        describe_seeds(&opts.seeds()),
        wall.as_secs() / 60,
        wall.as_secs() % 60
    );
    println!("{}", kind_table(&opts.kinds(), results));
    if !failed.is_empty() {
        println!("chaos: FAILED seeds: {failed:?}");
        for s in failed {
            println!("  replay: make chaos SEED={s}");
        }
    }
}

/// Per fault kind of the run (`kinds`, each shown even if never drawn): how often it was
/// injected, how often the fault itself failed (see [`SeedResult::broken`]), and in how many
/// failing seeds it was.
fn kind_table(kinds: &[FaultKind], results: &[SeedResult]) -> String {
    let mut rows: BTreeMap<FaultKind, (usize, usize, usize)> =
        kinds.iter().map(|k| (*k, (0, 0, 0))).collect();
    for r in results {
        for k in &r.injected {
            rows.entry(*k).or_default().0 += 1;
        }
        for k in &r.broken {
            rows.entry(*k).or_default().1 += 1;
        }
        if !r.failures.is_empty() {
            let mut kinds = r.injected.clone();
            kinds.sort();
            kinds.dedup();
            for k in kinds {
                rows.entry(k).or_default().2 += 1;
            }
        }
    }
    let mut table = format!(
        "chaos: faults per kind\n  {:<24} {:>8} {:>14} {:>14}",
        "kind", "injected", "fault failed", "failing seeds"
    );
    for (kind, (ok, broken, failing)) in rows {
        table.push_str(&format!(
            "\n  {:<24} {ok:>8} {broken:>14} {failing:>14}",
            kind.name()
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_table_counts_injections_failures_and_failing_seeds() {
        let results = [
            SeedResult {
                seed: 0,
                injected: vec![FaultKind::PauseWorker, FaultKind::PauseWorker],
                broken: vec![],
                failures: vec![],
            },
            SeedResult {
                seed: 1,
                injected: vec![FaultKind::PauseWorker, FaultKind::SkewWorker],
                broken: vec![FaultKind::SkewWorker],
                failures: vec!["x".into()],
            },
        ];
        let table = kind_table(&faults::ALL, &results);
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        };
        assert_eq!(row("pause-worker").as_deref(), Some("3 0 1"));
        assert_eq!(row("skew-worker").as_deref(), Some("1 1 1"));
        assert_eq!(row("kill-api").as_deref(), Some("0 0 0"));
    }
}
