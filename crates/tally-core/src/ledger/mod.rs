//! The ledger's model: the state a batch reads ([`state`]) and the effects it decides
//! ([`effects`]), typed with the codes of [`crate::vocabulary`]. No IO: the store loads and
//! writes these values, the worker decides them.

pub mod effects;
pub mod state;

pub use effects::{
    ClosedHold, Closure, Effects, HoldEnd, IdConflict, NewHold, NewRecord, OverlappingEffects,
    VOIDED_REASON, VOIDED_STATUS,
};
pub use state::{AccountState, Hold, Recorded, Snapshot};
