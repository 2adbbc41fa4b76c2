//! The `tally` command line (clap): the subcommands, each option with its help and default,
//! and the conversion of `tally import`'s options into the [`ImportSpec`] it runs.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

use crate::checkpoint;
use crate::import::{ImportSpec, Via};
use crate::input::Format;

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "The operator's command line of tally."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a file of transactions (JSON lines or CSV) through the API or straight to the
    /// shard queues; safe to run again after an interruption.
    #[command(after_help = IMPORT_HELP)]
    Import(ImportArgs),
    /// Create, list and revoke the API keys clients present as `Authorization: Bearer <key>`.
    #[command(after_help = KEYS_HELP)]
    Keys(KeysArgs),
}

const KEYS_HELP: &str = "\
Scopes: transactions:write (POST /transaction), ledger:read (accounts, history, transactions,
users), admin (every route: account links, webhooks, jobs, /debug/*). A created key's text is
printed once on stdout (the rest on stderr) and never stored: only its SHA-256 is. Revoked keys
are refused by every API replica within auth.refresh_ms (1 s), without a restart.
Rotate: create a new key under the same name, move the clients to it, revoke the old one.
Settings: TALLY_CONFIG / TALLY_PROFILE / TALLY_DATABASE__URL, like the other processes.";

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    /// The ledger database [default: settings, $TALLY_DATABASE__URL].
    #[arg(long, global = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its text (once).
    Create {
        /// Who holds the key: recorded with every transaction it posts and shown in logs.
        /// 1-128 characters of letters, digits and . _ : -
        #[arg(long)]
        name: String,
        /// A scope it grants (repeat the option, or separate with commas).
        #[arg(long = "scope", required = true, value_delimiter = ',',
              value_parser = crate::keys::parse_scope)]
        scopes: Vec<tally_core::auth::Scope>,
    },
    /// List every key (id, name, scopes, created, revoked), never their texts.
    List,
    /// Make sure FILE holds an admin key and a read/write key valid in this database: kept
    /// when they are, else both created and FILE written (mode 600) as `TALLY_ADMIN_KEY=…`
    /// and `TALLY_API_KEY=…` lines. What `make up` and compose run at start.
    Init {
        /// The env file to keep the keys in.
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
        /// The keys are named <PREFIX>-admin and <PREFIX>-rw.
        #[arg(long, default_value = "local")]
        name_prefix: String,
    },
    /// Revoke a key by its id (from `create` or `list`).
    Revoke {
        /// The key's id.
        id: uuid::Uuid,
    },
}

const IMPORT_HELP: &str = "\
Each line is the body of POST /transaction (JSON lines), or a CSV row under a header naming
the same fields (id,type,amount,accountId,timestamp,requestId,userId; empty cells are absent).
A line without an id gets a deterministic one (imp-<file hash>-<line>), so running the same
file again reproduces it. The confirmed contiguous prefix is kept in the checkpoint file: a
rerun skips it, re-sends the rest, and the ledger deduplicates by id — an interrupted import
run again has every line's effect exactly once.
withdraw_request lines need a live decision: allowed with --via api, refused with --via queue.
Settings (queue mode): TALLY_CONFIG / TALLY_PROFILE / TALLY_* env, like the other processes.
Exit: 0 all lines sent or skipped; 2 some lines rejected (listed, the rest sent); 1 aborted.";

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file to import.
    file: PathBuf,
    /// Through the API, or published straight to the shard queues.
    #[arg(long, value_enum, default_value_t = Via::Api)]
    via: Via,
    /// api: base URL of the API or nginx.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// How the file is written [default: from the extension; .csv is CSV, else JSON lines].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Checkpoint file [default: FILE.checkpoint].
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Requests or unconfirmed publishes in flight.
    #[arg(long, default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    concurrency: usize,
    /// api: the API key to send (scope transactions:write).
    #[arg(long, env = "TALLY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Give up on a line failing with 503 / broker errors after this long (e.g. 120s, 2m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    retry_for: Duration,
    /// queue: RabbitMQ URL [default: settings, $TALLY_BROKER__URL].
    #[arg(long)]
    broker_url: Option<String>,
    /// queue: broker prefix [default: settings, $TALLY_BROKER__PREFIX].
    #[arg(long)]
    prefix: Option<String>,
    /// queue: ledger database, to check the shard count [default: settings].
    #[arg(long)]
    database_url: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl From<ImportArgs> for ImportSpec {
    fn from(a: ImportArgs) -> Self {
        Self {
            format: Format::pick(a.format, &a.file),
            checkpoint: a
                .checkpoint
                .unwrap_or_else(|| checkpoint::default_path(&a.file)),
            path: a.file,
            via: a.via,
            url: a.url,
            api_key: a.api_key,
            concurrency: a.concurrency,
            retry_for: a.retry_for,
            broker_url: a.broker_url,
            prefix: a.prefix,
            database_url: a.database_url,
            progress: !a.quiet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn spec(line: &str) -> Result<ImportSpec, clap::Error> {
        match Cli::try_parse_from(std::iter::once("tally").chain(line.split_whitespace()))?.command
        {
            Command::Import(args) => Ok(args.into()),
            Command::Keys(_) => panic!("not an import"),
        }
    }

    fn keys(line: &str) -> Result<KeysCommand, clap::Error> {
        match Cli::try_parse_from(std::iter::once("tally").chain(line.split_whitespace()))?.command
        {
            Command::Keys(args) => Ok(args.command),
            Command::Import(_) => panic!("not keys"),
        }
    }

    #[test]
    fn keys_options() {
        use tally_core::auth::Scope;
        match keys("keys create --name ci --scope ledger:read,transactions:write").unwrap() {
            KeysCommand::Create { name, scopes } => {
                assert_eq!(name, "ci");
                assert_eq!(scopes, [Scope::LedgerRead, Scope::TransactionsWrite]);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "keys create --name ci",
            "keys create --name ci --scope everything",
            "keys revoke not-a-uuid",
            "keys",
        ] {
            assert!(keys(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn import_options_and_their_defaults() {
        let s = spec("import data/pay.csv").unwrap();
        assert_eq!(s.format, Format::Csv);
        assert_eq!(s.via, Via::Api);
        assert_eq!(s.concurrency, 64);
        assert_eq!(s.retry_for, Duration::from_secs(120));
        assert_eq!(s.checkpoint, checkpoint::default_path(&s.path));
        let s =
            spec("import x.csv --via queue --format ndjson --retry-for=2m --concurrency 8 --quiet")
                .unwrap();
        assert_eq!(
            (s.via, s.format, s.concurrency),
            (Via::Queue, Format::JsonLines, 8)
        );
        assert_eq!(s.retry_for, Duration::from_secs(120));
        assert!(!s.progress);
        for bad in [
            "import",
            "import a b",
            "import a --via bus",
            "import a --concurrency 0",
            "import a --bogus",
        ] {
            assert!(spec(bad).is_err(), "{bad} accepted");
        }
    }
}
