//! The worker's pool bounds its sessions on the server (see `tally_store::connect_bounded`),
//! and what those bounds cut is retried, never taken for a permanent failure.

use std::time::Duration;
use tally_settings::{DatabaseSettings, Secret, SessionBounds};

fn database(url: &str) -> DatabaseSettings {
    DatabaseSettings {
        url: Secret::new(url),
        pool_size: 2,
        timeout_ms: 5000,
    }
}

fn database_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://tally:tally@127.0.0.1:5432/tally".into())
}

const BOUNDS: SessionBounds = SessionBounds {
    statement_timeout: Duration::from_millis(1500),
    idle_in_transaction: Duration::from_millis(700),
    heartbeat: Duration::from_secs(2),
};

async fn show(client: &tokio_postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .expect("SHOW")
        .get(0)
}

#[tokio::test]
async fn a_bounded_pool_sets_the_limits_on_every_session_and_keeps_the_urls_options() {
    let url = format!(
        "{}?options=-c%20application_name%3Dbounded-test",
        database_url()
    );
    let pool = tally_store::connect_bounded(&database(&url), &BOUNDS).expect("pool");
    let client = pool.get().await.expect("connection");
    assert_eq!(show(&client, "statement_timeout").await, "1500ms");
    assert_eq!(
        show(&client, "idle_in_transaction_session_timeout").await,
        "700ms"
    );
    assert_eq!(show(&client, "tcp_keepalives_idle").await, "2");
    assert_eq!(show(&client, "application_name").await, "bounded-test");

    let plain = tally_store::connect(&database(&database_url())).expect("pool");
    let client = plain.get().await.expect("connection");
    assert_eq!(show(&client, "statement_timeout").await, "0");
}

#[tokio::test]
async fn a_statement_cut_by_its_timeout_is_retryable() {
    let pool = tally_store::connect_bounded(&database(&database_url()), &BOUNDS).expect("pool");
    let client = pool.get().await.expect("connection");
    let error = client
        .execute("SELECT pg_sleep(5)", &[])
        .await
        .expect_err("statement_timeout cancels it");
    assert!(tally_store::StoreError::from(error).is_retryable());
}

#[tokio::test]
async fn a_session_idle_in_a_transaction_is_ended_and_that_is_retryable() {
    let pool = tally_store::connect_bounded(&database(&database_url()), &BOUNDS).expect("pool");
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT 1", &[]).await.expect("first statement");
    // The server ends the session 0.7 s into the idle time; poll until the next statement
    // fails rather than guess when.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let error = loop {
        match tx.execute("SELECT 1", &[]).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "session never ended"
                );
                tokio::time::sleep(Duration::from_millis(900)).await;
            }
        }
    };
    assert!(tally_store::StoreError::from(error).is_retryable());
}
