//! ext2/3/4 read in user space from a partition slice: superblock, group descriptors, inodes,
//! extent trees and indirect block maps, linear directories (hashed ones read linearly), with
//! committed journal transactions replayed in memory (`journal`), as a mount shows it. Every
//! structure is checked; damage fails the file or folder that depends on it with the image, the
//! file system offset and the structure named. Shared by all threads (`Sync`): no reader state.
//!
//! Not the `ext4-view` crate: its API has no inode numbers (hard links), no extent map (holes,
//! `st_blocks`), seeks by walking every block from the start, and is not `Send`.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::inside::journal::{self, Overlay};
use crate::inside::partition::read_exact;
use crate::vfs::{
    self, Attr, Cursor, Directory, ErrorFile, FileNode, Node, NodeKind, Special, SpecialKind,
    Symlink,
};

/// The root folder's inode number.
const ROOT_INO: u32 = 2;
/// Deepest extent tree accepted (the kernel allows 5).
const MAX_DEPTH: u16 = 5;
/// Most extent tree nodes or indirect blocks read for one file.
const MAX_MAP_BLOCKS: usize = 1 << 14;
/// Most runs (extents) a file may have: bounds the memory of its map (24 MiB).
const MAX_RUNS: usize = 1 << 20;
/// Largest folder read (bytes of directory blocks; a million entries take about 40 MiB).
const MAX_DIR_BYTES: u64 = 64 << 20;
/// Largest symlink target read.
const MAX_LINK: u64 = 4096;

/// Incompatible features this reader understands (filetype, recover, meta_bg is not,
/// extents, 64bit, mmp, flex_bg, csum_seed, largedir, and inline data per file).
const INCOMPAT_OK: u32 = 0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x2000 | 0x4000 | 0x8000;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_RECOVER: u32 = 0x4;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const FL_HUGE_FILE: u32 = 0x40000;
const FL_EXTENTS: u32 = 0x80000;
const FL_INLINE_DATA: u32 = 0x1000_0000;
const FL_ENCRYPT: u32 = 0x800;

/// One mounted (in user space) ext file system.
pub struct Fs {
    dev: Arc<dyn FileNode>,
    what: String,
    bs: u64,
    inodes_count: u32,
    inodes_per_group: u32,
    inode_size: u64,
    desc_size: u64,
    gdt: u64,
    groups: u64,
    filetype: bool,
    huge_file: bool,
    /// Blocks that committed journal transactions replace (empty for a clean file system).
    journal: Overlay,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The root folder of the ext file system on `dev` (`what` names image and partition).
pub fn open(dev: Arc<dyn FileNode>, what: &str) -> Result<Node> {
    let sb = read_exact(dev.as_ref(), what, 1024, 1024)?;
    let fs = Arc::new(Fs::load(dev, what)?.with_journal(&sb));
    fs.node(ROOT_INO, Vec::new())
}

impl Fs {
    fn load(dev: Arc<dyn FileNode>, what: &str) -> Result<Fs> {
        let sb = read_exact(dev.as_ref(), what, 1024, 1024)?;
        let bad =
            |msg: String| Error::corrupt(Path::new(what), 1024, format!("ext superblock: {msg}"));
        if le16(&sb, 56) != 0xEF53 {
            return Err(bad("no magic".into()));
        }
        let incompat = le32(&sb, 96);
        if incompat & !INCOMPAT_OK != 0 {
            let msg = format!(
                "ext features {:#x} not supported (meta_bg, encryption, …)",
                incompat & !INCOMPAT_OK
            );
            return Err(Error::unsupported(Path::new(what), msg));
        }
        let log = le32(&sb, 24);
        if log > 6 {
            return Err(bad(format!("block size 2^{log} KiB")));
        }
        let bs = 1024u64 << log;
        let wide = incompat & INCOMPAT_64BIT != 0;
        let inode_size = match le32(&sb, 76) {
            0 => 128,
            _ => u64::from(le16(&sb, 88)),
        };
        let desc_size = if wide { u64::from(le16(&sb, 254)) } else { 32 };
        let high = if wide {
            u64::from(le32(&sb, 336)) << 32
        } else {
            0
        };
        let (ipg, bpg) = (le32(&sb, 40), le32(&sb, 32));
        let (blocks, first) = (u64::from(le32(&sb, 4)) | high, u64::from(le32(&sb, 20)));
        if !(128..=bs).contains(&inode_size) || !inode_size.is_power_of_two() {
            return Err(bad(format!("inode size {inode_size}")));
        }
        if !(32..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return Err(bad(format!("group descriptor size {desc_size}")));
        }
        if ipg == 0 || bpg == 0 || blocks <= first {
            return Err(bad("empty geometry".into()));
        }
        Ok(Fs {
            what: what.to_owned(),
            bs,
            inodes_count: le32(&sb, 0),
            inodes_per_group: ipg,
            inode_size,
            desc_size,
            gdt: (first + 1) * bs,
            groups: (blocks - first).div_ceil(u64::from(bpg)),
            filetype: incompat & INCOMPAT_FILETYPE != 0,
            huge_file: le32(&sb, 100) & RO_COMPAT_HUGE_FILE != 0,
            dev,
            journal: Overlay::new(),
        })
    }

    /// Replays the journal when the file system says it needs recovery (has_journal and
    /// needs_recovery), as a mount would; a damaged journal is logged and left out.
    fn with_journal(mut self, sb: &[u8]) -> Fs {
        if le32(sb, 92) & COMPAT_HAS_JOURNAL == 0 || le32(sb, 96) & INCOMPAT_RECOVER == 0 {
            return self;
        }
        match self.journal_overlay(le32(sb, 0xE0)) {
            Ok(o) => self.journal = o,
            Err(e) => log::warn!("{e}; journal not replayed"),
        }
        self
    }

    fn journal_overlay(&self, ino: u32) -> Result<Overlay> {
        let inode = self.inode(ino)?;
        let runs = self.map(&inode)?;
        let read = |pos: u64| -> Result<(Vec<u8>, u64)> {
            let at = pos.saturating_mul(self.bs);
            let Some(run) = locate(&runs, at, self.bs).0.filter(|_| at < inode.size) else {
                return Err(self.corrupt(inode.at, format!("journal block {pos} not mapped")));
            };
            let at = physical(self, run, at)?;
            Ok((self.read(at, self.bs as usize)?, at / self.bs))
        };
        journal::load(&journal::Source {
            read: &read,
            block_size: self.bs,
            what: &self.what,
        })
    }

    fn corrupt(&self, offset: u64, msg: String) -> Error {
        Error::corrupt(Path::new(&self.what), offset, msg)
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        if self.journal.is_empty() {
            return read_exact(self.dev.as_ref(), &self.what, offset, len);
        }
        let mut buf = vec![0; len];
        if self.read_dev(offset, &mut buf, None)? < len {
            let msg = format!("partition ends inside a {len}-byte structure");
            return Err(self.corrupt(offset, msg));
        }
        Ok(buf)
    }

    /// Reads the partition at `at`, blocks the journal replaces taken from the journal.
    fn read_dev(&self, at: u64, buf: &mut [u8], cursor: Option<&Cursor>) -> Result<usize> {
        let plain = |at: u64, out: &mut [u8]| match cursor {
            Some(c) => self.dev.read_at_by(c, at, out),
            None => self.dev.read_at(at, out),
        };
        if self.journal.is_empty() {
            return plain(at, buf);
        }
        let mut done = 0;
        while done < buf.len() {
            let pos = at + done as u64;
            let (block, within) = (pos / self.bs, pos % self.bs);
            let n = (buf.len() - done).min((self.bs - within) as usize);
            let out = &mut buf[done..done + n];
            let got = match self.journal.get(&block) {
                None => plain(pos, out)?,
                Some(&(copy, escaped)) => {
                    let got = self.dev.read_at(copy * self.bs + within, out)?;
                    if escaped && within < 4 {
                        let magic = 0xC03B_3998u32.to_be_bytes();
                        let k = (4 - within as usize).min(got);
                        out[..k].copy_from_slice(&magic[within as usize..within as usize + k]);
                    }
                    got
                }
            };
            done += got;
            if got < n {
                break;
            }
        }
        Ok(done)
    }

    /// Byte offset of block `b`, checked.
    fn block_at(&self, b: u64, what: &str) -> Result<u64> {
        b.checked_mul(self.bs)
            .filter(|&o| b != 0 && o.checked_add(self.bs).is_some())
            .ok_or_else(|| self.corrupt(0, format!("{what}: block {b} out of range")))
    }

    fn inode(&self, ino: u32) -> Result<Inode> {
        if ino == 0 || ino > self.inodes_count {
            return Err(self.corrupt(1024, format!("inode {ino} out of range")));
        }
        let (g, i) = (
            u64::from((ino - 1) / self.inodes_per_group),
            u64::from((ino - 1) % self.inodes_per_group),
        );
        if g >= self.groups {
            return Err(self.corrupt(1024, format!("inode {ino}: group {g} past the last")));
        }
        let d_at = self.gdt + g * self.desc_size;
        let d = self.read(d_at, self.desc_size as usize)?;
        let hi = if self.desc_size >= 64 {
            u64::from(le32(&d, 0x28)) << 32
        } else {
            0
        };
        let table = self.block_at(
            u64::from(le32(&d, 8)) | hi,
            &format!("group {g} descriptor at {d_at}"),
        )?;
        let at = table
            .checked_add(i * self.inode_size)
            .ok_or_else(|| self.corrupt(d_at, format!("group {g}: inode table out of range")))?;
        let raw = self.read(at, self.inode_size as usize)?;
        Ok(Inode::parse(ino, at, &raw, self))
    }

    /// The node of inode `ino`, below the folders `above` (their inodes, the root first).
    fn node(self: &Arc<Self>, ino: u32, above: Vec<u32>) -> Result<Node> {
        let inode = self.inode(ino)?;
        let attr = inode.attr();
        Ok(match inode.mode & 0xF000 {
            0x8000 => Node::File(Arc::new(File {
                fs: Arc::clone(self),
                inode,
                map: OnceLock::new(),
            })),
            0x4000 => Node::Dir(Arc::new(Dir {
                fs: Arc::clone(self),
                inode,
                listing: OnceLock::new(),
                above,
            })),
            0xA000 => Node::Symlink(Arc::new(Symlink {
                target: self.link_target(&inode)?,
                attr,
            })),
            m => {
                let kind = match m {
                    0x2000 => SpecialKind::CharDevice,
                    0x6000 => SpecialKind::BlockDevice,
                    0x1000 => SpecialKind::Fifo,
                    0xC000 => SpecialKind::Socket,
                    _ => {
                        return Err(
                            self.corrupt(inode.at, format!("inode {ino}: file type {m:#o}"))
                        );
                    }
                };
                let (old, new) = (le32(&inode.block, 0), le32(&inode.block, 4));
                let rdev = if old != 0 { old } else { new };
                Node::Special(Arc::new(Special { kind, rdev, attr }))
            }
        })
    }

    fn link_target(&self, inode: &Inode) -> Result<String> {
        let size = inode.size;
        if size > MAX_LINK {
            return Err(self.corrupt(
                inode.at,
                format!("inode {}: symlink of {size} bytes", inode.ino),
            ));
        }
        // As the kernel decides: a target under 60 bytes is held in the inode itself.
        let bytes = if size < 60 {
            inode.block[..size as usize].to_vec()
        } else {
            // Its target is read with every listing of its folder: a hostile extent tree must
            // not cost thousands of reads each time. At most 4 blocks need one path down.
            let map = self.map_within(inode, usize::from(MAX_DEPTH))?;
            let mut buf = vec![0; size as usize];
            read_mapped(self, &map, inode.size, 0, &mut buf, None)?;
            buf
        };
        Ok(vfs::name_from_bytes(&bytes))
    }

    /// The data runs of `inode` (holes and unwritten extents left out), sorted.
    fn map(&self, inode: &Inode) -> Result<Vec<Run>> {
        self.map_within(inode, MAX_MAP_BLOCKS)
    }

    /// [`map`](Self::map), reading at most `budget` blocks of extent tree or block map.
    fn map_within(&self, inode: &Inode, budget: usize) -> Result<Vec<Run>> {
        if inode.flags & (FL_INLINE_DATA | FL_ENCRYPT) != 0 {
            return Err(Error::unsupported(
                Path::new(&self.what),
                format!(
                    "inode {}: inline or encrypted data not supported",
                    inode.ino
                ),
            ));
        }
        let mut m = Mapper {
            fs: self,
            ino: inode.ino,
            runs: Vec::new(),
            budget,
        };
        let blocks = inode.size.div_ceil(self.bs);
        if inode.flags & FL_EXTENTS != 0 {
            m.extent_node(&inode.block, None, inode.at + 40)?;
        } else {
            m.indirect(&inode.block, blocks)?;
        }
        let mut runs = m.runs;
        runs.sort_by_key(|r| r.logical);
        for w in runs.windows(2) {
            if w[0].logical + w[0].len > w[1].logical {
                return Err(self.corrupt(
                    inode.at,
                    format!("inode {}: overlapping extents", inode.ino),
                ));
            }
        }
        Ok(runs)
    }
}

/// A contiguous run of a file's blocks on disk.
#[derive(Clone, Copy, Debug)]
struct Run {
    logical: u64,
    len: u64,
    physical: u64,
}

/// Builds a file's run list from its extent tree or block map, within a budget of blocks read.
struct Mapper<'a> {
    fs: &'a Fs,
    ino: u32,
    runs: Vec<Run>,
    budget: usize,
}

impl Mapper<'_> {
    fn bad(&self, at: u64, msg: &str) -> Error {
        self.fs.corrupt(at, format!("inode {}: {msg}", self.ino))
    }

    fn child(&mut self, b: u64, at: u64) -> Result<(Vec<u8>, u64)> {
        if self.budget == 0 {
            return Err(self.bad(at, "block map too large"));
        }
        self.budget -= 1;
        let off = self.fs.block_at(b, &format!("inode {} map", self.ino))?;
        Ok((self.fs.read(off, self.fs.bs as usize)?, off))
    }

    fn extent_node(&mut self, node: &[u8], want_depth: Option<u16>, at: u64) -> Result<()> {
        if le16(node, 0) != 0xF30A {
            return Err(self.bad(at, "extent header: bad magic"));
        }
        let (count, depth) = (usize::from(le16(node, 2)), le16(node, 6));
        if 12 + count * 12 > node.len()
            || depth > MAX_DEPTH
            || want_depth.is_some_and(|d| d != depth)
        {
            return Err(self.bad(at, "extent header: bad entry count or depth"));
        }
        for e in node[12..12 + count * 12].chunks_exact(12) {
            let lo = u64::from(le32(e, 0));
            if depth == 0 {
                let len = u64::from(le16(e, 4));
                let physical = u64::from(le16(e, 6)) << 32 | u64::from(le32(e, 8));
                if len > 32768 || len == 0 {
                    continue; // unwritten extents read as zeros, like holes
                }
                self.push(
                    Run {
                        logical: lo,
                        len,
                        physical,
                    },
                    at,
                )?;
            } else {
                let b = u64::from(le16(e, 8)) << 32 | u64::from(le32(e, 4));
                let (child, off) = self.child(b, at)?;
                self.extent_node(&child, Some(depth - 1), off)?;
            }
        }
        Ok(())
    }

    /// The ext2/3 map: 12 direct pointers, then single, double and triple indirect blocks.
    fn indirect(&mut self, iblock: &[u8], blocks: u64) -> Result<()> {
        let per = self.fs.bs / 4;
        for i in 0..12u64 {
            self.leaf(i, u64::from(le32(iblock, i as usize * 4)))?;
        }
        let mut base = 12;
        for level in 1..=3u32 {
            let span = per.pow(level);
            let ptr = u64::from(le32(iblock, (11 + level as usize) * 4));
            if base >= blocks {
                break;
            }
            if ptr != 0 {
                self.tree(ptr, level, base, blocks)?;
            }
            base += span;
        }
        Ok(())
    }

    fn tree(&mut self, ptr: u64, level: u32, base: u64, blocks: u64) -> Result<()> {
        let per = self.fs.bs / 4;
        let (b, _) = self.child(ptr, 0)?;
        let span = per.pow(level - 1);
        for (i, p) in b.chunks_exact(4).enumerate() {
            let at = base + i as u64 * span;
            let p = u64::from(le32(p, 0));
            if at >= blocks {
                break;
            }
            if p == 0 {
                continue;
            }
            if level == 1 {
                self.leaf(at, p)?;
            } else {
                self.tree(p, level - 1, at, blocks)?;
            }
        }
        Ok(())
    }

    fn leaf(&mut self, logical: u64, physical: u64) -> Result<()> {
        if physical == 0 {
            return Ok(());
        }
        if let Some(last) = self.runs.last_mut()
            && last.logical + last.len == logical
            && last.physical.checked_add(last.len) == Some(physical)
        {
            last.len += 1;
            return Ok(());
        }
        self.push(
            Run {
                logical,
                len: 1,
                physical,
            },
            0,
        )
    }

    fn push(&mut self, run: Run, at: u64) -> Result<()> {
        if self.runs.len() >= MAX_RUNS {
            return Err(self.bad(at, "too many extents"));
        }
        self.runs.push(run);
        Ok(())
    }
}

/// The fields of an inode this reader uses.
struct Inode {
    ino: u32,
    at: u64,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    links: u16,
    blocks512: u64,
    flags: u32,
    block: [u8; 60],
    mtime: SystemTime,
}

impl Inode {
    fn parse(ino: u32, at: u64, r: &[u8], fs: &Fs) -> Inode {
        let flags = le32(r, 32);
        let mut blocks = u64::from(le32(r, 28)) | u64::from(le16(r, 116)) << 32;
        if fs.huge_file && flags & FL_HUGE_FILE != 0 {
            blocks = blocks.saturating_mul(fs.bs / 512);
        }
        let extra = if r.len() > 128 {
            usize::from(le16(r, 128))
        } else {
            0
        };
        let secs = i64::from(le32(r, 16) as i32);
        let (secs, nanos) = if extra >= 12 && r.len() >= 140 {
            let x = le32(r, 136);
            (secs + (i64::from(x & 3) << 32), (x >> 2).min(999_999_999))
        } else {
            (secs, 0)
        };
        let mtime = if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(u64::from(nanos))
        };
        Inode {
            ino,
            at,
            mode: le16(r, 0),
            uid: u32::from(le16(r, 2)) | u32::from(le16(r, 120)) << 16,
            gid: u32::from(le16(r, 24)) | u32::from(le16(r, 122)) << 16,
            size: u64::from(le32(r, 4)) | u64::from(le32(r, 108)) << 32,
            links: le16(r, 26),
            blocks512: blocks,
            flags,
            block: r[40..100].try_into().expect("60 bytes"),
            mtime,
        }
    }

    fn attr(&self) -> Attr {
        Attr {
            perm: self.mode & 0o7777,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
        }
    }
}

/// Reads `buf.len()` bytes (fewer at the end) of a mapped file from `offset`: holes as zeros.
fn read_mapped(
    fs: &Fs,
    runs: &[Run],
    size: u64,
    offset: u64,
    buf: &mut [u8],
    cursor: Option<&Cursor>,
) -> Result<usize> {
    let n = vfs::clamp(offset, buf.len(), size);
    let mut done = 0;
    while done < n {
        let pos = offset + done as u64;
        let (run, till) = locate(runs, pos, fs.bs);
        let chunk = (n - done).min(usize::try_from(till - pos).unwrap_or(usize::MAX));
        let out = &mut buf[done..done + chunk];
        match run {
            None => out.fill(0),
            Some(r) => {
                let at = physical(fs, r, pos)?;
                let got = fs.read_dev(at, out, cursor)?;
                if got < chunk {
                    return Err(fs.corrupt(at, "file data past the end of the partition".into()));
                }
            }
        }
        done += chunk;
    }
    Ok(n)
}

/// The run holding byte `pos` (`None` in a hole) and where that run or hole ends.
fn locate(runs: &[Run], pos: u64, bs: u64) -> (Option<&Run>, u64) {
    let block = pos / bs;
    let i = runs.partition_point(|r| r.logical + r.len <= block);
    match runs.get(i) {
        Some(r) if r.logical <= block => (Some(r), (r.logical + r.len).saturating_mul(bs)),
        Some(r) => (None, r.logical.saturating_mul(bs)),
        None => (None, u64::MAX),
    }
}

fn physical(fs: &Fs, r: &Run, pos: u64) -> Result<u64> {
    let block = r.physical.checked_add(pos / fs.bs - r.logical);
    block
        .and_then(|b| b.checked_mul(fs.bs))
        .and_then(|o| o.checked_add(pos % fs.bs))
        .ok_or_else(|| fs.corrupt(0, format!("extent at block {} out of range", r.physical)))
}

/// A regular file of the file system.
struct File {
    fs: Arc<Fs>,
    inode: Inode,
    map: OnceLock<Result<Vec<Run>>>,
}

impl File {
    fn runs(&self) -> Result<&[Run]> {
        match self.map.get_or_init(|| self.fs.map(&self.inode)) {
            Ok(r) => Ok(r),
            Err(e) => Err(e.clone()),
        }
    }
}

impl FileNode for File {
    fn size(&self) -> Result<u64> {
        Ok(self.inode.size)
    }

    fn check(&self) -> Result<()> {
        self.runs().map(|_| ())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        read_mapped(&self.fs, self.runs()?, self.inode.size, offset, buf, None)
    }

    fn read_at_by(&self, cursor: &Cursor, offset: u64, buf: &mut [u8]) -> Result<usize> {
        read_mapped(
            &self.fs,
            self.runs()?,
            self.inode.size,
            offset,
            buf,
            Some(cursor),
        )
    }

    fn read_with(&self, offset: u64, len: usize, f: &mut dyn FnMut(&[u8])) -> Result<bool> {
        self.read_with_by(&Cursor::default(), offset, len, f)
    }

    fn read_with_by(
        &self,
        cursor: &Cursor,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<bool> {
        let n = vfs::clamp(offset, len, self.inode.size);
        let (Some(r), till) = locate(self.runs()?, offset, self.fs.bs) else {
            return Ok(false);
        };
        if n == 0 || till - offset < n as u64 {
            return Ok(false);
        }
        let at = physical(&self.fs, r, offset)?;
        let bs = self.fs.bs;
        let journaled =
            || (at / bs..=(at + n as u64 - 1) / bs).any(|b| self.fs.journal.contains_key(&b));
        if !self.fs.journal.is_empty() && journaled() {
            return Ok(false);
        }
        // A run past the partition's end hands over fewer bytes: read_at then fails it.
        let mut whole = true;
        let handed = self.fs.dev.read_with_by(cursor, at, n, &mut |b| {
            whole = b.len() == n;
            if whole {
                f(b);
            }
        })?;
        Ok(handed && whole)
    }

    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        let size = self.inode.size;
        Ok(match locate(self.runs()?, offset, self.fs.bs) {
            (Some(_), _) => Some(offset),
            (None, till) => Some(till).filter(|&t| t < size),
        }
        .filter(|&o| o < size))
    }

    fn next_hole(&self, offset: u64) -> Result<u64> {
        let runs = self.runs()?;
        let mut pos = offset;
        while let (Some(_), till) = locate(runs, pos, self.fs.bs) {
            pos = till;
        }
        Ok(pos.min(self.inode.size).max(offset.min(self.inode.size)))
    }

    fn nlink(&self) -> u32 {
        u32::from(self.inode.links.max(1))
    }

    fn allocated(&self) -> Result<u64> {
        Ok(self.inode.blocks512.saturating_mul(512))
    }

    fn identity(&self) -> Option<(usize, u64)> {
        Some((Arc::as_ptr(&self.fs) as usize, u64::from(self.inode.ino)))
    }

    fn attr(&self) -> Attr {
        self.inode.attr()
    }
}

/// One folder entry: name, inode, type from the entry (0 when the file system has none).
type Entry = (String, u32, u8);

/// A folder of the file system; its entries are read when first asked for.
struct Dir {
    fs: Arc<Fs>,
    inode: Inode,
    listing: OnceLock<Result<Vec<Entry>>>,
    /// The inodes of the folders above it, the root first.
    above: Vec<u32>,
}

impl Dir {
    fn listing(&self) -> Result<&[Entry]> {
        match self.listing.get_or_init(|| self.read_listing()) {
            Ok(l) => Ok(l),
            Err(e) => Err(e.clone()),
        }
    }

    fn read_listing(&self) -> Result<Vec<Entry>> {
        let fs = &self.fs;
        let size = self.inode.size;
        if size > MAX_DIR_BYTES || !size.is_multiple_of(fs.bs) {
            return Err(fs.corrupt(
                self.inode.at,
                format!("folder inode {}: size {size}", self.inode.ino),
            ));
        }
        let runs = fs.map(&self.inode)?;
        let mut data = vec![0; size as usize];
        read_mapped(fs, &runs, size, 0, &mut data, None)?;
        let mut out = Vec::new();
        for (i, block) in data.chunks_exact(fs.bs as usize).enumerate() {
            self.parse_block(block, i as u64, &mut out)?;
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn parse_block(&self, b: &[u8], index: u64, out: &mut Vec<Entry>) -> Result<()> {
        let mut pos = 0;
        while pos + 8 <= b.len() {
            let ino = le32(b, pos);
            let rec = usize::from(le16(b, pos + 4));
            let (len, kind) = if self.fs.filetype {
                (usize::from(b[pos + 6]), b[pos + 7])
            } else {
                (usize::from(le16(b, pos + 6)), 0)
            };
            if rec < 8 || pos + rec > b.len() || 8 + len > rec {
                let msg = format!(
                    "folder inode {}: entry at {pos} of block {index}",
                    self.inode.ino
                );
                return Err(self.fs.corrupt(self.inode.at, msg));
            }
            let name = &b[pos + 8..pos + 8 + len];
            // A name with `/` or NUL (never written by ext4) would be a path, not a name.
            let usable = !name.is_empty() && name != b"." && name != b"..";
            if ino != 0 && usable && !name.contains(&b'/') && !name.contains(&0) {
                out.push((vfs::name_from_bytes(name), ino, kind));
            }
            pos += rec;
        }
        Ok(())
    }

    fn child(&self, e: &Entry) -> Node {
        let mut above = self.above.clone();
        above.push(self.inode.ino);
        // A folder has one parent: an entry naming a folder on its own path is a loop that
        // would make the tree endless (`find` would never finish).
        let node = if above.contains(&e.1) {
            let msg = format!(
                "folder inode {}: entry {:?} names folder inode {} above it (a loop)",
                self.inode.ino, e.0, e.1
            );
            Err(self.fs.corrupt(self.inode.at, msg))
        } else {
            self.fs.node(e.1, above)
        };
        node.unwrap_or_else(|err| {
            log::warn!("{err}");
            Node::File(ErrorFile::new(0, err, self.inode.attr()))
        })
    }
}

fn kind_of(t: u8) -> NodeKind {
    match t {
        2 => NodeKind::Dir,
        3 => NodeKind::Special(SpecialKind::CharDevice),
        4 => NodeKind::Special(SpecialKind::BlockDevice),
        5 => NodeKind::Special(SpecialKind::Fifo),
        6 => NodeKind::Special(SpecialKind::Socket),
        7 => NodeKind::Symlink,
        _ => NodeKind::File,
    }
}

impl Directory for Dir {
    fn entries(&self) -> Result<Vec<(String, Node)>> {
        Ok(self
            .listing()?
            .iter()
            .map(|e| (e.0.clone(), self.child(e)))
            .collect())
    }

    fn names(&self) -> Result<Vec<(String, NodeKind)>> {
        let l = self.listing()?;
        if !self.fs.filetype {
            return Ok(l
                .iter()
                .map(|e| (e.0.clone(), self.child(e).kind()))
                .collect());
        }
        Ok(l.iter().map(|e| (e.0.clone(), kind_of(e.2))).collect())
    }

    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        let l = self.listing()?;
        Ok(l.binary_search_by(|e| e.0.as_str().cmp(name))
            .ok()
            .map(|i| self.child(&l[i])))
    }

    fn attr(&self) -> Attr {
        self.inode.attr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::BytesFile;
    use std::process::Command;

    fn run(cmd: &str, args: &[&str]) {
        let out = Command::new(cmd).args(args).output().unwrap();
        assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    }

    /// A 2 MiB ext4 (1 KiB blocks) holding `f` (8 KiB), its first extent moved to `physical`.
    fn image_with_extent_at(physical: u64) -> (Vec<u8>, Vec<u8>) {
        let t = tempfile::tempdir().unwrap();
        let (src, img) = (t.path().join("src"), t.path().join("img"));
        std::fs::create_dir(&src).unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(src.join("f"), &data).unwrap();
        let (s, i) = (src.to_str().unwrap(), img.to_str().unwrap());
        run("mkfs.ext4", &["-q", "-F", "-b", "1024", "-d", s, i, "2048"]);
        let sif = format!("sif /f block[5] {physical}");
        run("debugfs", &["-w", "-R", &sif, i]);
        (std::fs::read(&img).unwrap(), data)
    }

    fn file(img: Vec<u8>) -> Arc<dyn FileNode> {
        let attr = Attr {
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime: SystemTime::UNIX_EPOCH,
        };
        let Node::Dir(root) = open(BytesFile::new(img, attr), "img").unwrap() else {
            panic!("root is not a folder");
        };
        match root.lookup("f").unwrap() {
            Some(Node::File(f)) => f,
            _ => panic!("no file f"),
        }
    }

    #[test]
    fn a_folder_linked_below_itself_is_not_served_as_an_endless_tree() {
        let t = tempfile::tempdir().unwrap();
        let (src, img) = (t.path().join("src"), t.path().join("img"));
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/x"), b"hi").unwrap();
        let (s, i) = (src.to_str().unwrap(), img.to_str().unwrap());
        run("mkfs.ext4", &["-q", "-F", "-b", "1024", "-d", s, i, "2048"]);
        // `d/loop` and `d/up` name `d` and the root again: a hostile image's folder loops.
        run("debugfs", &["-w", "-R", "ln /d /d/loop", i]);
        run("debugfs", &["-w", "-R", "ln / /d/up", i]);
        let attr = Attr {
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime: SystemTime::UNIX_EPOCH,
        };
        let img = BytesFile::new(std::fs::read(&img).unwrap(), attr);
        let Node::Dir(root) = open(img, "img").unwrap() else {
            panic!("root is not a folder");
        };
        let Some(Node::Dir(d)) = root.lookup("d").unwrap() else {
            panic!("no folder d");
        };
        for name in ["loop", "up"] {
            match d.lookup(name).unwrap() {
                Some(Node::File(f)) => assert!(f.read_at(0, &mut [0; 1]).is_err(), "{name}"),
                _ => panic!("d/{name} is served as a folder: the tree never ends"),
            }
        }
        assert!(matches!(d.lookup("x").unwrap(), Some(Node::File(_))));
    }

    /// A disk that counts its reads.
    struct Counted(Arc<dyn FileNode>, std::sync::atomic::AtomicU64);

    impl FileNode for Counted {
        fn size(&self) -> Result<u64> {
            self.0.size()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.read_at(offset, buf)
        }
        fn attr(&self) -> Attr {
            self.0.attr()
        }
    }

    #[test]
    fn a_symlink_with_a_deep_extent_tree_costs_a_few_reads_not_thousands() {
        let t = tempfile::tempdir().unwrap();
        let (src, img) = (t.path().join("src"), t.path().join("img"));
        std::fs::create_dir(&src).unwrap();
        std::os::unix::fs::symlink("x".repeat(100), src.join("l")).unwrap();
        let (s, i) = (src.to_str().unwrap(), img.to_str().unwrap());
        run("mkfs.ext4", &["-q", "-F", "-b", "1024", "-d", s, i, "2048"]);
        let out = Command::new("debugfs").args(["-R", "imap /l", i]).output();
        let text = String::from_utf8(out.unwrap().stdout).unwrap();
        let word = |after: &str| text.split(after).nth(1).unwrap().split([',', '\n']).next();
        let block: u64 = word("located at block ").unwrap().trim().parse().unwrap();
        let offset = u64::from_str_radix(word("offset 0x").unwrap().trim(), 16).unwrap();
        // Blocks 2000..2004 hold index nodes of depths 0..3, each of whose entries (as many
        // as a block holds) names the node one level down; the symlink's root (depth 4) names
        // the depth 3 node four times: 4 * 84^3 nodes to read for a 100-byte target.
        let mut disk = std::fs::read(&img).unwrap();
        let node = |depth: u16, count: u16, child: u32| {
            let mut b = vec![0u8; 12 + 12 * usize::from(count)];
            b[0..2].copy_from_slice(&0xF30Au16.to_le_bytes());
            b[2..4].copy_from_slice(&count.to_le_bytes());
            b[4..6].copy_from_slice(&count.to_le_bytes());
            b[6..8].copy_from_slice(&depth.to_le_bytes());
            for e in b[12..].chunks_exact_mut(12) {
                e[4..8].copy_from_slice(&child.to_le_bytes());
            }
            b
        };
        for depth in 0..4u16 {
            let at = (2000 + usize::from(depth)) * 1024;
            let b = node(
                depth,
                if depth == 0 { 0 } else { 84 },
                1999 + u32::from(depth),
            );
            disk[at..at + b.len()].copy_from_slice(&b);
        }
        let at = (block * 1024 + offset + 40) as usize;
        disk[at..at + 60].copy_from_slice(&node(4, 4, 2003));
        let attr = Attr {
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime: SystemTime::UNIX_EPOCH,
        };
        let dev = Arc::new(Counted(BytesFile::new(disk, attr), Default::default()));
        let Node::Dir(root) = open(dev.clone(), "img").unwrap() else {
            panic!("root is not a folder");
        };
        let before = dev.1.load(std::sync::atomic::Ordering::Relaxed);
        let _ = root.lookup("l").unwrap();
        let reads = dev.1.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(reads < 100, "{reads} reads to look up one symlink");
    }

    #[test]
    fn data_past_the_partition_end_fails_instead_of_reading_short() {
        // Wholly past the end (block 5000 of 2048), and straddling it (2045..2053).
        for physical in [5000, 2045] {
            let (img, _) = image_with_extent_at(physical);
            let f = file(img);
            let mut got = None;
            let handed = f
                .read_with(0, 8192, &mut |b| got = Some(b.len()))
                .unwrap_or(false);
            assert!(
                !handed || got == Some(8192),
                "{physical}: handed {got:?} bytes"
            );
            assert!(f.read_at(0, &mut [0; 8192]).is_err(), "{physical}");
        }
    }
}
