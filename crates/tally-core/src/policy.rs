//! The policy command: `PUT /account/{id}/policy` validated ([`PolicyRequest`]), the message
//! that carries it through the account's shard queue ([`PolicyEnvelope`]), and [`Command`],
//! what a shard queue carries: a transaction or a policy change, told apart by `kind`.
//!
//! A policy change is a command like a transaction so that it is applied in the account's
//! order: a withdraw queued before it is judged by the old policy, one queued after it by the
//! new one. It is idempotent by its id (the `Idempotency-Key`, else one the API draws), and
//! its fingerprint (account, policy, limit) tells a retry from a reuse of the id.

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::amount::AmountRules;
use crate::command::{Envelope, EnvelopeError, FieldError, ENVELOPE_VERSION};
use crate::ids::validate_id;
use crate::ledger::{AccountPolicy, WithdrawPolicy};

/// The `kind` of a policy message on a shard queue.
pub const POLICY_KIND: &str = "account_policy";

/// Why a policy body is refused: malformed (400) or a policy that cannot be (422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// A field missing, of the wrong type, or not one of the values allowed: 400.
    Malformed(FieldError),
    /// Well-formed but contradictory: a negative limit, a limit with `always_apply`: 422.
    Unprocessable(FieldError),
}

/// A validated `PUT /account/{id}/policy` body.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRequest {
    pub account_id: String,
    pub policy: AccountPolicy,
}

fn field(code: &'static str, field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        code,
        field,
        message: message.into(),
    }
}

impl PolicyRequest {
    /// Validates a body for `account_id` (already validated as an id by the route).
    /// `overdraftLimit` is a decimal (number or string) held to the amount rules' scale and
    /// maximum; 0 is allowed (no overdraft), below 0 is refused.
    pub fn from_json(
        account_id: &str,
        body: &Map<String, Value>,
        rules: &AmountRules,
    ) -> Result<Self, PolicyError> {
        let malformed = |code, name, msg: &str| PolicyError::Malformed(field(code, name, msg));
        let policies = || {
            WithdrawPolicy::ALL
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let withdraw = match body.get("withdrawPolicy") {
            None | Some(Value::Null) => {
                return Err(malformed(
                    "missing_field",
                    "withdrawPolicy",
                    "`withdrawPolicy` is required",
                ))
            }
            Some(Value::String(s)) => WithdrawPolicy::parse(s).ok_or_else(|| {
                malformed(
                    "invalid_policy",
                    "withdrawPolicy",
                    &format!("`withdrawPolicy` must be one of {}", policies()),
                )
            })?,
            Some(_) => {
                return Err(malformed(
                    "invalid_policy",
                    "withdrawPolicy",
                    "`withdrawPolicy` must be a string",
                ))
            }
        };
        if let Some(unknown) = body
            .keys()
            .find(|k| !["withdrawPolicy", "overdraftLimit"].contains(&k.as_str()))
        {
            return Err(PolicyError::Malformed(FieldError {
                code: "unknown_field",
                field: "body",
                message: format!("unknown field `{unknown}`"),
            }));
        }
        let limit = match body.get("overdraftLimit") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(limit_of(&n.to_string(), rules)?),
            Some(Value::String(s)) => Some(limit_of(s, rules)?),
            Some(_) => {
                return Err(malformed(
                    "invalid_amount",
                    "overdraftLimit",
                    "`overdraftLimit` must be a decimal number",
                ))
            }
        };
        if withdraw == WithdrawPolicy::AlwaysApply && limit.is_some() {
            return Err(PolicyError::Unprocessable(field(
                "invalid_policy",
                "overdraftLimit",
                "`overdraftLimit` only applies to `reject_overdraft` (`always_apply` has no limit)",
            )));
        }
        Ok(Self {
            account_id: account_id.to_string(),
            policy: AccountPolicy {
                withdraw,
                overdraft_limit: limit.unwrap_or(Decimal::ZERO),
            },
        })
    }
}

/// An overdraft limit: 0 or a valid amount; negative is a 422, not a number a 400.
fn limit_of(text: &str, rules: &AmountRules) -> Result<Decimal, PolicyError> {
    let text = text.trim();
    if let Ok(value) = Decimal::from_str_exact(text) {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(PolicyError::Unprocessable(field(
                "invalid_policy",
                "overdraftLimit",
                "`overdraftLimit` must not be negative",
            )));
        }
        if value.is_zero() {
            return Ok(Decimal::ZERO);
        }
    }
    rules.parse(text).map_err(|e| {
        PolicyError::Malformed(field(
            "invalid_amount",
            "overdraftLimit",
            format!("`overdraftLimit` {e}"),
        ))
    })
}

/// The policy message on a shard queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEnvelope {
    pub v: u32,
    /// Always [`POLICY_KIND`].
    pub kind: String,
    pub id: String,
    pub account_id: String,
    pub withdraw_policy: WithdrawPolicy,
    #[serde(
        serialize_with = "rust_decimal::serde::str::serialize",
        deserialize_with = "rust_decimal::serde::str::deserialize"
    )]
    pub overdraft_limit: Decimal,
    pub accepted_at: DateTime<Utc>,
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
}

impl PolicyEnvelope {
    pub fn new(
        id: &str,
        request: &PolicyRequest,
        accepted_at: DateTime<Utc>,
        key_name: Option<String>,
    ) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            kind: POLICY_KIND.to_string(),
            id: id.to_string(),
            account_id: request.account_id.clone(),
            withdraw_policy: request.policy.withdraw,
            overdraft_limit: request.policy.overdraft_limit.normalize(),
            accepted_at: accepted_at.trunc_subsecs(6),
            fingerprint: fingerprint(request),
            key_name,
        }
    }

    pub fn policy(&self) -> AccountPolicy {
        AccountPolicy {
            withdraw: self.withdraw_policy,
            overdraft_limit: self.overdraft_limit,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain strings and timestamps: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The rules the API checked, checked again on the message.
    fn check(&self) -> Result<(), FieldError> {
        for (name, id) in [("id", &self.id), ("accountId", &self.account_id)] {
            validate_id(id).map_err(|e| field("invalid_id", name, format!("`{name}` {e}")))?;
        }
        let negative = self.overdraft_limit.is_sign_negative() && !self.overdraft_limit.is_zero();
        let limit_without_policy =
            self.withdraw_policy == WithdrawPolicy::AlwaysApply && !self.overdraft_limit.is_zero();
        if negative || limit_without_policy {
            return Err(field(
                "invalid_policy",
                "overdraftLimit",
                "`overdraftLimit` must be 0 or more, and 0 under always_apply",
            ));
        }
        Ok(())
    }
}

/// What makes two policy requests "the same": the account and the policy.
pub fn fingerprint(request: &PolicyRequest) -> String {
    let mut h = Sha256::new();
    for part in [
        POLICY_KIND,
        &request.account_id,
        request.policy.withdraw.as_str(),
        &request.policy.overdraft_limit.normalize().to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    format!("{:x}", h.finalize())
}

/// A message of a shard queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Transaction(Envelope),
    Policy(PolicyEnvelope),
}

impl From<Envelope> for Command {
    fn from(env: Envelope) -> Self {
        Command::Transaction(env)
    }
}

impl Command {
    /// Decodes a shard queue message: a policy change by its `kind`, anything else as a
    /// transaction ([`Envelope::decode`]). An error is permanent (dead letter).
    pub fn decode(bytes: &[u8], rules: &AmountRules) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct Kind {
            kind: Option<String>,
        }
        // A transaction (nearly every message) never contains the policy kind's text: one
        // byte scan instead of a second JSON parse on the hot path.
        let mentions_policy = bytes
            .windows(POLICY_KIND.len())
            .any(|w| w == POLICY_KIND.as_bytes());
        let is_policy = mentions_policy
            && serde_json::from_slice::<Kind>(bytes)
                .ok()
                .and_then(|k| k.kind)
                .is_some_and(|k| k == POLICY_KIND);
        if !is_policy {
            return Envelope::decode(bytes, rules).map(Command::Transaction);
        }
        let env: PolicyEnvelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if env.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnknownVersion(env.v));
        }
        env.check().map_err(EnvelopeError::Invalid)?;
        Ok(Command::Policy(env))
    }

    pub fn id(&self) -> &str {
        match self {
            Command::Transaction(e) => &e.id,
            Command::Policy(p) => &p.id,
        }
    }

    pub fn account_id(&self) -> &str {
        match self {
            Command::Transaction(e) => &e.account_id,
            Command::Policy(p) => &p.account_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<PolicyRequest, PolicyError> {
        match v {
            Value::Object(m) => PolicyRequest::from_json("a", &m, &AmountRules::default()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn bad_bodies_are_400_and_impossible_policies_422() {
        use PolicyError::*;
        for (body, malformed) in [
            (json!({}), true),
            (json!({"withdrawPolicy": 1}), true),
            (json!({"withdrawPolicy": "sometimes"}), true),
            (
                json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": "x"}),
                true,
            ),
            (
                json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": true}),
                true,
            ),
            (
                json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": "0.001"}),
                true,
            ),
            (
                json!({"withdrawPolicy": "reject_overdraft", "extra": 1}),
                true,
            ),
            (
                json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": -5}),
                false,
            ),
            (
                json!({"withdrawPolicy": "always_apply", "overdraftLimit": 10}),
                false,
            ),
            (
                json!({"withdrawPolicy": "always_apply", "overdraftLimit": 0}),
                false,
            ),
        ] {
            match parse(body.clone()) {
                Err(Malformed(_)) => assert!(malformed, "{body} should be 422"),
                Err(Unprocessable(_)) => assert!(!malformed, "{body} should be 400"),
                Ok(p) => panic!("{body} accepted as {p:?}"),
            }
        }
        let ok = parse(json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": "50.50"}))
            .unwrap();
        assert_eq!(ok.policy.overdraft_limit.to_string(), "50.5");
        let ok = parse(json!({"withdrawPolicy": "always_apply"})).unwrap();
        assert_eq!(ok.policy.overdraft_limit, Decimal::ZERO);
    }

    #[test]
    fn a_policy_message_round_trips_and_a_transaction_still_decodes() {
        let request =
            parse(json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": 7})).unwrap();
        let env = PolicyEnvelope::new("p1", &request, Utc::now(), Some("k".into()));
        let rules = AmountRules::default();
        assert_eq!(
            Command::decode(&env.encode(), &rules).unwrap(),
            Command::Policy(env.clone())
        );
        let mut bad = env;
        bad.overdraft_limit = Decimal::NEGATIVE_ONE;
        assert!(Command::decode(&bad.encode(), &rules).is_err());
        let tx = crate::command::NewTransaction::from_json(
            json!({"id":"t","type":"deposit","amount":1,"accountId":"a"})
                .as_object()
                .unwrap(),
            &rules,
        )
        .unwrap();
        let tx = Envelope::new(&tx, Utc::now());
        assert_eq!(
            Command::decode(&tx.encode(), &rules).unwrap(),
            Command::Transaction(tx)
        );
    }
}
