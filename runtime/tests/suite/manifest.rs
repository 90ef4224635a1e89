//! The schema manifest: JSON round trip and validation of every rule it documents.

use leakless::manifest::{
    AdoptionColumn, AdoptionPair, AdoptionStage, BlindIndexColumn, PlaintextEncoding, RowIdKind,
    SchemaManifest, ScopeSource, SealedColumn, SealedTable,
};
use leakless::{Algorithm, Error, Normalizer, PaddingPolicy};

fn sample() -> SchemaManifest {
    let mut m = SchemaManifest::new();
    m.tables.push(SealedTable {
        table: "patients".into(),
        row_id_column: "id".into(),
        row_id_kind: RowIdKind::Uuid,
        schema_version: 1,
        scope: ScopeSource::Static {
            scope: "patients".into(),
        },
        columns: vec![
            SealedColumn {
                column: "address".into(),
                bound_as: None,
                moving_to: None,
                algorithm: Algorithm::Aes256Gcm,
                encoding: PlaintextEncoding::String,
                padding: PaddingPolicy::default(),
                nullable: false,
                blind_index: Some(BlindIndexColumn {
                    column: "address_bidx".into(),
                    scope: "bidx".into(),
                    bytes: 16,
                    normalizer: Normalizer::TrimLowercase,
                    per_tenant: false,
                }),
                adoption: None,
            },
            SealedColumn {
                column: "gps".into(),
                bound_as: None,
                moving_to: None,
                algorithm: Algorithm::XChaCha20Poly1305,
                encoding: PlaintextEncoding::Json,
                padding: PaddingPolicy::MarkerOnly,
                nullable: true,
                blind_index: None,
                adoption: None,
            },
        ],
    });
    m.tables.push(SealedTable {
        table: "readings".into(),
        row_id_column: "id".into(),
        row_id_kind: RowIdKind::Int,
        schema_version: 2,
        scope: ScopeSource::PerTenant {
            column: "clinic_id".into(),
            prefix: "tenant:".into(),
        },
        columns: vec![],
    });
    m
}

/// An adoption of `gps` from the pair `gps_lat` (under `k0`) and `gps_lon` (under `k1`).
fn pair(k0: &str, k1: &str) -> AdoptionColumn {
    AdoptionColumn {
        from_column: "gps_lat".into(),
        stage: AdoptionStage::ReadPlaintext,
        pair: Some(AdoptionPair {
            first_key: k0.into(),
            second_column: "gps_lon".into(),
            second_key: k1.into(),
        }),
    }
}

#[test]
fn round_trips_through_json() {
    let m = sample();
    let json = m.to_json().unwrap();
    assert!(json.contains("\"kind\": \"per_tenant\""), "{json}");
    assert_eq!(SchemaManifest::from_json(&json).unwrap(), m);
    assert_eq!(m.table("patients").unwrap().columns.len(), 2);
    assert!(m.table("nope").is_none());
}

#[test]
fn every_rule_is_enforced_with_a_message_naming_the_place() {
    type Edit = fn(&mut SchemaManifest);
    let cases: Vec<(&str, Edit)> = vec![
        ("format", |m| m.format = 2),
        ("listed twice", |m| {
            let t = m.tables[0].clone();
            m.tables.push(t);
        }),
        ("patients", |m| {
            m.tables[0].scope = ScopeSource::Static {
                scope: "bad scope".into(),
            }
        }),
        ("tenant scope prefix", |m| {
            m.tables[1].scope = ScopeSource::PerTenant {
                column: "c".into(),
                prefix: "bad prefix ".into(),
            }
        }),
        ("patients.address: column", |m| {
            m.tables[0].columns[1].column = "address".into()
        }),
        ("patients.id", |m| {
            m.tables[0].columns[1].column = "id".into()
        }),
        (
            "patients.address: PowerOfTwo padding needs min <= cap",
            |m| m.tables[0].columns[0].padding = PaddingPolicy::PowerOfTwo { min: 64, cap: 32 },
        ),
        ("patients.gps: Multiple padding needs block >= 1", |m| {
            m.tables[0].columns[1].padding = PaddingPolicy::Multiple { block: 0 }
        }),
        ("clashes", |m| {
            m.tables[0].columns[0].blind_index.as_mut().unwrap().column = "id".into()
        }),
        ("4 to 32", |m| {
            m.tables[0].columns[0].blind_index.as_mut().unwrap().bytes = 2
        }),
        ("patients.gps: bound column name is empty", |m| {
            m.tables[0].columns[1].bound_as = Some(String::new())
        }),
        // Two columns binding one name could swap values and still open.
        ("another column binds the same name \"address\"", |m| {
            m.tables[0].columns[1].bound_as = Some("address".into())
        }),
        (
            "patients.address: a pair adoption needs the json encoding",
            |m| m.tables[0].columns[0].adoption = Some(pair("lat", "lon")),
        ),
        ("patients.gps: pair keys must be", |m| {
            m.tables[0].columns[1].adoption = Some(pair("lat'", "lon"))
        }),
        ("patients.gps: a pair needs two different keys", |m| {
            m.tables[0].columns[1].adoption = Some(pair("lat", "lat"))
        }),
        ("patients.gps: moving to \"nowhere\"", |m| {
            m.tables[0].columns[1].moving_to = Some("nowhere".into())
        }),
        ("patients.gps: moving to \"address\"", |m| {
            // The target binds another name: not a copy of its envelopes.
            m.tables[0].columns[1].moving_to = Some("address".into())
        }),
    ];
    for (needle, edit) in cases {
        let mut m = sample();
        edit(&mut m);
        match m.validate().unwrap_err() {
            Error::Manifest {
                path: None,
                problem,
            } => assert!(problem.contains(needle), "{needle}: {problem}"),
            other => panic!("{needle}: expected Error::Manifest, got {other:?}"),
        }
        assert!(matches!(m.to_json(), Err(Error::Manifest { .. })));
    }
    match SchemaManifest::from_json("{ not json").unwrap_err() {
        Error::Manifest { problem, .. } => assert!(problem.contains("line 1"), "{problem}"),
        other => panic!("expected Error::Manifest, got {other:?}"),
    }
}

/// A column stored under another name, and one being moved out of, are valid; the fields are
/// absent from the JSON when unused.
#[test]
fn bound_names_and_moves_validate_and_round_trip() {
    let mut m = sample();
    assert!(!m.to_json().unwrap().contains("bound_as"));
    m.tables[0].columns[1].column = "gps_sealed".into();
    m.tables[0].columns[1].bound_as = Some("gps".into());
    m.validate().unwrap();
    assert_eq!(m.tables[0].columns[1].bound_name(), "gps");
    let mut old = m.tables[0].columns[0].clone();
    old.column = "address_old".into();
    old.bound_as = Some("address".into());
    old.moving_to = Some("address".into());
    old.blind_index = None;
    m.tables[0].columns.push(old);
    m.tables[0].columns[1].adoption = Some(pair("lat", "lon"));
    let json = m.to_json().unwrap();
    assert!(json.contains("\"moving_to\": \"address\""), "{json}");
    assert!(json.contains("\"second_column\": \"gps_lon\""), "{json}");
    assert_eq!(SchemaManifest::from_json(&json).unwrap(), m);
}

/// An unknown name, or a missing padding policy, is refused when the JSON is read, naming the
/// field's path; the JSON keeps every name's spelling.
#[test]
fn unknown_names_are_refused_on_reading_with_the_path() {
    let json = sample().to_json().unwrap();
    for spelling in [
        "\"aes256gcm\"",
        "\"uuid\"",
        "\"json\"",
        "\"trim_lowercase\"",
        "\"kind\": \"marker_only\"",
        "\"kind\": \"power_of_two\"",
    ] {
        assert!(json.contains(spelling), "{spelling} in {json}");
    }
    let cases = [
        (
            "\"aes256gcm\"",
            "\"des\"",
            "tables[0].columns[0].algorithm: unknown variant `des`",
        ),
        (
            "\"uuid\"",
            "\"serial\"",
            "tables[0].row_id_kind: unknown variant `serial`",
        ),
        (
            "\"json\"",
            "\"cbor\"",
            "tables[0].columns[1].encoding: unknown variant `cbor`",
        ),
        (
            "\"trim_lowercase\"",
            "\"upper\"",
            "tables[0].columns[0].blind_index.normalizer: unknown variant `upper`",
        ),
        (
            "\"kind\": \"marker_only\"",
            "\"kind\": \"fixed\"",
            "tables[0].columns[1].padding.kind: unknown variant `fixed`",
        ),
    ];
    for (from, to, needle) in cases {
        match SchemaManifest::from_json(&json.replacen(from, to, 1)).unwrap_err() {
            Error::Manifest { problem, .. } => {
                assert!(problem.contains(needle), "{needle}: {problem}");
            }
            other => panic!("{needle}: expected Error::Manifest, got {other:?}"),
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["tables"][0]["columns"][0]
        .as_object_mut()
        .unwrap()
        .remove("padding");
    let err = SchemaManifest::from_json(&v.to_string()).unwrap_err();
    assert!(
        err.to_string()
            .contains("tables[0].columns[0]: missing field `padding`"),
        "{err}"
    );
}

#[test]
fn from_tables_sorts_and_merge_combines_or_refuses_a_conflict() {
    let [patients, readings] = <[SealedTable; 2]>::try_from(sample().tables).unwrap();
    let m = SchemaManifest::from_tables([readings.clone(), patients.clone()]);
    assert_eq!(m.format, leakless::manifest::MANIFEST_FORMAT);
    let names: Vec<_> = m.tables.iter().map(|t| t.table.as_str()).collect();
    assert_eq!(names, ["patients", "readings"], "sorted by table name");
    assert_eq!(
        m,
        SchemaManifest::from_tables([patients.clone(), readings.clone()])
    );

    // Merge: new tables are added, identical ones kept once.
    let mut a = SchemaManifest::from_tables([patients.clone()]);
    a.merge(&SchemaManifest::from_tables([
        readings.clone(),
        patients.clone(),
    ]))
    .unwrap();
    assert_eq!(a, m);

    // The same table described differently: refused, naming it, and nothing changes.
    let mut other = patients.clone();
    other.schema_version = 2;
    let mut b = SchemaManifest::from_tables([patients.clone()]);
    let err = b
        .merge(&SchemaManifest::from_tables([readings, other]))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("\"patients\" is described differently"),
        "{err}"
    );
    assert_eq!(b, SchemaManifest::from_tables([patients]));

    let mut wrong_format = SchemaManifest::new();
    wrong_format.format = 9;
    assert!(
        b.merge(&wrong_format)
            .unwrap_err()
            .to_string()
            .contains("format 9")
    );
}

#[test]
fn write_file_and_read_file_round_trip_and_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leakless-manifest.json");
    let m = sample();
    m.write_file(&path).unwrap();
    assert_eq!(SchemaManifest::read_file(&path).unwrap(), m);

    // An invalid manifest is not written.
    let mut bad = sample();
    bad.tables[0].columns[0].padding = PaddingPolicy::Multiple { block: 0 };
    let bad_path = dir.path().join("bad.json");
    assert!(bad.write_file(&bad_path).is_err());
    assert!(!bad_path.exists());

    // Reading names the file: a missing one, and one that is not a manifest.
    let missing = dir.path().join("missing.json");
    let problem = manifest_problem(SchemaManifest::read_file(&missing).unwrap_err(), &missing);
    assert!(problem.starts_with("cannot read it"), "{problem}");
    std::fs::write(&bad_path, "{\"format\": 1, \"tables\": [").unwrap();
    let err = SchemaManifest::read_file(&bad_path).unwrap_err();
    // The message names the file for a reader.
    assert!(err.to_string().contains("bad.json: "), "{err}");
    let problem = manifest_problem(err, &bad_path);
    assert!(problem.contains("line 1"), "{problem}");
}

/// The problem of `err`, which must be a manifest error naming the file `expected`.
fn manifest_problem(err: Error, expected: &std::path::Path) -> String {
    match err {
        Error::Manifest {
            path: Some(path),
            problem,
        } => {
            assert_eq!(path, expected);
            problem
        }
        other => panic!("expected Error::Manifest, got {other:?}"),
    }
}
