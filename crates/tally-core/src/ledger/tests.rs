//! The rules of [`decide`], one case each, on batches built in memory.

use chrono::{Duration, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::command::Envelope;
use crate::ledger::{
    decide, AccountState, Decision, Hold, HoldEnd, Recorded, Rules, Snapshot, WithdrawPolicy,
};
use crate::vocabulary::{Kind, OutcomeStatus, Reason};

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
        key_name: None,
    }
}

fn run(envs: &[Envelope], snapshot: Snapshot, rules: &Rules) -> Decision {
    decide(envs, snapshot, Utc::now(), rules)
}

fn statuses(d: &Decision) -> Vec<OutcomeStatus> {
    d.outcomes.iter().map(|o| o.status).collect()
}

/// How the holds the batch closed ended: those from before, then its own.
fn closed(d: &Decision) -> Vec<HoldEnd> {
    let before = d.effects.closed_holds().iter().map(|c| c.closure.end);
    let own = d
        .effects
        .new_holds()
        .iter()
        .filter_map(|h| h.closed.as_ref());
    before.chain(own.map(|c| c.end)).collect()
}

fn funded(balance: &str) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let mut acc = AccountState::new("a");
    acc.balance = dec(balance);
    snapshot.accounts.insert("a".into(), acc);
    snapshot
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
    let a = &d.effects.accounts()[0];
    assert_eq!((a.balance, a.held, a.version), (dec("-100"), dec("0"), 6));
    // w1 captured r1's hold, placed by this batch: one row, inserted captured.
    assert!(d.effects.closed_holds().is_empty());
    assert_eq!(closed(&d), [HoldEnd::Captured]);
    let hold = &d.effects.new_holds()[0];
    assert_eq!(Some(hold.hold.id), d.outcomes[1].hold_id);
    assert_eq!(d.effects.records()[3].hold_id, d.outcomes[1].hold_id);
    // Only an approval answers with a hold.
    assert_eq!(d.outcomes[3].hold_id, None);
    let after: Vec<Decimal> = d
        .effects
        .records()
        .iter()
        .map(|r| r.balance_after)
        .collect();
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
    assert_eq!(d.effects.records().len(), 1);
    assert_eq!(d.effects.accounts()[0].balance, dec("10"));
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
            kind: Kind::WithdrawRequest,
            amount: dec("5"),
            status: OutcomeStatus::Approved,
            reason: None,
            hold_id: Some(hold),
            fingerprint: e.fingerprint.clone(),
            last_copy_at: e.accepted_at,
        },
    );
    let d = run(&[e], snapshot, &RULES);
    assert_eq!(d.outcomes[0].status, OutcomeStatus::Approved);
    assert_eq!(d.outcomes[0].hold_id, Some(hold));
    assert!(d.effects.records().is_empty() && d.effects.accounts().is_empty());
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
    assert_eq!(d.outcomes[0].reason, Some(Reason::DeadlineExceeded));
    assert!(d.effects.new_holds().is_empty());
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
    let a = &d.effects.accounts()[0];
    // 100 − 60 (expired, gone) + 60 (new) − 40 (captured) = 60 held; balance 70.
    assert_eq!((a.balance, a.held), (dec("70"), dec("60")));
    assert_eq!(closed(&d), [HoldEnd::Expired, HoldEnd::Captured]);
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
    // Approved and voided in one batch: one record and one hold, in their final states.
    assert!(d.effects.voided().is_empty() && d.effects.closed_holds().is_empty());
    let record = &d.effects.records()[1];
    assert_eq!(
        (record.status, record.reason, record.hold_id),
        (OutcomeStatus::Denied, Some(Reason::DeadlineExceeded), None)
    );
    assert_eq!(closed(&d), [HoldEnd::Released]);
    assert_eq!(d.effects.accounts()[0].held, dec("0"));
    assert!(d.outcomes[2..].iter().all(|o| o.hold_id.is_none()));

    // Void first: the request is recorded denied and its late copy is a duplicate.
    let other = env("r2", Kind::WithdrawRequest, dec("1"));
    let d = run(&[other.void(), other], Snapshot::default(), &RULES);
    assert_eq!(statuses(&d), [Denied, Denied]);
    assert_eq!(d.outcomes[1].reason, Some(Reason::DeadlineExceeded));
    assert!(d.effects.new_holds().is_empty());
}

/// A snapshot where request `r1` (60) was approved by an earlier batch, its hold open.
fn approved_before(request: &Envelope) -> (Snapshot, Uuid) {
    let mut snapshot = funded("100");
    let hold = Hold {
        id: Uuid::new_v4(),
        account_id: "a".into(),
        request_id: request.id.clone(),
        amount: request.amount,
        created_at: Utc::now(),
        expires_at: Utc::now() + Duration::minutes(5),
    };
    if let Some(a) = snapshot.accounts.get_mut("a") {
        a.held = request.amount;
    }
    snapshot.recorded.insert(
        request.id.clone(),
        Recorded {
            account_id: "a".into(),
            kind: Kind::WithdrawRequest,
            amount: request.amount,
            status: OutcomeStatus::Approved,
            reason: None,
            hold_id: Some(hold.id),
            fingerprint: request.fingerprint.clone(),
            last_copy_at: request.accepted_at,
        },
    );
    let id = hold.id;
    snapshot.holds.push(hold);
    (snapshot, id)
}

#[test]
fn a_void_denies_an_approval_whichever_attempt_decided_it() {
    let request = env("r1", Kind::WithdrawRequest, dec("60"));
    // A later attempt (accepted after the one that was approved) times out and voids.
    let mut retry = request.clone();
    retry.accepted_at = request.accepted_at + Duration::seconds(5);
    let (snapshot, hold) = approved_before(&request);
    let d = run(&[retry.void(), request.clone()], snapshot, &RULES);
    use OutcomeStatus::*;
    assert_eq!(statuses(&d), [Denied, Denied]);
    assert!(d.outcomes.iter().all(|o| o.hold_id.is_none()));
    assert_eq!(d.effects.voided(), ["r1"]);
    assert_eq!(d.effects.closed_holds()[0].id, hold);
    assert_eq!(closed(&d), [HoldEnd::Released]);
    assert_eq!(d.effects.accounts()[0].held, dec("0"));
}

/// A void the earlier attempt sent but never saw confirmed (it answered `outcome_unknown`),
/// reaching the queue only after a retry's copy was answered "approved" (201): the approval
/// stands. Case B: the approval is from before, the retry's copy a duplicate of it.
#[test]
fn a_void_older_than_a_copy_answered_approved_leaves_the_approval() {
    let request = env("r1", Kind::WithdrawRequest, dec("60"));
    let mut retry = request.clone();
    retry.accepted_at = request.accepted_at + Duration::seconds(5);
    let (snapshot, _) = approved_before(&request);
    let d = run(&[retry.clone(), request.void()], snapshot, &RULES);
    use OutcomeStatus::*;
    assert_eq!(statuses(&d), [Approved, Approved]);
    assert!(d.effects.voided().is_empty() && d.effects.closed_holds().is_empty());
    assert_eq!(d.effects.copies(), [("r1".to_string(), retry.accepted_at)]);
    // The retry's own void (it got no reply in time) still denies it.
    let (snapshot, _) = approved_before(&request);
    let d = run(&[retry.clone(), retry.void()], snapshot, &RULES);
    assert_eq!(statuses(&d), [Approved, Denied]);
    assert_eq!(d.effects.voided(), ["r1"]);
    assert!(d.effects.copies().is_empty());
}

/// Case A: the earlier attempt's copy and void were both delayed; the retry's copy decided
/// the request "approved" first. The old copy is a duplicate, the old void too late.
#[test]
fn a_late_void_of_an_older_attempt_leaves_the_approval_a_retry_decided() {
    let old = env("r1", Kind::WithdrawRequest, dec("60"));
    let mut retry = old.clone();
    retry.accepted_at = old.accepted_at + Duration::seconds(5);
    let d = run(&[retry, old.clone(), old.void()], funded("100"), &RULES);
    use OutcomeStatus::*;
    assert_eq!(statuses(&d), [Approved, Approved, Approved]);
    assert_eq!(d.effects.records()[0].status, Approved);
    assert_eq!(d.effects.records()[0].last_copy_at, None);
    assert_eq!(d.effects.accounts()[0].held, dec("60"));
}

#[test]
fn a_void_after_the_capture_denies_the_record_and_leaves_the_hold_captured() {
    let request = env("r1", Kind::WithdrawRequest, dec("60"));
    let (snapshot, hold) = approved_before(&request);
    let mut withdraw = env("w1", Kind::Withdraw, dec("60"));
    withdraw.request_id = Some("r1".into());
    let d = run(&[withdraw, request.void()], snapshot, &RULES);
    use OutcomeStatus::*;
    assert_eq!(statuses(&d), [Applied, Denied]);
    // The hold stays captured by w1 (its own record); r1 says what its client was told.
    assert_eq!(closed(&d), [HoldEnd::Captured]);
    assert_eq!(d.effects.closed_holds()[0].id, hold);
    assert_eq!(d.effects.voided(), ["r1"]);
    let a = &d.effects.accounts()[0];
    assert_eq!((a.balance, a.held), (dec("40"), dec("0")));
}

#[test]
fn a_void_leaves_a_denial_and_a_reused_id_alone() {
    let request = env("r1", Kind::WithdrawRequest, dec("600"));
    let d = run(&[request.clone(), request.void()], funded("100"), &RULES);
    use OutcomeStatus::*;
    assert_eq!(statuses(&d), [Denied, Denied]);
    assert!(d
        .outcomes
        .iter()
        .all(|o| o.reason == Some(Reason::InsufficientFunds)));

    let (snapshot, _) = approved_before(&env("r1", Kind::WithdrawRequest, dec("60")));
    let other = env("r1", Kind::WithdrawRequest, dec("61"));
    let d = run(&[other.void()], snapshot, &RULES);
    assert_eq!(statuses(&d), [IdReused]);
    assert!(d.effects.voided().is_empty() && d.effects.closed_holds().is_empty());
}

#[test]
fn a_reused_id_is_recorded_as_a_conflict_once_per_payload() {
    let first = env("x", Kind::Deposit, dec("10"));
    let mut other = env("x", Kind::Withdraw, dec("3"));
    other.accepted_at = first.accepted_at + Duration::seconds(1);
    let d = run(
        &[first, other.clone(), other.clone()],
        Snapshot::default(),
        &RULES,
    );
    use OutcomeStatus::*;
    assert_eq!(statuses(&d), [Applied, IdReused, IdReused]);
    let conflicts = d.effects.conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(
        (
            conflicts[0].kind,
            conflicts[0].amount,
            conflicts[0].accepted_at
        ),
        (Kind::Withdraw, dec("3"), other.accepted_at)
    );
    assert_eq!(conflicts[0].fingerprint, other.fingerprint);
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
    assert_eq!(
        d.outcomes[1].reason,
        Some(Reason::AccountOwnedByAnotherUser)
    );
    let a = &d.effects.accounts()[0];
    assert_eq!(
        (a.balance, a.user_id.as_deref()),
        (dec("11"), Some("alice"))
    );
    assert!(d.effects.new_holds().is_empty());
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
    assert_eq!(d.effects.accounts()[0].balance, dec("5"));
    assert_eq!(d.effects.records().len(), 2);
}

#[test]
fn reject_overdraft_judges_against_available_plus_the_captured_hold() {
    let rules = Rules {
        withdraw_policy: WithdrawPolicy::RejectOverdraft,
        ..RULES
    };
    // Balance 100, 80 promised to r1: only 20 is spendable by anybody else.
    let request = env("r1", Kind::WithdrawRequest, dec("80"));
    let mut named = env("w3", Kind::Withdraw, dec("90"));
    named.request_id = Some("r1".into());
    let d = run(
        &[
            request,
            env("w1", Kind::Withdraw, dec("30")),
            env("w2", Kind::Withdraw, dec("20")),
            named,
        ],
        funded("100"),
        &rules,
    );
    use OutcomeStatus::*;
    // w1 (30 > 20 available) is rejected and captures nothing; w2 fits; w3 may spend its
    // own 80 plus what is left (0): 90 is too much, so r1's hold stays open.
    assert_eq!(statuses(&d), [Approved, Rejected, Applied, Rejected]);
    assert!(closed(&d).is_empty());
    let a = &d.effects.accounts()[0];
    assert_eq!((a.balance, a.held), (dec("80"), dec("80")));

    // The request's own withdraw of its full amount fits exactly.
    let request = env("r1", Kind::WithdrawRequest, dec("80"));
    let mut own = env("w4", Kind::Withdraw, dec("100"));
    own.request_id = Some("r1".into());
    let d = run(&[request, own], funded("100"), &rules);
    assert_eq!(statuses(&d), [Approved, Applied]);
    assert_eq!(closed(&d), [HoldEnd::Captured]);
    let a = &d.effects.accounts()[0];
    assert_eq!((a.balance, a.held), (dec("0"), dec("0")));
}

#[test]
fn a_policy_change_governs_the_withdraws_after_it_in_the_queue() {
    use crate::ledger::{decide_commands, AccountPolicy};
    use crate::policy::{Command, PolicyEnvelope, PolicyRequest};
    let policy = |id: &str, withdraw, limit: &str| {
        let request = PolicyRequest {
            account_id: "a".into(),
            policy: AccountPolicy {
                withdraw,
                overdraft_limit: dec(limit),
            },
        };
        Command::Policy(PolicyEnvelope::new(id, &request, Utc::now(), None))
    };
    let tx = |e: Envelope| Command::Transaction(e);
    let commands = [
        tx(env("d", Kind::Deposit, dec("5"))),
        tx(env("w1", Kind::Withdraw, dec("10"))),
        policy("p1", WithdrawPolicy::RejectOverdraft, "3"),
        tx(env("w2", Kind::Withdraw, dec("2"))),
        policy("p2", WithdrawPolicy::RejectOverdraft, "10"),
        tx(env("w3", Kind::Withdraw, dec("4"))),
        // A redelivered policy command changes nothing.
        policy("p1", WithdrawPolicy::RejectOverdraft, "3"),
        tx(env("w4", Kind::Withdraw, dec("1"))),
    ];
    let (effects, outcomes) = decide_commands(&commands, Snapshot::default(), Utc::now(), &RULES);
    use OutcomeStatus::*;
    let statuses: Vec<Option<OutcomeStatus>> = outcomes
        .iter()
        .map(|o| o.as_ref().map(|o| o.status))
        .collect();
    // Global always_apply: w1 overdraws to -5. Limit 3: w2 (-5 - 2 < -3) rejected. Limit 10:
    // w3 (to -9) applied, w4 (to -10) applied: the redelivered p1 did not bring back 3.
    assert_eq!(
        statuses,
        [
            Some(Applied),
            Some(Applied),
            None,
            Some(Rejected),
            None,
            Some(Applied),
            None,
            Some(Applied)
        ]
    );
    let a = &effects.accounts()[0];
    assert_eq!(a.balance, dec("-10"));
    assert_eq!(a.policy_version, 2);
    let changes: Vec<(i64, i64)> = effects
        .policy_changes()
        .iter()
        .map(|c| (c.policy_version, c.after_seq))
        .collect();
    assert_eq!(changes, [(1, 2), (2, 3)]);
}
