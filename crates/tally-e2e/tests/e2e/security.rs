//! What SECURITY.md promises: debug routes off in production, behind an admin key when on
//! (or, with auth off, behind the debug token), no open debug routes on a public address,
//! capped bodies, identifiers validated wherever they enter, and nginx's per-client rate
//! limit. API keys themselves: `auth.rs`.

use std::time::Duration;

use serde_json::{json, Value};
use tally_api::Application;
use tally_settings::{Secret, Settings};
use tokio_util::sync::CancellationToken;

use crate::helpers::{client_with_key, eventually, Nginx, Options, TestApp};
use tally_testkit::nginx;

const DEBUG_ROUTES: [&str; 7] = [
    "/debug/accounts",
    "/debug/transactions",
    "/debug/conservation",
    "/debug/dead-letters",
    "/debug/shards",
    "/debug/throughput",
    "/debug/accounts/a-1/holds",
];

/// `method path` on the test's API, with an `Authorization` header when given.
async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    authorization: Option<String>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method.parse().unwrap(), format!("{}{path}", app.address));
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    request.send().await.unwrap()
}

async fn status_of(app: &TestApp, path: &str, token: Option<&str>) -> (u16, Value) {
    let response = send(app, "GET", path, token.map(|t| format!("Bearer {t}"))).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn debug_routes_do_not_exist_in_the_production_profile() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| {
            let production = Settings::load_profile("production").unwrap();
            s.debug = production.debug;
        },
        ..Options::default()
    })
    .await;
    assert!(!app.settings.debug.enabled);
    for path in DEBUG_ROUTES {
        let (status, body) = status_of(&app, path, None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
        // Not even with the admin key: the routes are not registered at all.
        let (status, _) = status_of(&app, path, Some(app.keys.admin.as_str())).await;
        assert_eq!(status, 404, "{path} with the admin key");
    }
    // Nor the operator console, nor its re-publish route.
    for path in ["/console", "/console/console.js"] {
        let (status, _) = status_of(&app, path, Some(app.keys.admin.as_str())).await;
        assert_eq!(status, 404, "{path}");
    }
    let response = send(
        &app,
        "POST",
        "/debug/dead-letters/x/republish",
        Some(format!("Bearer {}", app.keys.admin)),
    )
    .await;
    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test]
async fn with_auth_off_debug_routes_require_the_bearer_token_when_one_is_set() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| {
            s.auth.enabled = false;
            s.debug.enabled = true;
            s.debug.token = Secret::new("s3cret-token");
        },
        ..Options::default()
    })
    .await;
    for path in DEBUG_ROUTES {
        for wrong in [
            None,
            Some("wrong"),
            Some("s3cret-toke"),
            Some("s3cret-token2"),
        ] {
            let (status, body) = status_of(&app, path, wrong).await;
            assert_eq!(status, 401, "{path} with {wrong:?}");
            assert_eq!(body["error"]["code"], "unauthorized", "{path}: {body}");
        }
        // Not a bearer scheme.
        let response = send(&app, "GET", path, Some("Basic czNjcmV0LXRva2Vu".into())).await;
        assert_eq!(response.status().as_u16(), 401, "{path} with Basic");
        let (status, _) = status_of(&app, path, Some("s3cret-token")).await;
        assert_eq!(status, 200, "{path} with the token");
    }
}

#[tokio::test]
async fn with_auth_off_the_api_refuses_to_serve_open_debug_routes_on_a_public_address() {
    let probe = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let mut settings = probe.settings.clone();
    settings.api.host = "0.0.0.0".into();
    settings.debug.enabled = true;
    settings.debug.token = Secret::new("");
    // With auth on, the debug routes need an admin key: nothing is open.
    let stop = CancellationToken::new();
    let app = Application::build(settings.clone(), stop.clone()).await;
    assert!(app.is_ok(), "with auth on: {:?}", app.err());
    drop(app);
    settings.auth.enabled = false;
    let refused = Application::build(settings.clone(), CancellationToken::new()).await;
    let message = refused.err().expect("must refuse").to_string();
    assert!(message.contains("debug.token"), "{message}");

    // Any one of: a token, debug off, or loopback makes it acceptable.
    settings.debug.token = Secret::new("t");
    let app = Application::build(settings.clone(), stop.clone()).await;
    assert!(app.is_ok(), "with a token: {:?}", app.err());
    drop(app);
    settings.debug.token = Secret::new("");
    settings.debug.enabled = false;
    assert!(Application::build(settings, stop.clone()).await.is_ok());
    stop.cancel();
}

#[tokio::test]
async fn bodies_are_capped_before_parsing() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let big = json!({
        "id": "big-1", "type": "deposit", "accountId": "acc-1", "amount": "1.00",
        "padding": "x".repeat(70_000),
    });
    let response = app
        .client
        .post(format!("{}/transaction", app.address))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large", "{body}");
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 0);
}

#[tokio::test]
async fn identifiers_are_validated_in_paths_queries_and_bodies() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let long = "a".repeat(129);
    // Percent-encoded so that they reach the handler as one path segment.
    for bad in [
        "bad%20id",
        "a%2Fb",
        "%C3%A9t%C3%A9",
        "a%27%3B--",
        long.as_str(),
    ] {
        let paths = [
            format!("/account/{bad}"),
            format!("/transactions/{bad}"),
            format!("/account/{bad}/transactions"),
            format!("/account/{bad}/largest-expense"),
            format!("/users/{bad}"),
            format!("/users/{bad}/largest-expense"),
            format!("/jobs/{bad}"),
            format!("/jobs/{bad}/download"),
            format!("/account/acc-1/transactions?cursor={bad}"),
        ];
        for path in paths {
            let (status, body) = app.get(&path).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert!(body["error"]["code"].is_string(), "{path}: {body}");
            assert!(body["error"]["message"].is_string(), "{path}: {body}");
        }
        for (method, path) in [
            ("PUT", format!("/users/{bad}/accounts/acc-1")),
            ("PUT", format!("/users/u-1/accounts/{bad}")),
            ("POST", format!("/jobs/{bad}/cancel")),
        ] {
            let response = send(&app, method, &path, None).await;
            assert_eq!(response.status().as_u16(), 400, "{method} {path}");
        }
    }
    let decoded_bad = ["bad id", "a/b", "été", "a';--", long.as_str()];
    for bad in decoded_bad {
        for field in ["id", "accountId", "userId", "requestId"] {
            let mut tx = json!({
                "id": "tx-1", "type": "withdraw", "accountId": "acc-1", "amount": "1.00",
            });
            tx[field] = json!(bad);
            let (status, body) = app.post_json(&tx).await;
            assert_eq!(status, 400, "{field}={bad:?}: {body}");
            assert_eq!(body["error"]["field"], field, "{body}");
        }
    }
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM account_owners").await, 0);
}

#[tokio::test]
async fn nginx_rate_limits_each_client_address_with_a_json_429() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    // 2 requests/s with a burst of 5: a quick run of 30 gets about 6 through.
    let nginx = Nginx::start_limited(&app.api_ports, "2r/s", 5).await;
    // Let the start-up probes' budget refill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut served = 0u64;
    let mut limited = 0u64;
    let started = std::time::Instant::now();
    for _ in 0..30 {
        let response = app
            .client
            .get(format!("{}/health/live", nginx.address))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => served += 1,
            429 => {
                assert_eq!(
                    response
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap()),
                    Some("1")
                );
                assert!(response.headers().contains_key("x-request-id"));
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // Burst 5 plus the current slot, plus whatever the rate refilled while the run lasted
    // (measured, so a slow machine only widens the bound).
    let refill = (started.elapsed().as_secs_f64() * 2.0).ceil() as u64;
    assert!(
        (6..=6 + refill).contains(&served),
        "served {served} of 30 in {:?}",
        started.elapsed()
    );
    assert_eq!(served + limited, 30);
    // The budget comes back.
    eventually(Duration::from_secs(10), || async {
        let response = app
            .client
            .get(format!("{}/health/live", nginx.address))
            .send()
            .await
            .unwrap();
        (response.status().as_u16() == 200).then_some(())
    })
    .await;
}

/// Per API key, in addition to per address: one key's flood is cut at its own rate while
/// another key, from the same address, keeps its budget.
#[tokio::test]
async fn nginx_rate_limits_each_api_key_apart_from_the_address() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let nginx = Nginx::start_with(
        &app.api_ports,
        nginx::Limits {
            key_rate: "1r/m",
            key_burst: 5,
            ..nginx::DEFAULT_LIMITS
        },
    )
    .await;
    let flooding = client_with_key(&app.keys.read_write);
    let url = format!("{}/account/acc-1", nginx.address);
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let response = flooding.get(&url).send().await.unwrap();
        let status = response.status().as_u16();
        if status == 429 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        }
        statuses.push(status);
    }
    // Burst 5 plus the current slot; at one a minute nothing refills during the run.
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(served, 6, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 14);
    // Another key from the same address is not held back, nor a request with no key (the
    // probes).
    let other = client_with_key(&app.keys.admin);
    assert_eq!(other.get(&url).send().await.unwrap().status().as_u16(), 200);
    let probe = reqwest::Client::new()
        .get(format!("{}/health/live", nginx.address))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status().as_u16(), 200);
}

/// nginx terminates TLS with the configured certificate: a client that trusts its CA gets
/// through, one that does not is refused, and plain HTTP on that port is not served.
#[tokio::test]
async fn nginx_terminates_tls_with_the_configured_certificate() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("tally-edge-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    crate::tls::make_certificates(&dir);
    // nginx's workers may run as nobody: they read the key at start, as the master.
    let nginx = Nginx::start_tls(
        &app.api_ports,
        nginx::Tls {
            certificate: &dir.join("server.pem"),
            key: &dir.join("server.key"),
        },
    )
    .await;
    assert!(nginx.address.starts_with("https://"), "{}", nginx.address);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", app.keys.read_write).parse().unwrap(),
    );
    let trusting = reqwest::Client::builder()
        .add_root_certificate(ca)
        .default_headers(headers)
        .build()
        .unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let url = nginx.address.replace("127.0.0.1", host);
        let response = trusting
            .get(format!("{url}/account/acc-1"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{host}");
    }
    // The Mozilla roots do not know this CA: the handshake fails.
    let stranger = reqwest::Client::new()
        .get(format!("{}/health/live", nginx.address))
        .send()
        .await;
    assert!(stranger.is_err(), "an unknown CA was accepted");
    // Plain HTTP on the TLS port gets nginx's 400, never a replica's answer.
    let plain = reqwest::Client::new()
        .get(format!(
            "{}/health/live",
            nginx.address.replace("https://", "http://")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 400);
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_wrong_method_is_a_405_naming_the_allowed_ones_and_a_wrong_path_a_404() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| s.debug.enabled = false,
        ..Options::default()
    })
    .await;
    for (method, path, allow) in [
        ("DELETE", "/status", "GET"),
        ("TRACE", "/transaction", "POST"),
        ("GET", "/transaction", "POST"),
        // The collection is POST-only, although `GET /jobs/{id}` matches the text.
        ("GET", "/jobs/settlements", "POST"),
        ("POST", "/account/acc-1", "GET"),
    ] {
        let response = send(&app, method, path, None).await;
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        assert_eq!(
            response.headers().get("allow").map(|v| v.to_str().unwrap()),
            Some(allow),
            "{method} {path}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    }
    for (method, path) in [("GET", "/nope"), ("DELETE", "/debug/accounts")] {
        let response = send(&app, method, path, None).await;
        assert_eq!(
            response.status().as_u16(),
            404,
            "{method} {path}: debug is off"
        );
    }
}
