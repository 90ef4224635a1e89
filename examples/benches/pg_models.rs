//! The sealed model on PostgreSQL against three baselines, measured in the same run: the same
//! model stored in plaintext through diesel (what users feel), opaque random bytes of exactly
//! the sizes the sealed model stores, in a table of the same columns, with no crypto (so
//! sealed/bytes is what leakless itself costs, apart from storing bigger values), and the peer
//! a user would pick instead, PostgreSQL's `pgcrypto` (`pgp_sym_encrypt` / `pgp_sym_decrypt` in
//! SQL, an `hmac()` column for look-ups).
//!
//! Four operations, each including the conversion between model and row (sealing and opening
//! for leakless, JSON of the GPS point for all three): a single-row insert (autocommit), a bulk
//! insert of 1,000 rows in one statement, a load of 10,000 rows (once with diesel's default
//! `load`, once through its row-by-row mode, `PgRowByRowLoadingMode`, without pgcrypto), and an
//! equality look-up by e-mail (blind index / plain index / HMAC index; the bytes baseline has no
//! look-up). The
//! variants run interleaved, round by round, so machine noise hits all of them; the table
//! prints medians and ratios against the plaintext and bytes baselines, with the targets of
//! docs/performance.md. The bytes baseline's rows are made before its timer starts (random
//! bytes of the lengths a sealing of the same models gives), and its load stops at the rows.
//!
//! ```text
//! cargo bench -p leakless-examples --features postgres --bench pg_models
//! ```
//!
//! It runs on the server of `LEAKLESS_PG_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`)
//! when set, else on a throwaway one (`leakless-testkit`).
//!
//! `LEAKLESS_BENCH_ROUNDS=N` scales the number of rounds (default 1 = 300 single inserts,
//! 9 bulk inserts, 7 loads and 300 look-ups per variant); `LEAKLESS_BENCH_ONLY=load` (or
//! `single`, `bulk`, `lookup`, comma-separated) runs the others once only, for profiling. It
//! makes and drops its own database.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs,
    reason = "a benchmark binary: prints its table, stops loudly on a broken set-up"
)]

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::pg::{PgConnection, PgRowByRowLoadingMode};
use diesel::prelude::*;
use diesel::sql_types::{Array, Nullable, Text};

use leakless::{AuditInfo, Json, KeyRing, KeyScope, Sealed};
use leakless_examples::clinic::{
    self, BIDX_SCOPE, FreshDatabase, GeoPoint, Patient, PatientRow, SCOPE, schema::patients,
};
use leakless_examples::demo_data;

mod plain {
    diesel::table! {
        patients_plain (id) {
            id -> Text,
            name -> Text,
            address -> Text,
            email -> Text,
            gps -> Text,
            transcript -> Nullable<Text>,
        }
    }
}
use plain::patients_plain;

/// Random bytes as long as `like`.
fn random_like(like: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; like.len()];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut v);
    v
}

/// The sealed row of `p` with every stored byte string replaced by random bytes of the same
/// length: the bytes baseline's row.
fn opaque_row(p: &Patient, ring: &KeyRing) -> PatientRow {
    let sealed = p.seal_row(ring).unwrap();
    PatientRow {
        address: random_like(&sealed.address),
        email: random_like(&sealed.email),
        email_bidx: random_like(&sealed.email_bidx),
        gps: random_like(&sealed.gps),
        transcript: sealed.transcript.as_deref().map(random_like),
        ..sealed
    }
}

/// The same model stored in plaintext: the GPS point as JSON text. Also a row of the pgcrypto
/// table decrypted by PostgreSQL (`PGC_SELECT`), whose columns have the same names and types.
#[derive(Insertable, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = patients_plain)]
struct PlainRow {
    id: String,
    name: String,
    address: String,
    email: String,
    gps: String,
    transcript: Option<String>,
}

impl PlainRow {
    fn from_model(p: &Patient) -> Self {
        Self {
            id: p.id.clone(),
            name: p.name.clone(),
            address: p.address.clone(),
            email: p.email.clone(),
            gps: serde_json::to_string(&p.gps.0).unwrap(),
            transcript: p.transcript.clone(),
        }
    }

    fn into_model(self) -> Patient {
        Patient {
            id: self.id,
            name: self.name,
            address: self.address,
            email: self.email,
            gps: Json(serde_json::from_str(&self.gps).unwrap()),
            transcript: self.transcript,
        }
    }
}

/// The models of plaintext rows loaded by `rows`.
fn models(rows: QueryResult<Vec<PlainRow>>) -> Vec<Patient> {
    rows.unwrap()
        .into_iter()
        .map(PlainRow::into_model)
        .collect()
}

const PGC_SELECT: &str = "SELECT id, name, pgp_sym_decrypt(address, $1) AS address, \
     pgp_sym_decrypt(email, $1) AS email, pgp_sym_decrypt(gps, $1) AS gps, \
     pgp_sym_decrypt(transcript, $1) AS transcript FROM patients_pgc";

const SETUP_SQL: &str = "
    CREATE EXTENSION IF NOT EXISTS pgcrypto;
    CREATE TABLE patients_plain (id TEXT PRIMARY KEY, name TEXT NOT NULL, address TEXT NOT NULL,
        email TEXT NOT NULL, gps TEXT NOT NULL, transcript TEXT);
    CREATE INDEX patients_plain_email ON patients_plain (lower(trim(email)));
    CREATE TABLE patients_pgc (id TEXT PRIMARY KEY, name TEXT NOT NULL, address BYTEA NOT NULL,
        email BYTEA NOT NULL, email_hmac BYTEA NOT NULL, gps BYTEA NOT NULL, transcript BYTEA);
    CREATE INDEX patients_pgc_email_hmac ON patients_pgc (email_hmac);
    CREATE SCHEMA opaque;
    CREATE TABLE opaque.patients (LIKE public.patients INCLUDING ALL);
";

/// One of the variants under test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    Bytes,
    Sealed,
    Pgcrypto,
}

const VARIANTS: [Variant; 4] = [
    Variant::Plain,
    Variant::Bytes,
    Variant::Sealed,
    Variant::Pgcrypto,
];

struct Bench {
    conn: PgConnection,
    /// A second session whose `search_path` is schema `opaque`: the clinic table and row type,
    /// holding the bytes baseline.
    opaque_conn: PgConnection,
    ring: KeyRing,
    /// The pgcrypto passphrase (random per run; a bind parameter of every statement).
    pgc_key: String,
    next_id: u32,
}

/// The `i`-th bench patient: a demo patient with a unique id and e-mail address.
fn bench_patient(i: u32) -> Patient {
    let demo = demo_data::patients();
    let mut p = Patient::from_demo(&demo[i as usize % demo.len()]);
    p.id = format!("{i:08}-{}", &p.id[9..]);
    p.email = format!("p{i}.{}", p.email);
    p.gps = Json(GeoPoint {
        lat: p.gps.0.lat + f64::from(i) * 1e-6,
        lon: p.gps.0.lon,
    });
    p
}

/// The rows `query` returns, loaded with diesel's default `load` or, with `row_by_row`,
/// collected from `load_iter` in `PgRowByRowLoadingMode`.
fn fetch<Q, U>(query: Q, conn: &mut PgConnection, row_by_row: bool) -> QueryResult<Vec<U>>
where
    Q: RunQueryDsl<PgConnection>
        + diesel::query_dsl::LoadQuery<'static, PgConnection, U>
        + diesel::query_dsl::LoadQuery<'static, PgConnection, U, PgRowByRowLoadingMode>
        + 'static,
    U: 'static,
{
    if row_by_row {
        query.load_iter::<U, PgRowByRowLoadingMode>(conn)?.collect()
    } else {
        query.load(conn)
    }
}

impl Bench {
    fn fresh(&mut self, n: u32) -> Vec<Patient> {
        let people = (self.next_id..self.next_id + n)
            .map(bench_patient)
            .collect();
        self.next_id += n;
        people
    }

    /// The bytes baseline's rows for `people` (empty for the other variants), made before the
    /// timer starts.
    fn opaque(&self, v: Variant, people: &[Patient]) -> Vec<PatientRow> {
        if v != Variant::Bytes {
            return Vec::new();
        }
        people.iter().map(|p| opaque_row(p, &self.ring)).collect()
    }

    fn insert(&mut self, v: Variant, people: &[Patient], opaque: Vec<PatientRow>) {
        let conn = &mut self.conn;
        let n = match v {
            Variant::Bytes => diesel::insert_into(patients::table)
                .values(opaque)
                .execute(&mut self.opaque_conn),
            Variant::Sealed => diesel::insert_into(patients::table)
                .values(Patient::seal_rows(people, &self.ring).unwrap())
                .execute(conn),
            Variant::Plain => diesel::insert_into(patients_plain::table)
                .values(people.iter().map(PlainRow::from_model).collect::<Vec<_>>())
                .execute(conn),
            Variant::Pgcrypto => {
                let col = |f: fn(&Patient) -> String| people.iter().map(f).collect::<Vec<_>>();
                diesel::sql_query(
                    "INSERT INTO patients_pgc (id, name, address, email, email_hmac, gps, transcript)
                     SELECT id, name, pgp_sym_encrypt(a, $7), pgp_sym_encrypt(e, $7),
                            hmac(lower(trim(e)), $7, 'sha256'), pgp_sym_encrypt(g, $7),
                            pgp_sym_encrypt(t, $7)
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[]) AS u(id, name, a, e, g, t)",
                )
                .bind::<Array<Text>, _>(col(|p| p.id.clone()))
                .bind::<Array<Text>, _>(col(|p| p.name.clone()))
                .bind::<Array<Text>, _>(col(|p| p.address.clone()))
                .bind::<Array<Text>, _>(col(|p| p.email.clone()))
                .bind::<Array<Text>, _>(col(|p| serde_json::to_string(&p.gps.0).unwrap()))
                .bind::<Array<Nullable<Text>>, _>(
                    people
                        .iter()
                        .map(|p| p.transcript.clone())
                        .collect::<Vec<_>>(),
                )
                .bind::<Text, _>(&self.pgc_key)
                .execute(conn)
            }
        };
        assert_eq!(n.unwrap(), people.len());
    }

    /// Loads every row as models, and returns how many there are: with diesel's default
    /// `load`, or with `row_by_row` through its row-by-row mode (libpq's single-row mode: no
    /// result set of every row in libpq's memory before the first row is decoded; pgcrypto is
    /// measured in the default mode only).
    fn load_all(&mut self, v: Variant, row_by_row: bool) -> usize {
        let conn = &mut self.conn;
        let sealed = || patients::table.select(PatientRow::as_select());
        match v {
            Variant::Bytes => fetch(sealed(), &mut self.opaque_conn, row_by_row)
                .unwrap()
                .len(),
            Variant::Sealed => {
                Patient::open_rows(fetch(sealed(), conn, row_by_row).unwrap(), &self.ring)
                    .unwrap()
                    .len()
            }
            Variant::Plain => models(fetch(
                patients_plain::table.select(PlainRow::as_select()),
                conn,
                row_by_row,
            ))
            .len(),
            Variant::Pgcrypto => {
                assert!(!row_by_row, "pgcrypto is loaded in the default mode only");
                models(
                    diesel::sql_query(PGC_SELECT)
                        .bind::<Text, _>(&self.pgc_key)
                        .load(conn),
                )
                .len()
            }
        }
    }

    fn lookup(&mut self, v: Variant, email: &str) -> Vec<Patient> {
        let conn = &mut self.conn;
        match v {
            Variant::Bytes => unreachable!("the bytes baseline has no look-up"),
            Variant::Sealed => {
                // One token per blind-index key version that still opens, matched in SQL.
                let tokens = Patient::email_lookup(&self.ring, &email.to_owned()).unwrap();
                let rows: Vec<PatientRow> = patients::table
                    .filter(patients::email_bidx.eq_any(tokens))
                    .select(PatientRow::as_select())
                    .load(conn)
                    .unwrap();
                Patient::open_rows(rows, &self.ring).unwrap()
            }
            Variant::Plain => {
                diesel::define_sql_function!(fn lower(x: Text) -> Text);
                diesel::define_sql_function!(fn trim(x: Text) -> Text);
                models(
                    patients_plain::table
                        .filter(lower(trim(patients_plain::email)).eq(email.trim().to_lowercase()))
                        .select(PlainRow::as_select())
                        .load(conn),
                )
            }
            Variant::Pgcrypto => models(
                diesel::sql_query(format!(
                    "{PGC_SELECT} WHERE email_hmac = hmac(lower(trim($2)), $1, 'sha256')"
                ))
                .bind::<Text, _>(&self.pgc_key)
                .bind::<Text, _>(email)
                .load(conn),
            ),
        }
    }

    fn truncate(&mut self) {
        self.conn
            .batch_execute("TRUNCATE patients, patients_plain, patients_pgc, opaque.patients")
            .unwrap();
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn fmt_time(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

struct Line {
    op: &'static str,
    /// Target of sealed against plaintext.
    target: Option<f64>,
    /// Target of sealed against the same-size bytes.
    bytes_target: Option<f64>,
    /// Per variant, in the order of [`VARIANTS`].
    times: [Vec<Duration>; 4],
}

fn main() {
    // LEAKLESS_PG_URL, or a throwaway server (with pgcrypto, from the contrib package).
    let url = leakless_testkit::pg_url();
    let scale: usize = std::env::var("LEAKLESS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let db = FreshDatabase::create(&url).unwrap();
    let mut conn = PgConnection::establish(db.url()).unwrap();
    clinic::run_migrations(&mut conn).unwrap();
    conn.batch_execute(SETUP_SQL)
        .expect("pgcrypto must be installable (Debian: the postgresql package ships it)");
    let ring = leakless_examples::throwaway_ring_builder().build();
    let who = AuditInfo::new("bench", "setup");
    ring.create_scope(&KeyScope::new(SCOPE).unwrap(), &who)
        .unwrap();
    ring.create_scope(&KeyScope::new(BIDX_SCOPE).unwrap(), &who)
        .unwrap();
    let mut opaque_conn = PgConnection::establish(db.url()).unwrap();
    opaque_conn
        .batch_execute("SET search_path TO opaque")
        .unwrap();
    let mut b = Bench {
        conn,
        opaque_conn,
        ring,
        pgc_key: hex::encode(rand::random::<[u8; 32]>()),
        next_id: 0,
    };

    // Warm-up: every code path once, the KEK cache filled.
    for v in VARIANTS {
        let p = b.fresh(1);
        let o = b.opaque(v, &p);
        b.insert(v, &p, o);
        let many = b.fresh(100);
        let o = b.opaque(v, &many);
        b.insert(v, &many, o);
        assert!(b.load_all(v, false) == 101);
        if v != Variant::Pgcrypto {
            assert!(b.load_all(v, true) == 101);
        }
        if v != Variant::Bytes {
            assert!(b.lookup(v, &many[7].email) == vec![many[7].clone()]);
        }
    }
    b.truncate();

    let mut lines = Vec::new();
    let only = std::env::var("LEAKLESS_BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);

    // Single-row inserts (the bulk insert's statements, given one row), then bulk inserts of
    // 1,000 rows per statement.
    for (op, rows, reps, target, bytes_target) in [
        (
            "single-row insert",
            1,
            if run("single") { 300 * scale } else { 1 },
            1.10,
            None,
        ),
        (
            "bulk insert (1,000 rows)",
            1_000,
            if run("bulk") { 9 * scale } else { 1 },
            1.3,
            Some(1.15),
        ),
    ] {
        let mut times: [Vec<Duration>; 4] = Default::default();
        for _ in 0..reps {
            for (k, v) in VARIANTS.into_iter().enumerate() {
                let people = b.fresh(rows);
                let o = b.opaque(v, &people);
                let t = Instant::now();
                b.insert(v, &people, o);
                times[k].push(t.elapsed());
            }
        }
        lines.push(Line {
            op,
            target: Some(target),
            bytes_target,
            times,
        });
        b.truncate();
    }

    // Load 10,000 rows.
    let people: Vec<Patient> = b.fresh(10_000);
    for v in VARIANTS {
        for chunk in people.chunks(1_000) {
            let o = b.opaque(v, chunk);
            b.insert(v, chunk, o);
        }
    }
    b.conn.batch_execute("VACUUM ANALYZE").unwrap();
    for (op, row_by_row, target, bytes_target) in [
        ("load 10,000 rows", false, Some(1.5), Some(1.15)),
        ("load, row by row", true, None, None),
    ] {
        let mut times: [Vec<Duration>; 4] = Default::default();
        for _ in 0..if run("load") { 7 * scale } else { 1 } {
            for (k, v) in VARIANTS.into_iter().enumerate() {
                if row_by_row && v == Variant::Pgcrypto {
                    continue;
                }
                let t = Instant::now();
                let loaded = b.load_all(v, row_by_row);
                times[k].push(t.elapsed());
                assert_eq!(loaded, 10_000);
            }
        }
        lines.push(Line {
            op,
            target,
            bytes_target,
            times,
        });
    }

    // Look-ups by e-mail among the 10,000 rows.
    let mut times: [Vec<Duration>; 4] = Default::default();
    for r in 0..if run("lookup") { 300 * scale } else { 1 } {
        let wanted = &people[(r * 7_919) % people.len()];
        let query = format!(" {} ", wanted.email.to_uppercase());
        for (k, v) in VARIANTS.into_iter().enumerate() {
            if v == Variant::Bytes {
                continue;
            }
            let t = Instant::now();
            let found = b.lookup(v, &query);
            times[k].push(t.elapsed());
            assert!(found.len() == 1 && found[0] == *wanted);
        }
    }
    lines.push(Line {
        op: "look-up by e-mail",
        target: None,
        bytes_target: None,
        times,
    });

    println!(
        "PostgreSQL {}, medians; x = plaintext diesel, b = same-size random bytes, same run",
        server_version(&mut b.conn)
    );
    println!(
        "{:<26}{:>11}{:>11}{:>11}{:>9}{:>7}{:>9}{:>7}{:>11}{:>8}",
        "operation",
        "plaintext",
        "bytes",
        "sealed",
        "sealed/x",
        "target",
        "sealed/b",
        "target",
        "pgcrypto",
        "pgc/x"
    );
    let target = |t: Option<f64>| t.map_or("-".to_owned(), |t| format!("{t:.2}x"));
    for l in lines {
        let [p, o, s, c] = l.times.map(|t| (!t.is_empty()).then(|| median(t)));
        let (p, s) = (p.unwrap(), s.unwrap());
        let over = |x: Duration, base: Duration| x.as_secs_f64() / base.as_secs_f64();
        println!(
            "{:<26}{:>11}{:>11}{:>11}{:>8.2}x{:>7}{:>9}{:>7}{:>11}{:>8}",
            l.op,
            fmt_time(p),
            o.map_or("-".to_owned(), fmt_time),
            fmt_time(s),
            over(s, p),
            target(l.target),
            o.map_or("-".to_owned(), |o| format!("{:.2}x", over(s, o))),
            target(l.bytes_target),
            c.map_or("-".to_owned(), fmt_time),
            c.map_or("-".to_owned(), |c| format!("{:.2}x", over(c, p)))
        );
    }
    drop(b);
    db.drop_now().unwrap();
}

fn server_version(conn: &mut PgConnection) -> String {
    #[derive(QueryableByName)]
    struct V {
        #[diesel(sql_type = Text)]
        server_version: String,
    }
    diesel::sql_query("SHOW server_version")
        .get_result::<V>(conn)
        .map(|v| v.server_version)
        .unwrap_or_else(|_| "?".into())
}
