//! What lets the API and the workers follow a PostgreSQL failover without a restart, against
//! a real server (`TALLY_TEST_DATABASE_URL`): a `target_session_attrs=read-write` pool drops,
//! at checkout, a connection whose server stopped taking writes (a demoted primary; here a
//! session set read-only, which the server reports the same way), a write refused for that
//! reason is retryable, and a multi-host URL skips a host that is down. The failover itself,
//! with pg_auto_failover, is `make test-ha`.

use std::time::Duration;
use tally_settings::{DatabaseSettings, Secret};

fn database_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://tally:tally@127.0.0.1:5432/tally".into())
}

fn pool(url: &str) -> tally_store::Pool {
    tally_store::connect(&DatabaseSettings {
        url: Secret::new(url),
        pool_size: 1,
        timeout_ms: 5000,
    })
    .expect("pool")
}

/// `url` with `param` added to its query string.
fn with_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// Checks a connection out, makes its session read-only (what a demoted server looks like to
/// it) and hands it back; returns its backend pid.
async fn make_the_pooled_connection_read_only(pool: &tally_store::Pool) -> i32 {
    let client = pool.get().await.expect("connection");
    client
        .batch_execute("SET SESSION default_transaction_read_only = on")
        .await
        .expect("set read-only");
    backend_pid(&client).await
}

#[tokio::test]
async fn a_primary_only_pool_drops_a_connection_whose_server_stopped_taking_writes() {
    let pool = pool(&with_param(
        &database_url(),
        "target_session_attrs=read-write",
    ));
    let read_only = make_the_pooled_connection_read_only(&pool).await;
    let client = pool.get().await.expect("a new connection");
    assert_ne!(
        backend_pid(&client).await,
        read_only,
        "the read-only connection came back"
    );
    let row = client
        .query_one("SHOW transaction_read_only", &[])
        .await
        .expect("show");
    assert_eq!(row.get::<_, String>(0), "off");
}

#[tokio::test]
async fn a_plain_pool_keeps_its_connections_without_a_check() {
    // Single-server URLs (the default `make up`) pay no extra round trip per checkout.
    let pool = pool(&database_url());
    let read_only = make_the_pooled_connection_read_only(&pool).await;
    let client = pool.get().await.expect("connection");
    assert_eq!(backend_pid(&client).await, read_only);
}

#[tokio::test]
async fn a_write_refused_by_a_read_only_server_is_retryable() {
    let pool = pool(&database_url());
    let client = pool.get().await.expect("connection");
    client
        .batch_execute("SET SESSION default_transaction_read_only = on")
        .await
        .expect("set read-only");
    let error = client
        .batch_execute("CREATE TABLE refused_on_a_standby (x int)")
        .await
        .expect_err("read-only");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );
    assert!(tally_store::StoreError::from(error).is_retryable());
}

#[tokio::test]
async fn a_multi_host_url_skips_a_host_that_is_down() {
    let url = database_url();
    // A port nobody listens on: bind one, then let it go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // postgres://user:password@HOST:PORT/db → postgres://user:password@DEAD,HOST:PORT/db
    let at = url.find('@').expect("credentials in the test URL") + 1;
    let multi = format!("{}127.0.0.1:{closed},{}", &url[..at], &url[at..]);
    let pool = pool(&with_param(&multi, "target_session_attrs=read-write"));
    let client = tokio::time::timeout(Duration::from_secs(10), pool.get())
        .await
        .expect("in time")
        .expect("the live host");
    client.simple_query("SELECT 1").await.expect("query");
}
