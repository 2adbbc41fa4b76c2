//! RabbitMQ for tally — the whole AMQP adapter; no other service crate drives lapin:
//! - [`topology`]: the names and declaration of the command exchange, the K quorum shard
//!   queues (single active consumer, delivery limit) and the dead letters.
//! - [`headers`]: what a command message carries besides its body, each name defined once.
//! - [`endpoints`]: the nodes of a broker cluster; a connection goes to any live one and
//!   the next one goes elsewhere when it dies.
//! - [`publisher`]: the API's confirmed [`Publisher`], which survives broker restarts and
//!   the loss of its node.
//! - [`connection`]: a worker's or an operator command's [`Connection`]: declare, consume,
//!   reply, re-publish, queue depths.
//! - [`consumer`]: deliveries as plain values, settled by tag (ack, ack-through, dead-letter).
//! - [`reply`]: withdraw_request reply routing, the worker's end and the API's side by side.
//! - [`tls`]: `amqps://` URLs and their CA file.
//!
//! Invariant kept here: a publish is reported successful only when the broker confirmed the
//! persistent message *and* routed it to a queue (`mandatory`), so a 200 always means
//! "RabbitMQ has it"; a failure says whether the message surely never reached a queue or may
//! have (see [`PublishError::surely_not_accepted`]), and an unknown outcome can be settled by
//! publishing the same message again ([`Publisher::publish_settled`]).

pub mod connection;
pub mod consumer;
pub mod endpoints;
pub mod headers;
pub mod publisher;
pub mod reply;
pub mod tls;
pub mod topology;

pub use connection::{ConfirmedChannel, Connection};
pub use consumer::{Consumer, Death, Delivery, Tag};
pub use endpoints::Endpoints;
pub use headers::{command_properties, republish_properties};
pub use lapin;
pub use publisher::{PublishError, Publisher};
pub use reply::{Replier, ReplyTo};
pub use topology::Topology;

use std::time::Duration;

/// Errors talking to the broker (other than publishing: see [`PublishError`]).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    /// A consumer's channel or connection closed.
    #[error("consumer ended (channel or connection closed)")]
    ConsumerEnded,
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("not connected to the broker")]
    NotConnected,
    #[error("invalid broker url: {0}")]
    Url(String),
    /// The URL's TLS settings cannot work (see [`tls`]).
    #[error("broker TLS: {0}")]
    Tls(String),
    /// A plain `amqp://` connection the server cut, or answered with something that is not
    /// AMQP, during the handshake: most likely a listener that only speaks TLS.
    #[error(
        "broker: {0} (the server closed a plain amqp:// connection or did not answer in AMQP; \
         if it accepts TLS only, use amqps:// with cacertfile=<CA file>)"
    )]
    PlainRefused(lapin::Error),
}

/// Opens a connection, giving up after `timeout` (a stopped broker must not hang callers).
/// `amqps://` URLs connect over TLS ([`tls`]).
pub async fn connect(
    url: &str,
    name: &str,
    timeout: Duration,
) -> Result<lapin::Connection, BusError> {
    let uri: lapin::uri::AMQPUri = url.parse().map_err(BusError::Url)?;
    open(uri, tls::config(url)?, name, timeout).await
}

async fn open(
    uri: lapin::uri::AMQPUri,
    tls: lapin::tcp::OwnedTLSConfig,
    name: &str,
    timeout: Duration,
) -> Result<lapin::Connection, BusError> {
    let plain = uri.scheme == lapin::uri::AMQPScheme::AMQP;
    let props = lapin::ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    tokio::time::timeout(
        timeout,
        lapin::Connection::connect_uri_with_config(uri, props, tls, runtime),
    )
    .await
    .map_err(|_| BusError::Timeout(timeout))?
    .map_err(|e| match e.kind() {
        // A TLS-only listener either drops the connection or answers the AMQP header with a
        // TLS alert, which does not parse as a frame.
        lapin::ErrorKind::IOError(_)
        | lapin::ErrorKind::ParsingError(_)
        | lapin::ErrorKind::InvalidProtocolVersion(_)
            if plain =>
        {
            BusError::PlainRefused(e)
        }
        _ => BusError::from(e),
    })
}

/// Like [`connect`], with an AMQP heartbeat of at most `heartbeat` (whole seconds, at least
/// one; a lower value in the URL or from the broker wins). Both ends then close a connection
/// that stays silent for about two heartbeats: RabbitMQ drops the consumers of a stalled
/// process (SIGSTOP, a frozen VM) so that single active consumer hands its queues on, and
/// lapin gives up on a broker that froze. Without it the broker's default (60 s) applies.
pub async fn connect_with_heartbeat(
    url: &str,
    name: &str,
    timeout: Duration,
    heartbeat: Duration,
) -> Result<lapin::Connection, BusError> {
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(BusError::Url)?;
    let ours = u16::try_from(heartbeat.as_secs().max(1)).unwrap_or(u16::MAX);
    uri.query.heartbeat = Some(
        uri.query
            .heartbeat
            .filter(|&h| h > 0)
            .map_or(ours, |h| h.min(ours)),
    );
    open(uri, tls::config(url)?, name, timeout).await
}
