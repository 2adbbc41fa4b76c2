//! Shard leases: which worker owns which shard, for how long, under which epoch (see
//! `migrations/V4__shard_leases.sql`). Times are the database's `now()`, so workers never
//! compare clocks. The epoch check inside every batch transaction is the fence; it also gives
//! the batch its time, from the same clock.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use deadpool_postgres::Transaction;
use std::time::Duration;

use crate::StoreError;

/// A worker's claim on one shard: what its batches must prove to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: u16,
    pub owner: String,
    pub epoch: i64,
}

fn interval(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Creates the lease rows of shards 0..K (idempotent).
pub async fn init(pool: &Pool, shard_count: u16) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO shard_leases (shard) SELECT generate_series(0, $1::int - 1) \
             ON CONFLICT (shard) DO NOTHING",
            &[&i32::from(shard_count)],
        )
        .await?;
    Ok(())
}

/// Records that `worker` is alive, forgets workers silent for longer than `ttl`, and returns
/// how many workers are alive.
pub async fn heartbeat(pool: &Pool, worker: &str, ttl: Duration) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    let ttl = interval(ttl);
    client
        .execute(
            "INSERT INTO workers (id, heartbeat_at) VALUES ($1, now()) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            &[&worker],
        )
        .await?;
    client
        .execute(
            "DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $1)",
            &[&ttl],
        )
        .await?;
    Ok(client
        .query_one("SELECT count(*) FROM workers", &[])
        .await?
        .get(0))
}

/// Extends the leases `worker` still holds on `shards` (the ones it runs); returns those
/// (lost ones are missing). A lease the worker holds but no longer runs, because its release
/// failed during an outage, is deliberately not extended: it expires and another worker takes
/// the shard. Extending it would orphan the shard, held by a worker that does not consume it.
pub async fn renew(
    pool: &Pool,
    worker: &str,
    shards: &[u16],
    ttl: Duration,
) -> Result<Vec<Lease>, StoreError> {
    let shards: Vec<i32> = shards.iter().map(|&s| i32::from(s)).collect();
    let client = pool.get().await?;
    let rows = client
        .query(
            "UPDATE shard_leases SET expires_at = now() + make_interval(secs => $2) \
             WHERE owner = $1 AND shard = ANY($3) AND expires_at > now() \
             RETURNING shard, epoch",
            &[&worker, &interval(ttl), &shards],
        )
        .await?;
    Ok(leases_of(&rows, worker))
}

/// Leases of `worker` from `(shard, epoch)` rows.
fn leases_of(rows: &[tokio_postgres::Row], worker: &str) -> Vec<Lease> {
    rows.iter()
        .map(|r| Lease {
            shard: u16::try_from(r.get::<_, i32>(0)).unwrap_or(u16::MAX),
            owner: worker.to_string(),
            epoch: r.get(1),
        })
        .collect()
}

/// Takes up to `n` shards that nobody holds (free or expired), lowest first, with a new epoch.
pub async fn acquire(
    pool: &Pool,
    worker: &str,
    n: i64,
    ttl: Duration,
) -> Result<Vec<Lease>, StoreError> {
    if n <= 0 {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let rows = client
        .query(
            "UPDATE shard_leases l SET owner = $1, epoch = l.epoch + 1, \
                 expires_at = now() + make_interval(secs => $3) \
             FROM (SELECT shard FROM shard_leases \
                   WHERE owner IS NULL OR expires_at <= now() \
                   ORDER BY shard LIMIT $2 FOR UPDATE SKIP LOCKED) free \
             WHERE l.shard = free.shard RETURNING l.shard, l.epoch",
            &[&worker, &n, &interval(ttl)],
        )
        .await?;
    Ok(leases_of(&rows, worker))
}

/// Gives a shard up (after its consumer stopped), so another worker can take it at once.
pub async fn release(pool: &Pool, lease: &Lease) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE shard_leases SET owner = NULL, expires_at = '-infinity' \
             WHERE shard = $1 AND owner = $2 AND epoch = $3",
            &[&i32::from(lease.shard), &lease.owner, &lease.epoch],
        )
        .await?;
    Ok(())
}

/// Removes a stopping worker from the live set, so the others rebalance without waiting.
pub async fn leave(pool: &Pool, worker: &str) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute("DELETE FROM workers WHERE id = $1", &[&worker])
        .await?;
    Ok(())
}

/// The fence, first statement of every batch transaction: locks the lease rows of the
/// batch's shards (a takeover waits for this transaction) and fails unless every one of
/// `leases` is still the current one. A batch may span several shards of one worker: one
/// statement fences them all.
///
/// The lock is `FOR KEY SHARE`, the weakest that still keeps a takeover out: [`acquire`]
/// picks its rows `FOR UPDATE`, which conflicts with it, while the owner's own [`renew`]
/// (an `UPDATE` of `expires_at` only, so `FOR NO KEY UPDATE`) does not. With `FOR SHARE`
/// every lease tick queued behind the batch in flight on each of the worker's shards, and
/// the next batches of those shards queued behind the tick.
/// Returns the database's clock at that moment: the batch's one time for every decision
/// (deadlines, hold expiry, new holds' TTL) and for `applied_at`, so no decision depends on
/// the worker host's clock.
pub async fn fence(tx: &Transaction<'_>, leases: &[&Lease]) -> Result<DateTime<Utc>, StoreError> {
    let statement = tx
        .prepare_cached(
            "SELECT shard, owner, epoch, expires_at > now(), clock_timestamp() \
             FROM shard_leases WHERE shard = ANY($1) FOR KEY SHARE",
        )
        .await?;
    let shards: Vec<i32> = leases.iter().map(|l| i32::from(l.shard)).collect();
    let rows = tx.query(&statement, &[&shards]).await?;
    let mut now = None;
    for lease in leases {
        let current = rows
            .iter()
            .find(|r| r.get::<_, i32>(0) == i32::from(lease.shard));
        match current {
            Some(r)
                if r.get::<_, Option<String>>(1).as_deref() == Some(lease.owner.as_str())
                    && r.get::<_, i64>(2) == lease.epoch
                    && r.get::<_, bool>(3) =>
            {
                now = now.max(Some(r.get::<_, DateTime<Utc>>(4)));
            }
            _ => return Err(StoreError::Fenced { shard: lease.shard }),
        }
    }
    // Callers fence at least one lease; with none there is no shard to write for.
    now.ok_or(StoreError::Fenced { shard: u16::MAX })
}

/// Current owners, for operators and tests: (shard, owner, epoch).
pub async fn owners(pool: &Pool) -> Result<Vec<(u16, Option<String>, i64)>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT shard, CASE WHEN expires_at > now() THEN owner END, epoch \
             FROM shard_leases ORDER BY shard",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                u16::try_from(r.get::<_, i32>(0)).unwrap_or(u16::MAX),
                r.get(1),
                r.get(2),
            )
        })
        .collect())
}
