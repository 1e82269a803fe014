//! Freezer rsync-engine streams made hostile: the sample's level 0 damaged inside its zlib
//! stream, or hostile levels added on top of it (MessagePack header lists with hostile paths,
//! sizes, deltas, types and unknown fields, followed by data that may or may not fit them).

use std::io::{Read, Write};
use std::path::Path;

use super::{HUGE, Rng, hostile_name, mutate_bytes};

/// The sample set's folder below a case's copy of `rsyncv2-level0`.
const SET: &str = "store/{}/rsync/oraclehost_rsv2/1795313347";
/// Paths of the sample, to aim changes at.
const PATHS: [&str; 8] = [
    "a.txt",
    "b.bin",
    "sub",
    "sub/c.txt",
    "link",
    "link/through",
    "new",
    "sub/new/deep",
];

/// A MessagePack value.
enum Mp {
    Int(u64),
    Neg(i64),
    Float(f64),
    Str(Vec<u8>),
    Bool(bool),
    Nil,
    Arr(Vec<Mp>),
    Map(Vec<(Mp, Mp)>),
}

fn s(text: &str) -> Mp {
    Mp::Str(text.as_bytes().to_vec())
}

fn enc(v: &Mp, out: &mut Vec<u8>) {
    let len = |out: &mut Vec<u8>, n: usize, fix: u8, m16: u8, m32: u8, fix_max: usize| {
        if n <= fix_max {
            out.push(fix | n as u8);
        } else if n <= 0xffff {
            out.push(m16);
            out.extend((n as u16).to_be_bytes());
        } else {
            out.push(m32);
            out.extend((n as u32).to_be_bytes());
        }
    };
    match v {
        Mp::Int(i) => {
            out.push(0xcf);
            out.extend(i.to_be_bytes());
        }
        Mp::Neg(i) => {
            out.push(0xd3);
            out.extend(i.to_be_bytes());
        }
        Mp::Float(f) => {
            out.push(0xcb);
            out.extend(f.to_be_bytes());
        }
        Mp::Str(b) => {
            len(out, b.len(), 0xa0, 0xda, 0xdb, 31);
            out.extend(b);
        }
        Mp::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Mp::Nil => out.push(0xc0),
        Mp::Arr(items) => {
            len(out, items.len(), 0x90, 0xdc, 0xdd, 15);
            items.iter().for_each(|i| enc(i, out));
        }
        Mp::Map(fields) => {
            len(out, fields.len(), 0x80, 0xde, 0xdf, 15);
            for (k, v) in fields {
                enc(k, out);
                enc(v, out);
            }
        }
    }
}

fn path(rng: &mut Rng) -> String {
    if rng.one_in(3) {
        hostile_name(rng)
    } else {
        (*rng.pick(&PATHS)).to_owned()
    }
}

fn number(rng: &mut Rng, small: u64) -> u64 {
    if rng.one_in(5) {
        *rng.pick(&HUGE)
    } else {
        rng.next() % small.max(1)
    }
}

/// An inode map; returns it with the size it declares.
fn inode(rng: &mut Rng, mode: u64) -> (Mp, u64) {
    let size = number(rng, 20_000);
    let mut f = vec![
        (s("mode"), Mp::Int(mode)),
        (s("dev"), Mp::Int(65024)),
        (
            s("uname"),
            s(if rng.one_in(3) { "nobody-here" } else { "root" }),
        ),
        (s("gname"), s("root")),
        (s("atime"), Mp::Float(1.7e9)),
        (
            s("mtime"),
            match rng.below(20) {
                0 => Mp::Float(f64::NAN),
                1 => Mp::Neg(-5),
                _ => Mp::Float(1.7e9),
            },
        ),
        (s("size"), Mp::Int(size)),
    ];
    if rng.one_in(20) {
        f.remove(rng.below(f.len()));
    }
    if rng.one_in(30) {
        f.push((s("xattrs"), Mp::Nil));
    }
    (Mp::Map(f), size)
}

/// One hostile entry; returns it with the bytes of data it declares. Entries that fail the
/// whole level are rare, so that most streams reach the tree and the changed-block reads.
fn entry(rng: &mut Rng, block: u64) -> (Mp, u64) {
    let p = (s("path"), s(&path(rng)));
    let kind = if rng.one_in(20) {
        6
    } else {
        *rng.pick(&[0, 1, 2, 3, 4, 5, 7, 8])
    };
    match kind {
        0 => (Mp::Map(vec![p, (s("deleted"), Mp::Bool(true))]), 0),
        1 => {
            let (i, _) = inode(rng, 0o040755);
            (Mp::Map(vec![p, (s("inode"), i)]), 0)
        }
        2 => {
            let (i, _) = inode(rng, 0o120777);
            let target = s(&hostile_name(rng));
            (Mp::Map(vec![p, (s("inode"), i), (s("lname"), target)]), 0)
        }
        3 | 4 => {
            // Changed blocks: consistent with the block size or not.
            let (i, _) = inode(rng, 0o100644);
            let n = 1 + rng.below(4) as u64;
            let mut idx: Vec<u64> = (0..n).map(|_| number(rng, 8)).collect();
            if !rng.one_in(8) {
                idx.sort_unstable();
                idx.dedup();
            }
            let len = if rng.one_in(6) {
                number(rng, 20_000)
            } else {
                (idx.len() as u64).saturating_sub(1) * block + 1 + rng.next() % block.max(1)
            };
            let deltas = Mp::Arr(vec![
                Mp::Int(len),
                Mp::Arr(idx.into_iter().map(Mp::Int).collect()),
            ]);
            let fields = vec![
                p,
                (s("inode"), i),
                (s("new_level"), Mp::Bool(!rng.one_in(12))),
                (s("deltas"), deltas),
            ];
            (Mp::Map(fields), len)
        }
        5 => {
            let mode = *rng.pick(&[0o010644, 0o020644, 0o140755, 0o170000]);
            let (i, _) = inode(rng, mode);
            (Mp::Map(vec![p, (s("inode"), i)]), 0)
        }
        6 => {
            let junk = match rng.below(4) {
                0 => Mp::Arr(vec![Mp::Nil]),
                1 => Mp::Map(vec![p, (s("surprise"), Mp::Int(1))]),
                2 => Mp::Map(vec![(Mp::Int(1), Mp::Nil)]),
                _ => Mp::Map(vec![p]),
            };
            (junk, 0)
        }
        _ => {
            let (i, size) = inode(rng, 0o100600);
            (Mp::Map(vec![p, (s("inode"), i)]), size)
        }
    }
}

/// A hostile stream: entries, then data that fits them, or not.
fn stream(rng: &mut Rng, block: u64) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut want = 0u64;
    for _ in 0..1 + rng.below(12) {
        let (e, len) = entry(rng, block);
        entries.push(e);
        want = want.saturating_add(len);
    }
    let mut out = Vec::new();
    enc(&Mp::Arr(entries), &mut out);
    let len = if want < 1 << 20 && !rng.one_in(4) {
        want
    } else {
        rng.next() % 50_000
    };
    out.extend(rng.bytes(len as usize));
    out
}

/// An `engine_metadata` with block signatures that may or may not fit the files, or be lists
/// at all; sometimes a list that claims billions of entries.
fn engine_metadata(rng: &mut Rng) -> Vec<u8> {
    let files = (0..1 + rng.below(4))
        .map(|_| {
            let n = rng.below(8);
            let weak = Mp::Arr((0..n).map(|_| Mp::Int(number(rng, 1 << 32))).collect());
            let strong = Mp::Arr(
                (0..n + usize::from(rng.one_in(8)))
                    .map(|_| s(&format!("{:040x}", rng.next())))
                    .collect(),
            );
            let sig = if rng.one_in(8) {
                Mp::Int(7)
            } else {
                Mp::Arr(vec![weak, strong])
            };
            (s(&path(rng)), Mp::Map(vec![(s("signature"), sig)]))
        })
        .collect();
    let mut out = Vec::new();
    enc(&Mp::Map(vec![(s("files"), Mp::Map(files))]), &mut out);
    if rng.one_in(8) {
        // `{"files": <a map of 4 billion entries>}` in a few bytes.
        out = b"\x81\xa5files\xdf\xff\xff\xff\xff\x01\x02".to_vec();
    }
    out
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// One mutation of a case's copy of the rsync sample at `dir`; returns what it did.
pub fn mutate(rng: &mut Rng, dir: &Path) -> String {
    let set_data = dir.join(SET.replace("{}", "data"));
    let set_meta = dir.join(SET.replace("{}", "metadata"));
    if rng.one_in(3) {
        let f = set_data.join("0_1795313347/data");
        let Ok(raw) = std::fs::read(&f) else {
            return "level 0 missing".into();
        };
        let mut plain = Vec::new();
        if flate2::read::ZlibDecoder::new(&raw[..])
            .read_to_end(&mut plain)
            .is_err()
        {
            return "level 0 already damaged".into();
        }
        let what = mutate_bytes(rng, &mut plain);
        std::fs::write(&f, zlib(&plain)).unwrap();
        return format!("inside level 0's zlib: {what}");
    }
    let level = 1 + rng.below(3) as u64;
    let ts = 1795313347 + level;
    let block = if rng.one_in(5) {
        *rng.pick(&[0, 1, 3, 1 << 31, u64::MAX])
    } else {
        4096
    };
    let rel = format!("{level}_{ts}");
    std::fs::create_dir_all(set_data.join(&rel)).unwrap();
    std::fs::create_dir_all(set_meta.join(&rel)).unwrap();
    let data = stream(rng, block.clamp(1, 1 << 20));
    let compressed = if rng.one_in(8) { data } else { zlib(&data) };
    std::fs::write(set_data.join(&rel).join("data"), compressed).unwrap();
    if rng.one_in(2) {
        let meta = zlib(&engine_metadata(rng));
        std::fs::write(set_data.join(&rel).join("engine_metadata"), meta).unwrap();
    }
    let meta = format!(
        r#"{{"engine_name": "rsync", "compression": "gzip", "rsync_block_size": {block}, "encryption": false}}"#
    );
    std::fs::write(set_meta.join(&rel).join("metadata"), meta).unwrap();
    format!("hostile level {level} (block size {block})")
}
