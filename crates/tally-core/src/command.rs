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

use crate::amount::{AmountError, AmountRules};
use crate::ids::validate_id;
use crate::vocabulary::{Kind, OutcomeStatus, Reason};

/// Version of [`Envelope`] this build writes and understands.
pub const ENVELOPE_VERSION: u32 = 1;

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
    /// The name of the API key that posted it (who moved this money): recorded with the
    /// transaction, never part of the payload (a retry with a rotated key is the same
    /// request).
    pub key_name: Option<String>,
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

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
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
        Some(Value::String(s)) => check_id(field, s).map(|()| Some(s.clone())),
        Some(_) => Err(FieldError::new(
            "invalid_id",
            field,
            format!("`{field}` must be a string"),
        )),
    }
}

// The rules every command obeys wherever it enters: the API checks them on the body
// (`NewTransaction::from_json`), the worker on the message (`Envelope::decode`), so a message
// published by hand cannot carry what the API would refuse. One definition each, used by both.

/// An identifier field (`id`, `accountId`, `requestId`, `userId`): the shared charset.
fn check_id(field: &'static str, id: &str) -> Result<(), FieldError> {
    validate_id(id).map_err(|e| FieldError::new("invalid_id", field, format!("`{field}` {e}")))
}

/// The amount: positive, at most the maximum, at most the allowed decimals.
fn check_amount(amount: Decimal, rules: &AmountRules) -> Result<Decimal, FieldError> {
    rules.check(amount).map_err(amount_error)
}

fn amount_error(e: AmountError) -> FieldError {
    FieldError::new("invalid_amount", "amount", format!("`amount` {e}"))
}

/// `requestId` names the withdraw_request whose hold a withdraw captures: a withdraw only.
fn check_request_id(kind: Kind, request_id: Option<&str>) -> Result<(), FieldError> {
    if request_id.is_some() && kind != Kind::Withdraw {
        return Err(FieldError::new(
            "invalid_field",
            "requestId",
            "`requestId` is only allowed on a withdraw",
        ));
    }
    Ok(())
}

impl NewTransaction {
    /// Validates a decoded JSON body. Checks fields in a fixed order so the error is stable.
    pub fn from_json(body: &Map<String, Value>, rules: &AmountRules) -> Result<Self, FieldError> {
        required(body, "id")?;
        let id = id_field(body, "id")?.unwrap_or_default();

        let kind = match required(body, "type")? {
            Value::String(s) => Kind::parse(s).ok_or_else(|| {
                let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                FieldError::new(
                    "invalid_type",
                    "type",
                    format!("`type` must be one of {}", kinds.join(", ")),
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
        let amount = rules.parse(&amount_text).map_err(amount_error)?;

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
        check_request_id(kind, request_id.as_deref())?;
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
            key_name: None,
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
        format!("{:x}", h.finalize())
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
    /// Decimal text, read exactly: a digit beyond what a Decimal holds is an error, not a
    /// rounding (`rust_decimal::serde::str` would round).
    #[serde(
        serialize_with = "rust_decimal::serde::str::serialize",
        deserialize_with = "exact_decimal_text"
    )]
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
    /// The name of the API key that posted the command ([`NewTransaction::key_name`]); not
    /// part of the fingerprint. Absent from envelopes of older builds and of
    /// `tally import --via queue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
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
            key_name: tx.key_name.clone(),
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

    /// Decodes an envelope and checks it against every rule the API checks a request
    /// against, and the envelope's own (`void` and `decideBy` belong to a withdraw_request, the
    /// fingerprint is a SHA-256). An error here is permanent: the message can never be applied
    /// and belongs in the dead-letter queue.
    pub fn decode(bytes: &[u8], rules: &AmountRules) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        // One parse for a good message; only a failed one is parsed again, to tell an unknown
        // version from a malformed body.
        let parsed = serde_json::from_slice::<Envelope>(bytes);
        let mut env = match parsed {
            Ok(env) if env.v == ENVELOPE_VERSION => env,
            Ok(env) => return Err(EnvelopeError::UnknownVersion(env.v)),
            Err(malformed) => {
                let version: Version = serde_json::from_slice(bytes)
                    .map_err(|e| EnvelopeError::Undecodable(e.to_string()))?;
                return Err(if version.v == ENVELOPE_VERSION {
                    EnvelopeError::Malformed(malformed.to_string())
                } else {
                    EnvelopeError::UnknownVersion(version.v)
                });
            }
        };
        env.amount = env.check(rules).map_err(EnvelopeError::Invalid)?;
        Ok(env)
    }

    /// The rules of [`Envelope::decode`], in the order the API checks a body; returns the
    /// amount normalized, as the API would have.
    fn check(&self, rules: &AmountRules) -> Result<Decimal, FieldError> {
        check_id("id", &self.id)?;
        let amount = check_amount(self.amount, rules)?;
        check_id("accountId", &self.account_id)?;
        if let Some(request_id) = &self.request_id {
            check_id("requestId", request_id)?;
        }
        check_request_id(self.kind, self.request_id.as_deref())?;
        if let Some(user_id) = &self.user_id {
            check_id("userId", user_id)?;
        }
        if let Some(key_name) = &self.key_name {
            check_id("keyName", key_name)?;
        }
        let request_only = |field: &'static str| {
            FieldError::new(
                "invalid_field",
                field,
                format!("`{field}` is only allowed on a withdraw_request"),
            )
        };
        if self.kind != Kind::WithdrawRequest {
            if self.void {
                return Err(request_only("void"));
            }
            if self.decide_by.is_some() {
                return Err(request_only("decideBy"));
            }
        }
        let is_sha256 = self.fingerprint.len() == 64
            && self
                .fingerprint
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_sha256 {
            return Err(FieldError::new(
                "invalid_field",
                "fingerprint",
                "`fingerprint` must be a SHA-256 in lowercase hex",
            ));
        }
        Ok(amount)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and timestamps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Why a message on a shard queue can never be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("undecodable envelope: {0}")]
    Undecodable(String),
    #[error("unknown envelope version {0}")]
    UnknownVersion(u32),
    #[error("invalid envelope: {0}")]
    Malformed(String),
    /// A field the API would have refused with a 400.
    #[error("invalid envelope: {0}")]
    Invalid(FieldError),
}

fn exact_decimal_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let text = String::deserialize(d)?;
    Decimal::from_str_exact(&text).map_err(serde::de::Error::custom)
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
    pub reason: Option<Reason>,
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

    /// A valid withdraw_request envelope as JSON, to break one field at a time.
    fn valid_envelope() -> Value {
        let tx = parse(json!({"id":"t1","type":"withdraw_request","amount":"2.5","accountId":"a"}))
            .unwrap();
        let mut env = Envelope::new(&tx, Utc::now());
        env.decide_by = Some(Utc::now());
        serde_json::from_slice(&env.encode()).unwrap()
    }

    fn decode_value(v: &Value) -> Result<Envelope, EnvelopeError> {
        Envelope::decode(v.to_string().as_bytes(), &AmountRules::default())
    }

    #[test]
    fn envelope_decode_refuses_what_the_api_refuses() {
        assert!(decode_value(&valid_envelope()).is_ok());
        let cases: [(&str, Value, &str); 16] = [
            ("amount", json!("10.001"), "amount"),
            ("amount", json!("0"), "amount"),
            ("amount", json!("-5"), "amount"),
            ("amount", json!("1000000000000000.01"), "amount"),
            ("amount", json!("10000000000000000"), "amount"),
            ("id", json!(""), "id"),
            ("id", json!("has space"), "id"),
            ("id", json!("x".repeat(129)), "id"),
            ("accountId", json!("a/b"), "accountId"),
            ("accountId", json!(""), "accountId"),
            ("userId", json!("é"), "userId"),
            ("userId", json!(""), "userId"),
            ("requestId", json!("ok-id"), "requestId"),
            ("fingerprint", json!(""), "fingerprint"),
            ("fingerprint", json!("Z".repeat(64)), "fingerprint"),
            ("fingerprint", json!("ab"), "fingerprint"),
        ];
        for (key, value, field) in cases {
            let mut v = valid_envelope();
            v[key] = value;
            match decode_value(&v) {
                Err(EnvelopeError::Invalid(e)) => assert_eq!(e.field, field, "{v}"),
                other => panic!("{v} decoded as {other:?}"),
            }
        }
    }

    #[test]
    fn envelope_decode_keeps_request_only_fields_on_requests() {
        for kind in ["deposit", "withdraw"] {
            for (key, value, field) in [
                ("void", json!(true), "void"),
                ("decideBy", json!("2030-01-01T00:00:00Z"), "decideBy"),
            ] {
                let mut v = valid_envelope();
                v["kind"] = json!(kind);
                v.as_object_mut().unwrap().remove("decideBy");
                v[key] = value;
                match decode_value(&v) {
                    Err(EnvelopeError::Invalid(e)) => assert_eq!(e.field, field, "{v}"),
                    other => panic!("{v} decoded as {other:?}"),
                }
            }
        }
        // A withdraw may name its request; a request may be voided.
        let mut v = valid_envelope();
        v["kind"] = json!("withdraw");
        v.as_object_mut().unwrap().remove("decideBy");
        v["requestId"] = json!("r-1");
        assert!(decode_value(&v).is_ok(), "{v}");
        let mut v = valid_envelope();
        v["void"] = json!(true);
        assert!(decode_value(&v).is_ok(), "{v}");
    }

    #[test]
    fn envelope_amounts_are_read_exactly_never_rounded() {
        for amount in [
            json!("10.00999999999999999999999999999999"),
            json!("1e1"),
            json!(10),
            json!("ten"),
        ] {
            let mut v = valid_envelope();
            v["amount"] = amount;
            assert!(
                matches!(decode_value(&v), Err(EnvelopeError::Malformed(_))),
                "{v}"
            );
        }
        let mut v = valid_envelope();
        v["amount"] = json!("10.50");
        assert_eq!(decode_value(&v).unwrap().amount.to_string(), "10.5");
    }

    #[test]
    fn envelope_round_trips_and_refuses_unknown_versions() {
        let tx =
            parse(json!({"id":"t1","type":"withdraw","amount":"0.1","accountId":"a"})).unwrap();
        let env = Envelope::new(&tx, Utc::now());
        let rules = AmountRules::default();
        assert_eq!(Envelope::decode(&env.encode(), &rules).unwrap(), env);
        assert!(Envelope::decode(b"not json", &rules).is_err());
        assert_eq!(
            Envelope::decode(br#"{"v":2}"#, &rules),
            Err(EnvelopeError::UnknownVersion(2))
        );
        assert!(Envelope::decode(br#"{"v":1,"kind":"deposit"}"#, &rules).is_err());
    }
}
