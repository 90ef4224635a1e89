//! clinic: quickstart's sealed `Patient` model on PostgreSQL, with its table made by a
//! diesel_migrations set (`examples/migrations/`, embedded in the binary).
//!
//! It creates a fresh database `leakless_clinic_<random>` on the server you name, runs the
//! migrations, keeps the KEKs in leakless's SQL key store in that same database (wrapped by a
//! root key in a temporary file: the root key never enters the database), inserts one patient
//! and bulk-inserts the others through diesel, loads and opens every row, finds one by blind
//! index, updates one through a changeset, rotates the KEK and re-wraps every stored envelope
//! in one transaction, retires the old version, and finally reads every table of the database
//! the way a thief would and searches it for every plaintext (after proving that the same
//! search finds the unsealed display names). It drops the database at the end unless `--keep`.
//!
//! Retiring waits for the cache window: until every running application's KEK cache can have
//! noticed the rotation, `retire` refuses with `KeyChangeTooEarly` (a warm cache could still
//! seal under the old version). The example is one process, so its key ring records a
//! 2-second window (`KeyRingBuilder::cache_window`); it shows the refused early retire, waits
//! about three seconds, and retires. Production rings keep the default (the KEK cache's
//! 5 minutes) and retire later, from the migrator or a scheduler.
//!
//! With `--adopt` it shows the other start instead: a `patients` table that a legacy
//! application filled with plaintext (text columns, a GPS point as two numbers) is brought
//! under leakless through the adoption stages (`examples/src/clinic/adopt.rs`), each stage's
//! build reading what the one before wrote, then its legacy columns are dropped; the table
//! dump holds the plaintext before the drop (the positive control) and none after it.
//!
//! ```text
//! cargo run -p leakless-examples --features postgres --bin clinic -- \
//!     [--database-url postgres://USER@HOST:PORT/DB] [--keep] [--export-manifest PATH] [--adopt]
//! ```
//!
//! The server URL comes from `--database-url` or `LEAKLESS_PG_URL`; it is printed with its
//! password masked. The output holds counts, ids, key versions and timings, never a plaintext.
//! `--export-manifest PATH` writes the schema manifest (sealed tables and columns) as JSON for
//! the migrator and the leak tests.

use std::error::Error;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;

use leakless::kms::LocalKms;
use leakless::manifest::SchemaManifest;
use leakless::redact::redact_url;
use leakless::store::sql::SqlKeyStore;
use leakless::{AuditInfo, FieldContext, Json, KeyRing, KeyScope, RowId, Sealed};
use leakless_examples::clinic::{
    self, BIDX_SCOPE, FreshDatabase, Patient, PatientRow, SCOPE, adopt, schema::patients,
};
use leakless_examples::demo_data;
use leakless_examples::lifecycle::{DEMO_CACHE_WINDOW, seconds, time_until, wait_until};
use leakless_examples::{NO_PLAINTEXT_FOUND, POSITIVE_CONTROL_PASSED};
use leakless_leaktest::{LeakCheck, Status};

/// `writeln!` to stdout, returning the error instead of panicking like `println!`.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

const USAGE: &str = "usage: clinic [--database-url URL] [--keep] [--export-manifest PATH] [--adopt]\n\
    The server URL comes from --database-url or LEAKLESS_PG_URL, e.g. \
    postgres://postgres@127.0.0.1:5432/postgres";
const GRACE: Duration = Duration::from_secs(3600);

/// What the command line asked for.
struct Args {
    url: Option<String>,
    keep: bool,
    adopt: bool,
    export_manifest: Option<PathBuf>,
    help: bool,
}

/// A usage error: the message and the usage text.
fn usage(message: &str) -> Box<dyn Error> {
    format!("{message}\n{USAGE}").into()
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        url: None,
        keep: false,
        adopt: false,
        export_manifest: None,
        help: false,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--database-url") => {
                let v = it
                    .next()
                    .ok_or_else(|| usage("--database-url needs a URL"))?;
                let v = v
                    .into_string()
                    .map_err(|_| usage("--database-url must be UTF-8"))?;
                args.url = Some(v);
            }
            Some("--export-manifest") => {
                let v = it
                    .next()
                    .ok_or_else(|| usage("--export-manifest needs a file path"))?;
                args.export_manifest = Some(PathBuf::from(v));
            }
            Some("--keep") => args.keep = true,
            Some("--adopt") => args.adopt = true,
            Some("-h" | "--help") => args.help = true,
            // Not echoed: if someone put a secret on the command line, the output will not
            // repeat it.
            _ => return Err(usage("unknown argument")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors here name what failed; none carries a plaintext or an unmasked URL.
            let _ = writeln!(std::io::stderr(), "clinic: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    if args.help {
        say!("{USAGE}");
        return Ok(());
    }
    let url = match args.url.clone() {
        Some(u) => u,
        None => match std::env::var("LEAKLESS_PG_URL") {
            Ok(u) if !u.trim().is_empty() => u.trim().to_owned(),
            _ => {
                return Err(usage(
                    "no PostgreSQL server: set LEAKLESS_PG_URL or pass --database-url",
                ));
            }
        },
    };
    let started = Instant::now();

    // ----- a fresh database ------------------------------------------------------------------
    say!("[database]");
    say!("  server             {}", redact_url(&url));
    let mut db = FreshDatabase::create(&url)?;
    if args.keep {
        db.keep();
    }
    say!("  created database   {}", db.name());
    let mut conn = PgConnection::establish(db.url())
        .map_err(|e| format!("connect to {}: {e}", redact_url(db.url())))?;
    if args.adopt {
        // The legacy application's table instead of the migrations.
        conn.batch_execute(adopt::LEGACY_DDL)?;
        say!("  legacy table       patients: plaintext columns, GPS as lat/lon numbers");
    } else {
        let applied = clinic::run_migrations(&mut conn).map_err(|e| format!("migrations: {e}"))?;
        say!(
            "  migrations         {} applied: {}",
            applied.len(),
            applied.join(", ")
        );
    }

    // ----- keys: a root key file -> KMS, KEK records in the database ------------------------
    say!("[keys]");
    let key_dir = tempfile::tempdir()?;
    let kms = LocalKms::generate_key_file(key_dir.path().join("root.key"))?;
    let store = SqlKeyStore::postgres(db.url())?;
    store.create_schema()?;
    // A one-process demo: a short cache window, so retire can follow the rotation within
    // seconds. Production keeps the default (the KEK cache's 5 minutes).
    let ring = KeyRing::builder(Arc::new(kms), Arc::new(store))
        .cache_window(DEMO_CACHE_WINDOW)
        .build();
    let setup = AuditInfo::new("clinic", "example setup");
    let scope = KeyScope::new(SCOPE)?;
    let v1 = ring.create_scope(&scope, &setup)?;
    ring.create_scope(&KeyScope::new(BIDX_SCOPE)?, &setup)?;
    say!("  root key           a temporary file, outside the database");
    say!("  key scope          {SCOPE}: {v1} active (KEKs wrapped in the SQL key store)");
    say!("  key scope          {BIDX_SCOPE}: blind-index keys");
    say!(
        "  cache window       {} s (one process; production keeps the default 5 min, and retire waits for it)",
        DEMO_CACHE_WINDOW.as_secs()
    );
    if args.adopt {
        adopt_existing_table(&mut conn, &ring)?;
        return finish(conn, db, &args, started);
    }

    // ----- insert: one, then the rest in one statement ---------------------------------------
    say!("[insert]");
    let people: Vec<Patient> = demo_data::patients()
        .iter()
        .map(Patient::from_demo)
        .collect();
    let (first, rest) = people.split_first().ok_or("no demo patients")?;
    diesel::insert_into(patients::table)
        .values(first.seal_row(&ring)?)
        .execute(&mut conn)?;
    let n = diesel::insert_into(patients::table)
        .values(Patient::seal_rows(rest, &ring)?)
        .execute(&mut conn)?;
    say!("  inserted           1 row, then {n} rows in one statement");

    // ----- load and open -------------------------------------------------------------------
    say!("[load]");
    let opened = load_all(&mut conn, &ring)?;
    let matches = people.iter().all(|p| opened.contains(p));
    if opened.len() != people.len() || !matches {
        return Err("the loaded patients differ from the inserted ones".into());
    }
    say!(
        "  opened             {} rows; every field equals what was inserted",
        opened.len()
    );

    // ----- look up by blind index ------------------------------------------------------------
    say!("[look-up]");
    let wanted = people.get(2).ok_or("too few demo patients")?;
    let query = format!("  {}  ", wanted.email.to_uppercase());
    let tokens = Patient::email_lookup(&ring, &query)?;
    let found = Patient::open_rows(
        patients::table
            .filter(patients::email_bidx.eq_any(tokens))
            .select(PatientRow::as_select())
            .load(&mut conn)?,
        &ring,
    )?;
    let [hit] = found.as_slice() else {
        return Err(format!("blind-index look-up found {} rows, not 1", found.len()).into());
    };
    if hit != wanted {
        return Err("blind-index look-up found the wrong patient".into());
    }
    say!(
        "  e-mail look-up     1 row: id {} (case and spaces ignored)",
        hit.id
    );
    say!("  its Debug          {hit:?}");

    // ----- update through a changeset ----------------------------------------------------------
    say!("[update]");
    let mut moved = wanted.clone();
    moved.address = "1 Relocation Close, Newtown NT1 1AA".into();
    moved.transcript = None;
    diesel::update(patients::table.find(&moved.id))
        .set(moved.seal_row(&ring)?)
        .execute(&mut conn)?;
    let back = load_one(&mut conn, &ring, &moved.id)?;
    if back != moved {
        return Err("the updated patient did not read back".into());
    }
    say!("  changeset          new address sealed, transcript set to NULL; read back equal");

    // ----- rotate the KEK and re-wrap every row ------------------------------------------------
    say!("[rotate]");
    let audit = AuditInfo::new("clinic", "scheduled KEK rotation");
    let v2 = ring.rotate(&scope, GRACE, &audit)?;
    let rewrapped = conn.transaction::<usize, Box<dyn Error>, _>(|conn| {
        let rows: Vec<PatientRow> = patients::table.select(PatientRow::as_select()).load(conn)?;
        let mut count = 0;
        for mut row in rows {
            let id = row.id.clone();
            let rewrap = |column: &str, env: &mut Vec<u8>, count: &mut usize| {
                let ctx = FieldContext::new("patients", column, RowId::Text(&id), 1);
                if let Some(new) = ring.rewrap(&ctx, env)? {
                    *env = new;
                    *count += 1;
                }
                Ok::<(), leakless::Error>(())
            };
            rewrap("address", &mut row.address, &mut count)?;
            rewrap("email", &mut row.email, &mut count)?;
            rewrap("gps", &mut row.gps, &mut count)?;
            if let Some(t) = row.transcript.as_mut() {
                rewrap("transcript", t, &mut count)?;
            }
            diesel::update(patients::table.find(&row.id))
                .set(&row)
                .execute(conn)?;
        }
        Ok(count)
    })?;
    say!("  rotated            {v2} active; re-wrapped {rewrapped} DEKs in one transaction");
    match ring.retire(&scope, v1, &audit) {
        Err(leakless::Error::KeyChangeTooEarly { allowed_at, .. }) => {
            say!(
                "  retire {v1} now     refused: KeyChangeTooEarly (a warm cache may still seal under {v1})"
            );
            say!(
                "  waiting {} until every cache can have noticed the rotation (allowed from {allowed_at})",
                seconds(time_until(allowed_at))
            );
            wait_until(allowed_at);
            ring.retire(&scope, v1, &audit)?;
        }
        // Only when the re-wrap itself took longer than the window.
        Ok(()) => say!("  retire {v1} now     allowed: the cache window had passed already"),
        Err(e) => return Err(e.into()),
    }
    ring.cache().clear();
    let after = load_all(&mut conn, &ring)?;
    say!(
        "  retired            {v1}; all {} rows still open under {v2}",
        after.len()
    );

    // ----- what a thief with the database reads ------------------------------------------------
    say!("[leak scan]");
    let dump = clinic::dump_tables(&mut conn)?;
    let mut check = LeakCheck::new(demo_data::canaries(
        people.iter().chain([&moved]).map(scan_values),
    )?)?;
    for id in demo_data::name_controls(people.len()) {
        check.expect_control("tables", &id);
    }
    check.scan_bytes("tables", "every table as text", dump.as_bytes());
    let report = check.report();
    if report.status() != Status::Clean {
        return Err(format!("the leak scan is not clean:\n{}", report.human()).into());
    }
    say!("  {POSITIVE_CONTROL_PASSED}: the search finds the unsealed names in the table dump");
    say!(
        "  {NO_PLAINTEXT_FOUND}: {} values ({} needles) in {} bytes of every table",
        check.scanner().canaries().len(),
        check.scanner().needle_count(),
        dump.len()
    );

    finish(conn, db, &args, started)
}

/// Writes the manifest if asked, and drops the database unless `--keep`.
fn finish(
    conn: PgConnection,
    db: FreshDatabase,
    args: &Args,
    started: Instant,
) -> Result<(), Box<dyn Error>> {
    if let Some(path) = &args.export_manifest {
        if args.adopt {
            SchemaManifest::from_tables([adopt::Stage3::manifest()]).write_file(path)?;
        } else {
            clinic::manifest().write_file(path)?;
        }
        say!("[manifest]");
        say!("  written            {}", path.display());
    }
    drop(conn);
    say!("[done]");
    if args.keep {
        say!(
            "  kept database      {} (its root key is gone with the temporary folder)",
            db.name()
        );
    } else {
        let name = db.name().to_owned();
        db.drop_now()?;
        say!("  dropped database   {name}");
    }
    say!("  total              {} ms", started.elapsed().as_millis());
    Ok(())
}

/// `--adopt`: the legacy table brought under leakless through the adoption stages while the
/// older build could keep running, then the legacy columns dropped; a leak scan before the
/// drop (the positive control: the legacy columns hold the plaintext) and after it.
fn adopt_existing_table(conn: &mut PgConnection, ring: &KeyRing) -> Result<(), Box<dyn Error>> {
    use adopt::schema::patients as legacy;

    say!("[legacy]");
    let demo = demo_data::patients();
    let people: Vec<(String, &demo_data::DemoPatient)> =
        demo.iter().map(|p| (clinic::random_uuid(), p)).collect();
    let n = adopt::fill_legacy(conn, &people)?;
    say!("  inserted           {n} rows of plaintext, as the legacy application did");
    conn.batch_execute(adopt::ADD_SEALED_COLUMNS)?;
    say!("  DBA                sealed columns added beside the legacy ones, which became nullable");
    say!("[stage 1: read_plaintext]");
    let opened = adopt::Stage1::load_all(conn, ring)?;
    let all_back = opened.len() == people.len()
        && people
            .iter()
            .all(|(id, p)| opened.iter().any(|o| &o.id == id && o.same_as(p)));
    if !all_back {
        return Err("stage 1 did not read the legacy rows back".into());
    }
    say!(
        "  opened             {} rows from their legacy columns (no envelope yet)",
        opened.len()
    );
    let sealed = adopt::backfill(conn, ring)?;
    say!(
        "  backfill           {sealed} rows sealed through the stage-1 model, legacy columns kept"
    );
    say!("                     (production: leakless-migrate adopt, online, resumable, verified)");

    say!("[stage 2: write_sealed_only]");
    let newcomer = adopt::Stage2 {
        id: clinic::random_uuid(),
        name: "Nova Newcomer".into(),
        address: "9 Adoption Row, Newtown NT9 9AA".into(),
        email: "nova.newcomer@example.test".into(),
        gps: Json(clinic::GeoPoint {
            lat: 52.2053,
            lon: 0.1218,
        }),
        transcript: None,
    };
    diesel::insert_into(legacy::table)
        .values(newcomer.seal_row(ring)?)
        .execute(conn)?;
    let (address, lat): (Option<String>, Option<f64>) = legacy::table
        .find(&newcomer.id)
        .select((legacy::address, legacy::lat))
        .first(conn)?;
    if address.is_some() || lat.is_some() {
        return Err("stage 2 wrote the legacy columns".into());
    }
    say!("  inserted           1 row: envelopes only, its legacy columns NULL");

    say!("[stage 3: sealed_only, then the build without adopt(...)]");
    let stage3 = adopt::Stage3::load_all(conn, ring)?;
    let adopted = adopt::Adopted::load_all(conn, ring)?;
    if stage3.len() != people.len() + 1 || adopted.len() != stage3.len() {
        return Err("stage 3 or the adopted build did not read every row".into());
    }
    for (id, p) in &people {
        let ok = stage3.iter().any(|s| &s.id == id && s.same_as(p))
            && adopted.iter().any(|a| &a.id == id && a.same_as(p));
        if !ok {
            return Err(format!("row {id} does not read back as it was").into());
        }
    }
    let wanted = people.get(1).ok_or("too few demo patients")?;
    let tokens = adopt::Adopted::email_lookup(ring, &wanted.1.email.to_uppercase())?;
    let found: Vec<String> = adopt::adopted_schema::patients::table
        .filter(adopt::adopted_schema::patients::email_bidx.eq_any(tokens))
        .select(adopt::adopted_schema::patients::id)
        .load(conn)?;
    if found != [wanted.0.clone()] {
        return Err(format!(
            "blind-index look-up found {} rows, not the one",
            found.len()
        )
        .into());
    }
    say!(
        "  opened             {} rows through stage 3 and through the build without adopt(...)",
        stage3.len()
    );
    say!("  e-mail look-up     1 row through the tokens the stages wrote");

    say!("[drop the legacy columns]");
    let mut check = LeakCheck::new(demo_data::canaries(
        people.iter().map(|(_, p)| p.scan_values()),
    )?)?;
    let names = demo_data::name_controls(people.len());
    for id in &names {
        check.expect_control("before the drop", id);
    }
    check.scan_bytes(
        "before the drop",
        "every table as text",
        clinic::dump_tables(conn)?.as_bytes(),
    );
    let before = check.report();
    let hits = before.leaks().count();
    if hits == 0 || before.exit_code() != 1 {
        return Err(format!(
            "positive control failed: the legacy columns' plaintext was not found:\n{}",
            before.human()
        )
        .into());
    }
    say!(
        "  {POSITIVE_CONTROL_PASSED}: before the drop the search finds {hits} plaintext hits in the legacy columns"
    );
    conn.batch_execute(adopt::DROP_LEGACY_COLUMNS)?;
    let after = adopt::Adopted::load_all(conn, ring)?;
    if after.len() != stage3.len() {
        return Err("the adopted build lost rows with the drop".into());
    }
    let dump = clinic::dump_tables(conn)?;
    for id in &names {
        check.expect_control("after the drop", id);
    }
    check.scan_bytes("after the drop", "every table as text", dump.as_bytes());
    let report = check.report();
    if report
        .channel("after the drop")
        .is_none_or(|c| c.status() != Status::Clean)
    {
        return Err(format!("plaintext left after the drop:\n{}", report.human()).into());
    }
    say!(
        "  {NO_PLAINTEXT_FOUND}: {} values in {} bytes of every table; {} rows still open",
        check.scanner().canaries().len(),
        dump.len(),
        after.len()
    );
    say!("  residue            dead tuples, WAL and logs still hold the old plaintext: run");
    say!(
        "                     leakless-migrate purge-residue, expire older backups (docs/adoption.md)"
    );
    Ok(())
}

/// A patient's values for the leak scan.
fn scan_values(p: &Patient) -> demo_data::ScanValues<'_> {
    demo_data::ScanValues {
        name: &p.name,
        address: &p.address,
        email: &p.email,
        transcript: p.transcript.as_deref(),
        gps: (p.gps.0.lat, p.gps.0.lon),
    }
}

fn load_all(conn: &mut PgConnection, ring: &KeyRing) -> Result<Vec<Patient>, Box<dyn Error>> {
    let rows = patients::table
        .order(patients::id)
        .select(PatientRow::as_select())
        .load(conn)?;
    Ok(Patient::open_rows(rows, ring)?)
}

fn load_one(conn: &mut PgConnection, ring: &KeyRing, id: &str) -> Result<Patient, Box<dyn Error>> {
    let row = patients::table
        .find(id)
        .select(PatientRow::as_select())
        .first(conn)?;
    Ok(Patient::open_row(row, ring)?)
}
