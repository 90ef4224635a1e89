//! Tests of the `medtech` example, hop by hop: device → gateway (ChaCha20-Poly1305 with
//! counters), the hybrid ML-KEM-768 + X25519 handshake, the gateway → server frames
//! (AES-256-GCM with sequence numbers), sealed storage at the hospital, and the binary end to
//! end.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use leakless_examples::medtech::channel::{
    self, ChannelError, Frame, FrameReceiver, FrameSender, ServerHandshake, SessionKeys,
};
use leakless_examples::medtech::device::{DeviceError, DeviceKey, Gateway, Pacemaker};
use leakless_examples::medtech::hospital::{HospitalError, HospitalServer};
use leakless_examples::medtech::{Reading, SUMMARY_OK};

fn reading(device: &str, n: u64) -> Reading {
    Reading {
        device_id: device.to_owned(),
        timestamp_ms: 1_700_000_000_000 + n * 60_000,
        heart_rate_bpm: 211,
        battery_pct: 97,
    }
}

fn enrolled(ids: &[&str]) -> (Gateway, Vec<Pacemaker>) {
    let mut gw = Gateway::new();
    let devices = ids
        .iter()
        .map(|id| {
            let key = DeviceKey::generate();
            gw.register(*id, key.clone());
            Pacemaker::new(*id, key)
        })
        .collect();
    (gw, devices)
}

fn handshake() -> (SessionKeys, SessionKeys) {
    let server = ServerHandshake::new();
    let (finish, gw_keys) = channel::gateway_connect(server.hello()).unwrap();
    let server_keys = server.finish(&finish).unwrap();
    (gw_keys, server_keys)
}

/// The error is a typed `std::error::Error` whose message names what it should and shows no
/// reading value (the test readings use 211 bpm and 97 %).
fn check_message(e: &dyn std::error::Error, must_contain: &[&str]) {
    let text = e.to_string();
    for s in must_contain {
        assert!(text.contains(s), "{s:?} missing from {text:?}");
    }
    for s in ["211", "97", "1700000"] {
        assert!(!text.contains(s), "{s:?} leaked in {text:?}");
    }
}

// ----- hop 1: device -> gateway ---------------------------------------------------------------

#[test]
fn device_readings_round_trip_through_the_gateway() {
    let (mut gw, mut devices) = enrolled(&["pm-a", "pm-b"]);
    // Positive control: the needle below is in the plaintext form of a reading.
    let plain = serde_json::to_vec(&reading("pm-a", 0)).unwrap();
    assert!(plain.windows(6).any(|w| w == b"bpm\":2"));
    for n in 0..3 {
        for d in &mut devices {
            let r = reading(d.id(), n);
            let msg = d.send(&r).unwrap();
            assert_eq!(msg.counter, n + 1, "counters start at 1 and go up by one");
            assert!(
                !msg.ciphertext.windows(6).any(|w| w == b"bpm\":2"),
                "the ciphertext does not hold the plaintext"
            );
            assert_eq!(gw.receive(&msg).unwrap(), r);
        }
    }
    let mut wrong = Pacemaker::new("pm-a", DeviceKey::generate());
    assert_eq!(
        wrong.send(&reading("pm-b", 0)).unwrap_err(),
        DeviceError::WrongDevice {
            device: "pm-a".into()
        }
    );
}

#[test]
fn gateway_rejects_replayed_and_stale_device_messages() {
    let (mut gw, mut devices) = enrolled(&["pm-a"]);
    let d = &mut devices[0];
    let m1 = d.send(&reading("pm-a", 1)).unwrap();
    let m2 = d.send(&reading("pm-a", 2)).unwrap();
    gw.receive(&m2).unwrap();
    let err = gw.receive(&m2).unwrap_err();
    assert_eq!(
        err,
        DeviceError::Replay {
            device: "pm-a".into(),
            counter: 2,
            last_seen: 2
        }
    );
    check_message(&err, &["pm-a", "counter 2"]);
    // An older message delivered late is refused too.
    assert!(matches!(
        gw.receive(&m1).unwrap_err(),
        DeviceError::Replay { counter: 1, .. }
    ));
    // A fresh one still passes.
    let m3 = d.send(&reading("pm-a", 3)).unwrap();
    assert_eq!(gw.receive(&m3).unwrap(), reading("pm-a", 3));
}

#[test]
fn gateway_rejects_tampered_device_messages() {
    let (mut gw, mut devices) = enrolled(&["pm-a", "pm-b"]);
    let genuine = devices[0].send(&reading("pm-a", 1)).unwrap();

    let mut flipped = genuine.clone();
    flipped.ciphertext[5] ^= 0x80;
    let err = gw.receive(&flipped).unwrap_err();
    assert_eq!(
        err,
        DeviceError::Tampered {
            device: "pm-a".into(),
            counter: 1
        }
    );
    check_message(&err, &["pm-a", "counter 1"]);

    // The counter and the device id are bound: changing either fails authentication.
    let mut bumped = genuine.clone();
    bumped.counter = 7;
    assert!(matches!(
        gw.receive(&bumped).unwrap_err(),
        DeviceError::Tampered { counter: 7, .. }
    ));
    let mut moved = genuine.clone();
    moved.device_id = "pm-b".into();
    assert!(matches!(
        gw.receive(&moved).unwrap_err(),
        DeviceError::Tampered { .. }
    ));

    // Forgeries did not advance the counter: the genuine message still opens.
    assert_eq!(gw.receive(&genuine).unwrap(), reading("pm-a", 1));

    let mut unknown = genuine;
    unknown.device_id = "pm-zzz".into();
    assert_eq!(
        gw.receive(&unknown).unwrap_err(),
        DeviceError::UnknownDevice {
            device: "pm-zzz".into()
        }
    );
}

#[test]
fn debug_output_hides_keys_and_reading_values() {
    let key = DeviceKey::generate();
    let shown = format!("{key:?} {:?}", reading("pm-a", 1));
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(shown.contains("pm-a"), "{shown}");
    assert!(!shown.contains("211") && !shown.contains("97"), "{shown}");
    let (g, s) = handshake();
    assert_eq!(
        format!("{g:?} {s:?}"),
        "SessionKeys(<redacted>) SessionKeys(<redacted>)"
    );
}

// ----- the hybrid key exchange ----------------------------------------------------------------

#[test]
fn hybrid_handshake_gives_both_sides_the_same_keys() {
    let (gw, server) = handshake();
    assert!(gw == server, "both sides derive the same keys");
    assert!(gw.directions_differ(), "each direction has its own key");
    // Frames flow both ways.
    let (mut g_tx, mut g_rx) = gw.gateway_ends();
    let (mut s_tx, mut s_rx) = server.server_ends();
    assert_eq!(&s_rx.open(&g_tx.seal(b"up").unwrap()).unwrap()[..], b"up");
    assert_eq!(
        &g_rx.open(&s_tx.seal(b"down").unwrap()).unwrap()[..],
        b"down"
    );
    // Another session gets other keys.
    let (other, _) = handshake();
    assert!(gw != other, "fresh key pairs give fresh session keys");
}

#[test]
fn a_wrong_kem_ciphertext_or_public_key_fails_the_handshake() {
    let server = ServerHandshake::new();
    let (mut finish, _) = channel::gateway_connect(server.hello()).unwrap();
    assert_eq!(
        finish.kem_ciphertext.len(),
        1088,
        "ML-KEM-768 ciphertext size"
    );
    finish.kem_ciphertext[100] ^= 0x01;
    let err = server.finish(&finish).unwrap_err();
    assert_eq!(err, ChannelError::HandshakeFailed);
    assert!(err.to_string().contains("KEM ciphertext"), "{err}");

    // A changed X25519 public key fails the same way.
    let server = ServerHandshake::new();
    let (mut finish, _) = channel::gateway_connect(server.hello()).unwrap();
    finish.x25519_public[0] ^= 0x02;
    assert_eq!(
        server.finish(&finish).unwrap_err(),
        ChannelError::HandshakeFailed
    );

    // A ciphertext of the wrong size is malformed, before any decapsulation.
    let server = ServerHandshake::new();
    let (mut finish, _) = channel::gateway_connect(server.hello()).unwrap();
    finish.kem_ciphertext.pop();
    assert_eq!(
        server.finish(&finish).unwrap_err(),
        ChannelError::MalformedHandshake {
            what: "KEM ciphertext",
            len: 1087
        }
    );

    // The gateway refuses a truncated ML-KEM key.
    let server = ServerHandshake::new();
    let mut hello = server.hello().clone();
    assert_eq!(hello.kem_public.len(), 1184, "ML-KEM-768 key size");
    hello.kem_public.truncate(1000);
    assert!(matches!(
        channel::gateway_connect(&hello).unwrap_err(),
        ChannelError::MalformedHandshake { len: 1000, .. }
    ));
}

// ----- hop 2: gateway -> hospital frames ------------------------------------------------------

fn ends() -> (FrameSender, FrameReceiver) {
    let (gw, server) = handshake();
    (gw.gateway_ends().0, server.server_ends().1)
}

#[test]
fn frames_round_trip_with_increasing_sequence_numbers() {
    let (mut tx, mut rx) = ends();
    for n in 1..=5u64 {
        let frame = tx.seal(format!("frame {n}").as_bytes()).unwrap();
        assert_eq!(frame.seq, n);
        assert_eq!(
            &rx.open(&frame).unwrap()[..],
            format!("frame {n}").as_bytes()
        );
    }
}

#[test]
fn server_rejects_replayed_and_reordered_frames() {
    let (mut tx, mut rx) = ends();
    let f1 = tx.seal(b"one").unwrap();
    let f2 = tx.seal(b"two").unwrap();
    let f3 = tx.seal(b"three").unwrap();
    rx.open(&f1).unwrap();
    rx.open(&f3).unwrap();
    let err = rx.open(&f2).unwrap_err();
    assert_eq!(err, ChannelError::Replay { seq: 2, last: 3 });
    check_message(&err, &["frame 2", "3"]);
    assert_eq!(
        rx.open(&f3).unwrap_err(),
        ChannelError::Replay { seq: 3, last: 3 }
    );
}

#[test]
fn server_rejects_tampered_frames() {
    let (mut tx, mut rx) = ends();
    let genuine = tx.seal(b"a reading").unwrap();
    let mut flipped = genuine.clone();
    flipped.ciphertext[0] ^= 0x01;
    let err = rx.open(&flipped).unwrap_err();
    assert_eq!(err, ChannelError::Tampered { seq: 1 });
    check_message(&err, &["frame 1"]);
    // The sequence number is bound: a frame relabelled with a higher one fails.
    let relabelled = Frame {
        seq: 9,
        ciphertext: genuine.ciphertext.clone(),
    };
    assert_eq!(
        rx.open(&relabelled).unwrap_err(),
        ChannelError::Tampered { seq: 9 }
    );
    // A frame for the other direction (reflected back) fails too.
    let (_, server) = handshake();
    let (mut s_tx, _) = server.server_ends();
    let (_, mut s_rx) = server.server_ends();
    assert!(matches!(
        s_rx.open(&s_tx.seal(b"reflected").unwrap()).unwrap_err(),
        ChannelError::Tampered { .. }
    ));
    // Forgeries did not advance the sequence: the genuine frame opens.
    assert_eq!(&rx.open(&genuine).unwrap()[..], b"a reading");
}

// ----- the hospital server --------------------------------------------------------------------

#[test]
fn hospital_stores_sealed_readings_and_rejects_replay_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, server) = handshake();
    let (mut tx, _) = gw.gateway_ends();
    let mut hospital = HospitalServer::open(dir.path(), server.server_ends().1).unwrap();
    let mut sent = Vec::new();
    let mut last = None;
    for device in ["pm-a", "pm-b"] {
        for n in 0..3 {
            let r = reading(device, n);
            let frame = tx.seal(&serde_json::to_vec(&r).unwrap()).unwrap();
            hospital.receive(&frame).unwrap();
            sent.push(r);
            last = Some(frame);
        }
    }
    assert_eq!(hospital.device_scopes(), 2, "one key scope per device");

    let last = last.unwrap();
    let err = hospital.receive(&last).unwrap_err();
    assert!(
        matches!(
            err,
            HospitalError::Channel(ChannelError::Replay { seq: 6, last: 6 })
        ),
        "{err}"
    );
    let mut forged = tx
        .seal(&serde_json::to_vec(&reading("pm-a", 9)).unwrap())
        .unwrap();
    forged.ciphertext[3] ^= 0x04;
    let err = hospital.receive(&forged).unwrap_err();
    assert!(
        matches!(
            err,
            HospitalError::Channel(ChannelError::Tampered { seq: 7 })
        ),
        "{err}"
    );
    check_message(&err, &["frame 7"]);

    let stored = hospital.load_all().unwrap();
    assert_eq!(
        stored, sent,
        "refused frames stored nothing; the rest read back equal"
    );
    let envelopes = hospital.raw_envelopes().unwrap();
    assert_eq!(envelopes.len(), 6);
    // Positive control: the needles below are in the plaintext form of a reading.
    let plain = serde_json::to_vec(&sent[0]).unwrap();
    assert!(plain.windows(20).any(|w| w == b"\"heart_rate_bpm\":211"));
    assert!(plain.windows(13).any(|w| w == b"heart_rate_bp"));
    for env in &envelopes {
        assert!(
            !env.windows(20).any(|w| w == b"\"heart_rate_bpm\":211"),
            "heart rate in the clear"
        );
        assert!(
            !env.windows(13).any(|w| w == b"heart_rate_bp"),
            "JSON in the clear"
        );
    }
}

// ----- the binary -----------------------------------------------------------------------------

#[test]
fn the_binary_runs_the_pipeline_and_prints_the_summary() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medtech"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("summary: {SUMMARY_OK} (13 of 13)")),
        "{stdout}"
    );
    for line in [
        "device -> gateway        13 accepted, 1 replay rejected, 1 tamper rejected",
        "gateway -> hospital      13 accepted, 1 replay rejected, 1 tamper rejected",
        "under 3 device key scopes",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from\n{stdout}");
    }
    for word in ["bpm", "battery_pct", "heart_rate"] {
        assert!(!stdout.contains(word), "{word} in the output:\n{stdout}");
    }
    assert!(stderr.is_empty(), "{stderr}");
}
