//! The PKCS#11 KMS backend against SoftHSM2: the shared KMS suite (every lifecycle step, root
//! rotation, binding, call counts), plus what only a token can show: the root key is sensitive
//! and non-extractable and its value cannot be read or wrapped out, a wrong PIN is a typed
//! error that never contains a PIN, and unprotected or missing keys are refused.
//!
//! Needs the variables printed by `scripts/services/softhsm start DIR --owner-pid $$`
//! (`scripts/test` starts it): `LEAKLESS_PKCS11_MODULE`, `SOFTHSM2_CONF`,
//! `LEAKLESS_PKCS11_TOKEN`, `LEAKLESS_PKCS11_PIN_FILE`, `LEAKLESS_PKCS11_CUSTODIANS`.
#![cfg(feature = "pkcs11")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use leakless::Error;
use leakless::key::KeyScope;
use leakless::kms::{Kms, PinSource, Pkcs11Kms};
use leakless::secret::Kek;

use crate::support::kms_suite::{assert_unwraps_to, kms_error_parts, round_trip};
use crate::support::peers::pkcs11::{config, custodian, env, module, pin_file};
use crate::support::peers::{binding, unique_name};

fn real_pin() -> String {
    fs::read_to_string(pin_file()).unwrap().trim().to_owned()
}

/// A new root key on the token for every call, as the suite requires.
fn make() -> Arc<dyn Kms> {
    Arc::new(Pkcs11Kms::create(&config(&unique_name("suite"))).unwrap())
}

leakless_kms_suite!(make);

/// An independent cryptoki context on the main token (not through leakless), made once.
fn raw_context() -> &'static (Pkcs11, Slot) {
    static RAW: OnceLock<(Pkcs11, Slot)> = OnceLock::new();
    RAW.get_or_init(|| {
        // C_Initialize must run once per process, never twice at the same time: let leakless
        // do it (under its own lock) first, so this second handle only finds it done.
        drop(
            leakless::kms::Pkcs11Token::open(
                &module(),
                &env("LEAKLESS_PKCS11_TOKEN"),
                &PinSource::File(pin_file()),
            )
            .unwrap(),
        );
        raw_context_on(&env("LEAKLESS_PKCS11_TOKEN"))
    })
}

/// A second cryptoki handle on the module, which leakless initialized already (C_Initialize
/// must find it done), and the slot of token `token`.
fn raw_context_on(token: &str) -> (Pkcs11, Slot) {
    let ctx = Pkcs11::new(module()).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        other => panic!("C_Initialize should find the module initialized: {other:?}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.label().trim_end() == token)
        })
        .unwrap();
    (ctx, slot)
}

/// An independent cryptoki session on the main token, logged in.
fn raw_session() -> Session {
    let (ctx, slot) = raw_context();
    let session = ctx.open_rw_session(*slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(real_pin().as_str()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
    session
}

#[test]
fn root_key_id_names_token_and_key_and_a_second_instance_unwraps() {
    let label = unique_name("reopen");
    let a = Pkcs11Kms::create(&config(&label)).unwrap();
    assert_eq!(
        a.root_key_id(),
        format!("pkcs11:{}/{label}", env("LEAKLESS_PKCS11_TOKEN"))
    );
    assert_eq!(a.backend(), "pkcs11");
    let scope = KeyScope::new("orders").unwrap();
    let kek = Kek::generate();
    let wrapped = a.wrap_kek(&kek, &binding(&scope, 3)).unwrap();
    assert_eq!(wrapped.ciphertext.len(), 1 + 12 + 32 + 16);
    drop(a);
    // Found again by label, in a new instance: the key lives on the token.
    let b = Pkcs11Kms::open(&config(&label)).unwrap();
    assert_unwraps_to(&b, &wrapped, &scope, 3, &kek);
    // Creating the same label again is refused.
    let err = Pkcs11Kms::create(&config(&label)).unwrap_err();
    let (backend, operation, _) = kms_error_parts(&err);
    assert_eq!((backend, operation), ("pkcs11", "create root key"), "{err}");
}

#[test]
fn root_key_is_sensitive_non_extractable_and_its_value_cannot_be_read_or_wrapped_out() {
    let label = unique_name("protect");
    let kms = Pkcs11Kms::create(&config(&label)).unwrap();
    let p = kms.key_protection().unwrap();
    assert!(p.sensitive && !p.extractable, "{p:?}");
    assert!(p.always_sensitive && p.never_extractable, "{p:?}");
    assert!(!p.value_readable, "{p:?}");
    assert!(p.is_protected());

    // Independently of leakless, through a raw cryptoki session on the same token.
    let session = raw_session();
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    let key = found[0];
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::Extractable,
                AttributeType::Sensitive,
                AttributeType::ValueLen,
                AttributeType::KeyType,
            ],
        )
        .unwrap();
    assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
    assert!(
        attrs.contains(&Attribute::KeyType(KeyType::AES)),
        "{attrs:?}"
    );
    assert!(attrs.contains(&Attribute::ValueLen(32.into())), "{attrs:?}");
    // Reading CKA_VALUE yields nothing: the token answers CKR_ATTRIBUTE_SENSITIVE.
    let value = session
        .get_attributes(key, &[AttributeType::Value])
        .unwrap();
    assert!(
        !value.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the token returned the root key's value"
    );
    // Wrapping it out under a key we control is refused too.
    let exporter = generate_aes_key(&session, [Attribute::Token(false), Attribute::Wrap(true)]);
    let err = session
        .wrap_key(&Mechanism::AesKeyWrapPad, exporter, key)
        .unwrap_err();
    assert!(
        matches!(err, CkError::Pkcs11(RvError::KeyUnextractable, _)),
        "{err}"
    );
    // Nor can the attributes be flipped back (PKCS#11 forbids it; the token must enforce it).
    let flip = session.update_attributes(key, &[Attribute::Extractable(true)]);
    assert!(flip.is_err(), "CKA_EXTRACTABLE was switched back on");
}

/// Generates an AES-256 key through `session` (not through leakless) with the `extra`
/// attributes.
fn generate_aes_key<const N: usize>(session: &Session, extra: [Attribute; N]) -> ObjectHandle {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
    ];
    template.extend(extra);
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .unwrap()
}

#[test]
fn an_unprotected_key_with_the_label_is_refused() {
    let label = unique_name("weak");
    generate_aes_key(
        &raw_session(),
        [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
    );
    let err = Pkcs11Kms::open(&config(&label)).unwrap_err();
    let (backend, operation, _) = kms_error_parts(&err);
    assert_eq!((backend, operation), ("pkcs11", "open root key"), "{err}");
    assert!(err.to_string().contains("not protected"), "{err}");
}

fn wrong_pin_file(dir: &tempfile::TempDir) -> (PathBuf, String) {
    let wrong = format!("wrong{:08x}", rand::random::<u32>());
    let path = dir.path().join("wrong.pin");
    fs::write(&path, format!("{wrong}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    (path, wrong)
}

fn assert_wrong_pin(err: &Error, pins: &[&str]) {
    let (backend, operation, _) = kms_error_parts(err);
    assert_eq!((backend, operation), ("pkcs11", "log in"), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("CKR_PIN_INCORRECT"), "{shown}");
    for pin in pins {
        assert!(!shown.contains(pin), "a PIN leaked into the error: {shown}");
    }
}

#[test]
fn a_wrong_pin_is_a_typed_error_without_any_pin_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, wrong) = wrong_pin_file(&dir);
    // On the main token, logged in (and kept so) by this process: PKCS#11 would answer
    // CKR_USER_ALREADY_LOGGED_IN whatever the PIN, so leakless checks it against the PIN that
    // logged in.
    let held = leakless::kms::Pkcs11Token::open(
        &module(),
        &env("LEAKLESS_PKCS11_TOKEN"),
        &PinSource::File(pin_file()),
    )
    .unwrap();
    let mut cfg = config("no-such-key-needed");
    cfg.pin = PinSource::File(path.clone());
    let err = Pkcs11Kms::open(&cfg).unwrap_err();
    assert_wrong_pin(&err, &[&wrong, &real_pin()]);
    drop(held);
    // On a token nobody in this process logs in to: the token itself refuses.
    let (token, real) = custodian(4);
    let real = fs::read_to_string(real).unwrap().trim().to_owned();
    let err =
        leakless::kms::Pkcs11Token::open(&module(), &token, &PinSource::File(path)).unwrap_err();
    assert_wrong_pin(&err, &[&wrong, &real]);
}

#[test]
fn pin_file_rules_and_configuration_errors_name_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("loose.pin");
    fs::write(&loose, real_pin()).unwrap();
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    // A PIN source that cannot be used is the backend's typed error, naming the source, for
    // a file that others can read (without echoing the PIN) and for a missing one.
    for (pin, needle) in [
        (PinSource::File(loose), "chmod 600"),
        (
            PinSource::File(dir.path().join("missing.pin")),
            "missing.pin",
        ),
    ] {
        let mut cfg = config("any");
        cfg.pin = pin;
        let err = Pkcs11Kms::open(&cfg).unwrap_err();
        let (backend, _, detail) = kms_error_parts(&err);
        assert_eq!(backend, "pkcs11", "{err}");
        assert!(
            detail.contains("PIN file") && detail.contains(needle),
            "{err}"
        );
        assert!(!err.to_string().contains(&real_pin()));
    }

    let mut cfg = config("any");
    cfg.token_label = "no-such-token".into();
    let err = Pkcs11Kms::open(&cfg).unwrap_err();
    assert_eq!(kms_error_parts(&err).1, "find token", "{err}");
    assert!(err.to_string().contains("no-such-token"), "{err}");

    let mut cfg = config("any");
    cfg.module = dir.path().join("libnothing.so");
    let err = Pkcs11Kms::open(&cfg).unwrap_err();
    assert_eq!(kms_error_parts(&err).1, "load module", "{err}");

    let err = Pkcs11Kms::open(&config(&unique_name("absent"))).unwrap_err();
    assert_eq!(kms_error_parts(&err).1, "open root key", "{err}");
    // Debug of a backend and of its config shows no PIN.
    let kms = Pkcs11Kms::create(&config(&unique_name("debug"))).unwrap();
    let shown = format!("{kms:?} {:?}", config("x"));
    assert!(!shown.contains(&real_pin()), "{shown}");
}

/// Runs the test `child` of this module in a child process with `env` set, asserts that it
/// passed and printed `probe`, and returns its stdout and stderr.
fn run_child(child: &str, env: &[(&str, &str)], probe: &str) -> (String, String) {
    let output = crate::support::rerun_test(module_path!(), child)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "child failed: {stdout}\n{stderr}");
    assert!(stdout.contains(probe), "{stdout}");
    (stdout, stderr)
}

/// `std::env::set_var` is `unsafe` in edition 2024 and this workspace forbids `unsafe`, so the
/// PIN-from-environment case runs in a child process: this test re-runs the test binary
/// filtered to [`env_pin_child`] (which never spawns anything) with the variable set.
#[test]
fn pin_from_an_environment_variable() {
    let pin = fs::read_to_string(custodian(0).1).unwrap();
    let (stdout, stderr) = run_child(
        "env_pin_child",
        &[
            ("LEAKLESS_TEST_PKCS11_PIN", pin.trim()),
            ("LEAKLESS_TEST_PKCS11_CHILD", "1"),
        ],
        "env pin probe: ok",
    );
    assert!(!stdout.contains(pin.trim()) && !stderr.contains(pin.trim()));
}

/// The child half of [`pin_from_an_environment_variable`]. Run on its own (without the
/// variables) it checks that an unset PIN variable is refused, naming the variable.
#[test]
fn env_pin_child() {
    let child = std::env::var_os("LEAKLESS_TEST_PKCS11_CHILD").is_some();
    let mut cfg = config(&unique_name("env"));
    if child {
        // The child logs in on a custodian token that the parent never touches: SoftHSM2's
        // file store can show a token as unreadable (CKR_GENERAL_ERROR, for the rest of the
        // process) to one process while another writes to it.
        cfg.token_label = custodian(0).0;
    }
    cfg.pin = PinSource::Env("LEAKLESS_TEST_PKCS11_PIN_UNSET".into());
    let err = Pkcs11Kms::create(&cfg).unwrap_err();
    let (backend, _, detail) = kms_error_parts(&err);
    assert_eq!(backend, "pkcs11", "{err}");
    assert!(detail.contains("LEAKLESS_TEST_PKCS11_PIN_UNSET"), "{err}");
    if !child {
        return;
    }
    cfg.pin = PinSource::Env("LEAKLESS_TEST_PKCS11_PIN".into());
    let kms = Pkcs11Kms::create(&cfg).unwrap();
    round_trip(&kms, &KeyScope::new("env").unwrap(), 1);
    println!("env pin probe: ok");
}

/// A lost login (here: `C_Logout` from other code in the process, as after an HSM restart)
/// is recovered: the backend logs in again from its PIN source and retries. Logging out is
/// process-wide, so this runs in a child process of its own (see [`relogin_child`]).
#[test]
fn a_lost_login_is_recovered_by_logging_in_again() {
    run_child(
        "relogin_child",
        &[("LEAKLESS_TEST_PKCS11_RELOGIN_CHILD", "1")],
        "relogin probe: ok",
    );
}

/// The child half of [`a_lost_login_is_recovered_by_logging_in_again`]. Run on its own (among
/// other tests) it only checks a wrap round trip, since logging out would disturb them.
#[test]
fn relogin_child() {
    let child = std::env::var_os("LEAKLESS_TEST_PKCS11_RELOGIN_CHILD").is_some();
    // The child uses a custodian token that the parent never touches (see env_pin_child).
    let (token, pin_file) = if child {
        custodian(1)
    } else {
        (env("LEAKLESS_PKCS11_TOKEN"), pin_file())
    };
    let mut cfg = config(&unique_name("relogin"));
    cfg.token_label.clone_from(&token);
    cfg.pin = PinSource::File(pin_file.clone());
    let kms = Pkcs11Kms::create(&cfg).unwrap();
    let scope = KeyScope::new("relogin").unwrap();
    let (kek, wrapped) = round_trip(&kms, &scope, 1);
    if !child {
        return;
    }
    // Other code in the process logs out (leakless initialized the module above, so this
    // second handle finds it initialized).
    let (ctx, slot) = raw_context_on(&token);
    let session = ctx.open_rw_session(slot).unwrap();
    let pin = fs::read_to_string(&pin_file).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(pin.trim()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
    session.logout().unwrap();
    // Logged out for the whole process: the private root key is no longer visible.
    let visible = ctx
        .open_ro_session(slot)
        .unwrap()
        .find_objects(&[Attribute::Label(kms.key_label().as_bytes().to_vec())])
        .unwrap();
    assert!(visible.is_empty(), "still logged in after C_Logout");
    drop(session);
    assert_unwraps_to(&kms, &wrapped, &scope, 1, &kek);
    kms.wrap_kek(&kek, &binding(&scope, 2)).unwrap();
    println!("relogin probe: ok");
}

/// The KMS call count seen by the token itself: opening 100,000 fields under one KEK version
/// costs one `C_Decrypt` on the HSM (the suite checks the ring's count; this is the HSM's).
#[test]
fn opening_100k_fields_costs_one_decrypt_on_the_token() {
    let kms = Arc::new(Pkcs11Kms::create(&config(&unique_name("count"))).unwrap());
    let ring = leakless::KeyRing::builder(
        kms.clone(),
        Arc::new(leakless::store::MemoryKeyStore::new()),
    )
    .build();
    let scope = KeyScope::new("patients").unwrap();
    ring.create_scope(&scope, &leakless::AuditInfo::new("test", "count"))
        .unwrap();
    let ctx = leakless::FieldContext::new("patients", "address", leakless::RowId::Int(1), 1);
    let env = ring
        .seal(&scope, &ctx, b"x", &leakless::FieldPolicy::default())
        .unwrap();
    assert_eq!(
        kms.token_calls().wraps,
        2,
        "create wrapped the store's integrity key and v1 on the token"
    );
    ring.cache().clear();
    let before = kms.token_calls();
    for _ in 0..100_000 {
        ring.open(&ctx, &env).unwrap();
    }
    let after = kms.token_calls();
    assert_eq!(
        after.unwraps - before.unwraps,
        1,
        "one C_Decrypt for 100,000 opens"
    );
    assert_eq!(after.wraps, before.wraps);
}
