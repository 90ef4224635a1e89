//! The plaintext encoding: round trips of every supported type through seal and open, the
//! documented byte forms, refusals with typed errors that never echo data, and redacted Debug.

use leakless::secret::Plaintext;
use leakless::{Error, FieldContext, FieldPolicy, Json, KeyRing, KeyScope, RowId, Sealable};
use serde::{Deserialize, Serialize};

use crate::support::local_ring;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct GeoPoint {
    lat: f64,
    lon: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct PostalAddress {
    street: String,
    city: String,
    postcode: String,
    country: String,
}

fn ring() -> (KeyRing, KeyScope) {
    (
        local_ring(&["patients"]),
        KeyScope::new("patients").unwrap(),
    )
}

fn ctx(column: &str) -> FieldContext<'_> {
    FieldContext::new("patients", column, RowId::Int(1), 1)
}

#[test]
fn every_supported_type_round_trips_through_seal_and_open() {
    let (ring, scope) = ring();
    let p = FieldPolicy::default();

    let s = "Königstraße 1, 10117 Berlin".to_owned();
    let e = ring.seal_value(&scope, &ctx("address"), &s, &p).unwrap();
    assert_eq!(
        ring.open_value::<String>(&scope, &ctx("address"), &e)
            .unwrap(),
        s
    );

    let bytes = vec![0u8, 255, 7, 0x80, 0];
    let e = ring.seal_value(&scope, &ctx("blob"), &bytes, &p).unwrap();
    assert_eq!(
        ring.open_value::<Vec<u8>>(&scope, &ctx("blob"), &e)
            .unwrap(),
        bytes
    );

    let point = Json(GeoPoint {
        lat: 48.858_37,
        lon: -2.294_481_000_000_001,
    });
    let e = ring.seal_value(&scope, &ctx("gps"), &point, &p).unwrap();
    let back: Json<GeoPoint> = ring.open_value(&scope, &ctx("gps"), &e).unwrap();
    assert_eq!(back.0, point.0, "f64 survives exactly");

    let addr = Json(PostalAddress {
        street: "221B Baker Street".into(),
        city: "London".into(),
        postcode: "NW1 6XE".into(),
        country: "GB".into(),
    });
    let e = ring.seal_value(&scope, &ctx("postal"), &addr, &p).unwrap();
    let back: Json<PostalAddress> = ring.open_value(&scope, &ctx("postal"), &e).unwrap();
    assert_eq!(back.0, addr.0);

    let empty = String::new();
    let e = ring.seal_value(&scope, &ctx("notes"), &empty, &p).unwrap();
    assert_eq!(
        ring.open_value::<String>(&scope, &ctx("notes"), &e)
            .unwrap(),
        ""
    );
}

#[test]
fn the_byte_forms_are_the_documented_ones() {
    assert_eq!(&*"é".to_owned().to_plaintext().unwrap(), "é".as_bytes());
    assert_eq!(&*vec![1u8, 2].to_plaintext().unwrap(), &[1u8, 2][..]);
    let point = Json(GeoPoint {
        lat: 1.5,
        lon: -0.25,
    });
    assert_eq!(
        &*point.to_plaintext().unwrap(),
        br#"{"lat":1.5,"lon":-0.25}"#
    );
}

#[test]
fn values_without_an_encoding_and_wrong_bytes_are_typed_errors_without_data() {
    let nan = Json(GeoPoint {
        lat: f64::NAN,
        lon: 0.0,
    });
    assert!(matches!(
        nan.to_plaintext(),
        Err(Error::InvalidInput { .. })
    ));
    // serde_json alone would write these as `null`; nested ones are refused too.
    assert!(Json(vec![1.0, f64::INFINITY]).to_plaintext().is_err());
    assert!(Json(Some(f64::NAN)).to_plaintext().is_err());
    assert!(
        Json(std::collections::BTreeMap::from([(
            "k".to_owned(),
            f32::NEG_INFINITY
        )]))
        .to_plaintext()
        .is_err()
    );
    assert!(Json(Some(vec![1.0f64, 2.0])).to_plaintext().is_ok());

    let err = String::from_plaintext(Plaintext::new(vec![0xff, b'S', b'E', b'C'])).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }));
    assert!(!err.to_string().contains("SEC"), "{err}");

    let secret = br#"{"street":"221B Baker Street"}"#.to_vec();
    let err = Json::<GeoPoint>::from_plaintext(Plaintext::new(secret)).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }));
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("Baker") && !shown.contains("street"),
        "{shown}"
    );
}

#[test]
fn json_wrapper_debug_is_redacted() {
    let addr = Json(PostalAddress {
        street: "221B Baker Street".into(),
        city: "London".into(),
        postcode: "NW1 6XE".into(),
        country: "GB".into(),
    });
    let shown = format!("{addr:?} {addr:#?}");
    assert!(
        !shown.contains("Baker") && !shown.contains("London"),
        "{shown}"
    );
    assert!(shown.contains("redacted"));
}
