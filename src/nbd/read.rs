//! Answering `NBD_CMD_READ` from a file node: holes as hole chunks, data read with the
//! connection's cursor into one buffer per worker, then sent.

use std::io::{self, Write};
use std::sync::{Mutex, PoisonError};

use super::wire::*;
use crate::error::{Error, Result};
use crate::vfs::{Cursor, FileNode};

/// Replies up to this size are copied into one write.
const SMALL_REPLY: usize = 64 << 10;

/// What a read needs of its connection.
pub struct Reader<'a, 'w> {
    /// The exported file.
    pub file: &'a dyn FileNode,
    /// The connection's read-ahead state.
    pub cursor: &'a Cursor,
    /// The connection, shared by the workers.
    pub writer: &'a Mutex<&'w mut (dyn Write + Send)>,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// Bytes per read step.
    pub piece: usize,
    /// The NBD error of a file error.
    pub errno: fn(&Error) -> u32,
}

/// Up to `most` extents of `file` from `start` to `end` (which lies inside the file): their
/// lengths and whether each is a hole.
pub fn extents(file: &dyn FileNode, start: u64, end: u64, most: usize) -> Result<Vec<(u32, bool)>> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end && out.len() < most {
        // `end - start` fits a request's u32 length.
        let (stop, hole) = next_step(file, at, end, u32::MAX as usize)?;
        out.push((u32::try_from(stop - at).unwrap_or(u32::MAX), hole));
        at = stop;
    }
    Ok(out)
}

/// Reads `offset..offset+len` (one piece) into `buf`. Never with the connection taken: a
/// node may hold a lock of its own while it hands bytes over (a decoded LZ4 chunk), and a
/// client that stops reading must not hold it through us.
fn piece<'b>(
    r: &Reader<'_, '_>,
    offset: u64,
    len: usize,
    buf: &'b mut Vec<u8>,
) -> Result<&'b [u8]> {
    buf.resize(len, 0);
    let got = r.file.read_at_by(r.cursor, offset, &mut buf[..len])?;
    if got != len {
        return Err(Error::from_errno(
            libc::EIO,
            format!("the file ended at byte {}", offset + got as u64),
        ));
    }
    Ok(&buf[..len])
}

/// A read answered in chunks: hole chunks for holes, one data chunk per piece; a failing
/// piece ends the reply with an error chunk at its offset.
pub fn chunked(r: Reader<'_, '_>, req: &Request, buf: &mut Vec<u8>) -> io::Result<()> {
    let end = req.offset + u64::from(req.length);
    let mut at = req.offset;
    let send = |bytes: &[&[u8]]| -> io::Result<()> {
        // Small replies go out in one write (one packet on TCP), large ones without a copy.
        let small = bytes.iter().map(|b| b.len()).sum::<usize>() <= SMALL_REPLY;
        let joined = if small { bytes.concat() } else { Vec::new() };
        let mut w = r.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if small {
            return w.write_all(&joined);
        }
        bytes.iter().try_for_each(|b| w.write_all(b))
    };
    while at < end {
        let step = next_step(r.file, at, end, r.piece);
        let (stop, hole) = match step {
            Ok(s) => s,
            Err(e) => return send(&[&error_chunk(&r, req.cookie, &e, at)]),
        };
        let flags = if stop == end { REPLY_FLAG_DONE } else { 0 };
        if hole {
            let mut p = [0u8; 12];
            p[..8].copy_from_slice(&at.to_be_bytes());
            p[8..].copy_from_slice(&((stop - at) as u32).to_be_bytes());
            send(&[&chunk(flags, REPLY_TYPE_OFFSET_HOLE, req.cookie, &p)])?;
        } else {
            let len = (stop - at) as usize;
            let head = chunk_header(flags, REPLY_TYPE_OFFSET_DATA, req.cookie, 8 + len as u32);
            match piece(&r, at, len, buf) {
                Ok(bytes) => send(&[&head, &at.to_be_bytes(), bytes])?,
                Err(e) => return send(&[&error_chunk(&r, req.cookie, &e, at)]),
            }
        }
        at = stop;
    }
    Ok(())
}

/// Where the step of a chunked read from `at` ends, and whether it is a hole.
fn next_step(file: &dyn FileNode, at: u64, end: u64, piece: usize) -> Result<(u64, bool)> {
    let data = file.next_data(at)?.unwrap_or(end).clamp(at, end);
    if data > at {
        return Ok((data, true));
    }
    let hole = file.next_hole(at)?.clamp(at + 1, end);
    Ok((hole.min(at + piece as u64), false))
}

/// The final error chunk of a read that failed at `offset`.
fn error_chunk(r: &Reader<'_, '_>, cookie: u64, e: &Error, offset: u64) -> Vec<u8> {
    log::warn!("nbd read at byte {offset}: {e}");
    let payload = error_payload((r.errno)(e), &e.to_string(), Some(offset));
    chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR_OFFSET, cookie, &payload)
}

/// A read answered in one piece: a simple reply, or one data chunk (`NBD_CMD_FLAG_DF`). The
/// first piece is read before the connection is taken, so that a failure there is replied as
/// an error and one-piece reads of several workers overlap; later pieces are read with it
/// taken (the reply must stay whole), and a failure there leaves no way to answer but
/// dropping the connection.
pub fn whole(r: Reader<'_, '_>, req: &Request, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = req.length as usize;
    let head: Vec<u8> = if r.structured {
        let mut h = chunk_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            req.cookie,
            8 + req.length,
        )
        .to_vec();
        h.extend_from_slice(&req.offset.to_be_bytes());
        h
    } else {
        simple_reply(0, req.cookie).to_vec()
    };
    let lock = || r.writer.lock().unwrap_or_else(PoisonError::into_inner);
    let mut held: Option<std::sync::MutexGuard<'_, &mut (dyn Write + Send)>> = None;
    let mut done = 0usize;
    while done < len {
        let n = r.piece.min(len - done);
        let at = req.offset + done as u64;
        match piece(&r, at, n, buf) {
            Ok(bytes) => match &mut held {
                Some(w) => w.write_all(bytes)?,
                None => {
                    let w = held.insert(lock());
                    w.write_all(&head)?;
                    w.write_all(bytes)?;
                }
            },
            Err(e) if done == 0 => {
                log::warn!("nbd read at byte {at}: {e}");
                let code = (r.errno)(&e);
                let reply = if r.structured {
                    let payload = error_payload(code, &e.to_string(), Some(at));
                    chunk(
                        REPLY_FLAG_DONE,
                        REPLY_TYPE_ERROR_OFFSET,
                        req.cookie,
                        &payload,
                    )
                } else {
                    simple_reply(code, req.cookie).to_vec()
                };
                return lock().write_all(&reply);
            }
            Err(e) => return Err(io::Error::other(format!("read at byte {at}: {e}"))),
        }
        done += n;
    }
    Ok(())
}
