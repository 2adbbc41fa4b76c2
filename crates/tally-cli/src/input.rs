//! Reading an import file: JSON lines or CSV with a header, each line turned into the JSON
//! object `POST /transaction` takes, numbered by its line in the file. Also the file's
//! content hash and the deterministic id of a line that carries none: the same file gives
//! the same ids on every run, which is what makes a rerun deduplicate instead of doubling.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// How the file is written (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// JSON lines: each line the body of `POST /transaction`.
    #[value(name = "jsonl", alias = "json", alias = "ndjson")]
    JsonLines,
    /// CSV under a header naming the same fields.
    Csv,
}

impl Format {
    /// `--format`, else the extension: `.csv` is CSV, anything else JSON lines.
    pub fn pick(flag: Option<Format>, path: &Path) -> Self {
        flag.unwrap_or_else(|| {
            match path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
            {
                Some(e) if e == "csv" => Format::Csv,
                _ => Format::JsonLines,
            }
        })
    }
}

/// One line of input: its number in the file (1-based) and its body, or why it has none.
#[derive(Debug)]
pub struct Line {
    pub number: u64,
    pub body: Result<Map<String, Value>, String>,
}

/// SHA-256 of the file's bytes (hex) and its number of lines (for the progress bar).
pub fn file_hash(path: &Path) -> Result<(String, u64)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let hash = format!("{:x}", hasher.finalize());
    Ok((hash, lines))
}

/// The id a line without one gets: derived from the file's content and the line number only.
pub fn line_id(file_hash: &str, number: u64) -> String {
    format!("imp-{}-{number}", &file_hash[..16.min(file_hash.len())])
}

/// Gives the body the deterministic id when it has none (absent or null).
pub fn ensure_id(body: &mut Map<String, Value>, file_hash: &str, number: u64) {
    if matches!(body.get("id"), None | Some(Value::Null)) {
        body.insert("id".into(), Value::String(line_id(file_hash, number)));
    }
}

/// The lines of the file, in order. Blank lines are not transactions and are left out.
pub fn read(path: &Path, format: Format) -> Result<Box<dyn Iterator<Item = Line> + Send>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(match format {
        Format::JsonLines => Box::new(json_lines(BufReader::new(file))),
        Format::Csv => Box::new(csv_rows(file)?),
    })
}

fn json_lines(reader: impl BufRead + Send) -> impl Iterator<Item = Line> + Send {
    reader.split(b'\n').enumerate().filter_map(|(i, bytes)| {
        let number = i as u64 + 1;
        let body = match bytes {
            Err(e) => Err(format!("unreadable: {e}")),
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => return None,
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => Ok(map),
                Ok(_) => Err("not a JSON object".to_string()),
                Err(e) => Err(format!("malformed JSON: {e}")),
            },
        };
        Some(Line { number, body })
    })
}

fn csv_rows(file: File) -> Result<impl Iterator<Item = Line> + Send> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(file);
    let headers: Vec<String> = reader
        .headers()
        .context("reading the CSV header")?
        .iter()
        .map(String::from)
        .collect();
    if !headers.iter().any(|h| h == "type") || !headers.iter().any(|h| h == "amount") {
        bail!("the CSV header must name the fields (id,type,amount,accountId,…); got {headers:?}");
    }
    Ok(reader.into_records().map(move |record| match record {
        Err(e) => Line {
            number: e.position().map_or(0, |p| p.line()),
            body: Err(format!("bad CSV row: {e}")),
        },
        Ok(record) => {
            let number = record.position().map_or(0, |p| p.line());
            let body = headers
                .iter()
                .zip(record.iter())
                .filter(|(_, cell)| !cell.is_empty())
                .map(|(h, cell)| (h.clone(), Value::String(cell.to_string())))
                .collect();
            Line {
                number,
                body: Ok(body),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_numbered_by_file_line_and_blank_lines_skipped() {
        let text = b"{\"type\":\"deposit\"}\n\n[1]\n{bad\n";
        let lines: Vec<Line> = json_lines(&text[..]).collect();
        assert_eq!(
            lines.iter().map(|l| l.number).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        assert!(lines[0].body.is_ok());
        assert_eq!(lines[1].body.as_ref().unwrap_err(), "not a JSON object");
        assert!(lines[2]
            .body
            .as_ref()
            .unwrap_err()
            .starts_with("malformed JSON"));
    }

    #[test]
    fn ids_are_kept_or_derived_from_file_and_line() {
        let mut with = Map::new();
        with.insert("id".into(), Value::String("mine".into()));
        ensure_id(&mut with, "abcdef0123456789ff", 7);
        assert_eq!(with["id"], "mine");
        let mut without = Map::new();
        ensure_id(&mut without, "abcdef0123456789ff", 7);
        assert_eq!(without["id"], "imp-abcdef0123456789-7");
    }

    #[test]
    fn csv_rows_map_header_to_fields_and_drop_empty_cells() {
        let dir = std::env::temp_dir().join(format!("tally-cli-csv-{}", std::process::id()));
        std::fs::write(
            &dir,
            "id,type,amount,accountId,timestamp\nt1,deposit,10.5,a1,\n,withdraw,\"2\",a2,\n",
        )
        .unwrap();
        let lines: Vec<Line> = read(&dir, Format::Csv).unwrap().collect();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(lines.len(), 2);
        let first = lines[0].body.as_ref().unwrap();
        assert_eq!(lines[0].number, 2);
        assert_eq!(first["amount"], "10.5");
        assert!(!first.contains_key("timestamp"));
        assert!(!lines[1].body.as_ref().unwrap().contains_key("id"));
    }
}
