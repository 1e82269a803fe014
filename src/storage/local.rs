//! A local backup file: memory-mapped read-only, so readers borrow its bytes without a copy;
//! [`Mappings`] keeps the resident pages of a run's mapped files within a budget.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use memmap2::Mmap;

use super::Backend;
use crate::sys;

/// Bytes served from mappings after which every mapping's resident pages are released, so that
/// mapped backup files never hold more than this much of the process's resident set.
const RELEASE_EVERY: u64 = 32 << 20;

/// What a page fault may map beyond the faulting page (the kernel's fault-around).
const FAULT_AROUND: u64 = 64 << 10;

/// The mapped backup files of one run and the bytes served from them: every
/// `RELEASE_EVERY` bytes, the resident pages of all of them are released, so that mapped
/// backup files never hold much of the process's resident set.
#[derive(Default)]
pub struct Mappings {
    served: AtomicU64,
    releases: AtomicU64,
    mapped: Mutex<Vec<Weak<Mmap>>>,
}

impl Mappings {
    /// An empty set of mappings.
    pub fn new() -> Arc<Mappings> {
        Arc::default()
    }

    /// Records that `len` bytes of some mapping were handed out; releases resident pages now
    /// and then. Each access may map a fault-around window (64 KiB) extra.
    fn served(&self, len: u64) {
        let len = len + FAULT_AROUND;
        if self.served.fetch_add(len, Ordering::Relaxed) + len >= RELEASE_EVERY {
            self.served.store(0, Ordering::Relaxed);
            self.release_all();
        }
    }

    /// Releases the resident pages of every live mapping.
    fn release_all(&self) {
        self.releases.fetch_add(1, Ordering::Relaxed);
        let mut list = self.mapped.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| match w.upgrade() {
            Some(m) => {
                sys::release(&m);
                true
            }
            None => false,
        });
    }

    /// How many times resident pages were released.
    pub fn releases(&self) -> u64 {
        self.releases.load(Ordering::Relaxed)
    }

    /// Number of live mapped files.
    pub fn live(&self) -> usize {
        let list = self.mapped.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().filter(|w| w.strong_count() > 0).count()
    }
}

/// A local file, mapped once (an empty file has no mapping) and counted in its run's
/// [`Mappings`].
pub struct LocalFile {
    path: PathBuf,
    file: File,
    len: u64,
    map: Option<Arc<Mmap>>,
    mappings: Arc<Mappings>,
}

impl LocalFile {
    /// Opens and maps `path`, counted in `mappings`.
    pub fn open(path: &Path, mappings: &Arc<Mappings>) -> io::Result<LocalFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let map = sys::map_file(&file, len)?.map(Arc::new);
        if let Some(m) = &map {
            let mut list = mappings.mapped.lock().unwrap_or_else(|p| p.into_inner());
            list.push(Arc::downgrade(m));
        }
        Ok(LocalFile {
            path: path.to_path_buf(),
            file,
            len,
            map,
            mappings: Arc::clone(mappings),
        })
    }
}

impl Backend for LocalFile {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn mapped(&self) -> Option<&[u8]> {
        self.map.as_deref().map(|m| &m[..])
    }

    fn prefetch(&self, offset: u64, len: u64) {
        if let Some(m) = &self.map {
            sys::prefetch(m, offset as usize, len as usize);
        }
    }

    fn served(&self, len: u64) {
        self.mappings.served(len);
    }

    fn release(&self) {
        if let Some(m) = &self.map {
            sys::release(m);
        }
    }

    /// The canonical path with device, inode, size, mtime and ctime as they are now (not as
    /// when opened): a file changed while it was indexed names itself differently after.
    fn identity(&self) -> Option<String> {
        let md = std::fs::metadata(&self.path).ok()?;
        let canon = self.path.canonicalize().ok()?;
        Some(format!(
            "local:{:?}:{}:{}:{}:{}.{}:{}.{}",
            canon,
            md.dev(),
            md.ino(),
            md.len(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec()
        ))
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        if offset >= self.len {
            return Ok(None);
        }
        let Some(data) = sys::seek_data(&self.file, offset)? else {
            return Ok(None);
        };
        let hole = sys::seek_hole(&self.file, data)?
            .unwrap_or(self.len)
            .min(self.len);
        Ok((data < hole).then_some((data, hole)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Source;
    use super::*;

    #[test]
    fn each_run_counts_its_own_mappings_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let (a, b) = (Mappings::new(), Mappings::new());
        let s = Source::open(&path, &a).unwrap();
        assert_eq!((a.live(), b.live()), (1, 0));
        for _ in 0..(RELEASE_EVERY / (1 << 20)) {
            s.served(1 << 20);
        }
        assert_eq!((a.releases(), b.releases()), (1, 0));
        assert_eq!(s.view(0, 4, "test").unwrap(), Some(&[7u8; 4][..]));
        drop(s);
        assert_eq!(a.live(), 0);
    }
}
