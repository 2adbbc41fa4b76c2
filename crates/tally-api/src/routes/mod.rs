//! HTTP routes. Every identifier that enters through a path, query or body is validated with
//! the same rules ([`tally_core::validate_id`]) before it reaches the database.

pub mod account;
pub mod body;
pub mod debug;
pub mod health;
pub mod history;
pub mod jobs;
pub mod metrics;
pub mod transaction;
pub mod users;
pub mod webhooks;

use actix_web::dev::ResourceDef;
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::LazyLock;

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
        .service(jobs::download)
        .service(metrics::get_metrics);
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

/// Paths and their methods as documented in openapi.json, which the drift test
/// (`tests/api/openapi.rs`) keeps equal to the routes registered above. Used only to tell a
/// wrong method (405 + Allow) from a wrong path (404), which the route macros cannot.
static DOCUMENTED: LazyLock<Vec<(ResourceDef, Vec<String>)>> = LazyLock::new(|| {
    let spec: serde_json::Value =
        serde_json::from_str(include_str!("../../../../openapi.json")).unwrap_or_default();
    let Some(paths) = spec["paths"].as_object() else {
        tracing::error!("openapi.json has no paths: every unknown method answers 404");
        return Vec::new();
    };
    paths
        .iter()
        .map(|(path, operations)| {
            let mut methods: Vec<String> = operations
                .as_object()
                .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
                .unwrap_or_default();
            methods.sort();
            // OpenAPI's `{name}` templates are actix's pattern syntax.
            (ResourceDef::new(path.as_str()), methods)
        })
        .collect()
});

/// A route with a template can also match a documented literal path: `GET /jobs/{id}` matches
/// `GET /jobs/settlements`, which is the POST-only collection. Handlers of such templates call
/// this first, so the answer is 405 (wrong method) rather than "malformed id".
pub fn literal_path_method(req: &HttpRequest) -> Result<(), ApiError> {
    let literal = DOCUMENTED
        .iter()
        .find(|(def, _)| !def.pattern().unwrap_or("{").contains('{') && def.is_match(req.path()));
    match literal {
        Some((_, methods)) if !methods.iter().any(|m| m == req.method().as_str()) => {
            Err(ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allow: methods.join(", "),
            })
        }
        _ => Ok(()),
    }
}

async fn not_found(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let path = req.path();
    // Debug routes are not registered when off; their paths must not show through as 405.
    let visible = state.settings.debug.enabled || !path.starts_with("/debug/");
    if let Some((_, methods)) = DOCUMENTED.iter().find(|(def, _)| def.is_match(path)) {
        if visible && !methods.iter().any(|m| m == req.method().as_str()) {
            return Err(ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allow: methods.join(", "),
            });
        }
    }
    Err(ApiError::NotFound {
        code: "not_found",
        message: format!("no route for {} {}", req.method(), path),
    })
}

/// Validates an identifier taken from the path.
pub fn path_id(value: &str, field: &'static str) -> Result<(), ApiError> {
    tally_core::validate_id(value)
        .map_err(|e| ApiError::bad_request("invalid_id", field, format!("`{field}` {e}")))
}
