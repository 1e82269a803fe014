//! FAT12/16/32 images made by `mkfs.vfat` and filled by `mcopy` (long names, nested folders, a
//! fragmented file, an empty file, a folder of many entries) read by `inside::fat` must show
//! exactly the source tree the test wrote: names, sizes, bytes (sha256), mtimes; from 8
//! threads at once too; and damaged images must give errors naming the image, never hang.

mod fsimage;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fsimage::{LocalFile, Tree, bytes, make_fat, read_tree, run};
use restorefs::inside::fat;
use restorefs::vfs::{self, FileNode, Node};

/// mtime of every source file: even, as FAT keeps two-second times.
const MTIME: u64 = 1_700_000_000;

fn source() -> Tree {
    let mut t = Tree::new();
    let file = |t: &mut Tree, name: &str, seed: u64, len: usize| {
        t.insert(name.into(), Some(bytes(seed, len)));
    };
    file(&mut t, "A rather long file name with spaces.txt", 1, 100);
    file(&mut t, "Ünïcödé naïve café ☕.txt", 2, 3000);
    file(&mut t, "lower.txt", 3, 10);
    file(&mut t, "UPPER.TXT", 4, 5000);
    file(&mut t, "MixedCase.Txt", 5, 70_000);
    file(&mut t, "empty", 6, 0);
    for d in ["deep", "deep/er", "deep/er/and deeper", "many"] {
        t.insert(d.into(), None);
    }
    file(&mut t, "deep/er/and deeper/leaf.bin", 7, 9000);
    for i in 0..300 {
        file(
            &mut t,
            &format!("many/entry number {i:03}.dat"),
            100 + i,
            i as usize,
        );
    }
    t
}

/// Makes a fragmented file: fills gaps left by deleted files, then goes on after them.
fn add_fragmented(img: &Path, dir: &Path, want: &mut Tree) {
    let put = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        run(Command::new("mcopy")
            .args(["-Q", "-i"])
            .arg(img)
            .arg(&p)
            .arg(format!("::/{name}")));
    };
    for i in 0..4 {
        put(&format!("gap{i}"), &bytes(500 + i, 5000));
        let spacer = bytes(600 + i, 3000);
        put(&format!("spacer{i}"), &spacer);
        want.insert(format!("spacer{i}"), Some(spacer));
    }
    // mtools allocates after the last cluster it gave out (FAT32 remembers it): fill the volume
    // up to 100 KiB from its end, so the next file wraps around into the gaps.
    let listing = run(Command::new("mdir").arg("-i").arg(img).arg("::/"));
    let free: usize = listing
        .lines()
        .find_map(|l| l.trim().strip_suffix(" bytes free"))
        .map(|n| n.replace(' ', "").parse().unwrap())
        .unwrap();
    let filler = vec![0x5a; free - (100 << 10)];
    put("filler", &filler);
    want.insert("filler".into(), Some(filler));
    for i in 0..4 {
        run(Command::new("mdel")
            .args(["-i"])
            .arg(img)
            .arg(format!("::/gap{i}")));
    }
    let big = bytes(700, 115_000);
    put("fragmented.bin", &big);
    want.insert("fragmented.bin".into(), Some(big));
    let map = run(Command::new("mshowfat")
        .arg("-i")
        .arg(img)
        .arg("::/fragmented.bin"));
    assert!(map.matches('<').count() >= 3, "not fragmented: {map}");
}

fn fat_image(dir: &Path, bits: u32) -> (std::path::PathBuf, Tree) {
    let kib = match bits {
        12 => 3000,
        16 => 20_000,
        _ => 40_000,
    };
    let mut want = source();
    let img = make_fat(dir, bits, kib, &want, MTIME);
    add_fragmented(&img, dir, &mut want);
    (img, want)
}

fn check_fat(bits: u32) {
    let dir = tempfile::tempdir().unwrap();
    let (img, want) = fat_image(dir.path(), bits);
    let root = fat::open(LocalFile::open(&img), "fat.img p1").unwrap();
    fsimage::assert_same(&read_tree(&root), &want);
    let leaf = vfs::resolve(&root, "deep/er/and deeper/leaf.bin").unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME);
    assert_eq!(leaf.attr().mtime, at);
    assert_eq!(leaf.attr().perm, 0o444);
    assert_eq!(vfs::resolve(&root, "deep").unwrap().attr().perm, 0o555);
    let Node::Dir(d) = &root else { panic!() };
    assert!(d.lookup("no such file").unwrap().is_none());
}

#[test]
fn fat12_matches_its_source() {
    check_fat(12);
}

#[test]
fn fat16_matches_its_source() {
    check_fat(16);
}

#[test]
fn fat32_matches_its_source() {
    check_fat(32);
}

#[test]
fn eight_threads_read_one_fat_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (img, want) = fat_image(dir.path(), 32);
    let root = fat::open(LocalFile::open(&img), "fat.img").unwrap();
    let files: Vec<(Arc<dyn FileNode>, Vec<u8>)> = want
        .iter()
        .filter_map(|(p, d)| {
            let Node::File(f) = vfs::resolve(&root, p).unwrap() else {
                return None;
            };
            Some((f, d.clone().unwrap()))
        })
        .collect();
    fsimage::read_at_once(files);
}

/// The FAT16 geometry, read here independently of the reader.
struct Geometry {
    fat: u64,
    root: u64,
    data: u64,
    cluster: u64,
}

fn geometry(img: &[u8]) -> Geometry {
    let u16at = |at: usize| u64::from(u16::from_le_bytes([img[at], img[at + 1]]));
    let bps = u16at(11);
    let fat = u16at(14) * bps;
    let root = fat + u64::from(img[16]) * u16at(22) * bps;
    Geometry {
        fat,
        root,
        data: root + u16at(17) * 32,
        cluster: u64::from(img[13]) * bps,
    }
}

/// Offset of the 32-byte entry with short name `short` (11 bytes) in the folder at `at`.
fn entry(img: &[u8], at: u64, short: &[u8; 11]) -> usize {
    (0..512)
        .map(|i| at as usize + i * 32)
        .find(|&e| &img[e..e + 11] == short)
        .unwrap_or_else(|| panic!("no {:?}", String::from_utf8_lossy(short)))
}

fn first_cluster(img: &[u8], e: usize) -> u64 {
    u64::from(u16::from_le_bytes([img[e + 26], img[e + 27]]))
}

/// Lists every folder and reads every file of a damaged image; the first error, and how long.
fn first_error(img: &[u8], dir: &Path) -> (String, Duration) {
    let p = dir.join("damaged.img");
    std::fs::write(&p, img).unwrap();
    let started = Instant::now();
    let root = match fat::open(LocalFile::open(&p), "vm1/vda p1") {
        Ok(r) => r,
        Err(e) => return (e.to_string(), started.elapsed()),
    };
    let mut todo = vec![root];
    while let Some(n) = todo.pop() {
        let r = match &n {
            Node::Dir(d) => d
                .entries()
                .map(|es| todo.extend(es.into_iter().map(|e| e.1))),
            Node::File(f) => f.read_at(0, &mut vec![0; 400_000]).map(|_| ()),
            Node::Symlink(_) | Node::Special(_) => Ok(()),
        };
        if let Err(e) = r {
            return (e.to_string(), started.elapsed());
        }
    }
    panic!("the damage went unnoticed");
}

/// What a case does to the image.
type Damage<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;

#[test]
fn damaged_fat_gives_errors_naming_image_offset_and_structure() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = fat_image(dir.path(), 16);
    let good = std::fs::read(&img).unwrap();
    let g = geometry(&good);
    let deep = entry(&good, g.root, b"DEEP       ");
    let deep_cluster = first_cluster(&good, deep);
    let big = entry(&good, g.root, b"FRAGME~1BIN");
    let big_cluster = first_cluster(&good, big);
    let set_fat = |img: &mut Vec<u8>, c: u64, v: u16| {
        let at = (g.fat + c * 2) as usize;
        img[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    let deep_at = g.data + (deep_cluster - 2) * g.cluster;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "folder chain loops",
            Box::new(|i: &mut Vec<u8>| set_fat(i, deep_cluster, deep_cluster as u16)),
            "visits cluster",
        ),
        (
            "file chain leaves the volume",
            Box::new(|i: &mut Vec<u8>| set_fat(i, big_cluster, 0xfff0)),
            "outside",
        ),
        (
            "file chain ends early",
            Box::new(|i: &mut Vec<u8>| set_fat(i, big_cluster, 0xffff)),
            "ends before",
        ),
        (
            "folder contains its parent",
            Box::new(|i: &mut Vec<u8>| {
                let er = entry(i, deep_at, b"ER         ");
                i[er + 26..er + 28].copy_from_slice(&(deep_cluster as u16).to_le_bytes());
            }),
            "contains itself",
        ),
        (
            "huge file size",
            Box::new(|i: &mut Vec<u8>| i[big + 28..big + 32].copy_from_slice(&[0xff; 4])),
            "ends before",
        ),
        (
            "bad boot sector",
            Box::new(|i: &mut Vec<u8>| i[11] = 3),
            "bytes per sector",
        ),
    ];
    for (name, damage, expect) in cases {
        let mut bad = good.clone();
        damage(&mut bad);
        let (err, took) = first_error(&bad, dir.path());
        assert!(
            err.contains("vm1/vda p1") && err.contains("at offset") && err.contains(expect),
            "{name}: {err}"
        );
        assert!(took < Duration::from_secs(5), "{name}: took {took:?}");
    }
}
