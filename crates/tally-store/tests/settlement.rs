//! Settlement job claims against a real PostgreSQL: one runner at a time, a stale claim
//! taken over and the old claimant fenced out, a graceful hand-back, the bound on queued
//! jobs, cancellation, and abandoned jobs failed with a reason.

use chrono::NaiveDate;
use std::time::Duration;
use tally_store::settlement::{self, JobStatus};
use tally_testkit::fresh_database;

const FRESH: Duration = Duration::from_secs(60);

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, d).expect("date")
}

#[tokio::test]
async fn a_stale_claim_is_taken_over_and_its_old_runner_can_change_nothing() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let job = settlement::create(&pool, day(1), day(3))
        .await
        .expect("create");
    assert_eq!((job.status, job.total), (JobStatus::Queued, 3));

    let a = settlement::claim(&pool, "a", FRESH, 3)
        .await
        .expect("claim")
        .expect("queued job");
    assert_eq!(
        (a.job.id, a.job.status, a.job.attempts),
        (job.id, JobStatus::Running, 1)
    );
    assert!(
        settlement::claim(&pool, "b", FRESH, 3)
            .await
            .expect("claim")
            .is_none(),
        "a running job with a fresh heartbeat is nobody else's"
    );
    assert!(settlement::heartbeat(&pool, &a).await.expect("heartbeat"));

    // Seen as stale (a zero limit: any heartbeat is older), b takes it over.
    let b = settlement::claim(&pool, "b", Duration::ZERO, 3)
        .await
        .expect("claim")
        .expect("stale job");
    assert_eq!(b.job.attempts, 2);
    assert!(
        !settlement::heartbeat(&pool, &a).await.expect("heartbeat"),
        "a is fenced out"
    );
    assert!(!settlement::finish(&pool, &a, JobStatus::Completed, None)
        .await
        .expect("finish"));
    assert!(!settlement::release(&pool, &a).await.expect("release"));
    assert!(settlement::finish(&pool, &b, JobStatus::Completed, None)
        .await
        .expect("finish"));
    let done = settlement::get(&pool, job.id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(done.status, JobStatus::Completed);
    assert!(done.status.is_final() && done.finished_at.is_some());
}

#[tokio::test]
async fn a_released_job_is_queued_again_without_counting_the_attempt() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let job = settlement::create(&pool, day(1), day(1))
        .await
        .expect("create");
    let claim = settlement::claim(&pool, "a", FRESH, 3)
        .await
        .expect("claim")
        .expect("job");
    assert!(settlement::release(&pool, &claim).await.expect("release"));
    let again = settlement::get(&pool, job.id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!((again.status, again.attempts), (JobStatus::Queued, 0));
    let next = settlement::claim(&pool, "b", FRESH, 3)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!((next.job.id, next.job.attempts), (job.id, 1));
}

#[tokio::test]
async fn queued_jobs_are_bounded_and_a_queued_one_is_cancelled_at_once() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let first = settlement::create_bounded(&pool, day(1), day(2), 1)
        .await
        .expect("create")
        .expect("room for one");
    assert!(
        settlement::create_bounded(&pool, day(1), day(2), 1)
            .await
            .expect("create")
            .is_none(),
        "the queue is full"
    );
    let cancelled = settlement::cancel(&pool, first.id, FRESH)
        .await
        .expect("cancel")
        .expect("job");
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(
        settlement::create_bounded(&pool, day(1), day(2), 1)
            .await
            .expect("create")
            .is_some(),
        "a cancelled job leaves the queue"
    );
}

#[tokio::test]
async fn a_job_abandoned_as_often_as_allowed_fails_with_a_reason() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let job = settlement::create(&pool, day(1), day(5))
        .await
        .expect("create");
    settlement::claim(&pool, "a", FRESH, 1)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(
        settlement::fail_abandoned(&pool, FRESH, 1)
            .await
            .expect("sweep"),
        0,
        "a live runner's job is left alone"
    );
    assert!(
        settlement::claim(&pool, "b", Duration::ZERO, 1)
            .await
            .expect("claim")
            .is_none(),
        "no more attempts left for a takeover"
    );
    assert_eq!(
        settlement::fail_abandoned(&pool, Duration::ZERO, 1)
            .await
            .expect("sweep"),
        1
    );
    let failed = settlement::get(&pool, job.id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(failed.status, JobStatus::Failed);
    let reason = failed.error.expect("a failed job says why");
    assert!(
        reason.contains("abandoned") && reason.contains("(last: a)"),
        "{reason}"
    );
}
