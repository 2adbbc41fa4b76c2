//! [`submit`] on its own, against the real PostgreSQL and RabbitMQ: one test per kind of
//! answer it gives (the timing-dependent choices are unit-tested in `src/submit.rs`; the HTTP
//! shape of each answer in `write_path.rs`, `answers.rs` and `withdraw_request.rs`).

use serde_json::{json, Value};
use std::time::Duration;
use tally_api::submit::{submit, Answer};
use tally_core::command::NewTransaction;
use tally_core::ledger::VOIDED_REASON;
use tally_core::{AmountRules, Kind, Reason};

use crate::helpers::{broker_address, database_address, eventually, Options, TcpProxy, TestApp};

const WAIT: Duration = Duration::from_secs(3);

fn command(fields: Value) -> NewTransaction {
    NewTransaction::from_json(fields.as_object().unwrap(), &AmountRules::default()).unwrap()
}

fn tx(id: &str, kind: &str, amount: i64, account: &str) -> NewTransaction {
    command(json!({"id": id, "type": kind, "amount": amount, "accountId": account}))
}

async fn recorded(app: &TestApp, id: &str) {
    eventually(Duration::from_secs(15), || async {
        let n = app
            .count(&format!(
                "SELECT count(*) FROM transactions WHERE id = '{id}'"
            ))
            .await;
        (n == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_deposit_is_accepted_then_replayed_from_its_record_and_a_reuse_is_refused() {
    let app = TestApp::spawn().await;
    let deposit = tx("d1", "deposit", 10, "s-acc");
    let Answer::Accepted(first) = submit(&app.state, &deposit, "r1", WAIT, None).await else {
        panic!("not accepted")
    };
    assert_eq!((first.kind, first.id.as_str()), (Kind::Deposit, "d1"));
    recorded(&app, "d1").await;

    let again = submit(&app.state, &deposit, "r2", WAIT, None).await;
    assert_eq!(again, Answer::Replayed(first));
    let reuse = submit(
        &app.state,
        &tx("d1", "deposit", 11, "s-acc"),
        "r3",
        WAIT,
        None,
    )
    .await;
    assert_eq!(reuse, Answer::IdReused);
}

#[tokio::test]
async fn a_withdraw_request_is_approved_with_a_hold_or_denied_with_a_reason() {
    let app = TestApp::spawn().await;
    submit(
        &app.state,
        &tx("d1", "deposit", 100, "s-req"),
        "r",
        WAIT,
        None,
    )
    .await;
    app.wait_balance("s-req", "100").await;

    let approved = submit(
        &app.state,
        &tx("w1", "withdraw_request", 30, "s-req"),
        "r",
        WAIT,
        None,
    )
    .await;
    let Answer::Approved(decision) = approved else {
        panic!("not approved: {approved:?}")
    };
    assert!(decision.hold_id.is_some() && decision.reason.is_none());

    let denied = submit(
        &app.state,
        &tx("w2", "withdraw_request", 1000, "s-req"),
        "r",
        WAIT,
        None,
    )
    .await;
    let Answer::Denied(decision) = denied else {
        panic!("not denied: {denied:?}")
    };
    assert_eq!(decision.reason, Some(Reason::InsufficientFunds));
    assert_eq!(decision.hold_id, None);
}

#[tokio::test]
async fn a_withdraw_request_nobody_decides_in_time_is_voided_and_denied() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| {
            s.ledger.request_deadline_ms = 1500;
            s.ledger.decision_margin_ms = 500;
        },
        ..Options::default()
    })
    .await;
    let wait = Duration::from_millis(1500);
    let answer = submit(
        &app.state,
        &tx("w1", "withdraw_request", 5, "s-late"),
        "r",
        wait,
        None,
    )
    .await;
    let Answer::Denied(decision) = answer else {
        panic!("not denied: {answer:?}")
    };
    assert_eq!(decision.reason, Some(VOIDED_REASON));
    // The 402 went out only once the void was confirmed: the copy and its void are queued
    // (no worker here), so the worker will record the denial the answer promised.
    let channel = app.broker().await.create_channel().await.expect("channel");
    assert_eq!(app.queued(&channel).await, 2);
}

#[tokio::test]
async fn a_command_for_an_account_another_user_owns_is_refused() {
    let app = TestApp::spawn().await;
    tally_store::users::link(&app.pool, "u1", "s-owned")
        .await
        .unwrap();
    let foreign = command(
        json!({"id": "d1", "type": "deposit", "amount": 1, "accountId": "s-owned", "userId": "u2"}),
    );
    assert_eq!(
        submit(&app.state, &foreign, "r", WAIT, None).await,
        Answer::OwnedByAnother
    );
}

#[tokio::test]
async fn a_withdraw_request_while_the_ledger_is_away_is_unavailable() {
    let proxy = TcpProxy::start(database_address()).await;
    let app = TestApp::spawn_with(Options {
        database_proxy: Some(proxy.clone()),
        ..Options::default()
    })
    .await;
    proxy.cut();
    let answer = submit(
        &app.state,
        &tx("w1", "withdraw_request", 1, "s-pg"),
        "r",
        WAIT,
        None,
    )
    .await;
    assert!(matches!(answer, Answer::Unavailable(_)), "{answer:?}");
    proxy.restore();
}

#[tokio::test]
async fn a_deposit_whose_publish_cannot_be_settled_has_an_unknown_outcome() {
    let proxy = TcpProxy::start(broker_address()).await;
    let app = TestApp::spawn_with(Options {
        broker_proxy: Some(proxy.clone()),
        tweak: |s| {
            s.api.publish_timeout_ms = 300;
            s.api.settle_timeout_ms = 700;
        },
        ..Options::default()
    })
    .await;
    proxy.stall();
    let answer = submit(
        &app.state,
        &tx("d1", "deposit", 7, "s-unknown"),
        "r",
        WAIT,
        None,
    )
    .await;
    assert!(matches!(answer, Answer::OutcomeUnknown(_)), "{answer:?}");
    proxy.resume();
}
