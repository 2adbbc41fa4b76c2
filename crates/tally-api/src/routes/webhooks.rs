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

/// A registration is three short fields; anything bigger is not one.
const MAX_BODY_BYTES: usize = 8192;
const MAX_URL_CHARS: usize = 2048;
const MAX_SECRET_CHARS: usize = 256;
/// One day: a longer delay is a schedule, not a debounce.
const MAX_DELAY_MS: u64 = 86_400_000;

fn bad(code: &'static str, field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, field, message)
}

fn string<'a>(body: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(bad(
            "missing_field",
            field,
            format!("`{field}` is required"),
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
    Ok(HttpResponse::Ok().json(stored))
}

/// `DELETE /account/{accountId}/webhook` → 204; 404 `webhook_not_found` when there is none.
/// Deliveries still pending are not sent.
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
