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
    /// The broker as a cluster of these nodes (`broker.urls`), for the API and the worker
    /// alike; empty: the tests' broker.
    pub broker_urls: Vec<String>,
    /// Route the API's and the worker's database connections through a proxy.
    pub database_proxy: Option<Arc<TcpProxy>>,
    pub tweak: fn(&mut Settings),
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            broker_proxy: None,
            broker_urls: Vec::new(),
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
        let topology = Topology::from_settings(&settings);
        settings.broker.urls = options.broker_urls.iter().map(Secret::new).collect();

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

    /// Sends `body` straight to the dead-letter exchange under `message_id`, as the broker
    /// does with a command that crashed consumers past the delivery limit; the worker
    /// archives it.
    pub async fn publish_dead_letter(&self, message_id: &str, body: &[u8]) {
        let connection = self.broker().await;
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(Default::default()).await.unwrap();
        channel
            .basic_publish(
                self.topology.dead_exchange().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_message_id(message_id.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// A valid deposit of `amount` to `account` sent to the dead letters
    /// ([`Self::publish_dead_letter`]); returns its archived dead letter's id.
    pub async fn dead_deposit(&self, id: &str, account: &str, amount: &str) -> String {
        let envelope = self.envelope(id, tally_core::Kind::Deposit, account, amount);
        self.publish_dead_letter(id, &envelope.encode()).await;
        eventually(Duration::from_secs(10), || async {
            let letters = self.get_ok("/debug/dead-letters").await;
            letters
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["messageId"] == id)
                .map(|l| l["id"].as_str().unwrap().to_string())
        })
        .await
    }

    /// Starts the real `tally-api` binary on a free port against this app's database and
    /// broker, with `env` on top (its settings, a skewed clock); returns it (killed on drop)
    /// and its base URL once it is ready.
    pub async fn api_process(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> (tally_testkit::process::KillOnDrop, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let s = &self.settings;
        let api = tally_testkit::process::KillOnDrop(
            std::process::Command::new(tally_testkit::process::workspace_binary("tally-api"))
                .envs(env)
                .env("TALLY_API__PORT", port.to_string())
                .env("TALLY_DATABASE__URL", s.database.url.expose())
                .env("TALLY_BROKER__URL", s.broker.url.expose())
                .env("TALLY_BROKER__PREFIX", &s.broker.prefix)
                .env(
                    "TALLY_LEDGER__SHARD_COUNT",
                    s.ledger.shard_count.to_string(),
                )
                .env("TALLY_LOG__LEVEL", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start tally-api"),
        );
        let url = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(30), || async {
            let r = self
                .client
                .get(format!("{url}/health/ready"))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        (api, url)
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
