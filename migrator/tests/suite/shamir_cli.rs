//! `leakless-migrate keys split` / `keys unseal`: a 3-of-5 split of the root key into share
//! files, unsealing from any three against the key store (no root key file given), and the
//! typed refusals: too few shares, a corrupted share, shares of another deployment's key.
//! Plus shares on five SoftHSM2 custodian tokens. No command prints key material.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leakless::kms::{Kms, LocalKms};

struct Deployment {
    dir: tempfile::TempDir,
    key_file: PathBuf,
    store: String,
    key_id: String,
    key_hex: String,
}

impl Deployment {
    /// A root key file and a file key store with one scope.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("root.key");
        let key_id = LocalKms::generate_key_file(&key_file)
            .unwrap()
            .root_key_id()
            .to_owned();
        let key_hex = fs::read_to_string(&key_file).unwrap().trim().to_owned();
        let store = format!("file:{}", dir.path().join("keys.json").display());
        let d = Self {
            dir,
            key_file,
            store,
            key_id,
            key_hex,
        };
        let o = d.run(&["keys", "create-scope", "patients"], true);
        assert!(o.status.success(), "{}", text(&o));
        d
    }

    /// Runs the CLI on this deployment's key store; with the root key file if `with_key`.
    fn run(&self, args: &[&str], with_key: bool) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_leakless-migrate"));
        c.env_remove("LEAKLESS_ROOT_KEY")
            .env_remove("LEAKLESS_ROOT_KEY_FILE")
            .env_remove("LEAKLESS_DATABASE_URL")
            .env("LEAKLESS_KEY_STORE", &self.store)
            .args(args);
        if with_key {
            c.env("LEAKLESS_ROOT_KEY_FILE", &self.key_file);
        }
        let o = c.output().unwrap();
        let all = text(&o);
        assert!(
            !all.contains(&self.key_hex),
            "the root key was printed: {all}"
        );
        o
    }

    /// Runs `keys split` of the root key into five shares, `threshold` of which unseal it,
    /// written to `to` (`--out-dir DIR`, or a PKCS#11 module and tokens).
    fn split(&self, threshold: &str, to: &[&str]) -> Output {
        let split = ["keys", "split", "--threshold", threshold, "--shares", "5"];
        self.run(&[&split[..], to].concat(), true)
    }

    /// Splits the root key 3-of-5 into share files in the folder `shares`, asserting success;
    /// returns the output and the files.
    fn split_to_files(&self) -> (Output, Vec<String>) {
        let out_dir = self.path("shares");
        let o = self.split("3", &["--out-dir", out_dir.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        (o, share_files(&out_dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn share_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn split_then_unseal_from_any_three_shares() {
    let d = Deployment::new();
    let (o, files) = d.split_to_files();
    assert!(text(&o).contains(&d.key_id), "{}", text(&o));
    assert_eq!(files.len(), 5);
    for f in &files {
        assert_eq!(fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Unseal without any root key given: from shares 1, 3 and 5 alone.
    let o = d.run(
        &["keys", "unseal", "--share", &files[0], &files[2], &files[4]],
        false,
    );
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("unsealed root key {}", d.key_id)),
        "{stdout}"
    );
    assert!(stdout.contains("patients v1"), "{stdout}");
    assert!(stdout.contains("erased"), "{stdout}");
    // Recovery: the restored key file is the original key.
    let restored = d.path("restored.key");
    let o = d.run(
        &[
            "keys",
            "unseal",
            "--share",
            &files[1],
            "--share",
            &files[3],
            "--share",
            &files[4],
            "--out-key-file",
            restored.to_str().unwrap(),
        ],
        false,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(&restored).unwrap().trim(),
        d.key_hex,
        "restored key file"
    );
    // JSON output.
    let o = d.run(
        &[
            "--json", "keys", "unseal", "--share", &files[0], &files[1], &files[2],
        ],
        false,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["key_id"], d.key_id.as_str());
    assert_eq!(v["shares_used"], 3);
}

#[test]
fn unseal_refuses_too_few_corrupted_and_foreign_shares() {
    let d = Deployment::new();
    let (_, files) = d.split_to_files();

    let o = d.run(&["keys", "unseal", "--share", &files[0], &files[1]], false);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("needs 3 of its 5 shares"), "{}", text(&o));

    // Flip one hex digit of share 2's value.
    let t = fs::read_to_string(&files[1]).unwrap();
    let bad: String = t
        .lines()
        .map(|l| match l.strip_prefix("value: ") {
            Some(v) => {
                let flipped = if v.starts_with('0') { "1" } else { "0" };
                format!("value: {flipped}{}\n", &v[1..])
            }
            None => format!("{l}\n"),
        })
        .collect();
    let tampered = d.path("tampered.txt");
    fs::write(&tampered, bad).unwrap();
    fs::set_permissions(&tampered, fs::Permissions::from_mode(0o600)).unwrap();
    let o = d.run(
        &[
            "keys",
            "unseal",
            "--share",
            &files[0],
            tampered.to_str().unwrap(),
            &files[2],
        ],
        false,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("corrupted"), "{}", text(&o));
    assert!(text(&o).contains("tampered.txt"), "{}", text(&o));

    // Shares of this deployment's key against another deployment's key store: refused.
    let other = Deployment::new();
    let o = other.run(
        &["keys", "unseal", "--share", &files[0], &files[1], &files[2]],
        false,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&other.key_id), "{}", text(&o));

    // Bad parameters are a usage error.
    let o = d.split("6", &["--out-dir", d.path("x").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// Shares on the five SoftHSM2 custodian tokens of `scripts/services/softhsm`.
#[test]
fn split_to_custodian_tokens_and_unseal_from_three() {
    let var = |v: &str| leakless_testkit::service_var(v, "SoftHSM2 (PKCS#11)", "softhsm");
    var("SOFTHSM2_CONF");
    let module = var("LEAKLESS_PKCS11_MODULE");
    let tokens: Vec<String> = var("LEAKLESS_PKCS11_CUSTODIANS")
        .split(',')
        .map(|e| e.replacen(':', "=", 1))
        .collect();
    assert_eq!(tokens.len(), 5);
    let d = Deployment::new();
    let mut to = vec!["--pkcs11-module", module.as_str()];
    for t in &tokens {
        to.extend(["--token", t.as_str()]);
    }
    let o = d.split("3", &to);
    assert!(o.status.success(), "{}", text(&o));
    let set = String::from_utf8_lossy(&o.stdout)
        .split("(set ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .to_owned();
    // Tokens 2, 3 and 5 unseal (with --set, as tokens may hold shares of other splits).
    let unseal = |picked: &[&String]| {
        let mut args = vec![
            "keys",
            "unseal",
            "--pkcs11-module",
            module.as_str(),
            "--set",
            set.as_str(),
        ];
        for t in picked {
            args.extend(["--token", t.as_str()]);
        }
        d.run(&args, false)
    };
    let o = unseal(&[&tokens[1], &tokens[2], &tokens[4]]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&d.key_id), "{}", text(&o));
    let o = unseal(&[&tokens[0], &tokens[3]]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("needs 3"), "{}", text(&o));
    // Clean up this split's data objects.
    for t in &tokens {
        let (label, pin) = t.split_once('=').unwrap();
        let token = leakless::kms::Pkcs11Token::open(
            Path::new(&module),
            label,
            &leakless::kms::PinSource::File(PathBuf::from(pin)),
        )
        .unwrap();
        let mine: Vec<String> = token.data_labels(&format!("leakless-share:{set}")).unwrap();
        assert_eq!(mine.len(), 1, "one share per token");
        assert!(token.delete_data(&mine[0]).unwrap());
    }
}
