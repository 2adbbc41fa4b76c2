//! HTTP routes. Every identifier that enters through a path, query or body is validated with
//! the same rules ([`tally_core::validate_id`]) before it reaches the database.

pub mod account;
pub mod body;
pub mod console;
pub mod debug;
pub mod health;
pub mod history;
pub mod jobs;
pub mod metrics;
pub mod policy;
pub mod transaction;
pub mod users;
pub mod webhooks;

use actix_web::dev::ResourceDef;
use actix_web::{web, HttpRequest, HttpResponse};
use utoipa::openapi::path::PathItem;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::ApiError;

/// Registers every route; the debug routes and the console only when `debug`
/// (`debug.enabled`). Each handler
/// carries its `#[utoipa::path]`: registering it here also documents it ([`crate::openapi`]),
/// and tells [`Allowed`] its method.
pub fn configure(cfg: &mut ServiceConfig, debug: bool) {
    cfg.service(transaction::post_transaction)
        .service(account::get_account)
        .service(account::get_transaction)
        .service(policy::put_policy)
        .service(policy::get_policy)
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
    if debug {
        cfg.service(debug::accounts)
            .service(debug::transactions)
            .service(debug::conservation)
            .service(debug::dead_letters);
        cfg.service(debug::webhooks)
            .service(console::shards)
            .service(console::throughput)
            .service(console::holds)
            .service(console::republish);
        cfg.service(console::page).service(console::console_asset);
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

/// The registered paths and their methods, as [`configure`] registered them (the operations
/// `utoipa_actix_web` collected while registering). The route macros cannot tell a wrong
/// method (405 + `Allow`) from a wrong path (404): this can.
pub struct Allowed(Vec<(ResourceDef, Vec<&'static str>)>);

impl Allowed {
    pub fn of(registered: &utoipa::openapi::OpenApi) -> Self {
        let routes = registered
            .paths
            .paths
            .iter()
            .map(|(path, item)| (ResourceDef::new(path.as_str()), methods(item)))
            .collect();
        Self(routes)
    }

    /// The methods of the first registered path matching `path` (literal paths only when
    /// `literal`).
    fn methods(&self, path: &str, literal: bool) -> Option<&[&'static str]> {
        self.0
            .iter()
            .find(|(def, _)| {
                (!literal || !def.pattern().unwrap_or("{").contains('{')) && def.is_match(path)
            })
            .map(|(_, methods)| methods.as_slice())
    }
}

fn methods(item: &PathItem) -> Vec<&'static str> {
    let operations = [
        ("DELETE", item.delete.is_some()),
        ("GET", item.get.is_some()),
        ("HEAD", item.head.is_some()),
        ("OPTIONS", item.options.is_some()),
        ("PATCH", item.patch.is_some()),
        ("POST", item.post.is_some()),
        ("PUT", item.put.is_some()),
        ("TRACE", item.trace.is_some()),
    ];
    operations
        .into_iter()
        .filter_map(|(method, registered)| registered.then_some(method))
        .collect()
}

/// 405 with `Allow` when `methods` are known for the path and the request's is not one.
fn wrong_method(req: &HttpRequest, methods: Option<&[&'static str]>) -> Result<(), ApiError> {
    match methods {
        Some(methods) if !methods.contains(&req.method().as_str()) => {
            Err(ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allow: methods.join(", "),
            })
        }
        _ => Ok(()),
    }
}

fn allowed(req: &HttpRequest) -> Option<&Allowed> {
    req.app_data::<web::Data<Allowed>>().map(|a| a.get_ref())
}

/// A route with a template can also match a registered literal path: `GET /jobs/{id}` matches
/// `GET /jobs/settlements`, which is the POST-only collection. Handlers of such templates call
/// this first, so the answer is 405 (wrong method) rather than "malformed id".
pub fn literal_path_method(req: &HttpRequest) -> Result<(), ApiError> {
    wrong_method(req, allowed(req).and_then(|a| a.methods(req.path(), true)))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    wrong_method(
        &req,
        allowed(&req).and_then(|a| a.methods(req.path(), false)),
    )?;
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
