//! The write protocol behind `POST /transaction`: [`submit`] takes a validated command to the
//! ledger and returns the [`Answer`] it may get. Every answer is a promise about the final
//! record (README, "What an answer promises"):
//!
//! - [`Answer::Accepted`] / [`Answer::Replayed`] (200, deposit and withdraw): a copy is in the
//!   shard queue (confirmed by the broker, perhaps after republishing it to settle an unknown
//!   outcome), or already recorded; it is decided once.
//! - [`Answer::Approved`] / [`Answer::Denied`] (201 / 402, withdraw_request): the record is and
//!   stays approved / denied.
//! - [`Answer::Unavailable`] (503 `unavailable`): surely nothing reached a queue (see
//!   [`tally_bus::PublishError::surely_not_accepted`]); no effect, ever.
//! - [`Answer::OutcomeUnknown`] (503 `outcome_unknown`): it may be in a queue; a retry with the
//!   same id, or `GET /transactions/{id}`, tells the truth.
//! - [`Answer::Decided`] (200 with `Preference-Applied: wait`, a deposit or withdraw whose
//!   client sent `Prefer: wait`): the record itself, read from the ledger (never built from a
//!   reply), so it says exactly what the record says: a deposit's or withdraw's record is final
//!   once committed. The worker's reply to the attempt's own copy only says when to read it,
//!   or, when it says `id_reused`, answers 422: the id is recorded with another payload, and
//!   this copy was recorded as a conflict without effect. Without a decision in time, the
//!   answer is the ordinary 200 `accepted` (the copy is in the queue, settled as usual).
//!
//! The withdraw_request rules that keep its first answer final ([`Attempt`] applies them to
//! what an attempt observed; the async functions only publish, wait and read):
//! - 201 only from the worker's reply to this attempt's own copy, which the queue orders behind
//!   every void confirmed before it was published, or from a record this very attempt's copy
//!   decided. An approval read from the database that another attempt decided may still be
//!   voided by that attempt: it is never answered 201 from the read.
//! - 402 from any denied record or reply: nothing turns a denial into an approval.
//! - With no decision by the deadline, the attempt voids itself: the void is confirmed by the
//!   broker before the 402 `deadline_exceeded` goes out, and the worker then records the denial
//!   (releasing the hold of a late approval). An attempt that saw the request approved never
//!   voids it (another attempt may have answered 201): it answers `outcome_unknown` instead.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::time::Duration;
use tally_bus::{command_properties, PublishError, Topology};
use tally_core::command::NewTransaction;
use tally_core::ledger::VOIDED_REASON;
use tally_core::{Envelope, Kind, Outcome, OutcomeStatus, Reason};
use tally_store::reads::TransactionRecord;
use tokio::time::Instant;
use uuid::Uuid;

use crate::state::AppState;

/// What `POST /transaction` answers, each a promise about the final record (module doc).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 200 `accepted`: the deposit or withdraw is surely in its shard queue.
    Accepted(Receipt),
    /// 200 `accepted`: a retry of a recorded deposit or withdraw, answered from its record
    /// without publishing again.
    Replayed(Receipt),
    /// 201: the withdraw_request is and stays approved; `hold_id` is its hold.
    Approved(Decision),
    /// 402: the withdraw_request is and stays denied, for `reason`.
    Denied(Decision),
    /// 422 `id_reused`: the id is recorded with another payload.
    IdReused,
    /// 422 `account_owned_by_another_user`: the command's `userId` does not own the account.
    OwnedByAnother,
    /// 503 `unavailable`: surely nothing was accepted.
    Unavailable(&'static str),
    /// 503 `outcome_unknown`: the command may have been accepted.
    OutcomeUnknown(&'static str),
    /// 200 with `Preference-Applied: wait`: the deposit or withdraw is decided, and this is
    /// its record (status `applied` or `rejected`).
    Decided(Box<TransactionRecord>),
}

/// What a 200 says of a deposit or withdraw.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub id: String,
    pub account_id: String,
    pub kind: Kind,
    pub amount: Decimal,
    /// The envelope's time (to the microsecond, like the record's): a replayed answer shows
    /// the same instant.
    pub accepted_at: DateTime<Utc>,
}

impl Receipt {
    /// The receipt of an envelope this attempt published.
    fn of(envelope: Envelope) -> Self {
        Self {
            id: envelope.id,
            account_id: envelope.account_id,
            kind: envelope.kind,
            amount: envelope.amount,
            accepted_at: envelope.accepted_at,
        }
    }
}

/// What a 201 or 402 says of a withdraw_request: the hold of an approval, the reason of a
/// denial (a denied request holds nothing, even when a late approval's released hold is linked
/// to its record).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub id: String,
    pub account_id: String,
    pub amount: Decimal,
    pub hold_id: Option<Uuid>,
    pub reason: Option<Reason>,
}

/// Takes a validated command through the write protocol. `request_id` travels with it to the
/// worker's logs; `wait` bounds a withdraw_request's wait for its decision; `prefer_wait`
/// (`Prefer: wait`, capped) makes a deposit or withdraw wait for its decision too.
pub async fn submit(
    state: &AppState,
    tx: &NewTransaction,
    request_id: &str,
    wait: Duration,
    prefer_wait: Option<Duration>,
) -> Answer {
    match (tx.kind, prefer_wait) {
        (Kind::WithdrawRequest, _) => request(state, tx, request_id, wait).await,
        (_, Some(wait)) => accept_waiting(state, tx, request_id, wait).await,
        (_, None) => accept(state, tx, request_id).await,
    }
}

/// A deposit or withdraw whose client asked to wait for its decision (`Prefer: wait`): the
/// record when it is decided within `wait`, else what [`accept`] answers. Published like
/// [`accept`] (same checks, same settle budget), with a reply address: the worker replies
/// after its commit.
async fn accept_waiting(
    state: &AppState,
    tx: &NewTransaction,
    request_id: &str,
    wait: Duration,
) -> Answer {
    let deadline = Instant::now() + wait;
    let (shard, envelope) = match before_publishing(state, tx, from_record).await {
        Ok(ready) => ready,
        Err(answer) => return answer,
    };
    let reply = state
        .publisher
        .request_until(
            &Topology::routing_key(shard),
            &envelope.encode(),
            command_properties(&tx.id, request_id),
            state.publish_deadline(),
            deadline,
        )
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => return publish_failed(&tx.id, &e),
    };
    // A copy is surely in the queue from here on: without a decision, the ordinary 200.
    let accepted = Answer::Accepted(Receipt::of(envelope));
    match reply.as_deref().map(serde_json::from_slice::<Outcome>) {
        Some(Ok(outcome)) if outcome.status == OutcomeStatus::IdReused => return Answer::IdReused,
        Some(Err(e)) => tracing::error!(id = %tx.id, error = %e, "undecodable reply"),
        _ => {}
    }
    // Decided (the reply is sent after the commit), or no reply here: the record, if it can
    // be read in time, is the answer.
    look_up(state, tx, deadline).await.unwrap_or(accepted)
}

/// The answer a record of the id gives a deposit or withdraw whose client waits for it: the
/// record itself (final once committed), or 422 when it holds another payload (this one can
/// never be applied under that id: its copy is recorded as a conflict).
fn from_record(tx: &NewTransaction, record: TransactionRecord) -> Answer {
    if record.fingerprint == tx.fingerprint() {
        Answer::Decided(Box::new(record))
    } else {
        Answer::IdReused
    }
}

/// Reads the record of a deposit or withdraw until it is found or `until` passes (at least
/// once, each read bounded by what is left, never less than [`LAST_LOOK`]); `None` when it
/// was not found or could not be read.
async fn look_up(state: &AppState, tx: &NewTransaction, until: Instant) -> Option<Answer> {
    loop {
        let bound = until
            .saturating_duration_since(Instant::now())
            .max(LAST_LOOK);
        let read =
            tokio::time::timeout(bound, tally_store::reads::transaction(&state.pool, &tx.id));
        if let Ok(Ok(Some(record))) = read.await {
            return Some(from_record(tx, record));
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep_until(until.min(Instant::now() + POLL)).await;
    }
}

/// A deposit or withdraw: answered from its record when it is already decided, else published
/// (settled) and accepted once a copy is surely in the shard queue.
async fn accept(state: &AppState, tx: &NewTransaction, request_id: &str) -> Answer {
    let (shard, envelope) = match before_publishing(state, tx, replayed).await {
        Ok(ready) => ready,
        Err(answer) => return answer,
    };
    let published = state
        .publisher
        .publish_settled(
            &Topology::routing_key(shard),
            &envelope.encode(),
            command_properties(&tx.id, request_id),
            state.publish_deadline(),
        )
        .await;
    match published {
        Ok(()) => Answer::Accepted(Receipt::of(envelope)),
        Err(e) => publish_failed(&tx.id, &e),
    }
}

/// What a deposit or withdraw goes through before it is published, with or without
/// `Prefer: wait`: a retry of a decided id is answered from its record (`answer_from`) without
/// publishing again — if the database is unreachable we publish anyway, the worker dedupes
/// in-flight copies — then the ownership rule and admission. The shard and the envelope to
/// publish, or the answer already given.
async fn before_publishing(
    state: &AppState,
    tx: &NewTransaction,
    answer_from: fn(&NewTransaction, TransactionRecord) -> Answer,
) -> Result<(u16, Envelope), Answer> {
    match tally_store::reads::transaction(&state.pool, &tx.id).await {
        Ok(Some(record)) => return Err(answer_from(tx, record)),
        Ok(None) => {}
        Err(e) => tracing::warn!(id = %tx.id, error = %e, "idempotency pre-check skipped"),
    }
    if owned_by_another(state, tx).await {
        return Err(Answer::OwnedByAnother);
    }
    let shard = admit(state, tx)?;
    Ok((shard, Envelope::new(tx, Utc::now())))
}

/// A withdraw_request: published to the account's shard and answered with the worker's
/// decision within `wait` (the module doc gives the rules that keep the answer final).
async fn request(
    state: &AppState,
    tx: &NewTransaction,
    request_id: &str,
    wait: Duration,
) -> Answer {
    let deadline = Instant::now() + wait;
    let mut attempt = Attempt::new(tx);
    match tally_store::reads::transaction(&state.pool, &tx.id).await {
        Ok(Some(record)) => {
            if let Some(answer) = attempt.saw_record(&record) {
                return answer;
            }
        }
        Ok(None) => {}
        // The ledger cannot decide while the database is away, and a retry of a decided
        // request must get its first answer back, not a guess: nothing is published.
        Err(e) => {
            tracing::warn!(id = %tx.id, error = %e, "database unavailable for a withdraw_request");
            return Answer::Unavailable(LEDGER_AWAY);
        }
    }
    if !attempt.approved_elsewhere && owned_by_another(state, tx).await {
        return Answer::OwnedByAnother;
    }
    let (shard, db_now) =
        match admit(state, tx).and_then(|shard| Ok((shard, trusted_db_now(state)?))) {
            Ok(ready) => ready,
            Err(answer) => return attempt.refused(answer),
        };
    let margin = Duration::from_millis(state.settings.ledger.decision_margin_ms);
    let budget = Budget::new(deadline, Instant::now(), margin, db_now);
    let mut envelope = Envelope::new(tx, Utc::now());
    envelope.decide_by = Some(budget.decide_by);
    attempt.own = Some(envelope.accepted_at);
    let routing_key = Topology::routing_key(shard);
    if let Some(answer) = await_decision(
        state,
        &mut attempt,
        &routing_key,
        &envelope,
        request_id,
        &budget,
    )
    .await
    {
        return answer;
    }
    match attempt.without_decision() {
        Some(answer) => answer,
        None => void(state, &routing_key, &envelope, request_id).await,
    }
}

/// Publishes the attempt's copy and waits for its decision: the worker's reply, else the
/// record polled until the reply deadline, else one last bounded look. `None`: no decision
/// that this attempt may answer with was seen.
async fn await_decision(
    state: &AppState,
    attempt: &mut Attempt<'_>,
    routing_key: &str,
    envelope: &Envelope,
    request_id: &str,
    budget: &Budget,
) -> Option<Answer> {
    let reply = state
        .publisher
        .request(
            routing_key,
            &envelope.encode(),
            command_properties(&envelope.id, request_id),
            budget.reply_by,
        )
        .await;
    match attempt.saw_reply(&reply) {
        AfterReply::Answer(answer) => return Some(answer),
        // The reply queue can die with the broker connection before the deadline: the
        // decision may still be recorded in time, so look for it until the deadline.
        AfterReply::Poll => {
            if let Some(answer) = poll_record(state, attempt, budget.reply_by).await {
                return Some(answer);
            }
        }
        AfterReply::LastLook => {}
    }
    // A last, bounded look: the decision may have been committed while the reply was lost.
    let last_look = tokio::time::timeout(
        LAST_LOOK,
        tally_store::reads::transaction(&state.pool, &envelope.id),
    )
    .await;
    match last_look {
        Ok(Ok(Some(record))) => attempt.saw_record(&record),
        _ => None,
    }
}

/// Polls the ledger for the record of the request until `until` (returns at once if it
/// passed); the first record found is judged, and ends the polling.
async fn poll_record(
    state: &AppState,
    attempt: &mut Attempt<'_>,
    until: Instant,
) -> Option<Answer> {
    while Instant::now() < until {
        if let Ok(Some(record)) = tally_store::reads::transaction(&state.pool, &attempt.tx.id).await
        {
            return attempt.saw_record(&record);
        }
        tokio::time::sleep_until(until.min(Instant::now() + POLL)).await;
    }
    None
}

/// Voids this attempt (the worker records the request denied, releasing a late approval's
/// hold) and answers 402 `deadline_exceeded` once the broker confirmed the void.
async fn void(
    state: &AppState,
    routing_key: &str,
    envelope: &Envelope,
    request_id: &str,
) -> Answer {
    let settle_by = Instant::now() + Duration::from_millis(state.settings.api.settle_timeout_ms);
    let published = state
        .publisher
        .publish_settled(
            routing_key,
            &envelope.void().encode(),
            command_properties(&envelope.id, request_id),
            settle_by,
        )
        .await;
    if let Err(e) = &published {
        tracing::warn!(id = %envelope.id, error = %e, "void not confirmed");
    }
    voided(envelope, published.is_ok())
}

/// Why an undecided withdraw_request could not be answered because the database is away.
const LEDGER_AWAY: &str =
    "the ledger cannot decide withdraw requests right now; nothing was accepted, retry with the same id";

const POLL: Duration = Duration::from_millis(50);

/// Bound of the last record lookup of a withdraw_request that got no reply; the reply wait
/// ends this much before the deadline so the answer still comes within it.
const LAST_LOOK: Duration = Duration::from_millis(100);

/// The time a withdraw_request attempt has, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Budget {
    /// When the worker must have decided, on PostgreSQL's clock (the worker judges it with
    /// that clock): what is left until the deadline less the decision margin, so its commit
    /// and reply reach us in time. Time the attempt already spent (its checks) is not given
    /// to the worker a second time.
    decide_by: DateTime<Utc>,
    /// When this replica stops waiting for the reply, leaving [`LAST_LOOK`] before the
    /// deadline.
    reply_by: Instant,
}

impl Budget {
    fn new(deadline: Instant, now: Instant, margin: Duration, db_now: DateTime<Utc>) -> Self {
        let left = deadline
            .saturating_duration_since(now)
            .saturating_sub(margin);
        let left = chrono::Duration::from_std(left).unwrap_or_default();
        Self {
            decide_by: db_now + left,
            reply_by: deadline - LAST_LOOK,
        }
    }
}

/// What to do after the reply wait of a withdraw_request ended.
#[derive(Debug, PartialEq)]
enum AfterReply {
    Answer(Answer),
    /// No reply came here, though the copy is in the queue: poll the record until the reply
    /// deadline.
    Poll,
    /// Unsettled or unreadable: only the last look can still find the decision.
    LastLook,
}

/// What one withdraw_request attempt has seen, and the answer it may give from it: the
/// deciding steps of the protocol, free of IO so each rule is tested on its own.
#[derive(Debug)]
struct Attempt<'a> {
    tx: &'a NewTransaction,
    /// The command's fingerprint, computed once: every record seen is compared with it.
    fingerprint: String,
    /// `acceptedAt` of this attempt's own copy, once it is published: a record carrying it
    /// was decided by this attempt.
    own: Option<DateTime<Utc>>,
    /// A record showed the request approved by another attempt: this one may not answer 201
    /// from it, nor void it.
    approved_elsewhere: bool,
}

impl<'a> Attempt<'a> {
    fn new(tx: &'a NewTransaction) -> Self {
        Self {
            tx,
            fingerprint: tx.fingerprint(),
            own: None,
            approved_elsewhere: false,
        }
    }

    /// The answer a record of the id allows, if any (an approval this attempt did not decide
    /// allows none, and is remembered).
    fn saw_record(&mut self, record: &TransactionRecord) -> Option<Answer> {
        if record.fingerprint != self.fingerprint {
            return Some(Answer::IdReused);
        }
        let status = record.status;
        // Approved by this attempt's own copy: no other attempt can have been told otherwise.
        if status == OutcomeStatus::Approved && self.own != Some(record.accepted_at) {
            self.approved_elsewhere = true;
            return None;
        }
        Some(decided(
            &record.id,
            &record.account_id,
            record.amount,
            status,
            record.hold_id,
            record.reason,
        ))
    }

    /// What the reply wait of this attempt's copy allows.
    fn saw_reply(&self, reply: &Result<Option<Vec<u8>>, PublishError>) -> AfterReply {
        let tx = self.tx;
        match reply {
            Err(e) if e.surely_not_accepted() => AfterReply::Answer(publish_failed(&tx.id, e)),
            // It may be in the queue: from here on it is treated like a request without reply.
            Err(e) => {
                tracing::warn!(id = %tx.id, error = %e, "withdraw_request publish unsettled");
                AfterReply::LastLook
            }
            Ok(Some(bytes)) => match serde_json::from_slice::<Outcome>(bytes) {
                Ok(outcome) if outcome.status == OutcomeStatus::IdReused => {
                    AfterReply::Answer(Answer::IdReused)
                }
                Ok(outcome) => AfterReply::Answer(decided(
                    &tx.id,
                    &tx.account_id,
                    tx.amount,
                    outcome.status,
                    outcome.hold_id,
                    outcome.reason,
                )),
                Err(e) => {
                    tracing::error!(id = %tx.id, error = %e, "undecodable reply");
                    AfterReply::LastLook
                }
            },
            Ok(None) => AfterReply::Poll,
        }
    }

    /// The answer when no decision came in time: `outcome_unknown` after seeing another
    /// attempt's approval, else `None`: the attempt must void itself ([`voided`]).
    fn without_decision(&self) -> Option<Answer> {
        self.approved_elsewhere.then_some(APPROVED_ELSEWHERE)
    }

    /// The answer when a check (admission, clock) keeps this attempt from publishing. "Nothing
    /// was accepted" is not true of a request this attempt saw approved: that one is unknown.
    fn refused(&self, answer: Answer) -> Answer {
        match answer {
            Answer::Unavailable(_) if self.approved_elsewhere => APPROVED_ELSEWHERE,
            answer => answer,
        }
    }
}

/// What an attempt that saw another attempt's approval, and no decision of its own, may say.
const APPROVED_ELSEWHERE: Answer = Answer::OutcomeUnknown(
    "the request was approved by an earlier attempt whose answer is not known here; \
     retry with the same id or read GET /transactions/{id}",
);

/// The answer after voiding: 402 `deadline_exceeded` once the broker confirmed the void; if it
/// could not be confirmed, the request may still be in the queue unanswered: outcome unknown.
fn voided(envelope: &Envelope, confirmed: bool) -> Answer {
    if !confirmed {
        return Answer::OutcomeUnknown(
            "no decision in time and the request could not be withdrawn; retry with the \
             same id or read GET /transactions/{id}",
        );
    }
    Answer::Denied(Decision {
        id: envelope.id.clone(),
        account_id: envelope.account_id.clone(),
        amount: envelope.amount,
        hold_id: None,
        reason: Some(VOIDED_REASON),
    })
}

/// Approved with its hold, or denied with its reason and no hold.
fn decided(
    id: &str,
    account_id: &str,
    amount: Decimal,
    status: OutcomeStatus,
    hold_id: Option<Uuid>,
    reason: Option<Reason>,
) -> Answer {
    let approved = status == OutcomeStatus::Approved;
    let decision = Decision {
        id: id.to_string(),
        account_id: account_id.to_string(),
        amount,
        hold_id: hold_id.filter(|_| approved),
        reason: reason.filter(|_| !approved),
    };
    if approved {
        Answer::Approved(decision)
    } else {
        Answer::Denied(decision)
    }
}

/// Answers a retry of a deposit or withdraw from its record: same 200, never a second effect.
fn replayed(tx: &NewTransaction, record: TransactionRecord) -> Answer {
    if record.fingerprint != tx.fingerprint() {
        return Answer::IdReused;
    }
    Answer::Replayed(Receipt {
        id: record.id,
        account_id: record.account_id,
        // The fingerprint covers the kind: the record's is the command's.
        kind: tx.kind,
        amount: record.amount,
        accepted_at: record.accepted_at,
    })
}

/// `unavailable` when the message surely never reached a queue, else `outcome_unknown`: the
/// broker may have it.
fn publish_failed(id: &str, e: &PublishError) -> Answer {
    if e.surely_not_accepted() {
        tracing::warn!(%id, error = %e, "publish failed; answering 503 unavailable");
        Answer::Unavailable(
            "the broker did not accept the transaction; nothing was accepted, retry with the same id",
        )
    } else {
        tracing::warn!(%id, error = %e, "publish outcome unknown; answering 503 outcome_unknown");
        Answer::OutcomeUnknown(
            "the broker may or may not have accepted the transaction; retry with the same id or \
             read GET /transactions/{id}",
        )
    }
}

/// The ownership rule ([`crate::routes::users::owned_by_another`]) applied to the command.
async fn owned_by_another(state: &AppState, tx: &NewTransaction) -> bool {
    crate::routes::users::owned_by_another(state, &tx.account_id, tx.user_id.as_deref()).await
}

/// The shard of the command, unless its backlog is over the admission threshold (nothing is
/// published).
fn admit(state: &AppState, tx: &NewTransaction) -> Result<u16, Answer> {
    let shard = state.publisher.topology().shard_of(&tx.account_id);
    if state.admission.overloaded(tx.kind, shard) {
        tracing::warn!(id = %tx.id, shard, "shard backlog over the admission threshold; answering 503");
        tally_telemetry::metrics::shed();
        return Err(Answer::Unavailable(
            "the account's shard is too far behind to take this now; nothing was accepted, retry later with the same id",
        ));
    }
    Ok(shard)
}

/// PostgreSQL's time now as this replica estimates it, when its clock is known to be close
/// enough to decide on (`ledger.max_clock_skew_ms`); else a withdraw_request is refused rather
/// than given a decide-by instant that may be wrong.
fn trusted_db_now(state: &AppState) -> Result<DateTime<Utc>, Answer> {
    state.clock.trusted_now().ok_or_else(|| {
        tracing::warn!(
            clock = ?state.clock.state(),
            "clock too far from PostgreSQL's (or unknown): refusing a withdraw_request"
        );
        Answer::Unavailable(
            "this replica's clock cannot be checked against the ledger's right now; nothing was accepted, retry with the same id",
        )
    })
}

/// The deciding steps, one test per answer they give. [`submit`] itself runs against the real
/// PostgreSQL and RabbitMQ in `crates/tally-e2e/tests/e2e/submit.rs`.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is its failure message

    use super::*;
    use serde_json::json;

    fn command(kind: &str, amount: i64) -> NewTransaction {
        let fields = json!({"id": "t1", "type": kind, "amount": amount, "accountId": "a1"});
        NewTransaction::from_json(fields.as_object().unwrap(), &Default::default()).unwrap()
    }

    fn at(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_700_000_000_000_000 + micros).unwrap()
    }

    /// The record the worker would write for `tx`, decided by the copy accepted at `accepted`.
    fn record(tx: &NewTransaction, status: &str, accepted: DateTime<Utc>) -> TransactionRecord {
        let status = OutcomeStatus::parse(status).unwrap();
        let approved = status == OutcomeStatus::Approved;
        TransactionRecord {
            id: tx.id.clone(),
            account_id: tx.account_id.clone(),
            kind: tx.kind,
            amount: tx.amount,
            status,
            reason: (!approved).then_some(Reason::InsufficientFunds),
            hold_id: Some(Uuid::nil()),
            request_id: None,
            fingerprint: tx.fingerprint(),
            seq: 1,
            balance_after: Decimal::ZERO,
            occurred_at: accepted,
            accepted_at: accepted,
            applied_at: accepted,
            shard: 0,
            key_name: None,
        }
    }

    fn reply(tx: &NewTransaction, status: OutcomeStatus, reason: Option<Reason>) -> Vec<u8> {
        serde_json::to_vec(&Outcome {
            id: tx.id.clone(),
            account_id: tx.account_id.clone(),
            kind: tx.kind,
            amount: tx.amount,
            status,
            reason,
            hold_id: Some(Uuid::nil()),
        })
        .unwrap()
    }

    fn decision(hold_id: Option<Uuid>, reason: Option<Reason>) -> Decision {
        Decision {
            id: "t1".into(),
            account_id: "a1".into(),
            amount: Decimal::from(10),
            hold_id,
            reason,
        }
    }

    #[test]
    fn a_recorded_deposit_is_replayed_and_another_payload_is_id_reused() {
        let tx = command("deposit", 10);
        let answer = replayed(&tx, record(&tx, "applied", at(7)));
        let Answer::Replayed(receipt) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!((receipt.kind, receipt.accepted_at), (Kind::Deposit, at(7)));
        let other = command("deposit", 11);
        assert_eq!(
            replayed(&other, record(&tx, "applied", at(7))),
            Answer::IdReused
        );
    }

    #[test]
    fn a_waiting_deposit_is_answered_with_its_own_record_and_another_payloads_is_id_reused() {
        let tx = command("deposit", 10);
        let own = record(&tx, "applied", at(7));
        assert_eq!(
            from_record(&tx, own.clone()),
            Answer::Decided(Box::new(own))
        );
        let other = record(&command("deposit", 11), "applied", at(7));
        assert_eq!(from_record(&tx, other), Answer::IdReused);
    }

    #[test]
    fn a_publish_that_surely_reached_no_queue_is_unavailable_any_other_failure_unknown() {
        for surely in [PublishError::Unavailable, PublishError::Unroutable] {
            assert!(matches!(
                publish_failed("t1", &surely),
                Answer::Unavailable(_)
            ));
        }
        // A nack is not proof: a quorum queue that lost a member may still hold the message.
        for unknown in [PublishError::Timeout, PublishError::Nacked] {
            assert!(matches!(
                publish_failed("t1", &unknown),
                Answer::OutcomeUnknown(_)
            ));
        }
    }

    #[test]
    fn a_record_answers_reuse_denial_and_own_approval_but_not_another_attempts_approval() {
        let tx = command("withdraw_request", 10);
        let mut attempt = Attempt::new(&tx);
        let reused = record(&command("withdraw_request", 11), "denied", at(1));
        assert_eq!(attempt.saw_record(&reused), Some(Answer::IdReused));
        // A denial is final whoever decided it; it never shows a hold.
        assert_eq!(
            attempt.saw_record(&record(&tx, "denied", at(1))),
            Some(Answer::Denied(decision(
                None,
                Some(Reason::InsufficientFunds)
            )))
        );
        // Before publishing, every approval is another attempt's.
        assert_eq!(attempt.saw_record(&record(&tx, "approved", at(1))), None);
        assert!(attempt.approved_elsewhere);
        // Refused by a check after that, it may not say "nothing was accepted".
        assert!(matches!(
            attempt.refused(Answer::Unavailable("shed")),
            Answer::OutcomeUnknown(_)
        ));
        assert!(matches!(
            Attempt::new(&tx).refused(Answer::Unavailable("shed")),
            Answer::Unavailable(_)
        ));

        let mut attempt = Attempt::new(&tx);
        attempt.own = Some(at(2));
        assert_eq!(attempt.saw_record(&record(&tx, "approved", at(1))), None);
        assert_eq!(
            attempt.saw_record(&record(&tx, "approved", at(2))),
            Some(Answer::Approved(decision(Some(Uuid::nil()), None)))
        );
    }

    #[test]
    fn a_reply_answers_approval_denial_and_reuse_and_sends_the_rest_to_the_record() {
        let tx = command("withdraw_request", 10);
        let attempt = Attempt::new(&tx);
        let saw = |r: Result<Option<Vec<u8>>, PublishError>| attempt.saw_reply(&r);
        assert_eq!(
            saw(Ok(Some(reply(&tx, OutcomeStatus::Approved, None)))),
            AfterReply::Answer(Answer::Approved(decision(Some(Uuid::nil()), None)))
        );
        assert_eq!(
            saw(Ok(Some(reply(
                &tx,
                OutcomeStatus::Denied,
                Some(Reason::InsufficientFunds)
            )))),
            AfterReply::Answer(Answer::Denied(decision(
                None,
                Some(Reason::InsufficientFunds)
            )))
        );
        assert_eq!(
            saw(Ok(Some(reply(&tx, OutcomeStatus::IdReused, None)))),
            AfterReply::Answer(Answer::IdReused)
        );
        assert!(matches!(
            saw(Err(PublishError::Unavailable)),
            AfterReply::Answer(Answer::Unavailable(_))
        ));
        assert_eq!(saw(Ok(None)), AfterReply::Poll);
        assert_eq!(saw(Err(PublishError::Timeout)), AfterReply::LastLook);
        assert_eq!(saw(Ok(Some(b"{".to_vec()))), AfterReply::LastLook);
    }

    #[test]
    fn without_a_decision_an_attempt_voids_itself_unless_it_saw_another_approval() {
        let tx = command("withdraw_request", 10);
        let mut attempt = Attempt::new(&tx);
        assert_eq!(attempt.without_decision(), None);
        attempt.saw_record(&record(&tx, "approved", at(1)));
        assert!(matches!(
            attempt.without_decision(),
            Some(Answer::OutcomeUnknown(_))
        ));

        let envelope = Envelope::new(&tx, at(3));
        assert_eq!(
            voided(&envelope, true),
            Answer::Denied(decision(None, Some(VOIDED_REASON)))
        );
        assert!(matches!(
            voided(&envelope, false),
            Answer::OutcomeUnknown(_)
        ));
    }

    #[test]
    fn the_budget_leaves_the_margin_to_the_worker_and_the_last_look_to_the_api() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(3);
        let margin = Duration::from_millis(500);
        let budget = Budget::new(deadline, now, margin, at(0));
        assert_eq!(budget.decide_by, at(2_500_000));
        assert_eq!(budget.reply_by, deadline - LAST_LOOK);
        // Two seconds spent on the checks are not given to the worker again.
        let late = Budget::new(deadline, now + Duration::from_secs(2), margin, at(0));
        assert_eq!(late.decide_by, at(500_000));
        // A margin over what is left leaves the worker no time rather than a negative one.
        let tight = Budget::new(deadline, deadline, margin, at(0));
        assert_eq!(tight.decide_by, at(0));
    }
}
