//! The local KMS backend: key file rules (permissions, format, no overwrite), the environment
//! variable, and KEK wrap binding (the process hardening helper has its own test binary,
//! `tests/hardening.rs`).

use std::fs;
use std::os::unix::fs::PermissionsExt;

use leakless::Error;
use leakless::key::KeyScope;
use leakless::kms::{Kms, LocalKms};
use leakless::secret::RootKey;

use crate::support::kms_suite::{refusals, round_trip, round_trip_between};
use crate::support::peers::binding;

#[test]
fn generated_key_file_is_private_reloads_to_the_same_key_and_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    let a = LocalKms::generate_key_file(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let b = LocalKms::from_key_file(&path).unwrap();
    assert_eq!(a.root_key_id(), b.root_key_id());
    assert!(a.root_key_id().starts_with("local:"));
    round_trip_between(&a, &b, &KeyScope::new("s").unwrap(), 1);
    assert!(matches!(
        LocalKms::generate_key_file(&path),
        Err(Error::KeyFile { .. })
    ));
    // The key file content never appears in Debug output.
    let content = fs::read_to_string(&path).unwrap();
    let shown = format!("{a:?} {b:?}");
    assert!(!shown.contains(content.trim()), "{shown}");
}

#[test]
fn group_or_world_readable_key_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    LocalKms::generate_key_file(&path).unwrap();
    for mode in [0o640, 0o604, 0o660, 0o644, 0o700 | 0o004] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = LocalKms::from_key_file(&path).unwrap_err();
        assert!(matches!(err, Error::KeyFile { .. }), "mode {mode:o}: {err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    LocalKms::from_key_file(&path).unwrap();
}

#[test]
fn malformed_or_missing_key_files_are_refused_without_echoing_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.key");
    for content in [&b"short"[..], &[b'z'; 64][..], &[7u8; 33][..]] {
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = LocalKms::from_key_file(&path).unwrap_err();
        assert!(matches!(err, Error::KeyFile { .. }));
        assert!(!err.to_string().contains("zzzz"));
    }
    // 32 raw bytes are accepted as well as 64 hex digits.
    let raw: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 37 % 256).unwrap() | 0x80);
    fs::write(&path, raw).unwrap();
    LocalKms::from_key_file(&path).unwrap();
    assert!(matches!(
        LocalKms::from_key_file(dir.path().join("missing.key")),
        Err(Error::KeyFile { .. })
    ));
}

/// `std::env::set_var` is `unsafe` in edition 2024 and this workspace forbids `unsafe`, so the
/// environment cases run in a child process: this test re-runs the test binary filtered to
/// [`env_probe_child`] (which never spawns anything itself) with the variables set.
#[test]
fn environment_variable_root_key() {
    let root = RootKey::generate();
    let expected_id = LocalKms::from_root_key(RootKey::from_bytes(*root.expose_secret()))
        .root_key_id()
        .to_owned();
    let output = crate::support::rerun_test(module_path!(), "env_probe_child")
        .env(
            "LEAKLESS_TEST_ROOT_KEY_GOOD",
            hex::encode(root.expose_secret()),
        )
        .env("LEAKLESS_TEST_ROOT_KEY_BAD", "not-hex")
        .env("LEAKLESS_TEST_EXPECTED_ROOT_ID", &expected_id)
        .env_remove("LEAKLESS_TEST_ROOT_KEY_UNSET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}");
    assert!(stdout.contains("env probe: 3 checks passed"), "{stdout}");
}

/// The child half of [`environment_variable_root_key`]. Run directly (without the variables)
/// it checks only that an unset variable is refused.
#[test]
fn env_probe_child() {
    let unset = LocalKms::from_env("LEAKLESS_TEST_ROOT_KEY_UNSET").unwrap_err();
    assert!(matches!(unset, Error::Kms { .. }), "{unset}");
    assert!(unset.to_string().contains("LEAKLESS_TEST_ROOT_KEY_UNSET"));
    let Ok(expected) = std::env::var("LEAKLESS_TEST_EXPECTED_ROOT_ID") else {
        return;
    };
    let kms = LocalKms::from_env("LEAKLESS_TEST_ROOT_KEY_GOOD").unwrap();
    assert_eq!(kms.root_key_id(), expected);
    let bad = LocalKms::from_env("LEAKLESS_TEST_ROOT_KEY_BAD").unwrap_err();
    assert!(matches!(bad, Error::Kms { .. }));
    assert!(
        !bad.to_string().contains("not-hex"),
        "the value is never echoed: {bad}"
    );
    println!("env probe: 3 checks passed");
}

#[test]
fn a_wrapped_kek_is_bound_to_its_scope_version_and_root_key() {
    let kms = LocalKms::from_root_key(RootKey::generate());
    let other = LocalKms::from_root_key(RootKey::generate());
    let s1 = KeyScope::new("a").unwrap();
    let s2 = KeyScope::new("b").unwrap();
    let (_, wrapped) = round_trip(&kms, &s1, 1);
    refusals(&kms, &wrapped, &[(&s2, 1), (&s1, 2)]);
    match other.unwrap_kek(&wrapped, &binding(&s1, 1)).unwrap_err() {
        Error::Kms {
            backend: "local",
            detail,
            ..
        } => assert!(
            detail.contains(kms.root_key_id()),
            "names the root key it needs: {detail}"
        ),
        e => panic!("expected Error::Kms, got {e:?}"),
    }
    let mut tampered = wrapped.clone();
    tampered.ciphertext[30] ^= 1;
    assert!(kms.unwrap_kek(&tampered, &binding(&s1, 1)).is_err());
    let mut truncated = wrapped;
    truncated.ciphertext.truncate(10);
    assert!(kms.unwrap_kek(&truncated, &binding(&s1, 1)).is_err());
}

/// Root key files that are easy to swap or to guess are refused: a symbolic link (the file
/// itself is accepted: the positive control), a file in a folder others may write, and obviously
/// weak keys (one byte repeated, as raw bytes or hex; 32 printable characters, a passphrase).
#[test]
fn linked_exposed_or_weak_key_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    LocalKms::generate_key_file(&path).unwrap();
    LocalKms::from_key_file(&path).unwrap();
    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    /// The [`Error::KeyFile`] refusal of `path`: its problem text.
    fn refusal(path: &std::path::Path) -> String {
        match LocalKms::from_key_file(path).unwrap_err() {
            Error::KeyFile { path: p, problem } => {
                assert_eq!(p, path);
                problem
            }
            e => panic!("expected Error::KeyFile, got {e:?}"),
        }
    }
    let problem = refusal(&link);
    assert!(problem.contains("symbolic link"), "{problem}");

    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    let exposed = open.join("root.key");
    LocalKms::generate_key_file(&exposed).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let problem = refusal(&exposed);
    assert!(problem.contains("writable by others"), "{problem}");
    // The sticky bit (as on /tmp) keeps others from replacing the file: accepted.
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    LocalKms::from_key_file(&exposed).unwrap();

    let weak = dir.path().join("weak.key");
    for (content, why) in [
        (vec![0u8; 32], "one byte value repeated"),
        (b"00".repeat(32), "one byte value repeated"),
        (b"correct horse battery staple 123".to_vec(), "passphrase"),
    ] {
        fs::write(&weak, &content).unwrap();
        fs::set_permissions(&weak, fs::Permissions::from_mode(0o600)).unwrap();
        let problem = refusal(&weak);
        assert!(problem.contains(why), "{problem}");
        assert!(problem.contains("keys init"), "{problem}");
        assert!(!problem.contains("horse"), "{problem}");
    }
}
