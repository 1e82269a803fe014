//! LZ4 decoder checkpoints through real mounts: random reads in the middle of LZ4 frames with
//! linked blocks (as virtnbdbackup writes them, by the test's own writer) give the model's bytes
//! without checkpoints, with checkpoints that `verify` built and a remount uses, and with
//! damaged checkpoint files, which are detected, removed and never served from.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::writer::{Frame, StreamSpec};

const MIB: usize = 1 << 20;

/// Compressible, not trivially: runs and noise (xorshift).
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i >> 8) % 4 == 0 {
                x as u8
            } else {
                (i >> 11) as u8
            }
        })
        .collect()
}

/// A full backup (24 MiB of data in 8 MiB LZ4 frames, then a hole) and one incremental (a
/// 2 MiB frame in the hole); returns the latest point's bytes, applied by hand.
fn write_set(dir: &Path) -> Vec<u8> {
    let size = 40 * MIB as u64;
    let mut full = StreamSpec::new("vda", size, "2026-03-01T10:00:00.000001");
    full.lz4_chunk = Some(8 * MIB);
    let data = bytes(7, 24 * MIB);
    full.frames.push(Frame::Data(0, data.clone()));
    full.frames
        .push(Frame::Zero(24 * MIB as u64, 16 * MIB as u64));
    let mut inc = StreamSpec::new("vda", size, "2026-03-01T11:00:00.000001");
    inc.lz4_chunk = Some(8 * MIB);
    inc.incremental = true;
    inc.parent = "virtnbdbackup.0".into();
    inc.checkpoint = "virtnbdbackup.1".into();
    let at = 26 * MIB + 4096;
    let patch = bytes(11, 2 * MIB);
    inc.frames.push(Frame::Data(at as u64, patch.clone()));
    std::fs::write(dir.join("vda.full.data"), full.to_bytes()).unwrap();
    std::fs::write(dir.join("vda.inc.virtnbdbackup.1.data"), inc.to_bytes()).unwrap();
    let mut img = vec![0u8; size as usize];
    img[..data.len()].copy_from_slice(&data);
    img[at..at + patch.len()].copy_from_slice(&patch);
    img
}

/// 4 KiB reads, one in each MiB of the data from the last: inside checkpoint segments (read
/// from their checkpoint), or with `across`, across their ends (read in parts from two).
fn check_reads(file: &Path, want: &[u8], across: bool) {
    let f = std::fs::File::open(file).unwrap();
    let mut buf = vec![0u8; 4096];
    for mib in (0..29).rev() {
        let at = mib * MIB + if across { MIB - 2048 } else { 12345 };
        f.read_exact_at(&mut buf, at as u64).unwrap();
        assert!(buf == want[at..at + 4096], "wrong bytes at {at}");
    }
}

/// Both kinds of reads.
fn check_all(file: &Path, want: &[u8]) {
    check_reads(file, want, false);
    check_reads(file, want, true);
}

fn checkpoint_files(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache.join("index"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "lz4cp"));
    v.sort();
    v
}

#[test]
fn random_reads_in_lz4_frames_with_and_without_checkpoints() {
    if !common::fuse_available("random_reads_in_lz4_frames_with_and_without_checkpoints") {
        return;
    }
    let tmp = common::scratch();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("vm")).unwrap();
    let want = write_set(&src.join("vm"));
    let cache = tmp.path().join("cache");
    let cache_arg = cache.to_str().unwrap();
    let mount = || common::Mounted::new(&src, &["--cache-dir", cache_arg]);

    // No checkpoints yet: every read decodes its frame from the start.
    let mut m = mount();
    check_all(&m.join("vm/latest/vda.raw"), &want);
    m.stop();

    // `verify` decodes every frame whole and keeps checkpoints for each: 3 + 1 frames.
    common::run_ok(&["verify", src.to_str().unwrap(), "--cache-dir", cache_arg]);
    let files = checkpoint_files(&cache);
    assert_eq!(files.len(), 4, "{files:?}");
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len() as usize;
        assert!(len <= 8 * MIB / 16 + 1024, "{}: {len} bytes", f.display());
    }
    let kept: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();

    // A remount reads through them, and they check out: none is removed.
    let mut m = mount();
    check_all(&m.join("vm/latest/vda.raw"), &want);
    m.stop();
    assert_eq!(checkpoint_files(&cache), files);

    // Damage each: a dictionary byte in the middle, and a table byte in the first.
    for (f, good) in files.iter().zip(&kept) {
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 0x01;
        std::fs::write(f, bad).unwrap();
    }
    let mut bad = std::fs::read(&files[0]).unwrap();
    bad[50] ^= 0x80;
    std::fs::write(&files[0], bad).unwrap();
    let mut m = mount();
    let image = m.join("vm/latest/vda.raw");
    check_reads(&image, &want, false);
    // Each damage was found and its file removed; a frame then decoded whole from its start
    // (the first read of the frame whose table is damaged) writes its checkpoints again.
    for (f, good) in files.iter().zip(&kept) {
        if f.exists() {
            assert!(
                std::fs::read(f).unwrap() == *good,
                "{} kept damaged",
                f.display()
            );
        }
    }
    // Reads across segment ends decode every frame whole: all are written again, intact.
    check_reads(&image, &want, true);
    m.stop();
    for (f, good) in files.iter().zip(&kept) {
        assert!(
            std::fs::read(f).unwrap() == *good,
            "{} not rewritten",
            f.display()
        );
    }
}
