//! Stable-toolchain fuzzing of envelope parsing, opening and re-wrapping (the `cargo test`
//! counterpart of the libFuzzer target in `fuzz/`, see `docs/fuzzing.md`).
//!
//! A seeded-RNG harness mutates valid envelopes (bit flips, byte overwrites, truncations,
//! extensions, deletions, duplications, splices from other envelopes, header-byte fuzzing) and
//! generates random inputs (fully random, magic-prefixed, valid header with a random tail,
//! valid key part with a random data part), and feeds each one to `envelope::inspect`,
//! `KeyRing::open` and `KeyRing::rewrap`. It asserts:
//!
//! * no call panics;
//! * every input that is not byte-for-byte a valid envelope fails to open with a typed error
//!   (a parse, key-state or decryption error naming the field), never a plaintext;
//! * the error text never contains the plaintext;
//! * when `rewrap` accepts a changed envelope (a change in the data part, which re-wrapping does
//!   not read), the re-wrapped result fails to open.
//!
//! `LEAKLESS_FUZZ_CASES=N` sets the number of inputs (default 96,000, split 3:1 between the
//! mutation and the random-input harness); `LEAKLESS_FUZZ_SEED=S` changes the RNG seed.
//! `LEAKLESS_FUZZ_SEED_DIR=DIR` makes `seed_corpus_for_cargo_fuzz` write a seed corpus there.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use leakless::envelope::{self, HEADER_LEN, WRAP_NONCE_LEN, WRAPPED_DEK_LEN};
use leakless::{
    Algorithm, AuditInfo, Error, FieldContext, FieldPolicy, KekVersion, KeyRing, KeyScope,
    PaddingPolicy, RowId,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::common::local_ring;

/// Default total number of fuzz inputs: sized for well under 20 s in a debug build.
const DEFAULT_CASES: u64 = 96_000;
/// Default RNG seed (any value works; fixed so a failure can be replayed).
const DEFAULT_SEED: u64 = 0x1ea4_1e55_f022_0001;
/// A marker inside every plaintext, to check that no error text carries plaintext.
const MARKER: &[u8] = b"PLAINTEXT-MARKER";

fn ctx() -> FieldContext<'static> {
    FieldContext::new("patients", "address", RowId::Int(7), 3)
}

/// Which key situation a seed envelope is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyCase {
    /// KEK v1 in grace: opens, and re-wraps onto v2.
    Grace,
    /// The active KEK: opens, re-wrap returns `None`.
    Active,
    /// A retired KEK: opening is refused.
    Retired,
    /// A destroyed KEK: crypto-shredded.
    Destroyed,
}

struct Seed {
    envelope: Vec<u8>,
    plaintext: Vec<u8>,
    case: KeyCase,
}

struct Fixture {
    ring: KeyRing,
    seeds: Vec<Seed>,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn total_cases() -> u64 {
    env_u64("LEAKLESS_FUZZ_CASES").unwrap_or(DEFAULT_CASES)
}

fn rng_seed() -> u64 {
    env_u64("LEAKLESS_FUZZ_SEED").unwrap_or(DEFAULT_SEED)
}

fn plaintext(len: usize, fill: u8) -> Vec<u8> {
    let mut p = MARKER.to_vec();
    p.resize(len.max(MARKER.len()), fill);
    p
}

/// A ring with scopes in every key state and envelopes of both AEADs and several sizes.
fn fixture() -> Fixture {
    let ring = local_ring(&[]);
    let who = AuditInfo::new("fuzz-test", "fuzz fixture");
    let ctx = ctx();
    let mut seeds = Vec::new();
    let mut seal_all = |scope: &KeyScope, list: Vec<(Algorithm, PaddingPolicy, Vec<u8>)>, case| {
        for (algorithm, padding, pt) in list {
            let policy = FieldPolicy { algorithm, padding };
            let envelope = ring.seal(scope, &ctx, &pt, &policy).unwrap();
            seeds.push(Seed {
                envelope,
                plaintext: pt,
                case,
            });
        }
    };
    let pow2 = PaddingPolicy::default();
    let xchacha = Algorithm::XChaCha20Poly1305;
    let aes = Algorithm::Aes256Gcm;

    // Scope `fuzz`: v1 sealed, then rotated into a long grace; v2 active.
    let fuzz = KeyScope::new("fuzz").unwrap();
    ring.create_scope(&fuzz, &who).unwrap();
    seal_all(
        &fuzz,
        vec![
            (xchacha, pow2, plaintext(16, b'a')),
            (aes, pow2, plaintext(100, b'b')),
            (xchacha, PaddingPolicy::MarkerOnly, plaintext(40, 0x80)),
            (aes, PaddingPolicy::MarkerOnly, plaintext(17, 0)),
        ],
        KeyCase::Grace,
    );
    ring.rotate(&fuzz, Duration::from_secs(100 * 365 * 86_400), &who)
        .unwrap();
    seal_all(
        &fuzz,
        vec![
            (aes, pow2, plaintext(16, b'c')),
            (xchacha, pow2, plaintext(300, b'd')),
            (aes, PaddingPolicy::Multiple { block: 16 }, plaintext(33, 1)),
        ],
        KeyCase::Active,
    );

    // Scope `retired`: v1 retired by a rotation without grace. Scope `shredded`: v1 retired,
    // then destroyed.
    for (name, algorithm, fill, case) in [
        ("retired", aes, b'e', KeyCase::Retired),
        ("shredded", xchacha, b'f', KeyCase::Destroyed),
    ] {
        let scope = KeyScope::new(name).unwrap();
        ring.create_scope(&scope, &who).unwrap();
        seal_all(&scope, vec![(algorithm, pow2, plaintext(20, fill))], case);
        ring.rotate(&scope, Duration::ZERO, &who).unwrap();
        if case == KeyCase::Destroyed {
            // The fixture needs the destroyed state now, not after the cache window.
            ring.destroy_ignoring_cache_window(&scope, KekVersion::FIRST, &who)
                .unwrap();
        }
    }

    Fixture { ring, seeds }
}

/// Length of the key part of an envelope: header, scope length, scope, KEK version, wrap
/// nonce and wrapped DEK (everything `rewrap` authenticates).
fn key_part_len(envelope: &[u8]) -> usize {
    HEADER_LEN + 1 + usize::from(envelope[HEADER_LEN]) + 4 + WRAP_NONCE_LEN + WRAPPED_DEK_LEN
}

/// Length of header, scope length, scope and KEK version (the header bytes worth fuzzing).
fn key_prefix_len(envelope: &[u8]) -> usize {
    HEADER_LEN + 1 + usize::from(envelope[HEADER_LEN]) + 4
}

/// The error kinds an opened (or re-wrapped) input may fail with, and whether it names the
/// field it was opened as.
fn error_kind(err: &Error) -> Option<&'static str> {
    let here = ctx().location();
    let (kind, location) = match err {
        Error::NotAnEnvelope { location } => ("NotAnEnvelope", Some(location)),
        Error::UnknownFormatVersion { location, .. } => ("UnknownFormatVersion", Some(location)),
        Error::UnknownAlgorithm { location, .. } => ("UnknownAlgorithm", Some(location)),
        Error::Truncated { location, .. } => ("Truncated", Some(location)),
        Error::Malformed { location, .. } => ("Malformed", Some(location)),
        Error::DecryptionFailed { location } => ("DecryptionFailed", Some(location)),
        Error::KeyVersionNotFound { .. } => ("KeyVersionNotFound", None),
        Error::KeyDestroyed { .. } => ("KeyDestroyed", None),
        Error::KeyWrongState { .. } => ("KeyWrongState", None),
        Error::ScopeNotFound { .. } => ("ScopeNotFound", None),
        Error::NoActiveKey { .. } => ("NoActiveKey", None),
        _ => return None,
    };
    match location {
        Some(l) if *l != here => None,
        _ => Some(kind),
    }
}

#[derive(Default)]
struct Stats {
    cases: u64,
    identical: u64,
    open_errors: BTreeMap<&'static str, u64>,
    rewrap_some: u64,
    rewrap_none: u64,
    inspect_ok: u64,
}

fn assert_typed(err: &Error, what: &str) -> &'static str {
    let kind =
        error_kind(err).unwrap_or_else(|| panic!("{what}: untyped or misplaced error: {err:?}"));
    let text = format!("{err} {err:?}");
    assert!(
        !text.as_bytes().windows(MARKER.len()).any(|w| w == MARKER),
        "{what}: error text carries plaintext"
    );
    kind
}

/// Feeds one input to `inspect`, `open` and `rewrap` and checks the properties of the module
/// docs. Valid envelopes (byte-for-byte a seed) are checked against their expected outcome.
fn check(f: &Fixture, input: &[u8], stats: &mut Stats) {
    let ctx = ctx();
    stats.cases += 1;
    let seed = f.seeds.iter().find(|s| s.envelope == input);
    if seed.is_some() {
        stats.identical += 1;
    }

    if let Ok(info) = envelope::inspect(input) {
        stats.inspect_ok += 1;
        assert_eq!(info.len, input.len());
        assert!(info.padded_len < input.len());
    }

    match (f.ring.open(&ctx, input), seed) {
        (Ok(pt), Some(seed)) => {
            assert!(matches!(seed.case, KeyCase::Grace | KeyCase::Active));
            assert_eq!(pt.expose_secret(), &seed.plaintext[..]);
        }
        (Ok(_), None) => panic!("a changed envelope opened"),
        (Err(e), seed) => {
            let kind = assert_typed(&e, "open");
            *stats.open_errors.entry(kind).or_default() += 1;
            if let Some(seed) = seed {
                let expected = match seed.case {
                    KeyCase::Retired => "KeyWrongState",
                    KeyCase::Destroyed => "KeyDestroyed",
                    _ => panic!("a valid envelope failed to open: {e}"),
                };
                assert_eq!(kind, expected);
            }
        }
    }

    match f.ring.rewrap(&ctx, input) {
        Ok(Some(moved)) => {
            stats.rewrap_some += 1;
            match (f.ring.open(&ctx, &moved), seed) {
                (Ok(pt), Some(seed)) => {
                    assert_eq!(seed.case, KeyCase::Grace);
                    assert_eq!(pt.expose_secret(), &seed.plaintext[..]);
                }
                (Ok(_), None) => panic!("a re-wrapped changed envelope opened"),
                (Err(e), Some(_)) => panic!("a re-wrapped valid envelope failed: {e}"),
                (Err(e), None) => {
                    assert_typed(&e, "open after rewrap");
                }
            }
        }
        // Already on the active version: rewrap authenticates nothing then; open does.
        Ok(None) => {
            stats.rewrap_none += 1;
            if let Some(seed) = seed {
                assert_eq!(seed.case, KeyCase::Active);
            }
        }
        Err(e) => {
            if !matches!(e, Error::InvalidInput { .. }) {
                assert_typed(&e, "rewrap");
            }
            if let Some(seed) = seed {
                assert!(
                    matches!(seed.case, KeyCase::Retired | KeyCase::Destroyed),
                    "a valid envelope failed to re-wrap: {e}"
                );
            }
        }
    }
}

/// Runs `check`, turning a panic into a failure message that says how to replay it.
fn check_reported(f: &Fixture, input: &[u8], stats: &mut Stats, label: &str, case: u64) {
    let outcome = catch_unwind(AssertUnwindSafe(|| check(f, input, stats)));
    if outcome.is_err() {
        panic!(
            "fuzz case {case} ({label}) failed with seed {:#x}; input ({} bytes, ciphertext \
             only): {}",
            rng_seed(),
            input.len(),
            hex_string(input)
        );
    }
}

fn hex_string(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Interesting values for a header byte.
const HEADER_VALUES: [u8; 10] = [0x00, 0x01, 0x02, 0x03, 0x40, 0x41, 0x4b, 0x4c, 0x80, 0xff];

/// One mutation of `base`; `other` is another envelope for splices. Returns the label.
fn mutate(rng: &mut StdRng, base: &[u8], other: &[u8], out: &mut Vec<u8>) -> &'static str {
    out.clear();
    out.extend_from_slice(base);
    let len = out.len();
    match rng.gen_range(0..10u8) {
        0 => {
            for _ in 0..rng.gen_range(1..=3) {
                let i = rng.gen_range(0..len);
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            "bit flip"
        }
        1 => {
            let i = rng.gen_range(0..len);
            out[i] = rng.r#gen();
            "byte overwrite"
        }
        2 => {
            out.truncate(rng.gen_range(0..len));
            "truncation"
        }
        3 => {
            let n = rng.gen_range(1..=64);
            for _ in 0..n {
                out.push(rng.r#gen());
            }
            "extension"
        }
        4 => {
            let i = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - i).min(48));
            out.drain(i..i + n);
            "deletion"
        }
        5 => {
            let i = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - i).min(48));
            let copy = out[i..i + n].to_vec();
            let at = rng.gen_range(0..=len);
            out.splice(at..at, copy);
            "duplication"
        }
        6 => {
            // Same-offset splice from another envelope (swaps nonces, wrapped DEKs, tags...).
            let end = len.min(other.len());
            let i = rng.gen_range(0..end);
            let n = rng.gen_range(1..=(end - i));
            out[i..i + n].copy_from_slice(&other[i..i + n]);
            "same-offset splice"
        }
        7 => {
            // Any range replaced by any range of another envelope.
            let i = rng.gen_range(0..len);
            let n = rng.gen_range(0..=(len - i));
            let j = rng.gen_range(0..other.len());
            let m = rng.gen_range(0..=(other.len() - j));
            out.splice(i..i + n, other[j..j + m].iter().copied());
            "splice"
        }
        8 => {
            // Header bytes: magic, version, AEAD id, padding id, scope length, scope, KEK version.
            let i = rng.gen_range(0..key_prefix_len(base));
            out[i] = if rng.gen_bool(0.5) {
                HEADER_VALUES[rng.gen_range(0..HEADER_VALUES.len())]
            } else {
                out[i].wrapping_add(rng.gen_range(1..=3)).wrapping_sub(2)
            };
            "header byte"
        }
        _ => {
            // The KEK version field set to a neighbour, zero or the maximum.
            let at = key_prefix_len(base) - 4;
            let v = u32::from_be_bytes(out[at..at + 4].try_into().unwrap());
            let choices = [0, 1, 2, 3, v.wrapping_add(1), v.wrapping_sub(1), u32::MAX];
            let new = choices[rng.gen_range(0..choices.len())];
            out[at..at + 4].copy_from_slice(&new.to_be_bytes());
            "KEK version"
        }
    }
}

/// One random input; `seeds` supply valid prefixes. Returns the label.
fn random_input(rng: &mut StdRng, seeds: &[Seed], out: &mut Vec<u8>) -> &'static str {
    out.clear();
    let seed = &seeds[rng.gen_range(0..seeds.len())].envelope;
    let (prefix, label) = match rng.gen_range(0..4u8) {
        0 => (0, "fully random"),
        1 => (2, "magic then random"),
        2 => (key_prefix_len(seed), "valid header then random"),
        _ => (key_part_len(seed), "valid key part then random"),
    };
    out.extend_from_slice(&seed[..prefix]);
    let n = rng.gen_range(0..=400usize);
    let start = out.len();
    out.resize(start + n, 0);
    rng.fill_bytes(&mut out[start..]);
    label
}

fn print_stats(name: &str, stats: &Stats, elapsed: Duration) {
    println!(
        "{name}: {} inputs in {:.1?} (seed {:#x}); {} identical to a valid envelope; inspect ok \
         {}; rewrap Some {} / None {}; open errors: {:?}",
        stats.cases,
        elapsed,
        rng_seed(),
        stats.identical,
        stats.inspect_ok,
        stats.rewrap_some,
        stats.rewrap_none,
        stats.open_errors
    );
}

#[test]
fn valid_envelopes_behave_as_their_key_state_says() {
    let f = fixture();
    let mut stats = Stats::default();
    for seed in &f.seeds {
        check(&f, &seed.envelope, &mut stats);
    }
    assert_eq!(stats.identical, u64::try_from(f.seeds.len()).unwrap());
    // Grace envelopes re-wrap, active ones do not, retired and destroyed ones fail.
    let grace = f.seeds.iter().filter(|s| s.case == KeyCase::Grace).count();
    assert_eq!(stats.rewrap_some, u64::try_from(grace).unwrap());
    assert_eq!(stats.open_errors.get("KeyWrongState"), Some(&1));
    assert_eq!(stats.open_errors.get("KeyDestroyed"), Some(&1));
}

#[test]
fn mutated_envelopes_never_open() {
    let f = fixture();
    let total = total_cases();
    let cases = total - total / 4;
    let mut rng = StdRng::seed_from_u64(rng_seed());
    let mut stats = Stats::default();
    let mut labels: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut buf = Vec::new();
    let start = Instant::now();
    for case in 0..cases {
        let base = &f.seeds[rng.gen_range(0..f.seeds.len())].envelope;
        let other = &f.seeds[rng.gen_range(0..f.seeds.len())].envelope;
        let label = mutate(&mut rng, base, other, &mut buf);
        *labels.entry(label).or_default() += 1;
        check_reported(&f, &buf, &mut stats, label, case);
    }
    print_stats("mutations", &stats, start.elapsed());
    println!("mutation kinds: {labels:?}");
    assert_eq!(stats.cases, cases);
    // The harness must reach the AEAD (not only the parser) and the key-state checks.
    if cases >= 1000 {
        for kind in [
            "DecryptionFailed",
            "Truncated",
            "KeyVersionNotFound",
            "UnknownAlgorithm",
        ] {
            assert!(
                stats.open_errors.get(kind).copied().unwrap_or(0) > 0,
                "no mutation reached {kind}"
            );
        }
        assert!(
            stats.rewrap_some > 0,
            "no mutated envelope reached a re-wrap"
        );
    }
}

#[test]
fn random_inputs_never_open() {
    let f = fixture();
    let cases = total_cases() / 4;
    let mut rng = StdRng::seed_from_u64(rng_seed() ^ 0x5eed_5eed);
    let mut stats = Stats::default();
    let mut buf = Vec::new();
    let start = Instant::now();
    for case in 0..cases {
        let label = random_input(&mut rng, &f.seeds, &mut buf);
        check_reported(&f, &buf, &mut stats, label, case);
    }
    print_stats("random inputs", &stats, start.elapsed());
    assert_eq!(stats.cases, cases);
    assert_eq!(stats.identical, 0);
    if cases >= 1000 {
        for kind in ["NotAnEnvelope", "DecryptionFailed", "Truncated"] {
            assert!(
                stats.open_errors.get(kind).copied().unwrap_or(0) > 0,
                "no random input reached {kind}"
            );
        }
    }
}

/// Writes a seed corpus for the libFuzzer target `envelope_open` when `LEAKLESS_FUZZ_SEED_DIR`
/// is set: valid envelopes (of a throwaway key; the target's own ring has other keys, so these
/// reach its DEK unwrap and fail there) and mutation programs `[seed index, cut, xor mask...]`
/// over the target's own envelopes (format: `fuzz/fuzz_targets/envelope_open.rs`).
#[test]
fn seed_corpus_for_cargo_fuzz() {
    let f = fixture();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, seed) in f.seeds.iter().enumerate() {
        let info = envelope::inspect(&seed.envelope).unwrap();
        assert_eq!(info.len, seed.envelope.len());
        files.push((format!("envelope-{i:02}"), seed.envelope.clone()));
    }
    for i in 0u8..8 {
        files.push((format!("mutate-{i}-identity"), vec![i, 0]));
        files.push((format!("mutate-{i}-cut16"), vec![i, 0xf0]));
        let mut flip = vec![i, 0];
        flip.extend(std::iter::repeat_n(0, 40));
        flip.push(1);
        files.push((format!("mutate-{i}-flip-wrapped-dek"), flip));
    }
    assert!(files.len() > f.seeds.len());
    if let Some(dir) = std::env::var_os("LEAKLESS_FUZZ_SEED_DIR") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        assert!(std::fs::read_dir(&dir).unwrap().count() >= files.len());
        println!("wrote {} seed inputs to {}", files.len(), dir.display());
    }
}
