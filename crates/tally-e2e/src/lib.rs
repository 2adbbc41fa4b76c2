//! End-to-end tests of tally live in `tests/e2e`: each starts API replicas and a worker
//! in-process (and nginx, proxies or a second worker where a test needs them) on a database
//! and a queue prefix of its own, against the real PostgreSQL and RabbitMQ. This library is
//! empty; a Cargo package needs one target besides its tests.
