//! The balance webhook sender: one per worker process, beside the shard loops, on a small
//! pool of its own. It claims due deliveries (a lease in PostgreSQL, `SKIP LOCKED`, so the
//! senders of several workers share the queue), POSTs each one signed, and records the
//! outcome: sent, a retry after an exponential back-off, or failed once out of attempts.
//!
//! Deliveries live in PostgreSQL from the batch that made the change until they end, so
//! nothing is lost with a sender: a killed one leaves its leases to expire and another sender
//! (or the restarted one) delivers — at least once; receivers dedupe on `X-Tally-Delivery`.
//! On shutdown the sender stops claiming and gives its sends in flight a bounded grace.

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::Sha256;
use std::fmt::Write as _;
use std::time::Duration;
use tally_core::amount::money_json;
use tally_core::settings::{DatabaseSettings, WebhookSettings};
use tally_store::webhooks::{self, Claimed, Outcome};
use tally_store::Pool;
use tally_telemetry::metrics::{self, WebhookOutcome};
use tokio_util::sync::CancellationToken;

/// Header carrying `sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the secret>`.
pub const SIGNATURE_HEADER: &str = "X-Tally-Signature";
/// Header carrying the delivery id, the same on every attempt: the receiver's dedupe key.
pub const DELIVERY_HEADER: &str = "X-Tally-Delivery";

/// How long sends in flight may still finish after shutdown was requested; past it they are
/// abandoned (their rows stay pending and are sent again once the leases expire).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest `last_error` kept: a receiver's error text is not ours to store in full.
const MAX_ERROR_CHARS: usize = 500;

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
    let mut out = String::from("sha256=");
    for byte in mac.finalize().into_bytes() {
        let _ = write!(out, "{byte:02x}");
    }
    Ok(out)
}

/// Wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
/// `base · 2^(attempt-1)`, at most `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// Sends due deliveries until `stop` is cancelled.
pub async fn run(pool: Pool, settings: WebhookSettings, stop: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.timeout_ms))
        // A redirect is an answer, not a delivery: following it would send the signed body
        // to an address nobody registered.
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "webhook sender cannot start: no HTTP client");
            return;
        }
    };
    let poll = Duration::from_millis(settings.poll_ms);
    let lease = Duration::from_millis(settings.lease_ms);
    let limit = i64::try_from(settings.concurrency).unwrap_or(i64::MAX);
    let mut pause = poll;
    while !stop.is_cancelled() {
        match webhooks::claim(&pool, limit, lease).await {
            Ok(claimed) => {
                pause = poll;
                let full = claimed.len() >= settings.concurrency;
                let sends = join_all(
                    claimed
                        .into_iter()
                        .map(|c| deliver(&pool, &client, &settings, c)),
                );
                tokio::select! {
                    _ = sends => {}
                    () = async { stop.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                        tracing::warn!("webhook sends abandoned at shutdown; they stay pending");
                        break;
                    }
                }
                if full {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "webhook claim failed");
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One attempt of one claimed delivery, and its record.
async fn deliver(pool: &Pool, client: &reqwest::Client, s: &WebhookSettings, c: Claimed) {
    // Nothing is sent for a deleted webhook: no attempt is counted.
    let attempt = c.attempts + i32::from(c.target.is_some());
    let outcome = match &c.target {
        None => Outcome::Failed {
            status: None,
            error: "webhook deleted".into(),
        },
        Some((url, secret)) => {
            let failure = |status: Option<i32>, error: String| {
                if u32::try_from(attempt).unwrap_or(u32::MAX) >= s.max_attempts {
                    Outcome::Failed { status, error }
                } else {
                    Outcome::Retry {
                        status,
                        error,
                        retry_in: backoff(
                            u32::try_from(attempt).unwrap_or(1),
                            Duration::from_millis(s.backoff_base_ms),
                            Duration::from_millis(s.backoff_max_ms),
                        ),
                    }
                }
            };
            match post(client, url, secret, &c).await {
                Ok(status) if (200..300).contains(&status) => Outcome::Sent { status },
                Ok(status) => failure(Some(status), format!("receiver answered {status}")),
                Err(e) => failure(None, e),
            }
        }
    };
    match webhooks::record(pool, &c, attempt, &outcome).await {
        Ok(true) => match &outcome {
            Outcome::Sent { .. } => {
                metrics::webhook_delivery(WebhookOutcome::Sent);
                tracing::debug!(delivery = c.id, account = %c.account_id, attempt, "webhook sent");
            }
            Outcome::Retry {
                error, retry_in, ..
            } => {
                metrics::webhook_delivery(WebhookOutcome::Retry);
                tracing::info!(delivery = c.id, account = %c.account_id, attempt,
                    error = %error, retry_in = ?retry_in, "webhook attempt failed; will retry");
            }
            Outcome::Failed { error, .. } => {
                metrics::webhook_delivery(WebhookOutcome::Failed);
                tracing::warn!(delivery = c.id, account = %c.account_id, attempt,
                    error = %error, "webhook delivery failed");
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

/// POSTs the signed body; the receiver's HTTP status, or why there is none.
async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    c: &Claimed,
) -> Result<i32, String> {
    let body = serde_json::to_vec(&Payload {
        account_id: &c.account_id,
        balance: c.balance,
        available: c.available,
        version: c.version,
        at: c.changed_at,
    })
    .map_err(|e| format!("body: {e}"))?;
    let signature = signature(secret.as_bytes(), &body).map_err(|e| format!("signature: {e}"))?;
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(DELIVERY_HEADER, c.id.to_string())
        .body(body)
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(i32::from(response.status().as_u16()))
}

/// `e` with its sources (reqwest's own message is only "error sending request"), capped.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
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
