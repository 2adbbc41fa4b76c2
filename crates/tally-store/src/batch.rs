//! The two halves of a worker batch, both inside the caller's transaction: [`load`] reads the
//! state the batch's commands need (already-recorded ids, account rows, open holds) and
//! [`write`] stores what the worker decided (account rows, transaction rows, hold changes).
//!
//! Balance webhooks are scheduled here too, in the same transaction as the change they
//! report: a delivery exists iff its balance change committed, once per change.
//!
//! Each half is a fixed handful of statements whatever the batch size — `unnest` arrays, no
//! per-message round trip — and the statements of a half are pipelined on one connection.
//! Pipelined statements may reach the server in any order (a statement missing from the
//! connection's cache waits for its Parse round trip), so the write half only ever gets
//! [`Effects`] that are final states of disjoint rows: no statement depends on another.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use rust_decimal::Decimal;
use std::collections::{HashMap, HashSet};
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
    /// Open holds of the batch's accounts, oldest first (per account).
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
            "SELECT id, account_id, kind, amount, status, reason, hold_id, fingerprint \
             FROM transactions WHERE id = ANY($1)"
        ),
        tx.prepare_cached(
            "SELECT id, user_id, balance, held, version FROM accounts WHERE id = ANY($1) \
             FOR UPDATE"
        ),
        // Oldest first = in the order their requests were recorded on the account (`seq`):
        // holds placed by one batch share `created_at`, and "the oldest hold of the same
        // amount" a withdraw captures must not depend on their random ids.
        tx.prepare_cached(
            "SELECT h.id, h.account_id, h.request_id, h.amount, h.created_at, h.expires_at \
             FROM holds h LEFT JOIN transactions t ON t.id = h.request_id \
             WHERE h.account_id = ANY($1) AND h.status = 'open' \
             ORDER BY h.account_id, t.seq NULLS FIRST, h.created_at, h.id"
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

/// A transaction row to insert, in its final state for this batch.
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

/// What a voided approval becomes: the API answered "denied, deadline exceeded" without
/// seeing the approval, and the record must say what the client was told (with no hold).
pub const VOIDED_STATUS: &str = "denied";
pub const VOIDED_REASON: &str = "deadline_exceeded";

/// How a hold stopped being open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// A withdraw took the money it promised.
    Captured,
    /// Its TTL passed.
    Expired,
    /// Its request was voided (the API answered "denied").
    Released,
}

impl HoldEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldEnd::Captured => "captured",
            HoldEnd::Expired => "expired",
            HoldEnd::Released => "released",
        }
    }
}

/// How a hold ended, and the withdraw that captured it.
#[derive(Debug, Clone, PartialEq)]
pub struct Closure {
    pub end: HoldEnd,
    pub captured_by: Option<String>,
}

/// A hold the batch placed, in its final state: still open, or already closed by a later
/// command of the same batch (inserted closed, never inserted then updated).
#[derive(Debug, Clone, PartialEq)]
pub struct NewHold {
    pub hold: Hold,
    pub closed: Option<Closure>,
}

/// A hold that was open before the batch and that the batch closed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedHold {
    pub id: Uuid,
    pub closure: Closure,
}

/// A command that reused a recorded id with another payload: nothing was done for it, and
/// this row says so durably (`id_conflicts`, V6).
#[derive(Debug, Clone, PartialEq)]
pub struct IdConflict {
    pub id: String,
    pub fingerprint: String,
    pub kind: &'static str,
    pub account_id: String,
    pub amount: Decimal,
    pub accepted_at: DateTime<Utc>,
}

/// Everything a batch decided, as final states: every row is written by exactly one
/// statement, so the statements of [`write`] touch disjoint rows and can run in any order.
///
/// The methods keep it that way: a hold placed and closed in the same batch is one
/// [`NewHold`] in its final state, a record inserted and voided in the same batch is one
/// [`NewRecord`] in its final state; [`Effects::closed_holds`] and [`Effects::voided`] only
/// ever name rows that existed before the batch. [`write`] refuses effects that overlap
/// anyway ([`StoreError::OverlappingEffects`]).
#[derive(Debug, Default)]
pub struct Effects {
    accounts: Vec<AccountState>,
    records: Vec<NewRecord>,
    new_holds: Vec<NewHold>,
    closed_holds: Vec<ClosedHold>,
    voided: Vec<String>,
    conflicts: Vec<IdConflict>,
}

impl Effects {
    /// Final state of every account the batch touched.
    pub fn accounts(&self) -> &[AccountState] {
        &self.accounts
    }

    pub fn records(&self) -> &[NewRecord] {
        &self.records
    }

    pub fn new_holds(&self) -> &[NewHold] {
        &self.new_holds
    }

    /// Holds open before the batch that it closed.
    pub fn closed_holds(&self) -> &[ClosedHold] {
        &self.closed_holds
    }

    /// Records approved before the batch that it voided.
    pub fn voided(&self) -> &[String] {
        &self.voided
    }

    pub fn conflicts(&self) -> &[IdConflict] {
        &self.conflicts
    }

    /// Sets the final state of the accounts the batch touched.
    pub fn set_accounts(&mut self, accounts: Vec<AccountState>) {
        self.accounts = accounts;
    }

    /// A new transaction row.
    pub fn record(&mut self, record: NewRecord) {
        self.records.push(record);
    }

    /// A new open hold.
    pub fn place_hold(&mut self, hold: Hold) {
        self.new_holds.push(NewHold { hold, closed: None });
    }

    /// Closes hold `id`: the batch's own new hold if it placed it, else a hold open before.
    pub fn close_hold(&mut self, id: Uuid, end: HoldEnd, captured_by: Option<String>) {
        let closure = Closure { end, captured_by };
        match self.new_holds.iter_mut().find(|h| h.hold.id == id) {
            Some(new) => new.closed = Some(closure),
            None => self.closed_holds.push(ClosedHold { id, closure }),
        }
    }

    /// Denies the approved withdraw_request `id` ([`VOIDED_STATUS`], [`VOIDED_REASON`], no
    /// hold): the batch's own new record if it inserted it, else a record from before.
    pub fn void(&mut self, id: &str) {
        match self.records.iter_mut().find(|r| r.id == id) {
            Some(record) => {
                record.status = VOIDED_STATUS;
                record.reason = Some(VOIDED_REASON);
                record.hold_id = None;
            }
            None => self.voided.push(id.to_string()),
        }
    }

    /// A reuse of a recorded id with another payload (once per id and payload).
    pub fn conflict(&mut self, conflict: IdConflict) {
        let seen = self
            .conflicts
            .iter()
            .any(|c| c.id == conflict.id && c.fingerprint == conflict.fingerprint);
        if !seen {
            self.conflicts.push(conflict);
        }
    }

    /// Fails when two statements of [`write`] would touch the same row (or one statement the
    /// same row twice): then their order would matter, and a pipelined batch does not fix it.
    pub fn check_disjoint(&self) -> Result<(), StoreError> {
        let overlap = |what: &'static str, id: String| StoreError::OverlappingEffects { what, id };
        let mut accounts = HashSet::new();
        if let Some(a) = self
            .accounts
            .iter()
            .find(|a| !accounts.insert(a.id.as_str()))
        {
            return Err(overlap("account written twice", a.id.clone()));
        }
        let mut records = HashSet::new();
        if let Some(r) = self.records.iter().find(|r| !records.insert(r.id.as_str())) {
            return Err(overlap("record inserted twice", r.id.clone()));
        }
        let mut voided = HashSet::new();
        for id in &self.voided {
            if records.contains(id.as_str()) {
                return Err(overlap("record inserted and voided", id.clone()));
            }
            if !voided.insert(id.as_str()) {
                return Err(overlap("record voided twice", id.clone()));
            }
        }
        let mut holds = HashSet::new();
        if let Some(h) = self.new_holds.iter().find(|h| !holds.insert(h.hold.id)) {
            return Err(overlap("hold inserted twice", h.hold.id.to_string()));
        }
        let mut closed = HashSet::new();
        for c in &self.closed_holds {
            if holds.contains(&c.id) {
                return Err(overlap("hold inserted and closed", c.id.to_string()));
            }
            if !closed.insert(c.id) {
                return Err(overlap("hold closed twice", c.id.to_string()));
            }
        }
        Ok(())
    }
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

/// What [`write`] changed beyond the effects themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Pending webhook deliveries the new states superseded.
    pub superseded: u64,
    /// Id conflicts recorded for the first time (a redelivered one is not new).
    pub new_conflicts: u64,
}

/// Writes the effects of a batch at `now` for `shard`. `changed` are the accounts among
/// `effects.accounts()` whose balance or available amount changed: their webhooks, if any,
/// get a delivery.
///
/// The effects are final states of disjoint rows ([`Effects::check_disjoint`], checked here
/// first), so no statement depends on another and they are pipelined on the connection: the
/// order in which they reach the server — which a cold statement cache changes — cannot
/// change the result.
pub async fn write(
    tx: &Transaction<'_>,
    shard: u16,
    now: DateTime<Utc>,
    effects: &Effects,
    changed: &[&AccountState],
) -> Result<Written, StoreError> {
    effects.check_disjoint()?;
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
    let h_ids: Vec<Uuid> = h.iter().map(|x| x.hold.id).collect();
    let h_accounts: Vec<&str> = h.iter().map(|x| x.hold.account_id.as_str()).collect();
    let h_requests: Vec<&str> = h.iter().map(|x| x.hold.request_id.as_str()).collect();
    let h_amounts: Vec<Decimal> = h.iter().map(|x| x.hold.amount).collect();
    let h_created: Vec<DateTime<Utc>> = h.iter().map(|x| x.hold.created_at).collect();
    let h_expires: Vec<DateTime<Utc>> = h.iter().map(|x| x.hold.expires_at).collect();
    let h_statuses: Vec<&str> = h
        .iter()
        .map(|x| x.closed.as_ref().map_or("open", |c| c.end.as_str()))
        .collect();
    let h_by: Vec<Option<&str>> = h
        .iter()
        .map(|x| x.closed.as_ref().and_then(|c| c.captured_by.as_deref()))
        .collect();

    let c = &e.closed_holds;
    let c_ids: Vec<Uuid> = c.iter().map(|x| x.id).collect();
    let c_statuses: Vec<&str> = c.iter().map(|x| x.closure.end.as_str()).collect();
    let c_by: Vec<Option<&str>> = c.iter().map(|x| x.closure.captured_by.as_deref()).collect();

    let k = &e.conflicts;
    let k_ids: Vec<&str> = k.iter().map(|x| x.id.as_str()).collect();
    let k_fps: Vec<&str> = k.iter().map(|x| x.fingerprint.as_str()).collect();
    let k_kinds: Vec<&str> = k.iter().map(|x| x.kind).collect();
    let k_accounts: Vec<&str> = k.iter().map(|x| x.account_id.as_str()).collect();
    let k_amounts: Vec<Decimal> = k.iter().map(|x| x.amount).collect();
    let k_accepted: Vec<DateTime<Utc>> = k.iter().map(|x| x.accepted_at).collect();

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
    let hold_params: [&Param<'_>; 10] = [
        &h_ids,
        &h_accounts,
        &h_requests,
        &h_amounts,
        &h_created,
        &h_expires,
        &h_statuses,
        &h_by,
        &shard,
        &now,
    ];
    let closed_params: [&Param<'_>; 4] = [&c_ids, &c_statuses, &c_by, &now];
    let voided_params: [&Param<'_>; 3] = [&e.voided, &VOIDED_STATUS, &VOIDED_REASON];
    let conflict_params: [&Param<'_>; 7] = [
        &k_ids,
        &k_fps,
        &k_kinds,
        &k_accounts,
        &k_amounts,
        &k_accepted,
        &now,
    ];
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
    // Inserted in their final state: a hold the same batch closed is never open in a row.
    let new_holds_sql =
        "INSERT INTO holds (id, account_id, request_id, amount, status, shard, created_at, \
             expires_at, closed_at, captured_by) \
         SELECT u.id, u.account_id, u.request_id, u.amount, u.status, $9, u.created_at, \
             u.expires_at, CASE WHEN u.status = 'open' THEN NULL ELSE $10::timestamptz END, \
             u.captured_by \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::timestamptz[], \
                     $6::timestamptz[], $7::text[], $8::text[]) \
              AS u(id, account_id, request_id, amount, created_at, expires_at, status, \
                   captured_by)";
    let closed_holds_sql =
        "UPDATE holds SET status = u.status, captured_by = u.captured_by, closed_at = $4 \
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, status, captured_by) \
         WHERE holds.id = u.id AND holds.status = 'open'";
    // A denied record has no hold: the hold row keeps `request_id`, so the link survives.
    let voided_sql = "UPDATE transactions SET status = $2, reason = $3, hold_id = NULL \
         WHERE id = ANY($1) AND status = 'approved'";
    // One row per (id, payload): a redelivered conflicting command adds nothing; `execute`
    // counts only the rows inserted now.
    let conflicts_sql =
        "INSERT INTO id_conflicts (id, fingerprint, kind, account_id, amount, accepted_at, \
             detected_at) \
         SELECT u.*, $7 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::numeric[], $6::timestamptz[]) AS u \
         ON CONFLICT (id, fingerprint) DO NOTHING";
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
    let (_, inserted, _, _, _, new_conflicts, superseded) = tokio::try_join!(
        execute_unless_empty(tx, accounts_sql, &account_params, e.accounts.is_empty()),
        execute_unless_empty(tx, records_sql, &record_params, r.is_empty()),
        execute_unless_empty(tx, new_holds_sql, &hold_params, h.is_empty()),
        execute_unless_empty(tx, closed_holds_sql, &closed_params, c.is_empty()),
        execute_unless_empty(tx, voided_sql, &voided_params, e.voided.is_empty()),
        execute_unless_empty(tx, conflicts_sql, &conflict_params, k.is_empty()),
        execute_unless_empty(tx, webhooks_sql, &webhook_params, changed.is_empty()),
    )?;
    if inserted != r.len() as u64 {
        return Err(StoreError::Conflict);
    }
    Ok(Written {
        superseded,
        new_conflicts,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(request: &str) -> Hold {
        let now = Utc::now();
        Hold {
            id: Uuid::new_v4(),
            account_id: "a".into(),
            request_id: request.into(),
            amount: Decimal::ONE,
            created_at: now,
            expires_at: now,
        }
    }

    fn record(id: &str) -> NewRecord {
        let now = Utc::now();
        NewRecord {
            id: id.into(),
            account_id: "a".into(),
            kind: "withdraw_request",
            amount: Decimal::ONE,
            status: "approved",
            reason: None,
            hold_id: None,
            request_id: None,
            fingerprint: "f".into(),
            seq: 1,
            balance_after: Decimal::ONE,
            occurred_at: now,
            accepted_at: now,
        }
    }

    #[test]
    fn a_hold_placed_and_closed_in_one_batch_is_one_row_in_its_final_state() {
        let mut e = Effects::default();
        let new = hold("r1");
        let before = Uuid::new_v4();
        e.place_hold(new.clone());
        e.close_hold(new.id, HoldEnd::Captured, Some("w1".into()));
        e.close_hold(before, HoldEnd::Expired, None);
        assert_eq!(e.new_holds().len(), 1);
        assert_eq!(
            e.new_holds()[0].closed,
            Some(Closure {
                end: HoldEnd::Captured,
                captured_by: Some("w1".into())
            })
        );
        assert_eq!(e.closed_holds().len(), 1);
        assert_eq!(e.closed_holds()[0].id, before);
        assert!(e.check_disjoint().is_ok());
    }

    #[test]
    fn a_record_inserted_and_voided_in_one_batch_is_inserted_denied() {
        let mut e = Effects::default();
        let mut r = record("r1");
        r.hold_id = Some(Uuid::new_v4());
        e.record(r);
        e.void("r1");
        e.void("r0");
        let r = &e.records()[0];
        assert_eq!(
            (r.status, r.reason, r.hold_id),
            (VOIDED_STATUS, Some(VOIDED_REASON), None)
        );
        assert_eq!(e.voided(), ["r0"]);
        assert!(e.check_disjoint().is_ok());
    }

    #[test]
    fn effects_that_touch_a_row_twice_are_refused() {
        let overlapping = |e: &Effects| {
            matches!(
                e.check_disjoint(),
                Err(StoreError::OverlappingEffects { .. })
            )
        };
        let mut twice_closed = Effects::default();
        let id = Uuid::new_v4();
        twice_closed.close_hold(id, HoldEnd::Expired, None);
        twice_closed.close_hold(id, HoldEnd::Released, None);
        assert!(overlapping(&twice_closed));

        let mut twice_voided = Effects::default();
        twice_voided.void("r0");
        twice_voided.void("r0");
        assert!(overlapping(&twice_voided));

        let mut twice_recorded = Effects::default();
        twice_recorded.record(record("r1"));
        twice_recorded.record(record("r1"));
        assert!(overlapping(&twice_recorded));

        let mut twice_written = Effects::default();
        twice_written.set_accounts(vec![AccountState::new("a"), AccountState::new("a")]);
        assert!(overlapping(&twice_written));
    }
}
