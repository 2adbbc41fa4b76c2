//! The tally HTTP API (actix-web). It validates requests, publishes commands to the account's
//! shard queue with publisher confirms, waits for withdraw_request decisions under a deadline,
//! and serves reads from PostgreSQL. It never writes ledger state: the worker does.
//!
//! - [`startup`]: building and running the server (tests start it on port 0).
//! - [`admission`]: load shedding from the shard queue depths.
//! - [`auth`]: API keys and their scopes, checked in front of every route.
//! - [`observe`]: request ids and HTTP metrics around every request.
//! - [`error`]: the one error type and its JSON shape `{"error":{"code","message","field"?}}`.
//! - [`routes`]: the HTTP routes.
//! - [`model`]: the HTTP shapes of the answers, converted from the store's rows.
//! - [`openapi`]: the OpenAPI document, generated from the routes and the model.
//! - [`submit`]: the write protocol of `POST /transaction` and what each answer promises.
//! - [`prefer`]: the `Prefer: wait` header (read-your-writes on request).

pub mod admission;
pub mod auth;
pub mod error;
pub mod model;
pub mod observe;
pub mod openapi;
pub mod prefer;
pub mod routes;
pub mod startup;
pub mod state;
pub mod submit;

pub use startup::Application;
