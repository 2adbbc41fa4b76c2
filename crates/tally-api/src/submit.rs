//! The write protocol behind `POST /transaction`: how a validated command reaches the ledger
//! and which answer it may get. Every answer is a promise about the final record (README,
//! "What an answer promises"):
//!
//! - 200 `accepted` (deposit, withdraw): a copy is in the shard queue (confirmed by the broker,
//!   perhaps after republishing it to settle an unknown outcome); it will be decided once.
//! - 201 / 402 (withdraw_request): the record is and stays approved / denied.
//! - 503 `unavailable`: surely nothing reached a queue (see
//!   [`tally_bus::PublishError::surely_not_accepted`]); no effect, ever.
//! - 503 `outcome_unknown`: it may be in a queue; a retry with the same id, or
//!   `GET /transactions/{id}`, tells the truth.
//!
//! The withdraw_request rules that keep its first answer final:
//! - 201 only from the worker's reply to this attempt's own copy, which the queue orders behind
//!   every void confirmed before it was published, or from a record this very attempt's copy
//!   decided. An approval read from the database that another attempt decided may still be
//!   voided by that attempt: it is never answered 201 from the read.
//! - 402 from any denied record or reply: nothing turns a denial into an approval.
//! - With no decision by the deadline, the attempt voids itself: the void is confirmed by the
//!   broker before the 402 `deadline_exceeded` goes out, and the worker then records the denial
//!   (releasing the hold of a late approval). An attempt that saw the request approved never
//!   voids it (another attempt may have answered 201): it answers `outcome_unknown` instead.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use std::time::Duration;
use tally_bus::{command_properties, PublishError, Topology};
use tally_core::amount::money_json;
use tally_core::command::NewTransaction;
use tally_core::{Envelope, Outcome, OutcomeStatus};
use tally_store::reads::TransactionRecord;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::ApiError;
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

/// A deposit or withdraw: answered from its record when it is already decided, else published
/// (settled) and answered 200 once a copy is surely in the shard queue.
pub async fn accept(
    state: &AppState,
    tx: &NewTransaction,
    request_id: &str,
) -> Result<HttpResponse, ApiError> {
    // A retry of a decided id is answered from the record, without publishing again. If the
    // database is unreachable we publish anyway: the worker dedupes in-flight copies.
    match tally_store::reads::transaction(&state.pool, &tx.id).await {
        Ok(Some(record)) => return replay_accepted(tx, &record),
        Ok(None) => {}
        Err(e) => tracing::warn!(id = %tx.id, error = %e, "idempotency pre-check skipped"),
    }
    crate::routes::users::check_owner(state, &tx.account_id, tx.user_id.as_deref()).await?;
    let shard = admit(state, tx)?;
    let envelope = Envelope::new(tx, Utc::now());
    let api = &state.settings.api;
    let settle_by = Instant::now()
        + Duration::from_millis(api.publish_timeout_ms)
        + Duration::from_millis(api.settle_timeout_ms);
    state
        .publisher
        .publish_settled(
            &Topology::routing_key(shard),
            &envelope.encode(),
            command_properties(&tx.id, request_id),
            settle_by,
        )
        .await
        .map_err(|e| publish_failed(state, &tx.id, &e))?;
    Ok(HttpResponse::Ok().json(Accepted {
        id: &tx.id,
        account_id: &tx.account_id,
        kind: tx.kind.as_str(),
        amount: tx.amount,
        // The envelope's time (to the microsecond, like the record's): a replayed answer shows
        // the same instant.
        status: "accepted",
        accepted_at: envelope.accepted_at,
    }))
}

/// What one withdraw_request attempt knows of its record.
enum Seen {
    /// Decided (or the id is reused), and safe to answer now.
    Final(Result<HttpResponse, ApiError>),
    /// Approved by another attempt: this one may not answer 201 from it, nor void it.
    ApprovedElsewhere,
    Nothing,
}

/// A withdraw_request: published to the account's shard and answered with the worker's
/// decision within `wait` (the module doc gives the rules that keep the answer final).
pub async fn request(
    state: &AppState,
    tx: &NewTransaction,
    request_id: &str,
    wait: Duration,
) -> Result<HttpResponse, ApiError> {
    let deadline = Instant::now() + wait;
    let mut seen_approved = false;
    match tally_store::reads::transaction(&state.pool, &tx.id).await {
        Ok(Some(record)) => {
            if record.fingerprint != tx.fingerprint() {
                return Err(ApiError::IdReused);
            }
            if record.status != OutcomeStatus::Approved.as_str() {
                return Ok(replay_decided(&record));
            }
            // A void of an earlier attempt may still be queued: the answer comes from the
            // worker, in queue order, behind it.
            seen_approved = true;
        }
        Ok(None) => {}
        // The ledger cannot decide while the database is away, and a retry of a decided
        // request must get its first answer back, not a guess: nothing is published.
        Err(e) => {
            tracing::warn!(id = %tx.id, error = %e, "database unavailable for a withdraw_request");
            return Err(state.unavailable(
                "the ledger cannot decide withdraw requests right now; nothing was accepted, retry with the same id",
            ));
        }
    }
    if !seen_approved {
        crate::routes::users::check_owner(state, &tx.account_id, tx.user_id.as_deref()).await?;
    }
    let shard = admit(state, tx)?;
    let db_now = trusted_db_now(state)?;

    let mut envelope = Envelope::new(tx, Utc::now());
    // The worker judges this instant with PostgreSQL's clock; it must decide early enough for
    // its commit and reply to reach us before we stop waiting.
    let margin = Duration::from_millis(state.settings.ledger.decision_margin_ms);
    envelope.decide_by =
        Some(db_now + chrono::Duration::from_std(wait.saturating_sub(margin)).unwrap_or_default());
    let routing_key = Topology::routing_key(shard);
    let reply_by = deadline - LAST_LOOK;
    let reply = state
        .publisher
        .request(
            &routing_key,
            &envelope.encode(),
            command_properties(&tx.id, request_id),
            reply_by,
            reply_by,
        )
        .await;
    match reply {
        Err(e) if e.surely_not_accepted() => return Err(publish_failed(state, &tx.id, &e)),
        // It may be in the queue: from here on it is treated like a request without reply.
        Err(e) => tracing::warn!(id = %tx.id, error = %e, "withdraw_request publish unsettled"),
        Ok(Some(bytes)) => match serde_json::from_slice::<Outcome>(&bytes) {
            Ok(outcome) if outcome.status == OutcomeStatus::IdReused => {
                return Err(ApiError::IdReused)
            }
            Ok(outcome) => {
                return Ok(decided(
                    tx,
                    outcome.status,
                    outcome.hold_id,
                    outcome.reason.as_deref(),
                ))
            }
            Err(e) => tracing::error!(id = %tx.id, error = %e, "undecodable reply"),
        },
        // The reply queue can die with the broker connection before the deadline: the
        // decision may still be recorded in time, so look for it until the deadline.
        Ok(None) => match recorded_before(state, tx, &envelope, reply_by).await {
            Seen::Final(answer) => return answer,
            Seen::ApprovedElsewhere => seen_approved = true,
            Seen::Nothing => {}
        },
    }
    // A last, bounded look: the decision may have been committed while the reply was lost.
    let last_look = tokio::time::timeout(
        LAST_LOOK,
        tally_store::reads::transaction(&state.pool, &tx.id),
    )
    .await;
    if let Ok(Ok(Some(record))) = &last_look {
        match judge(tx, &envelope, record) {
            Seen::Final(answer) => return answer,
            Seen::ApprovedElsewhere => seen_approved = true,
            Seen::Nothing => {}
        }
    }
    if seen_approved {
        return Err(outcome_unknown(
            state,
            "the request was approved by an earlier attempt whose answer is not known here; \
             retry with the same id or read GET /transactions/{id}",
        ));
    }
    void(state, &routing_key, &envelope, request_id).await
}

/// Voids this attempt (the worker records the request denied, releasing a late approval's
/// hold) and answers 402 `deadline_exceeded` once the broker confirmed the void. If the void
/// cannot be confirmed, the request may still be in the queue unanswered: outcome unknown.
async fn void(
    state: &AppState,
    routing_key: &str,
    envelope: &Envelope,
    request_id: &str,
) -> Result<HttpResponse, ApiError> {
    let settle_by = Instant::now() + Duration::from_millis(state.settings.api.settle_timeout_ms);
    let published = state
        .publisher
        .publish_settled(
            routing_key,
            &envelope.void().encode(),
            command_properties(&envelope.id, request_id),
            settle_by,
        )
        .await;
    match published {
        Ok(()) => Ok(
            HttpResponse::build(StatusCode::PAYMENT_REQUIRED).json(Decided {
                id: &envelope.id,
                account_id: &envelope.account_id,
                amount: envelope.amount,
                status: "denied",
                hold_id: None,
                reason: Some(DEADLINE_EXCEEDED),
            }),
        ),
        Err(e) => {
            tracing::warn!(id = %envelope.id, error = %e, "void not confirmed");
            Err(outcome_unknown(
                state,
                "no decision in time and the request could not be withdrawn; retry with the \
                 same id or read GET /transactions/{id}",
            ))
        }
    }
}

const DEADLINE_EXCEEDED: &str = "deadline_exceeded";

/// How an attempt may answer from a record of its id.
fn judge(tx: &NewTransaction, envelope: &Envelope, record: &TransactionRecord) -> Seen {
    if record.fingerprint != tx.fingerprint() {
        return Seen::Final(Err(ApiError::IdReused));
    }
    if record.status != OutcomeStatus::Approved.as_str() {
        return Seen::Final(Ok(replay_decided(record)));
    }
    // Approved by this attempt's own copy: no other attempt can have been told otherwise.
    if record.accepted_at == envelope.accepted_at {
        Seen::Final(Ok(replay_decided(record)))
    } else {
        Seen::ApprovedElsewhere
    }
}

/// Polls the ledger for the record of the request until `deadline` (returns at once if it
/// passed).
async fn recorded_before(
    state: &AppState,
    tx: &NewTransaction,
    envelope: &Envelope,
    deadline: Instant,
) -> Seen {
    while Instant::now() < deadline {
        if let Ok(Some(record)) = tally_store::reads::transaction(&state.pool, &tx.id).await {
            return judge(tx, envelope, &record);
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + POLL)).await;
    }
    Seen::Nothing
}

const POLL: Duration = Duration::from_millis(50);

/// Bound of the last record lookup of a withdraw_request that got no reply; the reply wait
/// ends this much before the deadline so the answer still comes within it.
const LAST_LOOK: Duration = Duration::from_millis(100);

/// The shard of the command, unless its backlog is over the admission threshold (503: nothing
/// was published).
fn admit(state: &AppState, tx: &NewTransaction) -> Result<u16, ApiError> {
    let shard = state.publisher.topology().shard_of(&tx.account_id);
    if state.admission.overloaded(tx.kind, shard) {
        tracing::warn!(id = %tx.id, shard, "shard backlog over the admission threshold; answering 503");
        return Err(state.unavailable(
            "the account's shard is too far behind to take this now; nothing was accepted, retry later with the same id",
        ));
    }
    Ok(shard)
}

/// PostgreSQL's time now as this replica estimates it, when its clock is known to be close
/// enough to decide on (`ledger.max_clock_skew_ms`); else a withdraw_request is refused rather
/// than given a decide-by instant that may be wrong.
fn trusted_db_now(state: &AppState) -> Result<DateTime<Utc>, ApiError> {
    let max = Duration::from_millis(state.settings.ledger.max_clock_skew_ms);
    match state.clock.reading() {
        Some(reading) if reading.worst_skew() <= max => Ok(Utc::now() + reading.offset),
        reading => {
            tracing::warn!(
                ?reading,
                "clock too far from PostgreSQL's (or unknown): refusing a withdraw_request"
            );
            Err(state.unavailable(
                "this replica's clock cannot be checked against the ledger's right now; nothing was accepted, retry with the same id",
            ))
        }
    }
}

/// Answers a retry of a deposit or withdraw from its record: same 200, never a second effect.
fn replay_accepted(
    tx: &NewTransaction,
    record: &TransactionRecord,
) -> Result<HttpResponse, ApiError> {
    if record.fingerprint != tx.fingerprint() {
        return Err(ApiError::IdReused);
    }
    Ok(HttpResponse::Ok().json(Accepted {
        id: &record.id,
        account_id: &record.account_id,
        kind: &record.kind,
        amount: record.amount,
        status: "accepted",
        accepted_at: record.accepted_at,
    }))
}

/// The 201/402 a decided withdraw_request record stands for.
fn replay_decided(record: &TransactionRecord) -> HttpResponse {
    let status = OutcomeStatus::parse(&record.status).unwrap_or(OutcomeStatus::Denied);
    decided_body(
        &record.id,
        &record.account_id,
        record.amount,
        status,
        record.hold_id,
        record.reason.as_deref(),
    )
}

fn decided(
    tx: &NewTransaction,
    status: OutcomeStatus,
    hold_id: Option<Uuid>,
    reason: Option<&str>,
) -> HttpResponse {
    decided_body(&tx.id, &tx.account_id, tx.amount, status, hold_id, reason)
}

/// 201 with the hold, or 402 with the reason and no hold (a denied request holds nothing,
/// even when a late approval's released hold is linked to its record).
fn decided_body(
    id: &str,
    account_id: &str,
    amount: Decimal,
    status: OutcomeStatus,
    hold_id: Option<Uuid>,
    reason: Option<&str>,
) -> HttpResponse {
    let approved = status == OutcomeStatus::Approved;
    let code = if approved {
        StatusCode::CREATED
    } else {
        StatusCode::PAYMENT_REQUIRED
    };
    HttpResponse::build(code).json(Decided {
        id,
        account_id,
        amount,
        status: if approved { "approved" } else { "denied" },
        hold_id: hold_id.filter(|_| approved),
        reason: if approved { None } else { reason },
    })
}

/// 503 `unavailable` when the message surely never reached a queue, else 503
/// `outcome_unknown`: the broker may have it.
fn publish_failed(state: &AppState, id: &str, e: &PublishError) -> ApiError {
    if e.surely_not_accepted() {
        tracing::warn!(%id, error = %e, "publish failed; answering 503 unavailable");
        state.unavailable(
            "the broker did not accept the transaction; nothing was accepted, retry with the same id",
        )
    } else {
        tracing::warn!(%id, error = %e, "publish outcome unknown; answering 503 outcome_unknown");
        outcome_unknown(
            state,
            "the broker may or may not have accepted the transaction; retry with the same id or \
             read GET /transactions/{id}",
        )
    }
}

fn outcome_unknown(state: &AppState, message: &'static str) -> ApiError {
    ApiError::OutcomeUnknown {
        message,
        retry_after_secs: state.settings.api.retry_after_secs,
    }
}
