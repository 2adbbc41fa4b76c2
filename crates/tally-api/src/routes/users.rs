//! Users: linking accounts to a user, a user's accounts (paged) and total, and a user's
//! largest expense; plus [`owned_by_another`], the rule `POST /transaction` applies to a `userId`.
//!
//! Invariant: an account has at most one owner and keeps it. The owner is the explicit link
//! if there is one, else the `userId` of the account's first transaction; linking an account
//! owned by someone else, or posting a transaction for it with another `userId`, is refused
//! with code `account_owned_by_another_user`. Ownership is metadata beside the ledger: the API
//! writes links itself (never the `accounts` rows, which only the shard worker writes).

use actix_web::{get, put, web, HttpResponse};
use serde::Deserialize;
use tally_core::Reason;
use tally_store::users::Link;

use crate::error::ApiError;
use crate::routes::account::store_error;
use crate::routes::history::{no_expense, page_limit, RangeQuery, DEFAULT_LIMIT};
use crate::routes::path_id;
use crate::state::AppState;
use crate::{model, openapi};

/// The API refuses what the ledger would record refused for the same reason: one code.
const OWNED_BY_ANOTHER: &str = Reason::AccountOwnedByAnotherUser.as_str();

fn user_not_found(user_id: &str) -> ApiError {
    ApiError::NotFound {
        code: "user_not_found",
        message: format!("user {user_id:?} owns no account"),
    }
}

#[utoipa::path(
    tag = "users",
    operation_id = "linkAccount",
    summary = "Link an account to a user",
    description = "Makes the user the account's owner. Idempotent: linking the same pair again answers 200 with the original `linkedAt`. An account has one owner for good: if another user owns it (by link, or by the `userId` of its first transaction) the answer is 409 `account_owned_by_another_user` and nothing changes. The account need not have been used yet. Once owned, a `POST /transaction` for the account carrying another `userId` is refused with 422 `account_owned_by_another_user`.",
    params(
        ("user_id" = openapi::Identifier, Path, description = "The user id."),
        ("account_id" = openapi::Identifier, Path, description = "The account id."),
    ),
    responses(
        (status = 201, description = "Linked now.", body = model::AccountLink),
        (status = 200, description = "Already linked to this user.", body = model::AccountLink),
        (status = 400, response = openapi::BadPath),
        (status = 409, description = "Another user owns the account. Code `account_owned_by_another_user`.", body = model::ErrorBody, example = json!({"error": {"code": "account_owned_by_another_user", "message": "account \"acc-1\" is owned by another user"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[put("/users/{user_id}/accounts/{account_id}")]
pub async fn link_account(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, account_id) = path.into_inner();
    path_id(&user_id, "userId")?;
    path_id(&account_id, "accountId")?;
    let link = tally_store::users::link(&state.pool, &user_id, &account_id)
        .await
        .map_err(|e| store_error(&state, &e))?;
    let (mut response, linked_at) = match link {
        Link::Created { linked_at } => (HttpResponse::Created(), linked_at),
        Link::Existing { linked_at } => (HttpResponse::Ok(), linked_at),
        Link::OwnedByAnother => {
            return Err(ApiError::Conflict {
                code: OWNED_BY_ANOTHER,
                message: format!("account {account_id:?} is owned by another user"),
            })
        }
    };
    Ok(response.json(model::AccountLink {
        user_id,
        account_id,
        linked_at,
    }))
}

/// Query of `GET /users/{userId}`. Strings, so that every bad value gets a 400 naming its
/// parameter.
#[derive(Debug, Deserialize)]
pub struct UserQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /users/{userId}?limit=&cursor=` → `{"userId","total","accounts":[{"accountId",
/// "balance","available"}],"nextCursor"}`: one page of the user's accounts ordered by id
/// (`limit` 1..=1000, default 50; `cursor` is the previous page's `nextCursor`, the last
/// account id shown), `total` the sum of the balances of all of them. 404 `user_not_found`
/// for a user who owns no account.
#[utoipa::path(
    tag = "users",
    operation_id = "getUser",
    summary = "A user's accounts (paged) and total",
    description = "One page of the accounts the user owns, ordered by account id, with their balances, and `total`, the sum of the balances of **all** the user's accounts (not only this page's; one aggregate in PostgreSQL, read from the same snapshot as the page). Keyset-paged like every list: pass the previous page's `nextCursor` as `cursor`; `nextCursor` is `null` on the last page. A user exists while they own at least one account: by explicit link, or because a transaction with their `userId` was the first to name the account with a `userId`.",
    params(
        ("user_id" = openapi::Identifier, Path, description = "The user id."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size, 1..1000 (else 400 `invalid_limit`). Default 50."),
        ("cursor" = Option<String>, Query, description = "The `nextCursor` of the previous page: the last account id it showed (else 400 `invalid_cursor`)."),
    ),
    responses(
        (status = 200, description = "The user.", body = model::User),
        (status = 400, description = "A bad path or query parameter: `invalid_id` (userId), `invalid_limit`, `invalid_cursor`; `field` names it.", body = model::ErrorBody, example = json!({"error": {"code": "invalid_limit", "message": "`limit` must be an integer between 1 and 1000", "field": "limit"}})),
        (status = 404, description = "The user owns no account. Code `user_not_found`.", body = model::ErrorBody, example = json!({"error": {"code": "user_not_found", "message": "user \"bob\" owns no account"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/users/{user_id}")]
pub async fn get_user(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<UserQuery>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path.into_inner();
    path_id(&user_id, "userId")?;
    let limit = page_limit(query.limit.as_deref())?.unwrap_or(DEFAULT_LIMIT);
    let cursor = query.cursor.as_deref();
    if let Some(cursor) = cursor {
        tally_core::validate_id(cursor).map_err(|e| {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor",
                format!("`cursor` must be a previous page's `nextCursor` (an account id): {e}"),
            )
        })?;
    }
    tally_store::users::user(&state.pool, &user_id, cursor, limit)
        .await
        .map_err(|e| store_error(&state, &e))?
        .map(|view| HttpResponse::Ok().json(model::User::from(view)))
        .ok_or_else(|| user_not_found(&user_id))
}

/// `GET /users/{userId}/largest-expense?from=&to=` → the applied withdraw with the largest
/// amount over all the user's accounts whose `occurredAt` is in `[from, to]` (ties: the
/// earliest, then the smallest id). 404 `user_not_found` or `expense_not_found`.
#[utoipa::path(
    tag = "users",
    operation_id = "getUserLargestExpense",
    summary = "Largest expense of a user in a period",
    description = "Like `GET /account/{accountId}/largest-expense`, over every account the user owns: the applied withdraw with the largest amount whose `occurredAt` is in `[from, to]`; ties go to the earliest, then to the smallest id.",
    params(
        ("user_id" = openapi::Identifier, Path, description = "The user id."),
        RangeQuery,
    ),
    responses(
        (status = 200, description = "The expense.", body = model::TransactionRecord),
        (status = 400, response = openapi::BadPeriod),
        (status = 404, description = "`user_not_found` (the user owns no account) or `expense_not_found` (no applied withdraw in the period).", body = model::ErrorBody, example = json!({"error": {"code": "expense_not_found", "message": "no applied withdraw of user \"alice\" in this period"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/users/{user_id}/largest-expense")]
pub async fn user_largest_expense(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path.into_inner();
    path_id(&user_id, "userId")?;
    let (from, to) = query.required()?;
    let found = tally_store::history::largest_expense_of_user(&state.pool, &user_id, from, to)
        .await
        .map_err(|e| store_error(&state, &e))?;
    if let Some(record) = found {
        return Ok(HttpResponse::Ok().json(model::TransactionRecord::from(record)));
    }
    // No expense: say whether the user is unknown or just had none in the period.
    let exists = tally_store::users::exists(&state.pool, &user_id)
        .await
        .map_err(|e| store_error(&state, &e))?;
    Err(if exists {
        no_expense(&format!("user {user_id:?}"))
    } else {
        user_not_found(&user_id)
    })
}

/// The ownership rule of `POST /transaction`: a transaction carrying `userId` for an account
/// another user owns is refused with 422 `account_owned_by_another_user`
/// ([`owned_by_another_error`]), before anything is published. Without `userId`, or for an
/// account without owner, it passes (the worker then records the first `userId` as the owner).
///
/// When PostgreSQL cannot be asked the transaction passes too: like the idempotency
/// pre-check, this check must not make accepting writes depend on the database; the worker's
/// own check is the backstop.
pub async fn owned_by_another(state: &AppState, account_id: &str, user_id: Option<&str>) -> bool {
    let Some(user_id) = user_id else {
        return false;
    };
    match tally_store::users::owner(&state.pool, account_id).await {
        Ok(owner) => owner.is_some_and(|owner| owner != user_id),
        Err(e) => {
            tracing::warn!(account_id, error = %e, "ownership pre-check skipped");
            false
        }
    }
}

/// The 422 of a transaction refused by [`owned_by_another`].
pub fn owned_by_another_error(account_id: &str) -> ApiError {
    ApiError::Unprocessable {
        code: OWNED_BY_ANOTHER,
        message: format!("account {account_id:?} is owned by another user"),
    }
}
