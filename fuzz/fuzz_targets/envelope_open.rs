//! libFuzzer target: arbitrary bytes into envelope parsing, opening and re-wrapping.
//!
//! Every input is used twice:
//!
//! 1. **raw**: the bytes themselves go to [`leakless::envelope::inspect`], [`KeyRing::open`] and
//!    [`KeyRing::rewrap`];
//! 2. **as a mutation of a valid envelope** sealed by this process's own ring (so the fuzzer
//!    reaches the DEK unwrap and the data AEAD, not just the parser): byte 0 picks one of the
//!    seed envelopes, byte 1 read as `i8` truncates the result by `-b1` bytes when negative,
//!    and bytes `2..` are XORed onto the envelope from offset 0 (bytes past its end are
//!    appended). An input of `[i, 0]` is seed `i` unchanged.
//!
//! Properties checked (a violation aborts the run with a panic, which libFuzzer reports):
//! * nothing panics, whatever the bytes;
//! * an envelope that is not byte-for-byte one of the seeds never opens, and its error names
//!   the field being opened;
//! * a seed opens to exactly its plaintext;
//! * whatever `rewrap` returns for a changed envelope never opens either.
//!
//! The ring is built once per process (`OnceLock`) with a root key generated at start-up; no
//! key material is stored anywhere. Its scopes cover every key state: `fuzz` v1 in grace and v2
//! active, `retired` v1 retired, `shredded` v1 destroyed.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{
    Algorithm, AuditInfo, Error, FieldContext, FieldPolicy, KeyRing, KeyScope, PaddingPolicy, RowId,
};
use libfuzzer_sys::fuzz_target;

/// The context every seed is sealed for.
const CTX: FieldContext<'static> = FieldContext {
    table: "patients",
    column: "address",
    row: RowId::Int(7),
    schema_version: 3,
};

struct Seed {
    envelope: Vec<u8>,
    plaintext: Vec<u8>,
}

struct Fixture {
    ring: KeyRing,
    seeds: Vec<Seed>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn policy(algorithm: Algorithm) -> FieldPolicy {
    FieldPolicy {
        algorithm,
        padding: PaddingPolicy::default(),
    }
}

fn build_fixture() -> Fixture {
    let ring = KeyRing::builder(
        Arc::new(LocalKms::from_root_key(RootKey::generate())),
        Arc::new(MemoryKeyStore::new()),
    )
    .build();
    let who = AuditInfo::new("fuzz", "fuzz fixture");
    let mut seeds = Vec::new();
    let mut seal = |ring: &KeyRing, scope: &KeyScope, alg: Algorithm, plaintext: Vec<u8>| {
        let envelope = ring
            .seal(scope, &CTX, &plaintext, &policy(alg))
            .expect("fixture seal");
        seeds.push(Seed {
            envelope,
            plaintext,
        });
    };

    let fuzz = KeyScope::new("fuzz").expect("scope name");
    ring.create_scope(&fuzz, &who).expect("create scope");
    seal(&ring, &fuzz, Algorithm::XChaCha20Poly1305, Vec::new());
    seal(
        &ring,
        &fuzz,
        Algorithm::Aes256Gcm,
        b"221B Baker Street".to_vec(),
    );
    seal(&ring, &fuzz, Algorithm::XChaCha20Poly1305, vec![0x80; 100]);
    // v1 moves to grace: its envelopes still open and can be re-wrapped onto v2.
    ring.rotate(&fuzz, Duration::from_secs(100 * 365 * 86_400), &who)
        .expect("rotate");
    seal(&ring, &fuzz, Algorithm::Aes256Gcm, vec![0; 31]);
    seal(&ring, &fuzz, Algorithm::XChaCha20Poly1305, vec![0x41; 300]);

    let retired = KeyScope::new("retired").expect("scope name");
    ring.create_scope(&retired, &who).expect("create scope");
    seal(&ring, &retired, Algorithm::Aes256Gcm, b"old".to_vec());
    ring.rotate(&retired, Duration::ZERO, &who).expect("rotate");

    let shredded = KeyScope::new("shredded").expect("scope name");
    ring.create_scope(&shredded, &who).expect("create scope");
    seal(
        &ring,
        &shredded,
        Algorithm::XChaCha20Poly1305,
        b"gone".to_vec(),
    );
    ring.rotate(&shredded, Duration::ZERO, &who)
        .expect("rotate");
    ring.destroy(&shredded, leakless::KekVersion::FIRST, &who)
        .expect("destroy");

    Fixture { ring, seeds }
}

/// Whether `err` is a typed failure that names the field at [`CTX`] (or the key it needed).
fn typed_open_error(err: &Error) -> bool {
    let here = CTX.location();
    match err {
        Error::NotAnEnvelope { location }
        | Error::UnknownFormatVersion { location, .. }
        | Error::UnknownAlgorithm { location, .. }
        | Error::Truncated { location, .. }
        | Error::Malformed { location, .. }
        | Error::DecryptionFailed { location } => *location == here,
        Error::KeyVersionNotFound { .. }
        | Error::KeyDestroyed { .. }
        | Error::KeyWrongState { .. }
        | Error::ScopeNotFound { .. }
        | Error::NoActiveKey { .. } => true,
        _ => false,
    }
}

/// Runs every entry point on `candidate` and checks the properties of the module docs.
fn check(f: &Fixture, candidate: &[u8]) {
    let seed = f.seeds.iter().find(|s| s.envelope == candidate);

    if let Ok(info) = leakless::envelope::inspect(candidate) {
        assert_eq!(
            info.len,
            candidate.len(),
            "inspect reports the input length"
        );
        assert!(
            info.padded_len < candidate.len(),
            "padded length inside the input"
        );
    }

    match (f.ring.open(&CTX, candidate), seed) {
        (Ok(pt), Some(seed)) => assert_eq!(pt.expose_secret(), &seed.plaintext[..]),
        (Ok(_), None) => panic!("a changed envelope opened"),
        (Err(e), _) => {
            assert!(typed_open_error(&e), "untyped open error: {e}");
            // A seed may fail only because its key is retired or destroyed.
            if seed.is_some() {
                assert!(
                    matches!(e, Error::KeyWrongState { .. } | Error::KeyDestroyed { .. }),
                    "a seed failed to open: {e}"
                );
            }
        }
    }

    match f.ring.rewrap(&CTX, candidate) {
        Ok(Some(moved)) => match (f.ring.open(&CTX, &moved), seed) {
            (Ok(pt), Some(seed)) => assert_eq!(pt.expose_secret(), &seed.plaintext[..]),
            (Ok(_), None) => panic!("a re-wrapped changed envelope opened"),
            (Err(e), Some(_)) => panic!("a re-wrapped seed failed to open: {e}"),
            (Err(e), None) => assert!(typed_open_error(&e), "untyped error: {e}"),
        },
        // Already on the active version: rewrap does not authenticate, open does.
        Ok(None) => {}
        Err(e) => assert!(
            typed_open_error(&e) || matches!(e, Error::InvalidInput { .. }),
            "untyped rewrap error: {e}"
        ),
    }
}

/// Interprets `data` as a mutation of one seed (see the module docs).
fn mutate(f: &Fixture, data: &[u8]) -> Option<Vec<u8>> {
    let (&pick, rest) = data.split_first()?;
    let (&cut, mask) = rest.split_first()?;
    let seed = f.seeds.get(usize::from(pick) % f.seeds.len())?;
    let mut out = seed.envelope.clone();
    for (i, &m) in mask.iter().enumerate() {
        match out.get_mut(i) {
            Some(b) => *b ^= m,
            None => out.push(m),
        }
    }
    let cut = i8::from_ne_bytes([cut]);
    if cut < 0 {
        out.truncate(out.len().saturating_sub(usize::from(cut.unsigned_abs())));
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    check(f, data);
    if let Some(candidate) = mutate(f, data) {
        check(f, &candidate);
    }
});
