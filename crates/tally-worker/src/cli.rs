//! The `tally-worker` command line: the subcommands and their parsing, public so that a test
//! can check that what deploy files run (docker-compose.yml's `command:`) really exists.

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

pub const USAGE: &str =
    "run | migrate | audit | dead-letters list | dead-letters republish (--all | ID...)";

impl Command {
    /// Parses the arguments after the program name.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Self, String> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        match args.as_slice() {
            [] | ["run"] => Ok(Self::Run),
            ["migrate"] => Ok(Self::Migrate),
            ["audit"] => Ok(Self::Audit),
            ["dead-letters", "list"] => Ok(Self::DeadLettersList),
            ["dead-letters", "republish", "--all"] => Ok(Self::DeadLettersRepublish(None)),
            ["dead-letters", "republish", ids @ ..]
                if !ids.is_empty() && !ids.contains(&"--all") =>
            {
                Ok(Self::DeadLettersRepublish(Some(
                    ids.iter().map(|s| s.to_string()).collect(),
                )))
            }
            other => Err(format!("unknown command {other:?}; expected {USAGE}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Command;

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
