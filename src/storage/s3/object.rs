//! One S3 object as a [`Backend`]: reads copied from its cached chunks (fetched when missing),
//! sequential reading detected so that the next blocks are fetched ahead in parallel, and small
//! reads far apart (a format indexing headers) served by small pieces, not whole blocks.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::RuntimeBox;
use super::blocks::{Chunk, Fetcher, ObjectInfo, PIECE, SMALL_READ};
use crate::storage::Backend;

/// An object of a bucket, read by blocks through the shared cache.
pub struct S3Object {
    info: Arc<ObjectInfo>,
    fetcher: Arc<Fetcher>,
    /// Where the last read ended: a read starting at or just after it continues a run.
    last_end: AtomicU64,
    /// Bytes read by the run that ended there.
    run: AtomicU64,
    /// This object's prefetches in flight.
    ahead: Arc<AtomicUsize>,
    /// Kept alive by every prefetch too: shutting the runtime down under a fetch would panic it.
    runtime: Arc<RuntimeBox>,
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
            run: AtomicU64::new(0),
            ahead: Arc::default(),
            runtime: Arc::clone(runtime),
        }
    }

    /// Whether the read `offset..end` ends a sequential run of more than [`SMALL_READ`]
    /// bytes, each read continuing the previous one (up to a block back, as parallel readers of
    /// one stream arrive a little out of order, or a small gap ahead); if so prefetches the
    /// blocks after it. Headers read one after the other are no run: they fetch pieces.
    fn follow(&self, offset: u64, end: u64) -> bool {
        let bs = self.fetcher.block_size;
        let prev = self.last_end.swap(end, Ordering::Relaxed);
        let len = end - offset;
        let goes_on = prev != u64::MAX
            && offset <= prev.saturating_add(SMALL_READ)
            && offset.saturating_add(bs) >= prev;
        let run = match goes_on {
            true => self
                .run
                .fetch_add(len, Ordering::Relaxed)
                .saturating_add(len),
            false => {
                self.run.store(len, Ordering::Relaxed);
                len
            }
        };
        let sequential = run > SMALL_READ;
        if sequential && self.fetcher.prefetch > 0 {
            let next = end.div_ceil(bs);
            let blocks = next..next + self.fetcher.prefetch as u64;
            self.fetcher
                .prefetch(&self.info, blocks, &self.ahead, &self.runtime);
        }
        sequential
    }
}

impl Backend for S3Object {
    fn size(&self) -> u64 {
        self.info.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let small = !self.follow(offset, end);
        let bs = self.fetcher.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = Chunk::Block(pos / bs);
            let chunk = match small && !self.fetcher.cached(&self.info, block) {
                true => Chunk::Piece(pos / PIECE),
                false => block,
            };
            let cell = self
                .fetcher
                .chunk(&self.info, chunk)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let start = self.fetcher.range(&self.info, chunk).start;
            let bytes = cell.value().map(|b| &b[..]).unwrap_or_default();
            let within = bytes.get((pos - start) as usize..).unwrap_or_default();
            let n = within.len().min(buf.len() - done);
            if n == 0 {
                return Err(io::Error::other(format!(
                    "{}: {chunk:?} holds no byte at {pos}",
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
        self.fetcher
            .prefetch(&self.info, blocks, &self.ahead, &self.runtime);
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
