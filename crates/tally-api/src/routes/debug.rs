//! `/debug/*`: table dumps for operators, keyset-paged. Registered only when `debug.enabled`.
//! With auth on they need an `admin` API key (checked by [`crate::auth`]); with auth off and
//! `debug.token` set they require `Authorization: Bearer <token>`.

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_store::{Pool, StoreError};

use crate::error::ApiError;
use crate::routes::account::store_error;
use crate::routes::path_id;
use crate::state::AppState;
use crate::{model, openapi};

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

/// With auth off, checks the debug token when one is configured. With auth on there is
/// nothing left to check here: [`crate::auth::authenticate`] let the request in with an
/// `admin` key, and the token is ignored.
pub fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let token = state.settings.debug.token.expose();
    if state.keys.enabled() || token.is_empty() {
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
/// answer them as a JSON array of their HTTP shape `T`.
async fn dump<R, T: Serialize + From<R>>(
    req: &HttpRequest,
    state: &AppState,
    page: &Page,
    fetch: impl AsyncFnOnce(&Pool, Option<&str>, i64) -> Result<Vec<R>, StoreError>,
) -> Result<HttpResponse, ApiError> {
    authorize(req, state)?;
    let (limit, after) = page.checked()?;
    let rows = fetch(&state.pool, after, limit)
        .await
        .map_err(|e| store_error(state, &e))?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(T::from).collect::<Vec<T>>()))
}

/// `GET /debug/accounts?limit=&after=` → JSON array of account rows ordered by id.
#[utoipa::path(
    tag = "debug",
    operation_id = "debugListAccounts",
    summary = "Dump of the accounts table (debug)",
    description = "Account rows as stored, ordered by id, keyset-paged: pass the last `accountId` of a page as `after` to get the next one; a page shorter than `limit` is the last. Only served when `debug.enabled` is true (otherwise 404 `not_found`). Needs an `admin` API key (with `auth.enabled = false`: the bearer `debug.token` when it is set).",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "Page size, default 1000. Out of range is a 400 `invalid_limit`; not an integer is a 400 `invalid_query`."),
        ("after" = Option<openapi::Identifier>, Query, description = "Keyset cursor: the last id of the previous page. Only rows with a greater id are returned. Must be a valid identifier (else 400 `invalid_id`)."),
    ),
    responses(
        (status = 200, description = "One page of account rows (possibly empty).", body = Vec<model::AccountRow>),
        (status = 400, response = openapi::BadPage),
        (status = 401, response = openapi::Unauthorized),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/debug/accounts")]
pub async fn accounts(
    req: HttpRequest,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    dump::<_, model::AccountRow>(&req, &state, &page, tally_store::reads::accounts_page).await
}

/// `GET /debug/transactions?limit=&after=` → JSON array of transactions ordered by id.
#[utoipa::path(
    tag = "debug",
    operation_id = "debugListTransactions",
    summary = "Dump of the transactions table (debug)",
    description = "Recorded transactions, ordered by id, keyset-paged: pass the last `id` of a page as `after` to get the next one; a page shorter than `limit` is the last. Only served when `debug.enabled` is true (otherwise 404 `not_found`). Needs an `admin` API key (with `auth.enabled = false`: the bearer `debug.token` when it is set).",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "Page size, default 1000. Out of range is a 400 `invalid_limit`; not an integer is a 400 `invalid_query`."),
        ("after" = Option<openapi::Identifier>, Query, description = "Keyset cursor: the last id of the previous page. Only rows with a greater id are returned. Must be a valid identifier (else 400 `invalid_id`)."),
    ),
    responses(
        (status = 200, description = "One page of transactions (possibly empty).", body = Vec<model::TransactionRecord>),
        (status = 400, response = openapi::BadPage),
        (status = 401, response = openapi::Unauthorized),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/debug/transactions")]
pub async fn transactions(
    req: HttpRequest,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    dump::<_, model::TransactionRecord>(&req, &state, &page, tally_store::reads::transactions_page)
        .await
}

/// `GET /debug/conservation` → the auditor's report: `pass`, each check with its offending
/// rows, totals, queue depths and pending dead letters. 200 whether it passes or not: the
/// answer is the report; `pass` is the verdict.
#[utoipa::path(
    tag = "debug",
    operation_id = "debugConservation",
    summary = "Conservation auditor (debug)",
    description = "Checks the ledger invariants the server can see (balances = applied deposits − applied withdraws per account; held = open holds; one effect per id; gapless per-account history) and reports queue depths and pending dead letters. Answers 200 whether the audit passes or not: `pass` is the verdict, failing checks list their offending rows (at most 100 each). Same report as `tally-worker audit`. Only served when `debug.enabled` is true; needs an `admin` API key (with `auth.enabled = false`: the bearer `debug.token` when it is set).",
    responses(
        (status = 200, description = "The audit report.", body = model::AuditReport),
        (status = 401, response = openapi::Unauthorized),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
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
    Ok(HttpResponse::Ok().json(model::AuditReport::from(report)))
}

/// `GET /debug/dead-letters?limit=&after=` → archived dead letters ordered by id, with the
/// broker's reason and the decoder's verdict. Re-publish with
/// `tally-worker dead-letters republish`.
#[utoipa::path(
    tag = "debug",
    operation_id = "debugListDeadLetters",
    summary = "Archived dead letters (debug)",
    description = "Messages RabbitMQ dead-lettered (a command the worker could never apply, or one that exceeded the delivery limit), archived by the workers, ordered by id and keyset-paged like the other dumps. Re-publish them after a fix with `tally-worker dead-letters republish (--all | ID…)`. Only served when `debug.enabled` is true; needs an `admin` API key (with `auth.enabled = false`: the bearer `debug.token` when it is set).",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "Page size, default 1000. Out of range is a 400 `invalid_limit`; not an integer is a 400 `invalid_query`."),
        ("after" = Option<openapi::Identifier>, Query, description = "Keyset cursor: the last id of the previous page. Only rows with a greater id are returned. Must be a valid identifier (else 400 `invalid_id`)."),
    ),
    responses(
        (status = 200, description = "One page of dead letters (possibly empty).", body = Vec<model::DeadLetter>),
        (status = 400, response = openapi::BadPage),
        (status = 401, response = openapi::Unauthorized),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/debug/dead-letters")]
pub async fn dead_letters(
    req: HttpRequest,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    dump::<_, model::DeadLetter>(&req, &state, &page, tally_store::dead_letters::page).await
}

/// `GET /debug/webhooks?limit=&after=` → webhook deliveries in creation order (`after` is a
/// delivery id): pending, sent, superseded and failed, with attempts and the last error.
#[utoipa::path(
    tag = "debug",
    operation_id = "debugListWebhookDeliveries",
    summary = "Webhook deliveries (debug)",
    description = "Every webhook delivery in creation order, keyset-paged by delivery id (`after` must be a delivery id; otherwise 400 `invalid_after`): `pending` (due at `dueAt`, retried after failures), `sent`, `superseded` (a newer change came first; never sent) or `failed` (out of attempts, or the webhook was deleted), with the attempts made, the last HTTP status and a short classification of the last failure (`lastError`); never the receiver's answer or addresses. Only served when `debug.enabled` is true; needs an `admin` API key (with `auth.enabled = false`: the bearer `debug.token` when it is set).",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "Page size, default 1000. Out of range is a 400 `invalid_limit`; not an integer is a 400 `invalid_query`."),
        ("after" = Option<openapi::Identifier>, Query, description = "Keyset cursor: the last id of the previous page. Only rows with a greater id are returned. Must be a valid identifier (else 400 `invalid_id`)."),
    ),
    responses(
        (status = 200, description = "One page of deliveries (possibly empty).", body = Vec<model::WebhookDelivery>),
        (status = 400, response = openapi::BadPage),
        (status = 401, response = openapi::Unauthorized),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
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
    let rows: Vec<model::WebhookDelivery> = rows.into_iter().map(Into::into).collect();
    Ok(HttpResponse::Ok().json(rows))
}
