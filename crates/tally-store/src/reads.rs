//! Reads served by the API: account balances, one transaction (with the conflicting reuses of
//! its id), and the keyset-paged debug dumps. None of them writes; the worker is the only
//! writer of ledger state.

use chrono::{DateTime, Utc};
use deadpool_postgres::{Client, Pool};
use rust_decimal::Decimal;
use tally_core::{Kind, OutcomeStatus, Reason};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::code;
use crate::StoreError;

/// Balance of one account as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountView {
    pub account_id: String,
    pub balance: Decimal,
    pub available: Decimal,
    pub held: Decimal,
    /// How many commands the ledger decided for the account (`accounts.version`): the `seq` of
    /// its latest record; 0 for an account never used.
    pub seq: i64,
}

/// Balance, available and held of an account; zeros for an account never used. `held` counts
/// only holds that are open and not yet past their TTL, so an expired hold stops counting at
/// once, even before the worker's sweep records the expiry.
pub async fn account(pool: &Pool, account_id: &str) -> Result<AccountView, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT a.balance, \
                    COALESCE((SELECT sum(h.amount) FROM holds h \
                              WHERE h.account_id = a.id AND h.status = 'open' \
                                AND h.expires_at > now()), 0), \
                    a.version \
             FROM accounts a WHERE a.id = $1",
        )
        .await?;
    let (balance, held, seq) = match client.query_opt(&stmt, &[&account_id]).await? {
        Some(row) => (
            row.get::<_, Decimal>(0),
            row.get::<_, Decimal>(1),
            row.get(2),
        ),
        None => (Decimal::ZERO, Decimal::ZERO, 0),
    };
    Ok(AccountView {
        account_id: account_id.to_string(),
        balance,
        available: balance - held,
        held,
        seq,
    })
}

/// A recorded transaction (any status).
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionRecord {
    pub id: String,
    pub account_id: String,
    pub kind: Kind,
    pub amount: Decimal,
    pub status: OutcomeStatus,
    pub reason: Option<Reason>,
    pub hold_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub fingerprint: String,
    pub seq: i64,
    pub balance_after: Decimal,
    pub occurred_at: DateTime<Utc>,
    pub accepted_at: DateTime<Utc>,
    pub applied_at: DateTime<Utc>,
    pub shard: i32,
    /// The name of the API key that posted it.
    pub key_name: Option<String>,
}

/// The columns [`TransactionRecord::from_row`] reads, in its order: a macro, so that fixed
/// statements are built from it at compile time (`concat!`), not formatted per call.
macro_rules! tx_columns {
    () => {
        "id, account_id, kind, amount, status, reason, hold_id, request_id, \
         fingerprint, seq, balance_after, occurred_at, accepted_at, applied_at, shard, key_name"
    };
}

/// [`tx_columns!`] as a value, for statements that vary (history filters).
pub(crate) const TX_COLUMNS: &str = tx_columns!();

/// One record by id: on the API's path of every write (pre-check, polls, last look).
const TX_BY_ID: &str = concat!("SELECT ", tx_columns!(), " FROM transactions WHERE id = $1");

/// The codes of a `transactions` row whose columns start like [`TX_COLUMNS`] (`kind` 2,
/// `status` 4, `reason` 5); fails on a code this build does not know.
pub(crate) fn record_codes(r: &Row) -> Result<(Kind, OutcomeStatus, Option<Reason>), StoreError> {
    let reason: Option<String> = r.get(5);
    Ok((
        code("transactions.kind", r.get(2), Kind::parse)?,
        code("transactions.status", r.get(4), OutcomeStatus::parse)?,
        reason
            .map(|text| code("transactions.reason", text, Reason::parse))
            .transpose()?,
    ))
}

impl TransactionRecord {
    /// Maps a row of [`TX_COLUMNS`]; fails on a code this build does not know.
    pub(crate) fn from_row(r: &Row) -> Result<Self, StoreError> {
        let (kind, status, reason) = record_codes(r)?;
        Ok(Self {
            id: r.get(0),
            account_id: r.get(1),
            kind,
            amount: r.get(3),
            status,
            reason,
            hold_id: r.get(6),
            request_id: r.get(7),
            fingerprint: r.get(8),
            seq: r.get(9),
            balance_after: r.get(10),
            occurred_at: r.get(11),
            accepted_at: r.get(12),
            applied_at: r.get(13),
            shard: r.get(14),
            key_name: r.get(15),
        })
    }
}

/// The recorded transaction with this id, if the worker has decided it.
pub async fn transaction(pool: &Pool, id: &str) -> Result<Option<TransactionRecord>, StoreError> {
    record_by_id(&pool.get().await?, id).await
}

async fn record_by_id(client: &Client, id: &str) -> Result<Option<TransactionRecord>, StoreError> {
    let stmt = client.prepare_cached(TX_BY_ID).await?;
    client
        .query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(TransactionRecord::from_row)
        .transpose()
}

/// A command that reused a recorded id with another payload (`id_conflicts`, V6): accepted
/// by the API while the first command was still queued, then not applied by the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct IdConflict {
    pub kind: Kind,
    pub account_id: String,
    pub amount: Decimal,
    pub accepted_at: DateTime<Utc>,
    /// When the worker found it (the database's clock).
    pub detected_at: DateTime<Utc>,
}

/// The recorded transaction with this id and the conflicting reuses of the id (in the order
/// they were detected), if the worker has decided it. One connection, both reads.
pub async fn transaction_with_conflicts(
    pool: &Pool,
    id: &str,
) -> Result<Option<(TransactionRecord, Vec<IdConflict>)>, StoreError> {
    let client = pool.get().await?;
    let Some(record) = record_by_id(&client, id).await? else {
        return Ok(None);
    };
    let conflicts = client
        .prepare_cached(
            "SELECT kind, account_id, amount, accepted_at, detected_at FROM id_conflicts \
             WHERE id = $1 ORDER BY detected_at, accepted_at, fingerprint",
        )
        .await?;
    let conflicts = client
        .query(&conflicts, &[&id])
        .await?
        .iter()
        .map(|r| {
            Ok(IdConflict {
                kind: code("id_conflicts.kind", r.get(0), Kind::parse)?,
                account_id: r.get(1),
                amount: r.get(2),
                accepted_at: r.get(3),
                detected_at: r.get(4),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Some((record, conflicts)))
}

/// How many holds are open, ledger-wide (`/metrics`). The partial indexes on open holds
/// (V1__ledger.sql) let it read only the open ones, not the whole table.
pub async fn open_holds(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT count(*) FROM holds WHERE status = 'open'")
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

/// Debug dump: transactions ordered by id, strictly after `after`.
pub async fn transactions_page(
    pool: &Pool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<TransactionRecord>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {TX_COLUMNS} FROM transactions WHERE $1::text IS NULL OR id > $1 \
                 ORDER BY id LIMIT $2"
            ),
            &[&after, &limit],
        )
        .await?;
    rows.iter().map(TransactionRecord::from_row).collect()
}

/// An account row as stored (debug dump).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRow {
    pub account_id: String,
    pub user_id: Option<String>,
    pub balance: Decimal,
    pub held: Decimal,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Its own withdraw policy (`always_apply` / `reject_overdraft`); `None`: the global one.
    pub withdraw_policy: Option<String>,
    pub overdraft_limit: Decimal,
    pub policy_version: i64,
}

/// Debug dump: accounts ordered by id, strictly after `after`.
pub async fn accounts_page(
    pool: &Pool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<AccountRow>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, user_id, balance, held, version, created_at, updated_at, \
                 withdraw_policy, overdraft_limit, policy_version FROM accounts \
             WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2",
            &[&after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AccountRow {
            account_id: r.get(0),
            user_id: r.get(1),
            balance: r.get(2),
            held: r.get(3),
            version: r.get(4),
            created_at: r.get(5),
            updated_at: r.get(6),
            withdraw_policy: r.get(7),
            overdraft_limit: r.get(8),
            policy_version: r.get(9),
        })
        .collect())
}
