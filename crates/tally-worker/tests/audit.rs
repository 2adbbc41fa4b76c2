//! The worker's timed auditor exports what the alert rules read: the number of failing
//! checks, the dead letters waiting to be re-published, and when it last ran.

use std::time::Duration;
use tally_testkit::{eventually, fresh_database};
use tokio_util::sync::CancellationToken;

/// The value of the unlabelled series `name` in this process's metrics.
fn series(name: &str) -> Option<f64> {
    let text = tally_telemetry::metrics::render().expect("render metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_timed_auditor_exports_broken_invariants_and_when_it_ran() {
    tally_telemetry::metrics::init_worker();
    let db = fresh_database().await;
    let pool = db.pool(2);
    let stop = CancellationToken::new();
    let auditor = tokio::spawn(tally_worker::audit::run(
        pool.clone(),
        Duration::from_millis(200),
        stop.clone(),
    ));

    let ran = |at_least: f64| async move {
        eventually(Duration::from_secs(20), || async {
            series("tally_audit_last_run_timestamp_seconds")
                .filter(|t| *t >= at_least)
                .map(|_| series("tally_audit_failing_checks"))
        })
        .await
    };
    assert_eq!(
        ran(1.0).await,
        Some(0.0),
        "a consistent ledger fails no check"
    );

    // A balance no history explains, written behind the worker's back.
    let client = pool.get().await.expect("connection");
    client
        .execute(
            "INSERT INTO accounts (id, balance, held, version) VALUES ('acc-x', 5, 0, 1)",
            &[],
        )
        .await
        .expect("corrupt");
    let since = series("tally_audit_last_run_timestamp_seconds").expect("last run");
    let failing = eventually(Duration::from_secs(20), || async {
        series("tally_audit_failing_checks")
            .filter(|n| *n > 0.0)
            .filter(|_| series("tally_audit_last_run_timestamp_seconds") > Some(since))
    })
    .await;
    assert!(failing >= 1.0, "{failing}");
    assert_eq!(series("tally_dead_letters_pending"), Some(0.0));
    client
        .execute(
            "INSERT INTO dead_letters (id, queue, routing_key, reason, detail, body, dead_at) \
             VALUES ('dl-1', 'q', 'shard.0', 'rejected', 'test', '\\x00', now())",
            &[],
        )
        .await
        .expect("archive a dead letter");
    eventually(Duration::from_secs(20), || async {
        (series("tally_dead_letters_pending") == Some(1.0)).then_some(())
    })
    .await;

    stop.cancel();
    auditor.await.expect("the auditor stops with the worker");
}
