//! Indexes of backup files kept in the cache folder, so that a remount reads them instead of
//! parsing the backup files again. An entry is keyed by the file's identity (for a local file:
//! its path, device, inode, size, mtime and ctime): a changed or replaced file gets a new key
//! and is never served from a stale index. Entries carry a checksum; a torn or foreign entry is ignored (and rebuilt).

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use twox_hash::XxHash32;

/// Bumped whenever the encoding of any entry changes.
const VERSION: &[u8] = b"restorefs-index-1";

/// Index files under `<cache-dir>/index`.
pub struct IndexCache {
    dir: PathBuf,
}

impl IndexCache {
    /// The index folder under `cache_dir` (made when first written).
    pub fn new(cache_dir: &Path) -> IndexCache {
        IndexCache {
            dir: cache_dir.join("index"),
        }
    }

    /// The key of the backup object that `identity` names (`storage::Source::identity`).
    pub fn key(identity: &str) -> String {
        let mut h = Sha256::new();
        h.update(VERSION);
        h.update(identity.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.idx"))
    }

    /// Where the decoder checkpoints of the LZ4 frame at `frame_off` of the file kept under
    /// `key` go (`lz4::Checkpoints`; they carry their own checks).
    pub fn checkpoint_path(&self, key: &str, frame_off: u64) -> PathBuf {
        self.dir.join(format!("{key}.{frame_off}.lz4cp"))
    }

    /// Whether an entry exists under `key` (it is checked when loaded).
    pub fn has(&self, key: &str) -> bool {
        self.path(key).is_file()
    }

    /// The entry under `key`, if present and whole.
    pub fn load(&self, key: &str) -> Option<Vec<u8>> {
        let path = self.path(key);
        let mut data = std::fs::read(&path).ok()?;
        let body = data.len().checked_sub(4)?;
        let sum = u32::from_le_bytes(data[body..].try_into().ok()?);
        if XxHash32::oneshot(0, &data[..body]) != sum {
            return None;
        }
        crate::prune::mark_used(&path);
        data.truncate(body);
        Some(data)
    }

    /// Stores `data` under `key` (atomically; failures only cost a re-parse next time).
    pub fn store(&self, key: &str, data: &[u8]) {
        let tmp = self.dir.join(format!("{key}.tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut h = XxHash32::with_seed(0);
            h.write(data);
            let mut all = Vec::with_capacity(data.len() + 4);
            all.extend_from_slice(data);
            all.extend_from_slice(&h.finish_32().to_le_bytes());
            std::fs::write(&tmp, &all)?;
            std::fs::rename(&tmp, self.path(key))
        };
        if let Err(e) = write() {
            log::debug!("{}: cannot keep an index: {e}", self.dir.display());
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// Little-endian encoding helpers for index entries.
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

/// Reads what [`Writer`] wrote; every read fails cleanly on short input.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    /// A u64.
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    /// A u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }
    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let c = IndexCache::new(dir.path());
        let f = dir.path().join("backup");
        std::fs::write(&f, b"one").unwrap();
        let id = |f: &Path| {
            crate::storage::Source::open(f, &Default::default())
                .unwrap()
                .identity()
        };
        let k1 = IndexCache::key(&id(&f).unwrap());
        c.store(&k1, b"index bytes");
        assert_eq!(c.load(&k1).as_deref(), Some(&b"index bytes"[..]));
        // A rewritten file has a new key.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&f, b"two").unwrap();
        assert_ne!(IndexCache::key(&id(&f).unwrap()), k1);
        // A torn entry is ignored.
        let p = c.path(&k1);
        let mut d = std::fs::read(&p).unwrap();
        d[0] ^= 1;
        std::fs::write(&p, d).unwrap();
        assert_eq!(c.load(&k1), None);
    }

    #[test]
    fn readers_stop_at_short_input() {
        let mut w = Writer(Vec::new());
        w.u64(7);
        w.bytes(b"abc");
        w.u32(9);
        let mut r = Reader(&w.0);
        assert_eq!(
            (r.u64(), r.bytes(), r.u32()),
            (Some(7), Some(&b"abc"[..]), Some(9))
        );
        assert!(r.is_empty());
        assert_eq!(Reader(&[1, 2]).u32(), None);
    }
}
