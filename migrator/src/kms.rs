//! The root of trust: which KMS backend holds the root key (`--kms`), its settings (flags or
//! environment variables), and opening it.
//!
//! Every setting is a global flag with an environment variable of the same meaning; the
//! variables are the ones the runtime's own `from_env` constructors and `docs/kms.md` use.
//! Secrets (a PKCS#11 PIN, a Vault token, AWS secret keys) are never flag values: they come
//! from a file named by a flag or variable, or from an environment variable, and are read by
//! the runtime (`PinSource`, `VaultToken`, the AWS credential chain), which never prints them.
//! Nothing in [`KmsArgs`] is secret, so its derived `Debug` is safe.

use std::path::PathBuf;
use std::sync::Arc;

use leakless::kms::vault::{
    VAULT_ADDR_ENV, VAULT_CACERT_ENV, VAULT_TOKEN_ENV, VAULT_TOKEN_FILE_ENV,
};
use leakless::kms::{
    AwsKms, AwsKmsConfig, Kms, LocalKms, PinSource, Pkcs11Config, Pkcs11Kms, ROOT_KEY_ENV,
    TpmConfig, TpmKms, VaultConfig, VaultToken, VaultTransitKms,
};

use crate::error::{Failure, Kind, Result};

/// The environment variable holding the PKCS#11 PIN when no PIN file is named.
pub const PKCS11_PIN_ENV: &str = "LEAKLESS_PKCS11_PIN";

/// Which backend holds the root key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A local key file or `LEAKLESS_ROOT_KEY`.
    Local,
    /// A non-extractable AES key on a PKCS#11 token (HSM, SoftHSM2).
    Pkcs11,
    /// A symmetric AWS KMS key.
    Aws,
    /// A derived Vault / OpenBao Transit key.
    Vault,
    /// A root key sealed to a TPM 2.0.
    Tpm,
}

impl Backend {
    /// The name given to `--kms`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Pkcs11 => "pkcs11",
            Backend::Aws => "aws",
            Backend::Vault => "vault",
            Backend::Tpm => "tpm",
        }
    }

    /// The backend of a runtime backend name (`Kms::backend`, `Error::Kms::backend`).
    #[must_use]
    pub fn from_runtime_name(name: &str) -> Option<Self> {
        match name {
            "local" => Some(Backend::Local),
            "pkcs11" => Some(Backend::Pkcs11),
            "aws-kms" => Some(Backend::Aws),
            "vault" => Some(Backend::Vault),
            "tpm" => Some(Backend::Tpm),
            _ => None,
        }
    }

    /// What to check when this backend fails: its flags and variables.
    #[must_use]
    pub fn help(self) -> &'static str {
        match self {
            Backend::Local => {
                "pass the root key with --root-key-file (or LEAKLESS_ROOT_KEY_FILE / \
                 LEAKLESS_ROOT_KEY); the key file must be mode 0600"
            }
            Backend::Pkcs11 => {
                "check --pkcs11-module, --pkcs11-token and --pkcs11-key-label \
                 (LEAKLESS_PKCS11_MODULE, LEAKLESS_PKCS11_TOKEN, LEAKLESS_PKCS11_KEY_LABEL) and \
                 the PIN: --pkcs11-pin-file (LEAKLESS_PKCS11_PIN_FILE, a 0600 file) or \
                 LEAKLESS_PKCS11_PIN"
            }
            Backend::Aws => {
                "check --aws-key-id, --aws-region and --aws-endpoint (LEAKLESS_AWS_KMS_KEY_ID, \
                 LEAKLESS_AWS_REGION, LEAKLESS_AWS_KMS_ENDPOINT) and the AWS credentials (the \
                 standard chain: AWS_PROFILE, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, web \
                 identity, an instance or task role)"
            }
            Backend::Vault => {
                "check --vault-addr, --vault-key, --vault-mount, --vault-namespace and \
                 --vault-cacert (LEAKLESS_VAULT_ADDR, LEAKLESS_VAULT_KEY, LEAKLESS_VAULT_MOUNT, \
                 LEAKLESS_VAULT_NAMESPACE, LEAKLESS_VAULT_CACERT) and the token: \
                 --vault-token-file (LEAKLESS_VAULT_TOKEN_FILE, a 0600 file) or \
                 LEAKLESS_VAULT_TOKEN"
            }
            Backend::Tpm => {
                "check --tpm-tcti and --tpm-sealed-file (LEAKLESS_TPM_TCTI, \
                 LEAKLESS_TPM_SEALED_FILE), that the TPM is reachable, and that the sealed file \
                 was made on this TPM"
            }
        }
    }
}

/// The root-of-trust options (global). Each backend reads only its own; see `docs/kms.md`.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Root of trust (see docs/kms.md)")]
pub struct KmsArgs {
    /// Which backend holds the root key: local (a key file), pkcs11 (an HSM token), aws (AWS
    /// KMS), vault (Vault/OpenBao Transit) or tpm (sealed to a TPM 2.0).
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_KMS",
        value_enum,
        hide_possible_values = true,
        default_value_t = Backend::Local
    )]
    pub kms: Backend,

    /// local: file holding the root key (64 hex digits, mode 0600). Without it, the root key
    /// is read from LEAKLESS_ROOT_KEY (64 hex digits).
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_ROOT_KEY_FILE",
        hide_env_values = true
    )]
    pub root_key_file: Option<PathBuf>,

    /// pkcs11: the vendor's PKCS#11 module (.so). Also the module of `keys split`/`unseal`
    /// --token.
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_PKCS11_MODULE",
        hide_env_values = true
    )]
    pub pkcs11_module: Option<PathBuf>,

    /// pkcs11: the token label.
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_PKCS11_TOKEN",
        hide_env_values = true
    )]
    pub pkcs11_token: Option<String>,

    /// pkcs11: the root key's object label.
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_PKCS11_KEY_LABEL",
        hide_env_values = true,
        default_value = leakless::kms::pkcs11::DEFAULT_KEY_LABEL
    )]
    pub pkcs11_key_label: String,

    /// pkcs11: file holding the user PIN (mode 0600). Without it, the PIN is read from
    /// LEAKLESS_PKCS11_PIN.
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_PKCS11_PIN_FILE",
        hide_env_values = true
    )]
    pub pkcs11_pin_file: Option<PathBuf>,

    /// aws: the KMS key (key id, key ARN, alias/NAME or alias ARN). Credentials come from the
    /// standard AWS chain (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, roles).
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_AWS_KMS_KEY_ID",
        hide_env_values = true
    )]
    pub aws_key_id: Option<String>,

    /// aws: the region. Default: the AWS chain (AWS_REGION, profile).
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_AWS_REGION",
        hide_env_values = true
    )]
    pub aws_region: Option<String>,

    /// aws: a custom endpoint (VPC or FIPS endpoint, a local peer). Default: the regional one.
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_AWS_KMS_ENDPOINT",
        hide_env_values = true
    )]
    pub aws_endpoint: Option<String>,

    /// vault: the server, http(s)://HOST:PORT.
    #[arg(long, global = true, env = VAULT_ADDR_ENV, hide_env_values = true)]
    pub vault_addr: Option<String>,

    /// vault: the Transit key's name (a derived key).
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_VAULT_KEY",
        hide_env_values = true
    )]
    pub vault_key: Option<String>,

    /// vault: the Transit mount path.
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_VAULT_MOUNT",
        hide_env_values = true,
        default_value = "transit"
    )]
    pub vault_mount: String,

    /// vault: a Vault Enterprise / OpenBao namespace.
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_VAULT_NAMESPACE",
        hide_env_values = true
    )]
    pub vault_namespace: Option<String>,

    /// vault: a PEM file of CA certificates to trust for https://.
    #[arg(long, global = true, env = VAULT_CACERT_ENV, hide_env_values = true)]
    pub vault_cacert: Option<PathBuf>,

    /// vault: file holding the token (mode 0600). Without it, the token is read from
    /// LEAKLESS_VAULT_TOKEN.
    #[arg(long, global = true, env = VAULT_TOKEN_FILE_ENV, hide_env_values = true)]
    pub vault_token_file: Option<PathBuf>,

    /// tpm: the TCTI: device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:..., tabrmd:.
    #[arg(long, global = true, env = "LEAKLESS_TPM_TCTI", hide_env_values = true)]
    pub tpm_tcti: Option<String>,

    /// tpm: the sealed root key file.
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_TPM_SEALED_FILE",
        hide_env_values = true
    )]
    pub tpm_sealed_file: Option<PathBuf>,
}

/// An opened root of trust: each backend as itself, for what only it can do (`keys
/// rotate-root`), and as a [`Kms`] for the key ring.
#[derive(Clone, Debug)]
pub enum Root {
    /// `--kms local`.
    Local(Arc<LocalKms>),
    /// `--kms pkcs11`.
    Pkcs11(Arc<Pkcs11Kms>),
    /// `--kms aws`.
    Aws(Arc<AwsKms>),
    /// `--kms vault`.
    Vault(Arc<VaultTransitKms>),
    /// `--kms tpm`.
    Tpm(Arc<TpmKms>),
}

impl Root {
    /// The backend as the key ring holds it.
    #[must_use]
    pub fn kms(&self) -> Arc<dyn Kms> {
        match self {
            Root::Local(k) => k.clone(),
            Root::Pkcs11(k) => k.clone(),
            Root::Aws(k) => k.clone(),
            Root::Vault(k) => k.clone(),
            Root::Tpm(k) => k.clone(),
        }
    }
}

/// A required setting of `backend` that is missing: names the flag and the variable.
fn missing(backend: Backend, what: &str, flag: &str, var: &str) -> Failure {
    Failure::new(
        Kind::Keys,
        format!("--kms {} needs {what}", backend.name()),
        format!("pass {flag}, or set {var}"),
    )
}

/// A runtime error while opening `backend`: exit 3, with the backend's settings as help.
#[must_use]
pub fn open_failed(backend: Backend, e: &leakless::Error) -> Failure {
    Failure::new(Kind::Keys, e.to_string(), backend.help())
}

impl KmsArgs {
    /// Opens the selected backend.
    ///
    /// # Errors
    /// [`Kind::Keys`] naming the missing flag and variable, or the backend's own failure.
    pub fn open(&self) -> Result<Root> {
        let b = self.kms;
        let fail = |e: leakless::Error| open_failed(b, &e);
        Ok(match b {
            Backend::Local => {
                let kms = match &self.root_key_file {
                    Some(path) => LocalKms::from_key_file(path),
                    None if std::env::var_os(ROOT_KEY_ENV).is_some() => {
                        LocalKms::from_env(ROOT_KEY_ENV)
                    }
                    None => {
                        return Err(Failure::new(
                            Kind::Keys,
                            "no root key given",
                            format!(
                                "pass --root-key-file PATH (or LEAKLESS_ROOT_KEY_FILE), or set \
                                 {ROOT_KEY_ENV} to 64 hex digits; for a root key in a KMS, \
                                 HSM or TPM pass --kms (or LEAKLESS_KMS)"
                            ),
                        ));
                    }
                };
                Root::Local(Arc::new(kms.map_err(fail)?))
            }
            Backend::Pkcs11 => {
                let config = self.pkcs11_config(&self.pkcs11_key_label)?;
                Root::Pkcs11(Arc::new(Pkcs11Kms::open(&config).map_err(fail)?))
            }
            Backend::Aws => {
                let key = self.aws_key_id.as_deref().ok_or_else(|| {
                    missing(
                        b,
                        "the KMS key",
                        "--aws-key-id KEY (a key id, ARN or alias/NAME)",
                        "LEAKLESS_AWS_KMS_KEY_ID",
                    )
                })?;
                Root::Aws(Arc::new(self.aws_connect(key)?))
            }
            Backend::Vault => {
                let (config, token) = self.vault_config()?;
                Root::Vault(Arc::new(
                    VaultTransitKms::connect(config, token).map_err(fail)?,
                ))
            }
            Backend::Tpm => {
                let path = self.tpm_sealed_file.as_ref().ok_or_else(|| {
                    missing(
                        b,
                        "the sealed root key file",
                        "--tpm-sealed-file PATH",
                        "LEAKLESS_TPM_SEALED_FILE",
                    )
                })?;
                let config = self.tpm_config(path.clone())?;
                Root::Tpm(Arc::new(TpmKms::open(&config).map_err(fail)?))
            }
        })
    }

    /// The PKCS#11 settings for the key labelled `key_label`.
    ///
    /// # Errors
    /// [`Kind::Keys`] naming the first missing setting.
    pub fn pkcs11_config(&self, key_label: &str) -> Result<Pkcs11Config> {
        let b = Backend::Pkcs11;
        let module = self.pkcs11_module.clone().ok_or_else(|| {
            missing(
                b,
                "the PKCS#11 module",
                "--pkcs11-module PATH",
                "LEAKLESS_PKCS11_MODULE",
            )
        })?;
        let token_label = self.pkcs11_token.clone().ok_or_else(|| {
            missing(
                b,
                "the token label",
                "--pkcs11-token LABEL",
                "LEAKLESS_PKCS11_TOKEN",
            )
        })?;
        let pin = match &self.pkcs11_pin_file {
            Some(path) => PinSource::File(path.clone()),
            None if std::env::var_os(PKCS11_PIN_ENV).is_some() => {
                PinSource::Env(PKCS11_PIN_ENV.to_owned())
            }
            None => {
                return Err(missing(
                    b,
                    "the token's user PIN",
                    "--pkcs11-pin-file PATH (a 0600 file)",
                    "LEAKLESS_PKCS11_PIN_FILE, or LEAKLESS_PKCS11_PIN to the PIN itself",
                ));
            }
        };
        Ok(Pkcs11Config {
            module,
            token_label,
            key_label: key_label.to_owned(),
            pin,
        })
    }

    /// Connects to the AWS KMS key `key_id` with this run's region, endpoint and the standard
    /// credential chain.
    ///
    /// # Errors
    /// [`Kind::Keys`] when KMS refuses or cannot be reached.
    pub fn aws_connect(&self, key_id: &str) -> Result<AwsKms> {
        let config = AwsKmsConfig {
            region: self.aws_region.clone(),
            endpoint: self.aws_endpoint.clone(),
            ..AwsKmsConfig::new(key_id)
        };
        AwsKms::connect(config).map_err(|e| open_failed(Backend::Aws, &e))
    }

    /// The Vault settings and token.
    ///
    /// # Errors
    /// [`Kind::Keys`] naming the first missing setting, or a token file the runtime refuses.
    pub fn vault_config(&self) -> Result<(VaultConfig, VaultToken)> {
        let b = Backend::Vault;
        let addr = self.vault_addr.clone().ok_or_else(|| {
            missing(
                b,
                "the server address",
                "--vault-addr https://HOST:8200",
                VAULT_ADDR_ENV,
            )
        })?;
        let key = self.vault_key.clone().ok_or_else(|| {
            missing(
                b,
                "the Transit key's name",
                "--vault-key NAME",
                "LEAKLESS_VAULT_KEY",
            )
        })?;
        let token = match &self.vault_token_file {
            Some(path) => VaultToken::from_file(path),
            None if std::env::var_os(VAULT_TOKEN_ENV).is_some() => VaultToken::from_env(),
            None => {
                return Err(missing(
                    b,
                    "a token",
                    "--vault-token-file PATH (a 0600 file)",
                    &format!("{VAULT_TOKEN_FILE_ENV}, or {VAULT_TOKEN_ENV} to the token itself"),
                ));
            }
        }
        .map_err(|e| open_failed(b, &e))?;
        let config = VaultConfig {
            mount: self.vault_mount.clone(),
            namespace: self.vault_namespace.clone(),
            ca_cert: self.vault_cacert.clone(),
            ..VaultConfig::new(addr, key)
        };
        Ok((config, token))
    }

    /// The TPM settings for the sealed file `sealed`.
    ///
    /// # Errors
    /// [`Kind::Keys`] when the TCTI is missing.
    pub fn tpm_config(&self, sealed: PathBuf) -> Result<TpmConfig> {
        let tcti = self.tpm_tcti.clone().ok_or_else(|| {
            missing(
                Backend::Tpm,
                "the TPM's TCTI",
                "--tpm-tcti device:/dev/tpmrm0 (or swtpm:host=H,port=P)",
                "LEAKLESS_TPM_TCTI",
            )
        })?;
        Ok(TpmConfig::new(tcti, sealed))
    }
}
