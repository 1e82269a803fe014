//! NBD wire format: the magic numbers, option and command codes of the protocol
//! (NetworkBlockDevice/nbd doc/proto.md), and the encoding of every message the server sends.

use std::io::{self, Read, Write};

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle handshake, and the start of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Start of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Start of every request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Start of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Start of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags: fixed newstyle, and no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// See [`FLAG_FIXED_NEWSTYLE`].
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags the server knows (the same two bits).
pub const CLIENT_FLAGS_KNOWN: u32 = 0b11;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Ends the handshake without an export.
pub const OPT_ABORT: u32 = 2;
/// Lists the exports.
pub const OPT_LIST: u32 = 3;
/// TLS: not offered.
pub const OPT_STARTTLS: u32 = 5;
/// Describes an export.
pub const OPT_INFO: u32 = 6;
/// Describes an export and starts transmission on it.
pub const OPT_GO: u32 = 7;
/// Replies in chunks.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Lists the metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Chooses the metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// One export of `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// One piece of information about an export.
pub const REP_INFO: u32 = 3;
/// One metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Option errors.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Malformed or out of order.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// No such export.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// The option's data is larger than the server reads.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// `NBD_INFO_*` items of `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
/// The export's name.
pub const INFO_NAME: u16 = 1;
/// Minimum, preferred and maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export refuses writes.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_CMD_FLUSH` is understood.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_CMD_FLAG_DF` is understood.
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Several connections see the same data (always true of a read-only export).
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Commands.
pub const CMD_READ: u16 = 0;
/// Writes (refused).
pub const CMD_WRITE: u16 = 1;
/// Ends the connection.
pub const CMD_DISC: u16 = 2;
/// Flushes (nothing to do).
pub const CMD_FLUSH: u16 = 3;
/// Trims (refused).
pub const CMD_TRIM: u16 = 4;
/// Writes zeroes (refused).
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Asks for extents of a metadata context.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: don't fragment a structured read reply.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: one block status extent is enough.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// The last chunk of a structured reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply chunk types.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// A hole (reads as zeroes) at an offset.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Extents of one metadata context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// An error.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
/// An error at an offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;

/// `base:allocation` states.
pub const STATE_HOLE: u32 = 1 << 0;
/// Reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// NBD error values (Linux errno numbers, as the protocol defines them).
pub const EPERM: u32 = 1;
/// I/O error.
pub const EIO: u32 = 5;
/// Invalid request.
pub const EINVAL: u32 = 22;
/// A request longer than the advertised maximum block size.
pub const EOVERFLOW: u32 = 75;

/// One request header of the transmission phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command.
    pub kind: u16,
    /// The client's identifier of the request, echoed in its reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte count (for a write, the payload that follows).
    pub length: u32,
}

/// Reads one request header; `Ok(None)` when the client closed the connection cleanly, an
/// `InvalidData` error on a wrong magic.
pub fn read_request(r: &mut dyn Read) -> io::Result<Option<Request>> {
    let mut h = [0u8; 28];
    let mut got = 0;
    while got < h.len() {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let u16_at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    let magic = u32::from_be_bytes(h[0..4].try_into().expect("4 bytes"));
    if magic != REQUEST_MAGIC {
        return Err(invalid(format!("request magic {magic:#010x}")));
    }
    Ok(Some(Request {
        flags: u16_at(4),
        kind: u16_at(6),
        cookie: u64::from_be_bytes(h[8..16].try_into().expect("8 bytes")),
        offset: u64::from_be_bytes(h[16..24].try_into().expect("8 bytes")),
        length: u32::from_be_bytes(h[24..28].try_into().expect("4 bytes")),
    }))
}

/// An `InvalidData` error: the client broke the protocol.
pub fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads a big-endian u32.
pub fn read_u32(r: &mut dyn Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads a big-endian u64.
pub fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// An option reply: header and data.
pub fn option_reply(w: &mut dyn Write, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&len32(data.len()).to_be_bytes());
    m.extend_from_slice(data);
    w.write_all(&m)
}

/// A simple reply header (data, if any, follows).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h
}

/// A structured reply chunk header for `length` bytes of payload.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..20].copy_from_slice(&length.to_be_bytes());
    h
}

/// A whole structured reply chunk (header and payload).
pub fn chunk(flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + payload.len());
    m.extend_from_slice(&chunk_header(flags, kind, cookie, len32(payload.len())));
    m.extend_from_slice(payload);
    m
}

/// The payload of an error chunk: the error, a message and, for `ERROR_OFFSET`, the offset.
pub fn error_payload(error: u32, msg: &str, offset: Option<u64>) -> Vec<u8> {
    // Messages are for people; a few hundred bytes say enough.
    let cut = (0..=msg.len().min(512))
        .rev()
        .find(|&i| msg.is_char_boundary(i))
        .unwrap_or(0);
    let msg = &msg.as_bytes()[..cut];
    let mut p = Vec::with_capacity(14 + msg.len());
    p.extend_from_slice(&error.to_be_bytes());
    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    p.extend_from_slice(msg);
    if let Some(o) = offset {
        p.extend_from_slice(&o.to_be_bytes());
    }
    p
}

/// A length the protocol carries in 32 bits (every message here is far smaller).
fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("NBD messages are smaller than 4 GiB")
}
