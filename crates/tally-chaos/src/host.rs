//! Host-level controls the faults use: the PostgreSQL cluster's version, RabbitMQ's OS
//! process, signals to processes (kill(1): the workspace forbids `unsafe`, so no libc), and
//! whether libfaketime is there for a worker with a shifted clock (`tally_testkit::process`).
//!
//! What it keeps: a process this suite stops with SIGSTOP is resumed by the same fault, and a
//! broker left stopped by an interrupted run is resumed at the next start
//! ([`resume_stopped_brokers`]).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command as Cmd, Stdio};
use std::time::Duration;
use tokio::time::Instant;

use crate::cluster::RunConfig;
use tally_testkit::process::faketime_library;

/// What the host offers the faults.
#[derive(Debug, Clone)]
pub struct Services {
    /// PostgreSQL cluster version (from pg_lsclusters), e.g. "15".
    pub pg_version: String,
    /// libfaketime's preload library, when the `faketime` package is installed.
    pub faketime: Option<PathBuf>,
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
            faketime: faketime_library(Path::new("/usr/lib")),
        })
    }
}

/// Runs a host command off the async threads (rabbitmqctl alone takes ~0.7 s); its stdout.
pub async fn host(program: &'static str, args: Vec<String>) -> Result<String> {
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
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends `signal` (e.g. "STOP", "CONT") to `pid`.
pub fn signal(signal: &str, pid: u32) -> Result<()> {
    let status = Cmd::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed ({status})");
    }
    Ok(())
}

/// The OS process of the RabbitMQ node (beam.smp), as the node itself reports it.
pub async fn broker_pid() -> Result<u32> {
    let out = host(
        "rabbitmqctl",
        vec![
            "-q".into(),
            "eval".into(),
            "list_to_integer(os:getpid()).".into(),
        ],
    )
    .await?;
    let pid: u32 = out
        .trim()
        .parse()
        .with_context(|| format!("rabbitmqctl eval printed {out:?}, not a pid"))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "beam.smp" {
        bail!("pid {pid} is {:?}, not RabbitMQ's beam.smp", comm.trim());
    }
    Ok(pid)
}

/// beam.smp processes in the stopped state (`T` in /proc/PID/stat).
fn stopped_brokers() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| is_stopped_broker(&stat))
        })
        .collect()
}

/// Whether a /proc/PID/stat line ("PID (comm) STATE …"; comm may hold spaces and
/// parentheses) is a beam.smp in the stopped state.
fn is_stopped_broker(stat: &str) -> bool {
    stat.split_once(" (")
        .and_then(|(_, rest)| rest.rsplit_once(") "))
        .is_some_and(|(comm, rest)| comm == "beam.smp" && rest.starts_with('T'))
}

/// Resumes stopped RabbitMQ processes; returns their pids.
pub fn resume_stopped_brokers() -> Vec<u32> {
    stopped_brokers()
        .into_iter()
        .filter(|pid| signal("CONT", *pid).is_ok())
        .collect()
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<()>
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
    match cfg
        .broker("tally-chaos-probe", Duration::from_secs(2))
        .await
    {
        Ok(conn) => {
            let _ = conn.close(200, "probe".into()).await;
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_stopped_beam_is_a_stopped_broker() {
        assert!(is_stopped_broker("2933 (beam.smp) T 1 2933 2933 0 -1"));
        assert!(!is_stopped_broker("2933 (beam.smp) S 1 2933 2933 0 -1"));
        assert!(!is_stopped_broker("17 (tally-worker) T 1 17 17 0 -1"));
        assert!(!is_stopped_broker("18 (a) (beam.smp) T 1"));
    }
}
