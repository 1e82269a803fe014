//! File system images made by the file systems' own tools (`mkfs.vfat` + `mcopy`, `mkntfs` +
//! `ntfs-3g`) from source trees the tests write, and what the readers should show of them.
//! Shared by the FAT and NTFS tests; the fuzz harness reads images through `LocalFile`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::SystemTime;

use restorefs::error::{Error, Result};
use restorefs::vfs::{Attr, FileNode, Node};

/// A file on the local disk as a `vfs` file node (the device a reader opens).
pub struct LocalFile {
    file: std::fs::File,
    path: PathBuf,
    size: u64,
}

impl LocalFile {
    /// The node of `path`.
    pub fn open(path: &Path) -> Arc<dyn FileNode> {
        let file = std::fs::File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        Arc::new(LocalFile {
            file,
            path: path.to_path_buf(),
            size,
        })
    }
}

impl FileNode for LocalFile {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = restorefs::vfs::clamp(offset, buf.len(), self.size);
        let mut done = 0;
        while done < n {
            match self.file.read_at(&mut buf[done..n], offset + done as u64) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) => return Err(Error::io(&self.path, &e)),
            }
        }
        Ok(done)
    }

    fn attr(&self) -> Attr {
        Attr::read_only(false, SystemTime::UNIX_EPOCH)
    }
}

/// Runs `cmd`, panicking with its output when it fails (or cannot start: the tool is missing,
/// `.ci/run` installs it).
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is the tool installed? .ci/run installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic bytes (xorshift), so every file's content is its own.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What a tree shows: relative path → `None` for a folder, `Some(bytes)` for a file.
pub type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// Writes `tree` under `dir` (folders first), with every mtime at `mtime` seconds.
pub fn write_tree(dir: &Path, tree: &Tree, mtime: u64) {
    for (rel, data) in tree {
        let p = dir.join(rel);
        match data {
            None => std::fs::create_dir_all(&p).unwrap(),
            Some(d) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, d).unwrap();
            }
        }
    }
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    for rel in tree.keys() {
        let f = std::fs::File::open(dir.join(rel)).unwrap();
        f.set_modified(t).unwrap();
    }
}

/// Every node below `root`, by relative path, read whole.
pub fn read_tree(root: &Node) -> Tree {
    let mut out = Tree::new();
    let mut todo = vec![(String::new(), root.clone())];
    while let Some((path, node)) = todo.pop() {
        match node {
            Node::Dir(d) => {
                if !path.is_empty() {
                    out.insert(path.clone(), None);
                }
                for (name, child) in d.entries().unwrap() {
                    let rel = if path.is_empty() {
                        name
                    } else {
                        format!("{path}/{name}")
                    };
                    todo.push((rel, child));
                }
            }
            Node::File(f) => {
                out.insert(path, Some(read_all(f.as_ref())));
            }
            Node::Symlink(_) | Node::Special(_) => {
                panic!("{path}: only files and folders expected")
            }
        }
    }
    out
}

/// The whole file, read in odd-sized pieces.
pub fn read_all(f: &dyn FileNode) -> Vec<u8> {
    let size = f.size().unwrap() as usize;
    let mut out = vec![0u8; size];
    let mut at = 0;
    let mut step = 4093;
    while at < size {
        let n = f
            .read_at(at as u64, &mut out[at..(at + step).min(size)])
            .unwrap();
        assert!(n > 0, "short read at {at} of {size}");
        at += n;
        step = step * 3 % 300_007 + 1;
    }
    let mut past = [0u8; 16];
    assert_eq!(f.read_at(size as u64, &mut past).unwrap(), 0);
    out
}

/// Compares two trees, naming the first difference (paths and sizes, not whole contents).
pub fn assert_same(got: &Tree, want: &Tree) {
    let names = |t: &Tree| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "names differ");
    for (k, v) in want {
        let g = &got[k];
        match (g, v) {
            (Some(g), Some(v)) => {
                assert_eq!(g.len(), v.len(), "{k}: size");
                assert!(
                    sha(g) == sha(v),
                    "{k}: contents differ (sha256 {} vs {})",
                    sha(g),
                    sha(v)
                );
            }
            _ => assert_eq!(g.is_none(), v.is_none(), "{k}: kind"),
        }
    }
}

/// sha256 in hex.
pub fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A FAT image of `kib` KiB made by `mkfs.vfat -F bits` holding `tree` (copied by `mcopy`).
pub fn make_fat(dir: &Path, bits: u32, kib: u64, tree: &Tree, mtime: u64) -> PathBuf {
    let src = dir.join(format!("fat{bits}-src"));
    write_tree(&src, tree, mtime);
    let img = dir.join(format!("fat{bits}.img"));
    run(Command::new("mkfs.vfat")
        .args(["-C", "-F", &bits.to_string()])
        .arg(&img)
        .arg(kib.to_string()));
    let top: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    run(Command::new("mcopy")
        .args(["-s", "-m", "-Q", "-i"])
        .arg(&img)
        .args(&top)
        .arg("::/"));
    img
}

/// Whether `path` is a mount point (per /proc/self/mountinfo).
fn mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// An NTFS image of `mib` MiB made by `mkntfs`, filled by `fill` through an `ntfs-3g` mount
/// (with `options`) of it, unmounted and flushed before this returns.
pub fn make_ntfs(dir: &Path, mib: u64, options: &str, fill: impl FnOnce(&Path)) -> PathBuf {
    let img = dir.join("ntfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    run(Command::new("mkntfs").args(["-F", "-f", "-q"]).arg(&img));
    let mnt = dir.join("ntfs-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    let mut daemon = Command::new("ntfs-3g")
        .args(["-o", &format!("no_detach,{options}")])
        .arg(&img)
        .arg(&mnt)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ntfs-3g (.ci/run installs it)");
    let started = std::time::Instant::now();
    while !mounted(&mnt) {
        assert!(
            started.elapsed().as_secs() < 20,
            "ntfs-3g did not mount {}",
            img.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let filled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fill(&mnt)));
    run(Command::new("umount").arg(&mnt));
    // ntfs-3g writes everything back before it exits.
    assert!(daemon.wait().unwrap().success(), "ntfs-3g failed");
    if let Err(p) = filled {
        std::panic::resume_unwind(p);
    }
    img
}

/// 8 threads reading random ranges of `files` at once (400 reads each); every byte must equal
/// the file's expected contents.
pub fn read_at_once(files: Vec<(Arc<dyn FileNode>, Vec<u8>)>) {
    let files = Arc::new(files);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let files = files.clone();
            std::thread::spawn(move || {
                let mut x = t + 1;
                for _ in 0..400 {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let (f, data) = &files[(x >> 33) as usize % files.len()];
                    let off = (x >> 20) as usize % (data.len() + 1);
                    let len = (x >> 7) as usize % 70_000;
                    let mut buf = vec![0u8; len];
                    let n = f.read_at(off as u64, &mut buf).unwrap();
                    assert_eq!(n, len.min(data.len() - off));
                    assert!(buf[..n] == data[off..off + n], "thread {t}: bytes differ");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
