//! Facts recorded once per ledger: the shard count K. The first process to start records its
//! K; every later process must agree or refuse to start.

use backon::{ExponentialBuilder, Retryable};
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_postgres::error::SqlState;

use crate::StoreError;

/// Like [`ensure_shard_count`], but waits out a database that is not reachable yet (a process
/// started while PostgreSQL restarts), retrying with back-off for up to `patience`. Errors that
/// retrying cannot fix (mismatch, not migrated) come back at once.
pub async fn ensure_shard_count_patiently(
    pool: &Pool,
    configured: u16,
    patience: Duration,
) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + patience;
    let schedule = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    (|| ensure_shard_count(pool, configured))
        .retry(schedule)
        .when(StoreError::is_retryable)
        // Give up rather than wait past the deadline.
        .adjust(|_, delay| delay.filter(|d| tokio::time::Instant::now() + *d < deadline))
        .notify(|e, retry_in| tracing::warn!(error = %e, ?retry_in, "database not reachable yet"))
        .await
}

/// Records `configured` as K if none is recorded yet, else checks it matches.
pub async fn ensure_shard_count(pool: &Pool, configured: u16) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO ledger_meta (key, value) VALUES ('shard_count', $1) \
             ON CONFLICT (key) DO NOTHING",
            &[&configured.to_string()],
        )
        .await
        .map_err(|e| match e.code() {
            Some(code) if *code == SqlState::UNDEFINED_TABLE => StoreError::NotMigrated,
            _ => StoreError::Db(e),
        })?;
    let row = client
        .query_one(
            "SELECT value FROM ledger_meta WHERE key = 'shard_count'",
            &[],
        )
        .await?;
    let recorded: String = row.get(0);
    if recorded == configured.to_string() {
        crate::leases::init(pool, configured).await
    } else {
        Err(StoreError::ShardCountMismatch {
            configured,
            recorded,
        })
    }
}
