//! The conservation auditor: checks, from the tables alone, the invariants of
//! `docs/ARCHITECTURE.md` §5 that the server can see, and names the offending rows.
//!
//! - `balances_match_history`: every account's balance is the sum of its applied deposits
//!   minus its applied withdraws (invariant 1, per account, hence also in total).
//! - `held_matches_open_holds`: every account's `held` is the sum of its open holds
//!   (invariant 2).
//! - `one_effect_per_id`: no transaction id recorded twice, no request with two holds, no
//!   hold captured by two withdraws (invariant 3).
//! - `history_is_gapless`: each account's history is numbered 1..version without gaps and
//!   its last running balance is the balance (per-account order, invariant 5).

use deadpool_postgres::{Client, Pool};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_postgres::Row;

use crate::StoreError;

/// Rows listed per failing check, at most.
const OFFENDING_LIMIT: i64 = 100;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub pass: bool,
    pub offending: Vec<Value>,
}

/// Totals shown alongside the checks.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub balance: String,
    pub applied_deposits: String,
    pub applied_withdraws: String,
    pub held: String,
}

fn money(v: Decimal) -> String {
    v.normalize().to_string()
}

/// Runs every check, one query each, on one connection.
pub async fn run(pool: &Pool) -> Result<(Vec<Check>, Totals), StoreError> {
    let client = pool.get().await?;
    let checks = vec![
        balances_match_history(&client).await?,
        held_matches_open_holds(&client).await?,
        one_effect_per_id(&client).await?,
        history_is_gapless(&client).await?,
    ];
    Ok((checks, totals(&client).await?))
}

/// A check that passes when its query found no offending row; `show` says what each one is.
fn check(name: &'static str, rows: &[Row], show: fn(&Row) -> Value) -> Check {
    Check {
        name,
        pass: rows.is_empty(),
        offending: rows.iter().map(show).collect(),
    }
}

async fn balances_match_history(client: &Client) -> Result<Check, StoreError> {
    let rows = client
        .query(
            "SELECT COALESCE(a.id, t.account_id), COALESCE(a.balance, 0), COALESCE(t.net, 0) \
             FROM accounts a FULL JOIN ( \
                 SELECT account_id, \
                        sum(CASE kind WHEN 'deposit' THEN amount ELSE -amount END) AS net \
                 FROM transactions WHERE status = 'applied' GROUP BY account_id) t \
               ON t.account_id = a.id \
             WHERE COALESCE(a.balance, 0) <> COALESCE(t.net, 0) LIMIT $1",
            &[&OFFENDING_LIMIT],
        )
        .await?;
    Ok(check("balances_match_history", &rows, |r| {
        json!({"accountId": r.get::<_, String>(0),
               "balance": money(r.get(1)), "expected": money(r.get(2))})
    }))
}

async fn held_matches_open_holds(client: &Client) -> Result<Check, StoreError> {
    let rows = client
        .query(
            "SELECT a.id, a.held, COALESCE(h.open, 0) FROM accounts a LEFT JOIN ( \
                 SELECT account_id, sum(amount) AS open FROM holds WHERE status = 'open' \
                 GROUP BY account_id) h ON h.account_id = a.id \
             WHERE a.held <> COALESCE(h.open, 0) LIMIT $1",
            &[&OFFENDING_LIMIT],
        )
        .await?;
    Ok(check("held_matches_open_holds", &rows, |r| {
        json!({"accountId": r.get::<_, String>(0),
               "held": money(r.get(1)), "openHolds": money(r.get(2))})
    }))
}

async fn one_effect_per_id(client: &Client) -> Result<Check, StoreError> {
    let rows = client
        .query(
            "(SELECT 'transaction' AS what, id, count(*) FROM transactions GROUP BY id \
                 HAVING count(*) > 1 LIMIT $1) \
             UNION ALL (SELECT 'holds_for_request', request_id, count(*) FROM holds \
                 GROUP BY request_id HAVING count(*) > 1 LIMIT $1) \
             UNION ALL (SELECT 'holds_captured_by', captured_by, count(*) FROM holds \
                 WHERE captured_by IS NOT NULL GROUP BY captured_by HAVING count(*) > 1 LIMIT $1)",
            &[&OFFENDING_LIMIT],
        )
        .await?;
    Ok(check("one_effect_per_id", &rows, |r| {
        json!({"what": r.get::<_, String>(0), "id": r.get::<_, String>(1),
               "count": r.get::<_, i64>(2)})
    }))
}

async fn history_is_gapless(client: &Client) -> Result<Check, StoreError> {
    let rows = client
        .query(
            "SELECT a.id, a.version, count(t.id), COALESCE(max(t.seq), 0), a.balance, \
                    (SELECT balance_after FROM transactions l WHERE l.account_id = a.id \
                     ORDER BY seq DESC LIMIT 1) \
             FROM accounts a LEFT JOIN transactions t ON t.account_id = a.id \
             GROUP BY a.id \
             HAVING count(t.id) <> a.version OR COALESCE(max(t.seq), 0) <> a.version \
                 OR count(DISTINCT t.seq) <> count(t.id) \
                 OR a.balance IS DISTINCT FROM (SELECT balance_after FROM transactions l \
                     WHERE l.account_id = a.id ORDER BY seq DESC LIMIT 1) \
             LIMIT $1",
            &[&OFFENDING_LIMIT],
        )
        .await?;
    Ok(check("history_is_gapless", &rows, |r| {
        json!({"accountId": r.get::<_, String>(0), "version": r.get::<_, i64>(1),
               "records": r.get::<_, i64>(2), "maxSeq": r.get::<_, i64>(3),
               "balance": money(r.get(4)),
               "lastBalanceAfter": r.get::<_, Option<Decimal>>(5).map(money)})
    }))
}

async fn totals(client: &Client) -> Result<Totals, StoreError> {
    let row = client
        .query_one(
            "SELECT (SELECT COALESCE(sum(balance), 0) FROM accounts), \
                    (SELECT COALESCE(sum(amount), 0) FROM transactions \
                     WHERE status = 'applied' AND kind = 'deposit'), \
                    (SELECT COALESCE(sum(amount), 0) FROM transactions \
                     WHERE status = 'applied' AND kind = 'withdraw'), \
                    (SELECT COALESCE(sum(held), 0) FROM accounts)",
            &[],
        )
        .await?;
    Ok(Totals {
        balance: money(row.get(0)),
        applied_deposits: money(row.get(1)),
        applied_withdraws: money(row.get(2)),
        held: money(row.get(3)),
    })
}

/// The auditor's whole answer: the checks, the totals, the queues and the dead letters.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub pass: bool,
    pub checks: Vec<Check>,
    pub totals: Totals,
    /// Ready messages per queue; `None` when the broker could not be asked.
    pub queues: Option<std::collections::BTreeMap<String, u32>>,
    /// Archived dead letters not yet re-published.
    pub dead_letters: i64,
}

/// Runs the checks and assembles the report with the queue depths the caller measured.
pub async fn report(pool: &Pool, queues: Option<Vec<(String, u32)>>) -> Result<Report, StoreError> {
    let (checks, totals) = run(pool).await?;
    Ok(Report {
        pass: checks.iter().all(|c| c.pass),
        checks,
        totals,
        queues: queues.map(|q| q.into_iter().collect()),
        dead_letters: crate::dead_letters::pending_count(pool).await?,
    })
}
