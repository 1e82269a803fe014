//! Damaged and hostile Freezer rsync-engine backups: truncated and over-long streams, unknown
//! header fields, inconsistent deltas, an old v1 stream, hostile paths, changed blocks that
//! refer beyond the previous file, wrong or missing keys. Each gives a clear error naming the
//! data file and offset, fails only what depends on it, never panics, never serves wrong bytes
//! and never writes outside the export folder.

mod common;
mod freezer_rsync_writer;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use freezer_rsync_writer::{Mp, Store, enc};

const L0: i64 = 1_800_000_000;

fn store(root: &Path, block: usize) -> Store {
    Store {
        root: root.join("container"),
        hbn: "host_bad",
        compression: "gzip",
        block,
        key: None,
    }
}

fn s(text: &str) -> Mp {
    Mp::Str(text.to_owned())
}

/// A header entry for `path` with `mode` (type bits included) and `size`.
fn entry(path: &str, mode: u32, size: usize, extra: Vec<(&'static str, Mp)>) -> Mp {
    let inode = Mp::Map(vec![
        ("mode", Mp::Int(i64::from(mode))),
        ("dev", Mp::Int(2049)),
        ("uname", s("root")),
        ("gname", s("root")),
        ("atime", Mp::Float(1.75e9)),
        ("mtime", Mp::Float(1.75e9 + 0.5)),
        ("size", Mp::Int(size as i64)),
    ]);
    let mut fields = vec![("path", s(path)), ("inode", inode)];
    fields.extend(extra);
    Mp::Map(fields)
}

fn file(path: &str, size: usize) -> Mp {
    entry(path, 0o100644, size, Vec::new())
}

/// The header list `entries` followed by `data`.
fn stream(entries: Vec<Mp>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    enc(&Mp::Arr(entries), &mut out);
    out.extend_from_slice(data);
    out
}

/// The data file of backup `level`/`ts` of chain `l0`.
fn data_file(st: &Store, l0: i64, level: u32, ts: i64) -> PathBuf {
    st.root
        .join(format!("data/rsync/{}/{l0}/{level}_{ts}/data", st.hbn))
}

/// Point names by timestamp, and each point's listing.
fn points(source: &Path, extra: &[&str]) -> Vec<(i64, String, serde_json::Value)> {
    let mut args = vec!["ls", "--json", source.to_str().unwrap()];
    args.extend(extra);
    let doc: serde_json::Value = serde_json::from_str(&run_ok(&args)).unwrap();
    let set = &doc["sets"][0];
    set["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["timestamp"].as_i64().unwrap(),
                p["name"].as_str().unwrap().to_owned(),
                p.clone(),
            )
        })
        .collect()
}

/// Exports point `name` of the set; returns the command's output.
fn export(source: &Path, name: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let set = "container/rsync/host_bad";
    let mut args = vec![
        "export".to_owned(),
        source.display().to_string(),
        format!("{set}/{name}/files"),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let r = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_no_panic(&r);
    r
}

fn stderr(r: &std::process::Output) -> String {
    String::from_utf8_lossy(&r.stderr).into_owned()
}

/// What a point's export must say: the level and chain of the data file it names, and what.
type Problem = (u32, i64, &'static str);

#[test]
fn damaged_levels_fail_alone_naming_file_and_offset() {
    let tmp = scratch();
    let st = store(tmp.path(), 4096);
    // Chain A: a good level 0, a level 1 with a field restorefs does not know.
    st.write(L0, 0, L0, &stream(vec![file("a.txt", 5)], b"hello"));
    let odd = entry("a.txt", 0o100644, 5, vec![("surprise", Mp::Int(1))]);
    st.write(L0, 1, L0 + 1, &stream(vec![odd], b"HELLO"));
    // Chain B: data shorter than its headers say.
    let b = L0 + 100;
    st.write(
        b,
        0,
        b,
        &stream(vec![file("x", 3), file("y", 1000)], b"xyz0123"),
    );
    // Chain C: bytes after the last file's data.
    let c = L0 + 200;
    st.write(c, 0, c, &stream(vec![file("x", 3)], b"xyz-and-more"));
    // Chain D: the zlib stream cut in half.
    let d = L0 + 300;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    st.write(d, 0, d, &stream(vec![file("big", big.len())], &big));
    let df = data_file(&st, d, 0, d);
    let raw = std::fs::read(&df).unwrap();
    std::fs::write(&df, &raw[..raw.len() / 2]).unwrap();
    // Chain E: freezer's first rsync engine (a text header).
    let e = L0 + 400;
    st.write(e, 0, e, b"54\0a.txt\x001\x00...");
    // Chain F: deltas that do not fit the block size (two blocks of 4096 in 5 bytes).
    let f = L0 + 500;
    st.write(f, 0, f, &stream(vec![file("f", 5)], b"fffff"));
    let deltas = Mp::Arr(vec![Mp::Int(5), Mp::Arr(vec![Mp::Int(0), Mp::Int(1)])]);
    let bad = entry(
        "f",
        0o100644,
        5,
        vec![("new_level", Mp::Bool(true)), ("deltas", deltas)],
    );
    st.write(f, 1, f + 1, &stream(vec![bad], b"FFFFF"));

    let source = tmp.path();
    let outs = scratch();
    let expect: [(i64, Option<Problem>); 8] = [
        (L0, None),
        (L0 + 1, Some((1, L0, "unknown header field \"surprise\""))),
        (b, Some((0, b, "truncated"))),
        (c, Some((0, c, "follow the last file's data"))),
        (d, Some((0, d, "cannot decode the stream"))),
        (e, Some((0, e, "rsync engine (v1)"))),
        (f, None),
        (f + 1, Some((1, f, "do not fit"))),
    ];
    let listed = points(source, &[]);
    for (ts, problem) in expect {
        let (_, name, _) = listed.iter().find(|p| p.0 == ts).unwrap();
        let out = outs.path().join(ts.to_string());
        let r = export(source, name, &out, &[]);
        match problem {
            None => assert!(r.status.success(), "{name}: {}", stderr(&r)),
            Some((level, l0, what)) => {
                let err = stderr(&r);
                assert!(!r.status.success(), "{name} exported");
                let file = data_file(&st, l0, level, ts);
                assert!(err.contains(&file.display().to_string()), "{name}: {err}");
                assert!(err.contains(what), "{name}: {err}");
                assert!(err.contains("offset"), "{name}: {err}");
            }
        }
    }
    assert_eq!(
        std::fs::read(outs.path().join(L0.to_string()).join("a.txt")).unwrap(),
        b"hello"
    );
}

#[test]
fn hostile_paths_are_left_out_and_nothing_is_written_outside() {
    let tmp = scratch();
    let st = store(tmp.path(), 4096);
    let symlink = |p: &str, target: &str| entry(p, 0o120777, 0, vec![("lname", s(target))]);
    let entries = vec![
        file("../escape", 4),
        file("a/../../up", 4),
        file("", 4),
        file(".", 4),
        file("/abs/file", 4),
        symlink("link", "/etc"),
        file("link/passwd", 4),
        file("ok.txt", 4),
        Mp::Map(vec![("path", s("../gone")), ("deleted", Mp::Bool(true))]),
        Mp::Map(vec![("path", s("")), ("deleted", Mp::Bool(true))]),
    ];
    let data = b"AAAABBBBCCCCDDDDEEEEPWNDGOOD";
    st.write(L0, 0, L0, &stream(entries, data));
    let outs = scratch();
    let out = outs.path().join("export");
    let (_, name, _) = points(tmp.path(), &[]).remove(0);
    let r = export(tmp.path(), &name, &out, &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    let mut got = Vec::new();
    let mut todo = vec![outs.path().to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            got.push(p.strip_prefix(outs.path()).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    got.sort();
    // A leading '/' is dropped as tar drops it; a path through a symlink makes a folder in
    // its place, never following it.
    assert_eq!(
        got,
        [
            "export",
            "export/abs",
            "export/abs/file",
            "export/link",
            "export/link/passwd",
            "export/ok.txt"
        ]
    );
    assert_eq!(std::fs::read(out.join("abs/file")).unwrap(), b"EEEE");
    assert_eq!(std::fs::read(out.join("link/passwd")).unwrap(), b"PWND");
    assert_eq!(std::fs::read(out.join("ok.txt")).unwrap(), b"GOOD");
    assert!(!tmp.path().join("escape").exists());
}

/// Level 0: `f` (100 bytes) and `g`; level 1: `f` grows to 250 bytes, but its changed blocks
/// (64-byte blocks) give only block 3, so bytes 100..192 and 202..250 exist nowhere.
fn out_of_range_chain(root: &Path) -> (Store, Vec<u8>) {
    let st = store(root, 64);
    let base: Vec<u8> = (0..100u8).collect();
    let mut data = base.clone();
    data.extend_from_slice(b"good file\n");
    st.write(
        L0,
        0,
        L0,
        &stream(vec![file("f", 100), file("g", 10)], &data),
    );
    let deltas = Mp::Arr(vec![Mp::Int(10), Mp::Arr(vec![Mp::Int(3)])]);
    let grown = entry(
        "f",
        0o100644,
        250,
        vec![("new_level", Mp::Bool(true)), ("deltas", deltas)],
    );
    st.write(L0, 1, L0 + 1, &stream(vec![grown], b"0123456789"));
    (st, base)
}

#[test]
fn changed_blocks_beyond_the_previous_file_are_damage_not_zeros() {
    let tmp = scratch();
    let (st, _) = out_of_range_chain(tmp.path());
    let listed = points(tmp.path(), &[]);
    let (_, name, _) = listed.iter().find(|p| p.0 == L0 + 1).unwrap();
    let outs = scratch();
    let r = export(tmp.path(), name, &outs.path().join("x"), &[]);
    let err = stderr(&r);
    assert!(!r.status.success());
    let level1 = data_file(&st, L0, 1, L0 + 1);
    assert!(err.contains(&level1.display().to_string()), "{err}");
    assert!(err.contains("\"f\""), "{err}");
    assert!(err.contains("undefined"), "{err}");
    // `verify` finds it without reading the file.
    let r = run(&["verify", tmp.path().to_str().unwrap()]);
    assert_no_panic(&r);
    let text = format!("{}{}", String::from_utf8_lossy(&r.stdout), stderr(&r));
    assert!(!r.status.success(), "{text}");
    assert!(text.contains(&level1.display().to_string()), "{text}");
    assert!(text.contains("undefined"), "{text}");
}

#[test]
fn changed_blocks_beyond_the_previous_file_through_the_mount() {
    if !fuse_available("changed_blocks_beyond_the_previous_file_through_the_mount") {
        return;
    }
    let tmp = scratch();
    let (_, base) = out_of_range_chain(tmp.path());
    let listed = points(tmp.path(), &[]);
    let m = Mounted::new(tmp.path(), &[]);
    let at = |ts: i64| {
        let (_, name, _) = listed.iter().find(|p| p.0 == ts).unwrap();
        m.join(&format!("container/rsync/host_bad/{name}/files"))
    };
    assert_eq!(std::fs::read(at(L0).join("f")).unwrap(), base);
    let dir = at(L0 + 1);
    assert_eq!(std::fs::read(dir.join("g")).unwrap(), b"good file\n");
    let f = std::fs::File::open(dir.join("f")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 250);
    // The kernel reads the file's page as a whole: with bytes no level gives, that read is
    // EIO, never zeros.
    let e = f.read_exact_at(&mut [0u8; 10], 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "{e}");
    let mut all = Vec::new();
    let e = std::fs::File::open(dir.join("f"))
        .unwrap()
        .read_to_end(&mut all)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "{e}");
    let log = m.stderr_once("undefined");
    assert!(log.contains("undefined"), "{log}");
}

#[test]
fn encrypted_without_or_with_the_wrong_key() {
    let tmp = scratch();
    let key = tmp.path().join("key");
    std::fs::write(&key, "right\n").unwrap();
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let st = Store {
        key: Some(key.clone()),
        ..store(tmp.path(), 4096)
    };
    st.write(L0, 0, L0, &stream(vec![file("secret.txt", 6)], b"secret"));
    let listed = points(tmp.path(), &[]);
    assert!(
        listed[0].2["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--freezer-key"),
        "{:?}",
        listed[0].2
    );
    let outs = scratch();
    let name = &listed[0].1;
    let r = export(
        tmp.path(),
        name,
        &outs.path().join("w"),
        &["--freezer-key", wrong.to_str().unwrap()],
    );
    assert!(!r.status.success());
    assert!(stderr(&r).contains("cannot decrypt"), "{}", stderr(&r));
    let out = outs.path().join("r");
    let r = export(
        tmp.path(),
        name,
        &out,
        &["--freezer-key", key.to_str().unwrap()],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(std::fs::read(out.join("secret.txt")).unwrap(), b"secret");
}
