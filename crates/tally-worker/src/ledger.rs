//! The ledger rules, as a pure function: given the commands of a batch (in delivery order) and
//! the state they touch, decide each command and produce the rows to write. No IO here, so
//! every rule is unit-tested without a database.
//!
//! Rules: a duplicate id has no effect and gets its recorded outcome back (or `id_reused` when
//! the payload differs); holds past their TTL expire before anything else on their account; a
//! deposit adds; a withdraw is applied (even into a negative balance, unless the policy is
//! `reject_overdraft`) and captures the hold it names by `requestId`, else the oldest open
//! hold of the same amount; a withdraw_request is approved only if its decision deadline has
//! not passed and `balance − held` covers it, and then places a hold.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
use tally_core::settings::WithdrawPolicy;
use tally_core::{Envelope, Kind, Outcome, OutcomeStatus};
use tally_store::batch::{AccountState, ClosedHold, Effects, Hold, NewRecord, Recorded, Snapshot};
use uuid::Uuid;

/// The policy knobs the rules depend on.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub withdraw_policy: WithdrawPolicy,
    pub hold_ttl: Duration,
}

/// Reasons recorded with a refusal.
pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";
pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
pub const OWNED_BY_ANOTHER_USER: &str = "account_owned_by_another_user";

/// What a batch decided: rows to write, and one outcome per input command, in input order.
#[derive(Debug, Default)]
pub struct Decision {
    pub effects: Effects,
    pub outcomes: Vec<Outcome>,
}

fn outcome_of_record(id: &str, r: &Recorded) -> Outcome {
    Outcome {
        id: id.to_string(),
        account_id: r.account_id.clone(),
        kind: Kind::parse(&r.kind).unwrap_or(Kind::Deposit),
        amount: r.amount,
        status: OutcomeStatus::parse(&r.status).unwrap_or(OutcomeStatus::Applied),
        reason: r.reason.clone(),
        hold_id: r.hold_id,
    }
}

fn id_reused(env: &Envelope) -> Outcome {
    Outcome {
        id: env.id.clone(),
        account_id: env.account_id.clone(),
        kind: env.kind,
        amount: env.amount,
        status: OutcomeStatus::IdReused,
        reason: Some("id_reused".into()),
        hold_id: None,
    }
}

/// Decides a batch. `now` is the batch's decision time (also its `applied_at`).
pub fn decide(
    envelopes: &[Envelope],
    snapshot: Snapshot,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Decision {
    let Snapshot {
        mut recorded,
        mut accounts,
        holds,
    } = snapshot;
    let mut open: HashMap<String, Vec<Hold>> = HashMap::new();
    for hold in holds {
        open.entry(hold.account_id.clone()).or_default().push(hold);
    }
    let mut touched: Vec<String> = Vec::new();
    let mut decision = Decision::default();

    for env in envelopes {
        if env.void {
            if let Some(rec) = recorded.get_mut(&env.id) {
                // Only the approval of this very attempt: a retry that timed out must not take
                // back what an earlier attempt already told the client (201).
                if rec.fingerprint == env.fingerprint
                    && rec.status == "approved"
                    && rec.accepted_at == env.accepted_at
                {
                    let held = open.get_mut(&env.account_id).and_then(|holds| {
                        let i = holds.iter().position(|h| h.request_id == env.id)?;
                        Some(holds.remove(i))
                    });
                    // Only an open hold can be taken back; a captured one is money gone.
                    if let (Some(hold), Some(account)) = (held, accounts.get_mut(&env.account_id)) {
                        account.held -= hold.amount;
                        if !touched.contains(&env.account_id) {
                            touched.push(env.account_id.clone());
                        }
                        decision.effects.closed_holds.push(ClosedHold {
                            id: hold.id,
                            status: "released",
                            captured_by: None,
                        });
                        decision.effects.voided.push(env.id.clone());
                        rec.status = OutcomeStatus::Denied.as_str().to_string();
                        rec.reason = Some(DEADLINE_EXCEEDED.to_string());
                    }
                }
                decision.outcomes.push(outcome_of_record(&env.id, rec));
                continue;
            }
            // Not decided yet: falls through and is recorded as denied (deadline passed), so
            // the request itself, if it is still on its way, becomes a duplicate.
        }
        if let Some(rec) = recorded.get(&env.id) {
            decision
                .outcomes
                .push(if rec.fingerprint == env.fingerprint {
                    outcome_of_record(&env.id, rec)
                } else {
                    id_reused(env)
                });
            continue;
        }

        let account = accounts
            .entry(env.account_id.clone())
            .or_insert_with(|| AccountState::new(&env.account_id));
        if !touched.contains(&env.account_id) {
            touched.push(env.account_id.clone());
        }
        // The API refuses a userId that differs from the recorded owner (422); two first
        // uses racing in the queue are settled here: the later one is recorded, not applied.
        let foreign_user =
            matches!((&account.user_id, &env.user_id), (Some(owner), Some(user)) if owner != user);
        if account.user_id.is_none() {
            account.user_id.clone_from(&env.user_id);
        }
        let holds = open.entry(env.account_id.clone()).or_default();

        // Holds past their TTL stop counting before this command is decided.
        holds.retain(|h| {
            if h.expires_at > now {
                return true;
            }
            account.held -= h.amount;
            decision.effects.closed_holds.push(ClosedHold {
                id: h.id,
                status: "expired",
                captured_by: None,
            });
            false
        });

        let mut status = OutcomeStatus::Applied;
        let mut reason = None;
        let mut hold_id = None;
        match env.kind {
            _ if foreign_user => {
                status = if env.kind == Kind::WithdrawRequest {
                    OutcomeStatus::Denied
                } else {
                    OutcomeStatus::Rejected
                };
                reason = Some(OWNED_BY_ANOTHER_USER);
            }
            Kind::Deposit => account.balance += env.amount,
            Kind::Withdraw => {
                if rules.withdraw_policy == WithdrawPolicy::RejectOverdraft
                    && account.balance - env.amount < Decimal::ZERO
                {
                    status = OutcomeStatus::Rejected;
                    reason = Some(INSUFFICIENT_FUNDS);
                } else {
                    let captured = match &env.request_id {
                        Some(request) => holds.iter().position(|h| &h.request_id == request),
                        None => holds.iter().position(|h| h.amount == env.amount),
                    };
                    if let Some(i) = captured {
                        let hold = holds.remove(i);
                        account.held -= hold.amount;
                        hold_id = Some(hold.id);
                        decision.effects.closed_holds.push(ClosedHold {
                            id: hold.id,
                            status: "captured",
                            captured_by: Some(env.id.clone()),
                        });
                    }
                    account.balance -= env.amount;
                }
            }
            Kind::WithdrawRequest => {
                if env.void || env.decide_by.is_some_and(|d| now > d) {
                    status = OutcomeStatus::Denied;
                    reason = Some(DEADLINE_EXCEEDED);
                } else if account.balance - account.held >= env.amount {
                    status = OutcomeStatus::Approved;
                    let hold = Hold {
                        id: Uuid::new_v4(),
                        account_id: env.account_id.clone(),
                        request_id: env.id.clone(),
                        amount: env.amount,
                        created_at: now,
                        expires_at: now + rules.hold_ttl,
                    };
                    account.held += env.amount;
                    hold_id = Some(hold.id);
                    decision.effects.new_holds.push(hold.clone());
                    holds.push(hold);
                } else {
                    status = OutcomeStatus::Denied;
                    reason = Some(INSUFFICIENT_FUNDS);
                }
            }
        }
        account.version += 1;

        decision.effects.records.push(NewRecord {
            id: env.id.clone(),
            account_id: env.account_id.clone(),
            kind: env.kind.as_str(),
            amount: env.amount,
            status: status.as_str(),
            reason,
            hold_id,
            request_id: env.request_id.clone(),
            fingerprint: env.fingerprint.clone(),
            seq: account.version,
            balance_after: account.balance,
            occurred_at: env.occurred_at,
            accepted_at: env.accepted_at,
        });
        let record = Recorded {
            accepted_at: env.accepted_at,
            account_id: env.account_id.clone(),
            kind: env.kind.as_str().to_string(),
            amount: env.amount,
            status: status.as_str().to_string(),
            reason: reason.map(str::to_string),
            hold_id,
            fingerprint: env.fingerprint.clone(),
        };
        decision.outcomes.push(outcome_of_record(&env.id, &record));
        // A later copy of this id in the same batch is a duplicate of this decision.
        recorded.insert(env.id.clone(), record);
    }

    decision.effects.accounts = touched
        .iter()
        .filter_map(|id| accounts.remove(id))
        .collect();
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    const RULES: Rules = Rules {
        withdraw_policy: WithdrawPolicy::AlwaysApply,
        hold_ttl: Duration::minutes(15),
    };

    fn env(id: &str, kind: Kind, amount: Decimal) -> Envelope {
        let now = Utc::now();
        Envelope {
            v: 1,
            kind,
            id: id.into(),
            account_id: "a".into(),
            amount,
            occurred_at: now,
            accepted_at: now,
            fingerprint: format!("{kind:?}{amount}"),
            request_id: None,
            user_id: None,
            decide_by: None,
            void: false,
        }
    }

    fn run(envs: &[Envelope], snapshot: Snapshot, rules: &Rules) -> Decision {
        decide(envs, snapshot, Utc::now(), rules)
    }

    fn statuses(d: &Decision) -> Vec<OutcomeStatus> {
        d.outcomes.iter().map(|o| o.status).collect()
    }

    #[test]
    fn the_slash_example_in_one_batch() {
        use Kind::*;
        let d = run(
            &[
                env("d1", Deposit, dec("100")),
                env("r1", WithdrawRequest, dec("50")),
                env("r2", WithdrawRequest, dec("51")),
                env("w1", Withdraw, dec("50")),
                env("w2", Withdraw, dec("50")),
                env("w3", Withdraw, dec("100")),
            ],
            Snapshot::default(),
            &RULES,
        );
        use OutcomeStatus::*;
        assert_eq!(
            statuses(&d),
            [Applied, Approved, Denied, Applied, Applied, Applied]
        );
        let a = &d.effects.accounts[0];
        assert_eq!((a.balance, a.held, a.version), (dec("-100"), dec("0"), 6));
        // w1 captured r1's hold.
        assert_eq!(d.effects.closed_holds.len(), 1);
        assert_eq!(d.outcomes[3].hold_id, d.outcomes[1].hold_id);
        let after: Vec<Decimal> = d.effects.records.iter().map(|r| r.balance_after).collect();
        assert_eq!(
            after,
            [
                dec("100"),
                dec("100"),
                dec("100"),
                dec("50"),
                dec("0"),
                dec("-100")
            ]
        );
    }

    #[test]
    fn duplicates_in_a_batch_have_one_effect() {
        let e = env("d1", Kind::Deposit, dec("10"));
        let mut other = e.clone();
        other.fingerprint = "another payload".into();
        let d = run(&[e.clone(), e, other], Snapshot::default(), &RULES);
        use OutcomeStatus::*;
        assert_eq!(statuses(&d), [Applied, Applied, IdReused]);
        assert_eq!(d.effects.records.len(), 1);
        assert_eq!(d.effects.accounts[0].balance, dec("10"));
    }

    #[test]
    fn recorded_ids_are_skipped_with_their_outcome() {
        let e = env("r1", Kind::WithdrawRequest, dec("5"));
        let hold = Uuid::new_v4();
        let mut snapshot = Snapshot::default();
        snapshot.recorded.insert(
            "r1".into(),
            Recorded {
                account_id: "a".into(),
                kind: "withdraw_request".into(),
                amount: dec("5"),
                status: "approved".into(),
                reason: None,
                hold_id: Some(hold),
                fingerprint: e.fingerprint.clone(),
                accepted_at: e.accepted_at,
            },
        );
        let d = run(&[e], snapshot, &RULES);
        assert_eq!(d.outcomes[0].status, OutcomeStatus::Approved);
        assert_eq!(d.outcomes[0].hold_id, Some(hold));
        assert!(d.effects.records.is_empty() && d.effects.accounts.is_empty());
    }

    #[test]
    fn requests_past_their_deadline_are_denied_without_hold() {
        let mut e = env("r1", Kind::WithdrawRequest, dec("1"));
        e.decide_by = Some(Utc::now() - Duration::seconds(1));
        let mut snapshot = Snapshot::default();
        let mut acc = AccountState::new("a");
        acc.balance = dec("100");
        snapshot.accounts.insert("a".into(), acc);
        let d = run(&[e], snapshot, &RULES);
        assert_eq!(d.outcomes[0].status, OutcomeStatus::Denied);
        assert_eq!(d.outcomes[0].reason.as_deref(), Some(DEADLINE_EXCEEDED));
        assert!(d.effects.new_holds.is_empty());
    }

    #[test]
    fn expired_holds_stop_counting_and_named_holds_are_captured() {
        let now = Utc::now();
        let mut snapshot = Snapshot::default();
        let mut acc = AccountState::new("a");
        acc.balance = dec("100");
        acc.held = dec("100");
        snapshot.accounts.insert("a".into(), acc);
        let hold = |id: &str, amount: Decimal, expires_in: i64| Hold {
            id: Uuid::new_v4(),
            account_id: "a".into(),
            request_id: id.into(),
            amount,
            created_at: now - Duration::minutes(20),
            expires_at: now + Duration::seconds(expires_in),
        };
        snapshot.holds = vec![hold("old", dec("60"), -1), hold("r7", dec("40"), 600)];
        let mut capture = env("w1", Kind::Withdraw, dec("30"));
        capture.request_id = Some("r7".into());
        let d = decide(
            &[env("q1", Kind::WithdrawRequest, dec("60")), capture],
            snapshot,
            now,
            &RULES,
        );
        assert_eq!(d.outcomes[0].status, OutcomeStatus::Approved);
        let a = &d.effects.accounts[0];
        // 100 − 60 (expired, gone) + 60 (new) − 40 (captured) = 60 held; balance 70.
        assert_eq!((a.balance, a.held), (dec("70"), dec("60")));
        let closed: Vec<&str> = d.effects.closed_holds.iter().map(|c| c.status).collect();
        assert_eq!(closed, ["expired", "captured"]);
    }

    #[test]
    fn a_void_releases_a_late_approval_and_preempts_an_undecided_request() {
        let deposit = env("d", Kind::Deposit, dec("100"));
        let request = env("r1", Kind::WithdrawRequest, dec("60"));
        let d = run(
            &[deposit, request.clone(), request.void(), request.clone()],
            Snapshot::default(),
            &RULES,
        );
        use OutcomeStatus::*;
        assert_eq!(statuses(&d), [Applied, Approved, Denied, Denied]);
        assert_eq!(d.effects.voided, ["r1"]);
        assert_eq!(d.effects.accounts[0].held, dec("0"));
        let closed: Vec<&str> = d.effects.closed_holds.iter().map(|c| c.status).collect();
        assert_eq!(closed, ["released"]);

        // A void of a later attempt leaves an earlier attempt's approval alone.
        let mut retry = request.clone();
        retry.accepted_at = request.accepted_at + Duration::seconds(5);
        let d = run(
            &[
                env("d", Kind::Deposit, dec("100")),
                request.clone(),
                retry.clone(),
                retry.void(),
            ],
            Snapshot::default(),
            &RULES,
        );
        assert_eq!(statuses(&d), [Applied, Approved, Approved, Approved]);
        assert!(d.effects.voided.is_empty() && d.effects.closed_holds.is_empty());
        assert_eq!(d.effects.accounts[0].held, dec("60"));

        // Void first: the request is recorded denied and its late copy is a duplicate.
        let other = env("r2", Kind::WithdrawRequest, dec("1"));
        let d = run(&[other.void(), other], Snapshot::default(), &RULES);
        assert_eq!(statuses(&d), [Denied, Denied]);
        assert_eq!(d.outcomes[1].reason.as_deref(), Some(DEADLINE_EXCEEDED));
        assert!(d.effects.new_holds.is_empty());
    }

    #[test]
    fn a_command_naming_another_owner_is_recorded_but_not_applied() {
        let mut first = env("d1", Kind::Deposit, dec("10"));
        first.user_id = Some("alice".into());
        let mut second = env("d2", Kind::Deposit, dec("5"));
        second.user_id = Some("bob".into());
        let mut request = env("r1", Kind::WithdrawRequest, dec("1"));
        request.user_id = Some("bob".into());
        let anonymous = env("d3", Kind::Deposit, dec("1"));
        let d = run(
            &[first, second, request, anonymous],
            Snapshot::default(),
            &RULES,
        );
        use OutcomeStatus::*;
        assert_eq!(statuses(&d), [Applied, Rejected, Denied, Applied]);
        assert_eq!(d.outcomes[1].reason.as_deref(), Some(OWNED_BY_ANOTHER_USER));
        let a = &d.effects.accounts[0];
        assert_eq!(
            (a.balance, a.user_id.as_deref()),
            (dec("11"), Some("alice"))
        );
        assert!(d.effects.new_holds.is_empty());
    }

    #[test]
    fn reject_overdraft_records_without_applying() {
        let rules = Rules {
            withdraw_policy: WithdrawPolicy::RejectOverdraft,
            ..RULES
        };
        let d = run(
            &[
                env("d", Kind::Deposit, dec("5")),
                env("w", Kind::Withdraw, dec("10")),
            ],
            Snapshot::default(),
            &rules,
        );
        assert_eq!(
            statuses(&d),
            [OutcomeStatus::Applied, OutcomeStatus::Rejected]
        );
        assert_eq!(d.effects.accounts[0].balance, dec("5"));
        assert_eq!(d.effects.records.len(), 2);
    }
}
