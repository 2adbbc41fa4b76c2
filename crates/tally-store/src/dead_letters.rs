//! The dead-letter archive: messages the broker dead-lettered, kept for inspection and
//! re-publishing. Inserting is idempotent by id (see `migrations/V2__dead_letters.sql`).

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;

use crate::StoreError;

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    pub queue: String,
    pub routing_key: String,
    pub reason: String,
    pub detail: String,
    pub message_id: Option<String>,
    /// The message body as text (lossy for non-UTF-8 bytes).
    #[serde(serialize_with = "lossy_text")]
    pub body: Vec<u8>,
    pub dead_at: DateTime<Utc>,
    pub archived_at: DateTime<Utc>,
    pub republished_at: Option<DateTime<Utc>>,
}

fn lossy_text<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

/// Archives a dead letter; returns false if it was already archived.
pub async fn archive(pool: &Pool, letter: &DeadLetter) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let inserted = client
        .execute(
            "INSERT INTO dead_letters (id, queue, routing_key, reason, detail, message_id, body, \
                 dead_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            &[
                &letter.id,
                &letter.queue,
                &letter.routing_key,
                &letter.reason,
                &letter.detail,
                &letter.message_id,
                &letter.body,
                &letter.dead_at,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

const COLUMNS: &str = "id, queue, routing_key, reason, detail, message_id, body, dead_at, \
     archived_at, republished_at";

fn from_row(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        queue: r.get(1),
        routing_key: r.get(2),
        reason: r.get(3),
        detail: r.get(4),
        message_id: r.get(5),
        body: r.get(6),
        dead_at: r.get(7),
        archived_at: r.get(8),
        republished_at: r.get(9),
    }
}

/// Dead letters ordered by id, strictly after `after`.
pub async fn page(
    pool: &Pool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM dead_letters WHERE $1::text IS NULL OR id > $1 \
                 ORDER BY id LIMIT $2"
            ),
            &[&after, &limit],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// One dead letter by id, re-published or not.
pub async fn get(pool: &Pool, id: &str) -> Result<Option<DeadLetter>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Dead letters not yet re-published: all of them, or those among `ids`.
pub async fn pending(pool: &Pool, ids: Option<&[String]>) -> Result<Vec<DeadLetter>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM dead_letters WHERE republished_at IS NULL \
                 AND ($1::text[] IS NULL OR id = ANY($1)) ORDER BY dead_at"
            ),
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// The dead letters carrying `message_id` (the API sets it to the transaction id), oldest
/// death first: what `GET /transactions/{id}` tells of the id's dead-lettered copies.
pub async fn of_message(pool: &Pool, message_id: &str) -> Result<Vec<DeadLetter>, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE message_id = $1 ORDER BY dead_at, id"
        ))
        .await?;
    let rows = client.query(&stmt, &[&message_id]).await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Records that a dead letter was published again.
pub async fn mark_republished(pool: &Pool, id: &str) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE dead_letters SET republished_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(())
}

/// Dead letters waiting for an operator.
pub async fn pending_count(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE republished_at IS NULL",
            &[],
        )
        .await?
        .get(0))
}
