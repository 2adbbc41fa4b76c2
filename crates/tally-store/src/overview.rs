//! What the operator console reads besides the debug dumps: each shard's lease with its
//! recent activity, the ledger's throughput and apply lag over the last minutes, and an
//! account's holds. Read-only, and bounded: every query reads a time window through the
//! `transactions (applied_at)` index, or one account's rows.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::StoreError;

/// One shard: its lease and what it committed in the last `window` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRow {
    pub shard: i32,
    /// The worker holding the lease; `None` when nobody ever took it.
    pub owner: Option<String>,
    pub epoch: i64,
    /// `None` while nobody ever took it.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The lease is held and not past its expiry (by the database's clock).
    pub live: bool,
    /// Commands decided in the window.
    pub decided: i64,
    /// Largest accepted → applied time of those commands, in milliseconds.
    pub lag_max_ms: Option<f64>,
    /// The newest decision in the window.
    pub last_applied_at: Option<DateTime<Utc>>,
}

/// Every shard's lease with its activity over the last `window_secs` seconds, by shard.
pub async fn shards(pool: &Pool, window_secs: i32) -> Result<Vec<ShardRow>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "WITH recent AS ( \
                 SELECT shard, count(*) AS decided, \
                        max(extract(epoch FROM applied_at - accepted_at) * 1000)::float8 AS lag, \
                        max(applied_at) AS last \
                 FROM transactions \
                 WHERE applied_at > now() - make_interval(secs => $1) GROUP BY shard) \
             SELECT l.shard, l.owner, l.epoch, \
                    CASE WHEN l.expires_at = '-infinity' THEN NULL ELSE l.expires_at END, \
                    l.owner IS NOT NULL AND l.expires_at > now(), \
                    COALESCE(r.decided, 0), r.lag, r.last \
             FROM shard_leases l LEFT JOIN recent r ON r.shard = l.shard ORDER BY l.shard",
            &[&f64::from(window_secs)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ShardRow {
            shard: r.get(0),
            owner: r.get(1),
            epoch: r.get(2),
            lease_expires_at: r.get(3),
            live: r.get(4),
            decided: r.get(5),
            lag_max_ms: r.get(6),
            last_applied_at: r.get(7),
        })
        .collect())
}

/// Decisions in one time bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Start of the bucket.
    pub at: DateTime<Utc>,
    /// Commands decided (applied, rejected, approved or denied) in it.
    pub decided: i64,
    /// Mean and largest accepted → applied time of those commands, in milliseconds.
    pub lag_avg_ms: Option<f64>,
    pub lag_max_ms: Option<f64>,
}

/// The last `minutes` minutes in buckets of `bucket_secs` seconds, oldest first, empty buckets
/// included (the newest one is still filling).
pub async fn throughput(
    pool: &Pool,
    minutes: i32,
    bucket_secs: i32,
) -> Result<Vec<Bucket>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "WITH b AS (SELECT make_interval(secs => $2) AS width), \
                  span AS (SELECT date_bin(b.width, now(), 'epoch') AS last, \
                                  date_bin(b.width, now() - make_interval(mins => $1), 'epoch') AS first \
                           FROM b), \
                  recent AS ( \
                      SELECT date_bin(b.width, applied_at, 'epoch') AS at, count(*) AS decided, \
                             avg(extract(epoch FROM applied_at - accepted_at) * 1000)::float8 AS lag_avg, \
                             max(extract(epoch FROM applied_at - accepted_at) * 1000)::float8 AS lag_max \
                      FROM transactions, b, span WHERE applied_at >= span.first GROUP BY 1) \
             SELECT s.at, COALESCE(r.decided, 0), r.lag_avg, r.lag_max \
             FROM span, b, generate_series(span.first, span.last, b.width) AS s(at) \
             LEFT JOIN recent r ON r.at = s.at ORDER BY s.at",
            &[&minutes, &f64::from(bucket_secs)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Bucket {
            at: r.get(0),
            decided: r.get(1),
            lag_avg_ms: r.get(2),
            lag_max_ms: r.get(3),
        })
        .collect())
}

/// One hold, whatever its status.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub id: Uuid,
    /// The withdraw_request that placed it.
    pub request_id: String,
    pub amount: Decimal,
    /// `open`, `captured`, `expired` or `released`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The withdraw that captured it.
    pub captured_by: Option<String>,
}

/// The newest `limit` holds of an account, newest first.
pub async fn holds(pool: &Pool, account_id: &str, limit: i64) -> Result<Vec<Hold>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, request_id, amount, status, created_at, expires_at, closed_at, captured_by \
             FROM holds WHERE account_id = $1 ORDER BY created_at DESC, id LIMIT $2",
            &[&account_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Hold {
            id: r.get(0),
            request_id: r.get(1),
            amount: r.get(2),
            status: r.get(3),
            created_at: r.get(4),
            expires_at: r.get(5),
            closed_at: r.get(6),
            captured_by: r.get(7),
        })
        .collect())
}
