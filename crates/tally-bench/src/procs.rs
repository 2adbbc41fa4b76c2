//! What the processes of the machine cost: resident memory of the stack's processes (from the
//! pid files `make up` writes under `.run/pids/`) and CPU per component (PostgreSQL,
//! RabbitMQ, nginx, API, worker, the bench itself), read from `/proc` so that a run can say
//! what bounded it.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Resident memory of one process, in kB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    pub rss_kb: u64,
    /// Peak resident set since the process started.
    pub hwm_kb: u64,
}

pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some(Rss {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// `name → pid` of the stack's pid files (`api-1`, `worker-2`, …).
pub fn stack_pids(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".pid") else {
            continue;
        };
        if let Some(pid) = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            out.push((stem.to_string(), pid));
        }
    }
    out.sort();
    out
}

/// Tracks the largest RSS seen per named process while a run goes on.
#[derive(Debug, Default)]
pub struct RssTracker {
    pub peak: BTreeMap<String, Rss>,
}

impl RssTracker {
    pub fn sample(&mut self, procs: &[(String, u32)]) {
        for (name, pid) in procs {
            if let Some(r) = rss(*pid) {
                let e = self.peak.entry(name.clone()).or_default();
                e.rss_kb = e.rss_kb.max(r.rss_kb);
                e.hwm_kb = e.hwm_kb.max(r.hwm_kb);
            }
        }
    }

    /// `{name: {rss_mb, hwm_mb}}` plus the largest API replica's and worker's peaks.
    pub fn json(&self) -> Value {
        let mut per = Map::new();
        let (mut api, mut worker) = (0u64, 0u64);
        for (name, r) in &self.peak {
            per.insert(
                name.clone(),
                json!({"rss_mb": mb(r.rss_kb), "hwm_mb": mb(r.hwm_kb)}),
            );
            if name.starts_with("api") {
                api = api.max(r.hwm_kb);
            } else if name.starts_with("worker") {
                worker = worker.max(r.hwm_kb);
            }
        }
        json!({
            "processes": per,
            "api_peak_mb": if api > 0 { Some(mb(api)) } else { None },
            "worker_peak_mb": if worker > 0 { Some(mb(worker)) } else { None },
        })
    }
}

fn mb(kb: u64) -> f64 {
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Which component a process belongs to, by its command name.
fn component(comm: &str) -> Option<&'static str> {
    Some(match comm {
        "postgres" => "postgres",
        "beam.smp" | "epmd" | "erl_child_setup" | "inet_gethost" => "rabbitmq",
        "nginx" => "nginx",
        "tally-api" => "tally-api",
        "tally-worker" => "tally-worker",
        "tally-bench" => "tally-bench",
        "cargo" | "rustc" | "cc" | "ld" | "cargo-nextest" | "tally-chaos" => "other-dev",
        _ => return None,
    })
}

/// Cumulative CPU ticks per process (with its component) and of the whole machine at one
/// instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    /// pid → (component, utime + stime). Kept per process, not summed per component: a
    /// process that exits between two snapshots must not make its component's total drop.
    per: BTreeMap<u32, (&'static str, u64)>,
    /// (busy, iowait, total) jiffies from /proc/stat.
    machine: (u64, u64, u64),
}

impl CpuSnapshot {
    pub fn take() -> Self {
        let mut per = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                // comm is between the first "(" and the last ")"; fields follow the ")".
                let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                    continue;
                };
                let comm = &stat[open + 1..close];
                let Some(mut group) = component(comm) else {
                    continue;
                };
                // Debug builds of tally belong to the test and chaos suites' clusters.
                if group.starts_with("tally-")
                    && std::fs::read_link(format!("/proc/{pid}/exe"))
                        .is_ok_and(|p| p.to_string_lossy().contains("/debug/"))
                {
                    group = "other-dev";
                }
                let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
                // After ")": state(0) … utime(11) stime(12).
                let ticks = fields
                    .get(11)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    + fields
                        .get(12)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                per.insert(pid, (group, ticks));
            }
        }
        Self {
            at: Instant::now(),
            per,
            machine: machine_jiffies(),
        }
    }

    /// CPU use between `self` (earlier) and `later`, in % of one core per component, plus the
    /// machine's busy and iowait % of all cores. A process that started in between counts
    /// with all its time; one that ended in between loses its share of the window (rare in a
    /// steady run).
    pub fn delta_json(&self, later: &CpuSnapshot) -> Value {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let hz = clock_ticks() as f64;
        let mut ticks: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (pid, (group, t)) in &later.per {
            let before = match self.per.get(pid) {
                Some((g, b)) if g == group => *b,
                _ => 0,
            };
            *ticks.entry(group).or_default() += t.saturating_sub(before);
        }
        let mut per = Map::new();
        for (k, t) in ticks {
            per.insert(k.to_string(), json!((t as f64 / hz / secs * 100.0).round()));
        }
        let (b0, w0, t0) = self.machine;
        let (b1, w1, t1) = later.machine;
        let total = t1.saturating_sub(t0).max(1) as f64;
        json!({
            "percent_of_one_core": per,
            "machine_busy_percent": (b1.saturating_sub(b0) as f64 / total * 100.0).round(),
            "machine_iowait_percent": (w1.saturating_sub(w0) as f64 / total * 100.0).round(),
        })
    }
}

/// Top-line `cpu` of /proc/stat: (busy, iowait, total).
fn machine_jiffies() -> (u64, u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0, 0);
    };
    let Some(line) = stat.lines().next() else {
        return (0, 0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    let idle = get(3) + get(4);
    (total.saturating_sub(idle), get(4), total)
}

/// USER_HZ; 100 on every Linux this runs on, asked once in case it is not.
fn clock_ticks() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// One line for progress output: `pg 80% rmq 45% api 60% …` of the given CPU JSON.
pub fn cpu_line(cpu: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(per) = cpu["percent_of_one_core"].as_object() {
        for (k, v) in per {
            parts.push(format!("{k} {}%", v.as_f64().unwrap_or(0.0)));
        }
    }
    parts.push(format!(
        "machine busy {}% iowait {}%",
        cpu["machine_busy_percent"].as_f64().unwrap_or(0.0),
        cpu["machine_iowait_percent"].as_f64().unwrap_or(0.0)
    ));
    parts.join(", ")
}

/// Dev processes (cargo, nextest, the chaos suite) running now, not counting this process
/// and its ancestors (`make bench` runs under make, maybe under cargo).
pub fn noisy_neighbours() -> Vec<String> {
    let mut ancestors = Vec::new();
    let mut pid = std::process::id();
    while pid > 1 {
        ancestors.push(pid);
        pid = parent_of(pid).unwrap_or(0);
    }
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if ancestors.contains(&p) {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{p}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        let first = cmd.split_whitespace().next().unwrap_or("");
        let exe = first.rsplit('/').next().unwrap_or("");
        if matches!(exe, "cargo" | "cargo-nextest" | "tally-chaos" | "rustc")
            || cmd.contains(" nextest ")
        {
            out.push(format!("{p} {}", cmd.chars().take(120).collect::<String>()));
        }
    }
    out
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 1..].split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss_and_cpu() {
        let me = rss(std::process::id()).unwrap();
        assert!(me.rss_kb > 0 && me.hwm_kb >= me.rss_kb);
        let a = CpuSnapshot::take();
        let b = CpuSnapshot::take();
        let j = a.delta_json(&b);
        assert!(j["machine_busy_percent"].is_number());
        assert!(parent_of(std::process::id()).is_some());
    }
}
