//! The transmission phase: requests read in order on the connection's thread, served by a few
//! workers at once and replied as each finishes (out of order), until `NBD_CMD_DISC` or the
//! client leaves. Reads go through the file node with the connection's own `vfs::Cursor`.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Mutex, PoisonError};

use super::handshake::{ALLOCATION_ID, Agreed, MAX_BLOCK};
use super::wire::*;
use crate::error::Error;
use crate::vfs::Cursor;

/// Requests served at once on one connection.
const WORKERS: usize = 4;
/// Requests read ahead of the workers (bounds a connection's memory with [`PIECE`]).
const QUEUE: usize = 8;
/// Bytes read per step of a read request; structured replies send one chunk per piece.
const PIECE: usize = 1 << 20;
/// Extents per block status reply.
const MAX_EXTENTS: usize = 1024;

/// The connection's shared state while transmitting.
struct Conn<'a> {
    export: &'a Agreed,
    cursor: Cursor,
    writer: Mutex<&'a mut (dyn Write + Send)>,
    /// Set when a reply could not be sent: the connection is over.
    broken: AtomicBool,
    /// Ends the connection (wakes the reader).
    end: &'a (dyn Fn() + Sync),
}

impl Conn<'_> {
    /// Sends `bytes` as one message.
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        w.write_all(bytes)
    }

    /// Replies to `cookie` with success (no data) or an NBD error.
    fn reply(&self, cookie: u64, error: u32, msg: &str) -> io::Result<()> {
        if error != 0 && self.export.structured {
            let payload = error_payload(error, msg, None);
            return self.send(&chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, &payload));
        }
        self.send(&simple_reply(error, cookie))
    }
}

/// Serves requests from `reader` until the client disconnects; `writer` is the same connection,
/// which `end` shuts down. Errors are the connection's (a broken socket, a protocol
/// violation), not the backup's: those are replied as NBD errors.
pub fn serve(
    export: &Agreed,
    reader: &mut dyn Read,
    writer: &mut (dyn Write + Send),
    end: &(dyn Fn() + Sync),
) -> io::Result<()> {
    let conn = Conn {
        export,
        cursor: Cursor::default(),
        writer: Mutex::new(writer),
        broken: AtomicBool::new(false),
        end,
    };
    let (tx, rx) = sync_channel::<Request>(QUEUE);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| work(&conn, &rx));
        }
        let result = read_requests(&conn, reader, &|r| {
            tx.send(r).map_err(|_| io::ErrorKind::BrokenPipe.into())
        });
        if result.is_err() {
            // A client that broke the protocol may not read its replies either: workers
            // blocked writing them must not keep the connection.
            (conn.end)();
        }
        drop(tx);
        result
    })
}

/// Reads requests and answers those that need no file access; the rest go to `dispatch`.
fn read_requests(
    conn: &Conn<'_>,
    reader: &mut dyn Read,
    dispatch: &dyn Fn(Request) -> io::Result<()>,
) -> io::Result<()> {
    while !conn.broken.load(Ordering::Relaxed) {
        let Some(req) = read_request(reader)? else {
            return Ok(());
        };
        match req.kind {
            CMD_READ | CMD_BLOCK_STATUS => dispatch(req)?,
            CMD_DISC => return Ok(()),
            CMD_FLUSH => conn.reply(req.cookie, 0, "")?,
            CMD_WRITE => {
                // The payload follows the request: skip it to stay in step, unless it is larger
                // than any request may be.
                if req.length > MAX_BLOCK {
                    return Err(invalid(format!("write of {} bytes", req.length)));
                }
                let len = u64::from(req.length);
                if io::copy(&mut reader.take(len), &mut io::sink())? < len {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                conn.reply(req.cookie, EPERM, "read-only export")?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => conn.reply(req.cookie, EPERM, "read-only export")?,
            _ => conn.reply(req.cookie, EINVAL, "unknown command")?,
        }
    }
    Err(io::ErrorKind::BrokenPipe.into())
}

/// A worker: serves requests until the queue closes; a failed reply ends the connection.
fn work(conn: &Conn<'_>, rx: &Mutex<Receiver<Request>>) {
    let mut buf = Vec::new();
    loop {
        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(req) = next else { return };
        if conn.broken.load(Ordering::Relaxed) {
            continue;
        }
        let done = match req.kind {
            CMD_READ => read(conn, &req, &mut buf),
            _ => block_status(conn, &req),
        };
        if let Err(e) = done {
            log::debug!("nbd {}: connection ends: {e}", conn.export.name);
            conn.broken.store(true, Ordering::Relaxed);
            (conn.end)();
        }
    }
}

/// Checks a request's range: the NBD error to reply, if any.
fn check_range(conn: &Conn<'_>, req: &Request) -> Option<(u32, &'static str)> {
    if req.length > MAX_BLOCK {
        return Some((EOVERFLOW, "request longer than the maximum block size"));
    }
    let end = req.offset.checked_add(u64::from(req.length));
    if end.is_none_or(|e| e > conn.export.size) {
        return Some((EINVAL, "request past the end of the export"));
    }
    None
}

/// Errno of a file error, as NBD knows them.
fn nbd_errno(e: &Error) -> u32 {
    match e.errno() {
        libc::EPERM | libc::EACCES => EPERM,
        libc::EINVAL => EINVAL,
        _ => EIO,
    }
}

/// `NBD_CMD_READ`.
fn read(conn: &Conn<'_>, req: &Request, buf: &mut Vec<u8>) -> io::Result<()> {
    if let Some((err, msg)) = check_range(conn, req) {
        return conn.reply(req.cookie, err, msg);
    }
    if req.length == 0 {
        if conn.export.structured {
            let done = chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, &[]);
            return conn.send(&done);
        }
        return conn.reply(req.cookie, 0, "");
    }
    if conn.export.structured && req.flags & CMD_FLAG_DF == 0 {
        super::read::chunked(conn_reader(conn), req, buf)
    } else {
        super::read::whole(conn_reader(conn), req, buf)
    }
}

/// What the read module needs of the connection.
fn conn_reader<'a, 'w>(conn: &'a Conn<'w>) -> super::read::Reader<'a, 'w> {
    super::read::Reader {
        file: conn.export.file.as_ref(),
        cursor: &conn.cursor,
        writer: &conn.writer,
        structured: conn.export.structured,
        piece: PIECE,
        errno: nbd_errno,
    }
}

/// `NBD_CMD_BLOCK_STATUS` for `base:allocation`: holes (which read as zeroes) and data.
fn block_status(conn: &Conn<'_>, req: &Request) -> io::Result<()> {
    if !conn.export.allocation {
        return conn.reply(req.cookie, EINVAL, "no metadata context was selected");
    }
    if req.length == 0 || req.offset >= conn.export.size {
        return conn.reply(req.cookie, EINVAL, "empty range or past the end");
    }
    let end = req
        .offset
        .saturating_add(u64::from(req.length))
        .min(conn.export.size);
    let most = if req.flags & CMD_FLAG_REQ_ONE != 0 {
        1
    } else {
        MAX_EXTENTS
    };
    let extents = match super::read::extents(conn.export.file.as_ref(), req.offset, end, most) {
        Ok(x) => x,
        Err(e) => return conn.reply(req.cookie, nbd_errno(&e), &e.to_string()),
    };
    let mut payload = Vec::with_capacity(4 + 8 * extents.len());
    payload.extend_from_slice(&ALLOCATION_ID.to_be_bytes());
    for (len, hole) in extents {
        payload.extend_from_slice(&len.to_be_bytes());
        let state = if hole { STATE_HOLE | STATE_ZERO } else { 0 };
        payload.extend_from_slice(&state.to_be_bytes());
    }
    conn.send(&chunk(
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        req.cookie,
        &payload,
    ))
}
