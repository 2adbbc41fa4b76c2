//! `/debug/*`: table dumps for operators, keyset-paged. Registered only when `debug.enabled`;
//! when `debug.token` is set they also require `Authorization: Bearer <token>`.

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_store::{Pool, StoreError};

use crate::error::ApiError;
use crate::routes::account::store_error;
use crate::routes::path_id;
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 1000;
const MAX_LIMIT: i64 = 10_000;

#[derive(Debug, Deserialize)]
pub struct Page {
    limit: Option<i64>,
    /// Keyset cursor: the last id of the previous page.
    after: Option<String>,
}

impl Page {
    fn checked(&self) -> Result<(i64, Option<&str>), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_limit",
                "limit",
                format!("`limit` must be between 1 and {MAX_LIMIT}"),
            ));
        }
        if let Some(after) = &self.after {
            path_id(after, "after")?;
        }
        Ok((limit, self.after.as_deref()))
    }
}

/// Checks the bearer token when one is configured.
pub fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let token = state.settings.debug.token.expose();
    if token.is_empty() {
        return Ok(());
    }
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared as SHA-256 digests: the time `==` takes then says nothing about how much of
    // the token an attacker has guessed (a plain comparison stops at the first difference).
    let digest = |s: &str| Sha256::digest(s.as_bytes());
    if presented.is_some_and(|p| digest(p) == digest(token)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// What every paged dump does: check the token and the page, fetch the rows after `after`,
/// answer them as a JSON array.
async fn dump<T: Serialize>(
    req: &HttpRequest,
    state: &AppState,
    page: &Page,
    fetch: impl AsyncFnOnce(&Pool, Option<&str>, i64) -> Result<Vec<T>, StoreError>,
) -> Result<HttpResponse, ApiError> {
    authorize(req, state)?;
    let (limit, after) = page.checked()?;
    let rows = fetch(&state.pool, after, limit)
        .await
        .map_err(|e| store_error(state, &e))?;
    Ok(HttpResponse::Ok().json(rows))
}

/// `GET /debug/accounts?limit=&after=` → JSON array of account rows ordered by id.
#[get("/debug/accounts")]
pub async fn accounts(
    req: HttpRequest,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    dump(&req, &state, &page, tally_store::reads::accounts_page).await
}

/// `GET /debug/transactions?limit=&after=` → JSON array of transactions ordered by id.
#[get("/debug/transactions")]
pub async fn transactions(
    req: HttpRequest,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    dump(&req, &state, &page, tally_store::reads::transactions_page).await
}

/// `GET /debug/conservation` → the auditor's report: `pass`, each check with its offending
/// rows, totals, queue depths and pending dead letters. 200 whether it passes or not: the
/// answer is the report; `pass` is the verdict.
#[get("/debug/conservation")]
pub async fn conservation(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let queues = state.publisher.queue_depths().await.ok();
    let report = tally_store::audit::report(&state.pool, queues)
        .await
        .map_err(|e| store_error(&state, &e))?;
    Ok(HttpResponse::Ok().json(report))
}

/// `GET /debug/dead-letters?limit=&after=` → archived dead letters ordered by id, with the
/// broker's reason and the decoder's verdict. Re-publish with
/// `tally-worker dead-letters republish`.
#[get("/debug/dead-letters")]
pub async fn dead_letters(
    req: HttpRequest,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    dump(&req, &state, &page, tally_store::dead_letters::page).await
}

/// `GET /debug/webhooks?limit=&after=` → webhook deliveries in creation order (`after` is a
/// delivery id): pending, sent, superseded and failed, with attempts and the last error.
#[get("/debug/webhooks")]
pub async fn webhooks(
    req: HttpRequest,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let (limit, after) = page.checked()?;
    let after = after
        .map(|a| {
            a.parse::<i64>().map_err(|_| {
                ApiError::bad_request("invalid_after", "after", "`after` must be a delivery id")
            })
        })
        .transpose()?;
    let rows = tally_store::webhooks::page(&state.pool, after, limit)
        .await
        .map_err(|e| store_error(&state, &e))?;
    Ok(HttpResponse::Ok().json(rows))
}
