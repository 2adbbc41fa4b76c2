//! Balance webhook registrations: `PUT` and `DELETE /account/{accountId}/webhook`. The API only
//! records the registration (`webhooks`); the workers schedule a delivery with every balance
//! change of the account and send it (see `tally_worker::webhooks`). The secret is write-only:
//! no answer ever shows it.
//!
//! Unless `webhooks.allow_private_targets` is on, a URL whose host is a non-public address
//! (loopback, private, link-local, … see [`tally_core::target`]) or a `localhost` name is
//! refused here with `non_public_target`; names are resolved, and checked again, by the
//! sender at every attempt.

use actix_web::{delete, put, web, HttpResponse};
use serde_json::{Map, Value};
use std::net::IpAddr;
use tally_core::target;

use crate::error::ApiError;
use crate::routes::account::store_error;
use crate::routes::body::json_object;
use crate::routes::path_id;
use crate::state::AppState;
use crate::{model, openapi};

/// A registration is three short fields; anything bigger is not one.
const MAX_BODY_BYTES: usize = 8192;
const MAX_URL_CHARS: usize = 2048;
const MAX_SECRET_CHARS: usize = 256;
/// One day: a longer delay is a schedule, not a debounce.
const MAX_DELAY_MS: u64 = 86_400_000;

fn bad(code: &'static str, field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, field, message)
}

/// A text field, stored as PostgreSQL `text`, which cannot hold U+0000: refused here (400)
/// rather than failing the INSERT (500).
fn string<'a>(body: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(bad(
            "missing_field",
            field,
            format!("`{field}` is required"),
        )),
        Some(Value::String(s)) if s.contains('\0') => Err(bad(
            "invalid_field",
            field,
            format!("`{field}` must not contain U+0000"),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(
            "invalid_field",
            field,
            format!("`{field}` must be a string"),
        )),
    }
}

/// An absolute `http` or `https` URL with a host and no credentials (the secret signs; a
/// password in the URL would be shown back by every answer); unless `allow_private`, a host
/// that is a public address or a name other than `localhost`.
fn url(body: &Map<String, Value>, allow_private: bool) -> Result<&str, ApiError> {
    let text = string(body, "url")?;
    let invalid = |why: &str| bad("invalid_url", "url", format!("`url` {why}"));
    if text.chars().count() > MAX_URL_CHARS {
        return Err(invalid(&format!(
            "must be at most {MAX_URL_CHARS} characters"
        )));
    }
    let parsed = url::Url::parse(text).map_err(|e| invalid(&format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid("must be an absolute http(s) URL with a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    if !allow_private {
        public_host(&parsed)?;
    }
    Ok(text)
}

/// Refuses a host that is a non-public address — as the URL parser normalized it, so
/// `http://2130706433/` or `http://127.1/` are 127.0.0.1 — or a `localhost` name.
fn public_host(parsed: &url::Url) -> Result<(), ApiError> {
    let class = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => target::classify(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => target::classify(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) if target::is_local_name(name) => {
            Some(target::NonPublic::Loopback)
        }
        Some(url::Host::Domain(_)) | None => None,
    };
    match class {
        None => Ok(()),
        Some(class) => Err(bad(
            "non_public_target",
            "url",
            format!(
                "`url` points at a {} address; webhooks may only target public addresses \
                 (webhooks.allow_private_targets is off)",
                class.as_str()
            ),
        )),
    }
}

fn secret(body: &Map<String, Value>) -> Result<&str, ApiError> {
    let text = string(body, "secret")?;
    let n = text.chars().count();
    if n == 0 || n > MAX_SECRET_CHARS {
        return Err(bad(
            "invalid_secret",
            "secret",
            format!("`secret` must be 1 to {MAX_SECRET_CHARS} characters"),
        ));
    }
    Ok(text)
}

/// Optional, default 0; an integer number of milliseconds (not a string, not `1.5`).
fn delay_ms(body: &Map<String, Value>) -> Result<i32, ApiError> {
    let invalid = || {
        bad(
            "invalid_delay",
            "delayMs",
            format!("`delayMs` must be an integer from 0 to {MAX_DELAY_MS}"),
        )
    };
    match body.get("delayMs") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|ms| *ms <= MAX_DELAY_MS)
            .and_then(|ms| i32::try_from(ms).ok())
            .ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

/// `PUT /account/{accountId}/webhook {"url","secret","delayMs"?}` → 200 with the stored
/// registration (without the secret). Replaces an existing one. The account need not exist.
/// 400 `non_public_target` for a non-public target unless configuration allows them.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "putWebhook",
    summary = "Register (or replace) the account's balance webhook",
    description = "After every committed change of the account's `balance` or `available` (a deposit, a withdraw, a hold placed, released or expired), a worker POSTs a `WebhookPayload` to `url`, `delayMs` after the change. A newer change before it is sent supersedes it: the older delivery is recorded as `superseded` and never sent, so a burst of changes yields one delivery of the latest state. Each POST carries `Content-Type: application/json`, `X-Tally-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by secret>` and `X-Tally-Delivery: <delivery id>` (the same on every attempt of a delivery: deduplicate on it, delivery is at-least-once). Any 2xx answer is success; anything else (redirects included, they are not followed) or no answer within the timeout is retried with exponential back-off up to a limit, then recorded as `failed` (see `GET /debug/webhooks`, which shows the last HTTP status and a short classification of the failure, never the receiver's answer). Deliveries are kept in PostgreSQL and survive worker restarts. The account need not exist yet. The secret is never shown back. Replacing the registration applies its URL and secret to deliveries still pending. Targets: unless `webhooks.allow_private_targets` is on (only the `local` profile), a URL whose host is a loopback, private (RFC 1918, 100.64/10, fc00::/7), link-local (169.254/16, fe80::/10), unspecified, multicast or other special-purpose address, or a `localhost` name, is refused with 400 `non_public_target`; a name is resolved at every attempt and the delivery fails (`lastError` `non_public_target`, no retry) if any of its addresses is not public. A receiver that is slow or hangs holds at most `webhooks.per_receiver` of a worker's sending slots: other receivers' deliveries are not delayed by it. Not replayed by nginx on another replica (nor is `DELETE`).",
    params(
        ("account_id" = openapi::Identifier, Path, description = "The account id."),
    ),
    request_body(content = model::WebhookRequest),
    responses(
        (status = 200, description = "Stored (created or replaced).", body = model::Webhook),
        (status = 400, description = "Invalid request: `invalid_id` (accountId), `invalid_json`, `body_too_large`, `missing_field` / `invalid_field` (url or secret absent, not a string, or holding U+0000), `invalid_url` (not an absolute http(s) URL with a host, credentials in it, or longer than 2048 characters), `non_public_target` (the host is a non-public address or a `localhost` name, and `webhooks.allow_private_targets` is off), `invalid_secret` (empty or longer than 256 characters), `invalid_delay` (delayMs not an integer from 0 to 86400000). Nothing is stored.", body = model::ErrorBody, example = json!({"error": {"code": "invalid_url", "message": "`url` must be an absolute http(s) URL with a host", "field": "url"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[put("/account/{account_id}/webhook")]
pub async fn put_webhook(
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let account_id = path.into_inner();
    path_id(&account_id, "accountId")?;
    let fields = json_object(payload, MAX_BODY_BYTES).await?;
    let allow_private = state.settings.webhooks.allow_private_targets;
    let (url, secret, delay_ms) = (
        url(&fields, allow_private)?,
        secret(&fields)?,
        delay_ms(&fields)?,
    );
    let stored = tally_store::webhooks::put(&state.pool, &account_id, url, secret, delay_ms)
        .await
        .map_err(|e| store_error(&state, &e))?;
    Ok(HttpResponse::Ok().json(model::Webhook::from(stored)))
}

/// `DELETE /account/{accountId}/webhook` → 204; 404 `webhook_not_found` when there is none.
/// Deliveries still pending are not sent.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "deleteWebhook",
    summary = "Remove the account's balance webhook",
    description = "Stops deliveries: those still pending are not sent (a sender records them as `failed` with `lastError` `webhook_deleted`).",
    params(
        ("account_id" = openapi::Identifier, Path, description = "The account id."),
    ),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, response = openapi::BadPath),
        (status = 404, description = "The account has no webhook. Code `webhook_not_found`.", body = model::ErrorBody, example = json!({"error": {"code": "webhook_not_found", "message": "account \"acc-1\" has no webhook"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[delete("/account/{account_id}/webhook")]
pub async fn delete_webhook(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account_id = path.into_inner();
    path_id(&account_id, "accountId")?;
    let deleted = tally_store::webhooks::delete(&state.pool, &account_id)
        .await
        .map_err(|e| store_error(&state, &e))?;
    if deleted {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound {
            code: "webhook_not_found",
            message: format!("account {account_id:?} has no webhook"),
        })
    }
}
