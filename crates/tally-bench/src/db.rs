//! PostgreSQL helpers of the bench: throw-away databases (each measurement that writes gets a
//! fresh one, so table and index sizes are the same run after run), and the queries that
//! turn the ledger's own rows into results — how many were applied when, and the end-to-end
//! lag `applied_at − accepted_at` of every row of a run (exact, not sampled).

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};

use crate::stats::round3;

/// Connects and drives the connection in the background.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({})", redact(url)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The URL with its password hidden, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Drops (disconnecting its sessions) and creates database `name`. Only ever called with the
/// bench's own database names.
pub async fn recreate_database(admin_url: &str, name: &str) -> Result<()> {
    let admin = connect(admin_url).await?;
    // Two statements, two calls: a multi-statement string runs as one implicit transaction,
    // where DROP/CREATE DATABASE are not allowed.
    drop_on(&admin, name).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .with_context(|| format!("creating database {name}"))?;
    Ok(())
}

/// The environment of a `tally-worker` process the bench starts on its own database and
/// queue prefix (several per host: each gets a free metrics port).
pub fn worker_env(
    db_url: &str,
    broker_url: &str,
    prefix: &str,
    shards: u16,
) -> Vec<(String, String)> {
    vec![
        ("TALLY_PROFILE".into(), "local".into()),
        ("TALLY_DATABASE__URL".into(), db_url.to_string()),
        ("TALLY_BROKER__URL".into(), broker_url.to_string()),
        ("TALLY_BROKER__PREFIX".into(), prefix.to_string()),
        ("TALLY_LEDGER__SHARD_COUNT".into(), shards.to_string()),
        ("RUST_LOG".into(), "warn".into()),
        ("NO_COLOR".into(), "1".into()),
        ("TALLY_WORKER__METRICS_ADDR".into(), "127.0.0.1:0".into()),
    ]
}

/// Drops and recreates `name`, then migrates it with the worker binary itself (so the bench
/// measures the schema the release ships).
pub async fn recreate_migrated(
    admin_url: &str,
    name: &str,
    worker_bin: &std::path::Path,
    env: &[(String, String)],
) -> Result<()> {
    recreate_database(admin_url, name).await?;
    let status = tokio::process::Command::new(worker_bin)
        .arg("migrate")
        .envs(env.iter().cloned())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("running tally-worker migrate")?;
    anyhow::ensure!(status.success(), "tally-worker migrate failed ({status})");
    Ok(())
}

pub async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    drop_on(&connect(admin_url).await?, name).await
}

/// `DROP DATABASE … WITH (FORCE)`, retried for a while when it may not terminate a backend:
/// an autovacuum worker (a superuser's process) busy on a freshly filled drain database made
/// the next drains of a `make bench` run fail.
async fn drop_on(admin: &Client, name: &str) -> Result<()> {
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    for _ in 0..60 {
        match admin.batch_execute(&sql).await {
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            done => return done.with_context(|| format!("dropping database {name}")),
        }
    }
    admin
        .batch_execute(&sql)
        .await
        .with_context(|| format!("dropping database {name}"))
}

/// Rows inserted into `transactions` so far, from the statistics collector: free to read,
/// lags up to about a second (backends flush their counters at most once a second). Good
/// for progress lines; final figures come from the rows themselves.
pub async fn inserted_estimate(client: &Client) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT coalesce(sum(n_tup_ins), 0)::int8 FROM pg_stat_user_tables \
             WHERE relname = 'transactions'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Ledger rows applied at or after `since`: count, first and last `applied_at`.
pub async fn applied_since(
    client: &Client,
    since: DateTime<Utc>,
) -> Result<(i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>)> {
    // Served by the transactions_applied_at index.
    let row = client
        .query_one(
            "SELECT count(*), min(applied_at), max(applied_at) FROM transactions \
             WHERE applied_at >= $1",
            &[&since],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// Rows applied in [from, to).
pub async fn applied_between(
    client: &Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM transactions WHERE applied_at >= $1 AND applied_at < $2",
            &[&from, &to],
        )
        .await?;
    Ok(row.get(0))
}

/// The longest time between two consecutive commits among the rows applied since `since`
/// (rows of one batch share their `applied_at`): a drain that stalls for seconds shows here
/// even when its average rate looks fine.
pub async fn longest_gap_s(client: &Client, since: DateTime<Utc>) -> Result<Option<f64>> {
    let row = client
        .query_one(
            "SELECT max(gap)::float8 FROM ( \
                 SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY at)) AS gap \
                   FROM (SELECT DISTINCT applied_at AS at FROM transactions \
                          WHERE applied_at >= $1) c) g",
            &[&since],
        )
        .await?;
    Ok(row.get(0))
}

/// End-to-end lag (accepted by the API or the publisher → applied by a worker) of every row
/// applied since `since`, by kind.
pub async fn lag_since(client: &Client, since: DateTime<Utc>) -> Result<Value> {
    let rows = client
        .query(
            "WITH l AS (SELECT kind, extract(epoch FROM applied_at - accepted_at) * 1000 AS ms \
                        FROM transactions WHERE applied_at >= $1) \
             SELECT kind, count(*), \
                    percentile_disc(0.5) WITHIN GROUP (ORDER BY ms)::float8, \
                    percentile_disc(0.99) WITHIN GROUP (ORDER BY ms)::float8, \
                    percentile_disc(0.999) WITHIN GROUP (ORDER BY ms)::float8, \
                    max(ms)::float8 \
             FROM l GROUP BY ROLLUP (kind) ORDER BY kind NULLS LAST",
            &[&since],
        )
        .await?;
    let mut out = serde_json::Map::new();
    for r in rows {
        let kind: Option<String> = r.get(0);
        let count: i64 = r.get(1);
        let f = |i: usize| r.get::<_, Option<f64>>(i).map(round3);
        out.insert(
            kind.unwrap_or_else(|| "all".into()),
            json!({"count": count, "p50_ms": f(2), "p99_ms": f(3), "p999_ms": f(4), "max_ms": f(5)}),
        );
    }
    Ok(Value::Object(out))
}

/// Batches the workers committed since `since`: each transaction stamps all its rows with one
/// `applied_at`, so distinct `applied_at` are commits, and distinct (shard, applied_at) pairs
/// are shard batches (a commit holds the batches of one worker's shards that were ready).
pub async fn batches_since(client: &Client, since: DateTime<Utc>) -> Result<Value> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(avg(n), 0)::float8, coalesce(max(n), 0)::int8, \
                    count(DISTINCT applied_at), coalesce(sum(n), 0)::int8 FROM \
             (SELECT applied_at, count(*) AS n FROM transactions WHERE applied_at >= $1 \
              GROUP BY shard, applied_at) b",
            &[&since],
        )
        .await?;
    let batches: i64 = row.get(0);
    let avg: f64 = row.get(1);
    let max: i64 = row.get(2);
    let commits: i64 = row.get(3);
    let rows: i64 = row.get(4);
    #[allow(clippy::cast_precision_loss)] // counts of a bench run
    let per_commit = if commits > 0 {
        (rows as f64 / commits as f64 * 10.0).round() / 10.0
    } else {
        0.0
    };
    Ok(
        json!({"batches": batches, "avg_size": (avg * 10.0).round() / 10.0, "max_size": max,
              "commits": commits, "rows_per_commit": per_commit}),
    )
}

pub async fn server_version(client: &Client) -> Result<String> {
    Ok(client.query_one("SHOW server_version", &[]).await?.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
