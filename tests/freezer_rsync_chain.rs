//! Freezer rsync-engine chains made in test code by a writer written from the spec (§7.2) and
//! freezer's `rsyncv2.py`, independently of restorefs' reader: a source tree changes between
//! levels (files changed in place, appended, truncated, deleted, renamed, folders deleted, a
//! file turned into a folder and back, a symlink retargeted, a mode change, a touch), each level
//! is written as freezer writes it (aligned-block deltas against the previous level, MessagePack
//! headers, Python's zlib, bzip2, xz, optionally `openssl enc` as freezer's MD5 key derivation
//! with the password's newline), and every point restorefs serves must equal the source tree
//! as it was when that level was written.

mod common;
mod freezer_rsync_writer;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use common::tree::{Entry, assert_matches, walk};
use common::*;
use freezer_rsync_writer::Store;

/// Deterministic bytes.
fn bytes(seed: u32, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Writes `data` at `p` with a whole-second mtime (so the model and the float in the header
/// agree to the second).
fn put(src: &Path, p: &str, data: &[u8], mtime: u64) {
    let path = src.join(p);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    set_mtime(&path, mtime);
}

fn set_mtime(path: &Path, mtime: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
}

fn edit(src: &Path, p: &str, f: impl FnOnce(&mut Vec<u8>), mtime: u64) {
    let mut data = std::fs::read(src.join(p)).unwrap();
    f(&mut data);
    put(src, p, &data, mtime);
}

fn symlink(src: &Path, target: &str, p: &str) {
    let _ = std::fs::remove_file(src.join(p));
    std::os::unix::fs::symlink(target, src.join(p)).unwrap();
}

/// The source tree's changes before level `level` (0: the first tree). `bs`: the block size.
fn change(src: &Path, level: u32, bs: usize) {
    let t = 1_750_000_000 + u64::from(level) * 1000;
    match level {
        0 => {
            put(src, "a.txt", b"alpha\n", t);
            put(src, "big.bin", &bytes(1, bs * 3 + bs / 2), t);
            put(src, "grow.bin", &bytes(2, bs * 2), t);
            put(src, "trunc.bin", &bytes(3, bs * 5), t);
            put(src, "del.txt", b"deleted at level 1\n", t);
            put(src, "rename-me.txt", &bytes(4, bs + 7), t);
            put(src, "empty", b"", t);
            put(src, "d/x.txt", b"x\n", t);
            put(src, "d/sub/y.bin", &bytes(5, bs * 2 + 1), t);
            put(src, "was-file", b"a file at level 0\n", t);
            put(src, "was-dir/inner.txt", b"inside\n", t);
            symlink(src, "a.txt", "s");
        }
        1 => {
            edit(src, "big.bin", |d| d[bs + 10] ^= 0xff, t);
            edit(src, "grow.bin", |d| d.extend(bytes(6, bs + bs / 2)), t);
            edit(src, "trunc.bin", |d| d.truncate(bs * 2 + bs / 3), t);
            std::fs::remove_file(src.join("del.txt")).unwrap();
            std::fs::rename(src.join("rename-me.txt"), src.join("renamed.txt")).unwrap();
            std::fs::remove_file(src.join("was-file")).unwrap();
            put(src, "was-file/now-inside.txt", b"a folder now\n", t);
            std::fs::remove_dir_all(src.join("was-dir")).unwrap();
            put(src, "was-dir", &bytes(7, bs + 3), t);
            symlink(src, "big.bin", "s");
            std::fs::set_permissions(src.join("a.txt"), PermissionsExt::from_mode(0o600)).unwrap();
        }
        2 => {
            edit(src, "trunc.bin", |d| d.truncate(bs), t);
            std::fs::remove_dir_all(src.join("d")).unwrap();
            put(src, "new/deep/n.txt", b"new at level 2\n", t);
            edit(
                src,
                "grow.bin",
                |d| {
                    d[0] ^= 1;
                    let last = d.len() - 1;
                    d[last] ^= 1;
                },
                t,
            );
        }
        3 => {}
        _ => {
            edit(
                src,
                "big.bin",
                |d| {
                    d[0] ^= 0x55;
                    let last = d.len() - 1;
                    d[last] ^= 0x55;
                },
                t,
            );
            // Touched: new mtime, same content.
            set_mtime(&src.join("renamed.txt"), t);
            std::fs::remove_dir_all(src.join("was-file")).unwrap();
            put(src, "was-file", b"a file again\n", t);
        }
    }
}

/// Levels written per chain.
const LEVELS: u32 = 5;

/// Writes a chain of `LEVELS` levels and returns each level's timestamp with the source tree
/// as it was when that level was written.
fn write_chain(store: &Store, src: &Path) -> Vec<(i64, BTreeMap<String, Entry>)> {
    std::fs::create_dir_all(src).unwrap();
    std::fs::set_permissions(src, PermissionsExt::from_mode(0o755)).unwrap();
    let l0 = 1_800_000_000;
    let mut old = BTreeMap::new();
    let mut out = Vec::new();
    for level in 0..LEVELS {
        change(src, level, store.block);
        let ts = l0 + i64::from(level) * 10;
        old = store.backup(src, l0, level, ts, &old);
        out.push((ts, walk(src)));
    }
    out
}

/// Every point of the set, exported (and, with `mount`, seen through the mount), equals the
/// source tree its level was written from.
fn check(store: &Store, source: &Path, expected: &[(i64, BTreeMap<String, Entry>)], mount: bool) {
    let set = format!("container/rsync/{}", store.hbn);
    let mut key_args = Vec::new();
    if let Some(k) = &store.key {
        key_args = vec!["--freezer-key".to_owned(), k.display().to_string()];
    }
    let mut ls = vec![
        "ls".to_owned(),
        "--json".into(),
        source.display().to_string(),
    ];
    ls.extend(key_args.iter().cloned());
    let doc: serde_json::Value =
        serde_json::from_str(&run_ok(&ls.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    let listed = doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == set.as_str())
        .unwrap_or_else(|| panic!("no set {set}: {doc}"));
    let name_of = |ts: i64| {
        let p = listed["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["timestamp"] == ts)
            .unwrap();
        p["name"].as_str().unwrap().to_owned()
    };
    let outs = scratch();
    for (i, (ts, want)) in expected.iter().enumerate() {
        let name = name_of(*ts);
        let got = outs.path().join(i.to_string());
        let mut args = vec![
            "export".to_owned(),
            source.display().to_string(),
            format!("{set}/{name}/files"),
            "-o".into(),
            got.display().to_string(),
        ];
        args.extend(key_args.iter().cloned());
        run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_matches(&walk(&got), want, &format!("export {set}/{name}"));
    }
    // Every point's files against the block signatures the writer recorded (as freezer does).
    let mut verify = vec!["verify".to_owned(), source.display().to_string()];
    verify.extend(key_args.iter().cloned());
    let text = run_ok(&verify.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(text.matches("OK ").count(), expected.len(), "{text}");
    if mount {
        let args: Vec<&str> = key_args.iter().map(String::as_str).collect();
        let m = Mounted::new(source, &args);
        for (ts, want) in expected {
            let name = name_of(*ts);
            let root = m.join(&format!("{set}/{name}/files"));
            assert_matches(&walk(&root), want, &format!("mount {set}/{name}"));
        }
    }
}

fn chain_test(compression: &'static str, block: usize, key: bool, mount: bool) {
    let tmp = scratch();
    let source = tmp.path().join("backups");
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, "correct horse\n").unwrap();
    let store = Store {
        root: source.join("container"),
        hbn: "host_rsync",
        compression,
        block,
        key: key.then(|| key_file.clone()),
    };
    let expected = write_chain(&store, &tmp.path().join("src"));
    check(&store, &source, &expected, mount);
}

#[test]
fn zlib_chain_every_point_equals_its_source() {
    let mount = fuse_available("zlib_chain_every_point_equals_its_source");
    chain_test("gzip", 4096, false, mount);
}

#[test]
fn bzip2_chain_with_odd_block_size() {
    chain_test("bzip2", 1000, false, false);
}

#[test]
fn xz_chain() {
    chain_test("xz", 4096, false, false);
}

#[test]
fn encrypted_chain_as_freezer_encrypts() {
    let mount = fuse_available("encrypted_chain_as_freezer_encrypts");
    chain_test("gzip", 512, true, mount);
}
