//! The conservation auditor against a real PostgreSQL: it passes on a consistent ledger and
//! names the rows that break each invariant when one is broken behind the worker's back.

use tally_store::audit;
use tally_testkit::fresh_database;

fn failing(checks: &[audit::Check]) -> Vec<&'static str> {
    checks.iter().filter(|c| !c.pass).map(|c| c.name).collect()
}

#[tokio::test]
async fn the_auditor_passes_a_consistent_ledger_and_names_what_breaks_an_invariant() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let (checks, totals) = audit::run(&pool).await.expect("audit");
    assert_eq!(checks.len(), 4, "every invariant is checked");
    assert!(failing(&checks).is_empty(), "{checks:?}");
    assert_eq!(totals.balance, "0");

    // A balance and a held amount no history and no hold explain.
    let client = pool.get().await.expect("connection");
    client
        .execute(
            "INSERT INTO accounts (id, balance, held, version) VALUES ('acc-x', 5, 3, 1)",
            &[],
        )
        .await
        .expect("corrupt");
    let (checks, totals) = audit::run(&pool).await.expect("audit");
    let failed = failing(&checks);
    assert!(failed.contains(&"balances_match_history"), "{failed:?}");
    assert!(failed.contains(&"held_matches_open_holds"), "{failed:?}");
    assert!(!failed.contains(&"one_effect_per_id"), "{failed:?}");
    for check in checks.iter().filter(|c| !c.pass) {
        assert!(
            check
                .offending
                .iter()
                .any(|row| row.to_string().contains("acc-x")),
            "{}: {:?}",
            check.name,
            check.offending
        );
    }
    assert_eq!((totals.balance.as_str(), totals.held.as_str()), ("5", "3"));

    let report = audit::report(&pool, None).await.expect("report");
    assert!(!report.pass, "the report fails with any check");
}
