//! A file system's device: a partition or whole disk image as a `vfs` file node, read by
//! offset with errors that name the image and the structure, or as `Read + Seek` (through a
//! small buffer) for crates that want a stream. Nothing here writes.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::vfs::FileNode;

/// Bytes a [`Device`] reads ahead of a small read (MFT records and index blocks are 1–4 KiB).
const BUF: usize = 16 << 10;

/// Fills `buf` from `offset` of `dev`; a short read is an error naming `what`, the offset and
/// the `structure` that was being read.
pub fn read_exact_at(
    dev: &dyn FileNode,
    what: &Path,
    offset: u64,
    buf: &mut [u8],
    structure: &str,
) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset.checked_add(done as u64).ok_or_else(|| {
            Error::corrupt(what, offset, format!("{structure} lies past 2^64 bytes"))
        })?;
        let n = dev
            .read_at(at, &mut buf[done..])
            .map_err(|e| e.context(format!("{}: reading {structure}", what.display())))?;
        if n == 0 {
            return Err(Error::corrupt(
                what,
                at,
                format!("{structure} ends past the end of the file system"),
            ));
        }
        done += n;
    }
    Ok(())
}

/// `Read + Seek` over a device node, for one operation of one thread (cheap to make: each
/// call of a reader makes its own, so readers share no cursor). It hands out at most a
/// budget of bytes: a crate walking hostile metadata in circles fails instead of running on.
pub struct Device {
    dev: Arc<dyn FileNode>,
    size: u64,
    pos: u64,
    budget: u64,
    buf: Vec<u8>,
    /// Device offset of `buf[0]`.
    buf_at: u64,
}

impl Device {
    /// A stream at offset 0 of `dev` that reads at most `budget` bytes.
    pub fn new(dev: Arc<dyn FileNode>, budget: u64) -> Result<Device> {
        let size = dev.size()?;
        Ok(Device {
            dev,
            size,
            pos: 0,
            budget,
            buf: Vec::new(),
            buf_at: 0,
        })
    }
}

fn io_error(e: Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl Read for Device {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.read_buffered(out)?;
        self.budget = self.budget.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "gave up at offset {}: the structures read for one request exceed their budget (corrupt metadata?)",
                self.pos
            ))
        })?;
        Ok(n)
    }
}

impl Device {
    fn read_buffered(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let in_buf = self.pos >= self.buf_at && self.pos < self.buf_at + self.buf.len() as u64;
        if !in_buf {
            let n = crate::vfs::clamp(self.pos, out.len(), self.size);
            if n >= BUF || n == 0 {
                let got = self
                    .dev
                    .read_at(self.pos, &mut out[..n])
                    .map_err(io_error)?;
                self.pos += got as u64;
                return Ok(got);
            }
            self.buf
                .resize(crate::vfs::clamp(self.pos, BUF, self.size), 0);
            let got = self
                .dev
                .read_at(self.pos, &mut self.buf)
                .map_err(io_error)?;
            self.buf.truncate(got);
            self.buf_at = self.pos;
            if got == 0 {
                return Ok(0);
            }
        }
        let start = (self.pos - self.buf_at) as usize;
        let n = out.len().min(self.buf.len() - start);
        out[..n].copy_from_slice(&self.buf[start..start + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Device {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before 0 or past 2^64")
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{Attr, BytesFile};
    use std::time::SystemTime;

    fn dev(len: usize) -> Arc<dyn FileNode> {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        BytesFile::new(data, Attr::read_only(false, SystemTime::UNIX_EPOCH))
    }

    #[test]
    fn reads_and_seeks_like_a_file() {
        let mut d = Device::new(dev(200_000), 1 << 20).unwrap();
        let mut b = [0u8; 10];
        d.seek(SeekFrom::Start(1000)).unwrap();
        d.read_exact(&mut b).unwrap();
        assert_eq!(b[0], (1000 % 251) as u8);
        d.seek(SeekFrom::Current(-5)).unwrap();
        d.read_exact(&mut b).unwrap();
        assert_eq!(b[0], (1005 % 251) as u8);
        let mut big = vec![0u8; 100_000];
        d.seek(SeekFrom::End(-50_000)).unwrap();
        assert_eq!(d.read(&mut big).unwrap(), 50_000);
        assert_eq!(big[0], (150_000 % 251) as u8);
        assert_eq!(d.read(&mut big).unwrap(), 0);
        assert!(d.seek(SeekFrom::Current(-300_000)).is_err());
        let mut small = Device::new(dev(200_000), 15).unwrap();
        small.read_exact(&mut b).unwrap();
        assert!(small.read_exact(&mut b).is_err());
    }

    #[test]
    fn short_reads_name_the_structure() {
        let e = read_exact_at(
            dev(100).as_ref(),
            Path::new("img p1"),
            90,
            &mut [0; 20],
            "FAT",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("img p1") && e.contains("100") && e.contains("FAT"),
            "{e}"
        );
    }
}
