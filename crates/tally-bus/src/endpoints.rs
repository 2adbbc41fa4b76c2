//! The nodes of a broker cluster as one address. lapin opens one URI per connection (and its
//! own recovery retries that same URI), so moving to another node when ours dies is ours to
//! do: [`Endpoints::connect`] tries the nodes in turn and remembers where to start next time.
//!
//! Which node a connection lands on does not matter for correctness: a quorum queue is
//! reached from any node (publishes and deliveries are forwarded to its leader). It only
//! matters that a process whose node died finds a live one without a restart, and that the
//! processes of a stack do not all pile onto the first node of the list.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::BusError;

/// The broker URLs of one installation (one per node) and the node to try first next time.
#[derive(Debug)]
pub struct Endpoints {
    urls: Vec<String>,
    /// Index (modulo the list's length) of the node the next [`Endpoints::connect`] tries
    /// first: the one after the node of the last connection, which is the one that just
    /// failed when a caller reconnects.
    next: AtomicUsize,
}

impl Endpoints {
    /// The nodes the settings name (`broker.urls`, else `broker.url`), in order. The first
    /// connection starts at a node picked by the process id, so the processes of a stack
    /// spread over the nodes.
    pub fn from_settings(broker: &tally_settings::BrokerSettings) -> Self {
        let urls = broker.endpoints();
        let start = std::process::id() as usize % urls.len().max(1);
        Self {
            urls,
            next: AtomicUsize::new(start),
        }
    }

    /// A single broker (tools and tests).
    pub fn one(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            next: AtomicUsize::new(0),
        }
    }

    /// Opens a connection to the first node that accepts one, each attempt bounded by
    /// `timeout`, starting with the node after the one used last. With `heartbeat`, the
    /// connection negotiates it (see [`crate::connect_with_heartbeat`]). The error is the
    /// last node's when none accepts.
    pub async fn connect(
        &self,
        name: &str,
        timeout: Duration,
        heartbeat: Option<Duration>,
    ) -> Result<lapin::Connection, BusError> {
        let start = self.next.load(Ordering::Relaxed);
        // Stays so only for an empty list, which the settings never give.
        let mut last = BusError::NotConnected;
        for offset in 0..self.urls.len() {
            let index = (start + offset) % self.urls.len();
            let url = &self.urls[index];
            let opened = match heartbeat {
                Some(h) => crate::connect_with_heartbeat(url, name, timeout, h).await,
                None => crate::connect(url, name, timeout).await,
            };
            match opened {
                Ok(connection) => {
                    self.next.store(index + 1, Ordering::Relaxed);
                    if self.urls.len() > 1 {
                        tracing::info!(node = %address(url), "broker node chosen");
                    }
                    return Ok(connection);
                }
                Err(e) => {
                    if self.urls.len() > 1 {
                        tracing::warn!(node = %address(url), error = %e, "broker node refused; trying the next");
                    }
                    last = e;
                }
            }
        }
        // Start the next round where this one would have gone on.
        self.next.store(start + 1, Ordering::Relaxed);
        Err(last)
    }
}

/// `host:port` of an AMQP URL, for logs (never the credentials).
fn address(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "(unparsable url)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_logs_hide_credentials() {
        assert_eq!(
            address("amqp://user:secret@127.0.0.1:5673/%2f"),
            "127.0.0.1:5673"
        );
        assert_eq!(address("amqp://h/%2f"), "h:5672");
    }
}
