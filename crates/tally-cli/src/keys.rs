//! `tally keys create | list | revoke`: the operator's side of API keys, straight in
//! PostgreSQL (`tally_store::keys`). A created key's text goes to stdout once, alone on its
//! line, so a script can capture it (`key=$(tally keys create …)`); everything else goes to
//! stderr. The text is never stored, and `list` cannot show it again.

use anyhow::{Context, Result};
use std::io::Write;
use tally_core::auth::Scope;
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
    }
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
