//! Test harness: [`TestApp`] starts the API (port 0) and, optionally, a worker against a
//! database and a queue prefix of its own, so tests run in parallel; everything is removed
//! when the `TestApp` is dropped, even after a failed assertion.

use lapin::options::{
    BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tally_api::state::AppState;
use tally_api::Application;
use tally_bus::Topology;
use tally_core::Envelope;
use tally_settings::{Secret, Settings};
use tally_store::Pool;
use tally_tools::nginx;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn admin_database_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://tally:tally@127.0.0.1:5432/tally".into())
}

pub fn amqp_url() -> String {
    std::env::var("TALLY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `host:port` of a service URL, for a [`TcpProxy`] in front of it.
fn address_of(url: &str) -> String {
    let url = url::Url::parse(url).expect("service url");
    format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().expect("explicit port")
    )
}

/// The broker the tests use (`TALLY_TEST_AMQP_URL`), as `host:port`.
pub fn broker_address() -> String {
    address_of(&amqp_url())
}

/// The PostgreSQL server the tests use (`TALLY_TEST_DATABASE_URL`), as `host:port`.
pub fn database_address() -> String {
    address_of(&admin_database_url())
}

/// Polls `check` until it returns `Some` or `timeout` passes (never sleep-and-hope).
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A migrated database of one test, dropped with this value.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await: clean up on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Creates an empty, migrated database of its own.
pub async fn fresh_database() -> TestDb {
    let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the admin database (is PostgreSQL up? `make test` starts it)");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let base = admin_database_url();
    let url = format!(
        "{}/{name}",
        &base[..base.rfind('/').expect("database url has a path")]
    );
    tally_store::migrate::run(&url).await.expect("migrate");
    TestDb { name, url }
}

/// Settings for one test: own database, own queue prefix, small everything.
pub fn test_settings(database_url: &str, prefix: &str) -> Settings {
    let mut s = Settings::load_profile("local").expect("default settings");
    s.database.url = Secret::new(database_url);
    s.database.pool_size = 4;
    s.broker.url = Secret::new(amqp_url());
    s.broker.prefix = prefix.to_string();
    s.ledger.shard_count = 4;
    s.api.host = "127.0.0.1".into();
    s.api.port = 0;
    s.api.threads = 1;
    s.worker.metrics_addr = "127.0.0.1:0".into();
    s
}

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
    pub client: reqwest::Client,
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
        let prefix = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
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
            client: reqwest::Client::new(),
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
        let topology = self.topology.clone();
        // Drop cannot await: clean up on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(conn) =
                    tally_bus::connect(&amqp_url(), "test-cleanup", Duration::from_secs(5)).await
                {
                    if let Ok(ch) = conn.create_channel().await {
                        for shard in 0..topology.shard_count {
                            let _ = ch
                                .queue_delete(
                                    topology.shard_queue(shard).into(),
                                    QueueDeleteOptions::default(),
                                )
                                .await;
                        }
                        let _ = ch
                            .queue_delete(
                                topology.dead_queue().into(),
                                QueueDeleteOptions::default(),
                            )
                            .await;
                        let _ = ch
                            .exchange_delete(
                                topology.exchange().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                        let _ = ch
                            .exchange_delete(
                                topology.dead_exchange().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                    let _ = conn.close(200, "done".into()).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A TCP proxy in front of RabbitMQ that a test can cut and restore, to take the broker away
/// from one API without stopping the broker every other test uses. It can also hold back
/// everything the server sends ([`TcpProxy::stall`]): publishes still reach the broker, but
/// their confirms (and replies) do not come back — a confirm lost in flight.
pub struct TcpProxy {
    pub port: u16,
    up: AtomicBool,
    /// Cancelled to drop every live connection; replaced on restore.
    cut: std::sync::Mutex<CancellationToken>,
    /// True while server-to-client bytes are held back.
    stalled: tokio::sync::watch::Sender<bool>,
}

impl TcpProxy {
    /// A proxy to `upstream` (`host:port`, e.g. [`broker_address`]).
    pub async fn start(upstream: String) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = Arc::new(Self {
            port: listener.local_addr().expect("addr").port(),
            up: AtomicBool::new(true),
            cut: std::sync::Mutex::new(CancellationToken::new()),
            stalled: tokio::sync::watch::channel(false).0,
        });
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !p.up.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let cut = p.cut.lock().expect("lock").clone();
                let stalled = p.stalled.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let up = tokio::io::copy(&mut client_read, &mut server_write);
                    let down = copy_unless_stalled(&mut server_read, &mut client_write, stalled);
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        proxy
    }

    /// The broker "goes down": live connections drop, new ones are refused.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.lock().expect("lock").cancel();
    }

    /// The broker "comes back".
    pub fn restore(&self) {
        *self.cut.lock().expect("lock") = CancellationToken::new();
        self.up.store(true, Ordering::SeqCst);
    }

    /// Holds back what the server sends (confirms, replies, heartbeats) until [`resume`].
    ///
    /// [`resume`]: TcpProxy::resume
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

/// Copies `from` to `to`, pausing (with the bytes read so far held) while `stalled` is true.
async fn copy_unless_stalled(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// nginx in front of a test's API replicas, with the project's own config template
/// (`nginx/local.conf.template`), in the foreground; killed with this value.
pub struct Nginx {
    pub address: String,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Nginx {
    /// With stack.sh's default rate limit (high: every test client is 127.0.0.1).
    pub async fn start(api_ports: &[u16]) -> Self {
        Self::start_limited(api_ports, nginx::DEFAULT_RATE, nginx::DEFAULT_BURST).await
    }

    /// With the given per-client rate limit (`RATE_LIMIT`/`RATE_BURST` of stack.sh).
    pub async fn start_limited(api_ports: &[u16], rate: &str, burst: u32) -> Self {
        let nginx = Self::spawn(api_ports, rate, burst);
        let client = reqwest::Client::new();
        let url = format!("{}/health/live", nginx.address);
        eventually(Duration::from_secs(10), || async {
            client
                .get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await;
        nginx
    }

    /// In front of upstreams that do not serve `/health/live` (stand-ins a test scripts):
    /// waits only until nginx accepts connections.
    pub async fn start_unchecked(api_ports: &[u16]) -> Self {
        let nginx = Self::spawn(api_ports, nginx::DEFAULT_RATE, nginx::DEFAULT_BURST);
        let address = nginx.address.trim_start_matches("http://").to_string();
        eventually(Duration::from_secs(10), || async {
            TcpStream::connect(&address).await.ok()
        })
        .await;
        nginx
    }

    fn spawn(api_ports: &[u16], rate: &str, burst: u32) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = nginx::local_config(port, api_ports, rate, burst);
        let dir =
            std::env::temp_dir().join(format!("tally-nginx-{}", uuid::Uuid::new_v4().simple()));
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("nginx dirs");
        }
        std::fs::write(dir.join("nginx.conf"), config).expect("nginx.conf");
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .args(["-c", "nginx.conf", "-e", "logs/error.log"])
            // Its workers must not hold the test runner's output pipes open.
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nginx (installed by deploy/local/services.sh)");
        Self {
            address: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too (SIGKILL would orphan them).
        let stopped = std::process::Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .args(["-c", "nginx.conf", "-e", "logs/error.log", "-s", "stop"])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
