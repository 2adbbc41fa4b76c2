//! Test harness: [`TestApp`] starts the API (port 0) and, optionally, a worker against a
//! database and a queue prefix of its own, so tests run in parallel; everything is removed
//! when the `TestApp` is dropped, even after a failed assertion. Databases, prefixes,
//! proxies and nginx come from `tally-testkit`.

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tally_api::state::AppState;
use tally_api::Application;
use tally_bus::Topology;
use tally_core::Envelope;
use tally_settings::{Secret, Settings};
use tally_store::Pool;
use tally_testkit::queues;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// The harness pieces every test crate shares live in the test kit.
pub use tally_testkit::{
    amqp_url, broker_address, client_with_key, database_address, eventually, fresh_database,
    test_keys, test_settings, Nginx, TcpProxy, TestDb, TestKeys,
};

/// An API replica a test can stop on its own.
pub struct Replica {
    pub port: u16,
    pub stop: CancellationToken,
    pub task: JoinHandle<std::io::Result<()>>,
}

pub struct WorkerHandle {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Port of the worker's `/metrics` listener.
    pub metrics_port: Option<u16>,
}

impl WorkerHandle {
    /// Graceful stop: the worker finishes and acks its batch in hand.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Crash: the task is dropped wherever it is (its broker connection closes, nothing more
    /// is acked, its leases are left to expire), like `kill -9` of a process.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

pub struct TestApp {
    pub address: String,
    /// Sends the test's admin key (every scope) with every request.
    pub client: reqwest::Client,
    /// The test database's API keys (`client` sends `keys.admin`).
    pub keys: TestKeys,
    pub settings: Settings,
    /// Pool on the test's database, for assertions.
    pub pool: Pool,
    pub topology: Topology,
    /// The first replica's shared state, for tests that call its functions directly.
    pub state: AppState,
    /// Declared last: dropped after everything that uses it.
    shutdown: CancellationToken,
    api_task: Option<JoinHandle<std::io::Result<()>>>,
    /// Ports of every API replica of this test (the first is `address`).
    pub api_ports: Vec<u16>,
    pub worker: Option<WorkerHandle>,
    _db: TestDb,
}

pub struct Options {
    pub worker: bool,
    /// Route the API's and the worker's broker connections through a proxy the test can cut.
    pub broker_proxy: Option<Arc<TcpProxy>>,
    /// Route the API's and the worker's database connections through a proxy.
    pub database_proxy: Option<Arc<TcpProxy>>,
    pub tweak: fn(&mut Settings),
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            broker_proxy: None,
            database_proxy: None,
            tweak: |_| {},
        }
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        let db = fresh_database().await;
        let url = db.url.clone();
        let keys = test_keys(&url).await;
        let prefix = queues::test_prefix();
        let mut settings = test_settings(&url, &prefix);
        (options.tweak)(&mut settings);
        let topology = Topology {
            prefix: settings.broker.prefix.clone(),
            shard_count: settings.ledger.shard_count,
            delivery_limit: settings.broker.delivery_limit,
        };

        // The test's own assertions keep a direct pool; the system under test goes through
        // the proxy when there is one.
        let direct_database = settings.database.clone();
        if let Some(proxy) = &options.database_proxy {
            let mut proxied = url::Url::parse(&url).expect("database url");
            proxied.set_port(Some(proxy.port)).expect("port");
            settings.database.url = Secret::new(proxied.as_str());
        }
        let mut api_settings = settings.clone();
        if let Some(proxy) = &options.broker_proxy {
            api_settings.broker.url =
                Secret::new(format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port));
        }
        let shutdown = CancellationToken::new();
        let app = Application::build(api_settings, shutdown.clone())
            .await
            .expect("build API");
        assert!(
            app.publisher()
                .wait_connected(Duration::from_secs(20))
                .await,
            "API did not connect to RabbitMQ"
        );
        let port = app.port();
        let state = app.state().clone();
        let api_task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let pool = tally_store::connect(&direct_database).expect("pool");

        let mut app = TestApp {
            address: format!("http://127.0.0.1:{port}"),
            client: client_with_key(&keys.admin),
            keys,
            settings,
            pool,
            topology,
            state,
            shutdown,
            api_task: Some(api_task),
            api_ports: vec![port],
            worker: None,
            _db: db,
        };
        if options.worker {
            app.worker = Some(app.start_worker().await);
        }
        app
    }

    /// Starts one more API replica on the same database and queues (for nginx tests); it
    /// stops with the test.
    pub async fn spawn_replica(&mut self) -> u16 {
        let replica = self.start_replica(0, self.shutdown.child_token()).await;
        self.api_ports.push(replica.port);
        replica.port
    }

    /// Starts an API replica on `port` (0: any) that stops when `stop` is cancelled.
    pub async fn start_replica(&self, port: u16, stop: CancellationToken) -> Replica {
        let mut settings = self.settings.clone();
        settings.api.port = port;
        let app = Application::build(settings, stop.clone())
            .await
            .expect("build API replica");
        assert!(
            app.publisher()
                .wait_connected(Duration::from_secs(20))
                .await
        );
        let port = app.port();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Replica { port, stop, task }
    }

    /// Starts a worker on this test's database and queues.
    pub async fn start_worker(&self) -> WorkerHandle {
        let worker = tally_worker::Worker::build(self.settings.clone())
            .await
            .expect("build worker");
        let metrics_port = worker.metrics_port();
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        WorkerHandle {
            stop,
            task,
            metrics_port,
        }
    }

    pub async fn post(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/transaction", self.address))
            .json(body)
            .send()
            .await
            .expect("POST /transaction")
    }

    /// POSTs and returns (status, JSON body).
    pub async fn post_json(&self, body: &Value) -> (u16, Value) {
        let response = self.post(body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs from a task of its own, so the test can act (cut the broker, block the worker)
    /// while the request waits; the task yields (status, JSON body).
    pub fn spawn_post_json(&self, body: &Value) -> tokio::task::JoinHandle<(u16, Value)> {
        let request = self
            .client
            .post(format!("{}/transaction", self.address))
            .json(body);
        tokio::spawn(async move {
            let response = request.send().await.expect("POST /transaction");
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        })
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs a transaction the test needs accepted: 200, or 201 for an approved
    /// withdraw_request; its JSON body.
    pub async fn post_accepted(&self, body: &Value) -> Value {
        let (status, answer) = self.post_json(body).await;
        assert!(
            status == 200 || status == 201,
            "POST {body}: {status} {answer}"
        );
        answer
    }

    /// GET `path`, which must answer 200; its JSON body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// `balance` of an account as the decimal text the API printed.
    pub async fn balance(&self, account: &str) -> String {
        let (_, body) = self.get(&format!("/account/{account}")).await;
        body["balance"].to_string()
    }

    /// Waits until the account's balance reads `expected`.
    pub async fn wait_balance(&self, account: &str, expected: &str) {
        let mut last = String::new();
        let found = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                last = self.balance(account).await;
                if last == expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "balance of {account} is {last}, expected {expected}"
        );
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let client = self.pool.get().await.expect("db");
        client
            .query_one(sql, &[])
            .await
            .expect("count query")
            .get(0)
    }

    /// Opens a broker connection for a test that talks to the queues directly.
    pub async fn broker(&self) -> lapin::Connection {
        tally_bus::connect(&amqp_url(), "test", Duration::from_secs(5))
            .await
            .expect("broker")
    }

    /// Publishes an envelope straight onto its shard queue (bypassing the API).
    pub async fn publish_raw(&self, channel: &lapin::Channel, body: &[u8], account: &str) {
        channel
            .basic_publish(
                self.topology.exchange().into(),
                Topology::routing_key(self.topology.shard_of(account)).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// Ready messages in every shard queue.
    pub async fn queued(&self, channel: &lapin::Channel) -> u32 {
        let mut total = 0;
        for shard in 0..self.topology.shard_count {
            let q = channel
                .queue_declare(
                    self.topology.shard_queue(shard).into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("passive declare");
            total += q.message_count();
        }
        total
    }

    pub fn envelope(
        &self,
        id: &str,
        kind: tally_core::Kind,
        account: &str,
        amount: &str,
    ) -> Envelope {
        let tx = tally_core::command::NewTransaction {
            id: id.into(),
            kind,
            account_id: account.into(),
            amount: amount.parse().expect("amount"),
            occurred_at: None,
            request_id: None,
            user_id: None,
            client_id: None,
            key_name: None,
        };
        Envelope::new(&tx, chrono::Utc::now())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            worker.task.abort();
        }
        if let Some(task) = self.api_task.take() {
            task.abort();
        }
        queues::delete_test_topology(self.topology.clone());
    }
}
