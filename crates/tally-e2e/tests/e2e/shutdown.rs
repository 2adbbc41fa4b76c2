//! Graceful shutdown: a worker acks what it committed before it exits; an API replica
//! finishes its in-flight requests; nginx serves through a rolling restart of the replicas.

use futures_util::future::join_all;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tally_core::Kind;
use tokio_util::sync::CancellationToken;

use crate::helpers::{eventually, Nginx, Options, TestApp};

#[tokio::test]
async fn a_stopped_worker_leaves_nothing_committed_unacked() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let connection = app.broker().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    const N: i64 = 3000;
    let publishes = (0..N).map(|i| {
        let body = app
            .envelope(
                &format!("g{i}"),
                Kind::Deposit,
                &format!("acc{}", i % 50),
                "1",
            )
            .encode();
        let (channel, app) = (&channel, &app);
        async move {
            app.publish_raw(channel, &body, &format!("acc{}", i % 50))
                .await
        }
    });
    join_all(publishes).await;

    let worker = app.start_worker().await;
    eventually(Duration::from_secs(10), || async {
        (app.count("SELECT count(*) FROM transactions").await > 0).then_some(())
    })
    .await;
    worker.stop().await;

    // Whatever was applied was acked: applied + still queued accounts for every message once.
    let applied = app.count("SELECT count(*) FROM transactions").await;
    let queued = eventually(Duration::from_secs(5), || async {
        let q = i64::from(app.queued(&channel).await);
        (applied + q == N).then_some(q)
    })
    .await;
    assert!(applied > 0, "the worker applied nothing before stopping");
    assert_eq!(applied + queued, N);

    // And a new worker finishes the rest with no second effect.
    let _worker = app.start_worker().await;
    eventually(Duration::from_secs(30), || async {
        (app.count("SELECT count(*) FROM transactions").await == N).then_some(())
    })
    .await;
    assert_eq!(app.get("/debug/conservation").await.1["pass"], json!(true));
}

#[tokio::test]
async fn a_stopping_api_finishes_its_in_flight_requests() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| s.ledger.request_deadline_ms = 1500,
        ..Options::default()
    })
    .await;
    let stop = CancellationToken::new();
    let replica = app.start_replica(0, stop.clone()).await;
    let url = format!("http://127.0.0.1:{}/transaction", replica.port);
    let client = app.client.clone();
    let pending = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"id":"inflight","type":"withdraw_request","amount":1,"accountId":"a"}))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // Published and waiting for a decision (no worker runs): the request is in flight.
    let channel = app.broker().await.create_channel().await.unwrap();
    eventually(Duration::from_secs(10), || async {
        (app.queued(&channel).await == 1).then_some(())
    })
    .await;
    stop.cancel();
    // The request waiting for its decision is answered (deadline passed: 402), not cut off.
    assert_eq!(pending.await.unwrap().unwrap(), 402);
    replica.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_serving_through_a_rolling_restart() {
    let app = TestApp::spawn().await;
    let mut replicas = vec![
        Some(app.start_replica(0, CancellationToken::new()).await),
        Some(app.start_replica(0, CancellationToken::new()).await),
    ];
    let ports: Vec<u16> = replicas.iter().flatten().map(|r| r.port).collect();
    let nginx = Nginx::start(&ports).await;

    let done = CancellationToken::new();
    let answered = Arc::new(AtomicUsize::new(0));
    let load = {
        let (done, url) = (done.clone(), format!("{}/transaction", nginx.address));
        let client = app.client.clone();
        let answered = answered.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut i = 0;
            while !done.is_cancelled() {
                let body = json!({"id": format!("roll-{i}"), "type": "deposit", "amount": 1, "accountId": "rolling"});
                statuses.push(
                    client
                        .post(&url)
                        .json(&body)
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16()),
                );
                answered.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            statuses
        })
    };
    // Each step waits for 20 more answers, so every replica change happens under load.
    let more_answers = || async {
        let from = answered.load(Ordering::Relaxed);
        eventually(Duration::from_secs(20), || async {
            (answered.load(Ordering::Relaxed) >= from + 20).then_some(())
        })
        .await;
    };
    for slot in &mut replicas {
        more_answers().await;
        let old = slot.take().unwrap();
        old.stop.cancel();
        old.task.await.unwrap().unwrap();
        // While it is down nginx sends everything to the other one; then it comes back on its
        // port, as a restarted process would.
        *slot = Some(app.start_replica(old.port, CancellationToken::new()).await);
    }
    more_answers().await;
    done.cancel();
    let statuses = load.await.unwrap();
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(statuses.len() > 50, "too little load: {}", statuses.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    app.wait_balance("rolling", &statuses.len().to_string())
        .await;
}
