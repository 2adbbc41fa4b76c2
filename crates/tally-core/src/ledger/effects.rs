//! What a batch decided ([`Effects`]), as the final state of every row it writes: account
//! rows, new transaction records, new and closed holds, voided records and id conflicts.
//!
//! Final states of disjoint rows, so that the store can send the statements that write them
//! in any order (pipelined, see `tally_store::batch::write`): [`Effects::check_disjoint`]
//! refuses effects where two statements would touch the same row.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::HashSet;
use uuid::Uuid;

use crate::ledger::state::{AccountState, Hold, Recorded};
use crate::ledger::AccountPolicy;
use crate::vocabulary::{HoldStatus, Kind, OutcomeStatus, Reason};

/// A transaction row to insert, in its final state for this batch.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub id: String,
    pub account_id: String,
    pub kind: Kind,
    pub amount: Decimal,
    pub status: OutcomeStatus,
    pub reason: Option<Reason>,
    pub hold_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub fingerprint: String,
    pub seq: i64,
    pub balance_after: Decimal,
    pub occurred_at: DateTime<Utc>,
    pub accepted_at: DateTime<Utc>,
    /// A later copy of this approved request, answered in the same batch
    /// ([`Recorded::last_copy_at`]); `None`: the deciding copy.
    pub last_copy_at: Option<DateTime<Utc>>,
    /// The name of the API key that posted the deciding copy.
    pub key_name: Option<String>,
}

impl From<&NewRecord> for Recorded {
    fn from(r: &NewRecord) -> Self {
        Recorded {
            account_id: r.account_id.clone(),
            kind: r.kind,
            amount: r.amount,
            status: r.status,
            reason: r.reason,
            hold_id: r.hold_id,
            fingerprint: r.fingerprint.clone(),
            last_copy_at: r.last_copy_at.unwrap_or(r.accepted_at),
        }
    }
}

/// A policy command applied by the batch: a row of the account's policy history
/// (`account_policy_changes`, V10).
#[derive(Debug, Clone, PartialEq)]
pub struct NewPolicyChange {
    pub id: String,
    pub account_id: String,
    pub policy: AccountPolicy,
    /// The account's `policy_version` after this change (1 for its first).
    pub policy_version: i64,
    /// The account's `seq` when it was applied: it governs the transactions with a greater
    /// `seq` (until the next change).
    pub after_seq: i64,
    pub fingerprint: String,
    pub accepted_at: DateTime<Utc>,
    pub key_name: Option<String>,
}

/// What a voided approval becomes: the API answered "denied, deadline exceeded" without
/// seeing the approval, and the record must say what the client was told (with no hold).
pub const VOIDED_STATUS: OutcomeStatus = OutcomeStatus::Denied;
pub const VOIDED_REASON: Reason = Reason::DeadlineExceeded;

/// How a hold stopped being open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// A withdraw took the money it promised.
    Captured,
    /// Its TTL passed.
    Expired,
    /// Its request was voided (the API answered "denied").
    Released,
}

impl From<HoldEnd> for HoldStatus {
    fn from(end: HoldEnd) -> Self {
        match end {
            HoldEnd::Captured => HoldStatus::Captured,
            HoldEnd::Expired => HoldStatus::Expired,
            HoldEnd::Released => HoldStatus::Released,
        }
    }
}

/// How a hold ended, and the withdraw that captured it.
#[derive(Debug, Clone, PartialEq)]
pub struct Closure {
    pub end: HoldEnd,
    pub captured_by: Option<String>,
}

/// A hold the batch placed, in its final state: still open, or already closed by a later
/// command of the same batch (inserted closed, never inserted then updated).
#[derive(Debug, Clone, PartialEq)]
pub struct NewHold {
    pub hold: Hold,
    pub closed: Option<Closure>,
}

impl NewHold {
    /// The status its row is inserted with.
    pub fn status(&self) -> HoldStatus {
        self.closed
            .as_ref()
            .map_or(HoldStatus::Open, |c| c.end.into())
    }
}

/// A hold that was open before the batch and that the batch closed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedHold {
    pub id: Uuid,
    pub closure: Closure,
}

/// A command that reused a recorded id with another payload: nothing was done for it, and
/// this row says so durably (`id_conflicts`, V6).
#[derive(Debug, Clone, PartialEq)]
pub struct IdConflict {
    pub id: String,
    pub fingerprint: String,
    pub kind: Kind,
    pub account_id: String,
    pub amount: Decimal,
    pub accepted_at: DateTime<Utc>,
}

/// Two writes of a batch would touch the same row, so their order would matter: a bug in the
/// decision, refused before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch effects overlap: {what} ({id})")]
pub struct OverlappingEffects {
    pub what: &'static str,
    pub id: String,
}

/// Everything a batch decided, as final states: every row is written by exactly one
/// statement, so the statements that write them touch disjoint rows and can run in any order.
///
/// The methods keep it that way: a hold placed and closed in the same batch is one
/// [`NewHold`] in its final state, a record inserted and voided in the same batch is one
/// [`NewRecord`] in its final state; [`Effects::closed_holds`] and [`Effects::voided`] only
/// ever name rows that existed before the batch. [`Effects::check_disjoint`] refuses effects
/// that overlap anyway.
#[derive(Debug, Default)]
pub struct Effects {
    accounts: Vec<AccountState>,
    records: Vec<NewRecord>,
    new_holds: Vec<NewHold>,
    closed_holds: Vec<ClosedHold>,
    voided: Vec<String>,
    copies: Vec<(String, DateTime<Utc>)>,
    conflicts: Vec<IdConflict>,
    policy_changes: Vec<NewPolicyChange>,
}

impl Effects {
    /// Final state of every account the batch touched.
    pub fn accounts(&self) -> &[AccountState] {
        &self.accounts
    }

    pub fn records(&self) -> &[NewRecord] {
        &self.records
    }

    pub fn new_holds(&self) -> &[NewHold] {
        &self.new_holds
    }

    /// Holds open before the batch that it closed.
    pub fn closed_holds(&self) -> &[ClosedHold] {
        &self.closed_holds
    }

    /// Records approved before the batch that it voided.
    pub fn voided(&self) -> &[String] {
        &self.voided
    }

    /// Records approved before the batch whose latest answered copy is later now
    /// ([`Recorded::last_copy_at`]).
    pub fn copies(&self) -> &[(String, DateTime<Utc>)] {
        &self.copies
    }

    pub fn conflicts(&self) -> &[IdConflict] {
        &self.conflicts
    }

    /// Policy commands applied, in the batch's order.
    pub fn policy_changes(&self) -> &[NewPolicyChange] {
        &self.policy_changes
    }

    /// A policy command applied.
    pub(super) fn policy_change(&mut self, change: NewPolicyChange) {
        self.policy_changes.push(change);
    }

    /// Sets the final state of the accounts the batch touched.
    pub(super) fn set_accounts(&mut self, accounts: Vec<AccountState>) {
        self.accounts = accounts;
    }

    /// A new transaction row.
    pub(super) fn record(&mut self, record: NewRecord) {
        self.records.push(record);
    }

    /// A new open hold.
    pub(super) fn place_hold(&mut self, hold: Hold) {
        self.new_holds.push(NewHold { hold, closed: None });
    }

    /// Closes hold `id`: the batch's own new hold if it placed it, else a hold open before.
    pub(super) fn close_hold(&mut self, id: Uuid, end: HoldEnd, captured_by: Option<String>) {
        let closure = Closure { end, captured_by };
        match self.new_holds.iter_mut().find(|h| h.hold.id == id) {
            Some(new) => new.closed = Some(closure),
            None => self.closed_holds.push(ClosedHold { id, closure }),
        }
    }

    /// Denies the approved withdraw_request `id` ([`VOIDED_STATUS`], [`VOIDED_REASON`], no
    /// hold): the batch's own new record if it inserted it, else a record from before.
    pub(super) fn void(&mut self, id: &str) {
        match self.records.iter_mut().find(|r| r.id == id) {
            Some(record) => {
                record.status = VOIDED_STATUS;
                record.reason = Some(VOIDED_REASON);
                record.hold_id = None;
            }
            None => {
                // Denied now: when its last copy was answered no longer matters.
                self.copies.retain(|(copy, _)| copy != id);
                self.voided.push(id.to_string());
            }
        }
    }

    /// A copy of the approved request `id` accepted at `at` was answered "approved"
    /// ([`Recorded::last_copy_at`]): the batch's own new record if it inserted it, else a
    /// record from before.
    pub(super) fn copy_answered(&mut self, id: &str, at: DateTime<Utc>) {
        if let Some(record) = self.records.iter_mut().find(|r| r.id == id) {
            record.last_copy_at = record.last_copy_at.max(Some(at));
        } else if let Some((_, last)) = self.copies.iter_mut().find(|(copy, _)| copy == id) {
            *last = (*last).max(at);
        } else {
            self.copies.push((id.to_string(), at));
        }
    }

    /// A reuse of a recorded id with another payload (once per id and payload).
    pub(super) fn conflict(&mut self, conflict: IdConflict) {
        let seen = self
            .conflicts
            .iter()
            .any(|c| c.id == conflict.id && c.fingerprint == conflict.fingerprint);
        if !seen {
            self.conflicts.push(conflict);
        }
    }

    /// Fails when two writes would touch the same row (or one write the same row twice):
    /// then their order would matter, and a pipelined batch does not fix it.
    pub fn check_disjoint(&self) -> Result<(), OverlappingEffects> {
        let overlap = |what: &'static str, id: String| OverlappingEffects { what, id };
        let mut accounts = HashSet::new();
        if let Some(a) = self
            .accounts
            .iter()
            .find(|a| !accounts.insert(a.id.as_str()))
        {
            return Err(overlap("account written twice", a.id.clone()));
        }
        let mut records = HashSet::new();
        if let Some(r) = self.records.iter().find(|r| !records.insert(r.id.as_str())) {
            return Err(overlap("record inserted twice", r.id.clone()));
        }
        let mut voided = HashSet::new();
        for id in &self.voided {
            if records.contains(id.as_str()) {
                return Err(overlap("record inserted and voided", id.clone()));
            }
            if !voided.insert(id.as_str()) {
                return Err(overlap("record voided twice", id.clone()));
            }
        }
        let mut copies = HashSet::new();
        for (id, _) in &self.copies {
            if records.contains(id.as_str()) || voided.contains(id.as_str()) {
                return Err(overlap(
                    "record inserted or voided, and its copy answered",
                    id.clone(),
                ));
            }
            if !copies.insert(id.as_str()) {
                return Err(overlap("copy answered twice", id.clone()));
            }
        }
        let mut holds = HashSet::new();
        if let Some(h) = self.new_holds.iter().find(|h| !holds.insert(h.hold.id)) {
            return Err(overlap("hold inserted twice", h.hold.id.to_string()));
        }
        let mut closed = HashSet::new();
        for c in &self.closed_holds {
            if holds.contains(&c.id) {
                return Err(overlap("hold inserted and closed", c.id.to_string()));
            }
            if !closed.insert(c.id) {
                return Err(overlap("hold closed twice", c.id.to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(request: &str) -> Hold {
        let now = Utc::now();
        Hold {
            id: Uuid::new_v4(),
            account_id: "a".into(),
            request_id: request.into(),
            amount: Decimal::ONE,
            created_at: now,
            expires_at: now,
        }
    }

    fn record(id: &str) -> NewRecord {
        let now = Utc::now();
        NewRecord {
            id: id.into(),
            account_id: "a".into(),
            kind: Kind::WithdrawRequest,
            amount: Decimal::ONE,
            status: OutcomeStatus::Approved,
            reason: None,
            hold_id: None,
            request_id: None,
            fingerprint: "f".into(),
            seq: 1,
            balance_after: Decimal::ONE,
            occurred_at: now,
            accepted_at: now,
            last_copy_at: None,
            key_name: None,
        }
    }

    #[test]
    fn a_hold_placed_and_closed_in_one_batch_is_one_row_in_its_final_state() {
        let mut e = Effects::default();
        let new = hold("r1");
        let before = Uuid::new_v4();
        e.place_hold(new.clone());
        e.close_hold(new.id, HoldEnd::Captured, Some("w1".into()));
        e.close_hold(before, HoldEnd::Expired, None);
        assert_eq!(e.new_holds().len(), 1);
        assert_eq!(
            e.new_holds()[0].closed,
            Some(Closure {
                end: HoldEnd::Captured,
                captured_by: Some("w1".into())
            })
        );
        assert_eq!(e.new_holds()[0].status(), HoldStatus::Captured);
        assert_eq!(e.closed_holds().len(), 1);
        assert_eq!(e.closed_holds()[0].id, before);
        assert!(e.check_disjoint().is_ok());
    }

    #[test]
    fn a_record_inserted_and_voided_in_one_batch_is_inserted_denied() {
        let mut e = Effects::default();
        let mut r = record("r1");
        r.hold_id = Some(Uuid::new_v4());
        e.record(r);
        e.void("r1");
        e.void("r0");
        let r = &e.records()[0];
        assert_eq!(
            (r.status, r.reason, r.hold_id),
            (VOIDED_STATUS, Some(VOIDED_REASON), None)
        );
        assert_eq!(e.voided(), ["r0"]);
        assert!(e.check_disjoint().is_ok());
    }

    #[test]
    fn effects_that_touch_a_row_twice_are_refused() {
        let overlapping = |e: &Effects| e.check_disjoint().is_err();
        let mut twice_closed = Effects::default();
        let id = Uuid::new_v4();
        twice_closed.close_hold(id, HoldEnd::Expired, None);
        twice_closed.close_hold(id, HoldEnd::Released, None);
        assert!(overlapping(&twice_closed));

        let mut twice_voided = Effects::default();
        twice_voided.void("r0");
        twice_voided.void("r0");
        assert!(overlapping(&twice_voided));

        let mut twice_recorded = Effects::default();
        twice_recorded.record(record("r1"));
        twice_recorded.record(record("r1"));
        assert!(overlapping(&twice_recorded));

        let mut twice_written = Effects::default();
        twice_written.set_accounts(vec![AccountState::new("a"), AccountState::new("a")]);
        assert!(overlapping(&twice_written));
    }
}
