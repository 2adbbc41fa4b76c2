//! Balance webhooks: registrations (written by the API) and the delivery queue (rows inserted
//! by the worker's batch, see [`crate::batch`], and sent by the workers' senders).
//!
//! Invariant: a delivery row is only ever changed by the claim that holds its lease (`claim`),
//! so a sender whose lease expired and was taken over cannot overwrite the newer outcome. See
//! `migrations/V5__webhooks.sql` for the life of a row.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use std::time::Duration;
use uuid::Uuid;

use crate::StoreError;

/// A registration as the API shows it: never the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub account_id: String,
    pub url: String,
    pub delay_ms: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Creates or replaces the account's webhook.
pub async fn put(
    pool: &Pool,
    account_id: &str,
    url: &str,
    secret: &str,
    delay_ms: i32,
) -> Result<Webhook, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "INSERT INTO webhooks (account_id, url, secret, delay_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id) DO UPDATE SET url = EXCLUDED.url, \
                 secret = EXCLUDED.secret, delay_ms = EXCLUDED.delay_ms, updated_at = now() \
             RETURNING account_id, url, delay_ms, created_at, updated_at",
            &[&account_id, &url, &secret, &delay_ms],
        )
        .await?;
    Ok(Webhook {
        account_id: row.get(0),
        url: row.get(1),
        delay_ms: row.get(2),
        created_at: row.get(3),
        updated_at: row.get(4),
    })
}

/// Removes the account's webhook; false if there was none. Deliveries still pending are
/// recorded as failed by the sender that next claims them (the registration is gone).
pub async fn delete(pool: &Pool, account_id: &str) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let deleted = client
        .execute("DELETE FROM webhooks WHERE account_id = $1", &[&account_id])
        .await?;
    Ok(deleted == 1)
}

/// A delivery as operators see it (`GET /debug/webhooks`).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub account_id: String,
    pub balance: Decimal,
    pub available: Decimal,
    pub version: i64,
    pub changed_at: DateTime<Utc>,
    pub status: String,
    pub attempts: i32,
    pub due_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    /// How the last attempt failed, as classified by the sender (see [`Outcome`]).
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Deliveries ordered by id (creation order), strictly after `after`.
pub async fn page(
    pool: &Pool,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, account_id, balance, available, version, changed_at, status, attempts, \
                    due_at, last_status, last_error, created_at, finished_at \
             FROM webhook_deliveries WHERE $1::int8 IS NULL OR id > $1 ORDER BY id LIMIT $2",
            &[&after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Delivery {
            id: r.get(0),
            account_id: r.get(1),
            balance: r.get(2),
            available: r.get(3),
            version: r.get(4),
            changed_at: r.get(5),
            status: r.get(6),
            attempts: r.get(7),
            due_at: r.get(8),
            last_status: r.get(9),
            last_error: r.get(10),
            created_at: r.get(11),
            finished_at: r.get(12),
        })
        .collect())
}

/// A due delivery a sender holds under a lease.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub claim: Uuid,
    pub account_id: String,
    pub balance: Decimal,
    pub available: Decimal,
    pub version: i64,
    pub changed_at: DateTime<Utc>,
    /// Attempts made before this one.
    pub attempts: i32,
    /// `(url, secret)`; `None` when the webhook was deleted since the change.
    pub target: Option<(String, String)>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A delivery's receiver: the authority (`host[:port]`) of its webhook's URL, lower-cased;
/// NULL when the webhook is gone. Registrations never carry credentials, so that is the host
/// and port a sender connects to.
const RECEIVER: &str = "lower(substring(w.url from '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)'))";

/// Claims up to `limit` due deliveries for `lease` (`SKIP LOCKED`: senders of several workers
/// share the queue without waiting on each other). A row whose lease expired is due again.
///
/// A receiver never gets more than `per_receiver` deliveries in flight (counting the live
/// leases of every sender): its due deliveries beyond that are left for later, and those of
/// other receivers are claimed instead, so one slow or hanging receiver cannot take every
/// sending slot. (Two senders claiming at the same moment may each see the same count; the
/// bound is then exceeded by at most one claim's share, never without limit.)
pub async fn claim(
    pool: &Pool,
    limit: i64,
    lease: Duration,
    per_receiver: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let client = pool.get().await?;
    let claim = Uuid::new_v4();
    // Ranked per receiver in due order, then cut at what the receiver has left; the window
    // function cannot share a query level with FOR UPDATE, hence the nesting.
    let statement = format!(
        "WITH busy AS ( \
             SELECT {RECEIVER} AS receiver, count(*) AS sending \
             FROM webhook_deliveries f JOIN webhooks w ON w.account_id = f.account_id \
             WHERE f.status = 'pending' AND f.locked_until > now() GROUP BY 1), \
         due AS ( \
             SELECT p.id, p.due_at, {RECEIVER} AS receiver, \
                    row_number() OVER (PARTITION BY {RECEIVER} ORDER BY p.due_at, p.id) AS n \
             FROM webhook_deliveries p LEFT JOIN webhooks w ON w.account_id = p.account_id \
             WHERE p.status = 'pending' AND p.due_at <= now() \
               AND (p.locked_until IS NULL OR p.locked_until <= now())), \
         allowed AS ( \
             SELECT due.id FROM due LEFT JOIN busy ON busy.receiver = due.receiver \
             WHERE due.receiver IS NULL OR due.n + COALESCE(busy.sending, 0) <= $4 \
             ORDER BY due.due_at LIMIT $2) \
         UPDATE webhook_deliveries d \
         SET locked_until = now() + $3::int8 * interval '1 millisecond', claim = $1 \
         FROM (SELECT id, account_id FROM webhook_deliveries \
               WHERE id IN (SELECT id FROM allowed) \
               ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED) c \
              LEFT JOIN webhooks w ON w.account_id = c.account_id \
         WHERE d.id = c.id \
         RETURNING d.id, d.account_id, d.balance, d.available, d.version, d.changed_at, \
                   d.attempts, w.url, w.secret"
    );
    let rows = client
        .query(
            statement.as_str(),
            &[&claim, &limit, &millis(lease), &per_receiver],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Claimed {
            id: r.get(0),
            claim,
            account_id: r.get(1),
            balance: r.get(2),
            available: r.get(3),
            version: r.get(4),
            changed_at: r.get(5),
            attempts: r.get(6),
            target: r
                .get::<_, Option<String>>(7)
                .zip(r.get::<_, Option<String>>(8)),
        })
        .collect())
}

/// What one attempt came to. `error` is what `GET /debug/webhooks` shows as `lastError`: a
/// short classification chosen by the sender, never text from the receiver.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Sent { status: i32 },
    /// Try again after `retry_in`.
    Retry {
        status: Option<i32>,
        error: &'static str,
        retry_in: Duration,
    },
    /// No more attempts: recorded as failed with the error.
    Failed {
        status: Option<i32>,
        error: &'static str,
    },
}

/// Records the outcome of attempt number `attempt` of a claimed delivery and drops its lease;
/// false if the lease had been taken over meanwhile (nothing recorded).
pub async fn record(
    pool: &Pool,
    claimed: &Claimed,
    attempt: i32,
    outcome: &Outcome,
) -> Result<bool, StoreError> {
    let (status, http, error, retry_ms): (&str, Option<i32>, Option<&str>, i64) = match outcome {
        Outcome::Sent { status } => ("sent", Some(*status), None, 0),
        Outcome::Retry {
            status,
            error,
            retry_in,
        } => ("pending", *status, Some(*error), millis(*retry_in)),
        Outcome::Failed { status, error } => ("failed", *status, Some(*error), 0),
    };
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE webhook_deliveries SET status = $3, attempts = $4, last_status = $5, \
                 last_error = $6, locked_until = NULL, claim = NULL, \
                 due_at = CASE WHEN $3 = 'pending' \
                          THEN now() + $7::int8 * interval '1 millisecond' ELSE due_at END, \
                 finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END \
             WHERE id = $1 AND claim = $2",
            &[
                &claimed.id,
                &claimed.claim,
                &status,
                &attempt,
                &http,
                &error,
                &retry_ms,
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// Deletes up to `limit` deliveries that were sent or superseded more than `retention` ago,
/// oldest first; returns how many. Failed deliveries are kept (the operator's record of a
/// receiver that never answered) and pending ones are still to be sent. Rows another sender's
/// prune holds are skipped, so concurrent prunes never wait for each other.
pub async fn prune(pool: &Pool, retention: Duration, limit: i64) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM webhook_deliveries WHERE id IN ( \
                 SELECT id FROM webhook_deliveries \
                 WHERE status IN ('sent', 'superseded') \
                   AND finished_at < now() - make_interval(secs => $1) \
                 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&retention.as_secs_f64(), &limit],
        )
        .await?)
}

/// How long until the next pending delivery is due (its `due_at`, or the end of its lease if
/// a sender holds it): zero if one is due now, `None` if nothing is pending. A sender sleeps
/// until then (delays and retry back-offs are known times, not something to poll for); new
/// deliveries wake it through `LISTEN` ([`crate::notify::WEBHOOK_DELIVERIES`]).
pub async fn next_due(pool: &Pool) -> Result<Option<Duration>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            // NULL when nothing is pending (not GREATEST(0, …): it would turn NULL into 0);
            // a past time is negative and clamped to zero below.
            "SELECT EXTRACT(EPOCH FROM \
                 min(GREATEST(due_at, COALESCE(locked_until, due_at))) - now())::float8 \
             FROM webhook_deliveries WHERE status = 'pending'",
            &[],
        )
        .await?;
    Ok(row
        .get::<_, Option<f64>>(0)
        .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 86_400.0))))
}
