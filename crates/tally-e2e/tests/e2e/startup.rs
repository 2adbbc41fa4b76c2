//! Start-up rules: migrations are safe to run concurrently, and the shard count is fixed once
//! recorded.

use tally_store::StoreError;

use crate::helpers::{fresh_database, test_settings};

#[tokio::test]
async fn two_migrators_at_once_are_safe() {
    // fresh_database already migrated once; make another empty one by hand.
    let db = fresh_database().await;
    let url = db.url.clone();
    let (a, b) = tokio::join!(
        tally_store::migrate::run(&url),
        tally_store::migrate::run(&url)
    );
    assert_eq!(
        a.unwrap() + b.unwrap(),
        0,
        "already migrated: nothing to apply"
    );

    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        tally_store::migrate::run(&url),
        tally_store::migrate::run(&url)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a + b >= 1 && (a == 0 || b == 0),
        "one applied, the other found nothing: {a} {b}"
    );
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'transactions'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
}

#[tokio::test]
async fn a_different_shard_count_refuses_to_start() {
    let db = fresh_database().await;
    let url = db.url.clone();
    let settings = test_settings(&url, "unused");
    let pool = tally_store::connect(&settings.database).unwrap();
    tally_store::meta::ensure_shard_count(&pool, 4)
        .await
        .unwrap();
    tally_store::meta::ensure_shard_count(&pool, 4)
        .await
        .unwrap();

    let mut other = settings.clone();
    other.ledger.shard_count = 8;
    let err = match tally_worker::Worker::build(other.clone()).await {
        Err(tally_worker::WorkerError::Store(e)) => e,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a worker with another shard count started"),
    };
    assert!(matches!(
        err,
        StoreError::ShardCountMismatch { configured: 8, .. }
    ));
    assert!(err.to_string().contains("shard_count = 8"), "{err}");
    let api = tally_api::Application::build(other, Default::default()).await;
    assert!(api.is_err(), "an API with another shard count started");
}
