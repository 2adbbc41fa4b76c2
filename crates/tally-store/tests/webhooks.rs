//! Pruning of finished webhook deliveries against a real PostgreSQL: only sent and superseded
//! rows past the retention go, oldest first and at most `limit` at a time; failed and pending
//! rows stay.

use std::time::Duration;
use tally_store::webhooks;
use tally_testkit::fresh_database;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn prune_deletes_only_sent_and_superseded_deliveries_past_the_retention() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let client = pool.get().await.expect("connection");
    // (status, hours since it finished; NULL for a pending one)
    for (status, hours) in [
        ("sent", Some(10)),
        ("superseded", Some(9)),
        ("sent", Some(8)),
        ("failed", Some(10)),
        ("sent", Some(0)),
        ("pending", None),
    ] {
        client
            .execute(
                "INSERT INTO webhook_deliveries (account_id, balance, available, version, \
                     changed_at, status, due_at, created_at, finished_at) \
                 VALUES ('acc', 1, 1, 1, now(), $1, now(), now(), \
                     now() - make_interval(hours => $2::int))",
                &[&status, &hours],
            )
            .await
            .expect("insert delivery");
    }
    let left = || async {
        let rows = client
            .query("SELECT status FROM webhook_deliveries ORDER BY id", &[])
            .await
            .expect("rows");
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };

    assert_eq!(
        webhooks::prune(&pool, HOUR, 1).await.expect("prune"),
        1,
        "the limit holds"
    );
    assert_eq!(
        left().await,
        ["superseded", "sent", "failed", "sent", "pending"],
        "the oldest went first"
    );
    assert_eq!(webhooks::prune(&pool, HOUR, 100).await.expect("prune"), 2);
    assert_eq!(left().await, ["failed", "sent", "pending"]);
    assert_eq!(webhooks::prune(&pool, HOUR, 100).await.expect("prune"), 0);
}
