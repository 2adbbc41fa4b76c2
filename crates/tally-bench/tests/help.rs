//! `tally-bench --help` exits 0 and names every subcommand and option the deploy files, the
//! Makefile and the docs use.

#![allow(clippy::unwrap_used)] // a panic in a test is its failure message

fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} --help: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_lists_the_subcommands_and_options() {
    let top = help(&[]);
    for sub in [
        "load",
        "drain",
        "one-commit",
        "broker-ceiling",
        "suite",
        "seed",
        "settlement",
    ] {
        assert!(top.contains(sub), "{sub} missing from:\n{top}");
    }
    // What the Makefile passes to `suite`.
    let suite = help(&["suite"]);
    for option in [
        "--port",
        "--api-base-port",
        "--bin-dir",
        "--wait-quiet",
        "--quick",
    ] {
        assert!(suite.contains(option), "{option} missing from:\n{suite}");
    }
}
