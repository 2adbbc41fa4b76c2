//! API keys in PostgreSQL (`api_keys`, V8): creating one (its secret drawn from the OS's
//! random source and returned once, only its digest stored), listing and revoking them for the
//! operator (`tally keys`), and the set of keys still valid, which every API replica reloads
//! every few hundred milliseconds (`auth.refresh_ms`) so that a revocation reaches all of them
//! without a restart.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tally_core::auth::{KeyDigest, PresentedKey, Scope, SECRET_BYTES};
use uuid::Uuid;

use crate::error::code;
use crate::StoreError;

/// A key just created: the only time its text exists outside the client that holds it.
pub struct NewKey {
    pub id: Uuid,
    /// `tally_<id>_<secret>`: shown once, never stored, never logged.
    pub token: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// A key as `tally keys list` shows it: never its secret nor its digest.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key that is not revoked, as the API checks a request's key against it.
#[derive(Debug, Clone)]
pub struct ActiveKey {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub digest: KeyDigest,
}

/// Creates a key named `name` granting `scopes`; returns its text, which is not kept. The name
/// obeys the identifier rules (it travels in every envelope the key posts, and the worker
/// checks it there) and at least one scope is needed.
pub async fn create(pool: &Pool, name: &str, scopes: &[Scope]) -> Result<NewKey, StoreError> {
    tally_core::validate_id(name).map_err(|e| StoreError::InvalidKey(format!("the name {e}")))?;
    if scopes.is_empty() {
        return Err(StoreError::InvalidKey(
            "a key needs at least one scope".into(),
        ));
    }
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|e| StoreError::Random(e.to_string()))?;
    let id = Uuid::new_v4();
    let (token, digest) = PresentedKey::format(id, &secret);
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    pool.get()
        .await?
        .execute(
            "INSERT INTO api_keys (id, name, scopes, digest) VALUES ($1, $2, $3, $4)",
            &[&id, &name, &scopes, &digest.0.as_slice()],
        )
        .await?;
    Ok(NewKey { id, token })
}

fn scopes(column: &'static str, texts: Vec<String>) -> Result<Vec<Scope>, StoreError> {
    texts
        .into_iter()
        .map(|text| code(column, text, Scope::parse))
        .collect()
}

/// Every key, revoked ones included, oldest first.
pub async fn list(pool: &Pool) -> Result<Vec<KeyInfo>, StoreError> {
    let rows = pool
        .get()
        .await?
        .query(
            "SELECT id, name, scopes, created_at, revoked_at FROM api_keys \
             ORDER BY created_at, id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(KeyInfo {
                id: r.get(0),
                name: r.get(1),
                scopes: scopes("api_keys.scopes", r.get(2))?,
                created_at: r.get(3),
                revoked_at: r.get(4),
            })
        })
        .collect()
}

/// Revokes key `id`. `false` when there is no such key or it was already revoked.
pub async fn revoke(pool: &Pool, id: Uuid) -> Result<bool, StoreError> {
    let n = pool
        .get()
        .await?
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

/// The keys not revoked.
pub async fn active(pool: &Pool) -> Result<Vec<ActiveKey>, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT id, name, scopes, digest FROM api_keys WHERE revoked_at IS NULL")
        .await?;
    let rows = client.query(&stmt, &[]).await?;
    rows.iter()
        .map(|r| {
            let digest: Vec<u8> = r.get(3);
            let digest =
                <[u8; 32]>::try_from(digest.as_slice()).map_err(|_| StoreError::UnknownCode {
                    column: "api_keys.digest",
                    value: format!("{} bytes", digest.len()),
                })?;
            Ok(ActiveKey {
                id: r.get(0),
                name: r.get(1),
                scopes: scopes("api_keys.scopes", r.get(2))?,
                digest: KeyDigest(digest),
            })
        })
        .collect()
}
