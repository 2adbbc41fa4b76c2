//! What tally's tests, the fault suite (`tally-chaos`) and the bench (`tally-bench`) share,
//! kept out of the service crates:
//!
//! - [`services`]: the PostgreSQL and RabbitMQ the tests use (`TALLY_TEST_DATABASE_URL`,
//!   `TALLY_TEST_AMQP_URL`), and [`eventually`] to await a condition instead of sleeping.
//! - [`database`]: a fresh, migrated database of one test, dropped with it; database URLs.
//! - [`queues`]: a broker prefix of one test, and deleting a prefix's queues and exchanges.
//! - [`settings`]: settings of one test (own database, own prefix, small everything).
//! - [`keys`]: the API keys of one test (admin, read/write) and clients that send one.
//! - [`proxy`]: a TCP proxy a test can cut, restore and stall (a broker or database outage).
//! - [`nginx`]: `nginx/local.conf.template` rendered as `deploy/local/stack.sh` renders it,
//!   and nginx run from it in front of a test's API replicas.
//! - [`help`]: a binary's `--help` names what the Makefile and the docs pass to it.
//! - [`process`]: a child process killed when the test ends, and libfaketime to shift one's
//!   wall clock.
//! - [`rng`]: a seeded, reproducible random number generator and a Zipf sampler.

pub mod database;
pub mod help;
pub mod keys;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod queues;
pub mod rng;
pub mod services;
pub mod settings;

pub use database::{fresh_database, TestDb};
pub use keys::{client_with_key, test_keys, TestKeys};
pub use nginx::Nginx;
pub use proxy::TcpProxy;
pub use services::{admin_database_url, amqp_url, broker_address, database_address, eventually};
pub use settings::test_settings;
