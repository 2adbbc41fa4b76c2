//! PostgreSQL for tally: the connection pool, the embedded migrations, the recorded shard
//! count, API keys, the database's clock (the one clock of decisions), the reads the API serves, and the two statements groups of a worker batch (load the
//! state a batch needs, write what it decided).
//!
//! [`StoreError`] says whether retrying can help; the worker's ack/nack decision and the API's
//! 503-vs-500 choice come from that, never from matching error text.

pub mod audit;
pub mod batch;
pub mod clock;
pub mod dead_letters;
pub mod error;
pub mod history;
pub mod keys;
pub mod leases;
pub mod meta;
pub mod migrate;
pub mod notify;
pub mod overview;
pub mod policies;
pub mod pool;
pub mod reads;
pub mod settlement;
pub mod tls;
pub mod users;
pub mod webhooks;

pub use deadpool_postgres::Pool;
pub use error::StoreError;
pub use pool::{connect, connect_bounded, connect_service, connect_worker};
