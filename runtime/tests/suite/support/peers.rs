//! The KMS peers the tests talk to, configured from the variables `scripts/services/NAME start`
//! prints (`scripts/test` exports them): OpenBao (Vault Transit), moto (AWS KMS), SoftHSM2
//! (PKCS#11) and swtpm (TPM 2.0). A missing variable fails the test, saying how to start the
//! peer; nothing is skipped.

use leakless::KekVersion;
use leakless::key::KeyScope;
use leakless::kms::KekBinding;

/// The binding of KEK version `n` of `scope`.
pub fn binding(scope: &KeyScope, n: u32) -> KekBinding<'_> {
    KekBinding {
        scope,
        version: KekVersion::new(n).unwrap(),
    }
}

/// `prefix-` and 16 random hex digits: a key, alias or label name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// The value of `var`, set by `scripts/services/{service} start`; fails the test naming it.
pub fn service_env(var: &str, service: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: start {service} with `scripts/services/{service} start DIR \
             --owner-pid $$` and export the lines it prints (scripts/test does this)"
        )
    })
}

/// OpenBao (Vault Transit).
#[cfg(feature = "vault")]
pub mod vault {
    use leakless::kms::{VaultConfig, VaultToken};

    use super::service_env;

    /// The config of Transit key `name` on the shared server (address and CA file from the
    /// environment).
    pub fn config(name: &str) -> VaultConfig {
        service_env("LEAKLESS_VAULT_ADDR", "openbao");
        VaultConfig::from_env(name).unwrap()
    }

    /// The server's token, from `LEAKLESS_VAULT_TOKEN_FILE` (or `LEAKLESS_VAULT_TOKEN`).
    pub fn token() -> VaultToken {
        if std::env::var_os("LEAKLESS_VAULT_TOKEN").is_none() {
            service_env("LEAKLESS_VAULT_TOKEN_FILE", "openbao");
        }
        VaultToken::from_env().unwrap()
    }

    /// The token's text, to check it never shows up in output.
    pub fn token_text() -> String {
        let path = service_env("LEAKLESS_VAULT_TOKEN_FILE", "openbao");
        std::fs::read_to_string(path).unwrap().trim().to_owned()
    }
}

/// moto (AWS KMS).
#[cfg(feature = "aws-kms")]
pub mod aws {
    use leakless::kms::{AwsCredentials, AwsKmsConfig};
    use zeroize::Zeroizing;

    use super::service_env;

    /// A dummy secret for moto, made at run time once per process (moto accepts any
    /// credentials).
    pub fn dummy_secret() -> String {
        static SECRET: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            )
        });
        SECRET.clone()
    }

    /// The config of KMS key `key_id` (an id, ARN or alias; empty to create one) on the
    /// shared moto server, with static dummy credentials.
    pub fn config(key_id: &str) -> AwsKmsConfig {
        AwsKmsConfig {
            region: Some(service_env("LEAKLESS_AWS_REGION", "moto")),
            endpoint: Some(service_env("LEAKLESS_AWS_KMS_ENDPOINT", "moto")),
            credentials: AwsCredentials::Static {
                access_key_id: "AKIALEAKLESSTEST".into(),
                secret_access_key: Zeroizing::new(dummy_secret()),
                session_token: None,
            },
            ..AwsKmsConfig::new(key_id)
        }
    }
}

/// SoftHSM2 (PKCS#11): the main token `LEAKLESS_PKCS11_TOKEN` and five custodian tokens.
#[cfg(feature = "pkcs11")]
pub mod pkcs11 {
    use std::path::PathBuf;

    use leakless::kms::{PinSource, Pkcs11Config};

    use super::service_env;

    /// The value of a SoftHSM2 variable.
    pub fn env(var: &str) -> String {
        service_env(var, "softhsm")
    }

    /// The PKCS#11 module (SoftHSM2 reads `SOFTHSM2_CONF` itself: without it, it would use
    /// the system's token folder, so it must be set too).
    pub fn module() -> PathBuf {
        env("SOFTHSM2_CONF");
        PathBuf::from(env("LEAKLESS_PKCS11_MODULE"))
    }

    /// The main token's PIN file.
    pub fn pin_file() -> PathBuf {
        PathBuf::from(env("LEAKLESS_PKCS11_PIN_FILE"))
    }

    /// The config of root key `key_label` on the main token.
    pub fn config(key_label: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: module(),
            token_label: env("LEAKLESS_PKCS11_TOKEN"),
            key_label: key_label.to_owned(),
            pin: PinSource::File(pin_file()),
        }
    }

    /// The custodian tokens: (label, PIN file) each.
    pub fn custodians() -> Vec<(String, PathBuf)> {
        env("LEAKLESS_PKCS11_CUSTODIANS")
            .split(',')
            .map(|entry| {
                let (label, pin) = entry.split_once(':').unwrap();
                (label.to_owned(), PathBuf::from(pin))
            })
            .collect()
    }

    /// Custodian token `n` (from 0): (label, PIN file).
    pub fn custodian(n: usize) -> (String, PathBuf) {
        custodians()
            .into_iter()
            .nth(n)
            .unwrap_or_else(|| panic!("LEAKLESS_PKCS11_CUSTODIANS has no entry {n}"))
    }
}

/// swtpm (TPM 2.0).
#[cfg(feature = "tpm")]
pub mod tpm {
    /// The variable that names the shared TPM.
    pub const TCTI_ENV: &str = "LEAKLESS_TPM_TCTI";

    /// The TCTI of the shared software TPM.
    pub fn tcti() -> String {
        super::service_env(TCTI_ENV, "swtpm")
    }
}
