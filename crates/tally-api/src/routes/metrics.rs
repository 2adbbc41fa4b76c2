//! `GET /metrics`: the replica's Prometheus series (text format), open to scrapers like the
//! health routes — they carry counts and timings, no ledger data.

use actix_web::{get, web, HttpResponse};
use std::time::Duration;
use tally_telemetry::metrics;

use crate::state::AppState;

/// Bound on refreshing the open-holds gauge: a database outage must not stall the scrape
/// (the gauge then keeps its last value).
const HOLDS_TIMEOUT: Duration = Duration::from_secs(1);

#[get("/metrics")]
pub async fn get_metrics(state: web::Data<AppState>) -> HttpResponse {
    match tokio::time::timeout(HOLDS_TIMEOUT, tally_store::reads::open_holds(&state.pool)).await {
        Ok(Ok(count)) => metrics::set_holds_open(count),
        Ok(Err(e)) => tracing::warn!(error = %e, "open holds not counted for /metrics"),
        Err(_) => tracing::warn!("open holds not counted for /metrics: database too slow"),
    }
    match metrics::render() {
        Ok(text) => HttpResponse::Ok()
            .content_type(metrics::CONTENT_TYPE)
            .body(text),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics failed");
            HttpResponse::InternalServerError().finish()
        }
    }
}
