//! An account's history (`GET /account/{id}/transactions`, keyset-paged on the account's
//! `seq`, newest first) and its largest expense in a period; plus the query-parameter parsing
//! the user routes share (time ranges, page sizes).
//!
//! Pages never repeat or skip a row while new transactions arrive: the cursor is the last
//! `seq` shown, and new transactions only get higher numbers.

use actix_web::{get, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tally_core::Kind;
use tally_store::history::{Filter, Start};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::routes::account::store_error;
use crate::routes::path_id;
use crate::state::AppState;
use crate::{model, openapi};

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest `limit`.
pub const MAX_LIMIT: i64 = 1000;
/// Page size of `page=N` (the simple-client compatibility mode) when `limit` is absent.
pub const PAGE_SIZE: i64 = 10;

/// Query of `GET /account/{id}/transactions`. Strings, so that every bad value gets a 400
/// naming its parameter.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    limit: Option<String>,
    cursor: Option<String>,
    page: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

fn bad(code: &'static str, field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, field, message)
}

fn positive(value: &str, code: &'static str, field: &'static str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| bad(code, field, format!("`{field}` must be a positive integer")))
}

/// The `limit` of a paged list: an integer from 1 to [`MAX_LIMIT`]; `None` when absent.
pub fn page_limit(value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    bad(
                        "invalid_limit",
                        "limit",
                        format!("`limit` must be an integer between 1 and {MAX_LIMIT}"),
                    )
                })
        })
        .transpose()
}

/// Parses an RFC 3339 date-time from the query string. A `+` sent unencoded in a query
/// string arrives as a space (`…T10:00:00 02:00`); that one mistake is read as meant.
pub fn timestamp(value: &str, field: &'static str) -> Result<DateTime<Utc>, ApiError> {
    let parse = |s: &str| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc));
    parse(value)
        .or_else(|e| {
            let n = value.len();
            if n > 6 && value.as_bytes()[n - 6] == b' ' {
                parse(&format!("{}+{}", &value[..n - 6], &value[n - 5..]))
            } else {
                Err(e)
            }
        })
        .map_err(|_| {
            bad(
                "invalid_timestamp",
                field,
                format!("`{field}` must be an RFC 3339 date-time, e.g. 2024-01-31T00:00:00Z"),
            )
        })
}

/// Inclusive time bounds, each optional.
type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Optional `from`/`to` bounds; when both are given, `from` must not be after `to`.
fn optional_range(from: Option<&str>, to: Option<&str>) -> Result<Bounds, ApiError> {
    let from = from.map(|v| timestamp(v, "from")).transpose()?;
    let to = to.map(|v| timestamp(v, "to")).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(bad(
                "invalid_range",
                "from",
                "`from` must not be after `to`",
            ));
        }
    }
    Ok((from, to))
}

/// Query of the largest-expense routes. Both bounds are required; they are `Option`s so that a
/// missing one is our 400 `missing_field`, not actix's query error.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// Start of the period, inclusive, RFC 3339 (e.g. `2024-01-01T00:00:00Z`; encode `+` of an offset as `%2B` — an unencoded `+` that arrives as a space before the offset is tolerated).
    #[param(required = true, value_type = String, format = DateTime)]
    from: Option<String>,
    /// End of the period, inclusive, RFC 3339. Must not be before `from`.
    #[param(required = true, value_type = String, format = DateTime)]
    to: Option<String>,
}

impl RangeQuery {
    /// Both bounds, required, `from <= to`.
    pub fn required(&self) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
        let missing = |field: &'static str| {
            bad(
                "missing_field",
                field,
                format!("`{field}` is required (RFC 3339 date-time)"),
            )
        };
        let from = self.from.as_deref().ok_or_else(|| missing("from"))?;
        let to = self.to.as_deref().ok_or_else(|| missing("to"))?;
        match optional_range(Some(from), Some(to))? {
            (Some(from), Some(to)) => Ok((from, to)),
            _ => Err(missing("from")),
        }
    }
}

/// The 404 of a period without an expense.
pub fn no_expense(whose: &str) -> ApiError {
    ApiError::NotFound {
        code: "expense_not_found",
        message: format!("no applied withdraw of {whose} in this period"),
    }
}

/// `GET /account/{accountId}/transactions?limit=&cursor=&type=&from=&to=` (or `page=`):
/// newest first. `limit` 1..=1000, default 50; `cursor` is the previous page's
/// `nextCursor`; `page=N` (1-based, `limit` per page, default 10) instead of `cursor` for
/// simple clients. `type` and `from`/`to` (on `occurredAt`, inclusive) filter.
#[utoipa::path(
    tag = "accounts",
    operation_id = "listAccountTransactions",
    summary = "History of an account, newest first",
    description = "The account's recorded transactions (every status), newest first by `seq`, keyset-paged: pass the previous page's `nextCursor` as `cursor`. Pages never repeat or skip a row while new transactions arrive (new ones get higher `seq`). `page=N` (1-based, 10 per page unless `limit` is given) is offered instead of `cursor` for simple clients; it costs the skipped rows. An account never used answers `{\"items\":[],\"nextCursor\":null}`.",
    params(
        ("account_id" = openapi::Identifier, Path, description = "The account id."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size, 1..1000 (else 400 `invalid_limit`). Default 50 (10 with `page`)."),
        ("cursor" = Option<String>, Query, description = "The `nextCursor` of the previous page (else 400 `invalid_cursor`)."),
        ("page" = Option<i64>, Query, minimum = 1, description = "1-based page number (else 400 `invalid_page`); not together with `cursor`."),
        ("type" = Option<model::TransactionType>, Query, description = "Only this type (else 400 `invalid_type`)."),
        ("from" = Option<String>, Query, format = DateTime, description = "Only transactions with `occurredAt` at or after this RFC 3339 instant."),
        ("to" = Option<String>, Query, format = DateTime, description = "Only transactions with `occurredAt` at or before this RFC 3339 instant; not before `from` (else 400 `invalid_range`)."),
    ),
    responses(
        (status = 200, description = "One page (possibly empty).", body = model::HistoryPage),
        (status = 400, description = "A bad parameter: `invalid_limit`, `invalid_cursor`, `invalid_page`, `invalid_type`, `invalid_timestamp`, `invalid_range`, `invalid_id`; `field` names it.", body = model::ErrorBody, example = json!({"error": {"code": "invalid_limit", "message": "`limit` must be an integer between 1 and 1000", "field": "limit"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/account/{account_id}/transactions")]
pub async fn account_transactions(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let account_id = path.into_inner();
    path_id(&account_id, "accountId")?;
    let q = query.into_inner();

    let limit = page_limit(q.limit.as_deref())?;
    let (start, limit) = match (&q.page, &q.cursor) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "invalid_page",
                "page",
                "use either `page` or `cursor`, not both",
            ))
        }
        (Some(page), None) => {
            let page = positive(page, "invalid_page", "page")?;
            let size = limit.unwrap_or(PAGE_SIZE);
            let offset = (page - 1)
                .checked_mul(size)
                .ok_or_else(|| bad("invalid_page", "page", "`page` is too large"))?;
            (Start::Offset(offset), size)
        }
        (None, cursor) => {
            let below = cursor
                .as_deref()
                .map(|c| positive(c, "invalid_cursor", "cursor"))
                .transpose()?;
            (Start::Below(below), limit.unwrap_or(DEFAULT_LIMIT))
        }
    };
    let kind = q
        .kind
        .as_deref()
        .map(|k| {
            Kind::parse(k).ok_or_else(|| {
                bad(
                    "invalid_type",
                    "type",
                    "`type` must be one of deposit, withdraw, withdraw_request",
                )
            })
        })
        .transpose()?;
    let (from, to) = optional_range(q.from.as_deref(), q.to.as_deref())?;

    let page = tally_store::history::page(
        &state.pool,
        &account_id,
        &Filter { kind, from, to },
        start,
        limit,
    )
    .await
    .map_err(|e| store_error(&state, &e))?;
    Ok(HttpResponse::Ok().json(model::HistoryPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|seq| seq.to_string()),
    }))
}

/// `GET /account/{accountId}/largest-expense?from=&to=` → the account's applied withdraw with
/// the largest amount whose `occurredAt` is in `[from, to]` (ties: the earliest, then the
/// smallest id); 404 `expense_not_found` when there is none.
#[utoipa::path(
    tag = "accounts",
    operation_id = "getAccountLargestExpense",
    summary = "Largest expense of an account in a period",
    description = "The account's applied withdraw with the largest amount whose `occurredAt` is in `[from, to]` (both inclusive). Ties go to the earliest `occurredAt`, then to the smallest id. Deposits, rejected withdraws and withdraw_requests are never expenses.",
    params(
        ("account_id" = openapi::Identifier, Path, description = "The account id."),
        RangeQuery,
    ),
    responses(
        (status = 200, description = "The expense.", body = model::TransactionRecord),
        (status = 400, response = openapi::BadPeriod),
        (status = 404, description = "No applied withdraw in the period. Code `expense_not_found`.", body = model::ErrorBody, example = json!({"error": {"code": "expense_not_found", "message": "no applied withdraw of account \"acc-1\" in this period"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/account/{account_id}/largest-expense")]
pub async fn account_largest_expense(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let account_id = path.into_inner();
    path_id(&account_id, "accountId")?;
    let (from, to) = query.required()?;
    tally_store::history::largest_expense_of_account(&state.pool, &account_id, from, to)
        .await
        .map_err(|e| store_error(&state, &e))?
        .map(|record| HttpResponse::Ok().json(model::TransactionRecord::from(record)))
        .ok_or_else(|| no_expense(&format!("account {account_id:?}")))
}
