//! `cargo dev`'s command line: what it refuses, it refuses before doing
//! anything, with a message and a non-zero exit.

use std::process::{Command, Output};

fn cargo_dev(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_devstack")).args(args).output().expect("run the devstack binary")
}

#[test]
fn an_unknown_test_group_fails_and_names_the_groups() {
    for group in ["nosuchgroup", "tyop"] {
        let output = cargo_dev(&["test", "db", group]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "`cargo dev test db {group}` exited 0: {stderr}");
        assert!(stderr.contains(group) && stderr.contains("e2e"), "no clear message: {stderr}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("passed"), "it ran suites");
    }
}

#[test]
fn an_unknown_command_or_option_fails() {
    for args in [&["tset"][..], &["up", "--frsh"], &["bench", "--rusn", "2"], &["gateway", "extra"], &[]] {
        let output = cargo_dev(args);
        assert!(!output.status.success(), "`cargo dev {}` exited 0", args.join(" "));
        assert!(!output.stderr.is_empty(), "`cargo dev {}` said nothing", args.join(" "));
    }
}

#[test]
fn help_lists_every_command() {
    let output = cargo_dev(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["up", "test", "gateway", "setup", "bench"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}
