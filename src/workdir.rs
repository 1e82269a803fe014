//! restorefs' own scratch space: a folder under the cache folder (never next to a backup) for
//! rebuilt files too large for memory. Removed on exit; folders left by a killed process are
//! removed by the next one.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::vfs;

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
}

impl WorkDir {
    /// Scratch space under `cache_dir`.
    pub fn new(cache_dir: &Path) -> Arc<WorkDir> {
        Arc::new(WorkDir {
            root: cache_dir.to_path_buf(),
            dir: OnceLock::new(),
            next: AtomicU64::new(0),
        })
    }

    /// The cache folder this scratch space is under (where formats keep data between runs).
    pub fn cache_dir(&self) -> &Path {
        &self.root
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
    /// Some blocks over a range of another file (a kept checkpoint over the snapshot it was
    /// made against).
    Patched(Patched),
}

/// A file made of a range of another file with some blocks replaced: held in memory are only
/// the replaced blocks.
pub struct Patched {
    /// The file the unreplaced bytes come from (shared: many files may read over one).
    pub base: Arc<File>,
    /// Its path, for errors.
    pub base_path: PathBuf,
    /// Where the range starts in `base`.
    pub base_offset: u64,
    /// The range's length; bytes past it and not replaced are zeros.
    pub base_len: u64,
    /// Block size.
    pub block: u64,
    /// Numbers of the replaced blocks, ascending.
    pub index: Vec<u64>,
    /// Their bytes, in the same order, each `block` long but the file's last.
    pub data: Vec<u8>,
    /// The file's length.
    pub len: u64,
}

impl Patched {
    /// Reads at `offset`; short only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = vfs::clamp(offset, buf.len(), self.len);
        let mut done = 0;
        while done < n {
            let at = offset + done as u64;
            let b = at / self.block;
            let within = (at % self.block) as usize;
            let next = match self.index.binary_search(&b) {
                Ok(i) => {
                    let start = i * self.block as usize + within;
                    let k = (self.block as usize - within).min(n - done);
                    buf[done..done + k].copy_from_slice(&self.data[start..start + k]);
                    done += k;
                    continue;
                }
                Err(i) => self.index.get(i).map_or(self.len, |&nb| nb * self.block),
            };
            // A run of unreplaced bytes up to the next replaced block: one read of the base.
            let k = usize::try_from(next - at).map_or(n - done, |k| k.min(n - done));
            let piece = &mut buf[done..done + k];
            let from_base = vfs::clamp(at, k, self.base_len);
            self.base
                .read_exact_at(&mut piece[..from_base], self.base_offset + at)
                .map_err(|e| Error::io(&self.base_path, &e))?;
            piece[from_base..].fill(0);
            done += k;
        }
        Ok(n)
    }
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
            Rebuilt::Patched(p) => p.len,
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
            Rebuilt::Patched(p) => p.read_at(offset, buf),
        }
    }

    /// Bytes held in memory.
    pub fn memory(&self) -> u64 {
        match self {
            Rebuilt::Memory(d) => d.len() as u64,
            Rebuilt::Disk { .. } => 0,
            Rebuilt::Patched(p) => (p.data.len() + p.index.len() * 8) as u64,
        }
    }

    /// What the cache is charged: memory, plus an eighth of a scratch file's size, so the
    /// cache's bound also bounds the scratch folder (256 MiB of cache: at most 2 GiB on disk).
    pub fn cost(&self) -> u64 {
        match self {
            Rebuilt::Memory(_) | Rebuilt::Patched(_) => self.memory(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_made_lazily_and_removed_on_drop() {
        let cache = tempfile::tempdir().unwrap();
        let stale = cache.path().join("work-999999999");
        std::fs::create_dir_all(&stale).unwrap();
        let w = WorkDir::new(cache.path());
        assert!(stale.exists(), "nothing happens before first use");
        let f = w.file("x").unwrap();
        assert!(!stale.exists(), "a dead process's folder is removed");
        std::fs::write(&f, b"hello").unwrap();
        let dir = f.parent().unwrap().to_path_buf();
        drop(w);
        assert!(!dir.exists());
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

    #[test]
    fn patched_files_read_blocks_over_their_base() {
        let cache = tempfile::tempdir().unwrap();
        let p = cache.path().join("base");
        // The base range is bytes 2..10 of the file: "cdefghij".
        std::fs::write(&p, b"abcdefghijkl").unwrap();
        let patched = Rebuilt::Patched(Patched {
            base: Arc::new(File::open(&p).unwrap()),
            base_path: p.clone(),
            base_offset: 2,
            base_len: 8,
            block: 4,
            index: vec![1, 3],
            data: b"WXYZuv".to_vec(),
            len: 14,
        });
        let mut all = vec![0u8; 20];
        assert_eq!(patched.read_at(0, &mut all).unwrap(), 14);
        assert_eq!(&all[..14], b"cdefWXYZ\0\0\0\0uv");
        let mut mid = [0u8; 5];
        assert_eq!(patched.read_at(3, &mut mid).unwrap(), 5);
        assert_eq!(&mid, b"fWXYZ");
        assert_eq!((patched.memory(), patched.len()), (6 + 16, 14));
    }
}
