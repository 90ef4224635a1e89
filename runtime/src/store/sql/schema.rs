//! The two tables of the SQL key stores, as diesel sees them and as each backend creates them.

diesel::table! {
    /// One row per KEK version.
    leakless_kek (scope, version) {
        scope -> Text,
        version -> BigInt,
        state -> Text,
        grace_until -> Nullable<BigInt>,
        root_key_id -> Nullable<Text>,
        wrapped_kek -> Nullable<Binary>,
        created_at -> BigInt,
        updated_at -> BigInt,
        deactivated_at -> Nullable<BigInt>,
        recheck_secs -> Nullable<BigInt>,
        seq -> Nullable<BigInt>,
        tag -> Nullable<Binary>,
    }
}

diesel::table! {
    /// The key audit log, in insertion order.
    leakless_key_audit (id) {
        id -> BigInt,
        at -> BigInt,
        actor -> Text,
        reason -> Text,
        action -> Text,
        scope -> Text,
        version -> BigInt,
        from_state -> Nullable<Text>,
        from_grace_until -> Nullable<BigInt>,
        to_state -> Text,
        to_grace_until -> Nullable<BigInt>,
        seq -> Nullable<BigInt>,
        tag -> Nullable<Binary>,
    }
}

/// The statements that make the two tables as SQLite and PostgreSQL create them, followed by
/// `$more`: `$text` is the type of the scope column, `$binary` the type of byte columns, `$id`
/// the audit log's auto-increment key.
macro_rules! tables {
    ($text:literal, $binary:literal, $id:literal, $($more:expr),* $(,)?) => {
        &[
            concat!(
                "CREATE TABLE IF NOT EXISTS leakless_kek (
    scope ",
                $text,
                " NOT NULL CHECK (length(scope) BETWEEN 1 AND 64),
    version BIGINT NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
    state TEXT NOT NULL CHECK (state IN ('active', 'grace', 'retired', 'destroyed')),
    grace_until BIGINT NULL,
    root_key_id TEXT NULL,
    wrapped_kek ",
                $binary,
                " NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deactivated_at BIGINT NULL,
    recheck_secs BIGINT NULL,
    seq BIGINT NULL,
    tag ",
                $binary,
                " NULL,
    PRIMARY KEY (scope, version),
    CHECK (state <> 'grace' OR grace_until IS NOT NULL),
    CHECK (state <> 'destroyed' OR wrapped_kek IS NULL),
    CHECK ((root_key_id IS NULL) = (wrapped_kek IS NULL))
)"
            ),
            "CREATE UNIQUE INDEX IF NOT EXISTS leakless_kek_one_active
    ON leakless_kek (scope) WHERE state = 'active'",
            concat!(
                "CREATE TABLE IF NOT EXISTS leakless_key_audit (
    id ",
                $id,
                ",
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    action TEXT NOT NULL,
    scope ",
                $text,
                " NOT NULL,
    version BIGINT NOT NULL,
    from_state TEXT NULL,
    from_grace_until BIGINT NULL,
    to_state TEXT NOT NULL,
    to_grace_until BIGINT NULL,
    seq BIGINT NULL,
    tag ",
                $binary,
                " NULL
)"
            ),
            "CREATE INDEX IF NOT EXISTS leakless_key_audit_scope ON leakless_key_audit (scope, id)",
            $($more),*
        ]
    };
}

/// The audit chain's compare-and-swap: one entry per sequence number (SQLite, PostgreSQL).
const AUDIT_SEQ_INDEX: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS leakless_key_audit_seq ON leakless_key_audit (seq)";

/// SQLite: the partial unique index keeps one active version per scope.
pub(crate) const SQLITE: &[&str] = tables!(
    "TEXT",
    "BLOB",
    "INTEGER PRIMARY KEY AUTOINCREMENT",
    AUDIT_SEQ_INDEX,
);

/// SQLite and MariaDB / MySQL: the columns that authenticated key stores added, for tables
/// made before them; run before [`SQLITE`] or [`MYSQL`]. SQLite and MySQL have no `ADD COLUMN
/// IF NOT EXISTS`: each statement runs on its own, and "no such table" / "doesn't exist" (a new
/// store) or "duplicate column name" (already there) is fine.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) const ADD_AUTH_COLUMNS: &[&str] = &[
    "ALTER TABLE leakless_kek ADD COLUMN deactivated_at BIGINT NULL",
    "ALTER TABLE leakless_kek ADD COLUMN recheck_secs BIGINT NULL",
    "ALTER TABLE leakless_kek ADD COLUMN seq BIGINT NULL",
    "ALTER TABLE leakless_kek ADD COLUMN tag BLOB NULL",
    "ALTER TABLE leakless_key_audit ADD COLUMN seq BIGINT NULL",
    "ALTER TABLE leakless_key_audit ADD COLUMN tag BLOB NULL",
];

/// PostgreSQL: `COLLATE "C"` orders scopes bytewise, as [`KeyScope`](crate::KeyScope) does;
/// the partial unique index keeps one active version per scope.
pub(crate) const POSTGRES: &[&str] = tables!(
    "TEXT COLLATE \"C\"",
    "BYTEA",
    "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    // Tables made before authenticated key stores get the new columns.
    "ALTER TABLE leakless_kek ADD COLUMN IF NOT EXISTS deactivated_at BIGINT NULL,
    ADD COLUMN IF NOT EXISTS recheck_secs BIGINT NULL,
    ADD COLUMN IF NOT EXISTS seq BIGINT NULL,
    ADD COLUMN IF NOT EXISTS tag BYTEA NULL",
    "ALTER TABLE leakless_key_audit ADD COLUMN IF NOT EXISTS seq BIGINT NULL,
    ADD COLUMN IF NOT EXISTS tag BYTEA NULL",
    AUDIT_SEQ_INDEX,
);

#[cfg(feature = "postgres")]
/// PostgreSQL: true when [`POSTGRES`] has nothing left to do in the current schema: both
/// tables with every column the upgrades add, and the three indexes.
pub(crate) const POSTGRES_CURRENT: &str = "(SELECT count(*) FROM information_schema.columns
    WHERE table_schema = current_schema()
    AND ((table_name = 'leakless_kek'
          AND column_name IN ('deactivated_at', 'recheck_secs', 'seq', 'tag'))
      OR (table_name = 'leakless_key_audit' AND column_name IN ('seq', 'tag')))) = 6
    AND (SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema()
    AND indexname IN ('leakless_kek_one_active', 'leakless_key_audit_scope',
                      'leakless_key_audit_seq')) = 3";

/// MariaDB / MySQL: no partial indexes, so the generated column `active_one` is 1 for the
/// active version and NULL otherwise, and a unique key on `(scope, active_one)` allows one 1
/// per scope (NULLs never collide). Scopes are `ascii_bin`: compared and ordered bytewise,
/// case-sensitively, as [`KeyScope`](crate::KeyScope) is.
pub(crate) const MYSQL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS leakless_kek (
    scope VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version BIGINT NOT NULL,
    state VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    grace_until BIGINT NULL,
    root_key_id TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    wrapped_kek BLOB NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deactivated_at BIGINT NULL,
    recheck_secs BIGINT NULL,
    seq BIGINT NULL,
    tag BLOB NULL,
    active_one TINYINT AS (CASE WHEN state = 'active' THEN 1 ELSE NULL END) STORED,
    PRIMARY KEY (scope, version),
    UNIQUE KEY leakless_kek_one_active (scope, active_one),
    CONSTRAINT leakless_kek_version CHECK (version BETWEEN 1 AND 4294967295),
    CONSTRAINT leakless_kek_state CHECK (state IN ('active', 'grace', 'retired', 'destroyed')),
    CONSTRAINT leakless_kek_grace CHECK (state <> 'grace' OR grace_until IS NOT NULL),
    CONSTRAINT leakless_kek_shredded CHECK (state <> 'destroyed' OR wrapped_kek IS NULL),
    CONSTRAINT leakless_kek_wrapped CHECK ((root_key_id IS NULL) = (wrapped_kek IS NULL))
) ENGINE = InnoDB",
    "CREATE TABLE IF NOT EXISTS leakless_key_audit (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    reason TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    action VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    scope VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version BIGINT NOT NULL,
    from_state VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NULL,
    from_grace_until BIGINT NULL,
    to_state VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    to_grace_until BIGINT NULL,
    seq BIGINT NULL,
    tag BLOB NULL,
    KEY leakless_key_audit_scope (scope, id),
    UNIQUE KEY leakless_key_audit_seq (seq)
) ENGINE = InnoDB",
];

/// MariaDB / MySQL: the audit chain's unique index, for tables made before authenticated key
/// stores; run after [`ADD_AUTH_COLUMNS`] and before [`MYSQL`], where "Duplicate key name"
/// (already there) and "doesn't exist" (a new store) are fine.
#[cfg(feature = "mysql")]
pub(crate) const MYSQL_ADD_SEQ_INDEX: &str =
    "ALTER TABLE leakless_key_audit ADD UNIQUE KEY leakless_key_audit_seq (seq)";
