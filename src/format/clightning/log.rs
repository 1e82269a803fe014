//! The Core Lightning backup plugin's file: a 512-byte header, then entries of a 9-byte header
//! (`u32 length, u32 version, u8 type`, big-endian) and a payload (spec §1).

use std::cell::Cell;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use twox_hash::XxHash3_128;

use super::sandbox::{self, Forbidden};
use crate::error::{Error, Result};
use crate::storage::Store;
use crate::sys;

/// Size of the file header; entries start here.
pub const HEADER_LEN: u64 = 512;
/// Size of an entry header.
const ENTRY_HEADER: u64 = 9;
/// The data_version bump that ends every committed transaction (spec §1.2).
const BUMP: &str = "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ";
/// The bump with its version as a parameter: prepared once per rebuild, not once per version.
pub const BUMP_BOUND: &str =
    "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ?1";
/// How much of a large payload's end is looked at for its last statement (the bump is ~90
/// bytes).
const TAIL_WINDOW: u64 = 160;
/// Transaction payloads up to this size are read whole while walking, to screen their
/// statements; larger ones (never written by lightningd) are left to the replay's sandbox.
const SCREEN_MAX: u64 = 16 << 20;
/// Largest transaction payload replayed: four of the longest statements SQLite takes here.
const MAX_TRANSACTION: u64 = 256 << 20;

/// The file header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogHeader {
    /// Must be 1.
    pub file_version: u32,
    /// data_version of the last entry the plugin believes it wrote: the committed head.
    pub version: u32,
    /// Where the plugin thinks the next entry goes (not trusted).
    pub offset_next: u64,
    /// Version before the head.
    pub prev_version: u32,
    /// Where the plugin thinks the head entry starts (not trusted).
    pub offset_last: u64,
    /// Entries appended since the file was made.
    pub version_count: u64,
}

/// What the first bytes of a file say.
pub enum Probe {
    /// Not a backup-plugin file.
    NotOurs,
    /// A valid header.
    Valid(LogHeader),
    /// Looks like a backup-plugin file but its header cannot be used.
    Broken(Error),
}

/// The `N` bytes at `at` (zeros past the end, never reached by the fixed layouts read here).
fn bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(at..).and_then(|r| r.get(..N)) {
        out.copy_from_slice(s);
    }
    out
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes(b, at))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes(b, at))
}

/// Reads the header of `path` from `store`. A file is claimed when its padding (bytes 36..512)
/// is all zero and its first word is a small file version; anything else is not ours.
pub fn probe(store: &dyn Store, path: &Path) -> Probe {
    let Ok(source) = store.open(path) else {
        return Probe::NotOurs;
    };
    let Ok(buf) = source.prefix(0, HEADER_LEN, "the header") else {
        return Probe::NotOurs;
    };
    let n = buf.len();
    let padding = buf.get(36..n);
    if padding.is_none_or(|p| p.iter().any(|&b| b != 0)) {
        return Probe::NotOurs;
    }
    let h = LogHeader {
        file_version: be32(&buf, 0),
        version: be32(&buf, 4),
        offset_next: be64(&buf, 8),
        prev_version: be32(&buf, 16),
        offset_last: be64(&buf, 20),
        version_count: be64(&buf, 28),
    };
    // Sane offsets tell a damaged backup file from unrelated data with zeros in it.
    let plausible = h.offset_next >= HEADER_LEN && h.offset_last < h.offset_next;
    match (n as u64 == HEADER_LEN, h.file_version) {
        (false, 1) => Probe::Broken(Error::corrupt(
            path,
            n as u64,
            format!("header cut short: {n} of {HEADER_LEN} bytes"),
        )),
        (true, 1) => Probe::Valid(h),
        (true, v @ 2..=255) if plausible => Probe::Broken(Error::unsupported(
            path,
            format!("file_version {v} (only version 1 exists)"),
        )),
        _ => Probe::NotOurs,
    }
}

/// Entry type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// SQL statements of one lightningd transaction.
    Transaction,
    /// A whole SQLite database file.
    Snapshot,
}

/// One entry, as indexed (the payload is read when replayed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// File offset of the 9-byte entry header.
    pub offset: u64,
    /// Payload length.
    pub length: u32,
    /// data_version the entry carries.
    pub version: u32,
    /// Type.
    pub kind: EntryKind,
    /// Whether a transaction ends with the data_version bump (PRAGMA-only entries do not).
    pub bump: bool,
    /// A statement the sandbox refuses, found while walking.
    pub forbidden: Option<Forbidden>,
    /// Hash of every entry from the first up to this one (headers and payloads): equal chains
    /// mean equal logs up to here, so a kept checkpoint is tied to the bytes it was made from.
    pub chain: u128,
}

impl Entry {
    /// File offset of the payload.
    pub fn payload_offset(&self) -> u64 {
        self.offset.saturating_add(ENTRY_HEADER)
    }

    /// File offset just past the entry.
    pub fn end(&self) -> u64 {
        self.payload_offset().saturating_add(u64::from(self.length))
    }
}

/// Where and why the walk stopped before the end of the file.
#[derive(Clone, Debug)]
pub struct Tail {
    /// Offset of the entry that could not be read.
    pub offset: u64,
    /// Its version, when its header was readable.
    pub version: Option<u32>,
    /// What is wrong.
    pub msg: String,
}

/// Walks entries from `from` to the end of the file (`len` bytes), appending them to `entries`.
/// Stops at the first entry without a full header and payload or with an unknown type (never
/// resynchronises) and says why; `None` when the walk reached the end cleanly.
pub fn walk(file: &File, from: u64, len: u64, entries: &mut Vec<Entry>) -> Option<Tail> {
    // One mapping, not a read or two per entry: a log of a million versions is walked in a
    // fraction of a second.
    let map = match sys::map_file(file, len) {
        Ok(m) => m,
        Err(e) => {
            return Some(Tail {
                offset: from,
                version: None,
                msg: format!("cannot map the file: {e}"),
            });
        }
    };
    let data: &[u8] = map.as_deref().unwrap_or_default();
    let mut pos = from;
    let mut chain = entries.last().map_or(0, |e| e.chain);
    let mut released = pos;
    while pos < len {
        let e = match entry_at(data, pos, len, chain) {
            Ok(e) => e,
            Err(tail) => return Some(tail),
        };
        (chain, pos) = (e.chain, e.end());
        entries.push(e);
        if pos - released > RELEASE_EVERY
            && let Some(m) = &map
        {
            sys::release(m);
            released = pos;
        }
    }
    None
}

/// The entry at `pos` of the log's first `len` bytes `data`, after one whose chain is `chain`;
/// or why there is none.
fn entry_at(data: &[u8], pos: u64, len: u64, chain: u128) -> Result<Entry, Tail> {
    let tail = |version: Option<u32>, msg: String| Tail {
        offset: pos,
        version,
        msg,
    };
    let have = len.saturating_sub(pos);
    let Some(h) = slice(data, pos, ENTRY_HEADER).filter(|_| have >= ENTRY_HEADER) else {
        return Err(tail(
            None,
            format!("entry header cut short: {have} of {ENTRY_HEADER} bytes"),
        ));
    };
    let (length, version) = (be32(h, 0), be32(h, 4));
    let kind = match h.get(8).copied().unwrap_or_default() {
        1 => EntryKind::Transaction,
        2 => EntryKind::Snapshot,
        t => return Err(tail(Some(version), format!("unknown entry type {t}"))),
    };
    let at = pos.saturating_add(ENTRY_HEADER);
    let end = at.saturating_add(u64::from(length));
    let Some(payload) = slice(data, at, u64::from(length)).filter(|_| end <= len) else {
        return Err(tail(
            Some(version),
            format!(
                "payload cut short: {length} bytes announced, {} present",
                len.saturating_sub(at)
            ),
        ));
    };
    let mut hasher = XxHash3_128::new();
    hasher.write(&chain.to_le_bytes());
    hasher.write(h);
    hasher.write(payload);
    let (bump, forbidden) = match kind {
        EntryKind::Snapshot => (false, None),
        EntryKind::Transaction => inspect(payload),
    };
    Ok(Entry {
        offset: pos,
        length,
        version,
        kind,
        bump,
        forbidden,
        chain: hasher.finish_128(),
    })
}

/// `n` bytes of `data` at `at`, if all there.
fn slice(data: &[u8], at: u64, n: u64) -> Option<&[u8]> {
    let at = usize::try_from(at).ok()?;
    data.get(at..at.checked_add(usize::try_from(n).ok()?)?)
}

/// Whether a transaction payload ends with the bump, and its first statement the sandbox
/// refuses (payloads larger than `SCREEN_MAX` are not screened).
fn inspect(payload: &[u8]) -> (bool, Option<Forbidden>) {
    let last = payload.rsplit(|&b| b == 0).next().unwrap_or_default();
    if payload.len() as u64 > SCREEN_MAX {
        // Only the end is looked at: a last statement longer than the window is no bump.
        let bump = last.len() < TAIL_WINDOW as usize && is_bump(&String::from_utf8_lossy(last));
        return (bump, None);
    }
    (
        is_bump(&String::from_utf8_lossy(last)),
        sandbox::screen(payload),
    )
}

/// N of a data_version bump `… AND intval = N` whose N is an integer SQLite reads as one.
pub fn bump_value(stmt: &str) -> Option<i64> {
    let n = stmt
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .strip_prefix(BUMP)?;
    n.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| n.parse().ok())
        .flatten()
}

/// Whether `stmt` is the data_version bump `… AND intval = N` (with or without `;`).
pub fn is_bump(stmt: &str) -> bool {
    stmt.trim()
        .trim_end_matches(';')
        .trim_end()
        .strip_prefix(BUMP)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Mapped bytes read between two releases of the mapping's pages (so a replay does not pile
/// the whole log up in the resident set).
const RELEASE_EVERY: u64 = 32 << 20;

/// The log mapped for one rebuild: payloads are slices of it, not one read each.
pub struct Mapped {
    map: Option<Mmap>,
    path: PathBuf,
    /// Bytes touched since the pages were last released.
    touched: Cell<u64>,
}

impl Mapped {
    /// Maps `file` (the log at `path`) as it is now.
    pub fn new(file: &File, path: &Path) -> Result<Mapped> {
        let len = file.metadata().map_err(|e| Error::io(path, &e))?.len();
        let map = sys::map_file(file, len).map_err(|e| Error::io(path, &e))?;
        Ok(Mapped {
            map,
            path: path.to_path_buf(),
            touched: Cell::new(0),
        })
    }

    fn bytes(&self, e: &Entry) -> Result<&[u8]> {
        let all: &[u8] = self.map.as_deref().unwrap_or_default();
        let range = usize::try_from(e.payload_offset())
            .ok()
            .zip(usize::try_from(e.end()).ok());
        let bytes = range.and_then(|(a, b)| all.get(a..b)).ok_or_else(|| {
            Error::corrupt(
                &self.path,
                e.offset,
                "the entry is no longer in the file (it shrank)",
            )
        })?;
        let touched = self.touched.get() + bytes.len() as u64;
        if touched > RELEASE_EVERY
            && let Some(m) = &self.map
        {
            sys::release(m);
            self.touched.set(0);
        } else {
            self.touched.set(touched);
        }
        Ok(bytes)
    }

    /// A transaction entry's payload (at most `MAX_TRANSACTION` bytes: no more than SQLite would
    /// take).
    pub fn payload(&self, e: &Entry) -> Result<&[u8]> {
        if u64::from(e.length) > MAX_TRANSACTION {
            return Err(Error::corrupt(
                &self.path,
                e.offset,
                format!(
                    "a transaction of {} bytes; restorefs replays at most {MAX_TRANSACTION}",
                    e.length
                ),
            ));
        }
        self.bytes(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_statements() {
        assert!(is_bump(
            "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 7"
        ));
        assert!(is_bump(
            "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 12;"
        ));
        assert!(!is_bump(
            "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = "
        ));
        assert!(!is_bump("PRAGMA foreign_keys = OFF;"));
        let b = |n: &str| format!("{BUMP}{n}");
        assert_eq!(bump_value(&format!("{};", b("007"))), Some(7));
        assert_eq!(
            bump_value(&b("99999999999999999999")),
            None,
            "not an integer to SQLite"
        );
        assert_eq!(bump_value(&b("1 OR 1")), None);
    }
}
