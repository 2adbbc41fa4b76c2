//! `tally`: the operator's command line. One subcommand today:
//!
//! `tally import FILE`: JSON lines or CSV of transactions, sent through the API (`--via api`)
//! or published straight to the shard queues with publisher confirms (`--via queue`), with a
//! progress bar, and safe to run again after an interruption (see [`import`]).
//!
//! Modules (option parsing comes from `tally-tools`): [`input`] reading and identifying
//! lines, [`checkpoint`] the confirmed prefix, [`send`] the two ways out, [`import`] the loop
//! tying them together.

mod checkpoint;
mod import;
mod input;
mod send;

use tally_tools::args::{flag, usage, val, Args, Opt};

const USAGE: &str = "usage: tally import FILE [options]
       tally import --help";

const IMPORT: &[Opt] = &[
    val("via", "api | queue (default api)"),
    val(
        "url",
        "api: base URL of the API or nginx (default http://127.0.0.1:8080)",
    ),
    val(
        "format",
        "jsonl | csv (default: from the extension; .csv is CSV, else JSON lines)",
    ),
    val("checkpoint", "checkpoint file (default FILE.checkpoint)"),
    val(
        "concurrency",
        "requests or unconfirmed publishes in flight (default 64)",
    ),
    val(
        "retry-for",
        "give up on a line failing with 503 / broker errors after (default 120s)",
    ),
    val(
        "broker-url",
        "queue: RabbitMQ (default: settings, $TALLY_BROKER__URL)",
    ),
    val(
        "prefix",
        "queue: broker prefix (default: settings, $TALLY_BROKER__PREFIX)",
    ),
    val(
        "database-url",
        "queue: ledger database, to check the shard count (default: settings)",
    ),
    flag("quiet", "no progress bar"),
    flag("help", "this help"),
];

const IMPORT_HELP: &str = "
Each line is the body of POST /transaction (JSON lines), or a CSV row under a header naming
the same fields (id,type,amount,accountId,timestamp,requestId,userId; empty cells are absent).
A line without an id gets a deterministic one (imp-<file hash>-<line>), so running the same
file again reproduces it. The confirmed contiguous prefix is kept in the checkpoint file: a
rerun skips it, re-sends the rest, and the ledger deduplicates by id — an interrupted import
run again has every line's effect exactly once.
withdraw_request lines need a live decision: allowed with --via api, refused with --via queue.
Settings (queue mode): TALLY_CONFIG / TALLY_PROFILE / TALLY_* env, like the other processes.
Exit: 0 all lines sent or skipped; 2 some lines rejected (listed, the rest sent); 1 aborted.";

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match argv.split_first() {
        Some((cmd, rest)) if cmd == "import" => match run_import(rest).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("tally import: {e:#}");
                1
            }
        },
        Some((cmd, _)) if matches!(cmd.as_str(), "-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

async fn run_import(argv: &[String]) -> anyhow::Result<i32> {
    let args = Args::parse(argv, IMPORT)?;
    if args.flag("help") {
        println!(
            "tally import FILE [options]\n{}{IMPORT_HELP}",
            usage(IMPORT)
        );
        return Ok(0);
    }
    let spec = import::ImportSpec::from_args(&args)?;
    let summary = import::run(spec).await?;
    Ok(if summary.rejected > 0 { 2 } else { 0 })
}
