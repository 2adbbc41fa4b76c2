//! What the worker's store-level tests share: a fresh migrated database per test (dropped with
//! its [`TestDb`]), a pool on it, a lease on shard 0, and envelope builders. The batch path
//! runs for real (fence → load → decide → write → commit) against PostgreSQL.

#![allow(dead_code)] // Each test binary uses its own subset.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::time::Duration;
use tally_core::command::NewTransaction;
use tally_core::{Envelope, Kind};
use tally_settings::{DatabaseSettings, Secret};
use tally_store::leases::{self, Lease};
use tally_store::Pool;

pub fn admin_database_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://tally:tally@127.0.0.1:5432/tally".into())
}

/// A migrated database of one test, dropped with this value.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await (and may run inside a runtime): clean up on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

impl TestDb {
    /// A new pool of `size` connections: its statement caches start cold.
    pub fn pool(&self, size: usize) -> Pool {
        tally_store::connect(&DatabaseSettings {
            url: Secret::new(&self.url),
            pool_size: size,
            timeout_ms: 5_000,
        })
        .expect("pool")
    }
}

/// Creates an empty, migrated database of its own.
pub async fn fresh_database() -> TestDb {
    let name = format!("tally_wtest_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the admin database (is PostgreSQL up? `make test` starts it)");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let base = admin_database_url();
    let url = format!(
        "{}/{name}",
        &base[..base.rfind('/').expect("database url has a path")]
    );
    tally_store::migrate::run(&url).await.expect("migrate");
    TestDb { name, url }
}

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
    let tx = NewTransaction {
        id: id.into(),
        kind,
        account_id: account.into(),
        amount,
        occurred_at: None,
        request_id: request.map(str::to_string),
        user_id: None,
        client_id: None,
    };
    Envelope::new(&tx, at)
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

/// libfaketime, to preload into a process whose wall clock a test shifts (Debian package
/// `faketime`, installed by `make test` through deploy/local/services.sh).
pub fn libfaketime() -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .filter_map(Result::ok)
        .map(|arch| arch.path().join("faketime/libfaketime.so.1"))
        .find(|lib| lib.exists())
        .expect("libfaketime (Debian package faketime; `make test` installs it)")
}
