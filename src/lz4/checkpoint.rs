//! Decoder checkpoints of LZ4 frames (the zran idea), kept on disk beside a backup file's kept
//! index: at regular offsets of a frame's decoded bytes, where the next block starts and the
//! 64 KiB decoded before it (the dictionary of a linked block). A random read then decodes one
//! [`Segment`], from the checkpoint before it to the next, instead of the frame from its start.
//!
//! A checkpoint file (little-endian): `MAGIC`; the frame's file offset, compressed and decoded
//! lengths; the number of checkpoints; per checkpoint its block's offset in the frame, its
//! offset in the decoded bytes, its dictionary's length and xxHash32; an xxHash32 of all that;
//! then the dictionaries. A file that fails a check (its checksum, a dictionary's, a frame that
//! does not decode to the next checkpoint) is removed and never served from.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use twox_hash::XxHash32;

use super::{Lz4Runtime, MAX_HEADER, decode_block, frame_info, u32_at};
use crate::error::{Error, Result};
use crate::storage::Source;
use crate::sync::Arc;

const MAGIC: &[u8; 8] = b"RFSLZ4C1";
/// Magic, frame offset, compressed and decoded lengths, checkpoint count.
const HEAD: usize = 8 + 4 * 8;
/// Block offset, decoded offset, dictionary length and hash.
const ENTRY: usize = 8 + 8 + 4 + 4;
/// A linked block's dictionary: the decoded bytes before it.
const DICT: usize = 64 << 10;

/// The least spacing of checkpoints: their 64 KiB dictionaries then take at most 1/16 of a
/// frame's decoded size.
pub const MIN_SPACING: usize = 1 << 20;

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

/// Writes the checkpoints `marks` of a frame decoded into `out` to `path` (atomically).
pub(super) fn write(
    path: &Path,
    frame: &FrameId,
    marks: &[Mark],
    out: &[u8],
    linked: bool,
) -> io::Result<()> {
    let dict = |m: &Mark| match linked {
        true => out
            .get(m.out.saturating_sub(DICT)..m.out)
            .unwrap_or_default(),
        false => &[],
    };
    let mut head = Vec::with_capacity(HEAD + marks.len() * ENTRY + 4);
    head.extend_from_slice(MAGIC);
    for v in [
        frame.offset,
        frame.comp_len,
        frame.raw_len,
        marks.len() as u64,
    ] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    for m in marks {
        let d = dict(m);
        head.extend_from_slice(&(m.input as u64).to_le_bytes());
        head.extend_from_slice(&(m.out as u64).to_le_bytes());
        head.extend_from_slice(&(d.len() as u32).to_le_bytes());
        head.extend_from_slice(&XxHash32::oneshot(0, d).to_le_bytes());
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
        for m in marks {
            f.write_all(dict(m))?;
        }
        f.into_inner().map_err(io::IntoInnerError::into_error)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One checkpoint as its file lists it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    mark: Mark,
    dict_at: u64,
    dict_len: usize,
    hash: u32,
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
        let end = cps.entries.last().map(|e| e.dict_at + e.dict_len as u64)?;
        (cps.fits() && file.metadata().ok()?.len() == end).then_some(cps)
    }

    /// The entries of a checked table, the dictionaries laid out from `dict_at`.
    fn entries(body: &[u8], mut dict_at: u64) -> Option<Vec<Entry>> {
        body.chunks_exact(ENTRY)
            .map(|e| {
                let u64_at = |i: usize| e.get(i..i + 8)?.try_into().ok().map(u64::from_le_bytes);
                let u32_at = |i: usize| e.get(i..i + 4)?.try_into().ok().map(u32::from_le_bytes);
                let entry = Entry {
                    mark: Mark {
                        input: usize::try_from(u64_at(0)?).ok()?,
                        out: usize::try_from(u64_at(8)?).ok()?,
                    },
                    dict_at,
                    dict_len: u32_at(16)? as usize,
                    hash: u32_at(20)?,
                };
                dict_at += entry.dict_len as u64;
                Some(entry)
            })
            .collect()
    }

    /// Whether the checkpoints lie in order inside the frame, the first at its start.
    fn fits(&self) -> bool {
        let first = self.entries.first().is_some_and(|e| e.mark.out == 0);
        let inside = self.entries.iter().all(|e| {
            e.mark.out < self.raw_len.max(1)
                && e.mark.input < self.comp_len
                && e.dict_len <= DICT.min(e.mark.out)
        });
        let ordered = self
            .entries
            .windows(2)
            .all(|w| w[0].mark.out < w[1].mark.out && w[0].mark.input < w[1].mark.input);
        first && inside && ordered
    }

    /// Which segment holds all of `at..at+len`; `None` when the range crosses into the next.
    pub fn segment_of(&self, at: usize, len: usize) -> Option<usize> {
        let i = self
            .entries
            .partition_point(|e| e.mark.out <= at)
            .checked_sub(1)?;
        (at + len <= self.segment_end(i)).then_some(i)
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

    /// Checkpoint `i`'s dictionary, checked against its hash.
    fn dict(&self, i: usize) -> Result<Vec<u8>> {
        let e = self.entries[i];
        let mut d = vec![0u8; e.dict_len];
        File::open(&self.path)
            .and_then(|f| f.read_exact_at(&mut d, e.dict_at))
            .map_err(|err| Error::io(&self.path, &err))?;
        if XxHash32::oneshot(0, &d) != e.hash {
            return Err(self.wrong(e.dict_at, "a dictionary does not match its hash"));
        }
        Ok(d)
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
    /// the block holding decoded byte `need - 1`, checking block checksums; one decoded to its
    /// end must reach the next checkpoint exactly as the file says (its block, and the hash of
    /// the 64 KiB before it). Any mismatch is an error: the caller then drops the checkpoints
    /// and decodes the frame from its start.
    pub fn decode(
        source: &Source,
        runtime: &Arc<Lz4Runtime>,
        offset: u64,
        (cps, i): (&Checkpoints, usize),
        need: usize,
    ) -> Result<Segment> {
        let e = cps.entries[i];
        let next = cps.entries.get(i + 1);
        let dict = cps.dict(i)?;
        let head = source.range(offset, (cps.comp_len as u64).min(MAX_HEADER), "LZ4 frame")?;
        let at_frame =
            |(at, m): (usize, String)| Error::corrupt(source.path(), offset + at as u64, m);
        let info = frame_info(&head).map_err(at_frame)?;
        // Only the blocks of this segment are read: offsets below are from its first block.
        let base = e.mark.input;
        let in_end = next.map_or(cps.comp_len, |n| n.mark.input);
        let blocks = source.range(offset + base as u64, (in_end - base) as u64, "LZ4 frame")?;
        let at_block = |(at, m): (usize, String)| at_frame((at + base, m));
        let mut bytes = runtime.buffer(DICT + cps.segment_end(i) - e.mark.out);
        // The dictionary right before the segment, and nothing before it as history.
        let work = &mut bytes[DICT - dict.len()..];
        work[..dict.len()].copy_from_slice(&dict);
        let want = dict.len().saturating_add(need.saturating_sub(e.mark.out));
        let (mut filled, mut at) = (dict.len(), 0);
        while filled < want.min(work.len()) {
            let decoded = decode_block(&info, &blocks, at, work, filled).map_err(at_block)?;
            let Some((k, next_at)) = decoded else {
                return Err(cps.wrong(0, "the frame ends before the next checkpoint"));
            };
            filled += k;
            at = next_at;
        }
        // Counted against the mapped files' resident budget, as whole-frame decoding is.
        source.served(at as u64);
        if filled == work.len() {
            let reaches = match next {
                Some(n) => {
                    let tail = work.get(work.len().saturating_sub(n.dict_len)..);
                    at + base == n.mark.input
                        && tail.is_some_and(|t| XxHash32::oneshot(0, t) == n.hash)
                }
                None => u32_at(&blocks, at, "the end mark").is_ok_and(|w| w == 0),
            };
            if !reaches {
                return Err(cps.wrong(0, "the frame does not reach the next checkpoint"));
            }
        }
        Ok(Segment {
            start: e.mark.out,
            len: filled - dict.len(),
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
        self.bytes.len() as u64
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

    #[test]
    fn checkpoints_serve_reads_anywhere_and_stay_bounded() {
        for (linked, block) in [(true, BlockSize::Max64KB), (false, BlockSize::Max4MB)] {
            let raw = data((9 << 20) + 12345);
            let (dir, src, comp) = frame_file(&raw, linked, block);
            let cp = dir.path().join("cp");
            keep(&src, comp, &raw, &cp);
            let size = std::fs::metadata(&cp).unwrap().len() as usize;
            assert!(
                size <= raw.len() / 16 + HEAD + 10 * ENTRY + 4,
                "{size} bytes"
            );
            let cps = Checkpoints::load(&cp, 100, comp, raw.len() as u64).unwrap();
            assert!(cps.entries.len() >= 3, "{} checkpoints", cps.entries.len());
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
            // A read decodes from the checkpoint before it up to the block holding its end.
            let at = (2 << 20) + 5000;
            let i = cps.segment_of(at, 10).unwrap();
            let part = Segment::decode(&src, &Lz4Runtime::new(), 100, (&cps, i), at + 10).unwrap();
            let mut got = Vec::new();
            assert!(part.read_with(at, 10, &mut |b| got.extend_from_slice(b)));
            assert_eq!(got, raw[at..at + 10]);
            if linked {
                assert_eq!((i, part.len), (2, 64 << 10), "one 64 KiB block decoded");
                assert!(!part.covers(at, 1 << 20));
            }
            // The checkpoints of another frame, or of this one with another length, are not used.
            assert!(Checkpoints::load(&cp, 101, comp, raw.len() as u64).is_none());
            assert!(!cp.exists(), "a mismatched checkpoint file is removed");
        }
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
