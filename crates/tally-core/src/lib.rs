//! Domain core of tally: what a transaction is, how it is validated, how it travels on the
//! wire, which shard owns an account, and how the ledger decides it. Pure code: no network,
//! no database, no files, no runtime (settings are loaded by `tally-settings`).
//!
//! Everything that must agree between the API, the worker and the store lives here, defined
//! once: the identifier charset, exact amount parsing, the versioned envelope, the payload
//! fingerprint that makes idempotency keys safe, `shard(accountId)`, which addresses a
//! webhook may target, the ledger's codes ([`vocabulary`]) and its rules ([`ledger`]), and
//! what an API key is and which scope each route needs ([`auth`]).

pub mod amount;
pub mod auth;
pub mod command;
pub mod ids;
pub mod ledger;
pub mod policy;
pub mod shard;
pub mod target;
pub mod vocabulary;

pub use amount::{AmountError, AmountRules};
pub use command::{Envelope, EnvelopeError, Outcome, ENVELOPE_VERSION};
pub use ids::{validate_id, IdError};
pub use policy::{Command, PolicyEnvelope, PolicyRequest};
pub use shard::shard_of;
pub use vocabulary::{HoldStatus, Kind, OutcomeStatus, Reason};
