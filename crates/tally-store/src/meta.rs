//! Facts recorded once per ledger: the shard count K. The first process to start records its
//! K; every later process must agree or refuse to start.

use deadpool_postgres::Pool;

use crate::StoreError;

/// Records `configured` as K if none is recorded yet, else checks it matches.
pub async fn ensure_shard_count(pool: &Pool, configured: u16) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO ledger_meta (key, value) VALUES ('shard_count', $1) \
             ON CONFLICT (key) DO NOTHING",
            &[&configured.to_string()],
        )
        .await?;
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
