//! `GET /metrics`: the replica's Prometheus series (text format), open to scrapers like the
//! health routes — they carry counts and timings, no ledger data.

use actix_web::{get, web, HttpResponse};
use tally_telemetry::metrics;

use crate::state::AppState;

#[get("/metrics")]
pub async fn get_metrics(state: web::Data<AppState>) -> HttpResponse {
    match metrics::scrape(tally_store::reads::open_holds(&state.pool)).await {
        Ok(text) => HttpResponse::Ok()
            .content_type(metrics::CONTENT_TYPE)
            .body(text),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics failed");
            HttpResponse::InternalServerError().finish()
        }
    }
}
