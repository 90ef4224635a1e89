//! Opening checks the envelope's key scope against the scope the row must use: a value sealed
//! under tenant B's keys, placed in tenant A's row with the same table, column and row (so the
//! associated data matches), is refused with a typed error before any key is fetched. Also the
//! order of the key-free checks (context, structure, scope) and key errors that name the field.

use leakless::{
    AuditInfo, Error, FieldContext, FieldLocation, FieldPolicy, KeyRing, KeyScope, RowId,
};

use crate::support::local_ring;

const SECRET: &str = "Tenant B's patient, 221B Baker Street";

fn ctx() -> FieldContext<'static> {
    FieldContext::new("visits", "transcript", RowId::Int(7), 1)
}

/// A ring with tenant scopes A and B, and a value that a component holding only tenant B's
/// keys wrote for tenant A's row: (ring, A, B, envelope).
fn forged() -> (KeyRing, KeyScope, KeyScope, Vec<u8>) {
    let ring = local_ring(&["tenant:a", "tenant:b"]);
    let (a, b) = (
        KeyScope::new("tenant:a").unwrap(),
        KeyScope::new("tenant:b").unwrap(),
    );
    let forged = ring
        .seal(&b, &ctx(), SECRET.as_bytes(), &FieldPolicy::default())
        .unwrap();
    (ring, a, b, forged)
}

fn location() -> FieldLocation {
    ctx().location()
}

#[test]
fn a_value_sealed_under_another_tenants_scope_is_refused_naming_the_field() {
    let (ring, a, b, forged) = forged();
    // The associated data matches: without an expectation it opens.
    assert_eq!(
        ring.open(&ctx(), &forged).unwrap().expose_secret(),
        SECRET.as_bytes()
    );

    let err = ring.open_in_scope(&a, &ctx(), &forged).unwrap_err();
    match &err {
        Error::WrongKeyScope {
            location: l,
            expected,
            found,
        } => {
            assert_eq!(l, &location());
            assert_eq!(expected, &a);
            assert_eq!(found, &b);
        }
        other => panic!("expected WrongKeyScope, got {other}"),
    }
    let msg = err.to_string();
    assert_eq!(
        msg,
        "visits.transcript row int:7: envelope is sealed under key scope tenant:b, but this \
         field must use tenant:a"
    );
    assert!(!msg.contains("Baker") && !format!("{err:?}").contains("Baker"));

    // The typed path and re-wrapping check too.
    assert!(matches!(
        ring.open_value::<String>(&a, &ctx(), &forged),
        Err(Error::WrongKeyScope { .. })
    ));
    assert!(matches!(
        ring.rewrap_in_scope(&a, &ctx(), &forged),
        Err(Error::WrongKeyScope { .. })
    ));
    // The right scope still opens.
    assert_eq!(
        ring.open_value::<String>(&b, &ctx(), &forged).unwrap(),
        SECRET
    );
    assert_eq!(ring.rewrap_in_scope(&b, &ctx(), &forged).unwrap(), None);
}

#[test]
fn the_scope_is_checked_before_any_key_is_fetched() {
    // Only tenant A exists in this ring; the envelope comes from another ring's tenant B.
    let other = local_ring(&["tenant:b"]);
    let forged = other
        .seal(
            &KeyScope::new("tenant:b").unwrap(),
            &ctx(),
            SECRET.as_bytes(),
            &FieldPolicy::default(),
        )
        .unwrap();
    let ring = local_ring(&["tenant:a"]);
    let a = KeyScope::new("tenant:a").unwrap();
    ring.cache().clear();
    let before = ring.kms_calls();
    // Not KeyVersionNotFound: the key store is never asked about tenant:b.
    assert!(matches!(
        ring.open_in_scope(&a, &ctx(), &forged),
        Err(Error::WrongKeyScope { .. })
    ));
    assert_eq!(ring.kms_calls(), before);
    // Without the expectation, the ring looks the key up, and the key error names the field.
    let err = ring.open(&ctx(), &forged).unwrap_err();
    assert!(
        matches!(&err, Error::KeyVersionNotFound { location: Some(l), .. } if **l == location()),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "visits.transcript row int:7: key tenant:b v1: no such KEK version in the key store"
    );
}

#[test]
fn context_then_structure_then_scope_then_keys() {
    let (ring, a, b, forged) = forged();

    // An invalid expected context comes first, even before the bytes are looked at.
    let bad_ctx = FieldContext::new("", "transcript", RowId::Int(7), 1);
    for bytes in [&b"not an envelope"[..], &forged] {
        assert!(matches!(
            ring.open_in_scope(&a, &bad_ctx, bytes),
            Err(Error::InvalidInput {
                what: "field context",
                ..
            })
        ));
    }
    // Structural errors come before the scope check: cut inside the DEK wrap nonce, after
    // the (wrong) scope was read.
    let truncated = &forged[..30];
    assert!(matches!(
        ring.open_in_scope(&a, &ctx(), truncated),
        Err(Error::Truncated { .. })
    ));
    // The scope check comes before the key's state: a retired version under the wrong scope
    // is still WrongKeyScope.
    ring.rotate(
        &b,
        std::time::Duration::ZERO,
        &AuditInfo::new("t", "rotate"),
    )
    .unwrap();
    assert!(matches!(
        ring.open_in_scope(&a, &ctx(), &forged),
        Err(Error::WrongKeyScope { .. })
    ));
    let err = ring.open_in_scope(&b, &ctx(), &forged).unwrap_err();
    assert!(
        matches!(&err, Error::KeyWrongState { location: Some(l), .. } if **l == location()),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("visits.transcript row int:7: key tenant:b v1: is retired"),
        "{err}"
    );
}
