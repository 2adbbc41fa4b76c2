//! Building and running the API: settings → pool + publisher → bound listener → server.
//! Tests call the same [`Application::build`] with port 0.

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use tally_bus::publisher::PublisherConfig;
use tally_bus::{Endpoints, Publisher, Topology};
use tally_settings::Settings;
use tally_store::clock::DbClock;
use tokio_util::sync::CancellationToken;
use utoipa_actix_web::AppExt;

use crate::admission::Admission;
use crate::auth::{authenticate, Keys};
use crate::observe::observe;
use crate::routes;
use crate::routes::jobs::Downloads;
use crate::state::AppState;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
    #[error("binding the HTTP listener: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "refusing to serve /debug/* without a token on {0}: set debug.token \
         (TALLY_DEBUG__TOKEN), turn debug.enabled off, or bind a loopback address"
    )]
    OpenDebug(String),
}

/// Warns when auth is off. Debug routes dump every table: with auth on they need an admin key;
/// with auth off and no
/// debug token they may only listen on loopback, where nothing but this machine reaches them
/// (SECURITY.md).
fn check_exposure(settings: &Settings) -> Result<(), StartError> {
    if settings.auth.enabled {
        if settings.debug.enabled && !settings.debug.token.expose().is_empty() {
            tracing::warn!(
                "debug.token is ignored while auth is on: /debug/* needs an admin API key"
            );
        }
        return Ok(());
    }
    tracing::warn!(
        "authentication is OFF (auth.enabled = false): anyone who can reach this API can post \
         transactions and read every account. Only run it so on a trusted network."
    );
    let loopback = settings.api.host == "localhost"
        || settings
            .api
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if settings.debug.enabled && settings.debug.token.expose().is_empty() && !loopback {
        return Err(StartError::OpenDebug(settings.api.host.clone()));
    }
    Ok(())
}

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    state: AppState,
    /// Stops the broker connection when dropped: only after the server has finished its
    /// in-flight requests, which may still need to publish (a withdraw_request's void).
    _bus: tokio_util::sync::DropGuard,
}

impl Application {
    /// Connects the pool, checks the recorded shard count, starts the broker supervisor and
    /// binds the listener. Serving starts with [`Application::run_until_stopped`].
    pub async fn build(
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        check_exposure(&settings)?;
        tally_telemetry::metrics::init_api();
        let pool = tally_store::connect_service(&settings).await?;
        let topology = Topology::from_settings(&settings);
        let bus = CancellationToken::new();
        let publisher = Publisher::start(
            PublisherConfig {
                endpoints: Endpoints::from_settings(&settings.broker),
                name: format!("tally-api-{}", std::process::id()),
                topology,
                connect_timeout: Duration::from_millis(settings.broker.connect_timeout_ms),
                confirm_timeout: Duration::from_millis(settings.api.publish_timeout_ms),
            },
            bus.clone(),
        );
        let clock = DbClock::start(
            pool.clone(),
            Duration::from_millis(settings.ledger.clock_check_ms),
            Duration::from_millis(settings.ledger.max_clock_skew_ms),
            shutdown.clone(),
        )
        .await;
        let shutdown_keys = shutdown.clone();
        let admission = Admission::start(publisher.clone(), settings.admission.clone(), shutdown);
        let downloads = Downloads::new(&settings)?;
        let keys = Keys::start(pool.clone(), &settings.auth, shutdown_keys).await?;
        let state = AppState {
            clock,
            admission,
            downloads,
            keys,
            pool,
            publisher,
            amount_rules: settings.ledger.amount_rules(),
            settings: Arc::new(settings),
        };

        let listener =
            TcpListener::bind((state.settings.api.host.as_str(), state.settings.api.port))?;
        let port = listener.local_addr()?.port();
        let threads = match state.settings.api.threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let app_state = state.clone();
        let debug = state.settings.debug.enabled;
        let server = HttpServer::new(move || {
            let (app, registered) = App::new()
                .into_utoipa_app()
                .configure(|cfg| routes::configure(cfg, debug))
                .split_for_parts();
            // The last `wrap` runs first: observe gives every answer, refusals included, its
            // request id and metrics.
            app.wrap(from_fn(authenticate))
                .wrap(from_fn(observe))
                .app_data(web::Data::new(app_state.clone()))
                .app_data(web::Data::new(routes::Allowed::of(&registered)))
        })
        .workers(threads)
        // actix answers 408 when a request's head has not arrived within this time (5 s by
        // default). Behind nginx the head comes from a local proxy, so a late head means our
        // own host is starved (seen under chaos faults), not a slow client: give it room
        // rather than answer a status the answer contract does not describe.
        .client_request_timeout(std::time::Duration::from_secs(10))
        // Shutdown is driven by our CancellationToken (SIGTERM and tests alike).
        .disable_signals()
        .shutdown_timeout(30)
        .listen(listener)?
        .run();
        Ok(Self {
            port,
            server,
            state,
            _bus: bus.drop_guard(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn publisher(&self) -> &Publisher {
        &self.state.publisher
    }

    /// What the handlers share (tests call [`crate::submit::submit`] with it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets in-flight requests
    /// finish (graceful), then closes the broker connection and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle = self.server.handle();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        self.server.await
    }
}
