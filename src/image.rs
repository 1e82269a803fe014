//! A disk image served through a block map: uncompressed extents straight from the mapped backup
//! files (zero-copy when a read falls in one extent), compressed chunks through the shared cache.

use std::sync::{Arc, OnceLock};

use crate::blockmap::{BlockMap, Extent, NO_CHUNK};
use crate::cache::{Cache, Key};
use crate::error::{Error, Result};
use crate::lz4::DecodedChunk;
use crate::source::Source;
use crate::vfs::{Attr, FileNode};

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

/// One backup file of an image's sequence, as the block map sees it.
pub trait Layer: Send + Sync {
    /// The mapped file.
    fn source(&self) -> &Arc<Source>;
    /// Its extents: sorted, non-overlapping; holes have `src == HOLE`.
    fn extents(&self) -> &[Extent];
    /// Its compressed chunks, indexed by `Extent::chunk`.
    fn chunks(&self) -> &[Chunk];
    /// Cache owner id for its decoded chunks.
    fn cache_owner(&self) -> u64;
}

/// A handle on a cached block map.
pub struct MapRef(Arc<MapCell>);

impl std::ops::Deref for MapRef {
    type Target = BlockMap;
    fn deref(&self) -> &BlockMap {
        self.0.map.get().expect("built before handing out")
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
}

/// The cache's value for a block map: built once, outside the cache's lock.
#[derive(Default)]
struct MapCell {
    map: OnceLock<BlockMap>,
}

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
        }
    }

    /// The block map, from the cache or built now.
    pub fn map(&self) -> MapRef {
        let key = Key {
            owner: self.owner,
            index: 0,
        };
        let cell = self.cache.get_or_insert(key, 0, MapCell::default);
        if cell.map.get().is_none() {
            let map = cell.map.get_or_init(|| {
                let extents: Vec<&[Extent]> = self.layers.iter().map(|l| l.extents()).collect();
                BlockMap::build(self.size, &extents)
            });
            self.cache.set_cost(key, map.heap_bytes() as u64);
            let _ = self.allocated.set(map.allocated());
        }
        MapRef(cell)
    }

    fn chunk(&self, layer: &Arc<dyn Layer>, idx: u32) -> Result<Arc<DecodedChunk>> {
        let c = *layer.chunks().get(idx as usize).ok_or_else(|| {
            Error::corrupt(
                layer.source().path(),
                0,
                format!("no compressed chunk #{idx}"),
            )
        })?;
        let key = Key {
            owner: layer.cache_owner(),
            index: u64::from(idx),
        };
        Ok(self.cache.get_or_insert(key, c.raw_len, || {
            DecodedChunk::new(
                Arc::clone(layer.source()),
                c.file_off,
                c.comp_len,
                c.raw_len,
            )
        }))
    }

    fn read_extent(&self, e: &Extent, pos: u64, dst: &mut [u8]) -> Result<()> {
        if e.is_hole() {
            dst.fill(0);
            return Ok(());
        }
        let layer = &self.layers[e.src as usize];
        let at = e.off + (pos - e.start);
        if e.chunk == NO_CHUNK {
            let bytes = layer.source().slice(at, dst.len() as u64, "data frame")?;
            dst.copy_from_slice(bytes);
            return Ok(());
        }
        self.chunk(layer, e.chunk)?.read(at as usize, dst)
    }
}

impl FileNode for ImageFile {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = buf.len().min((self.size - offset) as usize);
        let map = self.map();
        let extents = map.extents();
        let mut i = map.find(offset);
        let mut done = 0usize;
        while done < n {
            let e = &extents[i];
            let pos = offset + done as u64;
            let take = ((e.end() - pos) as usize).min(n - done);
            self.read_extent(e, pos, &mut buf[done..done + take])?;
            done += take;
            i += 1;
        }
        Ok(n)
    }

    fn borrow(&self, offset: u64, len: usize) -> Option<&[u8]> {
        if offset >= self.size {
            return Some(&[]);
        }
        let len = len.min((self.size - offset) as usize);
        let map = self.map();
        let e = map.extents()[map.find(offset)];
        if e.end() - offset < len as u64 {
            return None;
        }
        if e.is_hole() {
            return ZEROS.get(..len);
        }
        if e.chunk != NO_CHUNK {
            return None;
        }
        let layer = &self.layers[e.src as usize];
        layer
            .source()
            .slice(e.off + (offset - e.start), len as u64, "data frame")
            .ok()
    }

    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        Ok(self.map().next_data(offset))
    }

    fn next_hole(&self, offset: u64) -> Result<u64> {
        Ok(self.map().next_hole(offset))
    }

    fn allocated(&self) -> Result<u64> {
        if let Some(&a) = self.allocated.get() {
            return Ok(a);
        }
        Ok(self.map().allocated())
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}
