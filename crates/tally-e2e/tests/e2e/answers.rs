//! Every answer is true (README, "What an answer promises"): each test provokes a fault at an
//! exact point of the write protocol — a confirm lost in flight, a worker stuck inside its
//! batch, a void still queued, a clock off — and checks that the answer a client got agrees
//! with what the ledger finally records.

use serde_json::{json, Value};
use std::time::Duration;
use tally_core::command::NewTransaction;
use tally_core::{AmountRules, Envelope};
use tally_testkit::process::{libfaketime, skewed_clock};

use crate::helpers::{broker_address, eventually, Options, TcpProxy, TestApp};

fn tx(id: &str, kind: &str, amount: Value, account: &str) -> Value {
    json!({"id": id, "type": kind, "amount": amount, "accountId": account})
}

/// Status and error code of an answer.
fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or(""))
}

/// The record of `id` as the ledger has it: (status, reason), `None` while undecided.
async fn record(app: &TestApp, id: &str) -> Option<(String, Option<String>)> {
    let client = app.pool.get().await.expect("db");
    client
        .query_opt(
            "SELECT status, reason FROM transactions WHERE id = $1",
            &[&id],
        )
        .await
        .expect("record query")
        .map(|r| (r.get(0), r.get(1)))
}

async fn wait_record(app: &TestApp, id: &str, status: &str) {
    eventually(Duration::from_secs(15), || async {
        record(app, id)
            .await
            .filter(|(s, _)| s == status)
            .map(|_| ())
    })
    .await;
}

/// Waits until a session of this test's database waits for a lock: the worker's batch is
/// stuck inside its transaction.
async fn wait_worker_blocked(app: &TestApp) {
    eventually(Duration::from_secs(15), || async {
        let n = app
            .count(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await;
        (n > 0).then_some(())
    })
    .await;
}

/// A transaction that blocks every hold INSERT (a worker batch placing a hold waits inside its
/// transaction, after deciding) while reads of the ledger go on. Released when dropped.
async fn block_hold_inserts(app: &TestApp) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(app.settings.database.url.expose(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute("BEGIN; LOCK TABLE holds IN SHARE MODE")
        .await
        .expect("lock holds");
    client
}

/// A short deadline, and a worker whose batch may be held inside its transaction (by
/// [`block_hold_inserts`]) as long as a loaded machine makes the test take: the lease TTL, from
/// which the worker's `statement_timeout` derives, is far longer than any such hold, so the
/// held batch is never cancelled and re-run at a later time.
fn short_deadline_held_batch(s: &mut tally_settings::Settings) {
    s.ledger.request_deadline_ms = 1500;
    s.ledger.decision_margin_ms = 500;
    s.worker.lease_ttl_ms = 60_000;
}

#[tokio::test]
async fn a_deposit_whose_confirm_was_lost_is_republished_and_answered_200_with_one_effect() {
    let proxy = TcpProxy::start(broker_address()).await;
    let app = TestApp::spawn_with(Options {
        broker_proxy: Some(proxy.clone()),
        tweak: |s| {
            s.api.publish_timeout_ms = 500;
            s.api.settle_timeout_ms = 10_000;
        },
        ..Options::default()
    })
    .await;
    proxy.stall();
    let post = app.spawn_post_json(&tx("lost-confirm", "deposit", json!(100), "settle"));
    // The broker has it (the worker, not behind the proxy, applies it) while the API still
    // waits for a confirm that will never come on this connection.
    wait_record(&app, "lost-confirm", "applied").await;
    proxy.cut();
    proxy.resume();
    proxy.restore();

    let (status, body) = post.await.expect("join");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted");
    // The republished copy is a duplicate: one effect.
    eventually(Duration::from_secs(15), || async {
        let channel = app.broker().await.create_channel().await.expect("channel");
        (app.queued(&channel).await == 0).then_some(())
    })
    .await;
    app.wait_balance("settle", "100").await;
    assert_eq!(
        app.count("SELECT count(*) FROM transactions WHERE id = 'lost-confirm'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_deposit_that_cannot_be_settled_is_answered_outcome_unknown_never_unavailable() {
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
    let response = app
        .post(&tx("unsettled", "deposit", json!(7), "unknown"))
        .await;
    assert!(response.headers().contains_key("retry-after"));
    let answer = (
        response.status().as_u16(),
        response.json::<Value>().await.expect("json"),
    );
    assert_eq!(code(&answer), (503, "outcome_unknown"), "{}", answer.1);
    // It was accepted after all: "unavailable" (nothing accepted) would have been a lie.
    wait_record(&app, "unsettled", "applied").await;
    proxy.resume();
}

#[tokio::test]
async fn a_request_that_may_still_be_approved_is_never_answered_402_without_a_confirmed_void() {
    let proxy = TcpProxy::start(broker_address()).await;
    let app = TestApp::spawn_with(Options {
        broker_proxy: Some(proxy.clone()),
        tweak: |s| {
            short_deadline_held_batch(s);
            s.api.settle_timeout_ms = 500;
        },
        ..Options::default()
    })
    .await;
    assert_eq!(
        app.post_json(&tx("d", "deposit", json!(100), "late"))
            .await
            .0,
        200
    );
    app.wait_balance("late", "100").await;

    let blocker = block_hold_inserts(&app).await;
    let post = app.spawn_post_json(&tx("r1", "withdraw_request", json!(60), "late"));
    // The worker approved r1 in time and is stuck before its commit; the API loses the broker,
    // so no reply comes and no void can be published.
    wait_worker_blocked(&app).await;
    proxy.cut();
    let answer = post.await.expect("join");
    drop(blocker);
    wait_record(&app, "r1", "approved").await;
    assert_eq!(
        code(&answer),
        (503, "outcome_unknown"),
        "the record is approved: {}",
        answer.1
    );
}

#[tokio::test]
async fn a_late_approval_is_voided_before_the_402_and_a_retry_gets_402_without_a_hold() {
    let app = TestApp::spawn_with(Options {
        tweak: short_deadline_held_batch,
        ..Options::default()
    })
    .await;
    assert_eq!(
        app.post_json(&tx("d", "deposit", json!(100), "voided"))
            .await
            .0,
        200
    );
    app.wait_balance("voided", "100").await;

    let blocker = block_hold_inserts(&app).await;
    let request = tx("r1", "withdraw_request", json!(60), "voided");
    let post = app.spawn_post_json(&request);
    wait_worker_blocked(&app).await;
    let (status, body) = post.await.expect("join");
    assert_eq!(
        (status, &body["reason"]),
        (402, &json!("deadline_exceeded"))
    );
    drop(blocker);

    // The approval commits late; the void, confirmed before the 402, then denies it.
    wait_record(&app, "r1", "denied").await;
    let account = app.get_ok("/account/voided").await;
    assert_eq!(account["available"], json!(100), "{account}");
    assert_eq!(
        app.count("SELECT count(*) FROM holds WHERE status = 'released'")
            .await,
        1
    );
    let (status, retry) = app.post_json(&request).await;
    assert_eq!(status, 402, "{retry}");
    assert_eq!(retry["reason"], "deadline_exceeded");
    assert!(
        retry.get("holdId").is_none(),
        "a denial holds nothing: {retry}"
    );
}

#[tokio::test]
async fn a_retry_is_not_answered_201_while_an_earlier_attempts_void_is_still_queued() {
    let app = TestApp::spawn_with(Options {
        tweak: short_deadline_held_batch,
        ..Options::default()
    })
    .await;
    let account = "queued-void";
    assert_eq!(
        app.post_json(&tx("d", "deposit", json!(100), account))
            .await
            .0,
        200
    );
    app.wait_balance(account, "100").await;
    let request = tx("r1", "withdraw_request", json!(60), account);

    // Attempt 1: the worker approves but is stuck before its commit; the attempt voids itself
    // and answers 402.
    let blocker = block_hold_inserts(&app).await;
    let first = app.spawn_post_json(&request);
    wait_worker_blocked(&app).await;
    assert_eq!(first.await.expect("join").0, 402);

    // Hold the shard's lease row, so the batch after the stuck one (the void) cannot start.
    let (fence, conn) =
        tokio_postgres::connect(app.settings.database.url.expose(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(conn);
    let shard = i32::from(app.topology.shard_of(account));
    let lease_lock = tokio::spawn(async move {
        fence
            .batch_execute(&format!(
                "BEGIN; SELECT 1 FROM shard_leases WHERE shard = {shard} FOR UPDATE"
            ))
            .await
            .expect("lock lease row");
        fence
    });
    drop(blocker);
    let fence = lease_lock.await.expect("join");
    // The approval is committed; the void is queued behind it.
    wait_record(&app, "r1", "approved").await;

    let mut retry = app.spawn_post_json(&request);
    // While the void cannot be applied, the retry has nothing final to say.
    let early = tokio::time::timeout(Duration::from_millis(800), &mut retry).await;
    assert!(
        early.is_err(),
        "answered from the record while a void was queued: {:?}",
        early
    );
    drop(fence);
    let (status, body) = retry.await.expect("join");
    assert_eq!(status, 402, "{body}");
    wait_record(&app, "r1", "denied").await;
}

#[tokio::test]
async fn a_void_denies_an_approval_that_an_earlier_attempt_never_answered() {
    let app = TestApp::spawn_with(Options {
        tweak: short_deadline_held_batch,
        ..Options::default()
    })
    .await;
    let account = "orphan";
    assert_eq!(
        app.post_json(&tx("d", "deposit", json!(100), account))
            .await
            .0,
        200
    );
    app.wait_balance(account, "100").await;
    let request = tx("r1", "withdraw_request", json!(60), account);

    // Attempt 1 published its copy and died before answering: its copy is approved (it had
    // time left) but the commit is stuck.
    let blocker = block_hold_inserts(&app).await;
    let fields = request.as_object().expect("object").clone();
    let parsed = NewTransaction::from_json(&fields, &AmountRules::default()).expect("valid");
    let mut orphan = Envelope::new(&parsed, chrono::Utc::now() - chrono::Duration::seconds(1));
    orphan.decide_by = Some(chrono::Utc::now() + chrono::Duration::seconds(60));
    let channel = app.broker().await.create_channel().await.expect("channel");
    channel
        .confirm_select(Default::default())
        .await
        .expect("confirms");
    app.publish_raw(&channel, &orphan.encode(), account).await;
    wait_worker_blocked(&app).await;

    // Attempt 2 (a retry) sees nothing decided, gets no decision in time: void, 402.
    let (status, body) = app.post_json(&request).await;
    assert_eq!(status, 402, "{body}");
    drop(blocker);

    // The record must end as the only answer given says.
    wait_record(&app, "r1", "denied").await;
    let balance = app.get_ok(&format!("/account/{account}")).await;
    assert_eq!(balance["held"], json!(0), "{balance}");
}

#[tokio::test]
async fn an_api_whose_clock_is_off_refuses_withdraw_requests_and_says_so() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.post_json(&tx("d", "deposit", json!(100), "skew"))
            .await
            .0,
        200
    );
    app.wait_balance("skew", "100").await;
    // A request this (in-process) API gets approved, to be retried on the skewed one.
    let approved = tx("r0", "withdraw_request", json!(10), "skew");
    assert_eq!(app.post_json(&approved).await.0, 201);

    // The real binary, 5 s ahead of every other clock (libfaketime; timers stay monotonic).
    let (_api, skewed) = app.api_process(skewed_clock(&libfaketime(), 5)).await;
    let post = |body: Value| {
        let (client, url) = (app.client.clone(), format!("{skewed}/transaction"));
        async move {
            let r = client.post(url).json(&body).send().await.expect("POST");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    // Its decide-by instant could not be trusted: refused, nothing published (checked below,
    // once a later command of the same shard is applied).
    let answer = post(tx("r1", "withdraw_request", json!(60), "skew")).await;
    assert_eq!(code(&answer), (503, "unavailable"), "{}", answer.1);
    // A retry of an approved request is refused too, but "nothing was accepted" would be false.
    let answer = post(approved).await;
    assert_eq!(code(&answer), (503, "outcome_unknown"), "{}", answer.1);
    let status = app.get_ok("/status").await;
    assert_eq!(
        status["clock"]["status"], "ok",
        "the in-process API: {status}"
    );
    let status: Value = app
        .client
        .get(format!("{skewed}/status"))
        .send()
        .await
        .expect("GET /status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["clock"]["status"], "skewed", "{status}");
    assert!(
        status["clock"]["offsetMs"].as_i64().unwrap_or(0) < -4000,
        "{status}"
    );
    // Deposits do not depend on the clock.
    assert_eq!(post(tx("d2", "deposit", json!(1), "skew")).await.0, 200);
    app.wait_balance("skew", "101").await;
    // d2 went through the account's queue after r1 would have: r1 was never published.
    assert_eq!(record(&app, "r1").await, None);
    assert_eq!(record(&app, "r0").await, Some(("approved".into(), None)));
}
