//! The `tally-chaos` command line (clap): which seeds to run, which fault kinds to draw from,
//! and the size of each seed's workload.

use clap::Parser;
use std::ops::Range;
use std::path::PathBuf;

use crate::faults::{self, FaultKind};

#[derive(Debug, Parser)]
#[command(
    name = "tally-chaos",
    version,
    about = "The fault suite (`make chaos`): per seed a fresh installation (own database and \
             queues, 2 API replicas + 2 workers, nginx) takes a modelled workload while faults \
             are injected; then the ledger is checked against what the clients were told.",
    after_help = "Env: TALLY_CHAOS_ADMIN_URL (default postgres://tally:tally@127.0.0.1:5432/tally),
     TALLY_CHAOS_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f).
Logs and a report per seed: target/chaos/<seed>/. It restarts and pauses the machine's
shared RabbitMQ and PostgreSQL: never run it next to the test suite."
)]
pub struct Options {
    /// Run seeds A to B-1 (`A..B`); a single number N means 0..N [default: 0..5].
    #[arg(long, value_name = "A..B | N", value_parser = seed_range)]
    seeds: Option<Range<u64>>,
    /// Run only seed N (repeatable): the replay of a failing seed.
    #[arg(long = "seed", value_name = "N")]
    seed: Vec<u64>,
    /// Stop at the first failing seed (default: run all, then exit non-zero).
    #[arg(long)]
    pub fail_fast: bool,
    /// The same workload and checks without faults (tells harness from system).
    #[arg(long)]
    pub no_faults: bool,
    /// Inject only these kinds, comma-separated: kill-worker, kill-api, poison-message,
    /// pause-worker, restart-workers, skew-worker touch only the seed's own processes;
    /// rabbitmq-restart, postgres-restart, pause-rabbitmq stop or pause the shared services;
    /// kill-rabbitmq-node, rolling-rabbitmq-restart, kill-postgres-primary,
    /// kill-postgres-standby lose a node of the HA services (--ha only)
    /// [default: all that apply].
    #[arg(long, value_name = "K,K", value_delimiter = ',', value_parser = fault_kind)]
    kinds: Vec<FaultKind>,
    /// Start seeds even while `cargo nextest`/`cargo test` runs against our servers (by
    /// default each seed waits up to 30 min for such a run: it restarts the services it
    /// uses; runs whose TALLY_TEST_DATABASE_URL and TALLY_TEST_AMQP_URL both name other
    /// servers are not waited for).
    #[arg(long)]
    pub no_wait: bool,
    /// Concurrent clients of the workload.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub clients: u64,
    /// Accounts the clients draw from.
    #[arg(long, default_value_t = 20,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub accounts: usize,
    /// Where tally-api and tally-worker are [default: next to this binary].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Run on the HA services of deploy/local/ha.sh (`make chaos HA=1`): every node in
    /// TALLY_CHAOS_AMQP_URLS, the multi-host TALLY_CHAOS_ADMIN_URL, the script's HA_*
    /// variables; the node-loss kinds instead of the single-node service faults.
    #[arg(long)]
    pub ha: bool,
}

impl Options {
    /// The seeds to run: every `--seed`, else the `--seeds` range.
    pub fn seeds(&self) -> Vec<u64> {
        if self.seed.is_empty() {
            self.seeds.clone().unwrap_or(0..5).collect()
        } else {
            self.seed.clone()
        }
    }

    /// The kinds to draw from (all that apply unless `--kinds`).
    pub fn kinds(&self) -> Vec<FaultKind> {
        match (self.kinds.is_empty(), self.ha) {
            (true, false) => faults::ALL.to_vec(),
            (true, true) => faults::HA_ALL.to_vec(),
            (false, _) => self.kinds.clone(),
        }
    }
}

/// `A..B`, or `N` for `0..N`.
fn seed_range(text: &str) -> Result<Range<u64>, std::num::ParseIntError> {
    Ok(match text.split_once("..") {
        Some((a, b)) => a.parse()?..b.parse()?,
        None => 0..text.parse()?,
    })
}

fn fault_kind(name: &str) -> Result<FaultKind, String> {
    let every = || faults::ALL.into_iter().chain(faults::HA_ALL);
    every().find(|k| k.name() == name.trim()).ok_or_else(|| {
        let mut names: Vec<&str> = every().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        format!("unknown fault kind (one of {})", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("tally-chaos").chain(line.split_whitespace()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Options::command().debug_assert();
    }

    #[test]
    fn the_makefile_command_lines_parse() {
        let o = parse("").unwrap();
        assert_eq!(o.seeds(), vec![0, 1, 2, 3, 4]);
        assert_eq!(o.kinds(), faults::ALL.to_vec());
        assert_eq!((o.clients, o.accounts), (8, 20));
        assert_eq!(parse("--seeds 3..6").unwrap().seeds(), vec![3, 4, 5]);
        assert_eq!(parse("--seeds 2").unwrap().seeds(), vec![0, 1]);
        assert_eq!(parse("--seed 7 --seed 9").unwrap().seeds(), vec![7, 9]);
        let o = parse("--seeds 0..3 --no-wait --kinds kill-worker,pause-rabbitmq").unwrap();
        assert!(o.no_wait);
        assert_eq!(
            o.kinds(),
            vec![FaultKind::KillWorker, FaultKind::PauseBroker]
        );
        // On the HA services: the node losses and the kinds that touch only the seed's own
        // processes, never the single-node services' restarts or pauses.
        let o = parse("--ha --seeds 0..30").unwrap();
        assert_eq!(o.kinds(), faults::HA_ALL.to_vec());
        assert!(o.kinds().iter().all(|k| !faults::ALL[2..4].contains(k)));
        assert!(!o.kinds().contains(&FaultKind::PauseBroker));
        let o = parse("--ha --kinds kill-postgres-primary,kill-rabbitmq-node").unwrap();
        assert!(o.kinds().iter().all(|k| k.needs_ha()));
        for bad in [
            "--kinds kill-everything",
            "--clients 0",
            "--seeds x..3",
            "extra",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
