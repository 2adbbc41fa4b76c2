//! What every request handler shares: the pool, the publisher and the settings they need.

use std::sync::Arc;
use tally_bus::Publisher;
use tally_core::AmountRules;
use tally_settings::Settings;
use tally_store::clock::DbClock;
use tally_store::Pool;

use crate::admission::Admission;
use crate::auth::Keys;
use crate::error::ApiError;
use crate::routes::jobs::Downloads;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub publisher: Publisher,
    pub settings: Arc<Settings>,
    pub amount_rules: AmountRules,
    pub admission: Arc<Admission>,
    /// This replica's reading of PostgreSQL's clock (withdraw_request deadlines use it).
    pub clock: DbClock,
    /// Settlement CSV downloads: their own small pool, so they never hold `pool`'s
    /// connections.
    pub downloads: Downloads,
    /// The API keys this replica accepts (reloaded in the background).
    pub keys: Arc<Keys>,
}

impl AppState {
    /// Until when a command published now may be settled: the confirm wait
    /// (`api.publish_timeout_ms`) and then the republishing of an unconfirmed copy
    /// (`api.settle_timeout_ms`). Past it the answer is `outcome_unknown`.
    pub fn publish_deadline(&self) -> tokio::time::Instant {
        let api = &self.settings.api;
        tokio::time::Instant::now()
            + std::time::Duration::from_millis(api.publish_timeout_ms)
            + std::time::Duration::from_millis(api.settle_timeout_ms)
    }

    /// A 503 carrying the configured Retry-After.
    pub fn unavailable(&self, message: &'static str) -> ApiError {
        ApiError::Unavailable {
            message,
            retry_after_secs: self.settings.api.retry_after_secs,
        }
    }

    /// A 503 `outcome_unknown` carrying the configured Retry-After.
    pub fn outcome_unknown(&self, message: &'static str) -> ApiError {
        ApiError::OutcomeUnknown {
            message,
            retry_after_secs: self.settings.api.retry_after_secs,
        }
    }
}
