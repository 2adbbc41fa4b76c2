//! `GET /transactions/{id}` tells what the ledger knows of an id (issue 15 item 2): the record
//! with its conflicting reuses and dead-lettered copies; without a record, a 404 that says
//! whether the command was dead-lettered (and republished) or is unknown to the ledger —
//! never accepted, or still queued, which the ledger cannot tell apart.

use serde_json::{json, Value};
use std::time::Duration;
use tally_core::Kind;

use crate::helpers::{eventually, Options, TestApp};

/// Waits until the archive holds `n` dead letters.
async fn wait_archived(app: &TestApp, n: usize) -> Value {
    eventually(Duration::from_secs(15), || async {
        let letters = app.get_ok("/debug/dead-letters").await;
        (letters.as_array().map_or(0, Vec::len) == n).then_some(letters)
    })
    .await
}

#[tokio::test]
async fn an_unknown_id_is_not_found_and_the_answer_says_it_may_still_be_queued() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let (status, body) = app.get("/transactions/never").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "transaction_not_found");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("never accepted") && message.contains("still queued"),
        "{message}"
    );
    assert!(body.get("deadLetters").is_none(), "{body}");

    // Accepted, still queued: the same honest 404 (the queue cannot be searched by id) …
    let deposit = json!({"id": "queued", "type": "deposit", "amount": 3, "accountId": "q"});
    assert_eq!(app.post_json(&deposit).await.0, 200);
    let (status, body) = app.get("/transactions/queued").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("transaction_not_found"))
    );
    // … until it is decided.
    app.worker = Some(app.start_worker().await);
    app.wait_balance("q", "3").await;
    let record = app.get_ok("/transactions/queued").await;
    assert_eq!(
        (
            &record["status"],
            &record["conflicts"],
            &record["deadLetters"]
        ),
        (&json!("applied"), &json!([]), &json!([]))
    );
}

#[tokio::test]
async fn a_dead_lettered_command_is_told_dead_lettered_then_republished_then_decided() {
    let app = TestApp::spawn().await;
    let envelope = app.envelope("revived", Kind::Deposit, "phoenix", "12.5");
    app.publish_dead_letter("revived", &envelope.encode()).await;
    let letters = wait_archived(&app, 1).await;

    let (status, body) = app.get("/transactions/revived").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "transaction_dead_lettered");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not applied"),
        "{body}"
    );
    let listed = body["deadLetters"].as_array().expect("deadLetters");
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["id"], letters[0]["id"]);
    assert_eq!(listed[0]["messageId"], "revived");
    assert!(listed[0]["republishedAt"].is_null());

    // An operator republishes it: queued again, then decided; the record keeps its history.
    let worker = tally_worker::Worker::build(app.settings.clone())
        .await
        .unwrap();
    let broker = worker.broker().await.unwrap();
    tally_worker::dead_letters::republish(
        worker.pool(),
        &broker,
        worker.topology(),
        &worker.amount_rules(),
        None,
    )
    .await
    .unwrap();
    let record = eventually(Duration::from_secs(15), || async {
        let (status, body) = app.get("/transactions/revived").await;
        if status == 404 {
            // Between the republish and the decision: republished, queued again.
            assert_eq!(body["error"]["code"], "transaction_dead_lettered", "{body}");
            assert!(
                body["deadLetters"][0]["republishedAt"].is_string(),
                "{body}"
            );
        }
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(record["status"], "applied");
    assert_eq!(record["deadLetters"].as_array().map(Vec::len), Some(1));
    assert!(record["deadLetters"][0]["republishedAt"].is_string());
}

#[tokio::test]
async fn a_recorded_transaction_lists_its_dead_lettered_copies_and_conflicts() {
    let app = TestApp::spawn().await;
    let deposit = json!({"id": "kept", "type": "deposit", "amount": 9, "accountId": "k"});
    assert_eq!(app.post_json(&deposit).await.0, 200);
    app.wait_balance("k", "9").await;
    // A copy of it dies later (it crashed consumers past the delivery limit).
    let copy = app.envelope("kept", Kind::Deposit, "k", "9");
    app.publish_dead_letter("kept", &copy.encode()).await;
    wait_archived(&app, 1).await;

    let record = app.get_ok("/transactions/kept").await;
    assert_eq!(record["status"], "applied");
    assert_eq!(record["conflicts"], json!([]));
    let letters = record["deadLetters"].as_array().expect("deadLetters");
    assert_eq!(letters.len(), 1, "{record}");
    assert_eq!(letters[0]["messageId"], "kept");
    // Another id's dead letters are not listed.
    assert_eq!(app.get("/transactions/other").await.0, 404);
}
