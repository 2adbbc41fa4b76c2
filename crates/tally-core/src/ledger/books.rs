//! The accounts and open holds as a batch changes them, and the one place where a decision
//! changes them: [`apply`] carries out a [`Verdict`], [`release`] a void,
//! [`Books::enter`] the expiry of an account's holds. Every change is also recorded in the
//! batch's [`Effects`].

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use uuid::Uuid;

use crate::command::Envelope;
use crate::ledger::commands::{self, Verdict};
use crate::ledger::effects::{Effects, HoldEnd};
use crate::ledger::state::{AccountState, Hold};
use crate::vocabulary::{OutcomeStatus, Reason};

/// What a new command was recorded as.
pub(super) type Decided = (OutcomeStatus, Option<Reason>, Option<Uuid>);

pub(super) struct Books {
    accounts: HashMap<String, AccountState>,
    /// Open holds per account, oldest first.
    open: HashMap<String, Vec<Hold>>,
    /// Accounts the batch changed (or recorded on), in first-touch order.
    touched: Vec<String>,
}

impl Books {
    /// The books of a snapshot: its accounts and its open holds (oldest first per account).
    pub(super) fn new(accounts: HashMap<String, AccountState>, holds: Vec<Hold>) -> Self {
        let mut open: HashMap<String, Vec<Hold>> = HashMap::new();
        for hold in holds {
            open.entry(hold.account_id.clone()).or_default().push(hold);
        }
        Self {
            accounts,
            open,
            touched: Vec::new(),
        }
    }

    /// Account `id` and its open holds, after expiring those past their TTL at `now`.
    pub(super) fn enter(
        &mut self,
        id: &str,
        now: DateTime<Utc>,
        effects: &mut Effects,
    ) -> (&mut AccountState, &mut Vec<Hold>) {
        if !self.touched.iter().any(|t| t == id) {
            self.touched.push(id.to_string());
        }
        let account = self
            .accounts
            .entry(id.to_string())
            .or_insert_with(|| AccountState::new(id));
        let holds = self.open.entry(id.to_string()).or_default();
        holds.retain(|h| {
            if !commands::expired(h, now) {
                return true;
            }
            account.held -= h.amount;
            effects.close_hold(h.id, HoldEnd::Expired, None);
            false
        });
        (account, holds)
    }

    /// The final state of every account the batch touched, in first-touch order.
    pub(super) fn into_touched(mut self) -> Vec<AccountState> {
        self.touched
            .iter()
            .filter_map(|id| self.accounts.remove(id))
            .collect()
    }
}

/// Carries out `verdict` for the new command `env` on its account and open holds.
pub(super) fn apply(
    verdict: Verdict,
    env: &Envelope,
    account: &mut AccountState,
    holds: &mut Vec<Hold>,
    effects: &mut Effects,
    now: DateTime<Utc>,
    hold_ttl: chrono::Duration,
) -> Decided {
    match verdict {
        Verdict::Refused(status, reason) => (status, Some(reason), None),
        Verdict::Deposit => {
            account.balance += env.amount;
            (OutcomeStatus::Applied, None, None)
        }
        Verdict::Withdraw { capture } => {
            let hold_id = capture.map(|i| {
                let hold = holds.remove(i);
                account.held -= hold.amount;
                effects.close_hold(hold.id, HoldEnd::Captured, Some(env.id.clone()));
                hold.id
            });
            account.balance -= env.amount;
            (OutcomeStatus::Applied, None, hold_id)
        }
        Verdict::Approve => {
            let hold = Hold {
                id: Uuid::new_v4(),
                account_id: env.account_id.clone(),
                request_id: env.id.clone(),
                amount: env.amount,
                created_at: now,
                expires_at: now + hold_ttl,
            };
            account.held += env.amount;
            effects.place_hold(hold.clone());
            let id = hold.id;
            holds.push(hold);
            (OutcomeStatus::Approved, None, Some(id))
        }
    }
}

/// Releases the open hold at index `open` (a voided approval's).
pub(super) fn release(
    open: usize,
    account: &mut AccountState,
    holds: &mut Vec<Hold>,
    effects: &mut Effects,
) {
    let hold = holds.remove(open);
    account.held -= hold.amount;
    effects.close_hold(hold.id, HoldEnd::Released, None);
}
