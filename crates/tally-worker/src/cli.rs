//! The `tally-worker` command line (clap): the subcommands and their `--help`, public so that
//! a test can check that what deploy files run (docker-compose.yml's `command:`) really
//! exists.

use clap::{Args, Parser, Subcommand};

/// What `tally-worker` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Consume the shard queues until SIGTERM (also the default without arguments).
    Run,
    /// Apply the database migrations and exit.
    Migrate,
    /// Run the conservation auditor; prints its JSON report, exits 1 if it fails.
    Audit,
    /// Print archived dead letters as JSON.
    DeadLettersList,
    /// Send pending dead letters back to their shard: all of them (`None`) or these ids.
    DeadLettersRepublish(Option<Vec<String>>),
}

/// The arguments as clap sees them; [`Command`] is what they mean.
#[derive(Debug, Parser)]
#[command(
    name = "tally-worker",
    version,
    about = "The tally worker: owns shard queues and applies commands in batches to PostgreSQL.",
    after_help = "Without a subcommand it runs (`tally-worker run`). Configuration comes from \
                  the settings files and TALLY_* environment variables (TALLY_CONFIG, \
                  TALLY_PROFILE), like every tally process."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Consume the shard queues until SIGTERM (the default).
    Run,
    /// Apply the database migrations and exit.
    Migrate,
    /// Run the conservation auditor; print its JSON report and exit 1 if it fails.
    Audit,
    /// Inspect or replay the dead-letter archive.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
}

#[derive(Debug, Subcommand)]
enum DeadLetters {
    /// Print archived dead letters as JSON.
    List,
    /// Send pending dead letters back to their shard queue.
    Republish(Republish),
}

#[derive(Debug, Args)]
struct Republish {
    /// Every pending dead letter.
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    all: bool,
    /// Only these dead letters (their ids, as `dead-letters list` prints them).
    ids: Vec<String>,
}

impl From<Cli> for Command {
    fn from(cli: Cli) -> Self {
        match cli.command {
            None | Some(Sub::Run) => Self::Run,
            Some(Sub::Migrate) => Self::Migrate,
            Some(Sub::Audit) => Self::Audit,
            Some(Sub::DeadLetters(DeadLetters::List)) => Self::DeadLettersList,
            Some(Sub::DeadLetters(DeadLetters::Republish(r))) => {
                Self::DeadLettersRepublish((!r.all).then_some(r.ids))
            }
        }
    }
}

impl Command {
    /// Parses the arguments after the program name (for tests of deploy files; `main` uses
    /// [`Cli`] directly, so that `--help` prints and exits).
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Self, String> {
        let argv = std::iter::once("tally-worker").chain(args.iter().map(AsRef::as_ref));
        Cli::try_parse_from(argv)
            .map(Self::from)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, Command};
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_every_subcommand_and_refuses_the_rest() {
        let none: [&str; 0] = [];
        assert_eq!(Command::parse(&none), Ok(Command::Run));
        assert_eq!(Command::parse(&["run"]), Ok(Command::Run));
        assert_eq!(Command::parse(&["migrate"]), Ok(Command::Migrate));
        assert_eq!(Command::parse(&["audit"]), Ok(Command::Audit));
        assert_eq!(
            Command::parse(&["dead-letters", "list"]),
            Ok(Command::DeadLettersList)
        );
        assert_eq!(
            Command::parse(&["dead-letters", "republish", "--all"]),
            Ok(Command::DeadLettersRepublish(None))
        );
        assert_eq!(
            Command::parse(&["dead-letters", "republish", "a", "b"]),
            Ok(Command::DeadLettersRepublish(Some(vec![
                "a".into(),
                "b".into()
            ])))
        );
        for bad in [
            &["migrat"][..],
            &["run", "extra"],
            &["dead-letters"],
            &["dead-letters", "republish"],
            &["dead-letters", "republish", "a", "--all"],
        ] {
            assert!(Command::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
