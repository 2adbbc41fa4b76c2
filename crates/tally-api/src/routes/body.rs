//! Request bodies: every JSON route reads its body the same way, capped while it streams in
//! (a larger body is refused before it is buffered) and required to be one JSON object.

use actix_web::http::header::HeaderMap;
use actix_web::web;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tally_core::validate_id;

use crate::error::ApiError;

/// Reads at most `limit` bytes of `payload` and parses them as a JSON object: 400
/// `body_too_large`, `invalid_body` or `invalid_json` otherwise.
pub async fn json_object(
    payload: web::Payload,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    let body = read(payload, limit).await?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_json", "body", format!("malformed JSON: {e}"))
    })?;
    match value {
        Value::Object(fields) => Ok(fields),
        _ => Err(ApiError::bad_request(
            "invalid_json",
            "body",
            "the body must be a JSON object",
        )),
    }
}

/// Reads the body, refusing more than `limit` bytes without buffering them.
async fn read(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let too_large = || {
        ApiError::bad_request(
            "body_too_large",
            "body",
            format!("the body must be at most {limit} bytes"),
        )
    };
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => too_large(),
            other => ApiError::bad_request("invalid_body", "body", other.to_string()),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `Idempotency-Key` header (IETF draft), validated like every identifier: 400
/// `invalid_idempotency_key` when it is not one.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("\u{0}");
    validate_id(key).map_err(|e| {
        ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key",
            format!("`Idempotency-Key` {e}"),
        )
    })?;
    Ok(Some(key.to_string()))
}
