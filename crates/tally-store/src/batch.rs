//! The two halves of a worker batch, both inside the caller's transaction: [`load`] reads the
//! state the batch's commands need (already-recorded ids, account rows, open holds) and
//! [`write`] stores what the worker decided (account rows, transaction rows, hold changes).
//! The values are the ledger's own ([`tally_core::ledger`]); rows are mapped to them here, and
//! a code this build does not know fails the batch ([`StoreError::UnknownCode`]).
//!
//! Balance webhooks are scheduled here too, in the same transaction as the change they
//! report: a delivery exists iff its balance change committed, once per change.
//!
//! Each half is a fixed handful of statements whatever the batch size — `unnest` arrays, no
//! per-message round trip — and the statements of a half are pipelined on one connection.
//! Pipelined statements may reach the server in any order (a statement missing from the
//! connection's cache waits for its Parse round trip), so the write half only ever gets
//! [`Effects`] that are final states of disjoint rows: no statement depends on another.
//!
//! The SQL names hold statuses as literals (`'open'`): the partial indexes on open holds
//! (V1__ledger.sql) are only usable by a statement whose predicate repeats theirs, which a
//! bound parameter does not. The texts are [`HoldStatus`]'s; a test checks them against the
//! schema.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use rust_decimal::Decimal;
use std::collections::HashMap;
use tally_core::ledger::{
    AccountPolicy, AccountState, ClosedHold, Effects, Hold, IdConflict, NewHold, NewPolicyChange,
    NewRecord, Recorded, Snapshot, WithdrawPolicy, VOIDED_REASON, VOIDED_STATUS,
};
use tally_core::{HoldStatus, OutcomeStatus, Reason};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::reads::record_codes;
use crate::StoreError;

type Param<'a> = dyn tokio_postgres::types::ToSql + Sync + 'a;

/// Loads the snapshot for `ids` on `accounts`, locking the account rows. `policy_ids`: the
/// ids of the batch's policy commands, whose dedupe is read only when there are any (nearly
/// no batch has one, and every statement of a batch costs PostgreSQL CPU).
pub async fn load(
    tx: &Transaction<'_>,
    ids: &[&str],
    accounts: &[&str],
    policy_ids: &[&str],
) -> Result<Snapshot, StoreError> {
    let by_id: [&Param<'_>; 1] = [&ids];
    let by_account: [&Param<'_>; 1] = [&accounts];
    // Policy commands of the batch already applied (V10): their dedupe.
    let policies = async {
        if policy_ids.is_empty() {
            return Ok(Vec::new());
        }
        let q = tx
            .prepare_cached("SELECT id, fingerprint FROM account_policy_changes WHERE id = ANY($1)")
            .await?;
        tx.query(&q, &[&policy_ids]).await
    };
    // Cached statements: after the first batch, each query is one pipelined round trip.
    let (q_recorded, q_accounts, q_holds, q_links) = tokio::try_join!(
        tx.prepare_cached(
            "SELECT id, account_id, kind, amount, status, reason, hold_id, fingerprint, \
                 COALESCE(last_copy_at, accepted_at) \
             FROM transactions WHERE id = ANY($1)"
        ),
        tx.prepare_cached(
            "SELECT id, user_id, balance, held, version, withdraw_policy, overdraft_limit, \
                 policy_version FROM accounts WHERE id = ANY($1) FOR UPDATE"
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
        // Explicit links (`PUT /users/…/accounts/…`) win over the `userId` of an account's
        // first command (V3): one committed while another user's command was still queued
        // must make the worker refuse that command, account row or not.
        tx.prepare_cached(
            "SELECT account_id, user_id FROM account_owners WHERE account_id = ANY($1)"
        ),
    )?;
    let (recorded, account_rows, hold_rows, link_rows, policy_rows) = tokio::try_join!(
        tx.query(&q_recorded, &by_id),
        tx.query(&q_accounts, &by_account),
        tx.query(&q_holds, &by_account),
        tx.query(&q_links, &by_account),
        policies,
    )?;
    let mut accounts: HashMap<String, AccountState> = account_rows
        .iter()
        .map(|r| {
            let account = account_of(r)?;
            Ok((account.id.clone(), account))
        })
        .collect::<Result<_, StoreError>>()?;
    for link in &link_rows {
        let id: String = link.get(0);
        let owner = Some(link.get(1));
        accounts
            .entry(id)
            .or_insert_with_key(|id| AccountState::new(id))
            .user_id = owner;
    }
    Ok(Snapshot {
        recorded: recorded.iter().map(recorded_of).collect::<Result<_, _>>()?,
        accounts,
        holds: hold_rows.iter().map(hold_of).collect(),
        policy_changes: policy_rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
    })
}

/// A `transactions` row of [`load`] (its columns start like `reads::TX_COLUMNS`), keyed by
/// its id.
fn recorded_of(r: &Row) -> Result<(String, Recorded), StoreError> {
    let (kind, status, reason) = record_codes(r)?;
    let recorded = Recorded {
        account_id: r.get(1),
        kind,
        amount: r.get(3),
        status,
        reason,
        hold_id: r.get(6),
        fingerprint: r.get(7),
        last_copy_at: r.get(8),
    };
    Ok((r.get(0), recorded))
}

fn account_of(r: &Row) -> Result<AccountState, StoreError> {
    let policy = match r.get::<_, Option<String>>(5) {
        None => None,
        Some(text) => Some(AccountPolicy {
            withdraw: WithdrawPolicy::parse(&text).ok_or(StoreError::UnknownCode {
                column: "withdraw_policy",
                value: text,
            })?,
            overdraft_limit: r.get(6),
        }),
    };
    Ok(AccountState {
        id: r.get(0),
        user_id: r.get(1),
        balance: r.get(2),
        held: r.get(3),
        version: r.get(4),
        policy,
        policy_version: r.get(7),
    })
}

fn hold_of(r: &Row) -> Hold {
    Hold {
        id: r.get(0),
        account_id: r.get(1),
        request_id: r.get(2),
        amount: r.get(3),
        created_at: r.get(4),
        expires_at: r.get(5),
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

/// Writes the effects of a batch at `now`; each row is stamped with the shard `shard_of` its
/// account (a batch may span several shards of one worker). `changed` are the accounts among
/// `effects.accounts()` whose balance or available amount changed: their webhooks, if any,
/// get a delivery.
///
/// The effects are final states of disjoint rows ([`Effects::check_disjoint`], checked here
/// first), so no statement depends on another and they are pipelined on the connection: the
/// order in which they reach the server — which a cold statement cache changes — cannot
/// change the result.
pub async fn write(
    tx: &Transaction<'_>,
    shard_of: impl Fn(&str) -> u16,
    now: DateTime<Utc>,
    effects: &Effects,
    changed: &[&AccountState],
) -> Result<Written, StoreError> {
    effects.check_disjoint()?;
    let shard = |account: &str| i32::from(shard_of(account));
    let (_, inserted, _, _, _, _, new_conflicts, superseded, policies) = tokio::try_join!(
        upsert_accounts(tx, effects.accounts(), now),
        insert_records(tx, effects.records(), now, &shard),
        insert_holds(tx, effects.new_holds(), now, &shard),
        close_holds(tx, effects.closed_holds(), now),
        void_records(tx, effects.voided()),
        answer_copies(tx, effects.copies()),
        insert_conflicts(tx, effects.conflicts(), now),
        schedule_webhooks(tx, changed, now),
        insert_policy_changes(tx, effects.policy_changes(), now, &shard),
    )?;
    // ON CONFLICT DO NOTHING + count: a conflict means another writer recorded one of these
    // ids since `load` (an id reused on two accounts at once). The caller rolls back and the
    // retry sees that row as a duplicate.
    if inserted != effects.records().len() as u64
        || policies != effects.policy_changes().len() as u64
    {
        return Err(StoreError::Conflict);
    }
    Ok(Written {
        superseded,
        new_conflicts,
    })
}

/// Absolute values are safe: the owner of the accounts' shards is the only writer of these
/// rows and holds their locks since [`load`].
async fn upsert_accounts(
    tx: &Transaction<'_>,
    accounts: &[AccountState],
    now: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    const SQL: &str =
        "INSERT INTO accounts (id, user_id, balance, held, version, created_at, updated_at, \
             withdraw_policy, overdraft_limit, policy_version) \
         SELECT u.id, u.user_id, u.balance, u.held, u.version, $6, $6, u.policy, u.limit_, \
             u.policy_version \
         FROM unnest($1::text[], $2::text[], $3::numeric[], $4::numeric[], $5::int8[], \
                     $7::text[], $8::numeric[], $9::int8[]) \
              AS u(id, user_id, balance, held, version, policy, limit_, policy_version) \
         ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance, held = EXCLUDED.held, \
             version = EXCLUDED.version, updated_at = EXCLUDED.updated_at, \
             user_id = COALESCE(accounts.user_id, EXCLUDED.user_id), \
             withdraw_policy = EXCLUDED.withdraw_policy, \
             overdraft_limit = EXCLUDED.overdraft_limit, \
             policy_version = EXCLUDED.policy_version";
    let a = accounts;
    let ids: Vec<&str> = a.iter().map(|x| x.id.as_str()).collect();
    let users: Vec<Option<&str>> = a.iter().map(|x| x.user_id.as_deref()).collect();
    let balances: Vec<Decimal> = a.iter().map(|x| x.balance).collect();
    let held: Vec<Decimal> = a.iter().map(|x| x.held).collect();
    let versions: Vec<i64> = a.iter().map(|x| x.version).collect();
    let policies: Vec<Option<&str>> = a
        .iter()
        .map(|x| x.policy.map(|p| p.withdraw.as_str()))
        .collect();
    let limits: Vec<Decimal> = a
        .iter()
        .map(|x| x.policy.map_or(Decimal::ZERO, |p| p.overdraft_limit))
        .collect();
    let policy_versions: Vec<i64> = a.iter().map(|x| x.policy_version).collect();
    let params: [&Param<'_>; 9] = [
        &ids,
        &users,
        &balances,
        &held,
        &versions,
        &now,
        &policies,
        &limits,
        &policy_versions,
    ];
    execute_unless_empty(tx, SQL, &params, a.is_empty()).await
}

/// Inserts the policy changes applied; returns how many (see [`write`]: fewer means another
/// writer recorded one of these ids since [`load`]).
async fn insert_policy_changes(
    tx: &Transaction<'_>,
    changes: &[NewPolicyChange],
    now: DateTime<Utc>,
    shard: &impl Fn(&str) -> i32,
) -> Result<u64, tokio_postgres::Error> {
    const SQL: &str =
        "INSERT INTO account_policy_changes (id, account_id, policy_version, after_seq, \
             withdraw_policy, overdraft_limit, fingerprint, accepted_at, key_name, shard, \
             applied_at) \
         SELECT u.*, $11 FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], \
             $5::text[], $6::numeric[], $7::text[], $8::timestamptz[], $9::text[], \
             $10::int4[]) AS u \
         ON CONFLICT (id) DO NOTHING";
    let c = changes;
    let ids: Vec<&str> = c.iter().map(|x| x.id.as_str()).collect();
    let accounts: Vec<&str> = c.iter().map(|x| x.account_id.as_str()).collect();
    let versions: Vec<i64> = c.iter().map(|x| x.policy_version).collect();
    let after: Vec<i64> = c.iter().map(|x| x.after_seq).collect();
    let policies: Vec<&str> = c.iter().map(|x| x.policy.withdraw.as_str()).collect();
    let limits: Vec<Decimal> = c.iter().map(|x| x.policy.overdraft_limit).collect();
    let fingerprints: Vec<&str> = c.iter().map(|x| x.fingerprint.as_str()).collect();
    let accepted: Vec<DateTime<Utc>> = c.iter().map(|x| x.accepted_at).collect();
    let keys: Vec<Option<&str>> = c.iter().map(|x| x.key_name.as_deref()).collect();
    let shards: Vec<i32> = accounts.iter().map(|a| shard(a)).collect();
    let params: [&Param<'_>; 11] = [
        &ids,
        &accounts,
        &versions,
        &after,
        &policies,
        &limits,
        &fingerprints,
        &accepted,
        &keys,
        &shards,
        &now,
    ];
    execute_unless_empty(tx, SQL, &params, c.is_empty()).await
}

/// Inserts the new records; returns how many were inserted (see [`write`]).
async fn insert_records(
    tx: &Transaction<'_>,
    records: &[NewRecord],
    now: DateTime<Utc>,
    shard: &impl Fn(&str) -> i32,
) -> Result<u64, tokio_postgres::Error> {
    const SQL: &str =
        "INSERT INTO transactions (id, account_id, kind, amount, status, reason, hold_id, \
             request_id, fingerprint, seq, balance_after, occurred_at, accepted_at, \
             last_copy_at, key_name, shard, applied_at) \
         SELECT u.*, $17 FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], \
             $5::text[], $6::text[], $7::uuid[], $8::text[], $9::text[], $10::int8[], \
             $11::numeric[], $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], \
             $15::text[], $16::int4[]) AS u \
         ON CONFLICT (id) DO NOTHING";
    let r = records;
    let ids: Vec<&str> = r.iter().map(|x| x.id.as_str()).collect();
    let accounts: Vec<&str> = r.iter().map(|x| x.account_id.as_str()).collect();
    let kinds: Vec<&str> = r.iter().map(|x| x.kind.as_str()).collect();
    let amounts: Vec<Decimal> = r.iter().map(|x| x.amount).collect();
    let statuses: Vec<&str> = r.iter().map(|x| x.status.as_str()).collect();
    let reasons: Vec<Option<&str>> = r.iter().map(|x| x.reason.map(Reason::as_str)).collect();
    let holds: Vec<Option<Uuid>> = r.iter().map(|x| x.hold_id).collect();
    let requests: Vec<Option<&str>> = r.iter().map(|x| x.request_id.as_deref()).collect();
    let fingerprints: Vec<&str> = r.iter().map(|x| x.fingerprint.as_str()).collect();
    let seqs: Vec<i64> = r.iter().map(|x| x.seq).collect();
    let after: Vec<Decimal> = r.iter().map(|x| x.balance_after).collect();
    let occurred: Vec<DateTime<Utc>> = r.iter().map(|x| x.occurred_at).collect();
    let accepted: Vec<DateTime<Utc>> = r.iter().map(|x| x.accepted_at).collect();
    let copies: Vec<Option<DateTime<Utc>>> = r.iter().map(|x| x.last_copy_at).collect();
    let keys: Vec<Option<&str>> = r.iter().map(|x| x.key_name.as_deref()).collect();
    let shards: Vec<i32> = accounts.iter().map(|a| shard(a)).collect();
    let params: [&Param<'_>; 17] = [
        &ids,
        &accounts,
        &kinds,
        &amounts,
        &statuses,
        &reasons,
        &holds,
        &requests,
        &fingerprints,
        &seqs,
        &after,
        &occurred,
        &accepted,
        &copies,
        &keys,
        &shards,
        &now,
    ];
    execute_unless_empty(tx, SQL, &params, r.is_empty()).await
}

/// Inserted in their final state: a hold the same batch closed is never open in a row.
async fn insert_holds(
    tx: &Transaction<'_>,
    holds: &[NewHold],
    now: DateTime<Utc>,
    shard: &impl Fn(&str) -> i32,
) -> Result<u64, tokio_postgres::Error> {
    const SQL: &str =
        "INSERT INTO holds (id, account_id, request_id, amount, status, shard, created_at, \
             expires_at, closed_at, captured_by) \
         SELECT u.id, u.account_id, u.request_id, u.amount, u.status, u.shard, u.created_at, \
             u.expires_at, CASE WHEN u.status = 'open' THEN NULL ELSE $10::timestamptz END, \
             u.captured_by \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::timestamptz[], \
                     $6::timestamptz[], $7::text[], $8::text[], $9::int4[]) \
              AS u(id, account_id, request_id, amount, created_at, expires_at, status, \
                   captured_by, shard)";
    let h = holds;
    let ids: Vec<Uuid> = h.iter().map(|x| x.hold.id).collect();
    let accounts: Vec<&str> = h.iter().map(|x| x.hold.account_id.as_str()).collect();
    let requests: Vec<&str> = h.iter().map(|x| x.hold.request_id.as_str()).collect();
    let amounts: Vec<Decimal> = h.iter().map(|x| x.hold.amount).collect();
    let created: Vec<DateTime<Utc>> = h.iter().map(|x| x.hold.created_at).collect();
    let expires: Vec<DateTime<Utc>> = h.iter().map(|x| x.hold.expires_at).collect();
    let statuses: Vec<&str> = h.iter().map(|x| x.status().as_str()).collect();
    let by: Vec<Option<&str>> = h
        .iter()
        .map(|x| x.closed.as_ref().and_then(|c| c.captured_by.as_deref()))
        .collect();
    let shards: Vec<i32> = accounts.iter().map(|a| shard(a)).collect();
    let params: [&Param<'_>; 10] = [
        &ids, &accounts, &requests, &amounts, &created, &expires, &statuses, &by, &shards, &now,
    ];
    execute_unless_empty(tx, SQL, &params, h.is_empty()).await
}

/// Closes holds that were open before the batch.
async fn close_holds(
    tx: &Transaction<'_>,
    closed: &[ClosedHold],
    now: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    const SQL: &str =
        "UPDATE holds SET status = u.status, captured_by = u.captured_by, closed_at = $4 \
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, status, captured_by) \
         WHERE holds.id = u.id AND holds.status = 'open'";
    let c = closed;
    let ids: Vec<Uuid> = c.iter().map(|x| x.id).collect();
    let statuses: Vec<&str> = c
        .iter()
        .map(|x| HoldStatus::from(x.closure.end).as_str())
        .collect();
    let by: Vec<Option<&str>> = c.iter().map(|x| x.closure.captured_by.as_deref()).collect();
    let params: [&Param<'_>; 4] = [&ids, &statuses, &by, &now];
    execute_unless_empty(tx, SQL, &params, c.is_empty()).await
}

/// Denies records approved before the batch. A denied record has no hold: the hold row keeps
/// `request_id`, so the link survives.
async fn void_records(
    tx: &Transaction<'_>,
    voided: &[String],
) -> Result<u64, tokio_postgres::Error> {
    const SQL: &str = "UPDATE transactions SET status = $2, reason = $3, hold_id = NULL \
         WHERE id = ANY($1) AND status = $4";
    let params: [&Param<'_>; 4] = [
        &voided,
        &VOIDED_STATUS.as_str(),
        &VOIDED_REASON.as_str(),
        &OutcomeStatus::Approved.as_str(),
    ];
    execute_unless_empty(tx, SQL, &params, voided.is_empty()).await
}

/// Moves `last_copy_at` of records approved before the batch on to a later copy answered
/// "approved" (never back: a redelivered older copy does not reach here).
async fn answer_copies(
    tx: &Transaction<'_>,
    copies: &[(String, DateTime<Utc>)],
) -> Result<u64, tokio_postgres::Error> {
    const SQL: &str = "UPDATE transactions t SET last_copy_at = u.at \
         FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) WHERE t.id = u.id";
    let ids: Vec<&str> = copies.iter().map(|(id, _)| id.as_str()).collect();
    let at: Vec<DateTime<Utc>> = copies.iter().map(|(_, at)| *at).collect();
    let params: [&Param<'_>; 2] = [&ids, &at];
    execute_unless_empty(tx, SQL, &params, copies.is_empty()).await
}

/// One row per (id, payload): a redelivered conflicting command adds nothing; returns only
/// the rows inserted now.
async fn insert_conflicts(
    tx: &Transaction<'_>,
    conflicts: &[IdConflict],
    now: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    const SQL: &str =
        "INSERT INTO id_conflicts (id, fingerprint, kind, account_id, amount, accepted_at, \
             detected_at) \
         SELECT u.*, $7 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::numeric[], $6::timestamptz[]) AS u \
         ON CONFLICT (id, fingerprint) DO NOTHING";
    let k = conflicts;
    let ids: Vec<&str> = k.iter().map(|x| x.id.as_str()).collect();
    let fingerprints: Vec<&str> = k.iter().map(|x| x.fingerprint.as_str()).collect();
    let kinds: Vec<&str> = k.iter().map(|x| x.kind.as_str()).collect();
    let accounts: Vec<&str> = k.iter().map(|x| x.account_id.as_str()).collect();
    let amounts: Vec<Decimal> = k.iter().map(|x| x.amount).collect();
    let accepted: Vec<DateTime<Utc>> = k.iter().map(|x| x.accepted_at).collect();
    let params: [&Param<'_>; 7] = [
        &ids,
        &fingerprints,
        &kinds,
        &accounts,
        &amounts,
        &accepted,
        &now,
    ];
    execute_unless_empty(tx, SQL, &params, k.is_empty()).await
}

/// A delivery of the new state for every changed account that has a webhook; returns how many
/// pending deliveries it superseded (for the metrics). Joined to `webhooks` by primary key:
/// without registrations this finds nothing and writes nothing, so it costs an index probe per
/// changed account.
async fn schedule_webhooks(
    tx: &Transaction<'_>,
    changed: &[&AccountState],
    now: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    const SQL: &str = concat!(
        "WITH changed AS ( \
             SELECT u.account_id, u.balance, u.available, u.version, w.delay_ms \
             FROM unnest($2::text[], $3::numeric[], $4::numeric[], $5::int8[]) \
                  AS u(account_id, balance, available, version) \
             JOIN webhooks w ON w.account_id = u.account_id), ",
        schedule_webhooks!(),
        // One row per superseded delivery, so `execute` counts them; the data-modifying
        // `scheduled` runs whether or not it is selected from.
        " SELECT id FROM superseded"
    );
    let ids: Vec<&str> = changed.iter().map(|a| a.id.as_str()).collect();
    let balances: Vec<Decimal> = changed.iter().map(|a| a.balance).collect();
    let available: Vec<Decimal> = changed.iter().map(|a| a.available()).collect();
    let versions: Vec<i64> = changed.iter().map(|a| a.version).collect();
    let params: [&Param<'_>; 5] = [&now, &ids, &balances, &available, &versions];
    execute_unless_empty(tx, SQL, &params, changed.is_empty()).await
}

/// Executes a cached statement, or nothing when `empty` (0 rows): most batches place, close
/// and void no hold, and an empty statement still costs the database a plan and an execution.
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
    use tally_core::Kind;

    const SCHEMA: &str = include_str!("../../../migrations/V1__ledger.sql");

    /// The texts that `CHECK (column IN (...))` allows in `CREATE TABLE table`.
    fn allowed(table: &str, column: &str) -> Vec<String> {
        let table = &SCHEMA[SCHEMA.find(&format!("CREATE TABLE {table} ")).expect(table)..];
        let list = format!("{column} IN (");
        let from = table.find(&list).expect(column) + list.len();
        let to = from + table[from..].find(')').expect("closing parenthesis");
        table[from..to]
            .split(',')
            .map(|s| s.trim().trim_matches('\'').to_string())
            .collect()
    }

    fn texts<T: Copy>(all: &[T], as_str: fn(T) -> &'static str) -> Vec<String> {
        all.iter().map(|&v| as_str(v).to_string()).collect()
    }

    /// The codes the schema allows are exactly the vocabulary's, so the texts written here
    /// and the literals in the SQL above are ones the database knows, and every text it
    /// holds maps to a code.
    #[test]
    fn the_schema_allows_exactly_the_vocabulary() {
        assert_eq!(
            allowed("transactions", "kind"),
            texts(Kind::ALL, Kind::as_str)
        );
        // `id_reused` is a reply only, never recorded.
        let recorded: Vec<OutcomeStatus> = OutcomeStatus::ALL
            .iter()
            .copied()
            .filter(|s| *s != OutcomeStatus::IdReused)
            .collect();
        assert_eq!(
            allowed("transactions", "status"),
            texts(&recorded, OutcomeStatus::as_str)
        );
        assert_eq!(
            allowed("holds", "status"),
            texts(HoldStatus::ALL, HoldStatus::as_str)
        );
    }
}
