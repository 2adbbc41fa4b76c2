//! Balance webhooks end to end: registered through the API, scheduled by the worker's batch,
//! sent by the worker's sender to a receiver started in the test (an actix-web server that
//! records every request and answers as the test scripts it). Covers the delay, supersession,
//! retries with back-off then failure, the signature, and a worker killed mid-way.

use actix_web::{dev::ServerHandle, web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_core::settings::Settings;

use crate::helpers::{eventually, Options, TestApp};

const SECRET: &str = "s3cr3t-for-tests";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    delivery: String,
    signature: String,
    body: web::Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Status and pause before answering the n-th request (0-based).
type Script = fn(usize) -> (u16, Duration);

struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
    handle: ServerHandle,
}

impl Receiver {
    async fn start(script: Script) -> Self {
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = seen.clone();
        let server = HttpServer::new(move || {
            let seen = shared.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let seen = seen.clone();
                async move {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(Received {
                            at: Instant::now(),
                            delivery: header("x-tally-delivery"),
                            signature: header("x-tally-signature"),
                            body,
                        });
                        seen.len() - 1
                    };
                    let (status, pause) = script(n);
                    tokio::time::sleep(pause).await;
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                        .finish()
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            seen,
            handle,
        }
    }

    fn requests(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        eventually(timeout, || async {
            let seen = self.requests();
            (seen.len() >= n).then_some(seen)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
    }
}

fn ok(_: usize) -> (u16, Duration) {
    (200, Duration::ZERO)
}

/// Small intervals so retries and leases play out within a test.
fn quick(s: &mut Settings) {
    s.webhooks.poll_ms = 20;
    s.webhooks.max_attempts = 4;
    s.webhooks.backoff_base_ms = 150;
    s.webhooks.backoff_max_ms = 2000;
    s.webhooks.timeout_ms = 1500;
    s.webhooks.lease_ms = 2500;
    s.webhooks.concurrency = 4;
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(Options {
        tweak: quick,
        ..Options::default()
    })
    .await
}

async fn put_webhook(app: &TestApp, account: &str, body: &str) -> (u16, Value) {
    let response = app
        .client
        .put(format!("{}/account/{account}/webhook", app.address))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("PUT webhook");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn register(app: &TestApp, account: &str, url: &str, delay_ms: u64) {
    let body = json!({"url": url, "secret": SECRET, "delayMs": delay_ms}).to_string();
    let (status, answer) = put_webhook(app, account, &body).await;
    assert_eq!(status, 200, "{answer}");
}

async fn delete_webhook(app: &TestApp, account: &str) -> (u16, Value) {
    let response = app
        .client
        .delete(format!("{}/account/{account}/webhook", app.address))
        .send()
        .await
        .expect("DELETE webhook");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn deposit(app: &TestApp, id: &str, account: &str, amount: &str) {
    let body = json!({"id": id, "type": "deposit", "amount": amount, "accountId": account});
    let (status, answer) = app.post_json(&body).await;
    assert_eq!(status, 200, "{answer}");
}

async fn deliveries(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.get("/debug/webhooks").await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

/// Waits until the deliveries' statuses are exactly `expected` (in creation order).
async fn wait_statuses(app: &TestApp, expected: &[&str], timeout: Duration) -> Vec<Value> {
    eventually(timeout, || async {
        let rows = deliveries(app).await;
        let statuses: Vec<&str> = rows.iter().filter_map(|r| r["status"].as_str()).collect();
        (statuses == expected).then_some(rows)
    })
    .await
}

fn verifies(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == hex
}

#[tokio::test]
async fn webhook_is_delivered_once_after_its_delay_signed_with_the_secret() {
    let app = spawn().await;
    let receiver = Receiver::start(ok).await;
    register(&app, "acc-1", &receiver.url, 1000).await;

    let before_change = Instant::now();
    deposit(&app, "d1", "acc-1", "100.50").await;
    let seen = receiver.wait_for(1, Duration::from_secs(10)).await;

    // Due 1000 ms after the commit, which came after `before_change`; 50 ms of slack for
    // timestamp rounding between the worker's clock and the database's.
    let waited = seen[0].at - before_change;
    assert!(
        waited >= Duration::from_millis(950),
        "sent after {waited:?}"
    );
    let body = seen[0].json();
    assert_eq!(body["accountId"], "acc-1");
    assert_eq!(body["balance"].to_string(), "100.5");
    assert_eq!(body["available"].to_string(), "100.5");
    assert_eq!(body["version"], 1);
    assert!(body["at"]
        .as_str()
        .is_some_and(|at| at.parse::<chrono::DateTime<chrono::Utc>>().is_ok()));

    // The signature is the HMAC of the exact bytes received, and only with this secret.
    assert!(
        verifies(SECRET, &seen[0].body, &seen[0].signature),
        "{}",
        seen[0].signature
    );
    assert!(!verifies(
        "another secret",
        &seen[0].body,
        &seen[0].signature
    ));

    let rows = wait_statuses(&app, &["sent"], Duration::from_secs(5)).await;
    assert_eq!(rows[0]["attempts"], 1);
    assert_eq!(rows[0]["lastStatus"], 200);
    assert_eq!(seen[0].delivery, rows[0]["id"].to_string());

    // Once: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.requests().len(), 1);
}

#[tokio::test]
async fn a_newer_change_within_the_delay_supersedes_the_older_delivery() {
    let app = spawn().await;
    let receiver = Receiver::start(ok).await;
    // Long enough for the second deposit to be applied within it even on a loaded machine.
    register(&app, "acc-1", &receiver.url, 3000).await;

    deposit(&app, "d1", "acc-1", "100").await;
    // The first change is committed (and its delivery pending) before the second is posted.
    wait_statuses(&app, &["pending"], Duration::from_secs(10)).await;
    deposit(&app, "d2", "acc-1", "50").await;

    let rows = wait_statuses(&app, &["superseded", "sent"], Duration::from_secs(10)).await;
    assert_eq!(rows[0]["version"], 1);
    assert_eq!(rows[0]["attempts"], 0);
    assert_eq!(rows[1]["version"], 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = receiver.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let body = seen[0].json();
    assert_eq!(body["balance"].to_string(), "150");
    assert_eq!(body["version"], 2);
    assert_eq!(seen[0].delivery, rows[1]["id"].to_string());
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_with_backoff_then_the_delivery_is_recorded_failed() {
    let app = spawn().await;
    let receiver = Receiver::start(|_| (500, Duration::ZERO)).await;
    register(&app, "acc-1", &receiver.url, 0).await;

    deposit(&app, "d1", "acc-1", "10").await;
    let rows = wait_statuses(&app, &["failed"], Duration::from_secs(15)).await;
    assert_eq!(rows[0]["attempts"], 4, "{}", rows[0]);
    assert_eq!(rows[0]["lastStatus"], 500);
    assert!(
        rows[0]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{}",
        rows[0]
    );
    assert!(rows[0]["finishedAt"].is_string());

    // max_attempts = 4, and never more.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen = receiver.requests();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let id = rows[0]["id"].to_string();
    assert!(seen.iter().all(|r| r.delivery == id));
    // Waits of 150, 300 and 600 ms (backoff_base_ms · 2^(n-1)) before attempts 2, 3, 4.
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, base) in gaps.iter().zip([150u64, 300, 600]) {
        assert!(*gap >= Duration::from_millis(base - 20), "gaps {gaps:?}");
    }
}

#[tokio::test]
async fn a_worker_killed_with_a_delivery_pending_is_replaced_and_the_delivery_still_arrives() {
    let mut app = spawn().await;
    let receiver = Receiver::start(ok).await;
    register(&app, "acc-1", &receiver.url, 2000).await;

    deposit(&app, "d1", "acc-1", "10").await;
    wait_statuses(&app, &["pending"], Duration::from_secs(10)).await;
    app.worker.take().unwrap().kill().await;
    // Past the due time with no worker: nothing can be sent, nothing is lost.
    tokio::time::sleep(Duration::from_millis(2400)).await;
    assert!(receiver.requests().is_empty());
    wait_statuses(&app, &["pending"], Duration::from_secs(1)).await;

    app.worker = Some(app.start_worker().await);
    let seen = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(seen[0].json()["balance"].to_string(), "10");
    wait_statuses(&app, &["sent"], Duration::from_secs(5)).await;
    assert_eq!(receiver.requests().len(), 1);
}

#[tokio::test]
async fn a_worker_killed_mid_send_leaves_the_delivery_to_the_next_sender_once_its_lease_expires() {
    let mut app = spawn().await;
    // The first request hangs (its sender is killed meanwhile); later ones succeed.
    let receiver = Receiver::start(|n| match n {
        0 => (200, Duration::from_secs(10)),
        _ => (200, Duration::ZERO),
    })
    .await;
    register(&app, "acc-1", &receiver.url, 0).await;

    deposit(&app, "d1", "acc-1", "10").await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    app.worker.take().unwrap().kill().await;
    wait_statuses(&app, &["pending"], Duration::from_secs(1)).await;

    app.worker = Some(app.start_worker().await);
    // lease_ms = 2500: the new sender takes it over once the dead one's lease expired.
    let seen = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        seen[0].delivery, seen[1].delivery,
        "at-least-once: same delivery id"
    );
    let rows = wait_statuses(&app, &["sent"], Duration::from_secs(5)).await;
    assert_eq!(rows[0]["attempts"], 1);
}

#[tokio::test]
async fn a_worker_stopped_gracefully_leaves_pending_deliveries_to_the_next_worker() {
    let mut app = spawn().await;
    let receiver = Receiver::start(ok).await;
    register(&app, "acc-1", &receiver.url, 2000).await;

    deposit(&app, "d1", "acc-1", "10").await;
    wait_statuses(&app, &["pending"], Duration::from_secs(10)).await;
    app.worker.take().unwrap().stop().await;
    tokio::time::sleep(Duration::from_millis(2400)).await;
    assert!(receiver.requests().is_empty());

    app.worker = Some(app.start_worker().await);
    receiver.wait_for(1, Duration::from_secs(10)).await;
    wait_statuses(&app, &["sent"], Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_expired_hold_changes_available_and_is_delivered_too() {
    let app = TestApp::spawn_with(Options {
        tweak: |s| {
            quick(s);
            s.ledger.hold_ttl_secs = 1;
            s.worker.hold_sweep_secs = 1;
        },
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start(ok).await;
    register(&app, "acc-1", &receiver.url, 0).await;

    deposit(&app, "d1", "acc-1", "100").await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let request =
        json!({"id": "r1", "type": "withdraw_request", "amount": 30, "accountId": "acc-1"});
    let (status, answer) = app.post_json(&request).await;
    assert_eq!(status, 201, "{answer}");

    let seen = receiver.wait_for(3, Duration::from_secs(10)).await;
    let states: Vec<(String, String)> = seen
        .iter()
        .map(|r| {
            let body = r.json();
            (body["balance"].to_string(), body["available"].to_string())
        })
        .collect();
    let expected = [("100", "100"), ("100", "70"), ("100", "100")];
    assert_eq!(
        states,
        expected.map(|(b, a)| (b.to_string(), a.to_string())),
        "deposit, hold placed, hold expired"
    );
}

#[tokio::test]
async fn deleting_the_webhook_stops_its_pending_delivery() {
    let app = spawn().await;
    let receiver = Receiver::start(ok).await;
    register(&app, "acc-1", &receiver.url, 2000).await;

    deposit(&app, "d1", "acc-1", "10").await;
    wait_statuses(&app, &["pending"], Duration::from_secs(10)).await;
    assert_eq!(delete_webhook(&app, "acc-1").await.0, 204);

    let rows = wait_statuses(&app, &["failed"], Duration::from_secs(5)).await;
    assert_eq!(rows[0]["lastError"], "webhook deleted");
    assert_eq!(rows[0]["attempts"], 0);
    assert!(receiver.requests().is_empty());
    // Later changes schedule nothing.
    deposit(&app, "d2", "acc-1", "5").await;
    app.wait_balance("acc-1", "15").await;
    assert_eq!(deliveries(&app).await.len(), 1);
}

#[tokio::test]
async fn put_and_delete_validate_their_input_and_never_show_the_secret() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let cases = [
        (
            "bad%20id",
            r#"{"url":"http://x.test/h","secret":"s"}"#,
            "invalid_id",
        ),
        ("acc-1", "not json", "invalid_json"),
        ("acc-1", r#"["url"]"#, "invalid_json"),
        ("acc-1", r#"{"secret":"s"}"#, "missing_field"),
        ("acc-1", r#"{"url":7,"secret":"s"}"#, "invalid_field"),
        (
            "acc-1",
            r#"{"url":"ftp://x.test/h","secret":"s"}"#,
            "invalid_url",
        ),
        (
            "acc-1",
            r#"{"url":"/relative","secret":"s"}"#,
            "invalid_url",
        ),
        (
            "acc-1",
            r#"{"url":"http://user:pw@x.test/h","secret":"s"}"#,
            "invalid_url",
        ),
        ("acc-1", r#"{"url":"http://x.test/h"}"#, "missing_field"),
        (
            "acc-1",
            r#"{"url":"http://x.test/h","secret":""}"#,
            "invalid_secret",
        ),
        (
            "acc-1",
            r#"{"url":"http://x.test/h","secret":"s","delayMs":-1}"#,
            "invalid_delay",
        ),
        (
            "acc-1",
            r#"{"url":"http://x.test/h","secret":"s","delayMs":1.5}"#,
            "invalid_delay",
        ),
        (
            "acc-1",
            r#"{"url":"http://x.test/h","secret":"s","delayMs":"100"}"#,
            "invalid_delay",
        ),
        (
            "acc-1",
            r#"{"url":"http://x.test/h","secret":"s","delayMs":86400001}"#,
            "invalid_delay",
        ),
    ];
    let long_url = format!(
        r#"{{"url":"http://x.test/{}","secret":"s"}}"#,
        "a".repeat(2100)
    );
    let long_secret = format!(
        r#"{{"url":"http://x.test/h","secret":"{}"}}"#,
        "s".repeat(257)
    );
    let mut all: Vec<(&str, String, &str)> = cases
        .iter()
        .map(|(account, body, code)| (*account, body.to_string(), *code))
        .collect();
    all.push(("acc-1", long_url, "invalid_url"));
    all.push(("acc-1", long_secret, "invalid_secret"));
    for (account, body, code) in &all {
        let (status, answer) = put_webhook(&app, account, body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], *code, "{body}: {answer}");
    }
    assert_eq!(app.count("SELECT count(*) FROM webhooks").await, 0);

    // Valid: 200 with the stored registration, delay defaulting to 0, no secret.
    let (status, answer) =
        put_webhook(&app, "acc-1", r#"{"url":"https://x.test/h","secret":"s"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accountId"], "acc-1");
    assert_eq!(answer["url"], "https://x.test/h");
    assert_eq!(answer["delayMs"], 0);
    assert!(answer.get("secret").is_none(), "{answer}");
    // Replaced in place.
    let (status, answer) = put_webhook(
        &app,
        "acc-1",
        r#"{"url":"http://y.test/h","secret":"t","delayMs":86400000}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delayMs"], 86_400_000);
    assert_eq!(app.count("SELECT count(*) FROM webhooks").await, 1);

    let (status, answer) = delete_webhook(&app, "bad%20id").await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &json!("invalid_id"))
    );
    let (status, _) = delete_webhook(&app, "acc-1").await;
    assert_eq!(status, 204);
    let (status, answer) = delete_webhook(&app, "acc-1").await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("webhook_not_found"))
    );

    let (status, answer) = app.get("/debug/webhooks?after=abc").await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &json!("invalid_after"))
    );
}
