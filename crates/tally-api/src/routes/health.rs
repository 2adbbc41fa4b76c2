//! Liveness, readiness and the component status.

use crate::model::{self, Clock, ComponentState, Liveness, Readiness, Status};
use crate::state::AppState;
use actix_web::{get, web, HttpResponse};
use tally_store::clock::{ClockSample, ClockState};

/// `GET /health/live`: the process answers.
#[utoipa::path(
    tag = "health",
    operation_id = "getLiveness",
    summary = "Liveness probe",
    description = "200 whenever the process answers HTTP; checks no dependency.",
    responses(
        (status = 200, description = "The process is alive.", body = model::Liveness, example = json!({"status": "ok"})),
    ),
)]
#[get("/health/live")]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Liveness { status: "ok" })
}

async fn components(state: &AppState) -> (bool, bool) {
    let db = tally_store::pool::ping(&state.pool).await.is_ok();
    (db, state.publisher.is_connected())
}

/// `GET /health/ready`: 200 only when both PostgreSQL and RabbitMQ are reachable, so a load
/// balancer stops sending traffic to a replica that could only answer 503.
#[utoipa::path(
    tag = "health",
    operation_id = "getReadiness",
    summary = "Readiness probe",
    description = "200 only when both PostgreSQL and RabbitMQ are reachable, so that a load balancer stops sending traffic to a replica that could only answer 503.",
    responses(
        (status = 200, description = "Ready to serve.", body = model::Readiness, example = json!({"status": "ready"})),
        (status = 503, description = "PostgreSQL or RabbitMQ is unreachable.", body = model::Readiness, example = json!({"status": "not_ready"})),
    ),
)]
#[get("/health/ready")]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    match components(&state).await {
        (true, true) => HttpResponse::Ok().json(Readiness { status: "ready" }),
        _ => HttpResponse::ServiceUnavailable().json(Readiness {
            status: "not_ready",
        }),
    }
}

/// What `/status` says while authentication is off.
pub const AUTH_OFF_WARNING: &str =
    "authentication is off (auth.enabled = false): anyone who can reach this API can post \
     transactions and read every account";

/// `GET /status` → `{"api","db","rabbitmq","clock"}`, 503 when PostgreSQL or RabbitMQ is down.
/// `clock` is this replica's last reading of PostgreSQL's clock: `offsetMs` (database minus
/// this host), `uncertaintyMs`, and `status` — `ok`, `skewed` (withdraw_requests are refused
/// past `ledger.max_clock_skew_ms`) or `unknown` (no recent reading).
#[utoipa::path(
    tag = "health",
    operation_id = "getStatus",
    summary = "Status of the API and of its dependencies",
    description = "Checks PostgreSQL (a ping) and RabbitMQ (the publisher's connection) on every call, and reports this replica's last reading of PostgreSQL's clock (`clock`): withdraw_requests are decided on PostgreSQL's clock, and refused while this replica's clock is unknown or too far from it. `auth` says whether API keys are required; with authentication off, `warning` says so. Any valid API key may read it.",
    responses(
        (status = 200, description = "Every component is up.", body = model::Status, example = json!({"api": "ok", "db": "ok", "rabbitmq": "ok", "clock": {"status": "ok", "offsetMs": 0, "uncertaintyMs": 0}, "auth": "on"})),
        (status = 503, description = "At least one component is down; the body says which.", body = model::Status, example = json!({"api": "ok", "db": "ok", "rabbitmq": "down", "clock": {"status": "ok", "offsetMs": 0, "uncertaintyMs": 0}, "auth": "on"})),
    ),
)]
#[get("/status")]
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let (db, broker) = components(&state).await;
    let reading = |status, r: ClockSample| Clock {
        status,
        offset_ms: Some(r.offset.num_milliseconds()),
        uncertainty_ms: Some(u64::try_from(r.uncertainty.as_millis()).unwrap_or(u64::MAX)),
    };
    let clock = match state.clock.state() {
        ClockState::Trusted(r) => reading("ok", r),
        ClockState::Skewed(r) => reading("skewed", r),
        ClockState::Unknown => Clock {
            status: "unknown",
            offset_ms: None,
            uncertainty_ms: None,
        },
    };
    let body = Status {
        api: ComponentState::Ok,
        db: ComponentState::of(db),
        rabbitmq: ComponentState::of(broker),
        clock,
        auth: if state.keys.enabled() { "on" } else { "off" },
        warning: (!state.keys.enabled()).then_some(AUTH_OFF_WARNING),
    };
    if db && broker {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
