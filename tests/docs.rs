//! Every pointer to the troubleshooting guide in tchu's messages names an entry that exists,
//! and every entry is reachable from its table of contents.

use std::collections::BTreeSet;
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `tchu::troubleshooting#<id>` (the `help` field of log lines) and `entry("<id>")` (what `Error::help` returns) in the sources, with where each was found.
fn pointers(root: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for dir in ["tchu-runtime/src", "tchu-core/src", "src", "tchu-cli/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (marker, end) in [("tchu::troubleshooting#", None), ("entry(\"", Some('"'))] {
            for (at, _) in text.match_indices(marker) {
                let rest = &text[at + marker.len()..];
                let id: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                    .collect();
                let closed = end.is_none_or(|e| rest[id.len()..].starts_with(e));
                if !id.is_empty() && closed && !(marker == "tchu::troubleshooting#" && id == "id") {
                    out.push((id, file.display().to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn every_pointer_to_the_troubleshooting_guide_names_an_entry() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/troubleshooting.md")).unwrap();
    let entries: BTreeSet<&str> = guide
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(str::trim)
        .collect();
    let pointers = pointers(root);
    assert!(
        pointers.len() > 40,
        "the messages point to the guide: {}",
        pointers.len()
    );
    let missing: Vec<_> = pointers
        .iter()
        .filter(|(id, _)| !entries.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "pointers to entries the guide lacks: {missing:?}"
    );
    for id in &entries {
        assert!(
            guide.contains(&format!("(#{id})")),
            "entry `{id}` is not linked from the contents"
        );
    }
}

/// The README's dependency line is the one the user's crate CI builds (`tests/downstream/`)
/// uses, and that crate enables every public feature of tchu.
#[test]
fn the_readme_dependency_line_is_the_downstream_crates_with_every_feature() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let (downstream, readme) = (read("tests/downstream/Cargo.toml"), read("README.md"));
    let line = |text: &str| -> String {
        let l = text
            .lines()
            .find(|l| l.starts_with("tchu = { path = "))
            .unwrap();
        let path_end = l.find("\", ").unwrap();
        l[path_end..].to_owned()
    };
    assert_eq!(line(&readme), line(&downstream));
    let manifest = read("Cargo.toml");
    let features = manifest.split("[features]").nth(1).unwrap();
    let features = features.split("\n[").next().unwrap();
    let declared = features.lines().filter(|l| !l.starts_with('#'));
    for name in declared.filter_map(|l| l.split_once(" = ")).map(|(n, _)| n) {
        // `service` is on by default; `cli` does nothing now (the tool is `tchu-cli`).
        if name == "default" || name == "service" || name == "cli" {
            continue;
        }
        assert!(line(&downstream).contains(&format!("\"{name}\"")), "{name}");
    }
}
