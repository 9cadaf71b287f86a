//! The schema compatibility gate: `<service> schema --check-against DIR` and
//! `tchu schema diff OLD NEW`. The verdicts come from [`tchu_core::compat`]; this module reads
//! the schema folders `schema --out` writes, applies the allow-list, prints, and says how the
//! process exits: 0 compatible, 1 breaking, 2 usage (a folder or file that cannot be read).

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tchu_core::compat::{Change, apply_allow_list, diff_sets, table};

/// The file an allow-list is read from when none is given: in the old folder, so that it is
/// committed next to the schemas it accepts changes to.
pub const ALLOW_FILE: &str = "schema-allow.txt";

/// The schemas of a `schemas_document`, by the names `schema --out` gives their files:
/// `<topic>`, `<topic>.response`, `<topic>.error`.
pub fn schema_files(doc: &Value) -> BTreeMap<String, Value> {
    let mut files = BTreeMap::new();
    for ev in doc["events"].as_array().into_iter().flatten() {
        let topic = ev["topic"].as_str().unwrap_or("event");
        // A topic may hold `/` or start with `..`: never a path outside the folder.
        let stem: String = topic
            .chars()
            .map(|c| if c == '/' || c == '\\' { '_' } else { c })
            .collect();
        for (kind, suffix) in [
            ("schema", ""),
            ("response", ".response"),
            ("error", ".error"),
        ] {
            if !ev[kind].is_null() {
                files.insert(format!("{stem}{suffix}"), ev[kind].clone());
            }
        }
    }
    files
}

/// Every `*.json` file of a folder, by name without `.json`.
///
/// # Errors
/// A folder or file that cannot be read, or a file that is not JSON.
pub fn read_schema_dir(dir: &Path) -> Result<BTreeMap<String, Value>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let schema = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        files.insert(stem.to_owned(), schema);
    }
    Ok(files)
}

/// Compares, applies the allow-list (`allow`, else `ALLOW_FILE` in `old_dir` if present),
/// prints a table (or JSON), and returns the exit code.
pub fn gate(
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
    old_dir: Option<&Path>,
    allow: Option<&Path>,
    json: bool,
) -> i32 {
    let mut changes = diff_sets(old, new);
    let default = old_dir.map(|d| d.join(ALLOW_FILE)).filter(|p| p.exists());
    if let Some(path) = allow.map(Path::to_path_buf).or(default) {
        match std::fs::read_to_string(&path) {
            Ok(text) => apply_allow_list(&mut changes, &text),
            Err(e) => {
                eprintln!("error: allow-list {}: {e}", path.display());
                return 2;
            }
        }
    }
    let breaking = changes.iter().filter(|c| c.is_breaking()).count();
    if json {
        let doc = serde_json::json!({
            "compatible": breaking == 0,
            "breaking": breaking,
            "changes": changes.iter().map(Change::to_json).collect::<Vec<_>>(),
        });
        // One line, as every `--json` output of tchu's tools.
        println!("{doc}");
    } else if changes.is_empty() {
        println!("no schema changes");
    } else {
        print!("{}", table(&changes));
        println!(
            "\n{} change(s), {breaking} breaking{}",
            changes.len(),
            if breaking == 0 { ": compatible" } else { "" }
        );
    }
    i32::from(breaking > 0)
}
