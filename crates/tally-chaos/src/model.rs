//! The client model: virtual clients that drive a mixed workload through nginx and record the
//! answer of every HTTP attempt, under three retry policies a real client base has:
//!
//! - [`Policy::SameId`]: any answer that is not a decision (503, nginx's 502/504, a dropped
//!   connection) is retried with the SAME id and payload, with a short back-off, until a
//!   decision or a time bound (running out of time is a finding);
//! - [`Policy::GiveUp`]: stops at the first answer, whatever it is (a 503 included);
//! - [`Policy::NewId`]: retries `unavailable` with the same id, but after an unknown outcome
//!   sends the same payload again under a NEW id (a client that read the 503 as "failed").
//!   Both ids may then have an effect; `scoring` allows for that.
//!
//! Every attempt's answer is kept, because each one is a promise that `scoring` checks against
//! the final records.
//!
//! Amounts are integer cents. Withdraw_request amounts end in .37, or in .73 for the requests
//! of an implicit approve-and-capture pair (then unique per seed), and plain withdraws end in
//! neither: the worker lets a withdraw without `requestId` capture any open hold of the same
//! amount, so only the pair's own withdraw can ever capture a .73 hold, and never a .37 one.

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use tally_testkit::rng::Rng;

/// Cents of every plain withdraw_request amount.
const REQUEST_CENTS: i64 = 37;
/// Cents of the withdraw_requests (and withdraws) of implicit approve-and-capture pairs.
const PAIR_CENTS: i64 = 73;
/// A single HTTP attempt above this is a hang, not an answer (reported). The longest honest
/// answer: a replica spends at most the publish timeout plus the settle timeout on a command
/// (a withdraw_request: its deadline plus the settle timeout of its void) before answering
/// 503, and nginx may then try one more replica, which starts over.
pub const SLOW_ATTEMPT: Duration = Duration::from_millis(
    2 * (crate::cluster::PUBLISH_TIMEOUT.as_millis() as u64
        + crate::cluster::SETTLE_TIMEOUT.as_millis() as u64)
        + 1000,
);
/// How many new ids a [`Policy::NewId`] client tries for one payload.
const NEW_ID_TRIES: usize = 3;

// The ledger's own command kinds: the checker speaks the API's vocabulary.
pub use tally_core::Kind;

/// One command a client sends (and may send again, identically).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: String,
    pub kind: Kind,
    pub account: String,
    pub cents: i64,
    /// For a withdraw that captures the hold of this withdraw_request.
    pub request_id: Option<String>,
}

/// `cents` as the decimal text the API parses exactly (`1234` → `12.34`).
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

impl Command {
    /// The JSON body; built once per command so that every retry is byte-identical.
    pub fn body(&self) -> String {
        let request = self
            .request_id
            .as_ref()
            .map(|r| format!(r#","requestId":"{r}""#))
            .unwrap_or_default();
        format!(
            r#"{{"id":"{}","type":"{}","amount":{},"accountId":"{}"{request}}}"#,
            self.id,
            self.kind.as_str(),
            money(self.cents),
            self.account
        )
    }

    /// `kind amount on account` for reports.
    pub fn describe(&self) -> String {
        let request = self
            .request_id
            .as_ref()
            .map(|r| format!(" capturing {r}"))
            .unwrap_or_default();
        format!(
            "{} {} on {}{request}",
            self.kind.as_str(),
            money(self.cents),
            self.account
        )
    }
}

/// What one HTTP attempt was answered, by what it promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200: deposit or withdraw accepted: exactly one record with this payload at the end.
    Accepted,
    /// 201: withdraw_request approved with this hold.
    Approved { hold_id: String },
    /// 402: withdraw_request denied: recorded denied, no hold of it open.
    Denied { reason: String },
    /// 422 `id_reused`: nothing was done for this payload.
    IdReused,
    /// 503 `unavailable` (or nginx's 429 `rate_limited`): surely not accepted.
    NotAccepted { code: String, message: String },
    /// 503 `outcome_unknown`, nginx's 502/504, a 503 without tally's error body, a dropped
    /// connection or a timeout: it may or may not have been accepted.
    Unknown { why: String },
    /// Anything else (a finding).
    Unexpected { status: u16, body: String },
}

impl Answer {
    /// A decision: what the ledger did (or will do) with this id.
    pub fn decided(&self) -> bool {
        matches!(
            self,
            Answer::Accepted | Answer::Approved { .. } | Answer::Denied { .. }
        )
    }

    /// Whether this attempt may have put the command into the broker. Only a "surely not
    /// accepted" answer and a refusal of the payload say it did not.
    pub fn may_have_been_accepted(&self) -> bool {
        !matches!(self, Answer::NotAccepted { .. } | Answer::IdReused)
    }

    pub fn short(&self) -> String {
        match self {
            Answer::Accepted => "200 accepted".into(),
            Answer::Approved { hold_id } => format!("201 approved hold {hold_id}"),
            Answer::Denied { reason } => format!("402 denied ({reason})"),
            Answer::IdReused => "422 id_reused".into(),
            Answer::NotAccepted { code, message } => format!("{code} ({message})"),
            Answer::Unknown { why } => format!("unknown ({why})"),
            Answer::Unexpected { status, body } => format!("{status} {body}"),
        }
    }

    /// Same decision: same status, same hold. A denial's reason may legitimately be worded
    /// from the record rather than the first decision, so only "denied" is compared.
    pub fn same_decision(&self, other: &Answer) -> bool {
        match (self, other) {
            (Answer::Denied { .. }, Answer::Denied { .. }) => true,
            _ => self == other,
        }
    }
}

/// How a client treats answers that are not decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    SameId,
    GiveUp,
    NewId,
}

impl Policy {
    /// Client `number`'s policy: the clients of a seed are spread over all three.
    pub fn of_client(number: u64) -> Self {
        match number % 3 {
            0 => Policy::SameId,
            1 => Policy::GiveUp,
            _ => Policy::NewId,
        }
    }
}

/// Why a command was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Fresh,
    /// The id of an answered command, sent again with the same payload.
    Repeat,
    /// A second copy sent while the first was in flight.
    Concurrent,
    /// An answered id sent again with another payload (must be refused: 422).
    Conflict,
    /// The payload of this id, sent again under a new id after an unknown outcome.
    NewIdFor(String),
    /// Sent by the fault injector to see a shard flow.
    Canary,
}

/// One HTTP attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it was sent, from the start of the load.
    pub at: Duration,
    pub took: Duration,
    /// HTTP status, or "conn".
    pub code: String,
    pub answer: Answer,
}

/// A command and every attempt made for it (at least one).
#[derive(Debug, Clone)]
pub struct Op {
    pub cmd: Command,
    pub policy: Policy,
    pub origin: Origin,
    pub attempts: Vec<Attempt>,
    /// The policy wanted a decision but the time bound ran out first.
    pub out_of_time: bool,
}

impl Op {
    /// The last answer: the one the client acted on.
    pub fn answer(&self) -> &Answer {
        &self.attempts[self.attempts.len() - 1].answer
    }

    /// Every attempt: start offset, HTTP status (or "conn"), duration.
    pub fn trail(&self) -> String {
        self.attempts
            .iter()
            .map(|a| {
                format!(
                    "+{:.2}s {} in {:.2}s",
                    a.at.as_secs_f64(),
                    a.code,
                    a.took.as_secs_f64()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Counters over every HTTP attempt.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub attempts: u64,
    /// Answers that promise "not accepted".
    pub not_accepted: u64,
    /// Answers that say the outcome is unknown (connection errors included).
    pub unknown: u64,
    pub connection_errors: u64,
    pub slowest: Duration,
    /// Attempts that took longer than [`SLOW_ATTEMPT`], with what they ended in.
    pub slow: Vec<String>,
}

impl Stats {
    pub fn absorb(&mut self, other: Stats) {
        self.attempts += other.attempts;
        self.not_accepted += other.not_accepted;
        self.unknown += other.unknown;
        self.connection_errors += other.connection_errors;
        self.slowest = self.slowest.max(other.slowest);
        self.slow.extend(other.slow);
    }
}

/// Everything one client saw.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub ops: Vec<Op>,
    pub stats: Stats,
}

/// Switches the fault injector flips for the clients.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Set when the load phase ends: no new command is started after that.
    pub stop: AtomicBool,
    /// Set while the workers restart: most commands are approve-and-capture pairs, so that
    /// they pile up in the shard queues and land together in the first (cold) batches.
    pub pairs: AtomicBool,
}

/// The HTTP side of a client: nginx's address and the time bound of one command.
pub struct Http {
    pub client: reqwest::Client,
    pub base: String,
    /// Bound on getting a decision for one command (all its ids and attempts).
    pub op_timeout: Duration,
    pub t0: Instant,
}

impl Http {
    pub fn new(base: &str, op_timeout: Duration, t0: Instant) -> anyhow::Result<Self> {
        Ok(Self {
            // Above nginx's own bounds (10 s read, 15 s failover), so nginx answers first.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .pool_max_idle_per_host(64)
                .build()?,
            base: base.to_string(),
            op_timeout,
            t0,
        })
    }

    /// One POST of `cmd`, classified.
    async fn attempt(&self, cmd: &Command, body: &str, stats: &mut Stats) -> Attempt {
        stats.attempts += 1;
        let started = Instant::now();
        let at = self.t0.elapsed();
        let result = self
            .client
            .post(format!("{}/transaction", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let (code, answer) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                (status.to_string(), classify(status, &text))
            }
            Err(e) => {
                stats.connection_errors += 1;
                (
                    "conn".to_string(),
                    Answer::Unknown {
                        why: format!("connection: {e}"),
                    },
                )
            }
        };
        match &answer {
            Answer::NotAccepted { .. } => stats.not_accepted += 1,
            Answer::Unknown { .. } => stats.unknown += 1,
            _ => {}
        }
        let took = started.elapsed();
        stats.slowest = stats.slowest.max(took);
        if took > SLOW_ATTEMPT {
            stats.slow.push(format!(
                "{} took {:.1}s at +{:.1}s: {}",
                cmd.id,
                took.as_secs_f64(),
                at.as_secs_f64(),
                answer.short()
            ));
        }
        Attempt {
            at,
            took,
            code,
            answer,
        }
    }

    /// Sends `cmd` under `policy` until the policy is satisfied or `deadline` passes; never
    /// changes the id (see [`Client::send`] for the new-id retries).
    pub async fn submit(
        &self,
        cmd: &Command,
        policy: Policy,
        origin: Origin,
        deadline: Instant,
        stats: &mut Stats,
    ) -> Op {
        let body = cmd.body();
        let mut backoff = Duration::from_millis(50);
        let mut attempts = Vec::new();
        loop {
            let attempt = self.attempt(cmd, &body, stats).await;
            let again = match (&attempt.answer, policy) {
                (_, Policy::GiveUp) => false,
                (Answer::NotAccepted { .. }, _) => true,
                (Answer::Unknown { .. }, Policy::SameId) => true,
                _ => false,
            };
            attempts.push(attempt);
            let out_of_time = again && Instant::now() + backoff >= deadline;
            if !again || out_of_time {
                return Op {
                    cmd: cmd.clone(),
                    policy,
                    origin,
                    attempts,
                    out_of_time,
                };
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// A command of the fault injector: sent until decided, like a [`Policy::SameId`] client.
    pub async fn canary(&self, cmd: &Command, stats: &mut Stats) -> Op {
        let deadline = Instant::now() + self.op_timeout;
        self.submit(cmd, Policy::SameId, Origin::Canary, deadline, stats)
            .await
    }

    /// GET returning (status, JSON or Null).
    pub async fn get_json(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

/// What an HTTP answer promises (see [`Answer`]).
fn classify(status: u16, text: &str) -> Answer {
    let json: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let field = |name: &str| json.get(name).and_then(Value::as_str).map(str::to_string);
    let error = |name: &str| {
        json.get("error")
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let unexpected = || Answer::Unexpected {
        status,
        body: text.chars().take(200).collect(),
    };
    match (status, error("code").as_deref()) {
        (200, _) => Answer::Accepted,
        (201, _) => match field("holdId") {
            Some(hold_id) => Answer::Approved { hold_id },
            None => unexpected(),
        },
        (402, _) => Answer::Denied {
            reason: field("reason").unwrap_or_default(),
        },
        (422, Some("id_reused")) => Answer::IdReused,
        (503, Some(code @ "unavailable")) | (429, Some(code @ "rate_limited")) => {
            Answer::NotAccepted {
                code: format!("{status} {code}"),
                message: error("message").unwrap_or_default(),
            }
        }
        (503, Some("outcome_unknown")) => Answer::Unknown {
            why: "503 outcome_unknown".into(),
        },
        // nginx's own answers, or a 503 that makes no promise.
        (502 | 504, _) | (503, None) => Answer::Unknown {
            why: format!("{status}"),
        },
        _ => unexpected(),
    }
}

/// One virtual client's workload, decided by its own random stream.
pub struct Client {
    pub http: Arc<Http>,
    pub seed: u64,
    pub number: u64,
    pub clients: u64,
    pub accounts: Arc<Vec<String>>,
    pub traffic: Arc<Traffic>,
}

/// A client's running state: its random stream, id counter and log.
struct Run {
    rng: Rng,
    ids: u64,
    pairs: u64,
    log: ClientLog,
}

impl Client {
    fn policy(&self) -> Policy {
        Policy::of_client(self.number)
    }

    fn next_id(&self, run: &mut Run) -> String {
        run.ids += 1;
        format!("s{}-c{}-{}", self.seed, self.number, run.ids)
    }

    pub async fn run(self) -> ClientLog {
        let mut run = Run {
            rng: Rng::stream(self.seed, 1000 + self.number),
            ids: 0,
            pairs: 0,
            log: ClientLog::default(),
        };
        while !self.traffic.stop.load(Ordering::Relaxed) {
            let account = self.accounts[run.rng.below(self.accounts.len() as u64) as usize].clone();
            let boost = self.traffic.pairs.load(Ordering::Relaxed);
            let roll = run.rng.below(100);
            if boost && roll < 60 {
                self.pair(&mut run, account).await;
            } else if roll < 8 {
                self.repeat(&mut run).await;
            } else if roll < 10 {
                self.conflict(&mut run).await;
            } else if roll < 14 {
                self.concurrent(&mut run, account).await;
            } else if roll < 24 {
                self.pair(&mut run, account).await;
            } else if roll < 50 {
                let cmd = self.command(&mut run, Kind::Deposit, account);
                self.send(&mut run, cmd, Origin::Fresh).await;
            } else if roll < 72 {
                let cmd = self.command(&mut run, Kind::Withdraw, account);
                self.send(&mut run, cmd, Origin::Fresh).await;
            } else {
                let cmd = self.command(&mut run, Kind::WithdrawRequest, account);
                let decided = self.send(&mut run, cmd, Origin::Fresh).await;
                // Most approved requests are followed by the withdraw that captures the hold;
                // the rest stay open, so `held` is checked too.
                if let Some((request, Answer::Approved { .. })) = decided {
                    if run.rng.percent(75) {
                        let capture = Command {
                            id: self.next_id(&mut run),
                            kind: Kind::Withdraw,
                            request_id: Some(request.id.clone()),
                            ..request
                        };
                        self.send(&mut run, capture, Origin::Fresh).await;
                    }
                }
            }
            // A little think time: keeps 2 cores from being saturated by the clients alone.
            tokio::time::sleep(Duration::from_millis(run.rng.below(4))).await;
        }
        run.log
    }

    /// Sends `cmd` under this client's policy; a [`Policy::NewId`] client sends the payload
    /// again under new ids after unknown outcomes. Returns the command that was decided and
    /// its decision, if one was.
    async fn send(&self, run: &mut Run, cmd: Command, origin: Origin) -> Option<(Command, Answer)> {
        let policy = self.policy();
        let deadline = Instant::now() + self.http.op_timeout;
        let mut cmd = cmd;
        let mut origin = origin;
        for _ in 0..NEW_ID_TRIES {
            let op = self
                .http
                .submit(&cmd, policy, origin, deadline, &mut run.log.stats)
                .await;
            let answer = op.answer().clone();
            let retry = policy == Policy::NewId
                && matches!(answer, Answer::Unknown { .. })
                && !op.out_of_time;
            run.log.ops.push(op);
            if answer.decided() {
                return Some((cmd, answer));
            }
            if !retry {
                return None;
            }
            origin = Origin::NewIdFor(cmd.id.clone());
            cmd.id = self.next_id(run);
        }
        None
    }

    /// A deliberate duplicate of a decided id, same payload: must get the same decision.
    async fn repeat(&self, run: &mut Run) {
        let decided: Vec<&Op> = run
            .log
            .ops
            .iter()
            .filter(|o| o.answer().decided())
            .collect();
        if decided.is_empty() {
            return;
        }
        let cmd = decided[run.rng.below(decided.len() as u64) as usize]
            .cmd
            .clone();
        self.send_same_id(run, cmd, Origin::Repeat).await;
    }

    /// A decided withdraw_request's id reused with another amount: the record is there, so
    /// the answer must be 422 (or no promise at all), never a decision for this payload.
    async fn conflict(&self, run: &mut Run) {
        let decided: Vec<&Op> = run
            .log
            .ops
            .iter()
            .filter(|o| o.cmd.kind == Kind::WithdrawRequest && o.answer().decided())
            .collect();
        if decided.is_empty() {
            return;
        }
        let mut cmd = decided[run.rng.below(decided.len() as u64) as usize]
            .cmd
            .clone();
        cmd.cents += 100;
        self.send_same_id(run, cmd, Origin::Conflict).await;
    }

    /// Sends an id that is not new under this client's policy, but never under a new id: a
    /// new id would be a new command, not the repeat being tested.
    async fn send_same_id(&self, run: &mut Run, cmd: Command, origin: Origin) {
        let policy = match self.policy() {
            Policy::NewId => Policy::SameId,
            p => p,
        };
        let deadline = Instant::now() + self.http.op_timeout;
        let op = self
            .http
            .submit(&cmd, policy, origin, deadline, &mut run.log.stats)
            .await;
        run.log.ops.push(op);
    }

    /// Two copies of a new command in flight at once (an impatient client).
    async fn concurrent(&self, run: &mut Run, account: String) {
        let kind = if run.rng.percent(50) {
            Kind::Deposit
        } else {
            Kind::WithdrawRequest
        };
        let cmd = self.command(run, kind, account);
        let policy = match self.policy() {
            Policy::NewId => Policy::SameId,
            p => p,
        };
        let deadline = Instant::now() + self.http.op_timeout;
        let mut other = Stats::default();
        let (a, b) = tokio::join!(
            self.http
                .submit(&cmd, policy, Origin::Fresh, deadline, &mut run.log.stats),
            self.http
                .submit(&cmd, policy, Origin::Concurrent, deadline, &mut other)
        );
        run.log.stats.absorb(other);
        run.log.ops.push(a);
        run.log.ops.push(b);
    }

    /// A deposit that funds it, then a withdraw_request and, without waiting for its answer,
    /// the withdraw that captures it: by `requestId`, or (implicit pair) by a same amount that
    /// no other command on the seed uses. When the shard's worker is busy or down both wait
    /// in the queue and are applied in one batch. The withdraw may also overtake the request:
    /// `replay` finds out from the records which order the ledger applied them in.
    async fn pair(&self, run: &mut Run, account: String) {
        let explicit = run.rng.percent(60);
        let cents = if explicit {
            run.rng.range(1, 200) as i64 * 100 + REQUEST_CENTS
        } else {
            run.pairs += 1;
            // Unique among the seed's clients: dollars = pair number × clients + client.
            ((run.pairs * self.clients + self.number) as i64 + 1) * 100 + PAIR_CENTS
        };
        // The pair's withdraw is applied even if its request is denied: without the deposit,
        // pairs would drain the accounts until every request is denied.
        let funding = Command {
            cents: cents + run.rng.range(0, 10_000) as i64,
            ..self.command(run, Kind::Deposit, account.clone())
        };
        self.send(run, funding, Origin::Fresh).await;
        let request = Command {
            id: self.next_id(run),
            kind: Kind::WithdrawRequest,
            account,
            cents,
            request_id: None,
        };
        let capture = Command {
            id: self.next_id(run),
            kind: Kind::Withdraw,
            request_id: explicit.then(|| request.id.clone()),
            ..request.clone()
        };
        let gap = Duration::from_millis(run.rng.below(20));
        let policy = self.policy();
        let deadline = Instant::now() + self.http.op_timeout;
        let mut other = Stats::default();
        let (a, b) = tokio::join!(
            self.http.submit(
                &request,
                policy,
                Origin::Fresh,
                deadline,
                &mut run.log.stats
            ),
            async {
                tokio::time::sleep(gap).await;
                self.http
                    .submit(&capture, policy, Origin::Fresh, deadline, &mut other)
                    .await
            }
        );
        run.log.stats.absorb(other);
        run.log.ops.push(a);
        run.log.ops.push(b);
    }

    fn command(&self, run: &mut Run, kind: Kind, account: String) -> Command {
        let rng = &mut run.rng;
        let cents = match kind {
            Kind::Deposit => rng.range(100, 50_000) as i64,
            Kind::Withdraw => {
                let c = rng.range(100, 10_000) as i64;
                if c % 100 == REQUEST_CENTS || c % 100 == PAIR_CENTS {
                    c + 1
                } else {
                    c
                }
            }
            Kind::WithdrawRequest => rng.range(1, 200) as i64 * 100 + REQUEST_CENTS,
        };
        Command {
            id: self.next_id(run),
            kind,
            account,
            cents,
            request_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_exact_and_stable() {
        let cmd = Command {
            id: "s1-c2-3".into(),
            kind: Kind::Withdraw,
            account: "acct-4".into(),
            cents: 1205,
            request_id: Some("s1-c2-2".into()),
        };
        assert_eq!(
            cmd.body(),
            r#"{"id":"s1-c2-3","type":"withdraw","amount":12.05,"accountId":"acct-4","requestId":"s1-c2-2"}"#
        );
        assert_eq!(money(-7), "-0.07");
    }

    #[test]
    fn answers_are_read_by_what_they_promise() {
        let unavailable = r#"{"error":{"code":"unavailable","message":"nothing was accepted"}}"#;
        let unknown = r#"{"error":{"code":"outcome_unknown","message":"may have been accepted"}}"#;
        assert!(matches!(
            classify(503, unavailable),
            Answer::NotAccepted { .. }
        ));
        assert!(matches!(classify(503, unknown), Answer::Unknown { .. }));
        // nginx's own pages and a 503 without tally's body make no promise.
        assert!(matches!(classify(502, "<html>"), Answer::Unknown { .. }));
        assert!(matches!(classify(504, ""), Answer::Unknown { .. }));
        assert!(matches!(classify(503, "<html>"), Answer::Unknown { .. }));
        assert!(matches!(
            classify(429, r#"{"error":{"code":"rate_limited"}}"#),
            Answer::NotAccepted { .. }
        ));
        assert_eq!(classify(200, "{}"), Answer::Accepted);
        assert_eq!(
            classify(201, r#"{"holdId":"h"}"#),
            Answer::Approved {
                hold_id: "h".into()
            }
        );
        assert_eq!(
            classify(422, r#"{"error":{"code":"id_reused"}}"#),
            Answer::IdReused
        );
        assert!(matches!(
            classify(422, r#"{"error":{"code":"account_owned_by_another_user"}}"#),
            Answer::Unexpected { status: 422, .. }
        ));
        assert!(matches!(
            classify(500, "{}"),
            Answer::Unexpected { status: 500, .. }
        ));
    }

    #[test]
    fn only_not_accepted_and_id_reused_rule_out_an_effect() {
        assert!(!classify(503, r#"{"error":{"code":"unavailable"}}"#).may_have_been_accepted());
        assert!(!Answer::IdReused.may_have_been_accepted());
        assert!(classify(504, "").may_have_been_accepted());
        assert!(classify(500, "").may_have_been_accepted());
        assert!(Answer::Accepted.may_have_been_accepted());
    }

    #[test]
    fn every_policy_is_used_by_eight_clients() {
        let policies: Vec<Policy> = (0..8).map(Policy::of_client).collect();
        for p in [Policy::SameId, Policy::GiveUp, Policy::NewId] {
            assert!(policies.contains(&p), "{p:?} missing");
        }
    }
}
