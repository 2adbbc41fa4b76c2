//! One seed's tally installation, as real processes: its own database (created, migrated and
//! dropped here), its own broker prefix (queues deleted at the end), API replicas and workers
//! as child processes of this program, and nginx in front of the replicas.
//!
//! What it keeps: every process it starts is either still its child or was reaped by it, so a
//! seed never leaks processes into the next one; an exit nobody asked for is recorded (a crash
//! is a finding, not noise); and children never inherit the terminal (their output goes to
//! `target/chaos/<seed>/<name>.log`, appended across restarts).

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tally_bus::lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use tally_bus::lapin::types::FieldTable;
use tally_bus::Topology;
use tally_testkit::{database, nginx, queues};
use tokio::time::Instant;

/// Lease TTL of the workers (`worker.lease_ttl_ms`, set explicitly so the faults that depend
/// on it do not drift from a changed default): a dead or paused worker's shards are taken
/// over once its leases expire.
pub const LEASE_TTL: Duration = Duration::from_millis(5000);
/// How long the API waits for RabbitMQ's publisher confirm (`api.publish_timeout_ms`).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_millis(2000);
/// How long the API republishes a message whose confirm was lost (`api.settle_timeout_ms`).
pub const SETTLE_TIMEOUT: Duration = Duration::from_millis(3000);
/// A withdraw_request's deadline and the part of it the worker leaves for commit and reply
/// (`ledger.request_deadline_ms`, `ledger.decision_margin_ms`).
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(3000);
pub const DECISION_MARGIN: Duration = Duration::from_millis(500);

/// Settings of a whole run (every seed).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where `tally-api` and `tally-worker` are (next to this binary by default).
    pub bin_dir: PathBuf,
    /// `target/chaos`: one directory of logs per seed.
    pub out_dir: PathBuf,
    /// The workspace: nginx template and `deploy/local/services.sh`.
    pub root: PathBuf,
    /// Database to connect to for CREATE/DROP DATABASE (role needs CREATEDB).
    pub admin_url: String,
    pub amqp_url: String,
    /// Every broker node (`--ha`), `amqp_url` among them; empty on a single node.
    pub amqp_urls: Vec<String>,
    /// The node `rabbitmqctl` asks (`-n`); the default node when unset.
    pub rabbitmq_node: Option<String>,
    pub api_replicas: usize,
    pub workers: usize,
    pub shard_count: u16,
}

impl RunConfig {
    /// A connection to a live broker node: `amqp_url`, else the other nodes in turn (a node
    /// may be down in the middle of an HA fault).
    pub async fn broker(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<tally_bus::lapin::Connection> {
        let mut last = None;
        let others = self.amqp_urls.iter().filter(|u| **u != self.amqp_url);
        for url in std::iter::once(&self.amqp_url).chain(others) {
            match tally_bus::connect(url, name, timeout).await {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("no broker URL"), anyhow::Error::from))
    }

    /// `rabbitmqctl -q <what> --no-table-headers <columns>` on the run's node; its stdout.
    pub async fn rabbitmqctl(&self, what: &str, columns: &str) -> Result<String> {
        let mut args = vec!["-q", what, "--no-table-headers"];
        args.extend(columns.split_whitespace());
        let args: Vec<String> = self
            .rabbitmqctl_args(&args)
            .into_iter()
            .map(str::to_string)
            .collect();
        crate::host::host("rabbitmqctl", args).await
    }

    /// `rabbitmqctl` with `-n` when the run names a node.
    fn rabbitmqctl_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = Vec::new();
        if let Some(node) = &self.rabbitmq_node {
            all.extend(["-n", node.as_str()]);
        }
        all.extend_from_slice(args);
        all
    }
}

/// Opens a PostgreSQL connection, bounded (a stopped server must not hang the suite).
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .context("PostgreSQL connect timed out")??;
    tokio::spawn(conn);
    Ok(client)
}

/// A free TCP port on loopback. Released before use: a tiny race, acceptable on a test box.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process that can be killed and started again with the same command line.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Exits that the suite did not cause (kill -9 and SIGTERM are ours).
    pub crashes: Vec<String>,
}

impl Proc {
    fn new(
        name: &str,
        program: PathBuf,
        args: &[&str],
        env: Vec<(String, String)>,
        dir: &Path,
    ) -> Self {
        Self {
            name: name.to_string(),
            program,
            args: args.iter().map(|s| s.to_string()).collect(),
            env,
            log: dir.join(format!("{name}.log")),
            child: None,
            crashes: Vec::new(),
        }
    }

    fn log_file(&self) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))
    }

    /// Writes a line of the suite's own into the process log, so a reader sees where a kill
    /// or restart happened between the process's lines.
    /// Sets (or replaces) an environment variable for the next [`Proc::spawn`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    pub fn mark(&self, what: &str) {
        if let Ok(mut f) = self.log_file() {
            let _ = writeln!(f, "==== tally-chaos: {what} ====");
        }
    }

    pub fn spawn(&mut self) -> Result<()> {
        let log = self.log_file()?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        // Only our configuration: a TALLY_* variable of the caller's shell must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TALLY_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`: no chance to finish anything (what a crash or OOM kill looks like).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Records (and reaps) the process if it exited by itself.
    pub fn check(&mut self, at: Duration) -> bool {
        let exited = match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status),
            Some(Ok(None)) => return true,
            _ => None,
        };
        self.child = None;
        let what = exited.map_or("is gone".to_string(), |s| format!("exited by itself ({s})"));
        self.crashes.push(format!(
            "{} {what} (noticed at +{:.1}s){}",
            self.name,
            at.as_secs_f64(),
            self.last_error()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
        false
    }

    /// The last `n` lines of the process's log, cut to a readable length.
    fn last_lines(&self, n: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut lines: Vec<String> = text
            .lines()
            .rev()
            .take(n)
            .map(|l| l.chars().take(160).collect())
            .collect();
        lines.reverse();
        lines
    }

    /// The error a crashed process printed last (anyhow's `Error:` line and first cause, or a
    /// panic message), so the finding is readable without opening the log.
    fn last_error(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .rposition(|l| l.starts_with("Error:") || l.contains("panicked at"))?;
        let cause = lines[at + 1..]
            .iter()
            .find(|l| l.trim_start().starts_with("0: "))
            .map(|l| format!(" / {}", l.trim()))
            .unwrap_or_default();
        Some(format!("{}{cause}", lines[at].trim()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERM, then up to `grace` for a clean exit; SIGKILL after that. Returns the exit
    /// status, or an error saying the process did not stop in time.
    pub async fn terminate(&mut self, grace: Duration) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        // std has no SIGTERM and the workspace forbids unsafe (libc::kill): use kill(1).
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                self.kill9();
                bail!(
                    "{} did not exit within {grace:?} of SIGTERM (killed); log ends: {}",
                    self.name,
                    self.last_lines(3).join(" | ")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// nginx in the foreground with its own prefix directory, from the project's template.
pub struct Nginx {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Nginx {
    fn start(dir: &Path, api_ports: &[u16]) -> Result<Self> {
        let port = free_port()?;
        let config = nginx::local_config(port, api_ports, nginx::DEFAULT_LIMITS);
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(dir.join("nginx.conf"), config)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .args(["-c", "nginx.conf", "-e", "logs/error.log"])
            // Its workers must not hold our output pipes open.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (installed by deploy/local/services.sh)")?;
        Ok(Self {
            port,
            dir: dir.to_path_buf(),
            child: Some(child),
        })
    }

    /// Fast shutdown through the master (SIGKILL would orphan its workers).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let stopped = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .args(["-c", "nginx.conf", "-e", "logs/error.log", "-s", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One seed's installation.
pub struct Cluster {
    pub seed: u64,
    pub db_name: String,
    pub db_url: String,
    pub topology: Topology,
    pub apis: Vec<Proc>,
    pub api_ports: Vec<u16>,
    pub workers: Vec<Proc>,
    pub nginx: Option<Nginx>,
    /// nginx's address: where the clients send everything.
    pub base_url: String,
    pub log_dir: PathBuf,
    /// Whether the database exists (so teardown knows what to drop).
    db_created: bool,
    /// Start of the seed, for timestamps in logs and reports.
    pub t0: Instant,
}

/// The environment every process of a seed gets: its database and prefix, and the time
/// bounds the checker relies on.
fn common_env(cfg: &RunConfig, db_url: &str, prefix: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("TALLY_PROFILE".to_string(), "local".to_string()),
        ("TALLY_DATABASE__URL".to_string(), db_url.to_string()),
        ("TALLY_DATABASE__POOL_SIZE".to_string(), "4".to_string()),
        ("TALLY_BROKER__URL".to_string(), cfg.amqp_url.clone()),
        ("TALLY_BROKER__PREFIX".to_string(), prefix.to_string()),
        (
            "TALLY_LEDGER__SHARD_COUNT".to_string(),
            cfg.shard_count.to_string(),
        ),
        // The suite scores answers under faults; API keys are not what it tests (auth.rs of
        // the API's tests does), and its clients carry none.
        ("TALLY_AUTH__ENABLED".to_string(), "false".to_string()),
        ("NO_COLOR".to_string(), "1".to_string()),
        (
            "TALLY_WORKER__LEASE_TTL_MS".to_string(),
            LEASE_TTL.as_millis().to_string(),
        ),
        (
            "TALLY_API__PUBLISH_TIMEOUT_MS".to_string(),
            PUBLISH_TIMEOUT.as_millis().to_string(),
        ),
        (
            "TALLY_API__SETTLE_TIMEOUT_MS".to_string(),
            SETTLE_TIMEOUT.as_millis().to_string(),
        ),
        (
            "TALLY_LEDGER__REQUEST_DEADLINE_MS".to_string(),
            REQUEST_DEADLINE.as_millis().to_string(),
        ),
        (
            "TALLY_LEDGER__DECISION_MARGIN_MS".to_string(),
            DECISION_MARGIN.as_millis().to_string(),
        ),
        // Several workers per host: each its own free metrics port.
        (
            "TALLY_WORKER__METRICS_ADDR".to_string(),
            "127.0.0.1:0".to_string(),
        ),
    ];
    // On the HA services every process gets every broker node.
    if !cfg.amqp_urls.is_empty() {
        env.push(("TALLY_BROKER__URLS".to_string(), cfg.amqp_urls.join(",")));
    }
    env
}

/// The API replicas of a seed, each on a free port of its own; returns them and their ports.
fn api_procs(
    cfg: &RunConfig,
    common: &[(String, String)],
    log_dir: &Path,
) -> Result<(Vec<Proc>, Vec<u16>)> {
    let mut api_ports = Vec::new();
    let mut apis = Vec::new();
    for i in 1..=cfg.api_replicas {
        let port = free_port()?;
        let mut env = common.to_vec();
        env.push(("TALLY_API__HOST".into(), "127.0.0.1".into()));
        env.push(("TALLY_API__PORT".into(), port.to_string()));
        env.push(("TALLY_API__THREADS".into(), "2".into()));
        apis.push(Proc::new(
            &format!("api-{i}"),
            cfg.bin_dir.join("tally-api"),
            &[],
            env,
            log_dir,
        ));
        api_ports.push(port);
    }
    Ok((apis, api_ports))
}

impl Cluster {
    /// Names everything; starts nothing (so teardown can run after a partial start).
    pub fn new(cfg: &RunConfig, seed: u64) -> Result<Self> {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let db_name = format!("tally_chaos_{seed}_{tag}");
        let db_url = database::with_name(&cfg.admin_url, &db_name);
        let log_dir = cfg.out_dir.join(seed.to_string());
        // A previous run's logs of this seed would only confuse.
        let _ = std::fs::remove_dir_all(&log_dir);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let topology = Topology {
            prefix: format!("chaos-{seed}-{tag}"),
            shard_count: cfg.shard_count,
            delivery_limit: 50,
            replicas: 3,
        };
        let common = common_env(cfg, &db_url, &topology.prefix);
        let (apis, api_ports) = api_procs(cfg, &common, &log_dir)?;
        let workers = (1..=cfg.workers)
            .map(|i| {
                Proc::new(
                    &format!("worker-{i}"),
                    cfg.bin_dir.join("tally-worker"),
                    &["run"],
                    common.clone(),
                    &log_dir,
                )
            })
            .collect();
        Ok(Self {
            seed,
            db_name,
            db_url,
            topology,
            apis,
            api_ports,
            workers,
            nginx: None,
            base_url: String::new(),
            log_dir,
            db_created: false,
            t0: Instant::now(),
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Database, migrations, workers, API replicas, nginx; returns when every replica is
    /// ready and every shard queue has all its consumers.
    pub async fn start(&mut self, cfg: &RunConfig) -> Result<()> {
        let admin = pg_connect(&cfg.admin_url).await.context("admin database")?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", self.db_name))
            .await
            .context("CREATE DATABASE")?;
        self.db_created = true;

        let mut migrate = Proc::new(
            "migrate",
            cfg.bin_dir.join("tally-worker"),
            &["migrate"],
            self.workers
                .first()
                .map(|w| w.env.clone())
                .unwrap_or_default(),
            &self.log_dir,
        );
        migrate.spawn()?;
        let status = wait_exit(&mut migrate, Duration::from_secs(60)).await?;
        if !status.success() {
            bail!(
                "tally-worker migrate failed ({status}); see {}",
                migrate.log.display()
            );
        }

        for w in &mut self.workers {
            w.spawn()?;
        }
        for a in &mut self.apis {
            a.spawn()?;
        }
        for i in 0..self.apis.len() {
            self.wait_api(i, "/health/ready", Duration::from_secs(60))
                .await?;
        }
        let nginx = Nginx::start(&self.log_dir.join("nginx"), &self.api_ports)?;
        self.base_url = format!("http://127.0.0.1:{}", nginx.port);
        self.nginx = Some(nginx);
        wait_http(
            &format!("{}/health/live", self.base_url),
            Duration::from_secs(10),
        )
        .await?;
        self.wait_consumers(cfg, Duration::from_secs(60)).await
    }

    /// Waits until replica `i` answers 200 on `path`.
    pub async fn wait_api(&self, i: usize, path: &str, timeout: Duration) -> Result<()> {
        let port = self.api_ports[i];
        wait_http(&format!("http://127.0.0.1:{port}{path}"), timeout)
            .await
            .with_context(|| format!("api-{} not answering {path}", i + 1))
    }

    /// Ready messages and consumers of every shard queue (passive declares).
    pub async fn queue_stats(&self, cfg: &RunConfig) -> Result<Vec<(String, u32, u32)>> {
        let conn = cfg
            .broker("tally-chaos-inspect", Duration::from_secs(3))
            .await?;
        let channel = conn.create_channel().await?;
        let mut stats = Vec::new();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let mut names: Vec<String> = (0..self.topology.shard_count)
            .map(|s| self.topology.shard_queue(s))
            .collect();
        names.push(self.topology.dead_queue());
        for name in names {
            let q = channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await?;
            stats.push((name, q.message_count(), q.consumer_count()));
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(stats)
    }

    /// Waits until every shard queue has a consumer. Workers own shards through leases (one
    /// worker per shard, a dead worker's shards taken over when its leases expire), so one
    /// consumer per shard is the healthy state, whatever the number of workers.
    pub async fn wait_consumers(&self, cfg: &RunConfig, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.queue_stats(cfg).await {
                Ok(stats) => {
                    let idle: Vec<String> = stats
                        .into_iter()
                        .filter(|(name, _, consumers)| {
                            *name != self.topology.dead_queue() && *consumers == 0
                        })
                        .map(|(name, _, _)| name)
                        .collect();
                    if idle.is_empty() {
                        return Ok(());
                    }
                    format!("no consumer on {}", idle.join(", "))
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("shard queues not consumed after {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Records processes that died by themselves; true when all run.
    pub fn check_processes(&mut self) -> bool {
        let at = self.elapsed();
        let mut all = true;
        for p in self.apis.iter_mut().chain(self.workers.iter_mut()) {
            if p.is_running() {
                all &= p.check(at);
            }
        }
        all
    }

    pub fn crashes(&self) -> Vec<String> {
        self.apis
            .iter()
            .chain(self.workers.iter())
            .flat_map(|p| p.crashes.iter().cloned())
            .collect()
    }

    /// Stops everything gracefully and removes the seed's database and queues. Returns the
    /// problems seen (a process that ignored SIGTERM is a graceful-shutdown bug).
    pub async fn teardown(&mut self, cfg: &RunConfig) -> Vec<String> {
        let mut problems = Vec::new();
        self.check_processes();
        // API replicas first: no new commands while the workers finish their batches.
        for p in self.apis.iter_mut().chain(self.workers.iter_mut()) {
            p.mark("SIGTERM (teardown)");
            match p.terminate(Duration::from_secs(10)).await {
                Ok(Some(status)) if !status.success() => {
                    problems.push(format!("{} exited with {status} after SIGTERM", p.name));
                }
                Ok(_) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Some(mut nginx) = self.nginx.take() {
            nginx.stop();
        }
        if let Err(e) = self.delete_topology(cfg).await {
            problems.push(format!(
                "deleting queues of {}: {e:#}",
                self.topology.prefix
            ));
        }
        if self.db_created {
            // Housekeeping, not a verdict on the ledger: right after a restart PostgreSQL may
            // refuse to terminate a backend this role may not signal. Retry a little, then
            // leave the database to the start-of-run sweep of leftovers.
            let mut failure = None;
            for attempt in 0..6 {
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                let dropped = async {
                    pg_connect(&cfg.admin_url)
                        .await?
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            self.db_name
                        ))
                        .await?;
                    anyhow::Ok(())
                };
                failure = dropped.await.err();
                if failure.is_none() {
                    break;
                }
            }
            match failure {
                None => self.db_created = false,
                Some(e) => eprintln!(
                    "chaos: warning: could not drop {} ({e:#}); the next run removes it",
                    self.db_name
                ),
            }
        }
        problems
    }

    async fn delete_topology(&self, cfg: &RunConfig) -> Result<()> {
        let conn = cfg
            .broker("tally-chaos-cleanup", Duration::from_secs(5))
            .await?;
        queues::delete_topology(&conn, &self.topology).await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }
}

async fn wait_exit(p: &mut Proc, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(child) = p.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                p.child = None;
                return Ok(status);
            }
        }
        if Instant::now() >= deadline {
            p.kill9();
            bail!("{} did not finish within {timeout:?}", p.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `url` until it answers 200.
pub async fn wait_http(url: &str, timeout: Duration) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("{url} not ready within {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A test run on this machine (`cargo nextest`, `cargo test`) that uses our PostgreSQL or
/// RabbitMQ, if one is running: our restarts of them would fail its tests. A run pointed at
/// other servers (`TALLY_TEST_DATABASE_URL` and `TALLY_TEST_AMQP_URL` both elsewhere) is left
/// alone: waiting for it protects nothing.
fn running_test_suite(cfg: &RunConfig) -> Option<String> {
    let me = std::process::id();
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string());
        let is_test = match program.as_deref() {
            Some("cargo-nextest") => true,
            Some("cargo") => args.iter().skip(1).any(|a| a == "nextest" || a == "test"),
            _ => false,
        };
        if is_test && uses_our_services(&entry.path(), cfg) {
            return Some(format!("pid {pid}: {}", args.join(" ")));
        }
    }
    None
}

/// Whether the process at `/proc/<pid>` may reach our servers (see [`suite_reaches`]).
fn uses_our_services(proc_dir: &std::path::Path, cfg: &RunConfig) -> bool {
    let Ok(raw) = std::fs::read(proc_dir.join("environ")) else {
        return true;
    };
    let var = |name: &str| {
        raw.split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=').map(str::to_string))
    };
    suite_reaches(
        var("TALLY_TEST_DATABASE_URL").as_deref(),
        var("TALLY_TEST_AMQP_URL").as_deref(),
        &cfg.admin_url,
        &cfg.amqp_url,
    )
}

/// Whether a test suite with these test URLs may reach our database or broker. An unset URL
/// means the test kit's default (`tally-testkit`: 127.0.0.1:5432 and :5672), so a suite on
/// the default services does not hold up a run on the HA ports, and the other way round; a
/// URL that does not parse is assumed to reach them.
fn suite_reaches(db: Option<&str>, amqp: Option<&str>, our_db: &str, our_amqp: &str) -> bool {
    let reaches = |test: &str, ours: &str| {
        let test = host_port(test);
        test.is_none() || test == host_port(ours)
    };
    reaches(db.unwrap_or("postgres://127.0.0.1:5432"), our_db)
        || reaches(amqp.unwrap_or("amqp://127.0.0.1:5672"), our_amqp)
}

/// `host:port` of a service URL (default ports filled in).
fn host_port(url: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(url).ok()?;
    let port = url.port_or_known_default().or(match url.scheme() {
        "postgres" | "postgresql" => Some(5432),
        "amqp" => Some(5672),
        _ => None,
    })?;
    Some((url.host_str()?.to_string(), port))
}

/// Waits (up to `limit`) while a test suite that uses our servers runs on this machine; see
/// [`running_test_suite`].
pub async fn wait_for_quiet(cfg: &RunConfig, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut told = false;
    while let Some(what) = running_test_suite(cfg) {
        if Instant::now() >= deadline {
            eprintln!("chaos: a test suite still runs after {limit:?} ({what}); going ahead");
            return;
        }
        if !told {
            eprintln!("chaos: waiting for a running test suite to finish ({what})");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Makes sure PostgreSQL and RabbitMQ answer; runs `deploy/local/services.sh` (idempotent,
/// restarts what is down) when one does not.
pub async fn ensure_services(cfg: &RunConfig) -> Result<()> {
    let pg = pg_connect(&cfg.admin_url).await.is_ok();
    let amqp = match cfg
        .broker("tally-chaos-probe", Duration::from_secs(3))
        .await
    {
        Ok(conn) => {
            let _ = conn.close(200, "probe".into()).await;
            true
        }
        Err(_) => false,
    };
    if pg && amqp {
        return Ok(());
    }
    // A run interrupted inside `pause-rabbitmq` leaves the broker stopped (SIGSTOP): resume it
    // rather than have services.sh wait for a node that cannot answer.
    if !amqp {
        for pid in crate::host::resume_stopped_brokers() {
            eprintln!("chaos: RabbitMQ (pid {pid}) was left stopped by SIGSTOP: sent SIGCONT");
        }
    }
    // On the HA services, their own script brings back whichever node is down.
    let name = if cfg.amqp_urls.is_empty() {
        "deploy/local/services.sh"
    } else {
        "deploy/local/ha.sh"
    };
    let script = cfg.root.join(name);
    eprintln!("chaos: services not all up (postgresql {pg}, rabbitmq {amqp}): running {name}");
    let status = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
    })
    .await??;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// Drops databases, queues and exchanges a crashed earlier run left behind (this suite
/// never runs twice at once: it restarts the shared services). Returns how many.
pub async fn clean_leftovers(cfg: &RunConfig) -> Result<usize> {
    let admin = pg_connect(&cfg.admin_url).await?;
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'tally\\_chaos\\_%'",
            &[],
        )
        .await?;
    for row in &rows {
        let name: String = row.get(0);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
    }
    let mut count = rows.len();
    let list = |what: &'static str| async move {
        let args: Vec<String> = cfg
            .rabbitmqctl_args(&["-q", what, "--no-table-headers", "name"])
            .into_iter()
            .map(str::to_string)
            .collect();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("rabbitmqctl")
                .args(&args)
                .stdin(Stdio::null())
                .output()
        })
        .await??;
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with("chaos-"))
            .map(str::to_string)
            .collect();
        anyhow::Ok(names)
    };
    let (queues, exchanges) = (list("list_queues").await?, list("list_exchanges").await?);
    if !queues.is_empty() || !exchanges.is_empty() {
        let conn = cfg
            .broker("tally-chaos-cleanup", Duration::from_secs(5))
            .await?;
        let ch = conn.create_channel().await?;
        for q in &queues {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for x in &exchanges {
            ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = conn.close(200, "done".into()).await;
        count += queues.len() + exchanges.len();
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::suite_reaches;

    const DEFAULT_DB: &str = "postgres://tally:tally@127.0.0.1:5432/tally";
    const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    const HA_DB: &str = "postgres://tally@127.0.0.1:5622,127.0.0.1:5623/tally";
    const HA_AMQP: &str = "amqp://guest:guest@127.0.0.1:5692/%2f";

    #[test]
    fn a_suite_with_no_test_urls_uses_the_default_services_only() {
        assert!(suite_reaches(None, None, DEFAULT_DB, DEFAULT_AMQP));
        assert!(!suite_reaches(None, None, HA_DB, HA_AMQP));
    }

    #[test]
    fn a_suite_pointed_elsewhere_reaches_only_what_it_names() {
        let (db, amqp) = (
            Some("postgres://127.0.0.1:5611/t"),
            Some("amqp://127.0.0.1:5682"),
        );
        assert!(!suite_reaches(db, amqp, DEFAULT_DB, DEFAULT_AMQP));
        // Sharing either service is enough to be held up.
        assert!(suite_reaches(
            db,
            Some(DEFAULT_AMQP),
            DEFAULT_DB,
            DEFAULT_AMQP
        ));
        // A URL that does not parse may reach anything.
        assert!(suite_reaches(Some("not a url"), amqp, HA_DB, HA_AMQP));
    }
}
