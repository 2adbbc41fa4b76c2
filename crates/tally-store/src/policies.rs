//! Reads of the per-account withdraw policy (V10): the policy in force on an account, and a
//! recorded policy command by id (the API's idempotency check). The worker is the only
//! writer (`batch::write`).

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tally_core::ledger::{AccountPolicy, WithdrawPolicy};

use crate::StoreError;

/// The policy an account has applied, if it has one of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedPolicy {
    pub policy: AccountPolicy,
    /// Policy changes applied to the account so far.
    pub policy_version: i64,
    /// The account's `seq` when the current policy was applied.
    pub after_seq: i64,
    pub applied_at: DateTime<Utc>,
}

fn withdraw_of(text: String) -> Result<WithdrawPolicy, StoreError> {
    WithdrawPolicy::parse(&text).ok_or(StoreError::UnknownCode {
        column: "withdraw_policy",
        value: text,
    })
}

/// The account's own policy as applied (in its queue order); `None`: it follows the global
/// setting (never changed, or never used).
pub async fn applied(pool: &Pool, account_id: &str) -> Result<Option<AppliedPolicy>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT c.withdraw_policy, c.overdraft_limit, c.policy_version, c.after_seq, \
                 c.applied_at \
             FROM accounts a JOIN account_policy_changes c \
               ON c.account_id = a.id AND c.policy_version = a.policy_version \
             WHERE a.id = $1",
            &[&account_id],
        )
        .await?;
    row.map(|r| {
        Ok(AppliedPolicy {
            policy: AccountPolicy {
                withdraw: withdraw_of(r.get(0))?,
                overdraft_limit: r.get(1),
            },
            policy_version: r.get(2),
            after_seq: r.get(3),
            applied_at: r.get(4),
        })
    })
    .transpose()
}

/// The fingerprint of the policy command `id` if it was applied.
pub async fn fingerprint(pool: &Pool, id: &str) -> Result<Option<String>, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .query_opt(
            "SELECT fingerprint FROM account_policy_changes WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|r| r.get(0)))
}
