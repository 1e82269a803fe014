//! A partition as a file of its own: a window onto the disk image, read without copying.

use std::sync::Arc;

use crate::error::Result;
use crate::vfs::{self, Attr, Cursor, FileNode};

/// Most data ranges counted for `st_blocks`.
const MAX_RANGES: usize = 1 << 16;

/// Bytes `start..start+size` of an image, served as a file.
pub struct Slice {
    image: Arc<dyn FileNode>,
    start: u64,
    size: u64,
}

impl Slice {
    /// The window of `size` bytes at `start` of `image`.
    pub fn new(image: Arc<dyn FileNode>, start: u64, size: u64) -> Arc<Slice> {
        Arc::new(Slice { image, start, size })
    }

    /// How many of `len` bytes at `offset` lie in the window, and where they are in the image
    /// (`start + offset` cannot overflow when any byte does: the window lies in the image).
    fn span(&self, offset: u64, len: usize) -> (usize, u64) {
        let n = vfs::clamp(offset, len, self.size);
        (
            n,
            if n == 0 {
                self.start
            } else {
                self.start + offset
            },
        )
    }
}

impl FileNode for Slice {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn check(&self) -> Result<()> {
        self.image.check()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (n, at) = self.span(offset, buf.len());
        self.image.read_at(at, &mut buf[..n])
    }

    fn read_with(&self, offset: u64, len: usize, f: &mut dyn FnMut(&[u8])) -> Result<bool> {
        let (n, at) = self.span(offset, len);
        self.image.read_with(at, n, f)
    }

    fn read_at_by(&self, cursor: &Cursor, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (n, at) = self.span(offset, buf.len());
        self.image.read_at_by(cursor, at, &mut buf[..n])
    }

    fn read_with_by(
        &self,
        cursor: &Cursor,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<bool> {
        let (n, at) = self.span(offset, len);
        self.image.read_with_by(cursor, at, n, f)
    }

    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        if offset >= self.size {
            return Ok(None);
        }
        let found = self.image.next_data(self.start + offset)?;
        Ok(found
            .map(|d| d.saturating_sub(self.start))
            .filter(|&d| d < self.size))
    }

    fn next_hole(&self, offset: u64) -> Result<u64> {
        if offset >= self.size {
            return Ok(offset);
        }
        let hole = self
            .image
            .next_hole(self.start + offset)?
            .saturating_sub(self.start);
        Ok(hole.min(self.size))
    }

    fn page_cache(&self) -> bool {
        self.image.page_cache()
    }

    fn allocated(&self) -> Result<u64> {
        let mut sum = 0;
        let mut pos = 0;
        for _ in 0..MAX_RANGES {
            let Some(start) = self.next_data(pos)? else {
                return Ok(sum);
            };
            let end = self.next_hole(start)?.max(start + 1).min(self.size);
            sum += end - start;
            pos = end;
        }
        // A window of more data ranges than that: its size is an upper bound.
        Ok(self.size)
    }

    fn attr(&self) -> Attr {
        self.image.attr()
    }
}
