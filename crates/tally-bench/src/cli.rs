//! The `tally-bench` command line (clap): one subcommand per measurement, each option with
//! its help and default, and the conversion of each subcommand's options into the spec its
//! module runs. Connections default to the same TALLY_* variables tally's own processes read.

use anyhow::{bail, Result};
use chrono::{Days, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

use crate::workload::Workload;
use crate::{baseline, drain, load, seed, settle};

const LOCAL_DATABASE: &str = "postgres://tally:tally@127.0.0.1:5432/tally";
const LOCAL_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Debug, Parser)]
#[command(
    name = "tally-bench",
    version,
    about = "Measures tally and the baselines it is judged against. Each measurement writes a \
             JSON result with --out FILE; `suite` runs the standard set behind `make bench`.",
    after_help = "Durations are written like 10s, 500ms or 2m. See BENCHMARKS.md for what \
                  each figure means."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// HTTP load through nginx: open loop (--rate) or closed loop (--concurrency); the
    /// stack's database (--database-url) gives applied counts and lag.
    Load(LoadArgs),
    /// Workers emptying a pre-filled queue (no HTTP).
    Drain(DrainArgs),
    /// Baseline: one PostgreSQL transaction per transfer.
    OneCommit(OneCommitArgs),
    /// Baseline: confirmed publishes per second to the quorum shard queues.
    BrokerCeiling(CeilingArgs),
    /// The standard set behind `make bench` (restarts the stack with `make up`).
    Suite(SuiteArgs),
    /// Fill an empty, migrated ledger database (--database-url) with N transactions through
    /// COPY; refused if it has any account or transaction (no append).
    Seed(SeedArgs),
    /// One settlement job over a seeded ledger: its wall time and the worker's peak RSS.
    Settlement(SettlementArgs),
}

impl Command {
    /// The subcommand's name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Load(_) => "load",
            Self::Drain(_) => "drain",
            Self::OneCommit(_) => "one-commit",
            Self::BrokerCeiling(_) => "broker-ceiling",
            Self::Suite(_) => "suite",
            Self::Seed(_) => "seed",
            Self::Settlement(_) => "settlement",
        }
    }
}

/// Options every measurement takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Write the JSON result to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Random seed of the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Accounts of the Zipf workloads.
    #[arg(long, default_value_t = 100_000)]
    pub accounts: usize,
    /// Zipf exponent s.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// No progress lines (the result goes to stdout unless --out).
    #[arg(long)]
    pub quiet: bool,
}

/// A database to connect to (and, for throw-away databases, to issue CREATE DATABASE on).
#[derive(Debug, Args)]
pub struct Database {
    /// PostgreSQL URL.
    #[arg(long, env = "TALLY_DATABASE__URL", hide_env_values = true,
          default_value = LOCAL_DATABASE)]
    pub database_url: String,
}

/// RabbitMQ.
#[derive(Debug, Args)]
pub struct Broker {
    /// RabbitMQ URL.
    #[arg(long, env = "TALLY_BROKER__URL", hide_env_values = true,
          default_value = LOCAL_BROKER)]
    pub broker_url: String,
    /// Shard count (queues of the topology).
    #[arg(
        long,
        env = "TALLY_LEDGER__SHARD_COUNT",
        hide_env_values = true,
        default_value_t = 8
    )]
    pub shards: u16,
}

/// Where the release binaries are: `--bin-dir`, `$BIN_DIR` (as the Makefile exports it), or
/// `$CARGO_TARGET_DIR/release`, or `target/release`.
#[derive(Debug, Args)]
pub struct BinDir {
    /// Where tally-worker is [default: $CARGO_TARGET_DIR/release or target/release].
    #[arg(long, env = "BIN_DIR", hide_env_values = true, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

impl BinDir {
    pub fn path(&self) -> PathBuf {
        self.bin_dir.clone().unwrap_or_else(|| {
            let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
            PathBuf::from(target).join("release")
        })
    }
}

/// Parses a duration: `10s`, `500ms`, `2m`.
pub fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// nginx in front of the API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Which transfers to send.
    #[arg(long, value_enum, default_value_t = Workload::Deposits)]
    workload: Workload,
    /// Open loop: requests due per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: connections.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Closed loop (without --rate): connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of the run.
    #[arg(long, value_parser = duration, default_value = "10s")]
    duration: Duration,
    /// Mixed: share of withdraw_requests among new transfers.
    #[arg(long, default_value_t = 0.2)]
    request_share: f64,
    #[command(flatten)]
    database: Database,
    #[command(flatten)]
    broker: Broker,
    /// The stack's broker prefix.
    #[arg(
        long,
        env = "TALLY_BROKER__PREFIX",
        hide_env_values = true,
        default_value = "tally"
    )]
    prefix: String,
    /// Pid files of the stack, for RSS.
    #[arg(long, default_value = ".run/pids")]
    pids_dir: PathBuf,
    /// Wait this long for the workers after the run.
    #[arg(long, value_parser = duration, default_value = "60s")]
    drain_timeout: Duration,
    /// Name of the run in the result [default: the workload].
    #[arg(long)]
    label: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

impl LoadArgs {
    pub fn spec(self) -> Result<load::LoadSpec> {
        let mode = match self.rate {
            Some(rate) if rate > 0.0 => load::Mode::Open {
                rate,
                connections: self.connections,
            },
            Some(_) => bail!("--rate must be positive"),
            None => load::Mode::Closed {
                concurrency: self.concurrency,
            },
        };
        Ok(load::LoadSpec {
            label: self.label.unwrap_or_else(|| self.workload.as_str().into()),
            url: self.url,
            workload: self.workload,
            mode,
            duration: self.duration,
            accounts: self.common.accounts,
            zipf_s: self.common.zipf,
            request_share: self.request_share,
            seed: self.common.seed,
            database_url: Some(self.database.database_url),
            broker: Some((self.broker.broker_url, self.prefix, self.broker.shards)),
            pids_dir: Some(self.pids_dir),
            drain_timeout: self.drain_timeout,
            request_timeout: Duration::from_secs(15),
            progress: !self.common.quiet,
        })
    }
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Envelopes to pre-fill.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// All on one account.
    #[arg(long)]
    hot: bool,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    admin: Database,
    /// Throw-away database name.
    #[arg(long, default_value = "tally_bench_drain")]
    database: String,
    #[command(flatten)]
    broker: Broker,
    /// Throw-away broker prefix.
    #[arg(long, default_value = "benchdrain")]
    prefix: String,
    #[command(flatten)]
    bin_dir: BinDir,
    /// Unconfirmed publishes in flight while pre-filling.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Worker batch_max to use [default: the worker's].
    #[arg(long)]
    batch_max: Option<usize>,
    /// Worker prefetch to use [default: the worker's].
    #[arg(long)]
    prefetch: Option<u16>,
    /// Give up after.
    #[arg(long, value_parser = duration, default_value = "300s")]
    timeout: Duration,
    /// Worker logs.
    #[arg(long, default_value = "target/bench/logs")]
    log_dir: PathBuf,
    /// Do not drop the database afterwards.
    #[arg(long)]
    keep_database: bool,
    /// Name of the run in the result [default: drain, or drain-hot with --hot].
    #[arg(long)]
    label: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

impl DrainArgs {
    pub fn spec(self) -> drain::DrainSpec {
        let default_label = if self.hot { "drain-hot" } else { "drain" };
        drain::DrainSpec {
            label: self.label.unwrap_or_else(|| default_label.into()),
            messages: self.messages,
            hot: self.hot,
            workers: self.workers,
            accounts: self.common.accounts,
            zipf_s: self.common.zipf,
            seed: self.common.seed,
            admin_database_url: self.admin.database_url,
            database: self.database,
            broker_url: self.broker.broker_url,
            prefix: self.prefix,
            shards: self.broker.shards,
            worker_bin: self.bin_dir.path().join("tally-worker"),
            window: self.window,
            batch_max: self.batch_max,
            prefetch: self.prefetch,
            timeout: self.timeout,
            log_dir: self.log_dir,
            keep_database: self.keep_database,
            progress: !self.common.quiet,
        }
    }
}

#[derive(Debug, Args)]
pub struct OneCommitArgs {
    #[command(flatten)]
    admin: Database,
    /// Throw-away database name.
    #[arg(long, default_value = "tally_bench_baseline")]
    database: String,
    /// Connections to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [4, 16, 64])]
    concurrency: Vec<usize>,
    /// One hot row instead of Zipf.
    #[arg(long)]
    hot: bool,
    /// Per concurrency level.
    #[arg(long, value_parser = duration, default_value = "5s")]
    duration: Duration,
    /// Do not drop the database afterwards.
    #[arg(long)]
    keep_database: bool,
    /// Name of the run in the result [default: one-commit, or one-commit-hot with --hot].
    #[arg(long)]
    label: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

impl OneCommitArgs {
    pub fn spec(self) -> baseline::OneCommitSpec {
        let default_label = if self.hot {
            "one-commit-hot"
        } else {
            "one-commit"
        };
        baseline::OneCommitSpec {
            label: self.label.unwrap_or_else(|| default_label.into()),
            admin_database_url: self.admin.database_url,
            database: self.database,
            concurrencies: self.concurrency,
            hot: self.hot,
            duration: self.duration,
            accounts: self.common.accounts,
            zipf_s: self.common.zipf,
            seed: self.common.seed,
            keep_database: self.keep_database,
            progress: !self.common.quiet,
        }
    }
}

#[derive(Debug, Args)]
pub struct CeilingArgs {
    #[command(flatten)]
    broker: Broker,
    /// Throw-away broker prefix.
    #[arg(long, default_value = "benchceil")]
    prefix: String,
    /// Unconfirmed publishes in flight, comma-separated to try several.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 256])]
    window: Vec<usize>,
    /// Per window.
    #[arg(long, value_parser = duration, default_value = "8s")]
    duration: Duration,
    /// Name of the run in the result.
    #[arg(long, default_value = "broker-ceiling")]
    label: String,
    #[command(flatten)]
    pub common: Common,
}

impl CeilingArgs {
    pub fn spec(self) -> baseline::CeilingSpec {
        baseline::CeilingSpec {
            label: self.label,
            broker_url: self.broker.broker_url,
            prefix: self.prefix,
            shards: self.broker.shards,
            windows: self.window,
            duration: self.duration,
            accounts: self.common.accounts,
            zipf_s: self.common.zipf,
            seed: self.common.seed,
            progress: !self.common.quiet,
        }
    }
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    database: Database,
    /// Rows to write.
    #[arg(long, default_value_t = 1_000_000)]
    transactions: u64,
    /// First UTC day, YYYY-MM-DD [default: --days before today].
    #[arg(long)]
    from: Option<NaiveDate>,
    /// Last UTC day, YYYY-MM-DD [default: yesterday].
    #[arg(long)]
    to: Option<NaiveDate>,
    /// Days of data when --from is not given.
    #[arg(long, default_value_t = 30)]
    days: u64,
    /// Shard count to record if the database has none.
    #[arg(
        long,
        env = "TALLY_LEDGER__SHARD_COUNT",
        hide_env_values = true,
        default_value_t = 8
    )]
    shards: u16,
    /// Share of draws that try a withdraw, never overdrawing.
    #[arg(long, default_value_t = 0.4)]
    withdraw_share: f64,
    #[command(flatten)]
    pub common: Common,
}

impl SeedArgs {
    pub fn spec(self) -> seed::SeedSpec {
        let today = Utc::now().date_naive();
        seed::SeedSpec {
            database_url: self.database.database_url,
            transactions: self.transactions,
            accounts: self.common.accounts as u64,
            from: self.from.unwrap_or(today - Days::new(self.days)),
            to: self.to.unwrap_or(today - Days::new(1)),
            seed: self.common.seed,
            shards: self.shards,
            withdraw_share: self.withdraw_share,
            progress: !self.common.quiet,
        }
    }
}

#[derive(Debug, Args)]
pub struct SettlementArgs {
    /// Seeded rows.
    #[arg(long, default_value_t = 1_000_000)]
    transactions: u64,
    /// Days of data, ending yesterday.
    #[arg(long, default_value_t = 30)]
    days: u64,
    #[command(flatten)]
    admin: Database,
    /// Throw-away database name.
    #[arg(long, default_value = "tally_bench_settlement")]
    database: String,
    #[command(flatten)]
    broker: Broker,
    /// Throw-away broker prefix.
    #[arg(long, default_value = "benchsettle")]
    prefix: String,
    #[command(flatten)]
    bin_dir: BinDir,
    /// Give up after.
    #[arg(long, value_parser = duration, default_value = "300s")]
    timeout: Duration,
    /// Worker log.
    #[arg(long, default_value = "target/bench/logs")]
    log_dir: PathBuf,
    /// Do not drop the database afterwards.
    #[arg(long)]
    keep_database: bool,
    /// Name of the run in the result.
    #[arg(long, default_value = "settlement")]
    label: String,
    #[command(flatten)]
    pub common: Common,
}

impl SettlementArgs {
    pub fn spec(self) -> settle::SettleSpec {
        settle::SettleSpec {
            label: self.label,
            transactions: self.transactions,
            accounts: self.common.accounts as u64,
            days: self.days,
            seed: self.common.seed,
            admin_database_url: self.admin.database_url,
            database: self.database,
            broker_url: self.broker.broker_url,
            prefix: self.prefix,
            shards: self.broker.shards,
            worker_bin: self.bin_dir.path().join("tally-worker"),
            timeout: self.timeout,
            log_dir: self.log_dir,
            keep_database: self.keep_database,
            progress: !self.common.quiet,
        }
    }
}

#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// nginx port of the bench stack.
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// First API replica port.
    #[arg(long, default_value_t = 8201)]
    pub api_base_port: u16,
    /// Broker prefix of the bench stack.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Database of the bench stack, recreated.
    #[arg(long, default_value = "tally_bench")]
    pub database: String,
    #[command(flatten)]
    pub admin: Database,
    /// RabbitMQ URL.
    #[arg(long, env = "TALLY_BROKER__URL", hide_env_values = true, default_value = LOCAL_BROKER)]
    pub broker_url: String,
    #[command(flatten)]
    pub bin_dir: BinDir,
    /// Results directory.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    /// Closed-loop runs; half-rate runs last 1.5x [default: 10s, 3s with --quick].
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Envelopes per drain [default: 200000, 20000 with --quick].
    #[arg(long)]
    pub drain_messages: Option<u64>,
    /// Wait up to this long for no cargo/nextest/tally-chaos process.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub wait_quiet: Duration,
    /// Phases to skip, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = ["baselines", "drain", "settlement", "stack", "scaling"])]
    pub skip: Vec<String>,
    /// Short runs for trying the suite out (figures not comparable).
    #[arg(long)]
    pub quick: bool,
    /// Stop a stack already running under .run/ (it may be someone else's).
    #[arg(long)]
    pub restart_stack: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Command {
        Cli::try_parse_from(std::iter::once("tally-bench").chain(line.split_whitespace()))
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .command
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_makefile_and_benchmarks_md_command_lines_parse() {
        let Command::Suite(s) = parse(
            "suite --port 8090 --api-base-port 8201 --bin-dir target/release --wait-quiet 25m --quick",
        ) else {
            panic!("not the suite");
        };
        assert_eq!(s.wait_quiet, Duration::from_secs(25 * 60));
        assert!(s.quick);
        let Command::Load(l) =
            parse("load --rate 2000 --duration 20s --workload mixed --out r.json")
        else {
            panic!("not load");
        };
        let spec = l.spec().unwrap();
        assert!(matches!(spec.mode, load::Mode::Open { rate, connections: 256 } if rate == 2000.0));
        assert_eq!(spec.label, "mixed");
        let Command::OneCommit(o) = parse("one-commit --concurrency 4,16,64 --duration 5s --hot")
        else {
            panic!("not one-commit");
        };
        let spec = o.spec();
        assert_eq!(spec.concurrencies, vec![4, 16, 64]);
        assert_eq!(spec.label, "one-commit-hot");
        assert!(matches!(
            parse("settlement --bin-dir target/release --out target/bench/settlement.json"),
            Command::Settlement(_)
        ));
        assert!(matches!(
            parse("drain --messages 200000 --workers 1 --batch-max 1000 --prefetch 2000"),
            Command::Drain(_)
        ));
    }

    #[test]
    fn refuses_what_the_old_parser_refused() {
        let accepted = |line: &str| {
            Cli::try_parse_from(std::iter::once("tally-bench").chain(line.split_whitespace()))
                .is_ok()
        };
        assert!(!accepted("load --bogus 1"), "unknown option");
        assert!(!accepted("load --rate"), "missing value");
        assert!(!accepted("load extra"), "positional argument");
        assert!(!accepted("suite --skip nothing"), "unknown phase");
    }
}
