//! `tally`: the operator's command line. One subcommand today:
//!
//! `tally import FILE`: JSON lines or CSV of transactions, sent through the API (`--via api`)
//! or published straight to the shard queues with publisher confirms (`--via queue`), with a
//! progress bar, and safe to run again after an interruption (see [`import`]).
//!
//! Modules: [`cli`] the options, [`input`] reading and identifying lines, [`checkpoint`] the
//! confirmed prefix, [`send`] the two ways out, [`import`] the loop tying them together.

mod checkpoint;
mod cli;
mod import;
mod input;
mod send;

use clap::Parser;
use cli::{Cli, Command};

#[tokio::main]
async fn main() {
    let Command::Import(args) = Cli::parse().command;
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
