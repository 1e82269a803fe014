//! LZ4 frames inside backup files: reading a frame's declared size, and decoding one frame on
//! demand into a cache entry, only as far as readers need.
//!
//! virtnbdbackup writes linked blocks, so any byte of a frame needs every byte before it: a read
//! in the middle of a 32 MiB frame decodes from the start up to that read, and the decoded prefix
//! stays in the shared cache for the next reader.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, sync_channel};

use lz4_flex::frame::FrameDecoder;
use twox_hash::XxHash32;

use crate::error::{Error, Result};
use crate::storage::Source;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, RwLock};

const MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];

/// The largest LZ4 frame restorefs decodes into memory. virtnbdbackup splits extents into
/// frames of the NBD maximum request size (32 MiB with qemu); anything far beyond is hostile.
pub const MAX_FRAME: u64 = 256 << 20;

/// Decoding granularity: a read past the decoded prefix decodes up to the next multiple of this.
const STEP: usize = 1 << 20;

/// The content size an LZ4 frame header declares (`None` when the frame does not declare it).
// A bare message: every caller wraps it at once into an `Error` with the file and offset.
pub fn declared_size(frame: &[u8]) -> Result<Option<u64>, String> {
    let (Some(magic), Some(&flg)) = (frame.get(..4), frame.get(4)) else {
        return Err("not an LZ4 frame (bad magic)".into());
    };
    if frame.len() < 7 || magic != MAGIC {
        return Err("not an LZ4 frame (bad magic)".into());
    }
    if flg >> 6 != 1 {
        return Err(format!(
            "unsupported LZ4 frame version in FLG byte {flg:#04x}"
        ));
    }
    if flg & 0x08 == 0 {
        return Ok(None);
    }
    let size = frame
        .get(6..14)
        .ok_or("LZ4 frame header is cut short")?
        .try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| "LZ4 frame header is cut short")?;
    Ok(Some(size))
}

/// Decodes the frame at `offset..offset+len` of `source` completely, checking its block and
/// content checksums, and returns its decoded size. Stops with an error past [`MAX_FRAME`]
/// bytes: a small hostile frame could otherwise keep it decoding for a long time.
pub fn decode_count(source: &Arc<Source>, offset: u64, len: u64) -> Result<u64> {
    let mut dec = FrameDecoder::new(source.reader(offset, len)?);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => return Err(decode_error(source.path(), offset, &e)),
        }
        if total > MAX_FRAME {
            return Err(Error::corrupt(
                source.path(),
                offset,
                format!("LZ4 frame decodes to more than the {MAX_FRAME} bytes restorefs accepts"),
            ));
        }
    }
    if dec.get_ref().remaining() != 0 {
        return Err(Error::corrupt(
            source.path(),
            offset,
            format!(
                "LZ4 frame ends {} bytes before the {len} bytes the trailer gives it",
                dec.get_ref().remaining()
            ),
        ));
    }
    Ok(total)
}

fn decode_error(path: &Path, offset: u64, e: &std::io::Error) -> Error {
    Error::corrupt(path, offset, format!("LZ4 frame fails to decode: {e}"))
}

/// What decoding shares across frames, made once per run (no process globals): buffers left by
/// dropped frames for reuse, and the decode-ahead worker.
#[derive(Default)]
pub struct Lz4Runtime {
    /// Buffers of dropped chunks kept for reuse, `POOL_BYTES` in all at most.
    pool: Mutex<Vec<Vec<u8>>>,
    /// The queue of the decode-ahead thread, started on first use.
    ahead: OnceLock<Option<SyncSender<Arc<DecodedChunk>>>>,
    reused: AtomicU64,
}

const POOL_BYTES: usize = 16 << 20;

impl Lz4Runtime {
    /// A runtime with an empty pool; its thread starts on the first decode-ahead.
    pub fn new() -> Arc<Lz4Runtime> {
        Arc::default()
    }

    /// How many frames were decoded into a reused buffer.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// A buffer of `len` bytes: one left by a dropped chunk when one fits closely (no page
    /// faults, no zeroing; decoded bytes overwrite it before any reader sees them), else a new
    /// one whose zeroed pages the kernel provides only when touched.
    fn buffer(&self, len: usize) -> Vec<u8> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        // Only a close fit: the cache charges `len`, so a much larger buffer would hide memory.
        if let Some(i) = pool
            .iter()
            .position(|b| b.len() >= len && b.len() <= len + len / 4)
        {
            let mut b = pool.swap_remove(i);
            b.truncate(len);
            self.reused.fetch_add(1, Ordering::Relaxed);
            return b;
        }
        drop(pool);
        vec![0u8; len]
    }

    /// Keeps a dropped frame's buffer for reuse while the pool has room.
    fn give_back(&self, out: Vec<u8>) {
        if out.len() >= 1 << 20 && out.len() == out.capacity() {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.iter().map(Vec::len).sum::<usize>() + out.len() <= POOL_BYTES {
                pool.push(out);
            }
        }
    }

    /// Queues `chunk` for decoding on the decode-ahead thread; dropped when the queue is full.
    fn decode_ahead(&self, chunk: Arc<DecodedChunk>) {
        let queue = self.ahead.get_or_init(|| {
            let (tx, rx) = sync_channel::<Arc<DecodedChunk>>(2);
            std::thread::Builder::new()
                .name("lz4-ahead".into())
                .spawn(move || {
                    for chunk in rx {
                        chunk.decode_all();
                    }
                })
                .ok()
                .map(|_| tx)
        });
        if let Some(tx) = queue {
            let _ = tx.try_send(chunk);
        }
    }
}

impl Drop for DecodedChunk {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        self.runtime.give_back(std::mem::take(&mut st.out));
    }
}

/// One LZ4 frame being decoded into memory, shared through the cache. Blocks are decoded
/// straight into one buffer of the frame's size (linked blocks read their history from it),
/// with block and content checksums checked on the way; readers of the decoded prefix proceed
/// while the rest is still undecoded. Any failure, a content checksum mismatch found on
/// reaching the end included, sticks: every later read of the frame gets the error.
pub struct DecodedChunk {
    source: Arc<Source>,
    runtime: Arc<Lz4Runtime>,
    offset: u64,
    comp_len: u64,
    raw_len: usize,
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
    linked: bool,
    block_checksums: bool,
    content_checksum: bool,
    max_block: usize,
    failed: Option<Error>,
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
        DecodedChunk {
            source,
            runtime,
            offset,
            comp_len,
            raw_len: usize::try_from(raw_len).unwrap_or(usize::MAX),
            state: RwLock::new(State::default()),
        }
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
    fn decode_all(&self) {
        let mut to = STEP.min(self.raw_len);
        while to > 0 && self.read_with(to - 1, 1, &mut |_| {}).is_ok() && to < self.raw_len {
            to = (to + STEP).min(self.raw_len);
        }
    }

    /// Queues the frame for decoding on the background thread (sequential readers get the next
    /// frame decoded while they are served this one). Dropped when the queue is full.
    pub fn decode_ahead(self: &Arc<Self>) {
        self.runtime.decode_ahead(Arc::clone(self));
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

    fn u32_at(&self, frame: &[u8], at: usize, what: &str) -> Result<u32> {
        at.checked_add(4)
            .and_then(|end| frame.get(at..end))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| self.corrupt(at, format!("LZ4 frame ends inside {what}")))
    }

    fn header(&self, st: &mut State, frame: &[u8]) -> Result<()> {
        let (Some(magic), Some(&flg), Some(&bd)) = (frame.get(..4), frame.get(4), frame.get(5))
        else {
            return Err(self.corrupt(0, "LZ4 frame fails to decode: bad magic"));
        };
        if frame.len() < 7 || magic != MAGIC {
            return Err(self.corrupt(0, "LZ4 frame fails to decode: bad magic"));
        }
        if flg >> 6 != 1 || flg & 0x01 != 0 {
            return Err(self.corrupt(
                4,
                format!("LZ4 frame fails to decode: unsupported FLG {flg:#04x}"),
            ));
        }
        st.linked = flg & 0x20 == 0;
        st.block_checksums = flg & 0x10 != 0;
        st.content_checksum = flg & 0x04 != 0;
        st.max_block = match (bd >> 4) & 7 {
            4 => 64 << 10,
            5 => 256 << 10,
            6 => 1 << 20,
            7 => 4 << 20,
            _ => {
                return Err(self.corrupt(5, format!("LZ4 frame fails to decode: bad BD {bd:#04x}")));
            }
        };
        let desc_end = 6 + if flg & 0x08 != 0 { 8 } else { 0 };
        let (Some(&hc), Some(desc)) = (frame.get(desc_end), frame.get(4..desc_end)) else {
            return Err(self.corrupt(desc_end, "LZ4 frame header cut short"));
        };
        if (XxHash32::oneshot(0, desc) >> 8) as u8 != hc {
            return Err(self.corrupt(
                desc_end,
                "LZ4 frame fails to decode: header checksum mismatch",
            ));
        }
        st.input = desc_end + 1;
        st.out = self.runtime.buffer(self.raw_len);
        Ok(())
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
            self.header(st, &frame)?;
        }
        let target = need.div_ceil(STEP).saturating_mul(STEP).min(self.raw_len);
        while st.decoded < target {
            self.block(st, &frame)?;
        }
        if st.decoded == self.raw_len {
            return self.end(st, &frame);
        }
        if let Cow::Owned(bytes) = frame {
            st.comp = Some(bytes);
        }
        Ok(())
    }

    /// Decodes the block at `st.input` onto the decoded bytes.
    fn block(&self, st: &mut State, frame: &[u8]) -> Result<()> {
        let at = st.input;
        let word = self.u32_at(frame, at, "a block header")?;
        if word == 0 {
            return Err(self.corrupt(
                at,
                format!(
                    "LZ4 frame decodes to {} bytes, expected {}",
                    st.decoded, self.raw_len
                ),
            ));
        }
        // Block sizes are below 2^31 and offsets inside the mapped frame: no overflow.
        let n = (word & 0x7fff_ffff) as usize;
        let data = frame
            .get(at + 4..at + 4 + n)
            .filter(|_| n <= st.max_block)
            .ok_or_else(|| {
                self.corrupt(
                    at,
                    "LZ4 frame fails to decode: block larger than the frame allows",
                )
            })?;
        let mut next = at + 4 + n;
        if st.block_checksums {
            let want = self.u32_at(frame, next, "a block checksum")?;
            if XxHash32::oneshot(0, data) != want {
                return Err(self.corrupt(at, "LZ4 frame fails to decode: BlockChecksumError"));
            }
            next += 4;
        }
        let k = self.inflate(st, at, word & 0x8000_0000 != 0, data)?;
        st.decoded += k;
        st.input = next;
        self.source.served((next - at) as u64);
        Ok(())
    }

    /// Writes one block's bytes (`stored`: kept uncompressed) after the decoded bytes; returns
    /// how many.
    fn inflate(&self, st: &mut State, at: usize, stored: bool, data: &[u8]) -> Result<usize> {
        let decoded = st.decoded;
        let room = (self.raw_len - decoded).min(st.max_block);
        let dst = st
            .out
            .get_mut(decoded..decoded + room)
            .ok_or_else(|| self.corrupt(at, "LZ4 frame decode buffer too short"))?;
        if stored {
            let dst = dst.get_mut(..data.len()).ok_or_else(|| {
                self.corrupt(at, "LZ4 frame decodes to more than its declared size")
            })?;
            dst.copy_from_slice(data);
            return Ok(data.len());
        }
        let (history, rest) = st.out.split_at_mut(decoded);
        let dict = if st.linked {
            history
                .get(history.len().saturating_sub(64 << 10)..)
                .unwrap_or_default()
        } else {
            &[]
        };
        let dst = rest.get_mut(..room).unwrap_or_default();
        lz4_flex::block::decompress_into_with_dict(data, dst, dict)
            .map_err(|e| self.corrupt(at, format!("LZ4 frame fails to decode: {e}")))
    }

    /// Checks the end mark, the content checksum and that the frame ends there.
    fn end(&self, st: &mut State, frame: &[u8]) -> Result<()> {
        let at = st.input;
        if self.u32_at(frame, at, "the end mark")? != 0 {
            return Err(self.corrupt(at, "LZ4 frame decodes to more than its declared size"));
        }
        let mut end = at + 4;
        if st.content_checksum {
            let want = self.u32_at(frame, end, "the content checksum")?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Cache, Key};
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
