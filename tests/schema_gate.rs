//! The schema compatibility gate on a real service binary (`examples/orders.rs`) and on the
//! `tchu` tool: `schema --out` committed, then `schema --check-against DIR` and
//! `tchu schema diff OLD NEW`, with exit 0 compatible, 1 breaking, 2 usage, and an allow-list.
#![cfg(feature = "service")]

mod common;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn orders(args: &[&str]) -> Output {
    Command::new(common::example("orders"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the orders example")
}

fn tchu(args: &[&str]) -> Output {
    Command::new(common::tchu_bin())
        .args(args)
        .output()
        .expect("run tchu")
}

/// `orders schema --out` into a fresh folder.
fn exported() -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique("tchu_gate"));
    let out = orders(&["schema", "--out", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn edit(dir: &Path, file: &str, f: impl FnOnce(&mut Value)) {
    let path = dir.join(file);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_service_checks_itself_against_its_last_release() {
    let old = exported();
    let check = |extra: &[&str]| {
        let mut args = vec!["schema", "--check-against", old.to_str().unwrap()];
        args.extend_from_slice(extra);
        orders(&args)
    };
    let same = check(&[]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
    assert!(text(&same).contains("no schema changes"), "{}", text(&same));

    // The released version had a required field this build no longer sends.
    edit(&old, "orders.placed.json", |v| {
        v["properties"]["legacy_ref"] = json!({"type": "string"});
        v["required"]
            .as_array_mut()
            .unwrap()
            .push(json!("legacy_ref"));
    });
    let broken = check(&[]);
    assert_eq!(broken.status.code(), Some(1), "{}", text(&broken));
    let out = text(&broken);
    assert!(
        out.contains("orders.placed") && out.contains("$.legacy_ref"),
        "{out}"
    );
    assert!(
        out.contains("field removed (was required)") && out.contains("new→old"),
        "{out}"
    );

    let json_out = check(&["--json"]);
    let doc: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(doc["compatible"], false);
    assert_eq!(doc["breaking"], 1);
    assert_eq!(
        doc["changes"][0]["breaks"]["new_producer_old_consumer"],
        true
    );

    // Accepted deliberately: committed next to the schemas, the gate passes.
    std::fs::write(
        old.join("schema-allow.txt"),
        "# dropped in 2.0, consumers updated\norders.placed $.legacy_ref\n",
    )
    .unwrap();
    let allowed = check(&[]);
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed));
    assert!(text(&allowed).contains("(allowed)"), "{}", text(&allowed));

    let missing = orders(&["schema", "--check-against", "/nonexistent/tchu"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    let _ = std::fs::remove_dir_all(&old);
}

#[test]
fn tchu_schema_diff_compares_two_folders() {
    let (old, new) = (exported(), exported());
    let same = tchu(&[
        "schema",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));

    // The new version's quote response narrows a field and adds a required one.
    edit(&new, "orders.quote.response.json", |v| {
        v["properties"]["currency"] = json!({"type": "string"});
        v["required"]
            .as_array_mut()
            .unwrap()
            .push(json!("currency"));
    });
    let out = tchu(&[
        "--json",
        "schema",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // One JSON object per line: the report, then the tool's failure.
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let doc: Value = serde_json::from_str(&first).unwrap();
    let change = &doc["changes"][0];
    assert_eq!(change["subject"], "orders.quote.response");
    assert_eq!(change["path"], "$.currency");
    assert_eq!(change["breaks"]["old_producer_new_consumer"], true);
    assert_eq!(change["breaks"]["new_producer_old_consumer"], false);

    let allow = old.join("accepted.txt");
    std::fs::write(&allow, "orders.quote.response\n").unwrap();
    let accepted = tchu(&[
        "schema",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--allow",
        allow.to_str().unwrap(),
    ]);
    assert_eq!(accepted.status.code(), Some(0), "{}", text(&accepted));

    let usage = tchu(&["schema", "diff", old.to_str().unwrap(), "/nonexistent/tchu"]);
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage));
    let _ = std::fs::remove_dir_all(&old);
    let _ = std::fs::remove_dir_all(&new);
}
