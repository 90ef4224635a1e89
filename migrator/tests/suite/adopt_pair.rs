//! Adopting a GPS point kept as two numeric columns (`latitude`, `longitude`) into one sealed
//! `Json<GeoPoint>` field with `adopt(pair(lat = latitude, lon = longitude), ...)`, end to end
//! on SQLite, PostgreSQL and MariaDB: the derive's stages read and write the pair, `status`
//! counts what is pending, `leakless-migrate adopt` backfills from the JSON object the database
//! builds and verifies every row (including rows the application sealed itself, whose JSON is
//! spelled differently), and the verification catches a pair changed behind its back.

use diesel::prelude::*;
use leakless::manifest::{AdoptionPair, SchemaManifest};
use leakless::{Error, Json, RowId, Sealed};
use serde::{Deserialize, Serialize};

#[allow(
    missing_docs,
    reason = "diesel's table! macro generates undocumented items"
)]
mod schema {
    diesel::table! {
        places (id) {
            id -> BigInt,
            latitude -> Nullable<Double>,
            longitude -> Nullable<Double>,
            home_lat -> Nullable<Double>,
            home_lon -> Nullable<Double>,
            gps -> Nullable<Binary>,
            home -> Nullable<Binary>,
        }
    }
}
use schema::places;

use crate::support::{Backend, Fixture, stderr, stdout};

/// A point on the map (test data, fake).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct GeoPoint {
    lat: f64,
    lon: f64,
}

/// Stage 1: reads the pairs where no envelope is stored; writes envelopes and pairs.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = places, row_id = id, schema_version = 1, scope = "patients")]
struct Stage1 {
    id: i64,
    #[leakless(seal(adopt(pair(lat = latitude, lon = longitude), stage = "read_plaintext")))]
    gps: Json<GeoPoint>,
    #[leakless(seal(adopt(pair(lat = home_lat, lon = home_lon), stage = "read_plaintext")))]
    home: Option<Json<GeoPoint>>,
}

/// Stage 3: envelopes only.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = places, row_id = id, schema_version = 1, scope = "patients")]
struct Stage3 {
    id: i64,
    #[leakless(seal(adopt(pair(lat = latitude, lon = longitude), stage = "sealed_only")))]
    gps: Json<GeoPoint>,
    #[leakless(seal(adopt(pair(lat = home_lat, lon = home_lon), stage = "sealed_only")))]
    home: Option<Json<GeoPoint>>,
}

fn point(lat: f64, lon: f64) -> GeoPoint {
    GeoPoint { lat, lon }
}

/// Reads row `id` through build `$model`.
macro_rules! read {
    ($f:expr, $model:ident, $row:ident, $id:expr) => {{
        let row: $row = on_conn!($f, |c| places::table
            .find($id)
            .select($row::as_select())
            .first(c)
            .unwrap());
        $model::open_row(row, &$f.ring)
    }};
}

/// Runs the migrator, asserts exit code `code` and that nothing it printed holds a
/// coordinate; returns stdout and stderr.
fn run(f: &Fixture, args: &[&str], code: i32) -> String {
    let o = f.run(args);
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(code), "{args:?}:\n{text}");
    for secret in ["51.5", "-0.1276", "48.8566", "2.3522", "40.4168"] {
        assert!(
            !text.contains(secret),
            "the CLI printed a coordinate: {text}"
        );
    }
    text
}

fn adopt_pair(backend: Backend) {
    let f = Fixture::new(backend);
    let (double, bin) = match backend {
        Backend::Postgres => ("DOUBLE PRECISION", "BYTEA"),
        Backend::Mysql => ("DOUBLE", "BLOB"),
        Backend::Sqlite => ("REAL", "BLOB"),
    };
    let mut db = f.db();
    db.batch(&format!(
        "CREATE TABLE places (id BIGINT NOT NULL PRIMARY KEY, latitude {double} NULL, \
         longitude {double} NULL, home_lat {double} NULL, home_lon {double} NULL, gps {bin} NULL, \
         home {bin} NULL)"
    ))
    .unwrap();
    // The legacy rows: row 3's home pair is half NULL (no value), row 2 has none.
    db.batch(
        "INSERT INTO places (id, latitude, longitude, home_lat, home_lon) VALUES \
         (1, 51.5, -0.1276, 40.4168, -3.7038), (2, 40, 2, NULL, NULL), (3, -33.8688, 151.2093, 1.5, NULL)",
    )
    .unwrap();
    let legacy = [
        (1, point(51.5, -0.1276), Some(point(40.4168, -3.7038))),
        (2, point(40.0, 2.0), None),
        (3, point(-33.8688, 151.2093), None),
    ];

    // Stage 1 reads the pairs as the points.
    for (id, gps, home) in &legacy {
        let p = read!(&f, Stage1, Stage1Row, *id).unwrap();
        assert_eq!(&p.gps.0, gps, "row {id}");
        assert_eq!(p.home.map(|h| h.0).as_ref(), home.as_ref(), "row {id}");
    }
    // Stage 1 writes the envelope and keeps the pair for older builds.
    let fresh = Stage1 {
        id: 4,
        gps: Json(point(48.8566, 2.3522)),
        home: Some(Json(point(-1.25, 36.75))),
    };
    on_conn!(&f, |c| diesel::insert_into(places::table)
        .values(&fresh.seal_row(&f.ring).unwrap())
        .execute(c)
        .unwrap());
    let (lat, lon, gps): (Option<f64>, Option<f64>, Option<Vec<u8>>) = on_conn!(&f, |c| {
        places::table
            .find(4)
            .select((places::latitude, places::longitude, places::gps))
            .first(c)
            .unwrap()
    });
    assert_eq!((lat, lon), (Some(48.8566), Some(2.3522)));
    let gps = gps.expect("stage 1 writes the envelope");
    assert!(
        !gps.windows(7).any(|w| w == b"48.8566"),
        "plaintext in the envelope"
    );

    // status counts the rows only in the pair.
    use_manifest(&f, Stage1::manifest());
    let out = run(&f, &["status", "--json"], 0);
    let j: serde_json::Value = serde_json::from_str(&out[..out.rfind(']').unwrap() + 1]).unwrap();
    let gps_status = j
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["column"] == "gps")
        .unwrap();
    assert_eq!(gps_status["adoption"]["pending"], 3, "{out}");
    assert_eq!(gps_status["adoption"]["from_column"], "latitude+longitude");

    // adopt: the backfill seals the JSON object the database builds; the verification accepts
    // the application's own spelling of row 4 (`{"lat":48.8566,...}`) and the database's.
    use_manifest(&f, Stage3::manifest());
    let out = run(&f, &["adopt", "--table", "places", "--column", "gps"], 0);
    assert!(out.contains("3 written"), "{out}");
    assert!(out.contains("0 mismatches"), "{out}");
    assert!(out.contains("against latitude+longitude"), "{out}");
    for column in ["latitude", "longitude"] {
        assert!(
            out.lines()
                .any(|l| l.contains("DROP COLUMN") && l.contains(column)),
            "{out}"
        );
    }
    let out = run(&f, &["adopt", "--table", "places", "--column", "home"], 0);
    assert!(out.contains("1 written"), "{out}");
    assert!(out.contains("0 mismatches"), "{out}");

    // Stage 3 reads envelopes only: every point, whatever the legacy columns say.
    db.batch("UPDATE places SET latitude = NULL, longitude = NULL, home_lat = NULL, home_lon = NULL WHERE id = 1")
        .unwrap();
    for (id, gps, home) in
        legacy
            .iter()
            .cloned()
            .chain([(4, point(48.8566, 2.3522), Some(point(-1.25, 36.75)))])
    {
        let p = read!(&f, Stage3, Stage3Row, id).unwrap();
        assert_eq!(p.gps.0, gps, "row {id}");
        assert_eq!(p.home.map(|h| h.0), home, "row {id}");
    }

    // The verification compares by value: a pair changed behind the envelope's back is found
    // (positive control), a restored one passes.
    const VERIFY: &[&str] = &[
        "adopt",
        "--table",
        "places",
        "--column",
        "gps",
        "--verify-only",
    ];
    db.batch("UPDATE places SET latitude = 41 WHERE id = 2")
        .unwrap();
    let out = run(&f, VERIFY, 1);
    assert!(out.contains("differs from the plaintext"), "{out}");
    assert!(out.contains("places.gps row 2"), "{out}");
    db.batch("UPDATE places SET latitude = 40 WHERE id = 2")
        .unwrap();
    let out = run(&f, VERIFY, 0);
    assert!(out.contains("0 mismatches"), "{out}");

    // A non-Option field with a half-NULL pair and no envelope has no value: a typed error.
    db.batch("INSERT INTO places (id, latitude) VALUES (5, 10)")
        .unwrap();
    match read!(&f, Stage1, Stage1Row, 5) {
        Err(Error::NotBackfilled { location, .. }) => {
            assert_eq!(
                (location.table.as_str(), location.column.as_str()),
                ("places", "gps")
            );
            assert_eq!(location.row, "int:5");
        }
        other => panic!("expected NotBackfilled, got {:?}", other.map(|p| p.id)),
    }
}

/// Writes the manifest of `table` (a model's) where the CLI reads it.
fn use_manifest(f: &Fixture, table: leakless::manifest::SealedTable) {
    let json = SchemaManifest::from_tables([table]).to_json().unwrap();
    std::fs::write(&f.manifest, json).unwrap();
}

backend_tests! {
    adopt_pair => [sqlite, postgres, mariadb],
}

/// The manifest records both columns and their keys; a value whose JSON lacks a key cannot be
/// written back to the pair (a typed error, not a zero).
#[test]
fn the_manifest_records_the_pair_and_a_missing_key_is_an_error() {
    let m = Stage1::manifest();
    let a = m.columns[0].adoption.as_ref().unwrap();
    assert_eq!(a.from_column, "latitude");
    assert_eq!(
        a.pair,
        Some(AdoptionPair {
            first_key: "lat".into(),
            second_column: "longitude".into(),
            second_key: "lon".into(),
        })
    );
    assert_eq!(a.columns(), ["latitude", "longitude"]);
    let e =
        leakless::__private::plaintext_pair(&Json(serde_json::json!({"lat": 1.0})), ["lat", "lon"])
            .unwrap_err();
    assert!(e.to_string().contains("no number under `lon`"), "{e}");
    let pair = |a: Option<f64>, b: Option<f64>| {
        leakless::__private::pair_plaintext(
            "places",
            RowId::Int(7),
            [("lat", "latitude", a), ("lon", "longitude", b)],
        )
    };
    assert_eq!(
        pair(Some(1.5), Some(-2.0)).unwrap(),
        Some(br#"{"lat":1.5,"lon":-2.0}"#.to_vec())
    );
    assert_eq!(pair(Some(1.5), None).unwrap(), None);
    let e = pair(Some(f64::NAN), Some(1.0)).unwrap_err();
    assert!(
        e.to_string()
            .contains("places.latitude of row int:7 holds NaN"),
        "{e}"
    );
}
