//! End-to-end tests of the whole write path: real PostgreSQL, real RabbitMQ, the API and the
//! worker started in-process on a fresh database and a fresh queue prefix per test.

#![allow(clippy::unwrap_used)] // a panic in a test is its failure message

mod admission;
mod answers;
mod auth;
mod broker_nodes;
mod browser;
mod console;
mod deploy;
mod faults;
mod ha;
mod helpers;
mod history;
mod id_conflicts;
mod jobs;
mod leases;
mod lifecycle;
mod metrics;
mod policy;
mod read_your_writes;
mod security;
mod shutdown;
mod startup;
mod submit;
mod through_nginx;
mod tls;
mod users;
mod webhooks;
mod withdraw_request;

mod openapi;
mod write_path;
