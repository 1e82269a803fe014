//! The fixed newstyle handshake: greeting, then options until the client picks an export
//! (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or leaves.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use super::exports::{Exports, MAX_NAME};
use super::wire::*;
use crate::vfs::FileNode;

/// Largest option payload read (names are at most 4 KiB; meta context queries add little).
const MAX_OPTION: u32 = 64 << 10;
/// Largest option payload skipped with `NBD_REP_ERR_TOO_BIG` before the connection is dropped.
const MAX_SKIP: u32 = 1 << 20;
/// Options one connection may send (`nbdinfo --list` sends a few per export).
const MAX_OPTIONS: usize = 100_000;
/// Time the whole handshake may take (the caller's connection enforces it).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The only metadata context: holes and zeroes.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Its id on every connection.
pub const ALLOCATION_ID: u32 = 1;

/// Block sizes advertised: any byte offset works, 4 KiB is best, 32 MiB at most per request.
pub const MIN_BLOCK: u32 = 1;
/// See [`MIN_BLOCK`].
pub const PREFERRED_BLOCK: u32 = 4096;
/// See [`MIN_BLOCK`].
pub const MAX_BLOCK: u32 = 32 << 20;

/// What the handshake agreed on.
pub struct Agreed {
    /// The export's name.
    pub name: String,
    /// The exported file.
    pub file: Arc<dyn FileNode>,
    /// Its size.
    pub size: u64,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub allocation: bool,
}

/// Options negotiated so far.
#[derive(Default)]
struct State {
    structured: bool,
    /// The export the meta contexts were set for, when `base:allocation` was selected.
    allocation_for: Option<String>,
    no_zeroes: bool,
}

/// Runs the handshake on `conn`; `Ok(None)` when the client ended it without an export.
/// Protocol violations that leave no way to answer are errors (the caller drops the
/// connection).
pub fn negotiate(conn: &mut dyn ReadWrite, exports: &Exports) -> io::Result<Option<Agreed>> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    conn.write_all(&greeting)?;
    let flags = read_u32(conn)?;
    if flags & !CLIENT_FLAGS_KNOWN != 0 || flags & u32::from(FLAG_FIXED_NEWSTYLE) == 0 {
        return Err(invalid(format!("client flags {flags:#x}")));
    }
    let mut st = State {
        no_zeroes: flags & u32::from(FLAG_NO_ZEROES) != 0,
        ..State::default()
    };
    for _ in 0..MAX_OPTIONS {
        let magic = read_u64(conn)?;
        if magic != IHAVEOPT {
            return Err(invalid(format!("option magic {magic:#x}")));
        }
        let option = read_u32(conn)?;
        let len = read_u32(conn)?;
        if len > MAX_OPTION {
            skip(conn, len)?;
            option_reply(conn, option, REP_ERR_TOO_BIG, b"option data too large")?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        conn.read_exact(&mut data)?;
        if let Some(done) = one_option(conn, exports, &mut st, option, &data)? {
            return Ok(done);
        }
    }
    Err(invalid("too many options".into()))
}

/// A connection both ways.
pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Reads and drops `len` bytes (at most [`MAX_SKIP`]; more ends the connection).
fn skip(conn: &mut dyn ReadWrite, len: u32) -> io::Result<()> {
    if len > MAX_SKIP {
        return Err(invalid(format!("option of {len} bytes")));
    }
    let copied = io::copy(&mut conn.take(u64::from(len)), &mut io::sink())?;
    if copied < u64::from(len) {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Answers one option; `Some` ends the handshake (`Some(None)`: without an export).
fn one_option(
    conn: &mut dyn ReadWrite,
    exports: &Exports,
    st: &mut State,
    option: u32,
    data: &[u8],
) -> io::Result<Option<Option<Agreed>>> {
    let err = |conn: &mut dyn ReadWrite, kind: u32, msg: &str| {
        option_reply(conn, option, kind, msg.as_bytes()).map(|()| None)
    };
    match option {
        OPT_EXPORT_NAME => export_name(conn, exports, st, data).map(Some),
        OPT_ABORT => {
            // The client may already have gone; the ACK is a courtesy.
            let _ = option_reply(conn, option, REP_ACK, &[]);
            Ok(Some(None))
        }
        OPT_LIST if !data.is_empty() => err(conn, REP_ERR_INVALID, "NBD_OPT_LIST takes no data"),
        OPT_LIST => list(conn, exports).map(|()| None),
        OPT_STRUCTURED_REPLY if !data.is_empty() => err(
            conn,
            REP_ERR_INVALID,
            "NBD_OPT_STRUCTURED_REPLY takes no data",
        ),
        OPT_STRUCTURED_REPLY => {
            st.structured = true;
            option_reply(conn, option, REP_ACK, &[]).map(|()| None)
        }
        OPT_INFO | OPT_GO => info_or_go(conn, exports, st, option, data),
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            meta_context(conn, exports, st, option, data).map(|()| None)
        }
        OPT_STARTTLS => err(conn, REP_ERR_UNSUP, "TLS is not offered"),
        _ => err(conn, REP_ERR_UNSUP, "unknown option"),
    }
}

/// A little reader over an option's data; every read is bounds-checked.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A u32-length-prefixed UTF-8 string of at most `MAX_NAME` bytes.
    fn string(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        if len > MAX_NAME {
            return None;
        }
        std::str::from_utf8(self.take(len)?).ok()
    }
}

/// The transmission flags of every export.
fn transmission_flags(st: &State) -> u16 {
    let df = if st.structured { TFLAG_SEND_DF } else { 0 };
    TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN | df
}

/// Opens `name` and agrees on it.
fn agree(exports: &Exports, st: &State, name: &str) -> crate::error::Result<Agreed> {
    let file = exports.open(name)?;
    let size = file.size()?;
    Ok(Agreed {
        name: name.to_owned(),
        file,
        size,
        structured: st.structured,
        allocation: st.allocation_for.as_deref() == Some(name),
    })
}

/// `NBD_OPT_EXPORT_NAME`: no way to refuse but closing.
fn export_name(
    conn: &mut dyn ReadWrite,
    exports: &Exports,
    st: &State,
    data: &[u8],
) -> io::Result<Option<Agreed>> {
    let name = std::str::from_utf8(data).map_err(|_| invalid("export name not UTF-8".into()))?;
    let agreed = agree(exports, st, name).map_err(|e| invalid(e.to_string()))?;
    let mut reply = Vec::with_capacity(134);
    reply.extend_from_slice(&agreed.size.to_be_bytes());
    reply.extend_from_slice(&transmission_flags(st).to_be_bytes());
    if !st.no_zeroes {
        reply.extend_from_slice(&[0u8; 124]);
    }
    conn.write_all(&reply)?;
    Ok(Some(agreed))
}

/// `NBD_OPT_LIST`: one `NBD_REP_SERVER` per disk image.
fn list(conn: &mut dyn ReadWrite, exports: &Exports) -> io::Result<()> {
    let listed = exports.list(&mut |name: &str| {
        let mut data = Vec::with_capacity(4 + name.len());
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name.as_bytes());
        option_reply(conn, OPT_LIST, REP_SERVER, &data)
    });
    listed?;
    option_reply(conn, OPT_LIST, REP_ACK, &[])
}

/// `NBD_OPT_INFO` and `NBD_OPT_GO`: the export's size, flags, block sizes (and name when
/// asked); `GO` then starts transmission.
fn info_or_go(
    conn: &mut dyn ReadWrite,
    exports: &Exports,
    st: &State,
    option: u32,
    data: &[u8],
) -> io::Result<Option<Option<Agreed>>> {
    let mut f = Fields(data);
    let parsed = f.string().and_then(|name| {
        let n = f.u16()?;
        let asked: Option<Vec<u16>> = (0..n).map(|_| f.u16()).collect();
        (f.0.is_empty()).then_some((name, asked?))
    });
    let Some((name, asked)) = parsed else {
        option_reply(conn, option, REP_ERR_INVALID, b"malformed request")?;
        return Ok(None);
    };
    let agreed = match agree(exports, st, name) {
        Ok(a) => a,
        Err(e) => {
            option_reply(conn, option, REP_ERR_UNKNOWN, e.to_string().as_bytes())?;
            return Ok(None);
        }
    };
    let mut export = Vec::with_capacity(12);
    export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    export.extend_from_slice(&agreed.size.to_be_bytes());
    export.extend_from_slice(&transmission_flags(st).to_be_bytes());
    option_reply(conn, option, REP_INFO, &export)?;
    let mut sizes = Vec::with_capacity(14);
    sizes.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for s in [MIN_BLOCK, PREFERRED_BLOCK, MAX_BLOCK] {
        sizes.extend_from_slice(&s.to_be_bytes());
    }
    option_reply(conn, option, REP_INFO, &sizes)?;
    if asked.contains(&INFO_NAME) {
        let mut named = INFO_NAME.to_be_bytes().to_vec();
        named.extend_from_slice(name.as_bytes());
        option_reply(conn, option, REP_INFO, &named)?;
    }
    option_reply(conn, option, REP_ACK, &[])?;
    Ok((option == OPT_GO).then_some(Some(agreed)))
}

/// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`: only `base:allocation`.
fn meta_context(
    conn: &mut dyn ReadWrite,
    exports: &Exports,
    st: &mut State,
    option: u32,
    data: &[u8],
) -> io::Result<()> {
    let set = option == OPT_SET_META_CONTEXT;
    if set && !st.structured {
        let msg = b"NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first";
        return option_reply(conn, option, REP_ERR_INVALID, msg);
    }
    let mut f = Fields(data);
    let parsed = f.string().and_then(|name| {
        let n = f.u32()?;
        let queries: Option<Vec<&str>> = (0..n).map(|_| f.string()).collect();
        (f.0.is_empty()).then_some((name, queries?))
    });
    let Some((name, queries)) = parsed else {
        return option_reply(conn, option, REP_ERR_INVALID, b"malformed request");
    };
    if let Err(e) = exports.open(name) {
        return option_reply(conn, option, REP_ERR_UNKNOWN, e.to_string().as_bytes());
    }
    // Listing with no query lists every context; `base:` asks for all of the namespace.
    let wanted = if set {
        queries.contains(&BASE_ALLOCATION)
    } else {
        queries.is_empty()
            || queries
                .iter()
                .any(|q| *q == BASE_ALLOCATION || *q == "base:")
    };
    if set {
        st.allocation_for = wanted.then(|| name.to_owned());
    }
    if wanted {
        let mut ctx = ALLOCATION_ID.to_be_bytes().to_vec();
        ctx.extend_from_slice(BASE_ALLOCATION.as_bytes());
        option_reply(conn, option, REP_META_CONTEXT, &ctx)?;
    }
    option_reply(conn, option, REP_ACK, &[])
}
