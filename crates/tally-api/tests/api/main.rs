//! Integration tests of the whole write path: real PostgreSQL, real RabbitMQ, the API and the
//! worker started in-process on a fresh database and a fresh queue prefix per test.

mod helpers;
mod startup;
mod withdraw_request;

mod openapi;
mod write_path;
