//! Ledger rules through the real batch path, where an earlier batch set the scene: the void of
//! an approval decided by another attempt, the void of an approval already captured, and the
//! `reject_overdraft` policy judging withdraws against `available`, and the owner of an account
//! linked before its first command.

mod common;

use chrono::{Duration, Utc};
use common::{by_user, capture, dec, envelope, fresh_database, lease};
use tally_core::ledger::Rules;
use tally_core::ledger::WithdrawPolicy;
use tally_core::{Envelope, Kind, Outcome, OutcomeStatus, Reason};
use tally_store::leases::Lease;
use tally_store::Pool;
use tally_worker::apply::apply_batch;

fn rules(withdraw_policy: WithdrawPolicy) -> Rules {
    Rules {
        withdraw_policy,
        hold_ttl: Duration::minutes(15),
    }
}

async fn apply(pool: &Pool, lease: &Lease, rules: &Rules, envelopes: &[Envelope]) -> Vec<Outcome> {
    apply_batch(pool, lease, envelopes, rules)
        .await
        .expect("batch commits")
}

/// (status, reason, hold_id is set) of record `id`, and (status, captured_by) of the hold of
/// request `request`.
async fn rows(
    pool: &Pool,
    id: &str,
    request: &str,
) -> ((String, Option<String>, bool), (String, Option<String>)) {
    let client = pool.get().await.expect("connection");
    let r = client
        .query_one(
            "SELECT status, reason, hold_id IS NOT NULL FROM transactions WHERE id = $1",
            &[&id],
        )
        .await
        .expect("record");
    let h = client
        .query_one(
            "SELECT status, captured_by FROM holds WHERE request_id = $1",
            &[&request],
        )
        .await
        .expect("hold");
    ((r.get(0), r.get(1), r.get(2)), (h.get(0), h.get(1)))
}

async fn held(pool: &Pool, account: &str) -> rust_decimal::Decimal {
    let client = pool.get().await.expect("connection");
    client
        .query_one("SELECT held FROM accounts WHERE id = $1", &[&account])
        .await
        .expect("account")
        .get(0)
}

#[tokio::test]
async fn a_void_denies_an_approval_that_another_attempt_decided_and_releases_its_hold() {
    let db = fresh_database().await;
    let pool = db.pool(1);
    let lease = lease(&pool).await;
    let rules = rules(WithdrawPolicy::AlwaysApply);
    let now = Utc::now();
    let first = envelope("r1", Kind::WithdrawRequest, "acc", dec("60"), now);
    let deposit = envelope("d1", Kind::Deposit, "acc", dec("100"), now);
    let outcomes = apply(&pool, &lease, &rules, &[deposit, first.clone()]).await;
    assert_eq!(outcomes[1].status, OutcomeStatus::Approved);

    // A retry of r1 (a later attempt, same payload) reached its deadline without seeing the
    // decision: its API answered 402 and published its void.
    let mut retry = first.clone();
    retry.accepted_at = now + Duration::seconds(3);
    let outcomes = apply(&pool, &lease, &rules, &[retry.void(), first]).await;
    for outcome in &outcomes {
        assert_eq!(
            (outcome.status, outcome.reason, outcome.hold_id),
            (OutcomeStatus::Denied, Some(Reason::DeadlineExceeded), None)
        );
    }
    assert_eq!(
        rows(&pool, "r1", "r1").await,
        (
            ("denied".into(), Some("deadline_exceeded".into()), false),
            ("released".into(), None)
        )
    );
    assert_eq!(held(&pool, "acc").await, dec("0"));
}

#[tokio::test]
async fn a_void_after_the_capture_denies_the_record_and_leaves_the_hold_captured() {
    let db = fresh_database().await;
    let pool = db.pool(1);
    let lease = lease(&pool).await;
    let rules = rules(WithdrawPolicy::AlwaysApply);
    let now = Utc::now();
    let request = envelope("r1", Kind::WithdrawRequest, "acc", dec("60"), now);
    let deposit = envelope("d1", Kind::Deposit, "acc", dec("100"), now);
    apply(&pool, &lease, &rules, &[deposit, request.clone()]).await;
    apply(
        &pool,
        &lease,
        &rules,
        &[capture("w1", "acc", dec("60"), "r1")],
    )
    .await;

    let outcomes = apply(&pool, &lease, &rules, &[request.void()]).await;
    assert_eq!(
        (outcomes[0].status, outcomes[0].hold_id),
        (OutcomeStatus::Denied, None)
    );
    assert_eq!(
        rows(&pool, "r1", "r1").await,
        (
            ("denied".into(), Some("deadline_exceeded".into()), false),
            ("captured".into(), Some("w1".into()))
        )
    );
    assert_eq!(held(&pool, "acc").await, dec("0"));
}

#[tokio::test]
async fn reject_overdraft_keeps_money_promised_to_an_approved_request() {
    let db = fresh_database().await;
    let pool = db.pool(1);
    let lease = lease(&pool).await;
    let rules = rules(WithdrawPolicy::RejectOverdraft);
    let now = Utc::now();
    let deposit = envelope("d1", Kind::Deposit, "acc", dec("100"), now);
    let request = envelope("r1", Kind::WithdrawRequest, "acc", dec("80"), now);
    apply(&pool, &lease, &rules, &[deposit, request]).await;

    // 20 is available: a withdraw of 30 that captures nothing is rejected (and captures
    // nothing); the request's own withdraw may spend its 80 plus the 20.
    let statuses: Vec<OutcomeStatus> = apply(
        &pool,
        &lease,
        &rules,
        &[
            envelope("w1", Kind::Withdraw, "acc", dec("30"), now),
            capture("w2", "acc", dec("100"), "r1"),
        ],
    )
    .await
    .iter()
    .map(|o| o.status)
    .collect();
    assert_eq!(statuses, [OutcomeStatus::Rejected, OutcomeStatus::Applied]);
    let balance: rust_decimal::Decimal = pool
        .get()
        .await
        .expect("connection")
        .query_one("SELECT balance FROM accounts WHERE id = 'acc'", &[])
        .await
        .expect("account")
        .get(0);
    assert_eq!(balance, dec("0"));
    assert_eq!(
        rows(&pool, "w2", "r1").await,
        (
            ("applied".into(), None, true),
            ("captured".into(), Some("w2".into()))
        )
    );
}

/// A link (`PUT /users/{userId}/accounts/{accountId}`) committed while another user's first
/// command for the account was still queued: the API let that command in (the account had no
/// owner yet), and the worker must refuse it, as the link makes the account the linked user's.
#[tokio::test]
async fn a_command_of_another_user_on_a_linked_account_is_refused() {
    let db = fresh_database().await;
    // One connection for the batches, one for this test's own reads and writes.
    let pool = db.pool(2);
    let lease = lease(&pool).await;
    let rules = rules(WithdrawPolicy::AlwaysApply);
    let client = pool.get().await.expect("connection");
    client
        .execute(
            "INSERT INTO account_owners (account_id, user_id) VALUES ('linked', 'alice'), \
             ('funded', 'alice')",
            &[],
        )
        .await
        .expect("links");
    // `funded` has an account row (its first deposit carried no user), `linked` has none.
    apply(
        &pool,
        &lease,
        &rules,
        &[envelope(
            "d0",
            Kind::Deposit,
            "funded",
            dec("100"),
            Utc::now(),
        )],
    )
    .await;

    let outcomes = apply(
        &pool,
        &lease,
        &rules,
        &[
            by_user("bob-d", Kind::Deposit, "linked", dec("5"), "bob"),
            by_user("bob-w", Kind::Withdraw, "funded", dec("40"), "bob"),
            by_user("alice-w", Kind::Withdraw, "funded", dec("10"), "alice"),
        ],
    )
    .await;
    let seen: Vec<_> = outcomes.iter().map(|o| (o.status, o.reason)).collect();
    let refused = Some(Reason::AccountOwnedByAnotherUser);
    assert_eq!(
        seen,
        vec![
            (OutcomeStatus::Rejected, refused),
            (OutcomeStatus::Rejected, refused),
            (OutcomeStatus::Applied, None),
        ]
    );
    let balance = |account: &'static str| {
        let client = &client;
        async move {
            client
                .query_one("SELECT balance FROM accounts WHERE id = $1", &[&account])
                .await
                .expect("account")
                .get::<_, rust_decimal::Decimal>(0)
        }
    };
    assert_eq!(balance("funded").await, dec("90"));
    assert_eq!(balance("linked").await, dec("0"));
}
