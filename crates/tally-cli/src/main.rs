//! `tally`: the operator's command line.
//!
//! `tally import FILE`: JSON lines or CSV of transactions, sent through the API (`--via api`)
//! or published straight to the shard queues with publisher confirms (`--via queue`), with a
//! progress bar, and safe to run again after an interruption (see [`import`]).
//!
//! `tally keys create | list | revoke`: API keys (see [`keys`]).
//!
//! Modules: [`cli`] the options, [`input`] reading and identifying lines, [`checkpoint`] the
//! confirmed prefix, [`send`] the two ways out, [`import`] the loop tying them together,
//! [`keys`] the API keys.

mod checkpoint;
mod cli;
mod import;
mod input;
mod keys;
mod send;

use clap::Parser;
use cli::{Cli, Command};

#[tokio::main]
async fn main() {
    let args = match Cli::parse().command {
        Command::Import(args) => args,
        Command::Keys(keys) => {
            if let Err(e) = keys::run(keys.command, keys.database_url).await {
                eprintln!("tally keys: {e:#}");
                std::process::exit(1);
            }
            return;
        }
    };
    let code = match import::run(args.into()).await {
        Ok(summary) if summary.rejected > 0 => 2,
        Ok(_) => 0,
        Err(e) => {
            eprintln!("tally import: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
