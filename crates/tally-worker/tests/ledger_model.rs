//! Property test: random command sequences on two accounts, split into random batches at a fake
//! clock, applied through the real batch path (fence → load → decide → write → commit on
//! PostgreSQL, plus the hold sweep), end in the same ledger as a plain sequential model of the
//! rules — balances, held, every hold's status, every record, every answer, every id conflict.
//! The two accounts are on two shards of one worker; some batches go as one group commit of
//! both shards' commands (each account's commands in order, the shards one after the other,
//! which is the order the model gets too), the others as one batch of shard 0 holding both.
//!
//! The model below is written from the rules as stated (README, `tally_core::ledger`'s module
//! doc), not from its code. Commands: deposits, withdraws with and without `requestId`,
//! withdraw_requests (some past their `decide_by`), voids (of sent and never-sent requests, and
//! older attempts' voids arriving after a retry's copy),
//! exact resends, and reuses of an id with another payload (ids are drawn from small pools, so
//! they collide), and policy changes of an account (`always_apply`, or `reject_overdraft` with
//! an overdraft limit; some redelivered) that govern the withdraws after them in its order. Time advances between batches, past the hold TTL at times.
//!
//! Cases: 128 by default (CI); `PROPTEST_CASES=N` for more. One database per test; each case
//! uses its own account and id names and a later stretch of the fake clock.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tally_core::ledger::{AccountPolicy, Rules, WithdrawPolicy};
use tally_core::policy::{Command, PolicyEnvelope, PolicyRequest};
use tally_core::{Envelope, Kind, Outcome};
use tally_store::leases::{self, Lease};
use tally_store::Pool;
use tally_worker::apply::{apply_group_at, sweep_holds_at, ShardBatch};

const TTL_SECS: i64 = 10;
const DEFAULT_CASES: u32 = 128;
/// Request ids `r0`…: request `r{slot}` is on account `slot % 2`, for `SLOT_AMOUNTS[slot]`.
const SLOTS: u8 = 6;
const SLOT_AMOUNTS: [u32; SLOTS as usize] = [10, 20, 30, 50, 20, 10];

// ---------------------------------------------------------------------------------- commands

#[derive(Debug, Clone)]
enum Op {
    Deposit {
        account: u8,
        amount: u32,
    },
    Withdraw {
        account: u8,
        amount: u32,
        request: Option<u8>,
    },
    /// A withdraw_request with id `r{slot}`, on the slot's account for the slot's amount
    /// (slots are few: retries happen). `late`: Some(true) = its `decide_by` has passed when
    /// the batch runs (not part of the payload).
    Request {
        slot: u8,
        late: Option<bool>,
    },
    /// The void of the last request sent in `slot` (or of one never sent). `oldest`: of the
    /// first one instead, as an older attempt's void that reaches the queue late (after a
    /// retry's copy was answered).
    Void {
        slot: u8,
        oldest: bool,
    },
    /// An exact copy of a command sent before.
    Resend {
        of: Index,
    },
    /// A command sent before, its id reused with another amount.
    Reuse {
        of: Index,
        amount: u32,
    },
    /// A policy change of `account` with a fresh id: `reject_overdraft` with `limit` when
    /// `reject`, else `always_apply`.
    Policy {
        account: u8,
        reject: bool,
        limit: u32,
    },
    /// A policy change sent before, redelivered (no second effect).
    ResendPolicy {
        of: Index,
    },
}

#[derive(Debug, Clone)]
struct Batch {
    /// Seconds the clock moves before the batch.
    advance: i64,
    ops: Vec<Op>,
    /// Run the hold sweep after the batch.
    sweep: bool,
    /// Commit as a group of two shard batches (account 0's on shard 0, account 1's on shard
    /// 1) instead of one batch of shard 0.
    grouped: bool,
}

fn op() -> impl Strategy<Value = Op> {
    let amount = || prop_oneof![Just(10u32), Just(20), Just(30), Just(50)];
    let funds = prop_oneof![Just(50u32), Just(100), Just(200)];
    prop_oneof![
        4 => (0..2u8, funds).prop_map(|(account, amount)| Op::Deposit { account, amount }),
        3 => (0..2u8, amount(), proptest::option::weighted(0.6, 0..SLOTS)).prop_map(
            |(account, amount, request)| Op::Withdraw { account, amount, request }
        ),
        4 => (0..SLOTS, proptest::option::weighted(0.2, any::<bool>()))
            .prop_map(|(slot, late)| Op::Request { slot, late }),
        2 => (0..SLOTS, any::<bool>()).prop_map(|(slot, oldest)| Op::Void { slot, oldest }),
        1 => any::<Index>().prop_map(|of| Op::Resend { of }),
        1 => (any::<Index>(), amount()).prop_map(|(of, amount)| Op::Reuse { of, amount }),
        2 => (0..2u8, any::<bool>(), prop_oneof![Just(0u32), Just(10), Just(30)])
            .prop_map(|(account, reject, limit)| Op::Policy { account, reject, limit }),
        1 => any::<Index>().prop_map(|of| Op::ResendPolicy { of }),
    ]
}

fn batches() -> impl Strategy<Value = Vec<Batch>> {
    let advance = prop_oneof![Just(0i64), Just(1), Just(4), Just(11)];
    let batch = (
        advance,
        proptest::collection::vec(op(), 1..9),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(advance, ops, sweep, grouped)| Batch {
            advance,
            ops,
            sweep,
            grouped,
        });
    proptest::collection::vec(batch, 1..10)
}

/// Turns ops into envelopes, the way clients and the API would produce them.
struct Sender {
    prefix: String,
    sent: Vec<Envelope>,
    policies: Vec<PolicyEnvelope>,
    /// Deposits and withdraws get fresh ids `t{n}`; only Resend and Reuse repeat them.
    next: u32,
}

impl Sender {
    fn account(&self, i: u8) -> String {
        format!("{}a{i}", self.prefix)
    }

    fn envelope(
        &self,
        id: String,
        kind: Kind,
        account: u8,
        amount: u32,
        now: DateTime<Utc>,
    ) -> Envelope {
        let account = self.account(account);
        Envelope {
            v: 1,
            kind,
            fingerprint: format!("{}/{account}/{amount}", kind.as_str()),
            id,
            account_id: account,
            amount: Decimal::from(amount),
            occurred_at: now,
            accepted_at: now,
            request_id: None,
            user_id: None,
            decide_by: None,
            void: false,
            key_name: None,
        }
    }

    fn policy(&mut self, account: u8, reject: bool, limit: u32, now: DateTime<Utc>) -> Command {
        let request = PolicyRequest {
            account_id: self.account(account),
            policy: AccountPolicy {
                withdraw: if reject {
                    WithdrawPolicy::RejectOverdraft
                } else {
                    WithdrawPolicy::AlwaysApply
                },
                overdraft_limit: if reject {
                    Decimal::from(limit)
                } else {
                    Decimal::ZERO
                },
            },
        };
        let id = format!("{}p{}", self.prefix, self.policies.len());
        let env = PolicyEnvelope::new(&id, &request, now, None);
        self.policies.push(env.clone());
        Command::Policy(env)
    }

    fn command(&mut self, op: &Op, now: DateTime<Utc>) -> Command {
        match *op {
            Op::Policy {
                account,
                reject,
                limit,
            } => self.policy(account, reject, limit, now),
            Op::ResendPolicy { of } => match self.policies.len() {
                0 => self.policy(0, true, 0, now),
                n => Command::Policy(self.policies[of.index(n)].clone()),
            },
            _ => Command::Transaction(self.send(op, now)),
        }
    }

    fn send(&mut self, op: &Op, now: DateTime<Utc>) -> Envelope {
        let p = self.prefix.clone();
        let fresh = format!("{p}t{}", self.next);
        let env = match *op {
            Op::Deposit { account, amount } => {
                self.next += 1;
                self.envelope(fresh, Kind::Deposit, account, amount, now)
            }
            Op::Withdraw {
                account,
                amount,
                request,
            } => {
                self.next += 1;
                // A withdraw naming a request is on that request's account.
                let account = request.map_or(account, |r| r % 2);
                let mut e = self.envelope(fresh, Kind::Withdraw, account, amount, now);
                if let Some(r) = request {
                    e.request_id = Some(format!("{p}r{r}"));
                    e.fingerprint.push_str(&format!("/{p}r{r}"));
                }
                e
            }
            Op::Request { slot, late } => {
                let id = format!("{p}r{slot}");
                let amount = SLOT_AMOUNTS[usize::from(slot)];
                let mut e = self.envelope(id, Kind::WithdrawRequest, slot % 2, amount, now);
                e.decide_by = late.map(|late| now + Duration::seconds(if late { -1 } else { 1 }));
                e
            }
            Op::Void { slot, oldest } => {
                let id = format!("{p}r{slot}");
                let copy = |e: &&Envelope| e.id == id && !e.void;
                let sent = if oldest {
                    self.sent.iter().find(copy)
                } else {
                    self.sent.iter().rev().find(copy)
                };
                match sent {
                    Some(e) => e.void(),
                    None => {
                        let amount = SLOT_AMOUNTS[usize::from(slot)];
                        self.envelope(id, Kind::WithdrawRequest, slot % 2, amount, now)
                            .void()
                    }
                }
            }
            Op::Resend { of } => match self.sent.len() {
                0 => {
                    return self.send(
                        &Op::Deposit {
                            account: 0,
                            amount: 10,
                        },
                        now,
                    )
                }
                n => self.sent[of.index(n)].clone(),
            },
            Op::Reuse { of, amount } => match self.sent.len() {
                0 => {
                    return self.send(
                        &Op::Deposit {
                            account: 0,
                            amount: 10,
                        },
                        now,
                    )
                }
                n => {
                    let before = &self.sent[of.index(n)];
                    let (id, kind) = (before.id.clone(), before.kind);
                    self.envelope(id, kind, 1, amount + 1, now)
                }
            },
            Op::Policy { .. } | Op::ResendPolicy { .. } => unreachable!("see Sender::command"),
        };
        self.sent.push(env.clone());
        env
    }
}

// ------------------------------------------------------------------------------------- model

/// What the model says a command's answer is; `hold` names a hold by its request id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: &'static str,
    reason: Option<&'static str>,
    hold: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    fingerprint: String,
    account: String,
    status: &'static str,
    reason: Option<&'static str>,
    hold: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hold {
    request: String,
    account: String,
    amount: Decimal,
    expires_at: DateTime<Utc>,
    status: &'static str,
    captured_by: Option<String>,
}

/// The ledger, one command at a time.
#[derive(Default)]
struct Model {
    balances: BTreeMap<String, Decimal>,
    /// In the order they were placed.
    holds: Vec<Hold>,
    records: BTreeMap<String, Record>,
    conflicts: BTreeSet<(String, String)>,
    /// `acceptedAt` of the latest copy of each request answered while approved (the real
    /// ledger's `last_copy_at`): only a void at least that recent denies an approval. Not
    /// compared with the ledger's rows, only through the answers it leads to.
    last_copy: BTreeMap<String, DateTime<Utc>>,
    /// Voids that came after a later copy was answered "approved", and left the approval.
    late_voids: u32,
    /// Each account's own policy, once one was set: (policy, overdraft limit).
    policies: BTreeMap<String, (&'static str, Decimal)>,
    /// Ids of the policy changes applied (a redelivered one changes nothing).
    policy_ids: BTreeSet<String>,
}

impl Model {
    fn held(&self, account: &str) -> Decimal {
        self.holds
            .iter()
            .filter(|h| h.account == account && h.status == "open")
            .map(|h| h.amount)
            .sum()
    }

    fn expire(&mut self, account: Option<&str>, now: DateTime<Utc>) {
        for h in &mut self.holds {
            if h.status == "open" && h.expires_at <= now && account.is_none_or(|a| a == h.account) {
                h.status = "expired";
            }
        }
    }

    fn answer(r: &Record) -> Answer {
        Answer {
            status: r.status,
            reason: r.reason,
            hold: r.hold.clone().filter(|_| r.status == "approved"),
        }
    }

    /// A policy change: the account's policy from here on, once per id. Its account exists
    /// from then on (a zero balance), as a first transaction would create it, and, as on any
    /// command of the account, its holds past their TTL expire first.
    fn change_policy(&mut self, p: &PolicyEnvelope, now: DateTime<Utc>) {
        if self.policy_ids.insert(p.id.clone()) {
            self.expire(Some(&p.account_id), now);
            self.policies.insert(
                p.account_id.clone(),
                (p.withdraw_policy.as_str(), p.overdraft_limit),
            );
            self.balances.entry(p.account_id.clone()).or_default();
        }
    }

    fn apply_command(
        &mut self,
        c: &Command,
        now: DateTime<Utc>,
        global: WithdrawPolicy,
    ) -> Option<Answer> {
        match c {
            Command::Transaction(e) => Some(self.apply(e, now, global)),
            Command::Policy(p) => {
                self.change_policy(p, now);
                None
            }
        }
    }

    fn apply(&mut self, e: &Envelope, now: DateTime<Utc>, global: WithdrawPolicy) -> Answer {
        if let Some(r) = self.records.get(&e.id) {
            if r.fingerprint != e.fingerprint {
                self.conflicts.insert((e.id.clone(), e.fingerprint.clone()));
                return Answer {
                    status: "id_reused",
                    reason: Some("id_reused"),
                    hold: None,
                };
            }
            let last_copy = self.last_copy[&e.id];
            if r.status == "approved" && !e.void && e.accepted_at > last_copy {
                self.last_copy.insert(e.id.clone(), e.accepted_at);
            }
            if e.void && r.status == "approved" && e.accepted_at < last_copy {
                self.late_voids += 1;
            }
            if e.void && r.status == "approved" && e.accepted_at >= last_copy {
                let account = r.account.clone();
                self.expire(Some(&account), now);
                for h in &mut self.holds {
                    if h.request == e.id && h.status == "open" {
                        h.status = "released";
                    }
                }
                let r = self.records.get_mut(&e.id).expect("just seen");
                r.status = "denied";
                r.reason = Some("deadline_exceeded");
                r.hold = None;
            }
            return Self::answer(&self.records[&e.id]);
        }
        self.expire(Some(&e.account_id), now);
        let account = e.account_id.clone();
        let available =
            self.balances.get(&account).copied().unwrap_or_default() - self.held(&account);
        let (status, reason, hold) = match e.kind {
            Kind::Deposit => {
                *self.balances.entry(account.clone()).or_default() += e.amount;
                ("applied", None, None)
            }
            Kind::Withdraw => {
                let target = self.holds.iter().position(|h| {
                    h.account == account
                        && h.status == "open"
                        && match &e.request_id {
                            Some(r) => &h.request == r,
                            None => h.amount == e.amount,
                        }
                });
                let own = target.map_or(Decimal::ZERO, |i| self.holds[i].amount);
                let (policy, limit) = self
                    .policies
                    .get(&account)
                    .copied()
                    .unwrap_or((global.as_str(), Decimal::ZERO));
                if policy == "reject_overdraft" && available + own + limit < e.amount {
                    ("rejected", Some("insufficient_funds"), None)
                } else {
                    *self.balances.entry(account.clone()).or_default() -= e.amount;
                    let hold = target.map(|i| {
                        let h = &mut self.holds[i];
                        h.status = "captured";
                        h.captured_by = Some(e.id.clone());
                        h.request.clone()
                    });
                    ("applied", None, hold)
                }
            }
            Kind::WithdrawRequest => {
                if e.void || e.decide_by.is_some_and(|d| now > d) {
                    ("denied", Some("deadline_exceeded"), None)
                } else if available >= e.amount {
                    self.holds.push(Hold {
                        request: e.id.clone(),
                        account: account.clone(),
                        amount: e.amount,
                        expires_at: now + Duration::seconds(TTL_SECS),
                        status: "open",
                        captured_by: None,
                    });
                    ("approved", None, Some(e.id.clone()))
                } else {
                    ("denied", Some("insufficient_funds"), None)
                }
            }
        };
        self.balances.entry(account.clone()).or_default();
        let record = Record {
            fingerprint: e.fingerprint.clone(),
            account,
            status,
            reason,
            hold,
        };
        let answer = Self::answer(&record);
        self.records.insert(e.id.clone(), record);
        self.last_copy.insert(e.id.clone(), e.accepted_at);
        answer
    }
}

// ----------------------------------------------------------------------- the real ledger's view

/// Request id of every hold of this case, by hold id.
async fn hold_names(pool: &Pool, prefix: &str) -> HashMap<uuid::Uuid, String> {
    let client = pool.get().await.expect("connection");
    client
        .query(
            "SELECT id, request_id FROM holds WHERE account_id LIKE $1 || '%'",
            &[&prefix],
        )
        .await
        .expect("holds")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn answer_of(o: &Outcome, names: &HashMap<uuid::Uuid, String>) -> Answer {
    let static_str = |s: &str| -> &'static str {
        match s {
            "insufficient_funds" => "insufficient_funds",
            "deadline_exceeded" => "deadline_exceeded",
            "id_reused" => "id_reused",
            other => panic!("unexpected reason {other}"),
        }
    };
    Answer {
        status: o.status.as_str(),
        reason: o.reason.map(|r| static_str(r.as_str())),
        hold: o
            .hold_id
            .map(|h| names.get(&h).cloned().unwrap_or_else(|| h.to_string())),
    }
}

/// The ledger's final state for this case, in the model's terms.
async fn ledger_state(pool: &Pool, prefix: &str) -> Model {
    let names = hold_names(pool, prefix).await;
    let client = pool.get().await.expect("connection");
    let mut m = Model::default();
    let mut held = BTreeMap::new();
    for r in client
        .query(
            "SELECT id, balance, held, withdraw_policy, overdraft_limit FROM accounts \
             WHERE id LIKE $1 || '%'",
            &[&prefix],
        )
        .await
        .expect("accounts")
    {
        m.balances.insert(r.get(0), r.get(1));
        held.insert(r.get::<_, String>(0), r.get::<_, Decimal>(2));
        if let Some(policy) = r.get::<_, Option<String>>(3) {
            m.policies.insert(r.get(0), (leak(policy), r.get(4)));
        }
    }
    for r in client
        .query(
            "SELECT request_id, account_id, amount, expires_at, status, captured_by FROM holds \
             WHERE account_id LIKE $1 || '%' ORDER BY request_id",
            &[&prefix],
        )
        .await
        .expect("holds")
    {
        let status: String = r.get(4);
        m.holds.push(Hold {
            request: r.get(0),
            account: r.get(1),
            amount: r.get(2),
            expires_at: r.get(3),
            status: leak(status),
            captured_by: r.get(5),
        });
    }
    for r in client
        .query(
            "SELECT id, fingerprint, account_id, status, reason, hold_id FROM transactions \
             WHERE id LIKE $1 || '%'",
            &[&prefix],
        )
        .await
        .expect("transactions")
    {
        let hold: Option<uuid::Uuid> = r.get(5);
        m.records.insert(
            r.get(0),
            Record {
                fingerprint: r.get(1),
                account: r.get(2),
                status: leak(r.get(3)),
                reason: r.get::<_, Option<String>>(4).map(leak),
                hold: hold.map(|h| names.get(&h).cloned().unwrap_or_else(|| h.to_string())),
            },
        );
    }
    for r in client
        .query(
            "SELECT id, fingerprint FROM id_conflicts WHERE id LIKE $1 || '%'",
            &[&prefix],
        )
        .await
        .expect("conflicts")
    {
        m.conflicts.insert((r.get(0), r.get(1)));
    }
    // `held` must be the sum of open holds, as the model derives it.
    for (account, held) in held {
        assert_eq!(held, m.held(&account), "held of {account}");
    }
    m
}

/// Statuses and reasons are a handful of constants; the test's few leaked strings are fine.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

// -------------------------------------------------------------------------------- the property

struct Harness {
    rt: tokio::runtime::Runtime,
    pool: Pool,
    /// Shards 0 and 1 of one worker.
    leases: [Lease; 2],
    rules: Rules,
    /// Cases run so far: names and the clock of each case are its own.
    cases: std::cell::Cell<u32>,
    /// How often each kind of event occurred, over all cases: shows the generator reaches
    /// the interesting paths (captures, releases, expiries, conflicts, late requests, late
    /// voids).
    seen: std::cell::RefCell<BTreeMap<String, u32>>,
}

impl Harness {
    fn check(&self, batches: &[Batch]) -> Result<(), TestCaseError> {
        let case = self.cases.get();
        self.cases.set(case + 1);
        let pool = &self.pool;
        let prefix = format!("c{case}.");
        // Each case starts a day after the previous one began: the sweep of a later case may
        // expire an earlier case's holds, never touch its own ones early.
        let mut now = Utc
            .with_ymd_and_hms(2030, 1, 1, 0, 0, 0)
            .single()
            .expect("date")
            + Duration::days(i64::from(case));
        let mut sender = Sender {
            prefix: prefix.clone(),
            sent: Vec::new(),
            policies: Vec::new(),
            next: 0,
        };
        let mut model = Model::default();
        for (b, batch) in batches.iter().enumerate() {
            now += Duration::seconds(batch.advance);
            let commands: Vec<Command> =
                batch.ops.iter().map(|op| sender.command(op, now)).collect();
            let (zero, one): (Vec<Command>, Vec<Command>) = if batch.grouped {
                let first = sender.account(0);
                commands.into_iter().partition(|c| c.account_id() == first)
            } else {
                (commands, Vec::new())
            };
            let expected: Vec<Option<Answer>> = zero
                .iter()
                .chain(&one)
                .map(|c| model.apply_command(c, now, self.rules.withdraw_policy))
                .collect();
            let shards = [
                ShardBatch {
                    lease: &self.leases[0],
                    commands: &zero,
                },
                ShardBatch {
                    lease: &self.leases[1],
                    commands: &one,
                },
            ];
            let group = if one.is_empty() {
                &shards[..1]
            } else {
                &shards[..]
            };
            let outcomes: Vec<Option<Outcome>> = self
                .rt
                .block_on(apply_group_at(pool, group, &self.rules, now))
                .map_err(|e| TestCaseError::fail(format!("batch {b}: {e}")))?
                .into_iter()
                .flatten()
                .collect();
            let names = self.rt.block_on(hold_names(pool, &prefix));
            let answers: Vec<Option<Answer>> = outcomes
                .iter()
                .map(|o| o.as_ref().map(|o| answer_of(o, &names)))
                .collect();
            prop_assert_eq!(&answers, &expected, "answers of batch {}", b);
            if batch.sweep {
                for lease in &self.leases {
                    self.rt
                        .block_on(sweep_holds_at(pool, lease, now))
                        .map_err(|e| TestCaseError::fail(format!("sweep after {b}: {e}")))?;
                }
                model.expire(None, now);
            }
        }
        let ledger = self.rt.block_on(ledger_state(pool, &prefix));
        prop_assert_eq!(&ledger.balances, &model.balances, "balances");
        let holds =
            |m: &Model| -> BTreeMap<String, (String, Decimal, &'static str, Option<String>)> {
                m.holds
                    .iter()
                    .map(|h| {
                        (
                            h.request.clone(),
                            (h.account.clone(), h.amount, h.status, h.captured_by.clone()),
                        )
                    })
                    .collect()
            };
        prop_assert_eq!(holds(&ledger), holds(&model), "holds");
        prop_assert_eq!(&ledger.records, &model.records, "records");
        prop_assert_eq!(&ledger.conflicts, &model.conflicts, "id conflicts");
        prop_assert_eq!(&ledger.policies, &model.policies, "account policies");
        let mut seen = self.seen.borrow_mut();
        let events = model
            .holds
            .iter()
            .map(|h| format!("hold {}", h.status))
            .chain(
                model
                    .records
                    .values()
                    .map(|r| format!("{} {}", r.status, r.reason.unwrap_or(""))),
            )
            .chain(model.conflicts.iter().map(|_| "id conflict".to_string()))
            .chain((0..model.late_voids).map(|_| "late void left the approval".to_string()))
            .chain(
                model
                    .policies
                    .values()
                    .map(|(p, limit)| format!("account policy {p} {limit}")),
            );
        for event in events {
            *seen.entry(event).or_default() += 1;
        }
        Ok(())
    }
}

fn run(policy: WithdrawPolicy) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(common::fresh_database());
    let pool = db.pool(2);
    let leases = rt.block_on(async {
        leases::init(&pool, 2).await.expect("lease rows");
        leases::acquire(
            &pool,
            "test-worker",
            2,
            std::time::Duration::from_secs(3600),
        )
        .await
        .expect("acquire")
    });
    let leases: [Lease; 2] = leases.try_into().expect("shards 0 and 1");
    let harness = Harness {
        rt,
        pool,
        leases,
        rules: Rules {
            withdraw_policy: policy,
            hold_ttl: Duration::seconds(TTL_SECS),
        },
        cases: std::cell::Cell::new(0),
        seen: Default::default(),
    };
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        // No regression files: a failure prints its minimal case, which belongs in a
        // named unit test of tally_core::ledger (its tests.rs).
        failure_persistence: None,
        ..Config::default()
    });
    let started = std::time::Instant::now();
    let result = runner.run(&batches(), |batches| harness.check(&batches));
    eprintln!(
        "{policy:?}: {cases} cases ({} run with shrinking) in {:.1?}; seen {:?}",
        harness.cases.get(),
        started.elapsed(),
        harness.seen.borrow()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn the_batch_path_matches_the_sequential_model_when_withdraws_always_apply() {
    run(WithdrawPolicy::AlwaysApply);
}

#[test]
fn the_batch_path_matches_the_sequential_model_under_reject_overdraft() {
    run(WithdrawPolicy::RejectOverdraft);
}
