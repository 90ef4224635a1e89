//! Every exit code of `leakless-migrate`'s table (docs/operations.md, "Exit codes"), each
//! provoked by a real cause as a user meets it, with the code and a snapshot of stderr (the
//! fixture's temporary folder shown as `[DIR]`). Every case also checks that stderr holds no
//! database password and no plaintext of the table's rows.
//!
//! | code | causes tested here |
//! |---|---|
//! | 0 | `status` on a healthy database |
//! | 1 | a row that fails during `rewrap`; a `reencrypt` without `--yes` and no terminal |
//! | 2 | a bad argument; a database URL of unknown scheme; a manifest naming a column the database does not have |
//! | 3 | no root key given; a corrupt key-store row; a wrong root key |
//! | 4 | a database that cannot be reached |
//! | 5 | two rotations racing on one scope (the loser) |
//!
//! Exit code 5 is provoked for real and deterministically: two `leakless-migrate keys rotate`
//! processes on the same scope of a PostgreSQL key store, held at their compare-and-swap by a
//! row lock the test takes on the active KEK record. Both read the scope (v1 active) before
//! they block; when the test releases the lock, one rotates and the other finds the record
//! changed under it.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use leakless_migrator::db::OneInt;

use crate::support::{Backend, Fixture, SCOPE, bare, stderr, stdout};

/// A password planted in the database URLs of the cases: never in any output.
const PASSWORD: &str = "hunter2-Secret";

/// Checks the exit code of `o` and that its output holds neither [`PASSWORD`] nor any row's
/// plaintext, and returns stderr with `dir` (the fixture's folder) shown as `[DIR]`.
fn checked(o: &Output, code: i32, dir: Option<&std::path::Path>) -> String {
    let all = format!("{}{}", stdout(o), stderr(o));
    assert_eq!(o.status.code(), Some(code), "{all}");
    // The planted values are what a leak would show (see `support::plain`).
    assert!(crate::support::plain(3).contains("Baker") && PASSWORD.contains("hunter2"));
    for secret in ["hunter2", "Secret", "Baker", "@example.test"] {
        assert!(!all.contains(secret), "{secret:?} printed: {all}");
    }
    let err = stderr(o);
    match dir {
        Some(d) => err.replace(&d.display().to_string(), "[DIR]"),
        None => err,
    }
}

#[test]
fn exit_0_success() {
    let f = Fixture::new(Backend::Sqlite);
    f.seed(0, 10, false);
    let o = f.run(&["status"]);
    let err = checked(&o, 0, Some(f.dir.path()));
    assert!(stdout(&o).contains("patients.email"), "{}", stdout(&o));
    insta::assert_snapshot!("exit_0_status", err);
}

/// A row whose stored value is corrupt fails `rewrap` with help that points at `verify` and a
/// backup, never at reinstating a key (which cannot open it).
#[test]
fn exit_1_a_row_fails_during_rewrap() {
    let f = Fixture::new(Backend::Sqlite);
    f.seed(0, 10, false);
    f.rotate();
    f.corrupt_row(4);
    let o = f.run(&["rewrap"]);
    let err = checked(&o, 1, Some(f.dir.path()));
    assert!(
        stdout(&o).contains("failed: patients.email row 4:"),
        "{}",
        stdout(&o)
    );
    assert!(
        err.contains("`leakless-migrate verify` lists them all"),
        "{err}"
    );
    assert!(!err.contains("reinstate"), "{err}");
    insta::assert_snapshot!("exit_1_failed_row", err);
    // The other rows moved.
    assert_eq!(f.versions().get(&2), Some(&9));
}

/// `keys destroy` without `--yes` and with no terminal to confirm on.
#[test]
fn exit_1_a_confirmation_is_missing() {
    let f = Fixture::new(Backend::Sqlite);
    f.rotate();
    crate::support::wait_for_cache_window();
    let o = f.run(&["keys", "retire", SCOPE, "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = f.run(&["keys", "destroy", SCOPE, "v1"]);
    let err = checked(&o, 1, Some(f.dir.path()));
    insta::assert_snapshot!("exit_1_no_confirmation", err);
    // Nothing destroyed: the control, with --yes, does it.
    let o = f.run(&["keys", "destroy", SCOPE, "v1", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn exit_2_a_bad_argument() {
    let o = bare().args(["rewrap", "--workers", "0"]).output().unwrap();
    insta::assert_snapshot!("exit_2_bad_argument", checked(&o, 2, None));
}

#[test]
fn exit_2_a_database_url_of_unknown_scheme() {
    let f = Fixture::new(Backend::Sqlite);
    let url = format!("pgsql://app:{PASSWORD}@127.0.0.1:1/app");
    let o = f.run_with("LEAKLESS_DATABASE_URL", &url, &["rewrap"]);
    insta::assert_snapshot!("exit_2_unknown_scheme", checked(&o, 2, Some(f.dir.path())));
}

#[test]
fn exit_2_a_manifest_naming_a_column_the_database_lacks() {
    let f = Fixture::new(Backend::Sqlite);
    f.seed(0, 3, false);
    let text = std::fs::read_to_string(&f.manifest).unwrap();
    let renamed = text.replace("\"column\": \"email\"", "\"column\": \"e_mail\"");
    assert_ne!(renamed, text);
    std::fs::write(&f.manifest, renamed).unwrap();
    let o = f.run(&["rewrap"]);
    insta::assert_snapshot!("exit_2_unknown_column", checked(&o, 2, Some(f.dir.path())));
}

/// A command the manifest gives nothing to work on is a usage error naming the column: `adopt`
/// with no `--from` and no adoption recorded, `reindex` of a column without a blind index.
#[test]
fn exit_2_a_command_the_manifest_does_not_allow() {
    let f = Fixture::new(Backend::Sqlite);
    for (command, message) in [
        ("adopt", "no plaintext column to adopt"),
        ("reindex", "patients.email has no blind index"),
    ] {
        f.assert_fails(
            &[command, "--table", "patients", "--column", "email"],
            2,
            message,
        );
    }
}

#[test]
fn exit_3_no_root_key_given() {
    let f = Fixture::new(Backend::Sqlite);
    let o = f
        .cmd()
        .env_remove("LEAKLESS_ROOT_KEY_FILE")
        .arg("rewrap")
        .output()
        .unwrap();
    insta::assert_snapshot!("exit_3_no_root_key", checked(&o, 3, Some(f.dir.path())));
}

/// A key-store row holding a value leakless never writes is a key error naming the store, the
/// record and the column, not a usage mistake (once exit 2, "fix the argument named").
#[test]
fn exit_3_a_corrupt_key_store_row() {
    let f = Fixture::new(Backend::Sqlite);
    f.seed(0, 3, false);
    f.batch("UPDATE leakless_kek SET tag = X'00' WHERE scope = 'patients' AND version = 1");
    for args in [&["keys", "list"][..], &["rewrap"]] {
        let o = f.run(args);
        let err = checked(&o, 3, Some(f.dir.path()));
        assert!(
            err.contains(
                "error: key store sqlite: stored key record patients v1 is corrupt: tag: 1 bytes"
            ),
            "{args:?}: {err}"
        );
        if args == ["keys", "list"] {
            insta::assert_snapshot!("exit_3_corrupt_key_store_row", err);
        }
    }
}

/// A wrong root key (another installation's, or a mistyped path to an old one) is one key
/// error with exit 3 for every command that unwraps KEKs, not a failure per row with exit 1,
/// and nothing is written. The control: the right key moves every row.
#[test]
fn exit_3_a_wrong_root_key() {
    let f = Fixture::new(Backend::Sqlite);
    f.seed(0, 40, false);
    f.rotate();
    let other = f.dir.path().join("other.key");
    let o = bare()
        .args(["keys", "init", other.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The root key ids are random: shown as [ROOT KEY ID].
    let ids = [
        leakless::kms::Kms::root_key_id(
            &leakless::kms::LocalKms::from_key_file(&f.key_file).unwrap(),
        )
        .to_owned(),
        leakless::kms::Kms::root_key_id(&leakless::kms::LocalKms::from_key_file(&other).unwrap())
            .to_owned(),
    ];
    let before = f.rows();
    for args in [&["rewrap"][..], &["reencrypt", "--yes"], &["verify"]] {
        let o = f.run_with("LEAKLESS_ROOT_KEY_FILE", &other, args);
        let err = checked(&o, 3, Some(f.dir.path()));
        let all = format!("{}{err}", stdout(&o));
        assert!(all.contains("KMS local"), "{args:?}: {all}");
        assert!(
            !all.contains("failed: patients.email row"),
            "{args:?}: a per-row failure instead of one key error: {all}"
        );
        assert_eq!(f.rows(), before, "{args:?} wrote something");
        if args == ["rewrap"] {
            let err = ids
                .iter()
                .fold(err, |e, id| e.replace(id.as_str(), "[ROOT KEY ID]"));
            insta::assert_snapshot!("exit_3_wrong_root_key", err);
        }
    }
    // Control: with the right key the same rewrap moves all 40 rows.
    let o = f.run(&["rewrap"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(f.versions().get(&2), Some(&40));
}

#[test]
fn exit_4_an_unreachable_database() {
    let f = Fixture::new(Backend::Sqlite);
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:1/app");
    let o = f.run_with("LEAKLESS_DATABASE_URL", &url, &["keys", "list"]);
    insta::assert_snapshot!(
        "exit_4_unreachable_database",
        checked(&o, 4, Some(f.dir.path()))
    );
}

/// Rows of `sql` (one `n` column) on a fresh connection.
fn count(f: &Fixture, sql: &str) -> i64 {
    f.db().load::<OneInt>(sql, &[]).unwrap()[0].n
}

#[test]
fn two_rotations_racing_on_one_scope_give_exit_5_to_the_loser_and_write_nothing_for_it() {
    let f = Fixture::new(Backend::Postgres);
    let kek_rows = "SELECT count(*) AS n FROM leakless_kek";
    let audit_rows = "SELECT count(*) AS n FROM leakless_key_audit";
    assert_eq!(count(&f, kek_rows), 2, "the integrity key and v1");
    let audit_before = count(&f, audit_rows);

    // Hold the active record's row lock: a rotation reads the scope without a lock, then
    // waits here at its `SELECT ... FOR UPDATE`.
    let mut holder = f.db();
    holder
        .batch(&format!(
            "BEGIN; SELECT version FROM leakless_kek WHERE scope = '{SCOPE}' FOR UPDATE"
        ))
        .unwrap();

    let spawn = || {
        f.cmd()
            .args(["keys", "rotate", SCOPE])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn();
    let b = spawn();

    // Wait until both are blocked on the lock (only this test's database counts). Count
    // processes, not lock entries: one waiter can show two (its tuple and transaction locks),
    // and the race is only set up once both have read the scope and wait.
    let waiting = "SELECT count(DISTINCT l.pid) AS n FROM pg_locks l JOIN pg_stat_activity s \
                   ON s.pid = l.pid WHERE NOT l.granted AND s.datname = current_database()";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = count(&f, waiting);
        if n >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two rotations never both waited on the lock ({n} waiting)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    holder.rollback();

    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let mut codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        vec![0, 5],
        "one rotation wins, the other loses the race: {:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    let loser = outs.iter().find(|o| o.status.code() == Some(5)).unwrap();
    let err = checked(loser, 5, Some(f.dir.path()));
    insta::assert_snapshot!("exit_5_race", err);
    assert!(err.contains("error: "), "{err}");
    assert!(err.contains(SCOPE), "the error names the scope: {err}");
    assert!(
        err.contains(
            "help: another process changed the same key at the same time; nothing was \
                      written, run the command again"
        ),
        "{err}"
    );

    // Nothing written for the loser: exactly one new version (v2) and one rotation's audit.
    assert_eq!(count(&f, kek_rows), 3);
    assert_eq!(
        count(
            &f,
            &format!(
                "SELECT count(*) AS n FROM leakless_kek WHERE scope = '{SCOPE}' AND state = 'active' AND version = 2"
            )
        ),
        1
    );
    let winner_audit = count(&f, audit_rows) - audit_before;
    assert_eq!(
        winner_audit, 2,
        "one rotation's audit rows (new and demoted)"
    );
    // And a rerun succeeds, as the message says.
    let o = f.run(&["keys", "rotate", SCOPE]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(count(&f, kek_rows), 4);
}
