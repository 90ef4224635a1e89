//! Key stores written before records were authenticated: the tables as that version created
//! them (no `deactivated_at`, `recheck_secs`, `seq` or `tag` columns) and a record and audit row
//! as it wrote them, on SQLite, PostgreSQL and MariaDB. `SqlKeyStore::create_schema` adds the
//! new columns in place; a key ring then refuses the unauthenticated record until
//! `KeyRing::upgrade_store` (the `leakless-migrate keys upgrade` command) authenticates it once;
//! afterwards its KEK seals and opens again, the store verifies, and the count of
//! earlier audit entries is committed so that none can be slipped in later.

use std::sync::Arc;

use diesel::prelude::*;
use leakless::kms::{KekBinding, Kms, LocalKms};
use leakless::secret::{Kek, RootKey};
use leakless::store::sql::SqlKeyStore;
use leakless::{AuditInfo, Error, FieldContext, FieldPolicy, KekVersion, KeyRing, KeyScope, RowId};

use crate::support::services::TestDb;

/// The tables as the previous release created them (from its `schema.rs`), per backend.
const OLD_SQLITE: &str = "
CREATE TABLE leakless_kek (
    scope TEXT NOT NULL, version BIGINT NOT NULL, state TEXT NOT NULL,
    grace_until BIGINT NULL, root_key_id TEXT NULL, wrapped_kek BLOB NULL,
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (scope, version));
CREATE TABLE leakless_key_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at BIGINT NOT NULL, actor TEXT NOT NULL,
    reason TEXT NOT NULL, action TEXT NOT NULL, scope TEXT NOT NULL, version BIGINT NOT NULL,
    from_state TEXT NULL, from_grace_until BIGINT NULL, to_state TEXT NOT NULL,
    to_grace_until BIGINT NULL);";

const OLD_POSTGRES: &str = "
CREATE TABLE leakless_kek (
    scope TEXT COLLATE \"C\" NOT NULL, version BIGINT NOT NULL, state TEXT NOT NULL,
    grace_until BIGINT NULL, root_key_id TEXT NULL, wrapped_kek BYTEA NULL,
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (scope, version));
CREATE TABLE leakless_key_audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at BIGINT NOT NULL,
    actor TEXT NOT NULL, reason TEXT NOT NULL, action TEXT NOT NULL,
    scope TEXT COLLATE \"C\" NOT NULL, version BIGINT NOT NULL, from_state TEXT NULL,
    from_grace_until BIGINT NULL, to_state TEXT NOT NULL, to_grace_until BIGINT NULL);";

const OLD_MYSQL: &str = "
CREATE TABLE leakless_kek (
    scope VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, version BIGINT NOT NULL,
    state VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, grace_until BIGINT NULL,
    root_key_id TEXT NULL, wrapped_kek BLOB NULL, created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL, PRIMARY KEY (scope, version)) ENGINE = InnoDB;
CREATE TABLE leakless_key_audit (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL,
    reason TEXT NOT NULL, action VARCHAR(32) NOT NULL, scope VARCHAR(64) NOT NULL,
    version BIGINT NOT NULL, from_state VARCHAR(16) NULL, from_grace_until BIGINT NULL,
    to_state VARCHAR(16) NOT NULL, to_grace_until BIGINT NULL) ENGINE = InnoDB;";

/// The rows the previous release wrote for `create_scope("patients")`: an active v1 record
/// wrapped under `kms`, and its audit entry. `hex` renders a blob literal for the backend.
fn legacy_rows(kms: &LocalKms, kek: &Kek, hex: impl Fn(&[u8]) -> String) -> String {
    let scope = KeyScope::new("patients").unwrap();
    let wrapped = kms
        .wrap_kek(
            kek,
            &KekBinding {
                scope: &scope,
                version: KekVersion::FIRST,
            },
        )
        .unwrap();
    format!(
        "INSERT INTO leakless_kek (scope, version, state, grace_until, root_key_id, wrapped_kek, \
         created_at, updated_at) VALUES ('patients', 1, 'active', NULL, '{}', {}, 1700000000, \
         1700000000);
         INSERT INTO leakless_key_audit (at, actor, reason, action, scope, version, from_state, \
         from_grace_until, to_state, to_grace_until) VALUES (1700000000, 'ops', 'setup', \
         'create_scope', 'patients', 1, NULL, NULL, 'active', NULL);",
        wrapped.root_key_id,
        hex(&wrapped.ciphertext)
    )
}

#[test]
fn sqlite_store_from_the_previous_release_upgrades_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let path_text = path.to_str().unwrap();
    upgrade_journey::<SqliteConnection>(
        &format!("sqlite://{path_text}"),
        path_text,
        OLD_SQLITE,
        |b| format!("X'{}'", hex::encode(b)),
    );
}

#[test]
fn postgres_store_from_the_previous_release_upgrades_in_place() {
    let db = TestDb::postgres();
    upgrade_journey::<PgConnection>(db.url(), db.url(), OLD_POSTGRES, |b| {
        format!("'\\x{}'::bytea", hex::encode(b))
    });
}

#[test]
fn mariadb_store_from_the_previous_release_upgrades_in_place() {
    let db = TestDb::mysql();
    upgrade_journey::<MysqlConnection>(db.url(), db.url(), OLD_MYSQL, |b| {
        format!("X'{}'", hex::encode(b))
    });
}

/// The journey on one backend: the old tables (`ddl`) and rows written over a diesel
/// connection of type `C` to `conn_url` (blobs in the backend's literal syntax, by
/// `hex_literal`), then the schema upgrade, the refusal, `upgrade_store`, and a working,
/// verifying store at `store_url`.
fn upgrade_journey<C: Connection>(
    store_url: &str,
    conn_url: &str,
    ddl: &str,
    hex_literal: impl Fn(&[u8]) -> String,
) {
    let kms = Arc::new(LocalKms::from_root_key(RootKey::generate()));
    let kek = Kek::generate();
    let mut conn = C::establish(conn_url).unwrap();
    conn.batch_execute(ddl).unwrap();
    conn.batch_execute(&legacy_rows(&kms, &kek, hex_literal))
        .unwrap();
    drop(conn);
    upgrade_checks(store_url, kms);
}

fn upgrade_checks(store_url: &str, kms: Arc<LocalKms>) {
    let store = SqlKeyStore::connect(store_url).unwrap();
    store.create_schema().unwrap();
    // Twice: the upgrade statements are idempotent.
    store.create_schema().unwrap();
    let ring = KeyRing::builder(kms, Arc::new(store)).build();
    let scope = KeyScope::new("patients").unwrap();
    let ctx = FieldContext::new("patients", "address", RowId::Int(1), 1);
    match ring.seal(&scope, &ctx, b"221B Baker Street", &FieldPolicy::default()) {
        Err(Error::KeyStoreTampered { what, .. }) => {
            assert!(what.contains("keys upgrade"), "{what}");
        }
        other => panic!("a legacy store must be refused until upgraded, got {other:?}"),
    }
    let who = AuditInfo::new("ops", "upgrade to authenticated key records");
    assert_eq!(ring.upgrade_store(&who).unwrap(), 1);
    assert_eq!(
        ring.upgrade_store(&who).unwrap(),
        0,
        "a second upgrade does nothing"
    );
    let sealed = ring
        .seal(&scope, &ctx, b"221B Baker Street", &FieldPolicy::default())
        .unwrap();
    assert_eq!(
        ring.open(&ctx, &sealed).unwrap().expose_secret(),
        b"221B Baker Street"
    );
    let report = ring.verify_store().unwrap();
    assert_eq!(report.legacy_audit_entries, 1);
    assert_eq!(
        report.records, 2,
        "the upgraded record and the integrity key"
    );
    let record = ring.versions(&scope).unwrap().remove(0);
    assert_eq!(record.recheck_secs, leakless::key::LEGACY_RECHECK_SECS);
    assert!(record.auth.is_some());
}
