//! Known-answer tests: the test vectors published in `docs/envelope-format.md`.
//!
//! The vectors live in the document (a JSON block between `<!-- vectors:begin -->` and
//! `<!-- vectors:end -->`), so the document and this test cannot drift apart: the test
//! regenerates every vector from its inputs and requires the same JSON, byte for byte, then
//! opens every expected envelope, and flips every byte of every envelope requiring a typed
//! error. To rewrite the block after a deliberate format change, run
//! `LEAKLESS_WRITE_VECTORS=1 cargo test -p leakless --lib envelope::kat`.

use serde_json::{Value, json};

use super::*;
use crate::context::RowId;
use crate::padding::PaddingPolicy;

#[path = "../../tests/common/test_bytes.rs"]
mod test_bytes;
use test_bytes::derive;

const DOC: &str = include_str!("../../../docs/envelope-format.md");
const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/envelope-format.md");
const BEGIN: &str = "<!-- vectors:begin -->\n```json\n";
const END: &str = "```\n<!-- vectors:end -->";

struct Spec {
    name: &'static str,
    algorithm: Algorithm,
    padding: PaddingPolicy,
    padding_name: &'static str,
    scope: &'static str,
    kek_version: u32,
    table: &'static str,
    column: &'static str,
    row: RowId<'static>,
    schema_version: u32,
    plaintext: Vec<u8>,
}

fn transcript(len: usize) -> Vec<u8> {
    let line = "Patient reports chest pain radiating to the left arm since Tuesday; \
                no fever; pacemaker check scheduled. ";
    line.bytes().cycle().take(len).collect()
}

fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "xchacha20poly1305-address",
            algorithm: Algorithm::XChaCha20Poly1305,
            padding: PaddingPolicy::default(),
            padding_name: "power_of_two(min=32,cap=4096)",
            scope: "patients",
            kek_version: 1,
            table: "patients",
            column: "address",
            row: RowId::Uuid([
                0x01, 0x93, 0x6c, 0x1e, 0x7a, 0x4b, 0x7c, 0x2d, 0x8e, 0x5f, 0x10, 0x21, 0x32, 0x43,
                0x54, 0x65,
            ]),
            schema_version: 1,
            plaintext: b"221B Baker Street, London NW1 6XE".to_vec(),
        },
        Spec {
            name: "aes256gcm-gps",
            algorithm: Algorithm::Aes256Gcm,
            padding: PaddingPolicy::default(),
            padding_name: "power_of_two(min=32,cap=4096)",
            scope: "tenant:acme",
            kek_version: 7,
            table: "readings",
            column: "gps",
            row: RowId::Int(4_200_000_017),
            schema_version: 3,
            plaintext: [48.858_37_f64.to_be_bytes(), 2.294_481_f64.to_be_bytes()].concat(),
        },
        Spec {
            name: "xchacha20poly1305-empty",
            algorithm: Algorithm::XChaCha20Poly1305,
            padding: PaddingPolicy::default(),
            padding_name: "power_of_two(min=32,cap=4096)",
            scope: "patients",
            kek_version: 2,
            table: "patients",
            column: "notes",
            row: RowId::Text("patient-0042"),
            schema_version: 1,
            plaintext: Vec::new(),
        },
        Spec {
            name: "aes256gcm-empty-marker-only",
            algorithm: Algorithm::Aes256Gcm,
            padding: PaddingPolicy::MarkerOnly,
            padding_name: "marker_only",
            scope: "p",
            kek_version: 1,
            table: "t",
            column: "c",
            row: RowId::Bytes(&[0xde, 0xad, 0xbe, 0xef]),
            schema_version: 0,
            plaintext: Vec::new(),
        },
        Spec {
            name: "xchacha20poly1305-long-transcript",
            algorithm: Algorithm::XChaCha20Poly1305,
            padding: PaddingPolicy::default(),
            padding_name: "power_of_two(min=32,cap=4096)",
            scope: "transcripts",
            kek_version: 3,
            table: "visits",
            column: "transcript",
            row: RowId::Int(-5),
            schema_version: 2,
            plaintext: transcript(9000),
        },
        Spec {
            name: "aes256gcm-long-transcript-multiple16",
            algorithm: Algorithm::Aes256Gcm,
            padding: PaddingPolicy::Multiple { block: 16 },
            padding_name: "multiple(block=16)",
            scope: "transcripts",
            kek_version: 4,
            table: "visits",
            column: "transcript",
            row: RowId::Uuid([0xff; 16]),
            schema_version: 2,
            plaintext: transcript(5000),
        },
    ]
}

fn row_json(row: &RowId<'_>) -> Value {
    let (kind, value) = match row {
        RowId::Uuid(b) => ("uuid", hex::encode(b)),
        RowId::Int(i) => ("int", hex::encode(i.to_be_bytes())),
        RowId::Text(s) => ("text", hex::encode(s.as_bytes())),
        RowId::Bytes(b) => ("bytes", hex::encode(b)),
    };
    json!({ "kind": kind, "kind_byte": format!("{:02x}", row.kind_byte()), "value_hex": value })
}

fn build(spec: &Spec) -> (Value, Vec<u8>, Kek) {
    let kek_bytes = derive(&format!("{} kek", spec.name), 32);
    let kek = Kek::try_from_slice(&kek_bytes).unwrap();
    let dek_bytes = derive(&format!("{} dek", spec.name), 32);
    let wrap_nonce: [u8; 24] = derive(&format!("{} wrap nonce", spec.name), 24)
        .try_into()
        .unwrap();
    let data_nonce_full: [u8; 24] = derive(&format!("{} data nonce", spec.name), 24)
        .try_into()
        .unwrap();
    let nonce_len = spec.algorithm.nonce_len();
    let rnd = SealRandomness {
        dek: Dek::try_from_slice(&dek_bytes).unwrap(),
        wrap_nonce,
        data_nonce: data_nonce_full,
    };
    let scope = KeyScope::new(spec.scope).unwrap();
    let ctx = FieldContext::new(spec.table, spec.column, spec.row, spec.schema_version);
    let params = SealParams {
        kek: &KekKeys::new(kek.clone()),
        scope: &scope,
        kek_version: KekVersion::new(spec.kek_version).unwrap(),
        ctx: &ctx,
        algorithm: spec.algorithm,
        padding: spec.padding,
    };
    let envelope = seal_with_randomness(&params, &spec.plaintext, &rnd).unwrap();

    let context = ctx.encode().unwrap();
    let key_prefix_len = HEADER_LEN + 1 + spec.scope.len() + 4;
    let wrap_aad = [&envelope[..key_prefix_len], &context[..]].concat();
    let data_aad = [&envelope[..HEADER_LEN], &context[..]].concat();
    let mut padded = spec.plaintext.clone();
    let padded_len = spec.padding.padded_len(padded.len()).unwrap();
    padding::pad(&mut padded, padded_len);
    let wrapped_dek_start = key_prefix_len + WRAP_NONCE_LEN;

    let v = json!({
        "name": spec.name,
        "algorithm": spec.algorithm.name(),
        "padding_policy": spec.padding_name,
        "kek_hex": hex::encode(&kek_bytes),
        "key_scope": spec.scope,
        "kek_version": spec.kek_version,
        "context": {
            "table": spec.table,
            "column": spec.column,
            "row": row_json(&spec.row),
            "schema_version": spec.schema_version,
        },
        "dek_hex": hex::encode(&dek_bytes),
        "wrap_nonce_hex": hex::encode(wrap_nonce),
        "data_nonce_hex": hex::encode(&data_nonce_full[..nonce_len]),
        "plaintext_len": spec.plaintext.len(),
        "plaintext_hex": hex::encode(&spec.plaintext),
        "intermediate": {
            "context_encoding_hex": hex::encode(&context),
            "dek_wrap_aad_hex": hex::encode(&wrap_aad),
            "wrapped_dek_hex": hex::encode(&envelope[wrapped_dek_start..wrapped_dek_start + WRAPPED_DEK_LEN]),
            "data_aad_hex": hex::encode(&data_aad),
            "padded_plaintext_len": padded_len,
            "padded_plaintext_hex": hex::encode(&padded),
        },
        "envelope_len": envelope.len(),
        "envelope_hex": hex::encode(&envelope),
    });
    (v, envelope, kek)
}

fn generated_json() -> String {
    let vectors: Vec<Value> = specs().iter().map(|s| build(s).0).collect();
    let mut text =
        serde_json::to_string_pretty(&json!({ "format_version": 1, "vectors": vectors })).unwrap();
    text.push('\n');
    text
}

fn doc_json(doc: &str) -> &str {
    let start = doc
        .find(BEGIN)
        .expect("vectors:begin marker in the document")
        + BEGIN.len();
    let end = doc[start..]
        .find(END)
        .expect("vectors:end marker in the document")
        + start;
    &doc[start..end]
}

#[test]
fn document_vectors_are_reproduced_exactly() {
    let generated = generated_json();
    if std::env::var_os("LEAKLESS_WRITE_VECTORS").is_some() {
        let doc = std::fs::read_to_string(DOC_PATH).unwrap();
        let old = doc_json(&doc).to_owned();
        let new_doc = doc.replacen(&old, &generated, 1);
        std::fs::write(DOC_PATH, new_doc).unwrap();
        return;
    }
    assert_eq!(
        doc_json(DOC),
        generated,
        "docs/envelope-format.md's vectors differ from what the code produces"
    );
}

fn row_from_json<'a>(v: &Value, storage: &'a mut Vec<u8>, text: &'a mut String) -> RowId<'a> {
    let value = hex::decode(v["value_hex"].as_str().unwrap()).unwrap();
    match v["kind"].as_str().unwrap() {
        "uuid" => RowId::Uuid(value.try_into().unwrap()),
        "int" => RowId::Int(i64::from_be_bytes(value.try_into().unwrap())),
        "text" => {
            *text = String::from_utf8(value).unwrap();
            RowId::Text(text)
        }
        _ => {
            *storage = value;
            RowId::Bytes(storage)
        }
    }
}

#[test]
fn document_vectors_open_and_every_byte_flip_fails() {
    let parsed: Value = serde_json::from_str(doc_json(DOC)).unwrap();
    let vectors = parsed["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), specs().len());
    let mut algorithms = std::collections::HashSet::new();
    let (mut saw_empty, mut saw_long) = (false, false);
    for v in vectors {
        let kek = KekKeys::new(
            Kek::try_from_slice(&hex::decode(v["kek_hex"].as_str().unwrap()).unwrap()).unwrap(),
        );
        let c = &v["context"];
        let (mut storage, mut text) = (Vec::new(), String::new());
        let row = row_from_json(&c["row"], &mut storage, &mut text);
        let ctx = FieldContext::new(
            c["table"].as_str().unwrap(),
            c["column"].as_str().unwrap(),
            row,
            u32::try_from(c["schema_version"].as_u64().unwrap()).unwrap(),
        );
        let envelope = hex::decode(v["envelope_hex"].as_str().unwrap()).unwrap();
        let plaintext = hex::decode(v["plaintext_hex"].as_str().unwrap()).unwrap();
        algorithms.insert(v["algorithm"].as_str().unwrap().to_owned());
        saw_empty |= plaintext.is_empty();
        saw_long |= plaintext.len() > 4096;

        let p = parse(&envelope).unwrap();
        assert_eq!(
            open(&kek, &p, &ctx, ctx.encode().unwrap())
                .unwrap()
                .expose_secret(),
            &plaintext[..]
        );
        let info = inspect(&envelope).unwrap();
        assert_eq!(info.scope.as_str(), v["key_scope"].as_str().unwrap());
        assert_eq!(
            u64::from(info.kek_version.get()),
            v["kek_version"].as_u64().unwrap()
        );

        let parse_and_open = |bytes: &[u8]| {
            parse(bytes)
                .map_err(|e| e.at(ctx.location()))
                .and_then(|p| open(&kek, &p, &ctx, ctx.encode().unwrap()))
        };
        // Tamper: flip each byte (xor 0x01, and for the header also 0xff) and require an error.
        for i in 0..envelope.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = envelope.clone();
                bad[i] ^= mask;
                assert!(
                    parse_and_open(&bad).is_err(),
                    "{}: flipping byte {i} with {mask:#04x} still opened",
                    v["name"]
                );
            }
        }
        // Truncation at every length fails too.
        for len in 0..envelope.len() {
            assert!(
                parse_and_open(&envelope[..len]).is_err(),
                "{}: truncation to {len} bytes still opened",
                v["name"]
            );
        }
    }
    assert!(algorithms.contains("xchacha20poly1305") && algorithms.contains("aes256gcm"));
    assert!(saw_empty && saw_long);
}
