//! `POST /transaction`: validate, answer a retry from the recorded outcome, else publish to
//! the account's shard and answer once RabbitMQ confirmed (deposit, withdraw) or once the
//! shard's worker decided (withdraw_request, under a deadline).

use actix_web::http::{header::HeaderMap, StatusCode};
use actix_web::{post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use std::time::Duration;
use tally_bus::{command_properties, PublishError, Topology};
use tally_core::amount::money_json;
use tally_core::command::NewTransaction;
use tally_core::{validate_id, Envelope, Kind, Outcome, OutcomeStatus};
use tally_store::reads::TransactionRecord;
use uuid::Uuid;

use crate::error::ApiError;
use crate::observe::RequestId;
use crate::routes::body::json_object;
use crate::state::AppState;

/// 200 body of a deposit or withdraw.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted<'a> {
    id: &'a str,
    account_id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(with = "money_json")]
    amount: Decimal,
    status: &'static str,
    accepted_at: DateTime<Utc>,
}

/// 201/402 body of a withdraw_request.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Decided<'a> {
    id: &'a str,
    account_id: &'a str,
    #[serde(with = "money_json")]
    amount: Decimal,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[post("/transaction")]
pub async fn post_transaction(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let fields = json_object(payload, state.settings.api.max_body_bytes).await?;
    let mut tx = NewTransaction::from_json(&fields, &state.amount_rules)?;
    if let Some(key) = idempotency_key(req.headers())? {
        tx = tx.with_idempotency_key(key);
    }

    // A retry of a decided id is answered from the record, without publishing again. If the
    // database is unreachable we publish anyway: the worker dedupes in-flight copies.
    match tally_store::reads::transaction(&state.pool, &tx.id).await {
        Ok(Some(record)) => return replay(&tx, &record),
        Ok(None) => {}
        // A withdraw_request cannot be decided while the database is away (the worker cannot
        // commit), and a retry of a decided one must get its first answer back, not a guess:
        // nothing is published, the client retries with the same id.
        Err(e) if tx.kind == Kind::WithdrawRequest => {
            tracing::warn!(id = %tx.id, error = %e, "database unavailable for a withdraw_request");
            return Err(state.unavailable(
                "the ledger cannot decide withdraw requests right now; nothing was accepted, retry with the same id",
            ));
        }
        Err(e) => tracing::warn!(id = %tx.id, error = %e, "idempotency pre-check skipped"),
    }
    // After the replay: a retry of a recorded transaction gets its first answer back.
    crate::routes::users::check_owner(&state, &tx.account_id, tx.user_id.as_deref()).await?;

    let shard = state.publisher.topology().shard_of(&tx.account_id);
    if state.admission.overloaded(tx.kind, shard) {
        tracing::warn!(id = %tx.id, shard, "shard backlog over the admission threshold; answering 503");
        return Err(state.unavailable(
            "the account's shard is too far behind to take this now; nothing was accepted, retry later with the same id",
        ));
    }
    let mut envelope = Envelope::new(&tx, Utc::now());
    // The envelope's time (to the microsecond, like the record's): a replayed answer shows
    // the same instant.
    let accepted_at = envelope.accepted_at;
    let routing_key = Topology::routing_key(shard);
    let request_id = RequestId::of(&req);
    let properties = command_properties(&tx.id, &request_id);

    if tx.kind != Kind::WithdrawRequest {
        state
            .publisher
            .publish(&routing_key, &envelope.encode(), properties)
            .await
            .map_err(|e| publish_failed(&state, &tx.id, e))?;
        return Ok(HttpResponse::Ok().json(Accepted {
            id: &tx.id,
            account_id: &tx.account_id,
            kind: tx.kind.as_str(),
            amount: tx.amount,
            status: "accepted",
            accepted_at,
        }));
    }

    let ledger = &state.settings.ledger;
    let decision_margin = Duration::from_millis(ledger.decision_margin_ms);
    let wait = deadline_budget(
        req.headers(),
        Duration::from_millis(ledger.request_deadline_ms),
        decision_margin + MIN_DECISION_TIME,
    );
    let deadline = tokio::time::Instant::now() + wait;
    // Stop waiting for the reply a little early: the last look below must fit the deadline.
    let reply_deadline = deadline - LAST_LOOK;
    // The worker must decide before the API stops waiting, with room for commit and reply.
    let margin = chrono::Duration::from_std(wait.saturating_sub(decision_margin))
        .unwrap_or(chrono::Duration::zero());
    envelope.decide_by = Some(accepted_at + margin);
    let reply = state
        .publisher
        .request(&routing_key, &envelope.encode(), properties, reply_deadline)
        .await
        .map_err(|e| publish_failed(&state, &tx.id, e))?;
    let outcome = reply.and_then(|bytes| match serde_json::from_slice::<Outcome>(&bytes) {
        Ok(outcome) => Some(outcome),
        Err(e) => {
            tracing::error!(id = %tx.id, error = %e, "undecodable reply");
            None
        }
    });
    match outcome {
        Some(outcome) if outcome.status == OutcomeStatus::IdReused => Err(ApiError::IdReused),
        Some(outcome) => Ok(decided(
            &tx.id,
            &tx.account_id,
            tx.amount,
            outcome.status,
            outcome.hold_id,
            outcome.reason.as_deref(),
        )),
        None => {
            // The reply queue can die with the broker connection before the deadline: the
            // decision may still be recorded in time, so look for it until the deadline.
            if let Some(record) = recorded_before(&state, &tx.id, reply_deadline).await {
                return replay(&tx, &record);
            }
            // A last, bounded look: another attempt with this id may have been decided while
            // this copy's batch was stuck (its answer is the answer), or nothing is recorded.
            let last_look = tokio::time::timeout(
                LAST_LOOK,
                tally_store::reads::transaction(&state.pool, &tx.id),
            )
            .await;
            if let Ok(Ok(Some(record))) = &last_look {
                return replay(&tx, record);
            }
            // From here on this attempt answers without a decision: its void makes sure it
            // approves nothing, whenever the worker gets to it.
            void_in_background(&state, routing_key, envelope.void(), request_id);
            match last_look {
                Ok(Ok(_)) => Ok(decided(
                    &tx.id,
                    &tx.account_id,
                    tx.amount,
                    OutcomeStatus::Denied,
                    None,
                    Some("deadline_exceeded"),
                )),
                // The ledger cannot be asked: no outcome can be promised. The void makes sure
                // this attempt approves nothing; a retry with the same id gets the record.
                _ => Err(state.unavailable(
                    "no decision in time and the ledger cannot be read; retry with the same id",
                )),
            }
        }
    }
}

/// The least time a withdraw_request is given past its decision margin, however late a retry
/// arrives: enough for a worker to decide it.
const MIN_DECISION_TIME: Duration = Duration::from_millis(500);

/// How long this replica may wait for a withdraw_request's decision: what is left of the
/// deadline since nginx received the request (`X-Request-Start: t=<unix seconds>`, set by
/// `nginx/*.conf`), never less than `floor`, never more than `full`. When a replica dies while
/// a request waits, nginx retries it on another replica: counted from the first arrival, the
/// client waits about one deadline, not two. Without the header (direct calls) it is `full`;
/// a start in the future (clock skew) counts as now.
fn deadline_budget(headers: &HeaderMap, full: Duration, floor: Duration) -> Duration {
    let started = headers
        .get("x-request-start")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("t="))
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t > 0.0);
    let Some(started) = started else {
        return full;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let elapsed = (now - started).clamp(0.0, full.as_secs_f64());
    full.saturating_sub(Duration::from_secs_f64(elapsed))
        .max(floor)
        .min(full)
}

/// Polls the ledger for the record of `id` until `deadline` (returns at once if it passed).
async fn recorded_before(
    state: &AppState,
    id: &str,
    deadline: tokio::time::Instant,
) -> Option<TransactionRecord> {
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(record)) = tally_store::reads::transaction(&state.pool, id).await {
            return Some(record);
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)).await;
    }
    None
}

const POLL: Duration = Duration::from_millis(50);

/// Bound of the last record lookup of a withdraw_request that got no reply; the reply wait
/// ends this much before the deadline so the answer still comes within it.
const LAST_LOOK: Duration = Duration::from_millis(100);

/// Publishes the void of a withdraw_request the API answered "deadline_exceeded" for,
/// retrying for a while: if the worker approved it too late, the void releases the hold so
/// the ledger says what the client was told. The answer does not wait for it.
fn void_in_background(state: &AppState, routing_key: String, void: Envelope, request_id: String) {
    let publisher = state.publisher.clone();
    tokio::spawn(async move {
        let body = void.encode();
        let mut backoff = Duration::from_millis(100);
        for _ in 0..10 {
            let props = command_properties(&void.id, &request_id);
            match publisher.publish(&routing_key, &body, props).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(id = %void.id, error = %e, "void not published yet"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        tracing::error!(id = %void.id, "gave up publishing a void: if the worker approved this \
            request, its hold stays until it expires although the client was told denied");
    });
}

/// Answers a retry from the recorded outcome: same status, same hold, never a second effect.
fn replay(tx: &NewTransaction, record: &TransactionRecord) -> Result<HttpResponse, ApiError> {
    if record.fingerprint != tx.fingerprint() {
        return Err(ApiError::IdReused);
    }
    if tx.kind != Kind::WithdrawRequest {
        return Ok(HttpResponse::Ok().json(Accepted {
            id: &record.id,
            account_id: &record.account_id,
            kind: &record.kind,
            amount: record.amount,
            status: "accepted",
            accepted_at: record.accepted_at,
        }));
    }
    let status = OutcomeStatus::parse(&record.status).unwrap_or(OutcomeStatus::Denied);
    Ok(decided(
        &record.id,
        &record.account_id,
        record.amount,
        status,
        record.hold_id,
        record.reason.as_deref(),
    ))
}

fn decided(
    id: &str,
    account_id: &str,
    amount: Decimal,
    status: OutcomeStatus,
    hold_id: Option<Uuid>,
    reason: Option<&str>,
) -> HttpResponse {
    let (code, word) = if status == OutcomeStatus::Approved {
        (StatusCode::CREATED, "approved")
    } else {
        (StatusCode::PAYMENT_REQUIRED, "denied")
    };
    HttpResponse::build(code).json(Decided {
        id,
        account_id,
        amount,
        status: word,
        hold_id,
        reason: if status == OutcomeStatus::Approved {
            None
        } else {
            reason
        },
    })
}

fn publish_failed(state: &AppState, id: &str, e: PublishError) -> ApiError {
    tracing::warn!(%id, error = %e, "publish failed; answering 503");
    state.unavailable(
        "the broker did not accept the transaction; nothing was accepted, retry with the same id",
    )
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("\u{0}");
    validate_id(key).map_err(|e| {
        ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key",
            format!("`Idempotency-Key` {e}"),
        )
    })?;
    Ok(Some(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::deadline_budget;
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn started(ago: Duration) -> HeaderMap {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - ago;
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-request-start"),
            HeaderValue::from_str(&format!("t={:.3}", t.as_secs_f64())).unwrap(),
        );
        headers
    }

    #[test]
    fn a_retry_gets_what_is_left_of_the_deadline_since_nginx_received_it() {
        let (full, floor) = (Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(deadline_budget(&HeaderMap::new(), full, floor), full);
        // 1.2 s ago (the header keeps milliseconds, so allow for the rounding).
        let left = deadline_budget(&started(Duration::from_millis(1200)), full, floor);
        assert!(
            left <= Duration::from_millis(1810) && left > Duration::from_millis(1500),
            "{left:?}"
        );
        // Late retries still get the floor; a start in the future counts as now.
        assert_eq!(
            deadline_budget(&started(Duration::from_secs(10)), full, floor),
            floor
        );
        let mut future = HeaderMap::new();
        future.insert(
            HeaderName::from_static("x-request-start"),
            HeaderValue::from_static("t=99999999999.000"),
        );
        assert_eq!(deadline_budget(&future, full, floor), full);
        let mut junk = HeaderMap::new();
        junk.insert(
            HeaderName::from_static("x-request-start"),
            HeaderValue::from_static("t=NaN"),
        );
        assert_eq!(deadline_budget(&junk, full, floor), full);
    }
}
