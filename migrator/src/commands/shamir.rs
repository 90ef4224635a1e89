//! `keys split` and `keys unseal`: Shamir M-of-N custody of the local root key (see
//! `leakless::kms::shamir` and the "Shamir custody" section of `docs/kms.md`).
//!
//! * `keys split --threshold 3 --shares 5 --out-dir DIR` reads the root key (from
//!   `--root-key-file` or `LEAKLESS_ROOT_KEY`), splits it and writes one `0600` share file per
//!   custodian into DIR; with `--token LABEL=PIN_FILE` (once per share) it stores the shares on
//!   custodians' PKCS#11 tokens instead.
//! * `keys unseal --share F1 F2 F3` (or `--token ...`) rebuilds the root key in memory, checks
//!   it against the key store (its id must be the one the KEK records are wrapped under, and it
//!   must unwrap one of them), reports, and zeroizes it. `--out-key-file PATH` restores a key
//!   file for disaster recovery.
//!
//! Neither prints key material: only key ids, share indices, paths and token labels.

use std::path::{Path, PathBuf};

use leakless::kms::shamir::{self, Share};
use leakless::kms::{KekBinding, Kms, LocalKms, PinSource, Pkcs11Token, ROOT_KEY_ENV};
use leakless::secret::RootKey;
use serde::Serialize;

use crate::env::{Env, out, out_json};
use crate::error::{Failure, Kind, Result};
use crate::kms::Backend;

/// `keys split`.
#[derive(Debug, clap::Args)]
pub struct SplitArgs {
    /// How many shares rebuild the key (M, at least 2).
    #[arg(long)]
    pub threshold: u8,
    /// How many shares to make (N, from M to 255).
    #[arg(long)]
    pub shares: u8,
    /// Write the shares as mode-0600 files into this directory (made with mode 0700).
    #[arg(long, required_unless_present = "tokens", conflicts_with = "tokens")]
    pub out_dir: Option<PathBuf>,
    /// Store the shares on custodians' PKCS#11 tokens instead, one per token, in order:
    /// LABEL=PIN_FILE, given once per share.
    #[arg(long = "token", value_name = "LABEL=PIN_FILE")]
    pub tokens: Vec<String>,
}

/// `keys unseal`.
#[derive(Debug, clap::Args)]
pub struct UnsealArgs {
    /// Share files (at least the threshold).
    #[arg(long = "share", value_name = "FILE", num_args = 1..)]
    pub shares: Vec<PathBuf>,
    /// Custodian tokens holding shares: LABEL=PIN_FILE, once per token.
    #[arg(long = "token", value_name = "LABEL=PIN_FILE")]
    pub tokens: Vec<String>,
    /// Use only token shares of this split (its set id, or a prefix of it, as `keys split`
    /// printed). Needed when a token holds shares of several splits.
    #[arg(long)]
    pub set: Option<String>,
    /// Also write the rebuilt key to this new file (mode 0600): disaster recovery only, the
    /// file is a full copy of the key.
    #[arg(long)]
    pub out_key_file: Option<PathBuf>,
}

fn read_root(env: &Env) -> Result<RootKey> {
    if env.global.kms.kms != Backend::Local {
        return Err(Failure::new(
            Kind::Usage,
            format!(
                "Shamir custody splits a local root key, and this run uses --kms {}",
                env.global.kms.kms.name()
            ),
            "a root key in a KMS, HSM or TPM never leaves it and cannot be split; use the \
             backend's own custody (key policies, HSM quorum), or run with --kms local",
        ));
    }
    match &env.global.kms.root_key_file {
        Some(path) => Ok(shamir::read_root_key_file(path)?),
        None if std::env::var_os(ROOT_KEY_ENV).is_some() => {
            Ok(shamir::read_root_key_env(ROOT_KEY_ENV)?)
        }
        None => Err(Failure::new(
            Kind::Usage,
            "no root key to split",
            format!("pass --root-key-file PATH (or LEAKLESS_ROOT_KEY_FILE), or set {ROOT_KEY_ENV}"),
        )),
    }
}

fn open_tokens(module: Option<&Path>, specs: &[String]) -> Result<Vec<Pkcs11Token>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let module = module.ok_or_else(|| {
        Failure::new(
            Kind::Usage,
            "--token needs the PKCS#11 module",
            "pass --pkcs11-module PATH (or LEAKLESS_PKCS11_MODULE)",
        )
    })?;
    specs
        .iter()
        .map(|spec| {
            let (label, pin) = spec.split_once('=').ok_or_else(|| {
                Failure::new(
                    Kind::Usage,
                    format!("--token {spec:?} is not LABEL=PIN_FILE"),
                    "give the token label and the file holding its user PIN, like \
                     custodian-1=/run/pins/custodian-1",
                )
            })?;
            Ok(Pkcs11Token::open(
                module,
                label,
                &PinSource::File(PathBuf::from(pin)),
            )?)
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct SplitJson {
    key_id: String,
    set: String,
    threshold: u8,
    shares: Vec<ShareJson>,
}

#[derive(Debug, Serialize)]
struct ShareJson {
    index: u8,
    location: String,
}

/// Runs `keys split`.
///
/// # Errors
/// [`Kind::Usage`] for bad parameters or a missing root key, [`Kind::Keys`] when a share
/// cannot be written.
pub fn split(env: &Env, args: &SplitArgs) -> Result<()> {
    if !args.tokens.is_empty() && args.tokens.len() != usize::from(args.shares) {
        return Err(Failure::new(
            Kind::Usage,
            format!(
                "--shares {} but {} --token given",
                args.shares,
                args.tokens.len()
            ),
            "give one --token LABEL=PIN_FILE per share: one custodian token each",
        ));
    }
    let root = read_root(env)?;
    let shares = shamir::split(&root, args.threshold, args.shares).map_err(Failure::from)?;
    drop(root);
    let locations: Vec<String> = if let Some(dir) = &args.out_dir {
        shamir::write_shares(dir, &shares)
            .map_err(Failure::from)?
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    } else {
        let tokens = open_tokens(env.global.kms.pkcs11_module.as_deref(), &args.tokens)?;
        let mut locations = Vec::new();
        for (share, token) in shares.iter().zip(&tokens) {
            let label = share.store_on_token(token).map_err(Failure::from)?;
            locations.push(format!("token {}: {label}", token.label()));
        }
        locations
    };
    let first = shares.first().ok_or_else(|| {
        Failure::new(
            Kind::Usage,
            "no shares were made",
            "pass --shares 2 or more",
        )
    })?;
    if env.global.json {
        let report = SplitJson {
            key_id: first.key_id().to_owned(),
            set: first.set_id(),
            threshold: first.threshold(),
            shares: shares
                .iter()
                .zip(&locations)
                .map(|(s, l)| ShareJson {
                    index: s.index(),
                    location: l.clone(),
                })
                .collect(),
        };
        return out_json(&report);
    }
    out(format!(
        "split root key {} into {} shares; any {} rebuild it (set {})",
        first.key_id(),
        shares.len(),
        first.threshold(),
        first.set_id()
    ));
    for (s, l) in shares.iter().zip(&locations) {
        out(format!("  share {} -> {l}", s.index()));
    }
    out(
        "hand each share to its own custodian; if the shares are to be the only copy, remove \
         the root key file afterwards (and check `keys unseal` first)",
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct UnsealJson {
    key_id: String,
    shares_used: usize,
    records_under_key: usize,
    records_with_material: usize,
    verified_by_unwrap: String,
    key_file: Option<String>,
}

/// Runs `keys unseal`.
///
/// # Errors
/// [`Kind::Keys`] for a share problem (below threshold, corrupted, foreign, ...),
/// [`Kind::Refused`] when the rebuilt key is not the key store's root key.
pub fn unseal(env: &Env, args: &UnsealArgs) -> Result<()> {
    if args.shares.is_empty() && args.tokens.is_empty() {
        return Err(Failure::new(
            Kind::Usage,
            "no shares given",
            "pass --share FILE for each share file (or --token LABEL=PIN_FILE per token)",
        ));
    }
    let mut shares = Vec::new();
    for path in &args.shares {
        shares.push(Share::read_file(path).map_err(Failure::from)?);
    }
    for token in open_tokens(env.global.kms.pkcs11_module.as_deref(), &args.tokens)? {
        let mut found = Share::load_from_token(&token).map_err(Failure::from)?;
        if let Some(set) = &args.set {
            found.retain(|s| s.set_id().starts_with(set.as_str()));
        }
        match found.len() {
            0 => {
                return Err(Failure::new(
                    Kind::Keys,
                    format!(
                        "token {} holds no leakless share{}",
                        token.label(),
                        args.set
                            .as_ref()
                            .map_or_else(String::new, |s| format!(" of set {s}"))
                    ),
                    "check the token label and --set; shares are stored by `keys split --token`",
                ));
            }
            1 => shares.extend(found),
            _ => {
                let sets: Vec<String> = found.iter().map(Share::set_id).collect();
                return Err(Failure::new(
                    Kind::Usage,
                    format!(
                        "token {} holds {} shares (sets {})",
                        token.label(),
                        found.len(),
                        sets.join(", ")
                    ),
                    "pick one split with --set SET_ID",
                ));
            }
        }
    }
    let root = shamir::combine(&shares).map_err(Failure::from)?;
    let kms = LocalKms::from_root_key(root.clone());
    let key_id = kms.root_key_id().to_owned();

    // Check it against the key store: the records' root id, and one real unwrap.
    let store = env.key_store()?;
    let mut with_material = 0usize;
    let mut under_key = 0usize;
    let mut others = Vec::new();
    let mut verified = None;
    // The library's own records (the integrity key) last: the sample unwrap names a scope the
    // operator knows.
    let mut scopes = store.scopes()?;
    scopes.sort_by_key(|s| {
        s.as_str()
            .starts_with(leakless::keyring::RESERVED_SCOPE_PREFIX)
    });
    for scope in scopes {
        for record in store.list(&scope)? {
            let Some(wrapped) = &record.wrapped else {
                continue;
            };
            with_material += 1;
            if wrapped.root_key_id != key_id {
                if !others.contains(&wrapped.root_key_id) {
                    others.push(wrapped.root_key_id.clone());
                }
                continue;
            }
            under_key += 1;
            if verified.is_none() {
                kms.unwrap_kek(
                    wrapped,
                    &KekBinding {
                        scope: &record.scope,
                        version: record.version,
                    },
                )?;
                verified = Some(format!("{} {}", record.scope, record.version));
            }
        }
    }
    let Some(verified) = verified else {
        return Err(Failure::new(
            Kind::Refused,
            if with_material == 0 {
                format!(
                    "rebuilt root key {key_id}, but the key store holds no wrapped KEK to check \
                     it against"
                )
            } else {
                format!(
                    "rebuilt root key {key_id}, but the key store's KEK records are wrapped \
                     under {}",
                    others.join(", ")
                )
            },
            "check --key-store; shares of another deployment's key do not fit this one",
        ));
    };
    let key_file = match &args.out_key_file {
        Some(path) => {
            shamir::write_root_key_file(path, &root)?;
            Some(path.display().to_string())
        }
        None => None,
    };
    drop(kms);
    drop(root);
    if env.global.json {
        return out_json(&UnsealJson {
            key_id,
            shares_used: shares.len(),
            records_under_key: under_key,
            records_with_material: with_material,
            verified_by_unwrap: verified,
            key_file,
        });
    }
    out(format!(
        "unsealed root key {key_id} from {} shares: it unwraps {verified}, and {under_key} of \
         {with_material} KEK records are under it",
        shares.len()
    ));
    match key_file {
        Some(path) => out(format!(
            "wrote it to {path} (mode 0600): a full copy of the key, remove it once done"
        )),
        None => out("the key was held in memory only and is now erased"),
    }
    Ok(())
}
