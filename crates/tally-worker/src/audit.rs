//! The conservation auditor run on a timer (`worker.audit_every_secs`), so that a broken
//! invariant reaches the operator's alerts (`tally_audit_failing_checks`, rule
//! `TallyAuditFailing` in `deploy/prometheus/alerts.yml`) instead of waiting for someone to
//! call `GET /debug/conservation` or `tally-worker audit`; with it, the archived dead letters
//! not yet re-published (`tally_dead_letters_pending`). Every worker runs it: the checks only
//! read, and the alerts take the worst answer of all.

use std::time::Duration;
use tally_store::Pool;
use tally_telemetry::metrics;
use tokio_util::sync::CancellationToken;

/// Runs the auditor every `every` until `shutdown` (the first run right away). A run that
/// cannot reach PostgreSQL leaves the last result standing: its age
/// (`tally_audit_last_run_timestamp_seconds`) is what an alert on a stale auditor watches.
pub async fn run(pool: Pool, every: Duration, shutdown: CancellationToken) {
    loop {
        match tally_store::audit::report(&pool, None).await {
            Ok(report) => {
                let failing: Vec<&str> = report
                    .checks
                    .iter()
                    .filter(|c| !c.pass)
                    .map(|c| c.name)
                    .collect();
                if !failing.is_empty() {
                    tracing::error!(?failing, "conservation auditor: invariants broken");
                }
                metrics::audit_run(failing.len(), report.dead_letters, unix_now());
            }
            Err(e) => tracing::warn!(error = %e, "conservation auditor could not run"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
