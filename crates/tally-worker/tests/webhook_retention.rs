//! The webhook sender prunes finished deliveries past `webhooks.retention_hours`, and keeps
//! them all when it is 0.

use std::time::Duration;
use tally_testkit::{eventually, fresh_database, queues, test_settings};
use tokio_util::sync::CancellationToken;

async fn insert_old_sent(pool: &tally_store::Pool) {
    pool.get()
        .await
        .expect("connection")
        .execute(
            "INSERT INTO webhook_deliveries (account_id, balance, available, version, \
                 changed_at, status, due_at, created_at, finished_at) \
             VALUES ('acc', 1, 1, 1, now(), 'sent', now(), now(), now() - interval '200 hours')",
            &[],
        )
        .await
        .expect("insert delivery");
}

async fn deliveries(pool: &tally_store::Pool) -> i64 {
    pool.get()
        .await
        .expect("connection")
        .query_one("SELECT count(*) FROM webhook_deliveries", &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn the_sender_prunes_deliveries_past_the_retention_and_keeps_them_with_none() {
    let db = fresh_database().await;
    let pool = db.pool(4);
    let mut settings = test_settings(&db.url, &queues::test_prefix()).webhooks;

    // Retention 0: kept. A delivery inserted after the sender started shows it ran its loop.
    settings.retention_hours = 0;
    insert_old_sent(&pool).await;
    let stop = CancellationToken::new();
    let sender = tokio::spawn(tally_worker::webhooks::run(
        pool.clone(),
        settings.clone(),
        stop.clone(),
    ));
    // A pending delivery due now for an account with no webhook: claimed and finished by the
    // loop, so the loop has run at least once after start.
    pool.get()
        .await
        .expect("connection")
        .execute(
            "INSERT INTO webhook_deliveries (account_id, balance, available, version, \
                 changed_at, due_at, created_at) VALUES ('gone', 1, 1, 1, now(), now(), now())",
            &[],
        )
        .await
        .expect("insert pending");
    eventually(Duration::from_secs(20), || async {
        let client = pool.get().await.expect("connection");
        let pending: i64 = client
            .query_one(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        (pending == 0).then_some(())
    })
    .await;
    assert_eq!(
        deliveries(&pool).await,
        2,
        "nothing pruned with retention 0"
    );
    stop.cancel();
    sender.await.expect("sender stops");

    // Retention one week: the 200-hour-old delivery goes at the sender's start.
    settings.retention_hours = 168;
    let stop = CancellationToken::new();
    let sender = tokio::spawn(tally_worker::webhooks::run(
        pool.clone(),
        settings,
        stop.clone(),
    ));
    eventually(Duration::from_secs(20), || async {
        (deliveries(&pool).await == 1).then_some(())
    })
    .await;
    stop.cancel();
    sender.await.expect("sender stops");
}
