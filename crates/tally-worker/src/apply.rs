//! One batch, one PostgreSQL transaction: check the shard's lease (the fence), load what the
//! commands touch, decide (see [`crate::ledger`]), write, commit. Dedupe and effects commit
//! together, so a crash before the commit leaves no trace and a redelivery after it is
//! recognised as a duplicate; a worker that lost the shard cannot commit at all.

use chrono::Utc;
use rust_decimal::Decimal;
use tally_core::{Envelope, Outcome, OutcomeStatus};
use tally_store::batch::{self, AccountState};
use tally_store::leases::{self, Lease};
use tally_store::Pool;
use tally_store::StoreError;
use tally_telemetry::metrics;

use crate::ledger::{decide, Rules};

/// Applies `envelopes` (in delivery order) under `lease`; returns one outcome per envelope.
pub async fn apply_batch(
    pool: &Pool,
    lease: &Lease,
    envelopes: &[Envelope],
    rules: &Rules,
) -> Result<Vec<Outcome>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    leases::fence(&tx, lease).await?;

    let ids: Vec<&str> = envelopes.iter().map(|e| e.id.as_str()).collect();
    let mut accounts: Vec<&str> = envelopes.iter().map(|e| e.account_id.as_str()).collect();
    accounts.sort_unstable();
    accounts.dedup();
    let snapshot = batch::load(&tx, &ids, &accounts).await?;
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

    // Taken after the lock: a request's deadline is judged at the moment it is decided.
    let now = Utc::now();
    let decision = decide(envelopes, snapshot, now, rules);
    // Balance or held moved (so balance or available did): a recorded-only command (denied,
    // rejected, id reused) bumps the version but is no balance change.
    let changed: Vec<&AccountState> = decision
        .effects
        .accounts
        .iter()
        .filter(|a| match accounts.binary_search(&a.id.as_str()) {
            Ok(i) => before[i] != (a.balance, a.held),
            Err(_) => true,
        })
        .collect();
    let superseded = batch::write(&tx, lease.shard, now, &decision.effects, &changed).await?;
    tx.commit().await?;
    count(&decision.effects.records);
    metrics::webhooks_superseded(superseded);
    Ok(decision.outcomes)
}

/// Feeds the outcome metrics from the rows a batch committed: only new records, so a
/// redelivered (deduplicated) command is never counted twice.
fn count(records: &[batch::NewRecord]) {
    let committed = Utc::now();
    for record in records {
        let took_effect = record.status == OutcomeStatus::Applied.as_str()
            || record.status == OutcomeStatus::Approved.as_str();
        let reason = (!took_effect).then(|| record.reason.unwrap_or(record.status));
        let lag = (committed - record.accepted_at)
            .to_std()
            .unwrap_or_default();
        metrics::transaction(record.kind, reason, lag);
    }
}

/// Expires the shard's holds past their TTL; returns how many accounts changed.
pub async fn sweep_holds(pool: &Pool, lease: &Lease) -> Result<u64, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    leases::fence(&tx, lease).await?;
    let swept = batch::expire_holds(&tx, lease.shard, Utc::now()).await?;
    tx.commit().await?;
    metrics::webhooks_superseded(swept.superseded);
    Ok(swept.accounts)
}
