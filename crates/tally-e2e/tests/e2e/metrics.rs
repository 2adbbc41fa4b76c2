//! `/metrics` of the API (through nginx, as `curl localhost:8080/metrics` sees it) and of the
//! worker, checked by series name after real traffic; the request id from `X-Request-Id` to
//! the worker's log line; JSON logs in the production profile.

use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_settings::Settings;

use crate::helpers::{eventually, Nginx, TestApp};

/// One sample line of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format strictly enough to catch a malformed line: every line
/// is a `# HELP`/`# TYPE` comment or `name{label="value",…} number`, and every sample belongs
/// to a family announced by `# TYPE` before it.
fn parse(text: &str) -> Vec<Sample> {
    let mut families: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap(), words.next().unwrap());
            assert!(kind == "HELP" || kind == "TYPE", "bad comment: {line}");
            if kind == "TYPE" {
                let t = words.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "bad type: {line}"
                );
                families.push(name.to_string());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label is k=\"v\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        let family = families.last().expect("a sample after its # TYPE");
        assert!(
            name == family
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(family)),
            "sample {name} outside its family {family}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// The value of the sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(client: &reqwest::Client, url: &str) -> (String, Vec<Sample>) {
    let response = client.get(url).send().await.expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

async fn deposit(app: &TestApp, id: &str, account: &str) {
    let (status, body) = app
        .post_json(&json!({"id": id, "type": "deposit", "amount": 10, "accountId": account}))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn api_metrics_through_nginx_show_requests_latency_and_publishes() {
    let app = TestApp::spawn().await;
    let nginx = Nginx::start(&app.api_ports).await;
    for i in 0..5 {
        deposit(&app, &format!("m-dep-{i}"), "m-acct-secret-name").await;
    }
    let (status, _) = app.get("/account/m-acct-secret-name").await;
    assert_eq!(status, 200);
    let (status, _) = app.get("/no/such/route").await;
    assert_eq!(status, 404);

    let url = format!("{}/metrics", nginx.address);
    // The queue depths come from the admission poller: present after its first poll.
    let (text, samples) = eventually(Duration::from_secs(10), || async {
        let (text, samples) = scrape(&app.client, &url).await;
        value(&samples, "tally_queue_depth", &[("shard", "0")]).map(|_| (text, samples))
    })
    .await;

    let posts = value(
        &samples,
        "tally_http_requests_total",
        &[
            ("route", "/transaction"),
            ("method", "POST"),
            ("status", "200"),
        ],
    );
    assert!(posts >= Some(5.0), "{text}");
    // Route patterns, never raw paths.
    let account = [("route", "/account/{account_id}"), ("status", "200")];
    assert!(
        value(&samples, "tally_http_requests_total", &account) >= Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("m-acct-secret-name"),
        "raw path in a label:\n{text}"
    );
    let unmatched = [("route", "unmatched"), ("status", "404")];
    assert!(value(&samples, "tally_http_requests_total", &unmatched) >= Some(1.0));
    let bucket = [
        ("route", "/transaction"),
        ("method", "POST"),
        ("le", "+Inf"),
    ];
    assert!(
        value(
            &samples,
            "tally_http_request_duration_seconds_bucket",
            &bucket
        ) >= Some(5.0),
        "{text}"
    );
    assert!(value(&samples, "tally_publishes_total", &[]) >= Some(5.0));
    assert!(value(&samples, "tally_publish_confirms_total", &[]) >= Some(5.0));
    assert_eq!(value(&samples, "tally_publish_nacks_total", &[]), Some(0.0));
    assert_eq!(value(&samples, "tally_holds_open", &[]), Some(0.0));
    let sent = [("outcome", "sent")];
    assert!(value(&samples, "tally_webhook_deliveries_total", &sent).is_some());
}

#[tokio::test]
async fn worker_metrics_show_batches_outcomes_lag_and_shards() {
    let app = TestApp::spawn().await;
    let port = app.worker.as_ref().and_then(|w| w.metrics_port).unwrap();
    for i in 0..6 {
        deposit(&app, &format!("w-dep-{i}"), "w-acct").await;
    }
    app.wait_balance("w-acct", "60").await;
    let request = |id: &str, amount: u32| json!({"id": id, "type": "withdraw_request", "amount": amount, "accountId": "w-acct"});
    assert_eq!(app.post_json(&request("w-req-1", 20)).await.0, 201);
    assert_eq!(app.post_json(&request("w-req-2", 1000)).await.0, 402);

    let url = format!("http://127.0.0.1:{port}/metrics");
    let (text, samples) = scrape(&app.client, &url).await;
    let applied = |kind| {
        value(
            &samples,
            "tally_transactions_applied_total",
            &[("type", kind)],
        )
    };
    assert!(applied("deposit") >= Some(6.0), "{text}");
    assert_eq!(applied("withdraw_request"), Some(1.0), "{text}");
    let denied = [
        ("type", "withdraw_request"),
        ("reason", "insufficient_funds"),
    ];
    assert_eq!(
        value(&samples, "tally_transactions_rejected_total", &denied),
        Some(1.0)
    );
    assert!(value(&samples, "tally_batch_size_count", &[]) >= Some(1.0));
    assert!(value(&samples, "tally_batch_size_sum", &[]) >= Some(8.0));
    let inf = [("le", "+Inf")];
    assert!(value(&samples, "tally_batch_duration_seconds_bucket", &inf) >= Some(1.0));
    assert!(value(&samples, "tally_apply_lag_seconds_count", &[]) >= Some(8.0));
    assert_eq!(
        value(&samples, "tally_holds_open", &[]),
        Some(1.0),
        "{text}"
    );
    // One worker owns every shard (4 in the tests).
    assert_eq!(value(&samples, "tally_shards_owned", &[]), Some(4.0));
}

/// A `MakeWriter` target: every log line the process writes, in memory.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn request_id_is_echoed_and_reaches_the_worker_log_line() {
    // nextest runs each test in its own process: this global subscriber is this test's.
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("warn,tally_worker=debug")
        .with_writer(move || writer.clone())
        .init();
    let app = TestApp::spawn().await;

    let request_id = format!("rid-{}", uuid::Uuid::new_v4().simple());
    let response = app
        .client
        .post(format!("{}/transaction", app.address))
        .header("X-Request-Id", &request_id)
        .json(&json!({"id": "rid-tx-1", "type": "deposit", "amount": 5, "accountId": "rid-acct"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-request-id"], request_id.as_str());

    let line = eventually(Duration::from_secs(10), || async {
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .find(|l| l.contains(&format!("\"request_id\":\"{request_id}\"")))
            .map(str::to_string)
    })
    .await;
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(parsed["fields"]["id"], "rid-tx-1", "{line}");
    // And the name of the key that posted it (the test client's admin key), never the key.
    assert_eq!(
        parsed["fields"]["key"],
        tally_testkit::keys::ADMIN_KEY_NAME,
        "{line}"
    );
    assert!(!line.contains(&app.keys.admin[40..]), "{line}");

    // Not a sane id (a space, too long): replaced by a generated one, on every answer.
    for bad in ["has space", &"x".repeat(129)] {
        let response = app
            .client
            .get(format!("{}/no/such/route", app.address))
            .header("X-Request-Id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404);
        let echoed = response.headers()["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(echoed).is_ok(), "{echoed}");
    }
}

#[test]
fn production_profile_logs_json_lines() {
    let settings = Settings::load_profile("production").unwrap();
    assert_eq!(settings.log.format, "json");
    let local = Settings::load_profile("local").unwrap();
    assert_eq!(local.log.format, "pretty");
}
