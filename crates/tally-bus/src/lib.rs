//! RabbitMQ for tally: connecting with a bound, declaring the topology (command exchange, K
//! quorum shard queues with single active consumer, dead letters), and the API's confirmed
//! [`Publisher`] that survives broker restarts and routes withdraw_request replies.
//!
//! Invariant kept here: a publish is reported successful only when the broker confirmed the
//! persistent message *and* routed it to a queue (`mandatory`); anything else is an error the
//! API turns into a 503, so a 200 always means "RabbitMQ has it".

pub mod publisher;
pub mod topology;

pub use lapin;
pub use publisher::{command_properties, PublishError, Publisher};
pub use topology::Topology;

use std::time::Duration;

/// Errors opening a broker connection.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
}

/// Opens a connection, giving up after `timeout` (a stopped broker must not hang callers).
pub async fn connect(
    url: &str,
    name: &str,
    timeout: Duration,
) -> Result<lapin::Connection, BusError> {
    let props = lapin::ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(timeout, lapin::Connection::connect(url, props))
        .await
        .map_err(|_| BusError::Timeout(timeout))?
        .map_err(BusError::from)
}
