//! What the worker's store-level tests share: a fresh migrated database per test (from
//! `tally-testkit`, dropped with its `TestDb`), a lease on shard 0, and envelope builders.
//! The batch path runs for real (fence → load → decide → write → commit) against PostgreSQL.

#![allow(dead_code)] // Each test binary uses its own subset.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::time::Duration;
use tally_core::command::NewTransaction;
use tally_core::{Envelope, Kind};
use tally_store::leases::{self, Lease};
use tally_store::Pool;

// A fresh migrated database per test, dropped with its `TestDb`, from the test kit.
pub use tally_testkit::fresh_database;

/// A lease on shard 0 for this test's worker, valid for an hour.
pub async fn lease(pool: &Pool) -> Lease {
    leases::init(pool, 1).await.expect("lease rows");
    leases::acquire(pool, "test-worker", 1, Duration::from_secs(3600))
        .await
        .expect("acquire")
        .pop()
        .expect("shard 0 is free")
}

pub fn dec(s: &str) -> Decimal {
    Decimal::from_str_exact(s).expect("decimal literal")
}

/// A command as the API would publish it: `Envelope::new` over the validated transaction, so
/// its fingerprint is the real one (the worker checks it) and its times are kept to
/// PostgreSQL's microsecond.
pub fn envelope(
    id: &str,
    kind: Kind,
    account: &str,
    amount: Decimal,
    at: DateTime<Utc>,
) -> Envelope {
    command(id, kind, account, amount, None, at)
}

/// A command carrying the `userId` of its sender.
pub fn by_user(id: &str, kind: Kind, account: &str, amount: Decimal, user: &str) -> Envelope {
    let mut tx = transaction(id, kind, account, amount, None);
    tx.user_id = Some(user.into());
    Envelope::new(&tx, Utc::now())
}

/// A withdraw capturing the hold of `request`.
pub fn capture(id: &str, account: &str, amount: Decimal, request: &str) -> Envelope {
    command(
        id,
        Kind::Withdraw,
        account,
        amount,
        Some(request),
        Utc::now(),
    )
}

fn command(
    id: &str,
    kind: Kind,
    account: &str,
    amount: Decimal,
    request: Option<&str>,
    at: DateTime<Utc>,
) -> Envelope {
    Envelope::new(&transaction(id, kind, account, amount, request), at)
}

fn transaction(
    id: &str,
    kind: Kind,
    account: &str,
    amount: Decimal,
    request: Option<&str>,
) -> NewTransaction {
    NewTransaction {
        id: id.into(),
        kind,
        account_id: account.into(),
        amount,
        occurred_at: None,
        request_id: request.map(str::to_string),
        user_id: None,
        client_id: None,
        key_name: None,
    }
}

/// The names of the auditor's failing checks (empty when the ledger is consistent).
pub async fn audit_failures(pool: &Pool) -> Vec<String> {
    let (checks, _) = tally_store::audit::run(pool).await.expect("audit");
    checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| format!("{}: {:?}", c.name, c.offending))
        .collect()
}
