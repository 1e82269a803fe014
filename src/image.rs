//! A disk image served through a block map: uncompressed extents straight from the backup files
//! (zero-copy from a mapped file when a read falls in one extent), compressed chunks through the
//! shared cache (random reads from their kept decoder checkpoints).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};

use crate::blockmap::{BlockMap, Extent, NO_CHUNK};
use crate::cache::{Built, Cache, Key, OnFailure};
use crate::error::{Error, Result};
use crate::lz4::{Checkpoints, DecodedChunk, Lz4Runtime, Segment};
use crate::storage::{SMALL_READ, Source};
use crate::vfs::{self, Attr, Cursor, FileNode};

/// One compressed chunk (an LZ4 frame) of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// File offset of the frame.
    pub file_off: u64,
    /// Compressed length.
    pub comp_len: u64,
    /// Decoded length.
    pub raw_len: u64,
}

/// What one backup file holds, as indexed.
#[derive(Debug, Default)]
pub struct LayerIndex {
    /// Its extents: sorted, non-overlapping; holes have `src == HOLE`.
    pub extents: Vec<Extent>,
    /// Its compressed chunks, indexed by `Extent::chunk`.
    pub chunks: Vec<Chunk>,
}

/// One backup file of an image's sequence, as the block map sees it.
pub trait Layer: Send + Sync {
    /// The backup file.
    fn source(&self) -> &Arc<Source>;
    /// Its index (loaded on first use).
    fn index(&self) -> Result<&LayerIndex>;
    /// Cache owner id for its decoded chunks.
    fn cache_owner(&self) -> u64;
    /// What its LZ4 frames decode with.
    fn lz4(&self) -> &Arc<Lz4Runtime>;
    /// Where the decoder checkpoints of its compressed `chunk` are kept (`None`: nowhere).
    fn checkpoints(&self, chunk: &Chunk) -> Option<PathBuf>;
}

/// Cache indexes of a layer's checkpoint tables and segments, beside its decoded chunks (whose
/// index is the chunk's number, below 2^32).
const TABLE: u64 = 1 << 62;
const SEGMENT: u64 = 1 << 63;

/// A handle on a cached block map.
pub struct MapRef(Arc<Built<BlockMap>>);

/// What a handle shows if its map were not built (never: handles are made only once it is).
static NO_MAP: BlockMap = BlockMap::EMPTY;

impl std::ops::Deref for MapRef {
    type Target = BlockMap;
    fn deref(&self) -> &BlockMap {
        self.0.value().unwrap_or(&NO_MAP)
    }
}

/// Zeros to lend for holes without allocating (FUSE reads are at most 1 MiB).
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// A reconstructed disk image: `layers` applied in order, truncated or extended to `size`.
/// Its block map lives in the shared cache (rebuilt if evicted), so many points' maps never
/// hold more memory than the cache allows.
pub struct ImageFile {
    size: u64,
    layers: Vec<Arc<dyn Layer>>,
    owner: u64,
    allocated: OnceLock<u64>,
    cache: Arc<Cache>,
    attr: Attr,
    /// The map while the cache holds it, reached without the cache's lock on every read.
    hot: RwLock<Weak<Built<BlockMap>>>,
    /// Reads since the cache was last told the map is in use (keeps its LRU place).
    reads: AtomicU64,
    /// The reading state of readers without a cursor of their own (export, verify).
    shared: Cursor,
}

/// Sequential reading is prefetched this far ahead, and its compressed frames decoded ahead.
const LOOKAHEAD: u64 = 32 << 20;

impl ImageFile {
    /// An image of `size` bytes made of `layers` (oldest first); the map is built on first use.
    pub fn new(size: u64, layers: Vec<Arc<dyn Layer>>, cache: Arc<Cache>, attr: Attr) -> ImageFile {
        ImageFile {
            size,
            layers,
            owner: crate::cache::new_owner_id(),
            allocated: OnceLock::new(),
            cache,
            attr,
            hot: RwLock::new(Weak::new()),
            reads: AtomicU64::new(0),
            shared: Cursor::default(),
        }
    }

    /// The block map, from the cache or built now.
    pub fn map(&self) -> Result<MapRef> {
        let key = Key {
            owner: self.owner,
            index: 0,
        };
        if let Some(cell) = self.hot.read().unwrap_or_else(|p| p.into_inner()).upgrade() {
            if self
                .reads
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(256)
            {
                self.cache.touch(key);
            }
            return Ok(MapRef(cell));
        }
        // No need to keep a failure here: each layer keeps its own index error.
        let cell = self.cache.get_or_build(key, OnFailure::Retry, || {
            let indexes: Vec<&LayerIndex> = self
                .layers
                .iter()
                .map(|l| l.index())
                .collect::<Result<_>>()?;
            let extents: Vec<&[Extent]> = indexes.iter().map(|i| i.extents.as_slice()).collect();
            let map = BlockMap::build(self.size, &extents);
            let _ = self.allocated.set(map.allocated());
            let cost = map.heap_bytes() as u64;
            Ok((map, cost))
        })?;
        // Published only once built: the fast path above never sees an empty cell.
        *self.hot.write().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(&cell);
        Ok(MapRef(cell))
    }

    fn chunk_of(layer: &Arc<dyn Layer>, idx: u32) -> Result<Chunk> {
        let c = layer.index()?.chunks.get(idx as usize).copied();
        c.ok_or_else(|| {
            let path = layer.source().path();
            Error::corrupt(path, 0, format!("no compressed chunk #{idx}"))
        })
    }

    fn chunk(&self, layer: &Arc<dyn Layer>, idx: u32) -> Result<Arc<DecodedChunk>> {
        let c = Self::chunk_of(layer, idx)?;
        let key = Key {
            owner: layer.cache_owner(),
            index: u64::from(idx),
        };
        let mut made = false;
        let chunk = self.cache.get_or_insert(key, c.raw_len, || {
            made = true;
            DecodedChunk::new(
                Arc::clone(layer.source()),
                Arc::clone(layer.lz4()),
                c.file_off,
                c.comp_len,
                c.raw_len,
            )
            .keeping_checkpoints(layer.checkpoints(&c))
        });
        if made && chunk.cost() != c.raw_len {
            self.cache.set_cost(key, chunk.cost());
        }
        Ok(chunk)
    }

    /// Hands `len` decoded bytes at `at` of chunk `idx` to `f`: from the frame when it is
    /// decoded that far; else, for a read that does not follow sequential reading, from a
    /// segment decoded from the frame's kept checkpoints; else by decoding the frame from its
    /// start (which keeps its checkpoints once it reaches the end).
    fn read_chunk(
        &self,
        layer: &Arc<dyn Layer>,
        idx: u32,
        (at, len): (usize, usize),
        sequential: bool,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        let key = Key {
            owner: layer.cache_owner(),
            index: u64::from(idx),
        };
        let whole = self.cache.get::<DecodedChunk>(key);
        if !sequential
            && whole.as_ref().is_none_or(|c| !c.decoded_to(at + len))
            && self.read_segments(layer, idx, (at, len), &mut *f)
        {
            return Ok(());
        }
        match whole {
            Some(c) => c.read_with(at, len, f),
            None => self.chunk(layer, idx)?.read_with(at, len, f),
        }
    }

    /// Hands `len` decoded bytes at `at` of chunk `idx` to `f` from segments decoded from the
    /// frame's kept checkpoints: lent from one, or copied together from the consecutive
    /// segments a read spans; false when they cannot serve it.
    fn read_segments(
        &self,
        layer: &Arc<dyn Layer>,
        idx: u32,
        (at, len): (usize, usize),
        f: &mut dyn FnMut(&[u8]),
    ) -> bool {
        let Some(pieces) = self
            .table(layer, idx)
            .and_then(|t| Some(t.value()?.pieces(at, len)))
        else {
            return false;
        };
        let read = |(at, len): (usize, usize), f: &mut dyn FnMut(&[u8])| {
            let seg = self.segment(layer, idx, at, len);
            seg.is_some_and(|s| s.value().is_some_and(|s| s.read_with(at, len, f)))
        };
        if let [piece] = pieces[..] {
            return piece.1 == len && read(piece, f);
        }
        let mut bytes = Vec::with_capacity(len);
        for piece in pieces {
            if !read(piece, &mut |b| bytes.extend_from_slice(b)) {
                return false;
            }
        }
        if bytes.len() != len {
            return false;
        }
        f(&bytes);
        true
    }

    /// The checkpoint table of chunk `idx`, loaded once into the cache; `None` without one.
    fn table(&self, layer: &Arc<dyn Layer>, idx: u32) -> Option<Arc<Built<Checkpoints>>> {
        let c = Self::chunk_of(layer, idx).ok()?;
        let path = layer.checkpoints(&c)?;
        let key = Key {
            owner: layer.cache_owner(),
            index: TABLE | u64::from(idx),
        };
        self.cache
            .get_or_build(key, OnFailure::Retry, || {
                let t = Checkpoints::load(&path, c.file_off, c.comp_len, c.raw_len)
                    .ok_or_else(|| Error::not_found("no LZ4 checkpoints"))?;
                let cost = t.heap_bytes();
                Ok((t, cost))
            })
            .ok()
    }

    /// The segment of chunk `idx` holding `at..at+len`, decoded from the frame's kept
    /// checkpoints; `None` without checkpoints, for a read across two segments, or when the
    /// checkpoints do not match the frame (they are then removed).
    fn segment(
        &self,
        layer: &Arc<dyn Layer>,
        idx: u32,
        at: usize,
        len: usize,
    ) -> Option<Arc<Built<Segment>>> {
        let c = Self::chunk_of(layer, idx).ok()?;
        let owner = layer.cache_owner();
        let table_key = Key {
            owner,
            index: TABLE | u64::from(idx),
        };
        let table = self.table(layer, idx)?;
        let cps = table.value()?;
        let i = cps.segment_of(at, len)?;
        let key = Key {
            owner,
            index: SEGMENT | ((i as u64) << 32) | u64::from(idx),
        };
        let decode = || {
            self.cache.get_or_build(key, OnFailure::Retry, || {
                let s =
                    Segment::decode(layer.source(), layer.lz4(), c.file_off, (cps, i), at + len)?;
                let cost = s.heap_bytes();
                Ok((s, cost))
            })
        };
        let mut built = decode();
        // Decoded for an earlier read, not as far as this one: decoded again, further.
        if built
            .as_ref()
            .is_ok_and(|s| !s.value().is_some_and(|s| s.covers(at, len)))
        {
            self.cache.remove(key);
            built = decode();
        }
        match built {
            Ok(seg) => Some(seg),
            Err(e) => {
                log::debug!("{e}");
                cps.discard();
                self.cache.remove(table_key);
                None
            }
        }
    }

    /// The layer extent `e` reads from.
    fn layer(&self, e: &Extent) -> Result<&Arc<dyn Layer>> {
        self.layers
            .get(e.src as usize)
            .ok_or_else(|| Error::from_errno(libc::EIO, format!("block map: no layer #{}", e.src)))
    }

    fn read_extent(&self, e: &Extent, pos: u64, dst: &mut [u8], prefetch: bool) -> Result<()> {
        if e.is_hole() {
            dst.fill(0);
            return Ok(());
        }
        let layer = self.layer(e)?;
        let at = e.off + (pos - e.start);
        if e.chunk == NO_CHUNK {
            let source = layer.source();
            let len = dst.len() as u64;
            if dst.len() >= SMALL_READ
                && let Some(bytes) = source.view(at, len, "data frame")?
            {
                if prefetch {
                    source.prefetch(at, len);
                }
                dst.copy_from_slice(bytes);
                source.served(len);
                return Ok(());
            }
            return source.read_exact_at(at, dst, "data frame");
        }
        let at_len = (at as usize, dst.len());
        self.read_chunk(layer, e.chunk, at_len, !prefetch, &mut |b| {
            dst.copy_from_slice(b)
        })
    }

    /// Notes a read of `offset..end`; when reading is sequential (it continues the last read,
    /// or falls inside the window prefetched so far: the kernel's readahead requests arrive on
    /// several threads, slightly out of order), asks the backing files for the image's next
    /// `LOOKAHEAD` bytes before they are requested.
    /// Returns whether `offset..end` itself lies in a window already prefetched.
    fn read_ahead(&self, cursor: &Cursor, map: &BlockMap, offset: u64, end: u64) -> bool {
        let front = cursor.prefetched.load(Ordering::Relaxed);
        let continues = cursor.last_end.swap(end, Ordering::Relaxed) == offset;
        let in_window = offset < front && offset + 2 * LOOKAHEAD >= front;
        let covered = in_window && end <= front;
        if !(continues || in_window) || front >= end + LOOKAHEAD / 2 {
            return covered;
        }
        let from = front.max(end);
        let to = (end + LOOKAHEAD).min(self.size);
        if from >= to
            || cursor
                .prefetched
                .compare_exchange(front, to, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return covered;
        }
        let extents = map.extents();
        for e in &extents[map.find(from)..] {
            if e.start >= to {
                break;
            }
            if e.is_hole() {
                continue;
            }
            let Ok(layer) = self.layer(e) else {
                continue;
            };
            if e.chunk != NO_CHUNK {
                if let Some(c) = layer
                    .index()
                    .ok()
                    .and_then(|i| i.chunks.get(e.chunk as usize))
                {
                    layer.source().prefetch(c.file_off, c.comp_len);
                }
                // Decoded on the other cores while the frames before are being read.
                if let Ok(chunk) = self.chunk(layer, e.chunk) {
                    chunk.decode_ahead();
                }
                continue;
            }
            let s = e.start.max(from);
            let t = e.end().min(to);
            layer.source().prefetch(e.off + (s - e.start), t - s);
        }
        covered
    }
}

impl FileNode for ImageFile {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_at_by(&self.shared, offset, buf)
    }

    fn read_with(&self, offset: u64, len: usize, f: &mut dyn FnMut(&[u8])) -> Result<bool> {
        self.read_with_by(&self.shared, offset, len, f)
    }

    fn read_at_by(&self, cursor: &Cursor, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = vfs::clamp(offset, buf.len(), self.size);
        if n == 0 {
            return Ok(0);
        }
        let map = self.map()?;
        let covered = self.read_ahead(cursor, &map, offset, offset + n as u64);
        let extents = map.extents();
        let mut i = map.find(offset);
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let e = extents.get(i).ok_or_else(|| {
                Error::from_errno(libc::EIO, format!("block map: no extent at offset {pos}"))
            })?;
            let take = ((e.end() - pos) as usize).min(n - done);
            self.read_extent(e, pos, &mut buf[done..done + take], !covered)?;
            done += take;
            i += 1;
        }
        Ok(n)
    }

    fn read_with_by(
        &self,
        cursor: &Cursor,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<bool> {
        let len = vfs::clamp(offset, len, self.size);
        if len == 0 {
            f(&[]);
            return Ok(true);
        }
        let map = self.map()?;
        let Some(&e) = map.extent_at(offset) else {
            return Ok(false);
        };
        if e.end() - offset < len as u64
            || (len < SMALL_READ && !e.is_hole() && e.chunk == NO_CHUNK)
        {
            return Ok(false);
        }
        let covered = self.read_ahead(cursor, &map, offset, offset + len as u64);
        if e.is_hole() {
            match ZEROS.get(..len) {
                Some(z) => f(z),
                None => return Ok(false),
            }
            return Ok(true);
        }
        let layer = self.layer(&e)?;
        let at = e.off + (offset - e.start);
        if e.chunk != NO_CHUNK {
            self.read_chunk(layer, e.chunk, (at as usize, len), covered, f)?;
            return Ok(true);
        }
        let source = layer.source();
        // Lent straight from a mapped file (zero-copy); other storage reads into a buffer.
        let bytes = source.range(at, len as u64, "data frame")?;
        if !covered {
            source.prefetch(at, len as u64);
        }
        f(&bytes);
        source.served(len as u64);
        Ok(true)
    }

    fn page_cache(&self) -> bool {
        false
    }

    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        Ok(self.map()?.next_data(offset))
    }

    fn next_hole(&self, offset: u64) -> Result<u64> {
        Ok(self.map()?.next_hole(offset))
    }

    fn allocated(&self) -> Result<u64> {
        if let Some(&a) = self.allocated.get() {
            return Ok(a);
        }
        Ok(self.map()?.allocated())
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}
