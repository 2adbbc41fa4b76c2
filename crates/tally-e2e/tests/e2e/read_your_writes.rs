//! Read-your-writes on request (issue 15 item 1): `POST /transaction` with `Prefer: wait`
//! answers a deposit or withdraw with its record once the worker decided it (applied,
//! rejected, or 422 for a conflicting reuse of the id), else with the ordinary 200; and
//! `GET /account/{id}?minSeq=N` waits, bounded, for the account to reach seq N. Each answer is
//! checked against what the ledger finally records.

use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::time::Duration;

use crate::helpers::{eventually, Options, TestApp};

fn tx(id: &str, kind: &str, amount: Value, account: &str) -> Value {
    json!({"id": id, "type": kind, "amount": amount, "accountId": account})
}

/// POSTs `body` to `address` with a `Prefer` header (when given): status, headers, JSON body.
async fn post_to(
    app: &TestApp,
    address: &str,
    body: &Value,
    prefer: Option<&str>,
) -> reqwest::Result<(u16, HeaderMap, Value)> {
    let mut request = app.client.post(format!("{address}/transaction")).json(body);
    if let Some(prefer) = prefer {
        request = request.header("Prefer", prefer);
    }
    let response = request.send().await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    Ok((
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    ))
}

async fn post(app: &TestApp, body: &Value, prefer: Option<&str>) -> (u16, HeaderMap, Value) {
    post_to(app, &app.address, body, prefer)
        .await
        .expect("POST /transaction")
}

fn applied_preference(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("preference-applied")
        .and_then(|v| v.to_str().ok())
}

/// The record `GET /transactions/{id}` shows, without what it adds to it.
async fn record(app: &TestApp, id: &str) -> Value {
    let mut record = app.get_ok(&format!("/transactions/{id}")).await;
    let fields = record.as_object_mut().unwrap();
    fields.remove("conflicts");
    fields.remove("deadLetters");
    record
}

/// Ready messages in the test's shard queues.
async fn queued(app: &TestApp) -> u32 {
    let connection = app.broker().await;
    let channel = connection.create_channel().await.unwrap();
    app.queued(&channel).await
}

async fn wait_queued(app: &TestApp, n: u32) {
    eventually(Duration::from_secs(15), || async {
        (queued(app).await == n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_deposit_and_a_withdraw_with_prefer_wait_are_answered_with_their_records() {
    let app = TestApp::spawn().await;
    // Several preferences, any case, spaces: the wait is found.
    let (status, headers, deposit) = post(
        &app,
        &tx("d1", "deposit", json!(100), "ryw"),
        Some("respond-async, WAIT = 5; foo=bar"),
    )
    .await;
    assert_eq!(status, 200, "{deposit}");
    assert_eq!(applied_preference(&headers), Some("wait"));
    assert_eq!(
        (
            &deposit["status"],
            &deposit["balanceAfter"],
            &deposit["seq"]
        ),
        (&json!("applied"), &json!(100), &json!(1)),
        "{deposit}"
    );
    // The answer is the record, as the ledger keeps it.
    assert_eq!(deposit, record(&app, "d1").await);

    let (status, headers, withdraw) = post(
        &app,
        &tx("w1", "withdraw", json!(30.5), "ryw"),
        Some("wait=5"),
    )
    .await;
    assert_eq!(status, 200, "{withdraw}");
    assert_eq!(applied_preference(&headers), Some("wait"));
    assert_eq!(
        (
            &withdraw["status"],
            &withdraw["balanceAfter"],
            &withdraw["seq"]
        ),
        (&json!("applied"), &json!(69.5), &json!(2)),
        "{withdraw}"
    );
    assert_eq!(withdraw, record(&app, "w1").await);

    // A retry with the same id gets the same record, and a read at that seq sees it.
    let (status, headers, again) = post(
        &app,
        &tx("w1", "withdraw", json!(30.5), "ryw"),
        Some("wait=5"),
    )
    .await;
    assert_eq!((status, applied_preference(&headers)), (200, Some("wait")));
    assert_eq!(again, withdraw);
    let account = app.get_ok("/account/ryw?minSeq=2").await;
    assert_eq!(
        (&account["balance"], &account["seq"]),
        (&json!(69.5), &json!(2))
    );
}

#[tokio::test]
async fn without_a_valid_prefer_wait_nothing_changes() {
    let app = TestApp::spawn().await;
    for (n, prefer) in [
        None,
        Some("wait=abc"),
        Some("wait=0"),
        Some("respond-async"),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, headers, body) = post(
            &app,
            &tx(&format!("p{n}"), "deposit", json!(1), "plain"),
            prefer,
        )
        .await;
        assert_eq!(status, 200, "{prefer:?}: {body}");
        assert_eq!(body["status"], "accepted", "{prefer:?}: {body}");
        assert!(body.get("seq").is_none(), "{body}");
        assert_eq!(applied_preference(&headers), None, "{prefer:?}");
    }
    app.wait_balance("plain", "4").await;
    // A withdraw_request waits for its decision anyway: its answers do not change.
    let (status, headers, body) = post(
        &app,
        &tx("r1", "withdraw_request", json!(3), "plain"),
        Some("wait=5"),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (201, Some("approved")));
    assert_eq!(applied_preference(&headers), None);
}

#[tokio::test]
async fn a_withdraw_over_the_balance_under_reject_overdraft_is_answered_rejected() {
    let app = TestApp::spawn_with(Options {
        tweak: |s| s.ledger.withdraw_policy = tally_core::ledger::WithdrawPolicy::RejectOverdraft,
        ..Options::default()
    })
    .await;
    let (status, _, _) = post(
        &app,
        &tx("d", "deposit", json!(10), "strict"),
        Some("wait=5"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, headers, body) = post(
        &app,
        &tx("w", "withdraw", json!(25), "strict"),
        Some("wait=5"),
    )
    .await;
    assert_eq!(
        (status, applied_preference(&headers)),
        (200, Some("wait")),
        "{body}"
    );
    assert_eq!(
        (
            &body["status"],
            &body["reason"],
            &body["balanceAfter"],
            &body["seq"]
        ),
        (
            &json!("rejected"),
            &json!("insufficient_funds"),
            &json!(10),
            &json!(2)
        ),
        "{body}"
    );
    assert_eq!(body, record(&app, "w").await);
    assert_eq!(app.balance("strict").await, "10");
}

#[tokio::test]
async fn a_conflicting_reuse_of_a_queued_id_gets_its_422_while_waiting() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        // However long the worker takes to start here, the client is still waiting.
        tweak: |s| s.api.max_prefer_wait_ms = 60_000,
        ..Options::default()
    })
    .await;
    let first = tx("dup", "deposit", json!(10), "reuser");
    assert_eq!(post(&app, &first, None).await.0, 200);
    // Another payload under the same id, from a client that waits: the API cannot see the
    // first one recorded yet, so it publishes and waits for the worker's decision.
    let waiting = {
        let (client, url) = (app.client.clone(), format!("{}/transaction", app.address));
        let body = tx("dup", "deposit", json!(11), "reuser");
        tokio::spawn(async move {
            let r = client
                .post(url)
                .header("Prefer", "wait=60")
                .json(&body)
                .send()
                .await
                .expect("POST");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    wait_queued(&app, 2).await;
    app.worker = Some(app.start_worker().await);

    let (status, body) = waiting.await.unwrap();
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("id_reused")),
        "{body}"
    );
    // What the ledger says agrees: the first applied, the reuse recorded as a conflict.
    let record = app.get_ok("/transactions/dup").await;
    assert_eq!(record["amount"], json!(10));
    assert_eq!(
        record["conflicts"].as_array().map(Vec::len),
        Some(1),
        "{record}"
    );
    assert_eq!(app.balance("reuser").await, "10");
    // Once the first is recorded, a waiting reuse is refused from the record.
    let (status, _, body) = post(
        &app,
        &tx("dup", "deposit", json!(12), "reuser"),
        Some("wait=5"),
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (422, &json!("id_reused")));
}

#[tokio::test]
async fn without_a_decision_in_time_the_answer_is_the_ordinary_200() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let (status, headers, body) = post(
        &app,
        &tx("slow", "deposit", json!(7), "idle"),
        Some("wait=1"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted");
    assert_eq!(applied_preference(&headers), None);
    // A 200 accepted: it is in the queue and is decided once a worker runs.
    app.worker = Some(app.start_worker().await);
    app.wait_balance("idle", "7").await;
    assert_eq!(record(&app, "slow").await["status"], "applied");
}

#[tokio::test]
async fn a_replica_killed_while_a_client_waits_leaves_a_retry_a_true_answer() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| s.api.max_prefer_wait_ms = 60_000,
        ..Options::default()
    })
    .await;
    let env = [("TALLY_API__MAX_PREFER_WAIT_MS".into(), "60000".into())];
    let (api, replica) = app.api_process(env).await;
    let deposit = tx("doomed", "deposit", json!(40), "survivor");
    let waiting = {
        let (client, url, body) = (
            app.client.clone(),
            format!("{replica}/transaction"),
            deposit.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .header("Prefer", "wait=60")
                .json(&body)
                .send()
                .await
        })
    };
    // Published (no worker runs): the replica is waiting for the decision. It dies.
    wait_queued(&app, 1).await;
    drop(api);
    let answer = waiting.await.unwrap();
    assert!(
        answer.is_err(),
        "the client got an answer from a dead replica: {answer:?}"
    );

    // The client retries with the same id elsewhere: the answer is the one record.
    app.worker = Some(app.start_worker().await);
    let (status, headers, body) = post(&app, &deposit, Some("wait=60")).await;
    assert_eq!(
        (status, applied_preference(&headers)),
        (200, Some("wait")),
        "{body}"
    );
    assert_eq!(
        (&body["status"], &body["balanceAfter"], &body["seq"]),
        (&json!("applied"), &json!(40), &json!(1))
    );
    assert_eq!(body, record(&app, "doomed").await);
    wait_queued(&app, 0).await;
    assert_eq!(app.balance("survivor").await, "40");
    assert_eq!(
        app.count("SELECT count(*) FROM transactions WHERE id = 'doomed'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_read_with_min_seq_waits_for_the_write_it_names() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| s.api.max_prefer_wait_ms = 60_000,
        ..Options::default()
    })
    .await;
    assert_eq!(
        post(&app, &tx("d", "deposit", json!(100), "later"), None)
            .await
            .0,
        200
    );
    let read = {
        let (client, url) = (
            app.client.clone(),
            format!("{}/account/later?minSeq=1", app.address),
        );
        tokio::spawn(async move {
            let r = client.get(url).send().await.expect("GET");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    // The read is held until the worker has applied the deposit, whenever that is.
    app.worker = Some(app.start_worker().await);
    let (status, account) = read.await.unwrap();
    assert_eq!(status, 200, "{account}");
    assert_eq!(
        (&account["balance"], &account["seq"]),
        (&json!(100), &json!(1))
    );
    // Already there: answered at once; minSeq=0 never waits.
    assert_eq!(app.get_ok("/account/later?minSeq=1").await["seq"], json!(1));
    assert_eq!(
        app.get_ok("/account/nobody?minSeq=0").await["seq"],
        json!(0)
    );
}

#[tokio::test]
async fn a_min_seq_not_reached_in_time_is_a_409_and_a_bad_one_a_400() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    assert_eq!(
        post(&app, &tx("d", "deposit", json!(5), "stuck"), None)
            .await
            .0,
        200
    );
    let response = app
        .client
        .get(format!("{}/account/stuck?minSeq=1", app.address))
        .header("Prefer", "wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "min_seq_not_reached", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("seq 0"),
        "{body}"
    );
    for bad in ["abc", "-1", "1.5", "", "%2B1", "99999999999999999999"] {
        let (status, body) = app.get(&format!("/account/stuck?minSeq={bad}")).await;
        assert_eq!(status, 400, "minSeq={bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_min_seq");
        assert_eq!(body["error"]["field"], "minSeq");
    }
}
