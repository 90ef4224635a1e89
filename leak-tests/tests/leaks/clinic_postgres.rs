//! The leak suite over the `clinic` example itself: its migrations (`leakless_examples::clinic`)
//! on a throwaway PostgreSQL cluster with statement logging, its `#[derive(Sealed)]` `Patient`
//! writing canaries generated from its own manifest, and a leaky control table. `pg_dump`
//! (plain and custom), the data directory, the WAL and the server log must show every control
//! and no canary.

use crate::support::{fixture, lit};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use leakless::{AuditInfo, Json, KeyScope, Sealed};
use leakless_examples::clinic::{self, BIDX_SCOPE, GeoPoint, Patient, SCOPE, schema::patients};
use leakless_leaktest::{CanarySet, LeakCheck};
use leakless_testkit::DumpFormat;

#[test]
fn clinic_example_on_postgres_passes_the_leak_suite() {
    // Canaries from the clinic's own manifest, plus the shared controls.
    let manifest = clinic::manifest();
    let mut set = CanarySet::from_manifest(&manifest, 3).unwrap();
    let fx = fixture();
    for c in fx.set.canaries.iter().filter(|c| c.control) {
        set.push(c.clone()).unwrap();
    }
    let text = |id: String| set.get(&id).unwrap().text_value().unwrap().to_owned();
    let people: Vec<Patient> = (0..3)
        .map(|i| {
            let (lat, lon) = set
                .get(&format!("patients.gps#{i}"))
                .unwrap()
                .gps_value()
                .unwrap();
            Patient {
                id: clinic::random_uuid(),
                name: format!("Clinic patient {i}"),
                address: text(format!("patients.address#{i}")),
                email: text(format!("patients.email#{i}")),
                gps: Json(GeoPoint { lat, lon }),
                transcript: Some(text(format!("patients.transcript#{i}"))),
            }
        })
        .collect();

    let pg = crate::support::pg_server();
    pg.sql("postgres", "CREATE DATABASE clinic").unwrap();
    let mut conn = PgConnection::establish(&pg.url_for("clinic")).unwrap();
    clinic::run_migrations(&mut conn).unwrap();
    let ring = leakless_examples::throwaway_ring_builder().build();
    for s in [SCOPE, BIDX_SCOPE] {
        ring.create_scope(
            &KeyScope::new(s).unwrap(),
            &AuditInfo::new("leak test", "setup"),
        )
        .unwrap();
    }
    let rows = Patient::seal_rows(&people, &ring).unwrap();
    diesel::insert_into(patients::table)
        .values(&rows)
        .execute(&mut conn)
        .unwrap();
    // Read back and look one up by blind index, as the example does.
    let back: Vec<_> = patients::table
        .select(<Patient as Sealed>::Row::as_select())
        .load(&mut conn)
        .unwrap();
    assert_eq!(Patient::open_rows(back, &ring).unwrap().len(), 3);
    drop(conn);

    let c = &fx.controls;
    pg.sql(
        "clinic",
        &format!(
            "CREATE TABLE leaky_control (address TEXT UNIQUE, gps TEXT, notes TEXT COMPRESSION pglz);
             ALTER TABLE leaky_control ALTER COLUMN notes SET STORAGE MAIN;
             INSERT INTO leaky_control VALUES ({}, {}, {});",
            lit(c.addr_text()),
            lit(&c.gps_wkt()),
            lit(c.pglz.text_value().unwrap())
        ),
    )
    .unwrap();
    pg.sql_expect_error(
        "clinic",
        &format!(
            "INSERT INTO leaky_control (address) VALUES ({});",
            lit(c.addr_text())
        ),
    )
    .unwrap();
    pg.sql("clinic", "SELECT pg_switch_wal()").unwrap();

    let mut check = LeakCheck::new(set).unwrap();
    for id in [&c.addr.id, &c.gps.id] {
        check.expect_control("clinic/wal", id);
    }
    check.scan_path("clinic/wal", &pg.wal_dir());
    pg.checkpoint().unwrap();
    let out = tempfile::tempdir().unwrap();
    let plain = out.path().join("clinic.sql");
    let custom = out.path().join("clinic.dump");
    pg.dump("clinic", DumpFormat::Plain, &plain).unwrap();
    pg.dump("clinic", DumpFormat::Custom, &custom).unwrap();
    for (name, path) in [
        ("clinic/pg_dump-plain", plain),
        ("clinic/pg_dump-custom", custom),
        ("clinic/data-dir", pg.data_dir().join("base")),
        ("clinic/server-log", pg.log_path()),
    ] {
        for id in [&c.addr.id, &c.gps.id, &c.pglz.id] {
            check.expect_control(name, id);
        }
        check.scan_path(name, &path);
    }
    let report = check.report();
    report.assert_clean();
    report.assert_control_seen_through("clinic/data-dir", &c.pglz.id, "[heap-pglz");
}
