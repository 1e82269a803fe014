//! A bucket that misbehaves: through a proxy that drops connections, delays, answers 500/503
//! and cuts bodies short, every read of a FUSE mount of the bucket returns the right bytes or
//! EIO, never wrong bytes, and the mount survives; an object replaced under a running mount
//! gives errors for that object only, never a mix of old and new bytes.

mod common;
mod s3proxy;
mod s3server;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::writer::{Frame, StreamSpec};
use common::*;
use s3proxy::{Faults, S3Proxy};
use s3server::S3Server;

const MIB: usize = 1 << 20;
const EIO: i32 = 5;

/// Small blocks, little prefetch and a small cache, so that reads map to many ranged GETs.
const S3_ARGS: &[&str] = &[
    "--s3-block-size",
    "1M",
    "--s3-prefetch",
    "1",
    "--cache-size",
    "8M",
];

/// A full virtnbdbackup stream of `img` as one data frame (lz4: in chunks of `lz4` bytes), so
/// that scanning it reads its first and last blocks only.
fn stream(img: &[u8], lz4: Option<usize>) -> Vec<u8> {
    let mut s = StreamSpec::new("vda", img.len() as u64, "2026-05-01T10:00:00.000001");
    s.lz4_chunk = lz4;
    s.frames = vec![Frame::Data(0, img.to_vec())];
    s.to_bytes()
}

/// A pseudo-random (offset, length) within `size`: lengths from 1 byte to 512 KiB.
fn range(seed: u64, size: usize) -> (usize, usize) {
    let r = random_bytes(seed, 16);
    let n = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap()) as usize;
    let len = 1 + n(&r[..8]) % (512 << 10);
    let off = n(&r[8..]) % (size - len);
    (off, len)
}

/// Reads `len` bytes at `off`: `Ok` with what came back, `Err` with the errno.
fn read_at(f: &File, off: usize, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], (off + got) as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(e.raw_os_error().unwrap_or(-1)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Opens the image of `set` in the mount with O_DIRECT: the kernel's page cache out of the
/// way, every read reaches the daemon.
fn open_image(m: &Mounted, set: &str) -> File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.join(&format!("{set}/latest/vda.raw")))
        .unwrap()
}

/// Uploads one set per (name, image, lz4) under `bucket/backups`.
fn upload_sets(s3: &S3Server, bucket: &str, sets: &[(&str, &[u8], Option<usize>)]) {
    let tmp = scratch();
    for (name, img, lz4) in sets {
        std::fs::create_dir_all(tmp.path().join(name)).unwrap();
        std::fs::write(
            tmp.path().join(name).join("vda.full.data"),
            stream(img, *lz4),
        )
        .unwrap();
    }
    s3.create_bucket(bucket);
    s3.upload_dir(bucket, "backups", tmp.path());
}

#[test]
fn every_read_through_a_faulty_server_is_right_or_eio() {
    if !fuse_available("every_read_through_a_faulty_server_is_right_or_eio") {
        return;
    }
    let Some(s3) = S3Server::start("every_read_through_a_faulty_server_is_right_or_eio") else {
        return;
    };
    let image = random_bytes(21, 32 * MIB);
    let sets: &[(&str, &[u8], Option<usize>)] =
        &[("plain", &image, None), ("lz4", &image, Some(MIB))];
    upload_sets(&s3, "flaky", sets);
    let proxy = S3Proxy::start(s3.addr(), Faults::none(), 2026);
    let m = s3.mount_via(&proxy.endpoint(), "s3://flaky/backups", S3_ARGS);
    let files: Vec<File> = ["plain", "lz4"].iter().map(|s| open_image(&m, s)).collect();

    let mut faults = Faults::each(0.15);
    faults.delay_range = (Duration::from_millis(50), Duration::from_millis(250));
    proxy.set_faults(faults);
    let (mut right, mut eio) = (0, 0);
    for i in 0..80u64 {
        let f = &files[i as usize % 2];
        let (off, len) = range(i, image.len());
        match read_at(f, off, len) {
            Ok(got) => {
                assert_eq!(got.len(), len, "read {i} at {off}: short");
                assert!(
                    got == image[off..off + len],
                    "read {i}: WRONG BYTES at {off}+{len}"
                );
                right += 1;
            }
            Err(e) => {
                assert_eq!(e, EIO, "read {i} at {off}+{len}: errno {e}");
                eio += 1;
            }
        }
    }
    let c = proxy.counts();
    eprintln!("faulty reads: {right} right, {eio} EIO; proxy: {c:?}");
    for (n, kind) in [
        (c.dropped, "dropped"),
        (c.delayed, "delayed"),
        (c.internal_errors, "500"),
        (c.slow_downs, "503"),
        (c.truncated, "truncated"),
    ] {
        assert!(n > 0, "no {kind} fault was injected: {c:?}");
    }
    assert!(right > 0, "no read got through the retries: {c:?}");

    // The server heals: the same mount serves every byte again.
    proxy.set_faults(Faults::none());
    for (set, f) in ["plain", "lz4"].iter().zip(&files) {
        let all = read_at(f, 0, image.len()).unwrap_or_else(|e| panic!("{set}: errno {e}"));
        assert!(all == image, "{set}: wrong bytes after the faults");
    }
    drop(files);
    let mut m = m;
    let log = m.stop();
    if eio > 0 {
        assert!(
            log.contains("vda.full.data"),
            "failed reads are logged with the key: {log}"
        );
    }
}

#[test]
fn a_replaced_object_gives_eio_for_that_object_only() {
    if !fuse_available("a_replaced_object_gives_eio_for_that_object_only") {
        return;
    }
    let Some(s3) = S3Server::start("a_replaced_object_gives_eio_for_that_object_only") else {
        return;
    };
    let (old, other) = (random_bytes(31, 16 * MIB), random_bytes(32, 16 * MIB));
    upload_sets(&s3, "live", &[("a", &old, None), ("b", &other, None)]);
    let m = s3.mount(
        "s3://live/backups",
        &["--s3-block-size", "1M", "--s3-prefetch", "0"],
    );
    let (a, b) = (open_image(&m, "a"), open_image(&m, "b"));
    assert!(read_at(&a, 0, MIB).unwrap() == old[..MIB]);

    // Same size and layout, other bytes: only the ETag tells the objects apart.
    let new = random_bytes(33, 16 * MIB);
    s3.put("live", "backups/a/vda.full.data", &stream(&new, None));
    let mut errors = 0;
    for i in 0..16 {
        let (off, len) = (i * MIB + 4096, 64 << 10);
        match read_at(&a, off, len) {
            Ok(got) => {
                assert!(
                    got != new[off..off + len],
                    "a at {off}: served the NEW object's bytes"
                );
                assert!(
                    got == old[off..off + len],
                    "a at {off}: mixed or wrong bytes"
                );
            }
            Err(e) => {
                assert_eq!(e, EIO, "a at {off}: errno {e}");
                errors += 1;
            }
        }
    }
    assert!(errors > 0, "reads of the replaced object never failed");
    assert!(
        read_at(&b, 0, other.len()).unwrap() == other,
        "the other object still reads"
    );
    assert!(Path::new(&m.join("b/latest/vda.raw")).exists());
}
