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

/// `GET /status` → `{"api","db","rabbitmq"}`, 503 when one is down.
#[get("/status")]
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let (db, broker) = components(&state).await;
    let word = |up: bool| if up { "ok" } else { "down" };
    let body = json!({ "api": "ok", "db": word(db), "rabbitmq": word(broker) });
    if db && broker {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
