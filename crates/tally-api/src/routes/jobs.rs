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
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tally_core::settings::Settings;
use tally_store::settlement::{self, Job, JobStatus};
use tally_store::Pool;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::error::ApiError;
use crate::routes::account::store_error;
use crate::routes::body::json_object;
use crate::state::AppState;

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

/// What `GET /jobs/{id}` shows.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct JobView {
    job_id: Uuid,
    status: JobStatus,
    from: NaiveDate,
    to: NaiveDate,
    /// Days of the range done.
    processed: i64,
    /// Days in the range.
    total: i64,
    /// processed / total, from 0 to 1.
    progress: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    cancel_requested: bool,
    /// Workers that claimed it (more than one: it was resumed after losing its worker).
    attempts: i32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        let progress = if j.total > 0 {
            // Rounded to 4 places: a ratio for humans and progress bars.
            ((j.processed as f64 / j.total as f64) * 10_000.0).round() / 10_000.0
        } else {
            0.0
        };
        Self {
            job_id: j.id,
            status: j.status,
            from: j.from,
            to: j.to,
            processed: j.processed,
            total: j.total,
            progress,
            error: j.error,
            cancel_requested: j.cancel_requested,
            attempts: j.attempts,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
        }
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
        .json(json!({"jobId": job.id, "status": job.status})))
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

/// `GET /jobs/{id}` → the job's true status and progress.
#[get("/jobs/{id}")]
pub async fn get_job(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    crate::routes::literal_path_method(&req)?;
    let job = find(&state, job_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(JobView::from(job)))
}

/// `POST /jobs/{id}/cancel`: a QUEUED job (or one whose worker is gone) is CANCELLED at once
/// (200); a RUNNING one stops at its next chunk boundary (202, `cancelRequested` true, poll
/// `GET /jobs/{id}`), keeping the days already done; cancelling a CANCELLED job again is a
/// 200; a COMPLETED or FAILED job cannot be cancelled (409 `job_finished`).
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
        JobStatus::Cancelled => Ok(HttpResponse::Ok().json(JobView::from(job))),
        JobStatus::Queued | JobStatus::Running => {
            Ok(HttpResponse::Accepted().json(JobView::from(job)))
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
