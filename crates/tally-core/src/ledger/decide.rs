//! [`decide`]: a batch, command by command. A recorded id is a duplicate (or an id conflict);
//! a void of an approval denies it; anything else is a new command, decided by its rule
//! (commands.rs) and applied to the books (books.rs).

use chrono::{DateTime, Utc};
use std::collections::HashMap;

use crate::command::{Envelope, Outcome};
use crate::ledger::books::{self, Books};
use crate::ledger::commands;
use crate::ledger::effects::{
    Effects, IdConflict, NewPolicyChange, NewRecord, VOIDED_REASON, VOIDED_STATUS,
};
use crate::ledger::state::{Recorded, Snapshot};
use crate::ledger::{AccountPolicy, Rules};
use crate::policy::{Command, PolicyEnvelope};
use crate::vocabulary::{Kind, OutcomeStatus, Reason};

/// What a batch decided: rows to write, and one outcome per input command, in input order.
#[derive(Debug, Default)]
pub struct Decision {
    pub effects: Effects,
    pub outcomes: Vec<Outcome>,
}

/// Decides a batch of transactions. `now` is the batch's decision time (the database's
/// clock).
pub fn decide(
    envelopes: &[Envelope],
    snapshot: Snapshot,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Decision {
    let (effects, outcomes) =
        decide_all(envelopes.iter().map(One::Transaction), snapshot, now, rules);
    Decision {
        effects,
        outcomes: outcomes.into_iter().flatten().collect(),
    }
}

/// Decides a batch of commands, transactions and policy changes in their queue order; one
/// outcome per command, `None` for a policy change (nobody waits for its decision). Any
/// iterator of commands: a worker's group commit passes several shards' batches one after the
/// other without copying them into one list.
pub fn decide_commands<'a>(
    commands: impl IntoIterator<Item = &'a Command>,
    snapshot: Snapshot,
    now: DateTime<Utc>,
    rules: &Rules,
) -> (Effects, Vec<Option<Outcome>>) {
    let ones = commands.into_iter().map(|c| match c {
        Command::Transaction(env) => One::Transaction(env),
        Command::Policy(p) => One::Policy(p),
    });
    decide_all(ones, snapshot, now, rules)
}

enum One<'a> {
    Transaction(&'a Envelope),
    Policy(&'a PolicyEnvelope),
}

fn decide_all<'a>(
    commands: impl Iterator<Item = One<'a>>,
    snapshot: Snapshot,
    now: DateTime<Utc>,
    rules: &Rules,
) -> (Effects, Vec<Option<Outcome>>) {
    let Snapshot {
        mut recorded,
        accounts,
        holds,
        mut policy_changes,
    } = snapshot;
    let mut books = Books::new(accounts, holds);
    let mut effects = Effects::default();
    let outcomes = commands
        .map(|one| match one {
            One::Transaction(env) => Some(decide_one(
                env,
                &mut recorded,
                &mut books,
                &mut effects,
                now,
                rules,
            )),
            One::Policy(change) => {
                change_policy(change, &mut policy_changes, &mut books, &mut effects, now);
                None
            }
        })
        .collect();
    effects.set_accounts(books.into_touched());
    (effects, outcomes)
}

/// A policy command: applied once per id (a redelivered copy, or a reuse of the id with
/// another policy, changes nothing); the account's policy from here on in its order.
fn change_policy(
    change: &PolicyEnvelope,
    applied: &mut HashMap<String, String>,
    books: &mut Books,
    effects: &mut Effects,
    now: DateTime<Utc>,
) {
    if applied.contains_key(&change.id) {
        return;
    }
    applied.insert(change.id.clone(), change.fingerprint.clone());
    let (account, _) = books.enter(&change.account_id, now, effects);
    account.policy = Some(change.policy());
    account.policy_version += 1;
    effects.policy_change(NewPolicyChange {
        id: change.id.clone(),
        account_id: change.account_id.clone(),
        policy: change.policy(),
        policy_version: account.policy_version,
        after_seq: account.version,
        fingerprint: change.fingerprint.clone(),
        accepted_at: change.accepted_at,
        key_name: change.key_name.clone(),
    });
}

/// One command of the batch; `recorded` grows with it, so a later copy of its id in the same
/// batch is a duplicate of this decision.
fn decide_one(
    env: &Envelope,
    recorded: &mut HashMap<String, Recorded>,
    books: &mut Books,
    effects: &mut Effects,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Outcome {
    match recorded.get_mut(&env.id) {
        Some(rec) if rec.fingerprint != env.fingerprint => {
            effects.conflict(conflict_of(env));
            id_reused(env)
        }
        Some(rec) => {
            if rec.status == OutcomeStatus::Approved {
                copy_of_approval(env, rec, books, effects, now);
            }
            rec.outcome(&env.id)
        }
        None => {
            // A void of an undecided request falls through: it is recorded as denied
            // (deadline passed), so the request itself, if still on its way, becomes a
            // duplicate.
            let record = decide_new(env, books, effects, now, rules);
            let outcome = record.outcome(&env.id);
            recorded.insert(env.id.clone(), record);
            outcome
        }
    }
}

fn conflict_of(env: &Envelope) -> IdConflict {
    IdConflict {
        id: env.id.clone(),
        fingerprint: env.fingerprint.clone(),
        kind: env.kind,
        account_id: env.account_id.clone(),
        amount: env.amount,
        accepted_at: env.accepted_at,
    }
}

fn id_reused(env: &Envelope) -> Outcome {
    Outcome {
        id: env.id.clone(),
        account_id: env.account_id.clone(),
        kind: env.kind,
        amount: env.amount,
        status: OutcomeStatus::IdReused,
        reason: Some(Reason::IdReused),
        hold_id: None,
    }
}

/// Another copy of an approved request. A void from the attempt that sent the latest copy
/// answered (or a later one) denies it: that attempt answers "denied" once its void is
/// confirmed. A void from an older attempt arrives after a later copy was answered
/// "approved" (201 to a retry): that attempt answered no denial (its void was not confirmed
/// before the retry's copy), so the approval stands. A request copy newer than the latest
/// answered one moves it on: this copy is answered "approved" too.
fn copy_of_approval(
    env: &Envelope,
    rec: &mut Recorded,
    books: &mut Books,
    effects: &mut Effects,
    now: DateTime<Utc>,
) {
    if env.void {
        if env.accepted_at >= rec.last_copy_at {
            void_approval(&env.id, rec, books, effects, now);
        }
    } else if env.accepted_at > rec.last_copy_at {
        rec.last_copy_at = env.accepted_at;
        effects.copy_answered(&env.id, env.accepted_at);
    }
}

/// An approved request whose API answered "denied": the record becomes denied, whichever
/// attempt decided it, and its hold is released if still open.
fn void_approval(
    id: &str,
    rec: &mut Recorded,
    books: &mut Books,
    effects: &mut Effects,
    now: DateTime<Utc>,
) {
    let (account, holds) = books.enter(&rec.account_id, now, effects);
    if let Some(open) = commands::void(rec.hold_id, holds) {
        books::release(open, account, holds, effects);
    }
    effects.void(id);
    rec.status = VOIDED_STATUS;
    rec.reason = Some(VOIDED_REASON);
    rec.hold_id = None;
}

/// Decides a command whose id is not recorded yet; records it and returns the record.
fn decide_new(
    env: &Envelope,
    books: &mut Books,
    effects: &mut Effects,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Recorded {
    let (account, holds) = books.enter(&env.account_id, now, effects);
    let verdict = commands::foreign_owner(account, env).unwrap_or_else(|| match env.kind {
        Kind::Deposit => commands::deposit(),
        Kind::Withdraw => {
            let policy = account.policy.unwrap_or(AccountPolicy::default_of(rules));
            commands::withdraw(env, account, holds, policy)
        }
        Kind::WithdrawRequest => commands::withdraw_request(env, account, now),
    });
    if account.user_id.is_none() {
        account.user_id.clone_from(&env.user_id);
    }
    let (status, reason, hold_id) =
        books::apply(verdict, env, account, holds, effects, now, rules.hold_ttl);
    account.version += 1;
    let record = NewRecord {
        id: env.id.clone(),
        account_id: env.account_id.clone(),
        kind: env.kind,
        amount: env.amount,
        status,
        reason,
        hold_id,
        request_id: env.request_id.clone(),
        fingerprint: env.fingerprint.clone(),
        seq: account.version,
        balance_after: account.balance,
        occurred_at: env.occurred_at,
        accepted_at: env.accepted_at,
        last_copy_at: None,
        key_name: env.key_name.clone(),
    };
    let recorded = Recorded::from(&record);
    effects.record(record);
    recorded
}
