//! Replays each account's records in the order the ledger applied them (`seq`) and checks
//! that records, holds and the ledger's rules agree with each other — whatever order the
//! commands took through the queues, which timing decides and the clients cannot know:
//!
//! - every hold row belongs to a withdraw_request record of the same account and amount, and
//!   its status matches that record (open/expired ⇒ approved, released ⇒ voided to denied,
//!   captured ⇒ by an applied withdraw that records this hold);
//! - every record's `balance_after` is the previous one plus its own effect;
//! - a withdraw captured exactly the hold the rule names at its turn: the one of its
//!   `requestId`, else the oldest open hold of the same amount (or none when there is none);
//! - an approval had `balance − held` to cover it, a denial for insufficient funds had not.
//!
//! A hold later released (void) or expired was open for a while whose end has no `seq`: at a
//! later turn it may or may not still be open, so both readings are accepted there.
//!
//! The expected final `held` of an account is the sum of the holds still open at its end.

use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashSet};
use tally_core::{HoldStatus, Kind, OutcomeStatus, Reason};

use crate::scoring::{Findings, HoldRow, Ledger, Record};

/// A hold open at some turn of the replay.
struct Live<'a> {
    row: &'a HoldRow,
    /// Surely open at this turn (the table says open, or captured later); else it may have
    /// been released or expired already.
    sure: bool,
}

/// Findings of the replay, by heading.
#[derive(Default)]
struct Found {
    holds: Vec<String>,
    chain: Vec<String>,
    captures: Vec<String>,
    decisions: Vec<String>,
}

/// Replays every account; returns the findings and each account's expected final `held`
/// (the holds of allowed requests still open at the end).
pub fn replay(ledger: &Ledger, allowed: &HashSet<&str>) -> (Findings, BTreeMap<String, Decimal>) {
    let mut found = Found::default();
    check_holds(ledger, &mut found);
    let mut by_account: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for rec in ledger.records.values() {
        by_account
            .entry(rec.account.as_str())
            .or_default()
            .push(rec);
    }
    let mut held = BTreeMap::new();
    for (account, mut records) in by_account {
        records.sort_by_key(|r| r.seq);
        let open = replay_account(ledger, &records, &mut found);
        let sum = open
            .iter()
            .filter(|l| {
                l.row.status == HoldStatus::Open && allowed.contains(l.row.request_id.as_str())
            })
            .map(|l| l.row.amount)
            .sum();
        held.insert(account.to_string(), sum);
    }
    let findings = vec![
        ("holds and records disagree", found.holds),
        (
            "records out of order or with a broken balance chain",
            found.chain,
        ),
        ("captures the rule does not explain", found.captures),
        (
            "decisions the balance at their turn contradicts",
            found.decisions,
        ),
    ];
    (findings, held)
}

/// Both directions of the hold ↔ record links.
fn check_holds(ledger: &Ledger, found: &mut Found) {
    for h in &ledger.holds {
        let Some(r) = ledger.records.get(&h.request_id) else {
            found
                .holds
                .push(format!("hold {} of {}: no such record", h.id, h.request_id));
            continue;
        };
        if r.kind != Kind::WithdrawRequest || r.account != h.account || r.amount != h.amount {
            found.holds.push(format!(
                "hold {} ({} on {}) belongs to {} {} {} on {}",
                h.id, h.amount, h.account, r.id, r.kind, r.amount, r.account
            ));
        }
        // A void that arrives after its late approval's hold was captured or expired denies
        // the record (without its hold id) and leaves the hold as it is.
        let voided_late = r.status == OutcomeStatus::Denied && r.hold_id.is_none();
        let approved_with_it =
            r.status == OutcomeStatus::Approved && r.hold_id.as_deref() == Some(&h.id);
        let fits = match h.status {
            HoldStatus::Open => approved_with_it,
            HoldStatus::Expired => approved_with_it || voided_late,
            HoldStatus::Captured => r.status == OutcomeStatus::Approved || voided_late,
            HoldStatus::Released => r.status == OutcomeStatus::Denied,
        };
        if !fits {
            found.holds.push(format!(
                "hold {} of {} is {}, but the request is recorded {} with hold {:?}",
                h.id, r.id, h.status, r.status, r.hold_id
            ));
        }
        if h.status == HoldStatus::Captured {
            let by = h.captured_by.as_deref().and_then(|w| ledger.records.get(w));
            if !by.is_some_and(|w| {
                w.kind == Kind::Withdraw
                    && w.status == OutcomeStatus::Applied
                    && w.hold_id.as_deref() == Some(&h.id)
            }) {
                found.holds.push(format!(
                    "hold {} of {} is captured by {:?}, which does not record capturing it",
                    h.id, r.id, h.captured_by
                ));
            }
        }
    }
    for r in ledger.records.values() {
        let Some(hold_id) = r.hold_id.as_deref() else {
            if r.status == OutcomeStatus::Approved {
                found
                    .holds
                    .push(format!("{} is approved without a hold", r.id));
            }
            continue;
        };
        let hold = ledger.hold(hold_id);
        let why = match (r.kind, hold) {
            (_, None) => Some("no such hold".to_string()),
            (Kind::WithdrawRequest, Some(h)) if h.request_id != r.id => {
                Some(format!("the hold belongs to {}", h.request_id))
            }
            (Kind::Withdraw, Some(h))
                if h.status != HoldStatus::Captured || h.captured_by.as_deref() != Some(&r.id) =>
            {
                Some(format!(
                    "but the hold is {} (captured by {:?})",
                    h.status, h.captured_by
                ))
            }
            _ => None,
        };
        if let Some(why) = why {
            found.holds.push(format!(
                "{} ({} {} {}) records hold {hold_id}: {why}",
                r.id, r.kind, r.amount, r.status
            ));
        }
    }
}

fn effect(r: &Record) -> Decimal {
    match (r.kind, r.status) {
        (Kind::Deposit, OutcomeStatus::Applied) => r.amount,
        (Kind::Withdraw, OutcomeStatus::Applied) => -r.amount,
        _ => Decimal::ZERO,
    }
}

/// One account's records in `seq` order; returns the holds open at the end.
fn replay_account<'a>(ledger: &'a Ledger, records: &[&Record], found: &mut Found) -> Vec<Live<'a>> {
    let mut balance = Decimal::ZERO;
    let mut live: Vec<Live<'a>> = Vec::new();
    let mut chain_broken = false;
    for (i, r) in records.iter().enumerate() {
        if i > 0 && records[i - 1].seq == r.seq {
            found.chain.push(format!(
                "{} and {} share seq {}",
                records[i - 1].id,
                r.id,
                r.seq
            ));
        }
        let after = balance + effect(r);
        if after != r.balance_after && !chain_broken {
            // Once per account: every later record would repeat it.
            chain_broken = true;
            found.chain.push(format!(
                "{} (seq {}, {} {} {}) has balance_after {}, but the records before it add up to {after}",
                r.id, r.seq, r.kind, r.amount, r.status, r.balance_after
            ));
        }
        match r.kind {
            Kind::WithdrawRequest => decide(ledger, r, balance, &mut live, found),
            Kind::Withdraw if r.status == OutcomeStatus::Applied => capture(r, &mut live, found),
            Kind::Withdraw | Kind::Deposit => {}
        }
        balance = r.balance_after;
    }
    live
}

/// A withdraw_request's turn: check its decision, open its hold.
fn decide<'a>(
    ledger: &'a Ledger,
    r: &Record,
    balance: Decimal,
    live: &mut Vec<Live<'a>>,
    found: &mut Found,
) {
    let sure_held: Decimal = live.iter().filter(|l| l.sure).map(|l| l.row.amount).sum();
    let all_held: Decimal = live.iter().map(|l| l.row.amount).sum();
    if r.status == OutcomeStatus::Approved && balance - sure_held < r.amount {
        found.decisions.push(format!(
            "{} approved {} at seq {}, but at most {} was available (balance {balance}, held at least {sure_held})",
            r.id, r.amount, r.seq, balance - sure_held
        ));
    }
    if r.status == OutcomeStatus::Denied
        && r.reason == Some(Reason::InsufficientFunds)
        && balance - all_held >= r.amount
    {
        found.decisions.push(format!(
            "{} denied {} for insufficient funds at seq {}, but at least {} was available (balance {balance}, held at most {all_held})",
            r.id, r.amount, r.seq, balance - all_held
        ));
    }
    // An approval opened its hold here. One voided later is recorded denied without a hold
    // id; its hold (released, or captured or expired before the void came) is found by its
    // request id.
    let voided = r.status == OutcomeStatus::Denied && r.reason == Some(Reason::DeadlineExceeded);
    let opened = match r.hold_id.as_deref() {
        Some(h) => ledger.hold(h),
        None if voided => ledger.hold_of_request(&r.id),
        None => None,
    };
    if let Some(row) = opened {
        live.push(Live {
            row,
            sure: matches!(row.status, HoldStatus::Open | HoldStatus::Captured),
        });
    }
}

/// A withdraw's turn: the holds it may have captured by the rule; then close the one it did.
fn capture(r: &Record, live: &mut Vec<Live<'_>>, found: &mut Found) {
    let mut acceptable: Vec<Option<&str>> = Vec::new();
    match r.request_id.as_deref() {
        Some(request) => match live.iter().find(|l| l.row.request_id == request) {
            Some(l) if l.sure => acceptable.push(Some(&l.row.id)),
            Some(l) => acceptable.extend([Some(l.row.id.as_str()), None]),
            None => acceptable.push(None),
        },
        None => {
            // The oldest open hold of the same amount; holds created in one batch are
            // equally old, so any of them may be the one.
            let mut same: Vec<&Live<'_>> =
                live.iter().filter(|l| l.row.amount == r.amount).collect();
            same.sort_by_key(|l| l.row.created);
            let mut rest = same.as_slice();
            let mut settled = false;
            while let Some(first) = rest.first() {
                let tied = rest
                    .iter()
                    .take_while(|l| l.row.created == first.row.created)
                    .count();
                acceptable.extend(rest[..tied].iter().map(|l| Some(l.row.id.as_str())));
                if rest[..tied].iter().any(|l| l.sure) {
                    settled = true;
                    break;
                }
                rest = &rest[tied..];
            }
            if !settled {
                acceptable.push(None);
            }
        }
    }
    if !acceptable.contains(&r.hold_id.as_deref()) {
        found.captures.push(format!(
            "{} (withdraw {}{}, seq {}) captured {:?}; at its turn the rule allows {:?}",
            r.id,
            r.amount,
            r.request_id
                .as_deref()
                .map(|q| format!(" naming {q}"))
                .unwrap_or_default(),
            r.seq,
            r.hold_id,
            acceptable
        ));
    }
    if let Some(h) = r.hold_id.as_deref() {
        live.retain(|l| l.row.id != h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Book {
        ledger: Ledger,
        balance: Decimal,
        seq: i64,
    }

    impl Book {
        fn new() -> Self {
            Self {
                ledger: Ledger::default(),
                balance: Decimal::ZERO,
                seq: 0,
            }
        }

        /// A record of `kind` and `status` (their texts, as in the table).
        fn add(&mut self, id: &str, kind: &str, amount: i64, status: &str) -> &mut Record {
            self.seq += 1;
            let rec = Record {
                id: id.into(),
                account: "a".into(),
                kind: Kind::parse(kind).expect("kind"),
                amount: Decimal::from(amount),
                status: OutcomeStatus::parse(status).expect("status"),
                reason: None,
                hold_id: None,
                request_id: None,
                seq: self.seq,
                balance_after: Decimal::ZERO,
            };
            self.balance += effect(&rec);
            let rec = Record {
                balance_after: self.balance,
                ..rec
            };
            self.ledger.records.insert(id.into(), rec);
            self.ledger.records.get_mut(id).expect("just inserted")
        }

        /// An approved request `id` with hold `h<id>` in state `status`.
        fn approve(&mut self, id: &str, amount: i64, status: &str, created: i64) {
            let hold = format!("h{id}");
            self.add(id, "withdraw_request", amount, "approved").hold_id = Some(hold.clone());
            self.ledger.holds.push(HoldRow {
                id: hold,
                request_id: id.into(),
                account: "a".into(),
                amount: Decimal::from(amount),
                status: HoldStatus::parse(status).expect("hold status"),
                captured_by: None,
                created,
            });
        }

        fn capture(&mut self, id: &str, amount: i64, request: Option<&str>, hold_of: Option<&str>) {
            let rec = self.add(id, "withdraw", amount, "applied");
            rec.request_id = request.map(str::to_string);
            rec.hold_id = hold_of.map(|r| format!("h{r}"));
            if let Some(r) = hold_of {
                let h = format!("h{r}");
                let row = self
                    .ledger
                    .holds
                    .iter_mut()
                    .find(|x| x.id == h)
                    .expect("hold");
                row.status = HoldStatus::Captured;
                row.captured_by = Some(id.into());
            }
        }

        fn findings(&self) -> Vec<String> {
            let allowed: HashSet<&str> = self.ledger.records.keys().map(String::as_str).collect();
            replay(&self.ledger, &allowed)
                .0
                .into_iter()
                .flat_map(|(_, items)| items)
                .collect()
        }

        fn held(&self) -> Decimal {
            let allowed: HashSet<&str> = self.ledger.records.keys().map(String::as_str).collect();
            replay(&self.ledger, &allowed)
                .1
                .get("a")
                .copied()
                .unwrap_or_default()
        }
    }

    #[test]
    fn approve_then_capture_by_request_id_is_consistent() {
        let mut b = Book::new();
        b.add("d", "deposit", 100, "applied");
        b.approve("r", 50, "open", 1);
        b.capture("w", 50, Some("r"), Some("r"));
        assert!(b.findings().is_empty(), "{:?}", b.findings());
        assert_eq!(b.held(), Decimal::ZERO);
    }

    #[test]
    fn a_capture_recorded_on_a_hold_left_open_is_found() {
        // The batch-order bug of issue 11: the withdraw records the capture, the hold row
        // stays open (its INSERT ran after the UPDATE that should have closed it).
        let mut b = Book::new();
        b.add("d", "deposit", 100, "applied");
        b.approve("r", 50, "open", 1);
        b.add("w", "withdraw", 50, "applied").hold_id = Some("hr".into());
        b.ledger.records.get_mut("w").expect("w").request_id = Some("r".into());
        assert!(!b.findings().is_empty());
    }

    #[test]
    fn a_withdraw_that_overtook_its_request_captures_nothing() {
        let mut b = Book::new();
        b.add("d", "deposit", 100, "applied");
        b.capture("w", 50, Some("r"), None);
        b.approve("r", 50, "open", 1);
        assert!(b.findings().is_empty(), "{:?}", b.findings());
        assert_eq!(b.held(), Decimal::from(50));
    }

    #[test]
    fn a_withdraw_that_skips_an_open_hold_it_names_is_found() {
        let mut b = Book::new();
        b.add("d", "deposit", 100, "applied");
        b.approve("r", 50, "open", 1);
        b.capture("w", 50, Some("r"), None);
        assert_eq!(b.findings().len(), 1, "{:?}", b.findings());
    }

    #[test]
    fn a_plain_withdraw_captures_the_oldest_hold_of_its_amount() {
        let mut b = Book::new();
        b.add("d", "deposit", 300, "applied");
        b.approve("r1", 73, "open", 1);
        b.approve("r2", 73, "open", 2);
        b.capture("w", 73, None, Some("r2"));
        assert_eq!(b.findings().len(), 1, "{:?}", b.findings());

        let mut b = Book::new();
        b.add("d", "deposit", 300, "applied");
        b.approve("r1", 73, "open", 1);
        b.approve("r2", 73, "open", 1);
        // Created in one batch: equally old, either is right.
        b.capture("w", 73, None, Some("r2"));
        assert!(b.findings().is_empty(), "{:?}", b.findings());
    }

    #[test]
    fn a_released_hold_may_or_may_not_be_open_at_a_later_turn() {
        let mut b = Book::new();
        b.add("d", "deposit", 100, "applied");
        b.approve("r", 50, "released", 1);
        b.ledger.records.get_mut("r").expect("r").status = OutcomeStatus::Denied;
        b.capture("w", 50, Some("r"), None);
        assert!(b.findings().is_empty(), "{:?}", b.findings());
    }

    #[test]
    fn a_hold_captured_before_its_approval_was_voided_explains_the_capture() {
        let mut b = Book::new();
        b.add("d", "deposit", 100, "applied");
        b.approve("r", 73, "open", 1);
        b.capture("w", 73, None, Some("r"));
        // The void came after the capture: the record is denied, without a hold id.
        let r = b.ledger.records.get_mut("r").expect("r");
        r.status = OutcomeStatus::Denied;
        r.reason = Some(Reason::DeadlineExceeded);
        r.hold_id = None;
        assert!(b.findings().is_empty(), "{:?}", b.findings());
    }

    #[test]
    fn an_approval_beyond_the_available_amount_is_found() {
        let mut b = Book::new();
        b.add("d", "deposit", 100, "applied");
        b.approve("r1", 100, "open", 1);
        b.approve("r2", 100, "open", 2);
        assert_eq!(b.findings().len(), 1, "{:?}", b.findings());
    }

    #[test]
    fn a_denial_with_funds_available_is_found() {
        let mut b = Book::new();
        b.add("d", "deposit", 100, "applied");
        b.add("r", "withdraw_request", 50, "denied").reason = Some(Reason::InsufficientFunds);
        assert_eq!(b.findings().len(), 1, "{:?}", b.findings());
    }

    #[test]
    fn a_broken_balance_chain_is_found_once() {
        let mut b = Book::new();
        b.add("d1", "deposit", 100, "applied");
        b.add("d2", "deposit", 100, "applied").balance_after = Decimal::from(300);
        b.add("d3", "deposit", 100, "applied");
        assert_eq!(b.findings().len(), 1, "{:?}", b.findings());
    }
}
