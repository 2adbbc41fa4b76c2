//! The fault scheduler: which faults a seed injects and when (decided by the seed alone), and
//! how each is done to the real processes and services.
//!
//! Coverage rule: seed `s` always includes `ALL[s % 5]`, plus 1–3 random extras, so any 50
//! consecutive seeds hit every kind at least 10 times. Faults run one after another (never
//! overlapping), each at its planned offset into the load or as soon as the previous one
//! recovered; each waits for its own recovery (broker serving AMQP again, PostgreSQL accepting
//! connections, a restarted replica answering) before the next begins.

use anyhow::{bail, Context, Result};
use std::process::{Command as Cmd, Stdio};
use std::time::Duration;
use tally_bus::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tally_bus::lapin::{BasicProperties, Confirmation};
use tally_bus::Topology;
use tokio::time::Instant;

use crate::cluster::{pg_connect, Cluster, RunConfig};
use crate::model::{Command, Http, Kind, Op, Stats};
use tally_tools::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    KillWorker,
    KillApi,
    BrokerRestart,
    DbRestart,
    Poison,
}

pub const ALL: [FaultKind; 5] = [
    FaultKind::KillWorker,
    FaultKind::KillApi,
    FaultKind::BrokerRestart,
    FaultKind::DbRestart,
    FaultKind::Poison,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "kill-worker",
            FaultKind::KillApi => "kill-api",
            FaultKind::BrokerRestart => "rabbitmq-restart",
            FaultKind::DbRestart => "postgres-restart",
            FaultKind::Poison => "poison-message",
        }
    }
}

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
    /// How long the victim stays down before it is restarted.
    pub down: Duration,
    /// Which replica/worker (kills), which shard and body (poison).
    pub target: usize,
    pub variant: usize,
}

/// The faults of a seed, in time order.
pub fn plan(seed: u64, load: Duration, apis: usize, workers: usize, shards: u16) -> Vec<Fault> {
    let mut rng = Rng::stream(seed, 1);
    let mut kinds = vec![ALL[(seed % ALL.len() as u64) as usize]];
    for _ in 0..rng.range(1, 3) {
        kinds.push(ALL[rng.below(ALL.len() as u64) as usize]);
    }
    let window = load.saturating_sub(Duration::from_secs(3)).as_millis() as u64;
    let mut faults: Vec<Fault> = kinds
        .into_iter()
        .map(|kind| {
            let (count, down) = match kind {
                FaultKind::KillWorker => (workers, rng.millis(200, 3000)),
                FaultKind::KillApi => (apis, rng.millis(200, 3000)),
                FaultKind::BrokerRestart => (1, rng.millis(1000, 3000)),
                FaultKind::DbRestart => (1, rng.millis(200, 3000)),
                FaultKind::Poison => (usize::from(shards), Duration::ZERO),
            };
            Fault {
                kind,
                at: rng.millis(1000, window.max(1000)),
                down,
                target: rng.below(count as u64) as usize,
                variant: rng.below(POISONS.len() as u64) as usize,
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

/// Host-level controls over the shared services.
#[derive(Debug, Clone)]
pub struct Services {
    /// PostgreSQL cluster version (from pg_lsclusters), e.g. "15".
    pub pg_version: String,
}

impl Services {
    pub fn detect() -> Result<Self> {
        let out = Cmd::new("pg_lsclusters")
            .arg("-h")
            .stdin(Stdio::null())
            .output()
            .context("pg_lsclusters (postgresql-common)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.get(1) == Some(&"main")).then(|| cols[0].to_string())
            })
            .max_by(|a, b| {
                a.parse::<f64>()
                    .unwrap_or(0.0)
                    .total_cmp(&b.parse::<f64>().unwrap_or(0.0))
            })
            .context("no PostgreSQL cluster named main")?;
        Ok(Self {
            pg_version: version,
        })
    }
}

/// Runs a host command off the async threads (rabbitmqctl alone takes ~0.7 s).
async fn host(program: &'static str, args: Vec<String>) -> Result<()> {
    let shown = format!("{program} {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || {
        Cmd::new(program).args(&args).stdin(Stdio::null()).output()
    })
    .await?
    .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !probe().await {
        if Instant::now() >= deadline {
            bail!("{what} not back within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub async fn broker_serving(cfg: &RunConfig) -> bool {
    match tally_bus::connect(&cfg.amqp_url, "tally-chaos-probe", Duration::from_secs(2)).await {
        Ok(conn) => {
            let _ = conn.close(200, "probe".into()).await;
            true
        }
        Err(_) => false,
    }
}

/// Injects `faults` against `cluster` during the load phase that started at `load_start`.
pub async fn inject(
    cluster: &mut Cluster,
    cfg: &RunConfig,
    services: &Services,
    faults: &[Fault],
    load_start: Instant,
    http: &Http,
) -> Outcome {
    let mut out = Outcome::default();
    for fault in faults {
        tokio::time::sleep_until(load_start + fault.at).await;
        let started = Instant::now();
        let began = started - load_start;
        let note = match run_one(cluster, cfg, services, fault, http, &mut out).await {
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
    cfg: &RunConfig,
    services: &Services,
    fault: &Fault,
    http: &Http,
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
        FaultKind::BrokerRestart => {
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
        FaultKind::DbRestart => {
            let v = services.pg_version.clone();
            host(
                "pg_ctlcluster",
                vec![v.clone(), "main".into(), "stop".into()],
            )
            .await?;
            tokio::time::sleep(down).await;
            // Exit 2 = already running: someone ran deploy/local/services.sh meanwhile (it
            // restarts stopped services). Fine, as long as it is back.
            let started = host("pg_ctlcluster", vec![v, "main".into(), "start".into()]).await;
            let url = cfg.admin_url.clone();
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
        FaultKind::Poison => {
            let shard = u16::try_from(fault.target).unwrap_or(0);
            let id = format!("poison-{}-{}", cluster.seed, out.poisons.len() + 1);
            let body = POISONS[fault.variant];
            publish_raw(cfg, &cluster.topology, shard, &id, body.as_bytes()).await?;
            out.poisons.push(id.clone());
            // The shard must keep flowing: a deposit to one of its accounts, right behind it.
            let account = (0..)
                .map(|i| format!("canary-{i}"))
                .find(|a| cluster.topology.shard_of(a) == shard)
                .unwrap_or_default();
            let canary = Command {
                id: format!("{id}-canary"),
                kind: Kind::Deposit,
                account,
                cents: 100,
                request_id: None,
            };
            let op = http.submit(&canary, &mut out.stats).await;
            let answer = op.answer.short();
            out.canaries.push(op);
            Ok(format!("{id} on shard {shard}: {body}; canary {answer}"))
        }
    }
}

/// Publishes `body` straight onto a shard queue (bypassing the API), confirmed and routed.
async fn publish_raw(
    cfg: &RunConfig,
    topology: &Topology,
    shard: u16,
    id: &str,
    body: &[u8],
) -> Result<()> {
    let conn =
        tally_bus::connect(&cfg.amqp_url, "tally-chaos-poison", Duration::from_secs(5)).await?;
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

    #[test]
    fn fifty_seeds_hit_every_kind_at_least_five_times_and_plans_replay() {
        let mut counts = std::collections::HashMap::new();
        for seed in 0..50 {
            let faults = plan(seed, Duration::from_secs(12), 2, 2, 4);
            assert!((2..=4).contains(&faults.len()));
            assert!(faults.windows(2).all(|w| w[0].at <= w[1].at));
            for f in faults {
                *counts.entry(f.kind).or_insert(0) += 1;
            }
        }
        assert!(
            ALL.iter().all(|k| counts.get(k).copied().unwrap_or(0) >= 5),
            "{counts:?}"
        );
        let again = plan(7, Duration::from_secs(12), 2, 2, 4);
        assert_eq!(
            format!("{again:?}"),
            format!("{:?}", plan(7, Duration::from_secs(12), 2, 2, 4))
        );
    }
}
