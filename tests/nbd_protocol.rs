//! The NBD server at the protocol level, with a raw client written from the protocol document:
//! replies and errors of every command, hole chunks and block status against the streams'
//! frames, many pipelined clients at once, and hostile clients that must get errors or a closed
//! connection while the server stays up.

mod common;
mod nbd_client;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nbd_client::*;

fn source() -> PathBuf {
    data_dir().join("virtnbd")
}

const FULL: &str = "v1-plain/2026-11-22T02:03:55_full/vda.raw";

/// The image of `export`, written by `restorefs export` and checked against the MANIFEST hash.
fn reference(export: &str, point: &str, disk: &str, chain: &str) -> Vec<u8> {
    let tmp = scratch();
    let out = tmp.path().join("ref.raw");
    run_ok(&[
        "export",
        source().to_str().unwrap(),
        export,
        "-o",
        out.to_str().unwrap(),
    ]);
    let want = manifest_points()
        .into_iter()
        .find(|p| p.chain == chain && p.point == point && p.disk == disk)
        .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(sha256(&bytes), want.sha256, "{export}");
    bytes
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn commands_answer_as_the_protocol_says() {
    let served = Served::new(&source(), &[]);
    let want = reference(FULL, "p0-full", "vda", "v1-plain");
    let data = model_data_ranges(&[source().join("v1-plain/vda.full.data")]);
    let (d0, d1) = data[0];
    let hole = (d1, data[1].0);
    let mut c = Client::connect(&served.socket, FULL, true, true);
    assert_eq!(c.size, want.len() as u64);
    assert_eq!(c.flags & 0b11, 0b11, "has flags, read-only");

    // A read over data then a hole: data chunks, then one hole chunk, and the right bytes.
    let (at, len) = (d1 - 4096, 8192 + 4096);
    c.send(0, CMD_READ, 1, at, len, &[]);
    let r = c.recv();
    assert_eq!(
        r.chunks.last(),
        Some(&Chunk::Hole(d1, 8192)),
        "{:?}",
        r.chunks.len()
    );
    assert_eq!(
        assemble(&r, at, len).unwrap(),
        want[at as usize..(at + u64::from(len)) as usize]
    );
    // A read inside a hole is one hole chunk.
    let r = {
        c.send(0, CMD_READ, 2, hole.0, 1 << 20, &[]);
        c.recv()
    };
    assert_eq!(r.chunks, vec![Chunk::Hole(hole.0, 1 << 20)]);
    // Don't fragment: one data chunk with every byte.
    c.send(FLAG_DF, CMD_READ, 3, d0, (hole.0 - d0 + 4096) as u32, &[]);
    let r = c.recv();
    assert_eq!(r.chunks.len(), 1);
    assert!(
        matches!(&r.chunks[0], Chunk::Data(o, d) if *o == d0 && d[..] == want[d0 as usize..(hole.0 + 4096) as usize])
    );

    // Block status: the streams' data and holes, or one extent when asked for one.
    c.send(0, CMD_BLOCK_STATUS, 4, 0, 32 << 20, &[]);
    let Chunk::Status(id, extents) = &c.recv().chunks[0] else {
        panic!("no status chunk")
    };
    assert_eq!(*id, 1);
    let mut pos = 0u64;
    let mut got_data = Vec::new();
    for (len, state) in extents {
        assert!(*state == 0 || *state == 3, "{state}");
        if *state == 0 {
            got_data.push((pos, pos + u64::from(*len)));
        }
        pos += u64::from(*len);
    }
    assert_eq!(pos, 32 << 20);
    let model: Vec<(u64, u64)> = data
        .iter()
        .filter(|r| r.0 < 32 << 20)
        .map(|r| (r.0, r.1.min(32 << 20)))
        .collect();
    assert_eq!(got_data, model);
    c.send(FLAG_REQ_ONE, CMD_BLOCK_STATUS, 5, hole.0, 1 << 20, &[]);
    assert_eq!(
        c.recv().chunks,
        vec![Chunk::Status(1, vec![(1 << 20, 3)])],
        "a hole, cut at the request's end"
    );

    // Writes are refused (their payload skipped), flush succeeds, bad ranges are refused.
    let errors = |c: &mut Client, flags, kind, off, len, payload: &[u8]| {
        c.send(flags, kind, 9, off, len, payload);
        match &c.recv().chunks[..] {
            [Chunk::Error(code, msg, _)] => {
                assert!(!msg.is_empty());
                *code
            }
            [] => 0,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(errors(&mut c, 0, CMD_WRITE, 0, 4096, &[0xee; 4096]), EPERM);
    assert_eq!(errors(&mut c, 0, CMD_TRIM, 0, 4096, &[]), EPERM);
    assert_eq!(errors(&mut c, 0, CMD_WRITE_ZEROES, 0, 4096, &[]), EPERM);
    assert_eq!(errors(&mut c, 0, CMD_FLUSH, 0, 0, &[]), 0);
    let size = c.size;
    assert_eq!(errors(&mut c, 0, CMD_READ, size - 512, 1024, &[]), EINVAL);
    assert_eq!(errors(&mut c, 0, CMD_READ, u64::MAX, 4096, &[]), EINVAL);
    assert_eq!(errors(&mut c, 0, CMD_READ, 0, 64 << 20, &[]), EOVERFLOW);
    assert_eq!(errors(&mut c, 0, CMD_BLOCK_STATUS, size, 4096, &[]), EINVAL);
    assert_eq!(errors(&mut c, 0, 99, 0, 0, &[]), EINVAL);
    // Still in step after all that.
    assert_eq!(c.read(0, 4096).unwrap(), want[..4096]);
    c.send(0, CMD_DISC, 10, 0, 0, &[]);
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the server closes after NBD_CMD_DISC");

    // Without structured replies: simple replies with the bytes; errors as simple replies.
    let mut c = Client::connect(&served.socket, FULL, false, false);
    assert_eq!(
        c.read(hole.0 - 8192, 16384).unwrap(),
        want[(hole.0 - 8192) as usize..(hole.0 + 8192) as usize]
    );
    assert_eq!(c.read(c.size, 1), Err(EINVAL));
    c.send(0, CMD_BLOCK_STATUS, 11, 0, 4096, &[]);
    assert_eq!(c.recv().error, EINVAL, "no context was selected");
}

#[test]
fn options_answer_as_the_protocol_says() {
    let served = Served::new(&source(), &[]);
    let mut s = greet(&served.socket, 3);
    // INFO describes without ending the handshake; unknown names are ERR_UNKNOWN.
    send_option(&mut s, OPT_INFO, &go_data(FULL));
    let r = option_replies(&mut s, OPT_INFO);
    assert_eq!(r.last().unwrap().0, REP_ACK);
    let sizes = r
        .iter()
        .find(|(k, d)| *k == REP_INFO && d[..2] == [0, 3])
        .unwrap();
    let max = u32::from_be_bytes(sizes.1[10..14].try_into().unwrap());
    assert!(max >= 1 << 20, "max block size {max}");
    send_option(&mut s, OPT_INFO, &go_data("v1-plain/nosuch/vda.raw"));
    let r = option_replies(&mut s, OPT_INFO);
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r[0].1).contains("nosuch"));
    // Meta contexts: listed; setting them needs structured replies first.
    send_option(&mut s, OPT_LIST_META_CONTEXT, &meta_data(FULL, &[]));
    let r = option_replies(&mut s, OPT_LIST_META_CONTEXT);
    assert_eq!(r.len(), 2);
    assert_eq!(&r[0].1[4..], b"base:allocation");
    send_option(
        &mut s,
        OPT_SET_META_CONTEXT,
        &meta_data(FULL, &["base:allocation"]),
    );
    assert_eq!(
        option_replies(&mut s, OPT_SET_META_CONTEXT)[0].0,
        REP_ERR_INVALID
    );
    send_option(&mut s, 4242, b"x");
    assert_eq!(option_replies(&mut s, 4242)[0].0, REP_ERR_UNSUP);
    // The old way in: NBD_OPT_EXPORT_NAME, answered with size and flags (no zeroes asked).
    send_option(&mut s, OPT_EXPORT_NAME, FULL.as_bytes());
    let size = be64(&mut s);
    let flags = be16(&mut s);
    assert_eq!(size, 64 << 20);
    assert_eq!(flags & 2, 2, "read-only");
    let mut c = Client::from_stream(s, size, flags, false);
    assert_eq!(c.read(0, 512).unwrap().len(), 512);
    // ABORT ends the handshake.
    let mut s = greet(&served.socket, 3);
    send_option(&mut s, OPT_ABORT, &[]);
    assert_eq!(option_replies(&mut s, OPT_ABORT)[0].0, REP_ACK);
    assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0);
}

#[test]
fn eight_pipelined_clients_read_random_ranges_of_several_exports() {
    let served = Served::new(&source(), &[]);
    let images = [
        ("v1-lz4/latest/vda.raw", "p5-inc3", "vda", "v1-lz4"),
        ("v1-plain/latest/vdb.raw", "p5-inc3", "vdb", "v1-plain"),
        (FULL, "p0-full", "vda", "v1-plain"),
    ];
    let refs: Vec<(&str, Vec<u8>)> = images
        .iter()
        .map(|(e, p, d, c)| (*e, reference(e, p, d, c)))
        .collect();
    let out_of_order = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let out_of_order = &out_of_order;
            let (export, want) = &refs[t as usize % refs.len()];
            let socket = served.socket.clone();
            scope.spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + t * 7919);
                let mut c = Client::connect(&socket, export, t % 2 == 0, false);
                for _round in 0..12 {
                    let mut asked = Vec::new();
                    for i in 0..8u64 {
                        let len = 1 + rng.below(if i == 0 { 4 << 20 } else { 128 << 10 }) as u32;
                        let off = rng.below(c.size - u64::from(len));
                        c.send(0, CMD_READ, i, off, len, &[]);
                        asked.push((off, len));
                    }
                    for n in 0..8 {
                        let r = c.recv();
                        if r.cookie != n {
                            out_of_order.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        let (off, len) = asked[r.cookie as usize];
                        let got = assemble(&r, off, len).unwrap();
                        assert!(
                            got[..] == want[off as usize..(off + u64::from(len)) as usize],
                            "{export} {off}+{len}"
                        );
                    }
                }
            });
        }
    });
    // The first request of each batch is the largest: smaller ones overtake it.
    assert!(
        out_of_order.into_inner() > 0,
        "replies came in request order only"
    );
}

/// Sends `bytes` on a fresh connection after the greeting (with client flags `flags` first
/// unless `None`), then reads until the server closes or 10 s pass: what it answered.
fn hostile(socket: &Path, flags: Option<u32>, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    if let Some(f) = flags {
        s.write_all(&f.to_be_bytes()).unwrap();
    }
    // The server may close before reading everything.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server neither answered nor closed: {e}"),
    }
    got
}

fn option(opt: u32, len: u32, data: &[u8]) -> Vec<u8> {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(data);
    m
}

fn request(kind: u16, off: u64, len: u32) -> Vec<u8> {
    let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&1u64.to_be_bytes());
    m.extend_from_slice(&off.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m
}

/// Option reply types found at the start of `bytes`, and what follows them.
fn options_then(bytes: &[u8]) -> (Vec<u32>, &[u8]) {
    let mut out = Vec::new();
    let mut p = 0;
    while p + 20 <= bytes.len() && bytes[p..p + 8] == OPT_REPLY_MAGIC.to_be_bytes() {
        out.push(u32::from_be_bytes(
            bytes[p + 12..p + 16].try_into().unwrap(),
        ));
        p += 20 + u32::from_be_bytes(bytes[p + 16..p + 20].try_into().unwrap()) as usize;
    }
    (out, &bytes[p.min(bytes.len())..])
}

fn reply_types(bytes: &[u8]) -> Vec<u32> {
    options_then(bytes).0
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn hostile_clients_get_errors_or_a_closed_connection_and_the_server_stays_up() {
    let mut served = Served::new(&source(), &[]);
    let sock = served.socket.clone();
    let go = |name: &str| option(OPT_GO, go_data(name).len() as u32, &go_data(name));
    let in_transmission = |req: Vec<u8>| {
        let mut m = option(OPT_STRUCTURED_REPLY, 0, &[]);
        m.extend(go(FULL));
        m.extend(req);
        m
    };
    // Unknown client flags, or not fixed newstyle: closed before any option.
    assert!(hostile(&sock, Some(0xffff_ffff), &go(FULL)).is_empty());
    assert!(hostile(&sock, Some(0), &go(FULL)).is_empty());
    // A wrong option magic; an option longer than anything the server skips.
    assert!(hostile(&sock, Some(3), b"IHAVEOPX\0\0\0\x07\0\0\0\0").is_empty());
    assert!(hostile(&sock, Some(3), &option(OPT_GO, u32::MAX, b"")).is_empty());
    // A long option is skipped and refused; the handshake goes on.
    let mut long = option(OPT_LIST, 100_000, &[0x41; 100_000]);
    long.extend(go(FULL));
    assert_eq!(
        reply_types(&hostile(&sock, Some(3), &long))[..2],
        [REP_ERR_TOO_BIG, 3]
    );
    // Options out of order, malformed or unknown get option errors.
    let meta = meta_data(FULL, &["base:allocation"]);
    let got = hostile(
        &sock,
        Some(3),
        &option(OPT_SET_META_CONTEXT, meta.len() as u32, &meta),
    );
    assert_eq!(reply_types(&got), [REP_ERR_INVALID]);
    let mut bad_go = 1000u32.to_be_bytes().to_vec();
    bad_go.extend_from_slice(b"short");
    let got = hostile(
        &sock,
        Some(3),
        &option(OPT_GO, bad_go.len() as u32, &bad_go),
    );
    assert_eq!(reply_types(&got), [REP_ERR_INVALID]);
    let huge_name = [0xff, 0xff, 0xff, 0xff, 0, 0];
    let got = hostile(&sock, Some(3), &option(OPT_INFO, 6, &huge_name));
    assert_eq!(reply_types(&got), [REP_ERR_INVALID]);
    let got = hostile(&sock, Some(3), &option(OPT_STRUCTURED_REPLY, 3, b"abc"));
    assert_eq!(reply_types(&got), [REP_ERR_INVALID]);
    let got = hostile(&sock, Some(3), &option(OPT_LIST, 1, b"x"));
    assert_eq!(reply_types(&got), [REP_ERR_INVALID]);
    // An unknown export by the old option has no error reply: closed.
    assert!(hostile(&sock, Some(3), &option(OPT_EXPORT_NAME, 3, b"../")).is_empty());
    // Garbage, truncated messages, nothing at all.
    let noise: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(hostile(&sock, Some(3), &noise).is_empty());
    hostile(&sock, Some(3), &option(OPT_GO, 40, b"abc"));
    hostile(&sock, None, &[]);
    // In transmission: a wrong request magic, a huge write, half a request: closed.
    for req in [
        b"\x25\x60\x95\x14".repeat(7),
        request(CMD_WRITE, 0, u32::MAX),
        request(CMD_READ, 0, 4096)[..20].to_vec(),
    ] {
        let got = hostile(&sock, Some(3), &in_transmission(req));
        assert_eq!(reply_types(&got), [REP_ACK, REP_INFO, REP_INFO, REP_ACK]);
    }
    // Huge lengths and offsets are refused without allocating them.
    for (kind, off, len) in [
        (CMD_READ, 0, u32::MAX),
        (CMD_READ, u64::MAX - 10, 4096),
        (CMD_BLOCK_STATUS, u64::MAX, u32::MAX),
    ] {
        let got = hostile(&sock, Some(3), &in_transmission(request(kind, off, len)));
        let (_, rest) = options_then(&got);
        assert!(rest.len() > 20, "{kind} {off} {len}: no reply");
        assert_eq!(rest[..4], CHUNK_MAGIC.to_be_bytes());
        let chunk_type = u16::from_be_bytes([rest[6], rest[7]]);
        assert_eq!(chunk_type & 0x8000, 0x8000, "an error chunk");
    }
    assert!(served.alive(), "the server died");
    assert!(
        rss_kib(served.pid()) < 512 << 10,
        "server RSS {} KiB",
        rss_kib(served.pid())
    );
    // A well-behaved client is served as before.
    let want = reference(FULL, "p0-full", "vda", "v1-plain");
    let mut c = Client::connect(&sock, FULL, true, true);
    assert_eq!(c.read(0, 1 << 20).unwrap(), want[..1 << 20]);
    let tmp = scratch();
    let out = tmp.path().join("after.raw");
    nbd_client::convert(&served.uri(FULL), &out);
    assert_eq!(sha256_file(&out), sha256(&want));
}

#[test]
fn a_client_that_stops_reading_holds_up_no_one_else() {
    use common::writer::{Frame, StreamSpec};
    // One 16 MiB extent in one LZ4 frame: readers of any part share its decoding.
    let src = scratch();
    let set = src.path().join("big");
    std::fs::create_dir(&set).unwrap();
    let mut rng = Rng(0x5eed);
    let data: Vec<u8> = (0..16u64 << 20)
        .map(|i| {
            if i % 4096 < 2048 {
                0
            } else {
                rng.below(256) as u8
            }
        })
        .collect();
    let mut spec = StreamSpec::new("vda", 16 << 20, "2026-11-22T02:00:00.000001");
    spec.lz4_chunk = Some(16 << 20);
    spec.frames.push(Frame::Data(0, data.clone()));
    std::fs::write(set.join("vda.full.data"), spec.to_bytes()).unwrap();
    let served = Served::new(src.path(), &[]);
    let export = "big/latest/vda.raw";
    // Reads whose replies are never read: the server's workers for this connection block
    // writing them, a few MiB into the frame.
    let mut stalled = Client::connect(&served.socket, export, true, false);
    for i in 0..16u64 {
        stalled.send(0, CMD_READ, i, i << 20, 1 << 20, &[]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let tmp = scratch();
    let out = tmp.path().join("other.raw");
    let mut other = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &served.uri(export)])
        .arg(&out)
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = other.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = other.kill();
            panic!("another client is held up by one that stopped reading");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert_eq!(sha256_file(&out), sha256(&data));
    drop(stalled);
}
