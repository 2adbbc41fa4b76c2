//! Many concurrent clients through nginx to several API replicas: exact sums, exact approvals.

use futures_util::future::join_all;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{eventually, Nginx, TestApp};

const CLIENTS: usize = 50;

/// Sends `bodies` from `CLIENTS` concurrent clients (each its own connection pool); returns
/// the status of every request.
async fn from_clients(address: &str, bodies: Vec<Value>) -> Vec<u16> {
    let per_client = bodies.len().div_ceil(CLIENTS);
    let chunks: Vec<Vec<Value>> = bodies.chunks(per_client).map(<[Value]>::to_vec).collect();
    let url = format!("{address}/transaction");
    let tasks = chunks.into_iter().map(|chunk| {
        let url = url.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            for body in chunk {
                let status = client
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                statuses.push(status);
            }
            statuses
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.expect("client task"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cent_deposits_from_fifty_clients_sum_exactly() {
    let mut app = TestApp::spawn().await;
    app.spawn_replica().await;
    let nginx = Nginx::start(&app.api_ports).await;

    let bodies = (0..1000)
        .map(|i| json!({"id": format!("cent-{i}"), "type": "deposit", "amount": 0.01, "accountId": "pennies"}))
        .collect();
    let statuses = from_clients(&nginx.address, bodies).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "non-200 answers: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );

    app.wait_balance("pennies", "10").await;
    assert_eq!(
        app.count("SELECT count(*) FROM transactions WHERE account_id = 'pennies'")
            .await,
        1000
    );
    let client = app.pool.get().await.unwrap();
    let exact: String = client
        .query_one(
            "SELECT balance::text FROM accounts WHERE id = 'pennies'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(exact, "10.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_requests_of_one_on_a_hundred_approve_exactly_a_hundred() {
    let mut app = TestApp::spawn().await;
    app.spawn_replica().await;
    let nginx = Nginx::start(&app.api_ports).await;
    app.post_json(&json!({"id":"d","type":"deposit","amount":100,"accountId":"pool"}))
        .await;
    app.wait_balance("pool", "100").await;

    // A reader watching `available` for the whole run.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, url) = (done.clone(), format!("{}/account/pool", nginx.address));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut reads = Vec::new();
            while !done.load(Ordering::SeqCst) {
                if let Ok(r) = client.get(&url).send().await {
                    if let Ok(body) = r.json::<Value>().await {
                        reads.push(body["available"].to_string());
                    }
                }
            }
            reads
        })
    };

    let bodies = (0..500)
        .map(|i| json!({"id": format!("one-{i}"), "type": "withdraw_request", "amount": 1, "accountId": "pool"}))
        .collect();
    let statuses = from_clients(&nginx.address, bodies).await;
    done.store(true, Ordering::SeqCst);
    let reads = reader.await.unwrap();

    let approved = statuses.iter().filter(|s| **s == 201).count();
    let denied = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!((approved, denied), (100, 400), "statuses: {statuses:?}");
    assert!(!reads.is_empty());
    assert!(
        reads.iter().all(|a| !a.starts_with('-')),
        "available went below zero: {:?}",
        reads
            .iter()
            .filter(|a| a.starts_with('-'))
            .collect::<Vec<_>>()
    );
    let final_view = eventually(Duration::from_secs(5), || async {
        let (_, v) = app.get("/account/pool").await;
        (v["held"] == json!(100)).then_some(v)
    })
    .await;
    assert_eq!(final_view["available"], json!(0));
}
