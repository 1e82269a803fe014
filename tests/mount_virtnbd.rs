//! The mount, for real: every reference point read through FUSE, `latest`/`at/`/`--as-of`,
//! concurrent readers, holes, read-only answers, damaged files, and recovery after `kill -9`.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn source() -> PathBuf {
    data_dir().join("virtnbd")
}

/// The test's own randomness.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Opens bypassing the page cache, so every read reaches restorefs.
fn open_direct(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap()
}

/// Random reads of `path` (many crossing 64 KiB extent boundaries) compared with `want`.
fn random_ranges(path: &Path, want: &[u8], rng: &mut Rng, n: usize) {
    let f = open_direct(path);
    let size = want.len() as u64;
    for _ in 0..n {
        let off = if rng.below(2) == 0 {
            (rng.below(size / 65536 + 1) * 65536)
                .saturating_sub(rng.below(8192))
                .min(size - 1)
        } else {
            rng.below(size)
        };
        let len = (1 + rng.below(300_000)).min(size - off) as usize;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf == want[off as usize..off as usize + len],
            "{} at {off}+{len}",
            path.display()
        );
    }
}

#[test]
fn every_reference_point_reads_back_through_the_mount() {
    if !fuse_available("every_reference_point_reads_back_through_the_mount") {
        return;
    }
    let m = Mounted::new(&source(), &[]);
    let doc = ls_json(&source());
    let mut rng = Rng(0x5eed);
    for mp in manifest_points() {
        let path = m.join(&point_path(&doc, &mp));
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(sha256(&whole), mp.sha256, "{mp:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), mp.virtual_size);
        random_ranges(&path, &whole, &mut rng, 40);
    }
}

#[test]
fn latest_at_and_as_of_resolve() {
    if !fuse_available("latest_at_and_as_of_resolve") {
        return;
    }
    let m = Mounted::new(&source(), &[]);
    let link = |p: &str| std::fs::read_link(m.join(p)).map(|t| t.to_string_lossy().into_owned());
    assert_eq!(link("v1-plain/latest").unwrap(), "2026-11-22T02:04:19_inc");
    assert_eq!(
        link("v1-plain/at/2026-11-22T02:04:05").unwrap(),
        "../2026-11-22T02:04:04_diff"
    );
    // A time to the second covers that whole second: the name's own time finds the point.
    assert_eq!(
        link("v1-plain/at/2026-11-22T02:04:04").unwrap(),
        "../2026-11-22T02:04:04_diff"
    );
    assert_eq!(
        link("v1-plain/at/2026-11-22T02:04:03").unwrap(),
        "../2026-11-22T02:03:59_inc"
    );
    assert_eq!(
        link("v1-plain/at/2026-11-23").unwrap(),
        "../2026-11-22T02:04:19_inc"
    );
    assert!(
        link("v1-plain/at/2026-11-21T23:00").is_err(),
        "nothing before the first point"
    );
    assert!(link("v1-plain/at/not-a-time").is_err());
    assert_eq!(
        std::fs::read_dir(m.join("v1-plain/at")).unwrap().count(),
        0,
        "at/ lists nothing"
    );
    let vdb = std::fs::read(m.join("v1-plain/at/2026-11-22T02:04:05/vdb.raw")).unwrap();
    assert_eq!(
        sha256(&vdb),
        "6d1a22e2152a8c4af306cab09147aa91c517a589fdf63ce4f019c4741bc0d3ee"
    );
    drop(m);

    let m = Mounted::new(&source(), &["--as-of", "2026-11-22T02:04:10"]);
    let mut names: Vec<String> = std::fs::read_dir(m.join("v1-plain"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "2026-11-22T02:03:55_full",
            "2026-11-22T02:03:59_inc",
            "2026-11-22T02:04:04_diff",
            "2026-11-22T02:04:09_diff",
            "at",
            "latest"
        ]
    );
    assert_eq!(
        std::fs::read_link(m.join("v1-plain/latest"))
            .unwrap()
            .to_str(),
        Some("2026-11-22T02:04:09_diff")
    );
    assert!(
        !m.join("v1-plain/2026-11-22T02:04:14_inc").exists(),
        "later points are hidden"
    );
    assert_eq!(
        std::fs::read_dir(m.join("v1-lz4")).unwrap().count(),
        0,
        "v1-lz4 is all later"
    );
}

#[test]
fn eight_threads_read_random_ranges_of_several_images() {
    if !fuse_available("eight_threads_read_random_ranges_of_several_images") {
        return;
    }
    // A cache smaller than the chunks in use, so they are evicted and decoded again while
    // other threads read them.
    let m = Mounted::new(&source(), &["--cache-size", "48M", "--threads", "4"]);
    let doc = ls_json(&source());
    let picks = [
        ("v1-lz4", "p5-inc3", "vda"),
        ("v1-lz4", "p1-inc1", "vda"),
        ("v1-plain", "p5-inc3", "vda"),
        ("v1-plain", "p0-full", "vdb"),
        ("v1-lz4", "p3-diff2", "vda"),
    ];
    let tmp = scratch();
    let images: Vec<(PathBuf, Vec<u8>)> = picks
        .iter()
        .map(|(chain, point, disk)| {
            let mp = manifest_points()
                .into_iter()
                .find(|p| p.chain == *chain && p.point == *point && p.disk == *disk)
                .unwrap();
            let rel = point_path(&doc, &mp);
            // The expectation comes from `export`, itself checked against the MANIFEST.
            let out = tmp.path().join(rel.replace('/', "_"));
            run_ok(&[
                "export",
                source().to_str().unwrap(),
                &rel,
                "-o",
                out.to_str().unwrap(),
            ]);
            let want = std::fs::read(&out).unwrap();
            assert_eq!(sha256(&want), mp.sha256);
            (m.join(&rel), want)
        })
        .collect();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let images = &images;
            s.spawn(move || {
                let mut rng = Rng(0x1234_5678 + t * 7919);
                for _ in 0..60 {
                    let (path, want) = &images[rng.below(images.len() as u64) as usize];
                    random_ranges(path, want, &mut rng, 3);
                }
            });
        }
    });
}

/// Data ranges of an uncompressed full stream, by the spec's grammar (independent of restorefs).
fn data_ranges(stream: &Path) -> Vec<(u64, u64)> {
    let d = std::fs::read(stream).unwrap();
    let hex = |b: &[u8]| u64::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
    let mut pos = 40 + hex(&d[22..38]) as usize + 2;
    let mut out: Vec<(u64, u64)> = Vec::new();
    loop {
        let (kind, start, len) = (
            &d[pos..pos + 4],
            hex(&d[pos + 5..pos + 21]),
            hex(&d[pos + 22..pos + 38]),
        );
        match kind {
            b"data" => {
                match out.last_mut() {
                    Some(last) if last.1 == start => last.1 = start + len,
                    _ => out.push((start, start + len)),
                }
                pos += 40 + len as usize + 2;
            }
            b"zero" => pos += 40,
            _ => break,
        }
    }
    out
}

fn lseek(f: &File, off: u64, whence: i32) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on an open descriptor owned by `f`; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    (r >= 0).then_some(r as u64)
}

#[test]
fn holes_answer_seek_and_stay_holes_in_copies() {
    if !fuse_available("holes_answer_seek_and_stay_holes_in_copies") {
        return;
    }
    let m = Mounted::new(&source(), &[]);
    let want = data_ranges(&source().join("v1-plain/vda.full.data"));
    let data_bytes: u64 = want.iter().map(|r| r.1 - r.0).sum();
    let image = m.join("v1-plain/2026-11-22T02:03:55_full/vda.raw");
    let f = File::open(&image).unwrap();
    let size = f.metadata().unwrap().len();
    let mut got = Vec::new();
    let mut pos = 0;
    while let Some(start) = lseek(&f, pos, libc::SEEK_DATA) {
        let end = lseek(&f, start, libc::SEEK_HOLE).unwrap();
        got.push((start, end));
        pos = end;
        if pos >= size {
            break;
        }
    }
    assert_eq!(got, want);
    assert_eq!(
        f.metadata().unwrap().blocks() * 512,
        data_bytes,
        "st_blocks counts data only"
    );

    let tmp = scratch();
    let copy = tmp.path().join("copy.raw");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(&image)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let md = std::fs::metadata(&copy).unwrap();
    assert_eq!(md.len(), size);
    assert!(
        md.blocks() * 512 <= data_bytes,
        "copy allocates {} > {data_bytes}",
        md.blocks() * 512
    );
    assert_eq!(sha256_file(&copy), sha256_file(&image));
}

#[test]
fn writes_are_refused_read_only() {
    if !fuse_available("writes_are_refused_read_only") {
        return;
    }
    let m = Mounted::new(&source(), &[]);
    let erofs =
        |r: std::io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    let img = m.join("v1-plain/latest/vda.raw");
    erofs(OpenOptions::new().write(true).open(&img).map(drop));
    erofs(std::fs::create_dir(m.join("v1-plain/new")));
    erofs(std::fs::write(m.join("v1-plain/latest/new.txt"), b"x"));
    erofs(std::fs::remove_file(&img));
    erofs(std::fs::rename(&img, m.join("v1-plain/latest/x.raw")));
}

#[test]
fn mount_refuses_bad_arguments_clearly() {
    if !fuse_available("mount_refuses_bad_arguments_clearly") {
        return;
    }
    let tmp = scratch();
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let nothing = tmp.path().join("nothing");
    std::fs::create_dir(&nothing).unwrap();
    let err = |args: &[&str]| {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_no_panic(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let src = source();
    let src = src.to_str().unwrap();
    assert!(err(&["mount", src, full.to_str().unwrap()]).contains("must be an empty folder"));
    assert!(err(&["mount", src, full.join("x").to_str().unwrap()]).contains("must be a folder"));
    assert!(
        err(&["mount", nothing.to_str().unwrap(), empty.to_str().unwrap()])
            .contains("no backups found")
    );
    assert!(!is_mounted(&empty));
}

#[test]
fn a_damaged_file_fails_only_its_reads_and_the_mount_stays_up() {
    if !fuse_available("a_damaged_file_fails_only_its_reads_and_the_mount_stays_up") {
        return;
    }
    let tmp = scratch();
    copy_dir(&source().join("v1-lz4"), &tmp.path().join("v1-lz4"));
    let f = tmp.path().join("v1-lz4/vda.inc.virtnbdbackup.1.data");
    let mut data = std::fs::read(&f).unwrap();
    let json = usize::from_str_radix(std::str::from_utf8(&data[22..38]).unwrap(), 16).unwrap();
    let payload = 40 + json + 2 + 40;
    data[payload + 24..payload + 40].fill(0x5a);
    std::fs::write(&f, data).unwrap();

    let mut m = Mounted::new(tmp.path(), &[]);
    let err = std::fs::read(m.join("v1-lz4/2026-11-22T02:04:59_inc/vda.raw")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let full = std::fs::read(m.join("v1-lz4/2026-11-22T02:04:55_full/vda.raw")).unwrap();
    assert_eq!(
        sha256(&full),
        "5bc13da95c992bcf1ed7a2bc40119f32313b1c99064bcd73f1a1bd1bacfb5c60"
    );
    let vdb = std::fs::read(m.join("v1-lz4/2026-11-22T02:04:59_inc/vdb.raw")).unwrap();
    assert_eq!(
        sha256(&vdb),
        "6d1a22e2152a8c4af306cab09147aa91c517a589fdf63ce4f019c4741bc0d3ee"
    );
    assert!(is_mounted(&m.path));
    let log = m.stop();
    let want = format!(
        "{}: at offset {}: LZ4 frame fails to decode",
        f.display(),
        // The damaged block starts after the LZ4 frame's 15-byte header.
        payload + 15
    );
    assert!(log.contains(&want), "log lacks {want:?}: {log}");
}

#[test]
fn umount_cleans_up_after_kill_9() {
    if !fuse_available("umount_cleans_up_after_kill_9") {
        return;
    }
    let mut m = Mounted::new(&source(), &[]);
    assert!(m.join("v1-plain/latest/info.json").exists());
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    let stale = std::fs::read_dir(&m.path).unwrap_err();
    assert_eq!(stale.raw_os_error(), Some(libc::ENOTCONN));
    // A new mount on the stale mountpoint explains what to do.
    let out = run(&[
        "mount",
        source().to_str().unwrap(),
        m.path.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("restorefs umount"));
    run_ok(&["umount", m.path.to_str().unwrap()]);
    assert!(!is_mounted(&m.path));
    assert_eq!(
        std::fs::read_dir(&m.path).unwrap().count(),
        0,
        "mountpoint usable again"
    );
    let again = Mounted::new(&source(), &[]);
    assert!(again.join("v1-plain/latest/vda.raw").exists());
}

#[test]
fn a_missed_at_lookup_says_why_and_as_of_before_everything_is_refused() {
    if !fuse_available("a_missed_at_lookup_says_why_and_as_of_before_everything_is_refused") {
        return;
    }
    let m = Mounted::with_env(&source(), &[], &[("RUST_LOG", "restorefs=info")]);
    assert!(std::fs::read_link(m.join("v1-plain/at/tuesday")).is_err());
    assert!(std::fs::read_link(m.join("v1-plain/at/2026-11-21T23:00")).is_err());
    let start = std::time::Instant::now();
    while !m.stderr().contains("at/2026-11-21T23:00") && start.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = m.stderr();
    assert!(
        log.contains("at/tuesday: cannot read 'tuesday' as a time"),
        "{log}"
    );
    assert!(
        log.contains(
            "at/2026-11-21T23:00: no restore point that early (the oldest is 2026-11-22T02:03:55_full)"
        ),
        "{log}"
    );
    drop(m);

    let tmp = scratch();
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let out = run(&[
        "mount",
        source().to_str().unwrap(),
        mp.to_str().unwrap(),
        "--as-of",
        "2026-11-21",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "--as-of 2026-11-21: hides every restore point (the oldest is from 2026-11-22T02:03:55)"
        ),
        "{err}"
    );
    assert!(!is_mounted(&mp));
}
