//! The checkpoint of an import: how many lines from the start of the file are done (sent and
//! confirmed, skipped, or rejected), for the file with this content hash. A rerun skips them
//! without sending; everything after is sent again and deduplicated by id. Written to a
//! temporary file and renamed, so a kill never leaves a torn checkpoint.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Content hash of the file it belongs to: a checkpoint of another file is ignored.
    pub file_sha256: String,
    /// Every line numbered up to this one is done.
    pub done_through_line: u64,
    /// Lines the server refused (400/422) inside that prefix: a rerun does not send them
    /// again, yet must still count them in its summary and exit status.
    pub rejected_by_server: u64,
}

/// `FILE.checkpoint`.
pub fn default_path(input: &Path) -> PathBuf {
    let mut name = input.as_os_str().to_owned();
    name.push(".checkpoint");
    PathBuf::from(name)
}

/// The checkpoint at `path` if it belongs to the file with `file_sha256`.
pub fn load(path: &Path, file_sha256: &str) -> Result<Option<Checkpoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let checkpoint: Checkpoint = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a checkpoint", path.display()))?;
    if checkpoint.file_sha256 != file_sha256 {
        eprintln!(
            "tally import: {} belongs to another version of the file; starting from line 1 \
             (lines already sent keep their ids only if they carry one)",
            path.display()
        );
        return Ok(None);
    }
    Ok(Some(checkpoint))
}

pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::to_vec(checkpoint)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_another_files_checkpoint() {
        let path = std::env::temp_dir().join(format!("tally-cli-ckpt-{}", std::process::id()));
        let c = Checkpoint {
            file_sha256: "aa".into(),
            done_through_line: 42,
            rejected_by_server: 1,
        };
        save(&path, &c).unwrap();
        assert_eq!(load(&path, "aa").unwrap(), Some(c));
        assert_eq!(load(&path, "bb").unwrap(), None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(load(&path, "aa").unwrap(), None);
    }
}
