//! API keys (SECURITY.md): every route but the probes needs a valid key with the route's scope;
//! a refusal (401 without a valid key, 403 without the scope) happens before anything is read,
//! published or written; a revoked key is refused by every replica within seconds; the key's
//! name is recorded with the transactions it posts; a key's text never reaches a log.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tally_core::auth::Scope;

use crate::helpers::{client_with_key, eventually, Options, TestApp};
use crate::metrics::Captured;

/// `method path` with `key` (none: no Authorization header at all), → (status, body).
async fn call(
    app: &TestApp,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = key.map_or_else(reqwest::Client::new, client_with_key);
    let mut request = client.request(method.parse().unwrap(), format!("{}{path}", app.address));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A new key, once the test's first replica has taken it up (within `auth.refresh_ms`).
async fn key(app: &TestApp, name: &str, scopes: &[Scope]) -> (uuid::Uuid, String) {
    let key = tally_store::keys::create(&app.pool, name, scopes)
        .await
        .unwrap();
    eventually(Duration::from_secs(5), || async {
        (call(app, Some(&key.token), "GET", "/status", None).await.0 != 401).then_some(())
    })
    .await;
    (key.id, key.token)
}

fn deposit(id: &str) -> Value {
    json!({"id": id, "type": "deposit", "amount": 10, "accountId": "acc-auth"})
}

/// Nothing was published (no worker runs: a published command would wait in its queue) and
/// nothing written.
async fn nothing_done(app: &TestApp) {
    let broker = app.broker().await;
    let channel = broker.create_channel().await.unwrap();
    assert_eq!(app.queued(&channel).await, 0, "something was published");
    for table in [
        "transactions",
        "account_owners",
        "webhooks",
        "settlement_jobs",
    ] {
        let n = app.count(&format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(n, 0, "{table} was written");
    }
}

#[tokio::test]
async fn requests_without_a_valid_key_get_401_and_nothing_is_done() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let (revoked_id, revoked) = key(&app, "gone", &[Scope::Admin]).await;
    assert!(tally_store::keys::revoke(&app.pool, revoked_id)
        .await
        .unwrap());
    // The admin key with its secret changed: a known id, the wrong secret.
    let mut wrong_secret = app.keys.admin.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == '0' { '1' } else { '0' });
    let unknown = format!(
        "tally_{}_{}",
        uuid::Uuid::new_v4().simple(),
        "ab".repeat(32)
    );
    // The revocation is seen within the refresh interval.
    eventually(Duration::from_secs(5), || async {
        (call(&app, Some(&revoked), "GET", "/account/x", None)
            .await
            .0
            == 401)
            .then_some(())
    })
    .await;

    let requests = [
        ("POST", "/transaction", Some(deposit("d-401"))),
        ("PUT", "/users/u1/accounts/acc-auth", None),
        (
            "PUT",
            "/account/acc-auth/webhook",
            Some(json!({"url": "http://127.0.0.1:9/h", "secret": "s"})),
        ),
        (
            "POST",
            "/jobs/settlements",
            Some(json!({"from": "2024-01-01", "to": "2024-01-02"})),
        ),
        ("GET", "/account/acc-auth", None),
        ("GET", "/debug/accounts", None),
        ("GET", "/status", None),
        ("GET", "/no/such/route", None),
    ];
    let not_bearer = "Basic dGFsbHk6dGFsbHk=";
    for (method, path, body) in &requests {
        for key in [
            None,
            Some(revoked.as_str()),
            Some(wrong_secret.as_str()),
            Some(unknown.as_str()),
            Some("not-a-key"),
        ] {
            let (status, answer) = call(&app, key, method, path, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthorized", "{answer}");
        }
        let response = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", app.address))
            .header("Authorization", not_bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            401,
            "{method} {path} with Basic"
        );
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    nothing_done(&app).await;
    // The probes need no key.
    for probe in ["/health/live", "/health/ready", "/metrics"] {
        assert_eq!(call(&app, None, "GET", probe, None).await.0, 200, "{probe}");
    }
}

#[tokio::test]
async fn a_key_without_the_routes_scope_gets_403_and_nothing_is_done() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let (_, read) = key(&app, "reader", &[Scope::LedgerRead]).await;
    let (_, write) = key(&app, "writer", &[Scope::TransactionsWrite]).await;
    let rw = app.keys.read_write.clone();
    let admin_only = [
        ("PUT", "/users/u1/accounts/acc-auth", None),
        (
            "PUT",
            "/account/acc-auth/webhook",
            Some(json!({"url": "http://127.0.0.1:9/h", "secret": "s"})),
        ),
        ("DELETE", "/account/acc-auth/webhook", None),
        (
            "POST",
            "/jobs/settlements",
            Some(json!({"from": "2024-01-01", "to": "2024-01-02"})),
        ),
        ("GET", "/debug/accounts", None),
        ("GET", "/debug/conservation", None),
    ];
    for (method, path, body) in &admin_only {
        for key in [&read, &write, &rw] {
            let (status, answer) = call(&app, Some(key), method, path, body.clone()).await;
            assert_eq!(status, 403, "{method} {path}: {answer}");
            assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
        }
    }
    let (status, answer) = call(
        &app,
        Some(&read),
        "POST",
        "/transaction",
        Some(deposit("d1")),
    )
    .await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (403, &json!("forbidden")),
        "{answer}"
    );
    let (status, _) = call(&app, Some(&write), "GET", "/account/acc-auth", None).await;
    assert_eq!(status, 403);
    let (status, _) = call(&app, Some(&write), "GET", "/transactions/d1", None).await;
    assert_eq!(status, 403);
    nothing_done(&app).await;

    // Each scope lets its own routes through; /status takes any key.
    for (key, path) in [
        (&read, "/account/acc-auth"),
        (
            &read,
            "/users/u1/largest-expense?from=2024-01-01T00:00:00Z&to=2024-01-02T00:00:00Z",
        ),
        (&write, "/status"),
        (&read, "/status"),
    ] {
        let (status, answer) = call(&app, Some(key), "GET", path, None).await;
        assert!(status != 401 && status != 403, "{path}: {status} {answer}");
    }
    let (status, _) = call(
        &app,
        Some(&write),
        "POST",
        "/transaction",
        Some(deposit("d2")),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(&app, Some(&app.keys.admin), "GET", "/debug/accounts", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_key_revoked_is_refused_by_every_replica_within_seconds() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.spawn_replica().await;
    let (id, token) = key(&app, "soon-revoked", &[Scope::LedgerRead]).await;
    let client = client_with_key(&token);
    let status_on = |port: u16| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/account/a"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // A new key is taken up by every replica within the refresh interval too.
    for port in app.api_ports.clone() {
        eventually(Duration::from_secs(5), || async {
            (status_on(port).await == 200).then_some(())
        })
        .await;
    }
    assert!(tally_store::keys::revoke(&app.pool, id).await.unwrap());
    let revoked_at = Instant::now();
    for port in app.api_ports.clone() {
        eventually(Duration::from_secs(5), || async {
            (status_on(port).await == 401).then_some(())
        })
        .await;
    }
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5),
        "took {:?}",
        revoked_at.elapsed()
    );
    assert!(
        !tally_store::keys::revoke(&app.pool, id).await.unwrap(),
        "revoked twice"
    );
}

#[tokio::test]
async fn the_keys_name_is_in_the_record_of_each_transaction_it_posted() {
    let app = TestApp::spawn().await;
    let (_, token) = key(
        &app,
        "payments-svc",
        &[Scope::TransactionsWrite, Scope::LedgerRead],
    )
    .await;
    let posted = |body: Value| {
        let client = client_with_key(&token);
        let url = format!("{}/transaction", app.address);
        async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(posted(deposit("named-1")).await, 200);
    let request =
        json!({"id": "named-2", "type": "withdraw_request", "amount": 5, "accountId": "acc-auth"});
    assert_eq!(posted(request.clone()).await, 201);
    // A retry with another key is the same request: the record keeps the first key's name.
    let (status, _) = call(
        &app,
        Some(&app.keys.read_write),
        "POST",
        "/transaction",
        Some(request),
    )
    .await;
    assert_eq!(status, 201);
    for id in ["named-1", "named-2"] {
        let record = eventually(Duration::from_secs(10), || async {
            let (status, body) = app.get(&format!("/transactions/{id}")).await;
            (status == 200).then_some(body)
        })
        .await;
        assert_eq!(record["keyName"], "payments-svc", "{record}");
    }
    // A command posted by the admin key carries the admin key's name.
    assert_eq!(app.post_json(&deposit("named-3")).await.0, 200);
    let record = eventually(Duration::from_secs(10), || async {
        let (status, body) = app.get("/transactions/named-3").await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(record["keyName"], tally_testkit::keys::ADMIN_KEY_NAME);
}

#[tokio::test]
async fn key_texts_never_reach_a_log_and_are_not_stored() {
    // nextest runs each test in its own process: this global subscriber is this test's.
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .init();
    let app = TestApp::spawn().await;
    let (_, reader) = key(&app, "log-reader", &[Scope::LedgerRead]).await;
    let (id, revoked) = key(&app, "log-revoked", &[Scope::TransactionsWrite]).await;
    assert_eq!(
        call(
            &app,
            Some(&revoked),
            "POST",
            "/transaction",
            Some(deposit("l1"))
        )
        .await
        .0,
        200
    );
    tally_store::keys::revoke(&app.pool, id).await.unwrap();
    eventually(Duration::from_secs(5), || async {
        let (status, _) = call(&app, Some(&revoked), "GET", "/status", None).await;
        (status == 401).then_some(())
    })
    .await;
    let (status, _) = call(
        &app,
        Some(&revoked),
        "POST",
        "/transaction",
        Some(deposit("l2")),
    )
    .await;
    assert_eq!(status, 401);
    // A refusal for the scope names the key in the log.
    let (status, _) = call(
        &app,
        Some(&reader),
        "POST",
        "/transaction",
        Some(deposit("l3")),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        call(&app, Some(&reader), "GET", "/account/acc-auth", None)
            .await
            .0,
        200
    );
    app.wait_balance("acc-auth", "10").await;
    let text = eventually(Duration::from_secs(5), || async {
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        text.contains("log-reader").then_some(text)
    })
    .await;

    let secret = |token: &str| token.rsplit('_').next().unwrap().to_string();
    let stored: Vec<String> = app
        .pool
        .get()
        .await
        .unwrap()
        .query("SELECT row_to_json(k)::text FROM api_keys k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for token in [&reader, &revoked, &app.keys.admin, &app.keys.read_write] {
        assert!(
            !text.contains(secret(token).as_str()),
            "a key's secret was logged"
        );
        assert!(
            stored
                .iter()
                .all(|row| !row.contains(secret(token).as_str())),
            "a key's secret is stored"
        );
    }
}

#[tokio::test]
async fn with_auth_off_no_key_is_asked_for_and_status_says_so() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| s.auth.enabled = false,
        ..Options::default()
    })
    .await;
    let (status, body) = call(&app, None, "GET", "/status", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["auth"], "off");
    assert!(
        body["warning"]
            .as_str()
            .unwrap()
            .contains("authentication is off"),
        "{body}"
    );
    let (status, _) = call(&app, None, "POST", "/transaction", Some(deposit("open-1"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        call(&app, None, "GET", "/debug/accounts", None).await.0,
        200
    );

    // On (the default), /status says so, with no warning.
    let on = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let (_, body) = on.get("/status").await;
    assert_eq!(body["auth"], "on", "{body}");
    assert!(body.get("warning").is_none(), "{body}");
}
