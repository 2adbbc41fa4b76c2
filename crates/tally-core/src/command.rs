//! Commands and their outcomes: the request a client posts, the versioned envelope that
//! carries it through RabbitMQ, and the outcome the worker records and replies.
//!
//! The fingerprint is the idempotency guard: it hashes everything that makes two requests
//! "the same" (kind, account, amount, capture target, owner, client timestamp), so a retry
//! with the same id is recognised and a reuse with another payload is refused (422).

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::amount::AmountRules;
use crate::ids::validate_id;

/// Version of [`Envelope`] this build writes and understands.
pub const ENVELOPE_VERSION: u32 = 1;

/// What a command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Deposit,
    Withdraw,
    WithdrawRequest,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deposit => "deposit",
            Kind::Withdraw => "withdraw",
            Kind::WithdrawRequest => "withdraw_request",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "deposit" => Some(Kind::Deposit),
            "withdraw" => Some(Kind::Withdraw),
            "withdraw_request" => Some(Kind::WithdrawRequest),
            _ => None,
        }
    }
}

/// A validated `POST /transaction` body.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTransaction {
    pub id: String,
    pub kind: Kind,
    pub account_id: String,
    pub amount: Decimal,
    /// The client's `timestamp`, when it sent one.
    pub occurred_at: Option<DateTime<Utc>>,
    /// For a withdraw: the withdraw_request whose hold it captures.
    pub request_id: Option<String>,
    /// Owner of the account (first use links it).
    pub user_id: Option<String>,
    /// The body's `id` when an `Idempotency-Key` header took over the role of the key: it is
    /// then part of the payload.
    pub client_id: Option<String>,
}

/// A request field that failed validation: becomes a 400 naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Stable machine-readable code (`missing_field`, `invalid_amount`, …).
    pub code: &'static str,
    /// The JSON field at fault.
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    fn new(code: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            field,
            message: message.into(),
        }
    }
}

fn required<'a>(
    body: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a Value, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(FieldError::new(
            "missing_field",
            field,
            format!("`{field}` is required"),
        )),
        Some(v) => Ok(v),
    }
}

fn id_field(body: &Map<String, Value>, field: &'static str) -> Result<Option<String>, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => validate_id(s)
            .map(|()| Some(s.clone()))
            .map_err(|e| FieldError::new("invalid_id", field, format!("`{field}` {e}"))),
        Some(_) => Err(FieldError::new(
            "invalid_id",
            field,
            format!("`{field}` must be a string"),
        )),
    }
}

impl NewTransaction {
    /// Validates a decoded JSON body. Checks fields in a fixed order so the error is stable.
    pub fn from_json(body: &Map<String, Value>, rules: &AmountRules) -> Result<Self, FieldError> {
        required(body, "id")?;
        let id = id_field(body, "id")?.unwrap_or_default();

        let kind = match required(body, "type")? {
            Value::String(s) => Kind::parse(s).ok_or_else(|| {
                FieldError::new(
                    "invalid_type",
                    "type",
                    "`type` must be one of deposit, withdraw, withdraw_request",
                )
            })?,
            _ => {
                return Err(FieldError::new(
                    "invalid_type",
                    "type",
                    "`type` must be a string",
                ))
            }
        };

        let amount_text = match required(body, "amount")? {
            // With serde_json's arbitrary_precision the number keeps its exact source text.
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => String::new(),
        };
        let amount = rules
            .parse(&amount_text)
            .map_err(|e| FieldError::new("invalid_amount", "amount", format!("`amount` {e}")))?;

        required(body, "accountId")?;
        let account_id = id_field(body, "accountId")?.unwrap_or_default();

        let occurred_at = match body.get("timestamp") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|_| {
                        FieldError::new(
                            "invalid_timestamp",
                            "timestamp",
                            "`timestamp` must be an RFC 3339 date-time",
                        )
                    })?
                    .with_timezone(&Utc),
            ),
            Some(_) => {
                return Err(FieldError::new(
                    "invalid_timestamp",
                    "timestamp",
                    "`timestamp` must be an RFC 3339 date-time string",
                ))
            }
        };

        let request_id = id_field(body, "requestId")?;
        if request_id.is_some() && kind != Kind::Withdraw {
            return Err(FieldError::new(
                "invalid_field",
                "requestId",
                "`requestId` is only allowed on a withdraw",
            ));
        }
        let user_id = id_field(body, "userId")?;

        Ok(Self {
            id,
            kind,
            account_id,
            amount,
            occurred_at,
            request_id,
            user_id,
            client_id: None,
        })
    }

    /// Makes `key` (an `Idempotency-Key` header, already validated) the transaction's key in
    /// the ledger; the body's `id` becomes part of the payload.
    pub fn with_idempotency_key(mut self, key: String) -> Self {
        self.client_id = Some(std::mem::replace(&mut self.id, key));
        self
    }

    /// Hash of everything that makes a retry "the same request". The id itself is not part of
    /// it (it is the key); a defaulted timestamp is not either (it differs on every retry).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.kind.as_str(),
            &self.account_id,
            &self.amount.normalize().to_string(),
            self.request_id.as_deref().unwrap_or(""),
            self.user_id.as_deref().unwrap_or(""),
            self.client_id.as_deref().unwrap_or(""),
            &self.occurred_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The message on a shard queue. Flat on purpose: serde's internally tagged enums buffer
/// numbers through `arbitrary_precision` maps, which breaks decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub v: u32,
    pub kind: Kind,
    pub id: String,
    pub account_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub occurred_at: DateTime<Utc>,
    pub accepted_at: DateTime<Utc>,
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// withdraw_request only: the worker must decide before this instant, else deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decide_by: Option<DateTime<Utc>>,
    /// withdraw_request only: the API stopped waiting and answered "denied,
    /// deadline_exceeded"; the ledger must end up saying the same (see [`Envelope::void`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub void: bool,
}

impl Envelope {
    /// Times are kept to the microsecond, PostgreSQL's precision, so an envelope and its
    /// record agree exactly (a void is matched to its attempt by `accepted_at`).
    pub fn new(tx: &NewTransaction, accepted_at: DateTime<Utc>) -> Self {
        let accepted_at = accepted_at.trunc_subsecs(6);
        Self {
            v: ENVELOPE_VERSION,
            kind: tx.kind,
            id: tx.id.clone(),
            account_id: tx.account_id.clone(),
            amount: tx.amount,
            occurred_at: tx.occurred_at.unwrap_or(accepted_at).trunc_subsecs(6),
            accepted_at,
            fingerprint: tx.fingerprint(),
            request_id: tx.request_id.clone(),
            user_id: tx.user_id.clone(),
            decide_by: None,
            void: false,
        }
    }

    /// The retraction of this withdraw_request, published behind it on the same shard queue
    /// when the API answered "deadline_exceeded" without a decision. The worker then records
    /// the request as denied if it has not decided it, or releases the hold if it approved it
    /// too late for the answer to reach the client. Either way answer and record agree.
    pub fn void(&self) -> Self {
        Self {
            void: true,
            ..self.clone()
        }
    }

    /// Decodes and checks an envelope. An error here is permanent: the message can never be
    /// applied and belongs in the dead-letter queue.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| format!("undecodable envelope: {e}"))?;
        if version.v != ENVELOPE_VERSION {
            return Err(format!("unknown envelope version {}", version.v));
        }
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid envelope: {e}"))?;
        validate_id(&env.id).map_err(|e| format!("invalid id: {e}"))?;
        validate_id(&env.account_id).map_err(|e| format!("invalid accountId: {e}"))?;
        if env.amount <= Decimal::ZERO {
            return Err("amount must be positive".into());
        }
        Ok(env)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and timestamps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The decision recorded for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// Deposit or withdraw that changed the balance.
    Applied,
    /// Withdraw recorded but not applied (overdraft policy).
    Rejected,
    /// withdraw_request granted: a hold was placed.
    Approved,
    /// withdraw_request refused: no hold.
    Denied,
    /// Reply only: the id is already recorded with another payload; nothing was done.
    IdReused,
}

impl OutcomeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Applied => "applied",
            OutcomeStatus::Rejected => "rejected",
            OutcomeStatus::Approved => "approved",
            OutcomeStatus::Denied => "denied",
            OutcomeStatus::IdReused => "id_reused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "applied" => Some(Self::Applied),
            "rejected" => Some(Self::Rejected),
            "approved" => Some(Self::Approved),
            "denied" => Some(Self::Denied),
            "id_reused" => Some(Self::IdReused),
            _ => None,
        }
    }
}

/// What the worker decided for one command; the body of a withdraw_request reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub id: String,
    pub account_id: String,
    pub kind: Kind,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub status: OutcomeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn parse(v: Value) -> Result<NewTransaction, FieldError> {
        NewTransaction::from_json(&body(v), &AmountRules::default())
    }

    #[test]
    fn accepts_a_slash_style_deposit() {
        let tx = parse(
            json!({"id":"t1","type":"deposit","amount":100.5,"accountId":"a1",
            "timestamp":"2024-01-01T00:00:00Z"}),
        )
        .unwrap();
        assert_eq!(tx.kind, Kind::Deposit);
        assert_eq!(tx.amount.to_string(), "100.5");
        assert!(tx.occurred_at.is_some());
    }

    #[test]
    fn names_the_field_at_fault() {
        let cases = [
            (json!({"type":"deposit","amount":1,"accountId":"a"}), "id"),
            (json!({"id":"t","amount":1,"accountId":"a"}), "type"),
            (json!({"id":"t","type":"deposit","accountId":"a"}), "amount"),
            (json!({"id":"t","type":"deposit","amount":1}), "accountId"),
            (
                json!({"id":"t","type":"bogus","amount":1,"accountId":"a"}),
                "type",
            ),
            (
                json!({"id":"t","type":"deposit","amount":"abc","accountId":"a"}),
                "amount",
            ),
            (
                json!({"id":"t","type":"deposit","amount":true,"accountId":"a"}),
                "amount",
            ),
            (
                json!({"id":"a b","type":"deposit","amount":1,"accountId":"a"}),
                "id",
            ),
            (
                json!({"id":"t","type":"deposit","amount":1,"accountId":"a","timestamp":"x"}),
                "timestamp",
            ),
            (
                json!({"id":"t","type":"deposit","amount":1,"accountId":"a","requestId":"r"}),
                "requestId",
            ),
        ];
        for (v, field) in cases {
            let err = parse(v.clone()).expect_err(&v.to_string());
            assert_eq!(err.field, field, "{v}");
        }
    }

    #[test]
    fn fingerprint_ignores_id_and_defaulted_time_but_not_amount() {
        let a =
            parse(json!({"id":"t1","type":"deposit","amount":"10.50","accountId":"a"})).unwrap();
        let b = parse(json!({"id":"t2","type":"deposit","amount":10.5,"accountId":"a"})).unwrap();
        let c = parse(json!({"id":"t1","type":"deposit","amount":10.51,"accountId":"a"})).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn envelope_round_trips_and_refuses_unknown_versions() {
        let tx =
            parse(json!({"id":"t1","type":"withdraw","amount":"0.1","accountId":"a"})).unwrap();
        let env = Envelope::new(&tx, Utc::now());
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        assert!(Envelope::decode(b"not json").is_err());
        assert!(Envelope::decode(br#"{"v":2}"#)
            .unwrap_err()
            .contains("version"));
        assert!(Envelope::decode(br#"{"v":1,"kind":"deposit"}"#).is_err());
    }
}
