//! Configuration shared by every tally process: the layered loader (embedded defaults →
//! profile → optional file → `TALLY_SECTION__KEY` environment) and the typed settings it
//! fills. Validation happens once, here, so a bad setting stops a process at start.

use rust_decimal::Decimal;
use serde::Deserialize;
use std::fmt;

use crate::amount::AmountRules;

const DEFAULTS: &str = include_str!("../../../config/default.toml");
const PROFILES: &[(&str, &str)] = &[
    ("local", include_str!("../../../config/local.toml")),
    (
        "production",
        include_str!("../../../config/production.toml"),
    ),
];

/// A string that must not appear in logs (passwords inside URLs, tokens).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub database: DatabaseSettings,
    pub broker: BrokerSettings,
    pub ledger: LedgerSettings,
    pub admission: AdmissionSettings,
    pub debug: DebugSettings,
    pub log: LogSettings,
    pub webhooks: WebhookSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    pub publish_timeout_ms: u64,
    pub retry_after_secs: u32,
    pub threads: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub batch_max: usize,
    pub prefetch: u16,
    pub hold_sweep_secs: u64,
    pub lease_ttl_ms: u64,
    pub lease_tick_ms: u64,
    /// `host:port` of the worker's `/metrics` listener; "off" or empty: none.
    pub metrics_addr: String,
}

impl WorkerSettings {
    /// The address of the `/metrics` listener, `None` when it is off.
    pub fn metrics_listen(&self) -> Result<Option<std::net::SocketAddr>, SettingsError> {
        match self.metrics_addr.trim() {
            "" | "off" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| {
                SettingsError::Invalid(format!(
                    "worker.metrics_addr must be host:port (an IP address) or \"off\", not {addr:?}"
                ))
            }),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub pool_size: usize,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BrokerSettings {
    pub url: Secret,
    pub prefix: String,
    pub delivery_limit: u32,
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawPolicy {
    AlwaysApply,
    RejectOverdraft,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LedgerSettings {
    pub shard_count: u16,
    pub amount_scale: u32,
    pub max_amount: Decimal,
    pub withdraw_policy: WithdrawPolicy,
    pub hold_ttl_secs: u64,
    pub request_deadline_ms: u64,
    pub decision_margin_ms: u64,
}

impl LedgerSettings {
    pub fn amount_rules(&self) -> AmountRules {
        AmountRules {
            max_scale: self.amount_scale,
            max: self.max_amount,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdmissionSettings {
    pub request_backlog: u32,
    pub max_backlog: u32,
    pub poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DebugSettings {
    pub enabled: bool,
    pub token: Secret,
}

/// Balance webhook delivery by the workers (see `config/default.toml`).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    pub poll_ms: u64,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub timeout_ms: u64,
    pub concurrency: usize,
    pub lease_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: String,
    pub level: String,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: unknown profile {0:?} (expected local or production)")]
    UnknownProfile(String),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads the layers for the profile in `TALLY_PROFILE` (default `local`).
    pub fn load() -> Result<Self, SettingsError> {
        let profile = std::env::var("TALLY_PROFILE").unwrap_or_else(|_| "local".into());
        Self::load_profile(&profile)
    }

    pub fn load_profile(profile: &str) -> Result<Self, SettingsError> {
        Self::load_profile_from(profile, None)
    }

    /// Like [`Settings::load_profile`], reading the `TALLY_*` variables from `env` instead of
    /// the process environment when given (tests check deploy files' environments with it).
    pub fn load_profile_from(
        profile: &str,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, SettingsError> {
        use config::{Config, Environment, File, FileFormat};
        let profile_toml = PROFILES
            .iter()
            .find(|(name, _)| *name == profile)
            .map(|(_, toml)| *toml)
            .ok_or_else(|| SettingsError::UnknownProfile(profile.to_string()))?;
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from_str(profile_toml, FileFormat::Toml));
        if let Ok(path) = std::env::var("TALLY_CONFIG") {
            builder = builder.add_source(File::with_name(&path).required(true));
        }
        let settings: Settings = builder
            .add_source(
                Environment::with_prefix("TALLY")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(env),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Refuses settings that would misbehave later rather than at start.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: &str| Err(SettingsError::Invalid(m.to_string()));
        if self.ledger.shard_count == 0 {
            return bad("ledger.shard_count must be at least 1");
        }
        if self.ledger.max_amount <= Decimal::ZERO {
            return bad("ledger.max_amount must be positive");
        }
        if self.ledger.decision_margin_ms >= self.ledger.request_deadline_ms {
            return bad("ledger.decision_margin_ms must be below ledger.request_deadline_ms");
        }
        if self.worker.batch_max == 0 || usize::from(self.worker.prefetch) < self.worker.batch_max {
            return bad("worker.prefetch must be at least worker.batch_max (> 0)");
        }
        if self.worker.lease_tick_ms == 0
            || self.worker.lease_tick_ms * 2 > self.worker.lease_ttl_ms
        {
            return bad("worker.lease_tick_ms must be positive and at most half of lease_ttl_ms");
        }
        self.worker.metrics_listen()?;
        let w = &self.webhooks;
        if w.poll_ms == 0 || w.max_attempts == 0 || w.concurrency == 0 || w.backoff_base_ms == 0 {
            return bad(
                "webhooks.poll_ms, max_attempts, concurrency, backoff_base_ms must be positive",
            );
        }
        if w.backoff_max_ms < w.backoff_base_ms || w.lease_ms <= w.timeout_ms {
            return bad(
                "webhooks: backoff_max_ms must be >= backoff_base_ms, lease_ms > timeout_ms",
            );
        }
        if self.database.pool_size == 0 {
            return bad("database.pool_size must be at least 1");
        }
        if self.broker.delivery_limit == 0 {
            return bad("broker.delivery_limit must be at least 1");
        }
        if self.broker.prefix.is_empty() || crate::ids::validate_id(&self.broker.prefix).is_err() {
            return bad("broker.prefix must be a non-empty identifier");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_load_and_validate() {
        let s = Settings::load_profile("local").unwrap();
        assert!(s.debug.enabled);
        assert_eq!(s.ledger.withdraw_policy, WithdrawPolicy::AlwaysApply);
        assert_eq!(s.ledger.amount_rules().max.to_string(), "1000000000000000");
        let p = Settings::load_profile("production").unwrap();
        assert!(!p.debug.enabled);
        assert!(Settings::load_profile("staging").is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = Settings::load_profile("local").unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("tally:tally@"), "{printed}");
        assert!(!printed.contains("guest:guest@"), "{printed}");
    }

    #[test]
    fn worker_metrics_addr_is_an_ip_and_port_or_off() {
        let mut s = Settings::load_profile("local").unwrap();
        assert_eq!(
            s.worker.metrics_listen().unwrap(),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        for off in ["off", ""] {
            s.worker.metrics_addr = off.into();
            assert_eq!(s.worker.metrics_listen().unwrap(), None);
        }
        s.worker.metrics_addr = "localhost:9100".into();
        assert!(s.validate().is_err());
    }
}
