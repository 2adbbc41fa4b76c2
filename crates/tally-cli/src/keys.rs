//! `tally keys create | list | revoke`: the operator's side of API keys, straight in
//! PostgreSQL (`tally_store::keys`). A created key's text goes to stdout once, alone on its
//! line, so a script can capture it (`key=$(tally keys create …)`); everything else goes to
//! stderr. The text is never stored, and `list` cannot show it again. `init` keeps an
//! installation's first two keys in a file readable by its owner only (`make up`, compose).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use tally_core::auth::{KeyDigest, PresentedKey, Scope};
use tally_settings::{Secret, Settings};
use uuid::Uuid;

use crate::cli::KeysCommand;

/// Runs one `tally keys` command against the ledger's database (`--database-url`, else the
/// settings' `database.url`).
pub async fn run(command: KeysCommand, database_url: Option<String>) -> Result<()> {
    let mut settings = Settings::load().context("loading settings")?;
    if let Some(url) = database_url {
        settings.database.url = Secret::new(url);
    }
    let pool = tally_store::connect(&settings.database)?;
    match command {
        KeysCommand::Create { name, scopes } => create(&pool, &name, &scopes).await,
        KeysCommand::List => list(&pool).await,
        KeysCommand::Revoke { id } => revoke(&pool, id).await,
        KeysCommand::Init { out, name_prefix } => init(&pool, &out, &name_prefix).await,
    }
}

/// The variables of the keys file: the admin key and the read/write key.
const ADMIN_VAR: &str = "TALLY_ADMIN_KEY";
const READ_WRITE_VAR: &str = "TALLY_API_KEY";

/// Keeps `out`'s keys when both are valid (known, not revoked, the right secret), else
/// creates two new ones and replaces the file.
async fn init(pool: &tally_store::Pool, out: &Path, prefix: &str) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(out) {
        let active = tally_store::keys::active(pool).await?;
        let valid = |var: &str| {
            let prefix = format!("{var}=");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(PresentedKey::parse)
                .is_some_and(|key| {
                    active
                        .iter()
                        .any(|a| a.id == key.id && a.digest.matches(&KeyDigest::of(key.secret)))
                })
        };
        if valid(ADMIN_VAR) && valid(READ_WRITE_VAR) {
            eprintln!("API keys in {} are valid: kept", out.display());
            return Ok(());
        }
        eprintln!(
            "the API keys in {} are not valid in this database (revoked, or another \
             database): creating new ones",
            out.display()
        );
    }
    let admin = tally_store::keys::create(pool, &format!("{prefix}-admin"), &[Scope::Admin])
        .await
        .context("creating the admin key")?;
    let read_write = tally_store::keys::create(
        pool,
        &format!("{prefix}-rw"),
        &[Scope::TransactionsWrite, Scope::LedgerRead],
    )
    .await
    .context("creating the read/write key")?;
    let text = format!(
        "# API keys of this tally installation (tally keys init). Shell: . {file}\n\
         # admin: every route (account links, webhooks, jobs, /debug/*)\n\
         {ADMIN_VAR}={}\n\
         # transactions:write and ledger:read: posting and reading (what tally import sends)\n\
         {READ_WRITE_VAR}={}\n",
        admin.token,
        read_write.token,
        file = out.display(),
    );
    write_private(out, &text)?;
    eprintln!(
        "API keys written to {} (mode 600): {ADMIN_VAR} ({prefix}-admin, admin), \
         {READ_WRITE_VAR} ({prefix}-rw, transactions:write + ledger:read)",
        out.display()
    );
    Ok(())
}

/// Writes `text` to `path` readable by its owner only, atomically (a temporary file created
/// with mode 600, then renamed over `path`).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // A leftover of a crash may have other permissions: only a file created here is 600.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn create(pool: &tally_store::Pool, name: &str, scopes: &[Scope]) -> Result<()> {
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let key = tally_store::keys::create(pool, name, &scopes)
        .await
        .context("creating the key")?;
    eprintln!(
        "created key {} named {name:?} with scopes {}; its text follows, shown only this once:",
        key.id,
        list_of(&scopes)
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", key.token)?;
    out.flush()?;
    Ok(())
}

async fn list(pool: &tally_store::Pool) -> Result<()> {
    let keys = tally_store::keys::list(pool)
        .await
        .context("listing keys")?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<32}  {:<24}  {:<32}  {:<20}  REVOKED",
        "ID", "NAME", "SCOPES", "CREATED"
    )?;
    for k in keys {
        let revoked = k.revoked_at.map_or_else(
            || "-".to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        writeln!(
            out,
            "{:<32}  {:<24}  {:<32}  {:<20}  {revoked}",
            k.id.simple(),
            k.name,
            list_of(&k.scopes),
            k.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
        )?;
    }
    Ok(())
}

async fn revoke(pool: &tally_store::Pool, id: Uuid) -> Result<()> {
    if tally_store::keys::revoke(pool, id)
        .await
        .context("revoking the key")?
    {
        eprintln!(
            "revoked key {}; every API replica refuses it within auth.refresh_ms",
            id.simple()
        );
        Ok(())
    } else {
        anyhow::bail!("no key {} that is not revoked already", id.simple())
    }
}

fn list_of(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `--scope` values: the texts of [`Scope`].
pub fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::parse(text).ok_or_else(|| {
        let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown scope {text:?}; one of {}", known.join(", "))
    })
}
