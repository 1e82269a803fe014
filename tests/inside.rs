//! Files inside disk images: disks partitioned by `sgdisk` (GPT) and `sfdisk` (MBR with logical
//! partitions) and a whole-disk file system, their file systems made by `mkfs.ext4 -d` and
//! friends from a tree with symlinks, hardlinks, a sparse file, long and non-UTF-8 names, a
//! 10,000-entry folder, deep paths, a device node and a fifo; changed through a loop mount;
//! backed up with the test writer (full + incremental, plain and lz4). Every point's `<disk>/`
//! tree served by restorefs must equal, file by file (bytes, modes, owners, mtimes, links,
//! holes, blocks), what a `ro,noload` loop mount of the same disk at that point shows.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::writer::{Frame, StreamSpec};
use common::*;
use serde_json::Value;

const BLOCK: usize = 64 << 10;
const MIB: u64 = 1 << 20;

fn shell(script: &str, stdin: &str) {
    use std::io::Write;
    let mut c = Command::new("sh")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bytes_path(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

/// What `stat`, `readlink`, the bytes and `SEEK_DATA`/`SEEK_HOLE` say about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    blocks: u64,
    rdev: u64,
    sha256: Option<String>,
    target: Option<String>,
    data: Vec<(u64, u64)>,
    links: Option<BTreeSet<Vec<u8>>>,
}

/// What `stat` says, as an entry of a regular file.
fn stat(md: &std::fs::Metadata) -> Entry {
    Entry {
        kind: "file",
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        mtime: (md.mtime(), md.mtime_nsec()),
        blocks: md.blocks(),
        rdev: md.rdev(),
        sha256: None,
        target: None,
        data: Vec::new(),
        links: None,
    }
}

/// Every entry under `root` by relative path (bytes), not following symlinks; lost+found left out.
fn walk(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, BTreeSet<Vec<u8>>> = HashMap::new();
    let mut todo = vec![Vec::new()];
    while let Some(rel) = todo.pop() {
        let p = bytes_path(root, &rel);
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let mut e = stat(&md);
        if ft.is_dir() {
            e.kind = "dir";
            e.size = 0;
            e.blocks = 0;
            for c in std::fs::read_dir(&p).unwrap() {
                let name = c.unwrap().file_name();
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                if child != b"lost+found" {
                    todo.push(child);
                }
            }
        } else if ft.is_symlink() {
            e.kind = "symlink";
            // restorefs serves a link's target, not the blocks a long one takes in its file system.
            e.blocks = 0;
            let target = std::fs::read_link(&p).unwrap();
            e.target = Some(target.as_os_str().as_bytes().escape_ascii().to_string());
        } else if ft.is_file() {
            // Empty files (the 10,000-entry folder) are not opened: size and stat say it all.
            if md.size() > 0 {
                e.sha256 = Some(sha256_file(&p));
                e.data = data_map(&p, md.size());
            }
            if md.nlink() > 1 {
                inodes.entry(md.ino()).or_default().insert(rel.clone());
            }
        } else {
            use std::os::unix::fs::FileTypeExt;
            e.kind = if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "chr"
            } else {
                "other"
            };
        }
        out.insert(rel, e);
    }
    for paths in inodes.values() {
        for p in paths {
            out.get_mut(p).unwrap().links = Some(paths.clone());
        }
    }
    out
}

/// The data ranges of a file per `SEEK_DATA`/`SEEK_HOLE`.
fn data_map(p: &Path, size: u64) -> Vec<(u64, u64)> {
    let f = File::open(p).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(start) = restorefs::sys::seek_data(&f, pos).unwrap() else {
            break;
        };
        let end = restorefs::sys::seek_hole(&f, start).unwrap().unwrap();
        out.push((start, end));
        pos = end;
    }
    out
}

fn assert_trees(got: &BTreeMap<Vec<u8>, Entry>, want: &BTreeMap<Vec<u8>, Entry>, what: &str) {
    let names = |m: &BTreeMap<Vec<u8>, Entry>| -> BTreeSet<Vec<u8>> { m.keys().cloned().collect() };
    let (g, w) = (names(got), names(want));
    let missing: Vec<_> = w
        .difference(&g)
        .take(5)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let extra: Vec<_> = g
        .difference(&w)
        .take(5)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, extra {extra:?}"
    );
    for (p, e) in want {
        assert_eq!(&got[p], e, "{what}: {}", String::from_utf8_lossy(p));
    }
}

/// The source tree of the big file system.
fn populate(src: &Path) {
    let mk = |p: &str| std::fs::create_dir_all(src.join(p)).unwrap();
    mk("etc/nginx");
    std::fs::write(src.join("etc/nginx/nginx.conf"), b"worker_processes 4;\n").unwrap();
    std::fs::write(src.join("big.bin"), random_bytes(1, 3 << 20)).unwrap();
    std::fs::write(src.join("secret"), b"only root\n").unwrap();
    tool("chmod", &["0600", src.join("secret").to_str().unwrap()]);
    tool(
        "chmod",
        &["04755", src.join("etc/nginx/nginx.conf").to_str().unwrap()],
    );
    tool(
        "chown",
        &["1234:5678", src.join("secret").to_str().unwrap()],
    );
    let sparse = File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(8 * MIB).unwrap();
    sparse.write_all_at(&random_bytes(2, 100_000), MIB).unwrap();
    sparse
        .write_all_at(&random_bytes(3, 5000), 6 * MIB)
        .unwrap();
    std::fs::write(src.join("etc/hard1"), b"one inode, two names\n").unwrap();
    std::fs::hard_link(src.join("etc/hard1"), src.join("hard2")).unwrap();
    std::fs::hard_link(src.join("etc/hard1"), src.join("etc/hard3")).unwrap();
    std::os::unix::fs::symlink("etc/nginx/nginx.conf", src.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), src.join("link-long")).unwrap();
    std::fs::write(src.join("l".repeat(255)), b"long name\n").unwrap();
    std::fs::write(bytes_path(src, b"bad-\xff\xfe-name"), b"latin1 name\n").unwrap();
    std::fs::write(bytes_path(src, b"esc-\xee\xbe\x80"), b"escape range\n").unwrap();
    let deep: PathBuf = (0..40).map(|i| format!("d{i}")).collect();
    mk(deep.to_str().unwrap());
    std::fs::write(src.join(&deep).join("bottom.txt"), b"deep\n").unwrap();
    tool("mkfifo", &[src.join("fifo").to_str().unwrap()]);
    tool(
        "mknod",
        &[src.join("null").to_str().unwrap(), "c", "1", "3"],
    );
    tool(
        "touch",
        &[
            "-h",
            "-d",
            "2001-02-03 04:05:06.123456789",
            src.join("link-rel").to_str().unwrap(),
        ],
    );
    tool(
        "touch",
        &[
            "-d",
            "1999-12-31 23:59:59.5",
            src.join("etc/hard1").to_str().unwrap(),
        ],
    );
}

/// A file system of `size` bytes made by `mkfs` from `src`, as bytes.
fn mkfs(t: &Path, name: &str, size: u64, args: &[&str]) -> Vec<u8> {
    let img = t.join(format!("{name}.fs"));
    File::create(&img).unwrap().set_len(size).unwrap();
    let mut all: Vec<&str> = args.to_vec();
    all.push(img.to_str().unwrap());
    let cmd = all.remove(0);
    tool(cmd, &all);
    std::fs::read(&img).unwrap()
}

/// A partition of a disk file: where it is, its file system kind (for mounting).
#[derive(Clone)]
struct Part {
    disk: &'static str,
    number: u32,
    start: u64,
    size: u64,
    browse: Option<&'static str>,
}

fn put(disk: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn part(disk: &'static str, number: u32, at: (u64, u64), browse: Option<&'static str>) -> Part {
    Part {
        disk,
        number,
        start: at.0,
        size: at.1,
        browse,
    }
}

/// The three disks: vda GPT (ext4 with the big tree, swap), vdb MBR (ext2 primary, ext3 and
/// vfat logical), vdc one ext4 without a partition table.
fn make_disks(t: &Path) -> Vec<Part> {
    let src = t.join("src");
    std::fs::create_dir(&src).unwrap();
    populate(&src);
    let small = t.join("small");
    std::fs::create_dir_all(small.join("docs")).unwrap();
    std::fs::write(small.join("docs/readme.txt"), b"small tree\n").unwrap();
    std::fs::write(small.join("data.bin"), random_bytes(9, 200_000)).unwrap();
    std::os::unix::fs::symlink("docs/readme.txt", small.join("readme")).unwrap();
    let root = part("vda", 1, (MIB, 28 * MIB), Some("p1"));
    make_vda(t, &src, &root);
    let vdb = make_vdb(t, &small);
    let whole = mkfs(
        t,
        "vdc",
        8 * MIB,
        &["mkfs.ext4", "-q", "-F", "-d", small.to_str().unwrap()],
    );
    std::fs::write(t.join("vdc.img"), whole).unwrap();
    vec![
        root,
        part("vdb", 1, vdb[&1], Some("p1")),
        part("vdb", 5, vdb[&5], Some("p5")),
        part("vdc", 0, (0, 8 * MIB), Some("files")),
        part("vdb", 6, vdb[&6], None),
        part("vda", 2, (29 * MIB, 4 * MIB), None),
    ]
}

/// vda: GPT, the big tree's ext4 as `root` (p1) and swap (p2).
fn make_vda(t: &Path, src: &Path, root: &Part) {
    let vda = t.join("vda.img");
    File::create(&vda).unwrap().set_len(40 * MIB).unwrap();
    let table = "-n 1:2048:+28M -t 1:8300 -c 1:root -n 2:0:+4M -t 2:8200 -c 2:swap";
    let mut args: Vec<&str> = table.split(' ').collect();
    args.push(vda.to_str().unwrap());
    tool("sgdisk", &args);
    let uuid = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9";
    let mkfs_args = [
        "mkfs.ext4",
        "-q",
        "-F",
        "-N",
        "12000",
        "-b",
        "4096",
        "-L",
        "rootfs",
        "-U",
        uuid,
        "-d",
    ];
    let mut all = mkfs_args.to_vec();
    all.push(src.to_str().unwrap());
    put(&vda, MIB, &mkfs(t, "root", 28 * MIB, &all));
    // The big folder is made by the kernel (an indexed folder, and far faster than `mkfs -d`).
    with_mount(t, root, true, |m| {
        std::fs::create_dir(m.join("many")).unwrap();
        for i in 0..10_000 {
            File::create(m.join(format!("many/f{i:05}"))).unwrap();
        }
    });
    put(
        &vda,
        29 * MIB,
        &mkfs(t, "swap", 4 * MIB, &["mkswap", "-L", "sw"]),
    );
}

/// vdb: MBR with ext2 as p1, an extended partition holding ext3 (p5) and vfat (p6); returns
/// where `sfdisk` reads each partition back.
fn make_vdb(t: &Path, small: &Path) -> HashMap<u32, (u64, u64)> {
    let vdb = t.join("vdb.img");
    File::create(&vdb).unwrap().set_len(24 * MIB).unwrap();
    shell(
        &format!("sfdisk -q {}", vdb.display()),
        "label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=36864, type=5\nstart=12288, size=16384, type=83\nstart=30720, size=8192, type=c\n",
    );
    let sm = small.to_str().unwrap();
    let parts = sfdisk_starts(&vdb);
    let p1 = mkfs(
        t,
        "p1",
        parts[&1].1,
        &["mkfs.ext2", "-q", "-F", "-b", "1024", "-d", sm],
    );
    put(&vdb, parts[&1].0, &p1);
    let p5 = mkfs(t, "p5", parts[&5].1, &["mkfs.ext3", "-q", "-F", "-d", sm]);
    put(&vdb, parts[&5].0, &p5);
    let p6 = mkfs(t, "p6", parts[&6].1, &["mkfs.vfat", "-n", "BOOT"]);
    put(&vdb, parts[&6].0, &p6);
    parts
}

/// Partition number → (start, size) in bytes, as `sfdisk --json` reads the table back.
fn sfdisk_starts(disk: &Path) -> HashMap<u32, (u64, u64)> {
    let doc: Value =
        serde_json::from_str(&tool("sfdisk", &["--json", disk.to_str().unwrap()])).unwrap();
    doc["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let n: u32 = node
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (
                n,
                (
                    p["start"].as_u64().unwrap() * 512,
                    p["size"].as_u64().unwrap() * 512,
                ),
            )
        })
        .collect()
}

/// Loop-mounts a partition of a disk file (`ro,noload` unless `rw`) and runs `f` on it.
fn with_mount<T>(t: &Path, part: &Part, rw: bool, f: impl FnOnce(&Path) -> T) -> T {
    let mnt = t.join("loop");
    std::fs::create_dir_all(&mnt).unwrap();
    let disk = t.join(format!("{}.img", part.disk));
    let opts = format!(
        "loop,{},offset={},sizelimit={}",
        if rw { "rw" } else { "ro,noload" },
        part.start,
        part.size
    );
    // The ext4 driver reads ext2/3 too and knows `noload`.
    tool(
        "mount",
        &[
            "-t",
            "ext4",
            "-o",
            &opts,
            disk.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
    );
    let out = f(&mnt);
    tool("umount", &[mnt.to_str().unwrap()]);
    out
}

/// Changes between the full and the incremental backup.
fn change(t: &Path, parts: &[Part]) {
    with_mount(t, &parts[0], true, |m| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("big.bin"))
            .unwrap();
        f.write_all_at(&random_bytes(7, 50_000), 1_000_000).unwrap();
        std::fs::write(m.join("new.txt"), b"added\n").unwrap();
        std::fs::remove_file(m.join("many/f00007")).unwrap();
        std::fs::rename(m.join("etc/nginx"), m.join("etc/nginx.old")).unwrap();
    });
    with_mount(t, &parts[2], true, |m| {
        std::fs::write(
            m.join("docs/readme.txt"),
            b"changed in the logical partition\n",
        )
        .unwrap();
    });
}

/// Runs of 64 KiB blocks where `pick(block index)` holds, merged: (offset, length).
fn runs(blocks: usize, pick: impl Fn(usize) -> bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in (0..blocks).filter(|&b| pick(b)) {
        let off = (b * BLOCK) as u64;
        match out.last_mut() {
            Some(last) if last.0 + last.1 == off => last.1 += BLOCK as u64,
            _ => out.push((off, BLOCK as u64)),
        }
    }
    out
}

fn block(img: &[u8], b: usize) -> &[u8] {
    &img[b * BLOCK..(b + 1) * BLOCK]
}

/// The stream of `disk` from `old` (none: a full backup) to `new`.
fn stream(disk: &str, old: Option<&[u8]>, new: &[u8], n: usize, lz4: Option<usize>) -> StreamSpec {
    let mut s = StreamSpec::new(
        disk,
        new.len() as u64,
        &format!("2026-05-0{}T10:00:00.000001", n + 1),
    );
    s.lz4_chunk = lz4;
    let blocks = new.len() / BLOCK;
    s.frames = match old {
        None => runs(blocks, |b| block(new, b).iter().any(|&x| x != 0))
            .into_iter()
            .map(|(o, l)| Frame::Data(o, new[o as usize..(o + l) as usize].to_vec()))
            .collect(),
        Some(old) => {
            s.incremental = true;
            s.checkpoint = format!("virtnbdbackup.{n}");
            s.parent = format!("virtnbdbackup.{}", n - 1);
            runs(blocks, |b| block(old, b) != block(new, b))
                .into_iter()
                .map(|(o, l)| Frame::Data(o, new[o as usize..(o + l) as usize].to_vec()))
                .collect()
        }
    };
    s
}

/// The served point folder of set `set` at point index `n`.
fn point_dir(doc: &Value, set: usize, n: usize) -> String {
    let s = &doc["sets"][set];
    format!(
        "{}/{}",
        s["path"].as_str().unwrap(),
        s["points"][n]["name"].as_str().unwrap()
    )
}

/// The disks at each point (full, then after `change`) and what a loop mount of each browsable
/// partition shows then.
type Points = (Vec<Vec<Vec<u8>>>, Vec<Vec<BTreeMap<Vec<u8>, Entry>>>);

const DISKS: [&str; 3] = ["vda", "vdb", "vdc"];

fn two_points(t: &Path, parts: &[Part]) -> Points {
    let read = |d: &str| std::fs::read(t.join(format!("{d}.img"))).unwrap();
    let browsable: Vec<&Part> = parts.iter().filter(|p| p.browse.is_some()).collect();
    let refs = || -> Vec<_> {
        browsable
            .iter()
            .map(|p| with_mount(t, p, false, walk))
            .collect()
    };
    let mut snaps = vec![DISKS.iter().map(|d| read(d)).collect::<Vec<_>>()];
    let mut want = vec![refs()];
    change(t, parts);
    snaps.push(DISKS.iter().map(|d| read(d)).collect());
    want.push(refs());
    assert_ne!(want[0][0], want[1][0]);
    (snaps, want)
}

/// Two sets (lz4, plain), each a full and an incremental backup of every disk.
fn write_backups(backups: &Path, snaps: &[Vec<Vec<u8>>]) {
    for (set, lz4) in [("vm-lz4", Some(1 << 20)), ("vm-plain", None)] {
        let dir = backups.join(set);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, d) in DISKS.iter().enumerate() {
            let full = stream(d, None, &snaps[0][i], 0, lz4);
            std::fs::write(dir.join(format!("{d}.full.data")), full.to_bytes()).unwrap();
            let inc = stream(d, Some(&snaps[0][i]), &snaps[1][i], 1, lz4);
            let name = format!("{d}.inc.virtnbdbackup.1.data");
            std::fs::write(dir.join(name), inc.to_bytes()).unwrap();
        }
    }
}

#[test]
fn files_inside_partitioned_disk_images_equal_a_loop_mount() {
    if !fuse_available("files_inside_partitioned_disk_images_equal_a_loop_mount") {
        return;
    }
    let tmp = scratch();
    let t = tmp.path();
    let parts = make_disks(t);
    let (snaps, want) = two_points(t, &parts);
    let backups = t.join("backups");
    write_backups(&backups, &snaps);
    let doc = ls_json(&backups);
    check_listing(&doc, &parts);

    let served = Mounted::new(&backups, &[]);
    let browsable: Vec<&Part> = parts.iter().filter(|p| p.browse.is_some()).collect();
    for set in 0..2 {
        for n in 0..2 {
            let point = point_dir(&doc, set, n);
            for (k, p) in browsable.iter().enumerate() {
                let root = served.join(&format!("{point}/{}/{}", p.disk, p.browse.unwrap()));
                let what = format!("{point} {} {}", p.disk, p.number);
                assert_trees(&walk(&root), &want[n][k], &what);
            }
            for p in parts.iter().filter(|p| p.number > 0) {
                let raw = served.join(&format!("{point}/{}/p{}.raw", p.disk, p.number));
                let disk = &snaps[n][DISKS.iter().position(|d| *d == p.disk).unwrap()];
                let slice = &disk[p.start as usize..(p.start + p.size) as usize];
                assert_eq!(sha256_file(&raw), sha256(slice), "{}", raw.display());
            }
        }
    }
    let point = point_dir(&doc, 1, 1);
    // info.json describes the disks as ls does, once read.
    let info = std::fs::read(served.join(&format!("{point}/info.json"))).unwrap();
    let info: Value = serde_json::from_slice(&info).unwrap();
    let files = info["files"].as_array().unwrap();
    let vda = files.iter().find(|f| f["path"] == "vda").unwrap();
    assert_eq!(
        vda["contents"]["partitions"][1]["filesystem"]["type"],
        "swap"
    );
    // A slice mounts without an offset.
    let slice = served.join(&format!("{point}/vda/p1.raw"));
    let lp = t.join("slice-mnt");
    std::fs::create_dir(&lp).unwrap();
    let (s, l) = (slice.to_str().unwrap(), lp.to_str().unwrap());
    tool("mount", &["-o", "loop,ro,noload", s, l]);
    let got = walk(&lp);
    tool("umount", &[l]);
    assert_trees(&got, &want[1][0], "vda/p1.raw loop-mounted");

    eight_readers(&served.join(&format!("{point}/vda/p1")), &want[1][0]);
    export_as_nobody(t, &backups, &point, &want[1]);
}

/// `ls --json` lists the tables, partitions and file systems; unreadable ones with a note.
fn check_listing(doc: &Value, parts: &[Part]) {
    let files = doc["sets"][0]["points"][0]["files"].as_array().unwrap();
    let contents = |name: &str| {
        files
            .iter()
            .find(|f| f["path"] == name)
            .unwrap_or_else(|| panic!("{name} in {files:?}"))["contents"]
            .clone()
    };
    let vda = contents("vda");
    assert_eq!(vda["table"], "gpt");
    let p = &vda["partitions"];
    assert_eq!(
        (p[0]["number"].as_u64(), p[0]["start"].as_u64()),
        (Some(1), Some(MIB))
    );
    assert_eq!(
        (p[0]["type"].as_str(), p[0]["name"].as_str()),
        (Some("Linux filesystem"), Some("root"))
    );
    let fs = &p[0]["filesystem"];
    assert_eq!(
        (fs["type"].as_str(), fs["label"].as_str()),
        (Some("ext4"), Some("rootfs"))
    );
    assert_eq!(fs["uuid"], "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9");
    assert_eq!(
        (p[1]["filesystem"]["type"].as_str(), p[1]["type"].as_str()),
        (Some("swap"), Some("Linux swap"))
    );
    assert!(p[1]["note"].as_str().unwrap().contains("not browsable"));
    let vdb = contents("vdb");
    assert_eq!(vdb["table"], "mbr");
    let numbers: Vec<u64> = vdb["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 5, 6]);
    for part in parts.iter().filter(|p| p.disk == "vdb") {
        let got = vdb["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["number"] == part.number)
            .unwrap();
        assert_eq!(
            (got["start"].as_u64(), got["size"].as_u64()),
            (Some(part.start), Some(part.size))
        );
    }
    let kinds: Vec<&str> = vdb["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["filesystem"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ext2", "ext3", "vfat"]);
    assert_eq!(vdb["partitions"][2]["filesystem"]["label"], "BOOT");
    assert_eq!(contents("vdc")["whole_disk"]["filesystem"]["type"], "ext4");
}

/// Eight threads read every file of one file system at once; each gets the right bytes.
fn eight_readers(root: &Path, want: &BTreeMap<Vec<u8>, Entry>) {
    let files: Vec<(Vec<u8>, String)> = want
        .iter()
        .filter_map(|(p, e)| {
            e.sha256
                .clone()
                .filter(|_| e.size > 0)
                .map(|s| (p.clone(), s))
        })
        .collect();
    std::thread::scope(|s| {
        for k in 0..8 {
            let files = &files;
            s.spawn(move || {
                for i in 0..files.len() {
                    let (p, sha) = &files[(i + k * 3) % files.len()];
                    assert_eq!(&sha256_file(&bytes_path(root, p)), sha, "thread {k}");
                }
            });
        }
    });
}

/// `export` of a file and a folder from inside an image, as an unprivileged user.
fn export_as_nobody(t: &Path, backups: &Path, point: &str, want: &[BTreeMap<Vec<u8>, Entry>]) {
    let out = t.join("out");
    std::fs::create_dir(&out).unwrap();
    let cache = t.join("nobody-cache");
    std::fs::create_dir(&cache).unwrap();
    for p in [t, &out, &cache] {
        tool("chmod", &["0777", p.to_str().unwrap()]);
    }
    let export = |path: &str, to: &Path| {
        let o = Command::new("runuser")
            .args(["-u", "nobody", "--", "env"])
            .arg(format!("XDG_CACHE_HOME={}", cache.display()))
            .arg(bin())
            .arg("export")
            .arg(backups)
            .arg(path)
            .arg("-o")
            .arg(to)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "export {path}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    export(
        &format!("{point}/vda/p1/etc/nginx.old/nginx.conf"),
        &out.join("nginx.conf"),
    );
    assert_eq!(
        std::fs::read(out.join("nginx.conf")).unwrap(),
        b"worker_processes 4;\n"
    );
    export(&format!("{point}/vdb/p5"), &out.join("p5"));
    assert_exported(&walk(&out.join("p5")), want[2].clone(), "exported vdb/p5");
    // A folder with two names of one file (a third is outside it): hard-linked in the copy.
    export(&format!("{point}/vda/p1/etc"), &out.join("etc"));
    let inside_etc = |p: &[u8]| {
        p.strip_prefix(b"etc")
            .map(|r| r.strip_prefix(b"/").unwrap_or(r).to_vec())
    };
    let mut etc: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
    for (p, e) in &want[0] {
        if let Some(rel) = inside_etc(p) {
            let mut e = e.clone();
            e.links = e
                .links
                .map(|l| l.iter().filter_map(|q| inside_etc(q)).collect());
            e.links = e.links.filter(|l: &BTreeSet<Vec<u8>>| l.len() > 1);
            etc.insert(rel, e);
        }
    }
    assert!(etc[&b"hard1".to_vec()].links.is_some());
    assert_exported(&walk(&out.join("etc")), etc, "exported vda/p1/etc");
}

/// `got` (an unprivileged export) equals `want` but for what such an export cannot keep.
fn assert_exported(got: &BTreeMap<Vec<u8>, Entry>, mut want: BTreeMap<Vec<u8>, Entry>, what: &str) {
    for (p, e) in want.iter_mut() {
        let Some(g) = got.get(p) else { continue };
        // An unprivileged export cannot give files away; everything else must match.
        (e.uid, e.gid, e.blocks) = (g.uid, g.gid, g.blocks);
    }
    assert_trees(got, &want, what);
}

/// `debugfs -R CMD` on a file system image: its output.
fn debugfs(img: &Path, cmd: &str) -> String {
    tool("debugfs", &["-R", cmd, img.to_str().unwrap()])
}

/// `src` as a 1 KiB-block ext4 whose `etc/a.conf` has a broken extent header and whose
/// `etc/sub` has a broken first entry; also where that file's inode is.
fn damage(t: &Path, src: &Path) -> (Vec<u8>, u64) {
    let img = t.join("fs");
    File::create(&img).unwrap().set_len(4 * MIB).unwrap();
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "1024",
            "-d",
            src.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    let imap = debugfs(&img, "imap /etc/a.conf");
    let num = |s: &str, after: &str| -> u64 {
        let rest = &s[s.find(after).unwrap() + after.len()..];
        let tok = rest
            .split(|c: char| c == ',' || c.is_whitespace())
            .find(|w| !w.is_empty())
            .unwrap();
        match tok.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
            None => tok.parse().unwrap(),
        }
    };
    let inode_at = num(&imap, "located at block ") * 1024 + num(&imap, "offset ");
    let dir_block: u64 = debugfs(&img, "blocks /etc/sub").trim().parse().unwrap();
    let mut bytes = std::fs::read(&img).unwrap();
    // The file's extent header magic, and the folder's first entry's record length.
    bytes[(inode_at + 40) as usize..][..2].copy_from_slice(&[0, 0]);
    bytes[(dir_block * 1024 + 4) as usize..][..2].copy_from_slice(&[0, 0]);

    (bytes, inode_at)
}

/// Damaged metadata fails only what depends on it, with the image, offset and structure named.
#[test]
fn damaged_metadata_fails_only_the_file_or_folder_it_holds() {
    use restorefs::vfs::{Attr, BytesFile, Node};
    let tmp = scratch();
    let t = tmp.path();
    let src = t.join("src");
    std::fs::create_dir_all(src.join("etc/sub")).unwrap();
    std::fs::write(src.join("etc/a.conf"), random_bytes(5, 30_000)).unwrap();
    std::fs::write(src.join("etc/b.conf"), b"intact\n").unwrap();
    std::fs::write(src.join("etc/sub/c"), b"in a damaged folder\n").unwrap();
    let (bytes, inode_at) = damage(t, &src);

    let attr = Attr::read_only(false, std::time::UNIX_EPOCH);
    let image = BytesFile::new(bytes, attr);
    let disk = restorefs::inside::DiskDir::new(image, "vm/vda.raw".into(), attr);
    let root = Node::Dir(disk);
    let read = |path: &str| -> restorefs::error::Result<Vec<u8>> {
        let Node::File(f) = restorefs::vfs::resolve(&root, path)? else {
            panic!("{path}")
        };
        let mut buf = vec![0; f.size()? as usize];
        let n = f.read_at(0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    };
    assert_eq!(read("files/etc/b.conf").unwrap(), b"intact\n");
    let e = read("files/etc/a.conf").unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    let msg = e.to_string();
    assert!(
        msg.contains("vm/vda.raw")
            && msg.contains("extent header")
            && msg.contains(&(inode_at + 40).to_string()),
        "{msg}"
    );
    let e = restorefs::vfs::resolve(&root, "files/etc/sub/c")
        .err()
        .unwrap();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert!(e.to_string().contains("folder inode"), "{e}");
    let Node::Dir(etc) = restorefs::vfs::resolve(&root, "files/etc").unwrap() else {
        panic!()
    };
    let names: Vec<String> = etc.names().unwrap().into_iter().map(|n| n.0).collect();
    assert_eq!(names, ["a.conf", "b.conf", "sub"]);
}

/// A GPT whose primary header is damaged is read from its backup at the disk's end, and says so;
/// one whose both headers are damaged gives an error, not a guess.
#[test]
fn damaged_primary_gpt_falls_back_to_the_backup() {
    use restorefs::vfs::{Attr, BytesFile, Directory};
    let tmp = scratch();
    let disk = tmp.path().join("disk");
    File::create(&disk).unwrap().set_len(4 * MIB).unwrap();
    let d = disk.to_str().unwrap();
    tool(
        "sgdisk",
        &[
            "-n",
            "1:2048:+1M",
            "-c",
            "1:alpha",
            "-n",
            "2:0:+1M",
            "-t",
            "2:8200",
            d,
        ],
    );
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[512 + 20] ^= 0xFF;
    let attr = Attr::read_only(false, std::time::UNIX_EPOCH);
    let describe = |b: Vec<u8>| {
        let dir = restorefs::inside::DiskDir::new(BytesFile::new(b, attr), "d.raw".into(), attr);
        (
            dir.describe().unwrap(),
            dir.names()
                .map(|n| n.into_iter().map(|e| e.0).collect::<Vec<_>>()),
        )
    };
    let (doc, names) = describe(bytes.clone());
    assert_eq!(doc["table"], "gpt", "{doc}");
    assert!(
        doc["notes"][0]
            .as_str()
            .unwrap()
            .contains("primary GPT damaged"),
        "{doc}"
    );
    let parts = doc["partitions"].as_array().unwrap();
    assert_eq!(
        (parts[0]["name"].as_str(), parts[0]["start"].as_u64()),
        (Some("alpha"), Some(MIB))
    );
    assert_eq!(parts[1]["type"], "Linux swap");
    assert_eq!(names.unwrap(), ["p1.raw", "p2.raw"]);
    let end = bytes.len() - 512;
    bytes[end + 20] ^= 0xFF;
    let (doc, names) = describe(bytes);
    assert!(
        doc["error"].as_str().unwrap().contains("CRC mismatch"),
        "{doc}"
    );
    assert!(names.is_err());
}

/// Every path below `node` with what it holds: a file's sha256, a link's target, "dir".
fn vfs_tree(node: &restorefs::vfs::Node, path: Vec<u8>, out: &mut BTreeMap<Vec<u8>, String>) {
    use restorefs::vfs::{Node, name_bytes};
    let what = match node {
        Node::Dir(d) => {
            for (name, child) in d.entries().unwrap() {
                if name == "lost+found" && path.is_empty() {
                    continue;
                }
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&name_bytes(&name));
                vfs_tree(&child, p, out);
            }
            "dir".to_owned()
        }
        Node::File(f) => {
            let mut buf = vec![0; f.size().unwrap() as usize];
            assert_eq!(f.read_at(0, &mut buf).unwrap(), buf.len());
            sha256(&buf)
        }
        Node::Symlink(l) => format!("-> {}", l.target),
        Node::Special(_) => "special".to_owned(),
    };
    out.insert(path, what);
}

/// The same from a mounted folder.
fn disk_tree(root: &Path) -> BTreeMap<Vec<u8>, String> {
    walk(root)
        .into_iter()
        .map(|(p, e)| {
            let what = match e.kind {
                "dir" => "dir".to_owned(),
                "symlink" => format!("-> {}", e.target.unwrap()),
                "file" => e.sha256.unwrap_or_else(|| sha256(b"")),
                _ => "special".to_owned(),
            };
            (p, what)
        })
        .collect()
}

/// A file system imaged while mounted (after an fsync: committed in the journal, not yet in
/// place) reads like the kernel's mount of it, which replays the journal first; with 64-bit
/// block numbers (mkfs.ext4's default) and without (whose checksummed journal tags still take
/// 16 bytes).
#[test]
fn committed_journal_transactions_are_replayed() {
    journal_replayed(&[]);
    journal_replayed(&["-O", "^64bit"]);
}

fn journal_replayed(features: &[&str]) {
    use restorefs::vfs::{Attr, BytesFile, Node};
    let tmp = scratch();
    let t = tmp.path();
    let img = t.join("fs");
    File::create(&img).unwrap().set_len(16 * MIB).unwrap();
    let mut args = vec!["-q", "-F", "-b", "1024"];
    args.extend_from_slice(features);
    args.push(img.to_str().unwrap());
    tool("mkfs.ext4", &args);
    let mnt = t.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (i, m) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    tool("mount", &["-o", "loop", i, m]);
    std::fs::create_dir_all(mnt.join("a/b")).unwrap();
    for n in 0..50 {
        std::fs::write(mnt.join(format!("a/b/f{n}")), random_bytes(n, 3000)).unwrap();
    }
    std::os::unix::fs::symlink("a/b/f1", mnt.join("link")).unwrap();
    // fsync commits the whole transaction to the journal; the blocks stay dirty in the loop
    // device's cache, not yet in their place in the image (`sync` would write them there too).
    File::open(mnt.join("a/b/f7")).unwrap().sync_all().unwrap();
    let snapshot = std::fs::read(&img).unwrap();
    tool("umount", &[m]);
    let copy = t.join("copy");
    std::fs::write(&copy, &snapshot).unwrap();
    let c = copy.to_str().unwrap();
    tool("mount", &["-t", "ext4", "-o", "loop,ro,noload", c, m]);
    let unreplayed = disk_tree(&mnt);
    tool("umount", &[m]);
    // A read-only mount replays the journal when its device is writable: a loop device of its own.
    let dev = tool("losetup", &["-f", "--show", c]);
    let dev = dev.trim();
    tool("mount", &["-t", "ext4", "-o", "ro", dev, m]);
    let want = disk_tree(&mnt);
    tool("umount", &[m]);
    tool("losetup", &["-d", dev]);
    assert_ne!(
        unreplayed, want,
        "the image must need its journal for this test"
    );

    let attr = Attr::read_only(false, std::time::UNIX_EPOCH);
    let disk =
        restorefs::inside::DiskDir::new(BytesFile::new(snapshot, attr), "j.raw".into(), attr);
    let files = restorefs::vfs::resolve(&Node::Dir(disk), "files").unwrap();
    let mut got = BTreeMap::new();
    vfs_tree(&files, Vec::new(), &mut got);
    assert_eq!(got, want, "mkfs.ext4 {features:?}");
}
