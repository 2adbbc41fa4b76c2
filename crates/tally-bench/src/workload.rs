//! The transfers every measurement sends: which account (Zipf over N accounts, or one hot
//! account), which kind (deposits only, or mixed with withdraw_requests and the withdraws
//! that capture approved ones), which amount, and how they look on each path — a JSON body for
//! the API, an [`Envelope`] for the shard queues, plain values for the one-commit baseline.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::sync::Arc;
use tally_core::command::NewTransaction;
use tally_core::{Envelope, Kind};

use tally_testkit::rng::{Rng, Zipf};

/// Which transfers a run sends (`--workload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Deposits over N accounts, Zipf-distributed.
    Deposits,
    /// Deposits to one account.
    Hot,
    /// Deposits and withdraw_requests over N accounts (Zipf); each approved request is
    /// followed by its withdraw (`requestId`).
    Mixed,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deposits => "deposits",
            Self::Hot => "hot",
            Self::Mixed => "mixed",
        }
    }
}

/// The one account of the hot workload.
pub const HOT_ACCOUNT: &str = "hot-0";

/// One transfer.
#[derive(Debug, Clone)]
pub struct Tx {
    pub id: String,
    pub kind: Kind,
    pub account: String,
    /// Amount in cents (2 decimal places, the ledger's default scale).
    pub cents: i64,
    pub request_id: Option<String>,
}

impl Tx {
    pub fn amount(&self) -> Decimal {
        Decimal::new(self.cents, 2)
    }

    /// `POST /transaction` body. Ids and accounts are generated from a safe charset, so no
    /// escaping is needed.
    pub fn json(&self) -> Vec<u8> {
        let mut s = format!(
            r#"{{"id":"{}","type":"{}","amount":{},"accountId":"{}""#,
            self.id,
            self.kind.as_str(),
            self.amount(),
            self.account
        );
        if let Some(r) = &self.request_id {
            s.push_str(&format!(r#","requestId":"{r}""#));
        }
        s.push('}');
        s.into_bytes()
    }

    /// The message the API would publish for it.
    pub fn envelope(&self, accepted_at: DateTime<Utc>) -> Envelope {
        let tx = NewTransaction {
            id: self.id.clone(),
            kind: self.kind,
            account_id: self.account.clone(),
            amount: self.amount(),
            occurred_at: None,
            request_id: self.request_id.clone(),
            user_id: None,
            client_id: None,
            key_name: None,
        };
        Envelope::new(&tx, accepted_at)
    }
}

/// Generates a run's transfers. One per sending task, each with its own id space and seed.
pub struct Gen {
    rng: Rng,
    zipf: Arc<Zipf>,
    workload: Workload,
    /// Unique per run and task: ids never collide with another run's (they would be
    /// deduplicated, not applied).
    id_prefix: String,
    seq: u64,
    /// Mixed: share of withdraw_requests.
    request_share: f64,
}

impl Gen {
    pub fn new(
        workload: Workload,
        zipf: Arc<Zipf>,
        id_prefix: String,
        seed: u64,
        request_share: f64,
    ) -> Self {
        Self {
            rng: Rng::new(seed),
            zipf,
            workload,
            id_prefix,
            seq: 0,
            request_share,
        }
    }

    fn id(&mut self) -> String {
        self.seq += 1;
        format!("{}-{}", self.id_prefix, self.seq)
    }

    pub fn account(&mut self) -> String {
        match self.workload {
            Workload::Hot => HOT_ACCOUNT.to_string(),
            Workload::Deposits | Workload::Mixed => {
                format!("acc-{}", self.zipf.sample(&mut self.rng))
            }
        }
    }

    pub fn next_tx(&mut self) -> Tx {
        let request = self.workload == Workload::Mixed && self.rng.next_f64() < self.request_share;
        let account = self.account();
        let id = self.id();
        if request {
            // Smaller than deposits on average, so popular accounts build up funds and most
            // requests are approved while tail accounts are denied: both paths get exercised.
            Tx {
                id,
                kind: Kind::WithdrawRequest,
                account,
                cents: self.rng.range(100, 2_000) as i64,
                request_id: None,
            }
        } else {
            Tx {
                id,
                kind: Kind::Deposit,
                account,
                cents: self.rng.range(100, 10_000) as i64,
                request_id: None,
            }
        }
    }

    /// The withdraw that captures an approved withdraw_request.
    pub fn follow_up(&mut self, request: &Tx) -> Tx {
        Tx {
            id: format!("{}-w", request.id),
            kind: Kind::Withdraw,
            account: request.account.clone(),
            cents: request.cents,
            request_id: Some(request.id.clone()),
        }
    }
}

/// A short random run id (hex), so each run's transaction ids are new.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut rng = Rng::new((nanos as u64) ^ u64::from(std::process::id()).rotate_left(32));
    format!("{:08x}", rng.next_u64() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_as_the_api_would_and_envelopes_decode() {
        let zipf = Arc::new(Zipf::new(100, 1.0));
        let mut g = Gen::new(Workload::Mixed, zipf, "r-1".into(), 5, 0.5);
        let rules = tally_core::amount::AmountRules::default();
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..50 {
            let tx = g.next_tx();
            kinds.insert(tx.kind);
            let v: serde_json::Value = serde_json::from_slice(&tx.json()).unwrap();
            let parsed = NewTransaction::from_json(v.as_object().unwrap(), &rules).unwrap();
            assert_eq!(parsed.amount, tx.amount());
            assert_eq!(parsed.account_id, tx.account);
            let env = tx.envelope(Utc::now());
            assert_eq!(Envelope::decode(&env.encode(), &rules).unwrap(), env);
            if tx.kind == Kind::WithdrawRequest {
                let w = g.follow_up(&tx);
                let v: serde_json::Value = serde_json::from_slice(&w.json()).unwrap();
                let p = NewTransaction::from_json(v.as_object().unwrap(), &rules).unwrap();
                assert_eq!(p.request_id.as_deref(), Some(tx.id.as_str()));
            }
        }
        assert_eq!(kinds.len(), 2, "mixed sends both kinds");
        let mut hot = Gen::new(
            Workload::Hot,
            Arc::new(Zipf::new(10, 1.0)),
            "h".into(),
            1,
            0.0,
        );
        assert_eq!(hot.next_tx().account, HOT_ACCOUNT);
    }
}
