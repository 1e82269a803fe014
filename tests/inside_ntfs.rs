//! NTFS images made by `mkntfs` and filled through `ntfs-3g` (long and Unicode names, nested
//! folders, a folder of many entries, a resident small file, a sparse file, a hard link, two
//! fragmented files, an alternate data stream, a DOS 8.3 name) read by `inside::ntfs` must
//! show exactly the source tree the test wrote: names, sizes, bytes (sha256), mtimes, holes,
//! link counts; from 8 threads at once too. Compressed files fail with a clear error.

mod fsimage;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fsimage::{LocalFile, Tree, bytes, make_ntfs, read_tree, run};
use restorefs::inside::ntfs;
use restorefs::vfs::{self, FileNode, Node};

const MTIME: u64 = 1_700_000_123;
const SPARSE_SIZE: u64 = 10 << 20;
/// Size of the file whose runs need an attribute list.
const MANY_RUNS_SIZE: usize = 64 << 20;
/// (offset, length) of the data in the sparse file.
const SPARSE_DATA: [(u64, usize); 3] = [(0, 4096), (5 << 20, 8192), ((10 << 20) - 100, 100)];

fn source() -> Tree {
    let mut t = Tree::new();
    let file = |t: &mut Tree, name: &str, seed: u64, len: usize| {
        t.insert(name.into(), Some(bytes(seed, len)));
    };
    file(&mut t, "A long name.txt", 1, 3000);
    file(&mut t, "Ünïcödé naïve café ☕ 🎉.txt", 2, 5000);
    file(&mut t, "small resident.txt", 3, 100);
    file(&mut t, "empty", 4, 0);
    file(&mut t, "hardlinked", 5, 20_000);
    for d in ["deep", "deep/er", "deep/er/and deeper", "many"] {
        t.insert(d.into(), None);
    }
    file(&mut t, "deep/er/and deeper/leaf.bin", 6, 9000);
    for i in 0..300 {
        file(
            &mut t,
            &format!("many/entry number {i:03}.dat"),
            100 + i,
            i as usize * 3,
        );
    }
    t
}

fn sparse_bytes() -> Vec<u8> {
    let mut v = vec![0u8; SPARSE_SIZE as usize];
    for (i, (at, len)) in SPARSE_DATA.iter().enumerate() {
        v[*at as usize..*at as usize + len].copy_from_slice(&bytes(900 + i as u64, *len));
    }
    v
}

/// Writes two files in alternating 64 KiB pieces, each flushed: their clusters interleave.
fn write_fragmented(mnt: &Path, want: &mut Tree) {
    let names = ["fragmented a.bin", "fragmented b.bin"];
    let data: Vec<Vec<u8>> = (0..2).map(|i| bytes(800 + i, 2 << 20)).collect();
    let files: Vec<std::fs::File> = names
        .iter()
        .map(|n| std::fs::File::create(mnt.join(n)).unwrap())
        .collect();
    for piece in 0..32 {
        for (f, d) in files.iter().zip(&data) {
            let at = piece * 65_536;
            f.write_all_at(&d[at..at + 65_536], at as u64).unwrap();
            f.sync_all().unwrap();
        }
    }
    for (n, d) in names.iter().zip(data) {
        want.insert((*n).into(), Some(d));
    }
}

fn fill(mnt: &Path, want: &mut Tree) {
    fsimage::write_tree(mnt, want, MTIME);
    std::fs::hard_link(
        mnt.join("hardlinked"),
        mnt.join("deep/er/link to hardlinked"),
    )
    .unwrap();
    want.insert(
        "deep/er/link to hardlinked".into(),
        want["hardlinked"].clone(),
    );
    write_fragmented(mnt, want);
    let sparse = std::fs::File::create(mnt.join("sparse.bin")).unwrap();
    sparse.set_len(SPARSE_SIZE).unwrap();
    let data = sparse_bytes();
    for (at, len) in SPARSE_DATA {
        sparse
            .write_all_at(&data[at as usize..at as usize + len], at)
            .unwrap();
    }
    want.insert("sparse.bin".into(), Some(data));
    // 4 KiB of data every 128 KiB: a thousand runs, more than one MFT record holds, so the
    // $DATA attribute continues in other records through an attribute list.
    let mut many = vec![0u8; MANY_RUNS_SIZE];
    let f = std::fs::File::create(mnt.join("many runs.bin")).unwrap();
    f.set_len(MANY_RUNS_SIZE as u64).unwrap();
    for (i, at) in (0..MANY_RUNS_SIZE).step_by(128 << 10).enumerate() {
        let piece = bytes(2000 + i as u64, 4096);
        f.write_all_at(&piece, at as u64).unwrap();
        many[at..at + 4096].copy_from_slice(&piece);
    }
    want.insert("many runs.bin".into(), Some(many));
    // A named stream and a DOS name: neither may show.
    run(Command::new("setfattr")
        .args(["-n", "user.secret", "-v", "hidden stream"])
        .arg(mnt.join("A long name.txt")));
    run(Command::new("setfattr")
        .args(["-n", "system.ntfs_dos_name", "-v", "LONGNA~1.TXT"])
        .arg(mnt.join("A long name.txt")));
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME);
    for (rel, d) in want.iter() {
        if d.is_some() {
            let f = std::fs::File::options()
                .write(true)
                .open(mnt.join(rel))
                .unwrap();
            f.set_modified(t).unwrap();
        }
    }
}

fn ntfs_image(dir: &Path) -> (PathBuf, Tree) {
    let mut want = source();
    let img = make_ntfs(dir, 24, "streams_interface=xattr", |mnt| {
        fill(mnt, &mut want)
    });
    (img, want)
}

fn file(root: &Node, path: &str) -> Arc<dyn FileNode> {
    match vfs::resolve(root, path).unwrap() {
        Node::File(f) => f,
        _ => panic!("{path}: not a file"),
    }
}

#[test]
fn ntfs_matches_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let (img, want) = ntfs_image(dir.path());
    let root = ntfs::open(LocalFile::open(&img), "ntfs.img p2").unwrap();
    fsimage::assert_same(&read_tree(&root), &want);

    let leaf = file(&root, "deep/er/and deeper/leaf.bin");
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME);
    assert_eq!(leaf.attr().mtime, at);
    assert_eq!(leaf.attr().perm, 0o444);
    assert_eq!(leaf.nlink(), 1);

    let (a, b) = (
        file(&root, "hardlinked"),
        file(&root, "deep/er/link to hardlinked"),
    );
    assert_eq!((a.nlink(), b.nlink()), (2, 2));
    assert_eq!(Arc::as_ptr(&a) as *const u8, Arc::as_ptr(&b) as *const u8);
    // One identity, so FUSE and export give both names one inode; another file has its own.
    assert!(a.identity().is_some());
    assert_eq!(a.identity(), b.identity());
    assert_ne!(a.identity(), leaf.identity());

    let sparse = file(&root, "sparse.bin");
    let hole = sparse.next_hole(0).unwrap();
    assert!((4096..5 << 20).contains(&hole), "first hole at {hole}");
    let data = sparse.next_data(hole).unwrap().unwrap();
    assert!(data > hole && data <= 5 << 20, "data again at {data}");
    assert!(sparse.allocated().unwrap() < 1 << 20);

    // Its runs continue in other MFT records; holes still show.
    let many = file(&root, "many runs.bin");
    assert_eq!(many.next_hole(0).unwrap(), 4096);
    assert_eq!(many.next_data(4096).unwrap(), Some(128 << 10));
    assert!(many.allocated().unwrap() <= 4 << 20);
}

#[test]
fn fragmented_files_have_many_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = ntfs_image(dir.path());
    let runs = |path: &str| {
        let info = run(Command::new("ntfsinfo").args(["-v", "-F", path]).arg(&img));
        let total = info
            .lines()
            .find_map(|l| l.strip_prefix("Total runs: "))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
        (total.unwrap_or(0), info.contains("$ATTRIBUTE_LIST"))
    };
    let (a, _) = runs("/fragmented a.bin");
    assert!(a >= 4, "only {a} runs");
    let (many, listed) = runs("/many runs.bin");
    assert!(listed, "{many} runs, no attribute list");
}

#[test]
fn eight_threads_read_one_ntfs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (img, want) = ntfs_image(dir.path());
    let root = ntfs::open(LocalFile::open(&img), "ntfs.img").unwrap();
    let files: Vec<(Arc<dyn FileNode>, Vec<u8>)> = want
        .iter()
        .filter_map(|(p, d)| Some((d.clone()?, p)))
        .map(|(d, p)| (file(&root, p), d))
        .collect();
    fsimage::read_at_once(files);
}

#[test]
fn compressed_ntfs_files_fail_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_ntfs(dir.path(), 8, "compression", |mnt| {
        std::fs::create_dir(mnt.join("packed")).unwrap();
        run(Command::new("setfattr")
            .args(["-n", "system.ntfs_attrib_be", "-v", "0x00000800"])
            .arg(mnt.join("packed")));
        std::fs::write(mnt.join("packed/squeezed.txt"), vec![b'a'; 200_000]).unwrap();
    });
    let root = ntfs::open(LocalFile::open(&img), "vm1/vda p2").unwrap();
    let f = file(&root, "packed/squeezed.txt");
    let err = f.read_at(0, &mut [0u8; 100]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("vm1/vda p2") && text.contains("compressed"),
        "{text}"
    );
    assert_eq!(err.errno(), libc::EIO);
}

/// Offset of the MFT record whose $FILE_NAME holds `name` (found here by scanning the image).
fn record_of(img: &[u8], name: &str) -> usize {
    let utf16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    (0..img.len() / 1024)
        .map(|i| i * 1024)
        .find(|&r| {
            if &img[r..r + 4] != b"FILE" {
                return false;
            }
            let a = attribute(img, r, 0x30);
            let len = u32::from_le_bytes(img[a + 4..a + 8].try_into().unwrap()) as usize;
            img[a..a + len].windows(utf16.len()).any(|w| w == utf16)
        })
        .unwrap_or_else(|| panic!("no record names {name}"))
}

/// Offset of the first attribute of type `ty` in the record at `r` (or of its end).
fn attribute(img: &[u8], r: usize, ty: u32) -> usize {
    let mut a = r + usize::from(u16::from_le_bytes([img[r + 0x14], img[r + 0x15]]));
    while a + 8 < r + 1024 {
        let t = u32::from_le_bytes(img[a..a + 4].try_into().unwrap());
        if t == ty || t == 0xffff_ffff {
            break;
        }
        a += (u32::from_le_bytes(img[a + 4..a + 8].try_into().unwrap()) as usize).max(8);
    }
    a.min(r + 1016)
}

/// Opens a damaged image and lists or reads `path`; the error, within 5 seconds.
fn error_at(img: &[u8], dir: &Path, path: &str) -> String {
    let p = dir.join("damaged.img");
    std::fs::write(&p, img).unwrap();
    let started = std::time::Instant::now();
    let result =
        ntfs::open(LocalFile::open(&p), "vm1/vda p2").and_then(|root| {
            match vfs::resolve(&root, path)? {
                Node::Dir(d) => d.entries().map(drop),
                Node::File(f) => f.read_at(0, &mut vec![0; 20_000]).map(drop),
                Node::Symlink(_) | Node::Special(_) => Ok(()),
            }
        });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{path}: too slow"
    );
    result.expect_err("the damage went unnoticed").to_string()
}

#[test]
fn damaged_ntfs_gives_errors_naming_image_offset_and_structure() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = ntfs_image(dir.path());
    let good = std::fs::read(&img).unwrap();
    let leaf = record_of(&good, "leaf.bin");
    let folder = record_of(&good, "and deeper");
    let data = attribute(&good, leaf, 0x80);
    let runs = data + usize::from(u16::from_le_bytes([good[data + 0x20], good[data + 0x21]]));
    // The first run's cluster, made as large as its field holds.
    let mut far = vec![0xff; usize::from(good[runs] >> 4) - 1];
    far.push(0x7f);
    let cases: Vec<(&str, usize, &[u8], &str, &str)> = vec![
        ("boot sector", 11, &[3, 0], "", "boot sector"),
        (
            "file record",
            leaf,
            b"XXXX",
            "deep/er/and deeper/leaf.bin",
            "MFT record",
        ),
        (
            "folder record",
            folder,
            b"XXXX",
            "deep/er/and deeper",
            "MFT record",
        ),
        (
            "data run past the volume",
            runs + 1 + usize::from(good[runs] & 0x0f),
            &far,
            "deep/er/and deeper/leaf.bin",
            "past the end",
        ),
    ];
    for (name, at, bytes, path, expect) in cases {
        let mut bad = good.clone();
        bad[at..at + bytes.len()].copy_from_slice(bytes);
        let err = error_at(&bad, dir.path(), path);
        assert!(
            err.contains("vm1/vda p2") && err.contains("at offset") && err.contains(expect),
            "{name}: {err}"
        );
    }
}
