//! Databases of their own: a fresh, migrated database per test (so tests run in parallel and
//! start empty), dropped when its [`TestDb`] is; and database URLs rewritten to name another
//! database on the same server, as the tests, the fault suite and the bench all need.

use tally_settings::{DatabaseSettings, Secret};

use crate::services::admin_database_url;

/// `url` pointing at database `name` instead (query string kept).
pub fn with_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A migrated database of one test, dropped with this value.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await: clean up on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

impl TestDb {
    /// A new pool of `size` connections on this database: its statement caches start cold.
    pub fn pool(&self, size: usize) -> tally_store::Pool {
        tally_store::connect(&DatabaseSettings {
            url: Secret::new(&self.url),
            pool_size: size,
            timeout_ms: 5_000,
        })
        .expect("pool")
    }
}

/// Creates an empty, migrated database of its own on the tests' server.
pub async fn fresh_database() -> TestDb {
    let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the admin database (is PostgreSQL up? `make test` starts it)");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let url = with_name(&admin_database_url(), &name);
    tally_store::migrate::run(&url).await.expect("migrate");
    TestDb { name, url }
}

#[cfg(test)]
mod tests {
    use super::with_name;

    #[test]
    fn rewrites_the_database_name_and_keeps_the_query() {
        assert_eq!(
            with_name("postgres://u:p@h:5432/tally?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_name("postgres://h", "x"), "postgres://h/x");
    }
}
