//! Freezer's `rsyncv2` engine stream (spec §7.2; freezer's `engine/rsyncv2/rsyncv2.py`): a
//! MessagePack list of header entries, then the data of every regular-file entry in list order.
//! Read once, front to back, into the same `Member`s as a tar level, so that the tree model and
//! its path checks are shared.
//!
//! Entries are `{path, inode: {mode, dev, uname, gname, atime, mtime, size}, [lname],
//! [new_level], [deltas: [len, [block, ...]]], [prev_name]}` or `{path, deleted: true}`. A file
//! with `new_level` and `deltas` stores only its changed blocks (`rsync_block_size` bytes each,
//! the last one possibly short): the rest of the file is the previous level's file at the same
//! offsets, cut to `inode.size`. Freezer's delta (`pyrsync.rsyncdelta_fast`) compares aligned
//! blocks only, so an unchanged block is always the previous file's block of the same index:
//! the "copy" references are implicit, and a block that would lie beyond the previous file is
//! damage, served as an error, never as zeros.
//!
//! Readings of what the spec leaves open, from freezer's engine code: entry fields restorefs
//! does not know fail the level (they might change where data lies); `prev_name` is documented
//! but never written nor read by freezer and is ignored; a file without `new_level` (new, or
//! whose type or mode changed) replaces whatever was at its path; a changed symlink is replaced
//! (freezer's restore only re-times it); owners are names, mapped through this machine's
//! `/etc/passwd` and `/etc/group` as freezer's restore does, else to the user running restorefs.

use std::collections::HashMap;
use std::io::{Read, Write};

use super::msgpack::{self, Budget, Value};
use super::tar::{Limits, Member, MemberKind, Reader, TarError, over_stream};
use super::tree::shown;

/// Freezer's default `rsync_block_size`.
pub const DEFAULT_BLOCK: u64 = 4096;
/// Largest block size accepted (freezer's default is 4 KiB).
pub const MAX_BLOCK: u64 = 1 << 30;

/// A run of changed blocks of a file: `len` bytes at `start` of the file, stored at `data` of
/// the level's decompressed stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Offset in the file.
    pub start: u64,
    /// Length.
    pub len: u64,
    /// Offset in the level's decompressed stream.
    pub data: u64,
}

/// User and group names to ids, as this machine knows them.
pub struct Owners {
    users: HashMap<String, u32>,
    groups: HashMap<String, u32>,
    /// Ids for names this machine does not know: the user running restorefs.
    fallback: (u32, u32),
}

impl Owners {
    /// The names of `/etc/passwd` and `/etc/group` (`root` is 0 even without them).
    pub fn local() -> Owners {
        let read = |p: &str| {
            let mut m: HashMap<String, u32> = std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    let id = f.nth(1)?.parse().ok()?;
                    Some((name.to_owned(), id))
                })
                .collect();
            m.entry("root".into()).or_insert(0);
            m
        };
        Owners {
            users: read("/etc/passwd"),
            groups: read("/etc/group"),
            fallback: (crate::sys::euid(), crate::sys::egid()),
        }
    }

    fn uid(&self, name: Option<&[u8]>) -> u32 {
        name.and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| self.users.get(n).copied())
            .unwrap_or(self.fallback.0)
    }

    fn gid(&self, name: Option<&[u8]>) -> u32 {
        name.and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| self.groups.get(n).copied())
            .unwrap_or(self.fallback.1)
    }
}

/// Reads a whole level's stream from `input`, copying every byte read into `sink`; `block` is
/// the backup's `rsync_block_size`.
pub fn index(
    input: &mut dyn Read,
    sink: &mut dyn Write,
    limits: Limits,
    block: u64,
    owners: &Owners,
) -> Result<Vec<Member>, TarError> {
    let mut r = Reader {
        input,
        sink,
        pos: 0,
        bound: limits.stream,
    };
    let mut first = [0u8; 1];
    if r.fill(&mut first)? == 0 {
        return Err(TarError::at(0, "the stream is empty"));
    }
    if first[0].is_ascii_digit() {
        return Err(TarError::at(
            0,
            "a text header: the stream of freezer's first rsync engine (v1), which restorefs \
             does not read",
        ));
    }
    let n = msgpack::array_len(&mut r, first[0], 0)?;
    let mut budget = Budget {
        used: 0,
        max: limits.memory,
    };
    let mut members = Vec::new();
    let mut stored = Vec::new();
    for _ in 0..n {
        let at = r.pos;
        let v = msgpack::read(&mut r, &mut budget)?;
        let (m, len) = entry(v, at, block, owners)?;
        let runs = match &m.kind {
            MemberKind::Patch(runs) => runs.len(),
            _ => 0,
        };
        let size = std::mem::size_of::<Member>() + m.path.len() + runs * 24;
        budget.charge(size as u64, at)?;
        members.push(m);
        stored.push(len);
    }
    let end = layout(&mut members, &stored, r.pos, limits.stream)?;
    r.drain()?;
    check_length(&members, &stored, end, r.pos)?;
    Ok(members)
}

/// Places each file's data after the header list, in list order; returns where the data ends.
fn layout(members: &mut [Member], stored: &[u64], start: u64, bound: u64) -> Result<u64, TarError> {
    let mut cur = start;
    for (m, &len) in members.iter_mut().zip(stored) {
        m.offset = cur;
        if let MemberKind::Patch(runs) = &mut m.kind {
            for r in runs {
                r.data = r.data.saturating_add(cur);
            }
        }
        cur = match cur.checked_add(len) {
            Some(c) if c <= bound => c,
            _ => {
                return Err(TarError {
                    msg: format!(
                        "{:?} declares {len} bytes of data: with the files before it, more than \
                         a level's stream may hold ({bound} bytes): damaged header (or raise \
                         --cache-size)",
                        shown(&m.path)
                    ),
                    ..over_stream(m.header, bound)
                });
            }
        };
    }
    Ok(cur)
}

/// The stream must end where the last file's data ends: shorter is truncation, longer means
/// the data does not match the headers (every file after the first misfit would be shifted).
fn check_length(members: &[Member], stored: &[u64], end: u64, got: u64) -> Result<(), TarError> {
    if got > end {
        return Err(TarError::at(
            end,
            format!(
                "{} bytes follow the last file's data: the stream does not match its header \
                 list (a file that grew while freezer read it?)",
                got - end
            ),
        ));
    }
    let cut = members
        .iter()
        .zip(stored)
        .find(|(m, len)| m.offset.saturating_add(**len) > got);
    match cut {
        None => Ok(()),
        Some((m, len)) => Err(TarError::at(
            got,
            format!(
                "the stream ends {} bytes into the {len}-byte data of {:?} (at offset {}): \
                 truncated",
                got.saturating_sub(m.offset),
                shown(&m.path),
                m.offset
            ),
        )),
    }
}

/// The fields of one header entry.
#[derive(Default)]
struct Fields {
    path: Option<String>,
    inode: Option<Value>,
    lname: Option<String>,
    new_level: bool,
    deleted: bool,
    deltas: Option<Value>,
}

fn text(v: &Value, what: &str, at: u64) -> Result<String, TarError> {
    v.text()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .ok_or_else(|| TarError::at(at, format!("the entry's {what} is not a string")))
}

fn flag(v: &Value, what: &str, at: u64) -> Result<bool, TarError> {
    match v {
        Value::Bool(b) => Ok(*b),
        _ => Err(TarError::at(
            at,
            format!("the entry's {what} is not true or false"),
        )),
    }
}

fn fields(v: Value, at: u64) -> Result<Fields, TarError> {
    let Value::Map(map) = v else {
        return Err(TarError::at(at, "a header entry is not a map"));
    };
    let mut f = Fields::default();
    for (k, v) in map {
        let key = text(&k, "field name", at)?;
        match key.as_str() {
            "path" => f.path = Some(text(&v, "path", at)?),
            "inode" => f.inode = Some(v),
            "lname" => f.lname = Some(text(&v, "symlink target", at)?),
            "new_level" => f.new_level = flag(&v, "new_level", at)?,
            "deleted" => f.deleted = flag(&v, "deleted", at)?,
            "deltas" => f.deltas = Some(v),
            // Documented by freezer for renames, but never written nor read by it.
            "prev_name" => {}
            other => {
                return Err(TarError::at(
                    at,
                    format!(
                        "unknown header field {other:?}: not written by the rsync engine \
                         restorefs knows, and it might change where data lies"
                    ),
                ));
            }
        }
    }
    Ok(f)
}

/// What an entry's `inode` says.
#[derive(Default)]
struct Inode {
    mode: u32,
    size: u64,
    mtime: i64,
    uname: Option<Vec<u8>>,
    gname: Option<Vec<u8>>,
}

fn inode(v: &Value, at: u64) -> Result<Inode, TarError> {
    let Value::Map(map) = v else {
        return Err(TarError::at(at, "the entry's inode is not a map"));
    };
    let mut i = Inode::default();
    let mut mode = None;
    for (k, v) in map {
        let key = text(k, "inode field name", at)?;
        let bad = || TarError::at(at, format!("the entry's inode {key} is out of range"));
        match key.as_str() {
            "mode" => {
                mode = Some(
                    v.int()
                        .and_then(|m| u32::try_from(m).ok())
                        .ok_or_else(bad)?,
                )
            }
            "size" => {
                i.size = v
                    .int()
                    .and_then(|s| u64::try_from(s).ok())
                    .ok_or_else(bad)?
            }
            "mtime" => i.mtime = v.seconds().ok_or_else(bad)?,
            "uname" => i.uname = Some(v.text().ok_or_else(bad)?.to_vec()),
            "gname" => i.gname = Some(v.text().ok_or_else(bad)?.to_vec()),
            "dev" | "atime" => {}
            other => {
                return Err(TarError::at(at, format!("unknown inode field {other:?}")));
            }
        }
    }
    i.mode = mode.ok_or_else(|| TarError::at(at, "the entry's inode has no mode"))?;
    Ok(i)
}

/// One entry as a member, with the bytes of data it has in the stream.
fn entry(v: Value, at: u64, block: u64, owners: &Owners) -> Result<(Member, u64), TarError> {
    let f = fields(v, at)?;
    let path = f
        .path
        .clone()
        .ok_or_else(|| TarError::at(at, "a header entry without a path"))?;
    let mut m = Member {
        path,
        kind: MemberKind::Deleted,
        mode: 0,
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        offset: 0,
        header: at,
    };
    if f.deleted {
        if f.inode.is_some() {
            return Err(TarError::at(at, "an entry both deleted and described"));
        }
        return Ok((m, 0));
    }
    let Some(i) = &f.inode else {
        return Err(TarError::at(
            at,
            "an entry neither deleted nor described (no inode)",
        ));
    };
    let i = inode(i, at)?;
    m.mode = i.mode & 0o7777;
    m.uid = owners.uid(i.uname.as_deref());
    m.gid = owners.gid(i.gname.as_deref());
    m.mtime = i.mtime;
    let (kind, stored) = kind(&f, &i, block, at)?;
    m.kind = kind;
    if matches!(m.kind, MemberKind::File | MemberKind::Patch(_)) {
        m.size = i.size;
    }
    Ok((m, stored))
}

/// What an entry with an inode is, and the bytes of data it has in the stream.
fn kind(f: &Fields, i: &Inode, block: u64, at: u64) -> Result<(MemberKind, u64), TarError> {
    let regular = i.mode & 0o170000 == 0o100000;
    if f.deltas.is_some() && !(regular && f.new_level) {
        return Err(TarError::at(
            at,
            "deltas on an entry that is not a changed regular file (new_level)",
        ));
    }
    Ok(match (i.mode & 0o170000, &f.deltas) {
        (0o100000, Some(d)) => {
            let (len, runs) = deltas(d, block, at)?;
            (MemberKind::Patch(runs), len)
        }
        (0o100000, None) => (MemberKind::File, i.size),
        (0o040000, _) => (MemberKind::Dir, 0),
        (0o120000, _) => (MemberKind::Symlink(f.lname.clone().unwrap_or_default()), 0),
        (0o020000, _) => (MemberKind::Other(b'3'), 0),
        (0o060000, _) => (MemberKind::Other(b'4'), 0),
        (0o010000, _) => (MemberKind::Other(b'6'), 0),
        _ => (MemberKind::Other(b'?'), 0),
    })
}

/// `deltas`: `[len, [block, ...]]`, the changed blocks in increasing order, `len` their total
/// length (all `block` bytes but the last). Returns `len` and the runs of consecutive blocks,
/// their data offsets relative to the file's data.
fn deltas(v: &Value, block: u64, at: u64) -> Result<(u64, Vec<Run>), TarError> {
    let bad = |why: &str| TarError::at(at, format!("the entry's deltas {why}"));
    let Value::Array(parts) = v else {
        return Err(bad("are not a list"));
    };
    let (Some(len), Some(Value::Array(idx)), 2) = (
        parts.first().and_then(Value::int),
        parts.get(1),
        parts.len(),
    ) else {
        return Err(bad("are not [length, [blocks]]"));
    };
    let len = u64::try_from(len).map_err(|_| bad("have a negative length"))?;
    let n = idx.len() as u64;
    // All blocks full but the last, which holds 1..=block bytes (0 bytes for no block).
    let full = n.saturating_sub(1).checked_mul(block);
    let fits = match full {
        Some(full) if n > 0 => len > full && len - full <= block,
        _ => n == 0 && len == 0,
    };
    if !fits {
        return Err(bad(&format!(
            "list {n} blocks of {block} bytes but {len} bytes: they do not fit"
        )));
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut prev: Option<u64> = None;
    for (k, b) in idx.iter().enumerate() {
        let b = b
            .int()
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(|| bad("list a block number that is not a number ≥ 0"))?;
        if prev.is_some_and(|p| b <= p) {
            return Err(bad("list blocks out of order or twice"));
        }
        let start = b
            .checked_mul(block)
            .ok_or_else(|| bad("list a block beyond any file size"))?;
        let data = k as u64 * block;
        let this = block.min(len - data);
        match runs.last_mut() {
            Some(r) if prev.and_then(|p| p.checked_add(1)) == Some(b) => r.len += this,
            _ => runs.push(Run {
                start,
                len: this,
                data,
            }),
        }
        prev = Some(b);
    }
    Ok((len, runs))
}
