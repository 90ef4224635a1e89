//! The key-store tamper suite (docs/threat-model.md, invariant 7), playing an attacker who can write the
//! database (a leaked application credential) but holds no root key. On every key store (the
//! JSON file, SQLite, PostgreSQL and MariaDB) each test builds the same store, two scopes with
//! rotations, a grace, a retired and a destroyed version and sealed values, checks that it is
//! intact (positive control), and then edits the store directly, never through the `KeyRing`:
//! raw SQL `UPDATE` / `DELETE` / `INSERT` on `leakless_kek` and `leakless_key_audit`, or the
//! JSON file edited with `serde_json`. It flips states, swaps records, extends a grace deadline,
//! deletes, reorders and edits audit entries, replays and deletes records and strips their tags.
//! A fresh ring (cold cache, same root key) must then refuse to seal and to open with
//! `Error::KeyStoreTampered` saying which record or audit entry failed, and
//! `KeyRing::verify_store` must report it. Also: a legacy store is refused until
//! `upgrade_store`, a store whose integrity record was deleted is not re-authenticated, and the
//! accepted residual (a whole store rolled back consistently) is refused by a ring that
//! verified a newer head.
//!
//! Needs `cargo test -p leakless --all-features --test suite tamper::`; PostgreSQL and MariaDB come from
//! `LEAKLESS_PG_URL` / `LEAKLESS_MYSQL_URL` or throwaway servers (`leakless-testkit`), each
//! test in a database of its own. A missing server fails the test; nothing is skipped.

#![cfg(all(
    feature = "file-store",
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql"
))]

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Nullable, Text};
use diesel::{MysqlConnection, PgConnection, SqliteConnection};
use leakless::key::{
    AuditRecord, KekRecord, KeyAction, ManualClock, StoreChange, UnixTime, WrappedKek,
};
use leakless::keyring::StoreVerification;
use leakless::kms::{KekBinding, Kms, LocalKms};
use leakless::secret::{Kek, RootKey};
use leakless::store::sql::SqlKeyStore;
use leakless::store::{FileKeyStore, KeyStore};
use leakless::{
    AuditInfo, Error, FieldContext, FieldPolicy, KekState, KekVersion, KeyRing, KeyScope, RowId,
};
use serde_json::{Value, json};

use crate::support::services::TestDb;

const DAY: Duration = Duration::from_secs(86_400);
/// The default cache window (300 s) and its margin: retire and destroy wait this long.
const WINDOW: Duration = Duration::from_secs(330);
const START: UnixTime = UnixTime(1_796_342_400); // 2026-12-04

// ----- the attacker's view of the two tables ----------------------------------------------------

/// A `leakless_kek` row (or a record object of the JSON file), column by column. No `Debug`:
/// it holds a wrapped KEK, which no test output should print.
#[derive(QueryableByName, Clone, PartialEq, Eq)]
struct KekRow {
    #[diesel(sql_type = Text)]
    scope: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    grace_until: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    root_key_id: Option<String>,
    #[diesel(sql_type = Nullable<Binary>)]
    wrapped_kek: Option<Vec<u8>>,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
    #[diesel(sql_type = BigInt)]
    updated_at: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    deactivated_at: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    recheck_secs: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<i64>,
    #[diesel(sql_type = Nullable<Binary>)]
    tag: Option<Vec<u8>>,
}

/// A `leakless_key_audit` row without its id (or an audit object of the JSON file).
#[derive(QueryableByName, Clone, Debug, PartialEq, Eq)]
struct AuditRow {
    #[diesel(sql_type = BigInt)]
    at: i64,
    #[diesel(sql_type = Text)]
    actor: String,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    action: String,
    #[diesel(sql_type = Text)]
    scope: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Nullable<Text>)]
    from_state: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    from_grace_until: Option<i64>,
    #[diesel(sql_type = Text)]
    to_state: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    to_grace_until: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<i64>,
    #[diesel(sql_type = Nullable<Binary>)]
    tag: Option<Vec<u8>>,
}

/// Direct write access to one key store's storage, bypassing `KeyRing` and `KeyStore`.
trait Attacker {
    /// A new handle on the store, as an application would open it.
    fn store(&self) -> Arc<dyn KeyStore>;
    fn kek_rows(&self) -> Vec<KekRow>;
    /// In the order the store keeps them (SQL: by id).
    fn audit_rows(&self) -> Vec<AuditRow>;
    /// Overwrites the row `(scope, version)` with `row` (which may name another key).
    fn update_kek(&self, scope: &str, version: i64, row: &KekRow);
    fn insert_kek(&self, row: &KekRow);
    fn delete_kek(&self, scope: &str, version: i64);
    /// Overwrites the audit row with sequence number `seq`.
    fn update_audit(&self, seq: i64, row: &AuditRow);
    /// Appends an audit row.
    fn insert_audit(&self, row: &AuditRow);
    fn delete_audit(&self, seq: i64);
    /// Replaces both tables' contents (a restore from an older copy).
    fn replace_all(&self, kek: &[KekRow], audit: &[AuditRow]);
}

// ----- the JSON file ----------------------------------------------------------------------------

struct FileAttacker {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn opt_hex(v: &Value) -> Option<Vec<u8>> {
    v.as_str().map(|h| hex::decode(h).unwrap())
}

fn kek_from_json(v: &Value) -> KekRow {
    KekRow {
        scope: v["scope"].as_str().unwrap().into(),
        version: v["version"].as_i64().unwrap(),
        state: v["state"].as_str().unwrap().into(),
        grace_until: v["grace_until"].as_i64(),
        root_key_id: v["root_key_id"].as_str().map(Into::into),
        wrapped_kek: opt_hex(&v["wrapped_kek_hex"]),
        created_at: v["created_at"].as_i64().unwrap(),
        updated_at: v["updated_at"].as_i64().unwrap(),
        deactivated_at: v["deactivated_at"].as_i64(),
        recheck_secs: v["recheck_secs"].as_i64(),
        seq: v["seq"].as_i64(),
        tag: opt_hex(&v["tag_hex"]),
    }
}

fn kek_to_json(r: &KekRow) -> Value {
    json!({
        "scope": r.scope, "version": r.version, "state": r.state,
        "grace_until": r.grace_until, "root_key_id": r.root_key_id,
        "wrapped_kek_hex": r.wrapped_kek.as_ref().map(hex::encode),
        "created_at": r.created_at, "updated_at": r.updated_at,
        "deactivated_at": r.deactivated_at, "recheck_secs": r.recheck_secs,
        "seq": r.seq, "tag_hex": r.tag.as_ref().map(hex::encode),
    })
}

fn audit_from_json(v: &Value) -> AuditRow {
    AuditRow {
        at: v["at"].as_i64().unwrap(),
        actor: v["actor"].as_str().unwrap().into(),
        reason: v["reason"].as_str().unwrap().into(),
        action: v["action"].as_str().unwrap().into(),
        scope: v["scope"].as_str().unwrap().into(),
        version: v["version"].as_i64().unwrap(),
        from_state: v["from_state"].as_str().map(Into::into),
        from_grace_until: v["from_grace_until"].as_i64(),
        to_state: v["to_state"].as_str().unwrap().into(),
        to_grace_until: v["to_grace_until"].as_i64(),
        seq: v["seq"].as_i64(),
        tag: opt_hex(&v["tag_hex"]),
    }
}

fn audit_to_json(a: &AuditRow) -> Value {
    json!({
        "at": a.at, "actor": a.actor, "reason": a.reason, "action": a.action,
        "scope": a.scope, "version": a.version,
        "from_state": a.from_state, "from_grace_until": a.from_grace_until,
        "to_state": a.to_state, "to_grace_until": a.to_grace_until,
        "seq": a.seq, "tag_hex": a.tag.as_ref().map(hex::encode),
    })
}

impl FileAttacker {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        Self { _dir: dir, path }
    }

    fn edit(&self, f: impl FnOnce(&mut Vec<Value>, &mut Vec<Value>)) {
        let mut doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.path).unwrap()).unwrap();
        let mut records = doc["records"].as_array().unwrap().clone();
        let mut audit = doc["audit"].as_array().unwrap().clone();
        f(&mut records, &mut audit);
        doc["records"] = Value::Array(records);
        doc["audit"] = Value::Array(audit);
        std::fs::write(&self.path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }

    fn doc(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.path).unwrap()).unwrap()
    }

    /// Each entry of the file's array `key`, read by `from_json`.
    fn rows<T>(&self, key: &str, from_json: fn(&Value) -> T) -> Vec<T> {
        self.doc()[key]
            .as_array()
            .unwrap()
            .iter()
            .map(from_json)
            .collect()
    }
}

fn position(items: &[Value], what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    items
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("attacker: no {what}"))
}

impl Attacker for FileAttacker {
    fn store(&self) -> Arc<dyn KeyStore> {
        Arc::new(FileKeyStore::open(&self.path).unwrap())
    }
    fn kek_rows(&self) -> Vec<KekRow> {
        self.rows("records", kek_from_json)
    }
    fn audit_rows(&self) -> Vec<AuditRow> {
        self.rows("audit", audit_from_json)
    }
    fn update_kek(&self, scope: &str, version: i64, row: &KekRow) {
        self.edit(|records, _| {
            let i = position(records, "record", |r| {
                r["scope"] == scope && r["version"] == version
            });
            records[i] = kek_to_json(row);
        });
    }
    fn insert_kek(&self, row: &KekRow) {
        self.edit(|records, _| records.push(kek_to_json(row)));
    }
    fn delete_kek(&self, scope: &str, version: i64) {
        self.edit(|records, _| {
            let i = position(records, "record", |r| {
                r["scope"] == scope && r["version"] == version
            });
            records.remove(i);
        });
    }
    fn update_audit(&self, seq: i64, row: &AuditRow) {
        self.edit(|_, audit| {
            let i = position(audit, "audit entry", |a| a["seq"] == seq);
            audit[i] = audit_to_json(row);
        });
    }
    fn insert_audit(&self, row: &AuditRow) {
        self.edit(|_, audit| audit.push(audit_to_json(row)));
    }
    fn delete_audit(&self, seq: i64) {
        self.edit(|_, audit| {
            let i = position(audit, "audit entry", |a| a["seq"] == seq);
            audit.remove(i);
        });
    }
    fn replace_all(&self, kek: &[KekRow], audit: &[AuditRow]) {
        self.edit(|records, entries| {
            *records = kek.iter().map(kek_to_json).collect();
            *entries = audit.iter().map(audit_to_json).collect();
        });
    }
}

// ----- the SQL databases ------------------------------------------------------------------------

/// A raw connection of the attacker's own.
enum Raw {
    Sqlite(SqliteConnection),
    Pg(PgConnection),
    My(MysqlConnection),
}

/// What keeps a per-test database alive.
enum Place {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Server(TestDb),
}

struct SqlAttacker {
    conn: RefCell<Raw>,
    place: Place,
}

fn sql_str(s: &str) -> String {
    assert!(!s.contains('\\'), "test strings carry no backslash");
    format!("'{}'", s.replace('\'', "''"))
}

fn sql_int(v: Option<i64>) -> String {
    v.map_or_else(|| "NULL".into(), |v| v.to_string())
}

fn sql_opt_str(v: Option<&str>) -> String {
    v.map_or_else(|| "NULL".into(), sql_str)
}

impl SqlAttacker {
    fn new(place: Place) -> Self {
        let conn = match &place {
            Place::Sqlite { path, .. } => {
                let mut c = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
                diesel::connection::SimpleConnection::batch_execute(
                    &mut c,
                    "PRAGMA busy_timeout = 30000;",
                )
                .unwrap();
                Raw::Sqlite(c)
            }
            Place::Server(db) if db.url().starts_with("postgres") => {
                Raw::Pg(PgConnection::establish(db.url()).unwrap())
            }
            Place::Server(db) => Raw::My(MysqlConnection::establish(db.url()).unwrap()),
        };
        let attacker = Self {
            conn: RefCell::new(conn),
            place,
        };
        // The application made its tables; the attacker only writes rows.
        attacker.open_store().create_schema().unwrap();
        attacker
    }

    fn open_store(&self) -> SqlKeyStore {
        match &self.place {
            Place::Sqlite { path, .. } => SqlKeyStore::sqlite(path).unwrap(),
            Place::Server(db) => SqlKeyStore::connect(db.url()).unwrap(),
        }
    }

    fn blob(&self, b: Option<&[u8]>) -> String {
        match (b, &*self.conn.borrow()) {
            (None, _) => "NULL".into(),
            (Some(b), Raw::Pg(_)) => format!("decode('{}', 'hex')", hex::encode(b)),
            (Some(b), _) => format!("X'{}'", hex::encode(b)),
        }
    }

    /// Runs one statement; returns the rows it changed.
    fn exec(&self, sql: &str) -> usize {
        let result = match &mut *self.conn.borrow_mut() {
            Raw::Sqlite(c) => diesel::sql_query(sql).execute(c),
            Raw::Pg(c) => diesel::sql_query(sql).execute(c),
            Raw::My(c) => diesel::sql_query(sql).execute(c),
        };
        result.unwrap_or_else(|e| panic!("attacker SQL {sql}: {e}"))
    }

    fn exec_one(&self, sql: &str) {
        assert_eq!(self.exec(sql), 1, "attacker SQL touched not one row: {sql}");
    }

    fn load<T>(&self, sql: &str) -> Vec<T>
    where
        T: QueryableByName<diesel::sqlite::Sqlite>
            + QueryableByName<diesel::pg::Pg>
            + QueryableByName<diesel::mysql::Mysql>
            + 'static,
    {
        let result = match &mut *self.conn.borrow_mut() {
            Raw::Sqlite(c) => diesel::sql_query(sql).load::<T>(c),
            Raw::Pg(c) => diesel::sql_query(sql).load::<T>(c),
            Raw::My(c) => diesel::sql_query(sql).load::<T>(c),
        };
        result.unwrap_or_else(|e| panic!("attacker SQL {sql}: {e}"))
    }

    /// The SQL values of a key row, in the order of [`KEK_COLUMNS`].
    fn kek_values(&self, r: &KekRow) -> Vec<String> {
        vec![
            sql_str(&r.scope),
            r.version.to_string(),
            sql_str(&r.state),
            sql_int(r.grace_until),
            sql_opt_str(r.root_key_id.as_deref()),
            self.blob(r.wrapped_kek.as_deref()),
            r.created_at.to_string(),
            r.updated_at.to_string(),
            sql_int(r.deactivated_at),
            sql_int(r.recheck_secs),
            sql_int(r.seq),
            self.blob(r.tag.as_deref()),
        ]
    }

    /// The SQL values of an audit row, in the order of [`AUDIT_COLUMNS`].
    fn audit_values(&self, a: &AuditRow) -> Vec<String> {
        vec![
            a.at.to_string(),
            sql_str(&a.actor),
            sql_str(&a.reason),
            sql_str(&a.action),
            sql_str(&a.scope),
            a.version.to_string(),
            sql_opt_str(a.from_state.as_deref()),
            sql_int(a.from_grace_until),
            sql_str(&a.to_state),
            sql_int(a.to_grace_until),
            sql_int(a.seq),
            self.blob(a.tag.as_deref()),
        ]
    }
}

/// `column = value, ...` for an UPDATE of `columns` (a [`KEK_COLUMNS`]-style list).
fn assignments(columns: &str, values: Vec<String>) -> String {
    columns
        .split(", ")
        .zip(values)
        .map(|(c, v)| format!("{c} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const KEK_COLUMNS: &str = "scope, version, state, grace_until, root_key_id, wrapped_kek, \
                           created_at, updated_at, deactivated_at, recheck_secs, seq, tag";
const AUDIT_COLUMNS: &str = "at, actor, reason, action, scope, version, from_state, \
                             from_grace_until, to_state, to_grace_until, seq, tag";

impl Attacker for SqlAttacker {
    fn store(&self) -> Arc<dyn KeyStore> {
        Arc::new(self.open_store())
    }
    fn kek_rows(&self) -> Vec<KekRow> {
        self.load(&format!(
            "SELECT {KEK_COLUMNS} FROM leakless_kek ORDER BY scope, version"
        ))
    }
    fn audit_rows(&self) -> Vec<AuditRow> {
        self.load(&format!(
            "SELECT {AUDIT_COLUMNS} FROM leakless_key_audit ORDER BY id"
        ))
    }
    fn update_kek(&self, scope: &str, version: i64, r: &KekRow) {
        self.exec_one(&format!(
            "UPDATE leakless_kek SET {} WHERE scope = {} AND version = {version}",
            assignments(KEK_COLUMNS, self.kek_values(r)),
            sql_str(scope),
        ));
    }
    fn insert_kek(&self, row: &KekRow) {
        self.exec_one(&format!(
            "INSERT INTO leakless_kek ({KEK_COLUMNS}) VALUES ({})",
            self.kek_values(row).join(", ")
        ));
    }
    fn delete_kek(&self, scope: &str, version: i64) {
        self.exec_one(&format!(
            "DELETE FROM leakless_kek WHERE scope = {} AND version = {version}",
            sql_str(scope)
        ));
    }
    fn update_audit(&self, seq: i64, a: &AuditRow) {
        self.exec_one(&format!(
            "UPDATE leakless_key_audit SET {} WHERE seq = {seq}",
            assignments(AUDIT_COLUMNS, self.audit_values(a)),
        ));
    }
    fn insert_audit(&self, row: &AuditRow) {
        self.exec_one(&format!(
            "INSERT INTO leakless_key_audit ({AUDIT_COLUMNS}) VALUES ({})",
            self.audit_values(row).join(", ")
        ));
    }
    fn delete_audit(&self, seq: i64) {
        self.exec_one(&format!("DELETE FROM leakless_key_audit WHERE seq = {seq}"));
    }
    fn replace_all(&self, kek: &[KekRow], audit: &[AuditRow]) {
        self.exec("DELETE FROM leakless_kek");
        self.exec("DELETE FROM leakless_key_audit");
        for r in kek {
            self.insert_kek(r);
        }
        for a in audit {
            self.insert_audit(a);
        }
    }
}

fn file() -> Box<dyn Attacker> {
    Box::new(FileAttacker::new())
}

fn sqlite() -> Box<dyn Attacker> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.sqlite");
    Box::new(SqlAttacker::new(Place::Sqlite { _dir: dir, path }))
}

fn postgres() -> Box<dyn Attacker> {
    Box::new(SqlAttacker::new(Place::Server(TestDb::postgres())))
}

fn mariadb() -> Box<dyn Attacker> {
    Box::new(SqlAttacker::new(Place::Server(TestDb::mysql())))
}

// ----- the store under attack -------------------------------------------------------------------

fn who() -> AuditInfo {
    AuditInfo::new("alice", "TICKET-7")
}

fn v(n: u32) -> KekVersion {
    KekVersion::new(n).unwrap()
}

fn patients() -> KeyScope {
    KeyScope::new("patients").unwrap()
}

fn billing() -> KeyScope {
    KeyScope::new("billing").unwrap()
}

/// `text` sealed by `ring` in `scope` at row `row` (under [`ctx_of`]) with the default policy.
fn seal_at(ring: &KeyRing, scope: &KeyScope, row: i64, text: &[u8]) -> Result<Vec<u8>, Error> {
    ring.seal(scope, &ctx_of(scope, row), text, &FieldPolicy::default())
}

fn ctx_of(scope: &KeyScope, row: i64) -> FieldContext<'static> {
    if *scope == patients() {
        FieldContext::new("patients", "address", RowId::Int(row), 1)
    } else {
        FieldContext::new("billing", "iban", RowId::Int(row), 1)
    }
}

/// A sealed value: its scope, row, plaintext and envelope.
struct Sealed {
    scope: KeyScope,
    row: i64,
    text: &'static str,
    envelope: Vec<u8>,
}

/// The store every scenario starts from. Audit sequence numbers:
///
/// | # | change |
/// |---|---|
/// | 1 | integrity key (`leakless:integrity` v1) |
/// | 2 | create `patients` v1 |
/// | 3 | create `billing` v1 |
/// | 4, 5 | rotate `billing`: v2 active, v1 grace |
/// | 6, 7 | retire, destroy `billing` v1 |
/// | 8, 9 | rotate `billing`: v3 active, v2 grace |
/// | 10 | retire `billing` v2 |
/// | 11, 12 | rotate `patients`: v2 active, v1 grace (one day) |
///
/// Records: the integrity key, `patients` v1 (grace) and v2 (active), `billing` v1
/// (destroyed), v2 (retired) and v3 (active).
struct World {
    kms: Arc<LocalKms>,
    clock: Arc<ManualClock>,
    attacker: Box<dyn Attacker>,
    /// Under `patients` v1, v2, `billing` v1, v2, v3.
    p1: Sealed,
    p2: Sealed,
    b1: Sealed,
    b2: Sealed,
    b3: Sealed,
    /// `patients` v1's row while it was still active (audit entry #2), from an old dump.
    patients_v1_active: KekRow,
    /// `billing` v1's row in grace, with its wrapped material (entry #5), from an old dump.
    billing_v1_grace: KekRow,
}

const INTACT: StoreVerification = StoreVerification {
    audit_entries: 12,
    legacy_audit_entries: 0,
    records: 6,
};

impl World {
    fn new(attacker: Box<dyn Attacker>) -> Self {
        let kms = Arc::new(LocalKms::from_root_key(RootKey::generate()));
        let clock = Arc::new(ManualClock::new(START));
        let ring = KeyRing::builder(kms.clone(), attacker.store())
            .clock(clock.clone())
            .build();
        let seal = |scope: &KeyScope, row: i64, text: &'static str| Sealed {
            scope: scope.clone(),
            row,
            text,
            envelope: seal_at(&ring, scope, row, text.as_bytes()).unwrap(),
        };
        let find = |scope: &str, version: i64| {
            attacker
                .kek_rows()
                .into_iter()
                .find(|r| r.scope == scope && r.version == version)
                .unwrap()
        };
        ring.create_scope(&patients(), &who()).unwrap();
        ring.create_scope(&billing(), &who()).unwrap();
        let p1 = seal(&patients(), 1, "221B Baker Street");
        let b1 = seal(&billing(), 1, "GB33BUKB20201555555555");
        let patients_v1_active = find("patients", 1);
        assert_eq!(ring.rotate(&billing(), DAY, &who()).unwrap(), v(2));
        let b2 = seal(&billing(), 2, "DE89370400440532013000");
        let billing_v1_grace = find("billing", 1);
        clock.advance(WINDOW);
        ring.retire(&billing(), v(1), &who()).unwrap();
        ring.destroy(&billing(), v(1), &who()).unwrap();
        assert_eq!(ring.rotate(&billing(), DAY, &who()).unwrap(), v(3));
        clock.advance(WINDOW);
        ring.retire(&billing(), v(2), &who()).unwrap();
        let b3 = seal(&billing(), 3, "FR1420041010050500013M02606");
        assert_eq!(ring.rotate(&patients(), DAY, &who()).unwrap(), v(2));
        let p2 = seal(&patients(), 2, "12 Grimmauld Place");
        for (s, want) in [(&p1, 1), (&p2, 2), (&b1, 1), (&b2, 2), (&b3, 3)] {
            assert_eq!(
                leakless::envelope::inspect(&s.envelope)
                    .unwrap()
                    .kek_version,
                v(want)
            );
        }
        let world = Self {
            kms,
            clock,
            attacker,
            p1,
            p2,
            b1,
            b2,
            b3,
            patients_v1_active,
            billing_v1_grace,
        };
        world.assert_intact(INTACT);
        world
    }

    /// A ring as a freshly started application builds it: cold cache, same root key.
    fn cold_ring(&self) -> KeyRing {
        KeyRing::builder(self.kms.clone(), self.attacker.store())
            .clock(self.clock.clone())
            .build()
    }

    fn kek_row(&self, scope: &str, version: i64) -> KekRow {
        self.attacker
            .kek_rows()
            .into_iter()
            .find(|r| r.scope == scope && r.version == version)
            .unwrap_or_else(|| panic!("no row {scope} v{version}"))
    }

    fn audit_row(&self, seq: i64) -> AuditRow {
        self.attacker
            .audit_rows()
            .into_iter()
            .find(|a| a.seq == Some(seq))
            .unwrap_or_else(|| panic!("no audit entry #{seq}"))
    }

    /// Positive control: the store verifies with `expected` counts, and a cold ring seals in
    /// both scopes and opens what it should (and only that).
    fn assert_intact(&self, expected: StoreVerification) {
        let ring = self.cold_ring();
        assert_eq!(ring.verify_store().unwrap(), expected);
        for (s, want) in [(&patients(), 2), (&billing(), 3)] {
            let env = seal_at(&ring, s, 99, b"control").unwrap();
            assert_eq!(
                leakless::envelope::inspect(&env).unwrap().kek_version,
                v(want)
            );
            assert_eq!(
                ring.open(&ctx_of(s, 99), &env).unwrap().expose_secret(),
                b"control"
            );
        }
        for s in [&self.p1, &self.p2, &self.b3] {
            assert_eq!(open(&ring, s).unwrap(), s.text.as_bytes());
        }
        assert!(matches!(
            open(&ring, &self.b1),
            Err(Error::KeyDestroyed { .. })
        ));
        assert!(matches!(
            open(&ring, &self.b2),
            Err(Error::KeyWrongState { .. })
        ));
    }
}

fn open(ring: &KeyRing, s: &Sealed) -> Result<Vec<u8>, Error> {
    ring.open(&ctx_of(&s.scope, s.row), &s.envelope)
        .map(|p| p.expose_secret().to_vec())
}

/// What a refusal must say: the record's scope and version (or the audit entry's), and words
/// that `what` must contain.
#[derive(Clone, Copy, Debug)]
struct Expect<'a> {
    scope: Option<&'a str>,
    version: Option<u32>,
    what: &'a [&'a str],
}

fn at<'a>(scope: &'a str, version: u32, what: &'a [&'a str]) -> Expect<'a> {
    Expect {
        scope: Some(scope),
        version: Some(version),
        what,
    }
}

#[track_caller]
fn assert_tampered<T: std::fmt::Debug>(result: Result<T, Error>, expect: Expect<'_>, op: &str) {
    match result {
        Err(Error::KeyStoreTampered {
            scope,
            version,
            what,
        }) => {
            assert_eq!(
                scope.as_ref().map(KeyScope::as_str),
                expect.scope,
                "{op}: scope ({what})"
            );
            assert_eq!(version, expect.version.map(v), "{op}: version ({what})");
            for needle in expect.what {
                assert!(what.contains(needle), "{op}: {what:?} lacks {needle:?}");
            }
        }
        other => panic!("{op}: expected KeyStoreTampered {expect:?}, got {other:?}"),
    }
}

impl World {
    /// A cold ring refuses to seal in `scope` and to open `sealed`, both with `expect`; and
    /// `verify_store` reports `verify`. A refused seal returns no envelope, so nothing is
    /// sealed under the tampered version.
    #[track_caller]
    fn assert_refused(
        &self,
        scope: &KeyScope,
        seal: Expect<'_>,
        sealed: &Sealed,
        open_expect: Expect<'_>,
        verify: Expect<'_>,
    ) {
        let ring = self.cold_ring();
        assert_tampered(
            seal_at(&ring, scope, 50, b"must not be sealed"),
            seal,
            "seal",
        );
        assert_tampered(open(&ring, sealed), open_expect, "open");
        assert_tampered(ring.verify_store(), verify, "verify_store");
        // A second cold ring, opening first, and the lifecycle reads refuse too.
        let ring = self.cold_ring();
        assert_tampered(open(&ring, sealed), open_expect, "open (first call)");
        assert_tampered(ring.versions(scope), seal, "versions");
    }

    /// As [`Self::assert_refused`] when one failure (an audit entry) stops everything.
    #[track_caller]
    fn assert_refused_everywhere(&self, expect: Expect<'_>) {
        for (scope, sealed) in [(patients(), &self.p1), (billing(), &self.b3)] {
            self.assert_refused(&scope, expect, sealed, expect, expect);
        }
    }
}

// ----- the scenarios ----------------------------------------------------------------------------

const FAILS_AUTH: &[&str] = &["fails authentication"];

/// 1. The grace version is made active again and the active one demoted: the state columns
///    (and, by them, the one-active-version index or generated column).
fn flipped_state(w: World) {
    let mut v1 = w.kek_row("patients", 1);
    let mut v2 = w.kek_row("patients", 2);
    v2.state = "grace".into();
    v2.grace_until = v1.grace_until;
    v1.state = "active".into();
    v1.grace_until = None;
    // Demote first: the schema allows one active version per scope.
    w.attacker.update_kek("patients", 2, &v2);
    w.attacker.update_kek("patients", 1, &v1);
    let one = at("patients", 1, FAILS_AUTH);
    w.assert_refused(&patients(), one, &w.p1, one, one);
    let ring = w.cold_ring();
    assert_tampered(open(&ring, &w.p2), at("patients", 2, FAILS_AUTH), "open v2");
}

/// 2a. Two versions of one scope swap their contents (material, state, times, tags).
fn swapped_versions(w: World) {
    let v1 = w.kek_row("patients", 1);
    let v2 = w.kek_row("patients", 2);
    let as_v1 = KekRow {
        version: 1,
        ..v2.clone()
    };
    let as_v2 = KekRow { version: 2, ..v1 };
    w.attacker.update_kek("patients", 2, &as_v2);
    w.attacker.update_kek("patients", 1, &as_v1);
    let one = at("patients", 1, FAILS_AUTH);
    w.assert_refused(&patients(), one, &w.p1, one, one);
    assert_tampered(
        open(&w.cold_ring(), &w.p2),
        at("patients", 2, FAILS_AUTH),
        "open v2",
    );
}

/// 2b. The active versions of two scopes swap their contents.
fn swapped_scopes(w: World) {
    let p = w.kek_row("patients", 2);
    let b = w.kek_row("billing", 3);
    let as_p = KekRow {
        scope: "patients".into(),
        version: 2,
        ..b.clone()
    };
    let as_b = KekRow {
        scope: "billing".into(),
        version: 3,
        ..p
    };
    w.attacker.update_kek("patients", 2, &as_p);
    w.attacker.update_kek("billing", 3, &as_b);
    let p2 = at("patients", 2, FAILS_AUTH);
    let b3 = at("billing", 3, FAILS_AUTH);
    w.assert_refused(&patients(), p2, &w.p2, p2, b3);
    w.assert_refused(&billing(), b3, &w.b3, b3, b3);
}

/// 2c. A forged version: another scope's authenticated row inserted as `patients` v3.
fn forged_version(w: World) {
    let forged = KekRow {
        scope: "patients".into(),
        version: 3,
        state: "grace".into(),
        grace_until: Some(START.0 + 10 * 365 * 86_400),
        ..w.kek_row("billing", 3)
    };
    w.attacker.insert_kek(&forged);
    let p3 = at("patients", 3, FAILS_AUTH);
    let ring = w.cold_ring();
    assert_tampered(seal_at(&ring, &patients(), 50, b"x"), p3, "seal");
    assert_tampered(ring.verify_store(), p3, "verify_store");
}

/// 3. The grace deadline of `patients` v1 is pushed ten years out.
fn extended_grace(w: World) {
    let mut v1 = w.kek_row("patients", 1);
    v1.grace_until = Some(v1.grace_until.unwrap() + 10 * 365 * 86_400);
    w.attacker.update_kek("patients", 1, &v1);
    let one = at("patients", 1, FAILS_AUTH);
    w.assert_refused(&patients(), one, &w.p1, one, one);
}

/// 4a. An audit entry in the middle (#6, the retirement of `billing` v1) is deleted.
fn deleted_middle_audit(w: World) {
    w.attacker.delete_audit(6);
    // Reported at the entry after the gap: #7, the destruction of billing v1.
    w.assert_refused_everywhere(at("billing", 1, &["after entry #5", "#7"]));
}

/// 4b. The last audit entry (#12, `patients` v1 into grace) is deleted.
fn deleted_last_audit(w: World) {
    w.attacker.delete_audit(12);
    let one = at("patients", 1, &["#12"]);
    w.assert_refused(&patients(), one, &w.p1, one, one);
}

/// 4c. Two audit entries swap their sequence numbers (#8 and #9).
fn reordered_audit_seq(w: World) {
    let mut a8 = w.audit_row(8);
    let mut a9 = w.audit_row(9);
    a8.seq = Some(9);
    a9.seq = Some(8);
    // Through a free number: sequence numbers are unique.
    let mut parked = a8.clone();
    parked.seq = Some(1_000_000);
    w.attacker.update_audit(8, &parked);
    w.attacker.update_audit(9, &a9);
    w.attacker.update_audit(1_000_000, &a8);
    // The entry now at #8 is #9's (billing v2 into grace).
    w.assert_refused_everywhere(at("billing", 2, &["#8 fails authentication"]));
}

/// 4d. Two audit entries swap their contents but keep their sequence numbers and tags.
fn reordered_audit_content(w: World) {
    let a10 = w.audit_row(10);
    let a11 = w.audit_row(11);
    let new10 = AuditRow {
        seq: a10.seq,
        tag: a10.tag.clone(),
        ..a11.clone()
    };
    let new11 = AuditRow {
        seq: a11.seq,
        tag: a11.tag,
        ..a10
    };
    w.attacker.update_audit(10, &new10);
    w.attacker.update_audit(11, &new11);
    // #10 now describes patients v2's creation.
    w.assert_refused_everywhere(at("patients", 2, &["#10 fails authentication"]));
}

/// 4e. Who, why and what an audit entry says is edited.
fn edited_audit_actor(w: World) {
    let mut a = w.audit_row(3);
    a.actor = "mallory".into();
    w.attacker.update_audit(3, &a);
    w.assert_refused_everywhere(at("billing", 1, &["#3 fails authentication"]));
}

fn edited_audit_reason(w: World) {
    let mut a = w.audit_row(5);
    a.reason = "approved by the CISO".into();
    w.attacker.update_audit(5, &a);
    w.assert_refused_everywhere(at("billing", 1, &["#5 fails authentication"]));
}

fn edited_audit_state(w: World) {
    let mut a = w.audit_row(7);
    assert_eq!(a.to_state, "destroyed");
    a.to_state = "retired".into();
    w.attacker.update_audit(7, &a);
    w.assert_refused_everywhere(at("billing", 1, &["#7 fails authentication"]));
}

/// 4f. The tag of the last audit entry is stripped (the ring skips unauthenticated entries, so
///     this is the last entry deleted).
fn stripped_last_audit(w: World) {
    let mut a = w.audit_row(12);
    a.seq = None;
    a.tag = None;
    w.attacker.update_audit(12, &a);
    let one = at("patients", 1, &["#12"]);
    // verify_store names the stripped entry itself (patients v1 into grace).
    let stripped = at("patients", 1, &["without authentication", "after the"]);
    w.assert_refused(&patients(), one, &w.p1, one, stripped);
}

/// 4g. The tag of an audit entry in the middle is stripped: a gap in the chain.
fn stripped_middle_audit(w: World) {
    let mut a = w.audit_row(6);
    a.seq = None;
    a.tag = None;
    w.attacker.update_audit(6, &a);
    let gap = at("billing", 1, &["after entry #5", "#7"]);
    // verify_store names the stripped entry itself (the retirement of billing v1).
    let stripped = at("billing", 1, &["without authentication", "after the"]);
    w.assert_refused(&patients(), gap, &w.p1, gap, stripped);
    w.assert_refused(&billing(), gap, &w.b3, gap, stripped);
}

/// 5a. `patients` v1's row from before the rotation (active, audit entry #2) is written back
///     over the grace record, with v2 demoted to make room for it.
fn replayed_active_row(w: World) {
    let mut v2 = w.kek_row("patients", 2);
    v2.state = "retired".into();
    w.attacker.update_kek("patients", 2, &v2);
    w.attacker
        .update_kek("patients", 1, &w.patients_v1_active.clone());
    let one = at("patients", 1, &["replayed", "#12", "#2"]);
    w.assert_refused(&patients(), one, &w.p1, one, one);
    // The resurrected active v1 seals nothing: no envelope under v1 can be produced.
    let ring = w.cold_ring();
    for row in 0..5 {
        assert!(seal_at(&ring, &patients(), row, b"x").is_err());
    }
}

/// 5b. `billing` v1's row from before its destruction (grace, with material, entry #5) is
///     written back: the shredded key resurrected.
fn replayed_destroyed_row(w: World) {
    w.attacker
        .update_kek("billing", 1, &w.billing_v1_grace.clone());
    let one = at("billing", 1, &["replayed", "#7", "#5"]);
    w.assert_refused(&billing(), one, &w.b1, one, one);
}

/// 6a. The destroyed record is deleted.
fn deleted_destroyed_record(w: World) {
    w.attacker.delete_kek("billing", 1);
    let gone = at("billing", 1, &["gone (deleted)"]);
    let seal = at("billing", 1, &["#7", "gone (deleted)"]);
    w.assert_refused(&billing(), seal, &w.b1, gone, seal);
}

/// 6b. The retired record is deleted.
fn deleted_retired_record(w: World) {
    w.attacker.delete_kek("billing", 2);
    let gone = at("billing", 2, &["gone (deleted)"]);
    let seal = at("billing", 2, &["#10", "gone (deleted)"]);
    w.assert_refused(&billing(), seal, &w.b2, gone, seal);
}

/// 6c. A whole scope is deleted.
fn deleted_scope(w: World) {
    for version in 1..=3 {
        w.attacker.delete_kek("billing", version);
    }
    let ring = w.cold_ring();
    match seal_at(&ring, &billing(), 1, b"x") {
        Err(Error::KeyStoreTampered { scope, what, .. }) => {
            assert_eq!(scope, Some(billing()));
            assert!(what.contains("gone (deleted)"), "{what}");
        }
        other => panic!("seal: {other:?}"),
    }
    assert_tampered(
        open(&ring, &w.b3),
        at("billing", 3, &["gone (deleted)"]),
        "open",
    );
    assert_tampered(
        ring.verify_store(),
        at("billing", 1, &["#7", "gone (deleted)"]),
        "verify_store",
    );
}

/// 7. The authentication of the active record is stripped; `upgrade_store` will not give it
///    a new tag.
fn stripped_record_auth(w: World) {
    let mut v2 = w.kek_row("patients", 2);
    v2.seq = None;
    v2.tag = None;
    w.attacker.update_kek("patients", 2, &v2);
    let two = at("patients", 2, &["no authentication tag"]);
    w.assert_refused(&patients(), two, &w.p2, two, two);
    assert_tampered(
        w.cold_ring().upgrade_store(&who()),
        at("patients", 2, &["carry no tag"]),
        "upgrade_store",
    );
    assert_eq!(w.kek_row("patients", 2).tag, None, "upgrade wrote nothing");
}

/// The integrity key's record is deleted: nothing verifies, and `upgrade_store` refuses to
/// re-authenticate the store under a new integrity key.
fn deleted_integrity_record(w: World) {
    let before = w.attacker.kek_rows().len();
    w.attacker.delete_kek("leakless:integrity", 1);
    let none = Expect {
        scope: None,
        version: None,
        what: &["no integrity key"],
    };
    w.assert_refused(&patients(), none, &w.p2, none, none);
    assert_tampered(
        w.cold_ring().upgrade_store(&who()),
        at("leakless:integrity", 1, &["was deleted"]),
        "upgrade_store",
    );
    assert_eq!(
        w.attacker.kek_rows().len(),
        before - 1,
        "upgrade wrote nothing"
    );
    w.assert_refused(&billing(), none, &w.b3, none, none);
}

/// An audit entry without authentication appended to the authenticated log: a forged line of
/// history ("bob destroyed patients v1"). The ring ignores it for every key decision, but
/// `verify_store` must not pass it off as a legacy entry.
fn injected_unauthenticated_audit(w: World) {
    let mut forged = w.audit_row(12);
    forged.actor = "bob".into();
    forged.reason = "cleanup".into();
    forged.action = "destroy".into();
    forged.from_state = Some("grace".into());
    forged.from_grace_until = forged.to_grace_until;
    forged.to_state = "destroyed".into();
    forged.to_grace_until = None;
    forged.seq = None;
    forged.tag = None;
    w.attacker.insert_audit(&forged);
    assert_tampered(
        w.cold_ring().verify_store(),
        at(
            "patients",
            1,
            &[
                "without authentication",
                "after the authenticated chain began",
            ],
        ),
        "verify_store",
    );
}

// ----- positive controls, legacy stores, rollback -----------------------------------------------

/// Harmless changes through the ring on the untouched store keep it verifiable.
fn harmless_changes_verify(w: World) {
    let ring = w.cold_ring();
    ring.reinstate(&billing(), v(2), DAY, &who()).unwrap(); // 13
    assert_eq!(ring.rotate(&patients(), DAY, &who()).unwrap(), v(3)); // 14, 15
    w.clock.advance(WINDOW);
    ring.retire(&patients(), v(1), &who()).unwrap(); // 16
    w.clock.advance(2 * DAY);
    let expired = ring.expire_grace(&who()).unwrap(); // 17, 18: billing v2, patients v2
    assert_eq!(expired.len(), 2, "{expired:?}");
    let cold = w.cold_ring();
    assert_eq!(
        cold.verify_store().unwrap(),
        StoreVerification {
            audit_entries: 18,
            legacy_audit_entries: 0,
            records: 7,
        }
    );
    let env = seal_at(&cold, &patients(), 7, b"after").unwrap();
    assert_eq!(leakless::envelope::inspect(&env).unwrap().kek_version, v(3));
    assert_eq!(
        cold.open(&ctx_of(&patients(), 7), &env)
            .unwrap()
            .expose_secret(),
        b"after"
    );
    assert_eq!(open(&cold, &w.b3).unwrap(), w.b3.text.as_bytes());
}

/// A store written before records were authenticated (rows with NULL seq and tag, written
/// through the raw `KeyStore::apply`) is refused until `upgrade_store`, then works.
fn legacy_store(attacker: Box<dyn Attacker>) {
    let kms = Arc::new(LocalKms::from_root_key(RootKey::generate()));
    let clock = Arc::new(ManualClock::new(START));
    let store = attacker.store();
    let record = |scope: &KeyScope, version: u32, state: KekState| {
        let wrapped: WrappedKek = kms
            .wrap_kek(
                &Kek::generate(),
                &KekBinding {
                    scope,
                    version: v(version),
                },
            )
            .unwrap();
        KekRecord {
            scope: scope.clone(),
            version: v(version),
            state,
            wrapped: Some(wrapped),
            created_at: START,
            updated_at: START,
            deactivated_at: None,
            recheck_secs: 300,
            auth: None,
        }
    };
    let audit = |r: &KekRecord, action: KeyAction, from: Option<KekState>| AuditRecord {
        actor: "legacy".into(),
        reason: "before 0.2".into(),
        ..crate::support::store_suite::audit(r, action, from, START.0)
    };
    let grace = KekState::Grace {
        until: START.plus(DAY),
    };
    let p1 = record(&patients(), 1, grace);
    let p2 = record(&patients(), 2, KekState::Active);
    let b1 = record(&billing(), 1, KekState::Active);
    store
        .apply(StoreChange {
            audit: vec![
                audit(&p1, KeyAction::CreateScope, None),
                audit(&b1, KeyAction::CreateScope, None),
                audit(&p2, KeyAction::Rotate, None),
                audit(&p1, KeyAction::Rotate, Some(KekState::Active)),
            ],
            inserts: vec![p1, p2, b1],
            updates: vec![],
        })
        .unwrap();
    assert!(attacker.kek_rows().iter().all(|r| r.tag.is_none()));

    let ring = || {
        KeyRing::builder(kms.clone(), attacker.store())
            .clock(clock.clone())
            .build()
    };
    let not_upgraded = Expect {
        scope: None,
        version: None,
        what: &["no integrity key", "upgrade"],
    };
    let cold = ring();
    for s in [patients(), billing()] {
        assert_tampered(
            seal_at(&cold, &s, 1, b"x"),
            not_upgraded,
            "seal before upgrade",
        );
    }
    assert_tampered(cold.verify_store(), not_upgraded, "verify before upgrade");
    assert_tampered(
        cold.create_scope(&KeyScope::new("other").unwrap(), &who()),
        not_upgraded,
        "create_scope before upgrade",
    );

    assert_eq!(ring().upgrade_store(&who()).unwrap(), 3);
    assert_eq!(ring().upgrade_store(&who()).unwrap(), 0, "idempotent");
    let cold = ring();
    assert_eq!(
        cold.verify_store().unwrap(),
        StoreVerification {
            audit_entries: 4,
            legacy_audit_entries: 4,
            records: 4,
        }
    );
    for (s, want) in [(patients(), 2), (billing(), 1)] {
        let env = seal_at(&cold, &s, 1, b"upgraded").unwrap();
        assert_eq!(
            leakless::envelope::inspect(&env).unwrap().kek_version,
            v(want)
        );
        assert_eq!(
            ring().open(&ctx_of(&s, 1), &env).unwrap().expose_secret(),
            b"upgraded"
        );
    }
    // The upgraded store is protected like any other.
    let mut row = attacker
        .kek_rows()
        .into_iter()
        .find(|r| r.scope == "patients" && r.version == 1)
        .unwrap();
    row.grace_until = Some(row.grace_until.unwrap() + 365 * 86_400);
    attacker.update_kek("patients", 1, &row);
    assert_tampered(
        ring().verify_store(),
        at("patients", 1, FAILS_AUTH),
        "verify after edit",
    );
}

/// The residual the design accepts: the whole store rolled back consistently, records and
/// audit log together (as a restore from a backup would).
fn whole_store_rollback(w: World) {
    // The attacker keeps a copy of both tables as they are now (audit head #12).
    let old_kek = w.attacker.kek_rows();
    let old_audit = w.attacker.audit_rows();
    // A running application keeps working; the key admin rotates patients (#13, #14).
    let warm = w.cold_ring();
    assert_eq!(warm.rotate(&patients(), DAY, &who()).unwrap(), v(3));
    assert_eq!(warm.versions(&patients()).unwrap().len(), 3); // verifies up to #14
    let env = seal_at(&warm, &patients(), 3, b"x").unwrap();
    assert_eq!(leakless::envelope::inspect(&env).unwrap().kek_version, v(3));

    w.attacker.replace_all(&old_kek, &old_audit);

    // The ring that verified #14 refuses the log that lost it, on its next store read.
    let gone = Expect {
        scope: None,
        version: None,
        what: &["#14", "verified earlier by this process, is gone"],
    };
    assert_tampered(warm.versions(&patients()), gone, "warm versions");
    warm.cache().clear();
    assert_tampered(seal_at(&warm, &patients(), 4, b"x"), gone, "warm seal");
    assert_tampered(open(&warm, &w.p1), gone, "warm open");
    assert_tampered(warm.verify_store(), gone, "warm verify_store");

    // A cold ring cannot tell: the rolled-back store is a consistent, authenticated older
    // state, so it verifies and seals under v2 again (the version the admin had demoted).
    // Nothing in the store can prove that a newer state existed. This is why a completed
    // shred also destroys the old root epoch: a rolled-back store's destroyed-then-restored
    // material is wrapped under a root the KMS no longer has (docs/threat-model.md, invariant 4).
    w.assert_intact(INTACT);
}

// ----- one module per key store -----------------------------------------------------------------

/// Declares one `#[test]` per scenario, each on a fresh world over `$attacker`.
macro_rules! tamper_suite {
    ($attacker:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[test]
            fn $scenario() {
                crate::tamper::$scenario(crate::tamper::World::new($attacker));
            }
        )*

        #[test]
        fn legacy_store_is_refused_until_upgraded() {
            crate::tamper::legacy_store($attacker);
        }
    };
}

macro_rules! all_scenarios {
    ($attacker:expr) => {
        tamper_suite!($attacker;
            flipped_state,
            swapped_versions,
            swapped_scopes,
            forged_version,
            extended_grace,
            deleted_middle_audit,
            deleted_last_audit,
            reordered_audit_seq,
            reordered_audit_content,
            edited_audit_actor,
            edited_audit_reason,
            edited_audit_state,
            stripped_last_audit,
            stripped_middle_audit,
            replayed_active_row,
            replayed_destroyed_row,
            deleted_destroyed_record,
            deleted_retired_record,
            deleted_scope,
            stripped_record_auth,
            deleted_integrity_record,
            injected_unauthenticated_audit,
            harmless_changes_verify,
            whole_store_rollback,
        );
    };
}

mod file {
    all_scenarios!(crate::tamper::file());
}

mod sqlite {
    all_scenarios!(crate::tamper::sqlite());
}

mod postgres {
    all_scenarios!(crate::tamper::postgres());
}

mod mariadb {
    all_scenarios!(crate::tamper::mariadb());
}
