//! Hostile Core Lightning logs (issue 10): SQL that touches files, never ends or grows without
//! bound is refused or stopped, the version holding it (and the rest of its segment) is reported
//! with the entry's offset and the reason, and everything else is still served with the right
//! contents. Through `ls`/`export`/`verify`, the library API and the mount.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cln_writer::{LogWriter, bump};
use common::*;
use restorefs::catalog::Catalog;
use restorefs::format::FormatOptions;
use restorefs::model::ScanContext;
use restorefs::vfs::{self, Node};

fn name(v: u32) -> String {
    format!("v{v:010}")
}

/// A database made by SQLite itself: `vars`, table `t` holding `rows`, a 1000-row table `n`.
fn snapshot(dir: &Path, rows: &[i64]) -> Vec<u8> {
    let p = dir.join("snapshot.sqlite3");
    let _ = std::fs::remove_file(&p);
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch(
        "CREATE TABLE vars (name TEXT PRIMARY KEY, intval INTEGER);
         INSERT INTO vars VALUES ('data_version', 1);
         CREATE TABLE t (a);
         CREATE TABLE n (i);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000)
         INSERT INTO n SELECT x FROM c;",
    )
    .unwrap();
    for r in rows {
        c.execute("INSERT INTO t VALUES (?1)", [r]).unwrap();
    }
    drop(c);
    std::fs::read(&p).unwrap()
}

/// A log whose version 3 holds the statements `bad`: snapshot v1 (t = [1]), v2 adds 2, v3 adds
/// 3 after `bad`, v4 adds 4, snapshot v5 (t = [50]), v6 adds 6. Returns it and v3's offset.
fn hostile_log(dir: &Path, bad: &[String]) -> (Vec<u8>, u64) {
    let mut w = LogWriter::default();
    w.snapshot(1, &snapshot(dir, &[1]));
    w.tx(2, &["INSERT INTO t VALUES (2)".to_owned(), bump(2)]);
    let mut v3 = bad.to_vec();
    v3.extend(["INSERT INTO t VALUES (3)".to_owned(), bump(3)]);
    w.tx(3, &v3);
    w.tx(4, &["INSERT INTO t VALUES (4)".to_owned(), bump(4)]);
    w.snapshot(5, &snapshot(dir, &[50]));
    w.tx(6, &["INSERT INTO t VALUES (6)".to_owned(), bump(6)]);
    let log = w.finish(6);
    // The third entry, by the spec's layout: a 512-byte header, then `u32 length` + 5 + payload.
    let mut at = 512;
    for _ in 0..2 {
        at += 9 + u32::from_be_bytes(log[at..at + 4].try_into().unwrap()) as usize;
    }
    (log, at as u64)
}

/// What table `t` holds in each served version of a [`hostile_log`].
fn served_rows() -> [(u32, Vec<i64>); 4] {
    [
        (1, vec![1]),
        (2, vec![1, 2]),
        (5, vec![50]),
        (6, vec![50, 6]),
    ]
}

fn rows(db: &Path) -> Vec<i64> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c.prepare("SELECT a FROM t ORDER BY rowid").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A source folder holding the given logs.
fn source(dir: &Path, logs: &[(&str, &[u8])]) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (n, bytes) in logs {
        std::fs::write(src.join(n), bytes).unwrap();
    }
    src
}

fn export(src: &Path, point: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "export",
        src.to_str().unwrap(),
        point,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_no_panic(&r);
    r
}

/// `ls --json` errors of the points of `set`, by point name (`None`: served).
fn listed_errors(src: &Path, set: &str) -> Vec<(String, Option<String>)> {
    let doc = ls_json(src);
    let s = doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == set)
        .unwrap_or_else(|| panic!("{set} not listed: {doc}"));
    s["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["error"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Where a refusal shows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Found {
    /// By its first words, when scanning: `ls` lists v3 and v4 as not served.
    AtScan,
    /// Only when replaying: exporting v3 or v4 fails with the reason.
    AtReplay,
}

/// Checks that a [`hostile_log`] in `src/set` serves exactly its good versions, with their rows,
/// and that v3 and v4 fail naming the log, v3's offset and `why`.
fn check_served_and_refused(
    src: &Path,
    set: &str,
    at: u64,
    why: &str,
    found: Found,
    extra: &[&str],
) {
    if found == Found::AtScan {
        for (n, e) in listed_errors(src, set) {
            let bad = n == name(3) || n == name(4);
            match e {
                Some(e) => assert!(
                    bad && e.contains(set)
                        && e.contains(&format!("at offset {at}:"))
                        && e.contains(why),
                    "{set} {n}: {e}"
                ),
                None => assert!(!bad, "{set} {n} is served"),
            }
        }
    }
    let tmp = scratch();
    for (v, expected) in served_rows() {
        let out = tmp.path().join(format!("{v}.db"));
        let r = export(
            src,
            &format!("{set}/{}/lightningd.sqlite3", name(v)),
            &out,
            extra,
        );
        assert!(
            r.status.success(),
            "{set} v{v}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(rows(&out), expected, "{set} v{v}");
    }
    for v in [3, 4] {
        let out = tmp.path().join(format!("{v}.db"));
        let r = export(
            src,
            &format!("{set}/{}/lightningd.sqlite3", name(v)),
            &out,
            extra,
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{set} v{v} exported");
        assert!(
            found == Found::AtScan
                || err.contains(set)
                    && err.contains(&format!("at offset {at}:"))
                    && err.contains(why),
            "{set} v{v}: {err}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn attach_is_refused_and_the_rest_is_served() {
    let tmp = scratch();
    let target = tmp.path().join("made-by-the-log.db");
    let t = target.display();
    let (log, at) = hostile_log(
        tmp.path(),
        &[
            format!("ATTACH DATABASE '{t}' AS x"),
            "CREATE TABLE x.t (a)".to_owned(),
            "INSERT INTO x.t VALUES (1)".to_owned(),
        ],
    );
    let src = source(tmp.path(), &[("node.bkp", &log)]);
    // Found at scan time: `ls` says which entry and why without replaying anything.
    let listed = listed_errors(&src, "node.bkp");
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, (1..=6).map(name).collect::<Vec<_>>());
    let why = "statement 1: ATTACH";
    check_served_and_refused(&src, "node.bkp", at, why, Found::AtScan, &[]);
    let out = run(&["verify", src.to_str().unwrap()]);
    assert_no_panic(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("DAMAGED  node.bkp/{}", name(3)))
            && text.contains(&format!("at offset {at}:")),
        "{text}"
    );
    assert!(!out.status.success());
    assert!(!target.exists(), "the log created {t}");
}

#[test]
fn each_file_touching_statement_is_refused() {
    let tmp = scratch();
    let target = tmp.path().join("made-by-the-log");
    let t = target.display();
    let pragma = "statement 1: a PRAGMA other than foreign_keys";
    let cases = [
        ("vacuum.bkp", format!("VACUUM INTO '{t}'"), "statement 1: VACUUM", Found::AtScan),
        (
            "extension.bkp",
            format!("INSERT INTO t VALUES (load_extension('{t}'))"),
            "refused by the SQL sandbox: the SQL function load_extension()",
            Found::AtReplay,
        ),
        ("writable.bkp", "PRAGMA writable_schema = ON".to_owned(), pragma, Found::AtScan),
        (
            "tempdir.bkp",
            format!("PRAGMA temp_store_directory = '{t}'"),
            pragma,
            Found::AtScan,
        ),
        ("journal.bkp", "PRAGMA journal_mode = DELETE".to_owned(), pragma, Found::AtScan),
        (
            "zeroblob.bkp",
            "CREATE TABLE big AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 2000000) SELECT zeroblob(1000) FROM c".to_owned(),
            "refused by the SQL sandbox: the SQL function zeroblob()",
            Found::AtReplay,
        ),
    ];
    let logs: Vec<(&str, Vec<u8>, u64)> = cases
        .iter()
        .map(|(n, stmt, _, _)| {
            let (log, at) = hostile_log(tmp.path(), std::slice::from_ref(stmt));
            (*n, log, at)
        })
        .collect();
    let src = source(
        tmp.path(),
        &logs
            .iter()
            .map(|(n, l, _)| (*n, l.as_slice()))
            .collect::<Vec<_>>(),
    );
    for ((set, _, why, found), (_, _, at)) in cases.iter().zip(&logs) {
        check_served_and_refused(&src, set, *at, why, *found, &[]);
    }
    assert!(!target.exists(), "a log created {t}");
}

#[test]
fn an_endless_statement_stops_at_the_deadline() {
    let tmp = scratch();
    // Allowed parts only: a join of five copies of a 1000-row table is 10^15 steps.
    let (slow, at) = hostile_log(
        tmp.path(),
        &["INSERT INTO t SELECT count(*) FROM n a, n b, n c, n d, n e".to_owned()],
    );
    // The issue's own statement is refused outright, at scan time (a bare SELECT).
    let (recursive, at_r) = hostile_log(
        tmp.path(),
        &[
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
                .to_owned(),
        ],
    );
    let src = source(
        tmp.path(),
        &[("slow.bkp", &slow), ("recursive.bkp", &recursive)],
    );
    let out = tmp.path().join("v3.db");
    let start = Instant::now();
    let r = export(
        &src,
        &format!("slow.bkp/{}/lightningd.sqlite3", name(3)),
        &out,
        &["--sql-timeout", "2"],
    );
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        err.contains("slow.bkp")
            && err.contains(&format!("at offset {at}:"))
            && err.contains("(2 s, --sql-timeout) ran out"),
        "{err}"
    );
    let why = "statement 1: a statement kind lightningd never logs";
    check_served_and_refused(&src, "recursive.bkp", at_r, why, Found::AtScan, &[]);
}

/// The library API with `limits`, over `src`.
fn open(
    src: &Path,
    cache: &Path,
    limits: impl FnOnce(&mut FormatOptions),
) -> (Catalog, FormatOptions) {
    let ctx = ScanContext::new(restorefs::cache::Cache::new(64 << 20), cache);
    let mut opts = FormatOptions::default();
    limits(&mut opts);
    let formats = restorefs::format::all(&opts);
    let hidden = indicatif::ProgressBar::hidden();
    let cat = restorefs::scan::scan(src, &formats, &ctx, &hidden).unwrap();
    (cat, opts)
}

fn read(cat: &Catalog, path: &str) -> restorefs::error::Result<Vec<u8>> {
    let Node::File(f) = vfs::resolve(&cat.tree(None), path)? else {
        panic!("{path} is not a file")
    };
    let mut buf = vec![0u8; f.size()? as usize];
    f.read_at(0, &mut buf)?;
    Ok(buf)
}

/// Files left in the scratch folder of `cache`.
fn scratch_files(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(cache).unwrap().flatten() {
        if d.path().is_dir() {
            out.extend(
                std::fs::read_dir(d.path())
                    .unwrap()
                    .flatten()
                    .map(|f| f.path()),
            );
        }
    }
    out
}

#[test]
fn a_growing_database_stops_at_its_size_bound() {
    let tmp = scratch();
    // 1 MB of text, then doubling: 1 GB after ten statements.
    let mut bad = vec!["INSERT INTO t VALUES (printf('%.*c', 1000000, 'x'))".to_owned()];
    bad.extend((0..10).map(|_| "INSERT INTO t SELECT a FROM t".to_owned()));
    let (log, at) = hostile_log(tmp.path(), &bad);
    let src = source(tmp.path(), &[("node.bkp", &log)]);
    let why = "size bound of 16777216 bytes (--max-db-size)";
    let limit = ["--max-db-size", "16M"];
    check_served_and_refused(&src, "node.bkp", at, why, Found::AtReplay, &limit);
    // Through the library: the error is remembered and no scratch file is left behind.
    let cache = scratch();
    let (cat, _opts) = open(&src, cache.path(), |o| o.sql.max_db_size = Some(16 << 20));
    let e = read(&cat, &format!("node.bkp/{}/lightningd.sqlite3", name(3))).unwrap_err();
    assert_eq!(e.offset(), Some(at), "{e}");
    assert!(e.to_string().contains(why), "{e}");
    assert_eq!(scratch_files(cache.path()), [] as [PathBuf; 0]);
    assert!(read(&cat, &format!("node.bkp/{}/lightningd.sqlite3", name(6))).is_ok());
}

#[test]
fn a_failed_rebuild_is_remembered_not_repeated() {
    let tmp = scratch();
    let (log, at) = hostile_log(
        tmp.path(),
        &["INSERT INTO t SELECT count(*) FROM n a, n b, n c, n d, n e".to_owned()],
    );
    let src = source(tmp.path(), &[("node.bkp", &log)]);
    let cache = scratch();
    let (cat, _opts) = open(&src, cache.path(), |o| {
        o.sql.timeout = Duration::from_secs(1);
    });
    let v = |v: u32| format!("node.bkp/{}/lightningd.sqlite3", name(v));
    let start = Instant::now();
    let first = read(&cat, &v(3)).unwrap_err();
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(first.offset(), Some(at), "{first}");
    assert!(first.to_string().contains("--sql-timeout"), "{first}");
    // Again, and the next version of the segment: the same error, at once.
    let start = Instant::now();
    for p in [v(3), v(4), v(3)] {
        let again = read(&cat, &p).unwrap_err();
        assert_eq!(again.offset(), Some(at), "{again}");
        assert!(again.to_string().contains("--sql-timeout"), "{again}");
    }
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    // The listing now says so too; the versions before and after still read.
    let set = &cat.sets()[0];
    let points = set.set.points();
    let i4 = points.find(&name(4)).unwrap();
    assert!(!points.is_ok(i4));
    let p4 = points.get(i4);
    let e = p4.content.as_ref().unwrap()[0]
        .error
        .as_ref()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&format!("at offset {at}:")) && e.contains("version 4 not served"),
        "{e}"
    );
    assert_eq!(scratch_files(cache.path()), [] as [PathBuf; 0]);
    let db = tmp.path().join("v2.db");
    std::fs::write(&db, read(&cat, &v(2)).unwrap()).unwrap();
    assert_eq!(rows(&db), [1, 2]);
    std::fs::write(&db, read(&cat, &v(6)).unwrap()).unwrap();
    assert_eq!(rows(&db), [50, 6]);
}

#[test]
fn cancelling_stops_a_running_rebuild() {
    let tmp = scratch();
    let (log, _) = hostile_log(
        tmp.path(),
        &["INSERT INTO t SELECT count(*) FROM n a, n b, n c, n d, n e".to_owned()],
    );
    let src = source(tmp.path(), &[("node.bkp", &log)]);
    let cache = scratch();
    let (cat, opts) = open(&src, cache.path(), |_| {});
    let limits = opts.sql.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        limits.cancel();
        Instant::now()
    });
    let e = read(&cat, &format!("node.bkp/{}/lightningd.sqlite3", name(3))).unwrap_err();
    let cancelled = canceller.join().unwrap();
    assert!(
        cancelled.elapsed() < Duration::from_secs(1),
        "{:?}",
        cancelled.elapsed()
    );
    assert!(e.to_string().contains("cancelled"), "{e}");
}

#[test]
fn eight_readers_of_one_unbuilt_version_share_one_rebuild() {
    if !fuse_available("eight_readers_of_one_unbuilt_version_share_one_rebuild") {
        return;
    }
    let row = cln_manifest()
        .into_iter()
        .find(|r| r.scenario == "plain" && r.version == Some(157))
        .unwrap();
    assert!(row.ok);
    let mut m = Mounted::with_env(
        &data_dir().join("clightning"),
        &[],
        &[("RUST_LOG", "warn,restorefs::format::clightning=debug")],
    );
    let db = m.join(&format!("{}/{}/lightningd.sqlite3", row.file, name(157)));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (db, barrier) = (db.clone(), std::sync::Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                std::fs::read(&db).unwrap()
            })
        })
        .collect();
    let got: Vec<Vec<u8>> = readers.into_iter().map(|t| t.join().unwrap()).collect();
    let tmp = scratch();
    let copy = tmp.path().join("copy.db");
    std::fs::write(&copy, &got[0]).unwrap();
    assert_eq!(canon_v1(&copy), row.canon);
    assert!(
        got.iter().all(|g| g == &got[0]),
        "readers got different bytes"
    );
    let log = m.stop();
    let builds = log
        .lines()
        .filter(|l| l.contains(&format!("{}: rebuilding version 157", row.file)))
        .count();
    assert_eq!(builds, 1, "{log}");
}

#[test]
fn sigterm_during_an_endless_rebuild_unmounts_within_two_seconds() {
    if !fuse_available("sigterm_during_an_endless_rebuild_unmounts_within_two_seconds") {
        return;
    }
    let tmp = scratch();
    let (slow, _) = hostile_log(
        tmp.path(),
        &["INSERT INTO t SELECT count(*) FROM n a, n b, n c, n d, n e".to_owned()],
    );
    let src = source(tmp.path(), &[("slow.bkp", &slow)]);
    let mut m = Mounted::new(&src, &["--sql-timeout", "600"]);
    let db = m.join(&format!("slow.bkp/{}/lightningd.sqlite3", name(3)));
    // A reader stuck in the rebuild, as a user's `sqlite3` would be.
    let reader = std::thread::spawn(move || std::fs::read(db).map(|b| b.len()));
    std::thread::sleep(Duration::from_millis(800));
    assert!(!reader.is_finished(), "the rebuild ended by itself");
    let start = Instant::now();
    m.signal_term();
    let status = m.wait_exit(2);
    let took = start.elapsed();
    let log = m.stderr();
    assert!(status.is_some(), "still running 2 s after SIGTERM: {log}");
    assert!(status.unwrap().success(), "exit {status:?}: {log}");
    assert!(!is_mounted(&m.path), "still mounted");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        reader.join().unwrap().is_err(),
        "the interrupted read gave bytes"
    );
    assert_clean_log(&log);
}
