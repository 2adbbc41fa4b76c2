//! One batch, one PostgreSQL transaction: check the shard's lease (the fence), load what the
//! commands touch, decide (see [`tally_core::ledger`]), write, commit. A batch may hold the
//! commands of several shards of this worker ([`apply_group`], see [`crate::commit`]): their
//! accounts are disjoint, so each account still sees its own shard's commands in order.
//! Dedupe and effects commit together, so a crash before the commit leaves no trace and a
//! redelivery after it is recognised as a duplicate; a worker that lost the shard cannot
//! commit at all.
//!
//! One clock: the batch's time — deadlines, hold expiry, new holds' TTL, `applied_at` — is
//! the database's, read by the fence, never the worker host's (whose clock may be skewed).
//! Read before `load` locks the account rows, it is still the time of the decision: those
//! rows are only ever locked by a batch of the shard's owner, which also holds the lease row
//! the fence just locked, so `load` never waits for another batch.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::ledger::{decide_commands, AccountState, NewRecord, Rules};
use tally_core::{Command, Envelope, Outcome};
use tally_store::batch;
use tally_store::leases::{self, Lease};
use tally_store::Pool;
use tally_store::StoreError;
use tally_telemetry::metrics;

/// Applies `envelopes` (in delivery order) under `lease` at the database's time; returns one
/// outcome per envelope.
pub async fn apply_batch(
    pool: &Pool,
    lease: &Lease,
    envelopes: &[Envelope],
    rules: &Rules,
) -> Result<Vec<Outcome>, StoreError> {
    transactions_only(pool, lease, envelopes, rules, None).await
}

/// [`apply_batch`] decided and written at `now` instead of the database's time: the same
/// path, for tests that drive a fake clock (hold expiry, deadlines).
pub async fn apply_batch_at(
    pool: &Pool,
    lease: &Lease,
    envelopes: &[Envelope],
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, StoreError> {
    transactions_only(pool, lease, envelopes, rules, Some(now)).await
}

async fn transactions_only(
    pool: &Pool,
    lease: &Lease,
    envelopes: &[Envelope],
    rules: &Rules,
    at: Option<DateTime<Utc>>,
) -> Result<Vec<Outcome>, StoreError> {
    let commands: Vec<Command> = envelopes.iter().cloned().map(Command::from).collect();
    let batch = [ShardBatch {
        lease,
        commands: &commands,
    }];
    let outcomes = one(apply(pool, &batch, rules, at).await?);
    Ok(outcomes.into_iter().flatten().collect())
}

/// Applies a batch of commands — transactions and policy changes — in delivery order; one
/// outcome per command, `None` for a policy change.
pub async fn apply_commands(
    pool: &Pool,
    lease: &Lease,
    commands: &[Command],
    rules: &Rules,
) -> Result<Vec<Option<Outcome>>, StoreError> {
    let batch = [ShardBatch { lease, commands }];
    Ok(one(apply(pool, &batch, rules, None).await?))
}

/// [`apply_commands`] at `now` (tests with a fake clock).
pub async fn apply_commands_at(
    pool: &Pool,
    lease: &Lease,
    commands: &[Command],
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Vec<Option<Outcome>>, StoreError> {
    let batch = [ShardBatch { lease, commands }];
    Ok(one(apply(pool, &batch, rules, Some(now)).await?))
}

/// The commands one shard loop has in hand, under that shard's lease.
#[derive(Clone, Copy)]
pub struct ShardBatch<'a> {
    pub lease: &'a Lease,
    pub commands: &'a [Command],
}

/// Applies the batches of several shards (each shard at most once) in one transaction: one
/// fence over their leases, one load, one write, one commit. One list of outcomes per batch,
/// as [`apply_commands`] gives it. If one lease is lost, nothing is committed.
pub async fn apply_group(
    pool: &Pool,
    batches: &[ShardBatch<'_>],
    rules: &Rules,
) -> Result<Vec<Vec<Option<Outcome>>>, StoreError> {
    apply(pool, batches, rules, None).await
}

/// [`apply_group`] at `now` (tests with a fake clock).
pub async fn apply_group_at(
    pool: &Pool,
    batches: &[ShardBatch<'_>],
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Vec<Vec<Option<Outcome>>>, StoreError> {
    apply(pool, batches, rules, Some(now)).await
}

fn one(mut outcomes: Vec<Vec<Option<Outcome>>>) -> Vec<Option<Outcome>> {
    outcomes.pop().unwrap_or_default()
}

async fn apply(
    pool: &Pool,
    batches: &[ShardBatch<'_>],
    rules: &Rules,
    at: Option<DateTime<Utc>>,
) -> Result<Vec<Vec<Option<Outcome>>>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let leases: Vec<&Lease> = batches.iter().map(|b| b.lease).collect();
    let database_now = leases::fence(&tx, &leases).await?;
    let now = at.unwrap_or(database_now);

    // The shards' commands one after the other: accounts are disjoint across shards, so this
    // keeps every account's order.
    let commands = || batches.iter().flat_map(|b| b.commands.iter());
    let ids: Vec<&str> = commands().map(Command::id).collect();
    // Each account with the shard of the batch it came in: every row is written for it.
    let mut shard_of_account: Vec<(&str, u16)> = batches
        .iter()
        .flat_map(|b| b.commands.iter().map(|c| (c.account_id(), b.lease.shard)))
        .collect();
    shard_of_account.sort_unstable();
    shard_of_account.dedup();
    let accounts: Vec<&str> = shard_of_account.iter().map(|(id, _)| *id).collect();
    let first_shard = batches.first().map_or(0, |b| b.lease.shard);
    let shard_of = |account: &str| {
        // Every row's account is one of the commands' accounts.
        accounts
            .binary_search(&account)
            .map_or(first_shard, |i| shard_of_account[i].1)
    };
    let policy_ids: Vec<&str> = commands()
        .filter(|c| matches!(c, Command::Policy(_)))
        .map(Command::id)
        .collect();
    let snapshot = batch::load(&tx, &ids, &accounts, &policy_ids).await?;
    // Before the decision, aligned with `accounts`: what a webhook compares against.
    let before: Vec<(Decimal, Decimal)> = accounts
        .iter()
        .map(|id| {
            snapshot
                .accounts
                .get(*id)
                .map_or((Decimal::ZERO, Decimal::ZERO), |a| (a.balance, a.held))
        })
        .collect();

    let (effects, outcomes) = decide_commands(commands(), snapshot, now, rules);
    // Balance or held moved (so balance or available did): a recorded-only command (denied,
    // rejected, id reused) bumps the version but is no balance change.
    let changed: Vec<&AccountState> = effects
        .accounts()
        .iter()
        .filter(|a| match accounts.binary_search(&a.id.as_str()) {
            Ok(i) => before[i] != (a.balance, a.held),
            Err(_) => true,
        })
        .collect();
    let written = batch::write(&tx, shard_of, now, &effects, &changed).await?;
    tx.commit().await?;
    count(effects.records());
    metrics::webhooks_superseded(written.superseded);
    metrics::id_conflicts(written.new_conflicts);
    let mut outcomes = outcomes.into_iter();
    Ok(batches
        .iter()
        .map(|b| outcomes.by_ref().take(b.commands.len()).collect())
        .collect())
}

/// Feeds the outcome metrics from the rows a batch committed: only new records, so a
/// redelivered (deduplicated) command is never counted twice.
fn count(records: &[NewRecord]) {
    let committed = Utc::now();
    for record in records {
        // A refusal is labelled with its reason (the status when it has none).
        let reason = (!record.status.took_effect())
            .then(|| record.reason.map_or(record.status.as_str(), |r| r.as_str()));
        let lag = (committed - record.accepted_at)
            .to_std()
            .unwrap_or_default();
        metrics::transaction(record.kind.as_str(), reason, lag);
    }
}

/// Expires the shard's holds past their TTL at the database's time; returns how many
/// accounts changed.
pub async fn sweep_holds(pool: &Pool, lease: &Lease) -> Result<u64, StoreError> {
    sweep(pool, lease, None).await
}

/// [`sweep_holds`] at `now` instead of the database's time (tests with a fake clock).
pub async fn sweep_holds_at(
    pool: &Pool,
    lease: &Lease,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    sweep(pool, lease, Some(now)).await
}

async fn sweep(pool: &Pool, lease: &Lease, at: Option<DateTime<Utc>>) -> Result<u64, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let database_now = leases::fence(&tx, &[lease]).await?;
    let swept = batch::expire_holds(&tx, lease.shard, at.unwrap_or(database_now)).await?;
    tx.commit().await?;
    metrics::webhooks_superseded(swept.superseded);
    Ok(swept.accounts)
}
