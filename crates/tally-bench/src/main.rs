//! `tally-bench`: measures tally and the baselines it is judged against.
//!
//! Subcommands (each writes a JSON result with `--out FILE`):
//! - `load`: HTTP load through nginx, open loop (`--rate`) or closed loop (`--concurrency`).
//! - `drain`: workers emptying a pre-filled queue (no HTTP).
//! - `one-commit`: baseline, one PostgreSQL transaction per transfer.
//! - `broker-ceiling`: baseline, confirmed publishes/s to the quorum shard queues.
//! - `suite`: the standard set behind `make bench` (restarts the stack with `make up`).
//! - `seed`: fills an empty ledger database with N transactions through `COPY`.
//! - `settlement`: one settlement job over a seeded ledger, its wall time and peak RSS.
//!
//! Modules (options and random numbers come from `tally-tools`): [`workload`] the transfers,
//! [`http`] the HTTP client, [`stats`] histograms, [`procs`] RSS and CPU from /proc, [`db`]
//! and [`bus`] PostgreSQL and RabbitMQ helpers, [`load`], [`drain`], [`baseline`], [`suite`],
//! [`seed`], [`settle`].

mod baseline;
mod bus;
mod db;
mod drain;
mod http;
mod load;
mod procs;
mod seed;
mod settle;
mod stats;
mod suite;
mod workload;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tally_tools::args::{flag, usage, val, Args, Opt};
use workload::Workload;

const USAGE: &str =
    "usage: tally-bench <load|drain|one-commit|broker-ceiling|suite|seed|settlement> [options]
       tally-bench <subcommand> --help";

/// Where connections go unless told otherwise: the same environment variables as tally's
/// own processes, then tally's defaults.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn default_database_url() -> String {
    env_or(
        "TALLY_DATABASE__URL",
        "postgres://tally:tally@127.0.0.1:5432/tally",
    )
}

pub fn default_broker_url() -> String {
    env_or("TALLY_BROKER__URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

pub fn default_shards() -> String {
    env_or("TALLY_LEDGER__SHARD_COUNT", "8")
}

/// `target/release` (or `$BIN_DIR`, as the Makefile exports it).
pub fn default_bin_dir() -> String {
    std::env::var("BIN_DIR").unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        format!("{target}/release")
    })
}

const COMMON: &[Opt] = &[
    val("out", "write the JSON result to this file"),
    val("seed", "random seed (default 1)"),
    val(
        "accounts",
        "accounts of the Zipf workloads (default 100000)",
    ),
    val("zipf", "Zipf exponent s (default 1.0)"),
    flag("quiet", "no progress lines"),
    flag("help", "this help"),
];

fn options(specific: &[Opt]) -> Vec<Opt> {
    let mut all: Vec<Opt> = specific
        .iter()
        .map(|o| Opt {
            name: o.name,
            takes_value: o.takes_value,
            help: o.help,
        })
        .collect();
    all.extend(COMMON.iter().map(|o| Opt {
        name: o.name,
        takes_value: o.takes_value,
        help: o.help,
    }));
    all
}

const LOAD: &[Opt] = &[
    val(
        "url",
        "nginx in front of the API (default http://127.0.0.1:8080)",
    ),
    val("workload", "deposits | hot | mixed (default deposits)"),
    val("rate", "open loop: requests due per second"),
    val("connections", "open loop: connections (default 256)"),
    val(
        "concurrency",
        "closed loop: connections (default 64 when no --rate)",
    ),
    val("duration", "e.g. 10s (default 10s)"),
    val(
        "request-share",
        "mixed: share of withdraw_requests (default 0.2)",
    ),
    val(
        "database-url",
        "the stack's ledger database (default $TALLY_DATABASE__URL)",
    ),
    val("broker-url", "RabbitMQ (default $TALLY_BROKER__URL)"),
    val(
        "prefix",
        "the stack's broker prefix (default $TALLY_BROKER__PREFIX or tally)",
    ),
    val("shards", "the stack's shard count (default 8)"),
    val(
        "pids-dir",
        "pid files of the stack, for RSS (default .run/pids)",
    ),
    val(
        "drain-timeout",
        "wait this long for the workers after the run (default 60s)",
    ),
    val("label", "name of the run in the result"),
];

const DRAIN: &[Opt] = &[
    val("messages", "envelopes to pre-fill (default 200000)"),
    flag("hot", "all on one account"),
    val("workers", "worker processes (default 1)"),
    val(
        "database-url",
        "a database to connect to for CREATE DATABASE (default $TALLY_DATABASE__URL)",
    ),
    val(
        "database",
        "throw-away database name (default tally_bench_drain)",
    ),
    val("broker-url", "RabbitMQ (default $TALLY_BROKER__URL)"),
    val("prefix", "throw-away broker prefix (default benchdrain)"),
    val("shards", "shard count (default 8)"),
    val(
        "bin-dir",
        "where tally-worker is (default $BIN_DIR or target/release)",
    ),
    val(
        "window",
        "unconfirmed publishes in flight while pre-filling (default 512)",
    ),
    val(
        "batch-max",
        "worker batch_max to use (default: the worker's)",
    ),
    val("prefetch", "worker prefetch to use (default: the worker's)"),
    val("timeout", "give up after (default 300s)"),
    val("log-dir", "worker logs (default target/bench/logs)"),
    flag("keep-database", "do not drop the database afterwards"),
    val("label", "name of the run in the result"),
];

const ONE_COMMIT: &[Opt] = &[
    val(
        "database-url",
        "a database to connect to for CREATE DATABASE (default $TALLY_DATABASE__URL)",
    ),
    val(
        "database",
        "throw-away database name (default tally_bench_baseline)",
    ),
    val(
        "concurrency",
        "connections to try, comma-separated (default 4,16,64)",
    ),
    flag("hot", "one hot row instead of Zipf"),
    val("duration", "per concurrency level (default 5s)"),
    flag("keep-database", "do not drop the database afterwards"),
    val("label", "name of the run in the result"),
];

const CEILING: &[Opt] = &[
    val("broker-url", "RabbitMQ (default $TALLY_BROKER__URL)"),
    val("prefix", "throw-away broker prefix (default benchceil)"),
    val("shards", "quorum queues, as the shard count (default 8)"),
    val(
        "window",
        "unconfirmed publishes in flight, comma-separated to try several (default 64,256)",
    ),
    val("duration", "per window (default 8s)"),
    val("label", "name of the run in the result"),
];

const SEED: &[Opt] = &[
    val(
        "database-url",
        "the migrated, EMPTY ledger database to fill (default $TALLY_DATABASE__URL); \
         refused if it has any account or transaction (no append)",
    ),
    val("transactions", "rows to write (default 1000000)"),
    val(
        "from",
        "first UTC day YYYY-MM-DD (default: --days before today)",
    ),
    val("to", "last UTC day YYYY-MM-DD (default yesterday)"),
    val("days", "days of data when --from is not given (default 30)"),
    val(
        "shards",
        "shard count to record if the database has none (default 8)",
    ),
    val(
        "withdraw-share",
        "share of draws that try a withdraw, never overdrawing (default 0.4)",
    ),
];

const SETTLEMENT: &[Opt] = &[
    val("transactions", "seeded rows (default 1000000)"),
    val("days", "days of data, ending yesterday (default 30)"),
    val(
        "database-url",
        "a database to connect to for CREATE DATABASE (default $TALLY_DATABASE__URL)",
    ),
    val(
        "database",
        "throw-away database name (default tally_bench_settlement)",
    ),
    val("broker-url", "RabbitMQ (default $TALLY_BROKER__URL)"),
    val("prefix", "throw-away broker prefix (default benchsettle)"),
    val("shards", "shard count (default 8)"),
    val(
        "bin-dir",
        "where tally-worker is (default $BIN_DIR or target/release)",
    ),
    val("timeout", "give up after (default 300s)"),
    val("log-dir", "worker log (default target/bench/logs)"),
    flag("keep-database", "do not drop the database afterwards"),
    val("label", "name of the run in the result"),
];

fn parse(argv: &[String], specific: &[Opt], what: &str) -> Result<Option<Args>> {
    let opts = options(specific);
    let args = Args::parse(argv, &opts)?;
    args.no_positional()?;
    if args.flag("help") {
        println!("tally-bench {what} [options]\n{}", usage(&opts));
        return Ok(None);
    }
    Ok(Some(args))
}

fn shards(args: &Args) -> Result<u16> {
    args.str_or("shards", &default_shards())
        .parse()
        .context("--shards")
}

pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn dispatch(command: &str, argv: &[String]) -> Result<()> {
    let (result, args) = match command {
        "load" => {
            let Some(a) = parse(argv, LOAD, "load")? else {
                return Ok(());
            };
            let duration = a.duration_or("duration", Duration::from_secs(10))?;
            let mode = match a.opt_num::<f64>("rate")? {
                Some(rate) if rate > 0.0 => load::Mode::Open {
                    rate,
                    connections: a.num_or("connections", 256)?,
                },
                Some(_) => bail!("--rate must be positive"),
                None => load::Mode::Closed {
                    concurrency: a.num_or("concurrency", 64)?,
                },
            };
            let workload = Workload::parse(&a.str_or("workload", "deposits"))?;
            let spec = load::LoadSpec {
                label: a.str_or("label", workload.as_str()),
                url: a.str_or("url", "http://127.0.0.1:8080"),
                workload,
                mode,
                duration,
                accounts: a.num_or("accounts", 100_000)?,
                zipf_s: a.num_or("zipf", 1.0)?,
                request_share: a.num_or("request-share", 0.2)?,
                seed: a.num_or("seed", 1)?,
                database_url: Some(a.str_or("database-url", &default_database_url())),
                broker: Some((
                    a.str_or("broker-url", &default_broker_url()),
                    a.str_or("prefix", &env_or("TALLY_BROKER__PREFIX", "tally")),
                    shards(&a)?,
                )),
                pids_dir: Some(PathBuf::from(a.str_or("pids-dir", ".run/pids"))),
                drain_timeout: a.duration_or("drain-timeout", Duration::from_secs(60))?,
                request_timeout: Duration::from_secs(15),
                progress: !a.flag("quiet"),
            };
            (load::run(spec).await?, a)
        }
        "drain" => {
            let Some(a) = parse(argv, DRAIN, "drain")? else {
                return Ok(());
            };
            let hot = a.flag("hot");
            let spec = drain::DrainSpec {
                label: a.str_or("label", if hot { "drain-hot" } else { "drain" }),
                messages: a.num_or("messages", 200_000)?,
                hot,
                workers: a.num_or("workers", 1)?,
                accounts: a.num_or("accounts", 100_000)?,
                zipf_s: a.num_or("zipf", 1.0)?,
                seed: a.num_or("seed", 1)?,
                admin_database_url: a.str_or("database-url", &default_database_url()),
                database: a.str_or("database", "tally_bench_drain"),
                broker_url: a.str_or("broker-url", &default_broker_url()),
                prefix: a.str_or("prefix", "benchdrain"),
                shards: shards(&a)?,
                worker_bin: PathBuf::from(a.str_or("bin-dir", &default_bin_dir()))
                    .join("tally-worker"),
                window: a.num_or("window", 512)?,
                batch_max: a.opt_num("batch-max")?,
                prefetch: a.opt_num("prefetch")?,
                timeout: a.duration_or("timeout", Duration::from_secs(300))?,
                log_dir: PathBuf::from(a.str_or("log-dir", "target/bench/logs")),
                keep_database: a.flag("keep-database"),
                progress: !a.flag("quiet"),
            };
            (drain::run(spec).await?, a)
        }
        "one-commit" => {
            let Some(a) = parse(argv, ONE_COMMIT, "one-commit")? else {
                return Ok(());
            };
            let hot = a.flag("hot");
            let spec = baseline::OneCommitSpec {
                label: a.str_or("label", if hot { "one-commit-hot" } else { "one-commit" }),
                admin_database_url: a.str_or("database-url", &default_database_url()),
                database: a.str_or("database", "tally_bench_baseline"),
                concurrencies: a.list_or("concurrency", &[4, 16, 64])?,
                hot,
                duration: a.duration_or("duration", Duration::from_secs(5))?,
                accounts: a.num_or("accounts", 100_000)?,
                zipf_s: a.num_or("zipf", 1.0)?,
                seed: a.num_or("seed", 1)?,
                keep_database: a.flag("keep-database"),
                progress: !a.flag("quiet"),
            };
            (baseline::one_commit(spec).await?, a)
        }
        "broker-ceiling" => {
            let Some(a) = parse(argv, CEILING, "broker-ceiling")? else {
                return Ok(());
            };
            let spec = baseline::CeilingSpec {
                label: a.str_or("label", "broker-ceiling"),
                broker_url: a.str_or("broker-url", &default_broker_url()),
                prefix: a.str_or("prefix", "benchceil"),
                shards: shards(&a)?,
                windows: a.list_or("window", &[64, 256])?,
                duration: a.duration_or("duration", Duration::from_secs(8))?,
                accounts: a.num_or("accounts", 100_000)?,
                zipf_s: a.num_or("zipf", 1.0)?,
                seed: a.num_or("seed", 1)?,
                progress: !a.flag("quiet"),
            };
            (baseline::broker_ceiling(spec).await?, a)
        }
        "seed" => {
            let Some(a) = parse(argv, SEED, "seed")? else {
                return Ok(());
            };
            let today = chrono::Utc::now().date_naive();
            let day = |name: &str, default: chrono::NaiveDate| -> Result<chrono::NaiveDate> {
                match a.opt_str(name) {
                    None => Ok(default),
                    Some(v) => v.parse().with_context(|| format!("--{name} {v:?}")),
                }
            };
            let days: u64 = a.num_or("days", 30)?;
            let spec = seed::SeedSpec {
                database_url: a.str_or("database-url", &default_database_url()),
                transactions: a.num_or("transactions", 1_000_000)?,
                accounts: a.num_or("accounts", 100_000)?,
                from: day("from", today - chrono::Days::new(days))?,
                to: day("to", today - chrono::Days::new(1))?,
                seed: a.num_or("seed", 1)?,
                shards: shards(&a)?,
                withdraw_share: a.num_or("withdraw-share", 0.4)?,
                progress: !a.flag("quiet"),
            };
            (seed::run(spec).await?, a)
        }
        "settlement" => {
            let Some(a) = parse(argv, SETTLEMENT, "settlement")? else {
                return Ok(());
            };
            let spec = settle::SettleSpec {
                label: a.str_or("label", "settlement"),
                transactions: a.num_or("transactions", 1_000_000)?,
                accounts: a.num_or("accounts", 100_000)?,
                days: a.num_or("days", 30)?,
                seed: a.num_or("seed", 1)?,
                admin_database_url: a.str_or("database-url", &default_database_url()),
                database: a.str_or("database", "tally_bench_settlement"),
                broker_url: a.str_or("broker-url", &default_broker_url()),
                prefix: a.str_or("prefix", "benchsettle"),
                shards: shards(&a)?,
                worker_bin: PathBuf::from(a.str_or("bin-dir", &default_bin_dir()))
                    .join("tally-worker"),
                timeout: a.duration_or("timeout", Duration::from_secs(300))?,
                log_dir: PathBuf::from(a.str_or("log-dir", "target/bench/logs")),
                keep_database: a.flag("keep-database"),
                progress: !a.flag("quiet"),
            };
            (settle::run(spec).await?, a)
        }
        "suite" => return suite::main(argv).await,
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return Ok(());
        }
        other => bail!("unknown subcommand {other:?}\n{USAGE}"),
    };
    if let Some(out) = args.opt_str("out") {
        write_json(Path::new(&out), &result)?;
        if !args.flag("quiet") {
            println!("result written to {out}");
        }
    } else if args.flag("quiet") {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    if let Err(e) = dispatch(command, rest).await {
        eprintln!("tally-bench {command}: {e:#}");
        std::process::exit(1);
    }
}
