#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
//! Smoke test on SQLite.
mod support;
use support::*;

#[test]
fn rewrap_on_sqlite() {
    let f = Fixture::new(Backend::Sqlite);
    f.seed(0, 500, false);
    f.rotate();
    let o = f.run(&["status"]);
    println!("{}{}", stdout(&o), stderr(&o));
    let o = f.run(&["rewrap", "--batch-size", "100"]);
    println!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success());
    f.assert_all_open(plain);
}
