//! withdraw_request decided by the account's shard worker: holds, deadlines, retries, policy.

use futures_util::future::join_all;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::helpers::{eventually, Options, TestApp};

fn tx(id: &str, kind: &str, amount: Value, account: &str) -> Value {
    json!({"id": id, "type": kind, "amount": amount, "accountId": account})
}

async fn account(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/account/{id}")).await.1
}

#[tokio::test]
async fn the_slash_worked_example_step_by_step() {
    let app = TestApp::spawn().await;
    let a = "slash";
    assert_eq!(
        app.post_json(&tx("1", "deposit", json!(100), a)).await.0,
        200
    );
    app.wait_balance(a, "100").await;

    let (status, approved) = app
        .post_json(&tx("2", "withdraw_request", json!(50), a))
        .await;
    assert_eq!(status, 201, "{approved}");
    assert_eq!(approved["status"], "approved");
    assert!(approved["holdId"].is_string());
    let (status, denied) = app
        .post_json(&tx("3", "withdraw_request", json!(51), a))
        .await;
    assert_eq!(status, 402, "{denied}");
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["reason"], "insufficient_funds");
    assert_eq!(
        account(&app, a).await,
        json!({"accountId": a, "balance": 100, "available": 50, "held": 50, "seq": 3})
    );

    assert_eq!(
        app.post_json(&tx("4", "withdraw", json!(50), a)).await.0,
        200
    );
    app.wait_balance(a, "50").await;
    assert_eq!(account(&app, a).await["held"], json!(0));
    let w4 = app.get_ok("/transactions/4").await;
    assert_eq!(
        w4["holdId"], approved["holdId"],
        "the withdraw captured the approved hold"
    );

    assert_eq!(
        app.post_json(&tx("5", "withdraw", json!(50), a)).await.0,
        200
    );
    app.wait_balance(a, "0").await;
    assert_eq!(
        app.post_json(&tx("6", "withdraw", json!(100), a)).await.0,
        200
    );
    app.wait_balance(a, "-100").await;
}

#[tokio::test]
async fn a_request_right_after_a_deposit_sees_the_deposit_still_in_the_queue() {
    let app = TestApp::spawn().await;
    for i in 0..100 {
        let a = format!("fresh-{i}");
        assert_eq!(
            app.post_json(&tx(&format!("d{i}"), "deposit", json!(100), &a))
                .await
                .0,
            200
        );
        let (status, body) = app
            .post_json(&tx(&format!("r{i}"), "withdraw_request", json!(100), &a))
            .await;
        assert_eq!(status, 201, "request {i}: {body}");
    }
}

#[tokio::test]
async fn three_concurrent_requests_for_the_whole_balance_approve_exactly_one() {
    let app = TestApp::spawn().await;
    app.post_accepted(&tx("d", "deposit", json!(100), "three"))
        .await;
    let requests = (0..3).map(|i| {
        let body = tx(&format!("r{i}"), "withdraw_request", json!(100), "three");
        let app = &app;
        async move { app.post_json(&body).await.0 }
    });
    let mut statuses = join_all(requests).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 402, 402]);
    assert_eq!(account(&app, "three").await["available"], json!(0));
}

#[tokio::test]
async fn with_workers_stopped_a_request_is_denied_at_the_deadline_and_leaves_no_hold() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| s.ledger.request_deadline_ms = 1500,
        ..Options::default()
    })
    .await;
    // A deposit waiting in the queue with the request: the request must still be denied.
    app.post_accepted(&tx("d", "deposit", json!(100), "stopped"))
        .await;
    let started = Instant::now();
    let (status, body) = app
        .post_json(&tx("late", "withdraw_request", json!(10), "stopped"))
        .await;
    let took = started.elapsed();
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["reason"], "deadline_exceeded");
    assert!(
        took >= Duration::from_millis(1400),
        "answered before the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2000),
        "deadline + 0.5 s exceeded: {took:?}"
    );

    let _worker = app.start_worker().await;
    app.wait_balance("stopped", "100").await;
    let record = eventually(Duration::from_secs(10), || async {
        let (status, record) = app.get("/transactions/late").await;
        (status == 200).then_some(record)
    })
    .await;
    assert_eq!(record["status"], "denied");
    assert_eq!(record["reason"], "deadline_exceeded");
    assert_eq!(account(&app, "stopped").await["held"], json!(0));
    assert_eq!(app.count("SELECT count(*) FROM holds").await, 0);
    // The answer stays the same on retry.
    let (status, again) = app
        .post_json(&tx("late", "withdraw_request", json!(10), "stopped"))
        .await;
    assert_eq!(
        (status, &again["reason"]),
        (402, &json!("deadline_exceeded"))
    );
}

/// A request nginx retried on another replica (`X-Request-Start` long past) waits only the
/// floor (margin + 0.5 s), not a fresh deadline; answer and ledger still agree.
#[tokio::test]
async fn a_late_retry_waits_only_the_floor_and_its_answer_matches_the_ledger() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.post_accepted(&tx("d", "deposit", json!(100), "retried"))
        .await;
    let ten_seconds_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 10.0;
    let post = |id: &'static str| {
        app.client
            .post(format!("{}/transaction", app.address))
            .header("X-Request-Start", format!("t={ten_seconds_ago:.3}"))
            .json(&tx(id, "withdraw_request", json!(10), "retried"))
            .send()
    };
    // No worker: denied once the floor (0.5 s margin + 0.5 s) is over, not after 3 s.
    let started = Instant::now();
    let response = post("late-retry").await.unwrap();
    let took = started.elapsed();
    assert_eq!(response.status().as_u16(), 402);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // With a worker, the floor is enough for a decision.
    app.worker = Some(app.start_worker().await);
    app.wait_balance("retried", "100").await;
    let response = post("in-time").await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let record = eventually(Duration::from_secs(10), || async {
        let (status, record) = app.get("/transactions/late-retry").await;
        (status == 200).then_some(record)
    })
    .await;
    assert_eq!(record["status"], "denied", "{record}");
    assert_eq!(account(&app, "retried").await["held"], json!(10));
}

#[tokio::test]
async fn a_void_releases_a_hold_approved_too_late_for_the_answer() {
    let app = TestApp::spawn().await;
    app.post_accepted(&tx("d", "deposit", json!(100), "voided"))
        .await;
    app.wait_balance("voided", "100").await;
    // The worker approves this request, but the API "never heard": it publishes the void.
    let connection = app.broker().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let request = app.envelope("lost", tally_core::Kind::WithdrawRequest, "voided", "60");
    app.publish_raw(&channel, &request.encode(), "voided").await;
    let approved = eventually(Duration::from_secs(10), || async {
        let (status, record) = app.get("/transactions/lost").await;
        (status == 200).then_some(record)
    })
    .await;
    assert_eq!(approved["status"], "approved");
    assert_eq!(account(&app, "voided").await["held"], json!(60));

    app.publish_raw(&channel, &request.void().encode(), "voided")
        .await;
    eventually(Duration::from_secs(10), || async {
        let record = app.get_ok("/transactions/lost").await;
        (record["status"] == "denied").then_some(())
    })
    .await;
    assert_eq!(
        account(&app, "voided").await,
        json!({"accountId": "voided", "balance": 100, "available": 100, "held": 0, "seq": 2})
    );
    assert_eq!(
        app.count("SELECT count(*) FROM holds WHERE status = 'released'")
            .await,
        1
    );
}

#[tokio::test]
async fn an_expired_hold_stops_counting_and_its_expiry_is_recorded() {
    let app = TestApp::spawn_with(Options {
        tweak: |s| {
            s.ledger.hold_ttl_secs = 1;
            s.worker.hold_sweep_secs = 1;
        },
        ..Options::default()
    })
    .await;
    app.post_accepted(&tx("d", "deposit", json!(100), "ttl"))
        .await;
    let (status, _) = app
        .post_json(&tx("r1", "withdraw_request", json!(30), "ttl"))
        .await;
    assert_eq!(status, 201);
    assert_eq!(account(&app, "ttl").await["available"], json!(70));
    eventually(Duration::from_secs(5), || async {
        (account(&app, "ttl").await["available"] == json!(100)).then_some(())
    })
    .await;
    // The sweep records the expiry.
    eventually(Duration::from_secs(5), || async {
        let expired = app
            .count("SELECT count(*) FROM holds WHERE status = 'expired'")
            .await;
        (expired == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_withdraw_naming_request_id_captures_that_hold_not_the_oldest() {
    let app = TestApp::spawn().await;
    app.post_accepted(&tx("d", "deposit", json!(100), "named"))
        .await;
    let (_, first) = app
        .post_json(&tx("r1", "withdraw_request", json!(20), "named"))
        .await;
    let (_, second) = app
        .post_json(&tx("r2", "withdraw_request", json!(20), "named"))
        .await;
    assert_ne!(first["holdId"], second["holdId"]);
    let capture =
        json!({"id":"w","type":"withdraw","amount":20,"accountId":"named","requestId":"r2"});
    assert_eq!(app.post_json(&capture).await.0, 200);
    app.wait_balance("named", "80").await;
    let w = app.get_ok("/transactions/w").await;
    assert_eq!(w["holdId"], second["holdId"]);
    assert_eq!(
        app.count("SELECT count(*) FROM holds WHERE request_id = 'r1' AND status = 'open'")
            .await,
        1
    );
    assert_eq!(account(&app, "named").await["held"], json!(20));
}

#[tokio::test]
async fn retries_return_the_first_outcome_and_never_a_second_effect() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let deposit = tx("dep", "deposit", json!(25), "retry");
    // Three copies while the first is still queued (no worker yet) …
    for _ in 0..3 {
        assert_eq!(app.post_json(&deposit).await.0, 200);
    }
    let worker = app.start_worker().await;
    app.wait_balance("retry", "25").await;
    // … and two after it was applied.
    for _ in 0..2 {
        let (status, body) = app.post_json(&deposit).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "accepted");
    }
    assert_eq!(app.balance("retry").await, "25");
    assert_eq!(
        app.count("SELECT count(*) FROM transactions WHERE id = 'dep'")
            .await,
        1
    );

    let request = tx("req", "withdraw_request", json!(10), "retry");
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(app.post_json(&request).await);
    }
    for (status, body) in &answers {
        assert_eq!(*status, 201, "{body}");
        assert_eq!(body["holdId"], answers[0].1["holdId"]);
    }
    assert_eq!(account(&app, "retry").await["held"], json!(10));

    let (status, body) = app
        .post_json(&tx("req", "withdraw_request", json!(11), "retry"))
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "id_reused");
    let (status, _) = app
        .post_json(&tx("dep", "deposit", json!(26), "retry"))
        .await;
    assert_eq!(status, 422);

    // A denied request stays denied.
    let big = tx("big", "withdraw_request", json!(1000), "retry");
    assert_eq!(app.post_json(&big).await.0, 402);
    assert_eq!(app.post_json(&big).await.0, 402);
    worker.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_header_takes_the_role_of_the_id() {
    let app = TestApp::spawn().await;
    let post = |id: &'static str, amount: i64| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/transaction", app.address))
                .header("Idempotency-Key", "key-1")
                .json(&tx(id, "deposit", json!(amount), "keyed"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("a", 5).await, 200);
    app.wait_balance("keyed", "5").await;
    assert_eq!(post("a", 5).await, 200);
    assert_eq!(post("b", 5).await, 422, "same key, another body id");
    assert_eq!(app.balance("keyed").await, "5");
    assert_eq!(app.get("/transactions/key-1").await.0, 200);
}

#[tokio::test]
async fn reject_overdraft_records_the_withdraw_without_applying_it() {
    let app = TestApp::spawn_with(Options {
        tweak: |s| {
            s.ledger.withdraw_policy = tally_core::ledger::WithdrawPolicy::RejectOverdraft;
        },
        ..Options::default()
    })
    .await;
    app.post_accepted(&tx("d", "deposit", json!(5), "strict"))
        .await;
    assert_eq!(
        app.post_json(&tx("w", "withdraw", json!(10), "strict"))
            .await
            .0,
        200
    );
    let record = eventually(Duration::from_secs(10), || async {
        let (status, record) = app.get("/transactions/w").await;
        (status == 200).then_some(record)
    })
    .await;
    assert_eq!(record["status"], "rejected");
    assert_eq!(record["reason"], "insufficient_funds");
    assert_eq!(app.balance("strict").await, "5");
}
