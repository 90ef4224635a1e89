//! quickstart: leakless end to end on an embedded SQLite file; no database server needed.
//!
//! Its model is one `#[derive(Sealed)]` struct, `Patient`: a plaintext id and name, a sealed
//! postal address (AES-256-GCM), a sealed e-mail address with a blind index under its own key
//! scope `bidx`, a sealed GPS point (`Json<GeoPoint>`) and a sealed, optional consultation
//! transcript (XChaCha20-Poly1305; the patient without one keeps SQL `NULL`). It bulk-inserts
//! five fictional patients into a SQLite file through diesel, reads every row back and opens
//! it, finds one patient by blind index, and prints one patient's redacted `Debug`.
//!
//! Then the key lifecycle, the way an operator runs it:
//!
//! 1. **rotate** the KEK and **re-wrap** every stored envelope onto the new version (data
//!    ciphertext untouched);
//! 2. copy the key-store file to `old-backup/` before anything is destroyed: the **old backup**
//!    an attacker may hold (the envelopes read before the re-wrap stand for the database
//!    backups of the same time);
//! 3. **wait for the cache window**: `retire` right after the rotation is refused with
//!    `KeyChangeTooEarly`, naming when it becomes allowed, because an application whose KEK
//!    cache still holds the old version as active may seal under it until then. The demo's
//!    key ring records a **2-second** window (`KeyRingBuilder::cache_window`) because it is
//!    one process that rotates and retires within seconds; production keeps the default
//!    (the KEK cache's 5 minutes) and retires later. The demo waits about three seconds;
//! 4. **retire** and **destroy** the old version: its wrapped KEK is erased from the key store.
//!    That shred is not complete yet: as the attacker, a fresh key ring over the old backup
//!    with today's root key file still opens every value of the destroyed version (a positive
//!    control: the attack works);
//! 5. **complete the shred** (`KeyRing::complete_shred` with the same `LocalKms` the ring
//!    holds): a new root key is staged in `root.key.next`, every surviving KEK record (the
//!    store's integrity key included) is moved onto it, and the old root key is overwritten
//!    with zeros and replaced. It prints what moved, which root epoch was destroyed and where
//!    copies of the old root key may remain (outside what a program can erase);
//! 6. the same attack now opens **none** of the destroyed version's values (a typed
//!    `Error::Kms`), while the current key store still opens every live row, and
//!    `KeyRing::verify_store` verifies the authenticated audit chain and every key record.
//!
//! Finally it scans, with the leak-test harness (`leakless-leaktest`), the raw database, its
//! WAL, the key store, the old backup copy (and a staged `root.key.next`, if one were left) for
//! every plaintext in every encoding the harness searches and for today's and the destroyed
//! root key, and `root.key` itself for the destroyed root key. Before trusting a clean result
//! it proves the detector: the harness's self-test finds every value planted into a synthetic
//! buffer in each encoding, and every channel must show its positive control (the unsealed
//! names in the database files, the rotation's audit text in the key-store files, today's key
//! in `root.key`). It exits non-zero if any plaintext or key material is found, or if the
//! attacker's result is not the expected one.
//!
//! ```text
//! cargo run --release -p leakless-examples --bin quickstart [-- --dir PATH]
//! ```
//!
//! `--export-manifest PATH` instead writes the schema manifest of the `Patient` model (which
//! columns are sealed, under which scope, AEAD and schema version) to PATH as JSON, for the
//! migrator and the leak tests, and stops.
//!
//! With `--dir` the files stay in PATH (created if missing; the root key and key store there
//! are reused on the next run, the demo database and the old backup copy are replaced); without
//! it they live in a temporary folder that is removed at exit. The output holds counts,
//! lengths, key versions, public root-key ids, file sizes and timings, never a plaintext or a
//! key byte.
//!
//! The `name` column stays unsealed on purpose: it is the demo's one visible, non-sensitive
//! column (a made-up display label), and the scan does not look for it. In a real clinic
//! application a patient's name is personal data and would be sealed as well, with a blind
//! index for look-ups, the way `email` is here.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use zeroize::Zeroizing;

use leakless::envelope;
use leakless::keyring::{ShredReport, ShredStatus};
use leakless::kms::LocalKms;
use leakless::store::FileKeyStore;
use leakless::{AuditInfo, FieldContext, KekVersion, KeyRing, KeyScope, RowId, Sealed};
use leakless_examples::cli::{self, fail};
use leakless_examples::demo_data::{self, DemoPatient};
use leakless_examples::lifecycle::{DEMO_CACHE_WINDOW, seconds, time_until, wait_until};
use leakless_examples::patient::{
    BIDX_SCOPE, Patient, PatientRow, SCHEMA_VERSION, SCOPE, TABLE, patients,
};
use leakless_examples::{NO_PLAINTEXT_FOUND, POSITIVE_CONTROL_PASSED};
use leakless_leaktest::scan::self_test;
use leakless_leaktest::{Canary, CanarySet, LeakCheck, Status};

/// `writeln!` to stdout, returning the error (a closed pipe, say) instead of panicking the
/// way `println!` does.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

const ROOT_KEY_FILE: &str = "root.key";
const KEY_STORE_FILE: &str = "keystore.json";
/// The leak scan's canary ids of today's and the destroyed root key.
const ROOT_KEY: &str = "root key";
const DESTROYED_ROOT_KEY: &str = "destroyed root key";
/// The reason the demo's rotation records in the key store's audit trail: plain text there, so
/// the leak scan's positive control of the key-store files.
const ROTATION_REASON: &str = "demo rotation";
const KEY_STORE_CONTROL: &str = "key-store audit reason";
/// The folder of the key-store copy taken before the destroy: the "old backup" an attacker
/// holds.
const BACKUP_DIR: &str = "old-backup";
const DB_FILE: &str = "patients.db";
const GRACE: Duration = Duration::from_secs(3600);

/// The one-row answer of `PRAGMA journal_mode`.
#[derive(QueryableByName)]
struct JournalMode {
    #[diesel(sql_type = diesel::sql_types::Text)]
    journal_mode: String,
}

/// The sealed columns of the stored row, for the key-free header census and the re-wrap.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Column {
    Address,
    Email,
    Gps,
    Transcript,
}

impl Column {
    const ALL: [Column; 4] = [
        Column::Address,
        Column::Email,
        Column::Gps,
        Column::Transcript,
    ];

    fn name(self) -> &'static str {
        match self {
            Column::Address => "address",
            Column::Email => "email",
            Column::Gps => "gps",
            Column::Transcript => "transcript",
        }
    }

    /// The stored envelope, `None` for a NULL transcript.
    fn sealed(self, row: &PatientRow) -> Option<&[u8]> {
        match self {
            Column::Address => Some(&row.address),
            Column::Email => Some(&row.email),
            Column::Gps => Some(&row.gps),
            Column::Transcript => row.transcript.as_deref(),
        }
    }

    fn sealed_mut(self, row: &mut PatientRow) -> Option<&mut Vec<u8>> {
        match self {
            Column::Address => Some(&mut row.address),
            Column::Email => Some(&mut row.email),
            Column::Gps => Some(&mut row.gps),
            Column::Transcript => row.transcript.as_mut(),
        }
    }
}

/// The context the derive binds into a field's envelope: table, column, row id, schema version.
fn context(id: &str, column: Column) -> FieldContext<'_> {
    FieldContext::new(TABLE, column.name(), RowId::Text(id), SCHEMA_VERSION)
}

// ----- errors with a hint ---------------------------------------------------------------------

const HINT_BUG: &str = "this should not happen; please report it with the full output";

/// The hint for an error that is not a [`cli::Failure`] (made by `fail`).
fn hint_for(e: &(dyn Error + 'static)) -> &'static str {
    if let Some(e) = e.downcast_ref::<leakless::Error>() {
        return match e {
            leakless::Error::KeyFile { .. } => {
                "the root key file must hold 64 hex digits (or 32 raw bytes) and have mode 0600; \
                 run with an empty --dir to make a fresh one"
            }
            leakless::Error::Kms { .. } => {
                "the key store was probably made under another root key; run with an empty --dir"
            }
            leakless::Error::KeyStore { .. } => {
                "check that the key-store file in --dir is readable and writable, or use an empty --dir"
            }
            _ => "run with an empty --dir; if it happens again, please report it",
        };
    }
    if e.downcast_ref::<ConnectionError>().is_some()
        || e.downcast_ref::<diesel::result::Error>().is_some()
    {
        return "SQLite could not use the database file; check that the folder is writable";
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::BrokenPipe {
            return "the output was closed early (piped into `head`?); run it without the pipe";
        }
        return "check that the folder exists and that this user may write to it";
    }
    "run with an empty --dir; if it happens again, please report it"
}

fn main() -> ExitCode {
    cli::exit(run(), hint_for)
}

// ----- the demo -------------------------------------------------------------------------------

/// Where the demo's files live.
enum Workspace {
    /// A temporary folder, removed when dropped.
    Temp(tempfile::TempDir),
    /// A folder the user named with `--dir`; kept.
    Kept(PathBuf),
}

impl Workspace {
    fn path(&self) -> &Path {
        match self {
            Workspace::Temp(t) => t.path(),
            Workspace::Kept(p) => p,
        }
    }
}

const USAGE: &str = "usage: quickstart [--dir PATH] | quickstart --export-manifest PATH";

/// What the command line asked for.
enum Args {
    /// Print the usage and stop.
    Help,
    /// Run the demo, in this folder if given.
    Run(Option<PathBuf>),
    /// Write the schema manifest of the demo's model to this file and stop.
    ExportManifest(PathBuf),
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = std::env::args_os().skip(1);
    let mut dir = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--dir") => match args.next() {
                Some(path) if dir.is_none() => dir = Some(PathBuf::from(path)),
                Some(_) => return Err(fail("--dir given twice", USAGE)),
                None => return Err(fail("--dir needs a folder path", USAGE)),
            },
            Some("--export-manifest") => match args.next() {
                Some(path) => return Ok(Args::ExportManifest(PathBuf::from(path))),
                None => return Err(fail("--export-manifest needs a file path", USAGE)),
            },
            Some("-h" | "--help") => return Ok(Args::Help),
            // The argument itself is not echoed: command lines are no place for secrets, but
            // if someone put one there, this output will not repeat it.
            _ => return Err(fail("unknown argument", USAGE)),
        }
    }
    Ok(Args::Run(dir))
}

fn run() -> Result<(), Box<dyn Error>> {
    // First of all, before any key exists in memory: no core dumps, no swap where allowed.
    let hardening = leakless::harden_process();
    let dir = match parse_args()? {
        Args::Help => {
            say!("{USAGE}");
            say!("  --dir PATH  keep the demo's files in PATH (created if missing)");
            say!(
                "  --export-manifest PATH  write the schema manifest (sealed tables and columns, \
                 as JSON for the migrator and leak tests) to PATH and stop"
            );
            return Ok(());
        }
        Args::ExportManifest(path) => {
            leakless::manifest::SchemaManifest::from_tables([Patient::manifest()])
                .write_file(&path)?;
            say!("schema manifest written to {}", path.display());
            return Ok(());
        }
        Args::Run(dir) => dir,
    };
    let started = Instant::now();

    say!("leakless quickstart: sealed patient records in an embedded SQLite file");
    say!();
    say!("[setup]");
    say!("  process hardening  {hardening}");

    let workspace = match dir {
        Some(path) => {
            create_private_dir(&path)?;
            Workspace::Kept(path)
        }
        None => Workspace::Temp(
            tempfile::Builder::new()
                .prefix("leakless-quickstart-")
                .tempdir()?,
        ),
    };
    let ws = workspace.path();
    say!(
        "  workspace          {} ({})",
        ws.display(),
        match workspace {
            Workspace::Temp(_) => "temporary; removed at exit",
            Workspace::Kept(_) => "kept; from --dir",
        }
    );

    // ----- keys: root key file -> KMS, key store file -> KEK records ------------------------
    let keys = open_keys(ws)?;
    // ----- database ------------------------------------------------------------------------
    let (conn, db_path) = open_database(ws)?;
    let people = demo_data::patients();
    let mut demo = Demo {
        patients: people.iter().map(Patient::from_demo).collect(),
        keys,
        audit: AuditInfo::new("quickstart", ROTATION_REASON),
        conn,
        timings: Vec::new(),
    };

    seal_and_insert(&mut demo)?;
    let stored = read_back(&mut demo)?;
    look_up(&mut demo)?;
    let (old_version, new_version) = rotate_and_rewrap(&mut demo, &stored)?;
    let backup_path = back_up_key_store(&demo, ws, old_version, &stored)?;
    retire_and_destroy(&mut demo, &stored, old_version, new_version)?;
    let old_root = shred_and_attack(&mut demo, &backup_path, &stored, old_version, new_version)?;

    // ----- key store integrity ----------------------------------------------------------------
    say!();
    say!("[key store]");
    print_key_store(&demo.keys.ring, &demo.keys.scope)?;

    // ----- scan the raw files for plaintext -------------------------------------------------
    say!();
    say!("[leak scan]");
    let Demo {
        keys,
        conn,
        mut timings,
        ..
    } = demo;
    let t = Instant::now();
    leak_scan(conn, ws, &db_path, &keys.root_path, &old_root, &people)?;
    timings.push(("leak scan", t.elapsed()));

    // ----- summary ----------------------------------------------------------------------------
    say!();
    say!("[timings]");
    for (what, d) in &timings {
        say!("  {what:<28} {}", ms(*d));
    }
    say!("  {:<28} {}", "total", ms(started.elapsed()));
    if let Workspace::Temp(_) = workspace {
        say!();
        say!("removing {}", ws.display());
    }
    drop(workspace);
    Ok(())
}

/// What the demo carries from stage to stage: the keys, the database connection, the patients
/// it wrote, and how long each timed step took.
struct Demo {
    keys: Keys,
    audit: AuditInfo,
    conn: SqliteConnection,
    patients: Vec<Patient>,
    timings: Vec<(&'static str, Duration)>,
}

/// `[seal + insert]`: seals every patient with `Patient::seal_rows` and inserts the rows in one
/// statement, then shows the stored layout.
fn seal_and_insert(demo: &mut Demo) -> Result<(), Box<dyn Error>> {
    say!();
    say!("[seal + insert]");
    let t = Instant::now();
    let rows = Patient::seal_rows(&demo.patients, &demo.keys.ring)?;
    demo.timings.push(("seal_rows", t.elapsed()));
    let t = Instant::now();
    let inserted = diesel::insert_into(patients::table)
        .values(&rows)
        .execute(&mut demo.conn)?;
    demo.timings
        .push(("insert (one bulk statement)", t.elapsed()));
    let envelopes: usize = rows.iter().map(sealed_count).sum();
    let nulls = rows.iter().filter(|r| r.transcript.is_none()).count();
    say!(
        "  Patient::seal_rows sealed {envelopes} fields of {} patients ({nulls} transcript None -> NULL);",
        rows.len()
    );
    say!("  inserted {inserted} rows in one statement");
    print_layout(&rows)
}

/// `[read back + open]`: loads every row and opens it with `Patient::open_rows`; returns the
/// stored rows (the envelopes as they are before the rotation).
fn read_back(demo: &mut Demo) -> Result<Vec<PatientRow>, Box<dyn Error>> {
    say!();
    say!("[read back + open]");
    let t = Instant::now();
    let (stored, opened) = read_and_check(&mut demo.conn, &demo.keys.ring, &demo.patients)?;
    demo.timings.push(("read + open_rows", t.elapsed()));
    say!(
        "  .select(PatientRow::as_select()) + Patient::open_rows: {opened} sealed fields in {} rows opened and equal to what was written: ok",
        stored.len()
    );
    print_census("  fields per KEK version:", &stored)?;
    Ok(stored)
}

/// `[blind-index look-up]`: finds one patient by e-mail as a user would type it.
fn look_up(demo: &mut Demo) -> Result<(), Box<dyn Error>> {
    say!();
    say!("[blind-index look-up]");
    let ring = &demo.keys.ring;
    let wanted = demo
        .patients
        .get(2)
        .ok_or_else(|| fail("no demo data", HINT_BUG))?;
    // As a user would type it: other case, stray spaces; the index normalises both.
    let typed = format!("  {}  ", wanted.email.to_uppercase());
    let t = Instant::now();
    let tokens = Patient::email_lookup(ring, &typed)?;
    let found: Vec<PatientRow> = patients::table
        .filter(patients::email_bidx.eq_any(&tokens))
        .select(PatientRow::as_select())
        .load(&mut demo.conn)?;
    let found = Patient::open_rows(found, ring)?;
    demo.timings.push(("blind-index look-up", t.elapsed()));
    if found.len() != 1 || found.first() != Some(wanted) {
        return Err(fail(
            format!(
                "the blind-index look-up found {} rows, not the one patient",
                found.len()
            ),
            HINT_BUG,
        ));
    }
    say!(
        "  Patient::email_lookup gave {} token(s); patients::email_bidx.eq_any(tokens) found 1 row,",
        tokens.len()
    );
    say!("  the right patient (e-mail typed in upper case with spaces; normaliser trim_lowercase)");
    say!("  Debug of that patient (sealed fields print as <sealed>):");
    say!("    {wanted:?}");
    Ok(())
}

/// `[rotate KEK + re-wrap]`: rotates the scope's KEK and re-wraps every stored envelope onto
/// the new version; returns the old and the new version.
fn rotate_and_rewrap(
    demo: &mut Demo,
    stored: &[PatientRow],
) -> Result<(KekVersion, KekVersion), Box<dyn Error>> {
    say!();
    say!("[rotate KEK + re-wrap]");
    let Keys { ring, scope, .. } = &demo.keys;
    let t = Instant::now();
    let old_version = demo.keys.first_version;
    let new_version = ring.rotate(scope, GRACE, &demo.audit)?;
    say!(
        "  rotated: {new_version} active; {old_version} in grace for {} min (opens, never seals)",
        GRACE.as_secs() / 60
    );
    let rewrapped = rewrap_all(&mut demo.conn, ring, stored)?;
    demo.timings
        .push(("rotate + re-wrap + update", t.elapsed()));
    say!(
        "  KeyRing::rewrap of the stored envelopes (contexts: table {TABLE}, column, row id, schema v{SCHEMA_VERSION}):"
    );
    say!(
        "  re-wrapped {rewrapped} DEKs onto {new_version} (data ciphertext untouched, NULLs stay NULL), updated {} rows",
        stored.len()
    );
    let (after, opened) = read_and_check(&mut demo.conn, ring, &demo.patients)?;
    say!("  {opened} sealed fields opened and equal after the re-wrap: ok");
    print_census("  fields per KEK version:", &after)?;
    Ok((old_version, new_version))
}

/// `[old backup]`: copies the key store as a backup an attacker will hold, taken while the
/// old version is in grace; returns its path.
fn back_up_key_store(
    demo: &Demo,
    ws: &Path,
    old_version: KekVersion,
    stored: &[PatientRow],
) -> Result<PathBuf, Box<dyn Error>> {
    // A key-store backup taken now, while the old version is in grace (a nightly backup, say).
    // With the database backups of the same night it holds every value sealed under the old
    // version, and the wrapped KEK that opens them.
    say!();
    say!("[old backup]");
    let backup_dir = ws.join(BACKUP_DIR);
    create_private_dir(&backup_dir)?;
    let backup_path = backup_dir.join(KEY_STORE_FILE);
    fs::copy(&demo.keys.store_path, &backup_path)?;
    say!(
        "  copied {KEY_STORE_FILE} to {BACKUP_DIR}/{KEY_STORE_FILE}: a key-store backup from before the"
    );
    say!(
        "  destroy ({old_version} still in grace), and the {} envelopes under {old_version} read",
        count_sealed(stored)
    );
    say!("  before the re-wrap stand for the database backups of the same time");
    Ok(backup_path)
}

/// `[cache window]` and `[retire + destroy]`: waits until every cache can have noticed the
/// rotation, retires and destroys the old version, and shows an envelope kept from before the
/// re-wrap refused at each step while the live rows still open.
fn retire_and_destroy(
    demo: &mut Demo,
    stored: &[PatientRow],
    old_version: KekVersion,
    new_version: KekVersion,
) -> Result<(), Box<dyn Error>> {
    let Keys { ring, scope, .. } = &demo.keys;
    say!();
    say!("[cache window]");
    let t = Instant::now();
    retire_after_cache_window(ring, scope, old_version, &demo.audit)?;
    demo.timings
        .push(("wait for the cache window", t.elapsed()));

    say!();
    say!("[retire + destroy {old_version}]");
    let kept_row = stored
        .first()
        .ok_or_else(|| fail("no row came back", HINT_BUG))?;
    // Sealed under the old version, kept aside before the re-wrap.
    let kept_ctx = context(&kept_row.id, Column::Address);
    let kept_envelope = &kept_row.address;
    expect_refusal(ring, &kept_ctx, kept_envelope, "retired", |e| {
        matches!(e, leakless::Error::KeyWrongState { .. })
    })?;
    say!(
        "  retired {old_version}: an envelope kept from before the re-wrap is refused (KeyWrongState)"
    );
    ring.destroy(scope, old_version, &demo.audit)?;
    let (_, opened) = read_and_check(&mut demo.conn, ring, &demo.patients)?;
    say!("  destroyed {old_version}: its wrapped material is erased from the key store");
    say!("  {opened} fields of the live rows still open (they are on {new_version}): ok");
    expect_refusal(ring, &kept_ctx, kept_envelope, "destroyed", |e| {
        matches!(e, leakless::Error::KeyDestroyed { .. })
    })?;
    say!("  the envelope kept from before the re-wrap now fails with KeyDestroyed");
    say!("  but the shred is not complete: the old backup still holds {old_version}'s wrapped KEK");
    Ok(())
}

/// The attacker with the old key-store backup before and after `[complete shred]`: opens every
/// old value first (the positive control), none after the new root epoch replaced the old one;
/// the live rows still open. Returns the old root key's bytes, for the leak scan to prove them
/// gone from every file.
fn shred_and_attack(
    demo: &mut Demo,
    backup_path: &Path,
    stored: &[PatientRow],
    old_version: KekVersion,
    new_version: KekVersion,
) -> Result<Zeroizing<Vec<u8>>, Box<dyn Error>> {
    let Keys {
        kms,
        ring,
        root_path,
        ..
    } = &demo.keys;
    // The attacker: the old key-store backup, the old database rows, and today's root key file.
    let before = attack(backup_path, root_path, stored, &demo.patients)?;
    if before.opened != before.total || !before.rows_equal {
        return Err(fail(
            format!(
                "positive control failed: before the shred the old backup opened {} of {} \
                 {old_version} fields, so a refusal after it would prove nothing",
                before.opened, before.total
            ),
            HINT_BUG,
        ));
    }
    say!(
        "  attacker before the shred: a fresh key ring over {BACKUP_DIR}/{KEY_STORE_FILE} with today's"
    );
    say!(
        "  {ROOT_KEY_FILE} opened {} of {} {old_version} fields, equal to the originals ({POSITIVE_CONTROL_PASSED}:",
        before.opened,
        before.total
    );
    say!("  the attack works while the old root epoch exists)");

    // ----- complete the shred: a new root epoch, the old one destroyed ------------------------
    say!();
    say!("[complete shred]");
    // The old root key, read only to check below that its bytes are gone from every file;
    // first proven to be found where it still is.
    let old_root = root_key_bytes(root_path)?;
    prove_found_in_own_file(root_path, &old_root)?;
    let t = Instant::now();
    let report = ring
        .complete_shred(
            &**kms,
            &AuditInfo::new("quickstart", "complete the demo's shred"),
        )?
        .ok_or_else(|| fail("complete_shred found no pending shred", HINT_BUG))?;
    demo.timings.push(("complete_shred", t.elapsed()));
    print_shred(ring, &report)?;

    // ----- the attacker again -------------------------------------------------------------
    say!();
    say!("[attacker after the shred]");
    let after_shred = attack(backup_path, root_path, stored, &demo.patients)?;
    if after_shred.opened != 0 {
        return Err(fail(
            format!(
                "the old backup still opened {} {old_version} fields after the shred",
                after_shred.opened
            ),
            HINT_BUG,
        ));
    }
    say!(
        "  the same attack ({BACKUP_DIR}/{KEY_STORE_FILE} + today's {ROOT_KEY_FILE}) opened 0 of {} {old_version} fields:",
        after_shred.total
    );
    say!(
        "  refused {} (the backup's KEKs are wrapped under a root key that no longer exists)",
        listed(&after_shred.errors, |(kind, n)| format!("{n} with {kind}"))
    );
    ring.cache().clear();
    let (_, opened) = read_and_check(&mut demo.conn, ring, &demo.patients)?;
    say!(
        "  the current key store and {ROOT_KEY_FILE} still open all {opened} fields of the live rows ({new_version}): ok"
    );
    Ok(old_root)
}

/// What [`open_keys`] sets up.
struct Keys {
    kms: Arc<LocalKms>,
    ring: KeyRing,
    scope: KeyScope,
    first_version: KekVersion,
    root_path: PathBuf,
    store_path: PathBuf,
}

/// The root key file (a `LocalKms`), the key store file and the key ring over them in `ws`,
/// with the data and blind-index scopes (created, or reused from an earlier `--dir` run).
fn open_keys(ws: &Path) -> Result<Keys, Box<dyn Error>> {
    let root_path = ws.join(ROOT_KEY_FILE);
    let store_path = ws.join(KEY_STORE_FILE);
    let kms = Arc::new(if root_path.exists() {
        say!("  root key           {ROOT_KEY_FILE}: reused (LocalKms, single-host)");
        LocalKms::from_key_file(&root_path)?
    } else {
        if store_path.exists() {
            return Err(fail(
                format!(
                    "{} has a key store but no root key file: its KEKs cannot be unwrapped",
                    ws.display()
                ),
                "use an empty --dir, or put back the root key file that made this key store",
            ));
        }
        say!("  root key           {ROOT_KEY_FILE}: new, mode 0600 (LocalKms, single-host)");
        LocalKms::generate_key_file(&root_path)?
    });
    let store = FileKeyStore::open(&store_path)?;
    say!("  key store          {KEY_STORE_FILE}: wrapped KEKs and the audit log");
    say!("                     a separate file from the database on purpose: destroying a");
    say!("                     KEK version crypto-shreds old database backups only if the");
    say!("                     key store is kept apart from those backups");
    // The ring holds the same `LocalKms` that completes the shred below: when the shred
    // moves the root key file to a new epoch, this ring follows it.
    let ring = KeyRing::builder(kms.clone(), Arc::new(store))
        .cache_window(DEMO_CACHE_WINDOW)
        .build();
    say!(
        "  cache window       {} s: how long a running application may keep sealing under a",
        DEMO_CACHE_WINDOW.as_secs()
    );
    say!("                     rotated-away KEK version, so retire/destroy wait that long; short");
    say!("                     because this demo is one process (production: minutes, default 5)");
    let scope = KeyScope::new(SCOPE)?;
    // Which scopes exist, from the store's list of names: listing a scope's versions verifies
    // them against the store's integrity key, which a brand-new store does not have yet.
    let known = ring.store().scopes()?;
    if !known.contains(&scope) {
        ring.create_scope(&scope, &AuditInfo::new("quickstart", "demo setup"))?;
        say!("  key scope          {scope}: created with active KEK v1");
    } else {
        say!(
            "  key scope          {scope}: reused, active KEK {}",
            active_version(&ring, &scope)?
        );
    }
    let bidx_scope = KeyScope::new(BIDX_SCOPE)?;
    if !known.contains(&bidx_scope) {
        ring.create_scope(
            &bidx_scope,
            &AuditInfo::new("quickstart", "blind-index keys"),
        )?;
        say!(
            "  key scope          {bidx_scope}: created for the blind-index keys (never rotated here)"
        );
    } else {
        say!("  key scope          {bidx_scope}: reused, blind-index keys");
    }
    let first_version = active_version(&ring, &scope)?;
    Ok(Keys {
        kms,
        ring,
        scope,
        first_version,
        root_path,
        store_path,
    })
}

/// The demo's SQLite file in `ws` (the previous run's removed), in WAL mode without automatic
/// checkpoints, with the `patients` table.
fn open_database(ws: &Path) -> Result<(SqliteConnection, PathBuf), Box<dyn Error>> {
    let db_path = ws.join(DB_FILE);
    let replaced = remove_database_files(&db_path)?;
    let db_url = db_path.to_str().ok_or_else(|| {
        fail(
            "the folder path is not valid UTF-8",
            "use a UTF-8 --dir path",
        )
    })?;
    let mut conn = SqliteConnection::establish(db_url)?;
    let mode: JournalMode = diesel::sql_query("PRAGMA journal_mode=WAL").get_result(&mut conn)?;
    if mode.journal_mode != "wal" {
        return Err(fail(
            format!("SQLite refused WAL mode (got {:?})", mode.journal_mode),
            "use a folder on a local file system",
        ));
    }
    // No automatic checkpoints: every page this run writes stays in the -wal file until the
    // connection closes, so the scan below sees the WAL with all of it.
    conn.batch_execute("PRAGMA wal_autocheckpoint=0;")?;
    diesel::sql_query(
        "CREATE TABLE patients (
            id TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            address BLOB NOT NULL,
            email BLOB NOT NULL,
            email_bidx BLOB NOT NULL,
            gps BLOB NOT NULL,
            transcript BLOB
        );
        CREATE INDEX patients_email_bidx ON patients (email_bidx)",
    )
    .execute(&mut conn)?;
    say!(
        "  database           {DB_FILE}: SQLite through diesel, journal_mode=wal, no autocheckpoint{}",
        if replaced {
            " (replaced the previous run's)"
        } else {
            ""
        }
    );
    Ok((conn, db_path))
}

/// The model's sealed columns, and the padded length of every stored envelope (what an
/// attacker learns: the size class, never the value).
fn print_layout(rows: &[PatientRow]) -> Result<(), Box<dyn Error>> {
    for c in Patient::manifest().columns {
        let index = c
            .blind_index
            .map(|b| {
                format!(
                    ", blind index {} (scope {}, {} bytes, {})",
                    b.column, b.scope, b.bytes, b.normalizer
                )
            })
            .unwrap_or_default();
        say!(
            "  {:<11} {:<18} {}{}{index}",
            c.column,
            c.algorithm,
            c.encoding,
            if c.nullable { ", nullable" } else { "" }
        );
    }
    say!("  padded lengths (what an attacker learns: the size class, never the value)");
    for (n, row) in rows.iter().enumerate() {
        let mut cells = Vec::new();
        for column in Column::ALL {
            match column.sealed(row) {
                Some(env) => {
                    let info = envelope::inspect(env)
                        .map_err(|e| e.at(context(&row.id, column).location()))?;
                    cells.push(format!("{} {}", column.name(), info.padded_len));
                }
                None => cells.push(format!("{} NULL", column.name())),
            }
        }
        say!("    row {}: {}", n.saturating_add(1), cells.join(", "));
    }
    Ok(())
}

/// Re-wraps every envelope of `stored` onto the active KEK version (`KeyRing::rewrap`; the
/// data ciphertext stays) and updates the rows, in one transaction. Returns how many DEKs moved.
fn rewrap_all(
    conn: &mut SqliteConnection,
    ring: &KeyRing,
    stored: &[PatientRow],
) -> Result<usize, Box<dyn Error>> {
    conn.transaction::<usize, Box<dyn Error>, _>(|conn| {
        let mut count = 0usize;
        for mut row in stored.iter().cloned() {
            for column in Column::ALL {
                let ctx = context(&row.id, column);
                let new = match column.sealed(&row) {
                    Some(env) => ring.rewrap(&ctx, env)?,
                    None => None,
                };
                if let (Some(new), Some(slot)) = (new, column.sealed_mut(&mut row)) {
                    *slot = new;
                    count = count.saturating_add(1);
                }
            }
            diesel::update(patients::table.filter(patients::id.eq(&row.id)))
                .set(&row)
                .execute(conn)?;
        }
        Ok(count)
    })
}

/// Retires `old`: refused with `KeyChangeTooEarly` until every application's KEK cache can
/// have noticed the rotation, so it waits out the cache window and retires then.
fn retire_after_cache_window(
    ring: &KeyRing,
    scope: &KeyScope,
    old_version: KekVersion,
    audit: &AuditInfo,
) -> Result<(), Box<dyn Error>> {
    match ring.retire(scope, old_version, audit) {
        Err(leakless::Error::KeyChangeTooEarly { allowed_at, .. }) => {
            say!(
                "  retire {old_version} right after the rotation: refused with KeyChangeTooEarly (allowed from {allowed_at});"
            );
            say!(
                "  an application whose cache still holds {old_version} as active may seal under it until then"
            );
            say!(
                "  waiting {} until every cache can have noticed the rotation (allowed from {allowed_at})",
                seconds(time_until(allowed_at))
            );
            wait_until(allowed_at);
            ring.retire(scope, old_version, audit)?;
        }
        // Only when the re-wrap itself outlasted the window (a very slow machine).
        Ok(()) => say!(
            "  retire {old_version}: allowed at once, the re-wrap took longer than the cache window"
        ),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `items`, each shown by `show`, joined with commas.
fn listed<'a, C, T>(items: &'a C, show: impl Fn(T) -> String) -> String
where
    &'a C: IntoIterator<Item = T>,
{
    items.into_iter().map(show).collect::<Vec<_>>().join(", ")
}

/// What `complete_shred` did: the versions shredded, the records moved, the old root epoch's
/// fate and the copies it cannot reach, and every scope's shred state.
fn print_shred(ring: &KeyRing, report: &ShredReport) -> Result<(), Box<dyn Error>> {
    say!(
        "  KeyRing::complete_shred(&LocalKms): shredded {}; staged a new root key, moved {} KEK",
        listed(&report.shredded, |(s, v)| format!("{s} {v}")),
        report.records_moved
    );
    say!("  records onto it (the integrity key's included; no DEK and no row touched)");
    say!(
        "  old root epoch {}: {}",
        report.destroyed.epoch,
        match report.destroyed.status {
            leakless::kms::Destruction::Destroyed => "destroyed in the backend",
            leakless::kms::Destruction::AlreadyGone => "was already gone",
            leakless::kms::Destruction::Scheduled { .. } => "deletion scheduled, not destroyed yet",
        },
    );
    if report.destroyed.status.is_complete() {
        say!(
            "  ({ROOT_KEY_FILE}'s old content overwritten with zeros, then replaced by the new key)"
        );
    }
    say!("  copies may remain (outside what the demo can erase):");
    for line in wrap_text(&report.destroyed.copies_may_remain, 86) {
        say!("    {line}");
    }
    let states: Vec<String> = ring
        .shred_states()?
        .iter()
        .map(|st| match st.status {
            ShredStatus::Complete { at } => format!("{} {} complete at {at}", st.scope, st.version),
            ShredStatus::Scheduled { at } => {
                format!("{} {} scheduled at {at}", st.scope, st.version)
            }
            ShredStatus::Pending { destroyed_at } => format!(
                "{} {} PENDING (destroyed at {destroyed_at})",
                st.scope, st.version
            ),
        })
        .collect();
    say!("  shred states: {}", states.join("; "));
    if !report.destroyed.status.is_complete() {
        return Err(fail("the local root epoch was not destroyed", HINT_BUG));
    }
    Ok(())
}

/// The key store's integrity (audit chain, authenticated records), the scope's versions and
/// audit log, and the KMS calls so far.
fn print_key_store(ring: &KeyRing, scope: &KeyScope) -> Result<(), Box<dyn Error>> {
    let verified = ring.verify_store()?;
    say!(
        "  verify_store: audit chain of {} entries verified unbroken{}, {} key records authenticated",
        verified.audit_entries,
        if verified.legacy_audit_entries > 0 {
            format!(
                " (+{} unauthenticated legacy entries)",
                verified.legacy_audit_entries
            )
        } else {
            String::new()
        },
        verified.records
    );
    let versions = listed(&ring.versions(scope)?, |r| {
        format!("{} {}", r.version, r.state.name())
    });
    say!("  key versions: {versions}");
    say!(
        "  audit log of scope {scope}: {} entries, each with who, when and why",
        ring.audit_log(Some(scope))?.len()
    );
    let calls = ring.kms_calls();
    say!(
        "  KMS calls: {} wraps, {} unwraps (they grow with KEK versions, not with rows)",
        calls.wraps,
        calls.unwraps
    );
    Ok(())
}

/// The leak scan, through the leak-test harness (`leakless-leaktest`): every sealed value a
/// canary, today's and the destroyed root key too, every unsealed name a positive control.
/// First the harness's self-test (every canary planted into a synthetic buffer in each of its
/// encodings must be found), then the files: the database files with the connection open and
/// after it is closed (the names must be found there: the scan reads the data), the key-store
/// files and their old backup (the audit text of the rotation must be found there), and the
/// root key file, for the destroyed root key only (today's key is its control). The report
/// names canaries by id, never by value.
fn leak_scan(
    conn: SqliteConnection,
    ws: &Path,
    db_path: &Path,
    root_path: &Path,
    old_root: &[u8],
    people: &[DemoPatient],
) -> Result<(), Box<dyn Error>> {
    let today = root_key_bytes(root_path)?;
    let mut set = demo_data::canaries(people.iter().map(DemoPatient::scan_values))?;
    set.push(Canary::real_bytes(ROOT_KEY, &today))?;
    set.push(Canary::real_bytes(DESTROYED_ROOT_KEY, old_root))?;
    set.push(Canary::real_text(KEY_STORE_CONTROL, ROTATION_REASON).as_control())?;
    let mut check = LeakCheck::new(set)?;
    let missed = self_test(check.scanner());
    if !missed.is_empty() {
        return Err(fail(
            format!("positive control failed: the scanner missed {missed:?}"),
            "the leak-test harness is broken, so a clean scan would mean nothing; please report it",
        ));
    }
    say!(
        "  {POSITIVE_CONTROL_PASSED}: {} values, {} needles; each value planted into a synthetic",
        check.scanner().canaries().len(),
        check.scanner().needle_count()
    );
    say!(
        "  buffer in each of its encodings (raw, UTF-16, hex, base64, JSON, and for the GPS points"
    );
    say!("  decimal pairs and f64/f32 bytes; escaped) was found");

    let names = demo_data::name_controls(people.len());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // With the connection open the -wal file holds every page of this run; SQLite checkpoints
    // it into the database file on close.
    let files = scan(
        &mut check,
        "database (connection open)",
        database_files(db_path),
        &names,
    );
    say!("  database (connection open): {files}");
    drop(conn);
    let files = scan(
        &mut check,
        "database (closed)",
        database_files(db_path),
        &names,
    );
    say!("  database (closed): {files}");
    let mut store_files = vec![ws.join(format!("{ROOT_KEY_FILE}.next"))];
    for store in [
        ws.join(KEY_STORE_FILE),
        ws.join(BACKUP_DIR).join(KEY_STORE_FILE),
    ] {
        let mut lock = store.clone().into_os_string();
        lock.push(".lock");
        store_files.push(store);
        store_files.push(PathBuf::from(lock));
    }
    let files = scan(
        &mut check,
        "key store and its backup",
        store_files,
        &[KEY_STORE_CONTROL],
    );
    say!("  key store and its backup: {files}");
    let report = check.report();

    let mut own = CanarySet::new();
    own.push(Canary::real_bytes(DESTROYED_ROOT_KEY, old_root))?;
    own.push(Canary::real_bytes(ROOT_KEY, &today).as_control())?;
    let mut root_check = LeakCheck::new(own)?;
    let _ = scan(
        &mut root_check,
        ROOT_KEY_FILE,
        vec![root_path.to_owned()],
        &[ROOT_KEY],
    );
    let root_report = root_check.report();

    for line in report.human().lines().chain(root_report.human().lines()) {
        say!("  {line}");
    }
    if report.status() != Status::Clean || root_report.status() != Status::Clean {
        return Err(fail(
            "the leak scan is not clean (report above: canary ids, never values)",
            "do not use this build; report it privately (see the Security section of the README)",
        ));
    }
    say!("  result: {NO_PLAINTEXT_FOUND} in any file, and every positive control was found");
    Ok(())
}

/// Scans those of `files` that exist and are not empty (the key store's lock files are) as
/// `channel`, where every control of `controls` must be found; returns the file names scanned.
fn scan(check: &mut LeakCheck, channel: &str, files: Vec<PathBuf>, controls: &[&str]) -> String {
    for id in controls {
        check.expect_control(channel, id);
    }
    let mut names = Vec::new();
    for f in files
        .iter()
        .filter(|f| fs::metadata(f).is_ok_and(|m| m.len() > 0))
    {
        check.scan_path(channel, f);
        names.push(
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.join(", ")
}

/// The raw bytes of the root key file's key (it holds them as hex, or raw), read only for the
/// leak scan; zeroized on drop.
fn root_key_bytes(root_path: &Path) -> Result<Zeroizing<Vec<u8>>, Box<dyn Error>> {
    let content = Zeroizing::new(fs::read(root_path)?);
    let text = std::str::from_utf8(&content)
        .map(str::trim)
        .unwrap_or_default();
    Ok(match hex::decode(text) {
        Ok(bytes) if bytes.len() == 32 => Zeroizing::new(bytes),
        _ => Zeroizing::new(content.to_vec()),
    })
}

/// The positive control of the destroyed root key: before the shred, the harness finds that
/// key in its own file.
fn prove_found_in_own_file(root_path: &Path, key: &[u8]) -> Result<(), Box<dyn Error>> {
    let mut set = CanarySet::new();
    set.push(Canary::real_bytes(ROOT_KEY, key).as_control())?;
    let mut check = LeakCheck::new(set)?;
    check.expect_control(ROOT_KEY_FILE, ROOT_KEY);
    check.scan_path(ROOT_KEY_FILE, root_path);
    let report = check.report();
    if report
        .channel(ROOT_KEY_FILE)
        .is_none_or(|c| c.control_findings.is_empty() || !c.errors.is_empty())
    {
        return Err(fail(
            "control failed: the leak scan does not find the root key in its own file",
            HINT_BUG,
        ));
    }
    Ok(())
}

/// Opens `envelope` and expects the refusal `expected` accepts (a `state` KEK version must
/// not open it); anything else is a bug.
fn expect_refusal(
    ring: &KeyRing,
    ctx: &FieldContext<'_>,
    envelope: &[u8],
    state: &str,
    expected: impl Fn(&leakless::Error) -> bool,
) -> Result<(), Box<dyn Error>> {
    match ring.open(ctx, envelope) {
        Err(e) if expected(&e) => Ok(()),
        Err(e) => Err(fail(
            format!("a {state} version failed in an unexpected way: {e}"),
            HINT_BUG,
        )),
        Ok(_) => Err(fail(
            format!("a {state} KEK version still opened a value"),
            HINT_BUG,
        )),
    }
}

fn create_private_dir(path: &Path) -> Result<(), Box<dyn Error>> {
    if path.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)?;
    Ok(())
}

/// Removes the demo database and its side files from an earlier run. Returns whether any was
/// there.
fn remove_database_files(db_path: &Path) -> Result<bool, Box<dyn Error>> {
    let mut any = false;
    for path in database_files(db_path) {
        if path.exists() {
            fs::remove_file(&path)?;
            any = true;
        }
    }
    Ok(any)
}

/// The database file and every side file SQLite may make next to it.
fn database_files(db_path: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| {
            let mut name = db_path.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        })
        .collect()
}

fn active_version(ring: &KeyRing, scope: &KeyScope) -> Result<KekVersion, Box<dyn Error>> {
    ring.versions(scope)?
        .into_iter()
        .find(|r| r.state == leakless::KekState::Active)
        .map(|r| r.version)
        .ok_or_else(|| {
            fail(
                format!("key scope {scope} has no active KEK version"),
                "use an empty --dir",
            )
        })
}

/// How many envelopes a stored row holds (a NULL transcript holds none).
fn sealed_count(row: &PatientRow) -> usize {
    Column::ALL
        .iter()
        .filter(|c| c.sealed(row).is_some())
        .count()
}

/// Loads every row with `PatientRow::as_select()`, opens them all with `Patient::open_rows` and
/// checks each equals what was written. Returns the stored rows and the number of sealed
/// fields opened.
fn read_and_check(
    conn: &mut SqliteConnection,
    ring: &KeyRing,
    expected: &[Patient],
) -> Result<(Vec<PatientRow>, usize), Box<dyn Error>> {
    let rows: Vec<PatientRow> = patients::table
        .select(PatientRow::as_select())
        .order(patients::id)
        .load(conn)?;
    if rows.len() != expected.len() {
        return Err(fail(
            format!(
                "{} rows came back, {} were written",
                rows.len(),
                expected.len()
            ),
            HINT_BUG,
        ));
    }
    let opened: usize = rows.iter().map(sealed_count).sum();
    let loaded = Patient::open_rows(rows.clone(), ring)?;
    for p in &loaded {
        let want = expected
            .iter()
            .find(|e| e.id == p.id)
            .ok_or_else(|| fail("a row came back with an unknown id", HINT_BUG))?;
        if p != want {
            return Err(fail(
                "an opened row differs from what was written",
                HINT_BUG,
            ));
        }
    }
    Ok((rows, opened))
}

/// Prints how many sealed fields each KEK version and each AEAD holds, read from the envelopes'
/// public headers (no key needed, as the migrator's `status` will do).
fn print_census(title: &str, rows: &[PatientRow]) -> Result<(), Box<dyn Error>> {
    let mut by_version: BTreeMap<KekVersion, usize> = BTreeMap::new();
    let mut by_algorithm: BTreeMap<&'static str, usize> = BTreeMap::new();
    for row in rows {
        for column in Column::ALL {
            let Some(env) = column.sealed(row) else {
                continue;
            };
            let info =
                envelope::inspect(env).map_err(|e| e.at(context(&row.id, column).location()))?;
            let n = by_version.entry(info.kek_version).or_default();
            *n = n.saturating_add(1);
            let n = by_algorithm.entry(info.algorithm.name()).or_default();
            *n = n.saturating_add(1);
        }
    }
    say!(
        "{title} {}  ({})",
        listed(&by_version, |(v, n)| format!("{v}: {n}")),
        listed(&by_algorithm, |(a, n)| format!("{a}: {n}"))
    );
    Ok(())
}

/// How many envelopes these stored rows hold.
fn count_sealed(rows: &[PatientRow]) -> usize {
    rows.iter().map(sealed_count).sum()
}

/// What the attacker got out of an old key-store backup.
struct Attack {
    /// Sealed fields of the old rows that opened.
    opened: usize,
    /// Sealed fields tried.
    total: usize,
    /// How many failed, by error kind (the variant's name, never its message).
    errors: BTreeMap<String, usize>,
    /// Whether the opened rows equal the originals (only checked when every field opened).
    rows_equal: bool,
}

/// The attacker: a fresh key ring over the key-store backup at `backup` with the root key
/// file as it is *today*, trying every envelope of `old_rows` (the database as it was before
/// the re-wrap, i.e. an old database backup). When everything opens, also opens the rows
/// through the model and compares them with the originals, so a success is a real read.
fn attack(
    backup: &Path,
    root_path: &Path,
    old_rows: &[PatientRow],
    expected: &[Patient],
) -> Result<Attack, Box<dyn Error>> {
    let kms = LocalKms::from_key_file(root_path)?;
    let store = FileKeyStore::open(backup)?;
    let ring = KeyRing::builder(Arc::new(kms), Arc::new(store)).build();
    let mut result = Attack {
        opened: 0,
        total: 0,
        errors: BTreeMap::new(),
        rows_equal: false,
    };
    for row in old_rows {
        for column in Column::ALL {
            let Some(env) = column.sealed(row) else {
                continue;
            };
            result.total = result.total.saturating_add(1);
            match ring.open(&context(&row.id, column), env) {
                // The plaintext is dropped (and zeroized) at once.
                Ok(_) => result.opened = result.opened.saturating_add(1),
                Err(e) => {
                    let n = result.errors.entry(error_kind(&e)).or_default();
                    *n = n.saturating_add(1);
                }
            }
        }
    }
    if result.opened == result.total {
        let opened = Patient::open_rows(old_rows.to_vec(), &ring)?;
        result.rows_equal = opened.len() == expected.len()
            && opened.iter().all(|p| expected.iter().any(|e| e == p));
    }
    Ok(result)
}

/// The name of an error's variant (`Kms`, `KeyDestroyed`, ...), without its message.
fn error_kind(e: &leakless::Error) -> String {
    format!("{e:?}")
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `text` cut at spaces into lines of at most `width` characters (longer words stay whole).
fn wrap_text(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len().saturating_add(word.len()) >= width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn ms(d: Duration) -> String {
    let micros = d.as_micros();
    format!("{}.{} ms", micros / 1000, (micros % 1000) / 100)
}
