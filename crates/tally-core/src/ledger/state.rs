//! What a batch reads before deciding ([`Snapshot`]): the records of its ids, its accounts and
//! their open holds, as typed values (the store maps its rows to them).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
use uuid::Uuid;

use crate::command::Outcome;
use crate::ledger::AccountPolicy;
use crate::vocabulary::{Kind, OutcomeStatus, Reason};

/// A transaction id the ledger already decided: what dedupe and idempotent replies need.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub account_id: String,
    pub kind: Kind,
    pub amount: Decimal,
    pub status: OutcomeStatus,
    pub reason: Option<Reason>,
    pub hold_id: Option<Uuid>,
    pub fingerprint: String,
    /// `acceptedAt` of the latest copy of this request answered with this record's outcome
    /// while approved (at first, the copy that decided it): a void from an older attempt
    /// does not deny an approval a later attempt was answered (migrations/V7).
    pub last_copy_at: DateTime<Utc>,
}

impl Recorded {
    /// The outcome this record answers for `id`. Only an approval carries its hold: a denied
    /// request has none, and a withdraw's captured hold is not part of its answer.
    pub fn outcome(&self, id: &str) -> Outcome {
        Outcome {
            id: id.to_string(),
            account_id: self.account_id.clone(),
            kind: self.kind,
            amount: self.amount,
            status: self.status,
            reason: self.reason,
            hold_id: self
                .hold_id
                .filter(|_| self.status == OutcomeStatus::Approved),
        }
    }
}

/// An account as the batch sees and changes it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountState {
    pub id: String,
    pub user_id: Option<String>,
    pub balance: Decimal,
    /// Sum of open holds.
    pub held: Decimal,
    /// Number of commands recorded on the account; the last one's `seq`.
    pub version: i64,
    /// Its own withdraw policy; `None`: the global one ([`crate::ledger::Rules`]).
    pub policy: Option<AccountPolicy>,
    /// Number of policy changes applied to the account (they take no `seq`: the history of
    /// transactions stays gapless; each change records the `seq` it came after).
    pub policy_version: i64,
}

impl AccountState {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            user_id: None,
            balance: Decimal::ZERO,
            held: Decimal::ZERO,
            version: 0,
            policy: None,
            policy_version: 0,
        }
    }

    /// What the account can spend: its balance less the money promised to open holds.
    pub fn available(&self) -> Decimal {
        self.balance - self.held
    }
}

/// An open hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub id: Uuid,
    pub account_id: String,
    pub request_id: String,
    pub amount: Decimal,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Everything a batch reads before deciding.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub recorded: HashMap<String, Recorded>,
    pub accounts: HashMap<String, AccountState>,
    /// Open holds of the batch's accounts, oldest first (per account).
    pub holds: Vec<Hold>,
    /// Policy commands of the batch already applied: id → fingerprint (dedupe).
    pub policy_changes: HashMap<String, String>,
}
