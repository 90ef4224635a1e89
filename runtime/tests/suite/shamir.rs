//! Shamir M-of-N custody of the local root key: split/combine round trips for every subset,
//! below-threshold, corrupted, forged, foreign, mixed and duplicate shares (each a typed
//! error, none silently used), share files and their permissions, and (with the `pkcs11`
//! feature) shares kept on five SoftHSM2 custodian tokens.
#![cfg(feature = "shamir")]

use std::fs;
use std::os::unix::fs::PermissionsExt;

use leakless::kms::shamir::{self, ShamirError, Share};
use leakless::kms::{Kms, LocalKms};
use leakless::secret::RootKey;
use sha2::{Digest, Sha256};

fn key_id(root: &RootKey) -> String {
    LocalKms::from_root_key(root.clone())
        .root_key_id()
        .to_owned()
}

/// Re-parses shares from their text, as a custodian would hand them back.
fn reparse(shares: &[&Share]) -> Vec<Share> {
    shares
        .iter()
        .map(|s| Share::parse(&s.to_text(), s.origin()).unwrap())
        .collect()
}

fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![vec![]];
    }
    if n < k {
        return vec![];
    }
    let mut with: Vec<Vec<usize>> = subsets(n - 1, k - 1)
        .into_iter()
        .map(|mut s| {
            s.push(n - 1);
            s
        })
        .collect();
    with.extend(subsets(n - 1, k));
    with
}

#[test]
fn every_subset_at_or_above_the_threshold_rebuilds_the_key() {
    let root = RootKey::generate();
    let shares = shamir::split(&root, 3, 5).unwrap();
    assert_eq!(shares.len(), 5);
    let indices: Vec<u8> = shares.iter().map(Share::index).collect();
    assert_eq!(indices, [1, 2, 3, 4, 5]);
    for s in &shares {
        assert_eq!(s.key_id(), key_id(&root));
        assert_eq!((s.threshold(), s.count()), (3, 5));
        // No share is the key itself.
        assert!(!s.to_text().contains(&hex::encode(root.expose_secret())));
    }
    for k in 3..=5 {
        for subset in subsets(5, k) {
            let picked: Vec<&Share> = subset.iter().map(|&i| &shares[i]).collect();
            let rebuilt = shamir::combine(&reparse(&picked)).unwrap();
            assert_eq!(
                rebuilt.expose_secret(),
                root.expose_secret(),
                "subset {subset:?}"
            );
        }
    }
    // A rebuilt key serves as a LocalKms with the same id.
    let rebuilt = shamir::combine(&reparse(&[&shares[4], &shares[0], &shares[2]])).unwrap();
    assert_eq!(key_id(&rebuilt), key_id(&root));
}

#[test]
fn fewer_shares_than_the_threshold_is_a_clear_error() {
    let root = RootKey::generate();
    let shares = shamir::split(&root, 3, 5).unwrap();
    for subset in subsets(5, 2).into_iter().chain(subsets(5, 1)) {
        let picked: Vec<&Share> = subset.iter().map(|&i| &shares[i]).collect();
        let err = shamir::combine(&reparse(&picked)).unwrap_err();
        match err {
            ShamirError::BelowThreshold { have, need, of } => {
                assert_eq!((have, need, of), (subset.len(), 3, 5));
            }
            other => panic!("{subset:?}: {other}"),
        }
    }
    let err = shamir::combine(&[]).unwrap_err();
    assert!(matches!(err, ShamirError::BelowThreshold { have: 0, .. }));
    assert!(
        shamir::combine(&reparse(&[&shares[0], &shares[1]]))
            .unwrap_err()
            .to_string()
            .contains("needs 3 of its 5 shares")
    );
}

#[test]
fn split_parameters_are_checked() {
    let root = RootKey::generate();
    for (m, n) in [(1, 5), (0, 3), (4, 3)] {
        let err = shamir::split(&root, m, n).unwrap_err();
        assert!(
            matches!(err, ShamirError::InvalidParameters { .. }),
            "{m}-of-{n}: {err}"
        );
    }
    let all = shamir::split(&root, 255, 255).unwrap();
    assert_eq!(all.len(), 255);
    let two = shamir::split(&root, 2, 2).unwrap();
    assert_eq!(
        shamir::combine(&two).unwrap().expose_secret(),
        root.expose_secret()
    );
}

/// Replaces the value of `line_prefix` in a share's text.
fn edit_line(text: &str, line_prefix: &str, edit: impl Fn(&str) -> String) -> String {
    text.lines()
        .map(|l| {
            if let Some(v) = l.strip_prefix(line_prefix) {
                format!("{line_prefix}{}", edit(v))
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn flip_hex_digit(v: &str, at: usize) -> String {
    let mut chars: Vec<char> = v.chars().collect();
    chars[at] = if chars[at] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

#[test]
fn a_corrupted_share_is_named_never_used() {
    let root = RootKey::generate();
    let shares = shamir::split(&root, 3, 5).unwrap();
    let text = shares[1].to_text();
    // One hex digit of the value, anywhere.
    for at in [0, 31, 63] {
        let bad = edit_line(&text, "value: ", |v| flip_hex_digit(v, at));
        let err = Share::parse(&bad, "custodian-b.txt").unwrap_err();
        match &err {
            ShamirError::Corrupted { origin, index } => {
                assert_eq!((origin.as_str(), *index), ("custodian-b.txt", 2));
            }
            other => panic!("{other}"),
        }
        // The message carries neither the good nor the bad value.
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("value: "))
            .unwrap();
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(value) && !shown.contains(&value[..16]),
            "{shown}"
        );
    }
    // The index, threshold or key id changed: the share's own commitment no longer matches.
    for (prefix, edit) in [
        ("index: ", "3"),
        ("threshold: ", "4"),
        ("key-id: ", "local:0000000000000000"),
    ] {
        let bad = edit_line(&text, prefix, |_| edit.to_owned());
        let err = Share::parse(&bad, "x").unwrap_err();
        assert!(
            matches!(
                err,
                ShamirError::Corrupted { .. } | ShamirError::Malformed { .. }
            ),
            "{prefix}: {err}"
        );
    }
}

/// The commitment of a share, computed from the formula in the module docs.
fn commitment(key_id: &str, set_hex: &str, m: u8, n: u8, index: u8, value_hex: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"leakless.shamir.share-commitment.v1");
    h.update([u8::try_from(key_id.len()).unwrap()]);
    h.update(key_id.as_bytes());
    h.update(hex::decode(set_hex).unwrap());
    h.update([m, n, index]);
    h.update(hex::decode(value_hex).unwrap());
    hex::encode(h.finalize())
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap()
}

/// A forged share: its value replaced and its own commitment entry recomputed so it passes
/// its own check.
fn forge(share: &Share) -> String {
    let text = share.to_text();
    let value = flip_hex_digit(field(&text, "value"), 10);
    let own = commitment(
        field(&text, "key-id"),
        field(&text, "set"),
        share.threshold(),
        share.count(),
        share.index(),
        &value,
    );
    let forged = edit_line(&text, "value: ", |_| value.clone());
    edit_line(&forged, &format!("commitment-{}: ", share.index()), |_| {
        own.clone()
    })
}

#[test]
fn a_forged_share_is_caught_by_the_other_shares_commitments() {
    let root = RootKey::generate();
    let shares = shamir::split(&root, 3, 5).unwrap();
    let forged = Share::parse(&forge(&shares[2]), "mallory.txt").unwrap();
    let mut set = reparse(&[&shares[0], &shares[1]]);
    set.push(forged);
    let err = shamir::combine(&set).unwrap_err();
    match &err {
        ShamirError::CommitmentMismatch { origins } => {
            assert_eq!(origins, &["mallory.txt".to_owned()], "{err}");
        }
        other => panic!("{other}"),
    }
    // One commitment line of a share altered (not its own): that share is the odd one out.
    let text = edit_line(&shares[3].to_text(), "commitment-1: ", |v| {
        flip_hex_digit(v, 5)
    });
    let odd = Share::parse(&text, "dave.txt").unwrap();
    let mut set = reparse(&[&shares[0], &shares[1]]);
    set.push(odd);
    assert!(matches!(
        shamir::combine(&set),
        Err(ShamirError::CommitmentMismatch { origins }) if origins == ["dave.txt"]
    ));
}

#[test]
fn a_consistently_forged_set_is_caught_by_the_key_id_after_interpolation() {
    let root = RootKey::generate();
    let shares = shamir::split(&root, 3, 5).unwrap();
    // The forger holds all three presented shares and rewrites share 3 and every list.
    let forged3 = forge(&shares[2]);
    let new_c3 = field(&forged3, "commitment-3").to_owned();
    let mut set = Vec::new();
    for (i, s) in shares.iter().take(2).enumerate() {
        let t = edit_line(&s.to_text(), "commitment-3: ", |_| new_c3.clone());
        set.push(Share::parse(&t, &format!("share {}", i + 1)).unwrap());
    }
    set.push(Share::parse(&forged3, "share 3").unwrap());
    let err = shamir::combine(&set).unwrap_err();
    match &err {
        ShamirError::WrongKey { expected, rebuilt } => {
            assert_eq!(expected, &key_id(&root));
            assert_ne!(rebuilt, expected);
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("nothing was unsealed"));
}

#[test]
fn foreign_mixed_and_duplicate_shares_are_refused() {
    let root = RootKey::generate();
    let shares = shamir::split(&root, 3, 5).unwrap();
    let other_key = shamir::split(&RootKey::generate(), 3, 5).unwrap();
    let other_split = shamir::split(&root, 3, 5).unwrap();
    let other_shape = shamir::split(&root, 2, 5).unwrap();

    let mut set = reparse(&[&shares[0], &shares[1]]);
    set.extend(reparse(&[&other_key[2]]));
    assert!(matches!(
        shamir::combine(&set),
        Err(ShamirError::ForeignShare { .. })
    ));

    let mut set = reparse(&[&shares[0], &shares[1]]);
    set.extend(reparse(&[&other_split[2]]));
    assert!(matches!(
        shamir::combine(&set),
        Err(ShamirError::MixedSets { what: "set id", .. })
    ));

    let mut set = reparse(&[&shares[0], &shares[1]]);
    set.extend(reparse(&[&other_shape[2]]));
    assert!(matches!(
        shamir::combine(&set),
        Err(ShamirError::MixedSets { .. })
    ));

    let set = reparse(&[&shares[0], &shares[1], &shares[1]]);
    assert!(matches!(
        shamir::combine(&set),
        Err(ShamirError::DuplicateIndex { index: 2, .. })
    ));
}

#[test]
fn malformed_text_is_refused_without_echoing_it() {
    let root = RootKey::generate();
    let shares = shamir::split(&root, 2, 3).unwrap();
    let good = shares[0].to_text();
    let secret_line = format!("value: {}", field(&good, "value"));
    let cases = [
        String::new(),
        "hello\n".to_owned(),
        good.replace("leakless-root-key-share v1", "leakless-root-key-share v2"),
        good.replace("threshold: 2", "threshold: two"),
        good.replace("index: 1", "index: 0"),
        good.replace("index: 1", "index: 9"),
        good.lines().take(7).collect::<Vec<_>>().join("\n"),
        format!("{}\nextra: 1\n", good.as_str()),
        good.replace(&secret_line, &secret_line[..40]),
    ];
    for (i, text) in cases.iter().enumerate() {
        let err = Share::parse(text, "input").unwrap_err();
        assert!(
            matches!(
                err,
                ShamirError::Malformed { .. } | ShamirError::Corrupted { .. }
            ),
            "case {i}: {err}"
        );
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&secret_line[7..30]), "case {i}: {shown}");
    }
    assert!(
        Share::parse(&cases[2], "input")
            .unwrap_err()
            .to_string()
            .contains("\"v2\"")
    );
    // CRLF line ends (a share mailed through Windows) are fine.
    let crlf = good.replace('\n', "\r\n");
    Share::parse(&crlf, "input").unwrap();
    // Debug never shows the value.
    let shown = format!("{:?}", shares[0]);
    assert!(!shown.contains(&secret_line[7..30]), "{shown}");
    assert!(shown.contains("index: 1"), "{shown}");
}

#[test]
fn share_files_are_private_never_overwritten_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shares");
    let root = RootKey::generate();
    let shares = shamir::split(&root, 3, 5).unwrap();
    let paths = shamir::write_shares(&out, &shares).unwrap();
    assert_eq!(paths.len(), 5);
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for p in &paths {
        assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Writing again refuses to overwrite.
    assert!(matches!(
        shamir::write_shares(&out, &shares),
        Err(ShamirError::Io { .. })
    ));
    let read: Vec<Share> = [&paths[4], &paths[1], &paths[3]]
        .iter()
        .map(|p| Share::read_file(p).unwrap())
        .collect();
    assert_eq!(read[0].origin(), paths[4].display().to_string());
    assert_eq!(
        shamir::combine(&read).unwrap().expose_secret(),
        root.expose_secret()
    );
    // A loose share file is refused.
    fs::set_permissions(&paths[0], fs::Permissions::from_mode(0o644)).unwrap();
    match Share::read_file(&paths[0]).unwrap_err() {
        ShamirError::Io { path, problem } => {
            assert_eq!(path, paths[0]);
            assert!(problem.contains("chmod 600"), "{problem}");
        }
        other => panic!("expected ShamirError::Io, got {other:?}"),
    }
}

/// Shares kept on PKCS#11 tokens: one per custodian token (SoftHSM2's `custodian-1..5`,
/// started by `scripts/services/softhsm`).
#[cfg(feature = "pkcs11")]
mod on_tokens {
    use leakless::kms::shamir::{self, Share};
    use leakless::kms::{PinSource, Pkcs11Token};
    use leakless::secret::RootKey;

    use crate::support::peers;

    fn custodians() -> Vec<Pkcs11Token> {
        let module = peers::pkcs11::module();
        peers::pkcs11::custodians()
            .into_iter()
            .map(|(label, pin)| Pkcs11Token::open(&module, &label, &PinSource::File(pin)).unwrap())
            .collect()
    }

    #[test]
    fn one_share_per_custodian_token_and_any_three_unseal() {
        let tokens = custodians();
        assert_eq!(tokens.len(), 5, "the service starts five custodian tokens");
        let root = RootKey::generate();
        let shares = shamir::split(&root, 3, 5).unwrap();
        let set = shares[0].set_id();
        for (share, token) in shares.iter().zip(&tokens) {
            let label = share.store_on_token(token).unwrap();
            assert!(label.starts_with("leakless-share:"));
            // Storing the same share again is refused, not overwritten.
            assert!(share.store_on_token(token).is_err());
        }
        // Custodians 2, 4 and 5 unseal.
        let mut picked = Vec::new();
        for token in [&tokens[1], &tokens[3], &tokens[4]] {
            let mine: Vec<Share> = Share::load_from_token(token)
                .unwrap()
                .into_iter()
                .filter(|s| s.set_id() == set)
                .collect();
            assert_eq!(mine.len(), 1, "one share of this split per token");
            assert!(mine[0].origin().contains(token.label()));
            picked.extend(mine);
        }
        let rebuilt = shamir::combine(&picked).unwrap();
        assert_eq!(rebuilt.expose_secret(), root.expose_secret());
        // Two tokens are not enough.
        picked.truncate(2);
        assert!(matches!(
            shamir::combine(&picked),
            Err(shamir::ShamirError::BelowThreshold {
                have: 2,
                need: 3,
                of: 5
            })
        ));
        // Clean up: the data objects go away.
        for (share, token) in shares.iter().zip(&tokens) {
            assert!(token.delete_data(&share.token_label()).unwrap());
            assert!(token.get_data(&share.token_label()).unwrap().is_none());
        }
    }
}

#[test]
fn root_key_files_are_read_and_restored_with_the_local_backend_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    let kms = LocalKms::generate_key_file(&path).unwrap();
    let root = shamir::read_root_key_file(&path).unwrap();
    assert_eq!(key_id(&root), kms.root_key_id());
    // Split, combine, restore to a new file: the local backend reads the same key from it.
    let shares = shamir::split(&root, 2, 3).unwrap();
    let rebuilt = shamir::combine(&reparse(&[&shares[2], &shares[0]])).unwrap();
    let restored = dir.path().join("restored.key");
    shamir::write_root_key_file(&restored, &rebuilt).unwrap();
    assert_eq!(
        fs::metadata(&restored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        LocalKms::from_key_file(&restored).unwrap().root_key_id(),
        kms.root_key_id()
    );
    assert!(shamir::write_root_key_file(&restored, &rebuilt).is_err());
    // A loose key file is refused, as by LocalKms.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        shamir::read_root_key_file(&path),
        Err(leakless::Error::KeyFile { .. })
    ));
}
