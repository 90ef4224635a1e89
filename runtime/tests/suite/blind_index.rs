//! Blind indexes: the documented construction recomputed independently, per-column keys,
//! normalisers, truncation limits, and look-ups across an index-key rotation.

use std::sync::Arc;
use std::time::Duration;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use leakless::kms::{Kms, LocalKms};
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{AuditInfo, BlindIndexSpec, Error, KekVersion, KeyRing, KeyScope, Normalizer};
use sha2::Sha256;

use crate::support::peers::binding;

fn setup() -> (KeyRing, Arc<LocalKms>, KeyScope) {
    let kms = Arc::new(LocalKms::from_root_key(RootKey::generate()));
    let ring = KeyRing::builder(kms.clone(), Arc::new(MemoryKeyStore::new())).build();
    let scope = KeyScope::new("bidx").unwrap();
    ring.create_scope(&scope, &AuditInfo::new("test", "index key"))
        .unwrap();
    (ring, kms, scope)
}

fn who() -> AuditInfo {
    AuditInfo::new("test", "rotation")
}

#[test]
fn token_matches_the_documented_construction() {
    let (ring, kms, scope) = setup();
    let spec = BlindIndexSpec::new("patients", "email", scope.clone());
    let token = ring.blind_index(&spec, b"alice@example.com").unwrap();

    // Recompute from the module docs: unwrap the index key (KEK v1) ourselves.
    let record = ring.versions(&scope).unwrap().remove(0);
    let key = kms
        .unwrap_kek(
            record.wrapped.as_ref().unwrap(),
            &binding(&scope, record.version.get()),
        )
        .unwrap();
    let mut info = Vec::new();
    for part in ["patients", "email"] {
        info.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
        info.extend_from_slice(part.as_bytes());
    }
    let mut field_key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"leakless blind index v1"), key.expose_secret())
        .expand(&info, &mut field_key)
        .unwrap();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&field_key).unwrap();
    mac.update(b"alice@example.com");
    let digest = mac.finalize().into_bytes();
    let mut expected = 1u32.to_be_bytes().to_vec();
    expected.extend_from_slice(&digest[..16]);
    assert_eq!(token.as_bytes(), &expected[..]);
    assert_eq!(token.version(), Some(KekVersion::new(1).unwrap()));
    // Debug shows neither the hash nor the input.
    let shown = format!("{token:?}");
    assert_eq!(shown, "BlindIndex(v1, 20 bytes)");
}

#[test]
fn equal_values_match_within_a_column_only() {
    let (ring, _, scope) = setup();
    let email = BlindIndexSpec::new("patients", "email", scope.clone());
    let backup = BlindIndexSpec::new("patients", "backup_email", scope.clone());
    let other_table = BlindIndexSpec::new("doctors", "email", scope.clone());
    let a = ring.blind_index(&email, b"alice@example.com").unwrap();
    assert_eq!(a, ring.blind_index(&email, b"alice@example.com").unwrap());
    assert_ne!(a, ring.blind_index(&email, b"bob@example.com").unwrap());
    assert_ne!(a, ring.blind_index(&backup, b"alice@example.com").unwrap());
    assert_ne!(
        a,
        ring.blind_index(&other_table, b"alice@example.com")
            .unwrap()
    );
    // Another key ring (another index key) gives unrelated tokens.
    let (ring2, _, scope2) = setup();
    let email2 = BlindIndexSpec::new("patients", "email", scope2);
    assert_ne!(a, ring2.blind_index(&email2, b"alice@example.com").unwrap());
}

#[test]
fn normalisers_and_limits() {
    let (ring, _, scope) = setup();
    let mut spec = BlindIndexSpec::new("patients", "email", scope);
    spec.normalizer = Normalizer::TrimLowercase;
    let a = ring.blind_index(&spec, b"  Alice@Example.COM \n").unwrap();
    assert_eq!(a, ring.blind_index(&spec, b"alice@example.com").unwrap());
    spec.normalizer = Normalizer::Trim;
    assert_ne!(
        ring.blind_index(&spec, b" Alice ").unwrap(),
        ring.blind_index(&spec, b"alice").unwrap()
    );
    assert_eq!(
        ring.blind_index(&spec, b" Alice ").unwrap(),
        ring.blind_index(&spec, b"Alice").unwrap()
    );
    spec.normalizer = Normalizer::Lowercase;
    let err = ring.blind_index(&spec, &[0xff, 0xfe]).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    spec.normalizer = Normalizer::None;
    for (bytes, ok) in [(3, false), (4, true), (32, true), (33, false)] {
        spec.bytes = bytes;
        let result = ring.blind_index(&spec, b"x");
        assert_eq!(result.is_ok(), ok, "{bytes} bytes");
        if let Ok(t) = result {
            assert_eq!(t.as_bytes().len(), 4 + bytes);
        }
    }
}

#[test]
fn lookups_find_rows_indexed_before_a_rotation_until_the_old_version_retires() {
    let (ring, _, scope) = setup();
    let spec = BlindIndexSpec::new("patients", "email", scope.clone());
    let stored_v1 = ring.blind_index(&spec, b"alice@example.com").unwrap();
    ring.rotate(&scope, Duration::from_secs(3600), &who())
        .unwrap();
    let stored_v2 = ring.blind_index(&spec, b"alice@example.com").unwrap();
    assert_eq!(stored_v2.version(), Some(KekVersion::new(2).unwrap()));
    assert_ne!(stored_v1, stored_v2);
    let candidates = ring
        .blind_index_candidates(&spec, b"alice@example.com")
        .unwrap();
    assert_eq!(candidates.len(), 2);
    assert_eq!(candidates[0], stored_v2, "the active version comes first");
    assert!(candidates.contains(&stored_v1));
    // This test is about look-ups, not about the cache window a retire waits for.
    ring.retire_ignoring_cache_window(&scope, KekVersion::new(1).unwrap(), &who())
        .unwrap();
    let candidates = ring
        .blind_index_candidates(&spec, b"alice@example.com")
        .unwrap();
    assert_eq!(candidates, vec![stored_v2]);
}

#[test]
fn unknown_index_scope_is_a_typed_error() {
    let (ring, _, _) = setup();
    let spec = BlindIndexSpec::new("patients", "email", KeyScope::new("nope").unwrap());
    assert!(matches!(
        ring.blind_index(&spec, b"x"),
        Err(Error::ScopeNotFound { .. })
    ));
}

/// The token of `text` under `normalizer` (patients.name, one ring).
fn token_of(ring: &KeyRing, scope: &KeyScope, normalizer: Normalizer, text: &str) -> Vec<u8> {
    let mut spec = BlindIndexSpec::new("patients", "name", scope.clone());
    spec.normalizer = normalizer;
    ring.blind_index(&spec, text.as_bytes())
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// What `nfkc_casefold` merges: each group of spellings gives one token; with no normaliser
/// every spelling gives its own (so the merge comes from the normaliser, not the test).
#[test]
fn nfkc_casefold_merges_what_people_type_alike() {
    let (ring, _, scope) = setup();
    let groups: &[&[&str]] = &[
        // Composed é, e + combining acute, upper case, a zero-width space inside.
        &["José", "Jose\u{301}", "JOSÉ", "Jo\u{200b}sé"],
        // ß, SS, ss, the capital sharp s.
        &["Straße", "STRASSE", "strasse", "STRA\u{1e9e}E"],
        // Spaces: no-break, ideographic, tab, doubled, leading and trailing; a soft hyphen.
        &[
            "Anna Maria",
            "Anna\u{a0}Maria",
            "Anna\u{3000}Maria",
            "Anna\tMaria",
            "  Anna   Maria ",
            "An\u{ad}na Maria",
        ],
        // Full-width and ligature forms; final and medial sigma.
        &["ﬁle ＡＢＣ", "file abc"],
        &["ΟΔΥΣΣΕΥΣ", "οδυσσευς", "Οδυσσευσ"],
    ];
    for group in groups {
        let base = token_of(&ring, &scope, Normalizer::NfkcCasefold, group[0]);
        for spelling in &group[1..] {
            let t = token_of(&ring, &scope, Normalizer::NfkcCasefold, spelling);
            assert_eq!(t, base, "{spelling:?} should match {:?}", group[0]);
            assert_ne!(
                token_of(&ring, &scope, Normalizer::None, spelling),
                token_of(&ring, &scope, Normalizer::None, group[0]),
                "{spelling:?}: without a normaliser the spellings differ"
            );
        }
    }
    // What it keeps apart: accents, look-alike letters of other scripts, different words.
    for (a, b) in [
        ("José", "Jose"),
        ("paypal", "p\u{430}ypal"),
        ("Anna", "Anne"),
    ] {
        assert_ne!(
            token_of(&ring, &scope, Normalizer::NfkcCasefold, a),
            token_of(&ring, &scope, Normalizer::NfkcCasefold, b),
            "{a:?} / {b:?}"
        );
    }
}

/// `nfc` merges only canonically equivalent spellings: case and width still count.
#[test]
fn nfc_merges_composition_only() {
    let (ring, _, scope) = setup();
    let t = |s: &str| token_of(&ring, &scope, Normalizer::Nfc, s);
    assert_eq!(t("Jos\u{e9}"), t("Jose\u{301}"));
    assert_ne!(t("José"), t("JOSÉ"));
    assert_ne!(t("ABC"), t("ＡＢＣ"));
    assert_ne!(
        token_of(&ring, &scope, Normalizer::None, "Jos\u{e9}"),
        token_of(&ring, &scope, Normalizer::None, "Jose\u{301}")
    );
}

/// The Unicode normalisers refuse bytes that are not UTF-8, like the others.
#[test]
fn unicode_normalisers_need_text() {
    let (ring, _, scope) = setup();
    for n in [Normalizer::Nfc, Normalizer::NfkcCasefold] {
        let mut spec = BlindIndexSpec::new("patients", "name", scope.clone());
        spec.normalizer = n;
        let e = ring.blind_index(&spec, &[0xff, 0xfe]).unwrap_err();
        assert!(
            matches!(e, Error::InvalidInput { .. }) && e.to_string().contains("UTF-8"),
            "{e}"
        );
    }
}
