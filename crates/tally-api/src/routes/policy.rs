//! `PUT /account/{id}/policy` and `GET /account/{id}/policy`: an account's own withdraw
//! policy. The PUT publishes a policy command to the account's shard queue, like a
//! transaction (confirmed by the broker, settled like one): the worker applies it in the
//! account's order, so the withdraws queued before it are judged by the old policy and those
//! after it by the new one. The GET reads the policy applied so far.

use actix_web::{get, put, web, HttpRequest, HttpResponse};
use chrono::Utc;
use tally_bus::{command_properties, Topology};
use tally_core::policy::{PolicyEnvelope, PolicyError, PolicyRequest};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::observe::RequestId;
use crate::routes::account::store_error;
use crate::routes::body::{idempotency_key, json_object};
use crate::routes::path_id;
use crate::state::AppState;
use crate::{model, openapi};

#[utoipa::path(
    tag = "accounts",
    operation_id = "putAccountPolicy",
    summary = "Set an account's withdraw policy",
    description = "Publishes a policy command to the account's shard queue and answers **202** once RabbitMQ confirmed it. The shard's worker applies it in the account's order: every withdraw queued before it is judged by the policy in force before, every withdraw queued after it by this one. `always_apply`: a withdraw is applied even into a negative balance. `reject_overdraft`: a withdraw is recorded `rejected` (`insufficient_funds`) unless `available` plus the hold it captures plus `overdraftLimit` (default 0) covers it. Accounts without a policy of their own follow `ledger.withdraw_policy` with no limit. Needs an `admin` key (a policy decides how far an account may be overdrawn: not for the keys that post its transactions).\n\nIdempotency: an `Idempotency-Key` header names the command; a retry with the same key and body has no second effect, the same key with another body is a **422** `id_reused` once the first was applied. Without the header every PUT is a new command (setting the same policy twice changes nothing but the history).\n\n503 `unavailable` / `outcome_unknown` as for `POST /transaction`.",
    params(
        ("account_id" = openapi::Identifier, Path, description = "The account id."),
        ("Idempotency-Key" = Option<openapi::Identifier>, Header, nullable = false, description = "Names the policy command (its id); else a fresh one is drawn."),
    ),
    request_body(content = model::PolicyInput, description = "A JSON object.", examples(("rejectOverdraftWithLimit" = (value = json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": "50.00"}))), ("alwaysApply" = (value = json!({"withdrawPolicy": "always_apply"}))))),
    responses(
        (status = 202, description = "The policy command is in the account's shard queue; it applies after the commands queued before it.", body = model::PolicyAccepted),
        (status = 400, description = "Malformed body; nothing was published. Codes: `invalid_json`, `body_too_large`, `missing_field`, `invalid_policy` (`withdrawPolicy` not one of the two), `invalid_amount` (`overdraftLimit` not a decimal, too many decimals, too large), `unknown_field`, `invalid_id`, `invalid_idempotency_key`.", body = model::ErrorBody, example = json!({"error": {"code": "invalid_policy", "message": "`withdrawPolicy` must be one of always_apply, reject_overdraft", "field": "withdrawPolicy"}})),
        (status = 422, description = "A policy that cannot be; nothing was published. Code `invalid_policy`: a negative `overdraftLimit`, or an `overdraftLimit` with `always_apply`. Code `id_reused`: the `Idempotency-Key` was applied with another body.", body = model::ErrorBody, example = json!({"error": {"code": "invalid_policy", "message": "`overdraftLimit` must not be negative"}})),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[put("/account/{account_id}/policy")]
pub async fn put_policy(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let account_id = path.into_inner();
    path_id(&account_id, "accountId")?;
    let fields = json_object(payload, state.settings.api.max_body_bytes).await?;
    let request = PolicyRequest::from_json(&account_id, &fields, &state.amount_rules).map_err(
        |e| match e {
            PolicyError::Malformed(field) => field.into(),
            PolicyError::Unprocessable(field) => ApiError::Unprocessable {
                code: field.code,
                message: field.message,
            },
        },
    )?;
    let id = match idempotency_key(req.headers())? {
        Some(key) => key,
        None => uuid::Uuid::new_v4().to_string(),
    };
    let envelope = PolicyEnvelope::new(&id, &request, Utc::now(), Caller::name_of(&req));
    // A key already applied: the same body is a retry (published again, the worker dedupes),
    // another body a reuse. Unknown (database down): published; the worker ignores a reuse.
    match tally_store::policies::fingerprint(&state.pool, &id).await {
        Ok(Some(recorded)) if recorded != envelope.fingerprint => return Err(ApiError::IdReused),
        Ok(_) => {}
        Err(e) => tracing::warn!(%id, error = %e, "policy idempotency pre-check skipped"),
    }
    let shard = state.publisher.topology().shard_of(&account_id);
    let settle_by = state.publish_deadline();
    let published = state
        .publisher
        .publish_settled(
            &Topology::routing_key(shard),
            &envelope.encode(),
            command_properties(&id, &RequestId::of(&req)),
            settle_by,
        )
        .await;
    match published {
        Ok(()) => Ok(HttpResponse::Accepted().json(model::PolicyAccepted::from(&envelope))),
        Err(e) if e.surely_not_accepted() => {
            tracing::warn!(%id, error = %e, "policy publish failed; answering 503 unavailable");
            Err(state.unavailable(
                "the broker did not accept the policy change; nothing was accepted, retry",
            ))
        }
        Err(e) => {
            tracing::warn!(%id, error = %e, "policy publish outcome unknown");
            Err(state.outcome_unknown(
                "the broker may or may not have accepted the policy change; retry with the same \
                 Idempotency-Key, or read GET /account/{id}/policy",
            ))
        }
    }
}

#[utoipa::path(
    tag = "accounts",
    operation_id = "getAccountPolicy",
    summary = "An account's withdraw policy",
    description = "The withdraw policy in force for the account's next command, as applied by its worker (a policy command still queued is not reflected yet). `source` is `account` when the account has a policy of its own, `default` when it follows `ledger.withdraw_policy` (then `overdraftLimit` is 0). `policyVersion` counts the account's policy changes; `afterSeq` is the account's `seq` when the current one was applied: it governs the transactions with a greater `seq`.",
    params(
        ("account_id" = openapi::Identifier, Path, description = "The account id."),
    ),
    responses(
        (status = 200, description = "The policy in force.", body = model::AccountPolicyView, example = json!({"accountId": "acc-1", "withdrawPolicy": "reject_overdraft", "overdraftLimit": 50, "source": "account", "policyVersion": 1, "afterSeq": 12})),
        (status = 400, response = openapi::BadPath),
        (status = 500, response = openapi::Internal),
        (status = 503, response = openapi::Unavailable),
    ),
)]
#[get("/account/{account_id}/policy")]
pub async fn get_policy(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account_id = path.into_inner();
    path_id(&account_id, "accountId")?;
    let applied = tally_store::policies::applied(&state.pool, &account_id)
        .await
        .map_err(|e| store_error(&state, &e))?;
    let view = match applied {
        Some(applied) => model::AccountPolicyView::own(account_id, &applied),
        None => {
            model::AccountPolicyView::default_of(account_id, state.settings.ledger.withdraw_policy)
        }
    };
    Ok(HttpResponse::Ok().json(view))
}
