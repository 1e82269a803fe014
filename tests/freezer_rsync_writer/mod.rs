//! A writer of Freezer rsync-engine (`rsyncv2`) backups for tests, written from the spec (§7.2)
//! and freezer's `rsyncv2.py`, sharing no code with restorefs' reader: MessagePack headers in
//! `os.walk` order, aligned-block deltas against the previous level, deletions last, Python's
//! zlib, bzip2 or xz, and `openssl enc` as freezer's own encryption (MD5 key derivation, the
//! password with its newline).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha1::{Digest, Sha1};

/// A MessagePack value.
pub enum Mp {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Arr(Vec<Mp>),
    Map(Vec<(&'static str, Mp)>),
    /// A map with computed keys.
    Dict(Vec<(String, Mp)>),
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

/// Appends `v`, MessagePack-encoded, to `out`.
pub fn enc(v: &Mp, out: &mut Vec<u8>) {
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
        Mp::Dict(fields) => {
            len_marker(out, fields.len(), 0x80, 15, 0xde, 0xdf);
            for (k, v) in fields {
                enc(&Mp::Str(k.clone()), out);
                enc(v, out);
            }
        }
    }
}

/// What freezer's engine_metadata keeps of a path: mode, times and (for files) the blocks'
/// content, standing for the signature (adler32 + sha1 per block).
#[derive(Clone)]
pub struct Old {
    mode: u32,
    mtime: f64,
    ctime: f64,
    blocks: Vec<Vec<u8>>,
}

/// A Freezer container with one rsync-engine set.
pub struct Store {
    pub root: PathBuf,
    pub hbn: &'static str,
    pub compression: &'static str,
    pub block: usize,
    /// The password file (its first line, newline included, is the password, as freezer's
    /// `readline()` reads it).
    pub key: Option<PathBuf>,
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
    pub fn backup(
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
        self.engine_metadata(l0, level, ts, &now);
        now
    }

    /// Writes `stream` (compressed and encrypted as the store says) as backup `level_ts` of
    /// chain `l0`, with its metadata.
    pub fn write(&self, l0: i64, level: u32, ts: i64, stream: &[u8]) {
        let rel = format!("rsync/{}/{l0}/{level}_{ts}", self.hbn);
        let data_dir = self.root.join("data").join(&rel);
        let meta_dir = self.root.join("metadata").join(&rel);
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::create_dir_all(&meta_dir).unwrap();
        self.compressed(stream, self.key.is_some(), &data_dir.join("data"));
        let meta = serde_json::json!({
            "engine_name": "rsync",
            "compression": self.compression,
            "rsync_block_size": self.block,
            "encryption": self.key.is_some(),
        });
        std::fs::write(meta_dir.join("metadata"), meta.to_string()).unwrap();
    }

    /// Writes `data` compressed (and, with `encrypt`, encrypted) to `out`.
    fn compressed(&self, data: &[u8], encrypt: bool, out: &Path) {
        let compress = match self.compression {
            // Python's zlib, as freezer's `zlib.compressobj(9)` and `zlib.compress`.
            "gzip" => {
                "python3 -c 'import sys, zlib; sys.stdout.buffer.write(zlib.compress(sys.stdin.buffer.read(), 9))'"
            }
            "bzip2" => "bzip2 -c",
            _ => "xz -c",
        };
        // Freezer's crypt.py: OpenSSL's format, MD5 key derivation, the password as
        // `readline()` returns it (with its newline).
        let cipher = if encrypt {
            " | openssl enc -aes-256-cfb -md md5 -pass env:RFZ_PASSWORD"
        } else {
            ""
        };
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("{compress}{cipher} > {}", out.display()))
            .stdin(Stdio::piped());
        if let Some(k) = &self.key {
            let text = std::fs::read_to_string(k).unwrap();
            let line = text.split_inclusive('\n').next().unwrap().to_owned();
            cmd.env("RFZ_PASSWORD", line);
        }
        let mut child = cmd.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), data).unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// Writes a backup's `engine_metadata` as freezer does (compressed, never encrypted): per
    /// path its mode and times, and for files the Adler-32 and SHA-1 of every block.
    fn engine_metadata(&self, l0: i64, level: u32, ts: i64, files: &BTreeMap<String, Old>) {
        let entries = files
            .iter()
            .map(|(p, o)| {
                let mut f = vec![
                    ("mode", Mp::Int(i64::from(o.mode))),
                    ("ctime", Mp::Float(o.ctime)),
                    ("mtime", Mp::Float(o.mtime)),
                ];
                if o.mode & 0o170000 == 0o100000 {
                    let adler = o.blocks.iter().map(|b| Mp::Int(adler32(b).into()));
                    let sha1 = o.blocks.iter().map(|b| {
                        Mp::Str(Sha1::digest(b).iter().map(|x| format!("{x:02x}")).collect())
                    });
                    f.push((
                        "signature",
                        Mp::Arr(vec![Mp::Arr(adler.collect()), Mp::Arr(sha1.collect())]),
                    ));
                }
                (p.clone(), Mp::Map(f))
            })
            .collect();
        let doc = Mp::Map(vec![
            ("files", Mp::Dict(entries)),
            ("platform", Mp::Str("linux".into())),
            ("abs_backup_path", Mp::Str("/src".into())),
            ("rsync_struct_ver", Mp::Int(2)),
            ("rsync_block_size", Mp::Int(self.block as i64)),
        ]);
        let mut bytes = Vec::new();
        enc(&doc, &mut bytes);
        let rel = format!("rsync/{}/{l0}/{level}_{ts}", self.hbn);
        let out = self.root.join("data").join(rel).join("engine_metadata");
        self.compressed(&bytes, false, &out);
    }
}

/// Adler-32 (RFC 1950), as Python's `zlib.adler32`.
fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
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
