//! One function per command, each saying what the command decides given the state it sees,
//! as a [`Verdict`] that [`apply`](super::books::apply) carries out. Pure: they read the
//! account and its open holds and change nothing, so each rule reads on its own.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::command::Envelope;
use crate::ledger::state::{AccountState, Hold};
use crate::ledger::{AccountPolicy, WithdrawPolicy};
use crate::vocabulary::{Kind, OutcomeStatus, Reason};

/// What a new command does to its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Recorded with this status and reason, and nothing else happens.
    Refused(OutcomeStatus, Reason),
    /// The balance grows by the amount.
    Deposit,
    /// The balance shrinks by the amount; the open hold at this index of the account's holds,
    /// if any, is captured.
    Withdraw { capture: Option<usize> },
    /// A hold of the amount is placed.
    Approve,
}

/// The API refuses a userId that differs from the recorded owner (422); two first uses racing
/// in the queue are settled here: the later one is recorded, not applied.
pub(super) fn foreign_owner(account: &AccountState, env: &Envelope) -> Option<Verdict> {
    let foreign = matches!(
        (&account.user_id, &env.user_id),
        (Some(owner), Some(user)) if owner != user
    );
    let status = match env.kind {
        Kind::WithdrawRequest => OutcomeStatus::Denied,
        Kind::Deposit | Kind::Withdraw => OutcomeStatus::Rejected,
    };
    foreign.then_some(Verdict::Refused(status, Reason::AccountOwnedByAnotherUser))
}

/// A deposit always adds.
pub(super) fn deposit() -> Verdict {
    Verdict::Deposit
}

/// A withdraw captures the hold it names, else the oldest open hold of its amount. Under
/// `reject_overdraft` it must fit in `available` plus that hold (money promised to this very
/// request is its own) plus the account's overdraft limit; a rejected withdraw captures
/// nothing. `policy` is the account's own, else the global one.
pub(super) fn withdraw(
    env: &Envelope,
    account: &AccountState,
    holds: &[Hold],
    policy: AccountPolicy,
) -> Verdict {
    let capture = match &env.request_id {
        Some(request) => holds.iter().position(|h| &h.request_id == request),
        None => holds.iter().position(|h| h.amount == env.amount),
    };
    if policy.withdraw == WithdrawPolicy::RejectOverdraft {
        let promised = capture.map_or(Decimal::ZERO, |i| holds[i].amount);
        if account.available() + promised + policy.overdraft_limit < env.amount {
            return Verdict::Refused(OutcomeStatus::Rejected, Reason::InsufficientFunds);
        }
    }
    Verdict::Withdraw { capture }
}

/// A withdraw_request is approved (and places a hold) if decided in time and covered by
/// `available`. Its void, arriving before any decision, is a denial in time for the answer.
pub(super) fn withdraw_request(
    env: &Envelope,
    account: &AccountState,
    now: DateTime<Utc>,
) -> Verdict {
    if env.void || env.decide_by.is_some_and(|d| now > d) {
        return Verdict::Refused(OutcomeStatus::Denied, Reason::DeadlineExceeded);
    }
    if account.available() < env.amount {
        return Verdict::Refused(OutcomeStatus::Denied, Reason::InsufficientFunds);
    }
    Verdict::Approve
}

/// The void of an approved request releases its hold if it is still open (its index among the
/// account's open holds); a captured or expired hold stays as it is: the withdraw that
/// captured it is its own record.
pub(super) fn void(hold_id: Option<Uuid>, holds: &[Hold]) -> Option<usize> {
    hold_id.and_then(|id| holds.iter().position(|h| h.id == id))
}

/// A hold stops counting once its TTL has passed, before any command on its account is
/// decided.
pub(super) fn expired(hold: &Hold, now: DateTime<Utc>) -> bool {
    hold.expires_at <= now
}
