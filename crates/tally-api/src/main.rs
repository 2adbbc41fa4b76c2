//! `tally-api`: settings → telemetry → build → serve until SIGTERM; `tally-api openapi` prints
//! the OpenAPI document instead.

use anyhow::Context;
use clap::Parser;
use tally_api::Application;
use tally_settings::Settings;
use tokio_util::sync::CancellationToken;

/// No options: configuration comes from files and the environment only, and a stray argument
/// (most likely a deploy file's command meant for `tally-worker`) is refused.
#[derive(Parser)]
#[command(
    name = "tally-api",
    version,
    about = "The HTTP API of tally: validates transactions, publishes them to the shard queues \
             and answers.",
    after_help = "Without a subcommand it serves. Configure it with the settings files and \
                  TALLY_* environment variables (TALLY_CONFIG, TALLY_PROFILE, e.g. \
                  TALLY_API__PORT), like every tally process. Stops gracefully on SIGTERM or \
                  Ctrl-C."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the API's OpenAPI document (what `make openapi` writes to openapi.json) and exit.
    Openapi,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(Command::Openapi) = Cli::parse().command {
        print!("{}", tally_api::openapi::to_json());
        return Ok(());
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
