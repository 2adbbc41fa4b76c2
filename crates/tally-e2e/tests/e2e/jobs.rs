//! Settlement jobs: queued by the API, run by worker processes' runners, watched, cancelled,
//! downloaded as CSV; and the failure cases: a runner that dies mid-job leaves a job another
//! runner resumes, or FAILED with a reason once it ran out of attempts — never stuck RUNNING.
//!
//! Runners are started directly (`tally_worker::jobs::run`) with short intervals, and slowed
//! down deterministically with `chunk_pause` where a test needs a job mid-way.

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tally_worker::jobs::JobsConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::helpers::{eventually, Options, TestApp};
use crate::history::{insert_applied, Seeded};

const HEADER: &str = "account_id,day,deposits,withdraws,net,count\n";

fn quick(name: &str) -> JobsConfig {
    JobsConfig {
        runner: name.to_string(),
        poll_every: Duration::from_millis(50),
        heartbeat_every: Duration::from_millis(200),
        stale_after: Duration::from_secs(1),
        max_attempts: 3,
        chunk_days: 1,
        parallel_chunks: 2,
        chunk_pause: Duration::ZERO,
    }
}

/// A runner task; aborted (like a killed worker) when dropped.
fn start_runner(app: &TestApp, config: JobsConfig) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(tally_worker::jobs::run(
        app.pool.clone(),
        config,
        CancellationToken::new(),
    )))
}

async fn post(app: &TestApp, path: &str, body: &str) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}{path}", app.address))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn queue(app: &TestApp, from: &str, to: &str) -> String {
    let (status, body) = post(
        app,
        "/jobs/settlements",
        &json!({"from": from, "to": to}).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "QUEUED");
    body["jobId"].as_str().expect("jobId").to_string()
}

async fn job(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.get(&format!("/jobs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls the job until `ready` holds, returns it.
async fn wait_job(app: &TestApp, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(30), || async {
        let j = job(app, id).await;
        ready(&j).then_some(j)
    })
    .await
}

async fn download(app: &TestApp, id: &str) -> (u16, String, String) {
    let response = app
        .client
        .get(format!("{}/jobs/{id}/download", app.address))
        .send()
        .await
        .expect("GET download");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, kind, response.text().await.unwrap_or_default())
}

/// `days` days from 2024-01-01, `per_day` transactions a day over five accounts.
fn generated(days: i64, per_day: i64) -> Vec<Seeded> {
    let t0 = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let mut rows = Vec::new();
    for d in 0..days {
        for k in 0..per_day {
            let i = d * per_day + k;
            rows.push(Seeded {
                id: format!("g-{i}"),
                account: format!("s-{}", i % 5),
                kind: if i % 3 == 0 { "withdraw" } else { "deposit" },
                amount: Decimal::new((i % 50 + 1) * 25, 2),
                at: t0 + ChronoDuration::days(d) + ChronoDuration::minutes(k * 97 + 1),
            });
        }
    }
    rows
}

/// The CSV a settlement of `[from, to]` must produce, computed here from the inputs.
fn expected_csv(
    rows: &[(String, &str, Decimal, DateTime<Utc>)],
    from: NaiveDate,
    to: NaiveDate,
) -> String {
    let mut sums: BTreeMap<(NaiveDate, String), (Decimal, Decimal, i64)> = BTreeMap::new();
    for (account, kind, amount, applied_at) in rows {
        let day = applied_at.date_naive();
        if day < from || day > to {
            continue;
        }
        let entry = sums
            .entry((day, account.clone()))
            .or_insert((Decimal::ZERO, Decimal::ZERO, 0));
        match *kind {
            "deposit" => entry.0 += amount,
            "withdraw" => entry.1 += amount,
            _ => continue,
        }
        entry.2 += 1;
    }
    let mut csv = HEADER.to_string();
    for ((day, account), (deposits, withdraws, count)) in sums {
        csv.push_str(&format!(
            "{account},{day},{},{},{},{count}\n",
            deposits.normalize(),
            withdraws.normalize(),
            (deposits - withdraws).normalize()
        ));
    }
    csv
}

fn as_inputs(rows: &[Seeded]) -> Vec<(String, &str, Decimal, DateTime<Utc>)> {
    rows.iter()
        .map(|r| (r.account.clone(), r.kind, r.amount, r.at))
        .collect()
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

#[tokio::test]
async fn a_job_run_by_the_worker_completes_and_its_csv_matches_the_ledger() {
    let app = TestApp::spawn().await;
    let posted = [
        json!({"id": "j1", "type": "deposit", "amount": 100, "accountId": "acct-a"}),
        json!({"id": "j2", "type": "withdraw", "amount": 30.5, "accountId": "acct-a"}),
        json!({"id": "j3", "type": "deposit", "amount": "0.25", "accountId": "acct-a"}),
        json!({"id": "j4", "type": "deposit", "amount": 10, "accountId": "acct-b"}),
        // A withdraw_request moves no money: not in the settlement.
        json!({"id": "j5", "type": "withdraw_request", "amount": 5, "accountId": "acct-b"}),
        json!({"id": "j6", "type": "withdraw", "amount": 20, "accountId": "acct-b"}),
    ];
    for body in &posted {
        let (status, answer) = app.post_json(body).await;
        assert!(status == 200 || status == 201, "{answer}");
    }
    // What the ledger recorded, with the day it applied each one.
    let mut recorded = Vec::new();
    for body in &posted {
        let id = body["id"].as_str().unwrap();
        let record = eventually(Duration::from_secs(10), || async {
            let (status, record) = app.get(&format!("/transactions/{id}")).await;
            (status == 200).then_some(record)
        })
        .await;
        let kind: &str = match record["type"].as_str().unwrap() {
            "deposit" => "deposit",
            "withdraw" => "withdraw",
            _ => "withdraw_request",
        };
        recorded.push((
            record["accountId"].as_str().unwrap().to_string(),
            kind,
            record["amount"].to_string().parse::<Decimal>().unwrap(),
            record["appliedAt"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap(),
        ));
    }

    let today = Utc::now().date_naive();
    let (from, to) = (
        today - ChronoDuration::days(1),
        today + ChronoDuration::days(1),
    );
    let (status, body) = post(
        &app,
        "/jobs/settlements",
        &json!({"from": from.to_string(), "to": to.to_string()}).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "QUEUED");
    let id = body["jobId"].as_str().unwrap().to_string();

    // The worker's own runner (default settings) picks it up.
    let done = wait_job(&app, &id, |j| j["status"] == "COMPLETED").await;
    assert_eq!(done["processed"], 3);
    assert_eq!(done["total"], 3);
    assert_eq!(done["progress"], json!(1.0));
    assert_eq!(done["from"], from.to_string());
    assert!(done.get("error").is_none(), "{done}");
    assert!(done["createdAt"].is_string() && done["startedAt"].is_string());
    assert!(done["finishedAt"].is_string());

    let (status, kind, csv) = download(&app, &id).await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/csv"), "{kind}");
    let expected = expected_csv(&recorded, from, to);
    assert_eq!(csv, expected);
    assert!(csv.contains(",100.25,30.5,69.75,3\n"), "{csv}");
    assert!(csv.contains(",10,20,-10,2\n"), "{csv}");

    // Re-running the range is idempotent: same file, and no row rewritten.
    let again = queue(&app, &from.to_string(), &to.to_string()).await;
    wait_job(&app, &again, |j| j["status"] == "COMPLETED").await;
    assert_eq!(download(&app, &again).await.2, expected);
    assert_eq!(app.count("SELECT count(*) FROM settlements").await, 2);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM settlements WHERE job_id = '{id}'"
        ))
        .await,
        2,
        "unchanged rows keep the job that computed them"
    );
}

#[tokio::test]
async fn job_requests_are_validated_and_unknown_jobs_are_404() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let cases = [
        ("{}", "missing_field", "from"),
        (r#"{"from":"2024-01-01"}"#, "missing_field", "to"),
        (
            r#"{"from":"2024-1-5","to":"2024-01-10"}"#,
            "invalid_date",
            "from",
        ),
        (
            r#"{"from":"2024-02-30","to":"2024-03-10"}"#,
            "invalid_date",
            "from",
        ),
        (
            r#"{"from":"2024-01-01","to":"2024-01-01T00:00:00Z"}"#,
            "invalid_date",
            "to",
        ),
        (
            r#"{"from":20240101,"to":"2024-01-10"}"#,
            "invalid_date",
            "from",
        ),
        (
            r#"{"from":"2024-02-01","to":"2024-01-31"}"#,
            "invalid_range",
            "from",
        ),
        ("not json", "invalid_json", "body"),
        ("[]", "invalid_json", "body"),
    ];
    for (body, code, field) in cases {
        let (status, answer) = post(&app, "/jobs/settlements", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    assert_eq!(app.count("SELECT count(*) FROM settlement_jobs").await, 0);

    let (status, body) = app.get("/jobs/not-a-uuid").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_id");
    let unknown = uuid::Uuid::new_v4();
    for (status, body) in [
        app.get(&format!("/jobs/{unknown}")).await,
        app.get(&format!("/jobs/{unknown}/download")).await,
        post(&app, &format!("/jobs/{unknown}/cancel"), "").await,
    ] {
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "job_not_found");
    }
}

#[tokio::test]
async fn a_queued_job_is_cancelled_at_once_and_a_finished_one_cannot_be() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let id = queue(&app, "2024-01-01", "2024-01-31").await;
    let (status, _, body) = download(&app, &id).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("job_not_completed"), "{body}");

    let (status, body) = post(&app, &format!("/jobs/{id}/cancel"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(body["processed"], 0);
    assert!(body["finishedAt"].is_string());
    // Cancelling again changes nothing; a runner never picks it up.
    assert_eq!(post(&app, &format!("/jobs/{id}/cancel"), "").await.0, 200);

    // An empty range completes with a header-only file; a completed job cannot be cancelled.
    let empty = queue(&app, "2030-01-01", "2030-12-31").await;
    let _runner = start_runner(&app, quick("runner"));
    let done = wait_job(&app, &empty, |j| j["status"] == "COMPLETED").await;
    assert_eq!(done["processed"], 365);
    assert_eq!(done["total"], 365);
    let (status, _, csv) = download(&app, &empty).await;
    assert_eq!(status, 200);
    assert_eq!(csv, HEADER);
    let (status, body) = post(&app, &format!("/jobs/{empty}/cancel"), "").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "job_finished");

    assert_eq!(job(&app, &id).await["status"], "CANCELLED");
    assert_eq!(job(&app, &id).await["processed"], 0);
}

#[tokio::test]
async fn cancelling_a_running_job_stops_it_with_partial_progress() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    insert_applied(&app, &generated(100, 4)).await;
    let id = queue(&app, "2024-01-01", "2024-04-09").await;
    // 100 one-day chunks, 50 ms apart: about five seconds of work.
    let _runner = start_runner(
        &app,
        JobsConfig {
            chunk_pause: Duration::from_millis(50),
            ..quick("slow")
        },
    );
    let running = wait_job(&app, &id, |j| {
        j["status"] == "RUNNING" && j["processed"].as_i64().unwrap() >= 3
    })
    .await;
    assert_eq!(running["total"], 100);

    let (status, body) = post(&app, &format!("/jobs/{id}/cancel"), "").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["status"], "RUNNING",
        "the true status: it stops at a chunk boundary"
    );
    assert_eq!(body["cancelRequested"], true);

    let cancelled = wait_job(&app, &id, |j| j["status"] == "CANCELLED").await;
    let processed = cancelled["processed"].as_i64().unwrap();
    assert!(
        (3..100).contains(&processed),
        "partial progress: {cancelled}"
    );
    let progress = cancelled["progress"].as_f64().unwrap();
    assert!(progress > 0.0 && progress < 1.0, "{cancelled}");
    assert!(cancelled["finishedAt"].is_string());
    assert!(cancelled.get("error").is_none());
    // The days counted as done are exactly the days written (every day has transactions).
    assert_eq!(
        app.count("SELECT count(DISTINCT day) FROM settlements")
            .await,
        processed
    );
    assert_eq!(download(&app, &id).await.0, 409);
    // It stays cancelled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(job(&app, &id).await["processed"], processed);
}

#[tokio::test]
async fn a_job_whose_worker_dies_is_resumed_by_another_and_completes() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let rows = generated(100, 4);
    insert_applied(&app, &rows).await;
    let id = queue(&app, "2024-01-01", "2024-04-09").await;

    let doomed = start_runner(
        &app,
        JobsConfig {
            chunk_pause: Duration::from_millis(50),
            ..quick("doomed")
        },
    );
    let before = wait_job(&app, &id, |j| j["processed"].as_i64().unwrap() >= 5).await;
    // The worker dies mid-job: no hand-back, no heartbeat any more.
    drop(doomed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let orphan = job(&app, &id).await;
    assert_eq!(orphan["status"], "RUNNING");
    assert_eq!(orphan["attempts"], 1);

    let _rescuer = start_runner(&app, quick("rescuer"));
    let done = wait_job(&app, &id, |j| j["status"] == "COMPLETED").await;
    assert_eq!(done["attempts"], 2, "resumed by a second runner: {done}");
    assert_eq!(done["processed"], 100);
    assert_eq!(
        done["startedAt"], before["startedAt"],
        "the same run, resumed"
    );
    let (status, _, csv) = download(&app, &id).await;
    assert_eq!(status, 200);
    assert_eq!(
        csv,
        expected_csv(&as_inputs(&rows), day("2024-01-01"), day("2024-04-09"))
    );
}

#[tokio::test]
async fn a_job_that_loses_its_worker_too_often_fails_with_a_reason() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    insert_applied(&app, &generated(30, 2)).await;
    let id = queue(&app, "2024-01-01", "2024-01-30").await;
    let once = JobsConfig {
        max_attempts: 1,
        ..quick("once")
    };
    let doomed = start_runner(
        &app,
        JobsConfig {
            chunk_pause: Duration::from_millis(50),
            ..once.clone()
        },
    );
    wait_job(&app, &id, |j| j["processed"].as_i64().unwrap() >= 2).await;
    drop(doomed);

    let _next = start_runner(&app, once);
    let failed = wait_job(&app, &id, |j| j["status"] == "FAILED").await;
    let error = failed["error"].as_str().expect("a reason");
    assert!(error.contains("abandoned"), "{error}");
    assert!(failed["finishedAt"].is_string());
    let processed = failed["processed"].as_i64().unwrap();
    assert!((2..30).contains(&processed), "{failed}");
    assert_eq!(download(&app, &id).await.0, 409);
    let (status, body) = post(&app, &format!("/jobs/{id}/cancel"), "").await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn a_worker_shutting_down_hands_its_job_back_at_once() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let rows = generated(40, 3);
    insert_applied(&app, &rows).await;
    let id = queue(&app, "2024-01-01", "2024-02-09").await;
    let stop = CancellationToken::new();
    let leaving = tokio::spawn(tally_worker::jobs::run(
        app.pool.clone(),
        JobsConfig {
            chunk_pause: Duration::from_millis(50),
            // Long: a hand-back must not wait for it.
            stale_after: Duration::from_secs(60),
            ..quick("leaving")
        },
        stop.clone(),
    ));
    wait_job(&app, &id, |j| j["processed"].as_i64().unwrap() >= 2).await;
    stop.cancel();
    leaving.await.unwrap();
    let handed = job(&app, &id).await;
    assert_eq!(handed["status"], "QUEUED", "{handed}");
    assert_eq!(handed["attempts"], 0);

    let _next = start_runner(
        &app,
        JobsConfig {
            stale_after: Duration::from_secs(60),
            ..quick("next")
        },
    );
    let done = wait_job(&app, &id, |j| j["status"] == "COMPLETED").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(
        download(&app, &id).await.2,
        expected_csv(&as_inputs(&rows), day("2024-01-01"), day("2024-02-09"))
    );
}

#[tokio::test]
async fn overlapping_jobs_on_two_workers_write_the_same_rows_once() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let rows = generated(20, 5);
    insert_applied(&app, &rows).await;
    let a = queue(&app, "2024-01-01", "2024-01-20").await;
    let b = queue(&app, "2024-01-05", "2024-01-25").await;
    // Two workers, each taking one job: the days they share are settled twice, concurrently.
    let _one = start_runner(&app, quick("one"));
    let _two = start_runner(&app, quick("two"));
    for id in [&a, &b] {
        wait_job(&app, id, |j| j["status"] == "COMPLETED").await;
    }
    let inputs = as_inputs(&rows);
    assert_eq!(
        download(&app, &a).await.2,
        expected_csv(&inputs, day("2024-01-01"), day("2024-01-20"))
    );
    assert_eq!(
        download(&app, &b).await.2,
        expected_csv(&inputs, day("2024-01-05"), day("2024-01-25"))
    );
    let lines = expected_csv(&inputs, day("2024-01-01"), day("2024-01-25"))
        .lines()
        .count() as i64
        - 1;
    assert_eq!(app.count("SELECT count(*) FROM settlements").await, lines);
}

#[tokio::test]
async fn a_job_range_longer_than_the_maximum_is_refused() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    // The default maximum, 366 days, covers a leap year and nothing more.
    queue(&app, "2024-01-01", "2024-12-31").await;
    let (status, body) = post(
        &app,
        "/jobs/settlements",
        r#"{"from":"2024-01-01","to":"2025-01-01"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "range_too_long");
    assert_eq!(body["error"]["field"], "to");
    let (status, body) = post(
        &app,
        "/jobs/settlements",
        r#"{"from":"0001-01-01","to":"9999-12-31"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "range_too_long");
    assert_eq!(app.count("SELECT count(*) FROM settlement_jobs").await, 1);
}

#[tokio::test]
async fn queued_jobs_are_bounded_and_one_more_gets_429_with_retry_after() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| s.jobs.max_queued = 3,
        ..Options::default()
    })
    .await;
    // Requests racing for the last places: exactly the bound gets in.
    let answers = futures_util::future::join_all((0..10).map(|i| {
        let body = json!({"from": "2024-01-01", "to": format!("2024-01-{:02}", i + 1)});
        app.client
            .post(format!("{}/jobs/settlements", app.address))
            .json(&body)
            .send()
    }))
    .await;
    let mut accepted = Vec::new();
    for answer in answers {
        let response = answer.expect("POST /jobs/settlements");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            202 => accepted.push(body["jobId"].as_str().unwrap().to_string()),
            429 => {
                assert_eq!(body["error"]["code"], "too_many_jobs", "{body}");
                assert!(retry_after.is_some(), "429 without Retry-After");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted.len(), 3, "{accepted:?}");
    assert_eq!(app.count("SELECT count(*) FROM settlement_jobs").await, 3);

    // A place frees up when a job leaves the queue (here: cancelled).
    let (status, _) = post(&app, &format!("/jobs/{}/cancel", accepted[0]), "").await;
    assert_eq!(status, 200);
    queue(&app, "2024-02-01", "2024-02-02").await;
    let (status, body) = post(
        &app,
        "/jobs/settlements",
        r#"{"from":"2024-02-01","to":"2024-02-02"}"#,
    )
    .await;
    assert_eq!(status, 429, "{body}");
}

/// A client that starts a download and then stops reading (a tiny receive buffer, nothing
/// read past the status line): the server's stream, and whatever connection feeds it, stays
/// busy until this is dropped. Returns the connection and the answer's status line.
async fn stalled_download(app: &TestApp, job: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = app.api_ports[0];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /jobs/{job}/download HTTP/1.1\r\nHost: test\r\n\
                 Authorization: Bearer {}\r\n\r\n",
                app.keys.admin
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let mut read = 0;
    while !head[..read].contains(&b'\n') {
        let n = stream.read(&mut head[read..]).await.unwrap();
        assert!(n > 0, "connection closed before the status line");
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    (stream, line.lines().next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn downloads_beyond_their_bound_get_503_and_never_take_the_main_pools_connections() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        tweak: |s| {
            s.database.pool_size = 2;
            s.jobs.download_connections = 2;
        },
        ..Options::default()
    })
    .await;
    // A completed job whose file (300,000 lines, ~14 MB) is far bigger than the socket
    // buffers: a client that stops reading keeps its download open.
    let job = uuid::Uuid::new_v4();
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO settlement_jobs (id, status, from_day, to_day, processed, total) \
             VALUES ($1, 'COMPLETED', '2024-01-01', '2024-01-30', 30, 30)",
            &[&job],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO settlements (day, account_id, deposits, withdraws, net, count, job_id, \
                 computed_at) \
             SELECT DATE '2024-01-01' + d, 'account-' || lpad(a::text, 6, '0'), 100.25, 30.5, \
                    69.75, 3, $1, now() \
             FROM generate_series(0, 29) d, generate_series(1, 10000) a",
            &[&job],
        )
        .await
        .unwrap();
    drop(client);
    let job = job.to_string();

    // As many stalled downloads as the main pool has connections, and one more.
    let mut stalled = Vec::new();
    let mut lines = Vec::new();
    for _ in 0..3 {
        let (stream, line) = stalled_download(&app, &job).await;
        stalled.push(stream);
        lines.push(line);
    }
    assert!(lines[0].starts_with("HTTP/1.1 200"), "{lines:?}");
    assert!(lines[1].starts_with("HTTP/1.1 200"), "{lines:?}");
    assert!(lines[2].starts_with("HTTP/1.1 503"), "{lines:?}");

    // The one beyond the bound is told so, in the JSON error shape, with Retry-After.
    let response = app
        .client
        .get(format!("{}/jobs/{job}/download", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "downloads_busy", "{body}");

    // The main pool is untouched: reads that need it are served.
    for _ in 0..5 {
        let (status, body) = app.get("/account/acc-1").await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app.get(&format!("/jobs/{job}")).await;
        assert_eq!(status, 200, "{body}");
    }

    // Clients gone: their places are free again.
    drop(stalled);
    let csv = eventually(Duration::from_secs(10), || async {
        let (status, _, csv) = download(&app, &job).await;
        (status == 200).then_some(csv)
    })
    .await;
    assert_eq!(csv.lines().count(), 300_001);
}
