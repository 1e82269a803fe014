//! A local backup file opened for serving: memory-mapped read-only, with bounds-checked slicing
//! whose errors name the file and the offset.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::sys;

/// One backup file, mapped once and shared by every point that reads it.
pub struct Source {
    path: PathBuf,
    file: File,
    map: Option<Mmap>,
    mappings: Arc<Mappings>,
}

/// Bytes served from mappings after which every mapping's resident pages are released, so that
/// mapped backup files never hold more than this much of the process's resident set.
const RELEASE_EVERY: u64 = 32 << 20;

/// What a page fault may map beyond the faulting page (the kernel's fault-around).
const FAULT_AROUND: u64 = 64 << 10;

/// Reads shorter than this are copied with `pread` rather than through the mapping.
pub const SMALL_READ: usize = 64 << 10;

/// The mapped backup files of one run and the bytes served from them: every
/// `RELEASE_EVERY` bytes, the resident pages of all of them are released, so that mapped
/// backup files never hold much of the process's resident set.
#[derive(Default)]
pub struct Mappings {
    served: AtomicU64,
    releases: AtomicU64,
    mapped: Mutex<Vec<Weak<Source>>>,
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
            Some(s) => {
                s.release();
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

impl Source {
    /// Opens and maps `path`, counted in `mappings`.
    pub fn open(path: &Path, mappings: &Arc<Mappings>) -> Result<Arc<Source>> {
        let file = File::open(path).map_err(|e| Error::io(path, &e))?;
        let len = file.metadata().map_err(|e| Error::io(path, &e))?.len();
        let map = sys::map_file(&file, len).map_err(|e| Error::io(path, &e))?;
        let source = Arc::new(Source {
            path: path.to_path_buf(),
            file,
            map,
            mappings: Arc::clone(mappings),
        });
        mappings
            .mapped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&source));
        Ok(source)
    }

    /// Asks the kernel to read `len` bytes at `offset` ahead of their use.
    pub fn prefetch(&self, offset: u64, len: u64) {
        if let Some(m) = &self.map {
            sys::prefetch(m, offset as usize, len as usize);
        }
    }

    /// Releases the resident pages of this file's mapping (after indexing touched it).
    pub fn release(&self) {
        if let Some(m) = &self.map {
            sys::release(m);
        }
    }

    /// Copies `buf.len()` bytes at `offset` with `pread`, without touching the mapping (small
    /// reads: a page fault would map 64 KiB around the page).
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.slice(offset, buf.len() as u64, "data frame")?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.path, &e).context(format!("reading at offset {offset}")))
    }

    /// Records that `len` bytes of the mapping were handed out (see [`Mappings`]).
    pub fn served(&self, len: u64) {
        self.mappings.served(len);
    }

    /// The file's path, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for calls the mapping cannot answer (holes).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// File length in bytes.
    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// `len` bytes at `offset`, or an error naming what was being read when the file is too short.
    pub fn slice(&self, offset: u64, len: u64, what: &str) -> Result<&[u8]> {
        let end = offset.checked_add(len).filter(|&e| e <= self.len());
        match end.and_then(|end| self.bytes().get(offset as usize..end as usize)) {
            Some(bytes) => Ok(bytes),
            None => Err(Error::corrupt(
                &self.path,
                offset,
                format!(
                    "truncated file: {what} needs {len} bytes, the file ends at {}",
                    self.len()
                ),
            )),
        }
    }

    /// A reader over `len` bytes at `offset` that owns a reference to the file.
    pub fn reader(self: &Arc<Self>, offset: u64, len: u64) -> Result<SliceReader> {
        self.slice(offset, len, "compressed data")?;
        Ok(SliceReader {
            source: Arc::clone(self),
            pos: offset as usize,
            end: (offset + len) as usize,
        })
    }
}

/// `io::Read` over a range of a mapped file; keeps the mapping alive on its own.
pub struct SliceReader {
    source: Arc<Source>,
    pos: usize,
    end: usize,
}

impl SliceReader {
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.end - self.pos
    }
}

impl Read for SliceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let avail = self
            .source
            .bytes()
            .get(self.pos..self.end)
            .unwrap_or_default();
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(s.slice(0, 4, "test").unwrap(), [7u8; 4]);
        drop(s);
        assert_eq!(a.live(), 0);
    }
}
