//! Runs the key-store conformance suite (`support/store_suite.rs`) on every key store: memory,
//! JSON file, SQLite, PostgreSQL and MariaDB. The database stores need
//! `cargo test -p leakless --all-features`; PostgreSQL and MariaDB come from `LEAKLESS_PG_URL`
//! / `LEAKLESS_MYSQL_URL` or from throwaway servers started by `scripts/` (see
//! `leakless-testkit`), each test in a database of its own.

use std::sync::Arc;

use leakless::store::{KeyStore, MemoryKeyStore};

use crate::support::store_suite::Fixture;

/// Declares one `#[test]` per suite check for a store, each on a fresh fixture.
macro_rules! conformance {
    ($fixture:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let fixture = $fixture;
                crate::support::store_suite::$check(&fixture);
            }
        )*
    };
}

/// The checks every store must pass.
macro_rules! all_checks {
    ($fixture:expr) => {
        conformance!($fixture;
            empty_store,
            round_trips_every_field,
            scopes_sorted_and_deduplicated,
            apply_is_atomic,
            duplicate_insert_conflicts,
            stale_cas_conflicts,
            audit_log_order_and_filter,
            racing_cas_has_one_winner,
            keyring_round,
        );
    };
}

/// One in-memory store; every handle is the same store.
struct MemoryFixture(Arc<MemoryKeyStore>);

impl Fixture for MemoryFixture {
    fn open(&self) -> Arc<dyn KeyStore> {
        self.0.clone()
    }
}

mod memory {
    use super::*;
    all_checks!(MemoryFixture(Arc::new(MemoryKeyStore::new())));
}

#[cfg(feature = "file-store")]
mod file {
    use super::*;
    use leakless::store::FileKeyStore;

    /// A JSON file in a temporary folder; each handle opens the same path.
    struct FileFixture {
        dir: tempfile::TempDir,
    }

    impl FileFixture {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }
    }

    impl Fixture for FileFixture {
        fn open(&self) -> Arc<dyn KeyStore> {
            Arc::new(FileKeyStore::open(self.dir.path().join("keys.json")).unwrap())
        }
    }

    all_checks!(FileFixture::new());

    /// A record edited outside leakless (a state name it never writes) is a corrupt-store
    /// error naming the store, the record and the field, not an invalid argument.
    #[test]
    fn a_record_with_an_unknown_state_is_corrupt() {
        let f = FileFixture::new();
        let path = f.dir.path().join("keys.json");
        ring_with_scope(f.open());
        // The positive control: the store opens before the edit.
        FileKeyStore::open(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("\"active\"", "\"bogus\"", 1);
        assert_ne!(edited, text);
        std::fs::write(&path, edited).unwrap();
        match FileKeyStore::open(&path) {
            Err(leakless::Error::KeyStoreCorrupt {
                store: "file",
                record,
                field: "state",
                problem,
            }) => {
                assert!(record.starts_with("key record "), "{record}");
                assert!(problem.contains("\"bogus\""), "{problem}");
            }
            other => panic!("expected KeyStoreCorrupt, got {:?}", other.map(|_| ())),
        }
    }
}

/// Creates scope `patients` on `store` through a key ring (with its integrity key).
#[cfg(any(feature = "file-store", feature = "sqlite"))]
fn ring_with_scope(store: Arc<dyn KeyStore>) {
    let ring = leakless::KeyRing::builder(
        Arc::new(leakless::kms::LocalKms::from_root_key(
            leakless::secret::RootKey::generate(),
        )),
        store,
    )
    .build();
    ring.create_scope(
        &leakless::KeyScope::new("patients").unwrap(),
        &leakless::AuditInfo::new("test", "corrupt-row"),
    )
    .unwrap();
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use leakless::store::sql::{SqlBackend, SqlKeyStore};

    /// An SQLite file in a temporary folder; each handle is a new connection.
    struct SqliteFixture {
        dir: tempfile::TempDir,
    }

    impl SqliteFixture {
        fn new() -> Self {
            let fixture = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            let store = SqlKeyStore::sqlite(fixture.path()).unwrap();
            store.create_schema().unwrap();
            // Idempotent.
            store.create_schema().unwrap();
            fixture
        }

        fn path(&self) -> std::path::PathBuf {
            self.dir.path().join("keys.sqlite")
        }
    }

    impl Fixture for SqliteFixture {
        fn open(&self) -> Arc<dyn KeyStore> {
            Arc::new(SqlKeyStore::sqlite(self.path()).unwrap())
        }
    }

    all_checks!(SqliteFixture::new());
    conformance!(SqliteFixture::new(); schema_allows_one_active_version);

    #[test]
    fn connect_url_and_file_mode() {
        let fixture = SqliteFixture::new();
        let url = format!("sqlite://{}", fixture.path().display());
        let store = SqlKeyStore::connect(&url).unwrap();
        assert_eq!(store.backend(), SqlBackend::Sqlite);
        assert_eq!(store.name(), "sqlite");
        assert!(store.scopes().unwrap().is_empty());
        assert!(format!("{store:?}").contains("backend: \"sqlite\""));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(fixture.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "key store file readable by others: {mode:o}"
            );
        }
    }

    /// A row holding values leakless never writes (and the schema's constraints let through)
    /// is a corrupt-store error naming the store, the record and the column (once an invalid
    /// argument, exit 2 in the migrator).
    #[test]
    fn rows_with_impossible_values_are_corrupt() {
        use diesel::{Connection as _, RunQueryDsl as _, SqliteConnection};
        let scope = leakless::KeyScope::new("patients").unwrap();
        for (edit, field) in [
            // (The schema's CHECK constraints refuse an unknown state and half a wrapped key.)
            ("tag = X'00'", "tag"),
            ("seq = NULL", "seq, tag"),
            ("seq = -5", "seq"),
            ("recheck_secs = -1", "recheck_secs"),
        ] {
            let fixture = SqliteFixture::new();
            ring_with_scope(fixture.open());
            // The positive control: the record reads before the edit.
            assert_eq!(fixture.open().list(&scope).unwrap().len(), 1);
            let mut conn =
                SqliteConnection::establish(&fixture.path().display().to_string()).unwrap();
            diesel::sql_query(format!(
                "UPDATE leakless_kek SET {edit} WHERE scope = 'patients'"
            ))
            .execute(&mut conn)
            .unwrap();
            match fixture.open().list(&scope) {
                Err(leakless::Error::KeyStoreCorrupt {
                    store: "sqlite",
                    record,
                    field: f,
                    ..
                }) => {
                    assert_eq!(record, "key record patients v1");
                    assert_eq!(f, field);
                }
                other => panic!("{edit}: expected KeyStoreCorrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_schema_is_a_key_store_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlKeyStore::sqlite(dir.path().join("empty.sqlite")).unwrap();
        let err = store
            .list(&leakless::KeyScope::new("x").unwrap())
            .unwrap_err();
        assert!(
            matches!(
                err,
                leakless::Error::KeyStore {
                    store: "sqlite",
                    operation: "list",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_scheme_is_refused_without_the_password() {
        let err = SqlKeyStore::connect("oracle://scott:tiger-pw@db/x").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("tiger-pw"), "{text}");
        assert!(
            matches!(err, leakless::Error::InvalidInput { .. }),
            "{err:?}"
        );
    }
}

/// A server database of its own (PostgreSQL or MariaDB); each handle is a new connection,
/// made by `open` (`SqlKeyStore::postgres` or `SqlKeyStore::mysql`).
/// A server database of its own (PostgreSQL or MariaDB); each handle is a new connection,
/// made by `open` (`SqlKeyStore::postgres` or `SqlKeyStore::mysql`).
#[cfg(any(feature = "postgres", feature = "mysql"))]
struct ServerFixture {
    db: crate::support::services::TestDb,
    open: fn(&str) -> Result<leakless::store::sql::SqlKeyStore, leakless::Error>,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl ServerFixture {
    /// The fixture over `db`, with the schema created (twice: creating it again is a no-op).
    fn new(
        db: crate::support::services::TestDb,
        open: fn(&str) -> Result<leakless::store::sql::SqlKeyStore, leakless::Error>,
    ) -> Self {
        let store = open(db.url()).unwrap();
        store.create_schema().unwrap();
        store.create_schema().unwrap();
        Self { db, open }
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl Fixture for ServerFixture {
    fn open(&self) -> Arc<dyn KeyStore> {
        Arc::new((self.open)(self.db.url()).unwrap())
    }
}

/// The password in `url`, if it carries one.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.rsplit_once('@')?.0;
    userinfo
        .split_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
}

/// The password the bad-password checks put in a store URL: no error may show it.
#[cfg(any(feature = "postgres", feature = "mysql"))]
const WRONG_PASSWORD: &str = "wrong-secret-pw";

/// The tests of a server store, on fresh fixtures (`fixture()`, which this defines, gives one
/// over a new database `$db` of the backend named `$store`, opened by `$open`): the
/// conformance suite, the one-active-version schema check, `SqlKeyStore::connect` on the
/// fixture's URL, which must pick that backend and show the URL only redacted in its Debug
/// (a password it carries masked), and a connect refused for the URL `$bad_url` makes of the fixture's (carrying
/// [`WRONG_PASSWORD`]), with an error that does not show the password.
#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! server_checks {
    ($db:expr, $open:expr, $store:literal, $bad_url:expr) => {
        /// A database of its own on the backend.
        fn fixture() -> ServerFixture {
            ServerFixture::new($db, $open)
        }

        all_checks!(fixture());
        conformance!(fixture(); schema_allows_one_active_version);

        #[test]
        fn connect_dispatches_and_debug_is_redacted() {
            let fixture = fixture();
            let store = leakless::store::sql::SqlKeyStore::connect(fixture.db.url()).unwrap();
            assert_eq!(store.name(), $store);
            assert!(store.scopes().unwrap().is_empty());
            let debug = format!("{store:?}");
            assert!(
                debug.contains(&leakless::redact::redact_url(fixture.db.url())),
                "{debug}"
            );
            // A throwaway server's URL carries a password; Debug must not.
            if let Some(password) = password_of(fixture.db.url()) {
                assert!(!debug.contains(password), "Debug shows the password");
                assert!(debug.contains(leakless::redact::MASK), "{debug}");
            }
        }

        #[test]
        fn bad_password_error_does_not_show_it() {
            let fixture = fixture();
            let err = ($open)(&$bad_url(fixture.db.url())).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains(WRONG_PASSWORD), "{text}");
            assert!(
                matches!(
                    err,
                    leakless::Error::KeyStore {
                        store: $store,
                        operation: "connect",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    };
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::support::services::TestDb;
    use leakless::store::sql::SqlKeyStore;

    server_checks!(
        TestDb::postgres(),
        SqlKeyStore::postgres,
        "postgres",
        bad_password_url
    );

    /// `url` pointing at a database that does not exist, with [`WRONG_PASSWORD`] in it.
    fn bad_password_url(url: &str) -> String {
        crate::support::services::with_database(url, "leakless_no_such_db").replacen(
            "postgres@",
            &format!("postgres:{WRONG_PASSWORD}@"),
            1,
        )
    }
}

#[cfg(feature = "mysql")]
mod mariadb {
    use super::*;
    use crate::support::services::TestDb;
    use leakless::store::sql::SqlKeyStore;

    server_checks!(
        TestDb::mysql(),
        SqlKeyStore::mysql,
        "mysql",
        bad_password_url
    );

    /// `url` with its password replaced by [`WRONG_PASSWORD`] (or given one).
    fn bad_password_url(url: &str) -> String {
        match password_of(url) {
            Some(p) => url.replacen(&format!(":{p}@"), &format!(":{WRONG_PASSWORD}@"), 1),
            None => url.replacen("://root@", &format!("://root:{WRONG_PASSWORD}@"), 1),
        }
    }

    #[test]
    fn scopes_are_case_sensitive() {
        let fixture = fixture();
        let ring = leakless::KeyRing::builder(
            Arc::new(leakless::kms::LocalKms::from_root_key(
                leakless::secret::RootKey::generate(),
            )),
            fixture.open(),
        )
        .build();
        let who = leakless::AuditInfo::new("t", "case");
        for name in ["Tenant", "tenant", "TENANT"] {
            ring.create_scope(&leakless::KeyScope::new(name).unwrap(), &who)
                .unwrap();
        }
        let names: Vec<String> = ring
            .store()
            .scopes()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["TENANT", "Tenant", "leakless:integrity", "tenant"]);
    }
}
