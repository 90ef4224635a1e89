//! The DBA's view of a tampered key store, on PostgreSQL with the CLI only. A writer with the
//! application's database credential edits `leakless_kek` and `leakless_key_audit` directly:
//! the retired version v1 made active again, the real active v2 demoted, audit rows deleted.
//! `leakless-migrate` then refuses to seal under the edited records (`rewrap` and `keys rotate`
//! exit 1 saying the key store was tampered with, nothing moves to v1) and `keys audit
//! --verify` names where. Positive control: the same commands succeed on the store before the
//! edits.

use crate::support::{Backend, Fixture, SCOPE, stderr, stdout, wait_for_cache_window};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn a_writer_reviving_a_retired_version_and_deleting_audit_rows_is_refused_and_reported() {
    let f = Fixture::new(Backend::Postgres);
    f.seed(0, 50, false);
    f.rotate();
    // Positive control: the untouched store verifies, and the CLI works on it.
    let o = f.run(&["keys", "audit", "--verify"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("key store verified"), "{}", stdout(&o));
    let o = f.run(&["rewrap"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    wait_for_cache_window();
    let o = f.run(&["keys", "retire", SCOPE, "1"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(f.versions().get(&2), Some(&50));

    // The attacker: v1 active again, v2 demoted, the retire's audit row gone.
    let mut db = f.db();
    db.batch(&format!(
        "BEGIN;
         UPDATE leakless_kek SET state = 'grace', grace_until = 4102444800
           WHERE scope = '{SCOPE}' AND version = 2;
         UPDATE leakless_kek SET state = 'active', grace_until = NULL
           WHERE scope = '{SCOPE}' AND version = 1;
         DELETE FROM leakless_key_audit WHERE action = 'retire';
         COMMIT;"
    ))
    .unwrap();
    // New rows land on v1 if anything seals under the edited records: seed some plaintext the
    // migrator would have to seal (reencrypt seals every row under the active version).
    let o = f.run(&["reencrypt"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("key store tampered"), "{err}");
    assert!(
        err.contains("keys audit --verify"),
        "the help names the check: {err}"
    );
    assert_eq!(
        f.versions().get(&1),
        None,
        "nothing was sealed under the revived version"
    );
    assert_eq!(f.versions().get(&2), Some(&50));
    let o = f.run(&["keys", "rotate", SCOPE]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("key store tampered"), "{}", stderr(&o));

    // The check names where: a record whose tag no longer matches, or the broken chain.
    let o = f.run(&["keys", "audit", "--verify"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("key store tampered"), "{err}");
    assert!(
        err.contains("audit chain breaks") || err.contains(&format!("{SCOPE} v")),
        "names the entry or the record: {err}"
    );
    assert!(
        !err.contains("patient-"),
        "no plaintext in the error: {err}"
    );
}
