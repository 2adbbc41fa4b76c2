//! The settlement job runner and the webhook sender are woken by LISTEN/NOTIFY: with their
//! fallback polls set to a minute, work created while they sleep is still picked up at once.
//! No wall-clock assertion: a pickup within the (generous) bound, far below the minute the
//! poll would take, can only come from the notification (or, for a delayed delivery, from
//! the sender sleeping until it is due).

use chrono::NaiveDate;
use std::time::Duration;
use tally_store::settlement::{self, JobStatus};
use tally_testkit::{eventually, fresh_database, queues, test_settings, TestDb};
use tally_worker::jobs::JobsConfig;
use tally_worker::wakeups;
use tokio_util::sync::CancellationToken;

/// Far longer than the bound of every wait below: a pickup before it is a wake-up.
const FALLBACK_POLL: Duration = Duration::from_secs(60);
const BOUND: Duration = Duration::from_secs(20);

/// The listener, once it listens (work created before would only be found by the start-up
/// look, proving nothing).
async fn listening(db: &TestDb, stop: &CancellationToken) -> wakeups::Wakeups {
    let settings = test_settings(&db.url, &queues::test_prefix());
    let (wake, _task) = wakeups::spawn(settings.database, stop.clone());
    let mut sessions = wake.sessions.clone();
    tokio::time::timeout(BOUND, sessions.wait_for(|n| *n > 0))
        .await
        .expect("the listener listens")
        .expect("listener alive");
    wake
}

async fn job_status(pool: &tally_store::Pool, id: uuid::Uuid) -> JobStatus {
    settlement::get(pool, id)
        .await
        .expect("read job")
        .expect("job exists")
        .status
}

#[tokio::test]
async fn a_new_settlement_job_starts_without_waiting_for_the_poll() {
    let db = fresh_database().await;
    let pool = db.pool(6);
    let stop = CancellationToken::new();
    let wake = listening(&db, &stop).await;
    let runner = tokio::spawn(tally_worker::jobs::run_woken(
        pool.clone(),
        JobsConfig {
            runner: "wakeups-test".into(),
            poll_every: FALLBACK_POLL,
            ..JobsConfig::default()
        },
        wake.jobs.clone(),
        stop.clone(),
    ));
    let day = NaiveDate::from_ymd_opt(2024, 1, 1).expect("date");

    // Two jobs one after the other: the second is created while the runner sleeps after the
    // first (it has nothing else to do), so only a notification can wake it in time.
    for _ in 0..2 {
        let job = settlement::create(&pool, day, day)
            .await
            .expect("create job");
        eventually(BOUND, || async {
            (job_status(&pool, job.id).await == JobStatus::Completed).then_some(())
        })
        .await;
        // The pickup delay, for the record (`--no-capture`), never asserted: this machine is
        // shared and its timings are noise for a test.
        let delay_ms: f64 = pool
            .get()
            .await
            .expect("connection")
            .query_one(
                "SELECT (extract(epoch FROM started_at - created_at) * 1000)::float8 \
                 FROM settlement_jobs WHERE id = $1",
                &[&job.id],
            )
            .await
            .expect("read the job's times")
            .get(0);
        println!("settlement job picked up {delay_ms:.1} ms after its creation");
    }
    stop.cancel();
    runner.await.expect("runner stops");
}

async fn pending(pool: &tally_store::Pool) -> i64 {
    pool.get()
        .await
        .expect("connection")
        .query_one(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
            &[],
        )
        .await
        .expect("count")
        .get(0)
}

/// Whether the sender's connection is idle after asking when the next delivery is due: the
/// last thing the sender does before it sleeps. With nothing pending, that look came after
/// the last delivery was recorded. (The pattern is a parameter, so that this query's own
/// text never matches it.)
async fn sender_asleep(pool: &tally_store::Pool) -> bool {
    let asleep: i64 = pool
        .get()
        .await
        .expect("connection")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND state = 'idle' AND query LIKE $1",
            &[&"SELECT EXTRACT(EPOCH FROM%min(GREATEST(due_at%"],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    asleep == 1
}

async fn schedule(pool: &tally_store::Pool, account: &str, due_in_ms: i64) {
    pool.get()
        .await
        .expect("connection")
        .execute(
            "INSERT INTO webhook_deliveries (account_id, balance, available, version, \
                 changed_at, due_at, created_at) \
             VALUES ($1, 1, 1, 1, now(), now() + $2::int8 * interval '1 millisecond', now())",
            &[&account, &due_in_ms],
        )
        .await
        .expect("schedule a delivery");
}

#[tokio::test]
async fn a_scheduled_delivery_is_sent_without_waiting_for_the_poll() {
    let db = fresh_database().await;
    let pool = db.pool(6);
    let stop = CancellationToken::new();
    let wake = listening(&db, &stop).await;
    let mut settings = test_settings(&db.url, &queues::test_prefix()).webhooks;
    settings.poll_ms = u64::try_from(FALLBACK_POLL.as_millis()).expect("ms");
    // The sender on a connection of its own, so that the test can see when it went to sleep.
    let sender = tokio::spawn(tally_worker::webhooks::run_woken(
        db.pool(1),
        settings,
        wake.webhooks.clone(),
        stop.clone(),
    ));

    // Deliveries for accounts with no webhook: claimed and finished as soon as the sender
    // looks. The first may be found by the sender's first look. Once it is finished and the
    // sender went to sleep (nothing pending: the fallback minute), the second, due now, can
    // only be sent in time if the notification of its insert wakes the sender. The third is
    // due a second after its insert (the sender, woken too early, sleeps until it is due).
    for (account, due_in_ms) in [("first", 0), ("now", 0), ("later", 1_000)] {
        schedule(&pool, account, due_in_ms).await;
        eventually(BOUND, || async {
            (pending(&pool).await == 0 && sender_asleep(&pool).await).then_some(())
        })
        .await;
    }
    stop.cancel();
    sender.await.expect("sender stops");
}
