//! The fault scheduler: which faults a seed injects and when (decided by the seed alone), and
//! how each is done to the real processes and services.
//!
//! Coverage rule: seed `s` always includes `kinds[s % kinds.len()]` (all nine kinds unless
//! `--kinds` narrows them), plus 1–3 random extras, so any run of `n` consecutive seeds hits
//! every kind at least `n / 9` times (200 seeds: 22). Faults run one after another (never
//! overlapping), each at its planned offset into the load or as soon as the previous one
//! recovered; each waits for its own recovery (broker serving AMQP again, PostgreSQL accepting
//! connections, a restarted replica answering) before the next begins.
//!
//! The kinds and what each hunts for:
//! - `kill-worker`, `kill-api`: kill -9 and restart one process (a crash mid-batch, mid-wait);
//! - `rabbitmq-restart`, `postgres-restart`: the shared services stop and start;
//! - `poison-message`: an undecodable message on a shard, which must be dead-lettered once
//!   while the shard keeps flowing;
//! - `pause-worker`: SIGSTOP a worker for 2–4 lease TTLs, then SIGCONT: its shards must be
//!   taken over (and apply again) within the TTL plus [`TAKEOVER_GRACE`], while it is still
//!   stopped; after it resumes, its in-flight batch must not commit a second effect;
//! - `pause-rabbitmq`: SIGSTOP the broker for longer than the API's confirm timeout, so
//!   publishes end without a confirm: their answers must not claim "not accepted";
//! - `restart-workers`: kill -9 and restart every worker while the clients send mostly
//!   approve-and-capture pairs, which pile up and land in the restarted workers' first
//!   batches, on connections whose statement caches are cold;
//! - `skew-worker`: restart one worker under libfaketime with its wall clock a few seconds
//!   ahead or behind (it stays so for the rest of the seed).

use anyhow::{bail, Context, Result};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tally_bus::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tally_bus::lapin::{BasicProperties, Confirmation};
use tally_bus::Topology;
use tokio::time::Instant;

use crate::cluster::{pg_connect, Cluster, RunConfig, LEASE_TTL, PUBLISH_TIMEOUT};
use crate::host::{self, broker_serving, host, wait_until, Services};
use crate::model::{Command, Http, Kind, Op, Origin, Policy, Stats, Traffic};
use tally_testkit::process::skewed_clock;
use tally_testkit::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    KillWorker,
    KillApi,
    BrokerRestart,
    DbRestart,
    Poison,
    PauseWorker,
    PauseBroker,
    RestartWorkers,
    SkewWorker,
    /// `kill -9` of the broker node leading the most of the seed's shard queues (HA only).
    KillBrokerNode,
    /// Each broker node stopped and started in turn (HA only).
    RollingBrokerRestart,
    /// `kill -9` of the PostgreSQL primary: the standby is promoted (HA only).
    KillDbPrimary,
    /// `kill -9` of the PostgreSQL standby (HA only).
    KillDbStandby,
}

pub const ALL: [FaultKind; 9] = [
    FaultKind::KillWorker,
    FaultKind::KillApi,
    FaultKind::BrokerRestart,
    FaultKind::DbRestart,
    FaultKind::Poison,
    FaultKind::PauseWorker,
    FaultKind::PauseBroker,
    FaultKind::RestartWorkers,
    FaultKind::SkewWorker,
];

/// The kinds of a run on the HA services (`--ha`): the node losses, and the kinds that touch
/// only the seed's own processes. The single-node service faults (restart or pause of *the*
/// broker or database) do not apply: those services are not the ones in use.
pub const HA_ALL: [FaultKind; 10] = [
    FaultKind::KillBrokerNode,
    FaultKind::RollingBrokerRestart,
    FaultKind::KillDbPrimary,
    FaultKind::KillDbStandby,
    FaultKind::KillWorker,
    FaultKind::KillApi,
    FaultKind::Poison,
    FaultKind::PauseWorker,
    FaultKind::RestartWorkers,
    FaultKind::SkewWorker,
];

impl FaultKind {
    /// Whether the kind needs the HA services (`--ha`).
    pub fn needs_ha(self) -> bool {
        matches!(
            self,
            FaultKind::KillBrokerNode
                | FaultKind::RollingBrokerRestart
                | FaultKind::KillDbPrimary
                | FaultKind::KillDbStandby
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "kill-worker",
            FaultKind::KillApi => "kill-api",
            FaultKind::BrokerRestart => "rabbitmq-restart",
            FaultKind::DbRestart => "postgres-restart",
            FaultKind::Poison => "poison-message",
            FaultKind::PauseWorker => "pause-worker",
            FaultKind::PauseBroker => "pause-rabbitmq",
            FaultKind::RestartWorkers => "restart-workers",
            FaultKind::SkewWorker => "skew-worker",
            FaultKind::KillBrokerNode => "kill-rabbitmq-node",
            FaultKind::RollingBrokerRestart => "rolling-rabbitmq-restart",
            FaultKind::KillDbPrimary => "kill-postgres-primary",
            FaultKind::KillDbStandby => "kill-postgres-standby",
        }
    }
}

/// After SIGSTOP of a worker, its shards must apply again within the lease TTL plus this.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(5);

/// Undecodable bodies a careless publisher might send: each must be dead-lettered once.
const POISONS: [&str; 3] = [
    r#"{"v":1,"garbage":true}"#,
    "this is not json",
    r#"{"v":99,"kind":"deposit","id":"from-the-future"}"#,
];

/// One planned fault.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// Offset into the load phase.
    pub at: Duration,
    /// How long the victim stays down (killed, stopped) before it is restarted or resumed.
    pub down: Duration,
    /// Which replica/worker (kills, pauses, skew), which shard (poison).
    pub target: usize,
    /// Which poison body.
    pub variant: usize,
    /// Clock shift of a skewed worker, in seconds (either sign, never 0).
    pub skew_secs: i64,
}

/// How long a fault of `kind` keeps its victim down.
fn down_time(kind: FaultKind, rng: &mut Rng) -> Duration {
    let ms = |d: Duration| d.as_millis() as u64;
    match kind {
        FaultKind::KillWorker | FaultKind::KillApi | FaultKind::DbRestart => rng.millis(200, 3000),
        FaultKind::BrokerRestart => rng.millis(1000, 3000),
        // How long the killed node stays dead before `ha.sh up` brings it back.
        FaultKind::KillBrokerNode | FaultKind::KillDbPrimary | FaultKind::KillDbStandby => {
            rng.millis(1000, 5000)
        }
        FaultKind::RollingBrokerRestart => Duration::ZERO,
        FaultKind::Poison | FaultKind::SkewWorker => Duration::ZERO,
        // Long enough to see the takeover while the worker is still stopped, at most 4 TTLs.
        FaultKind::PauseWorker => rng.millis(
            ms(LEASE_TTL + TAKEOVER_GRACE) + 1000,
            ms(LEASE_TTL * 4).max(ms(LEASE_TTL + TAKEOVER_GRACE) + 1000),
        ),
        // Past the confirm timeout: publishes in flight get no confirm in time.
        FaultKind::PauseBroker => {
            rng.millis(ms(PUBLISH_TIMEOUT) + 500, ms(PUBLISH_TIMEOUT) * 5 / 2)
        }
        // Short: the paired requests waiting in the queue should still be decidable.
        FaultKind::RestartWorkers => rng.millis(0, 1000),
    }
}

/// The faults of a seed, in time order, drawn from `kinds` (see the coverage rule).
pub fn plan(
    seed: u64,
    load: Duration,
    kinds: &[FaultKind],
    apis: usize,
    workers: usize,
    shards: u16,
) -> Vec<Fault> {
    if kinds.is_empty() {
        return Vec::new();
    }
    let mut rng = Rng::stream(seed, 1);
    let n = kinds.len() as u64;
    let mut chosen = vec![kinds[(seed % n) as usize]];
    for _ in 0..rng.range(1, 3) {
        chosen.push(kinds[rng.below(n) as usize]);
    }
    let window = load.saturating_sub(Duration::from_secs(3)).as_millis() as u64;
    let mut faults: Vec<Fault> = chosen
        .into_iter()
        .map(|kind| {
            let count = match kind {
                FaultKind::KillWorker | FaultKind::PauseWorker | FaultKind::SkewWorker => workers,
                FaultKind::KillApi => apis,
                FaultKind::Poison => usize::from(shards),
                _ => 1,
            };
            let down = down_time(kind, &mut rng);
            let shift = rng.range(2, 6) as i64;
            Fault {
                kind,
                at: rng.millis(1000, window.max(1000)),
                down,
                target: rng.below(count as u64) as usize,
                variant: rng.below(POISONS.len() as u64) as usize,
                skew_secs: if rng.percent(50) { shift } else { -shift },
            }
        })
        .collect();
    faults.sort_by_key(|f| f.at);
    faults
}

/// What happened when a fault was injected.
#[derive(Debug, Clone)]
pub struct Injected {
    pub fault: Fault,
    /// When it began, from the seed's start.
    pub began: Duration,
    /// Until everything it touched was back.
    pub took: Duration,
    pub note: String,
}

/// What the injector leaves for the checks.
#[derive(Debug, Default)]
pub struct Outcome {
    pub injected: Vec<Injected>,
    /// Message ids of the poison messages published (each must be dead-lettered once).
    pub poisons: Vec<String>,
    /// Deposits sent right after a poison to its shard: they must be applied (flow goes on).
    pub canaries: Vec<Op>,
    pub stats: Stats,
    /// Faults that could not be done or recovered from.
    pub problems: Vec<String>,
}

/// What a fault works with.
pub struct Ctx<'a> {
    pub cfg: &'a RunConfig,
    pub services: &'a Services,
    pub http: &'a Http,
    pub traffic: &'a Traffic,
}

/// Injects `faults` against `cluster` during the load phase that started at `load_start`.
pub async fn inject(
    cluster: &mut Cluster,
    ctx: &Ctx<'_>,
    faults: &[Fault],
    load_start: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    for fault in faults {
        tokio::time::sleep_until(load_start + fault.at).await;
        let started = Instant::now();
        let began = started - load_start;
        let note = match run_one(cluster, ctx, fault, &mut out).await {
            Ok(note) => note,
            Err(e) => {
                out.problems.push(format!(
                    "{} at +{:.1}s: {e:#}",
                    fault.kind.name(),
                    began.as_secs_f64()
                ));
                format!("FAILED: {e:#}")
            }
        };
        out.injected.push(Injected {
            fault: fault.clone(),
            began,
            took: started.elapsed(),
            note,
        });
    }
    out
}

async fn run_one(
    cluster: &mut Cluster,
    ctx: &Ctx<'_>,
    fault: &Fault,
    out: &mut Outcome,
) -> Result<String> {
    let down = fault.down;
    match fault.kind {
        FaultKind::KillWorker => {
            let at = cluster.elapsed();
            let w = &mut cluster.workers[fault.target];
            w.mark(&format!("kill -9 at +{:.1}s", at.as_secs_f64()));
            w.kill9();
            tokio::time::sleep(down).await;
            w.mark("restart");
            w.spawn()?;
            Ok(format!("{} down {:.1}s", w.name, down.as_secs_f64()))
        }
        FaultKind::KillApi => {
            let at = cluster.elapsed();
            let a = &mut cluster.apis[fault.target];
            a.mark(&format!("kill -9 at +{:.1}s", at.as_secs_f64()));
            a.kill9();
            tokio::time::sleep(down).await;
            a.mark("restart");
            a.spawn()?;
            let name = a.name.clone();
            cluster
                .wait_api(fault.target, "/health/live", Duration::from_secs(30))
                .await?;
            Ok(format!("{name} down {:.1}s", down.as_secs_f64()))
        }
        FaultKind::BrokerRestart => broker_restart(ctx.cfg, down).await,
        FaultKind::DbRestart => db_restart(ctx, down).await,
        FaultKind::Poison => poison(cluster, ctx, fault, out).await,
        FaultKind::PauseWorker => pause_worker(cluster, ctx, fault, out).await,
        FaultKind::PauseBroker => pause_broker(ctx.cfg, down).await,
        FaultKind::RestartWorkers => {
            // Pairs pile up from the kill until every shard is consumed again.
            ctx.traffic.pairs.store(true, Ordering::Relaxed);
            let result = restart_workers(cluster, ctx.cfg, down).await;
            ctx.traffic.pairs.store(false, Ordering::Relaxed);
            result
        }
        FaultKind::SkewWorker => skew_worker(cluster, ctx, fault).await,
        FaultKind::KillBrokerNode => {
            node_loss(ctx.cfg, cluster, &["kill", "rabbit-leader"], down).await
        }
        FaultKind::KillDbPrimary => {
            node_loss(ctx.cfg, cluster, &["kill", "pg-primary"], down).await
        }
        FaultKind::KillDbStandby => {
            node_loss(ctx.cfg, cluster, &["kill", "pg-standby"], down).await
        }
        FaultKind::RollingBrokerRestart => {
            let mut notes = Vec::new();
            for node in ["1", "2", "3"] {
                notes.push(ha(ctx.cfg, cluster, &["restart", "rabbit", node]).await?);
            }
            Ok(notes.join("; "))
        }
    }
}

/// Runs `deploy/local/ha.sh args` (its `HA_*` variables come from this process's environment)
/// for the seed's broker prefix; its last line of output.
async fn ha(cfg: &RunConfig, cluster: &Cluster, args: &[&str]) -> Result<String> {
    let script = cfg.root.join("deploy/local/ha.sh");
    let prefix = cluster.topology.prefix.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let shown = format!("ha.sh {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(script)
            .args(&args)
            .env("TALLY_BROKER__PREFIX", prefix)
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await?
    .with_context(|| format!("running {shown}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout.lines().last().unwrap_or_default().trim().to_string())
}

/// A node killed with `ha.sh kill …`, left dead for `down`, then brought back (`ha.sh up`,
/// which waits until the cluster is whole again).
async fn node_loss(
    cfg: &RunConfig,
    cluster: &Cluster,
    kill: &[&str],
    down: Duration,
) -> Result<String> {
    let killed = ha(cfg, cluster, kill).await?;
    tokio::time::sleep(down).await;
    ha(cfg, cluster, &["up"]).await?;
    Ok(format!("{killed}; down {:.1}s", down.as_secs_f64()))
}

async fn broker_restart(cfg: &RunConfig, down: Duration) -> Result<String> {
    host("rabbitmqctl", vec!["-q".into(), "stop_app".into()]).await?;
    tokio::time::sleep(down).await;
    // Retried: a start_app right after stop_app occasionally reports a transient error.
    let mut tries = 0;
    while let Err(e) = host("rabbitmqctl", vec!["-q".into(), "start_app".into()]).await {
        tries += 1;
        if tries >= 3 {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    wait_until("RabbitMQ", Duration::from_secs(60), || broker_serving(cfg)).await?;
    Ok(format!("app down {:.1}s", down.as_secs_f64()))
}

async fn db_restart(ctx: &Ctx<'_>, down: Duration) -> Result<String> {
    let v = ctx.services.pg_version.clone();
    host(
        "pg_ctlcluster",
        vec![v.clone(), "main".into(), "stop".into()],
    )
    .await?;
    tokio::time::sleep(down).await;
    // Exit 2 = already running: someone ran deploy/local/services.sh meanwhile (it
    // restarts stopped services). Fine, as long as it is back.
    let started = host("pg_ctlcluster", vec![v, "main".into(), "start".into()]).await;
    let url = ctx.cfg.admin_url.clone();
    if let Err(e) = started {
        if pg_connect(&url).await.is_err() {
            return Err(e);
        }
    }
    wait_until("PostgreSQL", Duration::from_secs(60), || {
        let url = url.clone();
        async move { pg_connect(&url).await.is_ok() }
    })
    .await?;
    Ok(format!("down {:.1}s", down.as_secs_f64()))
}

/// A canary account on `shard`: `prefix-0`, `prefix-1`, … until one hashes there.
fn account_on(topology: &Topology, shard: u16, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|a| topology.shard_of(a) == shard)
        .unwrap_or_default()
}

async fn poison(
    cluster: &Cluster,
    ctx: &Ctx<'_>,
    fault: &Fault,
    out: &mut Outcome,
) -> Result<String> {
    let shard = u16::try_from(fault.target).unwrap_or(0);
    let id = format!("poison-{}-{}", cluster.seed, out.poisons.len() + 1);
    let body = POISONS[fault.variant];
    publish_raw(ctx.cfg, &cluster.topology, shard, &id, body.as_bytes()).await?;
    out.poisons.push(id.clone());
    // The shard must keep flowing: a deposit to one of its accounts, right behind it.
    let canary = Command {
        id: format!("{id}-canary"),
        kind: Kind::Deposit,
        account: account_on(&cluster.topology, shard, "canary"),
        cents: 100,
        request_id: None,
    };
    let op = ctx.http.canary(&canary, &mut out.stats).await;
    let answer = op.answer().short();
    out.canaries.push(op);
    Ok(format!("{id} on shard {shard}: {body}; canary {answer}"))
}

/// Shards whose lease the worker with `pid` holds now (owners are `tally-worker-<pid>-…`).
async fn leased_shards(db_url: &str, pid: u32) -> Result<Vec<u16>> {
    let db = pg_connect(db_url).await?;
    let rows = db
        .query(
            "SELECT shard FROM shard_leases WHERE owner LIKE $1 AND expires_at > now() \
             ORDER BY shard",
            &[&format!("tally-worker-{pid}-%")],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| u16::try_from(r.get::<_, i32>(0)).ok())
        .collect())
}

/// Polls until every id in `ids` is recorded or `deadline` passes; returns those missing.
async fn recorded_by(db_url: &str, ids: &[String], deadline: Instant) -> Vec<String> {
    loop {
        let missing = match pg_connect(db_url).await {
            Ok(db) => match db
                .query("SELECT id FROM transactions WHERE id = ANY($1)", &[&ids])
                .await
            {
                Ok(rows) => {
                    let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    ids.iter().filter(|i| !found.contains(i)).cloned().collect()
                }
                Err(_) => ids.to_vec(),
            },
            Err(_) => ids.to_vec(),
        };
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGSTOP one worker for `down` (2–4 lease TTLs). While it is stopped, a canary deposit on
/// each shard it held must be applied within the TTL plus [`TAKEOVER_GRACE`]: its shards
/// were taken over. SIGCONT comes whatever happens.
async fn pause_worker(
    cluster: &Cluster,
    ctx: &Ctx<'_>,
    fault: &Fault,
    out: &mut Outcome,
) -> Result<String> {
    let (target, pid, shards) = holder(cluster, fault.target).await?;
    let at = cluster.elapsed();
    let w = &cluster.workers[target];
    w.mark(&format!(
        "SIGSTOP at +{:.1}s for {:.1}s (held shards {shards:?})",
        at.as_secs_f64(),
        fault.down.as_secs_f64()
    ));
    host::signal("STOP", pid)?;
    let stopped = Instant::now();
    let deadline = stopped + LEASE_TTL + TAKEOVER_GRACE;
    let seen = async {
        let mut ids = Vec::new();
        for &shard in &shards {
            let canary = Command {
                id: format!("pause-{}-{}-{shard}", cluster.seed, at.as_millis()),
                kind: Kind::Deposit,
                account: account_on(&cluster.topology, shard, "paused"),
                cents: 100,
                request_id: None,
            };
            let op = ctx
                .http
                .submit(
                    &canary,
                    Policy::SameId,
                    Origin::Canary,
                    deadline,
                    &mut out.stats,
                )
                .await;
            ids.push(op.cmd.id.clone());
            out.canaries.push(op);
        }
        let missing = recorded_by(&cluster.db_url, &ids, deadline).await;
        (missing, stopped.elapsed())
    }
    .await;
    tokio::time::sleep_until(stopped + fault.down).await;
    let resumed = host::signal("CONT", pid);
    w.mark(&format!(
        "SIGCONT after {:.1}s",
        stopped.elapsed().as_secs_f64()
    ));
    resumed?;
    let (missing, took) = seen;
    if !missing.is_empty() {
        bail!(
            "{} stopped: its shards {shards:?} did not apply again within the lease TTL + {:?} \
             ({:?} while it was stopped): canaries {missing:?} not recorded",
            w.name,
            TAKEOVER_GRACE,
            LEASE_TTL + TAKEOVER_GRACE
        );
    }
    Ok(format!(
        "{} stopped {:.1}s; shards {shards:?} applying again after {:.1}s",
        w.name,
        fault.down.as_secs_f64(),
        took.as_secs_f64()
    ))
}

/// The worker to pause: `target` if it holds a shard, else the next one that does (a worker
/// restarted a moment ago holds none yet, and pausing it would prove nothing); waits up to
/// 3 lease TTLs for one. Returns its index, pid and shards.
async fn holder(cluster: &Cluster, target: usize) -> Result<(usize, u32, Vec<u16>)> {
    let deadline = Instant::now() + LEASE_TTL * 3;
    let n = cluster.workers.len();
    loop {
        for i in (0..n).map(|k| (target + k) % n) {
            let Some(pid) = cluster.workers[i].pid() else {
                continue;
            };
            let shards = leased_shards(&cluster.db_url, pid).await?;
            if !shards.is_empty() {
                return Ok((i, pid, shards));
            }
        }
        if Instant::now() >= deadline {
            bail!("no worker held a shard within {:?}", LEASE_TTL * 3);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGSTOP the RabbitMQ node past the API's confirm timeout, then SIGCONT and wait until it
/// serves AMQP again.
async fn pause_broker(cfg: &RunConfig, down: Duration) -> Result<String> {
    let pid = host::broker_pid().await?;
    host::signal("STOP", pid)?;
    tokio::time::sleep(down).await;
    host::signal("CONT", pid)?;
    wait_until("RabbitMQ", Duration::from_secs(60), || broker_serving(cfg)).await?;
    Ok(format!("beam.smp {pid} stopped {:.1}s", down.as_secs_f64()))
}

/// kill -9 every worker, restart them after `down`, and wait until every shard is consumed
/// again: the backlog then goes through fresh connections (cold statement caches).
async fn restart_workers(cluster: &mut Cluster, cfg: &RunConfig, down: Duration) -> Result<String> {
    let at = cluster.elapsed();
    for w in &mut cluster.workers {
        w.mark(&format!(
            "kill -9 (all workers) at +{:.1}s",
            at.as_secs_f64()
        ));
        w.kill9();
    }
    tokio::time::sleep(down).await;
    for w in &mut cluster.workers {
        w.mark("restart");
        w.spawn()?;
    }
    let restarted = Instant::now();
    cluster
        .wait_consumers(cfg, LEASE_TTL * 6)
        .await
        .context("after restarting the workers")?;
    Ok(format!(
        "{} workers down {:.1}s, every shard consumed {:.1}s after the restart",
        cluster.workers.len(),
        down.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    ))
}

/// Restart one worker (SIGTERM, then start) with its wall clock shifted, and wait until it
/// holds a shard (so that it decides something before the next fault). It stays skewed for
/// the rest of the seed, across later restarts too (a host whose clock is off).
async fn skew_worker(cluster: &mut Cluster, ctx: &Ctx<'_>, fault: &Fault) -> Result<String> {
    let library = ctx.services.faketime.as_deref().context(FAKETIME_MISSING)?;
    let w = &mut cluster.workers[fault.target];
    w.mark(&format!("restart with the clock {:+}s", fault.skew_secs));
    w.terminate(Duration::from_secs(10)).await?;
    for (key, value) in skewed_clock(library, fault.skew_secs) {
        w.set_env(&key, &value);
    }
    w.spawn()?;
    let name = w.name.clone();
    let pid = w.pid().context("the restarted worker has no pid")?;
    let started = Instant::now();
    let deadline = started + LEASE_TTL * 3;
    let shards = loop {
        let shards = leased_shards(&cluster.db_url, pid)
            .await
            .unwrap_or_default();
        if !shards.is_empty() || Instant::now() >= deadline {
            break shards;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if shards.is_empty() {
        bail!(
            "{name}, restarted with its clock {:+}s, held no shard after {:?}",
            fault.skew_secs,
            LEASE_TTL * 3
        );
    }
    Ok(format!(
        "{name} clock {:+}s, holds shards {shards:?} after {:.1}s",
        fault.skew_secs,
        started.elapsed().as_secs_f64()
    ))
}

/// Why `skew-worker` cannot run.
pub const FAKETIME_MISSING: &str = "skew-worker needs libfaketime (Debian package faketime): \
     run deploy/local/services.sh, or leave the kind out with --kinds";

/// Publishes `body` straight onto a shard queue (bypassing the API), confirmed and routed.
async fn publish_raw(
    cfg: &RunConfig,
    topology: &Topology,
    shard: u16,
    id: &str,
    body: &[u8],
) -> Result<()> {
    let conn = cfg
        .broker("tally-chaos-poison", Duration::from_secs(5))
        .await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let confirmation = channel
        .basic_publish(
            topology.exchange().into(),
            Topology::routing_key(shard).into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.into()),
        )
        .await?
        .await?;
    let _ = conn.close(200, "done".into()).await;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        other => bail!("poison message not confirmed and routed: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(
        seeds: std::ops::Range<u64>,
        kinds: &[FaultKind],
    ) -> std::collections::HashMap<FaultKind, usize> {
        let mut counts = std::collections::HashMap::new();
        for seed in seeds {
            let faults = plan(seed, Duration::from_secs(12), kinds, 2, 2, 4);
            assert!((2..=4).contains(&faults.len()));
            assert!(faults.windows(2).all(|w| w[0].at <= w[1].at));
            for f in faults {
                *counts.entry(f.kind).or_insert(0) += 1;
            }
        }
        counts
    }

    #[test]
    fn two_hundred_seeds_hit_every_kind_at_least_ten_times() {
        let counts = counts(0..200, &ALL);
        assert!(
            ALL.iter()
                .all(|k| counts.get(k).copied().unwrap_or(0) >= 10),
            "{counts:?}"
        );
    }

    #[test]
    fn every_run_of_nine_seeds_hits_every_kind() {
        for start in [0, 5, 191] {
            let counts = counts(start..start + 9, &ALL);
            assert!(
                ALL.iter().all(|k| counts.contains_key(k)),
                "{start}: {counts:?}"
            );
        }
    }

    #[test]
    fn narrowed_kinds_are_the_only_ones_and_each_seed_has_one() {
        let local = [FaultKind::PauseWorker, FaultKind::SkewWorker];
        let counts = counts(0..10, &local);
        assert!(counts.keys().all(|k| local.contains(k)), "{counts:?}");
        assert!(counts.values().all(|n| *n >= 5), "{counts:?}");
        assert!(plan(3, Duration::from_secs(12), &[], 2, 2, 4).is_empty());
    }

    #[test]
    fn plans_replay() {
        let again = plan(7, Duration::from_secs(12), &ALL, 2, 2, 4);
        assert_eq!(
            format!("{again:?}"),
            format!("{:?}", plan(7, Duration::from_secs(12), &ALL, 2, 2, 4))
        );
    }

    #[test]
    fn pauses_outlast_what_they_test() {
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let worker = down_time(FaultKind::PauseWorker, &mut rng);
            assert!(
                worker > LEASE_TTL + TAKEOVER_GRACE && worker <= LEASE_TTL * 4,
                "{worker:?}"
            );
            let broker = down_time(FaultKind::PauseBroker, &mut rng);
            assert!(broker > PUBLISH_TIMEOUT, "{broker:?}");
        }
    }

    #[test]
    fn skews_go_both_ways_and_are_never_zero() {
        let faults: Vec<Fault> = (0..40)
            .flat_map(|s| {
                plan(
                    s,
                    Duration::from_secs(12),
                    &[FaultKind::SkewWorker],
                    2,
                    2,
                    4,
                )
            })
            .collect();
        assert!(faults.iter().all(|f| (2..=6).contains(&f.skew_secs.abs())));
        assert!(faults.iter().any(|f| f.skew_secs > 0) && faults.iter().any(|f| f.skew_secs < 0));
    }
}
