//! `tally-worker` commands:
//! - `run` (default): consume the shard queues until SIGTERM.
//! - `migrate`: apply the database migrations and exit.
//! - `audit`: run the conservation auditor; prints its JSON report, exits 1 if it fails.
//! - `dead-letters list`: print archived dead letters as JSON.
//! - `dead-letters republish (--all | ID…)`: send pending dead letters back to their shard.
//!
//! `tally-worker --help` (and `--help` of each subcommand) says the same (`tally_worker::cli`).

use anyhow::Context;
use clap::Parser;
use tally_settings::Settings;
use tally_worker::cli::{Cli, Command};
use tally_worker::Worker;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Arguments first: `--help` and a mistyped subcommand need no settings.
    let command = Command::from(Cli::parse());
    let settings = Settings::load()?;
    tally_telemetry::init(&settings.log);
    match command {
        Command::Migrate => {
            let applied = tally_store::migrate::run(settings.database.url.expose())
                .await
                .context("migrating the database")?;
            tracing::info!(applied, "migrations up to date");
        }
        Command::Run => {
            let worker = build(settings).await?;
            let shutdown = CancellationToken::new();
            tally_telemetry::cancel_on_signal(shutdown.clone());
            worker.run(shutdown).await;
        }
        Command::Audit => {
            let worker = build(settings).await?;
            let queues = match worker.broker().await {
                Ok(connection) => connection.queue_depths(worker.topology()).await.ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "broker unreachable: queue depths omitted");
                    None
                }
            };
            let report = tally_store::audit::report(worker.pool(), queues).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.pass {
                std::process::exit(1);
            }
        }
        Command::DeadLettersList => {
            let worker = build(settings).await?;
            let letters = tally_store::dead_letters::page(worker.pool(), None, 10_000).await?;
            println!("{}", serde_json::to_string_pretty(&letters)?);
        }
        Command::DeadLettersRepublish(ids) => {
            let worker = build(settings).await?;
            let connection = worker.broker().await?;
            let done = tally_worker::dead_letters::republish(
                worker.pool(),
                &connection,
                worker.topology(),
                &worker.amount_rules(),
                ids.as_deref(),
            )
            .await?;
            println!("{}", serde_json::to_string(&done)?);
        }
    }
    Ok(())
}

async fn build(settings: Settings) -> anyhow::Result<Worker> {
    Worker::build(settings).await.context("starting the worker")
}
