//! The connection pool: built once per process, with every wait bounded so that a database
//! outage turns into a fast error (503 in the API, back-off in the worker), never a hang.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tally_core::settings::{DatabaseSettings, Settings};
use tokio_postgres::NoTls;

use crate::StoreError;

/// Builds the pool. Connections are opened lazily, so this succeeds while the database is down.
pub fn connect(settings: &DatabaseSettings) -> Result<Pool, StoreError> {
    let pg: tokio_postgres::Config = settings
        .url
        .expose()
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
    let timeout = Some(Duration::from_millis(settings.timeout_ms));
    let manager = Manager::from_config(
        pg,
        NoTls,
        // Fast recycling skips a test query per checkout; a broken connection surfaces as a
        // retryable error on its first use instead.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.pool_size)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
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
    crate::meta::ensure_shard_count_patiently(&pool, settings.ledger.shard_count, STARTUP_PATIENCE)
        .await?;
    Ok(pool)
}
