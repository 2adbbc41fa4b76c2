//! `tally-bench seed`: fills an empty, migrated ledger database with N applied deposits and
//! withdraws over M accounts, straight into PostgreSQL with `COPY`, for tests and benchmarks
//! that need volume (settlement, history) without pushing it through the broker.
//!
//! The rows are what the worker would have written for the same commands: per account,
//! `seq` numbers the history 1..version and `balance_after` is the running balance; the
//! account row's `balance`/`version` are the last ones; `fingerprint` is the command's own;
//! `shard` follows the recorded shard count. No withdraw overdraws (one that would is drawn
//! as a deposit instead), and times increase with `seq`, so the conservation auditor passes
//! and history, settlement and largest-expense reads treat the rows like real data.
//!
//! It refuses a database that already has accounts or transactions: appending would have to
//! continue every account's history where it stopped, which a bulk fill has no need for.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveTime, Utc};
use futures_util::SinkExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::Instant;
use tally_core::command::NewTransaction;
use tally_core::Kind;
use tally_settings::{DatabaseSettings, Secret};

use crate::db;
use crate::stats::round1;
use tally_testkit::rng::Rng;

/// What to seed.
pub struct SeedSpec {
    pub database_url: String,
    pub transactions: u64,
    pub accounts: u64,
    /// First and last UTC day (inclusive) the rows are spread over, evenly and in order.
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub seed: u64,
    /// Shard count to record when the database has none yet.
    pub shards: u16,
    /// Share of the draws that try a withdraw (only taken when the balance covers it).
    pub withdraw_share: f64,
    pub progress: bool,
}

/// Bytes of COPY text sent at a time: big enough that the round trips do not matter, small
/// enough that the process stays lean.
const CHUNK: usize = 1 << 20;

/// Per-account state while generating.
#[derive(Clone, Default)]
struct AccountRow {
    balance: Decimal,
    version: i64,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
}

pub fn account_id(k: u64) -> String {
    format!("acct-{k}")
}

/// `2026-10-01 00:00:00.123456+00`: COPY's text form of a timestamptz.
fn pg_time(t: DateTime<Utc>, out: &mut String) {
    let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f+00"));
}

/// Seeds the database; returns the figures as JSON.
pub async fn run(spec: SeedSpec) -> Result<Value> {
    check(&spec)?;
    let pool = tally_store::connect(&DatabaseSettings {
        url: Secret::new(spec.database_url.clone()),
        pool_size: 4,
        timeout_ms: 30_000,
    })?;
    let mut client = pool
        .get()
        .await
        .with_context(|| format!("connecting to {}", db::redact(&spec.database_url)))?;
    let shards = prepare(&pool, &client, &spec).await?;
    let bar = progress_bar(spec.transactions, spec.progress);
    let started = Instant::now();
    let tx = client.transaction().await?;
    let mut rows = Rows::new(&spec, shards);
    let copied = copy_transactions(&tx, &mut rows, &bar).await?;
    let touched = copy_accounts(&tx, &rows.accounts).await?;
    tx.commit().await?;
    let load_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // Fresh statistics, so the first queries over the rows are planned for their real size.
    let analyze = Instant::now();
    client
        .batch_execute("ANALYZE transactions, accounts")
        .await?;
    let analyze_s = analyze.elapsed().as_secs_f64();
    let withdraws = rows.withdraws;
    if spec.progress {
        eprintln!(
            "seeded {copied} transactions ({withdraws} withdraws) over {touched} accounts in {load_s:.1}s \
             ({:.0} rows/s), ANALYZE {analyze_s:.1}s",
            copied as f64 / load_s.max(1e-3)
        );
    }
    Ok(json!({
        "kind": "seed",
        "transactions": copied,
        "withdraws": withdraws,
        "accounts": touched,
        "shards": shards,
        "from": spec.from.to_string(),
        "to": spec.to.to_string(),
        "seed": spec.seed,
        "load_s": round1(load_s),
        "analyze_s": round1(analyze_s),
        "total_s": round1(started.elapsed().as_secs_f64()),
        "rows_per_s": round1(copied as f64 / load_s.max(1e-3)),
    }))
}

fn check(spec: &SeedSpec) -> Result<()> {
    if spec.transactions == 0 || spec.accounts == 0 {
        bail!("--transactions and --accounts must be positive");
    }
    if spec.from > spec.to {
        bail!("--from must not be after --to");
    }
    if !(0.0..1.0).contains(&spec.withdraw_share) {
        bail!("--withdraw-share must be in [0, 1)");
    }
    Ok(())
}

/// Refuses a ledger that is not empty; returns the shard count to stamp rows with (the
/// recorded one, or the spec's, then recorded).
async fn prepare(
    pool: &tally_store::Pool,
    client: &tokio_postgres::Client,
    spec: &SeedSpec,
) -> Result<u16> {
    let used: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM transactions) OR EXISTS (SELECT 1 FROM accounts)",
            &[],
        )
        .await
        .context("reading the ledger (is the database migrated? `tally-worker migrate`)")?
        .get(0);
    if used {
        bail!("the database already has accounts or transactions: seed fills an empty ledger only");
    }
    let recorded: Option<String> = client
        .query_opt(
            "SELECT value FROM ledger_meta WHERE key = 'shard_count'",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    match recorded {
        Some(k) => k.parse().context("recorded shard_count"),
        None => {
            tally_store::meta::ensure_shard_count(pool, spec.shards)
                .await
                .context("recording the shard count")?;
            Ok(spec.shards)
        }
    }
}

/// The generator of the transaction rows, and the accounts they leave behind.
struct Rows {
    rng: Rng,
    accounts: Vec<AccountRow>,
    withdraws: u64,
    seed: u64,
    shards: u16,
    withdraw_share: f64,
    start: DateTime<Utc>,
    span_us: i64,
    n: u64,
}

impl Rows {
    fn new(spec: &SeedSpec, shards: u16) -> Self {
        Self {
            rng: Rng::new(spec.seed),
            accounts: vec![AccountRow::default(); spec.accounts as usize],
            withdraws: 0,
            seed: spec.seed,
            shards,
            withdraw_share: spec.withdraw_share,
            start: spec.from.and_time(NaiveTime::MIN).and_utc(),
            span_us: ((spec.to - spec.from).num_days() + 1) * 86_400_000_000,
            n: spec.transactions,
        }
    }

    /// Draws transaction `i` and appends its COPY line to `buf` (`time` is scratch space).
    fn write(&mut self, i: u64, buf: &mut String, time: &mut String) {
        let last = self.accounts.len() as u64 - 1;
        let k = self.rng.range(0, last);
        let account = account_id(k);
        let amount = Decimal::new(self.rng.range(100, 50_000) as i64, 2);
        let withdraw = self.rng.next_f64() < self.withdraw_share;
        let row = &mut self.accounts[k as usize];
        let kind = if withdraw && row.balance >= amount {
            row.balance -= amount;
            self.withdraws += 1;
            Kind::Withdraw
        } else {
            row.balance += amount;
            Kind::Deposit
        };
        row.version += 1;
        // Even spread, in order: i * span / n microseconds after the start (i128: no overflow).
        let at = self.start
            + ChronoDuration::microseconds(
                (i128::from(i) * i128::from(self.span_us) / i128::from(self.n)) as i64,
            );
        row.first.get_or_insert(at);
        row.last = Some(at);
        let id = format!("seed{}-{i:010}", self.seed);
        let fingerprint = NewTransaction {
            id: id.clone(),
            kind,
            account_id: account.clone(),
            amount,
            occurred_at: Some(at),
            request_id: None,
            user_id: None,
            client_id: None,
            key_name: None,
        }
        .fingerprint();
        time.clear();
        pg_time(at, time);
        let _ = writeln!(
            buf,
            "{id}\t{account}\t{}\t{amount}\tapplied\t{fingerprint}\t{}\t{}\t{time}\t{time}\t{time}\t{}",
            kind.as_str(),
            row.version,
            row.balance,
            tally_core::shard_of(&account, self.shards),
        );
    }
}

/// COPYs every transaction row, `CHUNK` bytes at a time; returns the rows copied.
async fn copy_transactions(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &mut Rows,
    bar: &ProgressBar,
) -> Result<u64> {
    let sink = tx
        .copy_in(
            "COPY transactions (id, account_id, kind, amount, status, fingerprint, seq, \
             balance_after, occurred_at, accepted_at, applied_at, shard) FROM STDIN",
        )
        .await?;
    futures_util::pin_mut!(sink);
    let mut buf = String::with_capacity(CHUNK + 1024);
    let mut time = String::with_capacity(32);
    for i in 0..rows.n {
        rows.write(i, &mut buf, &mut time);
        if buf.len() >= CHUNK {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
            buf.reserve(CHUNK + 1024);
            bar.set_position(i + 1);
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    let copied = sink.finish().await?;
    bar.set_position(rows.n);
    Ok(copied)
}

/// COPYs the account rows the transactions touched; returns how many.
async fn copy_accounts(
    tx: &tokio_postgres::Transaction<'_>,
    accounts: &[AccountRow],
) -> Result<u64> {
    let sink = tx
        .copy_in("COPY accounts (id, balance, held, version, created_at, updated_at) FROM STDIN")
        .await?;
    futures_util::pin_mut!(sink);
    let mut buf = String::with_capacity(CHUNK + 1024);
    let mut touched = 0u64;
    for (k, a) in accounts.iter().enumerate() {
        let (Some(first), Some(last)) = (a.first, a.last) else {
            continue;
        };
        touched += 1;
        let _ = write!(
            buf,
            "{}\t{}\t0\t{}\t",
            account_id(k as u64),
            a.balance,
            a.version
        );
        pg_time(first, &mut buf);
        buf.push('\t');
        pg_time(last, &mut buf);
        buf.push('\n');
        if buf.len() >= CHUNK {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    sink.finish().await?;
    Ok(touched)
}

fn progress_bar(len: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message("seed");
    bar
}
