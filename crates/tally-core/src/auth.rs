//! API keys as the ledger understands them, with no IO: the scopes a key can grant, which
//! scope each route needs, and the key's text (`tally_<key id>_<secret>`) with its stored
//! digest.
//!
//! A key's secret is 32 random bytes (generated where randomness is, in `tally-store`), so
//! its SHA-256 digest is enough to store: nobody can search 2^256 secrets for one that
//! matches, which is what slow password hashes (argon2, bcrypt) protect low-entropy passwords
//! against — at a CPU cost per request we would pay for nothing. The key id in the text
//! finds the one stored digest to compare, and the comparison is constant-time
//! ([`Digest::matches`]), so the time of a refusal says nothing about how close a guess was.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// What a key may do. `Admin` grants every scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `POST /transaction`.
    TransactionsWrite,
    /// Reads of the ledger: accounts, history, transactions, users.
    LedgerRead,
    /// Everything, and alone: account links, webhooks, settlement jobs, `/debug/*`.
    Admin,
}

impl Scope {
    pub const ALL: &'static [Scope] = &[Scope::TransactionsWrite, Scope::LedgerRead, Scope::Admin];

    /// The scope's text, as stored, typed on the command line and shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::TransactionsWrite => "transactions:write",
            Scope::LedgerRead => "ledger:read",
            Scope::Admin => "admin",
        }
    }

    /// The scope whose text is `s`; `None` for a text this build does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|scope| scope.as_str() == s)
    }

    /// Whether a key holding `granted` may use a route needing `self`.
    pub fn granted_by(self, granted: &[Scope]) -> bool {
        granted.contains(&self) || granted.contains(&Scope::Admin)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request needs to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key: probes (`/health/*`), and `/metrics` when configured public.
    Public,
    /// Any valid key, whatever its scopes (`/status`, and paths no route serves, so that
    /// only a caller with a key learns which paths exist).
    AnyKey,
    /// A valid key granting this scope.
    Scope(Scope),
}

/// The access a request needs, from its method and the route pattern it matched (`None`:
/// no route). Every route the API serves is listed here; a route missing from this table
/// needs `admin` (closed by default), and a test checks that every registered route is
/// listed.
pub fn required(method: &str, pattern: Option<&str>, public_metrics: bool) -> Access {
    let Some(pattern) = pattern else {
        return Access::AnyKey;
    };
    match (method, pattern) {
        (_, "/health/live" | "/health/ready") => Access::Public,
        // The operator console's page and assets hold no data (its calls for data carry the
        // admin key); a browser cannot send a key on navigation.
        ("GET" | "HEAD", "/console" | "/console/{asset}") => Access::Public,
        (_, "/metrics") if public_metrics => Access::Public,
        (_, "/status") => Access::AnyKey,
        ("POST", "/transaction") => Access::Scope(Scope::TransactionsWrite),
        (
            "GET" | "HEAD",
            "/account/{account_id}"
            | "/transactions/{id}"
            | "/account/{account_id}/transactions"
            | "/account/{account_id}/largest-expense"
            | "/account/{account_id}/policy"
            | "/users/{user_id}"
            | "/users/{user_id}/largest-expense",
        ) => Access::Scope(Scope::LedgerRead),
        _ => Access::Scope(Scope::Admin),
    }
}

/// Every key's text starts with this, so a leaked key is easy to recognise (secret scanners,
/// log filters).
pub const KEY_PREFIX: &str = "tally_";

/// Length of a key's secret, in bytes (hex: twice as many characters).
pub const SECRET_BYTES: usize = 32;

/// The SHA-256 of a key's secret: what PostgreSQL stores, never the secret itself.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Constant-time: the comparison takes as long whatever the first differing byte.
    pub fn matches(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDigest([redacted])")
    }
}

/// A key as a client presents it: `tally_<key id, 32 hex>_<secret, 64 hex>`.
pub struct PresentedKey<'a> {
    pub id: Uuid,
    pub secret: &'a str,
}

impl<'a> PresentedKey<'a> {
    /// Reads the text of an `Authorization: Bearer` value; `None` when it is not shaped like
    /// a key (it is then refused like a wrong one).
    pub fn parse(text: &'a str) -> Option<Self> {
        let rest = text.strip_prefix(KEY_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(id, 32) || !hex(secret, 2 * SECRET_BYTES) {
            return None;
        }
        Some(Self {
            id: Uuid::try_parse(id).ok()?,
            secret,
        })
    }

    /// The text of a key with this id and secret (hex of the secret's bytes).
    pub fn format(id: Uuid, secret: &[u8; SECRET_BYTES]) -> (String, KeyDigest) {
        let mut hex = String::with_capacity(2 * SECRET_BYTES);
        for b in secret {
            hex.push_str(&format!("{b:02x}"));
        }
        let digest = KeyDigest::of(&hex);
        (format!("{KEY_PREFIX}{}_{hex}", id.simple()), digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_key_parses_back_to_its_id_and_digest() {
        let id = Uuid::new_v4();
        let (text, digest) = PresentedKey::format(id, &[7u8; SECRET_BYTES]);
        let parsed = PresentedKey::parse(&text).unwrap();
        assert_eq!(parsed.id, id);
        assert!(KeyDigest::of(parsed.secret).matches(&digest));
        assert!(!KeyDigest::of("0").matches(&digest));
        for bad in [
            "",
            "tally_",
            "Bearer x",
            &text[..text.len() - 1],
            &text.replace("tally_", "tolly_"),
            &format!("{text}0"),
        ] {
            assert!(PresentedKey::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn admin_grants_every_scope_and_the_others_only_themselves() {
        for scope in Scope::ALL {
            assert!(scope.granted_by(&[Scope::Admin]));
            assert_eq!(Scope::parse(scope.as_str()), Some(*scope));
        }
        assert!(!Scope::Admin.granted_by(&[Scope::LedgerRead, Scope::TransactionsWrite]));
        assert!(!Scope::LedgerRead.granted_by(&[Scope::TransactionsWrite]));
        assert!(Scope::LedgerRead.granted_by(&[Scope::LedgerRead]));
    }

    #[test]
    fn routes_need_the_scope_of_what_they_do() {
        let scope = |m, p| required(m, Some(p), true);
        assert_eq!(scope("GET", "/health/ready"), Access::Public);
        assert_eq!(scope("GET", "/metrics"), Access::Public);
        assert_eq!(
            required("GET", Some("/metrics"), false),
            Access::Scope(Scope::Admin)
        );
        assert_eq!(
            scope("POST", "/transaction"),
            Access::Scope(Scope::TransactionsWrite)
        );
        assert_eq!(
            scope("GET", "/users/{user_id}"),
            Access::Scope(Scope::LedgerRead)
        );
        assert_eq!(
            scope("PUT", "/users/{user_id}/accounts/{account_id}"),
            Access::Scope(Scope::Admin)
        );
        assert_eq!(scope("GET", "/debug/accounts"), Access::Scope(Scope::Admin));
        assert_eq!(scope("GET", "/console"), Access::Public);
        assert_eq!(scope("GET", "/console/{asset}"), Access::Public);
        assert_eq!(
            scope("POST", "/debug/dead-letters/{id}/republish"),
            Access::Scope(Scope::Admin)
        );
        assert_eq!(required("GET", None, true), Access::AnyKey);
    }
}
