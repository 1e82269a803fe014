//! Freezer rsync-engine chains made in test code by a writer written from the spec (§7.2) and
//! freezer's `rsyncv2.py`, independently of restorefs' reader: a source tree changes between
//! levels (files changed in place, appended, truncated, deleted, renamed, folders deleted, a
//! file turned into a folder and back, a symlink retargeted, a mode change, a touch), each level
//! is written as freezer writes it (aligned-block deltas against the previous level, MessagePack
//! headers, Python's zlib, bzip2, xz, optionally `openssl enc` as freezer's MD5 key derivation
//! with the password's newline), and every point restorefs serves must equal the source tree
//! as it was when that level was written.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use common::tree::{Entry, assert_matches, walk};
use common::*;

/// A MessagePack value, for the writer.
enum Mp {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Arr(Vec<Mp>),
    Map(Vec<(&'static str, Mp)>),
}

fn len_marker(out: &mut Vec<u8>, n: usize, fix: u8, fix_max: usize, m16: u8, m32: u8) {
    if n <= fix_max {
        out.push(fix | n as u8);
    } else if n <= 0xffff {
        out.push(m16);
        out.extend((n as u16).to_be_bytes());
    } else {
        out.push(m32);
        out.extend((n as u32).to_be_bytes());
    }
}

fn enc(v: &Mp, out: &mut Vec<u8>) {
    match v {
        Mp::Int(i) if (0..128).contains(i) => out.push(*i as u8),
        Mp::Int(i) if (0..=0xffff).contains(i) => {
            out.push(0xcd);
            out.extend((*i as u16).to_be_bytes());
        }
        Mp::Int(i) if (0..=0xffff_ffff).contains(i) => {
            out.push(0xce);
            out.extend((*i as u32).to_be_bytes());
        }
        Mp::Int(i) => {
            out.push(0xd3);
            out.extend(i.to_be_bytes());
        }
        Mp::Float(f) => {
            out.push(0xcb);
            out.extend(f.to_be_bytes());
        }
        Mp::Str(s) => {
            let n = s.len();
            if n < 32 {
                out.push(0xa0 | n as u8);
            } else if n < 256 {
                out.extend([0xd9, n as u8]);
            } else {
                len_marker(out, n, 0, 0, 0xda, 0xdb);
            }
            out.extend(s.as_bytes());
        }
        Mp::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Mp::Arr(items) => {
            len_marker(out, items.len(), 0x90, 15, 0xdc, 0xdd);
            items.iter().for_each(|i| enc(i, out));
        }
        Mp::Map(fields) => {
            len_marker(out, fields.len(), 0x80, 15, 0xde, 0xdf);
            for (k, v) in fields {
                enc(&Mp::Str((*k).to_owned()), out);
                enc(v, out);
            }
        }
    }
}

/// What freezer's engine_metadata keeps of a path: mode, times and (for files) the blocks'
/// content, standing for the signature (adler32 + sha1 per block).
#[derive(Clone)]
struct Old {
    mode: u32,
    mtime: f64,
    ctime: f64,
    blocks: Vec<Vec<u8>>,
}

/// A Freezer container with one rsync-engine set.
struct Store {
    root: PathBuf,
    hbn: &'static str,
    compression: &'static str,
    block: usize,
    /// The password file (its first line, newline included, is the password, as freezer's
    /// `readline()` reads it).
    key: Option<PathBuf>,
}

/// `os.walk(top)` order: each folder's subfolders, then its other entries, then the subfolders'
/// own contents; the top itself is not listed. Names sorted (freezer takes `listdir` order).
fn os_walk(top: &Path, rel: &str, out: &mut Vec<String>) {
    let mut names: Vec<String> = std::fs::read_dir(top.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let path = |n: &str| {
        if rel.is_empty() {
            n.to_owned()
        } else {
            format!("{rel}/{n}")
        }
    };
    let is_dir = |n: &str| {
        std::fs::symlink_metadata(top.join(path(n)))
            .unwrap()
            .is_dir()
    };
    let (dirs, files): (Vec<&String>, Vec<&String>) = names.iter().partition(|n| is_dir(n));
    out.extend(dirs.iter().map(|n| path(n)));
    out.extend(files.iter().map(|n| path(n)));
    for d in dirs {
        os_walk(top, &path(d), out);
    }
}

fn secs(s: i64, ns: i64) -> f64 {
    s as f64 + ns as f64 / 1e9
}

impl Store {
    /// Writes one backup of `src` as freezer's rsyncv2 engine does, given the previous level's
    /// engine metadata (`old`, empty for level 0); returns this level's.
    fn backup(
        &self,
        src: &Path,
        l0: i64,
        level: u32,
        ts: i64,
        old: &BTreeMap<String, Old>,
    ) -> BTreeMap<String, Old> {
        let mut paths = Vec::new();
        os_walk(src, "", &mut paths);
        let mut now = BTreeMap::new();
        let mut headers = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        for p in &paths {
            let md = std::fs::symlink_metadata(src.join(p)).unwrap();
            let content = if md.is_file() {
                std::fs::read(src.join(p)).unwrap()
            } else {
                Vec::new()
            };
            let meta = Old {
                mode: md.mode(),
                mtime: secs(md.mtime(), md.mtime_nsec()),
                ctime: secs(md.ctime(), md.ctime_nsec()),
                blocks: content.chunks(self.block).map(<[u8]>::to_vec).collect(),
            };
            // A mode change (type or permissions) makes it a new file.
            let prev = old.get(p).filter(|o| o.mode == meta.mode);
            let changed = prev.map(|o| o.mtime != meta.mtime || o.ctime != meta.ctime);
            now.insert(p.clone(), meta.clone());
            if changed == Some(false) {
                continue;
            }
            let mut fields = vec![("path", Mp::Str(p.clone())), ("inode", inode(&md, &meta))];
            if md.file_type().is_symlink() {
                let target = std::fs::read_link(src.join(p)).unwrap();
                fields.push(("lname", Mp::Str(target.to_str().unwrap().to_owned())));
            }
            if changed == Some(true) {
                fields.push(("new_level", Mp::Bool(true)));
            }
            if md.is_file() {
                let mut changed_blocks = Vec::new();
                if let Some(o) = prev {
                    for (i, b) in meta.blocks.iter().enumerate() {
                        if o.blocks.get(i) != Some(b) {
                            changed_blocks.push(i);
                        }
                    }
                }
                let len: usize = changed_blocks.iter().map(|&i| meta.blocks[i].len()).sum();
                if len > 0 {
                    let idx = changed_blocks.iter().map(|&i| Mp::Int(i as i64)).collect();
                    fields.push(("deltas", Mp::Arr(vec![Mp::Int(len as i64), Mp::Arr(idx)])));
                    changed_blocks
                        .iter()
                        .for_each(|&i| data.extend(&meta.blocks[i]));
                } else {
                    data.extend(&content);
                }
            }
            headers.push(Mp::Map(fields));
        }
        for gone in old.keys().filter(|k| !now.contains_key(*k)) {
            headers.push(Mp::Map(vec![
                ("path", Mp::Str(gone.clone())),
                ("deleted", Mp::Bool(true)),
            ]));
        }
        let mut stream = Vec::new();
        enc(&Mp::Arr(headers), &mut stream);
        stream.extend(data);
        self.write(l0, level, ts, &stream);
        now
    }

    fn write(&self, l0: i64, level: u32, ts: i64, stream: &[u8]) {
        let rel = format!("rsync/{}/{l0}/{level}_{ts}", self.hbn);
        let data_dir = self.root.join("data").join(&rel);
        let meta_dir = self.root.join("metadata").join(&rel);
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::create_dir_all(&meta_dir).unwrap();
        let compress = match self.compression {
            // Python's zlib, as freezer's `zlib.compressobj(9)`.
            "gzip" => {
                "python3 -c 'import sys, zlib; sys.stdout.buffer.write(zlib.compress(sys.stdin.buffer.read(), 9))'"
            }
            "bzip2" => "bzip2 -c",
            _ => "xz -c",
        };
        let encrypt = match &self.key {
            // Freezer's crypt.py: OpenSSL's format, MD5 key derivation, the password as
            // `readline()` returns it (with its newline).
            Some(_) => " | openssl enc -aes-256-cfb -md md5 -pass env:RFZ_PASSWORD",
            None => "",
        };
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!(
                "{compress}{encrypt} > {}",
                data_dir.join("data").display()
            ))
            .stdin(Stdio::piped());
        if let Some(k) = &self.key {
            let text = std::fs::read_to_string(k).unwrap();
            let line = text.split_inclusive('\n').next().unwrap().to_owned();
            cmd.env("RFZ_PASSWORD", line);
        }
        let mut child = cmd.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stream).unwrap();
        assert!(child.wait().unwrap().success());
        let meta = serde_json::json!({
            "engine_name": "rsync",
            "compression": self.compression,
            "rsync_block_size": self.block,
            "encryption": self.key.is_some(),
        });
        std::fs::write(meta_dir.join("metadata"), meta.to_string()).unwrap();
    }
}

fn inode(md: &std::fs::Metadata, meta: &Old) -> Mp {
    let name = |id: u32| {
        Mp::Str(if id == 0 {
            "root".into()
        } else {
            id.to_string()
        })
    };
    Mp::Map(vec![
        ("mode", Mp::Int(i64::from(md.mode()))),
        ("dev", Mp::Int(md.dev() as i64)),
        ("uname", name(md.uid())),
        ("gname", name(md.gid())),
        ("atime", Mp::Float(secs(md.atime(), md.atime_nsec()))),
        ("mtime", Mp::Float(meta.mtime)),
        ("size", Mp::Int(md.len() as i64)),
    ])
}

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
