//! Many concurrent clients through nginx to several API replicas: exact sums, exact approvals;
//! and which requests nginx may replay on another replica when one fails.

use futures_util::future::join_all;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{eventually, Nginx, TestApp};

const CLIENTS: usize = 50;

/// Sends `bodies` from `CLIENTS` concurrent clients (each its own connection pool); returns
/// the status of every request.
async fn from_clients(client: &reqwest::Client, address: &str, bodies: Vec<Value>) -> Vec<u16> {
    let per_client = bodies.len().div_ceil(CLIENTS);
    let chunks: Vec<Vec<Value>> = bodies.chunks(per_client).map(<[Value]>::to_vec).collect();
    let url = format!("{address}/transaction");
    let tasks = chunks.into_iter().map(|chunk| {
        let (url, client) = (url.clone(), client.clone());
        tokio::spawn(async move {
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
    let statuses = from_clients(&app.client, &nginx.address, bodies).await;
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
    app.post_accepted(&json!({"id":"d","type":"deposit","amount":100,"accountId":"pool"}))
        .await;
    app.wait_balance("pool", "100").await;

    // A reader watching `available` for the whole run.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, url) = (done.clone(), format!("{}/account/pool", nginx.address));
        let client = app.client.clone();
        tokio::spawn(async move {
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
    let statuses = from_clients(&app.client, &nginx.address, bodies).await;
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
        let v = app.get_ok("/account/pool").await;
        (v["held"] == json!(100)).then_some(v)
    })
    .await;
    assert_eq!(final_view["available"], json!(0));
}

/// Stand-ins for API replicas that die mid-request: each reads a request's head and closes
/// the connection without answering. Records every request line it got.
struct DyingReplicas {
    ports: Vec<u16>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl DyingReplicas {
    async fn start(count: usize) -> Self {
        use tokio::io::AsyncReadExt;
        let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let mut ports = Vec::new();
        for _ in 0..count {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(listener.local_addr().unwrap().port());
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let line = String::from_utf8_lossy(&head);
                        let line = line.lines().next().unwrap_or_default().to_string();
                        seen.lock().unwrap().push(line);
                        // Dropped here: the replica "dies" with the request in hand.
                    });
                }
            });
        }
        Self { ports, seen }
    }

    /// How many replicas got a request starting with `request` (e.g. `POST /jobs/settlements`).
    fn attempts(&self, request: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.starts_with(&format!("{request} ")))
            .count()
    }
}

/// nginx passes a request on to another replica only when repeating it is harmless: a POST
/// /transaction (idempotent by its id), reads. A settlement job or a webhook deletion that
/// reached a replica which then died is not replayed: the client gets 503 and decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_requests_idempotent_by_id_are_replayed_on_another_replica() {
    let replicas = DyingReplicas::start(2).await;
    let nginx = Nginx::start_unchecked(&replicas.ports).await;
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = client.request(method, format!("{}{path}", nginx.address));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };

    let job = json!({"from": "2024-01-01", "to": "2024-01-31"});
    let answer = send(reqwest::Method::POST, "/jobs/settlements", Some(job))
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 503);
    let body: Value = answer.json().await.unwrap();
    // The replica may have acted on it before dying: nginx cannot promise "not accepted".
    assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
    let webhook = json!({"url": "https://x.test/h", "secret": "s"});
    for (method, path, body) in [
        (reqwest::Method::DELETE, "/account/acc-1/webhook", None),
        (
            reqwest::Method::PUT,
            "/account/acc-1/webhook",
            Some(webhook),
        ),
        (
            reqwest::Method::POST,
            "/jobs/00000000-0000-4000-8000-000000000000/cancel",
            None,
        ),
    ] {
        let answer = send(method, path, body).await.unwrap();
        assert_eq!(answer.status().as_u16(), 503);
    }
    let deposit = json!({"id": "t1", "type": "deposit", "amount": 1, "accountId": "acc-1"});
    send(reqwest::Method::POST, "/transaction", Some(deposit))
        .await
        .unwrap();
    send(reqwest::Method::GET, "/account/acc-1", None)
        .await
        .unwrap();

    assert_eq!(replicas.attempts("POST /jobs/settlements"), 1);
    assert_eq!(replicas.attempts("DELETE /account/acc-1/webhook"), 1);
    assert_eq!(replicas.attempts("PUT /account/acc-1/webhook"), 1);
    assert_eq!(
        replicas.attempts("POST /jobs/00000000-0000-4000-8000-000000000000/cancel"),
        1
    );
    assert_eq!(replicas.attempts("POST /transaction"), 2, "retried by id");
    assert_eq!(
        replicas.attempts("GET /account/acc-1"),
        2,
        "reads are retried"
    );
}

/// A replica that is down (connection refused) never saw the request: a settlement job
/// request still fails over to a live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_request_refused_by_a_dead_replica_fails_over_to_a_live_one() {
    let mut app = TestApp::spawn_with(crate::helpers::Options {
        worker: false,
        ..crate::helpers::Options::default()
    })
    .await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    app.api_ports.insert(0, dead);
    let nginx = Nginx::start(&app.api_ports).await;
    let client = app.client.clone();
    for n in 0..4 {
        let answer = client
            .post(format!("{}/jobs/settlements", nginx.address))
            .json(&json!({"from": "2024-01-01", "to": format!("2024-01-0{}", n + 1)}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 202);
    }
    assert_eq!(app.count("SELECT count(*) FROM settlement_jobs").await, 4);
}

/// A stand-in API replica that answers every request with `response` (raw HTTP, the
/// connection closed after it).
async fn canned_replica(response: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Head and the small JSON body of the test's request.
                while !request.windows(2).any(|w| w == b"}\n") && !request.ends_with(b"}") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

fn canned_503(code: &str) -> String {
    let body = format!(r#"{{"error":{{"code":"{code}","message":"from the replica"}}}}"#);
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 2\r\nx-tally-error: {code}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
}

const DEPOSIT: &str = r#"{"id":"t1","type":"deposit","amount":1,"accountId":"a"}"#;

async fn post_transaction(nginx: &Nginx) -> (u16, Option<String>, Value) {
    let answer = reqwest::Client::new()
        .post(format!("{}/transaction", nginx.address))
        .header("content-type", "application/json")
        .body(DEPOSIT)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let retry_after = answer
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, answer.json().await.unwrap())
}

/// One replica that died with the request in hand and one that answers "nothing accepted":
/// when the dying one had the request first, it may have published it, so the client must
/// not be told "not accepted"; when the refusing one answered first, its 503 is the whole
/// truth and nginx passes it on without trying the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_after_another_replica_had_the_request_says_outcome_unknown() {
    let dying = DyingReplicas::start(1).await;
    let refusing = canned_replica(Box::leak(canned_503("unavailable").into_boxed_str())).await;
    let nginx = Nginx::start_unchecked(&[dying.ports[0], refusing]).await;
    let mut seen = [false, false];
    // Round robin: both orders of the two replicas come up.
    for _ in 0..4 {
        let before = dying.attempts("POST /transaction");
        let (status, _, body) = post_transaction(&nginx).await;
        let dying_had_it = dying.attempts("POST /transaction") > before;
        seen[usize::from(dying_had_it)] = true;
        let expected = if dying_had_it {
            "outcome_unknown"
        } else {
            "unavailable"
        };
        assert_eq!(
            (status, &body["error"]["code"]),
            (503, &json!(expected)),
            "{body}"
        );
    }
    assert_eq!(seen, [true, true], "both orders were tried");
}

/// A single replica's 503 keeps its meaning (and its Retry-After) through nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_replicas_503_keeps_its_code_through_nginx() {
    for code in ["unavailable", "outcome_unknown"] {
        let replica = canned_replica(Box::leak(canned_503(code).into_boxed_str())).await;
        let nginx = Nginx::start_unchecked(&[replica]).await;
        let (status, retry_after, body) = post_transaction(&nginx).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (503, &json!(code)),
            "{body}"
        );
        assert_eq!(retry_after.as_deref(), Some("2"));
    }
}
