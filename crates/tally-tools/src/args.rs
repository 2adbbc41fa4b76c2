//! Command-line options: positional arguments, `--name value`, `--name=value` and bare
//! `--flag`, checked against the options a subcommand declares. Hand-rolled on purpose: a
//! dozen options do not justify an argument parser crate in a workspace whose release build
//! already takes minutes on 2 cores.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// One option a subcommand accepts.
pub struct Opt {
    pub name: &'static str,
    /// Whether it takes a value (`--rate 1000`) or is a flag (`--hot`).
    pub takes_value: bool,
    pub help: &'static str,
}

/// An option with a value.
pub const fn val(name: &'static str, help: &'static str) -> Opt {
    Opt {
        name,
        takes_value: true,
        help,
    }
}

/// A flag.
pub const fn flag(name: &'static str, help: &'static str) -> Opt {
    Opt {
        name,
        takes_value: false,
        help,
    }
}

/// Parsed options of one subcommand.
#[derive(Debug, Default)]
pub struct Args {
    /// Arguments that are not options (e.g. `tally import FILE`), in order.
    pub positional: Vec<String>,
    values: HashMap<String, String>,
    flags: Vec<String>,
}

/// Usage text of a subcommand's options.
pub fn usage(opts: &[Opt]) -> String {
    let mut out = String::new();
    for o in opts {
        let left = if o.takes_value {
            format!("--{} <v>", o.name)
        } else {
            format!("--{}", o.name)
        };
        out.push_str(&format!("  {left:<26} {}\n", o.help));
    }
    out
}

impl Args {
    /// Parses `argv` (without the subcommand) against `opts`; unknown options are errors,
    /// other arguments are kept in [`Args::positional`].
    pub fn parse(argv: &[String], opts: &[Opt]) -> Result<Self> {
        let mut args = Args::default();
        let mut it = argv.iter();
        while let Some(arg) = it.next() {
            let Some(body) = arg.strip_prefix("--") else {
                args.positional.push(arg.clone());
                continue;
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let opt = opts
                .iter()
                .find(|o| o.name == name)
                .ok_or_else(|| anyhow!("unknown option --{name}\n{}", usage(opts)))?;
            if opt.takes_value {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| anyhow!("--{name} needs a value"))?,
                };
                args.values.insert(name.to_string(), value);
            } else {
                if inline.is_some() {
                    bail!("--{name} takes no value");
                }
                args.flags.push(name.to_string());
            }
        }
        Ok(args)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn str_or(&self, name: &str, default: &str) -> String {
        self.values
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    pub fn opt_str(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    pub fn num_or<T: FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| anyhow!("--{name} {v:?}: {e}")),
        }
    }

    pub fn opt_num<T: FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.values
            .get(name)
            .map(|v| v.parse().map_err(|e| anyhow!("--{name} {v:?}: {e}")))
            .transpose()
    }

    /// Refuses positional arguments, for subcommands that take options only.
    pub fn no_positional(&self) -> Result<()> {
        match self.positional.first() {
            Some(arg) => bail!("unexpected argument {arg:?} (options start with --)"),
            None => Ok(()),
        }
    }

    /// A comma-separated list of numbers (`--concurrency 4,16,64`).
    pub fn list_or<T: FromStr + Clone>(&self, name: &str, default: &[T]) -> Result<Vec<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .split(',')
                .map(|p| p.trim().parse().map_err(|e| anyhow!("--{name} {p:?}: {e}")))
                .collect(),
        }
    }

    pub fn duration_or(&self, name: &str, default: Duration) -> Result<Duration> {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => parse_duration(v).with_context(|| format!("--{name}")),
        }
    }
}

/// `10`, `10s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| anyhow!("bad duration {text:?} (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("bad duration unit in {text:?} (ms, s or m)"),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        bail!("bad duration {text:?}");
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: &[Opt] = &[val("rate", "r"), val("duration", "d"), flag("hot", "h")];

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_values_flags_and_inline_values() {
        let a = Args::parse(&argv("--rate 100 --hot --duration=2m"), OPTS).unwrap();
        assert_eq!(a.num_or("rate", 0u64).unwrap(), 100);
        assert!(a.flag("hot"));
        assert_eq!(
            a.duration_or("duration", Duration::ZERO).unwrap(),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn refuses_unknown_options_and_missing_values() {
        assert!(Args::parse(&argv("--bogus 1"), OPTS).is_err());
        assert!(Args::parse(&argv("--rate"), OPTS).is_err());
        assert!(Args::parse(&argv("rate"), OPTS)
            .unwrap()
            .no_positional()
            .is_err());
        let a = Args::parse(&argv("f.jsonl --rate=1"), OPTS).unwrap();
        assert_eq!(a.positional, vec!["f.jsonl"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3h").is_err());
    }
}
