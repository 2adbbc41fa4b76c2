//! Settlement jobs over HTTP: queue one, watch it, cancel it, download its CSV.
//!
//! The API only records requests (`settlement_jobs`); worker processes run the jobs (see
//! `tally_worker::jobs`), so a job survives API restarts. `status` is always the true one:
//! QUEUED, RUNNING, COMPLETED, FAILED (with `error`) or CANCELLED.
//!
//! Bounded, so that nobody can make the jobs or their files crowd out the ledger: a range is
//! at most `jobs.max_range_days` (400 beyond), at most `jobs.max_queued` jobs wait (429
//! beyond), and at most `jobs.download_connections` files stream at once per replica, each on
//! a connection of [`Downloads`]' own pool (503 beyond), never one of the pool the ledger's
//! requests use.

use actix_web::http::header;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::{Datelike, NaiveDate};
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use tally_settings::Settings;
use tally_store::settlement::{self, Job, JobStatus};
use tally_store::Pool;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::error::ApiError;
use crate::routes::account::store_error;
use crate::routes::body::json_object;
use crate::state::AppState;
use crate::{model, openapi};

/// A job request is two dates; anything bigger is not one.
const MAX_BODY_BYTES: usize = 4096;

/// The CSV downloads of one replica: a pool of their own (a slow reader holds its connection
/// for as long as it reads) and as many permits as the pool has connections, so a download
/// beyond the bound is refused at once instead of waiting for a connection.
#[derive(Clone)]
pub struct Downloads {
    pool: Pool,
    permits: Arc<Semaphore>,
}

impl Downloads {
    /// Built lazily like every pool: no connection is opened before the first download.
    pub fn new(settings: &Settings) -> Result<Self, tally_store::StoreError> {
        let size = settings.jobs.download_connections;
        let mut database = settings.database.clone();
        database.pool_size = size;
        Ok(Self {
            pool: tally_store::connect(&database)?,
            permits: Arc::new(Semaphore::new(size)),
        })
    }
}

fn bad(code: &'static str, field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, field, message)
}

/// A `YYYY-MM-DD` day (years 0001–9999).
fn day(body: &serde_json::Map<String, Value>, field: &'static str) -> Result<NaiveDate, ApiError> {
    let text = match body.get(field) {
        None | Some(Value::Null) => {
            return Err(bad(
                "missing_field",
                field,
                format!("`{field}` is required (YYYY-MM-DD)"),
            ))
        }
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(bad(
                "invalid_date",
                field,
                format!("`{field}` must be a YYYY-MM-DD string"),
            ))
        }
    };
    // Exactly ten characters: chrono alone would also take `2024-1-5` or five-digit years.
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|d| shaped && d.year() >= 1)
        .ok_or_else(|| {
            bad(
                "invalid_date",
                field,
                format!("`{field}` must be a calendar date YYYY-MM-DD"),
            )
        })
}

/// `POST /jobs/settlements {"from":"YYYY-MM-DD","to":"YYYY-MM-DD"}` → 202
/// `{"jobId","status":"QUEUED"}` with `Location: /jobs/{jobId}`. Days are UTC days of the
/// ledger's `appliedAt`, both ends included, at most `jobs.max_range_days` of them (else 400
/// `range_too_long`); 429 `too_many_jobs` when `jobs.max_queued` jobs are already waiting.
#[utoipa::path(
    tag = "jobs",
    operation_id = "createSettlementJob",
    summary = "Queue a settlement job",
    description = "Queues the settlement of the days `[from, to]`: per account per UTC day of `appliedAt`, the applied deposits, applied withdraws, net and count, upserted into the `settlements` table (re-running a range rewrites the same rows). Worker processes run jobs (claimed with `FOR UPDATE SKIP LOCKED`), one day per chunk, aggregating in PostgreSQL: memory does not grow with the range. Watch it with `GET /jobs/{id}`. Bounded: a range covers at most `jobs.max_range_days` days (default 366; longer is a 400 `range_too_long`), and at most `jobs.max_queued` jobs wait to run (default 100; one more is a 429 `too_many_jobs` with `Retry-After`). Not replayed by nginx on another replica once a replica received it (it is not idempotent: a repeat queues a second job).",
    request_body(content = model::SettlementRequest),
    responses(
        (status = 202, description = "Queued.", body = model::JobQueued, headers(("Location" = String, description = "`/jobs/{jobId}`"))),
        (status = 400, description = "Invalid body: `invalid_json`, `missing_field`, `invalid_date` (not `YYYY-MM-DD`), `invalid_range` (`from` after `to`), `range_too_long` (more than `jobs.max_range_days` days, `field` = `to`), `body_too_large`; `field` names the culprit.", body = model::ErrorBody, example = json!({"error": {"code": "invalid_date", "message": "`from` must be a calendar date YYYY-MM-DD", "field": "from"}})),
        (status = 429, description = "`jobs.max_queued` jobs are already waiting to run (code `too_many_jobs`). Nothing was queued; retry after `Retry-After` seconds.", body = model::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying (`api.retry_after_secs`, default 1).")), example = json!({"error": {"code": "too_many_jobs", "message": "100 settlement jobs are already waiting to run; retry after the Retry-After delay"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[post("/jobs/settlements")]
pub async fn create_settlement(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let fields = json_object(payload, MAX_BODY_BYTES).await?;
    let from = day(&fields, "from")?;
    let to = day(&fields, "to")?;
    if from > to {
        return Err(bad(
            "invalid_range",
            "from",
            "`from` must not be after `to`",
        ));
    }
    let bounds = &state.settings.jobs;
    if (to - from).num_days() >= i64::from(bounds.max_range_days) {
        return Err(bad(
            "range_too_long",
            "to",
            format!(
                "a job covers at most {} days (`from` and `to` included); split the range",
                bounds.max_range_days
            ),
        ));
    }
    let job = settlement::create_bounded(&state.pool, from, to, bounds.max_queued)
        .await
        .map_err(|e| store_error(&state, &e))?
        .ok_or_else(|| ApiError::TooManyRequests {
            code: "too_many_jobs",
            message: format!(
                "{} settlement jobs are already waiting to run; retry after the Retry-After delay",
                bounds.max_queued
            ),
            retry_after_secs: state.settings.api.retry_after_secs,
        })?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/jobs/{}", job.id)))
        .json(model::JobQueued {
            job_id: job.id,
            status: job.status.into(),
        }))
}

fn job_id(value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value).map_err(|_| bad("invalid_id", "id", "`id` must be a job id (UUID)"))
}

async fn find(state: &AppState, id: Uuid) -> Result<Job, ApiError> {
    settlement::get(&state.pool, id)
        .await
        .map_err(|e| store_error(state, &e))?
        .ok_or_else(|| ApiError::NotFound {
            code: "job_not_found",
            message: format!("no job {id}"),
        })
}

/// The `{id}` path parameter of the job routes.
const JOB_ID: &str = "The job id returned by `POST /jobs/settlements` (a UUID; anything else is a 400 `invalid_id`).";

/// `GET /jobs/{id}` → the job's true status and progress.
#[utoipa::path(
    tag = "jobs",
    operation_id = "getJob",
    summary = "Status and progress of a job",
    params(
        ("id" = String, Path, format = Uuid, description = JOB_ID),
    ),
    responses(
        (status = 200, description = "The job.", body = model::Job),
        (status = 400, response = openapi::BadJobId),
        (status = 404, response = openapi::JobNotFound),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/jobs/{id}")]
pub async fn get_job(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    crate::routes::literal_path_method(&req)?;
    let job = find(&state, job_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(model::Job::from(job)))
}

/// `POST /jobs/{id}/cancel`: a QUEUED job (or one whose worker is gone) is CANCELLED at once
/// (200); a RUNNING one stops at its next chunk boundary (202, `cancelRequested` true, poll
/// `GET /jobs/{id}`), keeping the days already done; cancelling a CANCELLED job again is a
/// 200; a COMPLETED or FAILED job cannot be cancelled (409 `job_finished`).
#[utoipa::path(
    tag = "jobs",
    operation_id = "cancelJob",
    summary = "Cancel a job",
    description = "A QUEUED job, or a RUNNING one whose worker stopped heartbeating, is CANCELLED at once (200). A RUNNING job stops at its next chunk boundary (202 with `cancelRequested: true` and the true status RUNNING; poll `GET /jobs/{id}`); the days already done stay in `settlements`. Cancelling a CANCELLED job again answers 200.",
    params(
        ("id" = String, Path, format = Uuid, description = JOB_ID),
    ),
    responses(
        (status = 200, description = "The job is CANCELLED.", body = model::Job),
        (status = 202, description = "Cancellation requested; the job stops at its next chunk.", body = model::Job),
        (status = 400, response = openapi::BadJobId),
        (status = 404, response = openapi::JobNotFound),
        (status = 409, description = "The job is COMPLETED or FAILED. Code `job_finished`.", body = model::ErrorBody, example = json!({"error": {"code": "job_finished", "message": "job 5f0c7c1e-8a43-4a0e-9b7e-2d1f3c4b5a69 is already COMPLETED"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[post("/jobs/{id}/cancel")]
pub async fn cancel_job(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let job = settlement::cancel(&state.pool, id, settlement::STALE_AFTER)
        .await
        .map_err(|e| store_error(&state, &e))?
        .ok_or_else(|| ApiError::NotFound {
            code: "job_not_found",
            message: format!("no job {id}"),
        })?;
    match job.status {
        JobStatus::Cancelled => Ok(HttpResponse::Ok().json(model::Job::from(job))),
        JobStatus::Queued | JobStatus::Running => {
            Ok(HttpResponse::Accepted().json(model::Job::from(job)))
        }
        JobStatus::Completed | JobStatus::Failed => Err(ApiError::Conflict {
            code: "job_finished",
            message: format!("job {id} is already {}", job.status.as_str()),
        }),
    }
}

/// `GET /jobs/{id}/download` → `text/csv`, streamed: `account_id,day,deposits,withdraws,net,
/// count`, one line per account per day of the job's range, ordered by day then account. 409
/// `job_not_completed` unless the job is COMPLETED; 503 `downloads_busy` when
/// `jobs.download_connections` downloads are already streaming from this replica.
#[utoipa::path(
    tag = "jobs",
    operation_id = "downloadSettlement",
    summary = "The settlement file of a completed job (CSV)",
    description = "Streams `settlements` rows of the job's range as CSV with a header line `account_id,day,deposits,withdraws,net,count`, ordered by day then account. Amounts are exact decimals (`100.25`, `-10`); `net` = deposits - withdraws; days without transactions for an account have no line. Streamed from PostgreSQL (`COPY`): any size, constant memory. At most `jobs.download_connections` downloads (default 2) stream at once from one API replica, each on a PostgreSQL connection of a small pool of their own: a download never takes a connection the ledger's requests need.",
    params(
        ("id" = String, Path, format = Uuid, description = JOB_ID),
    ),
    responses(
        (status = 200, description = "The CSV file.", body = String, content_type = "text/csv", headers(("Content-Disposition" = String, description = "`attachment; filename=\"settlements-FROM-TO.csv\"`")), example = json!("account_id,day,deposits,withdraws,net,count\nacc-1,2024-01-01,100.25,30.5,69.75,3\nacc-2,2024-01-01,10,20,-10,2\n")),
        (status = 400, response = openapi::BadJobId),
        (status = 404, response = openapi::JobNotFound),
        (status = 409, description = "The job is not COMPLETED (yet). Code `job_not_completed`.", body = model::ErrorBody, example = json!({"error": {"code": "job_not_completed", "message": "job 5f0c7c1e-8a43-4a0e-9b7e-2d1f3c4b5a69 is RUNNING: its file is served once it is COMPLETED"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, description = "`downloads_busy`: `jobs.download_connections` downloads are already streaming from this replica; or `unavailable`: PostgreSQL is unreachable. Retry after `Retry-After` seconds.", body = model::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying (`api.retry_after_secs`, default 1).")), example = json!({"error": {"code": "downloads_busy", "message": "2 settlement downloads are in progress on this server; retry after the Retry-After delay"}})),
    ),
)]
#[get("/jobs/{id}/download")]
pub async fn download(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = find(&state, job_id(&path)?).await?;
    if job.status != JobStatus::Completed {
        return Err(ApiError::Conflict {
            code: "job_not_completed",
            message: format!(
                "job {} is {}: its file is served once it is COMPLETED",
                job.id,
                job.status.as_str()
            ),
        });
    }
    let permit = state
        .downloads
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy {
            code: "downloads_busy",
            message: format!(
                "{} settlement downloads are in progress on this server; retry after the \
                 Retry-After delay",
                state.settings.jobs.download_connections
            ),
            retry_after_secs: state.settings.api.retry_after_secs,
        })?;
    let (client, rows) = settlement::csv(&state.downloads.pool, &job)
        .await
        .map_err(|e| store_error(&state, &e))?;
    // The connection (of the downloads' own pool) and the permit travel with the stream and
    // are given back when it ends (or the client goes away). PostgreSQL's bytes are forwarded
    // as they come: the response never holds more than a chunk, however large the range.
    let held = (permit, client);
    let body =
        futures_util::stream::unfold((held, Box::pin(rows)), |(held, mut rows)| async move {
            let chunk = rows.next().await?;
            Some((chunk, (held, rows)))
        });
    let filename = format!("settlements-{}-{}.csv", job.from, job.to);
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ))
        .streaming(body))
}
