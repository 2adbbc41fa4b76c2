//! The balance webhook sender: one per worker process, beside the shard loops, on a small
//! pool of its own. It claims due deliveries (a lease in PostgreSQL, `SKIP LOCKED`, so the
//! senders of several workers share the queue), POSTs each one signed, and records the
//! outcome: sent, a retry after an exponential back-off, or failed once out of attempts.
//! It does not poll: new deliveries wake it (`LISTEN/NOTIFY`, see [`crate::wakeups`]), and in
//! between it sleeps until the next pending delivery is due; `poll_ms` is only a fallback.
//!
//! Deliveries live in PostgreSQL from the batch that made the change until they end, so
//! nothing is lost with a sender: a killed one leaves its leases to expire and another sender
//! (or the restarted one) delivers — at least once; receivers dedupe on `X-Tally-Delivery`.
//! On shutdown the sender stops claiming and gives its sends in flight a bounded grace.
//!
//! Isolation: every send runs on its own, in one of `concurrency` slots, and a slot is
//! refilled as soon as its send ends (no batch waits for its slowest member), while a
//! receiver holds at most `per_receiver` slots (see [`webhooks::claim`]): a slow or hanging
//! receiver delays only its own deliveries, each bounded by `timeout_ms`.
//!
//! Targets: unless `allow_private_targets`, the sender connects only to public addresses
//! ([`tally_core::target`]). Names are resolved here and refused if any address is not
//! public, and the connection uses exactly the addresses checked (no second lookup an
//! attacker's DNS could answer differently); proxies from the environment are ignored, since
//! a proxy would resolve the name itself.
//!
//! What is recorded of a failure (`last_error`, shown by `GET /debug/webhooks`) is a short
//! classification ([`Failure`]) and the HTTP status, never the receiver's answer; the details
//! go to the worker's log.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::Sha256;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tally_core::amount::money_json;
use tally_core::target::{self, NonPublic};
use tally_settings::{DatabaseSettings, WebhookSettings};
use tally_store::webhooks::{self, Claimed, Outcome};
use tally_store::Pool;
use tally_telemetry::metrics::{self, WebhookOutcome};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::retry::Delays;

/// Header carrying `sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the secret>`.
pub const SIGNATURE_HEADER: &str = "X-Tally-Signature";
/// Header carrying the delivery id, the same on every attempt: the receiver's dedupe key.
pub const DELIVERY_HEADER: &str = "X-Tally-Delivery";

/// How long sends in flight may still finish after shutdown was requested; past it they are
/// abandoned (their rows stay pending and are sent again once the leases expire).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The sender's own pool, so it never takes the connections the shard loops need: the claim
/// and the outcome records (short single-row updates; a few connections serve many sends).
/// Falls back to `shared` if it cannot be built.
pub fn own_pool(database: &DatabaseSettings, webhooks: &WebhookSettings, shared: &Pool) -> Pool {
    let mut settings = database.clone();
    settings.pool_size = webhooks.concurrency.clamp(1, 4);
    tally_store::connect(&settings).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "webhook sender shares the worker's pool");
        shared.clone()
    })
}

/// How an attempt failed, as recorded in `last_error`: a closed set of short words, so that
/// nothing a receiver says (error pages, addresses of its network) is stored or shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The receiver answered, not with a 2xx (the status is recorded beside it).
    Status,
    /// No answer within `timeout_ms`.
    Timeout,
    /// The receiver's name did not resolve.
    Dns,
    /// No connection (refused, unreachable, TLS handshake failed).
    Connect,
    /// Connected, but no valid HTTP answer (closed early, malformed).
    Transport,
    /// The target is not a public address and `allow_private_targets` is off. Final: no
    /// retry makes it one.
    NonPublic,
    /// The webhook was deleted before the delivery was sent. Final.
    Deleted,
    /// The request could not be built (a bug): final.
    Internal,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Status => "http_status",
            Failure::Timeout => "timeout",
            Failure::Dns => "dns_failed",
            Failure::Connect => "connect_failed",
            Failure::Transport => "transport_error",
            Failure::NonPublic => "non_public_target",
            Failure::Deleted => "webhook_deleted",
            Failure::Internal => "internal_error",
        }
    }

    /// Whether another attempt could go differently.
    fn is_final(self) -> bool {
        matches!(
            self,
            Failure::NonPublic | Failure::Deleted | Failure::Internal
        )
    }

    /// The class of a failed request.
    fn of(e: &reqwest::Error) -> Self {
        match target_error(e) {
            Some(TargetError::Dns { .. }) => Failure::Dns,
            Some(TargetError::NonPublic { .. }) => Failure::NonPublic,
            None if e.is_timeout() => Failure::Timeout,
            None if e.is_connect() => Failure::Connect,
            None => Failure::Transport,
        }
    }
}

/// Why the resolver gave the connector no address.
#[derive(Debug, thiserror::Error)]
enum TargetError {
    #[error("resolving {host}: {error}")]
    Dns { host: String, error: std::io::Error },
    #[error("{host} is {addr}, a {} address (webhooks.allow_private_targets is off)", .class.as_str())]
    NonPublic {
        host: String,
        addr: IpAddr,
        class: NonPublic,
    },
}

/// The [`TargetError`] somewhere in `e`'s chain of causes, if the failure was the resolver's.
fn target_error(e: &reqwest::Error) -> Option<&TargetError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(found) = c.downcast_ref::<TargetError>() {
            return Some(found);
        }
        cause = c.source();
    }
    None
}

/// The sender's resolver: the system's (`getaddrinfo`, as reqwest's default), then, unless
/// non-public targets are allowed, a refusal when any address of the name is not public — a
/// name with one public and one private address must not get a connection to the private one.
struct Resolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let looked_up = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map(Iterator::collect::<Vec<SocketAddr>>);
            let addrs = match looked_up {
                Ok(addrs) => addrs,
                Err(error) => return Err(TargetError::Dns { host, error }.into()),
            };
            if !allow_private {
                let refused = addrs
                    .iter()
                    .find_map(|a| target::classify(a.ip()).map(|class| (a.ip(), class)));
                if let Some((addr, class)) = refused {
                    return Err(TargetError::NonPublic { host, addr, class }.into());
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A URL whose host is a non-public address literal, unless those are allowed: the resolver
/// never sees literals, so they are checked here. `None`: allowed, public, or a name (the
/// resolver's business).
fn literal_non_public(s: &WebhookSettings, url: &str) -> Option<(IpAddr, NonPublic)> {
    if s.allow_private_targets {
        return None;
    }
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    target::classify(ip).map(|class| (ip, class))
}

/// The HTTP client every send of this sender uses.
fn http_client(settings: &WebhookSettings) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.timeout_ms))
        // A redirect is an answer, not a delivery: following it would send the signed body
        // to an address nobody registered (and nobody checked).
        .redirect(reqwest::redirect::Policy::none())
        // The target check judges the addresses this process connects to; through a proxy
        // from HTTP(S)_PROXY the proxy would resolve and connect instead.
        .no_proxy()
        .dns_resolver(Arc::new(Resolver {
            allow_private: settings.allow_private_targets,
        }))
        .build()
}

/// The JSON body of a delivery.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    account_id: &'a str,
    #[serde(with = "money_json")]
    balance: Decimal,
    #[serde(with = "money_json")]
    available: Decimal,
    version: i64,
    at: DateTime<Utc>,
}

/// `sha256=<hex>` of `body` keyed by `secret` (HMAC takes keys of any length; the error
/// exists only for MACs that do not).
pub fn signature(secret: &[u8], body: &[u8]) -> Result<String, hmac::digest::InvalidLength> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)?;
    mac.update(body);
    Ok(format!("sha256={:x}", mac.finalize().into_bytes()))
}

/// Wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
/// `base · 2^(attempt-1)`, at most `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// Longest wait between two claims while claiming fails.
const CLAIM_MAX: Duration = Duration::from_secs(10);

/// How often a sender prunes finished deliveries, and how many rows one prune deletes at most
/// (a bounded statement; a full prune is followed by another on the next loop).
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const PRUNE_LIMIT: i64 = 10_000;

/// When the sender next deletes deliveries older than the retention (none when it is 0).
struct Pruning {
    retention: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pruning {
    fn new(retention_hours: u64) -> Self {
        Self {
            retention: (retention_hours > 0)
                .then(|| Duration::from_secs(retention_hours.saturating_mul(3600))),
            next: tokio::time::Instant::now(),
        }
    }

    async fn run_if_due(&mut self, pool: &Pool) {
        let Some(retention) = self.retention else {
            return;
        };
        if tokio::time::Instant::now() < self.next {
            return;
        }
        self.next = tokio::time::Instant::now() + PRUNE_EVERY;
        match webhooks::prune(pool, retention, PRUNE_LIMIT).await {
            Ok(deleted) if deleted == PRUNE_LIMIT.unsigned_abs() => {
                tracing::info!(deleted, "pruned finished webhook deliveries; more to prune");
                self.next = tokio::time::Instant::now();
            }
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned finished webhook deliveries"),
            Err(e) => tracing::warn!(error = %e, "pruning finished webhook deliveries failed"),
        }
    }
}

/// Sends due deliveries until `stop` is cancelled, looking for them every `poll_ms` (and
/// when a delay or a retry falls due).
pub async fn run(pool: Pool, settings: WebhookSettings, stop: CancellationToken) {
    run_woken(pool, settings, Arc::new(Notify::new()), stop).await;
}

/// Shortest sleep between two claims: a delivery due now that could not be claimed (its
/// receiver has all its slots, another sender is claiming it) must not spin the loop.
const MIN_PAUSE: Duration = Duration::from_millis(50);

/// [`run`], also woken by `wake` (the listener's notification that deliveries were
/// scheduled): a new delivery is claimed at once. Between wake-ups the sender sleeps until
/// the next pending delivery is due ([`webhooks::next_due`]: a webhook's delay, a retry's
/// back-off, a dead sender's lease), and `poll_ms` is only the fallback for notifications
/// lost while the listener was disconnected.
pub async fn run_woken(
    pool: Pool,
    settings: WebhookSettings,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let client = match http_client(&settings) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "webhook sender cannot start: no HTTP client");
            return;
        }
    };
    let settings = Arc::new(settings);
    let poll = Duration::from_millis(settings.poll_ms);
    let lease = Duration::from_millis(settings.lease_ms);
    let per_receiver = i64::try_from(settings.per_receiver).unwrap_or(i64::MAX);
    let mut sends = JoinSet::new();
    // After a failed claim the next waits twice the poll interval, doubling up to the cap.
    let mut failing = Delays::doubling((poll * 2).min(CLAIM_MAX), CLAIM_MAX);
    let mut pause = poll;
    let mut pruning = Pruning::new(settings.retention_hours);
    while !stop.is_cancelled() {
        pruning.run_if_due(&pool).await;
        let free = settings.concurrency.saturating_sub(sends.len());
        if free > 0 {
            let limit = i64::try_from(free).unwrap_or(i64::MAX);
            match webhooks::claim(&pool, limit, lease, per_receiver).await {
                Ok(claimed) => {
                    failing.reset();
                    for c in claimed {
                        let (pool, client, settings) =
                            (pool.clone(), client.clone(), settings.clone());
                        sends.spawn(async move { deliver(&pool, &client, &settings, c).await });
                    }
                    pause = until_due(&pool, poll).await;
                }
                Err(e) => {
                    pause = failing.next_delay();
                    tracing::warn!(error = %e, retry_in = ?pause, "webhook claim failed");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            // A slot is free again: claim at once (more may be due than the last claim took).
            Some(ended) = sends.join_next(), if !sends.is_empty() => {
                if let Err(e) = ended {
                    tracing::error!(error = %e, "webhook send task failed");
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sends.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Dropping the set aborts them; their leases expire and another sender delivers.
        tracing::warn!(
            sends = sends.len(),
            "webhook sends abandoned at shutdown; they stay pending"
        );
    }
}

/// How long to sleep before the next claim: until the next pending delivery is due, at most
/// `poll` (at least [`MIN_PAUSE`]). If that cannot be read, `poll`.
async fn until_due(pool: &Pool, poll: Duration) -> Duration {
    match webhooks::next_due(pool).await {
        Ok(Some(due)) => due.clamp(MIN_PAUSE, poll.max(MIN_PAUSE)),
        Ok(None) => poll,
        Err(e) => {
            tracing::warn!(error = %e, "reading when the next webhook delivery is due failed");
            poll
        }
    }
}

/// The outcome of a failed attempt number `attempt`: retried after a back-off unless the
/// failure is final or the attempts are used up.
fn failed(s: &WebhookSettings, attempt: i32, status: Option<i32>, failure: Failure) -> Outcome {
    let error = failure.as_str();
    let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
    if failure.is_final() || attempt >= s.max_attempts {
        return Outcome::Failed { status, error };
    }
    Outcome::Retry {
        status,
        error,
        retry_in: backoff(
            attempt,
            Duration::from_millis(s.backoff_base_ms),
            Duration::from_millis(s.backoff_max_ms),
        ),
    }
}

/// One attempt of one claimed delivery, and its record.
async fn deliver(pool: &Pool, client: &reqwest::Client, s: &WebhookSettings, c: Claimed) {
    // Nothing is sent for a deleted webhook: no attempt is counted.
    let attempt = c.attempts + i32::from(c.target.is_some());
    let (outcome, detail) = match &c.target {
        None => (
            failed(s, attempt, None, Failure::Deleted),
            "webhook deleted".to_string(),
        ),
        Some((url, secret)) => match literal_non_public(s, url) {
            Some((addr, class)) => (
                failed(s, attempt, None, Failure::NonPublic),
                format!("{addr} is a {} address", class.as_str()),
            ),
            None => match post(client, url, secret, &c).await {
                Ok(status) if (200..300).contains(&status) => {
                    (Outcome::Sent { status }, String::new())
                }
                Ok(status) => (
                    failed(s, attempt, Some(status), Failure::Status),
                    format!("receiver answered {status}"),
                ),
                Err((failure, detail)) => (failed(s, attempt, None, failure), detail),
            },
        },
    };
    record(pool, &c, attempt, &outcome, &detail).await;
}

/// Records the outcome of an attempt; the log gets the detail the record leaves out.
async fn record(pool: &Pool, c: &Claimed, attempt: i32, outcome: &Outcome, detail: &str) {
    match webhooks::record(pool, c, attempt, outcome).await {
        Ok(true) => match outcome {
            Outcome::Sent { .. } => {
                metrics::webhook_delivery(WebhookOutcome::Sent);
                tracing::debug!(delivery = c.id, account = %c.account_id, attempt, "webhook sent");
            }
            Outcome::Retry {
                error, retry_in, ..
            } => {
                metrics::webhook_delivery(WebhookOutcome::Retry);
                tracing::info!(delivery = c.id, account = %c.account_id, attempt, error,
                    detail, retry_in = ?retry_in, "webhook attempt failed; will retry");
            }
            Outcome::Failed { error, .. } => {
                metrics::webhook_delivery(WebhookOutcome::Failed);
                tracing::warn!(delivery = c.id, account = %c.account_id, attempt, error,
                    detail, "webhook delivery failed");
            }
        },
        Ok(false) => tracing::warn!(
            delivery = c.id,
            "webhook lease taken over before its outcome was recorded"
        ),
        Err(e) => tracing::warn!(delivery = c.id, error = %e,
            "webhook outcome not recorded; the delivery is retried once its lease expires"),
    }
}

/// POSTs the signed body; the receiver's HTTP status, or the class of failure with its
/// detail (for the log only).
async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    c: &Claimed,
) -> Result<i32, (Failure, String)> {
    let body = serde_json::to_vec(&Payload {
        account_id: &c.account_id,
        balance: c.balance,
        available: c.available,
        version: c.version,
        at: c.changed_at,
    })
    .map_err(|e| (Failure::Internal, format!("body: {e}")))?;
    let signature = signature(secret.as_bytes(), &body)
        .map_err(|e| (Failure::Internal, format!("signature: {e}")))?;
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(DELIVERY_HEADER, c.id.to_string())
        .body(body)
        .send()
        .await
        .map_err(|e| (Failure::of(&e), error_chain(&e)))?;
    Ok(i32::from(response.status().as_u16()))
}

/// `e` with its sources (reqwest's own message is only "error sending request"), for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let waits: Vec<u128> = (1..=6).map(|n| backoff(n, base, max).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(200, base, max), max);
    }

    #[test]
    fn signature_is_the_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?").unwrap(),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
