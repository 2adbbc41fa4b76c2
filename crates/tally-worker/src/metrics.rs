//! The worker's `GET /metrics` listener (`worker.metrics_addr`): the same Prometheus text as
//! the API's, with the worker's series (batches, outcomes, apply lag, shards owned). A small
//! actix-web server on one thread: it shares nothing with the shard loops but the counters.

use actix_web::{web, App, HttpResponse, HttpServer};
use std::net::TcpListener;
use tally_store::Pool;
use tally_telemetry::metrics;
use tokio_util::sync::CancellationToken;

/// Serves `/metrics` on `listener` until `shutdown`.
pub fn serve(
    listener: TcpListener,
    pool: Pool,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(pool.clone()))
            .route("/metrics", web::get().to(get_metrics))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
    Ok(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    }))
}

async fn get_metrics(pool: web::Data<Pool>) -> HttpResponse {
    match metrics::scrape(tally_store::reads::open_holds(&pool)).await {
        Ok(text) => HttpResponse::Ok()
            .content_type(metrics::CONTENT_TYPE)
            .body(text),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics failed");
            HttpResponse::InternalServerError().finish()
        }
    }
}
