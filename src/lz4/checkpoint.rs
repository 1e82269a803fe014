//! Decoder checkpoints of LZ4 frames (the zran idea), kept on disk beside a backup file's kept
//! index: at block boundaries of a frame, where the next block starts and the part of the
//! 64 KiB decoded before it that the blocks after it refer to (the dictionary of a linked
//! block), LZ4-compressed. A random read then decodes one [`Segment`], from the checkpoint
//! before it to the next, instead of the frame from its start.
//!
//! A checkpoint file (little-endian): `MAGIC`; the frame's file offset, compressed and decoded
//! lengths; the number of checkpoints; per checkpoint its block's offset in the frame, its
//! offset in the decoded bytes, its stored dictionary's length and xxHash32, the dictionary's
//! decoded length, and the XXH3-64 of the segment's first 64 KiB of decoded bytes; an xxHash32
//! of all that; then the stored dictionaries. Checkpoints are taken while the stored
//! dictionaries stay within 1/16 of the bytes decoded so far, so compressible data gets one per
//! block and incompressible data one per MiB or so. A file that fails a check (its checksum, a
//! dictionary's, a segment whose first 64 KiB do not decode to the bytes the full decode gave,
//! a frame that does not reach the next checkpoint) is removed and never served from.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use twox_hash::{XxHash3_64, XxHash32};

use super::{FrameInfo, Lz4Runtime, MAX_HEADER, decode_block, frame_info, u32_at};
use crate::error::{Error, Result};
use crate::storage::Source;
use crate::sync::Arc;

/// Version 2: compressed, sparse dictionaries (version 1 files are not recognised and rebuilt).
const MAGIC: &[u8; 8] = b"RFSLZ4C2";
/// Magic, frame offset, compressed and decoded lengths, checkpoint count.
const HEAD: usize = 8 + 4 * 8;
/// Block offset, decoded offset, stored length and hash, dictionary length, head hash.
const ENTRY: usize = 8 + 8 + 4 * 3 + 8;
/// A linked block's dictionary: the decoded bytes before it.
const DICT: usize = 64 << 10;

/// The least spacing of checkpoints (one 64 KiB block); the stored dictionaries are bounded
/// to 1/16 of a frame's decoded size whatever the spacing.
pub const MIN_SPACING: usize = 64 << 10;

/// A place in a frame where decoding can start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mark {
    /// Offset of a block header in the frame.
    pub input: usize,
    /// Offset in the decoded bytes where that block's bytes go.
    pub out: usize,
}

/// Which frame a checkpoint file is for.
pub(super) struct FrameId {
    pub offset: u64,
    pub comp_len: u64,
    pub raw_len: u64,
}

/// A checkpoint ready to be written: its mark, stored dictionary and the hashes.
struct Kept {
    mark: Mark,
    stored: Vec<u8>,
    dict_len: usize,
    head: u64,
}

/// Writes checkpoints of a frame (`frame`, its compressed bytes; `out`, decoded whole) to
/// `path` (atomically): those of `marks` whose dictionaries fit the 1/16 budget.
pub(super) fn write(
    path: &Path,
    id: &FrameId,
    (info, frame): (&FrameInfo, &[u8]),
    marks: &[Mark],
    out: &[u8],
) -> io::Result<()> {
    let kept = choose(info, frame, marks, out);
    let mut head = Vec::with_capacity(HEAD + kept.len() * ENTRY + 4);
    head.extend_from_slice(MAGIC);
    for v in [id.offset, id.comp_len, id.raw_len, kept.len() as u64] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    for k in &kept {
        head.extend_from_slice(&(k.mark.input as u64).to_le_bytes());
        head.extend_from_slice(&(k.mark.out as u64).to_le_bytes());
        head.extend_from_slice(&(k.stored.len() as u32).to_le_bytes());
        head.extend_from_slice(&XxHash32::oneshot(0, &k.stored).to_le_bytes());
        head.extend_from_slice(&(k.dict_len as u32).to_le_bytes());
        head.extend_from_slice(&k.head.to_le_bytes());
    }
    head.extend_from_slice(&XxHash32::oneshot(0, &head).to_le_bytes());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = io::BufWriter::new(File::create(&tmp)?);
        f.write_all(&head)?;
        for k in &kept {
            f.write_all(&k.stored)?;
        }
        f.into_inner().map_err(io::IntoInnerError::into_error)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `path` holds a checkpoint file of the current format (one of an earlier format is
/// written again, not left to be ignored).
pub(super) fn current(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    File::open(path).is_ok_and(|f| f.read_exact_at(&mut magic, 0).is_ok() && &magic == MAGIC)
}

/// The checkpoints worth keeping: the frame's start, then each mark whose stored dictionary
/// keeps all stored dictionaries within 1/16 of the bytes decoded up to it.
fn choose(info: &FrameInfo, frame: &[u8], marks: &[Mark], out: &[u8]) -> Vec<Kept> {
    let mut kept: Vec<Kept> = Vec::new();
    let mut stored = 0usize;
    for m in marks {
        let dict = match (m.out, info.linked) {
            (0, _) | (_, false) => Some(Vec::new()),
            _ => sparse_dict(info, frame, *m, out),
        };
        let Some(dict) = dict else { continue };
        let packed = match dict.is_empty() {
            true => Vec::new(),
            false => lz4_flex::block::compress(&dict),
        };
        if m.out > 0 && (stored + packed.len()) * 16 > m.out {
            continue;
        }
        stored += packed.len();
        // Marks lie at least MIN_SPACING (64 KiB) apart: the segment's first 64 KiB.
        let first = out.get(m.out..out.len().min(m.out + DICT));
        kept.push(Kept {
            mark: *m,
            stored: packed,
            dict_len: dict.len(),
            head: XxHash3_64::oneshot(first.unwrap_or_default()),
        });
    }
    kept
}

/// The bytes decoded before mark `m` from the first one the blocks after it refer to (at most
/// 64 KiB back), with those they never refer to zeroed; `None` when the blocks cannot be parsed.
fn sparse_dict(info: &FrameInfo, frame: &[u8], m: Mark, out: &[u8]) -> Option<Vec<u8>> {
    let before = out.get(m.out.saturating_sub(DICT)..m.out)?;
    let mut refs: Vec<(usize, usize)> = Vec::new();
    let (mut at, mut pos) = (m.input, 0usize);
    while pos < DICT {
        let word = u32_at(frame, at, "").ok()?;
        if word == 0 {
            break;
        }
        let n = (word & 0x7fff_ffff) as usize;
        let data = frame.get(at + 4..at + 4 + n)?;
        pos = match word & 0x8000_0000 {
            0 => references(data, pos, &mut |back, len| {
                refs.push((before.len().checked_sub(back)?, len));
                Some(())
            })?,
            _ => pos + n,
        };
        at += 4 + n + if info.block_checksums { 4 } else { 0 };
    }
    let Some(low) = refs.iter().map(|r| r.0).min() else {
        return Some(Vec::new());
    };
    let mut dict = vec![0u8; before.len() - low];
    for (from, len) in refs {
        let (src, dst) = (before.get(from..from + len)?, from - low);
        dict.get_mut(dst..dst + len)?.copy_from_slice(src);
    }
    Some(dict)
}

/// Walks the sequences of compressed LZ4 block `data`, whose output starts `pos` bytes after a
/// checkpoint, calling `f(back, len)` for each match reaching `back` bytes before the
/// checkpoint (`len` of them before it); returns the output position after the block, or
/// after the first 64 KiB past the checkpoint (nothing later can reach before it).
fn references(
    data: &[u8],
    mut pos: usize,
    f: &mut dyn FnMut(usize, usize) -> Option<()>,
) -> Option<usize> {
    let mut i = 0;
    let length = |i: &mut usize, mut n: usize| -> Option<usize> {
        loop {
            let b = *data.get(*i)?;
            *i += 1;
            n += b as usize;
            if b != 255 {
                return Some(n);
            }
        }
    };
    loop {
        let token = *data.get(i)?;
        i += 1;
        let mut lit = (token >> 4) as usize;
        if lit == 15 {
            lit = length(&mut i, lit)?;
        }
        i = i.checked_add(lit)?;
        pos += lit;
        if i >= data.len() {
            return (i == data.len()).then_some(pos);
        }
        let off = u16::from_le_bytes(data.get(i..i + 2)?.try_into().ok()?) as usize;
        i += 2;
        let mut len = (token & 15) as usize + 4;
        if token & 15 == 15 {
            len = length(&mut i, len)?;
        }
        if off == 0 {
            return None;
        }
        if off > pos {
            f(off - pos, len.min(off - pos))?;
        }
        pos += len;
        if pos >= DICT {
            return Some(pos);
        }
    }
}

/// One checkpoint as its file lists it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    mark: Mark,
    stored_at: u64,
    stored_len: usize,
    stored_hash: u32,
    dict_len: usize,
    /// XXH3-64 of the segment's first 64 KiB of decoded bytes (fast enough for every read).
    head: u64,
}

/// The checkpoints of one frame, loaded from its checkpoint file and checked against it.
pub struct Checkpoints {
    path: PathBuf,
    raw_len: usize,
    comp_len: usize,
    entries: Vec<Entry>,
}

impl Checkpoints {
    /// The checkpoints kept in `path` for the frame at `offset` of `comp_len` bytes decoding to
    /// `raw_len`; `None` when there are none, or when the file does not check out (it is then
    /// removed, to be written again by the next whole decode).
    pub fn load(path: &Path, offset: u64, comp_len: u64, raw_len: u64) -> Option<Checkpoints> {
        let file = File::open(path).ok()?;
        let parsed = Self::parse(&file, path, offset, comp_len, raw_len);
        if parsed.is_none() {
            log::debug!(
                "{}: LZ4 checkpoints do not check out, removed",
                path.display()
            );
            let _ = std::fs::remove_file(path);
        } else {
            crate::prune::mark_used(path);
        }
        parsed
    }

    fn parse(file: &File, path: &Path, offset: u64, comp_len: u64, raw_len: u64) -> Option<Self> {
        let mut head = [0u8; HEAD];
        file.read_exact_at(&mut head, 0).ok()?;
        let word = |i: usize| {
            let b = head.get(8 + 8 * i..16 + 8 * i)?;
            b.try_into().ok().map(u64::from_le_bytes)
        };
        let n = usize::try_from(word(3)?).ok()?;
        // At most one checkpoint per MIN_SPACING decoded bytes, and the one at the start.
        if &head[..8] != MAGIC
            || [word(0)?, word(1)?, word(2)?] != [offset, comp_len, raw_len]
            || n == 0
            || n > usize::try_from(raw_len).ok()? / MIN_SPACING + 1
        {
            return None;
        }
        let mut table = vec![0u8; n * ENTRY + 4];
        file.read_exact_at(&mut table, HEAD as u64).ok()?;
        let (body, sum) = table.split_at(n * ENTRY);
        let mut h = XxHash32::with_seed(0);
        std::hash::Hasher::write(&mut h, &head);
        std::hash::Hasher::write(&mut h, body);
        if h.finish_32().to_le_bytes() != sum {
            return None;
        }
        let entries = Self::entries(body, (HEAD + n * ENTRY + 4) as u64)?;
        let cps = Checkpoints {
            path: path.to_path_buf(),
            raw_len: usize::try_from(raw_len).ok()?,
            comp_len: usize::try_from(comp_len).ok()?,
            entries,
        };
        let end = cps
            .entries
            .last()
            .map(|e| e.stored_at + e.stored_len as u64)?;
        (cps.fits() && file.metadata().ok()?.len() == end).then_some(cps)
    }

    /// The entries of a checked table, the stored dictionaries laid out from `stored_at`.
    fn entries(body: &[u8], mut stored_at: u64) -> Option<Vec<Entry>> {
        body.chunks_exact(ENTRY)
            .map(|e| {
                let u64_at = |i: usize| e.get(i..i + 8)?.try_into().ok().map(u64::from_le_bytes);
                let u32_at = |i: usize| e.get(i..i + 4)?.try_into().ok().map(u32::from_le_bytes);
                let entry = Entry {
                    mark: Mark {
                        input: usize::try_from(u64_at(0)?).ok()?,
                        out: usize::try_from(u64_at(8)?).ok()?,
                    },
                    stored_at,
                    stored_len: u32_at(16)? as usize,
                    stored_hash: u32_at(20)?,
                    dict_len: u32_at(24)? as usize,
                    head: u64_at(28)?,
                };
                stored_at += entry.stored_len as u64;
                Some(entry)
            })
            .collect()
    }

    /// Whether the checkpoints lie in order inside the frame, the first at its start, and their
    /// stored dictionaries take at most 1/16 of the frame's decoded size.
    fn fits(&self) -> bool {
        let first = self.entries.first().is_some_and(|e| e.mark.out == 0);
        let inside = self.entries.iter().all(|e| {
            e.mark.out < self.raw_len.max(1)
                && e.mark.input < self.comp_len
                && e.dict_len <= DICT.min(e.mark.out)
                && e.stored_len <= DICT + DICT / 255 + 16
        });
        let ordered = self
            .entries
            .windows(2)
            .all(|w| w[0].mark.out < w[1].mark.out && w[0].mark.input < w[1].mark.input);
        let stored: usize = self.entries.iter().map(|e| e.stored_len).sum();
        first && inside && ordered && stored <= self.raw_len / 16
    }

    /// Which segment holds all of `at..at+len`; `None` when the range crosses into the next.
    pub fn segment_of(&self, at: usize, len: usize) -> Option<usize> {
        let i = self
            .entries
            .partition_point(|e| e.mark.out <= at)
            .checked_sub(1)?;
        (at + len <= self.segment_end(i)).then_some(i)
    }

    /// `at..at+len` split where segments end: the offset and length of each part, in order
    /// (fewer bytes in all when the range runs past the frame's end).
    pub fn pieces(&self, mut at: usize, len: usize) -> Vec<(usize, usize)> {
        let end = at.saturating_add(len).min(self.raw_len);
        let mut parts = Vec::new();
        while at < end {
            let i = self.entries.partition_point(|e| e.mark.out <= at);
            let n = self.segment_end(i.saturating_sub(1)).min(end) - at;
            if n == 0 {
                break;
            }
            parts.push((at, n));
            at += n;
        }
        parts
    }

    fn segment_end(&self, i: usize) -> usize {
        self.entries.get(i + 1).map_or(self.raw_len, |e| e.mark.out)
    }

    /// Memory the loaded table takes.
    pub fn heap_bytes(&self) -> u64 {
        (self.entries.len() * std::mem::size_of::<Entry>()) as u64
    }

    /// Removes the checkpoint file (it was found not to match its frame).
    pub fn discard(&self) {
        log::debug!(
            "{}: LZ4 checkpoints do not match, removed",
            self.path.display()
        );
        let _ = std::fs::remove_file(&self.path);
    }

    /// Checkpoint `i`'s dictionary, its stored bytes checked against their hash, decoded into
    /// the end of `dst` (which is `DICT` bytes long).
    fn dict_into(&self, i: usize, dst: &mut [u8]) -> Result<()> {
        let e = self.entries[i];
        let dict = dst
            .get_mut(DICT - e.dict_len..DICT)
            .ok_or_else(|| self.wrong(e.stored_at, "a dictionary is too long"))?;
        if e.stored_len == 0 {
            dict.fill(0);
            return Ok(());
        }
        let mut stored = vec![0u8; e.stored_len];
        File::open(&self.path)
            .and_then(|f| f.read_exact_at(&mut stored, e.stored_at))
            .map_err(|err| Error::io(&self.path, &err))?;
        if XxHash32::oneshot(0, &stored) != e.stored_hash {
            return Err(self.wrong(e.stored_at, "a dictionary does not match its hash"));
        }
        match lz4_flex::block::decompress_into(&stored, dict) {
            Ok(k) if k == e.dict_len => Ok(()),
            _ => Err(self.wrong(e.stored_at, "a dictionary fails to decode")),
        }
    }

    fn wrong(&self, at: u64, msg: &str) -> Error {
        Error::corrupt(&self.path, at, format!("LZ4 checkpoints: {msg}"))
    }
}

/// Decoded bytes of one frame from a checkpoint: the segment up to the next checkpoint, or
/// the part of it a read needed.
pub struct Segment {
    /// Where they start in the frame's decoded bytes.
    start: usize,
    /// How many are decoded.
    len: usize,
    /// `DICT` bytes for the dictionary (at their end), then the segment's; a whole segment's
    /// length, so that buffers of dropped segments fit the next one (see `Lz4Runtime::buffer`).
    bytes: Vec<u8>,
    runtime: Arc<Lz4Runtime>,
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.runtime.give_back(std::mem::take(&mut self.bytes));
    }
}

impl Segment {
    /// Decodes segment `i` of the frame at `offset` of `source` from its checkpoint, as far as
    /// the block holding decoded byte `need - 1` and at least its first 64 KiB (the bytes the
    /// dictionary reaches, which must hash as the full decode's did), checking block
    /// checksums; one decoded to its end must reach the next checkpoint's block exactly. Any
    /// mismatch is an error: the caller then drops the checkpoints and decodes the frame from
    /// its start.
    pub fn decode(
        source: &Source,
        runtime: &Arc<Lz4Runtime>,
        offset: u64,
        (cps, i): (&Checkpoints, usize),
        need: usize,
    ) -> Result<Segment> {
        let e = cps.entries[i];
        let next = cps.entries.get(i + 1);
        let head = source.range(offset, (cps.comp_len as u64).min(MAX_HEADER), "LZ4 frame")?;
        let at_frame =
            |(at, m): (usize, String)| Error::corrupt(source.path(), offset + at as u64, m);
        let info = frame_info(&head).map_err(at_frame)?;
        // Only the blocks of this segment are read: offsets below are from its first block.
        let base = e.mark.input;
        let in_end = next.map_or(cps.comp_len, |n| n.mark.input);
        let blocks = source.range(offset + base as u64, (in_end - base) as u64, "LZ4 frame")?;
        let at_block = |(at, m): (usize, String)| at_frame((at + base, m));
        let seg_len = cps.segment_end(i) - e.mark.out;
        let mut bytes = runtime.buffer(DICT + seg_len);
        cps.dict_into(i, &mut bytes[..DICT])?;
        // The dictionary right before the segment, and nothing before it as history.
        let work = &mut bytes[DICT - e.dict_len..];
        let want = need.saturating_sub(e.mark.out).max(DICT).min(seg_len);
        let (mut filled, mut at) = (0, 0);
        while filled < want {
            let decoded =
                decode_block(&info, &blocks, at, work, e.dict_len + filled).map_err(at_block)?;
            let Some((k, next_at)) = decoded else {
                return Err(cps.wrong(0, "the frame ends before the next checkpoint"));
            };
            filled += k;
            at = next_at;
        }
        // Counted against the mapped files' resident budget, as whole-frame decoding is.
        source.served(at as u64);
        let decoded = &work[e.dict_len..];
        let first = decoded.get(..DICT.min(seg_len)).unwrap_or_default();
        if filled > seg_len || XxHash3_64::oneshot(first) != e.head {
            return Err(cps.wrong(0, "a segment does not decode as the frame did"));
        }
        if filled == seg_len {
            let reaches = match next {
                Some(n) => at + base == n.mark.input,
                None => u32_at(&blocks, at, "the end mark").is_ok_and(|w| w == 0),
            };
            if !reaches {
                return Err(cps.wrong(0, "the frame does not reach the next checkpoint"));
            }
        }
        Ok(Segment {
            start: e.mark.out,
            len: filled,
            bytes,
            runtime: Arc::clone(runtime),
        })
    }

    /// Whether decoded bytes `at..at+len` of the frame are all here.
    pub fn covers(&self, at: usize, len: usize) -> bool {
        at >= self.start && at + len <= self.start + self.len
    }

    /// Hands bytes `at..at+len` of the frame to `f`; false when they are not all here.
    pub fn read_with(&self, at: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> bool {
        let from = DICT + at.wrapping_sub(self.start);
        match self
            .bytes
            .get(from..from + len)
            .filter(|_| self.covers(at, len))
        {
            Some(b) => {
                f(b);
                true
            }
            None => false,
        }
    }

    /// Memory the segment takes.
    pub fn heap_bytes(&self) -> u64 {
        self.bytes.capacity() as u64
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::lz4::DecodedChunk;
    use crate::storage::Mappings;
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};

    /// Compressible, not trivially: runs and noise.
    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i >> 9) % 3 == 0 {
                    x as u8
                } else {
                    (i >> 10) as u8
                }
            })
            .collect()
    }

    /// A file holding 100 bytes of something else, then one LZ4 frame of `raw`; returns the
    /// file, its source and the frame's compressed length.
    fn frame_file(
        raw: &[u8],
        linked: bool,
        block: BlockSize,
    ) -> (tempfile::TempDir, Arc<Source>, u64) {
        let mode = if linked {
            BlockMode::Linked
        } else {
            BlockMode::Independent
        };
        let info = FrameInfo::new()
            .block_size(block)
            .block_mode(mode)
            .block_checksums(true)
            .content_checksum(true)
            .content_size(Some(raw.len() as u64));
        let mut enc = FrameEncoder::with_frame_info(info, vec![7u8; 100]);
        enc.write_all(raw).unwrap();
        let bytes = enc.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data"), &bytes).unwrap();
        let src = Source::open(&dir.path().join("data"), &Mappings::new()).unwrap();
        (dir, src, bytes.len() as u64 - 100)
    }

    /// Decodes the frame whole, keeping its checkpoints in `cp`.
    fn keep(src: &Arc<Source>, comp: u64, raw: &[u8], cp: &Path) {
        let chunk = DecodedChunk::new(
            Arc::clone(src),
            Lz4Runtime::new(),
            100,
            comp,
            raw.len() as u64,
        )
        .keeping_checkpoints(Some(cp.to_path_buf()));
        let mut last = [0u8];
        chunk.read(raw.len() - 1, &mut last).unwrap();
    }

    /// Every segment decoded whole from the checkpoints, or the first error.
    fn segments(src: &Source, cps: &Checkpoints) -> Result<Vec<Segment>> {
        let rt = Lz4Runtime::new();
        (0..cps.entries.len())
            .map(|i| Segment::decode(src, &rt, 100, (cps, i), usize::MAX))
            .collect()
    }

    /// A 16 KiB noise pattern repeated: every block refers to the 16 KiB before it, which do
    /// not compress, so the 1/16 bound spaces the checkpoints out.
    fn periodic(n: usize) -> Vec<u8> {
        let unit = data(48 << 10)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| (i >> 9) % 3 == 0)
            .map(|(_, b)| b)
            .collect::<Vec<u8>>();
        (0..n).map(|i| unit[i % unit.len()]).collect()
    }

    fn stored_bytes(cps: &Checkpoints) -> usize {
        cps.entries.iter().map(|e| e.stored_len).sum()
    }

    /// Every segment, decoded whole, holds the frame's bytes.
    fn check_segments(src: &Source, cps: &Checkpoints, raw: &[u8]) {
        for (i, s) in segments(src, cps).unwrap().iter().enumerate() {
            let start = cps.entries[i].mark.out;
            let len = cps.segment_end(i) - start;
            assert!(s.read_with(start, len, &mut |b| assert!(b == &raw[start..start + len])));
        }
    }

    #[test]
    fn checkpoints_serve_reads_anywhere_and_stay_bounded() {
        for (linked, block) in [(true, BlockSize::Max64KB), (false, BlockSize::Max4MB)] {
            let raw = data((9 << 20) + 12345);
            let (dir, src, comp) = frame_file(&raw, linked, block);
            let cp = dir.path().join("cp");
            keep(&src, comp, &raw, &cp);
            let size = std::fs::metadata(&cp).unwrap().len() as usize;
            let table = HEAD + (raw.len() / MIN_SPACING + 1) * ENTRY + 4;
            assert!(size <= raw.len() / 16 + table, "{size} bytes");
            let cps = Checkpoints::load(&cp, 100, comp, raw.len() as u64).unwrap();
            // Compressible data: a checkpoint at every block.
            let blocks = raw.len().div_ceil(if linked { 64 << 10 } else { 4 << 20 });
            assert_eq!(cps.entries.len(), blocks, "(linked: {linked})");
            let segs = segments(&src, &cps).unwrap();
            for at in [
                0,
                4096,
                (1 << 20) - 1,
                1 << 20,
                (5 << 20) + 777,
                raw.len() - 4096,
            ] {
                let len = 4096.min(raw.len() - at);
                let Some(i) = cps.segment_of(at, len) else {
                    continue;
                };
                assert!(segs[i].len <= 4 << 20);
                let mut got = Vec::new();
                assert!(segs[i].read_with(at, len, &mut |b| got.extend_from_slice(b)));
                assert_eq!(got, raw[at..at + len], "at {at} (linked: {linked})");
            }
            // A read across segments is served in parts, one from each.
            let (at, len) = ((3 << 20) - 5000, 300_000);
            let parts = cps.pieces(at, len);
            assert!(parts.len() >= 2 || !linked, "{parts:?}");
            let mut got = Vec::new();
            for (at, len) in parts {
                let i = cps.segment_of(at, len).unwrap();
                assert!(segs[i].read_with(at, len, &mut |b| got.extend_from_slice(b)));
            }
            assert_eq!(got, raw[at..at + len]);
            let tail = cps.pieces(raw.len() - 10, 100);
            assert_eq!(tail.iter().map(|p| p.1).sum::<usize>(), 10);
            // A read decodes from the checkpoint before it up to the block holding its end,
            // and at least the 64 KiB the dictionary reaches.
            let at = (2 << 20) + 5000;
            let i = cps.segment_of(at, 10).unwrap();
            let part = Segment::decode(&src, &Lz4Runtime::new(), 100, (&cps, i), at + 10).unwrap();
            let mut got = Vec::new();
            assert!(part.read_with(at, 10, &mut |b| got.extend_from_slice(b)));
            assert_eq!(got, raw[at..at + 10]);
            let decoded = if linked { 64 << 10 } else { 4 << 20 };
            assert_eq!(part.len, decoded, "(linked: {linked})");
            // The checkpoints of another frame, or of this one with another length, are not used.
            assert!(Checkpoints::load(&cp, 101, comp, raw.len() as u64).is_none());
            assert!(!cp.exists(), "a mismatched checkpoint file is removed");
        }
    }

    #[test]
    fn dictionaries_that_do_not_compress_space_checkpoints_within_the_bound() {
        let raw = periodic((8 << 20) + 999);
        let (dir, src, comp) = frame_file(&raw, true, BlockSize::Max64KB);
        let cp = dir.path().join("cp");
        keep(&src, comp, &raw, &cp);
        let cps = Checkpoints::load(&cp, 100, comp, raw.len() as u64).unwrap();
        let n = cps.entries.len();
        check_segments(&src, &cps, &raw);
        let blocks = raw.len().div_ceil(64 << 10);
        assert!((3..blocks).contains(&n), "{n} checkpoints");
        // The bound, not the spacing, is what keeps the others out.
        let stored = stored_bytes(&cps);
        assert!(
            (raw.len() / 20..=raw.len() / 16).contains(&stored),
            "{stored}"
        );
        // A spacing wider than the default keeps fewer.
        let rt = Lz4Runtime::with_spacing(3 << 20);
        let cp3 = dir.path().join("cp3");
        let chunk = DecodedChunk::new(Arc::clone(&src), rt, 100, comp, raw.len() as u64)
            .keeping_checkpoints(Some(cp3.clone()));
        chunk.read(raw.len() - 1, &mut [0u8]).unwrap();
        let wide = Checkpoints::load(&cp3, 100, comp, raw.len() as u64).unwrap();
        assert_eq!(wide.entries.len(), 3);
        check_segments(&src, &wide, &raw);
    }

    #[test]
    fn a_file_of_the_earlier_format_is_written_again() {
        let raw = data(3 << 20);
        let (dir, src, comp) = frame_file(&raw, true, BlockSize::Max64KB);
        let cp = dir.path().join("cp");
        std::fs::write(&cp, b"RFSLZ4C1 and the rest of a version 1 file").unwrap();
        assert!(!current(&cp));
        keep(&src, comp, &raw, &cp);
        assert!(current(&cp));
        let cps = Checkpoints::load(&cp, 100, comp, raw.len() as u64).unwrap();
        check_segments(&src, &cps, &raw);
    }

    /// A stored dictionary damaged with its hash (and the table's) made to match: the segment's
    /// first 64 KiB then decode to other bytes than the full decode's, and the read fails.
    #[test]
    fn a_damaged_compressed_dictionary_never_serves_wrong_bytes() {
        let raw = periodic(3 << 20);
        let (dir, src, comp) = frame_file(&raw, true, BlockSize::Max64KB);
        let cp = dir.path().join("cp");
        keep(&src, comp, &raw, &cp);
        let good = std::fs::read(&cp).unwrap();
        let cps = Checkpoints::load(&cp, 100, comp, raw.len() as u64).unwrap();
        let (i, e) = (cps.entries.iter().enumerate())
            .find(|(_, e)| e.stored_len > 0)
            .map(|(i, e)| (i, *e))
            .unwrap();
        let mut caught = 0;
        for pos in (0..e.stored_len).step_by(97) {
            let mut bad = good.clone();
            let at = e.stored_at as usize + pos;
            bad[at] ^= 0x04;
            let hash = XxHash32::oneshot(0, &bad[e.stored_at as usize..][..e.stored_len]);
            let field = HEAD + i * ENTRY + 20;
            bad[field..field + 4].copy_from_slice(&hash.to_le_bytes());
            let table_end = HEAD + cps.entries.len() * ENTRY;
            let sum = XxHash32::oneshot(0, &bad[..table_end]);
            bad[table_end..table_end + 4].copy_from_slice(&sum.to_le_bytes());
            std::fs::write(&cp, &bad).unwrap();
            let loaded = Checkpoints::load(&cp, 100, comp, raw.len() as u64).unwrap();
            let start = e.mark.out;
            match Segment::decode(&src, &Lz4Runtime::new(), 100, (&loaded, i), start + 1) {
                Err(err) => {
                    assert!(err.to_string().contains("LZ4 checkpoints"), "{err}");
                    caught += 1;
                }
                Ok(s) => assert!(s.read_with(start, s.len, &mut |b| assert!(
                    b == &raw[start..start + b.len()],
                    "wrong bytes served from a damaged dictionary at byte {pos}"
                ))),
            }
        }
        assert!(caught > 0);
    }

    #[test]
    fn any_damaged_byte_of_a_checkpoint_file_is_detected() {
        let raw = data(5 << 20);
        let (dir, src, comp) = frame_file(&raw, true, BlockSize::Max64KB);
        let cp = dir.path().join("cp");
        keep(&src, comp, &raw, &cp);
        let good = std::fs::read(&cp).unwrap();
        let n = u64::from_le_bytes(good[32..40].try_into().unwrap()) as usize;
        // Every byte of the header and table, then bytes across the dictionaries.
        let table_end = HEAD + n * ENTRY + 4;
        let mut positions: Vec<usize> = (0..table_end).collect();
        positions.extend((table_end..good.len()).step_by(4099));
        positions.push(good.len() - 1);
        for pos in positions {
            let mut bad = good.clone();
            bad[pos] ^= 0x20;
            std::fs::write(&cp, &bad).unwrap();
            let detected = match Checkpoints::load(&cp, 100, comp, raw.len() as u64) {
                None => true,
                Some(cps) => match segments(&src, &cps) {
                    Err(_) => true,
                    Ok(segs) => {
                        for (i, s) in segs.iter().enumerate() {
                            let start = cps.entries[i].mark.out;
                            let len = cps.segment_end(i) - start;
                            assert!(s.read_with(start, len, &mut |b| assert_eq!(
                                b,
                                &raw[start..start + len]
                            )));
                        }
                        false
                    }
                },
            };
            assert!(
                detected,
                "damage at byte {pos} of the checkpoint file went unnoticed"
            );
        }
    }
}
