//! A conflicting reuse of an id that is still queued: both commands are answered 200 (the API
//! cannot see the first one recorded yet), the worker applies the first and records the second
//! as an id conflict — once, whatever redeliveries follow — which `GET /transactions/{id}`
//! lists and `tally_id_conflicts_total` counts.

use serde_json::json;
use std::time::Duration;

use crate::helpers::{eventually, Options, TestApp};

/// The value of an unlabelled series in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_reuse_of_a_queued_id_is_recorded_once_shown_and_counted() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let deposit = |amount: u32| json!({"id": "dup", "type": "deposit", "amount": amount, "accountId": "reuser"});
    // Nothing is applied yet: both are accepted.
    assert_eq!(app.post_json(&deposit(10)).await.0, 200);
    let (status, body) = app.post_json(&deposit(11)).await;
    assert_eq!(status, 200, "{body}");
    // The conflicting command delivered again (as after a worker crash before its ack), then a
    // marker: once the marker is applied, everything before it on the account was decided.
    let channel = app.broker().await.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let again = app.envelope("dup", tally_core::Kind::Deposit, "reuser", "11");
    app.publish_raw(&channel, &again.encode(), "reuser").await;
    let marker = json!({"id": "marker", "type": "deposit", "amount": 5, "accountId": "reuser"});
    assert_eq!(app.post_json(&marker).await.0, 200);

    app.worker = Some(app.start_worker().await);
    app.wait_balance("reuser", "15").await;

    let (status, record) = app.get("/transactions/dup").await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(
        (record["status"].as_str(), record["amount"].as_f64()),
        (Some("applied"), Some(10.0))
    );
    let conflicts = record["conflicts"].as_array().expect("a conflicts array");
    assert_eq!(conflicts.len(), 1, "{record}");
    let conflict = &conflicts[0];
    assert_eq!(
        (conflict["type"].as_str(), conflict["accountId"].as_str()),
        (Some("deposit"), Some("reuser"))
    );
    assert_eq!(conflict["amount"].to_string(), "11");
    assert!(conflict["acceptedAt"].is_string() && conflict["detectedAt"].is_string());
    assert_eq!(app.count("SELECT count(*) FROM id_conflicts").await, 1);

    // A record without conflicts says so with an empty list.
    let marker = app.get_ok("/transactions/marker").await;
    assert_eq!(marker["conflicts"], json!([]));

    let port = app.worker.as_ref().and_then(|w| w.metrics_port).unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = eventually(Duration::from_secs(5), || async {
        let text = app.client.get(&url).send().await.ok()?.text().await.ok()?;
        Some(text)
    })
    .await;
    assert_eq!(
        sample(&text, "tally_id_conflicts_total"),
        Some(1.0),
        "{text}"
    );
}
