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
//! Modules (random numbers come from `tally-testkit`): [`cli`] the options of each
//! subcommand, [`workload`] the transfers, [`http`] the HTTP client, [`stats`] histograms,
//! [`procs`] RSS and CPU from /proc, [`db`] and [`bus`] PostgreSQL and RabbitMQ helpers,
//! [`load`], [`drain`], [`baseline`], [`suite`], [`seed`], [`settle`].

mod baseline;
mod bus;
mod cli;
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

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::Value;
use std::path::Path;

use cli::{Cli, Command, Common};

pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Runs one subcommand; every measurement's result goes to `--out` (or, with `--quiet`, to
/// stdout).
async fn dispatch(command: Command) -> Result<()> {
    let (common, result) = match command {
        Command::Load(a) => (a.common.clone(), load::run(a.spec()?).await?),
        Command::Drain(a) => (a.common.clone(), drain::run(a.spec()).await?),
        Command::OneCommit(a) => (a.common.clone(), baseline::one_commit(a.spec()).await?),
        Command::BrokerCeiling(a) => (a.common.clone(), baseline::broker_ceiling(a.spec()).await?),
        Command::Seed(a) => (a.common.clone(), seed::run(a.spec()).await?),
        Command::Settlement(a) => (a.common.clone(), settle::run(a.spec()).await?),
        Command::Suite(a) => return suite::main(a).await,
    };
    write_result(&common, &result)
}

fn write_result(common: &Common, result: &Value) -> Result<()> {
    if let Some(out) = &common.out {
        write_json(out, result)?;
        if !common.quiet {
            println!("result written to {}", out.display());
        }
    } else if common.quiet {
        println!("{}", serde_json::to_string_pretty(result)?);
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let name = cli.command.name();
    if let Err(e) = dispatch(cli.command).await {
        eprintln!("tally-bench {name}: {e:#}");
        std::process::exit(1);
    }
}
