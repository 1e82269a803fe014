//! Checkpoints of rebuilt databases kept in `<cache-dir>/clightning/` between runs, so that a
//! version met before costs a copy, not a replay. A checkpoint holds the 4 KiB blocks in which
//! the database differs from its segment's snapshot (or from an empty file), and is tied to the
//! log's bytes up to its entry by the entry's chain hash. Every file is checksummed and checked
//! against the entry it claims to be: a torn, damaged or swapped one is removed, never served.

use std::collections::BTreeMap;
use std::fs::File;
use std::hash::Hasher as _;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use memmap2::Mmap;
use twox_hash::XxHash3_64;

use super::log::Entry;
use crate::sys;

/// Kept checkpoints of a log take at most this many times the log's size.
pub const KEPT_FACTOR: u64 = 4;
/// Granularity of the difference to the snapshot.
pub const BLOCK: u64 = 4096;
/// First bytes of every checkpoint file (bumped when the layout changes).
const MAGIC: &[u8; 8] = b"RFSCLNK1";
/// Bytes of the header after the magic: offset, version, chain, base offset, base length,
/// database length, block count.
const HEADER: usize = 8 + 4 + 16 + 8 + 8 + 8 + 8;

/// The state a checkpoint holds: the database right after `entry`, from `base`'s snapshot.
pub struct Stamp<'a> {
    /// The entry the state is at.
    pub entry: &'a Entry,
    /// The snapshot the segment starts from; `None`: an empty database.
    pub base: Option<&'a Entry>,
}

impl Stamp<'_> {
    fn header(&self, db_len: u64, blocks: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(MAGIC.len() + HEADER);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&self.entry.offset.to_le_bytes());
        h.extend_from_slice(&self.entry.version.to_le_bytes());
        h.extend_from_slice(&self.entry.chain.to_le_bytes());
        let (base_off, base_len) = self.base_range();
        h.extend_from_slice(&base_off.to_le_bytes());
        h.extend_from_slice(&base_len.to_le_bytes());
        h.extend_from_slice(&db_len.to_le_bytes());
        h.extend_from_slice(&blocks.to_le_bytes());
        h
    }

    /// Where the base's bytes are in the log (payload offset and length; 0, 0 for none).
    fn base_range(&self) -> (u64, u64) {
        self.base
            .map_or((0, 0), |b| (b.payload_offset(), u64::from(b.length)))
    }
}

/// The kept checkpoints of one log file.
pub struct Kept {
    dir: PathBuf,
    bound: AtomicU64,
    /// Entry offset → (chain, bytes) of the files present.
    files: Mutex<BTreeMap<u64, (u128, u64)>>,
    next: AtomicU64,
}

impl Kept {
    /// The checkpoints under `cache_dir` of the log named `name` (its resolved path, or its
    /// place in a remote store), `version` naming the file now there and `len` its length;
    /// those of a file that was at that name before (replaced by compaction) are removed.
    pub fn open(cache_dir: &Path, name: &Path, version: &str, len: u64) -> Kept {
        let per_path = cache_dir.join("clightning").join(format!(
            "{:016x}",
            XxHash3_64::oneshot(name.as_os_str().as_encoded_bytes())
        ));
        let dir = per_path.join(version);
        if let Ok(rd) = std::fs::read_dir(&per_path) {
            for e in rd.flatten().filter(|e| e.path() != dir) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        crate::prune::mark_used(&dir);
        let kept = Kept {
            files: Mutex::new(list(&dir)),
            dir,
            bound: AtomicU64::new(0),
            next: AtomicU64::new(0),
        };
        kept.set_log_len(len);
        kept
    }

    /// Bounds the kept bytes by the log's current size.
    pub fn set_log_len(&self, len: u64) {
        self.bound
            .store(len.saturating_mul(KEPT_FACTOR), Ordering::Relaxed);
    }

    /// The bound in bytes.
    pub fn bound(&self) -> u64 {
        self.bound.load(Ordering::Relaxed)
    }

    /// Bytes kept on disk.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.lock().values().map(|f| f.1).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (u128, u64)>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, offset: u64, chain: u128) -> PathBuf {
        self.dir.join(format!("{offset:016x}-{chain:032x}.ck"))
    }

    /// Whether a checkpoint of `e` is kept.
    pub fn has(&self, e: &Entry) -> bool {
        self.lock().get(&e.offset).is_some_and(|f| f.0 == e.chain)
    }

    /// Entry offsets in `range` with a kept checkpoint that `wanted` accepts (given the offset
    /// and the chain it was made at), nearest to the end first.
    pub fn candidates(
        &self,
        range: std::ops::RangeInclusive<u64>,
        wanted: impl Fn(u64, u128) -> bool,
    ) -> Vec<u64> {
        self.lock()
            .range(range)
            .rev()
            .filter(|(off, (chain, _))| wanted(**off, *chain))
            .map(|(off, _)| *off)
            .collect()
    }

    /// Writes the state `stamp` names into `to`: the base from the log, then the kept blocks;
    /// `false` if it is too large for `to`. A file that does not hold exactly that state
    /// (damaged, torn, swapped) is removed, and the error says why.
    pub fn restore(&self, stamp: &Stamp<'_>, log: &File, to: &mut Target) -> Result<bool, String> {
        let path = self.path(stamp.entry.offset, stamp.entry.chain);
        match restore_from(&path, stamp, log, to) {
            Ok(()) => {
                // Recently used checkpoints are evicted last.
                if let Ok(f) = File::options().write(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Ok(true)
            }
            Err(Refused::TooLarge) => Ok(false),
            Err(Refused::Damaged(m)) => {
                self.remove(stamp.entry.offset, &path);
                Err(format!("{}: {m}", path.display()))
            }
        }
    }

    fn remove(&self, offset: u64, path: &Path) {
        let _ = std::fs::remove_file(path);
        self.lock().remove(&offset);
    }

    /// Keeps the database at `db` as the state `stamp` names, then drops least recently used
    /// checkpoints beyond the bound. Failing to keep one only costs a replay later.
    pub fn put(&self, stamp: &Stamp<'_>, log: &File, db: &Path) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("tmp-{}-{n}", std::process::id()));
        let path = self.path(stamp.entry.offset, stamp.entry.chain);
        let r = std::fs::create_dir_all(&self.dir)
            .map_err(|e| e.to_string())
            .and_then(|()| write_delta(&tmp, stamp, log, db))
            .and_then(|len| {
                std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
                Ok(len)
            });
        match r {
            Ok(len) => {
                self.lock()
                    .insert(stamp.entry.offset, (stamp.entry.chain, len));
                self.evict(stamp.entry.offset);
            }
            Err(m) => {
                ::log::debug!("{}: cannot keep a checkpoint: {m}", tmp.display());
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    /// Removes the least recently used checkpoints until the kept bytes fit the bound; the one
    /// just kept (at `newest`) goes last.
    fn evict(&self, newest: u64) {
        let mut files = self.lock();
        let mut total: u64 = files.values().map(|f| f.1).sum();
        if total <= self.bound() {
            return;
        }
        let mut by_age: Vec<(SystemTime, u64)> = files
            .iter()
            .map(|(&off, &(chain, _))| {
                let used = std::fs::metadata(self.path(off, chain))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let used = if off == newest {
                    SystemTime::now() + std::time::Duration::from_secs(1)
                } else {
                    used
                };
                (used, off)
            })
            .collect();
        by_age.sort();
        for (_, off) in by_age {
            if total <= self.bound() {
                break;
            }
            if let Some((chain, len)) = files.remove(&off) {
                let _ = std::fs::remove_file(self.path(off, chain));
                total -= len;
            }
        }
    }
}

/// The checkpoint files in `dir` by entry offset; leftovers of interrupted writes are removed.
fn list(dir: &Path) -> BTreeMap<u64, (u128, u64)> {
    let mut files = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return files;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let parsed = name
            .strip_suffix(".ck")
            .and_then(|s| s.split_once('-'))
            .and_then(|(o, c)| {
                Some((
                    u64::from_str_radix(o, 16).ok()?,
                    u128::from_str_radix(c, 16).ok()?,
                ))
            });
        let len = e.metadata().map_or(0, |m| m.len());
        match parsed {
            Some((off, chain)) => {
                files.insert(off, (chain, len));
            }
            None => {
                if let Some(pid) = name.strip_prefix("tmp-").and_then(|s| s.split('-').next())
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    files
}

/// Copies `len` bytes of `from` at `at` to the end of `to`, inside the kernel where it can
/// (`copy_file_range`): through a descriptor of its own, so the shared one's position stays.
pub fn copy_range(from: &File, at: u64, len: u64, to: &mut File) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let mut own = File::open(format!("/proc/self/fd/{}", from.as_raw_fd()))?;
    own.seek(SeekFrom::Start(at))?;
    let n = std::io::copy(&mut own.take(len), to)?;
    if n != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{n} of {len} bytes at offset {at}"),
        ));
    }
    Ok(())
}

/// The base's bytes, mapped from the log (empty for none).
fn base_bytes<'m>(stamp: &Stamp<'_>, map: &'m Option<Mmap>) -> Result<&'m [u8], String> {
    let (off, len) = stamp.base_range();
    let all: &[u8] = map.as_deref().unwrap_or_default();
    usize::try_from(off)
        .ok()
        .zip(usize::try_from(len).ok())
        .and_then(|(o, l)| all.get(o..o.checked_add(l)?))
        .ok_or_else(|| "the snapshot is not in the log".to_owned())
}

/// The log mapped, when a base is read from it.
fn map_log(stamp: &Stamp<'_>, log: &File) -> std::io::Result<Option<Mmap>> {
    if stamp.base.is_none() {
        return Ok(None);
    }
    let map = sys::map_file(log, log.metadata()?.len())?;
    if let Some(m) = &map {
        let (off, len) = stamp.base_range();
        sys::prefetch(m, off as usize, len as usize);
    }
    Ok(map)
}

/// Writes the blocks in which `db` differs from the base, checksummed; returns the file size.
fn write_delta(tmp: &Path, stamp: &Stamp<'_>, log: &File, db: &Path) -> Result<u64, String> {
    let db_file = File::open(db).map_err(|e| e.to_string())?;
    let db_len = db_file.metadata().map_err(|e| e.to_string())?.len();
    let db_map = sys::map_file(&db_file, db_len).map_err(|e| e.to_string())?;
    let ours: &[u8] = db_map.as_deref().unwrap_or_default();
    if let Some(m) = &db_map {
        sys::prefetch(m, 0, ours.len());
    }
    let log_map = map_log(stamp, log).map_err(|e| e.to_string())?;
    let theirs = base_bytes(stamp, &log_map)?;
    let blocks: Vec<u64> = ours
        .chunks(BLOCK as usize)
        .enumerate()
        .filter(|(i, block)| {
            let start = i * BLOCK as usize;
            theirs.get(start..start + block.len()) != Some(*block)
        })
        .map(|(i, _)| i as u64)
        .collect();
    let file = File::create(tmp).map_err(|e| e.to_string())?;
    let mut w = Hashed::new(BufWriter::with_capacity(1 << 20, file));
    w.write(&stamp.header(db_len, blocks.len() as u64))?;
    for b in blocks {
        let at = (b * BLOCK) as usize;
        let block = &ours[at..(at + BLOCK as usize).min(ours.len())];
        w.write(&b.to_le_bytes())?;
        w.write(block)?;
    }
    w.finish()
}

/// A writer that checksums what it writes and appends the checksum.
struct Hashed<W: Write> {
    inner: W,
    hash: XxHash3_64,
    len: u64,
}

impl<W: Write> Hashed<W> {
    fn new(inner: W) -> Self {
        Hashed {
            inner,
            hash: XxHash3_64::new(),
            len: 0,
        }
    }

    fn write(&mut self, b: &[u8]) -> Result<(), String> {
        self.hash.write(b);
        self.len += b.len() as u64;
        self.inner.write_all(b).map_err(|e| e.to_string())
    }

    fn finish(mut self) -> Result<u64, String> {
        let sum = self.hash.finish();
        self.inner
            .write_all(&sum.to_le_bytes())
            .and_then(|()| self.inner.flush())
            .map_err(|e| e.to_string())?;
        Ok(self.len + 8)
    }
}

/// Where a checkpoint is restored to.
pub enum Target {
    /// A new file at this path.
    File(PathBuf),
    /// Only the kept blocks, in memory (to be read over the base), when at most `limit` bytes.
    Blocks {
        /// The most bytes of blocks taken.
        limit: u64,
        /// Numbers of the kept blocks, ascending.
        index: Vec<u64>,
        /// Their bytes.
        data: Vec<u8>,
        /// The database's length.
        len: u64,
    },
}

/// Why a checkpoint was not restored.
enum Refused {
    /// It does not hold the state asked for.
    Damaged(String),
    /// It is whole, but too large for a `Target::Blocks`.
    TooLarge,
}

impl From<std::io::Error> for Refused {
    fn from(e: std::io::Error) -> Self {
        Refused::Damaged(e.to_string())
    }
}

impl Target {
    /// Starts with the segment's base: the snapshot's bytes from the log (or nothing) in a
    /// file, or room for the blocks in memory.
    fn begin(
        &mut self,
        stamp: &Stamp<'_>,
        log: &File,
        db_len: u64,
        blocks: u64,
    ) -> Result<Option<File>, Refused> {
        match self {
            Target::Blocks {
                limit,
                index,
                data,
                len: db,
            } => {
                let bytes = blocks.saturating_mul(BLOCK).min(db_len);
                if bytes > *limit {
                    return Err(Refused::TooLarge);
                }
                *index = Vec::with_capacity(blocks as usize);
                *data = Vec::with_capacity(bytes as usize);
                *db = db_len;
                Ok(None)
            }
            Target::File(out) => {
                let mut w = File::create(&*out)?;
                let (off, len) = stamp.base_range();
                copy_range(log, off, len, &mut w)?;
                w.set_len(db_len)?;
                Ok(Some(w))
            }
        }
    }

    /// Writes block `b` (`bytes`, at `at`).
    fn put(&mut self, file: Option<&File>, b: u64, at: u64, bytes: &[u8]) -> Result<(), Refused> {
        match (file, self) {
            (Some(w), _) => w.write_all_at(bytes, at)?,
            (None, Target::Blocks { index, data, .. }) => {
                index.push(b);
                data.extend_from_slice(bytes);
            }
            (None, Target::File(_)) => {
                return Err(Refused::Damaged("no file to write to".into()));
            }
        }
        Ok(())
    }
}

/// Reads a checkpoint into `to`, checking it names `stamp`'s state and its checksum.
fn restore_from(
    path: &Path,
    stamp: &Stamp<'_>,
    log: &File,
    to: &mut Target,
) -> Result<(), Refused> {
    let damaged = |m: &str| Refused::Damaged(m.to_owned());
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut hash = XxHash3_64::new();
    let mut header = vec![0u8; MAGIC.len() + HEADER];
    r.read_exact(&mut header)?;
    hash.write(&header);
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (db_len, blocks) = (field(MAGIC.len() + 44), field(MAGIC.len() + 52));
    if header != stamp.header(db_len, blocks) {
        return Err(damaged("made for another entry, base or log"));
    }
    let max_blocks = db_len.div_ceil(BLOCK);
    if blocks > max_blocks || size < (header.len() as u64 + 8).saturating_add(blocks * 8) {
        return Err(damaged("block count out of range"));
    }
    let file_out = to.begin(stamp, log, db_len, blocks)?;
    let mut block = vec![0u8; BLOCK as usize];
    let mut last: Option<u64> = None;
    for _ in 0..blocks {
        let mut idx = [0u8; 8];
        r.read_exact(&mut idx)?;
        hash.write(&idx);
        let b = u64::from_le_bytes(idx);
        if b >= max_blocks || last.is_some_and(|l| b <= l) {
            return Err(Refused::Damaged(format!("block {b} out of order or range")));
        }
        last = Some(b);
        let at = b * BLOCK;
        let n = (db_len - at).min(BLOCK) as usize;
        r.read_exact(&mut block[..n])?;
        hash.write(&block[..n]);
        to.put(file_out.as_ref(), b, at, &block[..n])?;
    }
    let mut sum = [0u8; 8];
    r.read_exact(&mut sum)?;
    if u64::from_le_bytes(sum) != hash.finish() || r.read(&mut [0u8; 1]).map_or(true, |n| n != 0) {
        return Err(damaged("checksum mismatch"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::log::EntryKind;
    use super::*;

    fn entry(offset: u64, length: u32, chain: u128) -> Entry {
        Entry {
            offset,
            length,
            version: 7,
            kind: EntryKind::Transaction,
            bump: true,
            forbidden: None,
            chain,
        }
    }

    /// A "log" (9 bytes of entry header, then a 3-block snapshot) and a state kept over it
    /// (block 1 changed, a block and a half appended) at entry offset 100, chain 42.
    struct Fixture {
        dir: tempfile::TempDir,
        log: File,
        snap: Entry,
        e: Entry,
        db: Vec<u8>,
        kept: Kept,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base: Vec<u8> = (0..3 * BLOCK as usize).map(|i| (i % 251) as u8).collect();
        let log_path = dir.path().join("log");
        std::fs::write(&log_path, [&[0u8; 9][..], &base].concat()).unwrap();
        let log = File::open(&log_path).unwrap();
        let mut db = base.clone();
        db[5000] ^= 0xff;
        db.extend((0..6000).map(|i| (i % 13) as u8));
        let db_path = dir.path().join("db");
        std::fs::write(&db_path, &db).unwrap();
        let md = std::fs::metadata(&log_path).unwrap();
        let kept = Kept::open(dir.path(), &log_path, "1-1", md.len());
        kept.set_log_len(1 << 20);
        let (snap, e) = (entry(0, base.len() as u32, 1), entry(100, 10, 42));
        let stamp = Stamp {
            entry: &e,
            base: Some(&snap),
        };
        kept.put(&stamp, &log, &db_path);
        Fixture {
            dir,
            log,
            snap,
            e,
            db,
            kept,
        }
    }

    fn blocks(limit: u64) -> Target {
        Target::Blocks {
            limit,
            index: Vec::new(),
            data: Vec::new(),
            len: 0,
        }
    }

    #[test]
    fn a_checkpoint_keeps_only_the_blocks_that_differ_and_round_trips() {
        let f = fixture();
        let stamp = Stamp {
            entry: &f.e,
            base: Some(&f.snap),
        };
        assert!(f.kept.has(&f.e));
        assert!(f.kept.used() < 3 * BLOCK + 200, "{}", f.kept.used());
        let out = f.dir.path().join("out");
        f.kept
            .restore(&stamp, &f.log, &mut Target::File(out.clone()))
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), f.db);
        let mut mem = blocks(1 << 20);
        assert_eq!(f.kept.restore(&stamp, &f.log, &mut mem), Ok(true));
        let Target::Blocks {
            index, data, len, ..
        } = mem
        else {
            unreachable!()
        };
        assert_eq!((index, len), (vec![1, 3, 4], f.db.len() as u64));
        assert_eq!(data, [&f.db[4096..8192], &f.db[3 * 4096..]].concat());
        assert_eq!(f.kept.restore(&stamp, &f.log, &mut blocks(100)), Ok(false));
        assert!(f.kept.has(&f.e), "kept when only too large for memory");
        assert_eq!(f.kept.candidates(0..=150, |_, c| c == 42), [100]);
    }

    #[test]
    fn a_swapped_or_damaged_checkpoint_is_refused_and_removed() {
        let f = fixture();
        let log_path = f.dir.path().join("log");
        let md = std::fs::metadata(&log_path).unwrap();
        let mut out = Target::File(f.dir.path().join("out"));
        // Another run finds it again; then the file of `e` is copied under `other`'s name.
        let again = Kept::open(f.dir.path(), &log_path, "1-1", md.len());
        assert!(again.has(&f.e));
        std::fs::copy(again.path(100, 42), again.path(200, 43)).unwrap();
        let again = Kept::open(f.dir.path(), &log_path, "1-1", md.len());
        let other = entry(200, 10, 43);
        let swapped = Stamp {
            entry: &other,
            base: Some(&f.snap),
        };
        let err = again.restore(&swapped, &f.log, &mut blocks(1 << 20));
        assert!(err.unwrap_err().contains("another entry"));
        assert!(!again.has(&other), "the swapped file is removed");
        // Damaged: one byte of a kept block flipped.
        let p = again.path(100, 42);
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&p, bytes).unwrap();
        let stamp = Stamp {
            entry: &f.e,
            base: Some(&f.snap),
        };
        let err = again.restore(&stamp, &f.log, &mut out).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        assert!(!p.exists());
    }

    #[test]
    fn the_bound_drops_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("log");
        std::fs::write(&log_path, b"").unwrap();
        let log = File::open(&log_path).unwrap();
        let db_path = dir.path().join("db");
        std::fs::write(&db_path, vec![7u8; 2 * BLOCK as usize]).unwrap();
        let md = std::fs::metadata(&log_path).unwrap();
        let kept = Kept::open(dir.path(), &log_path, "1-1", md.len());
        // Room for two checkpoints of two blocks each.
        kept.bound.store(5 * BLOCK, Ordering::Relaxed);
        let es: Vec<Entry> = (1..=3).map(|i| entry(i * 100, 1, u128::from(i))).collect();
        for e in &es {
            let stamp = Stamp {
                entry: e,
                base: None,
            };
            kept.put(&stamp, &log, &db_path);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!kept.has(&es[0]));
        assert!(kept.has(&es[1]) && kept.has(&es[2]));
        assert!(kept.used() <= 5 * BLOCK);
    }
}
