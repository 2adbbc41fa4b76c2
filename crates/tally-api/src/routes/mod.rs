//! HTTP routes. Every identifier that enters through a path, query or body is validated with
//! the same rules ([`tally_core::validate_id`]) before it reaches the database.

pub mod account;
pub mod debug;
pub mod health;
pub mod history;
pub mod jobs;
pub mod transaction;
pub mod users;
pub mod webhooks;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::ApiError;
use crate::state::AppState;

/// Registers every route; debug routes only when `debug.enabled`.
pub fn configure(cfg: &mut web::ServiceConfig, state: &AppState) {
    cfg.service(transaction::post_transaction)
        .service(account::get_account)
        .service(account::get_transaction)
        .service(health::status)
        .service(health::live)
        .service(health::ready);
    cfg.service(history::account_transactions)
        .service(history::account_largest_expense)
        .service(users::link_account)
        .service(users::get_user)
        .service(users::user_largest_expense)
        .service(jobs::create_settlement)
        .service(jobs::get_job)
        .service(jobs::cancel_job)
        .service(jobs::download);
    cfg.service(webhooks::put_webhook)
        .service(webhooks::delete_webhook);
    if state.settings.debug.enabled {
        cfg.service(debug::accounts)
            .service(debug::transactions)
            .service(debug::conservation)
            .service(debug::dead_letters);
        cfg.service(debug::webhooks);
    }
    cfg.app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::BadRequest {
            code: "invalid_query",
            message: err.to_string(),
            field: None,
        }
        .into()
    }))
    .app_data(web::PathConfig::default().error_handler(|err, _| {
        ApiError::BadRequest {
            code: "invalid_path",
            message: err.to_string(),
            field: None,
        }
        .into()
    }))
    .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound {
        code: "not_found",
        message: format!("no route for {} {}", req.method(), req.path()),
    })
}

/// Validates an identifier taken from the path.
pub fn path_id(value: &str, field: &'static str) -> Result<(), ApiError> {
    tally_core::validate_id(value)
        .map_err(|e| ApiError::bad_request("invalid_id", field, format!("`{field}` {e}")))
}
