//! A backup file opened for serving: memory-mapped read-only, with bounds-checked slicing whose
//! errors name the file and the offset.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::sys;

/// One backup file, mapped once and shared by every point that reads it.
pub struct Source {
    path: PathBuf,
    file: File,
    map: Option<Mmap>,
}

impl Source {
    /// Opens and maps `path`.
    pub fn open(path: &Path) -> Result<Arc<Source>> {
        let file = File::open(path).map_err(|e| Error::io(path, &e))?;
        let len = file.metadata().map_err(|e| Error::io(path, &e))?.len();
        let map = sys::map_file(&file, len).map_err(|e| Error::io(path, &e))?;
        Ok(Arc::new(Source {
            path: path.to_path_buf(),
            file,
            map,
        }))
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
        match end {
            Some(end) => Ok(&self.bytes()[offset as usize..end as usize]),
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
        let avail = &self.source.bytes()[self.pos..self.end];
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        Ok(n)
    }
}
