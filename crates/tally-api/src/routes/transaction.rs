//! `POST /transaction`: validate, then hand the command to the write protocol
//! ([`crate::submit`]): a deposit or withdraw is answered once it is surely in its shard queue,
//! a withdraw_request once the shard's worker decided it (under a deadline).

use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use actix_web::{post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use std::time::Duration;
use tally_core::amount::money_json;
use tally_core::command::NewTransaction;
use tally_core::validate_id;
use uuid::Uuid;

use crate::error::ApiError;
use crate::observe::RequestId;
use crate::routes::body::json_object;
use crate::routes::users::owned_by_another_error;
use crate::state::AppState;
use crate::submit::{self, Answer, Decision, Receipt};

#[post("/transaction")]
pub async fn post_transaction(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let fields = json_object(payload, state.settings.api.max_body_bytes).await?;
    let mut tx = NewTransaction::from_json(&fields, &state.amount_rules)?;
    if let Some(key) = idempotency_key(req.headers())? {
        tx = tx.with_idempotency_key(key);
    }
    let ledger = &state.settings.ledger;
    let wait = deadline_budget(
        req.headers(),
        Duration::from_millis(ledger.request_deadline_ms),
        Duration::from_millis(ledger.decision_margin_ms) + MIN_DECISION_TIME,
    );
    match submit::submit(&state, &tx, &RequestId::of(&req), wait).await {
        Answer::Accepted(receipt) | Answer::Replayed(receipt) => {
            Ok(HttpResponse::Ok().json(Accepted::from(receipt)))
        }
        Answer::Approved(decision) => Ok(HttpResponse::Created().json(Decided::approved(decision))),
        Answer::Denied(decision) => {
            Ok(HttpResponse::build(StatusCode::PAYMENT_REQUIRED).json(Decided::denied(decision)))
        }
        Answer::IdReused => Err(ApiError::IdReused),
        Answer::OwnedByAnother => Err(owned_by_another_error(&tx.account_id)),
        Answer::Unavailable(message) => Err(state.unavailable(message)),
        Answer::OutcomeUnknown(message) => Err(state.outcome_unknown(message)),
    }
}

/// 200 body of a deposit or withdraw.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    id: String,
    account_id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(with = "money_json")]
    amount: Decimal,
    status: &'static str,
    accepted_at: DateTime<Utc>,
}

impl From<Receipt> for Accepted {
    fn from(r: Receipt) -> Self {
        Self {
            id: r.id,
            account_id: r.account_id,
            kind: r.kind.as_str(),
            amount: r.amount,
            status: "accepted",
            accepted_at: r.accepted_at,
        }
    }
}

/// 201/402 body of a withdraw_request.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Decided {
    id: String,
    account_id: String,
    #[serde(with = "money_json")]
    amount: Decimal,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Decided {
    fn approved(d: Decision) -> Self {
        Self::new(d, "approved")
    }

    fn denied(d: Decision) -> Self {
        Self::new(d, "denied")
    }

    fn new(d: Decision, status: &'static str) -> Self {
        Self {
            id: d.id,
            account_id: d.account_id,
            amount: d.amount,
            status,
            hold_id: d.hold_id,
            reason: d.reason,
        }
    }
}

/// The least time a withdraw_request is given past its decision margin, however late a retry
/// arrives: enough for a worker to decide it.
const MIN_DECISION_TIME: Duration = Duration::from_millis(500);

/// How long this replica may wait for a withdraw_request's decision: what is left of the
/// deadline since nginx received the request (`X-Request-Start: t=<unix seconds>`, set by
/// `nginx/*.conf`), never less than `floor`, never more than `full`. When a replica dies while
/// a request waits, nginx retries it on another replica: counted from the first arrival, the
/// client waits about one deadline, not two. Without the header (direct calls) it is `full`;
/// a start in the future (clock skew) counts as now. This compares nginx's clock with this
/// host's; the clamp bounds what any skew between them can do: the wait stays between `floor`
/// and `full`, and the decision itself is judged on PostgreSQL's clock (see [`crate::submit`]).
fn deadline_budget(headers: &HeaderMap, full: Duration, floor: Duration) -> Duration {
    let started = headers
        .get("x-request-start")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("t="))
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t > 0.0);
    let Some(started) = started else {
        return full;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let elapsed = (now - started).clamp(0.0, full.as_secs_f64());
    full.saturating_sub(Duration::from_secs_f64(elapsed))
        .max(floor)
        .min(full)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::deadline_budget;
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn started(ago: Duration) -> HeaderMap {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - ago;
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-request-start"),
            HeaderValue::from_str(&format!("t={:.3}", t.as_secs_f64())).unwrap(),
        );
        headers
    }

    #[test]
    fn a_retry_gets_what_is_left_of_the_deadline_since_nginx_received_it() {
        let (full, floor) = (Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(deadline_budget(&HeaderMap::new(), full, floor), full);
        // 1.2 s ago (the header keeps milliseconds, so allow for the rounding).
        let left = deadline_budget(&started(Duration::from_millis(1200)), full, floor);
        assert!(
            left <= Duration::from_millis(1810) && left > Duration::from_millis(1500),
            "{left:?}"
        );
        // Late retries still get the floor; a start in the future counts as now.
        assert_eq!(
            deadline_budget(&started(Duration::from_secs(10)), full, floor),
            floor
        );
        let mut future = HeaderMap::new();
        future.insert(
            HeaderName::from_static("x-request-start"),
            HeaderValue::from_static("t=99999999999.000"),
        );
        assert_eq!(deadline_budget(&future, full, floor), full);
        let mut junk = HeaderMap::new();
        junk.insert(
            HeaderName::from_static("x-request-start"),
            HeaderValue::from_static("t=NaN"),
        );
        assert_eq!(deadline_budget(&junk, full, floor), full);
    }
}
