//! The connection pool: built once per process, with every wait bounded so that a database
//! outage turns into a fast error (503 in the API, back-off in the worker), never a hang.
//! Connections are encrypted when `database.url` asks for it ([`crate::tls`]).
//!
//! The worker's pool also bounds its sessions on the server ([`connect_worker`]): a worker
//! that stalls inside a batch transaction (SIGSTOP, a frozen VM) holds its shard's lease row
//! locked, and takers skip locked rows, so without a server-side limit its shards would stay
//! frozen until it resumed.
//!
//! Failover: a URL naming several hosts with `target_session_attrs=read-write` (libpq's
//! multi-host form) reaches whichever server is the primary — but tokio-postgres checks that
//! only when it connects. A pooled connection to a server that was demoted to a standby
//! would keep answering reads and fail every write (SQLSTATE 25006). So with
//! `target_session_attrs=read-write`, every checkout first asks the server whether it still
//! takes writes ([`WRITABLE`]) and drops the connection when it does not; a connection the
//! old primary closed is dropped by the usual closed check. The API and the workers then
//! reach the new primary on their next checkout, with no restart.

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tally_settings::{DatabaseSettings, SessionBounds, Settings};
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::tls::Tls;
use crate::StoreError;

/// Builds the pool. Connections are opened lazily, so this succeeds while the database is down.
pub fn connect(settings: &DatabaseSettings) -> Result<Pool, StoreError> {
    build(settings, None)
}

/// Like [`connect`], with every session bounded by `bounds` (see [`SessionBounds`]).
pub fn connect_bounded(
    settings: &DatabaseSettings,
    bounds: &SessionBounds,
) -> Result<Pool, StoreError> {
    build(settings, Some(bounds))
}

fn build(settings: &DatabaseSettings, bounds: Option<&SessionBounds>) -> Result<Pool, StoreError> {
    let (mut pg, tls) = crate::tls::parse(settings.url.expose())?;
    if let Some(bounds) = bounds {
        bound_sessions(&mut pg, bounds);
    }
    let bound = Duration::from_millis(settings.timeout_ms);
    let timeout = Some(bound);
    // Hosts are tried in order, each with this bound: without one, a first host that is gone
    // (a dead machine does not refuse, it stays silent) would use up the whole create
    // timeout and the next host would never be tried.
    let hosts = u32::try_from(pg.get_hosts().len())
        .unwrap_or(u32::MAX)
        .max(1);
    if hosts > 1 && pg.get_connect_timeout().is_none() {
        pg.connect_timeout(bound / hosts);
    }
    let primary_only = pg.get_target_session_attrs() == TargetSessionAttrs::ReadWrite;
    // Fast recycling skips a test query per checkout; a broken connection surfaces as a
    // retryable error on its first use instead.
    let recycling = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        Tls::Plain => Manager::from_config(pg, NoTls, recycling),
        Tls::VerifyFull(connector) => Manager::from_config(pg, connector, recycling),
    };
    let mut builder = Pool::builder(manager);
    if primary_only {
        builder = builder.post_recycle(Hook::async_fn(move |client, _| {
            Box::pin(async move { still_writable(client, bound).await })
        }));
    }
    builder
        .max_size(settings.pool_size)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
}

/// Whether the server of a connection takes writes: false on a standby (in recovery, every
/// transaction is read-only) and on a server set read-only. One round trip, no prepare.
pub const WRITABLE: &str =
    "SELECT NOT (pg_is_in_recovery() OR current_setting('transaction_read_only')::bool)";

/// The checkout check of a `target_session_attrs=read-write` pool: a connection whose server
/// no longer takes writes (demoted to a standby by a failover) is dropped, and the pool opens
/// a new one, which goes to the primary. Bounded by `within`: a server that hangs fails the
/// check instead of the checkout.
async fn still_writable(
    client: &tokio_postgres::Client,
    within: Duration,
) -> Result<(), HookError> {
    let answer = tokio::time::timeout(within, client.simple_query(WRITABLE))
        .await
        .map_err(|_| HookError::message("the writable check did not answer in time"))?
        .map_err(HookError::Backend)?;
    let writable = answer
        .iter()
        .any(|message| matches!(message, SimpleQueryMessage::Row(row) if row.get(0) == Some("t")));
    if writable {
        Ok(())
    } else {
        tracing::warn!(
            "dropping a pooled connection to a server that no longer takes writes (a standby now?)"
        );
        Err(HookError::message("the server no longer takes writes"))
    }
}

/// Server-side limits as session parameters of the startup packet (no extra round trip, and
/// they hold for every connection the pool ever opens), plus TCP keepalives on both ends: the
/// server's find a client host that vanished, ours a server that did (a query waiting on a
/// dead peer would otherwise hang with no statement timeout to end it).
fn bound_sessions(pg: &mut tokio_postgres::Config, bounds: &SessionBounds) {
    let keepalive = bounds.heartbeat.as_secs().max(1);
    let limits = format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={} \
         -c tcp_keepalives_idle={keepalive} -c tcp_keepalives_interval={keepalive} \
         -c tcp_keepalives_count=3",
        bounds.statement_timeout.as_millis().max(1),
        bounds.idle_in_transaction.as_millis().max(1),
    );
    // Options given in the URL stay; ours come last, so they win on the same parameter.
    let options = match pg.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {limits}"),
        _ => limits,
    };
    pg.options(options)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(keepalive))
        .keepalives_interval(Duration::from_secs(keepalive))
        .keepalives_retries(3);
}

/// One round trip, for health checks.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    pool.get().await?.simple_query("SELECT 1").await?;
    Ok(())
}

/// How long a starting service waits for an unreachable database before giving up (a process
/// started during a PostgreSQL restart should come up, not exit).
const STARTUP_PATIENCE: Duration = Duration::from_secs(60);

/// The pool of a long-running service (API replica, worker): built, then checked that the
/// database records the same shard count as `ledger.shard_count` (publishing or consuming with
/// another K would mis-route accounts), waiting out a database that is still starting.
pub async fn connect_service(settings: &Settings) -> Result<Pool, StoreError> {
    let pool = connect(&settings.database)?;
    ready(pool, settings).await
}

/// [`connect_service`] for a worker: its sessions are bounded by
/// `worker.session_bounds()`, so a stalled worker gives its shards back.
pub async fn connect_worker(settings: &Settings) -> Result<Pool, StoreError> {
    let pool = connect_bounded(&settings.database, &settings.worker.session_bounds())?;
    ready(pool, settings).await
}

async fn ready(pool: Pool, settings: &Settings) -> Result<Pool, StoreError> {
    crate::meta::ensure_shard_count_patiently(&pool, settings.ledger.shard_count, STARTUP_PATIENCE)
        .await?;
    Ok(pool)
}
