//! The two halves of a worker batch, both inside the caller's transaction: [`load`] reads the
//! state the batch's commands need (already-recorded ids, account rows, open holds) and
//! [`write`] stores what the worker decided (account rows, transaction rows, hold changes).
//!
//! Balance webhooks are scheduled here too, in the same transaction as the change they
//! report: a delivery exists iff its balance change committed, once per change.
//!
//! Each half is a fixed handful of statements whatever the batch size — `unnest` arrays, no
//! per-message round trip — and the statements of a half are pipelined on one connection.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use rust_decimal::Decimal;
use std::collections::HashMap;
use uuid::Uuid;

use crate::StoreError;

type Param<'a> = dyn tokio_postgres::types::ToSql + Sync + 'a;

/// A transaction id the ledger already decided: what dedupe and idempotent replies need.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub account_id: String,
    pub kind: String,
    pub amount: Decimal,
    pub status: String,
    pub reason: Option<String>,
    pub hold_id: Option<Uuid>,
    pub fingerprint: String,
    /// When the attempt that created the record was accepted: a void only undoes the
    /// approval of its own attempt, never the first answer of an earlier one.
    pub accepted_at: DateTime<Utc>,
}

/// An account as the batch sees and changes it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountState {
    pub id: String,
    pub user_id: Option<String>,
    pub balance: Decimal,
    /// Sum of open holds.
    pub held: Decimal,
    /// Number of commands recorded on the account; the last one's `seq`.
    pub version: i64,
}

impl AccountState {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            user_id: None,
            balance: Decimal::ZERO,
            held: Decimal::ZERO,
            version: 0,
        }
    }
}

/// An open hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub id: Uuid,
    pub account_id: String,
    pub request_id: String,
    pub amount: Decimal,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Everything a batch reads before deciding.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub recorded: HashMap<String, Recorded>,
    pub accounts: HashMap<String, AccountState>,
    /// Open holds of the batch's accounts, oldest first.
    pub holds: Vec<Hold>,
}

/// Loads the snapshot for `ids` on `accounts`, locking the account rows.
pub async fn load(
    tx: &Transaction<'_>,
    ids: &[&str],
    accounts: &[&str],
) -> Result<Snapshot, StoreError> {
    let by_id: [&Param<'_>; 1] = [&ids];
    let by_account: [&Param<'_>; 1] = [&accounts];
    // Cached statements: after the first batch, each query is one pipelined round trip.
    let (q_recorded, q_accounts, q_holds) = tokio::try_join!(
        tx.prepare_cached(
            "SELECT id, account_id, kind, amount, status, reason, hold_id, fingerprint, \
                    accepted_at FROM transactions WHERE id = ANY($1)"
        ),
        tx.prepare_cached(
            "SELECT id, user_id, balance, held, version FROM accounts WHERE id = ANY($1) \
             FOR UPDATE"
        ),
        tx.prepare_cached(
            "SELECT id, account_id, request_id, amount, created_at, expires_at FROM holds \
             WHERE account_id = ANY($1) AND status = 'open' ORDER BY created_at, id"
        ),
    )?;
    let (recorded, account_rows, hold_rows) = tokio::try_join!(
        tx.query(&q_recorded, &by_id),
        tx.query(&q_accounts, &by_account),
        tx.query(&q_holds, &by_account),
    )?;
    Ok(Snapshot {
        recorded: recorded
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    Recorded {
                        account_id: r.get(1),
                        kind: r.get(2),
                        amount: r.get(3),
                        status: r.get(4),
                        reason: r.get(5),
                        hold_id: r.get(6),
                        fingerprint: r.get(7),
                        accepted_at: r.get(8),
                    },
                )
            })
            .collect(),
        accounts: account_rows
            .iter()
            .map(|r| {
                let id: String = r.get(0);
                (
                    id.clone(),
                    AccountState {
                        id,
                        user_id: r.get(1),
                        balance: r.get(2),
                        held: r.get(3),
                        version: r.get(4),
                    },
                )
            })
            .collect(),
        holds: hold_rows
            .iter()
            .map(|r| Hold {
                id: r.get(0),
                account_id: r.get(1),
                request_id: r.get(2),
                amount: r.get(3),
                created_at: r.get(4),
                expires_at: r.get(5),
            })
            .collect(),
    })
}

/// A transaction row to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub id: String,
    pub account_id: String,
    pub kind: &'static str,
    pub amount: Decimal,
    pub status: &'static str,
    pub reason: Option<&'static str>,
    pub hold_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub fingerprint: String,
    pub seq: i64,
    pub balance_after: Decimal,
    pub occurred_at: DateTime<Utc>,
    pub accepted_at: DateTime<Utc>,
}

/// How an open hold ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedHold {
    pub id: Uuid,
    /// `captured`, `expired` or `released`.
    pub status: &'static str,
    /// The withdraw that captured it.
    pub captured_by: Option<String>,
}

/// Everything a batch decided.
#[derive(Debug, Default)]
pub struct Effects {
    /// Final state of every account the batch touched.
    pub accounts: Vec<AccountState>,
    pub records: Vec<NewRecord>,
    pub new_holds: Vec<Hold>,
    pub closed_holds: Vec<ClosedHold>,
    /// Approved withdraw_requests the API answered as denied: recorded as denied now.
    pub voided: Vec<String>,
}

/// The webhook step shared by a batch and the hold sweep, given a CTE `changed(account_id,
/// balance, available, version, delay_ms)` of hooked accounts whose balance or available
/// amount changed, and `$1` = the change's time: the accounts' deliveries not yet sent and not
/// in flight (no live lease) are superseded, and one delivery of the new state is due after
/// the webhook's delay. A delivery in flight is left alone: it may already have arrived.
macro_rules! schedule_webhooks {
    () => {
        "superseded AS ( \
             UPDATE webhook_deliveries d SET status = 'superseded', finished_at = $1 \
             FROM changed c WHERE d.account_id = c.account_id AND d.status = 'pending' \
               AND (d.locked_until IS NULL OR d.locked_until <= $1) \
             RETURNING d.id), \
         scheduled AS ( \
             INSERT INTO webhook_deliveries (account_id, balance, available, version, \
                 changed_at, due_at, created_at) \
             SELECT account_id, balance, available, version, $1, \
                    $1 + delay_ms * interval '1 millisecond', $1 FROM changed \
             RETURNING id)"
    };
}

/// Writes the effects of a batch at `now` for `shard`. `changed` are the accounts among
/// `effects.accounts` whose balance or available amount changed: their webhooks, if any,
/// get a delivery. Returns how many pending deliveries those superseded.
pub async fn write(
    tx: &Transaction<'_>,
    shard: u16,
    now: DateTime<Utc>,
    effects: &Effects,
    changed: &[&AccountState],
) -> Result<u64, StoreError> {
    let shard = i32::from(shard);
    let e = effects;

    let acc_ids: Vec<&str> = e.accounts.iter().map(|a| a.id.as_str()).collect();
    let acc_users: Vec<Option<&str>> = e.accounts.iter().map(|a| a.user_id.as_deref()).collect();
    let acc_balances: Vec<Decimal> = e.accounts.iter().map(|a| a.balance).collect();
    let acc_held: Vec<Decimal> = e.accounts.iter().map(|a| a.held).collect();
    let acc_versions: Vec<i64> = e.accounts.iter().map(|a| a.version).collect();

    let r = &e.records;
    let r_ids: Vec<&str> = r.iter().map(|x| x.id.as_str()).collect();
    let r_accounts: Vec<&str> = r.iter().map(|x| x.account_id.as_str()).collect();
    let r_kinds: Vec<&str> = r.iter().map(|x| x.kind).collect();
    let r_amounts: Vec<Decimal> = r.iter().map(|x| x.amount).collect();
    let r_statuses: Vec<&str> = r.iter().map(|x| x.status).collect();
    let r_reasons: Vec<Option<&str>> = r.iter().map(|x| x.reason).collect();
    let r_holds: Vec<Option<Uuid>> = r.iter().map(|x| x.hold_id).collect();
    let r_requests: Vec<Option<&str>> = r.iter().map(|x| x.request_id.as_deref()).collect();
    let r_fps: Vec<&str> = r.iter().map(|x| x.fingerprint.as_str()).collect();
    let r_seqs: Vec<i64> = r.iter().map(|x| x.seq).collect();
    let r_after: Vec<Decimal> = r.iter().map(|x| x.balance_after).collect();
    let r_occurred: Vec<DateTime<Utc>> = r.iter().map(|x| x.occurred_at).collect();
    let r_accepted: Vec<DateTime<Utc>> = r.iter().map(|x| x.accepted_at).collect();

    let h = &e.new_holds;
    let h_ids: Vec<Uuid> = h.iter().map(|x| x.id).collect();
    let h_accounts: Vec<&str> = h.iter().map(|x| x.account_id.as_str()).collect();
    let h_requests: Vec<&str> = h.iter().map(|x| x.request_id.as_str()).collect();
    let h_amounts: Vec<Decimal> = h.iter().map(|x| x.amount).collect();
    let h_expires: Vec<DateTime<Utc>> = h.iter().map(|x| x.expires_at).collect();

    let c = &e.closed_holds;
    let c_ids: Vec<Uuid> = c.iter().map(|x| x.id).collect();
    let c_statuses: Vec<&str> = c.iter().map(|x| x.status).collect();
    let c_by: Vec<Option<&str>> = c.iter().map(|x| x.captured_by.as_deref()).collect();

    let account_params: [&Param<'_>; 6] = [
        &acc_ids,
        &acc_users,
        &acc_balances,
        &acc_held,
        &acc_versions,
        &now,
    ];
    let record_params: [&Param<'_>; 15] = [
        &r_ids,
        &r_accounts,
        &r_kinds,
        &r_amounts,
        &r_statuses,
        &r_reasons,
        &r_holds,
        &r_requests,
        &r_fps,
        &r_seqs,
        &r_after,
        &r_occurred,
        &r_accepted,
        &now,
        &shard,
    ];
    let hold_params: [&Param<'_>; 7] = [
        &h_ids,
        &h_accounts,
        &h_requests,
        &h_amounts,
        &h_expires,
        &shard,
        &now,
    ];
    let closed_params: [&Param<'_>; 4] = [&c_ids, &c_statuses, &c_by, &now];
    let voided_params: [&Param<'_>; 1] = [&e.voided];
    let w_ids: Vec<&str> = changed.iter().map(|a| a.id.as_str()).collect();
    let w_balances: Vec<Decimal> = changed.iter().map(|a| a.balance).collect();
    let w_available: Vec<Decimal> = changed.iter().map(|a| a.balance - a.held).collect();
    let w_versions: Vec<i64> = changed.iter().map(|a| a.version).collect();
    let webhook_params: [&Param<'_>; 5] = [&now, &w_ids, &w_balances, &w_available, &w_versions];

    // Absolute values are safe: this shard's worker is the only writer of these rows and
    // holds their locks since `load`.
    let accounts_sql =
        "INSERT INTO accounts (id, user_id, balance, held, version, created_at, updated_at) \
         SELECT u.id, u.user_id, u.balance, u.held, u.version, $6, $6 \
         FROM unnest($1::text[], $2::text[], $3::numeric[], $4::numeric[], $5::int8[]) \
              AS u(id, user_id, balance, held, version) \
         ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance, held = EXCLUDED.held, \
             version = EXCLUDED.version, updated_at = EXCLUDED.updated_at, \
             user_id = COALESCE(accounts.user_id, EXCLUDED.user_id)";
    // ON CONFLICT DO NOTHING + count: a conflict means another writer recorded one of these
    // ids since `load` (an id reused on two accounts at once). The caller rolls back and the
    // retry sees that row as a duplicate.
    let records_sql =
        "INSERT INTO transactions (id, account_id, kind, amount, status, reason, hold_id, \
             request_id, fingerprint, seq, balance_after, occurred_at, accepted_at, applied_at, \
             shard) \
         SELECT u.*, $14, $15 FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], \
             $5::text[], $6::text[], $7::uuid[], $8::text[], $9::text[], $10::int8[], \
             $11::numeric[], $12::timestamptz[], $13::timestamptz[]) AS u \
         ON CONFLICT (id) DO NOTHING";
    let new_holds_sql =
        "INSERT INTO holds (id, account_id, request_id, amount, status, shard, created_at, \
             expires_at) \
         SELECT u.id, u.account_id, u.request_id, u.amount, 'open', $6, $7, u.expires_at \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::timestamptz[]) \
              AS u(id, account_id, request_id, amount, expires_at)";
    let closed_holds_sql =
        "UPDATE holds SET status = u.status, captured_by = u.captured_by, closed_at = $4 \
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, status, captured_by) \
         WHERE holds.id = u.id AND holds.status = 'open'";
    let voided_sql = "UPDATE transactions SET status = 'denied', reason = 'deadline_exceeded' \
         WHERE id = ANY($1) AND status = 'approved'";
    // Joined to `webhooks` by primary key: without registrations this finds nothing and
    // writes nothing, so it costs an index probe per changed account.
    let webhooks_sql = concat!(
        "WITH changed AS ( \
             SELECT u.account_id, u.balance, u.available, u.version, w.delay_ms \
             FROM unnest($2::text[], $3::numeric[], $4::numeric[], $5::int8[]) \
                  AS u(account_id, balance, available, version) \
             JOIN webhooks w ON w.account_id = u.account_id), ",
        schedule_webhooks!(),
        // One row per superseded delivery, so `execute` counts them (for the metrics); the
        // data-modifying `scheduled` runs whether or not it is selected from.
        " SELECT id FROM superseded"
    );
    // Statements with nothing to write are not sent: most batches place, close and void no
    // hold, and an empty statement still costs the database a plan and an execution.
    let (_, inserted, _, _, _, superseded) = tokio::try_join!(
        execute_unless_empty(tx, accounts_sql, &account_params, e.accounts.is_empty()),
        execute_unless_empty(tx, records_sql, &record_params, r.is_empty()),
        execute_unless_empty(tx, new_holds_sql, &hold_params, h.is_empty()),
        execute_unless_empty(tx, closed_holds_sql, &closed_params, c.is_empty()),
        execute_unless_empty(tx, voided_sql, &voided_params, e.voided.is_empty()),
        execute_unless_empty(tx, webhooks_sql, &webhook_params, changed.is_empty()),
    )?;
    if inserted != r.len() as u64 {
        return Err(StoreError::Conflict);
    }
    Ok(superseded)
}

/// Executes a cached statement, or nothing when `empty` (0 rows).
async fn execute_unless_empty(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&Param<'_>],
    empty: bool,
) -> Result<u64, tokio_postgres::Error> {
    if empty {
        return Ok(0);
    }
    let statement = tx.prepare_cached(sql).await?;
    tx.execute(&statement, params).await
}

/// What a hold sweep changed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Swept {
    /// Accounts whose `held` (so `available`) changed.
    pub accounts: u64,
    /// Webhook deliveries the new state superseded.
    pub superseded: u64,
}

/// Records the expiry of this shard's holds past their TTL and releases their amounts from
/// `held` (which changes `available`: hooked accounts get a delivery, as after a batch).
/// Run by the shard's owner between batches, so it never races a batch.
pub async fn expire_holds(
    tx: &Transaction<'_>,
    shard: u16,
    now: DateTime<Utc>,
) -> Result<Swept, StoreError> {
    let sql = concat!(
        "WITH expired AS ( \
             UPDATE holds SET status = 'expired', closed_at = $1 \
             WHERE shard = $2 AND status = 'open' AND expires_at <= $1 \
             RETURNING account_id, amount), \
         sums AS (SELECT account_id, sum(amount) AS total FROM expired GROUP BY account_id), \
         updated AS ( \
             UPDATE accounts a SET held = a.held - sums.total, updated_at = $1 \
             FROM sums WHERE a.id = sums.account_id \
             RETURNING a.id, a.balance, a.balance - a.held AS available, a.version), \
         changed AS ( \
             SELECT u.id AS account_id, u.balance, u.available, u.version, w.delay_ms \
             FROM updated u JOIN webhooks w ON w.account_id = u.id), ",
        schedule_webhooks!(),
        " SELECT (SELECT count(*) FROM updated), (SELECT count(*) FROM superseded)"
    );
    let row = tx.query_one(sql, &[&now, &i32::from(shard)]).await?;
    let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok(Swept {
        accounts: count(0),
        superseded: count(1),
    })
}
