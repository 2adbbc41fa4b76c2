//! `tally-bench --help` exits 0 and names every subcommand and option the deploy files, the
//! Makefile and the docs use.

use tally_testkit::help::assert_help_lists;

const BIN: &str = env!("CARGO_BIN_EXE_tally-bench");

#[test]
fn help_lists_the_subcommands_and_options() {
    assert_help_lists(
        BIN,
        &[],
        &[
            "load",
            "drain",
            "one-commit",
            "broker-ceiling",
            "suite",
            "seed",
            "settlement",
        ],
    );
    // What the Makefile passes to `suite`.
    assert_help_lists(
        BIN,
        &["suite"],
        &[
            "--port",
            "--api-base-port",
            "--bin-dir",
            "--wait-quiet",
            "--quick",
        ],
    );
}
