//! Worst days: poison messages, dead letters and their re-publishing, the conservation
//! auditor, and a database outage seen by one test's processes only.

use serde_json::{json, Value};
use std::time::Duration;
use tally_core::Kind;

use crate::helpers::{database_address, eventually, Options, TcpProxy, TestApp};

fn tx(id: &str, kind: &str, amount: Value, account: &str) -> Value {
    json!({"id": id, "type": kind, "amount": amount, "accountId": account})
}

async fn conservation(app: &TestApp) -> Value {
    let (status, report) = app.get("/debug/conservation").await;
    assert_eq!(status, 200, "{report}");
    report
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_once_and_the_shard_keeps_flowing() {
    let app = TestApp::spawn().await;
    let connection = app.broker().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    // Same shard as the account used below.
    app.publish_raw(&channel, b"{\"v\":1,\"garbage\":true}", "flowing")
        .await;
    app.publish_raw(&channel, b"not json at all", "flowing")
        .await;
    assert_eq!(
        app.post_json(&tx("after", "deposit", json!(3), "flowing"))
            .await
            .0,
        200
    );
    app.wait_balance("flowing", "3").await;

    let letters = eventually(Duration::from_secs(10), || async {
        let letters = app.get_ok("/debug/dead-letters").await;
        (letters.as_array().map_or(0, Vec::len) == 2).then_some(letters)
    })
    .await;
    for letter in letters.as_array().unwrap() {
        assert_eq!(letter["reason"], "rejected");
        assert_eq!(
            letter["queue"],
            app.topology.shard_queue(app.topology.shard_of("flowing"))
        );
        assert!(
            letter["detail"].as_str().unwrap().contains("envelope"),
            "{letter}"
        );
    }
    // Still exactly two a moment later: no redelivery loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = app.get_ok("/debug/dead-letters").await;
    assert_eq!(again.as_array().unwrap().len(), 2);
    let report = conservation(&app).await;
    assert_eq!(report["deadLetters"], json!(2));
    assert_eq!(report["pass"], json!(true), "{report}");
}

#[tokio::test]
async fn a_hand_published_envelope_the_api_would_refuse_is_dead_lettered_once_without_effect() {
    let app = TestApp::spawn().await;
    let connection = app.broker().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let valid = |id: &str, kind: Kind| -> Value {
        serde_json::from_slice(&app.envelope(id, kind, "strict", "5").encode()).unwrap()
    };
    // Each breaks one rule of POST /transaction (or of the envelope); the worker must refuse
    // it as the API would have, not apply it.
    let broken: Vec<(&str, Value)> = vec![
        ("amount", json!({"amount": "10.001"})),
        ("amount", json!({"amount": "10000000000000000"})),
        (
            "amount",
            json!({"amount": "10.00999999999999999999999999999999"}),
        ),
        ("id", json!({"id": "has space"})),
        ("accountId", json!({"accountId": "strict/other"})),
        ("userId", json!({"userId": "not ok"})),
        ("requestId", json!({"requestId": "r-1"})),
        ("void", json!({"void": true})),
        ("decideBy", json!({"decideBy": "2030-01-01T00:00:00Z"})),
    ];
    for (n, (_, change)) in broken.iter().enumerate() {
        let mut envelope = valid(&format!("bad-{n}"), Kind::Deposit);
        for (key, value) in change.as_object().unwrap() {
            envelope[key] = value.clone();
        }
        app.publish_raw(&channel, envelope.to_string().as_bytes(), "strict")
            .await;
    }
    // A valid command behind them on the same shard: once it is applied, they were handled.
    app.publish_raw(
        &channel,
        valid("good", Kind::Deposit).to_string().as_bytes(),
        "strict",
    )
    .await;
    app.wait_balance("strict", "5").await;

    let letters = eventually(Duration::from_secs(10), || async {
        let letters = app.get_ok("/debug/dead-letters").await;
        (letters.as_array().map_or(0, Vec::len) >= broken.len()).then_some(letters)
    })
    .await;
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), broken.len(), "{letters:?}");
    for (field, _) in &broken {
        let naming = letters
            .iter()
            .filter(|l| {
                l["detail"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("`{field}`"))
            })
            .count();
        assert!(naming >= 1, "no dead letter names `{field}`: {letters:?}");
    }
    for letter in letters {
        assert_eq!(letter["reason"], "rejected", "{letter}");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM transactions").await,
        1,
        "only the valid command is recorded"
    );

    // Exactly once: a marker dead-lettered after them arrives with no copy of them before it.
    let mut marker = valid("marker", Kind::Withdraw);
    marker["amount"] = json!("0");
    app.publish_raw(&channel, marker.to_string().as_bytes(), "strict")
        .await;
    let total = eventually(Duration::from_secs(10), || async {
        let letters = app.get_ok("/debug/dead-letters").await;
        let letters = letters.as_array().cloned().unwrap_or_default();
        letters
            .iter()
            .any(|l| l["body"].as_str().is_some_and(|b| b.contains("marker")))
            .then_some(letters.len())
    })
    .await;
    assert_eq!(total, broken.len() + 1);
    assert_eq!(app.balance("strict").await, "5");
    let report = conservation(&app).await;
    assert_eq!(report["pass"], json!(true), "{report}");
}

#[tokio::test]
async fn a_dead_letter_can_be_republished_after_a_fix() {
    let app = TestApp::spawn().await;
    // A valid command that died (as if it had crashed consumers past the delivery limit).
    let id = app.dead_deposit("revived", "phoenix", "12.5").await;
    let letters = app.get_ok("/debug/dead-letters").await;
    assert_eq!(letters.as_array().map_or(0, Vec::len), 1, "{letters}");
    assert_eq!(app.balance("phoenix").await, "0");

    let worker = tally_worker::Worker::build(app.settings.clone())
        .await
        .unwrap();
    let broker = worker.broker().await.unwrap();
    let done = tally_worker::dead_letters::republish(
        worker.pool(),
        &broker,
        worker.topology(),
        &worker.amount_rules(),
        Some(std::slice::from_ref(&id)),
    )
    .await
    .unwrap();
    assert_eq!(done, [id]);
    app.wait_balance("phoenix", "12.5").await;
    let letters = app.get_ok("/debug/dead-letters").await;
    assert!(letters[0]["republishedAt"].is_string());
    // Re-publishing again does nothing: it is no longer pending.
    let again = tally_worker::dead_letters::republish(
        worker.pool(),
        &broker,
        worker.topology(),
        &worker.amount_rules(),
        None,
    )
    .await
    .unwrap();
    assert!(again.is_empty());
}

#[tokio::test]
async fn the_auditor_passes_on_a_healthy_ledger_and_names_tampered_rows() {
    let app = TestApp::spawn().await;
    app.post_accepted(&tx("d1", "deposit", json!(100), "audited"))
        .await;
    app.post_accepted(&tx("r1", "withdraw_request", json!(40), "audited"))
        .await;
    app.post_accepted(&tx("w1", "withdraw", json!(10), "audited"))
        .await;
    app.post_accepted(&tx("d2", "deposit", json!(5), "other"))
        .await;
    app.wait_balance("audited", "90").await;
    app.wait_balance("other", "5").await;

    let report = conservation(&app).await;
    assert_eq!(report["pass"], json!(true), "{report}");
    assert_eq!(report["totals"]["balance"], "95");
    assert_eq!(report["totals"]["held"], "40");
    assert_eq!(
        report["queues"].as_object().unwrap().len(),
        5,
        "4 shards + dead"
    );

    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE accounts SET balance = balance + 1 WHERE id = 'audited'",
            &[],
        )
        .await
        .unwrap();
    let report = conservation(&app).await;
    assert_eq!(report["pass"], json!(false));
    let failing: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pass"] == json!(false))
        .collect();
    let names: Vec<&str> = failing
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["balances_match_history", "history_is_gapless"]);
    assert_eq!(
        failing[0]["offending"],
        json!([{"accountId": "audited", "balance": "91", "expected": "90"}])
    );

    client
        .execute(
            "UPDATE accounts SET balance = balance - 1, held = 0 WHERE id = 'audited'",
            &[],
        )
        .await
        .unwrap();
    let report = conservation(&app).await;
    let held = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "held_matches_open_holds")
        .unwrap();
    assert_eq!(held["pass"], json!(false));
    assert_eq!(held["offending"][0]["accountId"], "audited");
}

#[tokio::test]
async fn a_database_outage_answers_reads_503_keeps_accepting_writes_and_recovers() {
    let proxy = TcpProxy::start(database_address()).await;
    let app = TestApp::spawn_with(Options {
        database_proxy: Some(proxy.clone()),
        ..Options::default()
    })
    .await;
    assert_eq!(
        app.post_json(&tx("before", "deposit", json!(1), "pg"))
            .await
            .0,
        200
    );
    app.wait_balance("pg", "1").await;

    proxy.cut();
    let (status, body) = app.get("/account/pg").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(app.get("/health/ready").await.0, 503);
    assert_eq!(app.get("/status").await.1["db"], "down");
    // The broker is the durability point: deposits are still accepted, and wait in the queue.
    assert_eq!(
        app.post_json(&tx("during", "deposit", json!(2), "pg"))
            .await
            .0,
        200
    );
    // A withdraw_request cannot be decided (nor its retry answered from the record): 503 now,
    // not a 402 after the deadline.
    let (status, body) = app
        .post_json(&tx("req", "withdraw_request", json!(1), "pg"))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("unavailable")),
        "{body}"
    );

    proxy.restore();
    app.wait_balance("pg", "3").await;
    // "Nothing was accepted" was true: once a later command of the account is applied, the
    // request still has no record.
    assert_eq!(
        app.post_json(&tx("after", "deposit", json!(1), "pg"))
            .await
            .0,
        200
    );
    app.wait_balance("pg", "4").await;
    assert_eq!(app.get("/transactions/req").await.0, 404);
    assert_eq!(app.get("/health/ready").await.0, 200);
    assert_eq!(conservation(&app).await["pass"], json!(true));
}
