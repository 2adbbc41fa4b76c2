//! Reads: an account's balance and one transaction's recorded outcome.

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use tally_store::reads::{IdConflict, TransactionRecord};

use crate::error::ApiError;
use crate::routes::path_id;
use crate::state::AppState;

/// `GET /account/{accountId}` → `{"accountId","balance","available","held"}`; zeros for an
/// account never used.
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
    Ok(HttpResponse::Ok().json(view))
}

/// The body of `GET /transactions/{id}`: the record, and every command that reused its id with
/// another payload (answered 200 while the first was queued, never applied).
#[derive(Serialize)]
struct RecordedTransaction {
    #[serde(flatten)]
    record: TransactionRecord,
    conflicts: Vec<IdConflict>,
}

/// `GET /transactions/{id}` → the recorded transaction once the worker decided it; 404 before.
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
        Some((record, conflicts)) => {
            Ok(HttpResponse::Ok().json(RecordedTransaction { record, conflicts }))
        }
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
