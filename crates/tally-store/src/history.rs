//! Per-account history and largest-expense reads.
//!
//! History pages are keyset-paged on `seq`, the account's own order (1..version, written by
//! the single worker of its shard): newest first, a page continues strictly below the last
//! `seq` it showed. New transactions only ever get higher numbers, so paging never repeats or
//! skips a row while the account keeps moving. An expense is an applied withdraw; its time is
//! `occurred_at` (when the money left, as the client said).

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tally_core::Kind;
use tokio_postgres::types::ToSql;

use crate::reads::{TransactionRecord, TX_COLUMNS as COLUMNS};
use crate::users::OWNED_ACCOUNTS;
use crate::StoreError;

/// Optional filters of a history page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub kind: Option<Kind>,
    /// Inclusive bounds on `occurred_at`.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    /// Strictly below this `seq` (the cursor of the previous page); `None`: the newest.
    Below(Option<i64>),
    /// Skip this many rows from the newest (`page=` compatibility; costs the skipped rows).
    Offset(i64),
}

/// One page, newest first, and the `seq` to continue below when more rows match.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<TransactionRecord>,
    pub next: Option<i64>,
}

/// A page of `limit` rows of the account's history.
pub async fn page(
    pool: &Pool,
    account_id: &str,
    filter: &Filter,
    start: Start,
    limit: i64,
) -> Result<Page, StoreError> {
    let kind = filter.kind.map(Kind::as_str);
    let (below, offset) = match start {
        Start::Below(seq) => (seq, 0),
        Start::Offset(n) => (None, n),
    };
    // One row more than asked tells whether there is a next page.
    let fetch = limit + 1;
    // Only the predicates in use go into the SQL, so every variant gets an exact plan: an
    // index range scan on transactions_account_history from the cursor down.
    let mut sql = format!("SELECT {COLUMNS} FROM transactions WHERE account_id = $1");
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&account_id];
    if let Some(seq) = &below {
        params.push(seq);
        sql.push_str(&format!(" AND seq < ${}", params.len()));
    }
    if let Some(kind) = &kind {
        params.push(kind);
        sql.push_str(&format!(" AND kind = ${}", params.len()));
    }
    if let Some(from) = &filter.from {
        params.push(from);
        sql.push_str(&format!(" AND occurred_at >= ${}", params.len()));
    }
    if let Some(to) = &filter.to {
        params.push(to);
        sql.push_str(&format!(" AND occurred_at <= ${}", params.len()));
    }
    params.push(&fetch);
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", params.len()));
    if offset > 0 {
        params.push(&offset);
        sql.push_str(&format!(" OFFSET ${}", params.len()));
    }

    let client = pool.get().await?;
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &params).await?;
    let mut items = rows
        .iter()
        .map(TransactionRecord::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() as i64 > limit {
        items.truncate(usize::try_from(limit).unwrap_or(0));
        items.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(Page { items, next })
}

/// The account's applied withdraw with the largest amount whose `occurred_at` is in
/// `[from, to]`; ties go to the earliest, then to the smallest id.
pub async fn largest_expense_of_account(
    pool: &Pool,
    account_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Option<TransactionRecord>, StoreError> {
    largest_expense(pool, "account_id = $1", account_id, from, to).await
}

/// Like [`largest_expense_of_account`], over every account the user owns.
pub async fn largest_expense_of_user(
    pool: &Pool,
    user_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Option<TransactionRecord>, StoreError> {
    let scope = format!("account_id IN {OWNED_ACCOUNTS}");
    largest_expense(pool, &scope, user_id, from, to).await
}

async fn largest_expense(
    pool: &Pool,
    scope: &str,
    key: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Option<TransactionRecord>, StoreError> {
    let client = pool.get().await?;
    // The predicate repeats the partial index's (transactions_expenses) so it is usable.
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM transactions \
             WHERE {scope} AND kind = 'withdraw' AND status = 'applied' \
               AND occurred_at >= $2 AND occurred_at <= $3 \
             ORDER BY amount DESC, occurred_at, id LIMIT 1"
        ))
        .await?;
    client
        .query_opt(&stmt, &[&key, &from, &to])
        .await?
        .as_ref()
        .map(TransactionRecord::from_row)
        .transpose()
}
