//! Scores every answer the clients got by what it promises, against the final records (the
//! contract in the README's "HTTP contract"):
//!
//! - `200 accepted`: the id is recorded once, with this payload, `applied`;
//! - `201 approved`: recorded `approved` with the same hold, and that hold was placed (open,
//!   captured or expired, never released by a void);
//! - `402 denied`: recorded `denied`, and no hold of it is open (a void that came after a
//!   withdraw captured the late approval's hold denies the record and leaves the hold
//!   captured: the withdraw was applied either way);
//! - `422 id_reused`: the record (if any) is not this payload;
//! - `503 unavailable`: surely not accepted: when no attempt of the id may have been
//!   accepted, no record may exist for it, ever;
//! - an unknown outcome (`503 outcome_unknown`, nginx's 502/504, a dropped connection): a
//!   record or none, both fine;
//! - all decisions for one id and payload agree, and no record exists that nobody sent.
//!
//! Pure functions over what the clients saw and what the database holds, so every rule is
//! unit-tested here without a cluster.

use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tally_core::{HoldStatus, Kind, OutcomeStatus, Reason};

use crate::model::{Answer, Command, Op, Origin};

/// One row of `transactions`, as far as the checks need it.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub account: String,
    pub kind: Kind,
    pub amount: Decimal,
    pub status: OutcomeStatus,
    pub reason: Option<Reason>,
    pub hold_id: Option<String>,
    pub request_id: Option<String>,
    pub seq: i64,
    pub balance_after: Decimal,
}

/// One row of `holds`.
#[derive(Debug, Clone)]
pub struct HoldRow {
    pub id: String,
    pub request_id: String,
    pub account: String,
    pub amount: Decimal,
    pub status: HoldStatus,
    pub captured_by: Option<String>,
    /// `created_at` in microseconds: the worker captures the oldest hold of an amount.
    pub created: i64,
}

/// The final records of a seed.
#[derive(Debug, Default)]
pub struct Ledger {
    pub records: HashMap<String, Record>,
    pub holds: Vec<HoldRow>,
}

impl Ledger {
    pub fn hold_of_request(&self, request: &str) -> Option<&HoldRow> {
        self.holds.iter().find(|h| h.request_id == request)
    }

    pub fn hold(&self, id: &str) -> Option<&HoldRow> {
        self.holds.iter().find(|h| h.id == id)
    }
}

/// `cents` as an exact decimal.
pub fn decimal(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

/// Whether `rec` is the record of `cmd`'s payload.
pub fn same_payload(cmd: &Command, rec: &Record) -> bool {
    rec.account == cmd.account
        && rec.kind == cmd.kind
        && rec.amount == decimal(cmd.cents)
        && rec.request_id == cmd.request_id
}

/// Findings by heading; empty lists are dropped by the caller.
pub type Findings = Vec<(&'static str, Vec<String>)>;

/// Ids whose every attempt promised "not accepted": a record of them must not exist.
pub fn never_accepted(ops: &[Op]) -> HashSet<&str> {
    let mut may: HashMap<&str, bool> = HashMap::new();
    for op in ops {
        let any = op
            .attempts
            .iter()
            .any(|a| a.answer.may_have_been_accepted());
        *may.entry(op.cmd.id.as_str()).or_default() |= any;
    }
    may.into_iter()
        .filter(|(_, may)| !may)
        .map(|(id, _)| id)
        .collect()
}

/// The records whose existence the answers allow: sent by a client with this payload, and
/// not ruled out by "not accepted" answers. The expected ledger is computed from these.
pub fn allowed<'a>(ops: &[Op], ledger: &'a Ledger) -> HashSet<&'a str> {
    let never = never_accepted(ops);
    let mut sent: HashMap<&str, Vec<&Command>> = HashMap::new();
    for op in ops {
        sent.entry(op.cmd.id.as_str()).or_default().push(&op.cmd);
    }
    ledger
        .records
        .values()
        .filter(|rec| !never.contains(rec.id.as_str()))
        .filter(|rec| {
            sent.get(rec.id.as_str())
                .is_some_and(|cmds| cmds.iter().any(|c| same_payload(c, rec)))
        })
        .map(|rec| rec.id.as_str())
        .collect()
}

fn line(op: &Op, answer: &Answer, why: &str) -> String {
    format!(
        "{} ({}; {:?} client, answered {} [{}]): {why}",
        op.cmd.id,
        op.cmd.describe(),
        op.policy,
        answer.short(),
        op.trail()
    )
}

/// What is wrong with one answer given the id's final record; None when it holds.
fn broken_promise(
    cmd: &Command,
    answer: &Answer,
    rec: Option<&Record>,
    ledger: &Ledger,
) -> Option<String> {
    let mine = rec.filter(|r| same_payload(cmd, r));
    let other = |r: &Record| {
        format!(
            "recorded as {} {} on {} (request {:?})",
            r.kind, r.amount, r.account, r.request_id
        )
    };
    match (answer, rec, mine) {
        (Answer::Accepted | Answer::Approved { .. } | Answer::Denied { .. }, None, _) => {
            Some("not recorded".into())
        }
        // A denial promises no effect for this id, which holds whichever payload the id's
        // record has (a conflicting reuse may be denied while the first payload is queued).
        (Answer::Denied { .. }, Some(r), _) => {
            if r.status != OutcomeStatus::Denied {
                let payload = if mine.is_some() {
                    String::new()
                } else {
                    format!("{}, ", other(r))
                };
                return Some(format!(
                    "{payload}recorded {} with hold {:?}",
                    r.status, r.hold_id
                ));
            }
            ledger
                .hold_of_request(&r.id)
                .filter(|h| h.status == HoldStatus::Open)
                .map(|h| format!("has a hold {} that is {}", h.id, h.status))
        }
        (Answer::Accepted | Answer::Approved { .. }, Some(r), None) => Some(other(r)),
        (Answer::Accepted, _, Some(r)) => {
            (r.status != OutcomeStatus::Applied).then(|| format!("recorded {}", r.status))
        }
        (Answer::Approved { hold_id }, _, Some(r)) => {
            if r.status != OutcomeStatus::Approved || r.hold_id.as_deref() != Some(hold_id.as_str())
            {
                return Some(format!("recorded {} with hold {:?}", r.status, r.hold_id));
            }
            match ledger.hold(hold_id) {
                None => Some(format!("no hold {hold_id}")),
                Some(h) if h.status == HoldStatus::Released => {
                    Some(format!("hold {hold_id} was released"))
                }
                Some(_) => None,
            }
        }
        (Answer::IdReused, _, Some(_)) => {
            Some("refused as id_reused, but this payload is the record".into())
        }
        _ => None,
    }
}

/// Scores every attempt of every op; see the module doc.
pub fn score(ops: &[Op], ledger: &Ledger) -> Findings {
    let never = never_accepted(ops);
    let mut broken = Vec::new();
    let mut unexpected = Vec::new();
    let mut forbidden = Vec::new();
    let mut undecided = Vec::new();
    for op in ops {
        let rec = ledger.records.get(&op.cmd.id);
        for attempt in &op.attempts {
            if let Answer::Unexpected { .. } = attempt.answer {
                unexpected.push(line(op, &attempt.answer, "not an answer of the contract"));
            } else if let Some(why) = broken_promise(&op.cmd, &attempt.answer, rec, ledger) {
                broken.push(line(op, &attempt.answer, &why));
            }
        }
        if op.out_of_time {
            undecided.push(line(
                op,
                op.answer(),
                &format!("no decision after {} attempts", op.attempts.len()),
            ));
        }
    }
    let mut seen = HashSet::new();
    for op in ops {
        let id = op.cmd.id.as_str();
        if never.contains(id) && seen.insert(id) {
            if let Some(r) = ledger.records.get(id) {
                forbidden.push(line(
                    op,
                    op.answer(),
                    &format!(
                        "every attempt was told \"not accepted\", yet it is recorded {}",
                        r.status
                    ),
                ));
            }
        }
    }
    vec![
        ("answers the final record contradicts", broken),
        ("answers outside the contract", unexpected),
        (
            "ids answered only \"not accepted\" that have an effect",
            forbidden,
        ),
        (
            "commands without a decision within the client's bound",
            undecided,
        ),
        (
            "same id and payload, different decisions",
            disagreements(ops),
        ),
        (
            "recorded ids nobody sent with that payload",
            unsent(ops, ledger),
        ),
    ]
}

/// Decisions for one id and payload that differ from the first one given.
fn disagreements(ops: &[Op]) -> Vec<String> {
    let mut first: HashMap<(&str, i64), (&Op, &Answer)> = HashMap::new();
    let mut out = Vec::new();
    for op in ops {
        for attempt in op.attempts.iter().filter(|a| a.answer.decided()) {
            let key = (op.cmd.id.as_str(), op.cmd.cents);
            match first.get(&key) {
                None => {
                    first.insert(key, (op, &attempt.answer));
                }
                Some((first_op, answer)) if !answer.same_decision(&attempt.answer) => {
                    out.push(format!(
                        "{}{}: first {} [{}], then {} [{}]",
                        op.cmd.id,
                        if op.origin == Origin::Concurrent {
                            " (concurrent)"
                        } else {
                            ""
                        },
                        answer.short(),
                        first_op.trail(),
                        attempt.answer.short(),
                        op.trail()
                    ));
                }
                Some(_) => {}
            }
        }
    }
    out
}

fn unsent(ops: &[Op], ledger: &Ledger) -> Vec<String> {
    let mut sent: HashMap<&str, Vec<&Command>> = HashMap::new();
    for op in ops {
        sent.entry(op.cmd.id.as_str()).or_default().push(&op.cmd);
    }
    let mut out: Vec<String> = ledger
        .records
        .values()
        .filter(|r| {
            !sent
                .get(r.id.as_str())
                .is_some_and(|cmds| cmds.iter().any(|c| same_payload(c, r)))
        })
        .map(|r| {
            format!(
                "{} {} {} on {} ({})",
                r.id, r.kind, r.amount, r.account, r.status
            )
        })
        .collect();
    out.sort();
    out
}

/// A `402 deadline_exceeded` that came back faster than the deadline could have passed: the
/// worker judged the deadline by a clock that runs ahead (one clock for decisions, issue 11
/// item 5). Only ids sent exactly once count: any repeat may be answered from a record that
/// an earlier attempt's timeout wrote.
pub fn early_deadline_denials(ops: &[Op], earliest: Duration) -> Vec<String> {
    let mut attempts: HashMap<&str, usize> = HashMap::new();
    for op in ops {
        *attempts.entry(op.cmd.id.as_str()).or_default() += op.attempts.len();
    }
    ops.iter()
        .filter(|op| attempts.get(op.cmd.id.as_str()) == Some(&1))
        .filter_map(|op| {
            let a = &op.attempts[0];
            match &a.answer {
                Answer::Denied { reason }
                    if reason == Reason::DeadlineExceeded.as_str() && a.took < earliest =>
                {
                    Some(line(
                        op,
                        &a.answer,
                        &format!(
                            "denied for the deadline {:.2}s after it was sent; no deadline passes before {:.1}s",
                            a.took.as_secs_f64(),
                            earliest.as_secs_f64()
                        ),
                    ))
                }
                _ => None,
            }
        })
        .collect()
}

/// Per account: the balance the allowed records add up to.
pub fn expected_balances(ledger: &Ledger, allowed: &HashSet<&str>) -> BTreeMap<String, Decimal> {
    let mut out: BTreeMap<String, Decimal> = BTreeMap::new();
    for rec in ledger.records.values() {
        let entry = out.entry(rec.account.clone()).or_default();
        if !allowed.contains(rec.id.as_str()) || rec.status != OutcomeStatus::Applied {
            continue;
        }
        match rec.kind {
            Kind::Deposit => *entry += rec.amount,
            Kind::Withdraw => *entry -= rec.amount,
            Kind::WithdrawRequest => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attempt, Policy};

    fn cmd(id: &str, kind: Kind, cents: i64) -> Command {
        Command {
            id: id.into(),
            kind,
            account: "a".into(),
            cents,
            request_id: None,
        }
    }

    fn op(cmd: Command, answers: &[Answer]) -> Op {
        Op {
            cmd,
            policy: Policy::SameId,
            origin: Origin::Fresh,
            attempts: answers
                .iter()
                .map(|a| Attempt {
                    at: Duration::ZERO,
                    took: Duration::from_millis(10),
                    code: "x".into(),
                    answer: a.clone(),
                })
                .collect(),
            out_of_time: false,
        }
    }

    /// The record of `c` with `status` (its text, as in the table).
    fn record(c: &Command, status: &str, hold: Option<&str>) -> Record {
        Record {
            id: c.id.clone(),
            account: c.account.clone(),
            kind: c.kind,
            amount: decimal(c.cents),
            status: OutcomeStatus::parse(status).expect("status"),
            reason: None,
            hold_id: hold.map(str::to_string),
            request_id: c.request_id.clone(),
            seq: 1,
            balance_after: Decimal::ZERO,
        }
    }

    fn ledger(records: Vec<Record>, holds: Vec<HoldRow>) -> Ledger {
        Ledger {
            records: records.into_iter().map(|r| (r.id.clone(), r)).collect(),
            holds,
        }
    }

    fn unavailable() -> Answer {
        Answer::NotAccepted {
            code: "503 unavailable".into(),
            message: String::new(),
        }
    }

    fn unknown() -> Answer {
        Answer::Unknown {
            why: "503 outcome_unknown".into(),
        }
    }

    fn count(findings: &Findings, heading: &str) -> usize {
        findings
            .iter()
            .find(|(h, _)| *h == heading)
            .map_or(0, |(_, items)| items.len())
    }

    const BROKEN: &str = "answers the final record contradicts";
    const FORBIDDEN: &str = "ids answered only \"not accepted\" that have an effect";

    #[test]
    fn an_id_told_only_not_accepted_must_have_no_record() {
        let d = cmd("d1", Kind::Deposit, 500);
        let ops = [op(d.clone(), &[unavailable(), unavailable()])];
        let with = ledger(vec![record(&d, "applied", None)], vec![]);
        assert_eq!(count(&score(&ops, &with), FORBIDDEN), 1);
        assert!(allowed(&ops, &with).is_empty());
        assert_eq!(count(&score(&ops, &ledger(vec![], vec![])), FORBIDDEN), 0);
    }

    #[test]
    fn not_accepted_then_accepted_allows_the_record() {
        let d = cmd("d1", Kind::Deposit, 500);
        let ops = [op(d.clone(), &[unavailable(), Answer::Accepted])];
        let l = ledger(vec![record(&d, "applied", None)], vec![]);
        let findings = score(&ops, &l);
        assert!(
            findings.iter().all(|(_, items)| items.is_empty()),
            "{findings:?}"
        );
        assert_eq!(expected_balances(&l, &allowed(&ops, &l))["a"], decimal(500));
    }

    #[test]
    fn an_unknown_outcome_allows_a_record_or_none_and_the_balance_follows_the_records() {
        let first = cmd("d1", Kind::Deposit, 500);
        let again = cmd("d2", Kind::Deposit, 500);
        let ops = [
            op(first.clone(), &[unknown()]),
            op(again.clone(), &[Answer::Accepted]),
        ];
        let both = ledger(
            vec![
                record(&first, "applied", None),
                record(&again, "applied", None),
            ],
            vec![],
        );
        let findings = score(&ops, &both);
        assert!(
            findings.iter().all(|(_, items)| items.is_empty()),
            "{findings:?}"
        );
        assert_eq!(
            expected_balances(&both, &allowed(&ops, &both))["a"],
            decimal(1000)
        );
        let one = ledger(vec![record(&again, "applied", None)], vec![]);
        assert!(score(&ops, &one).iter().all(|(_, items)| items.is_empty()));
        assert_eq!(
            expected_balances(&one, &allowed(&ops, &one))["a"],
            decimal(500)
        );
    }

    #[test]
    fn an_accepted_id_must_be_recorded_with_its_payload() {
        let d = cmd("d1", Kind::Deposit, 500);
        let ops = [op(d.clone(), &[Answer::Accepted])];
        assert_eq!(count(&score(&ops, &ledger(vec![], vec![])), BROKEN), 1);
        let other = Command { cents: 600, ..d };
        assert_eq!(
            count(
                &score(&ops, &ledger(vec![record(&other, "applied", None)], vec![])),
                BROKEN
            ),
            1
        );
    }

    #[test]
    fn a_201_needs_the_approved_record_and_an_unreleased_hold() {
        let r = cmd("r1", Kind::WithdrawRequest, 537);
        let ops = [op(
            r.clone(),
            &[Answer::Approved {
                hold_id: "h".into(),
            }],
        )];
        let hold = |status: &str| HoldRow {
            id: "h".into(),
            request_id: "r1".into(),
            account: "a".into(),
            amount: decimal(537),
            status: HoldStatus::parse(status).expect("hold status"),
            captured_by: None,
            created: 0,
        };
        let ok = ledger(vec![record(&r, "approved", Some("h"))], vec![hold("open")]);
        assert_eq!(count(&score(&ops, &ok), BROKEN), 0);
        let voided = ledger(
            vec![record(&r, "denied", Some("h"))],
            vec![hold("released")],
        );
        assert_eq!(count(&score(&ops, &voided), BROKEN), 1);
    }

    #[test]
    fn a_402_needs_a_denied_record_without_an_open_hold() {
        let r = cmd("r1", Kind::WithdrawRequest, 537);
        let ops = [op(
            r.clone(),
            &[Answer::Denied {
                reason: "deadline_exceeded".into(),
            }],
        )];
        let denied = ledger(vec![record(&r, "denied", None)], vec![]);
        assert_eq!(count(&score(&ops, &denied), BROKEN), 0);
        let approved = ledger(
            vec![record(&r, "approved", Some("h"))],
            vec![HoldRow {
                id: "h".into(),
                request_id: "r1".into(),
                account: "a".into(),
                amount: decimal(537),
                status: HoldStatus::Open,
                captured_by: None,
                created: 0,
            }],
        );
        assert_eq!(count(&score(&ops, &approved), BROKEN), 1);
    }

    #[test]
    fn a_402_for_a_conflicting_payload_holds_while_the_id_is_denied() {
        let r = cmd("r1", Kind::WithdrawRequest, 537);
        let conflicting = Command {
            cents: 637,
            ..r.clone()
        };
        let ops = [op(
            conflicting,
            &[Answer::Denied {
                reason: "deadline_exceeded".into(),
            }],
        )];
        assert_eq!(
            count(
                &score(&ops, &ledger(vec![record(&r, "denied", None)], vec![])),
                BROKEN
            ),
            0
        );
        let approved = ledger(vec![record(&r, "approved", Some("h"))], vec![]);
        assert_eq!(count(&score(&ops, &approved), BROKEN), 1);
    }

    #[test]
    fn a_422_is_broken_only_when_its_payload_is_the_record() {
        let r = cmd("r1", Kind::WithdrawRequest, 537);
        let conflicting = Command {
            cents: 637,
            ..r.clone()
        };
        let mut o = op(conflicting.clone(), &[Answer::IdReused]);
        o.origin = Origin::Conflict;
        let l = ledger(vec![record(&r, "denied", None)], vec![]);
        assert_eq!(count(&score(&[o.clone()], &l), BROKEN), 0);
        let l = ledger(vec![record(&conflicting, "denied", None)], vec![]);
        assert_eq!(count(&score(&[o], &l), BROKEN), 1);
    }

    #[test]
    fn two_decisions_for_one_id_must_agree() {
        let r = cmd("r1", Kind::WithdrawRequest, 537);
        let ops = [
            op(
                r.clone(),
                &[Answer::Denied {
                    reason: "deadline_exceeded".into(),
                }],
            ),
            op(
                r,
                &[Answer::Approved {
                    hold_id: "h".into(),
                }],
            ),
        ];
        assert_eq!(
            count(
                &score(&ops, &Ledger::default()),
                "same id and payload, different decisions"
            ),
            1
        );
    }

    #[test]
    fn a_record_nobody_sent_is_reported() {
        let d = cmd("d1", Kind::Deposit, 500);
        let l = ledger(vec![record(&d, "applied", None)], vec![]);
        assert_eq!(
            count(
                &score(&[], &l),
                "recorded ids nobody sent with that payload"
            ),
            1
        );
    }

    #[test]
    fn a_deadline_denial_faster_than_any_deadline_is_reported_once_sent_alone() {
        let r = cmd("r1", Kind::WithdrawRequest, 537);
        let denied = Answer::Denied {
            reason: "deadline_exceeded".into(),
        };
        let fast = [op(r.clone(), std::slice::from_ref(&denied))];
        assert_eq!(
            early_deadline_denials(&fast, Duration::from_secs(2)).len(),
            1
        );
        // A repeat may be answered from the record an earlier attempt's timeout wrote.
        let repeated = [
            op(r.clone(), std::slice::from_ref(&denied)),
            op(r, &[denied]),
        ];
        assert!(early_deadline_denials(&repeated, Duration::from_secs(2)).is_empty());
    }
}
