//! Domain core of tally: what a transaction is, how it is validated, how it travels on the
//! wire and which shard owns an account. Pure code: no network, no database, no runtime.
//!
//! Everything that must agree between the API and the worker lives here, defined once:
//! the identifier charset, exact amount parsing, the versioned envelope, the payload
//! fingerprint that makes idempotency keys safe, `shard(accountId)`, and which addresses a
//! webhook may target.

pub mod amount;
pub mod command;
pub mod ids;
pub mod ledger;
pub mod settings;
pub mod shard;
pub mod target;
pub mod vocabulary;

pub use amount::{AmountError, AmountRules};
pub use command::{Envelope, EnvelopeError, Outcome, ENVELOPE_VERSION};
pub use ids::{validate_id, IdError};
pub use shard::shard_of;
pub use vocabulary::{HoldStatus, Kind, OutcomeStatus, Reason};
