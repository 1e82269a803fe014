//! LZ4 frames inside backup files: reading a frame's declared size, decoding one frame on
//! demand into a cache entry ([`DecodedChunk`]), only as far as readers need, and decoder
//! checkpoints ([`Checkpoints`]) that let a random read start near its bytes.
//!
//! virtnbdbackup writes linked blocks, so any byte of a frame needs every byte before it: a read
//! in the middle of a 32 MiB frame decodes from the start up to that read, and the decoded prefix
//! stays in the shared cache for the next reader. Once a frame was decoded whole, its
//! checkpoints are kept on disk; a later random read decodes part of one [`Segment`] (usually
//! one 64 KiB block) from the checkpoint before it instead.

mod checkpoint;
mod chunk;

use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{OnceLock, Weak};

use lz4_flex::frame::FrameDecoder;
use twox_hash::XxHash32;

use crate::error::{Error, Result};
use crate::storage::Source;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Mutex};

pub use checkpoint::{Checkpoints, MIN_SPACING, Segment};
pub use chunk::DecodedChunk;

const MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];

/// The largest LZ4 frame restorefs decodes into memory. virtnbdbackup splits extents into
/// frames of the NBD maximum request size (32 MiB with qemu); anything far beyond is hostile.
pub const MAX_FRAME: u64 = 256 << 20;

/// The longest frame header: magic, FLG, BD, content size, header checksum.
const MAX_HEADER: u64 = 15;

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

/// What went wrong in a frame: the offset in the frame and a message (callers add the file
/// and the frame's offset).
type FrameError = (usize, String);

/// What decoding needs from a frame's header.
#[derive(Clone, Copy, Debug, Default)]
struct FrameInfo {
    /// Blocks may refer to the 64 KiB of output before them.
    linked: bool,
    block_checksums: bool,
    content_checksum: bool,
    max_block: usize,
    /// Offset of the first block header.
    data_start: usize,
}

/// Parses and checks the header at the start of `frame`.
fn frame_info(frame: &[u8]) -> Result<FrameInfo, FrameError> {
    let bad_magic = || (0, "LZ4 frame fails to decode: bad magic".to_string());
    let (Some(magic), Some(&flg), Some(&bd)) = (frame.get(..4), frame.get(4), frame.get(5)) else {
        return Err(bad_magic());
    };
    if frame.len() < 7 || magic != MAGIC {
        return Err(bad_magic());
    }
    if flg >> 6 != 1 || flg & 0x01 != 0 {
        return Err((
            4,
            format!("LZ4 frame fails to decode: unsupported FLG {flg:#04x}"),
        ));
    }
    let max_block = match (bd >> 4) & 7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        _ => return Err((5, format!("LZ4 frame fails to decode: bad BD {bd:#04x}"))),
    };
    let desc_end = 6 + if flg & 0x08 != 0 { 8 } else { 0 };
    let (Some(&hc), Some(desc)) = (frame.get(desc_end), frame.get(4..desc_end)) else {
        return Err((desc_end, "LZ4 frame header cut short".into()));
    };
    if (XxHash32::oneshot(0, desc) >> 8) as u8 != hc {
        return Err((
            desc_end,
            "LZ4 frame fails to decode: header checksum mismatch".into(),
        ));
    }
    Ok(FrameInfo {
        linked: flg & 0x20 == 0,
        block_checksums: flg & 0x10 != 0,
        content_checksum: flg & 0x04 != 0,
        max_block,
        data_start: desc_end + 1,
    })
}

fn u32_at(frame: &[u8], at: usize, what: &str) -> Result<u32, FrameError> {
    at.checked_add(4)
        .and_then(|end| frame.get(at..end))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| (at, format!("LZ4 frame ends inside {what}")))
}

/// Decodes the block whose header is at `at` in `frame` onto `out[filled..]` (a linked block
/// reads the 64 KiB before `filled` as its dictionary), checking its checksum first. Returns
/// how many bytes it wrote and the offset of the next block header; `None` at the end mark.
fn decode_block(
    info: &FrameInfo,
    frame: &[u8],
    at: usize,
    out: &mut [u8],
    filled: usize,
) -> Result<Option<(usize, usize)>, FrameError> {
    let word = u32_at(frame, at, "a block header")?;
    if word == 0 {
        return Ok(None);
    }
    // Block sizes are below 2^31 and offsets inside the frame: no overflow.
    let n = (word & 0x7fff_ffff) as usize;
    let data = frame
        .get(at + 4..at + 4 + n)
        .filter(|_| n <= info.max_block)
        .ok_or_else(|| {
            (
                at,
                "LZ4 frame fails to decode: block larger than the frame allows".to_string(),
            )
        })?;
    let mut next = at + 4 + n;
    if info.block_checksums {
        let want = u32_at(frame, next, "a block checksum")?;
        if XxHash32::oneshot(0, data) != want {
            return Err((at, "LZ4 frame fails to decode: BlockChecksumError".into()));
        }
        next += 4;
    }
    let room = out.len().saturating_sub(filled).min(info.max_block);
    let (history, rest) = out.split_at_mut(filled.min(out.len()));
    let dst = rest.get_mut(..room).unwrap_or_default();
    let too_much = || {
        (
            at,
            "LZ4 frame decodes to more than its declared size".to_string(),
        )
    };
    let k = if word & 0x8000_0000 != 0 {
        let dst = dst.get_mut(..data.len()).ok_or_else(too_much)?;
        dst.copy_from_slice(data);
        data.len()
    } else {
        let dict = if info.linked {
            history
                .get(history.len().saturating_sub(64 << 10)..)
                .unwrap_or_default()
        } else {
            &[]
        };
        lz4_flex::block::decompress_into_with_dict(data, dst, dict)
            .map_err(|e| (at, format!("LZ4 frame fails to decode: {e}")))?
    };
    Ok(Some((k, next)))
}

/// What decoding shares across frames, made once per run (no process globals): buffers left by
/// dropped frames for reuse, the decode-ahead workers, and the spacing of kept checkpoints.
#[derive(Default)]
pub struct Lz4Runtime {
    /// Buffers of dropped chunks kept for reuse, `POOL_BYTES` in all at most.
    pool: Mutex<Vec<Vec<u8>>>,
    /// The queue of the decode-ahead threads, started on first use. It holds frames weakly: one
    /// the cache evicted before its turn is skipped, so queued work never keeps memory alive
    /// beyond the cache's bound.
    ahead: OnceLock<Option<SyncSender<Weak<DecodedChunk>>>>,
    reused: AtomicU64,
    /// Decoded bytes between two kept checkpoints (0: [`MIN_SPACING`]).
    spacing: usize,
}

const POOL_BYTES: usize = 16 << 20;

/// Frames waiting for a decode-ahead thread at most; more are dropped (their readers decode
/// them).
const AHEAD_QUEUE: usize = 64;

/// How much lower decode-ahead threads run than the rest (nice steps).
const NICER: i32 = 5;

impl Lz4Runtime {
    /// A runtime with an empty pool; its threads start on the first decode-ahead.
    pub fn new() -> Arc<Lz4Runtime> {
        Arc::default()
    }

    /// A runtime keeping checkpoints at least `spacing` decoded bytes apart (at least
    /// [`MIN_SPACING`]; their stored dictionaries take at most 1/16 of a frame's decoded size).
    pub fn with_spacing(spacing: usize) -> Arc<Lz4Runtime> {
        Arc::new(Lz4Runtime {
            spacing,
            ..Lz4Runtime::default()
        })
    }

    /// Least decoded bytes between two kept checkpoints.
    pub fn spacing(&self) -> usize {
        self.spacing.max(MIN_SPACING)
    }

    /// How many frames were decoded into a reused buffer.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// A buffer of `len` bytes whose contents are unspecified (decoded bytes overwrite them
    /// before any reader sees them): [`Lz4Runtime::room`] made that long.
    fn buffer(&self, len: usize) -> Vec<u8> {
        let mut b = self.room(len);
        b.resize(len, 0);
        b
    }

    /// Room for `len` bytes, made from the kept buffer closest in size, whose pages stay
    /// mapped (no page faults on them): as it is when it holds at most 1/8 more (what it holds
    /// is what it costs: see [`DecodedChunk::cost`]), else cut down to `len`, or grown to it
    /// (the allocator remaps a large buffer's pages rather than copying them); else a new one
    /// whose zeroed pages the kernel provides only when touched. Its length is at most `len`
    /// (a grown buffer is short of it): the thread that decodes into it makes it `len` long,
    /// so that the pages it gained are faulted in there rather than on a reader's thread.
    fn room(&self, len: usize) -> Vec<u8> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let closest = (0..pool.len()).min_by_key(|&i| pool[i].capacity().abs_diff(len));
        let Some(i) = closest else {
            drop(pool);
            return vec![0u8; len];
        };
        // Kept buffers are as long as they hold.
        let mut b = pool.swap_remove(i);
        drop(pool);
        self.reused.fetch_add(1, Ordering::Relaxed);
        if b.len() > len + len / 8 {
            b.truncate(len);
            b.shrink_to_fit();
        } else if b.len() < len {
            b.reserve_exact(len - b.len());
        }
        b.truncate(len);
        b
    }

    /// Keeps a dropped frame's buffer for reuse, dropping the smallest kept ones past
    /// `POOL_BYTES`: the largest serve the most frames without page faults.
    fn give_back(&self, mut out: Vec<u8>) {
        if out.capacity() < 64 << 10 || out.capacity() > POOL_BYTES {
            return;
        }
        // Only past a length cut from a longer buffer: pages that are mapped already.
        out.resize(out.capacity(), 0);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.push(out);
        let mut total: usize = pool.iter().map(Vec::len).sum();
        while total > POOL_BYTES {
            let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].len()) else {
                break;
            };
            total -= pool.swap_remove(i).len();
        }
    }

    /// Queues `chunk` for decoding on a decode-ahead thread (one per core: frames are
    /// independent); dropped when the queue is full.
    fn decode_ahead(&self, chunk: &Arc<DecodedChunk>) {
        let queue = self.ahead.get_or_init(|| {
            let (tx, rx) = sync_channel::<Weak<DecodedChunk>>(AHEAD_QUEUE);
            // Threads outside the model checker's control: the standard mutex.
            let rx = Arc::new(std::sync::Mutex::new(rx));
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let started = (0..cores)
                .filter(|i| {
                    let rx = Arc::clone(&rx);
                    std::thread::Builder::new()
                        .name(format!("lz4-ahead-{i}"))
                        .spawn(move || decode_queued(&rx))
                        .is_ok()
                })
                .count();
            (started > 0).then_some(tx)
        });
        if let Some(tx) = queue {
            let _ = tx.try_send(Arc::downgrade(chunk));
        }
    }
}

/// A decode-ahead thread: decodes queued frames the cache still holds, until the runtime is
/// dropped.
fn decode_queued(rx: &std::sync::Mutex<Receiver<Weak<DecodedChunk>>>) {
    // Readers wait on the threads that serve them, not on these (which work ahead of them):
    // those come first when the cores are all busy.
    crate::sys::lower_thread_priority(NICER);
    loop {
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(chunk) = next else {
            return;
        };
        if let Some(chunk) = chunk.upgrade() {
            chunk.decode_all();
        }
    }
}
