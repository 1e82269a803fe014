//! One S3 object as a [`Backend`]: reads copied from its cached blocks (fetched when missing),
//! and sequential reading detected so that the next blocks are fetched ahead in parallel.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::RuntimeBox;
use super::blocks::{Fetcher, ObjectInfo};
use crate::storage::Backend;

/// An object of a bucket, read by blocks through the shared cache.
pub struct S3Object {
    info: Arc<ObjectInfo>,
    fetcher: Arc<Fetcher>,
    /// Where the last read ended: a read starting near it continues a sequential run.
    last_end: AtomicU64,
    /// This object's prefetches in flight.
    ahead: Arc<AtomicUsize>,
    _runtime: Arc<RuntimeBox>,
}

impl S3Object {
    /// The object `info`, fetched by `fetcher` on `runtime`.
    pub(super) fn new(
        info: ObjectInfo,
        fetcher: &Arc<Fetcher>,
        runtime: &Arc<RuntimeBox>,
    ) -> S3Object {
        S3Object {
            info: Arc::new(info),
            fetcher: Arc::clone(fetcher),
            last_end: AtomicU64::new(u64::MAX),
            ahead: Arc::default(),
            _runtime: Arc::clone(runtime),
        }
    }

    /// Prefetches the blocks after `offset..end` when this read continues the previous one
    /// (within a block: parallel readers of one stream arrive a little out of order).
    fn follow(&self, offset: u64, end: u64) {
        let bs = self.fetcher.block_size;
        let prev = self.last_end.swap(end, Ordering::Relaxed);
        if self.fetcher.prefetch == 0 || prev == u64::MAX || offset.abs_diff(prev) > bs {
            return;
        }
        let next = end.div_ceil(bs);
        let blocks = next..next + self.fetcher.prefetch as u64;
        self.fetcher.prefetch(&self.info, blocks, &self.ahead);
    }
}

impl Backend for S3Object {
    fn size(&self) -> u64 {
        self.info.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        self.follow(offset, end);
        let bs = self.fetcher.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / bs;
            let cell = self
                .fetcher
                .block(&self.info, index)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let bytes = cell.value().map(|b| &b[..]).unwrap_or_default();
            let within = bytes.get((pos - index * bs) as usize..).unwrap_or_default();
            let n = within.len().min(buf.len() - done);
            if n == 0 {
                return Err(io::Error::other(format!(
                    "{}: block {index} holds no byte at {pos}",
                    self.info.url
                )));
            }
            buf[done..done + n].copy_from_slice(&within[..n]);
            done += n;
        }
        Ok(())
    }

    fn mapped(&self) -> Option<&[u8]> {
        None
    }

    fn prefetch(&self, offset: u64, len: u64) {
        let bs = self.fetcher.block_size;
        let end = offset.saturating_add(len).min(self.info.size);
        let blocks = offset / bs..end.div_ceil(bs);
        self.fetcher.prefetch(&self.info, blocks, &self.ahead);
    }

    fn served(&self, _: u64) {}

    fn release(&self) {}

    fn identity(&self) -> Option<String> {
        Some(self.info.identity.clone())
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        Ok((offset < self.info.size).then_some((offset, self.info.size)))
    }
}
