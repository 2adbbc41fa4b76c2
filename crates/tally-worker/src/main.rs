//! `tally-worker run` (default) consumes the shard queues; `tally-worker migrate` applies the
//! database migrations and exits.

use anyhow::Context;
use tally_core::settings::Settings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    tally_telemetry::init(&settings.log);
    let command = std::env::args().nth(1).unwrap_or_else(|| "run".into());
    match command.as_str() {
        "migrate" => {
            let applied = tally_store::migrate::run(settings.database.url.expose())
                .await
                .context("migrating the database")?;
            tracing::info!(applied, "migrations up to date");
        }
        "run" => {
            let worker = tally_worker::Worker::build(settings)
                .await
                .context("starting the worker (did `tally-worker migrate` run?)")?;
            let shutdown = CancellationToken::new();
            tally_telemetry::cancel_on_signal(shutdown.clone());
            worker.run(shutdown).await;
        }
        other => anyhow::bail!("unknown command {other:?}; expected `run` or `migrate`"),
    }
    Ok(())
}
