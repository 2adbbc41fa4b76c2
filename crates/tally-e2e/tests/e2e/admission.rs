//! Admission control: a shard too far behind gets 503 + Retry-After at once.

use serde_json::json;
use std::time::Duration;

use crate::helpers::{eventually, Options, TestApp};

#[tokio::test]
async fn a_backlogged_shard_sheds_requests_at_once_and_recovers() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| {
            s.admission.request_backlog = 10;
            s.admission.max_backlog = 30;
            s.admission.poll_ms = 50;
            // Probes sent before the poller saw the backlog are published and wait for a
            // decision that cannot come: keep that wait short.
            s.ledger.request_deadline_ms = 400;
            s.ledger.decision_margin_ms = 100;
        },
        ..Options::default()
    })
    .await;
    let deposit = |i: usize| json!({"id": format!("d{i}"), "type": "deposit", "amount": 1, "accountId": "jam"});
    for i in 0..20 {
        assert_eq!(app.post_json(&deposit(i)).await.0, 200);
    }
    // Every probe has its own id: one published before the poller noticed is a real request.
    let probe = |n: usize| json!({"id": format!("probe-{n}"), "type": "withdraw_request", "amount": 1, "accountId": "jam"});
    let mut n = 0;
    // Once the poller has seen the backlog, a request is refused without waiting.
    eventually(Duration::from_secs(10), || {
        n += 1;
        let body = probe(n);
        let app = &app;
        async move { (app.post(&body).await.status() == 503).then_some(()) }
    })
    .await;
    // A probe sent before the poller's first look was published: it sits in the queue and
    // counts towards max_backlog like a deposit (on a slow machine there can be one or two).
    let published_probes = n - 1;
    // "At once" means refused before publishing, not a fast machine: the shed probe names
    // the backlog as its cause, and it never reaches the ledger (checked after the drain).
    let response = app.post(&probe(1000)).await;
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("too far behind"), "{body}");

    // Deposits are still taken until the queue holds more than max_backlog (30), then shed.
    let room = 31usize
        .checked_sub(published_probes)
        .expect("at most 11 probes published before the poller saw a backlog of 20");
    for i in 20..room {
        assert_eq!(app.post_json(&deposit(i)).await.0, 200, "deposit {i}");
    }
    // The poller looks every 50 ms: a few more deposits may pass before it sees the last ones.
    let mut accepted = room;
    loop {
        match app.post(&deposit(accepted)).await.status().as_u16() {
            200 => accepted += 1,
            503 => break,
            other => panic!("unexpected {other}"),
        }
        assert!(accepted < 100, "deposits were never shed");
    }
    // Each refusal is counted for the alert on shedding (one probe and one deposit at least).
    let metrics = tally_telemetry::metrics::render().unwrap();
    let shed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_admission_shed_total "))
        .expect("tally_admission_shed_total exported")
        .parse()
        .unwrap();
    assert!(shed >= 2, "{shed}");

    // A worker drains the shard and requests are decided again.
    let _worker = app.start_worker().await;
    app.wait_balance("jam", &accepted.to_string()).await;
    let after = json!({"id": "after", "type": "withdraw_request", "amount": 1, "accountId": "jam"});
    eventually(Duration::from_secs(30), || async {
        (app.post(&after).await.status() == 201).then_some(())
    })
    .await;
    // The shed probe was never published: the drained ledger does not know it.
    assert_eq!(app.get("/transactions/probe-1000").await.0, 404);
}
