//! The ledger: its model and its rules, as pure functions. Given the commands of a batch (in
//! delivery order) and the state they touch ([`Snapshot`]), [`decide`] decides each command
//! and produces the rows to write ([`Effects`]). No IO here: the store loads and writes these
//! values, the worker runs the decision, and every rule is unit-tested without a database.
//!
//! Rules: a duplicate id has no effect and gets its recorded outcome back, or `id_reused` when
//! the payload differs (recorded as an id conflict); holds past their TTL expire before
//! anything else on their account; a deposit adds; a withdraw is applied (even into a negative
//! balance, unless the policy is `reject_overdraft`, which judges it against `available` plus
//! the hold it captures) and captures the hold it names by `requestId`, else the oldest open
//! hold of the same amount; a withdraw_request is approved only if its decision deadline has
//! not passed and `balance − held` covers it, and then places a hold. A command naming a user
//! other than the account's owner is recorded refused.
//!
//! A void (the API answered "denied, deadline_exceeded" without seeing a decision) makes the
//! record say that: an undecided request is recorded denied; an approved one becomes denied
//! whichever attempt decided it, and its hold, if still open, is released; a denied one stays.
//!
//! Each account may carry its own withdraw policy ([`AccountPolicy`]: `reject_overdraft` may
//! allow an overdraft limit below zero), set by a policy command that travels the account's
//! queue like a transaction, so every withdraw is judged by the policy in force at its
//! position in the account's order; accounts without one follow the global setting.
//!
//! - [`decide`] (decide.rs): one batch, command by command: duplicates, voids, new commands.
//! - commands.rs: one pure function per command (deposit, withdraw, withdraw_request, void,
//!   expiry) saying what it decides, as a `Verdict`.
//! - books.rs: the accounts and open holds as the batch changes them; applies verdicts.
//! - [`state`] and [`effects`]: what a batch reads and what it writes. [`Effects`]' methods
//!   net a hold placed and closed (or a record inserted and voided) in one batch into one row
//!   in its final state.

mod books;
mod commands;
mod decide;
mod effects;
mod state;
#[cfg(test)]
mod tests;

use chrono::Duration;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use decide::{decide, decide_commands, Decision};
pub use effects::NewPolicyChange;
pub use effects::{
    ClosedHold, Closure, Effects, HoldEnd, IdConflict, NewHold, NewRecord, OverlappingEffects,
    VOIDED_REASON, VOIDED_STATUS,
};
pub use state::{AccountState, Hold, Recorded, Snapshot};

/// What a withdraw that the account cannot cover does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawPolicy {
    /// Applied anyway: the balance may go negative.
    AlwaysApply,
    /// Recorded rejected (`insufficient_funds`) when `available` plus the hold it captures
    /// does not cover it.
    RejectOverdraft,
}

impl WithdrawPolicy {
    pub const ALL: [WithdrawPolicy; 2] =
        [WithdrawPolicy::AlwaysApply, WithdrawPolicy::RejectOverdraft];

    /// The policy's text, as stored and as shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            WithdrawPolicy::AlwaysApply => "always_apply",
            WithdrawPolicy::RejectOverdraft => "reject_overdraft",
        }
    }

    /// The policy whose text is `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The withdraw policy of one account: set by a policy command (`PUT /account/{id}/policy`),
/// applied in the account's order; an account without one follows [`Rules::withdraw_policy`]
/// with no overdraft limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountPolicy {
    pub withdraw: WithdrawPolicy,
    /// Under `reject_overdraft`: how far below zero `available` may go (0: not at all).
    /// Always 0 under `always_apply`, which has no limit.
    pub overdraft_limit: Decimal,
}

impl AccountPolicy {
    /// The global default: the configured policy, no overdraft limit.
    pub fn default_of(rules: &Rules) -> Self {
        Self {
            withdraw: rules.withdraw_policy,
            overdraft_limit: Decimal::ZERO,
        }
    }
}

/// The policy knobs the rules depend on.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub withdraw_policy: WithdrawPolicy,
    pub hold_ttl: Duration,
}
