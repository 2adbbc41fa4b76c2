//! Embedded SQL migrations (`migrations/` at the repository root), applied by an explicit step
//! (`tally-worker migrate`). A session advisory lock serializes concurrent migrators: the
//! second one waits, then finds nothing left to do.

use tokio_postgres::NoTls;

use crate::tls::Tls;
use crate::StoreError;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Arbitrary constant shared by every tally migrator ("tally" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_616c_6c79;

/// Runs a connection until it ends.
async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "migration connection ended");
    }
}

/// Applies pending migrations; returns how many were applied (over TLS when the URL asks,
/// [`crate::tls`]).
pub async fn run(database_url: &str) -> Result<usize, StoreError> {
    let (config, tls) = crate::tls::parse(database_url)?;
    let (mut client, driver) = match tls {
        Tls::Plain => {
            let (client, connection) = config.connect(NoTls).await?;
            (client, tokio::spawn(drive(connection)))
        }
        Tls::VerifyFull(connector) => {
            let (client, connection) = config.connect(connector).await?;
            (client, tokio::spawn(drive(connection)))
        }
    };
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = embedded::migrations::runner()
        .set_grouped(true)
        .run_async(&mut client)
        .await;
    // The lock is released when the session ends anyway; unlocking is just being tidy.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = driver.await;
    Ok(report?.applied_migrations().len())
}
