//! `leakless-migrate` with every root of trust, against the real peers: the local key file,
//! SoftHSM2 (PKCS#11), `moto_server` (AWS KMS), OpenBao (Vault Transit) and `swtpm` (TPM 2.0),
//! started by `scripts/services/NAME start DIR --owner-pid PID` (scripts/test does this and
//! exports the variables they print). A test whose service is missing fails naming the service
//! and the script; none skips.
//!
//! Each backend runs the whole key lifecycle through the real binary: `keys create-scope`,
//! rows sealed by the runtime under the same root key, `keys rotate`, `rewrap`, `verify`,
//! `keys retire`, `keys destroy --yes`, `keys rotate-root` (per backend), `verify` and
//! `status` with the new root, and the old root refused where it is a different key.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use leakless::kms::{
    AwsCredentials, AwsKms, AwsKmsConfig, Kms, LocalKms, PinSource, Pkcs11Config, Pkcs11Kms,
    TpmConfig, TpmKms, VaultConfig, VaultToken, VaultTransitKms,
};
use leakless::store::KeyStore;
use leakless::store::sql::SqlKeyStore;
use leakless::{KeyRing, KeyScope};
use leakless_migrator::db::DbUrl;
use zeroize::Zeroizing;

use crate::support::{
    RootArgs, TestDb, assert_ok, insert_sealed, patients_manifest, plain, random_hex, root_cmd,
    run_logged, service_var, stderr, stdout,
};

const SCOPE: &str = "patients";
const ROWS: i64 = 40;

/// One backend's case: a database with the `patients` table and its key store, the root key
/// in-process (to seal the rows), and the settings the CLI gets for it.
struct Case {
    dir: tempfile::TempDir,
    url: String,
    _db: Option<TestDb>,
    manifest: PathBuf,
    kms: Arc<dyn Kms>,
    /// The CLI's settings for the root key.
    root: RootArgs,
}

impl Case {
    fn new(kms: Arc<dyn Kms>, postgres: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (url, db) = if postgres {
            let d = TestDb::postgres();
            (d.url().to_owned(), Some(d))
        } else {
            // An empty file is an empty SQLite database; the migrator opens only existing ones.
            let path = dir.path().join("app.db");
            std::fs::File::create(&path).unwrap();
            (path.display().to_string(), None)
        };
        let manifest = dir.path().join("manifest.json");
        std::fs::write(&manifest, patients_manifest()).unwrap();
        let bin = if postgres { "bytea" } else { "BLOB" };
        DbUrl::parse(&url)
            .unwrap()
            .connect()
            .unwrap()
            .batch(&format!(
                "CREATE TABLE patients (id BIGINT NOT NULL PRIMARY KEY, email {bin} NULL)"
            ))
            .unwrap();
        Self {
            dir,
            url,
            _db: db,
            manifest,
            kms,
            root: RootArgs::default(),
        }
    }

    fn env(mut self, var: &str, value: impl Into<OsString>) -> Self {
        self.root.env(var, value);
        self
    }

    fn flag(mut self, flag: &str, value: impl Into<String>) -> Self {
        self.root.flag(flag, value);
        self
    }

    fn store(&self) -> SqlKeyStore {
        let url = if self.url.starts_with("postgres") {
            self.url.clone()
        } else {
            format!("sqlite://{}", self.url)
        };
        SqlKeyStore::connect(&url).unwrap()
    }

    /// Seals rows `0..ROWS` with the runtime under the scope's active version.
    fn seal_rows(&self) {
        let ring = KeyRing::builder(self.kms.clone(), Arc::new(self.store())).build();
        let scope = KeyScope::new(SCOPE).unwrap();
        let mut db = DbUrl::parse(&self.url).unwrap().connect().unwrap();
        for id in 0..ROWS {
            insert_sealed(
                &mut db,
                &ring,
                &scope,
                ("patients", "email"),
                id,
                &plain(id),
            );
        }
    }

    /// The migrator with only this case's settings; `extra` overrides them.
    fn cmd(&self, extra: &[(&str, OsString)]) -> Command {
        let mut c = self.cmd_env_only(extra);
        c.args(&self.root.flags);
        c
    }

    /// As [`Self::cmd`], without the case's flags (only its environment).
    fn cmd_env_only(&self, extra: &[(&str, OsString)]) -> Command {
        let mut c = root_cmd(&self.url, &self.manifest, "kms-backends-test", &self.root);
        for (k, v) in extra {
            c.env(k, v);
        }
        c
    }

    fn run_with(&self, extra: &[(&str, OsString)], args: &[&str]) -> Output {
        run_logged(&mut self.cmd(extra), args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(&[], args)
    }

    /// Runs `args` and asserts exit 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        assert_ok(args, &self.run(args))
    }
}

/// The lifecycle up to a destroyed v1, then `rotate-root` with `rotate_root` args; returns the
/// rotate-root output.
fn lifecycle(c: &Case, rotate_root: &[&str]) -> String {
    let out = c.ok(&["keys", "create-scope", SCOPE]);
    assert!(
        out.contains("created scope patients with active KEK v1"),
        "{out}"
    );
    c.seal_rows();

    let out = c.ok(&["keys", "rotate", SCOPE]);
    assert!(out.contains("v2 is active"), "{out}");
    c.ok(&["rewrap"]);
    let out = c.ok(&["verify"]);
    assert!(
        out.contains(&format!("patients.email: {ROWS} opened, 0 null, 0 failed")),
        "{out}"
    );
    let status: serde_json::Value = serde_json::from_str(&c.ok(&["status", "--json"])).unwrap();
    assert_eq!(status[0]["rewrap_work"], 0, "{status}");
    assert_eq!(status[0]["versions"][0]["version"], 2, "{status}");
    assert_eq!(status[0]["versions"][0]["rows"], ROWS, "{status}");

    std::thread::sleep(std::time::Duration::from_millis(2_100)); // the 1 s cache window
    c.ok(&["keys", "retire", SCOPE, "1"]);
    let out = c.ok(&["keys", "destroy", SCOPE, "1", "--yes"]);
    assert!(out.contains("destroyed patients v1"), "{out}");
    let out = c.ok(&["status"]);
    assert!(out.contains("v2 active"), "{out}");

    let mut args = vec!["keys", "rotate-root"];
    args.extend_from_slice(rotate_root);
    let out = c.ok(&args);
    assert!(out.contains("KEK records"), "{out}");
    out
}

/// After rotate-root: every row opens with `new` settings, `status` is clean, and (when the
/// root key changed) the `old` settings open nothing.
fn check_new_root(c: &Case, new: &[(&str, OsString)], old_refused: bool) {
    let o = c.run_with(new, &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("{ROWS} opened, 0 null, 0 failed")),
        "{}",
        stdout(&o)
    );
    let o = c.run_with(new, &["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("v2 active"), "{}", stdout(&o));
    let o = c.run_with(new, &["keys", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("destroyed"), "{}", stdout(&o));
    if old_refused {
        let o = c.run(&["verify"]);
        assert_ne!(
            o.status.code(),
            Some(0),
            "the old root key must no longer open the KEKs: {}",
            stdout(&o)
        );
    }
}

/// Asserts none of `secrets` appears in `o`'s output.
fn assert_no_secret(o: &Output, secrets: &[&str]) {
    let all = format!("{}{}", stdout(o), stderr(o));
    for s in secrets {
        assert!(!s.is_empty());
        assert!(!all.contains(s), "a secret was printed: {all}");
    }
}

#[test]
fn local_key_file_full_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("root.key");
    let kms = Arc::new(LocalKms::generate_key_file(&key).unwrap());
    let c = Case::new(kms, false).env("LEAKLESS_ROOT_KEY_FILE", &key);
    let new_key = c.dir.path().join("new-root.key");
    lifecycle(
        &c,
        &[
            "--new-root-key-file",
            new_key.to_str().unwrap(),
            "--generate",
        ],
    );
    check_new_root(&c, &[("LEAKLESS_ROOT_KEY_FILE", new_key.into())], true);
}

fn pkcs11_config(label: &str) -> Pkcs11Config {
    let svc = |v| service_var(v, "SoftHSM2 (PKCS#11)", "softhsm");
    Pkcs11Config {
        module: svc("LEAKLESS_PKCS11_MODULE").into(),
        token_label: svc("LEAKLESS_PKCS11_TOKEN"),
        key_label: label.to_owned(),
        pin: PinSource::File(svc("LEAKLESS_PKCS11_PIN_FILE").into()),
    }
}

#[test]
fn pkcs11_full_lifecycle_on_softhsm() {
    let label = format!("leakless-cli-{}", random_hex(6));
    let config = pkcs11_config(&label);
    let pin_file = service_var("LEAKLESS_PKCS11_PIN_FILE", "SoftHSM2 (PKCS#11)", "softhsm");
    let kms = Arc::new(Pkcs11Kms::create(&config).unwrap());
    let c = Case::new(kms, false)
        .flag("--kms", "pkcs11")
        .flag("--pkcs11-token", &config.token_label)
        .env("LEAKLESS_PKCS11_MODULE", &config.module)
        .env("LEAKLESS_PKCS11_PIN_FILE", &pin_file)
        .env("LEAKLESS_PKCS11_KEY_LABEL", &label);
    // From here on only child processes touch the token (the rows are sealed before any child
    // writes to it): SoftHSM2 does not cope with two processes writing one token, and
    // rotate-root writes a new key object.
    let new_label = format!("{label}-2");
    let out = lifecycle(&c, &["--new-pkcs11-key-label", &new_label, "--generate"]);
    assert!(
        out.contains(&format!("pkcs11:{}/{new_label}", config.token_label)),
        "{out}"
    );
    check_new_root(&c, &[("LEAKLESS_PKCS11_KEY_LABEL", new_label.into())], true);
}

/// moto accepts any credentials; these are made at run time.
fn aws_dummy_credentials() -> (String, String) {
    (
        format!("AKIA{}", random_hex(8).to_uppercase()),
        random_hex(20),
    )
}

fn aws_create_key(access: &str, secret: &str) -> AwsKms {
    let endpoint = service_var("LEAKLESS_AWS_KMS_ENDPOINT", "moto_server (AWS KMS)", "moto");
    let region = service_var("LEAKLESS_AWS_REGION", "moto_server (AWS KMS)", "moto");
    AwsKms::create_key(
        AwsKmsConfig {
            region: Some(region),
            endpoint: Some(endpoint),
            credentials: AwsCredentials::Static {
                access_key_id: access.to_owned(),
                secret_access_key: Zeroizing::new(secret.to_owned()),
                session_token: None,
            },
            ..AwsKmsConfig::new("")
        },
        "leakless-migrate test root key",
    )
    .unwrap()
}

fn aws_lifecycle(postgres: bool) {
    let (access, secret) = aws_dummy_credentials();
    let old = aws_create_key(&access, &secret);
    let new = aws_create_key(&access, &secret);
    let old_arn = old.key_arn().to_owned();
    let new_arn = new.key_arn().to_owned();
    let c = Case::new(Arc::new(old), postgres)
        .env("LEAKLESS_KMS", "aws")
        .env(
            "LEAKLESS_AWS_KMS_ENDPOINT",
            service_var("LEAKLESS_AWS_KMS_ENDPOINT", "moto_server (AWS KMS)", "moto"),
        )
        .env(
            "LEAKLESS_AWS_REGION",
            service_var("LEAKLESS_AWS_REGION", "moto_server (AWS KMS)", "moto"),
        )
        .env("AWS_ACCESS_KEY_ID", &access)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env("LEAKLESS_AWS_KMS_KEY_ID", &old_arn);
    let out = lifecycle(&c, &["--new-aws-key-id", &new_arn]);
    assert!(
        out.contains("re-encrypted 2 KEK records inside AWS KMS"), // v2 and the integrity key,
        "{out}"
    );
    assert!(out.contains(&new_arn), "{out}");
    check_new_root(
        &c,
        &[("LEAKLESS_AWS_KMS_KEY_ID", new_arn.clone().into())],
        true,
    );
    // A rerun moves nothing more (done records are skipped); the secret key is never printed.
    let o = c.run(&["keys", "rotate-root", "--new-aws-key-id", &new_arn]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("re-encrypted 0 KEK records"),
        "{}",
        stdout(&o)
    );
    assert_no_secret(&o, &[&secret, &access]);
}

#[test]
fn aws_kms_full_lifecycle_on_moto() {
    aws_lifecycle(false);
}

#[test]
fn aws_kms_full_lifecycle_on_moto_with_postgresql() {
    aws_lifecycle(true);
}

fn vault_config(name: &str) -> (VaultConfig, VaultToken) {
    let _ = service_var("LEAKLESS_VAULT_ADDR", "OpenBao (Vault Transit)", "openbao");
    let _ = service_var(
        "LEAKLESS_VAULT_TOKEN_FILE",
        "OpenBao (Vault Transit)",
        "openbao",
    );
    (
        VaultConfig::from_env(name).unwrap(),
        VaultToken::from_env().unwrap(),
    )
}

#[test]
fn vault_transit_full_lifecycle_on_openbao() {
    let name = format!("leakless-cli-{}", random_hex(6));
    let (config, token) = vault_config(&name);
    let kms = Arc::new(VaultTransitKms::create_key(config.clone(), token).unwrap());
    let token_file = std::env::var("LEAKLESS_VAULT_TOKEN_FILE").unwrap();
    let token_text = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    let mut c = Case::new(kms.clone(), false)
        .flag("--kms", "vault")
        .flag("--vault-addr", &config.addr)
        .flag("--vault-key", &name)
        .env("LEAKLESS_VAULT_TOKEN_FILE", &token_file);
    if let Some(ca) = &config.ca_cert {
        c = c.env("LEAKLESS_VAULT_CACERT", ca);
    }
    let out = lifecycle(&c, &[]);
    assert!(
        out.contains("to version 2 and re-wrapped 2 KEK records"), // v2 and the integrity key,
        "{out}"
    );
    assert_eq!(kms.key_info().unwrap().latest_version, 2);
    // Every record with material is on the new Transit key version.
    let store = c.store();
    let records = store.list(&KeyScope::new(SCOPE).unwrap()).unwrap();
    let wrapped: Vec<_> = records.iter().filter_map(|r| r.wrapped.as_ref()).collect();
    assert_eq!(wrapped.len(), 1, "v2 only: v1 is destroyed");
    for w in wrapped {
        assert!(w.ciphertext.starts_with(b"vault:v2:"), "not rewrapped");
    }
    check_new_root(&c, &[], false);

    // The token also works from LEAKLESS_VAULT_TOKEN, and is never printed, also on failure.
    let o = c
        .cmd(&[("LEAKLESS_VAULT_TOKEN", token_text.clone().into())])
        .env_remove("LEAKLESS_VAULT_TOKEN_FILE")
        .arg("verify")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_no_secret(&o, &[&token_text]);
    let o = c
        .cmd_env_only(&[])
        .args(["--kms", "vault", "--vault-addr", &config.addr])
        .args(["--vault-key", "no-such-key", "verify"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("help: check --vault-addr"),
        "{}",
        stderr(&o)
    );
    assert_no_secret(&o, &[&token_text]);
}

/// Evicts the persistent sealed objects a TPM sealed file names when dropped (before its
/// folder goes): persistent handles are scarce, so reruns must not fill the TPM.
struct EvictTpm(TpmConfig);

impl Drop for EvictTpm {
    fn drop(&mut self) {
        if self.0.sealed_path().exists() {
            let _ = TpmKms::evict_persistent(&self.0);
        }
    }
}

#[test]
fn tpm_full_lifecycle_on_swtpm() {
    let tcti = service_var("LEAKLESS_TPM_TCTI", "a TPM 2.0 (swtpm)", "swtpm");
    let dir = tempfile::tempdir().unwrap();
    let sealed = dir.path().join("root.sealed");
    let _evict_old = EvictTpm(TpmConfig::new(&tcti, &sealed));
    let kms = Arc::new(TpmKms::create(&TpmConfig::new(&tcti, &sealed)).unwrap());
    let c = Case::new(kms, false)
        .flag("--kms", "tpm")
        .flag("--tpm-tcti", &tcti)
        .env("LEAKLESS_TPM_SEALED_FILE", &sealed);
    let new_sealed = c.dir.path().join("new-root.sealed");
    let _evict_new = EvictTpm(TpmConfig::new(&tcti, &new_sealed));
    let out = lifecycle(
        &c,
        &[
            "--new-tpm-sealed-file",
            new_sealed.to_str().unwrap(),
            "--generate",
        ],
    );
    assert!(out.contains("under root key tpm:"), "{out}");
    check_new_root(&c, &[("LEAKLESS_TPM_SEALED_FILE", new_sealed.into())], true);
}

/// A bare migrator: no settings at all.
fn bare(args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut c = crate::support::bare();
    c.env("LEAKLESS_DATABASE_URL", "/nonexistent-dir/x.db");
    for (k, v) in extra {
        c.env(k, v);
    }
    c.args(args).output().unwrap()
}

#[test]
fn a_missing_backend_setting_names_its_flag_and_variable_and_exits_3() {
    for (kms, extra, flag, var) in [
        (
            "pkcs11",
            vec![],
            "--pkcs11-module",
            "LEAKLESS_PKCS11_MODULE",
        ),
        (
            "pkcs11",
            vec![("LEAKLESS_PKCS11_MODULE", "/x.so")],
            "--pkcs11-token",
            "LEAKLESS_PKCS11_TOKEN",
        ),
        (
            "pkcs11",
            vec![
                ("LEAKLESS_PKCS11_MODULE", "/x.so"),
                ("LEAKLESS_PKCS11_TOKEN", "t"),
            ],
            "--pkcs11-pin-file",
            "LEAKLESS_PKCS11_PIN",
        ),
        ("aws", vec![], "--aws-key-id", "LEAKLESS_AWS_KMS_KEY_ID"),
        ("vault", vec![], "--vault-addr", "LEAKLESS_VAULT_ADDR"),
        (
            "vault",
            vec![("LEAKLESS_VAULT_ADDR", "http://127.0.0.1:1")],
            "--vault-key",
            "LEAKLESS_VAULT_KEY",
        ),
        (
            "vault",
            vec![
                ("LEAKLESS_VAULT_ADDR", "http://127.0.0.1:1"),
                ("LEAKLESS_VAULT_KEY", "k"),
            ],
            "--vault-token-file",
            "LEAKLESS_VAULT_TOKEN",
        ),
        (
            "tpm",
            vec![],
            "--tpm-sealed-file",
            "LEAKLESS_TPM_SEALED_FILE",
        ),
        (
            "tpm",
            vec![("LEAKLESS_TPM_SEALED_FILE", "/x.sealed")],
            "--tpm-tcti",
            "LEAKLESS_TPM_TCTI",
        ),
    ] {
        // Through the flag and through the variable alike.
        let o = bare(&["--kms", kms, "keys", "create-scope", "s"], &extra);
        let mut with_var = extra.clone();
        with_var.push(("LEAKLESS_KMS", kms));
        let o2 = bare(&["keys", "create-scope", "s"], &with_var);
        for o in [o, o2] {
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(3), "{kms}: {e}");
            assert!(e.starts_with(&format!("error: --kms {kms} needs ")), "{e}");
            assert!(
                e.contains("\nhelp: pass ") && e.contains(flag) && e.contains(var),
                "{e}"
            );
        }
    }
    // An unknown backend is a usage error listing the choices.
    let o = bare(&["--kms", "gcp", "keys", "list"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("local, pkcs11, aws, vault, tpm"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn secrets_are_never_flag_values_and_never_printed() {
    // There is no flag for a secret.
    for flag in ["--vault-token", "--pkcs11-pin", "--aws-secret-access-key"] {
        let o = bare(&[flag, "x", "keys", "list"], &[]);
        assert_eq!(o.status.code(), Some(2), "{flag} must not exist");
    }
    // A PIN and a token planted in the environment are detectable in raw text, and never
    // printed, whatever fails.
    let pin = format!("pin-{}", random_hex(8));
    let token = format!("s.{}", random_hex(12));
    let aws_secret = random_hex(20);
    assert!(format!("{pin}{token}").contains(&pin));
    let secrets = [pin.as_str(), token.as_str(), aws_secret.as_str()];
    let env = [
        ("LEAKLESS_PKCS11_MODULE", "/nonexistent/module.so"),
        ("LEAKLESS_PKCS11_TOKEN", "t"),
        ("LEAKLESS_PKCS11_PIN", pin.as_str()),
        ("LEAKLESS_VAULT_ADDR", "http://127.0.0.1:1"),
        ("LEAKLESS_VAULT_KEY", "k"),
        ("LEAKLESS_VAULT_TOKEN", token.as_str()),
        ("LEAKLESS_AWS_KMS_KEY_ID", "alias/none"),
        ("LEAKLESS_AWS_KMS_ENDPOINT", "http://127.0.0.1:1"),
        ("LEAKLESS_AWS_REGION", "eu-central-1"),
        ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", aws_secret.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    for kms in ["pkcs11", "vault", "aws"] {
        let o = bare(&["--kms", kms, "keys", "create-scope", "s"], &env);
        assert_eq!(o.status.code(), Some(3), "{kms}: {}", stderr(&o));
        assert_no_secret(&o, &secrets);
    }
    // Help shows the variables' names, never their values.
    let o = bare(&["--help"], &env);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("LEAKLESS_VAULT_TOKEN"),
        "{}",
        stdout(&o)
    );
    assert_no_secret(&o, &secrets);
}
