//! Command-line options: positional arguments, `--name value`, `--name=value` and bare
//! `--flag`, checked against what the subcommand declares. Hand-rolled like tally-bench's:
//! a few options do not justify an argument parser crate.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// One option a subcommand accepts.
pub struct Opt {
    pub name: &'static str,
    pub takes_value: bool,
    pub help: &'static str,
}

pub const fn val(name: &'static str, help: &'static str) -> Opt {
    Opt {
        name,
        takes_value: true,
        help,
    }
}

pub const fn flag(name: &'static str, help: &'static str) -> Opt {
    Opt {
        name,
        takes_value: false,
        help,
    }
}

pub fn usage(opts: &[Opt]) -> String {
    let mut out = String::new();
    for o in opts {
        let left = if o.takes_value {
            format!("--{} <v>", o.name)
        } else {
            format!("--{}", o.name)
        };
        out.push_str(&format!("  {left:<22} {}\n", o.help));
    }
    out
}

#[derive(Debug, Default)]
pub struct Args {
    pub positional: Vec<String>,
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
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

    /// `10`, `10s`, `500ms`, `2m`.
    pub fn duration_or(&self, name: &str, default: Duration) -> Result<Duration> {
        let Some(text) = self.values.get(name) else {
            return Ok(default);
        };
        let t = text.trim();
        let (number, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
            Some(i) => t.split_at(i),
            None => (t, "s"),
        };
        let n: f64 = number
            .parse()
            .with_context(|| format!("--{name} {text:?} (e.g. 10s, 500ms, 2m)"))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            _ => bail!("--{name} {text:?}: unit ms, s or m"),
        };
        if !(secs.is_finite() && secs >= 0.0) {
            bail!("--{name} {text:?}");
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: &[Opt] = &[val("via", "v"), val("retry-for", "r"), flag("quiet", "q")];

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_positionals_values_and_flags() {
        let a = Args::parse(&argv("f.jsonl --via=queue --quiet --retry-for 2m"), OPTS).unwrap();
        assert_eq!(a.positional, vec!["f.jsonl"]);
        assert_eq!(a.opt_str("via").as_deref(), Some("queue"));
        assert!(a.flag("quiet"));
        assert_eq!(
            a.duration_or("retry-for", Duration::ZERO).unwrap(),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn refuses_unknown_options_and_missing_values() {
        assert!(Args::parse(&argv("--bogus 1"), OPTS).is_err());
        assert!(Args::parse(&argv("--via"), OPTS).is_err());
        assert!(Args::parse(&argv("--quiet=1"), OPTS).is_err());
    }
}
