//! `tally-bench seed` writes a ledger the rest of tally accepts as its own: the conservation
//! auditor passes, every history is numbered 1..version with a running balance that never
//! goes negative, and a second seed into the same database is refused.

#![allow(clippy::unwrap_used)] // a panic in a test is its failure message

use tally_settings::{DatabaseSettings, Secret};

fn seed(url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args([
            "seed",
            "--database-url",
            url,
            "--transactions",
            "20000",
            "--accounts",
            "1000",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-10",
            "--shards",
            "4",
            "--quiet",
        ])
        .output()
        .unwrap()
}

#[tokio::test]
async fn seeded_ledger_passes_the_auditor_and_reads_like_real_history() {
    let db = tally_testkit::fresh_database().await;
    let out = seed(&db.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pool = tally_store::connect(&DatabaseSettings {
        url: Secret::new(db.url.clone()),
        pool_size: 2,
        timeout_ms: 10_000,
    })
    .unwrap();
    let (checks, _) = tally_store::audit::run(&pool).await.unwrap();
    for check in &checks {
        assert!(check.pass, "{} failed: {:?}", check.name, check.offending);
    }

    let client = pool.get().await.unwrap();
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM transactions").await, 20_000);
    assert!(count("SELECT count(*) FROM transactions WHERE kind = 'withdraw'").await > 0);
    // Running balances: each row's balance_after is the sum of the account's amounts so far,
    // in seq order, which is also time order; none is negative.
    assert_eq!(
        count(
            "SELECT count(*) FROM (SELECT balance_after, applied_at, \
                 sum(CASE kind WHEN 'deposit' THEN amount ELSE -amount END) \
                     OVER (PARTITION BY account_id ORDER BY seq) AS running, \
                 lag(applied_at) OVER (PARTITION BY account_id ORDER BY seq) AS before \
             FROM transactions) t \
             WHERE balance_after <> running OR balance_after < 0 OR applied_at < before"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM transactions WHERE applied_at < '2026-01-01' \
             OR applied_at >= '2026-01-11'"
        )
        .await,
        0
    );
    assert_eq!(
        count("SELECT value::int8 FROM ledger_meta WHERE key = 'shard_count'").await,
        4
    );

    let again = seed(&db.url);
    assert!(!again.status.success(), "a second seed must be refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty ledger only"));
    assert_eq!(count("SELECT count(*) FROM transactions").await, 20_000);
}
