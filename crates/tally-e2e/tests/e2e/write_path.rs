//! Deposits and withdrawals end to end: accepted by the API, queued, applied once.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tally_core::Kind;

use crate::helpers::{broker_address, eventually, Options, TcpProxy, TestApp};

fn tx(id: &str, kind: &str, amount: Value, account: &str) -> Value {
    json!({"id": id, "type": kind, "amount": amount, "accountId": account})
}

#[tokio::test]
async fn deposit_then_withdrawals_show_exact_balance_even_negative() {
    let app = TestApp::spawn().await;

    let (status, body) = app.post_json(&tx("d1", "deposit", json!(100), "acc")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["amount"], json!(100));
    let (status, _) = app.post_json(&tx("w1", "withdraw", json!(30), "acc")).await;
    assert_eq!(status, 200);
    app.wait_balance("acc", "70").await;

    let (status, _) = app
        .post_json(&tx("w2", "withdraw", json!("100"), "acc"))
        .await;
    assert_eq!(status, 200);
    app.wait_balance("acc", "-30").await;

    let (status, record) = app.get("/transactions/w2").await;
    assert_eq!(status, 200);
    assert_eq!(record["status"], "applied");
    assert_eq!(record["balanceAfter"], json!(-30));
    assert!(record["acceptedAt"].is_string() && record["appliedAt"].is_string());
}

#[tokio::test]
async fn decimals_are_exact_end_to_end() {
    let app = TestApp::spawn().await;
    app.post_accepted(&tx("a", "deposit", json!(0.1), "exact"))
        .await;
    app.post_accepted(&tx("b", "deposit", json!(0.2), "exact"))
        .await;
    app.wait_balance("exact", "0.3").await;
    app.post_accepted(&tx("c", "deposit", json!("0.20"), "exact"))
        .await;
    app.wait_balance("exact", "0.5").await;
}

#[tokio::test]
async fn transaction_is_404_before_it_is_applied_and_unknown_account_is_zero() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let (status, _) = app
        .post_json(&tx("queued", "deposit", json!(5), "later"))
        .await;
    assert_eq!(status, 200);
    let (status, body) = app.get("/transactions/queued").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "transaction_not_found");
    let (status, body) = app.get("/account/nobody").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"accountId":"nobody","balance":0,"available":0,"held":0,"seq":0})
    );

    let _worker = app.start_worker().await;
    eventually(Duration::from_secs(10), || async {
        (app.get("/transactions/queued").await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_same_message_delivered_twice_has_one_effect() {
    let app = TestApp::spawn().await;
    let connection = app.broker().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let body = app
        .envelope("dup-1", Kind::Deposit, "twice", "7.5")
        .encode();
    app.publish_raw(&channel, &body, "twice").await;
    app.publish_raw(&channel, &body, "twice").await;
    // A marker published after both: once it is applied, both copies were processed.
    let marker = app.envelope("marker", Kind::Deposit, "twice", "1").encode();
    app.publish_raw(&channel, &marker, "twice").await;

    app.wait_balance("twice", "8.5").await;
    assert_eq!(
        app.count("SELECT count(*) FROM transactions WHERE account_id = 'twice'")
            .await,
        2
    );
}

#[tokio::test]
async fn a_worker_killed_after_commit_before_ack_does_not_apply_twice() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let connection = app.broker().await;
    let publish = connection.create_channel().await.unwrap();
    publish.confirm_select(Default::default()).await.unwrap();
    let envelope = app.envelope("crash-1", Kind::Deposit, "crash", "42");
    app.publish_raw(&publish, &envelope.encode(), "crash").await;

    // Play the worker up to its commit: consume, apply in PostgreSQL, and "crash" before the
    // ack by closing the channel.
    let consume = connection.create_channel().await.unwrap();
    consume
        .basic_qos(10, BasicQosOptions::default())
        .await
        .unwrap();
    let shard = app.topology.shard_of("crash");
    let mut consumer = consume
        .basic_consume(
            app.topology.shard_queue(shard).into(),
            "crashing-worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    let decoded =
        tally_core::Envelope::decode(&delivery.data, &app.settings.ledger.amount_rules()).unwrap();
    let rules = tally_core::ledger::Rules {
        withdraw_policy: app.settings.ledger.withdraw_policy,
        hold_ttl: chrono::Duration::minutes(15),
    };
    // The crashing worker holds the shard's lease while it works, like a real one.
    let ttl = Duration::from_secs(30);
    let leases = tally_store::leases::acquire(&app.pool, "crashing-worker", 64, ttl)
        .await
        .unwrap();
    let lease = leases.iter().find(|l| l.shard == shard).unwrap();
    tally_worker::apply::apply_batch(&app.pool, lease, &[decoded], &rules)
        .await
        .unwrap();
    for lease in &leases {
        tally_store::leases::release(&app.pool, lease)
            .await
            .unwrap();
    }
    consume.close(200, "crash".into()).await.unwrap();
    assert_eq!(app.balance("crash").await, "42");
    let peek = connection.create_channel().await.unwrap();
    eventually(Duration::from_secs(5), || async {
        (app.queued(&peek).await == 1).then_some(())
    })
    .await;

    // The real worker gets the redelivery, recognises it, and acks it without a second effect.
    let worker = app.start_worker().await;
    eventually(Duration::from_secs(10), || async {
        (app.queued(&peek).await == 0).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(app.balance("crash").await, "42");
    assert_eq!(
        app.count("SELECT count(*) FROM transactions WHERE id = 'crash-1'")
            .await,
        1
    );
}

#[tokio::test]
async fn invalid_requests_get_400_naming_the_field_and_publish_nothing() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let ok = |m: &mut serde_json::Map<String, Value>| {
        m.insert("id".into(), json!("t1"));
        m.insert("type".into(), json!("deposit"));
        m.insert("amount".into(), json!(1));
        m.insert("accountId".into(), json!("a1"));
    };
    let with = |field: &str, value: Value| {
        let mut m = serde_json::Map::new();
        ok(&mut m);
        m.insert(field.into(), value);
        Value::Object(m).to_string()
    };
    let without = |field: &str| {
        let mut m = serde_json::Map::new();
        ok(&mut m);
        m.remove(field);
        Value::Object(m).to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "body"),
        ("[1,2]".into(), "body"),
        (without("id"), "id"),
        (without("type"), "type"),
        (without("amount"), "amount"),
        (without("accountId"), "accountId"),
        (with("type", json!("transfer")), "type"),
        (with("amount", json!(0)), "amount"),
        (with("amount", json!(-1)), "amount"),
        (with("amount", json!("abc")), "amount"),
        (
            r#"{"id":"t1","type":"deposit","amount":1e16,"accountId":"a1"}"#.into(),
            "amount",
        ),
        (
            r#"{"id":"t1","type":"deposit","amount":0.001,"accountId":"a1"}"#.into(),
            "amount",
        ),
        // Exponent notation is held to the same scale rule: refused, never rounded to 10.01.
        (
            r#"{"id":"t1","type":"deposit","amount":10.00999999999999999999999999999999e0,"accountId":"a1"}"#.into(),
            "amount",
        ),
        (with("amount", json!("1.000999999999999999999999999999999e1")), "amount"),
        (with("id", json!("x".repeat(129))), "id"),
        (with("id", json!("has space")), "id"),
        (with("accountId", json!("has space")), "accountId"),
        (
            format!(
                r#"{{"id":"t1","type":"deposit","amount":1,"accountId":"a1","pad":"{}"}}"#,
                "x".repeat(70 * 1024)
            ),
            "body",
        ),
    ];
    for (body, field) in cases {
        let response = app
            .client
            .post(format!("{}/transaction", app.address))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let json: Value = response.json().await.unwrap_or(Value::Null);
        let shown = &body[..body.len().min(80)];
        assert_eq!(status, 400, "{shown} → {json}");
        assert_eq!(json["error"]["field"], field, "{shown} → {json}");
        assert!(json["error"]["code"].is_string() && json["error"]["message"].is_string());
    }
    let connection = app.broker().await;
    let channel = connection.create_channel().await.unwrap();
    assert_eq!(
        app.queued(&channel).await,
        0,
        "an invalid request was published"
    );
}

#[tokio::test]
async fn broker_outage_gives_fast_503_and_api_and_worker_recover_by_themselves() {
    let proxy = TcpProxy::start(broker_address()).await;
    let app = TestApp::spawn_with(Options {
        broker_proxy: Some(proxy.clone()),
        ..Options::default()
    })
    .await;
    let (status, _) = app
        .post_json(&tx("before", "deposit", json!(1), "outage"))
        .await;
    assert_eq!(status, 200);

    proxy.cut();
    let started = Instant::now();
    let response = app.post(&tx("during", "deposit", json!(1), "outage")).await;
    assert_eq!(response.status().as_u16(), 503);
    // Bounded by publish_timeout_ms + settle_timeout_ms (5 s by default), not by the
    // machine's speed: the margin keeps a loaded machine from failing the test, and a hung
    // request (no answer until the client gives up) still fails it.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "503 took {:?}",
        started.elapsed()
    );
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = app.get("/status").await;
    assert_eq!(status, 503);
    assert_eq!(body["rabbitmq"], "down");
    assert_eq!(body["db"], "ok");
    assert_eq!(app.get("/health/ready").await.0, 503);

    proxy.restore();
    eventually(Duration::from_secs(15), || async {
        (app.post(&tx("during", "deposit", json!(1), "outage"))
            .await
            .status()
            == 200)
            .then_some(())
    })
    .await;
    app.wait_balance("outage", "2").await;
    assert_eq!(app.get("/status").await.0, 200);
}

#[tokio::test]
async fn status_and_health_report_up() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/status").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["api"], &body["db"], &body["rabbitmq"]),
        (&json!("ok"), &json!("ok"), &json!("ok"))
    );
    assert_eq!(body["clock"]["status"], "ok", "{body}");
    assert_eq!(app.get("/health/live").await.0, 200);
    assert_eq!(app.get("/health/ready").await.0, 200);
}

#[tokio::test]
async fn debug_dumps_page_by_keyset() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        app.post_accepted(&tx(
            &format!("t{i}"),
            "deposit",
            json!(1),
            &format!("acc{i}"),
        ))
        .await;
    }
    eventually(Duration::from_secs(10), || async {
        let rows = app.get_ok("/debug/transactions").await;
        (rows.as_array().map_or(0, Vec::len) == 5).then_some(())
    })
    .await;
    let page1 = app.get_ok("/debug/transactions?limit=2").await;
    let ids: Vec<&str> = page1
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t0", "t1"]);
    let page2 = app.get_ok("/debug/transactions?limit=2&after=t1").await;
    assert_eq!(page2[0]["id"], "t2");
    let accounts = app.get_ok("/debug/accounts?limit=10").await;
    assert_eq!(accounts.as_array().unwrap().len(), 5);
    assert_eq!(app.get("/debug/accounts?limit=0").await.0, 400);
    assert_eq!(app.get("/debug/accounts?limit=10001").await.0, 400);
}

#[tokio::test]
async fn debug_routes_are_absent_when_disabled() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| s.debug.enabled = false,
        ..Options::default()
    })
    .await;
    assert_eq!(app.get("/debug/accounts").await.0, 404);
}
