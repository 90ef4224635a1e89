//! The two AEAD engines compute the same functions: for random keys, nonces, associated data
//! and messages of every size class the envelope uses, AWS-LC and RustCrypto give the same
//! `ciphertext || tag` byte for byte, each opens the other's output, and each refuses it once
//! one bit is flipped. With identical AEAD outputs, the envelope (built on top, engine-agnostic)
//! is identical too; the spec's vectors check that end to end on the default engine.
#![cfg(feature = "aws-lc")]

use leakless::Algorithm;
use leakless::aead::{awslc, portable};
use proptest::prelude::*;

fn alg() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::Aes256Gcm),
        Just(Algorithm::XChaCha20Poly1305)
    ]
}

/// Message lengths: empty, around one block, around the padding buckets, and up to 70 KiB.
fn len() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..64,
        64usize..600,
        4000usize..4200,
        8100usize..8300,
        60_000usize..70_000
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn engines_agree_byte_for_byte(
        alg in alg(),
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..200),
        len in len(),
        seed in any::<u8>(),
        flip in any::<usize>(),
    ) {
        let nonce = &nonce[..alg.nonce_len()];
        let msg: Vec<u8> = (0..len).map(|i| (i.to_le_bytes()[0]).wrapping_mul(31) ^ seed).collect();
        let mut a = msg.clone();
        let tag_a = awslc::encrypt_in_place(alg, &key, nonce, &aad, &mut a).unwrap();
        let mut p = msg.clone();
        let tag_p = portable::encrypt_in_place(alg, &key, nonce, &aad, &mut p).unwrap();
        prop_assert_eq!(&a, &p);
        prop_assert_eq!(tag_a, tag_p);
        // Each opens the other's output.
        let mut x = p.clone();
        awslc::decrypt_in_place(alg, &key, nonce, &aad, &mut x, &tag_p).unwrap();
        prop_assert_eq!(&x, &msg);
        let mut y = a.clone();
        portable::decrypt_in_place(alg, &key, nonce, &aad, &mut y, &tag_a).unwrap();
        prop_assert_eq!(&y, &msg);
        // One flipped bit of ciphertext or tag: both refuse.
        let mut ct = a.clone();
        let mut tag = tag_a;
        let at = flip % (ct.len() + tag.len());
        if at < ct.len() {
            ct[at] ^= 1;
        } else {
            tag[at - ct.len()] ^= 1;
        }
        prop_assert!(awslc::decrypt_in_place(alg, &key, nonce, &aad, &mut ct.clone(), &tag).is_err());
        prop_assert!(portable::decrypt_in_place(alg, &key, nonce, &aad, &mut ct, &tag).is_err());
    }
}

/// Wrong key or nonce lengths are refused by both engines alike.
#[test]
fn both_engines_refuse_bad_lengths() {
    for alg in [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305] {
        for (key, nonce) in [(&[0u8; 16][..], &[0u8; 24][..]), (&[0u8; 32], &[0u8; 8])] {
            let nonce = &nonce[..nonce.len().min(alg.nonce_len())];
            let mut buf = [0u8; 4];
            assert!(awslc::encrypt_in_place(alg, key, nonce, b"", &mut buf).is_err());
            assert!(portable::encrypt_in_place(alg, key, nonce, b"", &mut buf).is_err());
            assert!(awslc::decrypt_in_place(alg, key, nonce, b"", &mut buf, &[0; 16]).is_err());
            assert!(portable::decrypt_in_place(alg, key, nonce, b"", &mut buf, &[0; 16]).is_err());
        }
        let mut buf = [0u8; 4];
        let nonce = vec![0u8; alg.nonce_len()];
        assert!(awslc::decrypt_in_place(alg, &[0; 32], &nonce, b"", &mut buf, &[0; 15]).is_err());
        assert!(
            portable::decrypt_in_place(alg, &[0; 32], &nonce, b"", &mut buf, &[0; 15]).is_err()
        );
    }
}
