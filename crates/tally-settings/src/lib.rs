//! Configuration shared by every tally process: the layered loader (embedded defaults →
//! profile → optional file → `TALLY_SECTION__KEY` environment) and the typed settings it
//! fills. Validation happens once, here, so a bad setting stops a process at start.
//!
//! A crate of its own so that `tally-core` stays pure: loading reads files and the
//! environment. The ledger's own knobs (amount rules, withdraw policy) are core types that
//! these settings fill.

use rust_decimal::Decimal;
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

use tally_core::amount::{AmountRules, MAX_DECIMAL_DIGITS};
use tally_core::ledger::WithdrawPolicy;

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
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub webhooks: WebhookSettings,
    pub jobs: JobSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    pub publish_timeout_ms: u64,
    /// After a publish whose outcome is unknown: how long the same message is published
    /// again to settle it before the answer says `outcome_unknown`.
    pub settle_timeout_ms: u64,
    /// Longest wait a client may ask for with `Prefer: wait` (a deposit's or withdraw's
    /// decision) or that `GET /account/{id}?minSeq=` spends; 0: such waits are off.
    pub max_prefer_wait_ms: u64,
    pub retry_after_secs: u32,
    pub threads: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub batch_max: usize,
    pub prefetch: u16,
    pub hold_sweep_secs: u64,
    /// Seconds between two runs of the conservation auditor by this worker, exported as
    /// `tally_audit_failing_checks` for alerting; 0: never.
    pub audit_every_secs: u64,
    pub lease_ttl_ms: u64,
    pub lease_tick_ms: u64,
    /// `host:port` of the worker's `/metrics` listener; "off" or empty: none.
    pub metrics_addr: String,
    /// Longest statement of a shard session; unset: `lease_ttl_ms`. See [`SessionBounds`].
    #[serde(default)]
    pub statement_timeout_ms: Option<u64>,
    /// Longest idle time inside a transaction of a shard session; unset: half `lease_ttl_ms`.
    #[serde(default)]
    pub idle_in_transaction_timeout_ms: Option<u64>,
    /// AMQP heartbeat and TCP keepalive idle time, seconds; unset: `lease_ttl_ms` / 2000
    /// (at least 1).
    #[serde(default)]
    pub heartbeat_secs: Option<u16>,
}

/// How long a stalled worker (SIGSTOP, a frozen VM, a long pause) can keep its shards from
/// the others. The lease epoch checked in every batch (the fence) is what stops two writers;
/// these bounds only give the shards back: PostgreSQL ends the stalled sessions, releasing the
/// fence's row lock that takers skip, and RabbitMQ drops the silent connection, releasing its
/// single-active consumers, both within about the lease TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBounds {
    /// PostgreSQL cancels a statement running longer (`statement_timeout`); the batch is
    /// retried. At most the lease TTL: a statement holds the fence while it runs.
    pub statement_timeout: Duration,
    /// PostgreSQL ends a session idle inside a transaction longer
    /// (`idle_in_transaction_session_timeout`), which frees its locks. Below the lease TTL: a
    /// batch transaction is never idle for long (only the decision runs between statements).
    pub idle_in_transaction: Duration,
    /// AMQP heartbeat: RabbitMQ closes a connection silent for about two of these. Also the
    /// TCP keepalive idle time of the database connections, both ends (a host that vanished).
    pub heartbeat: Duration,
}

impl WorkerSettings {
    /// The bounds on the worker's sessions: the configured values, else derived from the
    /// lease TTL.
    pub fn session_bounds(&self) -> SessionBounds {
        let ttl = self.lease_ttl_ms;
        let heartbeat = self.heartbeat_secs.map_or((ttl / 2000).max(1), u64::from);
        SessionBounds {
            statement_timeout: Duration::from_millis(self.statement_timeout_ms.unwrap_or(ttl)),
            idle_in_transaction: Duration::from_millis(
                self.idle_in_transaction_timeout_ms.unwrap_or(ttl / 2),
            ),
            heartbeat: Duration::from_secs(heartbeat),
        }
    }

    /// Refuses bounds that would let a stalled worker hold its shards past the lease TTL, or
    /// that PostgreSQL would read as "no limit" (0).
    fn validate_session_bounds(&self) -> Result<(), SettingsError> {
        let ttl = Duration::from_millis(self.lease_ttl_ms);
        let b = self.session_bounds();
        let bad = |m: &str| Err(SettingsError::Invalid(m.to_string()));
        if b.statement_timeout.is_zero() || b.statement_timeout > ttl {
            return bad("worker.statement_timeout_ms must be positive and at most lease_ttl_ms");
        }
        if b.idle_in_transaction.is_zero() || b.idle_in_transaction >= ttl {
            return bad(
                "worker.idle_in_transaction_timeout_ms must be positive and below lease_ttl_ms",
            );
        }
        if b.heartbeat.is_zero() || b.heartbeat > ttl {
            return bad(
                "worker.heartbeat_secs must be at least 1 and at most lease_ttl_ms \
                 (a lease_ttl_ms below 1000 needs no less than a 1 s heartbeat)",
            );
        }
        Ok(())
    }

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
    /// The broker of a single node.
    pub url: Secret,
    /// Every node of a cluster, each a URL of its own (lapin opens one URI per connection):
    /// a process connects to any live one and moves on when it dies. When set, `url` is not
    /// used. In the environment: `TALLY_BROKER__URLS`, comma-separated.
    #[serde(default)]
    pub urls: Vec<Secret>,
    pub prefix: String,
    pub delivery_limit: u32,
    pub connect_timeout_ms: u64,
    /// Replicas of each shard queue, given when it is created (`x-quorum-initial-group-size`;
    /// a cluster with fewer nodes gives each queue one per node).
    pub quorum_group_size: u16,
}

impl BrokerSettings {
    /// The broker URLs to try, in order: `urls` when set, else `url`.
    pub fn endpoints(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.expose().to_string()]
        } else {
            self.urls.iter().map(|u| u.expose().to_string()).collect()
        }
    }
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
    /// How often every process compares its clock with PostgreSQL's.
    pub clock_check_ms: u64,
    /// Past this difference with PostgreSQL's clock the API refuses withdraw_requests.
    pub max_clock_skew_ms: u64,
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

/// API keys (see `config/default.toml` and SECURITY.md).
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// Every route but the probes needs `Authorization: Bearer <key>` with the route's scope.
    /// Off: nobody is asked for a key (a trusted network only); the API warns at start and on
    /// `/status`.
    pub enabled: bool,
    /// How often each API replica reloads the keys that are not revoked: a revocation takes
    /// effect on every replica within about this long.
    pub refresh_ms: u64,
    /// Whether `/metrics` is served without a key (Prometheus scrapes each replica); off, it
    /// needs an `admin` key.
    pub public_metrics: bool,
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
    /// Sends in flight at once to one receiver (the URL's host and port), so that a slow or
    /// hanging receiver holds at most this many of the `concurrency` slots.
    pub per_receiver: usize,
    /// Whether a webhook may target loopback, private, link-local or other non-public
    /// addresses (checked at registration and, after DNS resolution, at every send).
    pub allow_private_targets: bool,
    /// Hours after which sent and superseded deliveries are deleted (failed ones are kept);
    /// 0: kept forever.
    pub retention_hours: u64,
}

/// Bounds of settlement jobs, enforced by the API (see `config/default.toml`).
#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    /// Longest range of one job, in days, both ends included.
    pub max_range_days: u32,
    /// Jobs waiting to run (QUEUED) at most; beyond it creation is refused with 429.
    pub max_queued: u32,
    /// CSV downloads served at once by one API replica, on a pool of their own of this size.
    pub download_connections: usize,
    /// The workers' fallback poll for QUEUED jobs: they are woken by LISTEN/NOTIFY, and poll
    /// only in case a notification was lost (the listening connection was down).
    pub poll_ms: u64,
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
                    // Only these keys are lists (comma-separated); every other one stays a
                    // plain value.
                    .list_separator(",")
                    .with_list_parse_key("broker.urls")
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
        // Every amount the rules allow must fit a Decimal exactly (28 significant digits).
        let max_digits = self.ledger.max_amount.trunc().to_string().len();
        let max_digits = i64::try_from(max_digits).unwrap_or(i64::MAX);
        if i64::from(self.ledger.amount_scale).saturating_add(max_digits) > MAX_DECIMAL_DIGITS {
            return bad(
                "ledger.amount_scale plus the digits of ledger.max_amount must be at most 28",
            );
        }
        if self.ledger.decision_margin_ms >= self.ledger.request_deadline_ms {
            return bad("ledger.decision_margin_ms must be below ledger.request_deadline_ms");
        }
        if self.ledger.max_clock_skew_ms >= self.ledger.decision_margin_ms {
            return bad("ledger.max_clock_skew_ms must be below ledger.decision_margin_ms");
        }
        if self.ledger.clock_check_ms == 0 {
            return bad("ledger.clock_check_ms must be positive");
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
        self.worker.validate_session_bounds()?;
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
        if w.per_receiver == 0 {
            return bad("webhooks.per_receiver must be at least 1");
        }
        let j = &self.jobs;
        if j.max_range_days == 0
            || j.max_queued == 0
            || j.download_connections == 0
            || j.poll_ms == 0
        {
            return bad(
                "jobs.max_range_days, jobs.max_queued, jobs.download_connections and \
                 jobs.poll_ms must be positive",
            );
        }
        if self.auth.refresh_ms == 0 {
            return bad("auth.refresh_ms must be positive");
        }
        if self.database.pool_size == 0 {
            return bad("database.pool_size must be at least 1");
        }
        if self.broker.delivery_limit == 0 {
            return bad("broker.delivery_limit must be at least 1");
        }
        if self.broker.quorum_group_size == 0 {
            return bad("broker.quorum_group_size must be at least 1");
        }
        if self
            .broker
            .urls
            .iter()
            .any(|u| u.expose().trim().is_empty())
        {
            return bad("broker.urls must not hold an empty URL");
        }
        if self.broker.prefix.is_empty() || tally_core::validate_id(&self.broker.prefix).is_err() {
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
        // Webhooks may reach this machine's receivers only in the local profile (tests,
        // `make up`); anywhere else a non-public target is refused.
        assert!(s.webhooks.allow_private_targets);
        assert!(!p.webhooks.allow_private_targets);
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
    fn amount_rules_must_fit_a_decimal_exactly() {
        let mut s = Settings::load_profile("local").unwrap();
        s.ledger.amount_scale = 12; // 16 integer digits of the default maximum + 12 = 28
        assert!(s.validate().is_ok());
        s.ledger.amount_scale = 13;
        assert!(s.validate().is_err());
    }

    #[test]
    fn session_bounds_derive_from_the_lease_ttl_and_stay_within_it() {
        let mut s = Settings::load_profile("local").unwrap();
        s.worker.lease_ttl_ms = 5000;
        assert_eq!(
            s.worker.session_bounds(),
            SessionBounds {
                statement_timeout: Duration::from_millis(5000),
                idle_in_transaction: Duration::from_millis(2500),
                heartbeat: Duration::from_secs(2),
            }
        );
        assert!(s.validate().is_ok());
        s.worker.lease_ttl_ms = 1500;
        s.worker.lease_tick_ms = 500;
        assert_eq!(s.worker.session_bounds().heartbeat, Duration::from_secs(1));
        assert!(s.validate().is_ok());

        let broken: [fn(&mut WorkerSettings); 6] = [
            |w| w.statement_timeout_ms = Some(0),
            |w| w.statement_timeout_ms = Some(w.lease_ttl_ms + 1),
            |w| w.idle_in_transaction_timeout_ms = Some(0),
            |w| w.idle_in_transaction_timeout_ms = Some(w.lease_ttl_ms),
            |w| w.heartbeat_secs = Some(0),
            |w| w.heartbeat_secs = Some(2),
        ];
        for (n, breaks) in broken.iter().enumerate() {
            let mut s = s.clone();
            breaks(&mut s.worker);
            assert!(s.validate().is_err(), "case {n}");
        }
        s.worker.lease_ttl_ms = 800;
        s.worker.lease_tick_ms = 400;
        assert!(
            s.validate().is_err(),
            "a 1 s heartbeat cannot fit a 0.8 s lease"
        );
    }

    #[test]
    fn broker_urls_list_every_node_and_the_single_url_still_works() {
        let s = Settings::load_profile("local").unwrap();
        assert_eq!(
            s.broker.endpoints(),
            vec!["amqp://guest:guest@127.0.0.1:5672/%2f".to_string()]
        );
        assert_eq!(s.broker.quorum_group_size, 3);
        let env = std::collections::HashMap::from([
            (
                "TALLY_BROKER__URLS".to_string(),
                "amqp://a:1/%2f,amqp://b:2/%2f,amqp://c:3/%2f".to_string(),
            ),
            (
                "TALLY_BROKER__QUORUM_GROUP_SIZE".to_string(),
                "5".to_string(),
            ),
        ]);
        let s = Settings::load_profile_from("local", Some(env)).unwrap();
        assert_eq!(
            s.broker.endpoints(),
            vec!["amqp://a:1/%2f", "amqp://b:2/%2f", "amqp://c:3/%2f"]
        );
        assert_eq!(s.broker.quorum_group_size, 5);
        // A one-element list is a list too, and other keys are not split on commas.
        let env = std::collections::HashMap::from([
            (
                "TALLY_BROKER__URLS".to_string(),
                "amqp://a:1/%2f".to_string(),
            ),
            (
                "TALLY_LOG__LEVEL".to_string(),
                "info,tally=debug".to_string(),
            ),
        ]);
        let s = Settings::load_profile_from("local", Some(env)).unwrap();
        assert_eq!(s.broker.endpoints(), vec!["amqp://a:1/%2f"]);
        assert_eq!(s.log.level, "info,tally=debug");

        let mut bad = s.clone();
        bad.broker.quorum_group_size = 0;
        assert!(bad.validate().is_err());
        let mut bad = s;
        bad.broker.urls.push(Secret::new(" "));
        assert!(bad.validate().is_err());
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
