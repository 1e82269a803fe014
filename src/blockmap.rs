//! The resolved extent map of one disk image at one restore point: sorted, non-overlapping
//! extents that tile `[0, size)`, each pointing at a source-file range, a compressed chunk, or
//! zeros. Built in O(F log F) for F frames; looked up in O(log n).
//!
//! Memory: one [`Extent`] is 32 bytes, so a map costs 32 bytes per extent plus the `Vec` slack.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// `src` of an extent that reads as zeros (a hole).
pub const HOLE: u32 = u32::MAX;
/// `chunk` of an extent that is stored uncompressed.
pub const NO_CHUNK: u32 = u32::MAX;

/// One run of guest bytes and where they come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset of the first byte.
    pub start: u64,
    /// Number of guest bytes.
    pub len: u64,
    /// Uncompressed: file offset of the first byte. Compressed: offset inside the decoded chunk.
    pub off: u64,
    /// Index of the source (layer) the bytes come from, or [`HOLE`].
    pub src: u32,
    /// Index of the compressed chunk in that source, or [`NO_CHUNK`].
    pub chunk: u32,
}

impl Extent {
    /// Guest offset just past the extent (saturating: extents from damaged indexes may claim
    /// to run past the end of any disk).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// Whether the extent reads as zeros without backing data.
    pub fn is_hole(&self) -> bool {
        self.src == HOLE
    }

    /// The part of this extent from guest offset `from` (inside it) to `to`.
    fn cut(&self, from: u64, to: u64) -> Extent {
        let skip = from.saturating_sub(self.start);
        Extent {
            start: from,
            len: to.saturating_sub(from),
            off: if self.is_hole() {
                0
            } else {
                self.off.saturating_add(skip)
            },
            src: self.src,
            chunk: self.chunk,
        }
    }

    /// Whether `next` continues this extent seamlessly (so the two can be one).
    fn joins(&self, next: &Extent) -> bool {
        self.end() == next.start
            && self.src == next.src
            && (self.is_hole()
                || (self.chunk == next.chunk && self.off.checked_add(self.len) == Some(next.off)))
    }
}

/// Extents that tile `[0, size)`.
#[derive(Debug, Default)]
pub struct BlockMap {
    size: u64,
    extents: Vec<Extent>,
    /// Starts of the hole extents, for `SEEK_HOLE` without walking data extents.
    holes: Vec<u64>,
    allocated: u64,
}

impl BlockMap {
    /// The map of an empty image.
    pub const EMPTY: BlockMap = BlockMap {
        size: 0,
        extents: Vec::new(),
        holes: Vec::new(),
        allocated: 0,
    };

    /// Overlays `layers` (each sorted and non-overlapping; a later layer wins where they overlap)
    /// onto zeros, truncated or zero-extended to `size`. Each extent's `src` is set to the index
    /// of its layer, except holes (zero frames), which stay [`HOLE`] and still hide older layers.
    pub fn build(size: u64, layers: &[&[Extent]]) -> BlockMap {
        let order = by_start(size, layers);
        // Active extents, newest layer on top; expired ones are dropped lazily.
        let mut active: BinaryHeap<(u32, Reverse<u64>, u32)> = BinaryHeap::new();
        let mut out = BlockMap {
            size,
            extents: Vec::with_capacity(order.len() + 1),
            holes: Vec::new(),
            allocated: 0,
        };
        let (mut pos, mut i) = (0u64, 0usize);
        while pos < size {
            while i < order.len() && order[i].0 <= pos {
                let (_, li, ei) = order[i];
                let e = layers[li as usize][ei as usize];
                active.push((li, Reverse(e.end()), ei));
                i += 1;
            }
            while let Some(&(li, _, ei)) = active.peek() {
                if layer_extent(layers, li, ei).end() <= pos {
                    active.pop();
                } else {
                    break;
                }
            }
            let end = order.get(i).map_or(u64::MAX, |o| o.0).min(size);
            let piece = match active.peek() {
                None => Extent {
                    start: pos,
                    len: end - pos,
                    off: 0,
                    src: HOLE,
                    chunk: NO_CHUNK,
                },
                Some(&(li, _, ei)) => {
                    let e = layer_extent(layers, li, ei);
                    e.cut(pos, e.end().min(end))
                }
            };
            pos = piece.end();
            out.push(piece);
        }
        out.extents.shrink_to_fit();
        out.holes = out
            .extents
            .iter()
            .filter(|e| e.is_hole())
            .map(|e| e.start)
            .collect();
        out
    }

    fn push(&mut self, e: Extent) {
        if !e.is_hole() {
            self.allocated += e.len;
        }
        if let Some(last) = self.extents.last_mut()
            && last.joins(&e)
        {
            last.len += e.len;
            return;
        }
        self.extents.push(e);
    }

    /// Image size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// All extents, in guest order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Index of the extent holding guest offset `offset` (`extents().len()` when none does).
    pub fn find(&self, offset: u64) -> usize {
        self.extents.partition_point(|e| e.end() <= offset)
    }

    /// The extent holding guest offset `offset`, if any (none at or past the end).
    pub fn extent_at(&self, offset: u64) -> Option<&Extent> {
        self.extents.get(self.find(offset))
    }

    /// First data offset >= `offset`, or `None` when only holes follow.
    pub fn next_data(&self, offset: u64) -> Option<u64> {
        if offset >= self.size {
            return None;
        }
        self.extents
            .get(self.find(offset)..)?
            .iter()
            .find(|e| !e.is_hole())
            .map(|e| e.start.max(offset))
    }

    /// First hole offset >= `offset`; the end of the image counts as a hole.
    pub fn next_hole(&self, offset: u64) -> u64 {
        if offset >= self.size {
            return offset;
        }
        if self.extent_at(offset).is_none_or(Extent::is_hole) {
            return offset;
        }
        let next = self.holes.partition_point(|&s| s <= offset);
        self.holes.get(next).copied().unwrap_or(self.size)
    }

    /// Bytes backed by data (everything but holes).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Heap bytes held by the map.
    pub fn heap_bytes(&self) -> usize {
        self.extents.capacity() * std::mem::size_of::<Extent>() + self.holes.capacity() * 8
    }
}

/// (start, layer, index) of every non-empty extent inside `size`, sorted by start.
fn by_start(size: u64, layers: &[&[Extent]]) -> Vec<(u64, u32, u32)> {
    let mut order: Vec<(u64, u32, u32)> = Vec::with_capacity(layers.iter().map(|l| l.len()).sum());
    for (li, layer) in layers.iter().enumerate() {
        for (ei, e) in layer.iter().enumerate() {
            if e.len > 0 && e.start < size {
                order.push((e.start, li as u32, ei as u32));
            }
        }
    }
    order.sort_unstable();
    order
}

/// Extent `ei` of layer `li`, its `src` set to the layer (holes stay [`HOLE`]).
fn layer_extent(layers: &[&[Extent]], li: u32, ei: u32) -> Extent {
    let mut e = layers[li as usize][ei as usize];
    if !e.is_hole() {
        e.src = li;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(start: u64, len: u64, off: u64) -> Extent {
        Extent {
            start,
            len,
            off,
            src: 0,
            chunk: NO_CHUNK,
        }
    }

    fn hole(start: u64, len: u64) -> Extent {
        Extent {
            start,
            len,
            off: 0,
            src: HOLE,
            chunk: NO_CHUNK,
        }
    }

    /// Independent model: byte-by-byte (source, offset) of every guest byte.
    fn model(size: u64, layers: &[&[Extent]]) -> Vec<Option<(u32, u64)>> {
        let mut m = vec![None; size as usize];
        for (li, l) in layers.iter().enumerate() {
            for e in l.iter() {
                for b in e.start..e.end().min(size) {
                    m[b as usize] = (!e.is_hole()).then_some((li as u32, e.off + (b - e.start)));
                }
            }
        }
        m
    }

    fn flatten(map: &BlockMap) -> Vec<Option<(u32, u64)>> {
        let mut v = Vec::new();
        let mut pos = 0;
        for e in map.extents() {
            assert_eq!(e.start, pos, "extents must tile the image");
            for b in 0..e.len {
                v.push((!e.is_hole()).then_some((e.src, e.off + b)));
            }
            pos = e.end();
        }
        assert_eq!(pos, map.size());
        v
    }

    #[test]
    fn later_layers_win_and_zero_frames_shadow() {
        let base = [data(0, 10, 100), hole(10, 10), data(20, 10, 200)];
        let inc = [data(5, 10, 1000), data(25, 3, 2000)];
        let reset = [hole(0, 3)];
        let layers: [&[Extent]; 3] = [&base, &inc, &reset];
        let map = BlockMap::build(40, &layers);
        assert_eq!(flatten(&map), model(40, &layers));
        assert_eq!(map.allocated(), 2 + 10 + 5 + 3 + 2);
        assert_eq!(map.next_data(0), Some(3));
        assert_eq!(map.next_hole(3), 15);
        assert_eq!(map.next_data(15), Some(20));
        assert_eq!(map.next_hole(20), 30);
        assert_eq!(map.next_data(30), None);
    }

    #[test]
    fn truncates_and_extends_to_the_size() {
        let base = [data(0, 100, 0)];
        assert_eq!(BlockMap::build(50, &[&base]).extents(), &[data(0, 50, 0)]);
        let map = BlockMap::build(150, &[&base]);
        assert_eq!(map.extents(), &[data(0, 100, 0), hole(100, 50)]);
    }

    #[test]
    fn adjacent_pieces_of_one_frame_merge() {
        // A low-priority frame starting inside a high one splits the sweep; the pieces rejoin.
        let base = [data(10, 5, 0)];
        let inc = [data(0, 30, 500)];
        let map = BlockMap::build(30, &[&base, &inc]);
        assert_eq!(
            map.extents(),
            &[Extent {
                src: 1,
                ..data(0, 30, 500)
            }]
        );
    }

    #[test]
    fn random_overlays_match_the_model() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let size = 1 + rnd(300);
            let nlayers = 1 + rnd(5) as usize;
            let mut layers: Vec<Vec<Extent>> = Vec::new();
            for _ in 0..nlayers {
                let mut l = Vec::new();
                let mut pos = rnd(20);
                while pos < size + 20 {
                    let len = 1 + rnd(40);
                    if rnd(4) == 0 {
                        l.push(hole(pos, len));
                    } else {
                        l.push(data(pos, len, rnd(10_000)));
                    }
                    pos += len + rnd(30);
                }
                layers.push(l);
            }
            let refs: Vec<&[Extent]> = layers.iter().map(|l| l.as_slice()).collect();
            let map = BlockMap::build(size, &refs);
            let m = model(size, &refs);
            assert_eq!(flatten(&map), m);
            for off in 0..size {
                let data = (off..size).find(|&b| m[b as usize].is_some());
                let hole = (off..size)
                    .find(|&b| m[b as usize].is_none())
                    .unwrap_or(size);
                assert_eq!(map.next_data(off), data, "next_data({off})");
                assert_eq!(map.next_hole(off), hole, "next_hole({off})");
            }
            for w in map.extents().windows(2) {
                assert!(!w[0].joins(&w[1]), "unmerged neighbours {w:?}");
            }
        }
    }
}
