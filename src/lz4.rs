//! LZ4 frames inside backup files: reading a frame's declared size, and decoding one frame on
//! demand into a cache entry, only as far as readers need.
//!
//! virtnbdbackup writes linked blocks, so any byte of a frame needs every byte before it: a read
//! in the middle of a 32 MiB frame decodes from the start up to that read, and the decoded prefix
//! stays in the shared cache for the next reader.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use lz4_flex::frame::FrameDecoder;

use crate::error::{Error, Result};
use crate::source::{SliceReader, Source};

const MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];

/// The largest LZ4 frame restorefs decodes into memory. virtnbdbackup splits extents into
/// frames of the NBD maximum request size (32 MiB with qemu); anything far beyond is hostile.
pub const MAX_FRAME: u64 = 256 << 20;

/// Decoding granularity: a read past the decoded prefix decodes up to the next multiple of this.
const STEP: usize = 1 << 20;

/// The content size an LZ4 frame header declares (`None` when the frame does not declare it).
pub fn declared_size(frame: &[u8]) -> Result<Option<u64>, String> {
    if frame.len() < 7 || frame[..4] != MAGIC {
        return Err("not an LZ4 frame (bad magic)".into());
    }
    let flg = frame[4];
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
/// content checksums, and returns its decoded size.
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

/// One LZ4 frame being decoded into memory, shared through the cache.
pub struct DecodedChunk {
    source: Arc<Source>,
    offset: u64,
    comp_len: u64,
    raw_len: usize,
    state: Mutex<State>,
}

struct State {
    out: Vec<u8>,
    decoder: Option<FrameDecoder<SliceReader>>,
    failed: Option<Error>,
}

impl DecodedChunk {
    /// A chunk of `comp_len` bytes at `offset` that decodes to `raw_len` bytes; decodes nothing yet.
    pub fn new(source: Arc<Source>, offset: u64, comp_len: u64, raw_len: u64) -> DecodedChunk {
        DecodedChunk {
            source,
            offset,
            comp_len,
            raw_len: raw_len as usize,
            state: Mutex::new(State {
                out: Vec::new(),
                decoder: None,
                failed: None,
            }),
        }
    }

    /// Copies decoded bytes `at..at+dst.len()` into `dst`, decoding as far as needed.
    pub fn read(&self, at: usize, dst: &mut [u8]) -> Result<()> {
        let need = at + dst.len();
        if need > self.raw_len {
            return Err(self.corrupt(format!(
                "read past the {} bytes this LZ4 frame holds",
                self.raw_len
            )));
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if st.out.len() < need
            && let Err(e) = self.decode_to(&mut st, need)
        {
            st.failed = Some(e.clone());
            st.out = Vec::new();
            st.decoder = None;
            return Err(e);
        }
        dst.copy_from_slice(&st.out[at..need]);
        Ok(())
    }

    fn decode_to(&self, st: &mut State, need: usize) -> Result<()> {
        if st.decoder.is_none() {
            st.decoder = Some(FrameDecoder::new(
                self.source.reader(self.offset, self.comp_len)?,
            ));
            st.out.try_reserve_exact(self.raw_len).map_err(|e| {
                self.corrupt(format!("cannot hold {} decoded bytes: {e}", self.raw_len))
            })?;
        }
        let target = need.div_ceil(STEP).saturating_mul(STEP).min(self.raw_len);
        let mut filled = st.out.len();
        st.out.resize(target, 0);
        let State { out, decoder, .. } = st;
        let dec = decoder.as_mut().expect("decoder set above");
        while filled < target {
            match dec.read(&mut out[filled..target]) {
                Ok(0) => {
                    return Err(self.corrupt(format!(
                        "LZ4 frame decodes to {filled} bytes, expected {}",
                        self.raw_len
                    )));
                }
                Ok(n) => filled += n,
                Err(e) => return Err(decode_error(self.source.path(), self.offset, &e)),
            }
        }
        if filled == self.raw_len {
            // Read the end mark too, so the content checksum and the frame length are checked.
            let mut probe = [0u8; 1];
            match dec.read(&mut probe) {
                Ok(0) if dec.get_ref().remaining() == 0 => {}
                Ok(0) => {
                    return Err(self.corrupt(format!(
                        "LZ4 frame ends {} bytes before the length the trailer gives it",
                        dec.get_ref().remaining()
                    )));
                }
                Ok(_) => {
                    return Err(self.corrupt(format!(
                        "LZ4 frame decodes to more than the {} bytes expected",
                        self.raw_len
                    )));
                }
                Err(e) => return Err(decode_error(self.source.path(), self.offset, &e)),
            }
            *decoder = None;
        }
        Ok(())
    }

    fn corrupt(&self, msg: String) -> Error {
        Error::corrupt(self.source.path(), self.offset, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Cache, Key};
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
        let src = Source::open(f.path()).unwrap();
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
        assert_eq!(declared_size(src.bytes()).unwrap(), Some(raw.len() as u64));
        let chunk = DecodedChunk::new(src, 0, comp, raw.len() as u64);
        let mut buf = vec![0u8; 4096];
        chunk.read(3 << 20, &mut buf).unwrap();
        assert_eq!(buf, raw[3 << 20..(3 << 20) + 4096]);
        let decoded = chunk.state.lock().unwrap().out.len();
        assert_eq!(decoded, 4 << 20, "decoded up to the next 1 MiB step only");
        chunk.read(raw.len() - 10, &mut buf[..10]).unwrap();
        assert_eq!(buf[..10], raw[raw.len() - 10..]);
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
                        DecodedChunk::new(Arc::clone(src), 0, comp, raw.len() as u64)
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
        let src = Source::open(f.path()).unwrap();
        let chunk = DecodedChunk::new(src, 0, comp, raw.len() as u64);
        let mut buf = vec![0u8; raw.len()];
        let e = chunk.read(0, &mut buf).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{}: at offset 0: LZ4 frame fails to decode",
                f.path().display()
            )),
            "{e}"
        );
        assert!(chunk.read(0, &mut buf[..1]).is_err());
    }
}
