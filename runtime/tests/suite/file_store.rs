//! `FileKeyStore` specifics: a hand-edited file that breaks a record invariant is refused with
//! a typed error naming the problem, and the temporary file of a write can collide neither with
//! the store itself (a store named `x.tmp`) nor with another store's in the same folder.
#![cfg(feature = "file-store")]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::{FileKeyStore, KeyStore};
use leakless::{AuditInfo, Error, KekVersion, KeyRing, KeyScope};
use serde_json::Value;

fn who() -> AuditInfo {
    AuditInfo::new("test", "file store")
}

fn scope() -> KeyScope {
    KeyScope::new("patients").unwrap()
}

/// A store at `path` with v1 in grace and v2 active.
fn rotated_store(path: &Path) -> KeyRing {
    let ring = KeyRing::builder(
        Arc::new(LocalKms::from_root_key(RootKey::generate())),
        Arc::new(FileKeyStore::open(path).unwrap()),
    )
    .build();
    ring.create_scope(&scope(), &who()).unwrap();
    ring.rotate(&scope(), Duration::from_secs(3600), &who())
        .unwrap();
    ring
}

/// Rewrites the record of `version` in the store file with `edit`.
fn edit_record(path: &Path, version: u64, edit: impl FnOnce(&mut Value)) {
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let record = doc["records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["scope"] == "patients" && r["version"] == version)
        .unwrap();
    edit(record);
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

fn refused(path: &Path) -> String {
    match FileKeyStore::open(path) {
        Err(Error::KeyStore {
            store: "file",
            detail,
            ..
        }) => detail,
        // A record the store never writes (a grace state without its deadline) is corrupt
        // rather than inconsistent; the message names the record and the field.
        Err(e @ Error::KeyStoreCorrupt { store: "file", .. }) => e.to_string(),
        Err(other) => panic!("expected a key-store error, got {other}"),
        Ok(_) => panic!("a broken store file was accepted"),
    }
}

#[test]
fn a_hand_edited_file_with_two_active_versions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let ring = rotated_store(&path);
    edit_record(&path, 1, |r| {
        r["state"] = "active".into();
        r["grace_until"] = Value::Null;
    });
    let detail = refused(&path);
    assert!(
        detail.contains("patients has two active versions, v1 and v2"),
        "{detail}"
    );
    // A ring over the edited file refuses too, on every read.
    assert!(matches!(
        ring.versions(&scope()),
        Err(Error::KeyStore { .. })
    ));
}

#[test]
fn a_destroyed_record_with_material_and_a_grace_record_without_deadline_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let ring = rotated_store(&path);
    let v1 = KekVersion::new(1).unwrap();
    // This test is about the file's invariants, not about the cache window.
    ring.retire_ignoring_cache_window(&scope(), v1, &who())
        .unwrap();
    let before = std::fs::read_to_string(&path).unwrap();
    ring.destroy_ignoring_cache_window(&scope(), v1, &who())
        .unwrap();

    // Put the erased material back.
    let old: Value = serde_json::from_str(&before).unwrap();
    let old_v1 = old["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scope"] == "patients" && r["version"] == 1)
        .unwrap()
        .clone();
    edit_record(&path, 1, |r| {
        r["root_key_id"] = old_v1["root_key_id"].clone();
        r["wrapped_kek_hex"] = old_v1["wrapped_kek_hex"].clone();
    });
    let detail = refused(&path);
    assert!(
        detail.contains("patients v1 is destroyed but still has wrapped material"),
        "{detail}"
    );
    assert!(!detail.contains(old_v1["wrapped_kek_hex"].as_str().unwrap()));

    // A grace record without its deadline.
    edit_record(&path, 1, |r| {
        r["state"] = "grace".into();
        r["grace_until"] = Value::Null;
    });
    let detail = refused(&path);
    assert!(detail.contains("record patients v1"), "{detail}");

    // An active record without material.
    edit_record(&path, 1, |r| r["state"] = "retired".into());
    edit_record(&path, 2, |r| {
        r["wrapped_kek_hex"] = Value::Null;
        r["root_key_id"] = Value::Null;
    });
    let detail = refused(&path);
    assert!(
        detail.contains("patients v2 is active but has no wrapped material"),
        "{detail}"
    );
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_store_named_x_tmp_works_beside_a_store_named_x_json() {
    let dir = tempfile::tempdir().unwrap();
    let tmp_named = dir.path().join("x.tmp");
    let json_named = dir.path().join("x.json");
    let a = rotated_store(&tmp_named);
    let b = rotated_store(&json_named);
    // More writes through both, interleaved.
    for _ in 0..3 {
        a.rotate(&scope(), Duration::ZERO, &who()).unwrap();
        b.rotate(&scope(), Duration::from_secs(60), &who()).unwrap();
    }
    // Each store reopens with its own history; no temporary file is left behind.
    let a_versions = FileKeyStore::open(&tmp_named)
        .unwrap()
        .list(&scope())
        .unwrap();
    let b_versions = FileKeyStore::open(&json_named)
        .unwrap()
        .list(&scope())
        .unwrap();
    assert_eq!(a_versions.len(), 5);
    assert_eq!(b_versions.len(), 5);
    assert_ne!(a_versions, b_versions);
    assert_eq!(
        names_in(dir.path()),
        ["x.json", "x.json.lock", "x.tmp", "x.tmp.lock"]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [&tmp_named, &json_named] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{}: {mode:o}", p.display());
        }
    }
}
