//! PostgreSQL `LISTEN`: one dedicated connection (not a pooled one: a pooled connection is
//! handed to other work and its notifications would go to whoever holds it) that listens on
//! the channels the triggers of `migrations/V10` notify, and reports each notification.
//!
//! A session ends with an error when the connection is lost; the caller reconnects, and must
//! treat a new session as "anything may have happened": notifications sent while nobody
//! listened are gone (PostgreSQL does not queue them for a listener that is not connected).
//! The notifications are only wake-ups: the tables stay the truth, and every consumer still
//! polls them on a slow fallback period.

use futures_util::StreamExt;
use std::future::Future;
use std::pin::Pin;
use tally_settings::DatabaseSettings;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::tls::Tls;
use crate::StoreError;

/// Notified (by a trigger, in the inserting transaction, so on its commit) when a settlement
/// job becomes QUEUED: created, or handed back by a runner that shut down.
pub const SETTLEMENT_JOBS: &str = "tally_settlement_jobs";
/// Notified (by a trigger, in the batch transaction) when webhook deliveries are scheduled.
pub const WEBHOOK_DELIVERIES: &str = "tally_webhook_deliveries";

/// Opens a connection, `LISTEN`s on `channels`, calls `listening` once the server confirmed
/// it, then `notified(channel)` for every notification, until `stop` (Ok) or until the
/// connection fails (Err: reconnect). Keepalives are on, so a server that vanished without a
/// word (a dead host) ends the session too instead of leaving it silently deaf.
pub async fn listen(
    database: &DatabaseSettings,
    channels: &[&str],
    listening: impl FnOnce(),
    mut notified: impl FnMut(&str),
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    let (mut pg, tls) = crate::tls::parse(database.url.expose())?;
    pg.keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(10))
        .connect_timeout(std::time::Duration::from_millis(database.timeout_ms));
    let (tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let (client, driver): (_, Pin<Box<dyn Future<Output = StoreError> + Send>>) = match tls {
        Tls::Plain => {
            let (client, connection) = pg.connect(NoTls).await?;
            (client, Box::pin(drive(connection, tx)))
        }
        Tls::VerifyFull(connector) => {
            let (client, connection) = pg.connect(connector).await?;
            (client, Box::pin(drive(connection, tx)))
        }
    };
    let mut driver = driver;
    // Channel names are our constants, quoted as identifiers all the same.
    let statement: String = channels
        .iter()
        .map(|c| format!("LISTEN \"{}\";", c.replace('"', "\"\"")))
        .collect();
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = Some(listening);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            ended = &mut driver => return Err(ended),
            done = &mut listen, if listening.is_some() => {
                done?;
                if let Some(listening) = listening.take() {
                    listening();
                }
            }
            Some(channel) = messages.recv() => notified(&channel),
        }
    }
}

/// Drives a connection, sending the channel of each notification to `tx`; returns the error
/// that ended it.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> StoreError
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(n)) => {
                let _ = tx.send(n.channel().to_string());
            }
            // Notices (warnings from the server) need nothing from us.
            Ok(_) => {}
            Err(e) => return StoreError::Db(e),
        }
    }
    StoreError::ListenerClosed
}
