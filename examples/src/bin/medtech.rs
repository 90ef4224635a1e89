//! medtech: a pacemaker-fleet pipeline, devices → gateway → hospital server.
//!
//! Each simulated pacemaker holds a pre-shared 256-bit key and sends its readings (heart rate,
//! battery, timestamp, device id) sealed with ChaCha20-Poly1305, a per-device 64-bit counter
//! as nonce material and the device id and counter as associated data; the gateway rejects
//! replays and tampered messages. The gateway forwards each reading to the hospital server
//! over a channel keyed by a hybrid ML-KEM-768 + X25519 key exchange (HKDF-SHA256 over the
//! transcript, one AES-256-GCM key per direction, 64-bit sequence numbers); the server rejects
//! replayed, reordered and tampered frames. The server stores each reading with
//! `#[derive(leakless::Sealed)]` in an embedded SQLite database: the values sealed, the device
//! id in the clear, one key scope per device, under a `LocalKms` root key and a
//! `FileKeyStore` made at run time in a temporary folder. The run shows one replay and one
//! tamper rejected at each hop, reads every stored reading back, checks it equals what the
//! device sent, and prints counts only: never a reading's value or a key.
//!
//! ```text
//! cargo run -p leakless-examples --bin medtech
//! ```

use std::error::Error;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use leakless_examples::cli;
use leakless_examples::medtech::channel::{self, ChannelError, ServerHandshake};
use leakless_examples::medtech::device::{DeviceError, DeviceKey, Gateway, Pacemaker};
use leakless_examples::medtech::hospital::{HospitalError, HospitalServer};
use leakless_examples::medtech::{Reading, SUMMARY_OK};
use rand::Rng as _;

/// `writeln!` to stdout, returning the error instead of panicking the way `println!` does.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

const DEVICES: usize = 3;
const READINGS_PER_DEVICE: u64 = 4;

const HINT_BUG: &str = "this is a bug in the example; please report it";

/// A failure of the demo itself: a bug, whatever it says.
fn fail(message: impl Into<String>) -> Box<dyn Error> {
    cli::fail(message, HINT_BUG)
}

/// The hint for an error that is not a [`cli::Failure`].
fn hint_for(e: &(dyn Error + 'static)) -> &'static str {
    if e.downcast_ref::<DeviceError>().is_some() || e.downcast_ref::<ChannelError>().is_some() {
        return "a message was refused where it should have passed; please report it";
    }
    if let Some(h) = e.downcast_ref::<HospitalError>() {
        return match h {
            HospitalError::Connection(_) | HospitalError::Database(_) => {
                "SQLite could not use its file; check that the temporary folder is writable"
            }
            HospitalError::Keys(_) => {
                "the key files could not be made; check that the temporary folder is writable"
            }
            _ => HINT_BUG,
        };
    }
    if e.downcast_ref::<std::io::Error>().is_some() {
        return "check that the temporary folder (TMPDIR) is writable and stdout is open";
    }
    HINT_BUG
}

fn main() -> ExitCode {
    cli::exit(run(), hint_for)
}

/// Flips one bit in the middle of a ciphertext.
fn tamper(bytes: &mut [u8]) -> Result<(), Box<dyn Error>> {
    let mid = bytes.len() / 2;
    let b = bytes
        .get_mut(mid)
        .ok_or_else(|| fail("an empty ciphertext"))?;
    *b ^= 0x01;
    Ok(())
}

/// Checks that a forged message was refused the expected way: `refusal` gives the text of the
/// expected error (`None` for any other). Prints it after `label` and counts the one refusal;
/// an acceptance or another error is a failure, `failure` and what happened.
fn rejected<T, E: std::fmt::Debug>(
    result: Result<T, E>,
    refusal: impl FnOnce(&E) -> Option<String>,
    label: &str,
    failure: &str,
) -> Result<usize, Box<dyn Error>> {
    if let Err(e) = &result
        && let Some(shown) = refusal(e)
    {
        say!("  {label:<19}rejected: {shown}");
        return Ok(1);
    }
    Err(fail(format!(
        "{failure} ({:?})",
        result.map(|_| "accepted")
    )))
}

fn run() -> Result<(), Box<dyn Error>> {
    let hardening = leakless::harden_process();
    say!("leakless medtech: pacemaker readings, devices -> gateway -> hospital server");
    say!("  process hardening  {hardening}");
    let dir = tempfile::Builder::new()
        .prefix("leakless-medtech-")
        .tempdir()?;

    // ----- enrol the devices: one pre-shared key each --------------------------------------
    let mut gateway = Gateway::new();
    let mut devices: Vec<Pacemaker> = (1..=DEVICES)
        .map(|n| {
            let id = format!("pm-{n:04}");
            let key = DeviceKey::generate();
            gateway.register(id.clone(), key.clone());
            Pacemaker::new(id, key)
        })
        .collect();

    // ----- gateway <-> hospital: hybrid handshake ------------------------------------------
    let server_hs = ServerHandshake::new();
    let (finish, gateway_keys) = channel::gateway_connect(server_hs.hello())?;
    let server_keys = server_hs.finish(&finish)?;
    if gateway_keys != server_keys || !gateway_keys.directions_differ() {
        return Err(fail(
            "the two sides of the handshake derived different keys",
        ));
    }
    say!(
        "  handshake          ML-KEM-768 + X25519, HKDF-SHA256: both sides hold the same \
         AES-256-GCM keys (one per direction)"
    );
    let (mut to_server, _from_server) = gateway_keys.gateway_ends();
    let (_to_gateway, from_gateway) = server_keys.server_ends();
    let mut hospital = HospitalServer::open(dir.path(), from_gateway)?;

    // ----- the readings --------------------------------------------------------------------
    let start_ms = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| fail("the system clock is before 1970"))?
            .as_millis(),
    )
    .map_err(|_| fail("the system clock is out of range"))?;
    let mut rng = rand::thread_rng();
    let mut sent: Vec<Reading> = Vec::new();
    let (mut hop1_ok, mut hop2_ok) = (0usize, 0usize);
    for minute in 0..READINGS_PER_DEVICE {
        for device in &mut devices {
            let reading = Reading {
                device_id: device.id().to_owned(),
                timestamp_ms: start_ms.saturating_add(minute.saturating_mul(60_000)),
                heart_rate_bpm: rng.gen_range(55..=95),
                battery_pct: rng.gen_range(60..=100),
            };
            let msg = device.send(&reading)?;
            let at_gateway = gateway.receive(&msg)?;
            hop1_ok = hop1_ok.saturating_add(1);
            let frame = to_server.seal(&serde_json::to_vec(&at_gateway)?)?;
            hospital.receive(&frame)?;
            hop2_ok = hop2_ok.saturating_add(1);
            sent.push(reading);
        }
    }

    // ----- attacks on hop 1: device -> gateway ---------------------------------------------
    let first = devices.first_mut().ok_or_else(|| fail("no devices"))?;
    let reading = Reading {
        device_id: first.id().to_owned(),
        timestamp_ms: start_ms.saturating_add(READINGS_PER_DEVICE.saturating_mul(60_000)),
        heart_rate_bpm: rng.gen_range(55..=95),
        battery_pct: rng.gen_range(60..=100),
    };
    let genuine = first.send(&reading)?;
    let mut forged = genuine.clone();
    tamper(&mut forged.ciphertext)?;
    let hop1_tampers = rejected(
        gateway.receive(&forged),
        |e| matches!(e, DeviceError::Tampered { .. }).then(|| e.to_string()),
        "hop 1 tamper",
        "a tampered device message was not rejected as tampered",
    )?;
    let at_gateway = gateway.receive(&genuine)?;
    hop1_ok = hop1_ok.saturating_add(1);
    let hop1_replays = rejected(
        gateway.receive(&genuine),
        |e| matches!(e, DeviceError::Replay { .. }).then(|| e.to_string()),
        "hop 1 replay",
        "a replayed device message was not rejected as a replay",
    )?;

    // ----- attacks on hop 2: gateway -> hospital -------------------------------------------
    let frame = to_server.seal(&serde_json::to_vec(&at_gateway)?)?;
    let mut forged = frame.clone();
    tamper(&mut forged.ciphertext)?;
    let hop2_tampers = rejected(
        hospital.receive(&forged),
        |e| match e {
            HospitalError::Channel(c @ ChannelError::Tampered { .. }) => Some(c.to_string()),
            _ => None,
        },
        "hop 2 tamper",
        "a tampered frame was not rejected as tampered",
    )?;
    hospital.receive(&frame)?;
    hop2_ok = hop2_ok.saturating_add(1);
    sent.push(reading);
    let hop2_replays = rejected(
        hospital.receive(&frame),
        |e| match e {
            HospitalError::Channel(c @ ChannelError::Replay { .. }) => Some(c.to_string()),
            _ => None,
        },
        "hop 2 replay",
        "a replayed frame was not rejected as a replay",
    )?;

    // ----- read back and compare -----------------------------------------------------------
    let stored = hospital.load_all()?;
    sent.sort_by(|a, b| {
        (a.device_id.as_str(), a.timestamp_ms).cmp(&(b.device_id.as_str(), b.timestamp_ms))
    });
    if stored.len() != sent.len() {
        return Err(fail(format!(
            "{} readings stored, {} sent",
            stored.len(),
            sent.len()
        )));
    }
    let matching = stored.iter().zip(&sent).filter(|(a, b)| a == b).count();
    if matching != sent.len() {
        return Err(fail(format!(
            "{} of {} stored readings differ from what the devices sent",
            sent.len().saturating_sub(matching),
            sent.len()
        )));
    }
    // No reading's serialized form appears in a stored envelope.
    let envelopes = hospital.raw_envelopes()?;
    for r in &sent {
        let plain = serde_json::to_vec(r)?;
        if envelopes
            .iter()
            .any(|env| env.windows(plain.len()).any(|w| w == plain.as_slice()))
        {
            return Err(fail("a reading was stored in the clear"));
        }
    }

    say!();
    say!("[summary]");
    say!("  devices                  {}", devices.len());
    say!(
        "  device -> gateway        {hop1_ok} accepted, {hop1_replays} replay rejected, {hop1_tampers} tamper rejected"
    );
    say!(
        "  gateway -> hospital      {hop2_ok} accepted, {hop2_replays} replay rejected, {hop2_tampers} tamper rejected"
    );
    say!(
        "  hospital storage         {} readings sealed in SQLite under {} device key scopes; {} envelopes hold no plaintext",
        stored.len(),
        hospital.device_scopes(),
        envelopes.len()
    );
    say!("summary: {SUMMARY_OK} ({matching} of {})", sent.len());
    drop(hospital);
    dir.close()?;
    Ok(())
}
