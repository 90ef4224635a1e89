//! The schema manifest: JSON round trip and validation of every rule it documents.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use leakless::Error;
use leakless::manifest::{
    BlindIndexColumn, SchemaManifest, ScopeSource, SealedColumn, SealedTable,
};

fn sample() -> SchemaManifest {
    let mut m = SchemaManifest::new();
    m.tables.push(SealedTable {
        table: "patients".into(),
        row_id_column: "id".into(),
        row_id_kind: "uuid".into(),
        schema_version: 1,
        scope: ScopeSource::Static {
            scope: "patients".into(),
        },
        columns: vec![
            SealedColumn {
                column: "address".into(),
                algorithm: "aes256gcm".into(),
                encoding: "string".into(),
                nullable: false,
                blind_index: Some(BlindIndexColumn {
                    column: "address_bidx".into(),
                    scope: "bidx".into(),
                    bytes: 16,
                    normalizer: "trim_lowercase".into(),
                }),
            },
            SealedColumn {
                column: "gps".into(),
                algorithm: "xchacha20poly1305".into(),
                encoding: "json".into(),
                nullable: true,
                blind_index: None,
            },
        ],
    });
    m.tables.push(SealedTable {
        table: "readings".into(),
        row_id_column: "id".into(),
        row_id_kind: "int".into(),
        schema_version: 2,
        scope: ScopeSource::PerTenant {
            column: "clinic_id".into(),
            prefix: "tenant:".into(),
        },
        columns: vec![],
    });
    m
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
        ("row id kind", |m| m.tables[0].row_id_kind = "serial".into()),
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
        ("unknown algorithm", |m| {
            m.tables[0].columns[0].algorithm = "des".into()
        }),
        ("unknown encoding", |m| {
            m.tables[0].columns[0].encoding = "cbor".into()
        }),
        ("clashes", |m| {
            m.tables[0].columns[0].blind_index.as_mut().unwrap().column = "id".into()
        }),
        ("4 to 32", |m| {
            m.tables[0].columns[0].blind_index.as_mut().unwrap().bytes = 2
        }),
        ("normaliser", |m| {
            m.tables[0].columns[0]
                .blind_index
                .as_mut()
                .unwrap()
                .normalizer = "upper".into()
        }),
    ];
    for (needle, edit) in cases {
        let mut m = sample();
        edit(&mut m);
        let err = m.validate().unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }));
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert!(m.to_json().is_err());
    }
    let err = SchemaManifest::from_json("{ not json").unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}
