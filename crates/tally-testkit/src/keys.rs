//! API keys of one test: an `admin` key and a read/write key (`transactions:write` and
//! `ledger:read`) created in the test's own database, and HTTP clients that send one.

use tally_core::auth::Scope;
use tally_settings::{DatabaseSettings, Secret};

/// The keys of one test's database.
#[derive(Clone)]
pub struct TestKeys {
    /// Grants every scope.
    pub admin: String,
    /// `transactions:write` and `ledger:read`: what a client posting and reading needs.
    pub read_write: String,
}

/// Names the keys are created under (what the records of their transactions show).
pub const ADMIN_KEY_NAME: &str = "test-admin";
pub const READ_WRITE_KEY_NAME: &str = "test-rw";

/// Creates the test's two keys in the (migrated) database at `database_url`.
pub async fn test_keys(database_url: &str) -> TestKeys {
    let pool = tally_store::connect(&DatabaseSettings {
        url: Secret::new(database_url),
        pool_size: 1,
        timeout_ms: 5_000,
    })
    .expect("pool");
    let create = |name, scopes: &'static [Scope]| {
        let pool = pool.clone();
        async move {
            tally_store::keys::create(&pool, name, scopes)
                .await
                .expect("create an API key")
                .token
        }
    };
    TestKeys {
        admin: create(ADMIN_KEY_NAME, &[Scope::Admin]).await,
        read_write: create(
            READ_WRITE_KEY_NAME,
            &[Scope::TransactionsWrite, Scope::LedgerRead],
        )
        .await,
    }
}

/// An HTTP client that sends `Authorization: Bearer <key>` with every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).expect("header value");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("HTTP client")
}
