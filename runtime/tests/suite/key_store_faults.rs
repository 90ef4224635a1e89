//! Fault paths of the SQL key store on PostgreSQL and MariaDB that the conformance suite does
//! not reach: the server closing the store's connection (the store must reconnect, and the
//! error it may return on the way must be typed and free of the password), and lost races
//! inside `apply` (a deadlock or serialization failure must become
//! `Error::ConcurrentModification` with the whole transaction rolled back).
//!
//! Needs `cargo test -p leakless --all-features`; the servers come from `LEAKLESS_PG_URL` /
//! `LEAKLESS_MYSQL_URL` or from throwaway servers (see `leakless-testkit`), each test in a
//! database of its own. A missing server fails the test; nothing is skipped.

#![cfg(all(feature = "postgres", feature = "mysql"))]

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel::{MysqlConnection, PgConnection};
use leakless::key::{AuditRecord, KekRecord, KeyAction, RecordUpdate, StoreChange, UnixTime};
use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::KeyStore;
use leakless::store::sql::SqlKeyStore;
use leakless::{AuditInfo, Error, KekState, KekVersion, KeyRing, KeyScope};

use crate::support::services::TestDb;

const GRACE: Duration = Duration::from_secs(3600);

/// Which server a test runs on.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Postgres,
    Mysql,
}

/// A plain diesel connection to the test database, beside the store's own.
enum Side {
    Pg(PgConnection),
    My(MysqlConnection),
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

impl Side {
    fn open(db: &TestDb, backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                Side::Pg(PgConnection::establish(db.url()).unwrap_or_else(|e| {
                    panic!("PostgreSQL: second connection to {}: {e}", db.name())
                }))
            }
            Backend::Mysql => Side::My(
                MysqlConnection::establish(db.url())
                    .unwrap_or_else(|e| panic!("MariaDB: second connection to {}: {e}", db.name())),
            ),
        }
    }

    fn exec(&mut self, sql: &str) -> Result<(), diesel::result::Error> {
        match self {
            Side::Pg(c) => c.batch_execute(sql),
            Side::My(c) => c.batch_execute(sql),
        }
    }

    fn count(&mut self, sql: &str) -> i64 {
        let rows = match self {
            Side::Pg(c) => diesel::sql_query(sql).load::<Count>(c),
            Side::My(c) => diesel::sql_query(sql).load::<Count>(c),
        };
        rows.unwrap_or_else(|e| panic!("{sql}: {e}"))
            .first()
            .map_or(0, |c| c.n)
    }

    /// Closes, from the server side, every other connection to this test database (that is,
    /// the store's), and waits until the server no longer lists them.
    fn kill_other_connections(&mut self) {
        let killed = match self {
            // The subquery (OFFSET 0 keeps it from being flattened) picks the other sessions
            // of this database before anything is terminated.
            Side::Pg(c) => diesel::sql_query(
                "SELECT CAST(pid AS BIGINT) AS id FROM ( \
                   SELECT pid FROM pg_stat_activity \
                   WHERE datname = current_database() AND pid <> pg_backend_pid() OFFSET 0 \
                 ) AS others WHERE pg_terminate_backend(pid)",
            )
            .load::<Id>(c)
            .unwrap()
            .len(),
            Side::My(c) => {
                let ids = diesel::sql_query(
                    "SELECT CAST(ID AS SIGNED) AS id FROM information_schema.PROCESSLIST \
                     WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
                )
                .load::<Id>(c)
                .unwrap();
                for id in &ids {
                    c.batch_execute(&format!("KILL {}", id.id)).unwrap();
                }
                ids.len()
            }
        };
        assert!(killed >= 1, "no store connection to kill");
        let others = match self {
            Side::Pg(_) => {
                "SELECT COUNT(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()"
            }
            Side::My(_) => {
                "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
                 WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
            }
        };
        self.wait_for(others, 0);
    }

    /// Polls the count query `sql` until it returns `want`, for at most 20 seconds.
    fn wait_for(&mut self, sql: &str, want: i64) {
        let start = Instant::now();
        loop {
            let n = self.count(sql);
            if n == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "waited 20 s for {sql} to give {want}, it gives {n}"
            );
            // Slower than 0.1 s: InnoDB refreshes its information_schema.INNODB_TRX snapshot
            // only when it has not been read for 0.1 s, so faster polling sees a stale one.
            thread::sleep(Duration::from_millis(150));
        }
    }
}

fn new_db(backend: Backend) -> TestDb {
    match backend {
        Backend::Postgres => TestDb::postgres(),
        Backend::Mysql => TestDb::mysql(),
    }
}

/// The password in `url`, if it has one.
fn password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = &rest[..rest.rfind('@')?];
    let pw = userinfo.split_once(':')?.1;
    (!pw.is_empty()).then_some(pw)
}

/// The URL the store connects with. The throwaway PostgreSQL cluster uses trust auth and a
/// URL without a password; a made-up password is added so that the "no password in errors"
/// checks have something to look for (the server ignores it).
fn store_url(db: &TestDb) -> String {
    let url = db.url();
    if password(url).is_some() {
        return url.to_owned();
    }
    let (scheme, rest) = url.split_once("://").unwrap();
    match rest.rfind('@') {
        Some(at) => format!(
            "{scheme}://{}:Pw{:016x}{}",
            &rest[..at],
            rand::random::<u64>(),
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

fn open_store(url: &str) -> Arc<SqlKeyStore> {
    Arc::new(SqlKeyStore::connect(url).unwrap_or_else(|e| panic!("open the key store: {e}")))
}

fn who() -> AuditInfo {
    AuditInfo::new("fault-test", "TICKET-42")
}

fn ring(kms: &Arc<LocalKms>, store: Arc<SqlKeyStore>) -> KeyRing {
    KeyRing::builder(kms.clone(), store).build()
}

fn scope() -> KeyScope {
    KeyScope::new("patients").unwrap()
}

/// `err` is a typed key-store error of `backend` and its text holds neither the password nor
/// the URL.
fn assert_clean_store_error(err: &Error, url: &str, backend: &'static str) {
    let text = format!("{err} {err:?}");
    assert!(
        matches!(err, Error::KeyStore { store, .. } if *store == backend),
        "expected Error::KeyStore from {backend}, got {text}"
    );
    assert!(!text.contains(url), "error shows the URL");
    if let Some(pw) = password(url) {
        assert!(!text.contains(pw), "error shows the password");
    }
}

/// A change that retires `grace` (a grace version) and writes one audit record: the
/// lifecycle's `retire`, built by hand so a test controls when it runs.
fn retire_change(grace: &KekRecord, also_touch: Option<&KekRecord>) -> StoreChange {
    let now = UnixTime(grace.updated_at.0 + 1);
    let mut after = grace.clone();
    after.state = KekState::Retired;
    after.updated_at = now;
    let mut updates = vec![RecordUpdate {
        before: grace.clone(),
        after: after.clone(),
    }];
    if let Some(other) = also_touch {
        let mut touched = other.clone();
        touched.updated_at = now;
        updates.push(RecordUpdate {
            before: other.clone(),
            after: touched,
        });
    }
    StoreChange {
        inserts: vec![],
        updates,
        audit: vec![AuditRecord {
            at: now,
            actor: "fault-test".into(),
            reason: "TICKET-42".into(),
            action: KeyAction::Retire,
            scope: grace.scope.clone(),
            version: grace.version,
            from: Some(grace.state),
            to: KekState::Retired,
            auth: None,
        }],
    }
}

fn v(n: u32) -> KekVersion {
    KekVersion::new(n).unwrap()
}

/// A store on a fresh database (its guard and URL), with scope `patients` at v1 made through
/// `ring`, a key ring over `kms`.
struct Scoped {
    db: TestDb,
    url: String,
    store: Arc<SqlKeyStore>,
    kms: Arc<LocalKms>,
    ring: KeyRing,
}

/// Sets up a store on a fresh database with the schema and scope `patients` at v1 (active).
fn scoped_store(backend: Backend) -> Scoped {
    let db = new_db(backend);
    let url = store_url(&db);
    let store = open_store(&url);
    store.create_schema().unwrap();
    let kms = Arc::new(LocalKms::from_root_key(RootKey::generate()));
    let ring = ring(&kms, store.clone());
    ring.create_scope(&scope(), &who()).unwrap();
    Scoped {
        db,
        url,
        store,
        kms,
        ring,
    }
}

/// Sets up a store on a fresh database with scope `patients` at v1 (grace) and v2 (active).
fn rotated_store(backend: Backend) -> (TestDb, String, Arc<SqlKeyStore>, KeyRing) {
    let s = scoped_store(backend);
    assert_eq!(s.ring.rotate(&scope(), GRACE, &who()).unwrap(), v(2));
    (s.db, s.url, s.store, s.ring)
}

// ----- reconnect ------------------------------------------------------------------------------

/// Kills the store's connection while it is idle; the next read either reconnects and succeeds
/// or fails with a clean `Error::KeyStore`; the read after that succeeds, and so do writes.
fn reconnect_after_kill_on_read(backend: Backend) {
    let (db, url, store, ring) = rotated_store(backend);
    let before = store.list(&scope()).unwrap();
    assert_eq!(before.len(), 2);

    Side::open(&db, backend).kill_other_connections();

    match store.list(&scope()) {
        Ok(records) => {
            eprintln!("{backend:?}: first read after the kill reconnected and succeeded");
            assert_eq!(records, before);
        }
        Err(e) => {
            eprintln!("{backend:?}: first read after the kill failed: {e}");
            assert_clean_store_error(&e, &url, store.backend().name());
        }
    }
    assert_eq!(store.list(&scope()).unwrap(), before);
    // Writes work on the new connection too.
    assert_eq!(ring.rotate(&scope(), GRACE, &who()).unwrap(), v(3));
    assert_eq!(
        store.audit_log(None).unwrap().len(),
        1 + 1 + 2 + 2,
        "integrity key, create, two rotations"
    );
}

/// Kills the store's connection, then the next call is a write (`apply`, a transaction): it
/// either reconnects and applies the change once, or fails cleanly and writes nothing; the
/// store works afterwards.
fn reconnect_after_kill_on_write(backend: Backend) {
    let (db, url, store, _ring) = rotated_store(backend);
    let before = store.list(&scope()).unwrap();
    let change = retire_change(&before[0], None);

    Side::open(&db, backend).kill_other_connections();

    let applied = match store.apply(change.clone()) {
        Ok(()) => {
            eprintln!("{backend:?}: first write after the kill reconnected and succeeded");
            true
        }
        Err(e) => {
            eprintln!("{backend:?}: first write after the kill failed: {e}");
            assert_clean_store_error(&e, &url, store.backend().name());
            false
        }
    };
    let now = store.list(&scope()).unwrap();
    let audit = store.audit_log(Some(&scope())).unwrap();
    if applied {
        assert_eq!(now[0].state, KekState::Retired);
        assert_eq!(audit.len(), 4);
    } else {
        assert_eq!(now, before, "a failed write changed a record");
        assert_eq!(audit.len(), 3, "a failed write left an audit record");
        // The same change goes through on the new connection.
        store.apply(change).unwrap();
        assert_eq!(store.list(&scope()).unwrap()[0].state, KekState::Retired);
        assert_eq!(store.audit_log(Some(&scope())).unwrap().len(), 4);
    }
}

// ----- lost races -----------------------------------------------------------------------------

const THREADS: usize = 4;
const ROTATIONS_PER_THREAD: usize = 8;

/// `THREADS` processes (each its own store, connection and key ring, one KMS) rotate the same
/// scope `THREADS * ROTATIONS_PER_THREAD` times in all. Every call returns Ok or
/// `ConcurrentModification`; the versions stay contiguous with one active; the audit log has
/// exactly the records of the winners.
fn racing_rotations(backend: Backend) {
    let Scoped {
        db: _db,
        url,
        kms,
        ring: ring0,
        ..
    } = scoped_store(backend);

    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let ring = ring(&kms, open_store(&url));
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                (0..ROTATIONS_PER_THREAD)
                    .map(|_| ring.rotate(&scope(), GRACE, &who()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();

    let mut won = Vec::new();
    let mut lost = 0_usize;
    let mut other = Vec::new();
    for worker in workers {
        for result in worker.join().expect("a rotating thread panicked") {
            match result {
                Ok(version) => won.push(version),
                Err(Error::ConcurrentModification { scope: s, .. }) if s == scope() => lost += 1,
                Err(e) => other.push(format!("{e} / {e:?}")),
            }
        }
    }
    eprintln!(
        "{backend:?}: {} rotations won, {lost} lost to ConcurrentModification",
        won.len()
    );
    assert!(
        other.is_empty(),
        "rotations failed with errors other than ConcurrentModification: {other:#?}"
    );
    assert_eq!(won.len() + lost, THREADS * ROTATIONS_PER_THREAD);
    assert!(!won.is_empty(), "no rotation won");

    let k = u32::try_from(1 + won.len()).unwrap();
    won.sort();
    let expected_won: Vec<_> = (2..=k).map(v).collect();
    assert_eq!(
        won, expected_won,
        "each winning rotation made its own version"
    );

    let records = ring0.versions(&scope()).unwrap();
    let versions: Vec<_> = records.iter().map(|r| r.version).collect();
    let expected: Vec<_> = (1..=k).map(v).collect();
    assert_eq!(versions, expected, "versions are not 1..={k}");
    let active: Vec<_> = records
        .iter()
        .filter(|r| r.state == KekState::Active)
        .map(|r| r.version)
        .collect();
    assert_eq!(active, vec![v(k)], "exactly the newest version is active");
    assert!(
        records[..records.len() - 1]
            .iter()
            .all(|r| matches!(r.state, KekState::Grace { .. })),
        "every older version is in grace"
    );

    let audit = ring0.audit_log(Some(&scope())).unwrap();
    assert_eq!(audit.len(), 1 + 2 * won.len());
    let rotations = audit
        .iter()
        .filter(|a| a.action == KeyAction::Rotate)
        .count();
    assert_eq!(rotations, 2 * won.len());
}

/// Provokes a real deadlock inside `apply`: the store locks v1 then v2 (the order of its
/// updates) while a second connection holds v2 and then asks for v1. The database aborts the
/// store's transaction (it is made the victim: PostgreSQL's detector fires first in the
/// process that waited first; InnoDB rolls back the lighter transaction, and the second
/// connection is made heavy first). `apply` must return `ConcurrentModification`, write
/// nothing, and leave the store usable.
fn deadlock_in_apply(backend: Backend) {
    let (db, _url, store, ring) = rotated_store(backend);
    let before = store.list(&scope()).unwrap();
    let audit_before = store.audit_log(None).unwrap();
    let change = retire_change(&before[0], Some(&before[1]));

    let mut side = Side::open(&db, backend);
    let mut watch = Side::open(&db, backend);
    side.exec("CREATE TABLE ballast (n INT)").unwrap();
    match backend {
        Backend::Postgres => {
            side.exec("BEGIN").unwrap();
            // Best effort (needs superuser): make sure the store's session detects the cycle.
            side.exec("SAVEPOINT s").unwrap();
            if side.exec("SET LOCAL deadlock_timeout = '30s'").is_err() {
                side.exec("ROLLBACK TO SAVEPOINT s").unwrap();
            }
            side.exec("RELEASE SAVEPOINT s").unwrap();
        }
        Backend::Mysql => side.exec("START TRANSACTION").unwrap(),
    }
    // Weight for InnoDB's victim choice.
    let rows = vec!["(1)"; 200].join(",");
    side.exec(&format!("INSERT INTO ballast (n) VALUES {rows}"))
        .unwrap();
    side.exec(
        "SELECT version FROM leakless_kek WHERE scope = 'patients' AND version = 2 FOR UPDATE",
    )
    .unwrap();

    let applier = {
        let store = store.clone();
        thread::spawn(move || store.apply(change))
    };
    // Wait until the store's transaction waits for the lock on v2.
    watch.wait_for(
        match backend {
            Backend::Postgres => {
                "SELECT COUNT(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'"
            }
            Backend::Mysql => {
                "SELECT COUNT(*) AS n FROM information_schema.INNODB_TRX t \
                 JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
                 WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()"
            }
        },
        1,
    );
    // Close the cycle: this waits for the store's lock on v1.
    let closing = side.exec(
        "SELECT version FROM leakless_kek WHERE scope = 'patients' AND version = 1 FOR UPDATE",
    );
    let result = applier.join().expect("the applying thread panicked");
    side.exec("ROLLBACK").unwrap();
    assert!(
        closing.is_ok(),
        "the second connection was chosen as the deadlock victim, not the store: {closing:?}"
    );

    match &result {
        Err(Error::ConcurrentModification { scope: s, version }) => {
            assert_eq!(s, &scope());
            assert_eq!(*version, v(1));
        }
        other => {
            panic!("{backend:?}: a deadlock in apply gave {other:?}, not ConcurrentModification")
        }
    }
    assert_eq!(
        store.list(&scope()).unwrap(),
        before,
        "half a change stayed"
    );
    assert_eq!(
        store.audit_log(None).unwrap(),
        audit_before,
        "an audit record stayed"
    );

    // The store and its connection still work.
    assert_eq!(ring.rotate(&scope(), GRACE, &who()).unwrap(), v(3));
}

/// The fault tests of one backend, as a module `$name` of tests running on `$backend`.
macro_rules! fault_tests {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn reconnects_after_the_server_kills_an_idle_connection_then_reads() {
                reconnect_after_kill_on_read($backend);
            }

            #[test]
            fn reconnects_after_the_server_kills_an_idle_connection_then_writes() {
                reconnect_after_kill_on_write($backend);
            }

            #[test]
            fn racing_rotations_have_contiguous_versions_and_one_active() {
                racing_rotations($backend);
            }

            #[test]
            fn deadlock_in_apply_is_concurrent_modification_and_rolls_back() {
                deadlock_in_apply($backend);
            }
        }
    };
}

fault_tests!(postgres, Backend::Postgres);
fault_tests!(mariadb, Backend::Mysql);
