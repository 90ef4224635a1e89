//! `keys rotate-root`: move every KEK record onto a new root key, per backend. No row is
//! touched: only the KEK records are re-wrapped, each with a `rewrap_root` audit entry.
//!
//! | `--kms` | new root | how the records move |
//! |---|---|---|
//! | local | `--new-root-key-file` (made with `--generate`) | `KeyRing::rotate_root` |
//! | pkcs11 | `--new-pkcs11-key-label` on the same token (made with `--generate`) | `KeyRing::rotate_root` (unwrap and wrap on the token) |
//! | tpm | `--new-tpm-sealed-file` (sealed with `--generate`, optionally `--new-tpm-pcrs`) | `KeyRing::rotate_root` |
//! | aws | `--new-aws-key-id` | `ReEncrypt` inside AWS KMS |
//! | vault | a new version of the same Transit key | Transit `rotate`, then `rewrap` inside Vault |

use std::path::PathBuf;

use leakless::kms::{AwsKms, Kms, LocalKms, Pkcs11Kms, TpmKms, VaultTransitKms};
use leakless::{AuditInfo, KeyRing};

use crate::env::Env;
use crate::error::{Failure, Kind, Result};
use crate::kms::{Backend, Root, open_failed};

/// `keys rotate-root`.
#[derive(Debug, clap::Args)]
pub struct RotateRootArgs {
    /// --kms local: the new root key file (64 hex digits, mode 0600).
    #[arg(long)]
    pub new_root_key_file: Option<PathBuf>,
    /// --kms pkcs11: the label of the new root key object, on the same token.
    #[arg(long)]
    pub new_pkcs11_key_label: Option<String>,
    /// --kms tpm: the new sealed root key file.
    #[arg(long)]
    pub new_tpm_sealed_file: Option<PathBuf>,
    /// --kms tpm with --generate: bind the new root key to these SHA-256 PCRs (e.g. 7 or
    /// 0,2,4,7). Default: no PCR policy.
    #[arg(long, value_delimiter = ',', value_name = "PCR,...")]
    pub new_tpm_pcrs: Vec<u8>,
    /// --kms aws: the KMS key to move to (key id, ARN or alias/NAME), in the same region.
    #[arg(long)]
    pub new_aws_key_id: Option<String>,
    /// Make the new root first: a new key file (local), a new non-extractable key object
    /// (pkcs11), a new sealed root key (tpm). Not for aws or vault.
    #[arg(long)]
    pub generate: bool,
}

/// A move of the stored KEK records that happens inside a network KMS: the KEKs never reach
/// this process.
enum InKms<'a> {
    /// AWS KMS `ReEncrypt` from one key to another.
    Aws { from: &'a AwsKms, to: &'a AwsKms },
    /// Vault Transit `rewrap` onto the newest version of the key.
    Vault(&'a VaultTransitKms),
}

/// The one place the migrator re-wraps stored KEK records inside a network KMS, through the
/// key ring (the only writer of key records).
fn rewrap_inside_kms(ring: &KeyRing, how: InKms<'_>, who: &AuditInfo) -> Result<usize> {
    Ok(match how {
        InKms::Aws { from, to } => ring.rewrap_root_in_kms(&from.re_encrypt_to(to), who)?,
        InKms::Vault(kms) => ring.rewrap_root_in_kms(&kms.rewrap_to_latest()?, who)?,
    })
}

impl RotateRootArgs {
    /// Refuses flags meant for another backend, and `--generate` where it means nothing.
    fn check(&self, backend: Backend) -> Result<()> {
        let given = [
            (
                "--new-root-key-file",
                self.new_root_key_file.is_some(),
                Backend::Local,
            ),
            (
                "--new-pkcs11-key-label",
                self.new_pkcs11_key_label.is_some(),
                Backend::Pkcs11,
            ),
            (
                "--new-tpm-sealed-file",
                self.new_tpm_sealed_file.is_some(),
                Backend::Tpm,
            ),
            (
                "--new-tpm-pcrs",
                !self.new_tpm_pcrs.is_empty(),
                Backend::Tpm,
            ),
            (
                "--new-aws-key-id",
                self.new_aws_key_id.is_some(),
                Backend::Aws,
            ),
        ];
        for (flag, set, owner) in given {
            if set && owner != backend {
                return Err(Failure::new(
                    Kind::Usage,
                    format!(
                        "{flag} is for --kms {}, and this run uses --kms {}",
                        owner.name(),
                        backend.name()
                    ),
                    usage(backend),
                ));
            }
        }
        if self.generate && matches!(backend, Backend::Aws | Backend::Vault) {
            return Err(Failure::new(
                Kind::Usage,
                format!("--generate means nothing for --kms {}", backend.name()),
                usage(backend),
            ));
        }
        Ok(())
    }
}

/// How to call `rotate-root` for `backend`.
fn usage(backend: Backend) -> String {
    let how = match backend {
        Backend::Local => "--new-root-key-file PATH [--generate]",
        Backend::Pkcs11 => "--new-pkcs11-key-label LABEL [--generate]",
        Backend::Tpm => "--new-tpm-sealed-file PATH [--generate [--new-tpm-pcrs 7]]",
        Backend::Aws => "--new-aws-key-id KEY",
        Backend::Vault => "(no options: it rotates the Transit key and rewraps inside Vault)",
    };
    format!(
        "with --kms {}: leakless-migrate keys rotate-root {how}",
        backend.name()
    )
}

fn needed<'a, T: ?Sized>(value: Option<&'a T>, flag: &str, backend: Backend) -> Result<&'a T> {
    value.ok_or_else(|| {
        Failure::new(
            Kind::Usage,
            format!(
                "keys rotate-root with --kms {} needs {flag}",
                backend.name()
            ),
            usage(backend),
        )
    })
}

/// Runs `keys rotate-root`; returns the line to print.
///
/// # Errors
/// [`Kind::Usage`] for flags that do not fit the backend, [`Kind::Keys`] when a root key
/// cannot be made or reached, [`Kind::Conflict`] on a lost race (rerun: done records are
/// skipped).
pub fn run(env: &mut Env, a: &RotateRootArgs) -> Result<String> {
    let backend = env.global.kms.kms;
    a.check(backend)?;
    let who = env.who();
    let root = env.root()?;
    let ring = env.ring()?;
    let fail = |e: leakless::Error| open_failed(backend, &e);
    Ok(match &root {
        Root::Local(_) => {
            let path = needed(
                a.new_root_key_file.as_deref(),
                "--new-root-key-file",
                backend,
            )?;
            let new = if a.generate {
                LocalKms::generate_key_file(path)
            } else {
                LocalKms::from_key_file(path)
            }
            .map_err(fail)?;
            let n = ring.rotate_root(&new, &who)?;
            format!(
                "re-wrapped {n} KEK records under root key {}; use --root-key-file {} from now on",
                new.root_key_id(),
                path.display()
            )
        }
        Root::Pkcs11(old) => {
            let label = needed(
                a.new_pkcs11_key_label.as_deref(),
                "--new-pkcs11-key-label",
                backend,
            )?;
            let token = old.token().clone();
            let new = if a.generate {
                Pkcs11Kms::create_on(token, label)
            } else {
                Pkcs11Kms::open_on(token, label)
            }
            .map_err(fail)?;
            let n = ring.rotate_root(&new, &who)?;
            format!(
                "re-wrapped {n} KEK records under root key {}; use --pkcs11-key-label {label} \
                 from now on; the old key object {:?} still unwraps copies of the old records \
                 (backups) until you delete it from the token",
                new.root_key_id(),
                old.key_label()
            )
        }
        Root::Tpm(_) => {
            let path = needed(
                a.new_tpm_sealed_file.as_deref(),
                "--new-tpm-sealed-file",
                backend,
            )?;
            let config = env
                .global
                .kms
                .tpm_config(path.to_path_buf())?
                .with_pcr_policy(&a.new_tpm_pcrs);
            let new = if a.generate {
                TpmKms::create(&config)
            } else {
                TpmKms::open(&config)
            }
            .map_err(fail)?;
            let n = ring.rotate_root(&new, &who)?;
            format!(
                "re-wrapped {n} KEK records under root key {}; use --tpm-sealed-file {} from \
                 now on; the old root still unwraps copies of the old records (backups) until \
                 it is gone from the TPM: evict the persistent handle its sealed file names \
                 (version 2, `tpm2_evictcontrol -C o -c HANDLE`), then delete every copy of \
                 the old sealed file (the only step for version 1, whose copies cannot be \
                 made useless)",
                new.root_key_id(),
                path.display()
            )
        }
        Root::Aws(old) => {
            let key = needed(a.new_aws_key_id.as_deref(), "--new-aws-key-id", backend)?;
            let new = env.global.kms.aws_connect(key)?;
            let n = rewrap_inside_kms(
                &ring,
                InKms::Aws {
                    from: old,
                    to: &new,
                },
                &who,
            )?;
            format!(
                "re-encrypted {n} KEK records inside AWS KMS under root key {}; use \
                 --aws-key-id {key} from now on; the old key still decrypts copies of the old \
                 records (backups) until you schedule its deletion",
                new.root_key_id()
            )
        }
        Root::Vault(kms) => {
            let version = kms.rotate_key().map_err(fail)?;
            let n = rewrap_inside_kms(&ring, InKms::Vault(kms), &who)?;
            format!(
                "rotated Transit key {} to version {version} and re-wrapped {n} KEK records \
                 onto it inside Vault; older versions still decrypt copies of the old records \
                 (backups) until you raise the key's min_decryption_version to {version}",
                kms.root_key_id()
            )
        }
    })
}
