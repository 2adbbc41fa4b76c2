//! `POST /transaction`: validate, then hand the command to the write protocol
//! ([`crate::submit`]): a deposit or withdraw is answered once it is surely in its shard queue,
//! a withdraw_request once the shard's worker decided it (under a deadline).

use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use actix_web::{post, web, HttpRequest, HttpResponse};
use std::time::Duration;
use tally_core::command::NewTransaction;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::observe::RequestId;
use crate::routes::body::{idempotency_key, json_object};
use crate::routes::users::owned_by_another_error;
use crate::state::AppState;
use crate::submit::{self, Answer};
use crate::{model, openapi, prefer};

#[utoipa::path(
    tag = "transactions",
    operation_id = "postTransaction",
    summary = "Post a deposit, a withdraw or a withdraw_request",
    description = "Validates the body, then publishes the command to the account's shard queue.\n\n- `deposit`, `withdraw`: answered **200** `accepted` once RabbitMQ confirmed the persistent message; the worker applies it shortly after (see `GET /transactions/{id}`). A withdraw is applied even into a negative balance (money already left) unless the `reject_overdraft` policy is configured, in which case it is recorded as `rejected`. A withdraw captures the open hold named by `requestId`, else the oldest open hold of the same amount.\n- `withdraw_request`: the shard's worker decides it against `balance - held` and, when approved, places a hold that counts against `available` until a withdraw captures it or its TTL (`ledger.hold_ttl_secs`) passes. Answered **201** `approved` or **402** `denied` within the deadline (`ledger.request_deadline_ms`, default 3 s, counted from nginx's arrival). When no decision arrives in time, the API withdraws the request (a *void* on the same shard queue) and answers 402 `deadline_exceeded` only once the broker confirmed that void: the ledger then records the denial, releasing the hold of an approval that came too late. Every answer is final: a retry gets the same one. A 201 is given only from the worker's decision in queue order, so never for an approval a queued void can still deny; an attempt that saw the request approved by another attempt never voids it (it answers 503 `outcome_unknown` if its own decision does not come). If the void itself cannot be confirmed (broker trouble), the answer is 503 `outcome_unknown`, possibly a little after the deadline (at most `api.settle_timeout_ms` more). Withdraw requests are refused with 503 `unavailable` while the replica's clock is unknown or further than `ledger.max_clock_skew_ms` from PostgreSQL's (see `GET /status`).\n\n**Read-your-writes on request**: a deposit or withdraw posted with `Prefer: wait=<seconds>` is answered, when the worker decides it within that wait (capped by `api.max_prefer_wait_ms`), with its record — status `applied` or `rejected`, `seq` (the account's sequence after it: read the account with `GET /account/{id}?minSeq=<seq>`) and `balanceAfter` — and the header `Preference-Applied: wait`; a conflicting reuse of a still-queued id gets its 422 `id_reused`. The answer is read from the ledger's record after the worker's reply, never built from the reply. Without a decision in time the answer is the ordinary 200 `accepted` without `Preference-Applied`: the command is in its queue and will be decided. If the replica dies while the client waits, the client sees a broken connection (through nginx: another replica answers the replayed POST): retrying with the same id is never a second effect and gets the record once it is decided.\n\nIdempotency: the body's `id` is the idempotency key unless an `Idempotency-Key` header is given (then the header is the key, and the body's `id` becomes part of the payload). Repeating a key with the same payload returns the first outcome again (200 stays 200, 201 stays 201 with the same `holdId`, 402 stays 402) and never has a second effect. Repeating it with a different payload is a **422** `id_reused`. The payload compared is: type, accountId, amount (as a decimal value: `10.5` and `\"10.50\"` are the same), requestId, userId, the body `id` when a header key is used, and `timestamp` when one was sent.\n\nA **503** `unavailable` means the command surely reached no queue (no broker connection, the channel refused it, the broker could not route it, the account's shard is shedding load, or the database or clock a withdraw_request needs is unavailable): nothing was accepted, retry with the same id after `Retry-After` seconds. When the command was sent but its confirm did not come (`api.publish_timeout_ms`) or the broker nacked it (a quorum queue that lost a member may still hold it), the API publishes the same message again until a copy is confirmed (the worker dedupes by id) and then answers as usual; if that does not happen within `api.settle_timeout_ms`, the answer is **503** `outcome_unknown`: it may have been accepted, retry with the same id or read `GET /transactions/{id}`.",
    params(
        ("Idempotency-Key" = Option<openapi::Identifier>, Header, nullable = false, description = "Overrides the body's `id` as the idempotency key (IETF Idempotency-Key draft). The transaction is then recorded and answered under this key. An invalid value is a 400 `invalid_idempotency_key`."),
        ("Prefer" = Option<String>, Header, nullable = false, description = "`wait=<seconds>` (RFC 7240): for a deposit or withdraw, wait (at most this long, capped by `api.max_prefer_wait_ms`, default 5 s) for the worker's decision and answer with the record. Other preferences, and a `wait` whose value is not a whole number of seconds, are ignored; `wait=0` is no wait. A withdraw_request always waits for its decision (under its own deadline) and ignores it."),
        ("X-Request-Id" = Option<String>, Header, nullable = false, description = "Tracing id carried with the command through the broker into the worker's log lines. Used only when it is a valid identifier; otherwise a fresh UUID is generated. Never a reason for an error. Every answer echoes the id in use in its own `X-Request-Id` header."),
    ),
    request_body(content = model::NewTransaction, description = "A JSON object, at most `api.max_body_bytes` bytes (default 65536). It is parsed whatever the Content-Type. Unknown fields are ignored; `null` counts as absent.", examples(("deposit" = (value = json!({"id": "t-1", "type": "deposit", "amount": 100.5, "accountId": "acc-1", "timestamp": "2024-01-01T00:00:00Z"}))), ("withdrawRequest" = (value = json!({"id": "r-1", "type": "withdraw_request", "amount": "30", "accountId": "acc-1"}))), ("withdrawCapturingRequest" = (value = json!({"id": "w-1", "type": "withdraw", "amount": "30.00", "accountId": "acc-1", "requestId": "r-1"}))))),
    responses(
        (status = 200, description = "deposit or withdraw accepted: the broker confirmed the persistent message (`Accepted`). Also the replay of an accepted id. With `Prefer: wait` and a decision in time: the transaction's record (`TransactionRecord`, status `applied` or `rejected`, with `seq` and `balanceAfter`) and the header `Preference-Applied: wait`.", body = model::Posted, headers(("Preference-Applied" = String, description = "`wait` when the body is the decided record (the request's `Prefer: wait` was honoured); absent otherwise."))),
        (status = 201, description = "withdraw_request approved: a hold of `amount` was placed. Also the replay of an approved id.", body = model::WithdrawApproved),
        (status = 400, description = "Invalid request; nothing was published. Codes: `invalid_json` (malformed JSON or not an object), `body_too_large`, `invalid_body`, `missing_field`, `invalid_id`, `invalid_type`, `invalid_amount`, `invalid_timestamp`, `invalid_field` (`requestId` on anything but a withdraw), `invalid_idempotency_key`.", body = model::ErrorBody, example = json!({"error": {"code": "invalid_amount", "message": "`amount` must have at most 2 decimal places", "field": "amount"}})),
        (status = 402, description = "withdraw_request denied: no hold was placed. Also the replay of a denied id.", body = model::WithdrawDenied),
        (status = 422, description = "The idempotency key (body `id` or `Idempotency-Key`) was already used with another payload; nothing was done. Code `id_reused` (with `Prefer: wait`, also when the other payload was still queued when this one was posted: the worker found the id taken and recorded this one as a conflict, without effect). Also 422 `account_owned_by_another_user` when the body's `userId` is not the owner of the account (see `PUT /users/{userId}/accounts/{accountId}`); nothing was published.", body = model::ErrorBody, example = json!({"error": {"code": "id_reused", "message": "this id was already used for a transaction with another payload"}})),
        (status = 503, description = "Code `unavailable`: nothing was accepted (see above); retry with the same id. Code `outcome_unknown`: the command may have been accepted; retry with the same id or read `GET /transactions/{id}`.", body = model::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying (`api.retry_after_secs`, default 1).")), examples(("unavailable" = (value = json!({"error": {"code": "unavailable", "message": "the broker did not accept the transaction; nothing was accepted, retry with the same id"}}))), ("outcome_unknown" = (value = json!({"error": {"code": "outcome_unknown", "message": "the broker may or may not have accepted the transaction; retry with the same id or read GET /transactions/{id}"}}))))),
    ),
)]
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
    tx.key_name = Caller::name_of(&req);
    let ledger = &state.settings.ledger;
    let wait = deadline_budget(
        req.headers(),
        Duration::from_millis(ledger.request_deadline_ms),
        Duration::from_millis(ledger.decision_margin_ms) + MIN_DECISION_TIME,
    );
    let prefer_wait = prefer::wait_capped(
        req.headers(),
        Duration::from_millis(state.settings.api.max_prefer_wait_ms),
    );
    match submit::submit(&state, &tx, &RequestId::of(&req), wait, prefer_wait).await {
        Answer::Accepted(receipt) | Answer::Replayed(receipt) => {
            Ok(HttpResponse::Ok().json(model::Accepted::from(receipt)))
        }
        Answer::Decided(record) => Ok(HttpResponse::Ok()
            .insert_header((prefer::PREFERENCE_APPLIED, "wait"))
            .json(model::TransactionRecord::from(*record))),
        Answer::Approved(decision) => {
            Ok(HttpResponse::Created().json(model::WithdrawApproved::from(decision)))
        }
        Answer::Denied(decision) => Ok(HttpResponse::build(StatusCode::PAYMENT_REQUIRED)
            .json(model::WithdrawDenied::from(decision))),
        Answer::IdReused => Err(ApiError::IdReused),
        Answer::OwnedByAnother => Err(owned_by_another_error(&tx.account_id)),
        Answer::Unavailable(message) => Err(state.unavailable(message)),
        Answer::OutcomeUnknown(message) => Err(state.outcome_unknown(message)),
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
/// a start in the future (clock skew) counts as now. This compares nginx's clock with this
/// host's; the clamp bounds what any skew between them can do: the wait stays between `floor`
/// and `full`, and the decision itself is judged on PostgreSQL's clock (see [`crate::submit`]).
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
