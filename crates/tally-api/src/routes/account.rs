//! Reads: an account's balance and one transaction's recorded outcome.

use actix_web::{get, web, HttpResponse};

use crate::error::ApiError;
use crate::routes::path_id;
use crate::state::AppState;
use crate::{model, openapi};

/// `GET /account/{accountId}` → `{"accountId","balance","available","held"}`; zeros for an
/// account never used.
#[utoipa::path(
    tag = "accounts",
    operation_id = "getAccount",
    summary = "Balance of an account",
    description = "Balance, available and held of an account as recorded in PostgreSQL (commands still queued are not reflected yet). An account never used answers 200 with zeros. `held` counts only open holds not past their TTL; `available` = `balance` - `held`.",
    params(
        ("account_id" = openapi::Identifier, Path, description = "The account id."),
    ),
    responses(
        (status = 200, description = "The account's balances.", body = model::Account, example = json!({"accountId": "acc-1", "balance": 100.5, "available": 70.5, "held": 30})),
        (status = 400, response = openapi::BadPath),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/account/{account_id}")]
pub async fn get_account(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account_id = path.into_inner();
    path_id(&account_id, "accountId")?;
    let view = tally_store::reads::account(&state.pool, &account_id)
        .await
        .map_err(|e| store_error(&state, &e))?;
    Ok(HttpResponse::Ok().json(model::Account::from(view)))
}

#[utoipa::path(
    tag = "transactions",
    operation_id = "getTransaction",
    summary = "Recorded outcome of one transaction",
    description = "The transaction as the worker recorded it, whatever its status. Before the worker has decided it (still queued, or never posted) the answer is 404 `transaction_not_found`: poll until it appears. When an `Idempotency-Key` header was used, the transaction is recorded under that key. `conflicts` lists the commands that reused the id with another payload while this one was still queued: they were answered 200 but had no effect (see README, Idempotency).",
    params(
        ("id" = openapi::Identifier, Path, description = "The transaction id (the idempotency key it was posted with)."),
    ),
    responses(
        (status = 200, description = "The recorded transaction and the conflicting reuses of its id.", body = model::RecordedTransaction),
        (status = 400, response = openapi::BadPath),
        (status = 404, description = "No recorded transaction with this id (yet). Code `transaction_not_found`.", body = model::ErrorBody, example = json!({"error": {"code": "transaction_not_found", "message": "no applied transaction with id \"t-9\" (yet)"}})),
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
    match tally_store::reads::transaction_with_conflicts(&state.pool, &id)
        .await
        .map_err(|e| store_error(&state, &e))?
    {
        Some((record, conflicts)) => Ok(HttpResponse::Ok().json(model::RecordedTransaction {
            record: record.into(),
            conflicts: conflicts.into_iter().map(Into::into).collect(),
        })),
        None => Err(ApiError::NotFound {
            code: "transaction_not_found",
            message: format!("no applied transaction with id {id:?} (yet)"),
        }),
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
