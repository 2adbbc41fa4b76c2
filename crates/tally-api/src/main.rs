//! `tally-api`: settings → telemetry → build → serve until SIGTERM; `tally-api openapi` prints
//! the OpenAPI document instead.

use anyhow::Context;
use tally_api::Application;
use tally_settings::Settings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Configuration comes from files and the environment only; a stray argument is most
    // likely a deploy file meant for `tally-worker`. The one argument: `openapi` prints the
    // API's OpenAPI document (what `make openapi` writes to openapi.json).
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("openapi") => {
            print!("{}", tally_api::openapi::to_json());
            return Ok(());
        }
        Some(arg) => anyhow::bail!(
            "tally-api takes no arguments but `openapi` (got {arg:?}); configure it with TALLY_* variables"
        ),
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
