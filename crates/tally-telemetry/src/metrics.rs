//! The process's Prometheus metrics: every `tally_*` series is defined here, once, and
//! rendered by [`render`] for `GET /metrics` (the API's, and the worker's own listener).
//!
//! Series come in groups, each registered the first time it is touched: a process shows
//! only what it does (the API no batch histograms, the worker no HTTP counters), and
//! [`init_api`] / [`init_worker`] touch their groups at start-up so every series a role owns
//! is visible — at zero — before the first event. Labels are low-cardinality by
//! construction: routes are match patterns, kinds/reasons/outcomes are closed sets, shards
//! are 0..K.
//!
//! Metric names and bucket lists are constants: building them cannot fail at run time (the
//! unit test below builds every group), so the `expect`s here are start-up assertions.

use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;
use std::time::Duration;

/// The registry behind `/metrics` (not the crate-global default one: nothing but ours in it).
static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    if let Err(e) = REGISTRY.register(Box::new(collector.clone())) {
        tracing::warn!(error = %e, "metric not registered");
    }
    collector
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::with_opts(Opts::new(name, help)).expect("valid metric"))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::with_opts(Opts::new(name, help)).expect("valid metric"))
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}

/// Seconds, 0.5 ms … ~16 s, doubling.
fn seconds_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")
}

/// The Prometheus text exposition of every registered series.
pub fn render() -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(&REGISTRY.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// Bound on refreshing the open-holds gauge in [`scrape`]: a database outage must not stall
/// the scrape (the gauge then keeps its last value).
const HOLDS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a `/metrics` handler answers: the open-holds gauge refreshed from `open_holds` (a
/// count query, bounded by a second), then every series rendered.
pub async fn scrape<E: std::fmt::Display>(
    open_holds: impl std::future::Future<Output = Result<i64, E>>,
) -> Result<String, prometheus::Error> {
    match tokio::time::timeout(HOLDS_TIMEOUT, open_holds).await {
        Ok(Ok(count)) => set_holds_open(count),
        Ok(Err(e)) => tracing::warn!(error = %e, "open holds not counted for /metrics"),
        Err(_) => tracing::warn!("open holds not counted for /metrics: database too slow"),
    }
    render()
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// ------------------------------------------------------------------ API: HTTP

struct Http {
    requests: IntCounterVec,
    duration: HistogramVec,
}

static HTTP: LazyLock<Http> = LazyLock::new(|| Http {
    requests: counter_vec(
        "tally_http_requests_total",
        "HTTP requests answered, by route pattern, method and status.",
        &["route", "method", "status"],
    ),
    duration: register(
        HistogramVec::new(
            HistogramOpts::new(
                "tally_http_request_duration_seconds",
                "Time to answer an HTTP request, by route pattern and method.",
            )
            .buckets(seconds_buckets()),
            &["route", "method"],
        )
        .expect("valid metric"),
    ),
});

/// Route label of a request no route matched (the raw path would be unbounded).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// One answered HTTP request. `route` is the router's pattern (`/account/{accountId}`), or
/// [`UNMATCHED_ROUTE`].
pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    HTTP.requests
        .with_label_values(&[route, method, status_label(status)])
        .inc();
    HTTP.duration
        .with_label_values(&[route, method])
        .observe(elapsed.as_secs_f64());
}

/// Status codes as static strings (no allocation per request; unknown ones grouped).
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        402 => "402",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        410 => "410",
        422 => "422",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

// ------------------------------------------------------------------ API: publisher

struct Bus {
    publishes: IntCounter,
    confirms: IntCounter,
    nacks: IntCounter,
    returns: IntCounter,
    failures: IntCounterVec,
    settles: IntCounterVec,
    queue_depth: IntGaugeVec,
    dead_letters: IntGauge,
}

static BUS: LazyLock<Bus> = LazyLock::new(|| Bus {
    publishes: counter(
        "tally_publishes_total",
        "Commands published to the broker (attempts).",
    ),
    confirms: counter(
        "tally_publish_confirms_total",
        "Publishes the broker confirmed (ack) and routed to a shard queue.",
    ),
    nacks: counter(
        "tally_publish_nacks_total",
        "Publishes the broker refused (nack).",
    ),
    returns: counter(
        "tally_publish_returns_total",
        "Publishes returned unroutable (no shard queue bound).",
    ),
    failures: counter_vec(
        "tally_publish_failures_total",
        "Publishes that got no confirm: no connection, a broker error, or no confirm in time.",
        &["reason"],
    ),
    settles: counter_vec(
        "tally_publish_settles_total",
        "Publishes whose outcome was unknown (sent, no confirm), by how republishing the same \
         message ended: confirmed, or still unknown when the answer was due.",
        &["result"],
    ),
    queue_depth: register(
        IntGaugeVec::new(
            Opts::new(
                "tally_queue_depth",
                "Ready messages in each shard queue (the consumers' lag), as last polled.",
            ),
            &["shard"],
        )
        .expect("valid metric"),
    ),
    dead_letters: gauge(
        "tally_dead_letter_queue_depth",
        "Ready messages in the dead-letter queue, as last polled.",
    ),
});

/// How one publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    Confirmed,
    Nacked,
    Returned,
    Unavailable,
    BrokerError,
    Timeout,
}

/// Counts one publish and its outcome.
pub fn publish(outcome: PublishOutcome) {
    BUS.publishes.inc();
    match outcome {
        PublishOutcome::Confirmed => BUS.confirms.inc(),
        PublishOutcome::Nacked => BUS.nacks.inc(),
        PublishOutcome::Returned => BUS.returns.inc(),
        PublishOutcome::Unavailable => BUS.failures.with_label_values(&["unavailable"]).inc(),
        PublishOutcome::BrokerError => BUS.failures.with_label_values(&["broker_error"]).inc(),
        PublishOutcome::Timeout => BUS.failures.with_label_values(&["timeout"]).inc(),
    }
}

/// Counts one unknown publish outcome and whether republishing settled it.
pub fn publish_settled(confirmed: bool) {
    BUS.settles
        .with_label_values(&[if confirmed { "confirmed" } else { "unknown" }])
        .inc();
}

/// The polled depth of shard `shard`'s queue.
pub fn set_queue_depth(shard: u16, depth: u32) {
    BUS.queue_depth
        .with_label_values(&[shard.to_string().as_str()])
        .set(i64::from(depth));
}

/// The polled depth of the dead-letter queue.
pub fn set_dead_letter_depth(depth: u32) {
    BUS.dead_letters.set(i64::from(depth));
}

// ------------------------------------------------------------------ worker

struct Worker {
    batch_size: Histogram,
    batch_duration: Histogram,
    applied: IntCounterVec,
    rejected: IntCounterVec,
    apply_lag: Histogram,
    shards_owned: IntGauge,
    id_conflicts: IntCounter,
}

static WORKER: LazyLock<Worker> = LazyLock::new(|| Worker {
    batch_size: histogram(
        "tally_batch_size",
        "Deliveries applied in one PostgreSQL transaction.",
        exponential_buckets(1.0, 2.0, 12).expect("valid buckets"),
    ),
    batch_duration: histogram(
        "tally_batch_duration_seconds",
        "Time to apply, commit and ack one batch (store retries included).",
        seconds_buckets(),
    ),
    applied: counter_vec(
        "tally_transactions_applied_total",
        "Commands that took effect (deposit/withdraw applied, withdraw_request approved), \
         by type. Redeliveries of a recorded id are not counted again.",
        &["type"],
    ),
    rejected: counter_vec(
        "tally_transactions_rejected_total",
        "Commands recorded without effect (withdraw rejected, withdraw_request denied), by \
         type and reason.",
        &["type", "reason"],
    ),
    apply_lag: histogram(
        "tally_apply_lag_seconds",
        "From the API's acceptance of a command to its commit by the worker (queue lag as \
         the consumer sees it).",
        exponential_buckets(0.001, 2.0, 18).expect("valid buckets"),
    ),
    shards_owned: gauge(
        "tally_shards_owned",
        "Shard queues this process consumes under a lease.",
    ),
    id_conflicts: counter(
        "tally_id_conflicts_total",
        "Commands that reused a recorded id with another payload and were therefore not \
         applied (each id and payload once, redeliveries not counted again); listed under \
         `conflicts` by GET /transactions/{id}.",
    ),
});

/// One committed batch of `size` deliveries that took `elapsed`.
pub fn batch(size: usize, elapsed: Duration) {
    // A batch is at most worker.batch_max deliveries: far below f64's exact integers.
    #[allow(clippy::cast_precision_loss)]
    WORKER.batch_size.observe(size as f64);
    WORKER.batch_duration.observe(elapsed.as_secs_f64());
}

/// One newly recorded command: `reason` is `None` when it took effect. `lag` is the time
/// since the API accepted it.
pub fn transaction(kind: &str, reason: Option<&str>, lag: Duration) {
    match reason {
        None => WORKER.applied.with_label_values(&[kind]).inc(),
        Some(reason) => WORKER.rejected.with_label_values(&[kind, reason]).inc(),
    }
    WORKER.apply_lag.observe(lag.as_secs_f64());
}

/// Counts id conflicts a batch recorded for the first time.
pub fn id_conflicts(n: u64) {
    WORKER.id_conflicts.inc_by(n);
}

/// Counts one shard consumed under a lease for as long as it lives.
pub struct OwnedShard(());

impl OwnedShard {
    pub fn new() -> Self {
        WORKER.shards_owned.inc();
        Self(())
    }
}

impl Default for OwnedShard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OwnedShard {
    fn drop(&mut self) {
        WORKER.shards_owned.dec();
    }
}

// ------------------------------------------------------------------ both

struct Shared {
    holds_open: IntGauge,
    webhooks: IntCounterVec,
    clock_offset: Gauge,
    audit_failing: IntGauge,
    audit_last_run: Gauge,
    dead_letters_pending: IntGauge,
    shed: IntCounter,
}

static SHARED: LazyLock<Shared> = LazyLock::new(|| {
    Shared {
    holds_open: gauge(
        "tally_holds_open",
        "Open holds in the ledger (all accounts), as of the last scrape.",
    ),
    webhooks: counter_vec(
        "tally_webhook_deliveries_total",
        "Webhook delivery attempts by outcome: sent, retry (will be tried again), failed \
         (gave up), superseded (a newer event replaced it).",
        &["outcome"],
    ),
    clock_offset: register(
        Gauge::with_opts(Opts::new(
            "tally_clock_offset_seconds",
            "PostgreSQL's clock minus this process's host clock, as last measured (decisions \
             use PostgreSQL's clock; the API refuses withdraw_requests past ledger.max_clock_skew_ms).",
        ))
        .expect("valid metric"),
    ),
    audit_failing: gauge(
        "tally_audit_failing_checks",
        "Checks of the conservation auditor that failed in this worker's last run \
         (worker.audit_every_secs); 0 when every invariant held.",
    ),
    audit_last_run: register(
        Gauge::with_opts(Opts::new(
            "tally_audit_last_run_timestamp_seconds",
            "Unix time at which this worker's last auditor run completed (0: none yet).",
        ))
        .expect("valid metric"),
    ),
    dead_letters_pending: gauge(
        "tally_dead_letters_pending",
        "Dead letters archived in PostgreSQL and not yet re-published, as of this worker's \
         last auditor run.",
    ),
    shed: counter(
        "tally_admission_shed_total",
        "POST /transaction answered 503 `unavailable` by admission control because the \
         account's shard queue was over its threshold (nothing was published).",
    ),
}
});

/// The outcome of one auditor run completed at `unix_secs`: how many checks failed, and how
/// many archived dead letters wait to be re-published.
pub fn audit_run(failing: usize, dead_letters_pending: i64, unix_secs: f64) {
    SHARED
        .audit_failing
        .set(i64::try_from(failing).unwrap_or(i64::MAX));
    SHARED.dead_letters_pending.set(dead_letters_pending);
    SHARED.audit_last_run.set(unix_secs);
}

/// One command refused by admission control.
pub fn shed() {
    SHARED.shed.inc();
}

/// The last measured offset of PostgreSQL's clock to this host's, in seconds.
pub fn set_clock_offset_secs(offset_secs: f64) {
    SHARED.clock_offset.set(offset_secs);
}

/// The ledger's open holds, refreshed when `/metrics` is scraped.
pub fn set_holds_open(count: i64) {
    SHARED.holds_open.set(count);
}

/// How one webhook delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    Sent,
    Retry,
    Failed,
    Superseded,
}

impl WebhookOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Sent => "sent",
            WebhookOutcome::Retry => "retry",
            WebhookOutcome::Failed => "failed",
            WebhookOutcome::Superseded => "superseded",
        }
    }
}

/// Counts one webhook delivery attempt (for the webhook dispatcher).
pub fn webhook_delivery(outcome: WebhookOutcome) {
    SHARED.webhooks.with_label_values(&[outcome.as_str()]).inc();
}

/// Counts deliveries a newer balance change superseded (committed, never sent).
pub fn webhooks_superseded(n: u64) {
    if n > 0 {
        SHARED
            .webhooks
            .with_label_values(&[WebhookOutcome::Superseded.as_str()])
            .inc_by(n);
    }
}

// ------------------------------------------------------------------ start-up

/// Registers the API's series, so they show (at zero) from the first scrape.
pub fn init_api() {
    LazyLock::force(&HTTP);
    LazyLock::force(&BUS);
    init_shared();
}

/// Registers the worker's series, so they show (at zero) from the first scrape.
pub fn init_worker() {
    LazyLock::force(&WORKER);
    init_shared();
}

fn init_shared() {
    let shared = LazyLock::force(&SHARED);
    // Zero series for every outcome: a rate over a series that appears late misses its start.
    for outcome in [
        WebhookOutcome::Sent,
        WebhookOutcome::Retry,
        WebhookOutcome::Failed,
        WebhookOutcome::Superseded,
    ] {
        shared.webhooks.with_label_values(&[outcome.as_str()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_builds_and_renders_its_series() {
        init_api();
        init_worker();
        http_request("/transaction", "POST", 200, Duration::from_millis(3));
        publish(PublishOutcome::Confirmed);
        set_queue_depth(3, 7);
        batch(10, Duration::from_millis(2));
        transaction("deposit", None, Duration::from_millis(5));
        transaction(
            "withdraw",
            Some("insufficient_funds"),
            Duration::from_millis(5),
        );
        let _owned = OwnedShard::new();
        webhook_delivery(WebhookOutcome::Sent);
        let text = render().unwrap();
        for line in [
            "tally_http_requests_total{method=\"POST\",route=\"/transaction\",status=\"200\"} 1",
            "tally_publish_confirms_total 1",
            "tally_queue_depth{shard=\"3\"} 7",
            "tally_batch_size_count 1",
            "tally_transactions_applied_total{type=\"deposit\"} 1",
            "tally_transactions_rejected_total{reason=\"insufficient_funds\",type=\"withdraw\"} 1",
            "tally_shards_owned 1",
            "tally_webhook_deliveries_total{outcome=\"sent\"} 1",
            "tally_webhook_deliveries_total{outcome=\"failed\"} 0",
            "tally_holds_open 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
