//! `tally import FILE`: reads the file's lines in order, validates each exactly as the API
//! does ([`NewTransaction::from_json`] with the ledger's amount rules), sends up to
//! `--concurrency` at once, and records in the checkpoint the longest prefix of lines that
//! are done. Outcomes are consumed in file order (`buffered`, not `buffer_unordered`), so
//! the prefix is exact even though sends overlap.
//!
//! Re-run safety: ids are the file's own or derived from its content hash and the line
//! number ([`input::line_id`]); a rerun skips the checkpointed prefix and re-sends the rest,
//! which the ledger deduplicates by id (the worker records each id once; the API answers a
//! recorded id from the record). So killing an import at any point and running it again
//! applies every line exactly once.

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_bus::publisher::PublisherConfig;
use tally_bus::{Endpoints, Publisher, Topology};
use tally_core::command::NewTransaction;
use tally_core::AmountRules;
use tally_settings::{Secret, Settings};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, Checkpoint};
use crate::input::{self, Format, Line};
use crate::send::{Outcome, Sender};

/// Which way lines go (`--via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// `POST /transaction`, one request a line.
    Api,
    /// Published straight to the shard queues with publisher confirms.
    Queue,
}

pub struct ImportSpec {
    pub path: PathBuf,
    pub format: Format,
    pub checkpoint: PathBuf,
    pub via: Via,
    pub url: String,
    /// `--via api`: the `Authorization: Bearer` key.
    pub api_key: Option<String>,
    pub concurrency: usize,
    pub retry_for: Duration,
    pub broker_url: Option<String>,
    pub prefix: Option<String>,
    pub database_url: Option<String>,
    pub progress: bool,
}

/// What one run did with the file's lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Delivered in this run.
    pub sent: u64,
    /// Done by an earlier run (inside the checkpoint), not sent again.
    pub skipped: u64,
    /// Invalid or refused, this run or (server refusals) an earlier one.
    pub rejected: u64,
}

/// What became of one line.
enum Status {
    Sent,
    Skipped,
    /// `by_server`: only the API could tell; a rerun will not ask again.
    Rejected {
        reason: String,
        by_server: bool,
    },
}

/// The processes' settings (files and TALLY_* variables) with the command line's overrides.
fn settings(spec: &ImportSpec) -> Result<Settings> {
    let mut settings = Settings::load().context("loading settings")?;
    if let Some(url) = &spec.broker_url {
        // One broker named on the command line replaces every node of the settings.
        settings.broker.url = Secret::new(url.clone());
        settings.broker.urls.clear();
    }
    if let Some(prefix) = &spec.prefix {
        settings.broker.prefix = prefix.clone();
    }
    if let Some(url) = &spec.database_url {
        settings.database.url = Secret::new(url.clone());
    }
    Ok(settings)
}

/// The way out `--via` names: the API's endpoint, or a publisher on the shard queues.
async fn sender(spec: &ImportSpec, settings: &Settings, stop: CancellationToken) -> Result<Sender> {
    Ok(match spec.via {
        Via::Api => Sender::Api {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(api_key_header(spec.api_key.as_deref())?)
                .build()?,
            endpoint: format!("{}/transaction", spec.url.trim_end_matches('/')),
            retry_for: spec.retry_for,
        },
        Via::Queue => Sender::Queue {
            publisher: connect_queue(settings, stop).await?,
            retry_for: spec.retry_for,
        },
    })
}

/// `Authorization: Bearer <key>` when a key is given (marked sensitive: never printed by the
/// client's debug output).
fn api_key_header(key: Option<&str>) -> Result<reqwest::header::HeaderMap> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .context("the API key is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(headers)
}

/// Counts what became of line `number` and moves the checkpoint past it.
fn count(
    summary: &mut Summary,
    state: &mut Checkpoint,
    number: u64,
    status: Status,
    bar: &ProgressBar,
) {
    match status {
        Status::Sent => summary.sent += 1,
        Status::Skipped => summary.skipped += 1,
        Status::Rejected { reason, by_server } => {
            summary.rejected += 1;
            if by_server {
                state.rejected_by_server += 1;
            }
            bar.suspend(|| eprintln!("line {number}: {reason}"));
        }
    }
    state.done_through_line = state.done_through_line.max(number);
}

pub async fn run(spec: ImportSpec) -> Result<Summary> {
    let (file_hash, line_count) = input::file_hash(&spec.path)?;
    let previous = checkpoint::load(&spec.checkpoint, &file_hash)?.unwrap_or_default();
    let mut state = Checkpoint {
        file_sha256: file_hash.clone(),
        ..previous.clone()
    };

    let settings = settings(&spec)?;
    let rules = settings.ledger.amount_rules();
    let stop = CancellationToken::new();
    let sender = Arc::new(sender(&spec, &settings, stop.clone()).await?);

    let bar = progress_bar(line_count, spec.progress);
    let lines = input::read(&spec.path, spec.format)?;
    let done_before = previous.done_through_line;
    let mut outcomes = futures_util::stream::iter(lines)
        .map(|line| handle(line, &file_hash, done_before, &rules, sender.clone()))
        .buffered(spec.concurrency);

    let mut summary = Summary {
        rejected: previous.rejected_by_server,
        ..Summary::default()
    };
    let mut saved_at = Instant::now();
    let result = loop {
        let Some(item) = outcomes.next().await else {
            break Ok(());
        };
        let (number, status) = match item {
            Ok(x) => x,
            Err(e) => break Err(e),
        };
        count(&mut summary, &mut state, number, status, &bar);
        bar.inc(1);
        if saved_at.elapsed() >= Duration::from_millis(200) {
            checkpoint::save(&spec.checkpoint, &state)?;
            saved_at = Instant::now();
        }
    };
    drop(outcomes);
    checkpoint::save(&spec.checkpoint, &state)?;
    stop.cancel();
    bar.finish_and_clear();
    eprintln!(
        "tally import {}: sent {}, skipped {} (done by an earlier run), rejected {}",
        spec.path.display(),
        summary.sent,
        summary.skipped,
        summary.rejected
    );
    result.map(|()| summary)
}

/// Validates one line and, past the checkpoint, sends it.
async fn handle(
    line: Line,
    file_hash: &str,
    done_before: u64,
    rules: &AmountRules,
    sender: Arc<Sender>,
) -> Result<(u64, Status)> {
    let number = line.number;
    let reject = |reason: String| {
        Ok((
            number,
            Status::Rejected {
                reason,
                by_server: false,
            },
        ))
    };
    let mut body: Map<String, Value> = match line.body {
        Ok(b) => b,
        Err(reason) => return reject(reason),
    };
    input::ensure_id(&mut body, file_hash, number);
    let tx = match NewTransaction::from_json(&body, rules) {
        Ok(tx) => tx,
        Err(e) => return reject(format!("{} ({}): {}", e.code, e.field, e.message)),
    };
    if let Some(reason) = sender.refuses(&tx) {
        return reject(reason);
    }
    if number <= done_before {
        return Ok((number, Status::Skipped));
    }
    Ok(match sender.send(&tx, &body).await? {
        Outcome::Sent => (number, Status::Sent),
        Outcome::Rejected(reason) => (
            number,
            Status::Rejected {
                reason,
                by_server: true,
            },
        ),
    })
}

/// The confirmed publisher on the ledger's shard queues, once the shard count is known to
/// match the ledger's (another K would send accounts to the wrong shard).
async fn connect_queue(settings: &Settings, stop: CancellationToken) -> Result<Publisher> {
    let pool = tally_store::connect(&settings.database)?;
    tally_store::meta::ensure_shard_count(&pool, settings.ledger.shard_count)
        .await
        .context("checking the shard count against the ledger database")?;
    let connect_timeout = Duration::from_millis(settings.broker.connect_timeout_ms);
    let publisher = Publisher::start(
        PublisherConfig {
            endpoints: Endpoints::from_settings(&settings.broker),
            name: format!("tally-import-{}", std::process::id()),
            topology: Topology::from_settings(settings),
            connect_timeout,
            confirm_timeout: Duration::from_millis(settings.api.publish_timeout_ms),
        },
        stop,
    );
    if !publisher
        .wait_connected(connect_timeout.max(Duration::from_secs(10)))
        .await
    {
        bail!("could not connect to RabbitMQ");
    }
    Ok(publisher)
}

fn progress_bar(len: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "import [{elapsed_precise}] {wide_bar} {pos}/{len} lines ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}
