//! `tally-chaos --help` exits 0 and names every subcommand and option the deploy files, the
//! Makefile and the docs use.

use tally_testkit::help::assert_help_lists;

const BIN: &str = env!("CARGO_BIN_EXE_tally-chaos");

#[test]
fn help_lists_the_subcommands_and_options() {
    // What the Makefile passes.
    assert_help_lists(
        BIN,
        &[],
        &[
            "--seed ",
            "--seeds",
            "--kinds",
            "--no-faults",
            "--fail-fast",
            "--no-wait",
            "--ha",
        ],
    );
}
