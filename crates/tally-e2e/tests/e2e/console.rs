//! The operator console's HTTP side: the page and its assets (no key, strict headers), the
//! `/debug/*` routes it added — shards, throughput, an account's holds — and re-publishing a
//! dead letter through the API. The page itself in a browser: `browser.rs`.

use serde_json::{json, Value};
use std::time::Duration;

use crate::helpers::{broker_address, client_with_key, eventually, Options, TcpProxy, TestApp};

async fn post(app: &TestApp, client: &reqwest::Client, path: &str) -> (u16, Value) {
    let response = client
        .post(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_dead_letter_is_republished_through_the_api_once_and_applied() {
    let app = TestApp::spawn().await;
    let id = app.dead_deposit("revived", "phoenix", "12.5").await;
    assert_eq!(app.balance("phoenix").await, "0");
    let path = format!("/debug/dead-letters/{id}/republish");

    // Only with the admin key; refused, nothing is sent.
    let (status, _) = post(&app, &client_with_key(&app.keys.read_write), &path).await;
    assert_eq!(status, 403);
    let (status, _) = post(&app, &reqwest::Client::new(), &path).await;
    assert_eq!(status, 401);
    let (status, body) = post(&app, &app.client, "/debug/dead-letters/nope/republish").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "dead_letter_not_found");
    let (status, body) = post(&app, &app.client, "/debug/dead-letters/a%20b/republish").await;
    assert_eq!(status, 400, "{body}");

    let (status, letter) = post(&app, &app.client, &path).await;
    assert_eq!(status, 200, "{letter}");
    assert_eq!(letter["id"], id);
    assert!(letter["republishedAt"].is_string(), "{letter}");
    app.wait_balance("phoenix", "12.5").await;
    let record = app.get_ok("/transactions/revived").await;
    assert_eq!(record["status"], "applied", "{record}");

    // Once: a second re-publish is a 409 and sends nothing.
    let (status, body) = post(&app, &app.client, &path).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_republished");
    let report = app.get_ok("/debug/conservation").await;
    assert_eq!(report["deadLetters"], json!(0), "{report}");
    assert_eq!(report["pass"], json!(true), "{report}");
}

#[tokio::test]
async fn shards_show_their_lease_queue_and_recent_lag() {
    let app = TestApp::spawn().await;
    app.post_accepted(
        &json!({"id": "d1", "type": "deposit", "amount": 100, "accountId": "watched"}),
    )
    .await;
    app.post_accepted(
        &json!({"id": "r1", "type": "withdraw_request", "amount": 40, "accountId": "watched"}),
    )
    .await;
    app.wait_balance("watched", "100").await;
    let shard = i64::from(app.topology.shard_of("watched"));

    let report = eventually(Duration::from_secs(20), || async {
        let report = app.get_ok("/debug/shards").await;
        let owned = report["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["live"] == json!(true));
        owned.then_some(report)
    })
    .await;
    assert_eq!(report["windowSecs"], 60);
    assert_eq!(report["deadLetterQueueDepth"], 0, "{report}");
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4, "{report}");
    for (n, s) in shards.iter().enumerate() {
        assert_eq!(s["shard"], json!(n));
        assert!(s["owner"].is_string(), "{s}");
        assert!(s["epoch"].as_i64().unwrap() >= 1, "{s}");
        assert!(s["queueDepth"].is_u64(), "{s}");
    }
    // The leases as stored.
    let client = app.pool.get().await.unwrap();
    for row in client
        .query(
            "SELECT shard, owner, epoch FROM shard_leases ORDER BY shard",
            &[],
        )
        .await
        .unwrap()
    {
        let s = &shards[usize::try_from(row.get::<_, i32>(0)).unwrap()];
        assert_eq!(s["owner"], json!(row.get::<_, String>(1)));
        assert_eq!(s["epoch"], json!(row.get::<_, i64>(2)));
    }
    let watched = &shards[usize::try_from(shard).unwrap()];
    assert_eq!(watched["decided"], 2, "{watched}");
    assert!(watched["lagMaxMs"].as_f64().unwrap() >= 0.0, "{watched}");
    assert!(watched["lastAppliedAt"].is_string(), "{watched}");
    for (n, s) in shards.iter().enumerate() {
        if n as i64 != shard {
            assert_eq!(s["decided"], 0, "{s}");
            assert!(s["lagMaxMs"].is_null(), "{s}");
        }
    }

    // Throughput: 10-second buckets over 10 minutes, the two decisions in them.
    let t = app.get_ok("/debug/throughput").await;
    assert_eq!(t["bucketSecs"], 10);
    let buckets = t["buckets"].as_array().unwrap();
    assert!((60..=62).contains(&buckets.len()), "{}", buckets.len());
    let decided: i64 = buckets.iter().map(|b| b["decided"].as_i64().unwrap()).sum();
    assert_eq!(decided, 2);
    let (status, body) = app.get("/debug/throughput?minutes=61").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_minutes");
    let one = app.get_ok("/debug/throughput?minutes=1").await;
    assert!(one["buckets"].as_array().unwrap().len() <= 7);

    // The hold the withdraw_request placed.
    let holds = app.get_ok("/debug/accounts/watched/holds").await;
    let holds = holds.as_array().unwrap();
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(holds[0]["requestId"], "r1");
    assert_eq!(holds[0]["amount"], json!(40));
    assert_eq!(holds[0]["status"], "open");
    assert_eq!(app.get_ok("/debug/accounts/nobody/holds").await, json!([]));
}

#[tokio::test]
async fn the_console_page_is_served_without_a_key_with_strict_headers_and_no_data() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let anonymous = reqwest::Client::new();
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let response = anonymous
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let headers = response.headers();
        let content_type = headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        // Built in: nothing loaded from elsewhere (the one URL is SVG's namespace name).
        let body = response.text().await.unwrap();
        let body = body.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path}"
        );
    }
    let response = anonymous
        .get(format!("{}/console/other.js", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    // Its data is not: every /debug call without the admin key is refused.
    let response = anonymous
        .get(format!("{}/debug/shards", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}

#[tokio::test]
async fn a_republish_without_a_confirm_is_outcome_unknown_and_leaves_the_letter_unmarked() {
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
    let id = app.dead_deposit("limbo", "limbo", "4").await;
    let path = format!("/debug/dead-letters/{id}/republish");
    // The API's publishes reach the broker, its confirms never come back.
    proxy.stall();
    let response = app
        .client
        .post(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
    // It was sent after all ("unavailable" would have been a lie), and is not marked.
    app.wait_balance("limbo", "4").await;
    let letters = app.get_ok("/debug/dead-letters").await;
    assert!(letters[0]["republishedAt"].is_null(), "{letters}");
    proxy.resume();

    // Re-publishing it again is harmless: marked now, one effect.
    let (status, letter) = eventually(Duration::from_secs(20), || async {
        let (status, body) = post(&app, &app.client, &path).await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200);
    assert!(letter["republishedAt"].is_string(), "{letter}");
    eventually(Duration::from_secs(15), || async {
        let channel = app.broker().await.create_channel().await.unwrap();
        (app.queued(&channel).await == 0).then_some(())
    })
    .await;
    assert_eq!(app.balance("limbo").await, "4");
    assert_eq!(
        app.count("SELECT count(*) FROM transactions WHERE id = 'limbo'")
            .await,
        1
    );
}
