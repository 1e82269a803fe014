//! One LZ4 frame decoded into memory on demand, from its start, as far as readers need.

use std::borrow::Cow;
use std::path::PathBuf;

use twox_hash::XxHash32;

use super::checkpoint::{self, Mark};
use super::{FrameInfo, Lz4Runtime, decode_block, frame_info, u32_at};
use crate::error::{Error, Result};
use crate::storage::Source;
use crate::sync::{Arc, RwLock};

/// Decoding granularity: a read past the decoded prefix decodes up to the next multiple of this.
const STEP: usize = 1 << 20;

/// One LZ4 frame being decoded into memory, shared through the cache. Blocks are decoded
/// straight into one buffer of the frame's size (linked blocks read their history from it),
/// with block and content checksums checked on the way; readers of the decoded prefix proceed
/// while the rest is still undecoded. Any failure, a content checksum mismatch found on
/// reaching the end included, sticks: every later read of the frame gets the error. A frame
/// decoded to its end, checksums and all, leaves its checkpoints in its checkpoint file.
pub struct DecodedChunk {
    source: Arc<Source>,
    runtime: Arc<Lz4Runtime>,
    offset: u64,
    comp_len: u64,
    raw_len: usize,
    /// Where the frame's checkpoints are kept; `None` keeps none.
    keep: Option<PathBuf>,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    out: Vec<u8>,
    /// The compressed frame while it is being decoded, when the source lends no view of it.
    comp: Option<Vec<u8>>,
    decoded: usize,
    /// Offset in the frame of the next block header; 0 before the frame header was read.
    input: usize,
    info: FrameInfo,
    /// Checkpoints passed so far, when they are kept.
    marks: Vec<Mark>,
    failed: Option<Error>,
}

impl Drop for DecodedChunk {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        self.runtime.give_back(std::mem::take(&mut st.out));
    }
}

impl DecodedChunk {
    /// A chunk of `comp_len` bytes at `offset` that decodes to `raw_len` bytes; decodes nothing yet.
    /// Decoding checks every block's checksum (over the stored bytes, so damage in the file is
    /// caught before its bytes are served) and, when it reaches the end of the frame, the
    /// content checksum over the decoded bytes.
    pub fn new(
        source: Arc<Source>,
        runtime: Arc<Lz4Runtime>,
        offset: u64,
        comp_len: u64,
        raw_len: u64,
    ) -> DecodedChunk {
        // Callers bound `raw_len` by `MAX_FRAME`.
        let raw_len = usize::try_from(raw_len).unwrap_or(usize::MAX);
        let out = runtime.room(raw_len);
        DecodedChunk {
            source,
            runtime,
            offset,
            comp_len,
            raw_len,
            keep: None,
            state: RwLock::new(State {
                out,
                ..State::default()
            }),
        }
    }

    /// The memory it holds: what the cache is to charge it (a reused buffer may be up to 1/8
    /// larger than the frame).
    pub fn cost(&self) -> u64 {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        st.out.capacity() as u64
    }

    /// Keeps the frame's checkpoints in `path` (when given and not there yet) once it is
    /// decoded to its end.
    pub fn keeping_checkpoints(mut self, path: Option<PathBuf>) -> DecodedChunk {
        self.keep = path;
        self
    }

    /// Whether bytes `..end` are decoded already (a read of them decodes nothing).
    pub fn decoded_to(&self, end: usize) -> bool {
        self.state.read().unwrap_or_else(|p| p.into_inner()).decoded >= end
    }

    /// Hands decoded bytes `at..at+len` to `f` (no copy), decoding as far as needed.
    pub fn read_with(&self, at: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        let Some(need) = at.checked_add(len).filter(|&n| n <= self.raw_len) else {
            return Err(self.corrupt(
                0,
                format!("read past the {} bytes this LZ4 frame holds", self.raw_len),
            ));
        };
        loop {
            {
                let st = self.state.read().unwrap_or_else(|p| p.into_inner());
                if let Some(e) = &st.failed {
                    return Err(e.clone());
                }
                if st.decoded >= need {
                    let bytes = st.out.get(at..need).ok_or_else(|| {
                        self.corrupt(0, "decoded LZ4 frame is shorter than decoded so far")
                    })?;
                    f(bytes);
                    return Ok(());
                }
            }
            let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
            if st.decoded < need
                && st.failed.is_none()
                && let Err(e) = self.decode_to(&mut st, need)
            {
                *st = State {
                    failed: Some(e.clone()),
                    ..State::default()
                };
                return Err(e);
            }
        }
    }

    /// Decodes the whole frame a step at a time (readers of what is decoded go on meanwhile);
    /// errors are left for the readers to meet.
    pub(super) fn decode_all(&self) {
        let mut to = STEP.min(self.raw_len);
        while to > 0 && self.read_with(to - 1, 1, &mut |_| {}).is_ok() && to < self.raw_len {
            to = (to + STEP).min(self.raw_len);
        }
    }

    /// Queues the frame for decoding on a background thread (sequential readers get the next
    /// frames decoded while they are served this one). Dropped when the queue is full.
    pub fn decode_ahead(self: &Arc<Self>) {
        self.runtime.decode_ahead(self);
    }

    /// Copies decoded bytes `at..at+dst.len()` into `dst`, decoding as far as needed.
    pub fn read(&self, at: usize, dst: &mut [u8]) -> Result<()> {
        self.read_with(at, dst.len(), &mut |b| dst.copy_from_slice(b))
    }

    fn corrupt(&self, at: usize, msg: impl Into<String>) -> Error {
        Error::corrupt(
            self.source.path(),
            self.offset.saturating_add(at as u64),
            msg,
        )
    }

    fn decode_to(&self, st: &mut State, need: usize) -> Result<()> {
        if st.input == 0 {
            // One read of the whole compressed frame rather than a page fault per 4 KiB.
            self.source.prefetch(self.offset, self.comp_len);
        }
        // Borrowed from a mapped file; from other storage read once and kept until decoded.
        let frame = match st.comp.take() {
            Some(bytes) => Cow::Owned(bytes),
            None => self.source.range(self.offset, self.comp_len, "LZ4 frame")?,
        };
        if st.input == 0 {
            self.start(st, &frame)?;
        }
        let target = need.div_ceil(STEP).saturating_mul(STEP).min(self.raw_len);
        while st.decoded < target {
            self.block(st, &frame)?;
        }
        if st.decoded == self.raw_len {
            self.end(st, &frame)?;
            self.keep_checkpoints(st, &frame);
            return Ok(());
        }
        if let Cow::Owned(bytes) = frame {
            st.comp = Some(bytes);
        }
        Ok(())
    }

    fn start(&self, st: &mut State, frame: &[u8]) -> Result<()> {
        st.info = frame_info(frame).map_err(|(at, m)| self.corrupt(at, m))?;
        st.input = st.info.data_start;
        // Zeros only where a reused buffer grew (see `Lz4Runtime::room`).
        st.out.resize(self.raw_len, 0);
        if self.keep.is_some() {
            st.marks = vec![Mark {
                input: st.input,
                out: 0,
            }];
        }
        Ok(())
    }

    /// Decodes the block at `st.input` onto the decoded bytes; notes a checkpoint after it when
    /// one spacing was decoded since the last.
    fn block(&self, st: &mut State, frame: &[u8]) -> Result<()> {
        let at = st.input;
        let (info, decoded) = (st.info, st.decoded);
        let out = st.out.get_mut(..self.raw_len).unwrap_or_default();
        let (k, next) = decode_block(&info, frame, at, out, decoded)
            .map_err(|(at, m)| self.corrupt(at, m))?
            .ok_or_else(|| {
                self.corrupt(
                    at,
                    format!(
                        "LZ4 frame decodes to {decoded} bytes, expected {}",
                        self.raw_len
                    ),
                )
            })?;
        st.decoded += k;
        st.input = next;
        self.source.served((next - at) as u64);
        if let Some(last) = st.marks.last()
            && st.decoded >= last.out + self.runtime.spacing()
            && st.decoded < self.raw_len
        {
            st.marks.push(Mark {
                input: next,
                out: st.decoded,
            });
        }
        Ok(())
    }

    /// Checks the end mark, the content checksum and that the frame ends there.
    fn end(&self, st: &mut State, frame: &[u8]) -> Result<()> {
        let at = st.input;
        let u32_at = |at, what| u32_at(frame, at, what).map_err(|(at, m)| self.corrupt(at, m));
        if u32_at(at, "the end mark")? != 0 {
            return Err(self.corrupt(at, "LZ4 frame decodes to more than its declared size"));
        }
        let mut end = at + 4;
        if st.info.content_checksum {
            let want = u32_at(end, "the content checksum")?;
            // Hashed once the frame is decoded to its end (one pass), so that reads that decode
            // only a prefix (random reads) pay nothing for it.
            let got = XxHash32::oneshot(0, st.out.get(..self.raw_len).unwrap_or_default());
            if got != want {
                return Err(self.corrupt(
                    end,
                    format!(
                        "content checksum of the LZ4 frame at offset {} does not match \
                         (stored {want:#010x}, decoded bytes hash to {got:#010x})",
                        self.offset
                    ),
                ));
            }
            end += 4;
        }
        if end != frame.len() {
            return Err(self.corrupt(
                end,
                format!(
                    "LZ4 frame ends {} bytes before the length the trailer gives it",
                    frame.len().saturating_sub(end)
                ),
            ));
        }
        Ok(())
    }

    /// Writes the checkpoints passed while decoding the whole frame, unless already kept in
    /// the current format.
    fn keep_checkpoints(&self, st: &mut State, frame: &[u8]) {
        let marks = std::mem::take(&mut st.marks);
        let Some(path) = &self.keep else {
            return;
        };
        if checkpoint::current(path) {
            return;
        }
        let id = checkpoint::FrameId {
            offset: self.offset,
            comp_len: self.comp_len,
            raw_len: self.raw_len as u64,
        };
        let out = st.out.get(..self.raw_len).unwrap_or_default();
        if let Err(e) = checkpoint::write(path, &id, (&st.info, frame), &marks, out) {
            log::debug!("{}: cannot keep LZ4 checkpoints: {e}", path.display());
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Cache, Key};
    use crate::lz4::{declared_size, decode_count};
    use crate::storage::Mappings;
    use lz4_flex::frame::{BlockMode, FrameEncoder, FrameInfo};
    use std::io::Write;

    /// A file holding one linked-block LZ4 frame of `data`, like python-lz4 writes.
    fn frame_file(data: &[u8]) -> (tempfile::NamedTempFile, Arc<Source>, u64) {
        let info = FrameInfo::new()
            .block_mode(BlockMode::Linked)
            .block_checksums(true)
            .content_checksum(true)
            .content_size(Some(data.len() as u64));
        let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(data).unwrap();
        let bytes = enc.finish().unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        let src = Source::open(f.path(), &Mappings::new()).unwrap();
        (f, src, bytes.len() as u64)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i * 7 / 3) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    #[test]
    fn decodes_only_as_far_as_a_read_needs() {
        let raw = data(8 << 20);
        let (_f, src, comp) = frame_file(&raw);
        assert_eq!(
            declared_size(&src.range(0, comp, "t").unwrap()).unwrap(),
            Some(raw.len() as u64)
        );
        let chunk = DecodedChunk::new(src, Lz4Runtime::new(), 0, comp, raw.len() as u64);
        let mut buf = vec![0u8; 4096];
        chunk.read(3 << 20, &mut buf).unwrap();
        assert_eq!(buf, raw[3 << 20..(3 << 20) + 4096]);
        let decoded = chunk.state.read().unwrap().decoded;
        assert_eq!(decoded, 4 << 20, "decoded up to the next 1 MiB step only");
        chunk.read(raw.len() - 10, &mut buf[..10]).unwrap();
        assert_eq!(buf[..10], raw[raw.len() - 10..]);
    }

    #[test]
    fn a_smaller_frame_reuses_a_dropped_larger_buffer_cut_to_its_size() {
        let runtime = Lz4Runtime::new();
        let mut buf = vec![0u8; 4096];
        for (n, reused) in [(4 << 20, 0), ((3 << 20) - 4096, 1)] {
            let raw = data(n);
            let (_f, src, comp) = frame_file(&raw);
            let chunk = DecodedChunk::new(src, Arc::clone(&runtime), 0, comp, n as u64);
            chunk.read(n - 4096, &mut buf).unwrap();
            assert_eq!(buf, raw[n - 4096..]);
            assert_eq!(runtime.reused(), reused);
            let st = chunk.state.read().unwrap();
            assert_eq!(st.out.capacity(), n, "holds only what the cache charges");
        }
    }

    #[test]
    fn a_kept_buffer_grows_or_is_taken_whole_when_at_most_an_eighth_larger() {
        let runtime = Lz4Runtime::new();
        let mut buf = vec![0u8; 4096];
        // Fresh; the kept 1 MiB grown to 2 MiB; the kept 2 MiB taken whole (1/32 more) and
        // charged all it holds.
        let steps = [
            (1 << 20, 0, 1 << 20),
            (2 << 20, 1, 2 << 20),
            ((2 << 20) - (64 << 10), 2, 2 << 20),
        ];
        for (n, reused, cost) in steps {
            let raw = data(n);
            let (_f, src, comp) = frame_file(&raw);
            let chunk = DecodedChunk::new(src, Arc::clone(&runtime), 0, comp, n as u64);
            chunk.read(n - 4096, &mut buf).unwrap();
            assert_eq!(buf, raw[n - 4096..]);
            assert_eq!(
                (runtime.reused(), chunk.cost()),
                (reused, cost),
                "frame of {n}"
            );
        }
    }

    #[test]
    fn queued_frames_are_decoded_in_the_background_unless_dropped_first() {
        let runtime = Lz4Runtime::new();
        let raws: Vec<Vec<u8>> = (0..3).map(|i| data((2 << 20) + i * 4096)).collect();
        let files: Vec<_> = raws.iter().map(|r| frame_file(r)).collect();
        let chunks: Vec<Arc<DecodedChunk>> = files
            .iter()
            .zip(&raws)
            .map(|((_, src, comp), raw)| {
                let c = DecodedChunk::new(
                    Arc::clone(src),
                    Arc::clone(&runtime),
                    0,
                    *comp,
                    raw.len() as u64,
                );
                Arc::new(c)
            })
            .collect();
        // The first is gone (as if evicted) before a thread takes it: skipped, nothing kept alive.
        let gone = Arc::downgrade(&chunks[0]);
        for c in &chunks {
            c.decode_ahead();
        }
        let mut chunks = chunks.into_iter();
        drop(chunks.next());
        let kept: Vec<_> = chunks.collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !kept
            .iter()
            .zip(&raws[1..])
            .all(|(c, r)| c.decoded_to(r.len()))
        {
            assert!(std::time::Instant::now() < deadline, "not decoded ahead");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for (c, raw) in kept.iter().zip(&raws[1..]) {
            let mut buf = vec![0u8; raw.len()];
            c.read(0, &mut buf).unwrap();
            assert!(buf == *raw, "decoded ahead to the wrong bytes");
        }
        // A thread may have taken it before the drop: it lets go once that decode ends.
        while gone.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "a dropped frame kept alive"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn frames_decode_from_storage_without_a_view() {
        let raw = data(6 << 20);
        let (f, _, comp) = frame_file(&raw);
        let src = crate::storage::tests::Unmapped::source(f.path());
        assert_eq!(decode_count(&src, 0, comp).unwrap(), raw.len() as u64);
        let chunk = DecodedChunk::new(src, Lz4Runtime::new(), 0, comp, raw.len() as u64);
        let mut buf = vec![0u8; 5000];
        for at in [(5 << 20) + 17, 100, raw.len() - 5000] {
            chunk.read(at, &mut buf).unwrap();
            assert_eq!(buf, raw[at..at + 5000], "at {at}");
        }
    }

    #[test]
    fn concurrent_readers_share_one_decode() {
        let raw = data(4 << 20);
        let (_f, src, comp) = frame_file(&raw);
        let cache = Cache::new(64 << 20);
        let key = Key { owner: 1, index: 0 };
        std::thread::scope(|s| {
            for t in 0..8usize {
                let (cache, src, raw) = (&cache, &src, &raw);
                s.spawn(move || {
                    let c = cache.get_or_insert(key, raw.len() as u64, || {
                        DecodedChunk::new(
                            Arc::clone(src),
                            Lz4Runtime::new(),
                            0,
                            comp,
                            raw.len() as u64,
                        )
                    });
                    let at = t * 500_000;
                    let mut buf = vec![0u8; 100_000];
                    c.read(at, &mut buf).unwrap();
                    assert_eq!(buf, raw[at..at + 100_000]);
                });
            }
        });
        let s = cache.stats();
        assert_eq!((s.misses, s.hits), (1, 7));
    }

    #[test]
    fn damage_is_reported_with_file_and_offset_and_sticks() {
        let raw = data(1 << 20);
        let (f, _, comp) = frame_file(&raw);
        let mut bytes = std::fs::read(f.path()).unwrap();
        let n = bytes.len();
        bytes[n / 2..n / 2 + 8].copy_from_slice(&[0x5a; 8]);
        std::fs::write(f.path(), &bytes).unwrap();
        let src = Source::open(f.path(), &Mappings::new()).unwrap();
        let chunk = DecodedChunk::new(src, Lz4Runtime::new(), 0, comp, raw.len() as u64);
        let mut buf = vec![0u8; raw.len()];
        let e = chunk.read(0, &mut buf).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{}: at offset 15: LZ4 frame fails to decode",
                f.path().display()
            )),
            "{e}"
        );
        assert!(chunk.read(0, &mut buf[..1]).is_err());
    }

    #[test]
    fn content_checksum_is_checked_whenever_the_end_is_decoded() {
        // Several blocks, so the first read decodes only part of the frame.
        let raw = data(8 << 20);
        let (f, _, comp) = frame_file(&raw);
        let mut bytes = std::fs::read(f.path()).unwrap();
        let n = bytes.len();
        // The content checksum is the frame's last 4 bytes; block checksums stay valid.
        bytes[n - 2] ^= 0x01;
        std::fs::write(f.path(), &bytes).unwrap();
        let src = Source::open(f.path(), &Mappings::new()).unwrap();
        let chunk = DecodedChunk::new(src, Lz4Runtime::new(), 0, comp, raw.len() as u64);
        let mut buf = vec![0u8; 4096];
        chunk.read(0, &mut buf).unwrap();
        assert_eq!(
            buf,
            raw[..4096],
            "the first step decodes and serves before the end"
        );
        let e = chunk
            .read(raw.len() - 4096, &mut buf)
            .unwrap_err()
            .to_string();
        let want = format!(
            "{}: at offset {}: content checksum of the LZ4 frame at offset 0 does not match",
            f.path().display(),
            n - 4
        );
        assert!(e.contains(&want), "{e}");
        let again = chunk.read(0, &mut buf).unwrap_err().to_string();
        assert_eq!(again, e, "the failure sticks to the frame");
    }
}

/// The single-decode path explored under many thread schedules (`cargo test --features
/// shuttle`): readers of one frame at different places all get the right bytes, and damage
/// found by one is what every reader gets.
#[cfg(all(test, feature = "shuttle"))]
mod shuttle_tests {
    use super::*;
    use crate::storage::Mappings;
    use lz4_flex::frame::{BlockMode, FrameEncoder, FrameInfo};
    use shuttle::thread;
    use std::io::Write;

    fn frame(raw: &[u8]) -> (tempfile::NamedTempFile, u64) {
        let info = FrameInfo::new()
            .block_mode(BlockMode::Linked)
            .block_checksums(true)
            .content_checksum(true);
        let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(raw).unwrap();
        let bytes = enc.finish().unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        (f, bytes.len() as u64)
    }

    fn readers(path: &std::path::Path, comp: u64, raw: &Arc<Vec<u8>>) -> Vec<Result<()>> {
        let src = Source::open(path, &Mappings::new()).unwrap();
        let chunk = Arc::new(DecodedChunk::new(
            src,
            Lz4Runtime::new(),
            0,
            comp,
            raw.len() as u64,
        ));
        let threads: Vec<_> = [10usize, (3 << 20) / 2, raw.len() - 100]
            .into_iter()
            .map(|at| {
                let (chunk, raw) = (Arc::clone(&chunk), Arc::clone(raw));
                thread::spawn(move || {
                    let mut buf = vec![0u8; 100];
                    chunk.read(at, &mut buf)?;
                    assert_eq!(buf, raw[at..at + 100], "wrong bytes at {at}");
                    Ok(())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn shuttle_readers_of_one_frame_get_the_right_bytes() {
        let raw: Arc<Vec<u8>> =
            Arc::new((0..(3usize << 20)).map(|i| (i * 7 % 251) as u8).collect());
        let (f, comp) = frame(&raw);
        let path = f.path().to_path_buf();
        shuttle::check_random(
            move || {
                for r in readers(&path, comp, &raw) {
                    r.unwrap();
                }
            },
            100,
        );
    }

    #[test]
    fn shuttle_damage_sticks_for_every_reader() {
        let raw: Arc<Vec<u8>> =
            Arc::new((0..(3usize << 20)).map(|i| (i * 7 % 251) as u8).collect());
        let (f, comp) = frame(&raw);
        let mut bytes = std::fs::read(f.path()).unwrap();
        // A byte inside the first block's data: its block checksum no longer matches.
        bytes[100] ^= 0x55;
        std::fs::write(f.path(), &bytes).unwrap();
        let path = f.path().to_path_buf();
        shuttle::check_random(
            move || {
                let results = readers(&path, comp, &raw);
                let errors: Vec<String> = results
                    .iter()
                    .map(|r| {
                        r.as_ref()
                            .expect_err("a reader got bytes of a damaged frame")
                            .to_string()
                    })
                    .collect();
                assert!(errors.iter().all(|e| *e == errors[0]), "{errors:?}");
            },
            100,
        );
    }
}
