//! The HTTP shapes of the API: every body it answers (and the request bodies it documents),
//! with their OpenAPI schemas derived from these types. Rows of `tally_store` never reach HTTP:
//! each is converted here (`From<row>`), so the store can change its rows without changing an
//! answer, and the field docs below are the documented schema (see [`crate::openapi`]).

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use tally_core::amount::money_json;
use tally_core::{Kind, OutcomeStatus, Reason};
use utoipa::openapi::schema::Object;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::openapi::{strings, AmountInput, Identifier, Money, PositiveMoney};

/// `deposit` adds to the balance; `withdraw` subtracts (money already left, so it is applied
/// even into a negative balance unless the `reject_overdraft` policy is set); `withdraw_request`
/// asks for approval and places a hold when approved.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransactionType {
    Deposit,
    Withdraw,
    WithdrawRequest,
}

// The body of `POST /transaction`, as `tally_core::command::NewTransaction::from_json` reads it
// (it parses the JSON object itself, to name the field of every 400). Plain comments: a doc
// comment would become the schema's public description.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // a schema only: never built
pub struct NewTransaction {
    /// Chosen by the client; the idempotency key unless an `Idempotency-Key` header is given.
    /// Retrying with the same id and payload returns the first outcome without a second effect.
    #[schema(value_type = Identifier)]
    pub id: String,
    #[schema(value_type = TransactionType)]
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = AmountInput)]
    pub amount: String,
    /// The account; created on first use.
    #[schema(value_type = Identifier)]
    pub account_id: String,
    /// RFC 3339 time the transaction occurred, recorded as `occurredAt`. Defaults to the accept
    /// time (a defaulted timestamp is not part of the idempotency payload).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub timestamp: Option<DateTime<Utc>>,
    /// Only on a `withdraw` (else 400 `invalid_field`): the id of the approved withdraw_request
    /// whose hold this withdraw captures. Without it, a withdraw captures the oldest open hold of
    /// the same amount, if any.
    #[schema(value_type = Identifier)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub request_id: Option<String>,
    /// Owner of the account; the first use links it.
    #[schema(value_type = Identifier)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub user_id: Option<String>,
}

/// A deposit or withdraw the broker confirmed. It is applied by the worker shortly after; its
/// recorded outcome is at `GET /transactions/{id}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "t-1", "accountId": "acc-1", "type": "deposit", "amount": 100.5, "status": "accepted", "acceptedAt": "2024-01-01T00:00:00.123456Z"}))]
pub struct Accepted {
    /// The idempotency key: the body's `id`, or the `Idempotency-Key` header when one was given.
    pub id: String,
    pub account_id: String,
    #[schema(schema_with = accepted_kind)]
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(with = "money_json")]
    #[schema(value_type = PositiveMoney)]
    pub amount: Decimal,
    #[schema(schema_with = accepted_status)]
    pub status: &'static str,
    /// When the API accepted it (microsecond precision); the same on a replay.
    pub accepted_at: DateTime<Utc>,
}

/// The 200 of `POST /transaction`: a deposit or withdraw `accepted` (in its shard queue), or,
/// when the client sent `Prefer: wait` and the worker decided it in time, its record (with
/// the header `Preference-Applied: wait`). Documentation only: the handler serializes the
/// variant's own type.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // never built: it only names the two shapes of the answer in the document
pub enum Posted {
    Accepted(Accepted),
    Decided(TransactionRecord),
}

/// An approved withdraw_request: a hold of `amount` counts against `available` until a withdraw
/// captures it or it expires.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "r-1", "accountId": "acc-1", "amount": 30, "status": "approved", "holdId": "0b7e5a9e-3c1f-4d2a-9d0e-5a1b2c3d4e5f"}))]
pub struct WithdrawApproved {
    /// The idempotency key.
    pub id: String,
    pub account_id: String,
    #[serde(with = "money_json")]
    #[schema(value_type = PositiveMoney)]
    pub amount: Decimal,
    #[schema(schema_with = withdraw_approved_status)]
    pub status: &'static str,
    /// The hold placed; the same on a replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = true, nullable = false)]
    pub hold_id: Option<Uuid>,
}

/// A denied withdraw_request; no hold was placed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "r-2", "accountId": "acc-1", "amount": 500, "status": "denied", "reason": "insufficient_funds"}))]
pub struct WithdrawDenied {
    /// The idempotency key.
    pub id: String,
    pub account_id: String,
    #[serde(with = "money_json")]
    #[schema(value_type = PositiveMoney)]
    pub amount: Decimal,
    #[schema(schema_with = withdraw_denied_status)]
    pub status: &'static str,
    /// `insufficient_funds`: `balance - held` does not cover the amount. `deadline_exceeded`: no
    /// decision within the deadline (`ledger.request_deadline_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = withdraw_denied_reason, required = true)]
    pub reason: Option<Reason>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub account_id: String,
    /// Applied deposits minus applied withdraws; may be negative.
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub balance: Decimal,
    /// `balance` - `held`: what a withdraw_request can still be approved for.
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub available: Decimal,
    /// Sum of open holds not past their TTL; never negative.
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub held: Decimal,
    /// How many commands the ledger has decided for the account: the `seq` of its latest
    /// record (0 for an account never used). A read with `minSeq=N` reflects every command
    /// whose record has `seq` <= N.
    #[schema(minimum = 0)]
    pub seq: i64,
}

/// A transaction as the worker recorded it. `reason`, `holdId` and `requestId` are omitted when
/// absent (never null).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "w-1", "accountId": "acc-1", "type": "withdraw", "amount": 30, "status": "applied", "holdId": "0b7e5a9e-3c1f-4d2a-9d0e-5a1b2c3d4e5f", "requestId": "r-1", "seq": 3, "balanceAfter": 70.5, "occurredAt": "2024-01-01T00:00:01Z", "acceptedAt": "2024-01-01T00:00:01.000120Z", "appliedAt": "2024-01-01T00:00:01.004500Z", "shard": 5}))]
pub struct TransactionRecord {
    /// The idempotency key.
    pub id: String,
    pub account_id: String,
    #[schema(value_type = TransactionType)]
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(with = "money_json")]
    #[schema(value_type = PositiveMoney)]
    pub amount: Decimal,
    /// `applied`: a deposit or withdraw that changed the balance. `rejected`: a withdraw recorded
    /// but not applied (`reject_overdraft` policy). `approved` / `denied`: a withdraw_request's
    /// decision.
    #[schema(schema_with = transaction_record_status)]
    pub status: OutcomeStatus,
    /// Why it was rejected or denied. Omitted otherwise.
    #[schema(schema_with = transaction_record_reason)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<Reason>,
    /// For an approved withdraw_request, the hold it placed; for a withdraw, the hold it captured.
    /// Omitted otherwise: a denied withdraw_request (even one approved first and then voided) has
    /// none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub hold_id: Option<Uuid>,
    /// For a withdraw posted with `requestId`, that request's id. Omitted otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub request_id: Option<String>,
    /// Position of this command among the account's commands (the account's version after it).
    pub seq: i64,
    /// The account's balance right after this command.
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub balance_after: Decimal,
    /// The client's `timestamp`, else the accept time.
    pub occurred_at: DateTime<Utc>,
    /// When the API accepted it.
    pub accepted_at: DateTime<Utc>,
    /// When the worker decided it, by the database's clock (never a worker host's).
    pub applied_at: DateTime<Utc>,
    /// The shard queue that carried it.
    pub shard: i32,
    /// The name of the API key that posted it (who moved this money). Omitted when it was
    /// posted with authentication off, or published by `tally import --via queue`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub key_name: Option<String>,
}

/// A command that reused this transaction's id with another payload while the first command was
/// still queued: the API answered it 200 (it could not see the id recorded yet), and the worker did
/// not apply it. Listed once per payload, however often it was delivered.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdConflict {
    #[schema(value_type = TransactionType)]
    #[serde(rename = "type")]
    pub kind: Kind,
    pub account_id: String,
    #[serde(with = "money_json")]
    #[schema(value_type = PositiveMoney)]
    pub amount: Decimal,
    /// When the API accepted the conflicting command.
    pub accepted_at: DateTime<Utc>,
    /// When the worker found the conflict (the database's clock).
    pub detected_at: DateTime<Utc>,
}

/// A transaction as the worker recorded it, with the conflicting reuses of its id.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "w-1", "accountId": "acc-1", "type": "withdraw", "amount": 30, "status": "applied", "holdId": "0b7e5a9e-3c1f-4d2a-9d0e-5a1b2c3d4e5f", "requestId": "r-1", "seq": 3, "balanceAfter": 70.5, "occurredAt": "2024-01-01T00:00:01Z", "acceptedAt": "2024-01-01T00:00:01.000120Z", "appliedAt": "2024-01-01T00:00:01.004500Z", "shard": 5, "conflicts": [{"type": "withdraw", "accountId": "acc-1", "amount": 31, "acceptedAt": "2024-01-01T00:00:01.000300Z", "detectedAt": "2024-01-01T00:00:01.004600Z"}]}))]
pub struct RecordedTransaction {
    #[serde(flatten)]
    pub record: TransactionRecord,
    /// Commands that reused the id with another payload and had no effect, in the order they
    /// were detected; empty when there were none.
    pub conflicts: Vec<IdConflict>,
    /// Copies of a command with this id that the broker dead-lettered (`message_id` = the id),
    /// oldest first: e.g. a copy that crashed consumers past the delivery limit after the
    /// record was written. Empty when there were none.
    #[serde(rename = "deadLetters")]
    pub dead_letters: Vec<DeadLetter>,
}

/// The 404 of `GET /transactions/{id}`: the usual error, plus the dead-lettered copies of a
/// command with this id when there are some (code `transaction_dead_lettered`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"error": {"code": "transaction_dead_lettered", "message": "no record of id \"t-9\": its command was dead-lettered (rejected) and is not applied; an operator may republish it after a fix"}, "deadLetters": [{"id": "5d1c…", "queue": "tally.shard.3", "routingKey": "3", "reason": "rejected", "detail": "invalid envelope: `amount` must have at most 2 decimal places", "messageId": "t-9", "body": "{…}", "deadAt": "2024-01-01T00:00:01Z", "archivedAt": "2024-01-01T00:00:02Z", "republishedAt": null}]}))]
pub struct TransactionNotRecorded {
    #[schema(inline)]
    pub error: ErrorDetail,
    /// The dead-lettered copies, oldest first; omitted when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    pub dead_letters: Vec<DeadLetter>,
}

/// An account row as stored (debug). `held` here is the stored sum of open holds, which may still
/// include holds past their TTL until the worker's sweep expires them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountRow {
    pub account_id: String,
    /// Owner linked on first use; null when none.
    #[schema(required = true)]
    pub user_id: Option<String>,
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub balance: Decimal,
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub held: Decimal,
    /// Incremented by every command recorded on the account: the `seq` of its latest transaction.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The account's own withdraw policy (`always_apply` or `reject_overdraft`); null: the
    /// global `ledger.withdraw_policy` (see `GET /account/{accountId}/policy`).
    #[schema(required = true)]
    pub withdraw_policy: Option<String>,
    /// Under its own `reject_overdraft`: how far below zero `available` may go.
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub overdraft_limit: Decimal,
    /// Policy changes applied to the account.
    pub policy_version: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Liveness {
    #[schema(schema_with = liveness_status)]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    #[schema(schema_with = readiness_status)]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditCheck {
    #[schema(schema_with = audit_check_name)]
    pub name: &'static str,
    pub pass: bool,
    /// Rows that break the invariant (at most 100), e.g. `{"accountId","balance","expected"}`.
    pub offending: Vec<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    /// True when every check passes.
    pub pass: bool,
    pub checks: Vec<AuditCheck>,
    /// Sums as exact decimal strings.
    #[schema(inline)]
    pub totals: AuditTotals,
    /// Ready messages per queue (shard queues and the dead-letter queue); null when the broker is
    /// unreachable.
    #[schema(required = true)]
    pub queues: Option<BTreeMap<String, u32>>,
    /// Archived dead letters not yet re-published.
    #[schema(minimum = 0)]
    pub dead_letters: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    /// Shard queue the message died in.
    pub queue: String,
    pub routing_key: String,
    /// Broker's reason: `rejected` (the worker could never apply it) or `delivery_limit`.
    pub reason: String,
    /// The decoder's verdict on the body.
    pub detail: String,
    #[schema(required = true)]
    pub message_id: Option<String>,
    /// The message body as text.
    pub body: String,
    pub dead_at: DateTime<Utc>,
    pub archived_at: DateTime<Utc>,
    #[schema(required = true)]
    pub republished_at: Option<DateTime<Utc>>,
}

/// One page of an account's history, newest first (by `seq`). Empty history:
/// `{"items":[],"nextCursor":null}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"items": [{"id": "w-1", "accountId": "acc-1", "type": "withdraw", "amount": 30, "status": "applied", "seq": 3, "balanceAfter": 70.5, "occurredAt": "2024-01-01T00:00:01Z", "acceptedAt": "2024-01-01T00:00:01.000120Z", "appliedAt": "2024-01-01T00:00:01.004500Z", "shard": 5}], "nextCursor": "3"}))]
pub struct HistoryPage {
    /// Each item is the recorded transaction; `balanceAfter` is the running balance right after it.
    pub items: Vec<TransactionRecord>,
    /// Opaque: pass it back as `cursor` for the next (older) page; `null` on the last page. Stable
    /// while new transactions arrive: pages never repeat or skip a row.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserAccount {
    pub account_id: String,
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub balance: Decimal,
    /// `balance` minus open holds within their TTL.
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub available: Decimal,
}

/// A user and one page of the accounts they own: linked explicitly (`PUT
/// /users/{userId}/accounts/{accountId}`) or first used by a transaction carrying their `userId`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"userId": "alice", "total": 120.25, "accounts": [{"accountId": "alice-a", "balance": 20.25, "available": 20.25}, {"accountId": "alice-b", "balance": 100, "available": 70}], "nextCursor": null}))]
pub struct User {
    pub user_id: String,
    /// Sum of the balances of all the user's accounts, on every page.
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub total: Decimal,
    /// This page of the user's accounts, ordered by account id (at most `limit`).
    pub accounts: Vec<UserAccount>,
    /// Pass it back as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountLink {
    pub user_id: String,
    pub account_id: String,
    /// When the link was first made (unchanged by repeated PUTs).
    pub linked_at: DateTime<Utc>,
}

/// Days are UTC days of `appliedAt` (the posting date: when the ledger applied the money), both
/// ends included.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"from": "2024-01-01", "to": "2024-01-31"}))]
#[allow(dead_code)] // a schema only: the handler reads the JSON object itself
pub struct SettlementRequest {
    /// `YYYY-MM-DD`.
    pub from: NaiveDate,
    /// `YYYY-MM-DD`, not before `from`.
    pub to: NaiveDate,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"jobId": "5f0c7c1e-8a43-4a0e-9b7e-2d1f3c4b5a69", "status": "QUEUED"}))]
pub struct JobQueued {
    pub job_id: Uuid,
    #[schema(schema_with = job_queued_status)]
    pub status: JobStatus,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"jobId": "5f0c7c1e-8a43-4a0e-9b7e-2d1f3c4b5a69", "status": "RUNNING", "from": "2024-01-01", "to": "2024-01-31", "processed": 12, "total": 31, "progress": 0.3871, "cancelRequested": false, "attempts": 1, "createdAt": "2024-02-01T09:00:00.120Z", "startedAt": "2024-02-01T09:00:00.500Z", "finishedAt": null}))]
pub struct Job {
    pub job_id: Uuid,
    pub status: JobStatus,

    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Days of the range done (empty days are skipped in one step).
    pub processed: i64,
    /// Days in the range.
    pub total: i64,
    /// `processed / total`, rounded to 4 places.
    #[schema(minimum = 0, maximum = 1)]
    pub progress: f64,
    /// Why the job FAILED. Omitted otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
    /// Cancellation was requested; a RUNNING job stops at its next chunk (day) boundary.
    pub cancel_requested: bool,
    /// How many workers claimed it (more than 1: it was resumed after losing a worker).
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub started_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
}

// The body of `PUT /account/{accountId}/webhook` (the handler reads the JSON object itself, to
// name the field of every 400).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a schema only: never built
#[serde(rename_all = "camelCase")]
pub struct WebhookRequest {
    /// Absolute http or https URL with a host and no credentials.
    #[schema(max_length = 2048, example = "https://example.com/hooks/tally")]
    pub url: String,
    /// Key of the HMAC-SHA256 signature. Write-only.
    #[schema(min_length = 1, max_length = 256)]
    pub secret: String,
    /// Milliseconds between a change and its delivery; changes within it are coalesced into the
    /// latest. Absent or null means 0.
    #[schema(minimum = 0, maximum = 86_400_000, default = 0)]
    pub delay_ms: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    #[schema(value_type = Identifier)]
    pub account_id: String,
    pub url: String,
    pub delay_ms: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Body of a delivery (POSTed to the webhook URL, not served by this API).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a schema only: the worker's sender builds the body
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    #[schema(value_type = Identifier)]
    pub account_id: String,
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub balance: Decimal,
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub available: Decimal,
    /// Commands recorded on the account up to this change. A hold expiry changes `available`
    /// without a command, so two deliveries can share a version: order them by (`version`, `at`).
    pub version: i64,
    /// When the change was committed.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    /// Delivery id, sent as `X-Tally-Delivery`.
    pub id: i64,
    #[schema(value_type = Identifier)]
    pub account_id: String,
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub balance: Decimal,
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub available: Decimal,
    pub version: i64,
    pub changed_at: DateTime<Utc>,
    #[schema(schema_with = webhook_delivery_status)]
    pub status: String,
    /// Attempts that got an answer or an error.
    pub attempts: i32,
    /// When the next attempt is due (pending).
    pub due_at: DateTime<Utc>,
    /// HTTP status of the last answer.
    #[schema(required = true)]
    pub last_status: Option<i32>,
    /// How the last attempt failed, one of: `http_status` (a non-2xx answer, see `lastStatus`),
    /// `timeout`, `dns_failed`, `connect_failed`, `transport_error` (connected, no valid HTTP
    /// answer), `non_public_target` (the target is not a public address; final), `webhook_deleted`
    /// (final), `internal_error`. Never text from the receiver.
    #[schema(required = true)]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
}

fn accepted_kind() -> Object {
    strings(&[Kind::Deposit.as_str(), Kind::Withdraw.as_str()], None)
}
fn accepted_status() -> Object {
    strings(&["accepted"], None)
}
fn withdraw_approved_status() -> Object {
    strings(&[OutcomeStatus::Approved.as_str()], None)
}
fn withdraw_denied_status() -> Object {
    strings(&[OutcomeStatus::Denied.as_str()], None)
}
fn withdraw_denied_reason() -> Object {
    strings(&[Reason::InsufficientFunds.as_str(), Reason::DeadlineExceeded.as_str()], Some("`insufficient_funds`: `balance - held` does not cover the amount. `deadline_exceeded`: no decision within the deadline (`ledger.request_deadline_ms`)."))
}
fn transaction_record_status() -> Object {
    let statuses = [
        OutcomeStatus::Applied,
        OutcomeStatus::Rejected,
        OutcomeStatus::Approved,
        OutcomeStatus::Denied,
    ];
    strings(&statuses.map(OutcomeStatus::as_str), Some("`applied`: a deposit or withdraw that changed the balance. `rejected`: a withdraw recorded but not applied (`reject_overdraft` policy). `approved` / `denied`: a withdraw_request's decision."))
}
fn transaction_record_reason() -> Object {
    strings(
        &[
            Reason::InsufficientFunds.as_str(),
            Reason::DeadlineExceeded.as_str(),
        ],
        Some("Why it was rejected or denied. Omitted otherwise."),
    )
}
fn liveness_status() -> Object {
    strings(&["ok"], None)
}
fn readiness_status() -> Object {
    strings(&["ready", "not_ready"], None)
}
fn audit_check_name() -> Object {
    strings(
        &[
            "balances_match_history",
            "held_matches_open_holds",
            "one_effect_per_id",
            "history_is_gapless",
        ],
        None,
    )
}
fn job_queued_status() -> Object {
    strings(&["QUEUED"], None)
}
fn webhook_delivery_status() -> Object {
    strings(&["pending", "sent", "superseded", "failed"], None)
}

/// `ok` or `down`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    Ok,
    Down,
}

impl ComponentState {
    pub fn of(up: bool) -> Self {
        if up {
            ComponentState::Ok
        } else {
            ComponentState::Down
        }
    }
}

/// The component status of `GET /status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub api: ComponentState,
    pub db: ComponentState,
    pub rabbitmq: ComponentState,
    /// This replica's last reading of PostgreSQL's clock (taken every `ledger.clock_check_ms`).
    #[schema(inline)]
    pub clock: Clock,
    /// `on`: every route but the probes needs an API key. `off` (`auth.enabled = false`):
    /// nobody is asked for one.
    #[schema(schema_with = auth_status)]
    pub auth: &'static str,
    /// Present only when something needs the operator's attention: authentication is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub warning: Option<&'static str>,
}

/// This replica's last reading of PostgreSQL's clock (taken every `ledger.clock_check_ms`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Clock {
    /// `ok`: within `ledger.max_clock_skew_ms`; `skewed`: further (withdraw_requests are
    /// refused); `unknown`: no recent reading (withdraw_requests are refused).
    #[schema(schema_with = clock_status)]
    pub status: &'static str,
    /// PostgreSQL's clock minus this host's, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub offset_ms: Option<i64>,
    /// Half the round trip of the reading: the true offset is within ± this.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub uncertainty_ms: Option<u64>,
}

/// Every error answer: `{"error":{"code","message","field"?}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    #[schema(inline)]
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_amount`, `missing_field`, `id_reused`,
    /// `transaction_not_found`, `not_found`, `unauthorized`, `unavailable`, `outcome_unknown`,
    /// `internal`.
    pub code: &'static str,
    /// Human-readable explanation; not meant to be parsed.
    pub message: String,
    /// On a 400: the request field, header, path or query parameter at fault, when there is one
    /// (e.g. `amount`, `Idempotency-Key`, `limit`). Omitted otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub field: Option<&'static str>,
}

/// Sums as exact decimal strings.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditTotals {
    pub balance: String,
    pub applied_deposits: String,
    pub applied_withdraws: String,
    pub held: String,
}

/// The true state. QUEUED: waiting for a worker. RUNNING: a worker holds it (a worker that dies
/// leaves it RUNNING until the stale limit, 15 s, then another worker resumes it from
/// `processed`, or marks it FAILED after 3 lost workers). COMPLETED: every day is settled; the
/// file can be downloaded. FAILED: see `error`. CANCELLED: stopped on request; the days done
/// stay in `settlements`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

fn auth_status() -> Object {
    strings(&["on", "off"], Some("`on`: every route but the probes needs an API key; `off`: authentication is disabled (`auth.enabled = false`)."))
}

fn clock_status() -> Object {
    strings(&["ok", "skewed", "unknown"], Some("`ok`: within `ledger.max_clock_skew_ms`; `skewed`: further (withdraw_requests are refused); `unknown`: no recent reading (withdraw_requests are refused)."))
}

impl From<tally_store::settlement::JobStatus> for JobStatus {
    fn from(s: tally_store::settlement::JobStatus) -> Self {
        use tally_store::settlement::JobStatus as Stored;
        match s {
            Stored::Queued => JobStatus::Queued,
            Stored::Running => JobStatus::Running,
            Stored::Completed => JobStatus::Completed,
            Stored::Failed => JobStatus::Failed,
            Stored::Cancelled => JobStatus::Cancelled,
        }
    }
}

impl From<tally_store::settlement::Job> for Job {
    fn from(j: tally_store::settlement::Job) -> Self {
        let progress = if j.total > 0 {
            // Rounded to 4 places: a ratio for humans and progress bars.
            ((j.processed as f64 / j.total as f64) * 10_000.0).round() / 10_000.0
        } else {
            0.0
        };
        Self {
            job_id: j.id,
            status: j.status.into(),
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

impl From<tally_store::reads::AccountView> for Account {
    fn from(v: tally_store::reads::AccountView) -> Self {
        Self {
            account_id: v.account_id,
            balance: v.balance,
            available: v.available,
            held: v.held,
            seq: v.seq,
        }
    }
}

impl From<tally_store::reads::TransactionRecord> for TransactionRecord {
    fn from(r: tally_store::reads::TransactionRecord) -> Self {
        Self {
            id: r.id,
            account_id: r.account_id,
            kind: r.kind,
            amount: r.amount,
            status: r.status,
            reason: r.reason,
            hold_id: r.hold_id,
            request_id: r.request_id,
            seq: r.seq,
            balance_after: r.balance_after,
            occurred_at: r.occurred_at,
            accepted_at: r.accepted_at,
            applied_at: r.applied_at,
            shard: r.shard,
            key_name: r.key_name,
        }
    }
}

impl From<tally_store::reads::IdConflict> for IdConflict {
    fn from(c: tally_store::reads::IdConflict) -> Self {
        Self {
            kind: c.kind,
            account_id: c.account_id,
            amount: c.amount,
            accepted_at: c.accepted_at,
            detected_at: c.detected_at,
        }
    }
}

impl From<tally_store::reads::AccountRow> for AccountRow {
    fn from(r: tally_store::reads::AccountRow) -> Self {
        Self {
            account_id: r.account_id,
            user_id: r.user_id,
            balance: r.balance,
            held: r.held,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            withdraw_policy: r.withdraw_policy,
            overdraft_limit: r.overdraft_limit,
            policy_version: r.policy_version,
        }
    }
}

impl From<tally_store::audit::Report> for AuditReport {
    fn from(r: tally_store::audit::Report) -> Self {
        Self {
            pass: r.pass,
            checks: r
                .checks
                .into_iter()
                .map(|c| AuditCheck {
                    name: c.name,
                    pass: c.pass,
                    offending: c.offending,
                })
                .collect(),
            totals: AuditTotals {
                balance: r.totals.balance,
                applied_deposits: r.totals.applied_deposits,
                applied_withdraws: r.totals.applied_withdraws,
                held: r.totals.held,
            },
            queues: r.queues,
            dead_letters: r.dead_letters,
        }
    }
}

impl From<tally_store::dead_letters::DeadLetter> for DeadLetter {
    fn from(d: tally_store::dead_letters::DeadLetter) -> Self {
        Self {
            id: d.id,
            queue: d.queue,
            routing_key: d.routing_key,
            reason: d.reason,
            detail: d.detail,
            message_id: d.message_id,
            // Lossy for non-UTF-8 bytes: the body is shown, not re-published, from here.
            body: String::from_utf8_lossy(&d.body).into_owned(),
            dead_at: d.dead_at,
            archived_at: d.archived_at,
            republished_at: d.republished_at,
        }
    }
}

impl From<tally_store::users::UserView> for User {
    fn from(v: tally_store::users::UserView) -> Self {
        Self {
            user_id: v.user_id,
            total: v.total,
            accounts: v
                .accounts
                .into_iter()
                .map(|a| UserAccount {
                    account_id: a.account_id,
                    balance: a.balance,
                    available: a.available,
                })
                .collect(),
            next_cursor: v.next_cursor,
        }
    }
}

impl From<tally_store::webhooks::Webhook> for Webhook {
    fn from(w: tally_store::webhooks::Webhook) -> Self {
        Self {
            account_id: w.account_id,
            url: w.url,
            delay_ms: w.delay_ms,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

impl From<tally_store::webhooks::Delivery> for WebhookDelivery {
    fn from(d: tally_store::webhooks::Delivery) -> Self {
        Self {
            id: d.id,
            account_id: d.account_id,
            balance: d.balance,
            available: d.available,
            version: d.version,
            changed_at: d.changed_at,
            status: d.status,
            attempts: d.attempts,
            due_at: d.due_at,
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: d.created_at,
            finished_at: d.finished_at,
        }
    }
}

impl From<crate::submit::Receipt> for Accepted {
    fn from(r: crate::submit::Receipt) -> Self {
        Self {
            id: r.id,
            account_id: r.account_id,
            kind: r.kind.as_str(),
            amount: r.amount,
            status: "accepted",
            accepted_at: r.accepted_at,
        }
    }
}

impl From<crate::submit::Decision> for WithdrawApproved {
    fn from(d: crate::submit::Decision) -> Self {
        Self {
            id: d.id,
            account_id: d.account_id,
            amount: d.amount,
            status: OutcomeStatus::Approved.as_str(),
            hold_id: d.hold_id,
        }
    }
}

impl From<crate::submit::Decision> for WithdrawDenied {
    fn from(d: crate::submit::Decision) -> Self {
        Self {
            id: d.id,
            account_id: d.account_id,
            amount: d.amount,
            status: OutcomeStatus::Denied.as_str(),
            reason: d.reason,
        }
    }
}

/// What a withdraw the account cannot cover does: `always_apply` applies it anyway (the
/// balance may go negative); `reject_overdraft` records it `rejected` unless `available` plus
/// the hold it captures plus the overdraft limit covers it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawPolicyName {
    AlwaysApply,
    RejectOverdraft,
}

impl From<tally_core::ledger::WithdrawPolicy> for WithdrawPolicyName {
    fn from(p: tally_core::ledger::WithdrawPolicy) -> Self {
        match p {
            tally_core::ledger::WithdrawPolicy::AlwaysApply => WithdrawPolicyName::AlwaysApply,
            tally_core::ledger::WithdrawPolicy::RejectOverdraft => {
                WithdrawPolicyName::RejectOverdraft
            }
        }
    }
}

// The body of `PUT /account/{id}/policy`, as `tally_core::policy::PolicyRequest::from_json`
// reads it. Plain comments: a doc comment would become the schema's public description.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // a schema only: never built
pub struct PolicyInput {
    #[schema(value_type = WithdrawPolicyName)]
    pub withdraw_policy: String,
    /// Only with `reject_overdraft` (else 422 `invalid_policy`): how far below zero
    /// `available` may go; 0 or more (negative: 422), default 0.
    #[schema(value_type = AmountInput)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub overdraft_limit: Option<String>,
}

/// A policy command the broker confirmed; the worker applies it in the account's order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAccepted {
    /// The command's id: the `Idempotency-Key`, else drawn by the API.
    pub id: String,
    pub account_id: String,
    pub withdraw_policy: WithdrawPolicyName,
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub overdraft_limit: Decimal,
    /// Always `accepted`.
    pub status: &'static str,
    pub accepted_at: DateTime<Utc>,
}

impl From<&tally_core::policy::PolicyEnvelope> for PolicyAccepted {
    fn from(e: &tally_core::policy::PolicyEnvelope) -> Self {
        Self {
            id: e.id.clone(),
            account_id: e.account_id.clone(),
            withdraw_policy: e.withdraw_policy.into(),
            overdraft_limit: e.overdraft_limit,
            status: "accepted",
            accepted_at: e.accepted_at,
        }
    }
}

/// Where an account's policy comes from: its own (`account`) or the global setting
/// (`default`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicySource {
    Account,
    Default,
}

/// The withdraw policy in force for an account's next command.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountPolicyView {
    pub account_id: String,
    pub withdraw_policy: WithdrawPolicyName,
    /// Under `reject_overdraft`: how far below zero `available` may go. 0 otherwise.
    #[serde(with = "money_json")]
    #[schema(value_type = Money)]
    pub overdraft_limit: Decimal,
    pub source: PolicySource,
    /// Policy changes applied to the account (0: never changed).
    pub policy_version: i64,
    /// The account's `seq` when the current policy was applied; absent for the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub after_seq: Option<i64>,
}

impl AccountPolicyView {
    pub fn own(account_id: String, applied: &tally_store::policies::AppliedPolicy) -> Self {
        Self {
            account_id,
            withdraw_policy: applied.policy.withdraw.into(),
            overdraft_limit: applied.policy.overdraft_limit,
            source: PolicySource::Account,
            policy_version: applied.policy_version,
            after_seq: Some(applied.after_seq),
        }
    }

    pub fn default_of(account_id: String, policy: tally_core::ledger::WithdrawPolicy) -> Self {
        Self {
            account_id,
            withdraw_policy: policy.into(),
            overdraft_limit: Decimal::ZERO,
            source: PolicySource::Default,
            policy_version: 0,
            after_seq: None,
        }
    }
}
