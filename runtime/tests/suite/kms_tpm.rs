//! The TPM 2.0 backend against a real software TPM (`swtpm`): the shared KMS backend suite,
//! then what is particular to a sealed root key: it reopens (in this process and in a new one)
//! to the same root key, it is useless on another TPM, an altered sealed file is a typed error,
//! a PCR policy gates unsealing, after the one unseal no KEK operation touches the TPM, the root
//! key never crosses the TPM connection in clear, and a hung or absent TPM is a typed error.
//!
//! Needs `LEAKLESS_TPM_TCTI` (scripts/test sets it through `scripts/services/swtpm`); without
//! it every test fails with instructions. A few tests start a second, private TPM through the
//! same script.
#![cfg(feature = "tpm")]

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use leakless::key::WrappedKek;
use leakless::kms::{KekBinding, Kms, LocalKms, TpmConfig, TpmKms};
use leakless::secret::{Kek, RootKey};
use leakless::{Error, KeyScope};

use crate::support::kms_suite::{refusals, round_trip};
use crate::support::peers::binding;
use crate::support::peers::tpm::{TCTI_ENV, tcti};

/// Set in the child process of the restart test (guards against recursion).
const CHILD_ENV: &str = "LEAKLESS_TPM_TEST_CHILD_DIR";

/// Evicts the persistent sealed objects a sealed file names when dropped: persistent handles
/// are scarce, so no test leaves one behind (declare it after the file's temporary folder, so
/// it drops first).
struct Evict(TpmConfig);

impl Drop for Evict {
    fn drop(&mut self) {
        let evicted = TpmKms::evict_persistent(&self.0);
        // A file that was never written (a failed create) has nothing to evict; panicking
        // while the test already panics would abort.
        if self.0.sealed_path().exists() && !thread::panicking() {
            evicted.unwrap();
        }
    }
}

/// Creates a root key sealed to the TPM at `tcti`, in file `name` of `dir`, with the guard
/// that evicts its persistent object when dropped.
fn create_in(tcti: &str, dir: &Path, name: &str) -> (TpmConfig, Evict, TpmKms) {
    let config = TpmConfig::new(tcti, dir.join(name));
    let evict = Evict(config.clone());
    let kms = TpmKms::create(&config).unwrap();
    (config, evict, kms)
}

/// A backend holding a new root key sealed to the shared TPM, with its sealed file's folder;
/// evicts its persistent object when dropped.
#[derive(Debug)]
struct Made {
    kms: TpmKms,
    _evict: EvictOnDrop,
}

#[derive(Debug)]
struct EvictOnDrop {
    config: TpmConfig,
    _dir: tempfile::TempDir,
}

impl Drop for EvictOnDrop {
    fn drop(&mut self) {
        drop(Evict(self.config.clone()));
    }
}

impl Kms for Made {
    fn backend(&self) -> &'static str {
        self.kms.backend()
    }
    fn root_key_id(&self) -> &str {
        self.kms.root_key_id()
    }
    fn wrap_kek(&self, kek: &Kek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        self.kms.wrap_kek(kek, binding)
    }
    fn unwrap_kek(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<Kek, Error> {
        self.kms.unwrap_kek(wrapped, binding)
    }
}

fn make() -> Arc<dyn Kms> {
    let dir = tempfile::tempdir().unwrap();
    let config = TpmConfig::new(tcti(), dir.path().join("root.sealed"));
    let kms = TpmKms::create(&config).unwrap();
    Arc::new(Made {
        kms,
        _evict: EvictOnDrop { config, _dir: dir },
    })
}

leakless_kms_suite!(make);

/// A second, private software TPM started through `scripts/services/swtpm`, stopped on drop.
struct PrivateTpm {
    dir: tempfile::TempDir,
    tcti: String,
}

impl PrivateTpm {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services/swtpm");
        let out = Command::new(&script)
            .arg("start")
            .arg(dir.path().join("svc"))
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "{} start failed", script.display());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let tcti = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{TCTI_ENV}=")))
            .unwrap_or_else(|| panic!("no {TCTI_ENV} line in: {stdout}"))
            .to_owned();
        Self { dir, tcti }
    }

    fn stop(&self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services/swtpm");
        let status = Command::new(script)
            .arg("stop")
            .arg(self.dir.path().join("svc"))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for PrivateTpm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn assert_kms_error(result: Result<TpmKms, Error>, operation: &str, needle: &str) -> String {
    match result {
        Err(
            e @ Error::Kms {
                backend,
                operation: op,
                ..
            },
        ) => {
            assert_eq!(backend, "tpm");
            assert_eq!(op, operation);
            let shown = e.to_string();
            assert!(
                shown.contains(needle),
                "{shown:?} should mention {needle:?}"
            );
            shown
        }
        Err(other) => panic!("expected Error::Kms ({operation}), got {other:?}"),
        Ok(kms) => panic!("expected Error::Kms ({operation}), got a backend {kms:?}"),
    }
}

#[test]
fn created_root_key_reopens_to_the_same_key_in_a_new_tpm_context() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _evict, a) = create_in(&tcti(), dir.path(), "root.sealed");
    assert_eq!(a.backend(), "tpm");
    assert!(a.root_key_id().starts_with("tpm:"), "{}", a.root_key_id());
    assert_eq!(a.root_key_id().len(), "tpm:".len() + 32);
    let mode = fs::metadata(config.sealed_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the sealed file is private to the owner");

    let scope = KeyScope::new("patients").unwrap();
    let kek = Kek::generate();
    let wrapped = a.wrap_kek(&kek, &binding(&scope, 1)).unwrap();
    assert_eq!(wrapped.root_key_id, a.root_key_id());
    drop(a);

    let b = TpmKms::open(&config).unwrap();
    let back = b.unwrap_kek(&wrapped, &binding(&scope, 1)).unwrap();
    assert_eq!(back.expose_secret(), kek.expose_secret());

    // Never overwritten.
    match TpmKms::create(&config) {
        Err(Error::KeyFile { path, .. }) => assert_eq!(path, config.sealed_path()),
        other => panic!("expected Error::KeyFile, got {other:?}"),
    }
    let c = TpmKms::open(&config).unwrap();
    assert_eq!(c.root_key_id(), b.root_key_id());

    // Debug shows the id only; the sealed file's private blob is not echoed anywhere.
    let shown = format!("{c:?}");
    assert!(
        shown.contains(c.root_key_id()) && shown.starts_with("TpmKms"),
        "{shown}"
    );
}

#[test]
fn two_created_root_keys_differ_and_cannot_open_each_others_keks() {
    let a = make();
    let b = make();
    assert_ne!(a.root_key_id(), b.root_key_id());
    let scope = KeyScope::new("s").unwrap();
    let wrapped = a.wrap_kek(&Kek::generate(), &binding(&scope, 1)).unwrap();
    let relabelled = WrappedKek {
        root_key_id: b.root_key_id().to_owned(),
        ciphertext: wrapped.ciphertext.clone(),
    };
    for (w, what) in [
        (&wrapped, "foreign id"),
        (&relabelled, "relabelled to b's id"),
    ] {
        match b.unwrap_kek(w, &binding(&scope, 1)) {
            Err(Error::Kms {
                backend: "tpm",
                operation: "unwrap KEK",
                ..
            }) => {}
            other => panic!("{what}: expected an unwrap error, got {other:?}"),
        }
    }
}

#[test]
fn wrong_binding_or_altered_wrap_fails() {
    let kms = make();
    let a = KeyScope::new("tenant-a").unwrap();
    let b = KeyScope::new("tenant-b").unwrap();
    let (_, wrapped) = round_trip(&*kms, &a, 3);
    for detail in refusals(&*kms, &wrapped, &[(&b, 3), (&a, 2), (&a, 4)]) {
        assert!(detail.contains("does not authenticate"), "{detail}");
    }
    for i in [0, 30, wrapped.ciphertext.len() - 1] {
        let mut altered = wrapped.clone();
        altered.ciphertext[i] ^= 1;
        assert!(
            kms.unwrap_kek(&altered, &binding(&a, 3)).is_err(),
            "byte {i}"
        );
    }
    let mut truncated = wrapped.clone();
    truncated.ciphertext.truncate(10);
    assert!(kms.unwrap_kek(&truncated, &binding(&a, 3)).is_err());
}

#[test]
fn a_local_backend_with_any_root_key_cannot_open_a_tpm_wrapped_kek() {
    // Same wrap construction, different label: even the id copied over does not help.
    let tpm = make();
    let scope = KeyScope::new("s").unwrap();
    let wrapped = tpm.wrap_kek(&Kek::generate(), &binding(&scope, 1)).unwrap();
    let local = LocalKms::from_root_key(RootKey::generate());
    assert!(local.unwrap_kek(&wrapped, &binding(&scope, 1)).is_err());
}

#[test]
fn sealed_root_key_is_useless_on_another_tpm_and_kek_ops_never_touch_the_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let (here, _evict, sealed_here) = create_in(&tcti(), dir.path(), "here.sealed");

    let other = PrivateTpm::start();
    let there = TpmConfig::new(&other.tcti, here.sealed_path());
    let shown = assert_kms_error(TpmKms::open(&there), "unseal root key", "another TPM");
    assert!(!shown.contains("\"private\""), "{shown}");

    // A root key sealed on the other TPM opens there and nowhere else...
    let elsewhere = TpmConfig::new(&other.tcti, dir.path().join("there.sealed"));
    let sealed_there = TpmKms::create(&elsewhere).unwrap();
    assert_ne!(sealed_there.root_key_id(), sealed_here.root_key_id());
    assert_kms_error(
        TpmKms::open(&TpmConfig::new(tcti(), elsewhere.sealed_path())),
        "unseal root key",
        "another TPM",
    );
    let opened = TpmKms::open(&elsewhere).unwrap();
    assert_eq!(opened.root_key_id(), sealed_there.root_key_id());

    // ...and once unsealed, wrapping and unwrapping need no TPM at all: stop it, then keep
    // going. Zero TPM calls per KEK operation, by construction.
    other.stop();
    let scope = KeyScope::new("s").unwrap();
    for n in 1..=200 {
        let kek = Kek::generate();
        let w = opened.wrap_kek(&kek, &binding(&scope, n)).unwrap();
        let back = opened.unwrap_kek(&w, &binding(&scope, n)).unwrap();
        assert_eq!(back.expose_secret(), kek.expose_secret());
    }
    // With the TPM gone, opening fails after bounded retries with a typed error naming the
    // connection.
    match TpmKms::open(&elsewhere) {
        Err(
            e @ Error::KmsUnavailable {
                backend: "tpm",
                operation: "unseal root key",
                attempts,
                ..
            },
        ) => {
            assert!(attempts > 1, "{e}");
            assert!(e.to_string().contains("cannot connect"), "{e}");
        }
        other => panic!("expected Error::KmsUnavailable, got {other:?}"),
    }
}

/// `kill -STOP` / `kill -CONT` on the private TPM's process.
fn signal(tpm: &PrivateTpm, sig: &str) {
    let pid = fs::read_to_string(tpm.dir.path().join("svc/swtpm.pid")).unwrap();
    let status = Command::new("kill")
        .args([sig, pid.trim()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// A TPM that stops answering (SIGSTOP) costs the configured timeout and a typed error, not a
/// hung caller; once it answers again (SIGCONT), opening works.
#[test]
fn a_hung_tpm_times_out_with_a_typed_error_and_recovers() {
    let tpm = PrivateTpm::start();
    let dir = tempfile::tempdir().unwrap();
    let config = TpmConfig::new(&tpm.tcti, dir.path().join("root.sealed"))
        .with_timeout(Duration::from_secs(2));
    assert_eq!(config.timeout(), Duration::from_secs(2));
    let created = TpmKms::create(&config).unwrap();

    signal(&tpm, "-STOP");
    let start = Instant::now();
    let result = TpmKms::open(&config);
    let waited = start.elapsed();
    signal(&tpm, "-CONT");
    match result {
        Err(
            e @ Error::KmsUnavailable {
                backend: "tpm",
                operation: "unseal root key",
                ..
            },
        ) => {
            assert!(
                e.to_string().contains("did not answer within 2000 ms"),
                "{e}"
            );
        }
        other => panic!("expected Error::KmsUnavailable, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "waited {waited:?}"
    );

    let reopened = TpmKms::open(&config.clone().with_timeout(Duration::from_secs(30))).unwrap();
    assert_eq!(reopened.root_key_id(), created.root_key_id());
}

/// A way to spoil a sealed file.
type Spoil = Box<dyn Fn(&Path)>;

fn edit_sealed_file(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

fn flip_hex_char(s: &str, from_end: usize) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    let i = chars.len() - 1 - from_end;
    chars[i] = if chars[i] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

#[test]
fn altered_sealed_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("root.sealed");
    seal_version_1_file(&tcti(), &original);
    let text = fs::read_to_string(&original).unwrap();
    let copy = |name: &str| {
        let p = dir.path().join(name);
        fs::write(&p, &text).unwrap();
        p
    };

    // One bit of the TPM-encrypted private blob: the TPM's integrity check refuses it. One
    // bit of the public area's unique digest: its name changes, so the private blob's
    // integrity value no longer matches.
    for (field, from_end) in [("private", 3), ("public", 1)] {
        let p = copy(&format!("{field}.sealed"));
        edit_sealed_file(&p, |v| {
            let s = v[field].as_str().unwrap();
            v[field] = flip_hex_char(s, from_end).into();
        });
        assert_kms_error(
            TpmKms::open(&TpmConfig::new(tcti(), &p)),
            "unseal root key",
            "altered",
        );
    }

    // A public area that no longer parses, garbage, another format, a missing file: KeyFile.
    let cases: [(&str, Spoil); 4] = [
        (
            "truncated public",
            Box::new(|p: &Path| edit_sealed_file(p, |v| v["public"] = "0008".into())),
        ),
        (
            "not JSON",
            Box::new(|p: &Path| fs::write(p, "garbage").unwrap()),
        ),
        (
            "other format",
            Box::new(|p: &Path| edit_sealed_file(p, |v| v["format"] = "something-else".into())),
        ),
        ("missing", Box::new(|p: &Path| fs::remove_file(p).unwrap())),
    ];
    for (what, spoil) in cases {
        let p = copy("spoilt.sealed");
        spoil(&p);
        match TpmKms::open(&TpmConfig::new(tcti(), &p)) {
            Err(Error::KeyFile { path, problem }) => {
                assert_eq!(path, p, "{what}");
                assert!(!problem.is_empty());
            }
            other => panic!("{what}: expected Error::KeyFile, got {other:?}"),
        }
        let _ = fs::remove_file(&p);
    }

    // The untouched file still opens.
    TpmKms::open(&TpmConfig::new(tcti(), &original)).unwrap();
}

#[test]
fn bad_tcti_and_bad_pcr_selection_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.sealed");
    assert_kms_error(
        TpmKms::create(&TpmConfig::new("nonsense:foo", &path)),
        "seal root key",
        "not valid",
    );
    assert_kms_error(
        TpmKms::create(&TpmConfig::new(tcti(), &path).with_pcr_policy(&[7, 24])),
        "seal root key",
        "PCR 24 does not exist",
    );
    assert!(!path.exists(), "a failed create leaves no file behind");
}

/// PCR 16 (the debug PCR, resettable from locality 0) stands in for a boot measurement.
#[test]
fn pcr_policy_gates_unsealing() {
    use tss_esapi::Context;
    use tss_esapi::handles::PcrHandle;
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::structures::{Digest, DigestValues};
    use tss_esapi::tcti_ldr::TctiNameConf;

    // A private TPM, so that extending its PCR cannot disturb other tests.
    let tpm = PrivateTpm::start();
    let dir = tempfile::tempdir().unwrap();
    let config = TpmConfig::new(&tpm.tcti, dir.path().join("root.sealed")).with_pcr_policy(&[16]);
    assert_eq!(config.pcr_policy(), &[16]);
    let created = TpmKms::create(&config).unwrap();
    let opened = TpmKms::open(&config).unwrap();
    assert_eq!(opened.root_key_id(), created.root_key_id());

    let with_ctx = |f: &dyn Fn(&mut Context)| {
        let mut ctx = Context::new(TctiNameConf::from_str(&tpm.tcti).unwrap()).unwrap();
        f(&mut ctx);
    };
    with_ctx(&|ctx| {
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(vec![0x42; 32]).unwrap(),
        );
        ctx.execute_with_nullauth_session(|c| c.pcr_extend(PcrHandle::Pcr16, values.clone()))
            .unwrap();
    });
    assert_kms_error(TpmKms::open(&config), "unseal root key", "PCRs");

    with_ctx(&|ctx| {
        ctx.execute_with_nullauth_session(|c| c.pcr_reset(PcrHandle::Pcr16))
            .unwrap();
    });
    let reopened = TpmKms::open(&config).unwrap();
    assert_eq!(reopened.root_key_id(), created.root_key_id());
}

/// Restart: a new process (a new TPM connection, nothing shared in memory) unseals the same
/// root key and opens a KEK wrapped before. The child is this same test binary running only
/// this test with [`CHILD_ENV`] set, which makes it take the child branch (no recursion).
#[test]
fn a_new_process_unseals_the_same_root_key() {
    let scope = KeyScope::new("restart").unwrap();
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let dir = PathBuf::from(dir);
        let kms = TpmKms::open(&TpmConfig::new(tcti(), dir.join("root.sealed"))).unwrap();
        let wrapped = WrappedKek {
            root_key_id: kms.root_key_id().to_owned(),
            ciphertext: fs::read(dir.join("wrapped")).unwrap(),
        };
        let kek = kms.unwrap_kek(&wrapped, &binding(&scope, 1)).unwrap();
        fs::write(dir.join("child-id"), kms.root_key_id()).unwrap();
        // The KEK goes back to the parent only as a check value (a wrap under a fresh key).
        let check = LocalKms::from_root_key(RootKey::from_bytes([7; 32]))
            .wrap_kek(&kek, &binding(&scope, 1))
            .unwrap();
        fs::write(dir.join("check"), check.ciphertext).unwrap();
        return;
    }
    // A private TPM: the child's connections are outside this process's per-TCTI lock, and
    // two processes talking to one swtpm at once can stall each other.
    let tpm = PrivateTpm::start();
    let dir = tempfile::tempdir().unwrap();
    let config = TpmConfig::new(&tpm.tcti, dir.path().join("root.sealed"));
    let kms = TpmKms::create(&config).unwrap();
    let kek = Kek::generate();
    let wrapped = kms.wrap_kek(&kek, &binding(&scope, 1)).unwrap();
    fs::write(dir.path().join("wrapped"), &wrapped.ciphertext).unwrap();
    drop(kms);

    let status =
        crate::support::rerun_test(module_path!(), "a_new_process_unseals_the_same_root_key")
            .env(CHILD_ENV, dir.path())
            .env(TCTI_ENV, &tpm.tcti)
            .stdout(Stdio::null())
            .status()
            .unwrap();
    assert!(status.success(), "the child process failed");
    let child_id = fs::read_to_string(dir.path().join("child-id")).unwrap();
    assert_eq!(child_id, wrapped.root_key_id);
    let check = WrappedKek {
        root_key_id: LocalKms::from_root_key(RootKey::from_bytes([7; 32]))
            .root_key_id()
            .to_owned(),
        ciphertext: fs::read(dir.path().join("check")).unwrap(),
    };
    let from_child = LocalKms::from_root_key(RootKey::from_bytes([7; 32]))
        .unwrap_kek(&check, &binding(&scope, 1))
        .unwrap();
    assert_eq!(from_child.expose_secret(), kek.expose_secret());
}

/// Bytes copied both ways between TPM clients and the shared TPM, so a test can look at what
/// crossed the "bus".
struct TapProxy {
    tcti: String,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl TapProxy {
    fn start(upstream_tcti: &str) -> Self {
        let upstream = upstream_tcti
            .split([':', ','])
            .find_map(|kv| kv.strip_prefix("port="))
            .expect("the TCTI names a port")
            .parse::<u16>()
            .unwrap();
        // The swtpm TCTI also uses the control channel on the next port: tap both.
        let (server, control) = (0..50)
            .find_map(|_| {
                let server = TcpListener::bind("127.0.0.1:0").unwrap();
                let next = server.local_addr().unwrap().port().checked_add(1)?;
                let control = TcpListener::bind(("127.0.0.1", next)).ok()?;
                Some((server, control))
            })
            .expect("two consecutive free ports");
        let port = server.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        forward(server, upstream, Arc::clone(&seen));
        forward(control, upstream + 1, Arc::clone(&seen));
        Self {
            tcti: format!("swtpm:host=127.0.0.1,port={port}"),
            seen,
        }
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Accepts connections on `listener` and copies bytes both ways to `upstream`, appending all
/// of them to `tap`.
fn forward(listener: TcpListener, upstream: u16, tap: Arc<Mutex<Vec<u8>>>) {
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let tap = Arc::clone(&tap);
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    // Tap first, then pass on: once a reply reaches the client, it is tapped.
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        tap.lock().unwrap().extend_from_slice(&buf[..n]);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        }
    });
}

/// Unseals the root key in `sealed` the naive way: a plain password session, no parameter
/// encryption. Returns the key bytes (the test needs them to search for).
fn naive_unseal(tcti: &str, sealed: &Path) -> Vec<u8> {
    use tss_esapi::Context;
    use tss_esapi::handles::{PersistentTpmHandle, TpmHandle};
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::tcti_ldr::TctiNameConf;
    let file: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(sealed).unwrap()).unwrap();
    let handle = file["current"]["handle"].as_str().unwrap();
    let handle = u32::from_str_radix(handle.strip_prefix("0x").unwrap(), 16).unwrap();
    let mut ctx = Context::new(TctiNameConf::from_str(tcti).unwrap()).unwrap();
    let object = ctx
        .execute_without_session(|c| {
            c.tr_from_tpm_public(TpmHandle::Persistent(
                PersistentTpmHandle::new(handle).unwrap(),
            ))
        })
        .unwrap();
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.unseal(object).unwrap().value().to_vec()
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The root key never crosses the TPM connection in clear: everything `create` and `open` send
/// and receive is tapped and searched for it. The check first proves it can see the key, with
/// a naive unseal (no parameter encryption) through the same tap.
#[test]
fn the_root_key_never_crosses_the_tpm_connection_in_clear() {
    // A private TPM behind the tap: the proxy's TCTI is not the shared one, so the library's
    // per-TCTI lock would not keep these connections apart from other tests' on the shared TPM.
    let tpm = PrivateTpm::start();
    let proxy = TapProxy::start(&tpm.tcti);
    let dir = tempfile::tempdir().unwrap();
    let config = TpmConfig::new(&proxy.tcti, dir.path().join("root.sealed"));

    let created = TpmKms::create(&config).unwrap();
    let create_traffic = proxy.take();
    let opened = TpmKms::open(&config).unwrap();
    assert_eq!(opened.root_key_id(), created.root_key_id());
    let open_traffic = proxy.take();

    let root = naive_unseal(&proxy.tcti, config.sealed_path());
    assert_eq!(root.len(), 32);
    let naive_traffic = proxy.take();
    assert!(
        contains(&naive_traffic, &root),
        "the tap must see a root key that is sent in clear (else this check proves nothing)"
    );
    assert!(create_traffic.len() > 100 && open_traffic.len() > 100);
    assert!(
        !contains(&create_traffic, &root),
        "create sent the root key in clear"
    );
    assert!(
        !contains(&open_traffic, &root),
        "open received the root key in clear"
    );
    // Half the key is already too much.
    assert!(!contains(&create_traffic, &root[..16]) && !contains(&open_traffic, &root[..16]));
}

/// Writes a version 1 sealed file (the format of earlier releases: the sealed object's public
/// and private blobs) for a new random root key, the way those releases did; returns the key.
fn seal_version_1_file(tcti: &str, path: &Path) -> Vec<u8> {
    use tss_esapi::Context;
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::interface_types::resource_handles::Hierarchy;
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::{
        Digest, EccPoint, KeyedHashScheme, PublicBuilder, PublicEccParametersBuilder,
        PublicKeyedHashParameters, SensitiveData, SymmetricDefinitionObject,
    };
    use tss_esapi::tcti_ldr::TctiNameConf;
    use tss_esapi::traits::Marshall;

    let storage = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(
            ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_sensitive_data_origin(true)
                .with_user_with_auth(true)
                .with_no_da(true)
                .with_restricted(true)
                .with_decrypt(true)
                .build()
                .unwrap(),
        )
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .unwrap(),
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .unwrap();
    let sealed = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(
            ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_no_da(true)
                .with_admin_with_policy(true)
                .with_user_with_auth(true)
                .build()
                .unwrap(),
        )
        .with_auth_policy(Digest::default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .unwrap();
    let root: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    let data = SensitiveData::try_from(root.clone()).unwrap();
    let mut ctx = Context::new(TctiNameConf::from_str(tcti).unwrap()).unwrap();
    let created = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        let parent = c
            .create_primary(Hierarchy::Owner, storage, None, None, None, None)
            .unwrap()
            .key_handle;
        let created = c
            .create(parent, sealed, None, Some(data), None, None)
            .unwrap();
        c.flush_context(parent.into()).unwrap();
        created
    });
    let file = serde_json::json!({
        "format": "leakless-tpm-sealed-root-key",
        "version": 1,
        "pcrs": [],
        "public": hex::encode(created.out_public.marshall().unwrap()),
        "private": hex::encode(created.out_private.value()),
    });
    fs::write(path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    root
}

/// Sealed files of version 1 (blobs) are still read, have no epochs, and say how to migrate.
#[test]
fn a_version_1_blob_file_still_opens_but_has_no_epochs() {
    use leakless::kms::RootEpochs;
    // A private TPM: the version 1 file is written through a bare TPM context, outside the
    // library's per-TCTI lock.
    let tpm = PrivateTpm::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sealed");
    let root = seal_version_1_file(&tpm.tcti, &path);
    let config = TpmConfig::new(&tpm.tcti, &path);
    let kms = TpmKms::open(&config).unwrap();
    assert!(
        kms.root_key_id().starts_with("tpm:"),
        "{}",
        kms.root_key_id()
    );
    // It holds the very key that was sealed: a local backend with the same key and the TPM
    // backend's construction agree on nothing (other label), so check through a wrap round
    // trip and a second open.
    let scope = KeyScope::new("legacy").unwrap();
    let kek = Kek::generate();
    let w = kms.wrap_kek(&kek, &binding(&scope, 1)).unwrap();
    let again = TpmKms::open(&config).unwrap();
    assert_eq!(again.root_key_id(), kms.root_key_id());
    let back = again.unwrap_kek(&w, &binding(&scope, 1)).unwrap();
    assert_eq!(back.expose_secret(), kek.expose_secret());
    assert_eq!(root.len(), 32);
    // No epochs: a copy of the blobs would unseal forever. The refusal says how to migrate.
    match kms.begin_next_epoch() {
        Err(Error::InvalidInput { problem, .. }) => {
            assert!(problem.contains("rotate-root"), "{problem}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(matches!(
        kms.destroy_epoch(&kms.current_epoch().unwrap()),
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(TpmKms::evict_persistent(&config).unwrap(), 0);
    // The file was not rewritten.
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"private\""), "{text}");
}

/// A version 2 file holds no private blob, only the handle and the public area; the object at
/// the handle must have the recorded name.
#[test]
fn a_version_2_file_names_a_persistent_object_and_refuses_any_other() {
    // A private TPM: once the object is evicted, the test asserts its handle is empty, and a
    // test running beside it on the shared TPM could persist its own object there meanwhile.
    let tpm = PrivateTpm::start();
    let tcti = || tpm.tcti.as_str();
    let dir = tempfile::tempdir().unwrap();
    let (config, _evict, kms) = create_in(tcti(), dir.path(), "root.sealed");
    let (other_config, _evict_other, other) = create_in(tcti(), dir.path(), "other.sealed");
    assert_ne!(other.root_key_id(), kms.root_key_id());
    let text = fs::read_to_string(config.sealed_path()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 2);
    assert!(v.get("private").is_none(), "{text}");
    let handle = v["current"]["handle"].as_str().unwrap().to_owned();
    assert!(handle.starts_with("0x81"), "{handle}");
    let other_v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(other_config.sealed_path()).unwrap()).unwrap();
    assert_ne!(other_v["current"]["handle"], v["current"]["handle"]);

    let copy = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let p = dir.path().join(name);
        fs::write(&p, &text).unwrap();
        edit_sealed_file(&p, edit);
        TpmConfig::new(tcti(), p)
    };
    // The other root's handle: another object than the file names.
    let swapped = copy("swapped.sealed", &|v| {
        v["current"]["handle"] = other_v["current"]["handle"].clone();
    });
    assert_kms_error(TpmKms::open(&swapped), "unseal root key", "another object");
    // One bit of the public area: its name no longer matches the object at the handle.
    let altered = copy("altered.sealed", &|v| {
        let s = v["current"]["public"].as_str().unwrap();
        v["current"]["public"] = flip_hex_char(s, 1).into();
    });
    assert_kms_error(TpmKms::open(&altered), "unseal root key", "another object");
    // A handle outside the owner persistent range, or an unknown version: KeyFile.
    for (name, edit) in [
        (
            "range.sealed",
            Box::new(|v: &mut serde_json::Value| v["current"]["handle"] = "0x80000001".into())
                as Box<dyn Fn(&mut serde_json::Value)>,
        ),
        (
            "version.sealed",
            Box::new(|v: &mut serde_json::Value| v["version"] = 3.into()),
        ),
    ] {
        let spoilt = copy(name, &*edit);
        assert!(
            matches!(TpmKms::open(&spoilt), Err(Error::KeyFile { .. })),
            "{name}"
        );
    }
    // Evicted: the handle is empty, and an old copy of the file opens nothing.
    assert_eq!(TpmKms::evict_persistent(&config).unwrap(), 1);
    assert_kms_error(TpmKms::open(&config), "unseal root key", "is empty");
    assert_eq!(TpmKms::evict_persistent(&config).unwrap(), 0);
    TpmKms::open(&other_config).unwrap();
}
