//! The runtime's floors, checked on its source: the key vocabulary (`key/`) is the ground
//! floor; the mechanisms (envelope, AEAD, padding, KMS backends, key stores, blind-index and
//! codec primitives) build on it; `keyring/` is the one place that changes key state; the
//! model glue sits on top. An import that runs back up (a `use crate::...` of a higher floor,
//! outside comments) fails this test, naming the file and line. A positive control makes sure
//! the checker sees a planted upward import.

use std::path::{Path, PathBuf};

/// Each floor and the crate modules it must not import from.
const RULES: &[(&str, &[&str])] = &[
    (
        "key",
        &[
            "keyring", "kms", "store", "envelope", "model", "codec", "manifest",
        ],
    ),
    ("envelope", &["keyring", "kms", "store", "model", "codec"]),
    ("aead", &["keyring", "kms", "store", "model", "envelope"]),
    ("padding", &["keyring", "kms", "store", "model", "envelope"]),
    ("kms", &["keyring", "store", "model", "codec", "KeyRing"]),
    ("store", &["keyring", "kms", "model", "codec", "KeyRing"]),
    ("blind_index", &["keyring", "store", "model", "KeyRing"]),
    ("codec", &["keyring", "store", "kms", "model", "KeyRing"]),
    ("manifest", &["keyring", "store", "kms", "model", "KeyRing"]),
    ("error", &["keyring", "store", "kms", "model"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files of a module: `src/NAME.rs` and everything under `src/NAME/`.
fn files_of(module: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let file = src().join(format!("{module}.rs"));
    if file.exists() {
        out.push(file);
    }
    let mut dirs = vec![src().join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// Upward imports in `text`: code lines (not comments) that name `crate::FORBIDDEN`.
fn violations(text: &str, forbidden: &[&str]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for f in forbidden {
            if code.contains(&format!("crate::{f}")) {
                out.push((n + 1, line.trim().to_owned()));
            }
        }
    }
    out
}

#[test]
fn no_import_runs_back_up() {
    let mut found = Vec::new();
    let mut files_checked = 0usize;
    for (module, forbidden) in RULES {
        let files = files_of(module);
        assert!(!files.is_empty(), "module {module} has no source files");
        for file in files {
            files_checked += 1;
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for (line, code) in violations(&text, forbidden) {
                found.push(format!("{}:{line}: {code}", file.display()));
            }
        }
    }
    assert!(files_checked > 20, "only {files_checked} files checked");
    assert!(
        found.is_empty(),
        "imports that run back up a floor:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_import_and_ignores_comments() {
    let planted = "use crate::key::KeyScope;\nuse crate::keyring::KeyRing;\n\
                   /// see [`KeyRing`](crate::keyring::KeyRing)\nlet x = 1; // crate::store\n";
    let v = violations(planted, &["keyring", "store"]);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v.first().map(|x| x.0), Some(2));
}
