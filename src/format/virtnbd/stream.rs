//! The index of one `.data` file: a sparse stream (meta, data/zero frames, stop, LZ4 trailer) or
//! a plain raw image. Parsing checks what can be checked without decoding: frame headers, CRLFs,
//! `dataSize`, the trailer, every LZ4 frame's header. `verify` decodes the rest.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use indicatif::ProgressBar;
use serde_json::Value;

use super::frame::{self, FRAME_LEN, FrameKind};
use super::meta::{self, StreamMeta};
use crate::blockmap::{Extent, HOLE, NO_CHUNK};
use crate::cache;
use crate::error::{Error, Result};
use crate::image::{Chunk, Layer, LayerIndex};
use crate::indexcache::{IndexCache, Reader, Writer};
use crate::lz4;
use crate::lz4::Lz4Runtime;
use crate::model::Io;
use crate::storage::{Source, Store};
use crate::vfs;

/// One `.data` file: its meta header (read when opened) and its index of extents and chunks
/// (parsed when opened, or, when the index cache holds it, loaded on first use).
pub struct Stream {
    source: Arc<Source>,
    meta: Option<StreamMeta>,
    index: OnceLock<Result<LayerIndex>>,
    cached: Option<(Arc<IndexCache>, String)>,
    /// Where its LZ4 frames' checkpoints are kept: the index cache and the file's key.
    kept: Option<(Arc<IndexCache>, String)>,
    owner: u64,
    lz4: Arc<Lz4Runtime>,
    /// Where the file's `.chksum` neighbour is read from.
    store: Arc<dyn Store>,
}

impl Layer for Stream {
    fn source(&self) -> &Arc<Source> {
        &self.source
    }
    fn index(&self) -> Result<&LayerIndex> {
        self.index
            .get_or_init(|| {
                let kept = self.cached.as_ref().and_then(|(ix, key)| {
                    ix.load(key)
                        .and_then(|b| decode(&b, &self.source, self.virtual_size()))
                });
                match kept {
                    Some(index) => Ok(index),
                    None => parse(&self.source).map(|(_, index)| index),
                }
            })
            .as_ref()
            .map_err(Clone::clone)
    }
    fn cache_owner(&self) -> u64 {
        self.owner
    }
    fn lz4(&self) -> &Arc<Lz4Runtime> {
        &self.lz4
    }
    fn checkpoints(&self, chunk: &Chunk) -> Option<PathBuf> {
        let (ix, key) = self.kept.as_ref()?;
        Some(ix.checkpoint_path(key, chunk.file_off))
    }
}

/// Whether the file is a stream (it starts with a meta frame) rather than a raw image.
fn is_stream(source: &Source) -> Result<bool> {
    Ok(*source.prefix(0, 4, "the file's first bytes")? == *b"meta")
}

/// Parses the whole file: a stream's frames, or a raw image's data runs.
fn parse(source: &Arc<Source>) -> Result<(Option<StreamMeta>, LayerIndex)> {
    let r = if is_stream(source)? {
        let (meta, index) = Parser::new(source).parse()?;
        (Some(meta), index)
    } else {
        let extents = raw_extents(source)?;
        (
            None,
            LayerIndex {
                extents,
                chunks: Vec::new(),
            },
        )
    };
    source.release();
    Ok(r)
}

impl Stream {
    /// Maps the file at `path` and reads its meta header. Its index comes from `cache` when
    /// the cache holds one for the file as it is now; else the file is parsed (and checked)
    /// whole, and the index is kept in `cache` for next time. The mapping counts in `io`'s
    /// budget; LZ4 frames decode with its runtime.
    pub fn open(path: &Path, cache: Option<&Arc<IndexCache>>, io: &Io) -> Result<Stream> {
        let source = io.store.open(path)?;
        let key = |s: &Source| cache.and(s.identity()).map(|id| IndexCache::key(&id));
        let kept = key(&source);
        if let (Some(ix), Some(k)) = (cache, &kept)
            && ix.has(k)
        {
            let meta = if is_stream(&source)? {
                Some(Parser::new(&source).meta()?.0)
            } else {
                None
            };
            return Ok(Stream {
                source,
                meta,
                index: OnceLock::new(),
                cached: Some((Arc::clone(ix), k.clone())),
                kept: Some((Arc::clone(ix), k.clone())),
                owner: cache::new_owner_id(),
                lz4: Arc::clone(&io.lz4),
                store: Arc::clone(&io.store),
            });
        }
        let (meta, index) = parse(&source)?;
        // Kept only if the file did not change while it was read.
        let kept = match (cache, kept) {
            (Some(ix), Some(k)) if key(&source).as_ref() == Some(&k) => {
                ix.store(&k, &encode(&index));
                Some((Arc::clone(ix), k))
            }
            _ => None,
        };
        Ok(Stream {
            source,
            meta,
            index: OnceLock::from(Ok(index)),
            cached: None,
            kept,
            owner: cache::new_owner_id(),
            lz4: Arc::clone(&io.lz4),
            store: Arc::clone(&io.store),
        })
    }

    /// The meta header; `None` for a raw image.
    pub fn meta(&self) -> Option<&StreamMeta> {
        self.meta.as_ref()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// Virtual disk size: `virtualSize`, or the length of a raw image.
    pub fn virtual_size(&self) -> u64 {
        self.meta
            .as_ref()
            .map_or(self.source.len(), |m| m.virtual_size)
    }

    /// Number of extents (frames, chunks, raw data runs) indexed.
    pub fn extent_count(&self) -> Result<usize> {
        Ok(self.index()?.extents.len())
    }

    /// Bytes `verify` reads: the compressed frames, and the whole file when it has a checksum.
    pub fn verify_cost(&self) -> u64 {
        let frames: u64 = self
            .index()
            .map_or(0, |i| i.chunks.iter().map(|c| c.comp_len).sum());
        let sum = if matches!(self.store.stat(&checksum_path(self.path())), Ok(Some(_))) {
            self.source.len()
        } else {
            0
        };
        frames + sum
    }

    /// Decodes every LZ4 frame (block and content checksums, sizes), keeping its decoder
    /// checkpoints, and checks the `<file>.chksum` Adler-32 when there is one. `progress`
    /// advances by file bytes.
    pub fn verify(&self, progress: &ProgressBar) -> Result<()> {
        for c in &self.index()?.chunks {
            // Decoding the last byte decodes the whole frame and checks every checksum.
            let chunk = lz4::DecodedChunk::new(
                Arc::clone(&self.source),
                Arc::clone(&self.lz4),
                c.file_off,
                c.comp_len,
                c.raw_len,
            )
            .keeping_checkpoints(self.checkpoints(c));
            if let Some(last) = c.raw_len.checked_sub(1) {
                chunk.read(last as usize, &mut [0u8])?;
            }
            progress.inc(c.comp_len);
        }
        let sum_path = checksum_path(self.path());
        let sum_path = sum_path.as_path();
        if let Some(text) = read_checksum(self.store.as_ref(), sum_path)? {
            let want: u32 = text.trim().parse().map_err(|_| {
                Error::corrupt(
                    sum_path,
                    0,
                    format!("not a decimal Adler-32: {:?}", text.trim()),
                )
            })?;
            let mut adler = adler2::Adler32::new();
            let len = self.source.len();
            for at in (0..len).step_by(8 << 20) {
                let piece = self.source.range(at, (len - at).min(8 << 20), "the file")?;
                adler.write_slice(&piece);
                progress.inc(piece.len() as u64);
            }
            if adler.checksum() != want {
                return Err(Error::corrupt(
                    self.path(),
                    0,
                    format!(
                        "Adler-32 of the file is {}, {} says {want}",
                        adler.checksum(),
                        sum_path.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The index as the index cache keeps it: extents, then chunks.
fn encode(index: &LayerIndex) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(
        16 + index.extents.len() * 32 + index.chunks.len() * 24,
    ));
    w.u64(index.extents.len() as u64);
    for e in &index.extents {
        w.u64(e.start);
        w.u64(e.len);
        w.u64(e.off);
        w.u32(e.src);
        w.u32(e.chunk);
    }
    w.u64(index.chunks.len() as u64);
    for c in &index.chunks {
        w.u64(c.file_off);
        w.u64(c.comp_len);
        w.u64(c.raw_len);
    }
    w.0
}

/// An index the cache kept, checked against the file it describes (a disk of `size` bytes);
/// `None` if it does not fit (the file is then parsed again).
fn decode(bytes: &[u8], source: &Source, size: u64) -> Option<LayerIndex> {
    let mut r = Reader(bytes);
    let n = usize::try_from(r.u64()?).ok()?;
    let mut extents = Vec::with_capacity(n.min(bytes.len() / 32));
    let mut prev_end = 0;
    for _ in 0..n {
        let e = Extent {
            start: r.u64()?,
            len: r.u64()?,
            off: r.u64()?,
            src: r.u32()?,
            chunk: r.u32()?,
        };
        if e.start < prev_end || e.start.checked_add(e.len)? > size {
            return None;
        }
        prev_end = e.end();
        extents.push(e);
    }
    let n = usize::try_from(r.u64()?).ok()?;
    let mut chunks = Vec::with_capacity(n.min(bytes.len() / 24));
    for _ in 0..n {
        let c = Chunk {
            file_off: r.u64()?,
            comp_len: r.u64()?,
            raw_len: r.u64()?,
        };
        if c.file_off.checked_add(c.comp_len)? > source.len() || c.raw_len > lz4::MAX_FRAME {
            return None;
        }
        chunks.push(c);
    }
    let fits = extents.iter().all(|e| {
        e.is_hole()
            || match e.chunk {
                NO_CHUNK => e
                    .off
                    .checked_add(e.len)
                    .is_some_and(|end| end <= source.len()),
                c => chunks
                    .get(c as usize)
                    .is_some_and(|c| e.off.checked_add(e.len).is_some_and(|end| end <= c.raw_len)),
            }
    });
    (fits && r.is_empty()).then_some(LayerIndex { extents, chunks })
}

/// The text of a `.chksum` file, `None` when there is none. Read only as far as a checksum can
/// reach, so a huge file costs nothing; unreadable or non-text content is an error.
fn read_checksum(store: &dyn Store, path: &Path) -> Result<Option<String>> {
    if store.stat(path)?.is_none() {
        return Ok(None);
    }
    let source = store.open(path)?;
    let bytes = source.prefix(0, 64, "the checksum")?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// `<file>.chksum`, where virtnbdbackup ≥ 1.9.40 stores the file's Adler-32.
fn checksum_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".chksum");
    PathBuf::from(p)
}

/// Extents of a raw image: its data runs, and its holes as holes.
fn raw_extents(source: &Source) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((data, hole)) = source.next_data(pos)? {
        if data < pos || data >= hole {
            break;
        }
        out.push(Extent {
            start: data,
            len: hole - data,
            off: data,
            src: 0,
            chunk: NO_CHUNK,
        });
        pos = hole;
    }
    Ok(out)
}

/// The compression trailer: per data frame the compressed sizes of its LZ4 frames, and the
/// trailer's file offset.
type Trailer = (Vec<Vec<u64>>, u64);

/// What the frame walk has gathered so far.
#[derive(Default)]
struct FrameWalk {
    extents: Vec<Extent>,
    chunks: Vec<Chunk>,
    data_frames: usize,
    data_sum: u64,
    /// The end of the last data or zero frame: frames must not go back.
    prev_end: u64,
}

/// Walks a stream's frames once, reading each header, trailer and LZ4 frame header by range
/// (from the mapping without a copy, or from storage that has none).
struct Parser<'a> {
    source: &'a Arc<Source>,
}

/// The longest LZ4 frame header `lz4::declared_size` reads.
const LZ4_HEADER: u64 = 15;

impl<'a> Parser<'a> {
    fn new(source: &'a Arc<Source>) -> Self {
        Parser { source }
    }

    /// `n` bytes at `pos`; `None` when the file ends before.
    fn get(&self, pos: u64, n: u64, what: &str) -> Result<Option<Cow<'a, [u8]>>> {
        if pos.checked_add(n).is_none_or(|end| end > self.source.len()) {
            return Ok(None);
        }
        self.source.range(pos, n, what).map(Some)
    }

    fn err(&self, offset: u64, msg: impl Into<String>) -> Error {
        Error::corrupt(self.source.path(), offset, msg)
    }

    fn header(&self, pos: u64) -> Result<frame::FrameHeader> {
        let Some(bytes) = self.get(pos, FRAME_LEN as u64, "a frame header")? else {
            return Err(self.err(
                pos,
                format!(
                    "truncated stream: a frame header needs {FRAME_LEN} bytes, the file ends at {} (no stop frame)",
                    self.source.len()
                ),
            ));
        };
        frame::parse(&bytes).map_err(|m| self.err(pos, m))
    }

    fn expect_crlf(&self, pos: u64, after: &str) -> Result<()> {
        match self.get(pos, 2, after)?.as_deref() {
            Some(b"\r\n") => Ok(()),
            Some(_) => Err(self.err(pos, format!("missing CRLF after {after}"))),
            None => Err(self.err(pos, format!("truncated stream: file ends inside {after}"))),
        }
    }

    /// The meta frame, and the offset of the first frame after it.
    fn meta(&self) -> Result<(StreamMeta, u64)> {
        let h = self.header(0)?;
        if h.kind != FrameKind::Meta {
            return Err(self.err(0, "first frame is not meta"));
        }
        let json = self.source.range(FRAME_LEN as u64, h.length, "meta JSON")?;
        let meta = meta::parse(&json).map_err(|m| self.err(FRAME_LEN as u64, m))?;
        if let Some(name) = &meta.disk_name
            && !vfs::is_safe_name(name)
        {
            return Err(self.err(
                FRAME_LEN as u64,
                format!("unsafe disk name {name:?} in meta: refusing to expose it"),
            ));
        }
        // The range above proved FRAME_LEN + length lies inside the file.
        let pos = FRAME_LEN as u64 + h.length;
        self.expect_crlf(pos, "meta JSON")?;
        Ok((meta, pos + 2))
    }

    fn parse(&self) -> Result<(StreamMeta, LayerIndex)> {
        let (meta, pos) = self.meta()?;
        let trailer = if meta.compressed {
            Some(self.trailer()?)
        } else {
            None
        };
        let mut walk = FrameWalk::default();
        let end = self.frames(&meta, trailer.as_ref(), pos, &mut walk)?;
        self.check_totals(&meta, trailer.as_ref(), end, &walk)?;
        Ok((
            meta,
            LayerIndex {
                extents: walk.extents,
                chunks: walk.chunks,
            },
        ))
    }

    /// Walks the frames from `pos` up to the stop frame; returns the offset right after it.
    fn frames(
        &self,
        meta: &StreamMeta,
        trailer: Option<&Trailer>,
        mut pos: u64,
        walk: &mut FrameWalk,
    ) -> Result<u64> {
        let mut frames_seen = 0u64;
        loop {
            // Page faults map 64 KiB around each header: release them as we go, so indexing
            // a big file does not make it resident.
            frames_seen += 1;
            if frames_seen.is_multiple_of(256) {
                self.source.release();
            }
            let h = self.header(pos)?;
            if matches!(h.kind, FrameKind::Data | FrameKind::Zero) {
                self.check_in_order(pos, h, meta.virtual_size, &mut walk.prev_end)?;
            }
            match h.kind {
                FrameKind::Stop => return Ok(pos + FRAME_LEN as u64),
                FrameKind::Zero => {
                    walk.extents.push(Extent {
                        start: h.start,
                        len: h.length,
                        off: 0,
                        src: HOLE,
                        chunk: NO_CHUNK,
                    });
                    pos += FRAME_LEN as u64;
                }
                FrameKind::Data => pos = self.data_frame(pos, h, trailer, walk)?,
                FrameKind::Meta | FrameKind::Comp => {
                    return Err(self.err(
                        pos,
                        format!("unexpected {:?} frame inside the stream", h.kind),
                    ));
                }
            }
        }
    }

    /// Checks that a data or zero frame starts at or after the previous one's end and stays
    /// inside the disk.
    fn check_in_order(
        &self,
        pos: u64,
        h: frame::FrameHeader,
        virtual_size: u64,
        prev_end: &mut u64,
    ) -> Result<()> {
        match h.start.checked_add(h.length) {
            Some(end) if h.start >= *prev_end && end <= virtual_size => {
                *prev_end = end;
                Ok(())
            }
            _ => Err(self.err(
                pos,
                format!(
                    "frame {:#x}+{:#x} overlaps the previous frame or leaves the {}-byte disk",
                    h.start, h.length, virtual_size
                ),
            )),
        }
    }

    /// Indexes one data frame at `pos`; returns the offset of the next frame.
    fn data_frame(
        &self,
        pos: u64,
        h: frame::FrameHeader,
        trailer: Option<&Trailer>,
        walk: &mut FrameWalk,
    ) -> Result<u64> {
        let payload = pos + FRAME_LEN as u64;
        let stored = match trailer {
            None => {
                self.source.check(payload, h.length, "data payload")?;
                walk.extents.push(Extent {
                    start: h.start,
                    len: h.length,
                    off: payload,
                    src: 0,
                    chunk: NO_CHUNK,
                });
                h.length
            }
            Some((entries, _)) => {
                let sizes = entries.get(walk.data_frames).ok_or_else(|| {
                    self.err(
                        pos,
                        format!(
                            "compression trailer lists {} data frames, this is data frame #{}",
                            entries.len(),
                            walk.data_frames + 1
                        ),
                    )
                })?;
                self.lz4_frames(pos, h, payload, sizes, &mut walk.extents, &mut walk.chunks)?
            }
        };
        let end = payload + stored;
        let what = match trailer {
            None => "data payload",
            Some(_) => "the LZ4 frames the compression trailer lists (trailer inconsistent?)",
        };
        self.expect_crlf(end, what)?;
        walk.data_frames += 1;
        walk.data_sum += h.length;
        Ok(end + 2)
    }

    /// Checks the frames against the meta's `dataSize` and the trailer (`end`: right after the
    /// stop frame).
    fn check_totals(
        &self,
        meta: &StreamMeta,
        trailer: Option<&Trailer>,
        end: u64,
        walk: &FrameWalk,
    ) -> Result<()> {
        if walk.data_sum != meta.data_size {
            return Err(self.err(
                end,
                format!(
                    "meta says dataSize {}, the data frames hold {} bytes",
                    meta.data_size, walk.data_sum
                ),
            ));
        }
        if let Some((entries, start)) = trailer {
            if entries.len() != walk.data_frames {
                return Err(self.err(
                    *start,
                    format!(
                        "compression trailer lists {} data frames, the stream has {}",
                        entries.len(),
                        walk.data_frames
                    ),
                ));
            }
            if *start != end {
                return Err(self.err(
                    end,
                    format!(
                        "compression trailer starts at {start}, expected right after the stop frame"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Indexes the LZ4 frames of one data payload; returns their total compressed size.
    fn lz4_frames(
        &self,
        pos: u64,
        h: frame::FrameHeader,
        payload: u64,
        sizes: &[u64],
        extents: &mut Vec<Extent>,
        chunks: &mut Vec<Chunk>,
    ) -> Result<u64> {
        let mut file_off = payload;
        let mut guest = h.start;
        for &comp_len in sizes {
            self.source.check(file_off, comp_len, "LZ4 frame")?;
            let head = self
                .source
                .range(file_off, comp_len.min(LZ4_HEADER), "LZ4 frame")?;
            let raw_len = match lz4::declared_size(&head).map_err(|m| self.err(file_off, m))? {
                Some(n) => n,
                None => lz4::decode_count(self.source, file_off, comp_len)?,
            };
            if raw_len > lz4::MAX_FRAME {
                return Err(self.err(
                    file_off,
                    format!(
                        "LZ4 frame declares {raw_len} bytes, more than the {} restorefs accepts",
                        lz4::MAX_FRAME
                    ),
                ));
            }
            // frame end >= guest holds: `guest` only advances while it stays inside the frame.
            if raw_len > h.start + h.length - guest {
                break;
            }
            let chunk = u32::try_from(chunks.len())
                .ok()
                .filter(|&c| c != NO_CHUNK)
                .ok_or_else(|| self.err(file_off, "more LZ4 frames than restorefs indexes"))?;
            extents.push(Extent {
                start: guest,
                len: raw_len,
                off: 0,
                src: 0,
                chunk,
            });
            chunks.push(Chunk {
                file_off,
                comp_len,
                raw_len,
            });
            guest += raw_len;
            file_off += comp_len;
        }
        if guest != h.start + h.length {
            return Err(self.err(
                pos,
                format!(
                    "data frame covers {} bytes, its LZ4 frames decode to a different size (trailer inconsistent)",
                    h.length
                ),
            ));
        }
        Ok(file_off - payload)
    }

    /// Reads the compression trailer: per data frame the compressed sizes of its LZ4 frames.
    /// Returns them with the trailer's file offset.
    fn trailer(&self) -> Result<Trailer> {
        let len = self.source.len();
        let missing = |what: &str| self.err(len, format!("compression trailer missing: {what}"));
        if len < FRAME_LEN as u64 + 2 {
            return Err(missing("file too short"));
        }
        let hpos = len - FRAME_LEN as u64;
        let tail = self
            .source
            .range(hpos, FRAME_LEN as u64, "the comp frame")?;
        let h = frame::parse(&tail).map_err(|m| missing(&m))?;
        if h.kind != FrameKind::Comp {
            return Err(missing("the file does not end with a comp frame"));
        }
        let start = hpos
            .checked_sub(h.length.saturating_add(2))
            .ok_or_else(|| self.err(hpos, "comp frame gives a trailer longer than the file"))?;
        self.expect_crlf(hpos - 2, "compression trailer")?;
        let json = self
            .source
            .range(start, hpos - 2 - start, "compression trailer")?;
        let bad = |m: String| self.err(start, format!("bad compression trailer: {m}"));
        let v: Vec<Value> = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
        let entries = v
            .iter()
            .map(|e| match e {
                Value::Number(n) => n
                    .as_u64()
                    .map(|n| vec![n])
                    .ok_or_else(|| bad(format!("{n} is not a size"))),
                Value::Object(o) if o.len() == 1 => {
                    let Some((total, list)) = o.iter().next() else {
                        return Err(bad(format!("unexpected entry {e}")));
                    };
                    let total: u64 = total
                        .parse()
                        .map_err(|_| bad(format!("key {total:?} is not a size")))?;
                    let sizes = list
                        .as_array()
                        .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
                        .ok_or_else(|| bad(format!("{list} is not a list of sizes")))?;
                    let sum = sizes.iter().try_fold(0u64, |a, &b| a.checked_add(b));
                    if sum != Some(total) {
                        return Err(bad(format!("sizes {sizes:?} do not add up to {total}")));
                    }
                    Ok(sizes)
                }
                other => Err(bad(format!("unexpected entry {other}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((entries, start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Mappings;
    use crate::storage::tests::Unmapped;

    /// Storage that lends no view (as a remote object store) indexes every stream of the
    /// reference chains, LZ4 ones included, exactly as the mapped file does.
    #[test]
    fn storage_without_a_view_indexes_like_the_mapped_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/virtnbd");
        let mut compared = 0;
        for set in ["v1-lz4", "v1-misc"] {
            for entry in std::fs::read_dir(root.join(set)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "data") {
                    continue;
                }
                let mapped = parse(&Source::open(&path, &Mappings::new()).unwrap()).unwrap();
                let remote = parse(&Unmapped::source(&path)).unwrap();
                assert_eq!(mapped.0.is_some(), remote.0.is_some(), "{}", path.display());
                if mapped.0.is_none() {
                    // A raw image: storage that knows no holes serves it as one data run.
                    let len = std::fs::metadata(&path).unwrap().len();
                    let e = &remote.1.extents;
                    assert_eq!((e.len(), e[0].start, e[0].len), (1, 0, len));
                    continue;
                }
                assert_eq!(encode(&mapped.1), encode(&remote.1), "{}", path.display());
                compared += 1;
            }
        }
        assert!(compared >= 10, "only {compared} files compared");
    }
}
