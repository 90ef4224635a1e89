//! Known-answer tests of `docs/key-store-format.md`: the KEK wrap under a local root key, the
//! integrity key, record tags, the audit chain, and a whole example key-store file.
//!
//! The vectors live in the document (two JSON blocks between `<!-- key-store-vectors:begin -->`
//! / `<!-- key-store-vectors:end -->` and `<!-- key-store-file:begin -->` /
//! `<!-- key-store-file:end -->`), so the document and the code cannot drift apart: this test
//! rebuilds both blocks from their inputs with the library's own functions (the local backend's
//! wrap, [`record_tag`], [`audit_tag`], [`FileKeyStore`]) and requires them byte for byte; it
//! checks the intermediate values of the document (associated data, HMAC key, tag inputs)
//! against the library with independent code of its own; it opens the example store with a
//! real [`KeyRing`] and requires `verify_store` to accept it; and it requires the ring to refuse
//! tampered copies. `scripts/verify-vectors.py` recomputes the same vectors in Python.
//!
//! To rewrite both blocks after a deliberate format change:
//! `LEAKLESS_WRITE_VECTORS=1 cargo test -p leakless --test suite key_store_format::`.
//!
//! Every key here is a test value derived from a label with SHA-256: not a secret, never to be
//! used as a real key.

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use leakless::key::{
    AuditRecord, Auth, KekRecord, KekState, KekVersion, KeyAction, KeyScope, StoreChange, UnixTime,
    WrappedKek,
};
use leakless::keyring::{INTEGRITY_SCOPE, audit_tag, record_tag};
use leakless::kms::{KekBinding, Kms, LocalKms};
use leakless::secret::{Kek, RootKey};
use leakless::store::FileKeyStore;
use leakless::{Error, KeyRing};
use serde_json::{Value, json};
use sha2::Sha256;

#[path = "../common/test_bytes.rs"]
mod test_bytes;
use test_bytes::derive;

const DOC: &str = include_str!("../../../docs/key-store-format.md");
const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/key-store-format.md");
const VECTORS: (&str, &str) = (
    "<!-- key-store-vectors:begin -->\n```json\n",
    "```\n<!-- key-store-vectors:end -->",
);
const FILE: (&str, &str) = (
    "<!-- key-store-file:begin -->\n```json\n",
    "```\n<!-- key-store-file:end -->",
);

fn root_key() -> RootKey {
    RootKey::try_from_slice(&derive("key-store-format root key", 32)).unwrap()
}

fn kek_bytes(scope: &str, version: u32) -> Vec<u8> {
    derive(&format!("key-store-format kek {scope} v{version}"), 32)
}

fn nonce(scope: &str, version: u32) -> [u8; 24] {
    derive(
        &format!("key-store-format wrap nonce {scope} v{version}"),
        24,
    )
    .try_into()
    .unwrap()
}

fn scope(name: &str) -> KeyScope {
    KeyScope::new(name).unwrap()
}

fn v(n: u32) -> KekVersion {
    KekVersion::new(n).unwrap()
}

/// 2026-01-05 09:00:00 UTC, and the times of the example's later steps.
const T0: i64 = 1_767_603_600;
const DAY: i64 = 86_400;
const T1: i64 = T0 + 30 * DAY;
const T2: i64 = T1 + 7 * DAY + 60;
const T3: i64 = T2 + DAY;
const T4: i64 = T1 + 90 * DAY;

fn wrap(scope_name: &str, version: u32) -> WrappedKek {
    let kek = Kek::try_from_slice(&kek_bytes(scope_name, version)).unwrap();
    let s = scope(scope_name);
    LocalKms::wrap_kek_with_nonce_for_kat(
        &root_key(),
        &kek,
        &KekBinding {
            scope: &s,
            version: v(version),
        },
        &nonce(scope_name, version),
    )
    .unwrap()
}

#[allow(clippy::too_many_arguments, reason = "one audit entry, field by field")]
fn entry(
    at: i64,
    actor: &str,
    reason: &str,
    action: KeyAction,
    scope_name: &str,
    version: u32,
    from: Option<KekState>,
    to: KekState,
) -> AuditRecord {
    AuditRecord {
        at: UnixTime(at),
        actor: actor.into(),
        reason: reason.into(),
        action,
        scope: scope(scope_name),
        version: v(version),
        from,
        to,
        auth: None,
    }
}

/// The example's audit log, in chain order (sequence numbers 1 to 8), without tags.
fn audit_entries() -> Vec<AuditRecord> {
    use KekState::{Active, Destroyed, Retired};
    use KeyAction::{CreateScope, Destroy, ExpireGrace, Rotate};
    let grace = |t| KekState::Grace { until: UnixTime(t) };
    let rotation = "Rotation trimestrielle \u{2013} SEC-42";
    vec![
        entry(
            T0,
            "dba:alice",
            "initial set-up",
            CreateScope,
            INTEGRITY_SCOPE,
            1,
            None,
            Active,
        ),
        entry(
            T0,
            "dba:alice",
            "initial set-up",
            CreateScope,
            "patients",
            1,
            None,
            Active,
        ),
        entry(T1, "dba:bob", rotation, Rotate, "patients", 2, None, Active),
        entry(
            T1,
            "dba:bob",
            rotation,
            Rotate,
            "patients",
            1,
            Some(Active),
            grace(T1 + 7 * DAY),
        ),
        entry(
            T2,
            "leakless",
            "grace period ended",
            ExpireGrace,
            "patients",
            1,
            Some(grace(T1 + 7 * DAY)),
            Retired,
        ),
        entry(
            T3,
            "dba:alice",
            "crypto-shred after re-wrap, SEC-43",
            Destroy,
            "patients",
            1,
            Some(Retired),
            Destroyed,
        ),
        entry(T4, "dba:bob", rotation, Rotate, "patients", 3, None, Active),
        entry(
            T4,
            "dba:bob",
            rotation,
            Rotate,
            "patients",
            2,
            Some(Active),
            grace(T4 + 7 * DAY),
        ),
    ]
}

#[allow(clippy::too_many_arguments, reason = "one record, field by field")]
fn record(
    scope_name: &str,
    version: u32,
    state: KekState,
    wrapped: Option<WrappedKek>,
    created: i64,
    updated: i64,
    deactivated: Option<i64>,
    recheck_secs: u32,
) -> KekRecord {
    KekRecord {
        scope: scope(scope_name),
        version: v(version),
        state,
        wrapped,
        created_at: UnixTime(created),
        updated_at: UnixTime(updated),
        deactivated_at: deactivated.map(UnixTime),
        recheck_secs,
        auth: None,
    }
}

/// The example's records as they stand after the eight entries, each with the sequence number
/// of its version's last entry (without tags).
fn records() -> Vec<(KekRecord, u64)> {
    vec![
        (
            record(
                INTEGRITY_SCOPE,
                1,
                KekState::Active,
                Some(wrap(INTEGRITY_SCOPE, 1)),
                T0,
                T0,
                None,
                300,
            ),
            1,
        ),
        (
            record(
                "patients",
                1,
                KekState::Destroyed,
                None,
                T0,
                T3,
                Some(T1),
                300,
            ),
            6,
        ),
        (
            record(
                "patients",
                2,
                KekState::Grace {
                    until: UnixTime(T4 + 7 * DAY),
                },
                Some(wrap("patients", 2)),
                T1,
                T4,
                Some(T4),
                300,
            ),
            8,
        ),
        (
            record(
                "patients",
                3,
                KekState::Active,
                Some(wrap("patients", 3)),
                T4,
                T4,
                None,
                60,
            ),
            7,
        ),
    ]
}

fn integrity_kek() -> Kek {
    Kek::try_from_slice(&kek_bytes(INTEGRITY_SCOPE, 1)).unwrap()
}

/// The example's authenticated audit entries and records, tagged by the library.
fn authenticated() -> (Vec<AuditRecord>, Vec<KekRecord>) {
    let key = integrity_kek();
    let mut prev = [0u8; 32];
    let mut entries = audit_entries();
    for (seq, a) in (1u64..).zip(entries.iter_mut()) {
        let tag = audit_tag(&key, &prev, a, seq);
        a.auth = Some(Auth { seq, tag });
        prev = tag;
    }
    let records = records()
        .into_iter()
        .map(|(mut r, seq)| {
            r.auth = Some(Auth {
                seq,
                tag: record_tag(&key, &r, seq),
            });
            r
        })
        .collect();
    (entries, records)
}

/// Writes `records` and `audit` through the real file store; returns the file's text.
fn write_store(dir: &std::path::Path, records: Vec<KekRecord>, audit: Vec<AuditRecord>) -> String {
    let path = dir.join("keys.json");
    let store = FileKeyStore::open(&path).unwrap();
    leakless::store::KeyStore::apply(
        &store,
        StoreChange {
            inserts: records,
            updates: vec![],
            audit,
        },
    )
    .unwrap();
    std::fs::read_to_string(&path).unwrap()
}

// --- An independent encoding of the document's byte strings (not the library's code). ---

fn str8(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

fn bytes32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap().to_be_bytes());
    out.extend_from_slice(b);
}

fn opt_i64(out: &mut Vec<u8>, t: Option<i64>) {
    match t {
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.to_be_bytes());
        }
        None => out.push(0),
    }
}

fn state(out: &mut Vec<u8>, s: KekState) {
    str8(out, s.name());
    opt_i64(out, s.grace_until().map(|t| t.0));
}

fn record_input(r: &KekRecord, seq: u64) -> Vec<u8> {
    let mut out = b"leakless.key-record.v1".to_vec();
    out.extend_from_slice(&seq.to_be_bytes());
    str8(&mut out, r.scope.as_str());
    out.extend_from_slice(&r.version.get().to_be_bytes());
    state(&mut out, r.state);
    opt_i64(&mut out, r.deactivated_at.map(|t| t.0));
    out.extend_from_slice(&r.recheck_secs.to_be_bytes());
    out.extend_from_slice(&r.created_at.0.to_be_bytes());
    out.extend_from_slice(&r.updated_at.0.to_be_bytes());
    match &r.wrapped {
        Some(w) => {
            out.push(1);
            bytes32(&mut out, w.root_key_id.as_bytes());
            bytes32(&mut out, &w.ciphertext);
        }
        None => out.push(0),
    }
    out
}

fn audit_input(prev: &[u8; 32], a: &AuditRecord, seq: u64) -> Vec<u8> {
    let mut out = b"leakless.key-audit.v1".to_vec();
    out.extend_from_slice(prev);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&a.at.0.to_be_bytes());
    bytes32(&mut out, a.actor.as_bytes());
    bytes32(&mut out, a.reason.as_bytes());
    str8(&mut out, a.action.name());
    str8(&mut out, a.scope.as_str());
    out.extend_from_slice(&a.version.get().to_be_bytes());
    match a.from {
        Some(s) => {
            out.push(1);
            state(&mut out, s);
        }
        None => out.push(0),
    }
    state(&mut out, a.to);
    out
}

fn wrap_aad(scope_name: &str, version: u32, id: &str) -> Vec<u8> {
    let mut aad = b"leakless.local-kms.kek-wrap.v1".to_vec();
    str8(&mut aad, scope_name);
    aad.extend_from_slice(&version.to_be_bytes());
    str8(&mut aad, id);
    aad
}

fn mac_key() -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(None, &kek_bytes(INTEGRITY_SCOPE, 1));
    let mut key = [0u8; 32];
    hk.expand(b"leakless key-store authentication v1", &mut key)
        .unwrap();
    key
}

fn hmac(key: &[u8; 32], input: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(input);
    mac.finalize().into_bytes().into()
}

// --- The document's blocks. ---

fn root_key_id() -> String {
    LocalKms::from_root_key(root_key()).root_key_id().to_owned()
}

fn generated_vectors() -> String {
    let id = root_key_id();
    let (entries, recs) = authenticated();
    let wraps: Vec<Value> = [(INTEGRITY_SCOPE, 1u32), ("patients", 2), ("patients", 3)]
        .iter()
        .map(|&(s, n)| {
            let aad = wrap_aad(s, n, &id);
            let wrapped = wrap(s, n);
            assert_eq!(wrapped.root_key_id, id);
            // The document's associated data is the one the library bound the wrap to.
            let opened = XChaCha20Poly1305::new(root_key().expose_secret().into())
                .decrypt(
                    XNonce::from_slice(&wrapped.ciphertext[..24]),
                    Payload {
                        msg: &wrapped.ciphertext[24..],
                        aad: &aad,
                    },
                )
                .expect("the documented associated data opens the library's wrap");
            assert_eq!(opened, kek_bytes(s, n));
            json!({
                "key_scope": s,
                "kek_version": n,
                "kek_hex": hex::encode(kek_bytes(s, n)),
                "nonce_hex": hex::encode(nonce(s, n)),
                "aad_hex": hex::encode(&aad),
                "wrapped_kek_hex": hex::encode(&wrapped.ciphertext),
            })
        })
        .collect();
    let mac_key = mac_key();
    let record_tags: Vec<Value> = recs
        .iter()
        .map(|r| {
            let auth = r.auth.unwrap();
            let input = record_input(r, auth.seq);
            // The document's tag input and HMAC key give the library's tag.
            assert_eq!(hmac(&mac_key, &input), auth.tag, "{r:?}");
            json!({
                "key_scope": r.scope.as_str(),
                "kek_version": r.version.get(),
                "seq": auth.seq,
                "tag_input_hex": hex::encode(&input),
                "tag_hex": hex::encode(auth.tag),
            })
        })
        .collect();
    let mut prev = [0u8; 32];
    let audit_tags: Vec<Value> = entries
        .iter()
        .map(|a| {
            let auth = a.auth.unwrap();
            let input = audit_input(&prev, a, auth.seq);
            assert_eq!(hmac(&mac_key, &input), auth.tag, "{a:?}");
            let v = json!({
                "seq": auth.seq,
                "prev_hex": hex::encode(prev),
                "tag_input_hex": hex::encode(&input),
                "tag_hex": hex::encode(auth.tag),
            });
            prev = auth.tag;
            v
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&json!({
        "backend": "local",
        "root_key_hex": hex::encode(root_key().expose_secret()),
        "root_key_id": id,
        "integrity_kek_hex": hex::encode(kek_bytes(INTEGRITY_SCOPE, 1)),
        "mac_key_hex": hex::encode(mac_key),
        "kek_wraps": wraps,
        "record_tags": record_tags,
        "audit_tags": audit_tags,
    }))
    .unwrap();
    text.push('\n');
    text
}

fn generated_file() -> String {
    let dir = tempfile::tempdir().unwrap();
    let (entries, recs) = authenticated();
    let mut text = write_store(dir.path(), recs, entries);
    text.push('\n');
    text
}

fn block_range(doc: &str, (begin, end): (&str, &str)) -> std::ops::Range<usize> {
    let start = doc.find(begin).expect("begin marker in the document") + begin.len();
    let stop = doc[start..].find(end).expect("end marker in the document") + start;
    start..stop
}

fn block<'a>(doc: &'a str, markers: (&str, &str)) -> &'a str {
    &doc[block_range(doc, markers)]
}

#[test]
fn document_vectors_are_reproduced_exactly() {
    let (vectors, file) = (generated_vectors(), generated_file());
    if std::env::var_os("LEAKLESS_WRITE_VECTORS").is_some() {
        let mut doc = std::fs::read_to_string(DOC_PATH).unwrap();
        doc.replace_range(block_range(&doc, VECTORS), &vectors);
        doc.replace_range(block_range(&doc, FILE), &file);
        std::fs::write(DOC_PATH, doc).unwrap();
        return;
    }
    assert_eq!(
        block(DOC, VECTORS),
        vectors,
        "docs/key-store-format.md's vectors differ from what the code produces"
    );
    assert_eq!(
        block(DOC, FILE),
        file,
        "docs/key-store-format.md's example key store differs from what FileKeyStore writes"
    );
}

fn doc_vectors() -> Value {
    serde_json::from_str(block(DOC, VECTORS)).unwrap()
}

fn doc_root() -> RootKey {
    RootKey::try_from_slice(&hex::decode(doc_vectors()["root_key_hex"].as_str().unwrap()).unwrap())
        .unwrap()
}

fn ring_over(dir: &std::path::Path, file_text: &str) -> KeyRing {
    let path = dir.join("keys.json");
    std::fs::write(&path, file_text).unwrap();
    let store = FileKeyStore::open(&path).unwrap();
    KeyRing::builder(
        Arc::new(LocalKms::from_root_key(doc_root())),
        Arc::new(store),
    )
    .build()
}

#[test]
fn document_wraps_unwrap_with_the_local_backend_and_nothing_else() {
    let kms = LocalKms::from_root_key(doc_root());
    let vectors = doc_vectors();
    assert_eq!(kms.root_key_id(), vectors["root_key_id"].as_str().unwrap());
    let wraps = vectors["kek_wraps"].as_array().unwrap();
    assert_eq!(wraps.len(), 3);
    for w in wraps {
        let s = scope(w["key_scope"].as_str().unwrap());
        let n = v(u32::try_from(w["kek_version"].as_u64().unwrap()).unwrap());
        let wrapped = WrappedKek {
            root_key_id: kms.root_key_id().to_owned(),
            ciphertext: hex::decode(w["wrapped_kek_hex"].as_str().unwrap()).unwrap(),
        };
        assert_eq!(wrapped.ciphertext.len(), 24 + 32 + 16);
        let binding = KekBinding {
            scope: &s,
            version: n,
        };
        let kek = kms.unwrap_kek(&wrapped, &binding).unwrap();
        assert_eq!(
            hex::encode(kek.expose_secret()),
            w["kek_hex"].as_str().unwrap()
        );
        // Another version, another scope, another root key id, any flipped byte: refused.
        let other = scope("other");
        for b in [
            KekBinding {
                scope: &s,
                version: n.next().unwrap(),
            },
            KekBinding {
                scope: &other,
                version: n,
            },
        ] {
            assert!(kms.unwrap_kek(&wrapped, &b).is_err());
        }
        let mut foreign = wrapped.clone();
        foreign.root_key_id = "local:0000000000000000".into();
        assert!(kms.unwrap_kek(&foreign, &binding).is_err());
        for i in 0..wrapped.ciphertext.len() {
            let mut bad = wrapped.clone();
            bad.ciphertext[i] ^= 0x01;
            assert!(kms.unwrap_kek(&bad, &binding).is_err(), "byte {i}");
        }
    }
}

#[test]
fn document_store_verifies_with_the_key_ring() {
    let dir = tempfile::tempdir().unwrap();
    let ring = ring_over(dir.path(), block(DOC, FILE));
    let report = ring.verify_store().unwrap();
    assert_eq!(report.audit_entries, 8);
    assert_eq!(report.records, 4);
    assert_eq!(report.legacy_audit_entries, 0);
}

/// Edits one copy of the example store file.
fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let mut doc: Value = serde_json::from_str(block(DOC, FILE)).unwrap();
    edit(&mut doc);
    serde_json::to_string_pretty(&doc).unwrap()
}

fn find_record<'a>(doc: &'a mut Value, scope_name: &str, version: u64) -> &'a mut Value {
    doc["records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["scope"] == scope_name && r["version"] == version)
        .unwrap()
}

#[test]
fn tampered_copies_of_the_document_store_are_refused() {
    // An older copy of patients v2: active, as audit entry #3 left it, correctly tagged then.
    let (_, recs) = authenticated();
    let mut old_v2 = recs[2].clone();
    old_v2.state = KekState::Active;
    old_v2.updated_at = UnixTime(T1);
    old_v2.deactivated_at = None;
    let old_tag = hex::encode(record_tag(&integrity_kek(), &old_v2, 3));

    #[allow(clippy::type_complexity, reason = "a table of named edits")]
    let cases: Vec<(&str, Box<dyn FnOnce(&mut Value)>)> = vec![
        (
            "grace deadline moved",
            Box::new(|d| {
                find_record(d, "patients", 2)["grace_until"] = json!(T4 + 700 * DAY);
            }),
        ),
        (
            "cache window shortened",
            Box::new(|d| {
                find_record(d, "patients", 3)["recheck_secs"] = json!(1);
            }),
        ),
        (
            "deactivation time removed",
            Box::new(|d| {
                find_record(d, "patients", 2)
                    .as_object_mut()
                    .unwrap()
                    .remove("deactivated_at");
            }),
        ),
        (
            "destroyed version revived as retired",
            Box::new(|d| {
                find_record(d, "patients", 1)["state"] = json!("retired");
            }),
        ),
        (
            "record replayed from an older copy",
            Box::new(move |d| {
                let r = find_record(d, "patients", 2);
                r["state"] = json!("active");
                r["grace_until"] = Value::Null;
                r["updated_at"] = json!(T1);
                r.as_object_mut().unwrap().remove("deactivated_at");
                r["seq"] = json!(3);
                r["tag_hex"] = json!(old_tag);
            }),
        ),
        (
            "record deleted",
            Box::new(|d| {
                d["records"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|r| !(r["scope"] == "patients" && r["version"] == 1));
            }),
        ),
        (
            "record tag removed",
            Box::new(|d| {
                let r = find_record(d, "patients", 3).as_object_mut().unwrap();
                r.remove("seq");
                r.remove("tag_hex");
            }),
        ),
        (
            "audit entry deleted",
            Box::new(|d| {
                d["audit"].as_array_mut().unwrap().remove(4);
            }),
        ),
        (
            "audit entry edited",
            Box::new(|d| {
                d["audit"][1]["actor"] = json!("dba:mallory");
            }),
        ),
        (
            "last audit entry cut off",
            Box::new(|d| {
                d["audit"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "audit entries swapped",
            Box::new(|d| {
                let log = d["audit"].as_array_mut().unwrap();
                let (a, b) = (log[2]["seq"].clone(), log[3]["seq"].clone());
                log[2]["seq"] = b;
                log[3]["seq"] = a;
            }),
        ),
    ];
    for (what, edit) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, edited(edit)).unwrap();
        // An edit that breaks a record invariant the file store checks on every read (a
        // destroyed version with its material back) is refused before authentication is
        // even consulted; every other edit reaches the key ring, which refuses it.
        let store = match FileKeyStore::open(&path) {
            Ok(store) => store,
            Err(Error::KeyStore { detail, .. }) if detail.contains("record invariant") => {
                continue;
            }
            Err(other) => panic!("{what}: expected the store to open or refuse, got {other:?}"),
        };
        let ring = KeyRing::builder(
            Arc::new(LocalKms::from_root_key(doc_root())),
            Arc::new(store),
        )
        .build();
        match ring.verify_store() {
            Err(Error::KeyStoreTampered { .. }) => {}
            other => panic!("{what}: expected KeyStoreTampered, got {other:?}"),
        }
    }
}

#[test]
fn a_whole_store_rolled_back_to_an_older_consistent_copy_still_verifies() {
    // The documented limit: the first two entries and the records as they stood then form a
    // consistent, authentic store; a ring that never saw the newer one cannot tell.
    let (entries, _) = authenticated();
    let key = integrity_kek();
    let mut recs = records();
    recs.truncate(2);
    let older: Vec<KekRecord> = recs
        .into_iter()
        .map(|(mut r, _)| {
            let seq = if r.scope.as_str() == INTEGRITY_SCOPE {
                1
            } else {
                2
            };
            if r.scope.as_str() == "patients" {
                r.state = KekState::Active;
                r.wrapped = Some(wrap("patients", 1));
                r.updated_at = UnixTime(T0);
                r.deactivated_at = None;
            }
            r.auth = Some(Auth {
                seq,
                tag: record_tag(&key, &r, seq),
            });
            r
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let text = write_store(dir.path(), older, entries[..2].to_vec());
    let other = tempfile::tempdir().unwrap();
    let report = ring_over(other.path(), &text).verify_store().unwrap();
    assert_eq!((report.audit_entries, report.records), (2, 2));
}
