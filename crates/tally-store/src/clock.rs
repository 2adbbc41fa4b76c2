//! PostgreSQL's clock as the one clock of ledger decisions, and how far this host's clock is
//! from it.
//!
//! The worker decides with the database's time (see the batch fence), so a withdraw_request's
//! decide-by instant must be written in that clock too: the API adds its measured offset. Every
//! process measures the offset at start and every `ledger.clock_check_ms` ([`DbClock`]), logs a
//! warning and exports it (`tally_clock_offset_seconds`), so a host whose clock drifts is seen
//! before it decides anything wrongly; the API refuses withdraw_requests while the offset is
//! unknown or too large.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::StoreError;

/// One measurement of the database's clock against this host's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockSample {
    /// PostgreSQL's clock minus this host's (positive: this host is behind).
    pub offset: chrono::Duration,
    /// Half the round trip of the reading: the true offset is within ± this.
    pub uncertainty: Duration,
    /// When it was taken, on this host's monotonic clock.
    pub taken: Instant,
}

impl ClockSample {
    /// The largest the difference between the two clocks can be, given this reading.
    pub fn worst_skew(&self) -> Duration {
        self.offset.abs().to_std().unwrap_or(Duration::MAX) + self.uncertainty
    }
}

/// Reads `clock_timestamp()` a few times and keeps the reading with the shortest round trip
/// (the tightest bound): the database's time is taken to be at the middle of that trip.
pub async fn sample(pool: &Pool) -> Result<ClockSample, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached("SELECT clock_timestamp()").await?;
    let mut best: Option<ClockSample> = None;
    for _ in 0..3 {
        let (sent, sent_wall) = (Instant::now(), Utc::now());
        let db: DateTime<Utc> = client.query_one(&statement, &[]).await?.get(0);
        let trip = sent.elapsed();
        let half = trip / 2;
        let local_mid = sent_wall + chrono::Duration::from_std(half).unwrap_or_default();
        let reading = ClockSample {
            offset: db - local_mid,
            uncertainty: half,
            taken: sent,
        };
        if best.is_none_or(|b| reading.uncertainty < b.uncertainty) {
            best = Some(reading);
        }
    }
    best.ok_or_else(|| StoreError::Config("no clock reading".into()))
}

/// What this process knows of its clock against the database's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClockState {
    /// Within the allowed skew: decisions may use `Utc::now() + offset`.
    Trusted(ClockSample),
    /// Read recently, but possibly farther off than the allowed skew.
    Skewed(ClockSample),
    /// No recent reading (the database has been unreachable).
    Unknown,
}

/// The last clock reading of this process, refreshed in the background, and the one rule of
/// whether it may be trusted (`ledger.max_clock_skew_ms`).
#[derive(Clone)]
pub struct DbClock {
    latest: Arc<RwLock<Option<ClockSample>>>,
    /// A reading older than this is not trusted (the database has been unreachable).
    fresh_for: Duration,
    /// The largest skew a trusted reading may have.
    max_skew: Duration,
}

impl DbClock {
    /// Takes a first reading (a failure leaves the clock unknown until the next one), then
    /// refreshes it every `every` until `shutdown`. A reading whose worst skew exceeds
    /// `max_skew` is not trusted, and logged as a warning.
    pub async fn start(
        pool: Pool,
        every: Duration,
        max_skew: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let clock = Self {
            latest: Arc::new(RwLock::new(None)),
            fresh_for: every * 3,
            max_skew,
        };
        clock.refresh(&pool).await;
        let task = clock.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => task.refresh(&pool).await,
                }
            }
        });
        clock
    }

    async fn refresh(&self, pool: &Pool) {
        match sample(pool).await {
            Ok(reading) => {
                let offset_ms = reading.offset.num_milliseconds();
                if reading.worst_skew() > self.max_skew {
                    tracing::warn!(offset_ms, uncertainty = ?reading.uncertainty,
                        "this host's clock is far from PostgreSQL's");
                } else {
                    tracing::debug!(offset_ms, uncertainty = ?reading.uncertainty, "clock checked");
                }
                // Milliseconds to seconds for the metric; the offset itself stays exact.
                tally_telemetry::metrics::set_clock_offset_secs(offset_ms as f64 / 1000.0);
                if let Ok(mut latest) = self.latest.write() {
                    *latest = Some(reading);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read PostgreSQL's clock"),
        }
    }

    /// The last reading judged: recent enough, and within the allowed skew.
    pub fn state(&self) -> ClockState {
        let latest = self.latest.read().ok().and_then(|l| *l);
        match latest.filter(|r| r.taken.elapsed() <= self.fresh_for) {
            Some(r) if r.worst_skew() <= self.max_skew => ClockState::Trusted(r),
            Some(r) => ClockState::Skewed(r),
            None => ClockState::Unknown,
        }
    }

    /// This host's estimate of the database's time now, only while the clock is trusted.
    pub fn trusted_now(&self) -> Option<DateTime<Utc>> {
        match self.state() {
            ClockState::Trusted(r) => Some(Utc::now() + r.offset),
            _ => None,
        }
    }
}
