//! Test helpers for the NBD front end: a running `restorefs serve`, and a small NBD client
//! written from the protocol document (not from restorefs' server code) that speaks the raw
//! protocol, pipelines requests and checks every reply's framing.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_MAGIC: u32 = 0x6744_6698;
pub const CHUNK_MAGIC: u32 = 0x668e_33ef;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const FLAG_DF: u16 = 1 << 2;
pub const FLAG_REQ_ONE: u16 = 1 << 3;

pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;
pub const EOVERFLOW: u32 = 75;

/// A `restorefs serve` on a unix socket, stopped (SIGTERM, exit 0 checked) on drop.
pub struct Served {
    pub socket: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Serves `source` with extra `args`; returns once the socket accepts connections.
    pub fn new(source: &Path, args: &[&str]) -> Served {
        let dir = common::scratch();
        let socket = dir.path().join("nbd.sock");
        let child = common::command()
            .arg("serve")
            .arg(source)
            .arg("--nbd")
            .arg(format!("unix:{}", socket.display()))
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut s = Served {
            socket,
            child,
            _dir: dir,
        };
        let start = Instant::now();
        while UnixStream::connect(&s.socket).is_err() {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("restorefs serve exited with {st}: {}", s.take_stderr());
            }
            assert!(start.elapsed() < Duration::from_secs(30), "not serving");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// `nbd+unix:///EXPORT?socket=...` for qemu and libnbd tools.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn take_stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// SIGTERM; checks a clean exit and returns stderr.
    pub fn stop(&mut self) -> String {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.take_stderr();
        assert!(status.success(), "serve exited {status}: {log}");
        common::assert_clean_log(&log);
        assert!(!self.socket.exists(), "the socket is left behind");
        log
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.alive() && !std::thread::panicking() {
            self.stop();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One chunk of a structured reply, or the body of a simple one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Data(u64, Vec<u8>),
    Hole(u64, u32),
    Status(u32, Vec<(u32, u32)>),
    Error(u32, String, Option<u64>),
    None,
}

/// A complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub cookie: u64,
    /// Simple reply error (0 for structured replies).
    pub error: u32,
    pub chunks: Vec<Chunk>,
}

/// A raw NBD connection.
pub struct Client {
    pub s: UnixStream,
    pub size: u64,
    pub flags: u16,
    pub structured: bool,
    /// cookie -> (command, offset, length) of requests sent and not answered.
    pending: HashMap<u64, (u16, u64, u32)>,
    /// Chunks of structured replies not done yet.
    partial: HashMap<u64, Vec<Chunk>>,
}

pub fn be16(s: &mut UnixStream) -> u16 {
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    u16::from_be_bytes(b)
}
pub fn be32(s: &mut UnixStream) -> u32 {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    u32::from_be_bytes(b)
}
pub fn be64(s: &mut UnixStream) -> u64 {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).unwrap();
    u64::from_be_bytes(b)
}
fn bytes(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

/// Connects and reads the greeting; returns the stream after sending client flags `flags`.
pub fn greet(socket: &Path, flags: u32) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    assert_eq!(be64(&mut s), NBDMAGIC);
    assert_eq!(be64(&mut s), IHAVEOPT);
    let hs = be16(&mut s);
    assert_eq!(hs & 3, 3, "fixed newstyle and no zeroes");
    s.write_all(&flags.to_be_bytes()).unwrap();
    s
}

/// Sends an option.
pub fn send_option(s: &mut UnixStream, option: u32, data: &[u8]) {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// Reads one option reply: (option, reply type, data).
pub fn option_reply(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    assert_eq!(be64(s), OPT_REPLY_MAGIC);
    let opt = be32(s);
    let kind = be32(s);
    let len = be32(s) as usize;
    assert!(len < 1 << 20, "option reply of {len} bytes");
    (opt, kind, bytes(s, len))
}

/// Reads option replies up to the ACK or an error; returns every reply.
pub fn option_replies(s: &mut UnixStream, option: u32) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let (opt, kind, data) = option_reply(s);
        assert_eq!(opt, option);
        let end = kind == REP_ACK || kind >= 1 << 31;
        out.push((kind, data));
        if end {
            return out;
        }
    }
}

/// Name-and-info-requests payload of `NBD_OPT_GO`/`NBD_OPT_INFO`.
pub fn go_data(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&3u16.to_be_bytes());
    d
}

/// Payload of the meta context options.
pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

impl Client {
    /// Connects to `export` with `NBD_OPT_GO`, optionally with structured replies and
    /// `base:allocation`.
    pub fn connect(socket: &Path, export: &str, structured: bool, allocation: bool) -> Client {
        let mut s = greet(socket, 3);
        if structured {
            send_option(&mut s, OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(option_replies(&mut s, OPT_STRUCTURED_REPLY)[0].0, REP_ACK);
        }
        if allocation {
            send_option(
                &mut s,
                OPT_SET_META_CONTEXT,
                &meta_data(export, &["base:allocation"]),
            );
            let r = option_replies(&mut s, OPT_SET_META_CONTEXT);
            assert_eq!(r.len(), 2, "{r:?}");
            assert_eq!(r[0].0, REP_META_CONTEXT);
            assert_eq!(&r[0].1[4..], b"base:allocation");
        }
        send_option(&mut s, OPT_GO, &go_data(export));
        let (mut size, mut flags) = (None, 0);
        for (kind, data) in option_replies(&mut s, OPT_GO) {
            assert!(
                kind < 1 << 31,
                "GO {export}: {}",
                String::from_utf8_lossy(&data)
            );
            if kind == REP_INFO && data[..2] == [0, 0] {
                size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
                flags = u16::from_be_bytes(data[10..12].try_into().unwrap());
            }
        }
        Client {
            s,
            size: size.expect("NBD_INFO_EXPORT"),
            flags,
            structured,
            pending: HashMap::new(),
            partial: HashMap::new(),
        }
    }

    /// A client on a connection already in transmission.
    pub fn from_stream(s: UnixStream, size: u64, flags: u16, structured: bool) -> Client {
        Client {
            s,
            size,
            flags,
            structured,
            pending: HashMap::new(),
            partial: HashMap::new(),
        }
    }

    /// Sends a request (and a write's payload).
    pub fn send(
        &mut self,
        flags: u16,
        kind: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        self.s.write_all(&m).unwrap();
        if kind != CMD_DISC {
            self.pending.insert(cookie, (kind, offset, len));
        }
    }

    /// Reads until some request's reply is complete, and returns it.
    pub fn recv(&mut self) -> Reply {
        loop {
            let magic = be32(&mut self.s);
            if magic == SIMPLE_MAGIC {
                let error = be32(&mut self.s);
                let cookie = be64(&mut self.s);
                let (kind, offset, len) = self.pending.remove(&cookie).expect("reply to a request");
                let chunks = if kind == CMD_READ && error == 0 {
                    assert!(!self.structured, "simple reply to a structured read");
                    vec![Chunk::Data(offset, bytes(&mut self.s, len as usize))]
                } else {
                    Vec::new()
                };
                return Reply {
                    cookie,
                    error,
                    chunks,
                };
            }
            assert_eq!(magic, CHUNK_MAGIC, "reply magic");
            assert!(self.structured, "chunk without structured replies");
            let flags = be16(&mut self.s);
            let kind = be16(&mut self.s);
            let cookie = be64(&mut self.s);
            let len = be32(&mut self.s) as usize;
            assert!(
                self.pending.contains_key(&cookie),
                "chunk for cookie {cookie}"
            );
            let p = bytes(&mut self.s, len);
            let chunk = parse_chunk(kind, &p);
            self.partial.entry(cookie).or_default().push(chunk);
            if flags & 1 != 0 {
                self.pending.remove(&cookie);
                let chunks = self.partial.remove(&cookie).unwrap();
                return Reply {
                    cookie,
                    error: 0,
                    chunks,
                };
            }
        }
    }

    /// Reads `len` bytes at `offset`: the bytes, or the NBD error.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send(0, CMD_READ, 7, offset, len, &[]);
        let r = self.recv();
        assemble(&r, offset, len)
    }
}

/// The bytes of a read reply (checking that chunks cover the range exactly once), or its error.
pub fn assemble(r: &Reply, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
    if r.error != 0 {
        return Err(r.error);
    }
    let mut out = vec![0u8; len as usize];
    let mut covered = vec![false; len as usize];
    let mut mark = |at: u64, n: usize| {
        let start = (at - offset) as usize;
        for c in &mut covered[start..start + n] {
            assert!(!*c, "chunks overlap at {at}");
            *c = true;
        }
        start
    };
    for c in &r.chunks {
        match c {
            Chunk::Data(at, d) => {
                let s = mark(*at, d.len());
                out[s..s + d.len()].copy_from_slice(d);
            }
            Chunk::Hole(at, n) => {
                mark(*at, *n as usize);
            }
            Chunk::Error(code, _, _) => return Err(*code),
            Chunk::None => {}
            Chunk::Status(..) => panic!("status chunk in a read reply"),
        }
    }
    assert!(
        covered.iter().all(|c| *c),
        "read reply does not cover the range"
    );
    Ok(out)
}

fn parse_chunk(kind: u16, p: &[u8]) -> Chunk {
    let u32_at = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().unwrap());
    match kind {
        0 => Chunk::None,
        1 => Chunk::Data(u64_at(0), p[8..].to_vec()),
        2 => Chunk::Hole(u64_at(0), u32_at(8)),
        5 => Chunk::Status(
            u32_at(0),
            p[4..]
                .chunks(8)
                .map(|d| {
                    (
                        u32::from_be_bytes(d[..4].try_into().unwrap()),
                        u32::from_be_bytes(d[4..].try_into().unwrap()),
                    )
                })
                .collect(),
        ),
        k if k & 0x8000 != 0 => {
            let n = u16::from_be_bytes(p[4..6].try_into().unwrap()) as usize;
            let msg = String::from_utf8(p[6..6 + n].to_vec()).unwrap();
            let off = (p.len() == 6 + n + 8).then(|| u64_at(6 + n));
            Chunk::Error(u32_at(0), msg, off)
        }
        k => panic!("unknown chunk type {k}"),
    }
}

/// Frames of an uncompressed stream by the spec's grammar (independent of restorefs): each
/// `(is_data, start, len)`.
pub fn frames(stream: &Path) -> Vec<(bool, u64, u64)> {
    let d = std::fs::read(stream).unwrap();
    let hex = |b: &[u8]| u64::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
    let mut pos = 40 + hex(&d[22..38]) as usize + 2;
    let mut out = Vec::new();
    loop {
        let (kind, start, len) = (
            &d[pos..pos + 4],
            hex(&d[pos + 5..pos + 21]),
            hex(&d[pos + 22..pos + 38]),
        );
        match kind {
            b"data" => {
                out.push((true, start, len));
                pos += 40 + len as usize + 2;
            }
            b"zero" => {
                out.push((false, start, len));
                pos += 40;
            }
            _ => break,
        }
    }
    out
}

/// Data ranges after applying the streams in order (data frames add, zero frames punch).
pub fn model_data_ranges(streams: &[PathBuf]) -> Vec<(u64, u64)> {
    let mut data: BTreeSet<(u64, u64)> = BTreeSet::new();
    let punch = |set: &mut BTreeSet<(u64, u64)>, s: u64, e: u64| {
        let hit: Vec<_> = set.iter().copied().filter(|r| r.0 < e && s < r.1).collect();
        for r in hit {
            set.remove(&r);
            if r.0 < s {
                set.insert((r.0, s));
            }
            if e < r.1 {
                set.insert((e, r.1));
            }
        }
    };
    for stream in streams {
        for (is_data, start, len) in frames(stream) {
            punch(&mut data, start, start + len);
            if is_data {
                data.insert((start, start + len));
            }
        }
    }
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in data {
        match merged.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// `qemu-img convert` of the NBD export at `uri` to the raw file `out`.
pub fn convert(uri: &str, out: &Path) {
    common::tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            uri,
            out.to_str().unwrap(),
        ],
    );
}
