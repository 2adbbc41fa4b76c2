//! Processes a test starts: the workspace's binaries found from another crate's tests, killed
//! when the test ends however it ends, and run with a shifted wall clock through libfaketime
//! (Debian package `faketime`, installed by `deploy/local/services.sh`).

use std::path::{Path, PathBuf};

/// A child process, killed (and reaped) when dropped: a failed assertion does not leave it
/// running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The workspace binary `name` of the running test's build profile: Cargo gives a test only its
/// own package's binaries (`CARGO_BIN_EXE_*`), so an end-to-end test finds the API's or the
/// worker's next to its own executable (`target/<profile>/deps/…` → `target/<profile>/`).
/// `cargo test --workspace` and `cargo nextest run --workspace` build them.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable under target/<profile>/deps");
    let path = profile.join(name);
    assert!(
        path.exists(),
        "{} missing: build the binaries first (`cargo build --bins`, or run the tests with \
         `--workspace`)",
        path.display()
    );
    path
}

/// Where Debian's `faketime` package puts the multi-threaded preload library (our processes
/// are multi-threaded), per architecture: `/usr/lib/<triplet>/faketime/`.
const FAKETIME_LIB: &str = "faketime/libfaketimeMT.so.1";

/// libfaketime's preload library under `lib` (`lib/<triplet>/faketime/…`), if installed.
pub fn faketime_library(lib: &Path) -> Option<PathBuf> {
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|dir| dir.path().join(FAKETIME_LIB))
        .find(|path| path.is_file())
}

/// libfaketime's preload library, for a test that cannot run without it. Preloaded into the
/// process itself: the `faketime` command would fork, and killing it would leave its child
/// running.
pub fn libfaketime() -> PathBuf {
    faketime_library(Path::new("/usr/lib"))
        .expect("libfaketime (Debian package faketime; `make test` installs it)")
}

/// The environment that runs a process with its wall clock shifted by `secs` seconds through
/// `library`. Only the wall clock: timers and timeouts (the monotonic clock) keep real time.
pub fn skewed_clock(library: &Path, secs: i64) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), library.display().to_string()),
        ("FAKETIME".into(), format!("{secs:+}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_faketime_library_is_found_under_any_triplet() {
        let root = std::env::temp_dir().join(format!("tally-testkit-ft-{}", std::process::id()));
        let lib = root.join("some-triplet").join(FAKETIME_LIB);
        std::fs::create_dir_all(lib.parent().expect("has a parent")).expect("mkdir");
        assert_eq!(faketime_library(&root), None);
        std::fs::write(&lib, b"").expect("write");
        assert_eq!(faketime_library(&root), Some(lib));
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn a_skewed_clock_keeps_monotonic_time_real() {
        let env = skewed_clock(Path::new("/x/lib.so"), -4);
        assert!(env.contains(&("LD_PRELOAD".into(), "/x/lib.so".into())));
        assert!(env.contains(&("FAKETIME".into(), "-4".into())));
        assert!(env.contains(&("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into())));
        assert_eq!(skewed_clock(Path::new("/x"), 3)[1].1, "+3");
    }
}
