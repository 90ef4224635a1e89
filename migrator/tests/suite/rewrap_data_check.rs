//! `rewrap` authenticates each row's data ciphertext before moving its DEK: a row whose DEK
//! unwraps but whose data does not open is reported as a failed row of cause `data` (exit 1,
//! named, with the "restore from a backup" help and never `keys reinstate`), keeps its value,
//! and the other rows move. On SQLite, PostgreSQL (the bulk compare-and-swap path) and
//! MariaDB.

use leakless::{FieldContext, RowId};

use crate::support::{self, Backend, Fixture, code, stderr, stdout};

const BAD: i64 = 7;
const ROWS: i64 = 20;

fn rewrap_reports_a_row_whose_data_fails_to_open(backend: Backend) {
    let f = Fixture::new(backend);
    f.seed(0, ROWS, false);
    f.rotate();
    let stored = |id: i64| {
        f.rows()
            .into_iter()
            .find_map(|(i, v)| (i == id).then_some(v))
            .flatten()
            .unwrap()
    };
    let good = stored(BAD);
    // Flip one byte of the data ciphertext (before its 16-byte tag); the header, the wrap
    // nonce and the wrapped DEK stay as they were.
    let mut bad = good.clone();
    let at = bad.len() - 20;
    bad[at] ^= 0x01;
    let ctx = FieldContext::new("patients", "email", RowId::Int(BAD), 1);
    let ring = f.fresh_ring();
    // The planted corruption is the one meant: the DEK still unwraps (a DEK-only rewrap
    // accepts the envelope, which is what would have re-wrapped it silently) and the data
    // does not open.
    assert!(
        ring.rewrap(&ctx, &bad).unwrap().is_some(),
        "the DEK of the corrupted row still unwraps"
    );
    assert!(ring.open(&ctx, &bad).is_err(), "the data no longer opens");
    assert!(ring.open(&ctx, &good).is_ok(), "positive control");
    let mut db = f.db();
    db.exec(
        &format!(
            "UPDATE patients SET email = {} WHERE id = {}",
            db.ph(1),
            db.ph(2)
        ),
        &[
            leakless_migrator::db::Bind::Bytes(Some(bad.clone())),
            leakless_migrator::db::Bind::Int(BAD),
        ],
    )
    .unwrap();

    let o = f.run(&["rewrap"]);
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(code(&o), 1, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("failed: patients.email row 7:")),
        "names the row: {out}"
    );
    assert!(out.contains("1 failed"), "{out}");
    assert!(err.contains("restore"), "the data help: {err}");
    assert!(
        !err.contains("reinstate") && !out.contains("reinstate"),
        "no key fix is suggested for a corrupt row: {out}{err}"
    );

    // The corrupt row is left as it was; every other row moved to v2 and opens.
    for (id, v) in f.rows() {
        let v = v.unwrap();
        if id == BAD {
            assert_eq!(v, bad, "the corrupt row is unchanged");
            continue;
        }
        let (_, version) = leakless_migrator::scan::header(&v).unwrap();
        assert_eq!(version, 2, "row {id} moved");
        let ctx = FieldContext::new("patients", "email", RowId::Int(id), 1);
        let p = ring.open(&ctx, &v).unwrap();
        assert!(p.expose_secret() == support::plain(id).as_bytes());
    }
    assert_eq!(
        f.versions(),
        [(1, 1), (2, u64::try_from(ROWS).unwrap() - 1)].into()
    );

    // A rerun reports the same row again, as cause `data`, and still leaves it.
    let o = f.run(&["rewrap", "--json"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let failures = j["jobs"][0]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{j}");
    assert_eq!(failures[0]["row"], "7");
    assert_eq!(failures[0]["cause"], "data");
    assert_eq!(j["jobs"][0]["rows_changed"], 0);
    assert_eq!(stored(BAD), bad, "the corrupt row is still unchanged");
}

backend_tests! {
    rewrap_reports_a_row_whose_data_fails_to_open => [sqlite, postgres, mariadb],
}
