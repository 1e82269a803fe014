//! restorefs' own scratch space: a folder under the cache folder (never next to a backup) for
//! rebuilt files too large for memory and for checkpoints of rebuilt states. Removed on exit;
//! folders left by a killed process are removed by the next one.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use lru::LruCache;

use crate::error::{Error, Result};
use crate::vfs;

/// Default bound of the checkpoint store: 2 GiB.
pub const CHECKPOINT_BYTES: u64 = 2 << 30;

/// The default cache folder: `$XDG_CACHE_HOME/restorefs`, else `~/.cache/restorefs`.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    base.join("restorefs")
}

/// A per-process scratch folder, made on first use.
pub struct WorkDir {
    root: PathBuf,
    dir: OnceLock<std::result::Result<PathBuf, Error>>,
    next: AtomicU64,
    checkpoints: CheckpointStore,
}

impl WorkDir {
    /// Scratch space under `cache_dir`, holding at most `checkpoint_bytes` of checkpoints.
    pub fn new(cache_dir: &Path, checkpoint_bytes: u64) -> Arc<WorkDir> {
        Arc::new(WorkDir {
            root: cache_dir.to_path_buf(),
            dir: OnceLock::new(),
            next: AtomicU64::new(0),
            checkpoints: CheckpointStore::new(checkpoint_bytes),
        })
    }

    fn dir(&self) -> Result<&Path> {
        self.dir
            .get_or_init(|| {
                std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, &e))?;
                remove_stale(&self.root);
                let dir = self.root.join(format!("work-{}", std::process::id()));
                match std::fs::create_dir(&dir) {
                    Ok(()) => Ok(dir),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
                    Err(e) => Err(Error::io(&dir, &e)),
                }
            })
            .as_deref()
            .map_err(Clone::clone)
    }

    /// A fresh file name in the scratch folder.
    pub fn file(&self, tag: &str) -> Result<PathBuf> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(self.dir()?.join(format!("{n}-{tag}")))
    }

    /// The checkpoint store.
    pub fn checkpoints(&self) -> &CheckpointStore {
        &self.checkpoints
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(Ok(dir)) = self.dir.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Removes `work-<pid>` folders of processes that no longer run.
fn remove_stale(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("work-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A file restorefs rebuilt: in memory, or spilled to the scratch folder (deleted on drop).
pub enum Rebuilt {
    /// Held in memory.
    Memory(Vec<u8>),
    /// Too large for memory: kept on disk.
    Disk {
        /// The open file.
        file: File,
        /// Its path, removed on drop.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
}

impl Rebuilt {
    /// Takes the file at `path` into memory when it is at most `max_memory` bytes (and deletes
    /// it), else keeps it on disk.
    pub fn take(path: PathBuf, max_memory: u64) -> Result<Rebuilt> {
        let len = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, &e))?
            .len();
        if len <= max_memory {
            let data = std::fs::read(&path).map_err(|e| Error::io(&path, &e))?;
            let _ = std::fs::remove_file(&path);
            return Ok(Rebuilt::Memory(data));
        }
        let file = File::open(&path).map_err(|e| Error::io(&path, &e))?;
        Ok(Rebuilt::Disk { file, path, len })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Rebuilt::Memory(d) => d.len() as u64,
            Rebuilt::Disk { len, .. } => *len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads at `offset`; short only at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match self {
            Rebuilt::Memory(d) => {
                let n = vfs::clamp(offset, buf.len(), d.len() as u64);
                let start = if n == 0 { 0 } else { offset as usize };
                buf[..n].copy_from_slice(&d[start..start + n]);
                Ok(n)
            }
            Rebuilt::Disk { file, path, len } => {
                let n = vfs::clamp(offset, buf.len(), *len);
                file.read_exact_at(&mut buf[..n], offset)
                    .map_err(|e| Error::io(path, &e))?;
                Ok(n)
            }
        }
    }

    /// Bytes held in memory.
    pub fn memory(&self) -> u64 {
        match self {
            Rebuilt::Memory(d) => d.len() as u64,
            Rebuilt::Disk { .. } => 0,
        }
    }

    /// What the cache is charged: memory, plus an eighth of a scratch file's size, so the
    /// cache's bound also bounds the scratch folder (256 MiB of cache: at most 2 GiB on disk).
    pub fn cost(&self) -> u64 {
        match self {
            Rebuilt::Memory(d) => d.len() as u64,
            Rebuilt::Disk { len, .. } => len / 8,
        }
    }
}

impl Drop for Rebuilt {
    fn drop(&mut self) {
        if let Rebuilt::Disk { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Key of a checkpoint: (owner id, position) as its user defines them.
pub type CheckpointKey = (u64, u64);

/// Checkpoint files by key (path, length), and the bytes they take.
type Files = (LruCache<CheckpointKey, (PathBuf, u64)>, u64);

/// Files of rebuilt states, bounded in total bytes, least recently used dropped first.
pub struct CheckpointStore {
    bound: u64,
    inner: Mutex<Files>,
    /// Per-owner positions present, for "the nearest checkpoint at or below".
    index: Mutex<HashMap<u64, std::collections::BTreeSet<u64>>>,
}

impl CheckpointStore {
    fn new(bound: u64) -> CheckpointStore {
        CheckpointStore {
            bound,
            inner: Mutex::new((LruCache::unbounded(), 0)),
            index: Mutex::new(HashMap::new()),
        }
    }

    /// The bound in bytes.
    pub fn bound(&self) -> u64 {
        self.bound
    }

    /// The checkpoint of `owner` at the largest position in `range` that `valid` accepts, opened
    /// (an open file stays readable even if the checkpoint is evicted meanwhile).
    pub fn nearest(
        &self,
        owner: u64,
        range: std::ops::RangeInclusive<u64>,
        valid: impl Fn(u64) -> bool,
    ) -> Option<(u64, File)> {
        let positions: Vec<u64> = {
            let idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
            idx.get(&owner)?
                .range(range)
                .rev()
                .copied()
                .filter(|&p| valid(p))
                .collect()
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for pos in positions {
            if let Some((path, _)) = inner.0.get(&(owner, pos))
                && let Ok(f) = File::open(path)
            {
                return Some((pos, f));
            }
        }
        None
    }

    /// Whether `owner` has a checkpoint at `pos`.
    pub fn has(&self, owner: u64, pos: u64) -> bool {
        let idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        idx.get(&owner).is_some_and(|s| s.contains(&pos))
    }

    /// Stores a copy of the file at `from` as `owner`'s checkpoint at `pos`.
    pub fn put(&self, work: &WorkDir, owner: u64, pos: u64, from: &Path) -> Result<()> {
        let path = work.file("checkpoint")?;
        let len = std::fs::copy(from, &path).map_err(|e| Error::io(&path, &e))?;
        let mut evicted = Vec::new();
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((old, old_len)) = inner.0.put((owner, pos), (path, len)) {
                inner.1 -= old_len;
                evicted.push(((owner, pos), old));
            }
            inner.1 += len;
            while inner.1 > self.bound && inner.0.len() > 1 {
                let Some((key, (p, l))) = inner.0.pop_lru() else {
                    break;
                };
                inner.1 -= l;
                evicted.push((key, p));
            }
        }
        let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        idx.entry(owner).or_default().insert(pos);
        for ((o, p), file) in evicted {
            if (o, p) != (owner, pos)
                && let Some(s) = idx.get_mut(&o)
            {
                s.remove(&p);
            }
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }

    /// Bytes of checkpoints on disk.
    pub fn used(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_made_lazily_and_removed_on_drop() {
        let cache = tempfile::tempdir().unwrap();
        let stale = cache.path().join("work-999999999");
        std::fs::create_dir_all(&stale).unwrap();
        let w = WorkDir::new(cache.path(), 100);
        assert!(stale.exists(), "nothing happens before first use");
        let f = w.file("x").unwrap();
        assert!(!stale.exists(), "a dead process's folder is removed");
        std::fs::write(&f, b"hello").unwrap();
        let dir = f.parent().unwrap().to_path_buf();
        drop(w);
        assert!(!dir.exists());
    }

    #[test]
    fn checkpoints_are_bounded_and_found_by_nearest_position() {
        let cache = tempfile::tempdir().unwrap();
        let w = WorkDir::new(cache.path(), 10);
        let src = cache.path().join("src");
        std::fs::write(&src, b"1234").unwrap();
        for pos in [10, 20, 30] {
            w.checkpoints().put(&w, 1, pos, &src).unwrap();
        }
        // 3 × 4 bytes > 10: the oldest is gone.
        assert_eq!(w.checkpoints().used(), 8);
        assert!(!w.checkpoints().has(1, 10));
        let any = |_| true;
        assert_eq!(
            w.checkpoints().nearest(1, 0..=25, any).map(|c| c.0),
            Some(20)
        );
        assert_eq!(
            w.checkpoints().nearest(1, 0..=35, |p| p != 30).map(|c| c.0),
            Some(20)
        );
        assert_eq!(w.checkpoints().nearest(1, 0..=15, any).map(|c| c.0), None);
        assert_eq!(w.checkpoints().nearest(2, 0..=99, any).map(|c| c.0), None);
    }

    #[test]
    fn rebuilt_files_spill_above_the_limit() {
        let cache = tempfile::tempdir().unwrap();
        let p = cache.path().join("db");
        std::fs::write(&p, b"abcdef").unwrap();
        let small = Rebuilt::take(p.clone(), 100).unwrap();
        assert_eq!((small.len(), small.memory()), (6, 6));
        assert!(!p.exists());
        std::fs::write(&p, b"abcdef").unwrap();
        let big = Rebuilt::take(p.clone(), 3).unwrap();
        assert_eq!((big.len(), big.memory()), (6, 0));
        let mut buf = [0u8; 4];
        assert_eq!(big.read_at(4, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"ef");
        drop(big);
        assert!(!p.exists());
    }
}
