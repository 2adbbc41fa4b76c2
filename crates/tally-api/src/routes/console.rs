//! The operator console: `GET /console` (one HTML page, its script and its style sheet, built
//! into the binary: no network, no framework at run time) and the `/debug/*` routes only the
//! console needed — shards with their lease and activity, throughput and lag over the last
//! minutes, an account's holds, and re-publishing one dead letter. Registered only when
//! `debug.enabled`, like every `/debug/*` route.
//!
//! The page and its assets hold no data and are served without a key (a browser cannot send
//! one on navigation); every data call the page makes carries the key the operator typed,
//! as `Authorization: Bearer`, and is checked like any `/debug/*` call ([`authorize`]).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use tally_core::amount::money_json;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::routes::account::store_error;
use crate::routes::debug::authorize;
use crate::routes::path_id;
use crate::state::AppState;
use crate::{model, openapi};

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// The page may only load its own script and style sheet and call this API: no inline
/// script, nothing from elsewhere, never framed. The script writes every value as text
/// (`textContent`), never as markup, so a dead letter's body cannot become script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// `GET /console` → the console's HTML page.
#[utoipa::path(
    tag = "debug",
    operation_id = "getConsole",
    summary = "Operator console (HTML page)",
    description = "A small web page for operators: shards with owner, epoch, queue depth and lag; throughput and lag over the last minutes; dead letters with a re-publish button; the conservation check; failing webhook deliveries; an account lookup (balance, holds, history). The page and its two assets (`/console/console.js`, `/console/console.css`, built into the binary) hold no data and need no key; every call the page makes for data carries the API key typed into it (kept in the tab's `sessionStorage`) and needs what `/debug/*` needs: an `admin` API key (with `auth.enabled = false`: the bearer `debug.token` when it is set). Only served when `debug.enabled` is true (otherwise 404).",
    responses(
        (status = 200, description = "The page.", content_type = "text/html; charset=utf-8", body = String),
    ),
)]
#[get("/console")]
pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /console/{asset}` → the page's script or style sheet.
#[utoipa::path(
    tag = "debug",
    operation_id = "getConsoleAsset",
    summary = "Operator console asset",
    description = "The console's script (`console.js`) or style sheet (`console.css`). Any other name is a 404 `console_asset_not_found`. Only served when `debug.enabled` is true.",
    params(
        ("asset" = String, Path, description = "`console.js` or `console.css`."),
    ),
    responses(
        (status = 200, description = "The asset.", content(
            (String = "text/javascript; charset=utf-8"),
            (String = "text/css; charset=utf-8"),
        )),
        (status = 404, description = "No such asset. Code `console_asset_not_found`.", body = model::ErrorBody, example = json!({"error": {"code": "console_asset_not_found", "message": "no console asset \"x.js\""}})),
    ),
)]
#[get("/console/{asset}")]
pub async fn console_asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    match path.as_str() {
        "console.js" => Ok(asset("text/javascript; charset=utf-8", SCRIPT)),
        "console.css" => Ok(asset("text/css; charset=utf-8", STYLE)),
        other => Err(ApiError::NotFound {
            code: "console_asset_not_found",
            message: format!("no console asset {other:?}"),
        }),
    }
}

/// The window of a shard's recent activity, in seconds.
const ACTIVITY_WINDOW_SECS: i32 = 60;

/// One shard as the console shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Shard {
    #[schema(minimum = 0)]
    pub shard: i32,
    /// The worker holding (or last holding) the lease; null when nobody ever took it.
    #[schema(required = true)]
    pub owner: Option<String>,
    /// The lease's fencing epoch: grows by one at every change of owner.
    #[schema(minimum = 0)]
    pub epoch: i64,
    #[schema(required = true)]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The lease is held and not past its expiry (PostgreSQL's clock).
    pub live: bool,
    /// Ready messages in the shard's queue; null when the broker could not be asked.
    #[schema(required = true, minimum = 0)]
    pub queue_depth: Option<u32>,
    /// Commands the shard decided in the last `windowSecs` seconds.
    #[schema(minimum = 0)]
    pub decided: i64,
    /// Largest time from the API's acceptance to the worker's commit among those commands
    /// (queue lag plus apply time), in milliseconds; null when it decided none.
    #[schema(required = true)]
    pub lag_max_ms: Option<f64>,
    /// The newest of those decisions; null when it decided none.
    #[schema(required = true)]
    pub last_applied_at: Option<DateTime<Utc>>,
}

/// Every shard with its lease, queue and recent activity.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Shards {
    /// The window of `decided`, `lagMaxMs` and `lastAppliedAt`, in seconds.
    pub window_secs: i32,
    /// Ready messages in the dead-letter queue (not yet archived); null when the broker
    /// could not be asked.
    #[schema(required = true, minimum = 0)]
    pub dead_letter_queue_depth: Option<u32>,
    pub shards: Vec<Shard>,
}

/// `GET /debug/shards` → every shard's lease (owner, epoch), queue depth and recent lag.
#[utoipa::path(
    tag = "debug",
    operation_id = "debugListShards",
    summary = "Shards: lease, queue depth, lag (debug)",
    description = "One row per shard, by shard number: the lease (`owner`, fencing `epoch`, expiry, whether it is `live`), the ready messages in its queue (asked of the broker on each call; null when it cannot be asked), and what the shard decided in the last `windowSecs` seconds: how many commands, the largest accepted → committed time (`lagMaxMs`), the newest decision. A shard with a growing `queueDepth` and no decisions is stalled. Only served when `debug.enabled` is true; needs an `admin` API key (with `auth.enabled = false`: the bearer `debug.token` when it is set).",
    responses(
        (status = 200, description = "The shards.", body = Shards),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/debug/shards")]
pub async fn shards(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let rows = tally_store::overview::shards(&state.pool, ACTIVITY_WINDOW_SECS)
        .await
        .map_err(|e| store_error(&state, &e))?;
    let topology = state.publisher.topology();
    let depths: Option<HashMap<String, u32>> = state
        .publisher
        .queue_depths()
        .await
        .ok()
        .map(|d| d.into_iter().collect());
    let depth = |queue: String| depths.as_ref().and_then(|d| d.get(&queue).copied());
    let shards = rows
        .into_iter()
        .map(|r| Shard {
            queue_depth: u16::try_from(r.shard)
                .ok()
                .and_then(|s| depth(topology.shard_queue(s))),
            shard: r.shard,
            owner: r.owner,
            epoch: r.epoch,
            lease_expires_at: r.lease_expires_at,
            live: r.live,
            decided: r.decided,
            lag_max_ms: r.lag_max_ms,
            last_applied_at: r.last_applied_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(Shards {
        window_secs: ACTIVITY_WINDOW_SECS,
        dead_letter_queue_depth: depth(topology.dead_queue()),
        shards,
    }))
}

/// Width of a throughput bucket, in seconds.
const BUCKET_SECS: i32 = 10;
/// Largest `minutes` of `GET /debug/throughput`.
const MAX_MINUTES: i32 = 60;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThroughputQuery {
    /// How far back, in minutes: 1 to 60, default 10. Out of range is a 400
    /// `invalid_minutes`; not an integer is a 400 `invalid_query`.
    #[param(minimum = 1, maximum = 60)]
    minutes: Option<i32>,
}

/// Decisions in one bucket.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// Start of the bucket.
    pub at: DateTime<Utc>,
    /// Commands decided (applied, rejected, approved or denied) in it.
    #[schema(minimum = 0)]
    pub decided: i64,
    /// Mean and largest accepted → committed time of those commands, in milliseconds; null
    /// for an empty bucket.
    #[schema(required = true)]
    pub lag_avg_ms: Option<f64>,
    #[schema(required = true)]
    pub lag_max_ms: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Throughput {
    /// Width of each bucket, in seconds.
    pub bucket_secs: i32,
    /// Oldest first, empty buckets included; the last one is still filling.
    pub buckets: Vec<Bucket>,
}

/// `GET /debug/throughput?minutes=` → decisions and their lag per 10-second bucket.
#[utoipa::path(
    tag = "debug",
    operation_id = "debugThroughput",
    summary = "Throughput and lag over the last minutes (debug)",
    description = "The ledger's decisions over the last `minutes` minutes in 10-second buckets (oldest first, empty buckets included, the last one still filling): how many commands were decided, and their mean and largest accepted → committed time. Read from the recorded transactions, so every replica answers the same. Only served when `debug.enabled` is true; needs an `admin` API key (with `auth.enabled = false`: the bearer `debug.token` when it is set).",
    params(ThroughputQuery),
    responses(
        (status = 200, description = "The buckets.", body = Throughput),
        (status = 400, description = "`minutes` outside 1..60 (`invalid_minutes`) or not an integer (`invalid_query`).", body = model::ErrorBody, example = json!({"error": {"code": "invalid_minutes", "message": "`minutes` must be between 1 and 60", "field": "minutes"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/debug/throughput")]
pub async fn throughput(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<ThroughputQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let minutes = query.minutes.unwrap_or(10);
    if !(1..=MAX_MINUTES).contains(&minutes) {
        return Err(ApiError::bad_request(
            "invalid_minutes",
            "minutes",
            format!("`minutes` must be between 1 and {MAX_MINUTES}"),
        ));
    }
    let buckets = tally_store::overview::throughput(&state.pool, minutes, BUCKET_SECS)
        .await
        .map_err(|e| store_error(&state, &e))?;
    Ok(HttpResponse::Ok().json(Throughput {
        bucket_secs: BUCKET_SECS,
        buckets: buckets
            .into_iter()
            .map(|b| Bucket {
                at: b.at,
                decided: b.decided,
                lag_avg_ms: b.lag_avg_ms,
                lag_max_ms: b.lag_max_ms,
            })
            .collect(),
    }))
}

/// Holds listed by `GET /debug/accounts/{accountId}/holds`.
const HOLDS_LIMIT: i64 = 100;

/// A hold placed by an approved withdraw_request.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub id: Uuid,
    /// The withdraw_request that placed it.
    pub request_id: String,
    #[serde(with = "money_json")]
    #[schema(value_type = openapi::PositiveMoney)]
    pub amount: Decimal,
    /// `open`, `captured` (by the withdraw `capturedBy`), `expired` or `released` (voided).
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[schema(required = true)]
    pub closed_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub captured_by: Option<String>,
}

/// `GET /debug/accounts/{accountId}/holds` → the account's newest holds, any status.
#[utoipa::path(
    tag = "debug",
    operation_id = "debugAccountHolds",
    summary = "An account's holds (debug)",
    description = "The newest 100 holds of the account, newest first, whatever their status: `open` (counted in `held` until `expiresAt`), `captured`, `expired` or `released`. Empty for an account never used. Only served when `debug.enabled` is true; needs an `admin` API key (with `auth.enabled = false`: the bearer `debug.token` when it is set).",
    params(
        ("account_id" = openapi::Identifier, Path, description = "The account id."),
    ),
    responses(
        (status = 200, description = "The holds (possibly none).", body = Vec<Hold>),
        (status = 400, response = openapi::BadPath),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/debug/accounts/{account_id}/holds")]
pub async fn holds(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let account_id = path.into_inner();
    path_id(&account_id, "accountId")?;
    let rows = tally_store::overview::holds(&state.pool, &account_id, HOLDS_LIMIT)
        .await
        .map_err(|e| store_error(&state, &e))?;
    let holds: Vec<Hold> = rows
        .into_iter()
        .map(|h| Hold {
            id: h.id,
            request_id: h.request_id,
            amount: h.amount,
            status: h.status,
            created_at: h.created_at,
            expires_at: h.expires_at,
            closed_at: h.closed_at,
            captured_by: h.captured_by,
        })
        .collect();
    Ok(HttpResponse::Ok().json(holds))
}

/// `POST /debug/dead-letters/{id}/republish` → sends one archived dead letter back to its
/// shard queue, then marks it: what `tally-worker dead-letters republish ID` does.
#[utoipa::path(
    tag = "debug",
    operation_id = "debugRepublishDeadLetter",
    summary = "Re-publish one dead letter (debug)",
    description = "Sends the archived dead letter back to its shard queue — the shard of its account when its body decodes, else the routing key it had — with its original message id, and marks it re-published once the broker confirmed it (the same routing as `tally-worker dead-letters republish ID`). Re-publish after fixing what made the worker refuse it: a message that still cannot be applied is dead-lettered again, and archived as a new dead letter. A command already recorded under its id has no second effect (the worker dedupes). Only served when `debug.enabled` is true; needs an `admin` API key (with `auth.enabled = false`: the bearer `debug.token` when it is set).",
    params(
        ("id" = openapi::Identifier, Path, description = "The dead letter's id (`GET /debug/dead-letters`)."),
    ),
    responses(
        (status = 200, description = "Confirmed by the broker and marked: the dead letter with its `republishedAt`.", body = model::DeadLetter),
        (status = 400, response = openapi::BadPath),
        (status = 404, description = "No dead letter with this id. Code `dead_letter_not_found`; nothing was sent.", body = model::ErrorBody, example = json!({"error": {"code": "dead_letter_not_found", "message": "no dead letter \"9f86d081884c7d659a2feaa0c55ad015\""}})),
        (status = 409, description = "Already re-published (code `already_republished`); nothing was sent.", body = model::ErrorBody, example = json!({"error": {"code": "already_republished", "message": "dead letter \"9f86d081884c7d659a2feaa0c55ad015\" was re-published at 2024-01-01T00:00:00Z"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, description = "`unavailable`: the broker or PostgreSQL is unreachable, nothing was sent. `outcome_unknown`: sent, not confirmed in time (the letter stays unmarked and may be in its queue), or confirmed and then not marked; re-publishing it again is harmless: the worker dedupes.", body = model::ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait before retrying (`api.retry_after_secs`, default 1).")), example = json!({"error": {"code": "outcome_unknown", "message": "the broker did not confirm the dead letter; it may be in its queue and stays unmarked"}})),
    ),
)]
#[post("/debug/dead-letters/{id}/republish")]
pub async fn republish(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let id = path.into_inner();
    path_id(&id, "id")?;
    let store = |e| store_error(&state, &e);
    let letter = tally_store::dead_letters::get(&state.pool, &id)
        .await
        .map_err(store)?
        .ok_or_else(|| ApiError::NotFound {
            code: "dead_letter_not_found",
            message: format!("no dead letter {id:?}"),
        })?;
    if let Some(at) = letter.republished_at {
        return Err(ApiError::Conflict {
            code: "already_republished",
            message: format!("dead letter {id:?} was re-published at {}", at.to_rfc3339()),
        });
    }
    let routing_key = state.publisher.topology().dead_letter_route(
        &letter.body,
        &letter.routing_key,
        &state.amount_rules,
    );
    let settle_by = Instant::now() + Duration::from_millis(state.settings.api.settle_timeout_ms);
    let published = state
        .publisher
        .publish_settled(
            &routing_key,
            &letter.body,
            tally_bus::republish_properties(letter.message_id.as_deref()),
            settle_by,
        )
        .await;
    match published {
        Ok(()) => {}
        Err(e) if e.surely_not_accepted() => {
            tracing::warn!(error = %e, id, "dead letter not re-published");
            return Err(
                state.unavailable("the broker did not accept the dead letter; nothing was sent")
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, id, "dead letter re-publish unconfirmed");
            return Err(state.outcome_unknown(
                "the broker did not confirm the dead letter; it may be in its queue and stays unmarked",
            ));
        }
    }
    // Confirmed but not marked: say so; re-publishing it again is harmless.
    if let Err(e) = tally_store::dead_letters::mark_republished(&state.pool, &id).await {
        tracing::warn!(error = %e, id, "dead letter re-published but not marked");
        return Err(state.outcome_unknown(
            "the dead letter was re-published but could not be marked; re-publishing it again is harmless",
        ));
    }
    tracing::info!(id, routing_key, "dead letter re-published");
    let marked = tally_store::dead_letters::get(&state.pool, &id)
        .await
        .map_err(store)?
        .ok_or_else(|| ApiError::Internal("the re-published dead letter vanished".into()))?;
    Ok(HttpResponse::Ok().json(model::DeadLetter::from(marked)))
}
