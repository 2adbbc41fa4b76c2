//! Latency recording: HDR histograms in microseconds (1 µs .. 5 min, 3 significant digits)
//! and their summaries (p50, p99, p99.9, max) as JSON and as text.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::time::Duration;

const MAX_MICROS: u64 = 300_000_000;

/// A latency histogram.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // Constant bounds and precision that the library accepts: this cannot fail.
        Self(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(micros.min(MAX_MICROS));
    }

    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// Milliseconds at quantile `q` (0 when empty).
    pub fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }

    pub fn summary(&self) -> Value {
        json!({
            "count": self.count(),
            "p50_ms": round3(self.ms(0.5)),
            "p99_ms": round3(self.ms(0.99)),
            "p999_ms": round3(self.ms(0.999)),
            "max_ms": round3(self.max_ms()),
            "mean_ms": round3(if self.0.is_empty() { 0.0 } else { self.0.mean() / 1000.0 }),
        })
    }

    /// `p50 1.2ms p99 8.0ms p99.9 12ms max 30ms`
    pub fn line(&self) -> String {
        format!(
            "p50 {} p99 {} p99.9 {} max {}",
            fmt_ms(self.ms(0.5)),
            fmt_ms(self.ms(0.99)),
            fmt_ms(self.ms(0.999)),
            fmt_ms(self.max_ms())
        )
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = Latency::new();
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i * 100));
        }
        assert!((h.ms(0.5) - 50.0).abs() < 0.1, "{}", h.ms(0.5));
        assert!((h.ms(0.99) - 99.0).abs() < 0.1, "{}", h.ms(0.99));
        assert!((h.max_ms() - 100.0).abs() < 0.1);
        let mut sum = Latency::new();
        sum.add(&h);
        sum.add(&h);
        assert_eq!(sum.count(), 2000);
        assert_eq!(Latency::new().ms(0.99), 0.0);
    }
}
