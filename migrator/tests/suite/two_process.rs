//! Destroying a KEK version cannot lose live writes, shown with two real processes: an
//! application process (this test binary re-executed with `LEAKLESS_TWO_PROCESS_ROLE=app`)
//! holds a warm `KeyRing` cache with the default five-minute KEK cache age and inserts a sealed
//! row every few milliseconds, while the real `leakless-migrate` binary rotates, rewraps,
//! retires and destroys the old version as fast as it allows. The window recorded on the
//! versions (two seconds) is what bounds the application: it switches to the new version
//! within the window, `keys retire` is refused (exit 1, naming the time) until window plus
//! margin after the rotation, a second rewrap moves what the warm cache sealed under the old
//! version meanwhile, and after `keys destroy` no row is on the destroyed version and every
//! row the application inserted opens. The positive control destroys inside the window with
//! `--force` and shows the scan catching rows sealed under the destroyed version after it was
//! destroyed. On SQLite and PostgreSQL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leakless::KeyScope;
use leakless::key::UnixTime;
use leakless_migrator::db::{Bind, DbUrl};

use crate::support::{Backend, Fixture, SCOPE, app_ring, code, seal_row, stderr, stdout};

/// Set to `app` in the application process.
const ROLE: &str = "LEAKLESS_TWO_PROCESS_ROLE";
/// The cache window recorded on every version (fixture ring and CLI), in seconds.
const WINDOW_SECS: i64 = 4;
/// The margin `retire`/`destroy` add after the window: a tenth of it, at least one second.
const MARGIN_SECS: i64 = 1;
/// The longest the application process runs, whatever happens to the test.
const APP_MAX_SECS: u64 = 45;
/// Rows the fixture seeds before the application starts.
const SEEDED: i64 = 200;
/// The application's first row id.
const APP_FIRST_ID: i64 = 1_000_000;

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn ok(o: &Output) -> &Output {
    assert_eq!(code(o), 0, "{}{}", stdout(o), stderr(o));
    o
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(ok(o))).unwrap()
}

// ----- the application process ------------------------------------------------------------

/// The application: not a test by itself. Re-executed by [`App::start`] with
/// `LEAKLESS_TWO_PROCESS_ROLE=app`; returns at once otherwise.
#[test]
fn app_process() {
    if std::env::var(ROLE).as_deref() != Ok("app") {
        return;
    }
    run_app();
}

/// What the application did with each KEK version.
#[derive(Default)]
struct PerVersion {
    rows: u64,
    first_ms: i64,
    last_ms: i64,
}

/// Seals and inserts rows until the stop file appears or [`APP_MAX_SECS`] pass; never panics
/// on an error from sealing or the database (it records it and goes on), and writes its report
/// as JSON to the out file at the end.
fn run_app() {
    let var = |k: &str| std::env::var(format!("LEAKLESS_TWO_PROCESS_{k}")).unwrap();
    let backend = match var("BACKEND").as_str() {
        "sqlite" => Backend::Sqlite,
        "postgres" => Backend::Postgres,
        other => panic!("unknown backend {other}"),
    };
    let url = var("URL");
    let stop = PathBuf::from(var("STOP"));
    let ready = PathBuf::from(var("READY"));
    let out = PathBuf::from(var("OUT"));
    let deadline = Instant::now() + Duration::from_secs(APP_MAX_SECS);

    let ring = app_ring(backend, &url, Path::new(&var("KEY_FILE")));
    let scope = KeyScope::new(SCOPE).unwrap();
    let mut errors: Vec<String> = Vec::new();
    let mut error_count = 0u64;
    let mut note = |errors: &mut Vec<String>, e: String| {
        error_count += 1;
        if errors.len() < 20 {
            errors.push(e);
        }
    };
    let mut db = None;
    let mut versions: BTreeMap<u32, PerVersion> = BTreeMap::new();
    let mut first_seal_ms = None;
    let mut id = APP_FIRST_ID;
    while Instant::now() < deadline && !stop.exists() {
        std::thread::sleep(Duration::from_millis(3));
        if db.is_none() {
            match DbUrl::parse(&url).and_then(|u| u.connect()) {
                Ok(d) => db = Some(d),
                Err(e) => {
                    note(&mut errors, format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        let Some(conn) = db.as_mut() else { continue };
        let sealed_at = now_ms();
        first_seal_ms.get_or_insert(sealed_at);
        let env = match seal_row(&ring, &scope, id) {
            Ok(env) => env,
            Err(e) => {
                note(&mut errors, format!("seal row {id}: {e}"));
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let version = match leakless::envelope::inspect(&env) {
            Ok(info) => info.kek_version.get(),
            Err(e) => {
                note(&mut errors, format!("inspect row {id}: {e:?}"));
                continue;
            }
        };
        let sql = format!(
            "INSERT INTO patients (id, email, email_plain) VALUES ({}, {}, NULL)",
            conn.ph(1),
            conn.ph(2)
        );
        match conn.exec(&sql, &[Bind::Int(id), Bind::Bytes(Some(env))]) {
            Ok(1) => {
                let v = versions.entry(version).or_default();
                if v.rows == 0 {
                    v.first_ms = sealed_at;
                }
                v.rows += 1;
                v.last_ms = sealed_at;
                if let Some(first) = first_seal_ms
                    && !ready.exists()
                {
                    let tmp = ready.with_extension("tmp");
                    if std::fs::write(&tmp, first.to_string()).is_ok() {
                        let _ = std::fs::rename(&tmp, &ready);
                    }
                }
            }
            Ok(n) => note(&mut errors, format!("insert row {id}: {n} rows changed")),
            Err(e) => {
                note(&mut errors, format!("insert row {id}: {e}"));
                db = None;
            }
        }
        // Never reuse an id, even after a failed insert.
        id += 1;
    }
    let report = serde_json::json!({
        "inserted": versions.values().map(|v| v.rows).sum::<u64>(),
        "first_seal_ms": first_seal_ms,
        "versions": versions.iter().map(|(k, v)| (k.to_string(), serde_json::json!({
            "rows": v.rows, "first_ms": v.first_ms, "last_ms": v.last_ms,
        }))).collect::<serde_json::Map<_, _>>(),
        "errors": errors,
        "error_count": error_count,
        "stopped_by": if stop.exists() { "stop file" } else { "deadline" },
    });
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    std::fs::rename(&tmp, &out).unwrap();
}

/// The application process, seen from the test.
struct App {
    child: Option<Child>,
    stop: PathBuf,
    ready: PathBuf,
    out: PathBuf,
    log: PathBuf,
}

impl App {
    /// Starts the application on the fixture's database, key store and root key file.
    fn start(f: &Fixture) -> Self {
        let dir = f.dir.path();
        let (stop, ready, out, log) = (
            dir.join("app.stop"),
            dir.join("app.ready"),
            dir.join("app.json"),
            dir.join("app.stderr"),
        );
        let backend = match f.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => unreachable!("not run on MariaDB"),
        };
        // The test's name in this binary: its module path without the crate's name.
        let app_test = format!(
            "{}::app_process",
            module_path!().split_once("::").unwrap().1
        );
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &app_test, "--nocapture", "--test-threads=1"])
            .env(ROLE, "app")
            .env("LEAKLESS_TWO_PROCESS_BACKEND", backend)
            .env("LEAKLESS_TWO_PROCESS_URL", &f.url)
            .env("LEAKLESS_TWO_PROCESS_KEY_FILE", &f.key_file)
            .env("LEAKLESS_TWO_PROCESS_STOP", &stop)
            .env("LEAKLESS_TWO_PROCESS_READY", &ready)
            .env("LEAKLESS_TWO_PROCESS_OUT", &out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut app = Self {
            child: Some(child),
            stop,
            ready,
            out,
            log,
        };
        app.wait_ready();
        app
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 30 s) until the application has inserted its first row.
    fn wait_ready(&mut self) {
        let t = Instant::now();
        while !self.ready.exists() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the application exited early ({status}): {}", self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the application did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the application (stop file, at most 20 s) and returns its report.
    fn stop(mut self) -> serde_json::Value {
        std::fs::write(&self.stop, b"stop").unwrap();
        let mut child = self.child.take().unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the application did not stop: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "the application failed: {}", self.log());
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.out).unwrap()).unwrap();
        assert_eq!(report["stopped_by"], "stop file", "{report}");
        report
    }

    /// When the application started its first seal (from the ready file): its cache fetched
    /// v1 in that second, and re-checks the active version right after every window from then.
    fn first_seal_ms(&self) -> i64 {
        std::fs::read_to_string(&self.ready)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::fs::write(&self.stop, b"stop");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ----- the checks -------------------------------------------------------------------------

/// KEK version of every sealed row with id `>= min_id`, counted, from the envelopes' headers.
fn scan_versions(f: &Fixture, min_id: i64) -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    for (id, v) in f.rows() {
        if id < min_id {
            continue;
        }
        let v = v.unwrap_or_else(|| panic!("row {id} has no envelope"));
        let info = leakless::envelope::inspect(&v).unwrap_or_else(|e| panic!("row {id}: {e:?}"));
        *m.entry(info.kek_version.get()).or_default() += 1;
    }
    m
}

/// Sleeps until just after the application's next active-version re-check, so the rotation
/// that follows finds it with a whole window still to run on the old version (the worst case).
fn align_to_recheck(app: &App) {
    let first_sec = app.first_seal_ms().div_euclid(1000);
    let now = now_ms();
    let mut next = (first_sec + WINDOW_SECS) * 1000 + 150;
    while next < now + 100 {
        next += WINDOW_SECS * 1000;
    }
    std::thread::sleep(Duration::from_millis(u64::try_from(next - now).unwrap()));
}

/// Rotates through the CLI; returns the time just before it ran and v1's record afterwards.
fn rotate(f: &Fixture) -> (i64, serde_json::Value) {
    let t_rot = now_ms();
    ok(&f.run(&["keys", "rotate", SCOPE, "--grace", "1h"]));
    let list = json(&f.run(&["keys", "list", "--scope", SCOPE, "--json"]));
    let v1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == 1)
        .unwrap()
        .clone();
    assert_eq!(v1["state"], "grace", "{v1}");
    assert_eq!(v1["cache_window_secs"], WINDOW_SECS, "{v1}");
    let deact = crate::support::unix_secs(&v1["deactivated_at"]).unwrap();
    assert!(
        deact == t_rot.div_euclid(1000) || deact == t_rot.div_euclid(1000) + 1,
        "v1 deactivated at {deact}, rotation started at {t_rot} ms"
    );
    assert_eq!(
        crate::support::unix_secs(&v1["retire_destroy_allowed_from"]),
        Some(deact + WINDOW_SECS + MARGIN_SECS),
        "{v1}"
    );
    (t_rot, v1)
}

/// The main run: rotate, rewrap, retire refused until window and margin, rewrap again,
/// retire, destroy; no row lost, none on the destroyed version.
fn destroy_waits_for_warm_caches(backend: Backend) {
    let f = Fixture::with_cache_window(backend, Duration::from_secs(WINDOW_SECS.unsigned_abs()));
    f.seed(0, SEEDED, false);
    let app = App::start(&f);
    align_to_recheck(&app);

    let (t_rot, v1) = rotate(&f);
    let allowed = crate::support::unix_secs(&v1["retire_destroy_allowed_from"]).unwrap();
    let allowed_ms = allowed * 1000;

    // First rewrap right away: the application's warm cache still seals under v1 after it.
    let j = json(&f.run(&["rewrap", "--json"]));
    let first_rewrap = j["jobs"][0]["rows_changed"].as_u64().unwrap();
    assert!(first_rewrap >= u64::try_from(SEEDED).unwrap(), "{j}");

    // Retire is refused inside the window, saying from when it is allowed: window + margin
    // after the rotation.
    let o = f.run(&["keys", "retire", SCOPE, "v1"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let msg = stderr(&o);
    assert!(msg.contains("too early to retire"), "{msg}");
    assert!(
        msg.contains(&format!("allowed from {}", UnixTime(allowed))),
        "{msg}"
    );
    // `allowed` is whole seconds after the second the rotation was recorded in (the CLI may
    // start in one second and write in the next): between the window and window + margin,
    // plus up to a second of rounding.
    let after_rot = allowed_ms - t_rot;
    assert!(
        (WINDOW_SECS * 1000..=(WINDOW_SECS + MARGIN_SECS + 1) * 1000).contains(&after_rot),
        "allowed {after_rot} ms after the rotation started"
    );
    // And refused again as long as there is clearly time left (a probe must not land after
    // `allowed`: the second rewrap has to come before the retirement). A CLI process can take
    // well over a second to start on a loaded machine, so probing stops two seconds early.
    let mut refusals = 1;
    while now_ms() + 2000 < allowed_ms {
        let o = f.run(&["keys", "retire", SCOPE, "v1"]);
        assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
        assert!(stderr(&o).contains("too early to retire"), "{}", stderr(&o));
        refusals += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let wait = allowed_ms + 50 - now_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap()));
    }

    // What the warm cache sealed under v1 after the first rewrap; the second rewrap moves it.
    let late = scan_versions(&f, 0).get(&1).copied().unwrap_or(0);
    assert!(
        late > 0,
        "the application sealed nothing under v1 after the first rewrap"
    );
    let j = json(&f.run(&["rewrap", "--json"]));
    assert_eq!(j["jobs"][0]["rows_changed"], late, "{j}");

    let o = f.run(&["keys", "retire", SCOPE, "v1"]);
    let t_retired = now_ms();
    ok(&o);
    let o = f.run(&["keys", "destroy", SCOPE, "1", "--yes"]);
    let t_destroyed = now_ms();
    ok(&o);
    assert!(
        stdout(&o).contains("destroyed patients v1"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("crypto-shredded"), "{}", stdout(&o));

    // The application goes on sealing (under v2) after the destroy, then stops.
    std::thread::sleep(Duration::from_millis(300));
    let report = app.stop();
    assert_eq!(report["error_count"], 0, "{report}");
    let inserted = report["inserted"].as_u64().unwrap();
    let rv = &report["versions"];
    let first_v2 = rv["2"]["first_ms"].as_i64().unwrap();
    let last_v1 = rv["1"]["last_ms"].as_i64().unwrap();
    assert!(
        rv["2"]["last_ms"].as_i64().unwrap() > t_destroyed,
        "{report}"
    );
    eprintln!(
        "{backend:?}: app inserted {inserted} rows ({} on v1, {} on v2); it sealed under v1 \
         until {} ms and under v2 from {} ms after the rotation; retire allowed from {after_rot} \
         ms ({refusals} refusals), retired at {} ms, destroyed at {} ms; rewraps moved \
         {first_rewrap} then {late} rows",
        rv["1"]["rows"],
        rv["2"]["rows"],
        last_v1 - t_rot,
        first_v2 - t_rot,
        t_retired - t_rot,
        t_destroyed - t_rot,
    );
    // The application switched within the window (+1 s slack), whatever its KEK cache age.
    assert!(
        first_v2 - t_rot <= (WINDOW_SECS + 1) * 1000,
        "the application first sealed under v2 {} ms after the rotation",
        first_v2 - t_rot
    );
    assert!(last_v1 < first_v2, "{report}");
    assert_eq!(report["versions"].as_object().unwrap().len(), 2, "{report}");

    // No row on the destroyed version: by the envelopes' headers and by `status`.
    let scan = scan_versions(&f, 0);
    assert_eq!(scan.get(&1), None, "rows on the destroyed v1: {scan:?}");
    let total = u64::try_from(SEEDED).unwrap() + inserted;
    assert_eq!(scan.get(&2).copied(), Some(total), "{scan:?}");
    let s = json(&f.run(&["status", "--json"]));
    assert_eq!(s[0]["on_destroyed"], 0, "{s}");
    assert_eq!(s[0]["rows"], total, "{s}");
    for v in s[0]["versions"].as_array().unwrap() {
        assert!(v["version"] != 1 || v["rows"] == 0, "{s}");
    }

    // Every row the application inserted is there and opens.
    assert_eq!(
        scan_versions(&f, APP_FIRST_ID).values().sum::<u64>(),
        inserted
    );
    let j = json(&f.run(&["verify", "--json"]));
    assert_eq!(j[0]["failed"], 0, "{j}");
    assert_eq!(j[0]["opened"], total, "{j}");
}

/// The positive control: `keys destroy --force` inside the window (with `--shred`, as the
/// warm cache's rows are on v1 already) — the application goes on sealing under the destroyed
/// version, and the scan finds those rows.
fn forced_destroy_loses_writes(backend: Backend) {
    let f = Fixture::with_cache_window(backend, Duration::from_secs(WINDOW_SECS.unsigned_abs()));
    let app = App::start(&f);
    align_to_recheck(&app);
    let (t_rot, _) = rotate(&f);
    ok(&f.run(&["keys", "retire", SCOPE, "v1", "--force"]));
    ok(&f.run(&["keys", "destroy", SCOPE, "1", "--force", "--shred", "--yes"]));
    let t_destroyed = now_ms();
    // Rows inserted from here on were not there when v1 was destroyed.
    let after = f.rows().last().map_or(APP_FIRST_ID, |(id, _)| id + 1);
    std::thread::sleep(Duration::from_millis(
        u64::try_from((WINDOW_SECS + MARGIN_SECS) * 1000).unwrap(),
    ));
    let report = app.stop();
    assert_eq!(report["error_count"], 0, "{report}");
    let last_v1 = report["versions"]["1"]["last_ms"].as_i64().unwrap();
    let lost = scan_versions(&f, after).get(&1).copied().unwrap_or(0);
    eprintln!(
        "{backend:?} control: destroyed {} ms after the rotation; the application sealed \
         under v1 until {} ms; {lost} rows inserted after the destroy are on the destroyed v1",
        t_destroyed - t_rot,
        last_v1 - t_rot
    );
    assert!(last_v1 > t_destroyed, "{report}");
    assert!(
        lost > 0,
        "the detector found no row under the destroyed version"
    );
    let s = json(&f.run(&["status", "--json"]));
    assert!(s[0]["on_destroyed"].as_u64().unwrap() >= lost, "{s}");
    let o = f.run(&["verify"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
}

backend_tests! {
    destroy_waits_for_warm_caches => [sqlite, postgres],
    forced_destroy_loses_writes => [sqlite, postgres],
}
