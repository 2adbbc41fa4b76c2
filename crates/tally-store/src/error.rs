//! [`StoreError`]: every failure of the store, classified as retryable or not.

use tally_core::ledger::OverlappingEffects;
use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("migration: {0}")]
    Migration(#[from] refinery::Error),
    #[error(
        "shard count mismatch: this process is configured with ledger.shard_count = {configured}, \
         but the database was set up with {recorded}. Changing it would reorder commands of live \
         accounts; configure {recorded}, or start from an empty database"
    )]
    ShardCountMismatch { configured: u16, recorded: String },
    /// A transaction id was inserted by somebody else between our check and our write. Only
    /// possible when one id is reused for two accounts at once; a retry sees the winner.
    #[error("concurrent insert of transaction ids; retry the batch")]
    Conflict,
    /// Two statements of a batch write would touch the same row, so their order would
    /// matter: a bug in the decision, refused before anything is written. Permanent.
    #[error(transparent)]
    OverlappingEffects(#[from] OverlappingEffects),
    /// A row holds a code (kind, status, reason) this build does not know: a newer writer, or
    /// a row edited by hand. Refused rather than read as something else. Permanent.
    #[error("unknown {column} {value:?} in the database")]
    UnknownCode { column: &'static str, value: String },
    /// The batch's lease on its shard is no longer current: another worker owns the shard.
    /// Never retried: the batch is abandoned uncommitted and redelivered to the new owner.
    #[error("lease on shard {shard} lost: another worker owns it now")]
    Fenced { shard: u16 },
    #[error("the database has no tally schema yet: run `tally-worker migrate` first")]
    NotMigrated,
    #[error("invalid database url: {0}")]
    Config(String),
    /// The OS's random source failed while drawing a new API key's secret.
    #[error("no random bytes for a key secret: {0}")]
    Random(String),
    /// An API key that cannot be created as asked (its name, its scopes).
    #[error("invalid API key: {0}")]
    InvalidKey(String),
    /// The dedicated `LISTEN` connection ended without an error of its own (the server
    /// closed it): the listener reconnects.
    #[error("the listening connection closed")]
    ListenerClosed,
}

impl StoreError {
    /// Whether the same work may succeed if tried again later (connection lost, database
    /// restarting, serialization failure, deadlock, pool exhausted).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Pool(deadpool_postgres::PoolError::Backend(e)) | StoreError::Db(e) => {
                db_error_is_retryable(e)
            }
            StoreError::Pool(_) | StoreError::Conflict | StoreError::ListenerClosed => true,
            StoreError::Migration(_)
            | StoreError::ShardCountMismatch { .. }
            | StoreError::Fenced { .. }
            | StoreError::OverlappingEffects(_)
            | StoreError::UnknownCode { .. }
            | StoreError::NotMigrated => false,
            StoreError::Config(_) | StoreError::Random(_) | StoreError::InvalidKey(_) => false,
        }
    }
}

fn db_error_is_retryable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: an IO or protocol failure of the connection itself.
        None => true,
        Some(code) => {
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                // A statement cut by statement_timeout or a lock wait by lock_timeout (a
                // stalled peer held the rows): the same work succeeds once they are free.
                // Never a reason to dead-letter a command.
                || *code == SqlState::QUERY_CANCELED
                || *code == SqlState::LOCK_NOT_AVAILABLE
                // Our session was ended for idling in a transaction: nothing was committed.
                || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                // A write reached a server that is (now) a standby, through a connection
                // opened before a failover: nothing was written, and the pool drops that
                // connection at its next checkout (see `pool`), so a retry reaches the
                // new primary.
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
                || code.code().starts_with("08")
        }
    }
}

/// The code whose text `value` is, read from `column`; [`StoreError::UnknownCode`] for a text
/// `parse` does not know.
pub(crate) fn code<T>(
    column: &'static str,
    value: String,
    parse: fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(&value).ok_or(StoreError::UnknownCode { column, value })
}
