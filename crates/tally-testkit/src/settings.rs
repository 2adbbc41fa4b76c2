//! Settings of one test: its own database and broker prefix, small pools, one API thread,
//! ports chosen by the OS.

use tally_settings::{Secret, Settings};

use crate::services::amqp_url;

/// The `local` profile pointed at `database_url` and `prefix` on the tests' broker.
pub fn test_settings(database_url: &str, prefix: &str) -> Settings {
    let mut s = Settings::load_profile("local").expect("default settings");
    s.database.url = Secret::new(database_url);
    s.database.pool_size = 4;
    s.broker.url = Secret::new(amqp_url());
    s.broker.prefix = prefix.to_string();
    s.ledger.shard_count = 4;
    s.api.host = "127.0.0.1".into();
    s.api.port = 0;
    s.api.threads = 1;
    s.worker.metrics_addr = "127.0.0.1:0".into();
    s
}
