//! A key store in one JSON file, for single-host use.
//!
//! Every change takes an exclusive lock on a sidecar `<file>.lock`, reads the file, checks the
//! change's preconditions, writes a fresh temporary file beside it
//! (`.<file>.<pid>.<random>.tmp`, created exclusively with mode `0600` and removed if the write
//! fails), syncs it and renames it over the original, so a crash leaves either the old or the
//! new store, never half of one. Every read checks the record invariants
//! (`StoreState::check_invariants`) and refuses a file that breaks one. Several processes on
//! the same host may share the file. The file holds only wrapped KEKs and the audit log; it is
//! created with mode `0600` all the same.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::key::{
    AuditRecord, Auth, KekRecord, KekState, KekVersion, KeyAction, KeyScope, StoreChange, UnixTime,
    WrappedKek,
};
use crate::store::{KeyStore, StoreState, paired};

const STORE: &str = "file";
const FORMAT: &str = "leakless-keystore-v1";

/// A key store in a JSON file. `Debug` prints its path only.
pub struct FileKeyStore {
    path: PathBuf,
    lock_path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct FileDoc {
    format: String,
    records: Vec<RecordDto>,
    audit: Vec<AuditDto>,
}

#[derive(Serialize, Deserialize)]
struct RecordDto {
    scope: String,
    version: u32,
    state: String,
    grace_until: Option<i64>,
    root_key_id: Option<String>,
    wrapped_kek_hex: Option<String>,
    created_at: i64,
    updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deactivated_at: Option<i64>,
    #[serde(default = "legacy_recheck")]
    recheck_secs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag_hex: Option<String>,
}

/// The cache window of records written before the field existed: the default cache age.
fn legacy_recheck() -> u32 {
    crate::key::LEGACY_RECHECK_SECS
}

#[derive(Serialize, Deserialize)]
struct AuditDto {
    at: i64,
    actor: String,
    reason: String,
    action: String,
    scope: String,
    version: u32,
    from_state: Option<String>,
    from_grace_until: Option<i64>,
    to_state: String,
    to_grace_until: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag_hex: Option<String>,
}

fn auth_from(
    seq: Option<u64>,
    tag_hex: Option<String>,
    record: &str,
) -> Result<Option<Auth>, Error> {
    let Some((seq, h)) = paired(seq, tag_hex, || unpaired(record, "seq, tag_hex"))? else {
        return Ok(None);
    };
    let mut tag = [0u8; 32];
    hex::decode_to_slice(h, &mut tag).map_err(|e| corrupt(record, "tag_hex", e.to_string()))?;
    Ok(Some(Auth { seq, tag }))
}

/// Two fields of a stored record or audit entry of which only one is present.
fn unpaired(record: &str, fields: &'static str) -> Error {
    corrupt(
        record,
        fields,
        "must both be present or both absent".to_owned(),
    )
}

/// A stored record or audit entry that cannot be read back.
fn corrupt(record: &str, field: &'static str, problem: String) -> Error {
    Error::KeyStoreCorrupt {
        store: STORE,
        record: record.to_owned(),
        field,
        problem,
    }
}

fn stored_scope(scope: &str, record: &str) -> Result<KeyScope, Error> {
    KeyScope::new(scope).map_err(|e| match e {
        Error::InvalidInput { problem, .. } => corrupt(record, "scope", problem),
        other => other,
    })
}

fn stored_version(version: u32, record: &str) -> Result<KekVersion, Error> {
    KekVersion::new(version)
        .map_err(|_| corrupt(record, "version", format!("{version} is not a KEK version")))
}

fn stored_state(
    state: &str,
    grace_until: Option<i64>,
    record: &str,
    field: &'static str,
) -> Result<KekState, Error> {
    KekState::from_parts(state, grace_until)
        .map_err(|_| corrupt(record, field, super::state_problem(state, grace_until)))
}

fn err(operation: &'static str, detail: impl std::fmt::Display) -> Error {
    Error::KeyStore {
        store: STORE,
        operation,
        detail: detail.to_string(),
    }
}

impl FileKeyStore {
    /// Opens the store at `path`, creating an empty one (mode `0600`) if the file is missing.
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the file cannot be created or is not a leakless key store.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let mut lock_name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        lock_name.push(".lock");
        let lock_path = path.with_file_name(lock_name);
        let store = Self { path, lock_path };
        let _guard = store.lock()?;
        if !store.path.exists() {
            store.write(&StoreState::default())?;
        } else {
            store.read()?;
        }
        Ok(store)
    }

    /// The store file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh temporary file name beside the store: `.<name>.<pid>.<random>.tmp`. Unlike
    /// `<store>.tmp` it can be neither the store itself (a store named `keys.tmp`) nor the
    /// temporary file of another store in the same folder (`keys.json` and `keys.tmp`).
    fn temp_path(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    fn lock(&self) -> Result<File, Error> {
        let file = private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock_path)
            .map_err(|e| err("lock", format!("{}: {e}", self.lock_path.display())))?;
        file.lock()
            .map_err(|e| err("lock", format!("{}: {e}", self.lock_path.display())))?;
        // The lock is released when the returned file is closed.
        Ok(file)
    }

    fn read(&self) -> Result<StoreState, Error> {
        let text = fs::read_to_string(&self.path)
            .map_err(|e| err("read", format!("{}: {e}", self.path.display())))?;
        let doc: FileDoc = serde_json::from_str(&text).map_err(|e| {
            err(
                "read",
                format!("{}: not a key store: {e}", self.path.display()),
            )
        })?;
        if doc.format != FORMAT {
            return Err(err(
                "read",
                format!("{}: unknown format {:?}", self.path.display(), doc.format),
            ));
        }
        let mut state = StoreState::default();
        for r in doc.records {
            let rec = record_from_dto(r)?;
            let (scope, version) = (rec.scope.clone(), rec.version);
            if state
                .records
                .insert((scope.clone(), version), rec)
                .is_some()
            {
                return Err(err(
                    "read",
                    format!("{}: {scope} {version} is stored twice", self.path.display()),
                ));
            }
        }
        for a in doc.audit {
            state.audit.push(audit_from_dto(a)?);
        }
        state.check_invariants(STORE, "read")?;
        Ok(state)
    }

    fn write(&self, state: &StoreState) -> Result<(), Error> {
        let doc = FileDoc {
            format: FORMAT.into(),
            records: state.records.values().map(record_to_dto).collect(),
            audit: state.audit.iter().map(audit_to_dto).collect(),
        };
        let text = serde_json::to_string_pretty(&doc).map_err(|e| err("write", e))?;
        let tmp = self.temp_path();
        // `create_new`: never write through a file (or link) that is already there.
        let mut file = private_options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| err("write", format!("{}: {e}", tmp.display())))?;
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| err("write", format!("{}: {e}", tmp.display())))
            .and_then(|()| {
                fs::rename(&tmp, &self.path)
                    .map_err(|e| err("write", format!("{}: {e}", self.path.display())))
            });
        if let Err(e) = written {
            drop(file);
            // Best effort: the temporary file is ours and holds nothing the store does not.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename durable; a failure here only weakens crash durability.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

fn private_options() -> OpenOptions {
    let mut opts = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts
}

fn record_to_dto(r: &KekRecord) -> RecordDto {
    RecordDto {
        scope: r.scope.to_string(),
        version: r.version.get(),
        state: r.state.name().into(),
        grace_until: r.state.grace_until().map(|t| t.0),
        root_key_id: r.wrapped.as_ref().map(|w| w.root_key_id.clone()),
        wrapped_kek_hex: r.wrapped.as_ref().map(|w| hex::encode(&w.ciphertext)),
        created_at: r.created_at.0,
        updated_at: r.updated_at.0,
        deactivated_at: r.deactivated_at.map(|t| t.0),
        recheck_secs: r.recheck_secs,
        seq: r.auth.map(|a| a.seq),
        tag_hex: r.auth.map(|a| hex::encode(a.tag)),
    }
}

fn record_from_dto(r: RecordDto) -> Result<KekRecord, Error> {
    let record = format!("key record {} v{}", r.scope.escape_debug(), r.version);
    let record = record.as_str();
    let wrapped = match paired(r.root_key_id, r.wrapped_kek_hex, || {
        unpaired(record, "root_key_id, wrapped_kek_hex")
    })? {
        Some((root_key_id, h)) => Some(WrappedKek {
            root_key_id,
            ciphertext: hex::decode(h)
                .map_err(|e| corrupt(record, "wrapped_kek_hex", e.to_string()))?,
        }),
        None => None,
    };
    Ok(KekRecord {
        scope: stored_scope(&r.scope, record)?,
        version: stored_version(r.version, record)?,
        state: stored_state(&r.state, r.grace_until, record, "state")?,
        wrapped,
        created_at: UnixTime(r.created_at),
        updated_at: UnixTime(r.updated_at),
        deactivated_at: r.deactivated_at.map(UnixTime),
        recheck_secs: r.recheck_secs,
        auth: auth_from(r.seq, r.tag_hex, record)?,
    })
}

fn audit_to_dto(a: &AuditRecord) -> AuditDto {
    AuditDto {
        at: a.at.0,
        actor: a.actor.clone(),
        reason: a.reason.clone(),
        action: a.action.name().into(),
        scope: a.scope.to_string(),
        version: a.version.get(),
        from_state: a.from.map(|s| s.name().into()),
        from_grace_until: a.from.and_then(|s| s.grace_until()).map(|t| t.0),
        to_state: a.to.name().into(),
        to_grace_until: a.to.grace_until().map(|t| t.0),
        seq: a.auth.map(|x| x.seq),
        tag_hex: a.auth.map(|x| hex::encode(x.tag)),
    }
}

fn audit_from_dto(a: AuditDto) -> Result<AuditRecord, Error> {
    let record = format!("audit entry of {} v{}", a.scope.escape_debug(), a.version);
    let record = record.as_str();
    Ok(AuditRecord {
        at: UnixTime(a.at),
        actor: a.actor,
        reason: a.reason,
        action: KeyAction::from_name(&a.action)
            .ok_or_else(|| corrupt(record, "action", format!("unknown action {:?}", a.action)))?,
        scope: stored_scope(&a.scope, record)?,
        version: stored_version(a.version, record)?,
        from: a
            .from_state
            .map(|s| stored_state(&s, a.from_grace_until, record, "from_state"))
            .transpose()?,
        to: stored_state(&a.to_state, a.to_grace_until, record, "to_state")?,
        auth: auth_from(a.seq, a.tag_hex, record)?,
    })
}

impl KeyStore for FileKeyStore {
    fn name(&self) -> &'static str {
        STORE
    }

    fn list(&self, scope: &KeyScope) -> Result<Vec<KekRecord>, Error> {
        Ok(self.read()?.list(scope))
    }

    fn get(&self, scope: &KeyScope, version: KekVersion) -> Result<Option<KekRecord>, Error> {
        Ok(self.read()?.records.remove(&(scope.clone(), version)))
    }

    fn scopes(&self) -> Result<Vec<KeyScope>, Error> {
        Ok(self.read()?.scopes())
    }

    fn apply(&self, change: StoreChange) -> Result<(), Error> {
        let _guard = self.lock()?;
        let mut state = self.read()?;
        state.apply(change)?;
        state.check_invariants(STORE, "apply")?;
        self.write(&state)
    }

    fn audit_log(&self, scope: Option<&KeyScope>) -> Result<Vec<AuditRecord>, Error> {
        Ok(self.read()?.audit_log(scope))
    }
}

impl std::fmt::Debug for FileKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeyStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}
