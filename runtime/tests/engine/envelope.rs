//! Envelope behaviour through the public API: round trips over arbitrary plaintexts and
//! contexts (proptest), the context-swap rule (another table, column, row or schema version
//! fails to open), wrong keys, and the typed error for each kind of bad input.

use leakless::{
    Algorithm, Error, FieldContext, FieldPolicy, KeyRing, KeyScope, PaddingPolicy, RowId,
};
use proptest::prelude::*;

use crate::common::local_ring;

/// A key ring with one scope, `patients`, and that scope.
fn ring() -> (KeyRing, KeyScope) {
    (
        local_ring(&["patients"]),
        KeyScope::new("patients").unwrap(),
    )
}

/// The context most tests seal under: `patients.address`, row 1, schema version 1.
fn address_ctx() -> FieldContext<'static> {
    FieldContext::new("patients", "address", RowId::Int(1), 1)
}

/// `plaintext` sealed by `ring` in `scope` under [`address_ctx`] with the default policy.
fn seal(ring: &KeyRing, scope: &KeyScope, plaintext: &[u8]) -> Vec<u8> {
    ring.seal(scope, &address_ctx(), plaintext, &FieldPolicy::default())
        .unwrap()
}

fn policy(alg: Algorithm) -> FieldPolicy {
    FieldPolicy {
        algorithm: alg,
        padding: PaddingPolicy::default(),
    }
}

const ALGS: [Algorithm; 2] = [Algorithm::XChaCha20Poly1305, Algorithm::Aes256Gcm];

fn arb_row() -> impl Strategy<Value = (u8, Vec<u8>, i64, String)> {
    (
        0u8..4,
        proptest::collection::vec(any::<u8>(), 0..40),
        any::<i64>(),
        "[a-z0-9-]{0,20}",
    )
}

fn row_of<'a>(kind: u8, bytes: &'a [u8], int: i64, text: &'a str) -> RowId<'a> {
    match kind {
        0 => {
            let mut u = [0u8; 16];
            for (d, s) in u.iter_mut().zip(bytes) {
                *d = *s;
            }
            RowId::Uuid(u)
        }
        1 => RowId::Int(int),
        2 => RowId::Text(text),
        _ => RowId::Bytes(bytes),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip_over_arbitrary_plaintext_and_context(
        plaintext in proptest::collection::vec(any::<u8>(), 0..6000),
        table in "[a-z_]{1,30}",
        column in "[a-z_]{1,30}",
        (kind, bytes, int, text) in arb_row(),
        schema in any::<u32>(),
        aes in any::<bool>(),
    ) {
        let (ring, scope) = ring();
        let alg = if aes { Algorithm::Aes256Gcm } else { Algorithm::XChaCha20Poly1305 };
        let ctx = FieldContext::new(&table, &column, row_of(kind, &bytes, int, &text), schema);
        let sealed = ring.seal(&scope, &ctx, &plaintext, &policy(alg)).unwrap();
        let info = leakless::envelope::inspect(&sealed).unwrap();
        prop_assert_eq!(info.algorithm, alg);
        prop_assert_eq!(info.padded_len, PaddingPolicy::default().padded_len(plaintext.len()).unwrap());
        let opened = ring.open(&ctx, &sealed).unwrap();
        prop_assert_eq!(opened.expose_secret(), &plaintext[..]);

        // Any change to the context fails to open, with the opaque error.
        let schema2 = schema.wrapping_add(1);
        let t2 = format!("{table}x");
        let c2 = format!("{column}x");
        let swapped = [
            FieldContext::new(&t2, &column, ctx.row, schema),
            FieldContext::new(&table, &c2, ctx.row, schema),
            FieldContext::new(&table, &column, ctx.row, schema2),
            FieldContext::new(&table, &column, RowId::Int(int.wrapping_add(1)), schema),
            FieldContext::new(&table, &column, RowId::Text("other-row"), schema),
        ];
        for other in swapped {
            if other == ctx { continue; }
            let err = ring.open(&other, &sealed).unwrap_err();
            prop_assert!(matches!(err, Error::DecryptionFailed { .. }), "{}", err);
        }
    }
}

#[test]
fn copying_a_ciphertext_to_another_row_column_table_or_schema_fails() {
    let (ring, scope) = ring();
    for alg in ALGS {
        let ctx = address_ctx();
        let sealed = ring
            .seal(&scope, &ctx, b"221B Baker Street", &policy(alg))
            .unwrap();
        let others = [
            FieldContext::new("patients", "address", RowId::Int(2), 1),
            FieldContext::new("patients", "transcript", RowId::Int(1), 1),
            FieldContext::new("doctors", "address", RowId::Int(1), 1),
            FieldContext::new("patients", "address", RowId::Int(1), 2),
            FieldContext::new("patients", "address", RowId::Text("1"), 1),
        ];
        for other in others {
            let err = ring.open(&other, &sealed).unwrap_err();
            assert!(
                matches!(err, Error::DecryptionFailed { .. }),
                "{alg}: {err}"
            );
            // The error names where, never what.
            let shown = format!("{err} {err:?}");
            assert!(shown.contains(other.table) && shown.contains(other.column));
            assert!(!shown.contains("Baker"), "{shown}");
        }
        assert_eq!(
            ring.open(&ctx, &sealed).unwrap().expose_secret(),
            b"221B Baker Street"
        );
    }
}

#[test]
fn a_same_named_key_from_another_key_ring_fails_opaquely() {
    let (a, scope) = ring();
    let (b, _) = ring();
    let ctx = address_ctx();
    let sealed = seal(&a, &scope, b"secret");
    assert!(matches!(
        b.open(&ctx, &sealed),
        Err(Error::DecryptionFailed { .. })
    ));
}

#[test]
fn each_kind_of_bad_input_gets_its_own_typed_error() {
    let (ring, scope) = ring();
    let ctx = address_ctx();
    let good = seal(&ring, &scope, b"hello");

    let plaintext_err = ring.open(&ctx, b"221B Baker Street").unwrap_err();
    assert!(
        matches!(plaintext_err, Error::NotAnEnvelope { .. }),
        "{plaintext_err}"
    );
    assert!(!plaintext_err.to_string().contains("Baker"));

    // The good envelope with byte `at` set to `to`, opened.
    let with_byte = |at: usize, to: u8| {
        let mut changed = good.clone();
        changed[at] = to;
        ring.open(&ctx, &changed)
    };
    assert!(matches!(
        with_byte(2, 2),
        Err(Error::UnknownFormatVersion { version: 2, .. })
    ));

    assert!(matches!(
        with_byte(3, 9),
        Err(Error::UnknownAlgorithm {
            kind: "data AEAD",
            id: 9,
            ..
        })
    ));
    assert!(matches!(
        with_byte(4, 7),
        Err(Error::UnknownAlgorithm {
            kind: "padding",
            ..
        })
    ));

    // 82 + scope + nonce: the data part then has only a tag's worth of bytes left.
    for len in [3, 5, 6, 10, 20, 60, 100, 82 + 8 + 24 + 16] {
        let err = ring.open(&ctx, &good[..len]).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "len {len}: {err}");
    }

    // KEK v9 does not exist.
    let vpos = 6 + "patients".len() + 3;
    assert!(matches!(
        with_byte(vpos, 9),
        Err(Error::KeyVersionNotFound { .. })
    ));

    assert!(matches!(with_byte(6, b' '), Err(Error::Malformed { .. })));

    let mut last = good.clone();
    *last.last_mut().unwrap() ^= 1;
    assert!(matches!(
        ring.open(&ctx, &last),
        Err(Error::DecryptionFailed { .. })
    ));

    let err = ring.open(&ctx, &last).unwrap_err().to_string();
    assert_eq!(
        err,
        "patients.address row int:1: decryption failed (wrong key, wrong context, or tampered data)"
    );
}

#[test]
fn padding_hides_length_within_a_bucket() {
    let (ring, scope) = ring();
    let ctx = address_ctx();
    let short = seal(&ring, &scope, b"Elm St 1");
    let long = seal(&ring, &scope, b"1600 Pennsylvania Avenue");
    assert_eq!(short.len(), long.len());
    let marker = FieldPolicy {
        algorithm: Algorithm::XChaCha20Poly1305,
        padding: PaddingPolicy::MarkerOnly,
    };
    let a = ring.seal(&scope, &ctx, b"Elm St 1", &marker).unwrap();
    let b = ring.seal(&scope, &ctx, b"Elm St 12", &marker).unwrap();
    assert_eq!(a.len() + 1, b.len());
    let bad = FieldPolicy {
        algorithm: Algorithm::XChaCha20Poly1305,
        padding: PaddingPolicy::Multiple { block: 0 },
    };
    assert!(matches!(
        ring.seal(&scope, &ctx, b"x", &bad),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn every_seal_uses_a_fresh_dek_and_nonces() {
    let (ring, scope) = ring();
    let a = seal(&ring, &scope, b"same");
    let b = seal(&ring, &scope, b"same");
    assert_eq!(a.len(), b.len());
    assert_ne!(a, b);
    // Nothing after the key prefix repeats between the two.
    let prefix = 6 + "patients".len() + 4;
    assert!(
        a[prefix..]
            .iter()
            .zip(&b[prefix..])
            .filter(|(x, y)| x == y)
            .count()
            < a.len() / 8
    );
}

#[test]
fn readers_and_writers_keep_to_the_size_limit() {
    use leakless::envelope::{MAX_ENVELOPE_LEN, MAX_PADDED_LEN, inspect};
    assert_eq!(MAX_PADDED_LEN, 1 << 30);
    assert_eq!(MAX_ENVELOPE_LEN, (1 << 30) + 186);

    let (ring, scope) = ring();
    let ctx = address_ctx();
    // A writer refuses a policy that pads beyond the limit, before allocating anything.
    let huge = FieldPolicy {
        algorithm: Algorithm::XChaCha20Poly1305,
        padding: PaddingPolicy::PowerOfTwo {
            min: 1 << 31,
            cap: 1 << 31,
        },
    };
    assert!(matches!(
        ring.seal(&scope, &ctx, b"x", &huge),
        Err(Error::InvalidInput {
            what: "padding policy",
            ..
        })
    ));

    // A reader takes the longest envelope's structure, and refuses one byte more as malformed
    // before any key is fetched. (`vec![0; n]` is not touched beyond the copied header, so the
    // gigabyte is never written.)
    let good = seal(&ring, &scope, b"hello");
    let prefix_len = good.len() - 32 - 16; // everything up to the data ciphertext
    let mut longest = vec![0u8; prefix_len + MAX_PADDED_LEN + 16];
    longest[..prefix_len].copy_from_slice(&good[..prefix_len]);
    assert_eq!(inspect(&longest).unwrap().padded_len, MAX_PADDED_LEN);
    longest.push(0);
    assert!(inspect(&longest).is_err());
    let before = ring.kms_calls();
    ring.cache().clear();
    let err = ring.open_in_scope(&scope, &ctx, &longest).unwrap_err();
    assert!(
        matches!(err, Error::Malformed { problem, .. } if problem.contains("2^30")),
        "{err}"
    );
    assert_eq!(ring.kms_calls(), before);
}
