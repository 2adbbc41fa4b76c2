//! Balance webhooks end to end: registered through the API, scheduled by the worker's batch,
//! sent by the worker's sender to a receiver started in the test (an actix-web server that
//! records every request and answers as the test scripts it). Covers the delay, supersession,
//! retries with back-off then failure, the signature, and a worker killed mid-way; a hanging
//! receiver that must not hold up the others; non-public targets refused at registration and,
//! after DNS resolution, at send time; and what `/debug/webhooks` may show of a failure.

use actix_web::{dev::ServerHandle, web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_settings::Settings;

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
    assert_eq!(rows[0]["lastError"], "http_status", "{}", rows[0]);
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
    assert_eq!(rows[0]["lastError"], "webhook_deleted");
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
        // PostgreSQL text cannot hold U+0000 (found by the fuzzer as a 500).
        (
            "acc-1",
            r#"{"url":"http://x.test/h","secret":"a\u0000b"}"#,
            "invalid_field",
        ),
        (
            "acc-1",
            r#"{"url":"http://x.test/h\u0000","secret":"s"}"#,
            "invalid_field",
        ),
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

fn hang(_: usize) -> (u16, Duration) {
    (200, Duration::from_secs(120))
}

/// Waits until the account's latest delivery is `sent`.
async fn wait_sent(app: &TestApp, account: &str, version: i64, timeout: Duration) {
    eventually(timeout, || async {
        deliveries(app)
            .await
            .iter()
            .any(|r| r["accountId"] == account && r["version"] == version && r["status"] == "sent")
            .then_some(())
    })
    .await;
}

/// A receiver that never answers within the sender's timeout (20 s here) must not hold up
/// deliveries to others: each of the good receiver's deliveries arrives while the hanging
/// one is still in flight (the bound below is a quarter of that timeout).
#[tokio::test]
async fn a_hanging_receiver_does_not_delay_another_receivers_deliveries() {
    let app = TestApp::spawn_with(Options {
        tweak: |s| {
            quick(s);
            s.webhooks.timeout_ms = 20_000;
            s.webhooks.lease_ms = 30_000;
        },
        ..Options::default()
    })
    .await;
    let hanging = Receiver::start(hang).await;
    let good = Receiver::start(ok).await;
    register(&app, "slow-1", &hanging.url, 0).await;
    register(&app, "fast-1", &good.url, 0).await;

    deposit(&app, "s1", "slow-1", "10").await;
    hanging.wait_for(1, Duration::from_secs(10)).await;
    for n in 1..=3i64 {
        deposit(&app, &format!("f{n}"), "fast-1", "1").await;
        wait_sent(&app, "fast-1", n, Duration::from_secs(5)).await;
    }
    assert_eq!(good.requests().len(), 3);
    assert_eq!(
        hanging.requests().len(),
        1,
        "one send in flight, not repeated"
    );
}

/// One receiver behind many accounts, hanging: it holds at most `per_receiver` of the
/// sender's slots, so another receiver still gets its deliveries at once.
#[tokio::test]
async fn a_hanging_receiver_behind_many_accounts_holds_only_its_share_of_the_slots() {
    let app = TestApp::spawn_with(Options {
        tweak: |s| {
            quick(s);
            s.webhooks.timeout_ms = 20_000;
            s.webhooks.lease_ms = 30_000;
            s.webhooks.concurrency = 4;
            s.webhooks.per_receiver = 2;
        },
        ..Options::default()
    })
    .await;
    let hanging = Receiver::start(hang).await;
    let good = Receiver::start(ok).await;
    for n in 0..8 {
        register(&app, &format!("slow-{n}"), &hanging.url, 0).await;
    }
    register(&app, "fast-1", &good.url, 0).await;
    for n in 0..8 {
        deposit(&app, &format!("s{n}"), &format!("slow-{n}"), "10").await;
    }
    hanging.wait_for(2, Duration::from_secs(10)).await;

    for n in 1..=3i64 {
        deposit(&app, &format!("f{n}"), "fast-1", "1").await;
        wait_sent(&app, "fast-1", n, Duration::from_secs(5)).await;
    }
    assert_eq!(
        hanging.requests().len(),
        2,
        "at most per_receiver sends in flight to the hanging receiver"
    );
}

/// Settings of the production profile for webhook targets: non-public ones refused.
fn public_only(s: &mut Settings) {
    quick(s);
    s.webhooks.allow_private_targets = false;
}

#[tokio::test]
async fn non_public_webhook_targets_are_refused_at_registration_unless_allowed() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: public_only,
        ..Options::default()
    })
    .await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://127.1/hook",
        "http://2130706433/hook",
        "http://localhost/hook",
        "http://api.localhost./hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://255.255.255.255/hook",
        "http://[::1]/hook",
        "http://[::]/hook",
        "http://[fc00::1]/hook",
        "http://[fd12:3456::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "https://[::ffff:127.0.0.1]:8443/hook",
    ] {
        let body = json!({"url": url, "secret": SECRET}).to_string();
        let (status, answer) = put_webhook(&app, "acc-1", &body).await;
        assert_eq!(status, 400, "{url}: {answer}");
        assert_eq!(
            answer["error"]["code"], "non_public_target",
            "{url}: {answer}"
        );
        assert_eq!(answer["error"]["field"], "url", "{url}: {answer}");
    }
    assert_eq!(app.count("SELECT count(*) FROM webhooks").await, 0);
    // Public addresses and names are accepted (names are checked again when sent).
    for url in [
        "https://93.184.215.14/hook",
        "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook",
        "https://hooks.example.com/tally",
    ] {
        let body = json!({"url": url, "secret": SECRET}).to_string();
        let (status, answer) = put_webhook(&app, "acc-1", &body).await;
        assert_eq!(status, 200, "{url}: {answer}");
    }

    // Allowed by configuration (the local profile's default), 127.0.0.1 is fine.
    let local = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let body = json!({"url": "http://127.0.0.1:8080/hook", "secret": SECRET}).to_string();
    assert_eq!(put_webhook(&local, "acc-1", &body).await.0, 200);
}

#[tokio::test]
async fn a_target_resolving_to_a_non_public_address_is_refused_when_sent() {
    let app = TestApp::spawn_with(Options {
        tweak: public_only,
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start(ok).await;
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // Registrations that predate the setting, or names that resolve differently now: written
    // directly, as the API would refuse them.
    let client = app.pool.get().await.unwrap();
    for (account, url) in [
        ("by-name", format!("http://localhost:{port}/hook")),
        ("by-address", format!("http://127.0.0.1:{port}/hook")),
    ] {
        client
            .execute(
                "INSERT INTO webhooks (account_id, url, secret) VALUES ($1, $2, 's')",
                &[&account, &url],
            )
            .await
            .unwrap();
    }
    deposit(&app, "d1", "by-name", "10").await;
    deposit(&app, "d2", "by-address", "10").await;

    let rows = wait_statuses(&app, &["failed", "failed"], Duration::from_secs(10)).await;
    for row in &rows {
        assert_eq!(row["lastError"], "non_public_target", "{row}");
        assert_eq!(row["lastStatus"], Value::Null, "{row}");
        assert_eq!(row["attempts"], 1, "failed at once, not retried: {row}");
    }
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the receiver"
    );
}

/// An upstream that reads a request and closes the connection without answering.
async fn closing_receiver() -> String {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
        }
    });
    format!("http://127.0.0.1:{port}/hook?token=from-the-registration")
}

#[tokio::test]
async fn debug_webhooks_shows_a_short_classification_never_the_receivers_text() {
    let app = TestApp::spawn_with(Options {
        tweak: |s| {
            quick(s);
            s.webhooks.max_attempts = 1;
        },
        ..Options::default()
    })
    .await;
    // A receiver whose error page carries internals.
    let talkative = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(|| {
            App::new().default_service(web::to(|| async {
                HttpResponse::InternalServerError()
                    .body("panic at db.internal:5432 password=hunter2 stack trace follows")
            }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        format!("http://127.0.0.1:{port}/hook")
    };
    let closing = closing_receiver().await;
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}/hook")
    };
    for (account, url) in [
        ("a-talk", &talkative),
        ("b-close", &closing),
        ("c-refused", &refused),
    ] {
        register(&app, account, url, 0).await;
        deposit(&app, &format!("d-{account}"), account, "1").await;
    }
    let rows = eventually(Duration::from_secs(15), || async {
        let rows = deliveries(&app).await;
        (rows.len() == 3 && rows.iter().all(|r| r["status"] == "failed")).then_some(rows)
    })
    .await;
    let by_account = |account: &str| {
        rows.iter()
            .find(|r| r["accountId"] == account)
            .unwrap_or_else(|| panic!("no delivery for {account}: {rows:?}"))
            .clone()
    };
    let talk = by_account("a-talk");
    assert_eq!(talk["lastStatus"], 500, "{talk}");
    assert_eq!(talk["lastError"], "http_status", "{talk}");
    let close = by_account("b-close");
    assert_eq!(close["lastStatus"], Value::Null, "{close}");
    assert_eq!(close["lastError"], "transport_error", "{close}");
    let refuse = by_account("c-refused");
    assert_eq!(refuse["lastError"], "connect_failed", "{refuse}");

    // Nothing the receivers said, and nothing of their addresses, shows through.
    let page = app.get_ok("/debug/webhooks").await;
    let text = page.to_string();
    for leaked in [
        "hunter2",
        "db.internal",
        "127.0.0.1",
        "token",
        "error sending",
    ] {
        assert!(!text.contains(leaked), "{leaked} in {text}");
    }
}
