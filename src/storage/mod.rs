//! Where backup files are read from. SOURCE is a [`Store`]: a tree of folders and files that
//! formats list, stat and open by path (a local folder, [`LocalStore`]; an object-store bucket
//! names its keys `s3://bucket/key`). A backup file is a [`Source`]: an object of known length
//! whose byte ranges readers copy into their buffers, borrow where the storage can lend them
//! (a memory map), or stream through a [`RangeReader`]. What is behind it is a [`Backend`]:
//! a local file, memory-mapped read-only ([`LocalFile`], its resident pages kept within a
//! budget by [`Mappings`]), or a remote object read by ranges into owned buffers; every format,
//! reader and front end above stays as it is.

mod local;
pub mod s3;
mod store;

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

pub use local::{LocalFile, Mappings};
pub use store::{FileEntry, Listing, LocalStore, Store, read_small};

/// Reads shorter than this are copied with `pread` rather than through the mapping.
pub const SMALL_READ: usize = 64 << 10;

/// A storage of backup files: what one backup object offers.
pub trait Backend: Send + Sync {
    /// Length in bytes.
    fn size(&self) -> u64;
    /// Copies `buf.len()` bytes at `offset` (inside the object: the caller checked) into `buf`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The whole object as one borrowed slice, when the storage can lend it without copying
    /// (a memory map); `None` sends readers to [`Backend::read_exact_at`].
    fn mapped(&self) -> Option<&[u8]>;
    /// A hint that `len` bytes at `offset` will be read soon.
    fn prefetch(&self, offset: u64, len: u64);
    /// Records that `len` bytes of the mapped view were handed out (a resident-page budget).
    fn served(&self, len: u64);
    /// Gives back memory that reading the object took (the resident pages of a mapping).
    fn release(&self);
    /// Names this version of the object (path, size, modification): the index cache keeps
    /// what was built from it under this name. `None` when it cannot be told.
    fn identity(&self) -> Option<String>;
    /// The first data run at or after `offset` as `(start, end)`, skipping holes the storage
    /// knows of; `None` past the last one.
    fn next_data(&self, offset: u64) -> io::Result<Option<(u64, u64)>>;
}

/// One backup file, opened once and shared by every point that reads it: bounds-checked reads
/// whose errors name the file and the offset, over a [`Backend`].
pub struct Source {
    path: PathBuf,
    backend: Box<dyn Backend>,
}

impl Source {
    /// A source named `path` (in errors) reading from `backend`.
    pub fn new(path: &Path, backend: Box<dyn Backend>) -> Arc<Source> {
        Arc::new(Source {
            path: path.to_path_buf(),
            backend,
        })
    }

    /// Opens the local file at `path`, memory-mapped and counted in `mappings`.
    pub fn open(path: &Path, mappings: &Arc<Mappings>) -> Result<Arc<Source>> {
        let file = LocalFile::open(path, mappings).map_err(|e| Error::io(path, &e))?;
        Ok(Source::new(path, Box::new(file)))
    }

    /// The file's path, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File length in bytes.
    pub fn len(&self) -> u64 {
        self.backend.size()
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that `offset..offset+len` lies inside the file; the error names what was being read.
    pub fn check(&self, offset: u64, len: u64, what: &str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::corrupt(
                &self.path,
                offset,
                format!(
                    "truncated file: {what} needs {len} bytes, the file ends at {}",
                    self.len()
                ),
            )),
        }
    }

    /// Copies `buf.len()` bytes at `offset` into `buf` (for a mapped file with `pread`, without
    /// touching the mapping: a page fault would map 64 KiB around the page).
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8], what: &str) -> Result<()> {
        self.check(offset, buf.len() as u64, what)?;
        self.backend
            .read_exact_at(offset, buf)
            .map_err(|e| Error::io(&self.path, &e).context(format!("reading at offset {offset}")))
    }

    /// `len` bytes at `offset` borrowed without a copy, when the storage lends them (a mapped
    /// file); `Ok(None)` when it does not (read them with [`Source::range`]).
    pub fn view(&self, offset: u64, len: u64, what: &str) -> Result<Option<&[u8]>> {
        self.check(offset, len, what)?;
        Ok(self
            .backend
            .mapped()
            .and_then(|m| m.get(offset as usize..(offset + len) as usize)))
    }

    /// `len` bytes at `offset`: borrowed where the storage lends them, else read into an owned
    /// buffer.
    pub fn range(&self, offset: u64, len: u64, what: &str) -> Result<Cow<'_, [u8]>> {
        if let Some(bytes) = self.view(offset, len, what)? {
            return Ok(Cow::Borrowed(bytes));
        }
        let n = usize::try_from(len).map_err(|_| {
            Error::corrupt(
                &self.path,
                offset,
                format!("{what} of {len} bytes is too large"),
            )
        })?;
        let mut buf = vec![0u8; n];
        self.read_exact_at(offset, &mut buf, what)?;
        Ok(Cow::Owned(buf))
    }

    /// Up to `len` bytes at `offset`, fewer where the file ends first.
    pub fn prefix(&self, offset: u64, len: u64, what: &str) -> Result<Cow<'_, [u8]>> {
        let len = len.min(self.len().saturating_sub(offset));
        self.range(offset, len, what)
    }

    /// Asks the storage to read `len` bytes at `offset` ahead of their use.
    pub fn prefetch(&self, offset: u64, len: u64) {
        self.backend.prefetch(offset, len);
    }

    /// Releases what reading took (a mapping's resident pages, after indexing touched them).
    pub fn release(&self) {
        self.backend.release();
    }

    /// Records that `len` bytes of the mapped view were handed out (see [`Mappings`]).
    pub fn served(&self, len: u64) {
        self.backend.served(len);
    }

    /// Names this version of the file for the index cache (see [`Backend::identity`]).
    pub fn identity(&self) -> Option<String> {
        self.backend.identity()
    }

    /// The first data run at or after `offset` as `(start, end)`; `None` past the last one.
    pub fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>> {
        self.backend
            .next_data(offset)
            .map_err(|e| Error::io(&self.path, &e).context(format!("finding data at {offset}")))
    }

    /// A reader over `len` bytes at `offset` that owns a reference to the file.
    pub fn reader(self: &Arc<Self>, offset: u64, len: u64) -> Result<RangeReader> {
        self.check(offset, len, "compressed data")?;
        Ok(RangeReader {
            source: Arc::clone(self),
            pos: offset,
            end: offset + len,
            window: Vec::new(),
            window_at: 0,
        })
    }
}

/// How much a [`RangeReader`] reads at once from storage that lends no view.
const WINDOW: u64 = 1 << 20;

/// `io::Read` over a range of a source, for streaming decoders; keeps the source alive on its
/// own. Copies from the mapping where there is one, else reads the range a window at a time.
pub struct RangeReader {
    source: Arc<Source>,
    pos: u64,
    end: u64,
    window: Vec<u8>,
    window_at: u64,
}

impl RangeReader {
    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// Bytes at the reading position from the current window, refilled when used up.
    fn buffered(&mut self) -> io::Result<&[u8]> {
        let window_end = self.window_at + self.window.len() as u64;
        if !(self.window_at..window_end).contains(&self.pos) {
            let n = WINDOW.min(self.end - self.pos) as usize;
            self.window.resize(n, 0);
            self.source
                .backend
                .read_exact_at(self.pos, &mut self.window)?;
            self.window_at = self.pos;
        }
        let skip = (self.pos - self.window_at) as usize;
        Ok(self.window.get(skip..).unwrap_or_default())
    }
}

impl io::Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.end - self.pos) as usize;
        if want == 0 {
            return Ok(0);
        }
        let (pos, end) = (self.pos as usize, self.pos as usize + want);
        let n = match self.source.backend.mapped() {
            Some(m) => {
                let avail = m.get(pos..end).unwrap_or_default();
                buf[..avail.len()].copy_from_slice(avail);
                // Counted, so that streaming a whole file keeps its pages within the budget.
                self.source.served(avail.len() as u64);
                avail.len()
            }
            None => {
                let avail = self.buffered()?;
                let n = avail.len().min(want);
                buf[..n].copy_from_slice(&avail[..n]);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    /// A backend that lends no view, as a remote object store: every read is a range read
    /// into the caller's buffer, counted.
    pub struct Unmapped {
        pub bytes: Vec<u8>,
        pub reads: std::sync::atomic::AtomicU64,
    }

    impl Unmapped {
        /// A source over a copy of the file at `path`, named after it.
        pub fn source(path: &Path) -> Arc<Source> {
            let bytes = std::fs::read(path).unwrap();
            let reads = Default::default();
            Source::new(path, Box::new(Unmapped { bytes, reads }))
        }
    }

    impl Backend for Unmapped {
        fn size(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let at = offset as usize;
            buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
            Ok(())
        }
        fn mapped(&self) -> Option<&[u8]> {
            None
        }
        fn prefetch(&self, _: u64, _: u64) {}
        fn served(&self, _: u64) {}
        fn release(&self) {}
        fn identity(&self) -> Option<String> {
            None
        }
        fn next_data(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
            Ok((offset < self.size()).then_some((offset, self.size())))
        }
    }

    #[test]
    fn mapped_and_unmapped_sources_read_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let local = Source::open(&path, &Mappings::new()).unwrap();
        let remote = Unmapped::source(&path);
        for s in [&local, &remote] {
            assert_eq!(&*s.range(5, 100, "t").unwrap(), &data[5..105]);
            let mut buf = [0u8; 10];
            s.read_exact_at(2_999_990, &mut buf, "t").unwrap();
            assert_eq!(buf, data[2_999_990..]);
            let mut all = Vec::new();
            s.reader(7, 2_500_000)
                .unwrap()
                .read_to_end(&mut all)
                .unwrap();
            assert_eq!(all, data[7..2_500_007]);
            let e = s.range(2_999_999, 2, "a header").unwrap_err().to_string();
            assert!(
                e.contains("a header needs 2 bytes, the file ends at 3000000"),
                "{e}"
            );
            assert_eq!(&*s.prefix(2_999_998, 64, "t").unwrap(), &data[2_999_998..]);
        }
        assert!(local.view(0, 4, "t").unwrap().is_some());
        assert!(remote.view(0, 4, "t").unwrap().is_none());
    }
}
