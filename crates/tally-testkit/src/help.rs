//! Checking a binary's `--help`: it exits 0 and names what the Makefile, the deploy scripts
//! and the docs pass to it, so a renamed flag fails a test instead of `make up`.

/// `bin <args> --help`'s output; panics (the test's failure) when it does not exit 0.
pub fn help(bin: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    assert!(out.status.success(), "{bin} {args:?} --help: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `bin <args> --help` names every one of `names`.
pub fn assert_help_lists(bin: &str, args: &[&str], names: &[&str]) {
    let text = help(bin, args);
    for name in names {
        assert!(
            text.contains(name),
            "{name} missing from {args:?} --help:\n{text}"
        );
    }
}
