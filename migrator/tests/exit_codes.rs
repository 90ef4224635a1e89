#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "tests"
)]
//! Exit code 5 ("another process changed the same key at the same time; nothing was written,
//! rerun"), provoked for real and deterministically: two `leakless-migrate keys rotate`
//! processes on the same scope of a PostgreSQL key store, held at their compare-and-swap by a
//! row lock the test takes on the active KEK record. Both read the scope (v1 active) before
//! they block; when the test releases the lock, one rotates and the other finds the record
//! changed under it.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use leakless_migrator::db::OneInt;
use support::{Backend, Fixture, SCOPE, stderr};

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
    let err = stderr(loser);
    eprintln!("{err}");
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
