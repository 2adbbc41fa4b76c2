//! Liveness, readiness and the component status.

use actix_web::{get, web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

/// `GET /health/live`: the process answers.
#[get("/health/live")]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn components(state: &AppState) -> (bool, bool) {
    let db = tally_store::pool::ping(&state.pool).await.is_ok();
    (db, state.publisher.is_connected())
}

/// `GET /health/ready`: 200 only when both PostgreSQL and RabbitMQ are reachable, so a load
/// balancer stops sending traffic to a replica that could only answer 503.
#[get("/health/ready")]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    match components(&state).await {
        (true, true) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        _ => HttpResponse::ServiceUnavailable().json(json!({ "status": "not_ready" })),
    }
}

/// `GET /status` → `{"api","db","rabbitmq","clock"}`, 503 when PostgreSQL or RabbitMQ is down.
/// `clock` is this replica's last reading of PostgreSQL's clock: `offsetMs` (database minus
/// this host), `uncertaintyMs`, and `status` — `ok`, `skewed` (withdraw_requests are refused
/// past `ledger.max_clock_skew_ms`) or `unknown` (no recent reading).
#[get("/status")]
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let (db, broker) = components(&state).await;
    let word = |up: bool| if up { "ok" } else { "down" };
    let max = std::time::Duration::from_millis(state.settings.ledger.max_clock_skew_ms);
    let clock = match state.clock.reading() {
        Some(r) => json!({
            "status": if r.worst_skew() <= max { "ok" } else { "skewed" },
            "offsetMs": r.offset.num_milliseconds(),
            "uncertaintyMs": u64::try_from(r.uncertainty.as_millis()).unwrap_or(u64::MAX),
        }),
        None => json!({ "status": "unknown" }),
    };
    let body = json!({ "api": "ok", "db": word(db), "rabbitmq": word(broker), "clock": clock });
    if db && broker {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
