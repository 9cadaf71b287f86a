//! The `tchu` command as `cargo install --path tchu-cli` installs it: every subcommand and flag
//! it had as the library's `cli` feature, unchanged. (The commands' behaviour on the broker is
//! tested by the workspace's suite: `tests/cli.rs`, `tests/redaction.rs`, `tests/outbox.rs`,
//! `tests/inbox_replay.rs`, `tests/schema_gate.rs`, `tests/quorum.rs`.)

use std::process::Command;

/// `tchu <args> --help`, which must succeed.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tchu"))
        .args(args)
        .arg("--help")
        .output()
        .expect("tchu runs");
    assert!(out.status.success(), "tchu {args:?} --help failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// Every word of `expected` appears in the help of `tchu <args>`.
fn offers(args: &[&str], expected: &[&str]) {
    let text = help(args);
    for word in expected {
        assert!(
            text.contains(word),
            "`tchu {} --help` lacks {word}:\n{text}",
            args.join(" ")
        );
    }
}

#[test]
fn every_subcommand_and_flag_is_there() {
    offers(
        &[],
        &[
            "publish", "call", "dlq", "tail", "inbox", "outbox", "schema", "--url", "--json",
        ],
    );
    offers(
        &["publish"],
        &[
            "--format",
            "--delay",
            "--header",
            "--expiration",
            "--priority",
            "--url",
            "--json",
        ],
    );
    offers(&["call"], &["--timeout"]);
    offers(&["dlq"], &["list", "show", "replay", "purge"]);
    offers(&["dlq", "list"], &["--limit"]);
    offers(&["dlq", "show"], &["--all"]);
    offers(&["dlq", "replay"], &["--limit", "--id", "--force"]);
    offers(&["dlq", "purge"], &["--yes"]);
    offers(&["tail"], &["--count", "--timeout", "--headers"]);
    offers(&["inbox"], &["schema"]);
    offers(&["outbox"], &["schema", "relay", "pending"]);
    offers(&["outbox", "relay"], &["--database-url", "--batch"]);
    offers(&["outbox", "pending"], &["--database-url"]);
    offers(&["schema", "diff"], &["--allow"]);
}

#[test]
fn invalid_input_exits_2_before_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_tchu"))
        .args(["--url", "amqp://127.0.0.1:1/%2f", "publish", "a..b", "{}"])
        .output()
        .expect("tchu runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
