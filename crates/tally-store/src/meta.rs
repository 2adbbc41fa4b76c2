//! Facts recorded once per ledger: the shard count K. The first process to start records its
//! K; every later process must agree or refuse to start.

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
    let mut backoff = Duration::from_millis(200);
    loop {
        match ensure_shard_count(pool, configured).await {
            Err(e) if e.is_retryable() && tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, retry_in = ?backoff, "database not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
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
