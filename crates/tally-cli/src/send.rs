//! The two ways a validated line leaves `tally import`, with the same contract: `Sent` means
//! the ledger has the command (the API answered 200/201/402, or RabbitMQ confirmed the
//! persistent message on its shard queue); `Rejected` means it never will (bad input);
//! an error means it could not be delivered within the retry budget (abort, rerun later).
//!
//! - API: `POST /transaction`; 503, 429, other 5xx and connection errors are retried with
//!   back-off, honouring `Retry-After`; a 401 or 403 (no key, or the wrong one) aborts.
//! - Queue: the envelope the API would publish ([`Envelope::new`] over the same validated
//!   [`NewTransaction`]), on the account's shard queue, persistent, mandatory, confirmed
//!   (tally-bus's [`Publisher`]). withdraw_request is refused: it needs a caller waiting for
//!   the decision, and an import has none.

use anyhow::{bail, Result};
use chrono::Utc;
use serde_json::{Map, Value};
use std::time::Duration;
use tally_bus::{command_properties, Publisher, Topology};
use tally_core::command::NewTransaction;
use tally_core::{Envelope, Kind};
use tokio::time::Instant;

pub enum Outcome {
    Sent,
    Rejected(String),
}

pub enum Sender {
    Api {
        client: reqwest::Client,
        /// `{base}/transaction`.
        endpoint: String,
        retry_for: Duration,
    },
    Queue {
        publisher: Publisher,
        retry_for: Duration,
    },
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Sender {
    /// Why this sender can never deliver `tx`, decided before sending: a rerun that skips
    /// the line must reach the same verdict.
    pub fn refuses(&self, tx: &NewTransaction) -> Option<String> {
        match self {
            Sender::Queue { .. } if tx.kind == Kind::WithdrawRequest => {
                Some("withdraw_request needs a live decision: import it with --via api".into())
            }
            _ => None,
        }
    }

    pub async fn send(&self, tx: &NewTransaction, body: &Map<String, Value>) -> Result<Outcome> {
        match self {
            Sender::Api {
                client,
                endpoint,
                retry_for,
            } => post(client, endpoint, *retry_for, tx, body).await,
            Sender::Queue {
                publisher,
                retry_for,
            } => publish(publisher, *retry_for, tx).await,
        }
    }
}

async fn publish(
    publisher: &Publisher,
    retry_for: Duration,
    tx: &NewTransaction,
) -> Result<Outcome> {
    let routing_key = Topology::routing_key(publisher.topology().shard_of(&tx.account_id));
    let give_up = Instant::now() + retry_for;
    let mut backoff = FIRST_BACKOFF;
    loop {
        // A fresh envelope per attempt, as a client retry through the API would get: only the
        // acceptance time differs, which the fingerprint leaves out.
        let envelope = Envelope::new(tx, Utc::now());
        let props = command_properties(&tx.id, "import");
        match publisher
            .publish(&routing_key, &envelope.encode(), props)
            .await
        {
            Ok(()) => return Ok(Outcome::Sent),
            Err(e) if Instant::now() + backoff < give_up => {
                say_retry(&tx.id, &e.to_string(), backoff);
                // Waiting for the session beats sleeping blind after a broker restart.
                publisher.wait_connected(backoff).await;
                tokio::time::sleep(backoff.min(Duration::from_millis(50))).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => bail!(
                "{}: not confirmed by RabbitMQ after {retry_for:?}: {e}",
                tx.id
            ),
        }
    }
}

async fn post(
    client: &reqwest::Client,
    endpoint: &str,
    retry_for: Duration,
    tx: &NewTransaction,
    body: &Map<String, Value>,
) -> Result<Outcome> {
    let give_up = Instant::now() + retry_for;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (wait, why) = match client.post(endpoint).json(body).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match status {
                    200 | 201 | 402 => return Ok(Outcome::Sent),
                    // Not the line's fault: every line would get the same. Abort, so the
                    // checkpoint does not move past lines never sent; rerun with a key.
                    401 | 403 => {
                        let text = resp.text().await.unwrap_or_default();
                        bail!(
                            "{}: {} (set --api-key or TALLY_API_KEY to a key with the scope \
                             transactions:write)",
                            tx.id,
                            error_text(status, &text)
                        );
                    }
                    429 | 503 | 500..=599 => {
                        let retry_after = resp
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs);
                        (retry_after.unwrap_or(backoff), format!("HTTP {status}"))
                    }
                    _ => {
                        let text = resp.text().await.unwrap_or_default();
                        return Ok(Outcome::Rejected(error_text(status, &text)));
                    }
                }
            }
            Err(e) => (backoff, format!("{e}")),
        };
        if Instant::now() + wait >= give_up {
            bail!(
                "{}: the API did not take it within {retry_for:?} (last: {why})",
                tx.id
            );
        }
        say_retry(&tx.id, &why, wait);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `HTTP 400 invalid_amount: …` from the API's error body, or the raw text.
fn error_text(status: u16, text: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(err) => format!(
            "HTTP {status} {}: {}",
            err.get("code").and_then(Value::as_str).unwrap_or("error"),
            err.get("message").and_then(Value::as_str).unwrap_or("")
        ),
        None => format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ),
    }
}

/// Retries are worth a line on stderr only when they last: the first few are routine.
fn say_retry(id: &str, why: &str, wait: Duration) {
    if wait >= Duration::from_secs(1) {
        eprintln!("tally import: {id}: {why}; retrying in {wait:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_names_the_code() {
        assert_eq!(
            error_text(
                400,
                r#"{"error":{"code":"invalid_amount","message":"too many decimals"}}"#
            ),
            "HTTP 400 invalid_amount: too many decimals"
        );
        assert_eq!(error_text(404, "nope"), "HTTP 404: nope");
    }
}
