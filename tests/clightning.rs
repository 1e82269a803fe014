//! Core Lightning backup logs written by the plugin's own code: every version the MANIFEST calls
//! ok is served (through `export` and through the mount) with exactly the intended canon-v1
//! hash; every other version is not served. Plus live logs and damaged headers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn source() -> PathBuf {
    data_dir().join("clightning")
}

fn name(v: u32) -> String {
    format!("v{v:010}")
}

/// Points of every set in `ls --json`, by set path then point name.
fn listing(source: &Path) -> BTreeMap<String, BTreeMap<String, Value>> {
    let doc = ls_json(source);
    doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let points = s["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["name"].as_str().unwrap().to_owned(), p.clone()))
                .collect();
            (s["path"].as_str().unwrap().to_owned(), points)
        })
        .collect()
}

#[test]
fn every_intended_version_exports_with_its_canon_hash_and_no_other_is_served() {
    let sets = listing(&source());
    let tmp = scratch();
    let src = source();
    let mut served = 0;
    for row in cln_manifest() {
        let Some(v) = row.version else { continue };
        let point = sets[&row.file].get(&name(v));
        let path = format!("{}/{}/lightningd.sqlite3", row.file, name(v));
        if row.ok {
            let p = point.unwrap_or_else(|| panic!("{row:?}: not listed"));
            assert!(p.get("error").is_none(), "{row:?}: {p}");
            let out = tmp.path().join(format!("{}-{v}.db", row.scenario));
            run_ok(&[
                "export",
                src.to_str().unwrap(),
                &path,
                "-o",
                out.to_str().unwrap(),
            ]);
            assert_eq!(canon_v1(&out), row.canon, "{} v{v}", row.scenario);
            served += 1;
        } else {
            if let Some(p) = point {
                let e = p["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{row:?} is served: {p}"));
                assert!(e.contains(&row.file), "{e}");
            }
            let out = tmp.path().join("never.db");
            let r = run(&[
                "export",
                src.to_str().unwrap(),
                &path,
                "-o",
                out.to_str().unwrap(),
            ]);
            assert_no_panic(&r);
            assert!(!r.status.success(), "{row:?} exported");
        }
    }
    assert!(served > 300, "{served} versions checked");
    // Nothing else is served: every listed point without an error is an ok MANIFEST row.
    let ok: std::collections::HashSet<(String, String)> = cln_manifest()
        .into_iter()
        .filter(|r| r.ok)
        .map(|r| (r.file, name(r.version.unwrap())))
        .collect();
    for (set, points) in &sets {
        for (pname, p) in points {
            if p.get("error").is_none() {
                assert!(
                    ok.contains(&(set.clone(), pname.clone())),
                    "{set}/{pname} served but not intended"
                );
            }
        }
    }
}

#[test]
fn damaged_headers_are_listed_with_their_errors() {
    let sets = ls_json(&source());
    let set = |p: &str| {
        sets["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["path"] == p)
            .unwrap()
            .clone()
    };
    let e = set("bad_file_version.bkp")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        e.contains("bad_file_version.bkp") && e.contains("file_version 2"),
        "{e}"
    );
    let e = set("short_header.bkp")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        e.contains("short_header.bkp: at offset 100: header cut short"),
        "{e}"
    );
    let p = &set("unknown_type.bkp")["points"];
    let v22 = p
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name(22))
        .unwrap();
    assert!(
        v22["error"].as_str().unwrap().contains("at offset 102804"),
        "{v22}"
    );
}

#[test]
fn verify_rebuilds_the_head_and_checks_integrity() {
    let out = run(&["verify", source().to_str().unwrap()]);
    assert_no_panic(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    for f in [
        "plain.bkp",
        "compacted.bkp",
        "rewind.bkp",
        "migration.bkp",
        "small.bkp",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with("OK") && l.contains(f)),
            "{f}: {text}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("DAMAGED") && l.contains(f)),
            "{f}: {text}"
        );
    }
    for f in [
        "zero_tail.bkp",
        "bad_file_version.bkp",
        "short_header.bkp",
        "truncated_payload.bkp",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("DAMAGED") && l.contains(f)),
            "{f}: {text}"
        );
    }
    assert!(!out.status.success());
}

#[test]
fn every_intended_version_through_the_mount() {
    if !fuse_available("every_intended_version_through_the_mount") {
        return;
    }
    let before = std::fs::read_dir(source()).unwrap().count();
    let m = Mounted::new(&source(), &["--cache-size", "1M"]);
    let tmp = scratch();
    for row in cln_manifest() {
        let Some(v) = row.version else { continue };
        let db = m.join(&format!("{}/{}/lightningd.sqlite3", row.file, name(v)));
        if row.ok {
            let copy = tmp.path().join("copy.db");
            std::fs::write(&copy, std::fs::read(&db).unwrap()).unwrap();
            assert_eq!(
                canon_v1(&copy),
                row.canon,
                "{} v{v} via the mount",
                row.scenario
            );
        } else {
            assert!(
                std::fs::read(&db).is_err(),
                "{} v{v} is served",
                row.scenario
            );
        }
    }
    let latest = std::fs::read_link(m.join("plain.bkp/latest")).unwrap();
    assert_eq!(latest.to_str(), Some(name(157).as_str()));
    drop(m);
    assert_eq!(
        std::fs::read_dir(source()).unwrap().count(),
        before,
        "nothing written next to the backups"
    );
}

/// A log file under construction: the header of `small.bkp` with the head set to `version`,
/// and its entries up to `end`.
fn partial_log(small: &[u8], end: usize, version: u32) -> Vec<u8> {
    let mut out = small[..end].to_vec();
    out[4..8].copy_from_slice(&version.to_be_bytes());
    out
}

/// File offsets of the entries of a log, from 512 on, by the spec's entry layout.
fn entry_offsets(log: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut pos = 512;
    while pos + 9 <= log.len() {
        v.push(pos);
        pos += 9 + u32::from_be_bytes(log[pos..pos + 4].try_into().unwrap()) as usize;
    }
    v
}

#[test]
fn a_growing_log_shows_new_versions_and_a_compacted_one_is_read_anew() {
    if !fuse_available("a_growing_log_shows_new_versions_and_a_compacted_one_is_read_anew") {
        return;
    }
    let small = std::fs::read(source().join("small.bkp")).unwrap();
    let offs = entry_offsets(&small);
    let canon = |v: u32| {
        cln_manifest()
            .into_iter()
            .find(|r| r.scenario == "small" && r.version == Some(v))
            .unwrap()
            .canon
    };
    let tmp = scratch();
    let dir = tmp.path().join("node");
    std::fs::create_dir(&dir).unwrap();
    let log = dir.join("backup.bkp");
    // Entries 0..=10: the snapshot (v7) and versions 8..=17.
    std::fs::write(&log, partial_log(&small, offs[11], 17)).unwrap();
    let m = Mounted::new(tmp.path(), &[]);
    let list = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(m.join("node/backup.bkp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('v'))
            .collect();
        v.sort();
        v
    };
    let read_canon = |v: u32| {
        let copy = tmp.path().join(format!("copy{v}.db"));
        std::fs::write(
            &copy,
            std::fs::read(m.join(&format!("node/backup.bkp/{}/lightningd.sqlite3", name(v))))
                .unwrap(),
        )
        .unwrap();
        canon_v1(&copy)
    };
    assert_eq!(list().last().unwrap(), &name(17));
    assert_eq!(read_canon(17), canon(17));

    // The plugin appends the entry, then rewrites the header. Between the two, the new
    // version is not committed: listed, but not served.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&small[offs[11]..offs[12]]).unwrap();
    drop(f);
    assert_eq!(list().last().unwrap(), &name(18));
    assert!(
        std::fs::read(m.join(&format!("node/backup.bkp/{}/lightningd.sqlite3", name(18)))).is_err()
    );
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &18u32.to_be_bytes(), 4).unwrap();
    drop(f);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(read_canon(18), canon(18));
    // A torn append (half an entry) is listed, never served, and breaks nothing.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&small[offs[12]..offs[12] + 20]).unwrap();
    drop(f);
    assert_eq!(list().last().unwrap(), &name(19));
    assert!(
        std::fs::read(m.join(&format!("node/backup.bkp/{}/lightningd.sqlite3", name(19)))).is_err()
    );
    assert_eq!(read_canon(17), canon(17));
    assert_eq!(
        std::fs::read_link(m.join("node/backup.bkp/latest"))
            .unwrap()
            .to_str(),
        Some(name(18).as_str())
    );

    // Compaction renames a new file over the log: its versions replace the old ones.
    let next = dir.join("backup.bkp.compacting");
    std::fs::copy(source().join("compacted.bkp"), &next).unwrap();
    std::fs::rename(&next, &log).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let names = list();
    assert_eq!(names.first().unwrap(), &name(131));
    assert_eq!(names.last().unwrap(), &name(157));
    let compacted = |v: u32| {
        cln_manifest()
            .into_iter()
            .find(|r| r.scenario == "compacted" && r.version == Some(v))
            .unwrap()
            .canon
    };
    assert_eq!(read_canon(157), compacted(157));
    assert!(!m.join(&format!("node/backup.bkp/{}", name(17))).exists());
}

/// A database file made by SQLite itself, as `backup-cli init` would copy it.
fn snapshot_db(dir: &Path, setup: &str) -> Vec<u8> {
    let p = dir.join("snapshot.sqlite3");
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch(setup).unwrap();
    drop(c);
    std::fs::read(&p).unwrap()
}

#[test]
fn foreign_key_pragmas_hold_across_checkpoints() {
    use common::cln_writer::{LogWriter, bump};
    let tmp = scratch();
    let mut setup = String::from(
        "CREATE TABLE vars (name TEXT PRIMARY KEY, intval INTEGER);
         INSERT INTO vars VALUES ('data_version', 1);
         CREATE TABLE p (id INTEGER PRIMARY KEY);
         CREATE TABLE c (pid INTEGER REFERENCES p(id) ON DELETE CASCADE);",
    );
    for i in 1..=60 {
        setup.push_str(&format!(
            "INSERT INTO p VALUES ({i}); INSERT INTO c VALUES ({i});"
        ));
    }
    let mut w = LogWriter::default();
    w.snapshot(1, &snapshot_db(tmp.path(), &setup));
    // Children left per version, by the test's own bookkeeping: deletes cascade only while
    // foreign keys are on (versions 2..=5 and 46..=50), not between the PRAGMA entries.
    let mut children = BTreeMap::new();
    let mut left = 60;
    children.insert(1u32, left);
    for v in 2..=50u32 {
        if v == 6 {
            w.tx(5, &["PRAGMA foreign_keys = OFF;".to_owned()]);
        }
        if v == 46 {
            w.tx(45, &["PRAGMA foreign_keys = ON;".to_owned()]);
        }
        w.tx(v, &[format!("DELETE FROM p WHERE id = {v}"), bump(v)]);
        if !(6..=45).contains(&v) {
            left -= 1;
        }
        children.insert(v, left);
    }
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("node.bkp"), w.finish(50)).unwrap();

    let cache_dir = scratch();
    let ctx = restorefs::model::ScanContext::new(
        restorefs::cache::Cache::new(64 << 20),
        cache_dir.path(),
    );
    let formats = restorefs::format::all(&Default::default());
    let hidden = indicatif::ProgressBar::hidden();
    let cat = restorefs::scan::scan(&src, &formats, &ctx, &hidden).unwrap();
    let root = cat.tree(None);
    let count = |v: u32| -> i64 {
        let node =
            restorefs::vfs::resolve(&root, &format!("node.bkp/{}/lightningd.sqlite3", name(v)))
                .unwrap();
        let restorefs::vfs::Node::File(f) = node else {
            panic!()
        };
        let mut buf = vec![0u8; f.size().unwrap() as usize];
        f.read_at(0, &mut buf).unwrap();
        let copy = tmp.path().join(format!("v{v}.db"));
        std::fs::write(&copy, &buf).unwrap();
        let c = rusqlite::Connection::open(&copy).unwrap();
        c.query_row("SELECT count(*) FROM c", [], |r| r.get(0))
            .unwrap()
    };
    // The head first: it leaves a checkpoint (every 32 versions) between the two PRAGMAs.
    // Versions then rebuilt from that checkpoint must still run with foreign keys off.
    for v in [50, 40, 47, 33, 45, 46, 2, 6] {
        assert_eq!(count(v), children[&v], "version {v}");
    }
    assert!(
        cache_dir.path().join("clightning").is_dir(),
        "checkpoints were kept"
    );
}

/// A scan of `src` with its own cache folder `cache` and SQL time budget.
fn scan_with(src: &Path, cache: &Path, timeout: std::time::Duration) -> restorefs::vfs::Node {
    let ctx = restorefs::model::ScanContext::new(restorefs::cache::Cache::new(64 << 20), cache);
    let mut options = restorefs::format::FormatOptions::default();
    options.sql.timeout = timeout;
    let formats = restorefs::format::all(&options);
    let hidden = indicatif::ProgressBar::hidden();
    restorefs::scan::scan(src, &formats, &ctx, &hidden)
        .unwrap()
        .tree(None)
}

/// The canon-v1 hash of a version read through `root`, or the read's error.
fn canon_of(root: &restorefs::vfs::Node, file: &str, v: u32, tmp: &Path) -> Result<String, String> {
    let path = format!("{file}/{}/lightningd.sqlite3", name(v));
    let node = restorefs::vfs::resolve(root, &path).map_err(|e| e.to_string())?;
    let restorefs::vfs::Node::File(f) = node else {
        return Err("not a file".into());
    };
    let mut buf = vec![0u8; f.size().map_err(|e| e.to_string())? as usize];
    let mut pos = 0;
    while pos < buf.len() {
        let n = f
            .read_at(pos as u64, &mut buf[pos..])
            .map_err(|e| e.to_string())?;
        assert!(n > 0, "{path}: short read");
        pos += n;
    }
    let copy = tmp.join(format!("{file}-{v}.db"));
    std::fs::write(&copy, &buf).unwrap();
    Ok(canon_v1(&copy))
}

/// A few ok versions of every reference log (the first, the middle one and the last: their
/// checkpoints fit the bound of four times the log).
fn sample_versions() -> Vec<ClnRow> {
    let mut by_file: BTreeMap<String, Vec<ClnRow>> = BTreeMap::new();
    for row in cln_manifest().into_iter().filter(|r| r.ok) {
        if source().join(&row.file).exists() {
            by_file.entry(row.file.clone()).or_default().push(row);
        }
    }
    by_file
        .into_values()
        .flat_map(|rows| {
            let n = rows.len();
            rows.into_iter()
                .enumerate()
                .filter(move |(i, _)| *i == 0 || *i + 1 == n || *i == n / 2)
                .map(|(_, r)| r)
        })
        .collect()
}

#[test]
fn a_second_run_copies_kept_checkpoints_instead_of_replaying() {
    let (tmp, cache) = (scratch(), scratch());
    let rows = sample_versions();
    assert!(rows.len() >= 12, "{} versions sampled", rows.len());
    let first = scan_with(&source(), cache.path(), std::time::Duration::from_secs(60));
    for r in &rows {
        let v = r.version.unwrap();
        assert_eq!(
            canon_of(&first, &r.file, v, tmp.path()).as_ref(),
            Ok(&r.canon),
            "{r:?}"
        );
    }
    let kept = cache.path().join("clightning");
    assert!(kept.is_dir(), "checkpoints are kept in the cache folder");
    // No time at all for SQL: any replay fails, so every version must come from its copy.
    let second = scan_with(&source(), cache.path(), std::time::Duration::ZERO);
    for r in &rows {
        let v = r.version.unwrap();
        assert_eq!(
            canon_of(&second, &r.file, v, tmp.path()).as_ref(),
            Ok(&r.canon),
            "{r:?}"
        );
    }
    // And the budget does hold: a version never opened before is replayed, and fails.
    let fresh = scratch();
    let none = scan_with(&source(), fresh.path(), std::time::Duration::ZERO);
    let r = &rows[rows.len() - 1];
    let e = canon_of(&none, &r.file, r.version.unwrap(), tmp.path()).unwrap_err();
    assert!(e.contains("--sql-timeout"), "{e}");
}

/// The kept checkpoint file of the entry at `offset` of a log.
fn kept_file(cache: &Path, offset: usize) -> PathBuf {
    let prefix = format!("{offset:016x}-");
    let paths = std::fs::read_dir(cache.join("clightning")).unwrap();
    paths
        .flat_map(|p| std::fs::read_dir(p.unwrap().path()).unwrap())
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&prefix)
        })
        .unwrap_or_else(|| panic!("no checkpoint at offset {offset}"))
}

#[test]
fn a_damaged_or_swapped_kept_checkpoint_is_rebuilt_never_served() {
    let (tmp, cache) = (scratch(), scratch());
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::copy(source().join("plain.bkp"), src.join("plain.bkp")).unwrap();
    let log = std::fs::read(src.join("plain.bkp")).unwrap();
    let rows: Vec<ClnRow> = cln_manifest()
        .into_iter()
        .filter(|r| r.ok && r.file == "plain.bkp")
        .collect();
    let (a, b) = (&rows[rows.len() / 3], &rows[rows.len() * 2 / 3]);
    let (va, vb) = (a.version.unwrap(), b.version.unwrap());
    // Each version's entry: the last transaction carrying it.
    let offset = |v: u32| {
        *entry_offsets(&log)
            .iter()
            .rfind(|&&o| u32::from_be_bytes(log[o + 4..o + 8].try_into().unwrap()) == v)
            .unwrap()
    };
    let minute = std::time::Duration::from_secs(60);
    let first = scan_with(&src, cache.path(), minute);
    for r in [a, b] {
        let v = r.version.unwrap();
        assert_eq!(
            canon_of(&first, "plain.bkp", v, tmp.path()).as_ref(),
            Ok(&r.canon)
        );
    }
    drop(first);
    let (fa, fb) = (
        kept_file(cache.path(), offset(va)),
        kept_file(cache.path(), offset(vb)),
    );
    // B's name now holds A's state; A's file has one byte flipped in its middle.
    std::fs::copy(&fa, &fb).unwrap();
    let mut bytes = std::fs::read(&fa).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&fa, bytes).unwrap();
    // Without SQL time neither can be served: neither bad file is taken for its version.
    let none = scan_with(&src, cache.path(), std::time::Duration::ZERO);
    for v in [va, vb] {
        let e = canon_of(&none, "plain.bkp", v, tmp.path()).unwrap_err();
        assert!(e.contains("--sql-timeout"), "version {v}: {e}");
    }
    assert!(!fa.exists() && !fb.exists(), "the bad files are removed");
    // With time, both are rebuilt right, and kept again.
    let again = scan_with(&src, cache.path(), minute);
    for r in [a, b] {
        let v = r.version.unwrap();
        assert_eq!(
            canon_of(&again, "plain.bkp", v, tmp.path()).as_ref(),
            Ok(&r.canon)
        );
    }
    kept_file(cache.path(), offset(va));
    kept_file(cache.path(), offset(vb));
}

#[test]
fn a_grown_log_keeps_the_checkpoints_of_its_earlier_part() {
    let (tmp, cache) = (scratch(), scratch());
    let small = std::fs::read(source().join("small.bkp")).unwrap();
    let offsets = entry_offsets(&small);
    let version = |o: usize| u32::from_be_bytes(small[o + 4..o + 8].try_into().unwrap());
    let cut = offsets[offsets.len() / 2];
    let early = version(offsets[offsets.len() / 2 - 1]);
    let rows: BTreeMap<u32, ClnRow> = cln_manifest()
        .into_iter()
        .filter(|r| r.ok && r.file == "small.bkp")
        .map(|r| (r.version.unwrap(), r))
        .collect();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let log = src.join("small.bkp");
    std::fs::write(&log, partial_log(&small, cut, early)).unwrap();
    let minute = std::time::Duration::from_secs(60);
    let first = scan_with(&src, cache.path(), minute);
    let canon = canon_of(&first, "small.bkp", early, tmp.path());
    assert_eq!(canon.as_ref(), Ok(&rows[&early].canon));
    drop(first);
    // The plugin appends the rest and rewrites the header, in place.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.seek(SeekFrom::Start(cut as u64)).unwrap();
        f.write_all(&small[cut..]).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&small[..512]).unwrap();
    }
    // No SQL time: the early version can only come from its kept checkpoint; the new head,
    // never opened, cannot.
    let grown = scan_with(&src, cache.path(), std::time::Duration::ZERO);
    let canon = canon_of(&grown, "small.bkp", early, tmp.path());
    assert_eq!(canon.as_ref(), Ok(&rows[&early].canon));
    let head = *rows.keys().last().unwrap();
    assert!(head > early);
    assert!(canon_of(&grown, "small.bkp", head, tmp.path()).is_err());
}
