//! `tally-api`: settings → telemetry → build → serve until SIGTERM.

use anyhow::Context;
use tally_api::Application;
use tally_core::settings::Settings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Configuration comes from files and the environment only; a stray argument is most
    // likely a deploy file meant for `tally-worker`.
    if let Some(arg) = std::env::args().nth(1) {
        anyhow::bail!(
            "tally-api takes no arguments (got {arg:?}); configure it with TALLY_* variables"
        );
    }
    let settings = Settings::load()?;
    tally_telemetry::init(&settings.log);
    let shutdown = CancellationToken::new();
    tally_telemetry::cancel_on_signal(shutdown.clone());
    let app = Application::build(settings, shutdown.clone())
        .await
        .context("starting the API")?;
    tracing::info!(port = app.port(), "API listening");
    app.run_until_stopped(shutdown).await?;
    tracing::info!("API stopped");
    Ok(())
}
