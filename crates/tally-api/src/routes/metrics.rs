//! `GET /metrics`: the replica's Prometheus series (text format), open to scrapers like the
//! health routes — they carry counts and timings, no ledger data.

use actix_web::{get, web, HttpResponse};
use tally_telemetry::metrics;

use crate::state::AppState;

#[utoipa::path(
    tag = "metrics",
    operation_id = "getMetrics",
    summary = "Prometheus metrics of this replica",
    description = "The replica's series in the Prometheus text exposition format (0.0.4): `tally_http_requests_total{route,method,status}` and the `tally_http_request_duration_seconds` histogram (`route` is the route pattern such as `/account/{account_id}`, or `unmatched`), the publisher's `tally_publishes_total`, `tally_publish_confirms_total`, `tally_publish_nacks_total`, `tally_publish_returns_total`, `tally_publish_failures_total{reason}`, the polled `tally_queue_depth{shard}` and `tally_dead_letter_queue_depth`, `tally_holds_open` (ledger-wide, refreshed on each scrape) and `tally_webhook_deliveries_total{outcome}`. Counters are per replica: behind nginx each scrape reaches one replica, so scrape every replica on its own port. Not behind the debug token: no ledger data. Workers serve their own series (batches, outcomes, apply lag, shards owned) on `worker.metrics_addr`.",
    responses(
        (status = 200, description = "The metrics, as text.", body = String, content_type = "text/plain", example = json!("# HELP tally_publish_confirms_total Publishes the broker confirmed (ack) and routed to a shard queue.\n# TYPE tally_publish_confirms_total counter\ntally_publish_confirms_total 42\n")),
    ),
)]
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
