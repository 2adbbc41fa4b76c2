//! The client model: virtual clients that drive a mixed workload through nginx and record
//! every answer, and the retry rule a careful client follows.
//!
//! The rule: 502/503/504, a connection error or a timeout is "no decision yet", so the client
//! sends the SAME id and payload again (idempotent by id) with a short back-off until it gets
//! a definitive answer (200/201/402, or another 4xx which is a finding), bounded per command.
//! Whatever comes back is recorded; `checks` later compares the ledger with these records.
//!
//! Amounts are integer cents. Withdraw_request amounts always end in .37 and plain withdraws
//! never do: the worker lets a plain withdraw capture any open hold of the same amount, which
//! would make the expected holds depend on timing; with disjoint amounts only the explicit
//! capture (`requestId`) ever closes a hold.

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use tally_tools::rng::Rng;

/// Cents of every withdraw_request amount (and only of those).
const REQUEST_CENTS: i64 = 37;
/// A single HTTP attempt above this is a hang, not an answer (reported).
pub const SLOW_ATTEMPT: Duration = Duration::from_secs(5);

// The ledger's own command kinds: the checker speaks the API's vocabulary.
pub use tally_core::Kind;

/// One command a client sends (and may send again, identically).
#[derive(Debug, Clone)]
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
}

/// What the system finally answered for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200: deposit or withdraw accepted.
    Accepted,
    /// 201: withdraw_request approved with this hold.
    Approved { hold_id: String },
    /// 402: withdraw_request denied.
    Denied { reason: String },
    /// Any other status that is not "try again" (a finding).
    Unexpected { status: u16, body: String },
    /// No definitive answer before the per-command bound (a finding).
    Undetermined { last: String },
}

impl Answer {
    pub fn definitive(&self) -> bool {
        matches!(
            self,
            Answer::Accepted | Answer::Approved { .. } | Answer::Denied { .. }
        )
    }

    pub fn short(&self) -> String {
        match self {
            Answer::Accepted => "200 accepted".into(),
            Answer::Approved { hold_id } => format!("201 approved hold {hold_id}"),
            Answer::Denied { reason } => format!("402 denied ({reason})"),
            Answer::Unexpected { status, body } => format!("{status} {body}"),
            Answer::Undetermined { last } => format!("no answer ({last})"),
        }
    }

    /// Same outcome for a repeat of the same id: same status, same hold. A denial's reason
    /// may legitimately be worded from the record rather than the first decision, so only
    /// "denied" is compared.
    pub fn same_outcome(&self, other: &Answer) -> bool {
        match (self, other) {
            (Answer::Denied { .. }, Answer::Denied { .. }) => true,
            _ => self == other,
        }
    }
}

/// A command and its final answer.
#[derive(Debug, Clone)]
pub struct Op {
    pub cmd: Command,
    pub answer: Answer,
    /// HTTP attempts it took (1 = answered at once).
    pub attempts: u32,
    /// When the first attempt was sent, from the start of the load.
    pub sent: Duration,
    /// Every attempt: start offset, HTTP status (or "conn"), duration.
    pub trail: String,
}

/// An id sent again after (or while) it was answered, and what came back each time.
#[derive(Debug, Clone)]
pub struct Repeat {
    pub id: String,
    pub first: Answer,
    pub again: Answer,
    /// The attempts of both sends (see [`Op::trail`]).
    pub trails: (String, String),
    /// Both copies were in flight at once (a client that timed out and retried early).
    pub concurrent: bool,
}

/// Counters over every HTTP attempt.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub attempts: u64,
    /// 502/503/504 answers (each followed by a retry).
    pub unavailable: u64,
    pub connection_errors: u64,
    pub slowest: Duration,
    /// Attempts that took longer than [`SLOW_ATTEMPT`], with what they ended in.
    pub slow: Vec<String>,
}

impl Stats {
    pub fn absorb(&mut self, other: Stats) {
        self.attempts += other.attempts;
        self.unavailable += other.unavailable;
        self.connection_errors += other.connection_errors;
        self.slowest = self.slowest.max(other.slowest);
        self.slow.extend(other.slow);
    }
}

/// Everything one client saw.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub ops: Vec<Op>,
    pub repeats: Vec<Repeat>,
    pub stats: Stats,
}

/// The HTTP side of a client: nginx's address and the retry rule.
pub struct Http {
    pub client: reqwest::Client,
    pub base: String,
    /// Bound on getting a definitive answer for one command.
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

    /// Sends `cmd` until a definitive answer or the bound; never gives up on "try again".
    pub async fn submit(&self, cmd: &Command, stats: &mut Stats) -> Op {
        let sent = self.t0.elapsed();
        let body = cmd.body();
        let deadline = Instant::now() + self.op_timeout;
        let mut backoff = Duration::from_millis(50);
        let mut attempts = 0;
        let mut trail = Vec::new();
        loop {
            attempts += 1;
            stats.attempts += 1;
            let started = Instant::now();
            let offset = self.t0.elapsed();
            let mut code = "conn".to_string();
            let result = self
                .client
                .post(format!("{}/transaction", self.base))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let answer = match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    code = status.to_string();
                    let text = response.text().await.unwrap_or_default();
                    classify(status, &text)
                }
                Err(e) => {
                    stats.connection_errors += 1;
                    Err(format!("connection: {e}"))
                }
            };
            let took = started.elapsed();
            trail.push(format!(
                "+{:.2}s {code} in {:.2}s",
                offset.as_secs_f64(),
                took.as_secs_f64()
            ));
            stats.slowest = stats.slowest.max(took);
            if took > SLOW_ATTEMPT {
                let what = match &answer {
                    Ok(a) => a.short(),
                    Err(e) => e.clone(),
                };
                stats.slow.push(format!(
                    "{} took {:.1}s at +{:.1}s: {what}",
                    cmd.id,
                    took.as_secs_f64(),
                    (self.t0.elapsed() - took).as_secs_f64()
                ));
            }
            match answer {
                Ok(answer) => {
                    return Op {
                        cmd: cmd.clone(),
                        answer,
                        attempts,
                        sent,
                        trail: trail.join(", "),
                    };
                }
                Err(last) => {
                    if last.starts_with("50") {
                        stats.unavailable += 1;
                    }
                    if Instant::now() + backoff >= deadline {
                        return Op {
                            cmd: cmd.clone(),
                            answer: Answer::Undetermined { last },
                            attempts,
                            sent,
                            trail: trail.join(", "),
                        };
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
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

/// Ok(answer) when definitive, Err(why) when the client should try again.
fn classify(status: u16, text: &str) -> Result<Answer, String> {
    let json: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let field = |name: &str| json.get(name).and_then(Value::as_str).map(str::to_string);
    match status {
        200 => Ok(Answer::Accepted),
        201 => match field("holdId") {
            Some(hold_id) => Ok(Answer::Approved { hold_id }),
            None => Ok(Answer::Unexpected {
                status,
                body: text.to_string(),
            }),
        },
        402 => Ok(Answer::Denied {
            reason: field("reason").unwrap_or_default(),
        }),
        502..=504 => Err(format!("{status}")),
        _ => Ok(Answer::Unexpected {
            status,
            body: text.chars().take(200).collect(),
        }),
    }
}

/// One virtual client's workload, decided by its own random stream.
pub struct Client {
    pub http: Arc<Http>,
    pub seed: u64,
    pub number: u64,
    pub accounts: Arc<Vec<String>>,
    /// Set when the load phase ends: no new command is started after that.
    pub stop: Arc<AtomicBool>,
}

impl Client {
    pub async fn run(self) -> ClientLog {
        let mut rng = Rng::stream(self.seed, 1000 + self.number);
        let mut log = ClientLog::default();
        let mut n = 0u64;
        let mut next_id = || {
            n += 1;
            format!("s{}-c{}-{n}", self.seed, self.number)
        };
        while !self.stop.load(Ordering::Relaxed) {
            let account = self.accounts[rng.below(self.accounts.len() as u64) as usize].clone();
            let roll = rng.below(100);
            if roll < 8 && !log.ops.is_empty() {
                // Deliberate duplicate of an answered id, same payload: must be the same outcome.
                let old = log.ops[rng.below(log.ops.len() as u64) as usize].clone();
                if old.answer.definitive() {
                    let again = self.http.submit(&old.cmd, &mut log.stats).await;
                    log.repeats.push(Repeat {
                        id: old.cmd.id.clone(),
                        first: old.answer,
                        again: again.answer,
                        trails: (old.trail, again.trail),
                        concurrent: false,
                    });
                }
            } else if roll < 12 {
                // Two copies of a new command in flight at once (an impatient client).
                let kind = if rng.percent(50) {
                    Kind::Deposit
                } else {
                    Kind::WithdrawRequest
                };
                let cmd = self.command(&mut rng, next_id(), kind, account);
                let mut other = Stats::default();
                let (a, b) = {
                    let first = self.http.submit(&cmd, &mut log.stats);
                    let second = self.http.submit(&cmd, &mut other);
                    tokio::join!(first, second)
                };
                log.stats.absorb(other);
                log.repeats.push(Repeat {
                    id: cmd.id.clone(),
                    first: a.answer.clone(),
                    again: b.answer,
                    trails: (a.trail.clone(), b.trail),
                    concurrent: true,
                });
                log.ops.push(a);
            } else if roll < 45 {
                let cmd = self.command(&mut rng, next_id(), Kind::Deposit, account);
                log.ops.push(self.http.submit(&cmd, &mut log.stats).await);
            } else if roll < 70 {
                let cmd = self.command(&mut rng, next_id(), Kind::Withdraw, account);
                log.ops.push(self.http.submit(&cmd, &mut log.stats).await);
            } else {
                let cmd = self.command(&mut rng, next_id(), Kind::WithdrawRequest, account);
                let op = self.http.submit(&cmd, &mut log.stats).await;
                let approved = matches!(op.answer, Answer::Approved { .. });
                log.ops.push(op);
                // Most approved requests are followed by the withdraw that captures the hold;
                // the rest stay open, so `held` is checked too.
                if approved && rng.percent(75) {
                    let capture = Command {
                        id: next_id(),
                        kind: Kind::Withdraw,
                        request_id: Some(cmd.id.clone()),
                        ..cmd
                    };
                    log.ops
                        .push(self.http.submit(&capture, &mut log.stats).await);
                }
            }
            // A little think time: keeps 2 cores from being saturated by the clients alone.
            tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
        }
        log
    }

    fn command(&self, rng: &mut Rng, id: String, kind: Kind, account: String) -> Command {
        let cents = match kind {
            Kind::Deposit => rng.range(100, 50_000) as i64,
            Kind::Withdraw => {
                let c = rng.range(100, 10_000) as i64;
                if c % 100 == REQUEST_CENTS {
                    c + 1
                } else {
                    c
                }
            }
            Kind::WithdrawRequest => rng.range(1, 200) as i64 * 100 + REQUEST_CENTS,
        };
        Command {
            id,
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
    fn try_again_answers_are_not_decisions() {
        assert!(classify(503, "").is_err());
        assert!(classify(502, "").is_err());
        assert_eq!(classify(200, "{}"), Ok(Answer::Accepted));
        assert_eq!(
            classify(201, r#"{"holdId":"h"}"#),
            Ok(Answer::Approved {
                hold_id: "h".into()
            })
        );
        assert!(matches!(
            classify(422, "{}"),
            Ok(Answer::Unexpected { status: 422, .. })
        ));
    }
}
