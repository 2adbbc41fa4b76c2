//! A batch that places a hold and closes it (capture or void) in the same transaction ends with
//! the right hold status, `held` and history, whatever the connection's statement cache holds:
//! cold (fresh pool), warm (every statement already run), or partly warm (the statements that
//! close holds and void records cached, those that insert them not — the order in which a
//! pipelined batch used to run them backwards).

mod common;

use chrono::{Duration, Utc};
use common::{audit_failures, capture, dec, envelope, fresh_database, lease};
use tally_core::ledger::Rules;
use tally_core::ledger::WithdrawPolicy;
use tally_core::{Envelope, Kind, OutcomeStatus};
use tally_store::leases::Lease;
use tally_store::Pool;
use tally_worker::apply::apply_batch;

const RULES: Rules = Rules {
    withdraw_policy: WithdrawPolicy::AlwaysApply,
    hold_ttl: Duration::minutes(15),
};

async fn apply(pool: &Pool, lease: &Lease, envelopes: &[Envelope]) -> Vec<OutcomeStatus> {
    apply_batch(pool, lease, envelopes, &RULES)
        .await
        .expect("batch commits")
        .iter()
        .map(|o| o.status)
        .collect()
}

/// (status, captured_by) of the hold of `request`.
async fn hold_of(pool: &Pool, request: &str) -> (String, Option<String>) {
    let client = pool.get().await.expect("connection");
    let row = client
        .query_one(
            "SELECT status, captured_by FROM holds WHERE request_id = $1",
            &[&request],
        )
        .await
        .expect("hold row");
    (row.get(0), row.get(1))
}

/// (status, reason) of transaction `id`.
async fn record_of(pool: &Pool, id: &str) -> (String, Option<String>) {
    let client = pool.get().await.expect("connection");
    let row = client
        .query_one(
            "SELECT status, reason FROM transactions WHERE id = $1",
            &[&id],
        )
        .await
        .expect("transaction row");
    (row.get(0), row.get(1))
}

/// (balance, held) of `account`.
async fn account_of(pool: &Pool, account: &str) -> (rust_decimal::Decimal, rust_decimal::Decimal) {
    let client = pool.get().await.expect("connection");
    let row = client
        .query_one(
            "SELECT balance, held FROM accounts WHERE id = $1",
            &[&account],
        )
        .await
        .expect("account row");
    (row.get(0), row.get(1))
}

/// In one batch on `pool`: a request approved and captured by a withdraw naming it.
async fn approve_and_capture(pool: &Pool, lease: &Lease, account: &str) {
    let request = format!("{account}-r");
    let withdraw = format!("{account}-w");
    let now = Utc::now();
    let statuses = apply(
        pool,
        lease,
        &[
            envelope(&request, Kind::WithdrawRequest, account, dec("50"), now),
            capture(&withdraw, account, dec("50"), &request),
        ],
    )
    .await;
    assert_eq!(statuses, [OutcomeStatus::Approved, OutcomeStatus::Applied]);
    assert_eq!(
        hold_of(pool, &request).await,
        ("captured".into(), Some(withdraw))
    );
    assert_eq!(account_of(pool, account).await, (dec("50"), dec("0")));
}

/// In one batch on `pool`: a request approved, then voided by its API's timeout.
async fn approve_and_void(pool: &Pool, lease: &Lease, account: &str) {
    let request = envelope(
        &format!("{account}-v"),
        Kind::WithdrawRequest,
        account,
        dec("30"),
        Utc::now(),
    );
    let statuses = apply(pool, lease, &[request.clone(), request.void()]).await;
    assert_eq!(statuses, [OutcomeStatus::Approved, OutcomeStatus::Denied]);
    assert_eq!(
        record_of(pool, &request.id).await,
        ("denied".into(), Some("deadline_exceeded".into()))
    );
    assert_eq!(hold_of(pool, &request.id).await, ("released".into(), None));
    assert_eq!(account_of(pool, account).await, (dec("100"), dec("0")));
}

async fn deposit(pool: &Pool, lease: &Lease, account: &str, amount: &str) {
    let id = format!("{account}-d{amount}");
    let e = envelope(&id, Kind::Deposit, account, dec(amount), Utc::now());
    assert_eq!(apply(pool, lease, &[e]).await, [OutcomeStatus::Applied]);
}

#[tokio::test]
async fn a_hold_placed_and_closed_in_one_batch_on_a_cold_connection() {
    let db = fresh_database().await;
    let lease = lease(&db.pool(1)).await;
    // Each scenario on a pool of its own: the batch is the connection's first.
    for (account, scenario) in [("cold-c", true), ("cold-v", false)] {
        let seed = db.pool(1);
        deposit(&seed, &lease, account, "100").await;
        let cold = db.pool(1);
        if scenario {
            approve_and_capture(&cold, &lease, account).await;
        } else {
            approve_and_void(&cold, &lease, account).await;
        }
    }
    assert_eq!(audit_failures(&db.pool(1)).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_hold_placed_and_closed_in_one_batch_on_a_warm_connection() {
    let db = fresh_database().await;
    let pool = db.pool(1);
    let lease = lease(&pool).await;
    // Every write statement once, each in a batch of its own.
    deposit(&pool, &lease, "warm", "100").await;
    let old = envelope(
        "warm-old",
        Kind::WithdrawRequest,
        "warm",
        dec("1"),
        Utc::now(),
    );
    let voided = envelope(
        "warm-old2",
        Kind::WithdrawRequest,
        "warm",
        dec("1"),
        Utc::now(),
    );
    apply(&pool, &lease, &[old.clone(), voided.clone()]).await;
    apply(
        &pool,
        &lease,
        &[capture("warm-w", "warm", dec("1"), &old.id)],
    )
    .await;
    apply(&pool, &lease, &[voided.void()]).await;

    deposit(&pool, &lease, "warm-c", "100").await;
    approve_and_capture(&pool, &lease, "warm-c").await;
    deposit(&pool, &lease, "warm-v", "100").await;
    approve_and_void(&pool, &lease, "warm-v").await;
    assert_eq!(audit_failures(&pool).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_hold_placed_and_closed_in_one_batch_on_a_partly_warm_connection() {
    let db = fresh_database().await;
    let lease = lease(&db.pool(1)).await;
    for (account, scenario) in [("part-c", true), ("part-v", false)] {
        // An approval from another connection…
        let seed = db.pool(1);
        deposit(&seed, &lease, account, "100").await;
        let old = envelope(
            &format!("{account}-old"),
            Kind::WithdrawRequest,
            account,
            dec("10"),
            Utc::now(),
        );
        apply(&seed, &lease, std::slice::from_ref(&old)).await;
        // …voided on a fresh one: it runs the statements that release a hold and deny a
        // record, not those that insert holds and records.
        let partly = db.pool(1);
        assert_eq!(
            apply(&partly, &lease, &[old.void()]).await,
            [OutcomeStatus::Denied]
        );
        if scenario {
            approve_and_capture(&partly, &lease, account).await;
        } else {
            approve_and_void(&partly, &lease, account).await;
        }
    }
    assert_eq!(audit_failures(&db.pool(1)).await, Vec::<String>::new());
}
