//! The services the tests run against: `TALLY_TEST_DATABASE_URL` and `TALLY_TEST_AMQP_URL`
//! (defaults: the local PostgreSQL and RabbitMQ of `deploy/local/services.sh`), so a test run
//! can use servers of its own beside a fault suite that restarts the default ones.

use std::future::Future;
use std::time::Duration;

/// The PostgreSQL database tests connect to for `CREATE DATABASE`.
pub fn admin_database_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://tally:tally@127.0.0.1:5432/tally".into())
}

/// The RabbitMQ tests publish to.
pub fn amqp_url() -> String {
    std::env::var("TALLY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `host:port` of a service URL, for a [`TcpProxy`](crate::TcpProxy) in front of it.
fn address_of(url: &str) -> String {
    let url = url::Url::parse(url).expect("service url");
    format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().expect("explicit port")
    )
}

/// The broker the tests use (`TALLY_TEST_AMQP_URL`), as `host:port`.
pub fn broker_address() -> String {
    address_of(&amqp_url())
}

/// The PostgreSQL server the tests use (`TALLY_TEST_DATABASE_URL`), as `host:port`.
pub fn database_address() -> String {
    address_of(&admin_database_url())
}

/// Polls `check` until it returns `Some` or `timeout` passes (never sleep-and-hope).
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
