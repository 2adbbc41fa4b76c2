//! Reads: an account's balance (waiting, bounded, for a `minSeq` when asked: read-your-writes)
//! and what the ledger knows of one transaction id (its record, the conflicting reuses of the
//! id, its dead-lettered copies; or why there is no record).

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use std::time::Duration;
use tokio::time::Instant;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::routes::path_id;
use crate::state::AppState;
use crate::{model, openapi, prefer};

/// Query of `GET /account/{accountId}`. `minSeq` is text here so a bad value is our 400
/// `invalid_min_seq`, not actix's query error.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountQuery {
    /// Wait (bounded) until the account has decided at least this many commands — the `seq` a
    /// `POST /transaction` with `Prefer: wait` answered, or a record's `seq` — then answer. A
    /// non-negative integer, else 400 `invalid_min_seq`.
    #[serde(rename = "minSeq")]
    #[param(rename = "minSeq", value_type = Option<i64>, minimum = 0)]
    min_seq: Option<String>,
}

/// `minSeq` as a sequence number: absent, or a non-negative integer.
fn min_seq(query: &AccountQuery) -> Result<Option<i64>, ApiError> {
    let Some(text) = query.min_seq.as_deref() else {
        return Ok(None);
    };
    match text.parse::<i64>() {
        Ok(n) if n >= 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
        _ => Err(ApiError::bad_request(
            "invalid_min_seq",
            "minSeq",
            "`minSeq` must be a non-negative integer (an account's `seq`)",
        )),
    }
}

/// Between two reads of an account that has not reached `minSeq` yet.
const MIN_SEQ_POLL: Duration = Duration::from_millis(20);

/// `GET /account/{accountId}[?minSeq=N]` → `{"accountId","balance","available","held","seq"}`;
/// zeros for an account never used.
#[utoipa::path(
    tag = "accounts",
    operation_id = "getAccount",
    summary = "Balance of an account",
    description = "Balance, available and held of an account as recorded in PostgreSQL (commands still queued are not reflected yet), and `seq`: how many commands the ledger has decided for it. An account never used answers 200 with zeros. `held` counts only open holds not past their TTL; `available` = `balance` - `held`.\n\n**Read-your-writes**: with `minSeq=N` the answer waits until the account's `seq` is at least N (the `seq` of your own write, as `POST /transaction` with `Prefer: wait` answered it), at most `api.max_prefer_wait_ms` (default 5 s) or less when the request carries `Prefer: wait=<seconds>`. If the account does not get there in time the answer is **409** `min_seq_not_reached` with `Retry-After` (the message says where the account is): nothing is wrong, the command is still queued; retry the same read. A 200 is never older than `minSeq`.",
    params(
        ("account_id" = openapi::Identifier, Path, description = "The account id."),
        AccountQuery,
        ("Prefer" = Option<String>, Header, nullable = false, description = "`wait=<seconds>` (RFC 7240): wait at most this long for `minSeq` (capped by `api.max_prefer_wait_ms`). Ignored without `minSeq`."),
    ),
    responses(
        (status = 200, description = "The account's balances (with `minSeq`: once its `seq` is at least `minSeq`).", body = model::Account, example = json!({"accountId": "acc-1", "balance": 100.5, "available": 70.5, "held": 30, "seq": 4})),
        (status = 400, description = "`invalid_id` (path) or `invalid_min_seq`; `field` names it.", body = model::ErrorBody, example = json!({"error": {"code": "invalid_min_seq", "message": "`minSeq` must be a non-negative integer (an account's `seq`)", "field": "minSeq"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
        (status = 409, description = "Code `min_seq_not_reached`: the account's `seq` stayed below `minSeq` for the whole bounded wait (its command is still queued, or `minSeq` is beyond anything posted). Retry after `Retry-After` seconds.", body = model::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before reading again (`api.retry_after_secs`).")), example = json!({"error": {"code": "min_seq_not_reached", "message": "account \"acc-1\" is at seq 3, below minSeq 5, after waiting 5000 ms: the commands up to that seq are still queued (or were never posted); read again"}})),
    ),
)]
#[get("/account/{account_id}")]
pub async fn get_account(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<AccountQuery>,
) -> Result<HttpResponse, ApiError> {
    let account_id = path.into_inner();
    path_id(&account_id, "accountId")?;
    let min_seq = min_seq(&query)?;
    let cap = Duration::from_millis(state.settings.api.max_prefer_wait_ms);
    // Asked with Prefer: wait, at most that (capped); else the whole cap.
    let wait = match prefer::wait(req.headers()) {
        Some(_) => prefer::wait_capped(req.headers(), cap).unwrap_or_default(),
        None => cap,
    };
    let deadline = Instant::now() + wait;
    loop {
        let view = tally_store::reads::account(&state.pool, &account_id)
            .await
            .map_err(|e| store_error(&state, &e))?;
        let Some(min_seq) = min_seq.filter(|&n| view.seq < n) else {
            return Ok(HttpResponse::Ok().json(model::Account::from(view)));
        };
        if Instant::now() >= deadline {
            return Err(ApiError::NotYet {
                code: "min_seq_not_reached",
                message: format!(
                    "account {account_id:?} is at seq {}, below minSeq {min_seq}, after waiting \
                     {} ms: the commands up to that seq are still queued (or were never posted); \
                     read again",
                    view.seq,
                    wait.as_millis()
                ),
                retry_after_secs: state.settings.api.retry_after_secs,
            });
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + MIN_SEQ_POLL)).await;
    }
}

#[utoipa::path(
    tag = "transactions",
    operation_id = "getTransaction",
    summary = "What the ledger knows of one transaction id",
    description = "The transaction as the worker recorded it, whatever its status, with what else the ledger knows of its id: `conflicts` lists the commands that reused the id with another payload while this one was still queued (they were answered 200 — or 422 to a client waiting with `Prefer: wait` — and had no effect; see README, Idempotency), `deadLetters` the copies of a command with this id that the broker dead-lettered. When an `Idempotency-Key` header was used, the transaction is recorded under that key.\n\nWithout a record the answer is a **404** whose code says what is known:\n- `transaction_dead_lettered`: a command with this id was dead-lettered (the broker set it aside: the worker could never apply it, or it crashed consumers past the delivery limit) and is not applied; `deadLetters` lists it, `republishedAt` says whether an operator has published it again (then it is queued once more and will be decided).\n- `transaction_not_found`: nothing of this id is recorded, conflicted or dead-lettered. The ledger cannot tell \"never accepted\" from \"accepted and still queued\" (the queue cannot be searched by id, and no replica remembers what it accepted), so the message says which it cannot rule out: if you hold a 200 `accepted` for it, it is still queued and will be decided — poll again; if you never got an answer, post it again with the same id (a retry is never a second effect).",
    params(
        ("id" = openapi::Identifier, Path, description = "The transaction id (the idempotency key it was posted with)."),
    ),
    responses(
        (status = 200, description = "The recorded transaction, the conflicting reuses of its id and its dead-lettered copies.", body = model::RecordedTransaction),
        (status = 400, response = openapi::BadPath),
        (status = 404, description = "No record of this id: `transaction_not_found` (unknown to the ledger: never accepted, or still queued) or `transaction_dead_lettered` (with `deadLetters`).", body = model::TransactionNotRecorded, examples(("not_found" = (value = json!({"error": {"code": "transaction_not_found", "message": "no record of id \"t-9\": unknown to the ledger. Either it was never accepted, or it was accepted and is still queued (a 200 for it means it will be decided: read again); if unsure, post it again with the same id"}}))), ("dead_lettered" = (value = json!({"error": {"code": "transaction_dead_lettered", "message": "no record of id \"t-9\": its command was dead-lettered (rejected) and is not applied; an operator may republish it after a fix"}, "deadLetters": [{"id": "5d1c0e", "queue": "tally.shard.3", "routingKey": "3", "reason": "rejected", "detail": "invalid envelope", "messageId": "t-9", "body": "{}", "deadAt": "2024-01-01T00:00:01Z", "archivedAt": "2024-01-01T00:00:02Z", "republishedAt": null}]}))))),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/transactions/{id}")]
pub async fn get_transaction(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    path_id(&id, "id")?;
    let recorded = tally_store::reads::transaction_with_conflicts(&state.pool, &id)
        .await
        .map_err(|e| store_error(&state, &e))?;
    let dead_letters: Vec<model::DeadLetter> =
        tally_store::dead_letters::of_message(&state.pool, &id)
            .await
            .map_err(|e| store_error(&state, &e))?
            .into_iter()
            .map(Into::into)
            .collect();
    match recorded {
        Some((record, conflicts)) => Ok(HttpResponse::Ok().json(model::RecordedTransaction {
            record: record.into(),
            conflicts: conflicts.into_iter().map(Into::into).collect(),
            dead_letters,
        })),
        None => {
            let body = not_recorded(&id, dead_letters);
            Ok(HttpResponse::NotFound()
                .insert_header((crate::error::ERROR_HEADER, body.error.code))
                .json(body))
        }
    }
}

/// The 404 of an id without a record: what the ledger knows of it, and no more.
fn not_recorded(id: &str, dead_letters: Vec<model::DeadLetter>) -> model::TransactionNotRecorded {
    let (code, message) = match dead_letters
        .iter()
        .rev()
        .find(|d| d.republished_at.is_none())
    {
        Some(pending) => (
            "transaction_dead_lettered",
            format!(
                "no record of id {id:?}: its command was dead-lettered ({}) and is not applied; \
                 an operator may republish it after a fix",
                pending.reason
            ),
        ),
        None if !dead_letters.is_empty() => (
            "transaction_dead_lettered",
            format!(
                "no record of id {id:?}: its command was dead-lettered and then republished by \
                 an operator; it is queued again and will be decided, read again"
            ),
        ),
        None => (
            "transaction_not_found",
            format!(
                "no record of id {id:?}: unknown to the ledger. Either it was never accepted, \
                 or it was accepted and is still queued (a 200 for it means it will be decided: \
                 read again); if unsure, post it again with the same id"
            ),
        ),
    };
    model::TransactionNotRecorded {
        error: model::ErrorDetail {
            code,
            message,
            field: None,
        },
        dead_letters,
    }
}

/// A read failed: 503 when the database is unreachable (retry helps), 500 otherwise.
pub fn store_error(state: &AppState, e: &tally_store::StoreError) -> ApiError {
    if e.is_retryable() {
        tracing::warn!(error = %e, "database unavailable");
        state.unavailable("database unavailable, retry later")
    } else {
        ApiError::internal("database", e)
    }
}
