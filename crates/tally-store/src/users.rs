//! Account ownership: which user owns which accounts, and a user's view of them.
//!
//! The owner of an account is `COALESCE(account_owners.user_id, accounts.user_id)`: an
//! explicit link (written here, by the API) else the `userId` of the account's first
//! transaction (written by the shard worker). An account has at most one owner and keeps it:
//! [`link`] refuses an account owned by someone else, and the API refuses a transaction whose
//! `userId` is not the owner's. A user exists while they own at least one account. A user's
//! accounts are read a bounded page at a time, keyset-paged on the account id.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rust_decimal::Decimal;

use crate::StoreError;

/// The ids of the accounts user `$1` owns, as a subquery. An account recorded with the user by
/// its first transaction counts unless an explicit link gives it to somebody else. Written so
/// that both halves use an index (`accounts_by_user`, `account_owners_by_user`).
pub const OWNED_ACCOUNTS: &str = "(SELECT a.id FROM accounts a WHERE a.user_id = $1 \
         AND NOT EXISTS (SELECT 1 FROM account_owners o \
                         WHERE o.account_id = a.id AND o.user_id <> $1) \
     UNION SELECT o.account_id FROM account_owners o WHERE o.user_id = $1)";

/// The account's owner, if it has one.
pub async fn owner(pool: &Pool, account_id: &str) -> Result<Option<String>, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT COALESCE((SELECT user_id FROM account_owners WHERE account_id = $1), \
                             (SELECT user_id FROM accounts WHERE id = $1))",
        )
        .await?;
    Ok(client.query_one(&stmt, &[&account_id]).await?.get(0))
}

/// What [`link`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// The link is new.
    Created { linked_at: DateTime<Utc> },
    /// The account was already linked to this user (linking is idempotent).
    Existing { linked_at: DateTime<Utc> },
    /// Another user owns the account; nothing changed.
    OwnedByAnother,
}

/// Links `account_id` to `user_id` unless another user owns it.
pub async fn link(pool: &Pool, user_id: &str, account_id: &str) -> Result<Link, StoreError> {
    let client = pool.get().await?;
    // One statement: the owner check and the insert cannot be split by another link (the
    // primary key settles two concurrent links of the same account: one conflicts).
    let inserted = client
        .query_opt(
            "INSERT INTO account_owners (account_id, user_id) \
             SELECT $1::text, $2::text WHERE NOT EXISTS ( \
                 SELECT 1 FROM accounts WHERE id = $1 AND user_id <> $2) \
             ON CONFLICT (account_id) DO NOTHING RETURNING linked_at",
            &[&account_id, &user_id],
        )
        .await?;
    if let Some(row) = inserted {
        return Ok(Link::Created {
            linked_at: row.get(0),
        });
    }
    // Nothing inserted: either a link exists (committed: ON CONFLICT waited for it) or the
    // account's first transaction named another user.
    let existing = client
        .query_opt(
            "SELECT user_id, linked_at FROM account_owners WHERE account_id = $1",
            &[&account_id],
        )
        .await?;
    Ok(match existing {
        Some(row) if row.get::<_, String>(0) == user_id => Link::Existing {
            linked_at: row.get(1),
        },
        _ => Link::OwnedByAnother,
    })
}

/// One account of a user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserAccount {
    pub account_id: String,
    pub balance: Decimal,
    pub available: Decimal,
}

/// One page of a user's accounts, with the total over all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct UserView {
    pub user_id: String,
    /// Sum of the balances of all the user's accounts, not only this page's.
    pub total: Decimal,
    /// Ordered by account id.
    pub accounts: Vec<UserAccount>,
    /// The last account id of this page when more follow (pass it back as `cursor`); `None`
    /// on the last page.
    pub next_cursor: Option<String>,
}

/// Up to `limit` of the user's accounts with ids after `after`, in id order, with their
/// balances, and the total over all the user's accounts; `None` when the user owns no
/// account. Like `GET /account/{id}`, `available` discounts only holds that are open and
/// within their TTL. The total and the page are read from one snapshot, so a user with a
/// single page sees a total equal to the sum of its balances.
pub async fn user(
    pool: &Pool,
    user_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Option<UserView>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // One aggregate in PostgreSQL however many accounts: no account row enters the process.
    let totals = tx
        .prepare_cached(&format!(
            "SELECT count(*), COALESCE(sum(a.balance), 0) \
             FROM {OWNED_ACCOUNTS} AS o(id) LEFT JOIN accounts a ON a.id = o.id"
        ))
        .await?;
    let row = tx.query_one(&totals, &[&user_id]).await?;
    if row.get::<_, i64>(0) == 0 {
        return Ok(None);
    }
    let total: Decimal = row.get(1);
    // One more row than the page: whether another page follows.
    let page = tx
        .prepare_cached(&format!(
            "SELECT o.id, COALESCE(a.balance, 0), \
                    COALESCE((SELECT sum(h.amount) FROM holds h \
                              WHERE h.account_id = o.id AND h.status = 'open' \
                                AND h.expires_at > now()), 0) \
             FROM {OWNED_ACCOUNTS} AS o(id) LEFT JOIN accounts a ON a.id = o.id \
             WHERE $2::text IS NULL OR o.id > $2 \
             ORDER BY o.id LIMIT $3"
        ))
        .await?;
    let rows = tx.query(&page, &[&user_id, &after, &(limit + 1)]).await?;
    tx.commit().await?;
    let more = usize::try_from(limit).is_ok_and(|limit| rows.len() > limit);
    let accounts: Vec<UserAccount> = rows
        .iter()
        .take(rows.len() - usize::from(more))
        .map(|r| {
            let balance: Decimal = r.get(1);
            let held: Decimal = r.get(2);
            UserAccount {
                account_id: r.get(0),
                balance,
                available: balance - held,
            }
        })
        .collect();
    let next_cursor = more
        .then(|| accounts.last().map(|a| a.account_id.clone()))
        .flatten();
    Ok(Some(UserView {
        user_id: user_id.to_string(),
        total,
        accounts,
        next_cursor,
    }))
}

/// Whether the user owns at least one account.
pub async fn exists(pool: &Pool, user_id: &str) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!("SELECT EXISTS {OWNED_ACCOUNTS}"))
        .await?;
    Ok(client.query_one(&stmt, &[&user_id]).await?.get(0))
}
