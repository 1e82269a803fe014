//! The optional on-disk block cache (`--disk-cache DIR`): fetched blocks (and pieces) kept as
//! files named by a hash of the object's identity and the chunk's byte range (not its index: a
//! later run may use another `--s3-block-size`), so that a later mount
//! reads them from disk instead of the server. Bounded in bytes (the oldest files go first);
//! files are written to a temporary name and renamed, and a file of the wrong length is ignored
//! and refetched.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Files of the cache have this suffix; nothing else in the folder is touched.
const SUFFIX: &str = ".block";

/// A folder of cached blocks within a byte bound.
pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    /// Files in the order they were written (oldest first), with their lengths.
    files: Mutex<(VecDeque<(PathBuf, u64)>, u64)>,
}

impl DiskCache {
    /// Opens (creating) the cache folder `dir`, holding at most `limit` bytes of blocks.
    pub fn open(dir: &Path, limit: u64) -> Result<DiskCache> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, &e))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, &e))? {
            let entry = entry.map_err(|e| Error::io(dir, &e))?;
            let path = entry.path();
            let Ok(md) = entry.metadata() else { continue };
            if md.is_file() && path.to_string_lossy().ends_with(SUFFIX) {
                let when = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((when, path, md.len()));
            }
        }
        found.sort();
        let used = found.iter().map(|f| f.2).sum();
        let files = found.into_iter().map(|(_, p, n)| (p, n)).collect();
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            limit,
            files: Mutex::new((files, used)),
        };
        cache.evict();
        Ok(cache)
    }

    fn path(&self, identity: &str, range: &Range<u64>) -> PathBuf {
        let hash = Sha256::digest(format!("{identity}#{}-{}", range.start, range.end).as_bytes());
        let name: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    /// Bytes `range` of the object named `identity`, when cached whole.
    pub fn get(&self, identity: &str, range: &Range<u64>) -> Option<Bytes> {
        let bytes = std::fs::read(self.path(identity, range)).ok()?;
        (bytes.len() as u64 == range.end - range.start).then(|| Bytes::from(bytes))
    }

    /// Keeps bytes `range` of `identity`; failures only cost a later refetch, so they are logged.
    pub fn put(&self, identity: &str, range: &Range<u64>, bytes: &[u8]) {
        let path = self.path(identity, range);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            log::warn!("disk cache {}: {e}", self.dir.display());
            return;
        }
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.0.push_back((path, bytes.len() as u64));
        files.1 += bytes.len() as u64;
        drop(files);
        self.evict();
    }

    /// Removes the oldest files until the cache is within its bound.
    fn evict(&self) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        while files.1 > self.limit {
            let Some((path, len)) = files.0.pop_front() else {
                break;
            };
            files.1 -= len;
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_kept_within_the_bound_and_damaged_ones_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine.txt"), b"not a block").unwrap();
        let c = DiskCache::open(dir.path(), 250).unwrap();
        c.put("obj", &(0..100), &[1u8; 100]);
        c.put("obj", &(100..200), &[2u8; 100]);
        assert_eq!(c.get("obj", &(0..100)).unwrap(), vec![1u8; 100]);
        assert!(
            c.get("obj", &(0..99)).is_none(),
            "another range is another file"
        );
        assert!(c.get("other", &(0..100)).is_none());
        c.put("obj", &(200..300), &[3u8; 100]);
        assert!(
            c.get("obj", &(0..100)).is_none(),
            "the oldest block was evicted"
        );
        assert!(c.get("obj", &(200..300)).is_some());
        drop(c);
        // A second cache on the folder finds the blocks and keeps the bound.
        let again = DiskCache::open(dir.path(), 100).unwrap();
        let kept = [100..200, 200..300]
            .iter()
            .filter(|r| again.get("obj", r).is_some());
        assert_eq!(kept.count(), 1);
        std::fs::write(again.path("obj", &(200..300)), b"short").unwrap();
        assert!(again.get("obj", &(200..300)).is_none());
        // A block of another size at the same index is another file, never these bytes.
        again.put("obj", &(0..100), &[1u8; 100]);
        assert!(again.get("obj", &(100..200)).is_none());
        assert!(dir.path().join("mine.txt").exists());
    }
}
