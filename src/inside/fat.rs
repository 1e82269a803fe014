//! FAT12/16/32 with long names, read in user space as `vfs` nodes: folders are read when first
//! listed (and kept in their node), files follow their cluster chain once and then read any
//! offset straight from the device. Nothing is ever written.
//!
//! Written here rather than with the `fatfs` crate: its files seek by walking the chain from
//! the start on every seek, its folders borrow one non-`Sync` file system (one lock for the
//! whole mount), it cannot open a folder by cluster, it follows looping chains forever and
//! its errors carry no offsets. The format is small; every field read here is bounds-checked.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::device::read_exact_at;
use crate::error::{Error, Result};
use crate::vfs::{self, Attr, Directory, FileNode, ListedOnce, Listing, Node};

/// Most entries a FAT folder may hold (the specification's limit): bounds a listing.
const MAX_DIR_ENTRIES: u64 = 65_536;
/// Deepest folder nesting served (FAT paths end at 260 characters); deeper is hostile.
const MAX_DEPTH: usize = 256;
/// Most extents a file's chain is kept as (16 bytes each): a hostile, fully fragmented chain
/// of a 4 GiB file is refused rather than held.
const MAX_EXTENTS: usize = 1 << 20;
/// Bytes of the FAT read at once while following a chain.
const FAT_WINDOW: u64 = 16 << 10;

/// Opens the FAT file system on `dev` (`what` names image and partition in errors) and
/// returns its root folder.
pub fn open(dev: Arc<dyn FileNode>, what: &str) -> Result<Node> {
    let vol = Arc::new(Volume::read(dev, what)?);
    let root_loc = match vol.kind {
        Kind::Fat32 { root } => DirLoc::Chain(root, 44),
        _ => DirLoc::Fixed,
    };
    let mtime = vol.dev.attr().mtime;
    Ok(Node::Dir(Arc::new(FatDir::new(
        vol,
        root_loc,
        Attr::read_only(true, mtime),
        Vec::new(),
    ))))
}

/// Which FAT, and where FAT32 keeps its root folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32 { root: u32 },
}

/// The geometry from the boot sector, checked.
struct Volume {
    dev: Arc<dyn FileNode>,
    what: PathBuf,
    kind: Kind,
    cluster_size: u64,
    /// Offset and length of the FAT that is read.
    fat_at: u64,
    fat_len: u64,
    /// The fixed root folder of FAT12/16.
    root_at: u64,
    root_len: u64,
    /// Offset of cluster 2.
    data_at: u64,
    /// Highest valid cluster number.
    max_cluster: u32,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// Which FAT the boot sector `b` describes (FAT32 when the 16-bit FAT size is 0, like
/// Linux; else by cluster count), and how many clusters it has that its FAT can describe.
fn kind_and_clusters(b: &[u8], fat32: bool, clusters: u64, fat_len: u64) -> (Kind, u64) {
    let kind = if fat32 {
        Kind::Fat32 {
            root: le32(b, 44) as u32,
        }
    } else if clusters < 4085 {
        Kind::Fat12
    } else {
        Kind::Fat16
    };
    // Like Linux: clusters the FAT cannot describe do not exist.
    let described = match kind {
        Kind::Fat12 => fat_len * 2 / 3,
        Kind::Fat16 => fat_len / 2,
        Kind::Fat32 { .. } => fat_len / 4,
    };
    (
        kind,
        clusters.min(described.saturating_sub(2)).min(0x0fff_fff5),
    )
}

impl Volume {
    /// Reads and checks the boot sector of `dev`.
    fn read(dev: Arc<dyn FileNode>, what: &str) -> Result<Volume> {
        let what = PathBuf::from(what);
        let mut b = [0u8; 512];
        read_exact_at(dev.as_ref(), &what, 0, &mut b, "FAT boot sector")?;
        let bad = |at: u64, msg: &str| Error::corrupt(&what, at, format!("FAT boot sector: {msg}"));
        let bps = le16(&b, 11);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return Err(bad(11, &format!("{bps} bytes per sector")));
        }
        let spc = u64::from(b[13]);
        if !spc.is_power_of_two() {
            return Err(bad(13, &format!("{spc} sectors per cluster")));
        }
        let (reserved, fats, root_entries) = (le16(&b, 14), u64::from(b[16]), le16(&b, 17));
        if reserved == 0 || fats == 0 {
            return Err(bad(14, "no reserved sectors or no FAT"));
        }
        let total = match le16(&b, 19) {
            0 => le32(&b, 32),
            n => n,
        };
        let fat32 = le16(&b, 22) == 0;
        let fat_sectors = if fat32 { le32(&b, 36) } else { le16(&b, 22) };
        if fat_sectors == 0 {
            return Err(bad(36, "the FAT has no sectors"));
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let first_data = reserved + fats * fat_sectors + root_sectors;
        if first_data >= total {
            return Err(bad(19, &format!("{total} sectors leave no room for data")));
        }
        let clusters = (total - first_data) / spc;
        let active = if fat32 && b[40] & 0x80 != 0 {
            u64::from(b[40] & 0x0f)
        } else {
            0
        };
        if active >= fats {
            return Err(bad(40, &format!("active FAT {active} of {fats}")));
        }
        let fat_len = fat_sectors * bps;
        let (kind, clusters) = kind_and_clusters(&b, fat32, clusters, fat_len);
        if clusters == 0 {
            return Err(bad(19, "no data clusters"));
        }
        let vol = Volume {
            dev,
            kind,
            cluster_size: bps * spc,
            fat_at: (reserved + active * fat_sectors) * bps,
            fat_len,
            root_at: (reserved + fats * fat_sectors) * bps,
            root_len: root_entries * 32,
            data_at: first_data * bps,
            max_cluster: (clusters + 1) as u32,
            what,
        };
        if let Kind::Fat32 { root } = kind {
            vol.check_cluster(root, 44, "root folder cluster")?;
        }
        Ok(vol)
    }

    fn check_cluster(&self, c: u32, at: u64, structure: &str) -> Result<()> {
        if c < 2 || c > self.max_cluster {
            return Err(Error::corrupt(
                &self.what,
                at,
                format!(
                    "{structure}: cluster {c} is outside 2..={}",
                    self.max_cluster
                ),
            ));
        }
        Ok(())
    }

    /// Device offset of cluster `c` (checked by the caller).
    fn cluster_at(&self, c: u32) -> u64 {
        self.data_at + u64::from(c - 2) * self.cluster_size
    }

    /// The first `want` clusters of the chain from `first` (named at device offset `from`),
    /// or all of it up to its end mark when `want` is `None`, then at most `limit` clusters.
    fn chain(
        &self,
        (first, from): (u32, u64),
        want: Option<u64>,
        limit: u64,
        what: &str,
    ) -> Result<Vec<Extent>> {
        let mut fat = FatWindow::default();
        let mut out: Vec<Extent> = Vec::new();
        let mut c = first;
        let mut got = 0u64;
        let mut from = from;
        loop {
            self.check_cluster(c, from, what)?;
            match out.last_mut() {
                Some(e) if e.first + e.count == c => e.count += 1,
                _ => {
                    if out.len() >= MAX_EXTENTS {
                        return Err(self.chain_error(
                            from,
                            what,
                            "is fragmented into too many pieces",
                        ));
                    }
                    out.push(Extent {
                        index: got,
                        first: c,
                        count: 1,
                    });
                }
            }
            got += 1;
            if want == Some(got) {
                break;
            }
            if want.is_none() && got > limit {
                self.check_no_overlap(&out, what)?;
                return Err(self.chain_error(from, what, "is longer than a folder may be"));
            }
            let (next, at) = self.next_cluster(&mut fat, c)?;
            from = at;
            if self.is_end(next) {
                if want.is_some() {
                    return Err(self.chain_error(at, what, "ends before the file does"));
                }
                break;
            }
            c = next;
        }
        self.check_no_overlap(&out, what)?;
        Ok(out)
    }

    fn chain_error(&self, at: u64, what: &str, msg: &str) -> Error {
        Error::corrupt(&self.what, at, format!("cluster chain of {what} {msg}"))
    }

    fn is_end(&self, v: u32) -> bool {
        match self.kind {
            Kind::Fat12 => v >= 0xff8,
            Kind::Fat16 => v >= 0xfff8,
            Kind::Fat32 { .. } => v >= 0x0fff_fff8,
        }
    }

    /// Device offset of the FAT entry of cluster `c`.
    fn entry_at(&self, c: u32) -> u64 {
        let c = u64::from(c);
        self.fat_at
            + match self.kind {
                Kind::Fat12 => c + c / 2,
                Kind::Fat16 => c * 2,
                Kind::Fat32 { .. } => c * 4,
            }
    }

    /// The FAT entry of cluster `c` and its device offset.
    fn next_cluster(&self, w: &mut FatWindow, c: u32) -> Result<(u32, u64)> {
        let len = if matches!(self.kind, Kind::Fat32 { .. }) {
            4
        } else {
            2
        };
        let at = self.entry_at(c);
        if at + len > self.fat_at + self.fat_len {
            return Err(Error::corrupt(
                &self.what,
                at,
                format!("FAT has no entry {c}"),
            ));
        }
        if at < w.at || at + len > w.at + w.bytes.len() as u64 {
            let start = (at - (at - self.fat_at) % FAT_WINDOW).max(self.fat_at);
            let end = (start + FAT_WINDOW)
                .max(at + len)
                .min(self.fat_at + self.fat_len);
            w.bytes.resize((end - start) as usize, 0);
            read_exact_at(self.dev.as_ref(), &self.what, start, &mut w.bytes, "FAT")?;
            w.at = start;
        }
        let b = &w.bytes[(at - w.at) as usize..];
        let v = match self.kind {
            Kind::Fat12 if c % 2 == 1 => (le16(b, 0) >> 4) as u32,
            Kind::Fat12 => (le16(b, 0) & 0xfff) as u32,
            Kind::Fat16 => le16(b, 0) as u32,
            Kind::Fat32 { .. } => (le32(b, 0) & 0x0fff_ffff) as u32,
        };
        Ok((v, at))
    }

    /// A chain that visits a cluster twice loops (or a file shares clusters with itself).
    fn check_no_overlap(&self, extents: &[Extent], what: &str) -> Result<()> {
        let mut sorted: Vec<(u32, u32)> = extents.iter().map(|e| (e.first, e.count)).collect();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                let at = self.entry_at(w[1].0);
                return Err(self.chain_error(
                    at,
                    what,
                    &format!("visits cluster {} twice", w[1].0),
                ));
            }
        }
        Ok(())
    }
}

/// The part of the FAT last read while following one chain.
#[derive(Default)]
struct FatWindow {
    at: u64,
    bytes: Vec<u8>,
}

/// `count` consecutive clusters from `first`, holding the chain's clusters from `index` on.
#[derive(Clone, Copy, Debug)]
struct Extent {
    index: u64,
    first: u32,
    count: u32,
}

/// Where a folder's entries are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirLoc {
    /// The fixed root folder of FAT12/16.
    Fixed,
    /// A cluster chain: its first cluster, and the device offset of the entry naming it.
    Chain(u32, u64),
}

/// A folder, listed on first use; the listing is kept (at most 65,536 entries by the format).
struct FatDir {
    vol: Arc<Volume>,
    loc: DirLoc,
    attr: Attr,
    /// First clusters of the folders above (to refuse folders that contain their ancestors).
    above: Vec<u32>,
    listing: ListedOnce,
}

impl FatDir {
    fn new(vol: Arc<Volume>, loc: DirLoc, attr: Attr, above: Vec<u32>) -> FatDir {
        FatDir {
            vol,
            loc,
            attr,
            above,
            listing: ListedOnce::default(),
        }
    }

    fn describe(&self) -> String {
        match self.loc {
            DirLoc::Fixed => "the root folder".into(),
            DirLoc::Chain(c, _) => format!("the folder at cluster {c}"),
        }
    }

    /// The folder's bytes, as (device offset, bytes) pieces in order.
    fn raw(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let vol = &self.vol;
        let ranges: Vec<(u64, u64)> = match self.loc {
            DirLoc::Fixed => vec![(vol.root_at, vol.root_len)],
            DirLoc::Chain(c, from) => {
                if self.above.contains(&c) || self.above.len() >= MAX_DEPTH {
                    return Err(Error::corrupt(
                        &vol.what,
                        from,
                        format!("{} contains itself or nests too deep", self.describe()),
                    ));
                }
                let limit = (MAX_DIR_ENTRIES * 32).div_ceil(vol.cluster_size);
                let extents = vol.chain((c, from), None, limit, &self.describe())?;
                let size = vol.cluster_size;
                extents
                    .iter()
                    .map(|e| (vol.cluster_at(e.first), u64::from(e.count) * size))
                    .collect()
            }
        };
        let mut out = Vec::with_capacity(ranges.len());
        for (at, len) in ranges {
            let mut bytes = vec![0u8; len as usize];
            read_exact_at(vol.dev.as_ref(), &vol.what, at, &mut bytes, "FAT folder")?;
            out.push((at, bytes));
        }
        Ok(out)
    }

    /// Reads and decodes the folder.
    fn list(&self) -> Result<Vec<(String, Node)>> {
        let mut above = self.above.clone();
        if let DirLoc::Chain(c, _) = self.loc {
            above.push(c);
        }
        let mut names = LongName::default();
        let mut out: Vec<(String, Node)> = Vec::new();
        'pieces: for (at, bytes) in self.raw()? {
            for (i, e) in bytes.chunks_exact(32).enumerate() {
                match e[0] {
                    0 => break 'pieces,
                    0xe5 => {
                        names = LongName::default();
                        continue;
                    }
                    _ => {}
                }
                if e[11] & 0x3f == 0x0f {
                    names.push(e);
                    continue;
                }
                let long = std::mem::take(&mut names).finish(e);
                if e[11] & 0x08 != 0 || e[0] == b'.' {
                    continue;
                }
                let name = long.unwrap_or_else(|| short_name(e));
                let entry_at = at + i as u64 * 32;
                if !vfs::is_guest_name(&name) || out.iter().any(|(n, _)| *n == name) {
                    log::warn!(
                        "{}: at offset {entry_at}: FAT folder entry {name:?} skipped (unsafe or repeated name)",
                        self.vol.what.display()
                    );
                    continue;
                }
                out.push((name, self.child(e, entry_at, above.clone())));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The node of the 32-byte entry `e`, found at device offset `at`.
    fn child(&self, e: &[u8], at: u64, above: Vec<u32>) -> Node {
        let cluster = (le16(e, 20) << 16 | le16(e, 0x1a)) as u32;
        let cluster = if matches!(self.vol.kind, Kind::Fat32 { .. }) {
            cluster
        } else {
            cluster & 0xffff
        };
        let mtime = fat_time(le16(e, 24), le16(e, 22));
        let dir = e[11] & 0x10 != 0;
        let attr = Attr::read_only(dir, mtime);
        if dir {
            Node::Dir(Arc::new(FatDir::new(
                self.vol.clone(),
                DirLoc::Chain(cluster, at),
                attr,
                above,
            )))
        } else {
            Node::File(Arc::new(FatFile {
                vol: self.vol.clone(),
                first: (cluster, at),
                size: le32(e, 28),
                attr,
                extents: Mutex::new(None),
            }))
        }
    }

    fn listing(&self) -> Result<Listing> {
        self.listing.get(|| self.list())
    }
}

impl Directory for FatDir {
    fn entries(&self) -> Result<Vec<(String, Node)>> {
        Ok(self.listing()?.as_ref().clone())
    }

    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        Ok(vfs::find_sorted(&self.listing()?, name))
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}

/// The long-name entries (VFAT) before a short entry, checked as they come.
#[derive(Default)]
struct LongName {
    /// UTF-16 units by slot (13 per entry), the checksum, and the slot expected next.
    units: Vec<u16>,
    checksum: u8,
    next: u8,
    broken: bool,
}

/// Offsets of a long-name entry's 13 UTF-16 units.
const LFN_UNITS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

impl LongName {
    fn push(&mut self, e: &[u8]) {
        let seq = e[0] & 0x1f;
        if e[0] & 0x40 != 0 {
            *self = LongName {
                units: vec![0xffff; usize::from(seq) * 13],
                checksum: e[13],
                next: seq,
                broken: seq == 0 || seq > 20,
            };
        } else if seq != self.next || e[13] != self.checksum {
            self.broken = true;
        }
        if self.broken || seq == 0 || seq != self.next {
            self.broken = true;
            return;
        }
        let base = usize::from(seq - 1) * 13;
        for (k, off) in LFN_UNITS.iter().enumerate() {
            self.units[base + k] = u16::from_le_bytes([e[*off], e[*off + 1]]);
        }
        self.next = seq - 1;
    }

    /// The long name of short entry `e`, when a complete one whose checksum matches came first.
    fn finish(self, e: &[u8]) -> Option<String> {
        if self.broken || self.units.is_empty() || self.next != 0 {
            return None;
        }
        let sum = e[..11]
            .iter()
            .fold(0u8, |s, b| s.rotate_right(1).wrapping_add(*b));
        if sum != self.checksum {
            return None;
        }
        let end = self
            .units
            .iter()
            .position(|u| *u == 0)
            .unwrap_or(self.units.len());
        let units = &self.units[..end];
        let units = &units[..units
            .iter()
            .rposition(|u| *u != 0xffff)
            .map_or(0, |p| p + 1)];
        Some(
            char::decode_utf16(units.iter().copied())
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        )
    }
}

/// Code page 437 from 0x80, how DOS names bytes that are not ASCII.
const CP437_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";

/// The 8.3 name of entry `e`, lower-cased where Windows NT's flags say so.
fn short_name(e: &[u8]) -> String {
    let decode = |bytes: &[u8], lower: bool| -> String {
        let end = bytes.iter().rposition(|b| *b != b' ').map_or(0, |p| p + 1);
        bytes[..end]
            .iter()
            .map(|&b| match b {
                0x80.. => CP437_HIGH.chars().nth(usize::from(b - 0x80)).unwrap_or('?'),
                _ if lower => char::from(b.to_ascii_lowercase()),
                _ => char::from(b),
            })
            .collect()
    };
    let mut base = e[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xe5;
    }
    let base = decode(&base, e[12] & 0x08 != 0);
    let ext = decode(&e[8..11], e[12] & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// A FAT date and time (local time of the writer, taken as UTC: FAT keeps no zone).
fn fat_time(date: u64, time: u64) -> SystemTime {
    let day = chrono::NaiveDate::from_ymd_opt(
        1980 + (date >> 9) as i32,
        ((date >> 5) & 0x0f) as u32,
        (date & 0x1f) as u32,
    );
    let at = day.and_then(|d| {
        d.and_hms_opt(
            (time >> 11) as u32,
            ((time >> 5) & 0x3f) as u32,
            ((time & 0x1f) * 2) as u32,
        )
    });
    at.and_then(|t| u64::try_from(t.and_utc().timestamp()).ok())
        .map_or(SystemTime::UNIX_EPOCH, |s| {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s)
        })
}

/// A file: its cluster chain is followed on first read and kept as extents.
struct FatFile {
    vol: Arc<Volume>,
    /// First cluster, and the device offset of the entry naming it.
    first: (u32, u64),
    size: u64,
    attr: Attr,
    extents: Mutex<Option<Arc<Vec<Extent>>>>,
}

impl FatFile {
    fn extents(&self) -> Result<Arc<Vec<Extent>>> {
        if let Some(e) = &*self.extents.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(e.clone());
        }
        let want = self.size.div_ceil(self.vol.cluster_size);
        let e = if want == 0 {
            Vec::new()
        } else {
            let what = format!("the file at cluster {}", self.first.0);
            self.vol.chain(self.first, Some(want), 0, &what)?
        };
        let e = Arc::new(e);
        *self.extents.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        Ok(e)
    }
}

impl FileNode for FatFile {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn check(&self) -> Result<()> {
        self.extents().map(|_| ())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = vfs::clamp(offset, buf.len(), self.size);
        if n == 0 {
            return Ok(0);
        }
        let extents = self.extents()?;
        let cs = self.vol.cluster_size;
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let index = pos / cs;
            let i = extents.partition_point(|e| e.index <= index) - 1;
            let e = extents[i];
            let in_extent = pos - e.index * cs;
            let len = (u64::from(e.count) * cs - in_extent).min((n - done) as u64) as usize;
            let at = self.vol.cluster_at(e.first) + in_extent;
            read_exact_at(
                self.vol.dev.as_ref(),
                &self.vol.what,
                at,
                &mut buf[done..done + len],
                "FAT file data",
            )?;
            done += len;
        }
        Ok(n)
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The long-name entries (last first, as on disk) of `name` for the short entry `short`.
    fn lfn(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
        let sum = short
            .iter()
            .fold(0u8, |s, b| s.rotate_right(1).wrapping_add(*b));
        let mut units: Vec<u16> = name.encode_utf16().collect();
        units.push(0);
        let n = units.len().div_ceil(13);
        units.resize(n * 13, 0xffff);
        (1..=n)
            .rev()
            .map(|seq| {
                let mut e = [0u8; 32];
                e[0] = seq as u8 | if seq == n { 0x40 } else { 0 };
                e[11] = 0x0f;
                e[13] = sum;
                for (k, off) in LFN_UNITS.iter().enumerate() {
                    let u = units[(seq - 1) * 13 + k].to_le_bytes();
                    e[*off..*off + 2].copy_from_slice(&u);
                }
                e
            })
            .collect()
    }

    fn decode(entries: &[[u8; 32]], short: &[u8; 11]) -> Option<String> {
        let mut l = LongName::default();
        for e in entries {
            l.push(e);
        }
        let mut s = [0u8; 32];
        s[..11].copy_from_slice(short);
        l.finish(&s)
    }

    #[test]
    fn long_names_need_every_piece_in_order_and_the_checksum() {
        let short = b"AVERYL~1TXT";
        let name = "A very long name, ünïcödé 🎉.txt";
        let e = lfn(name, short);
        assert_eq!(decode(&e, short).as_deref(), Some(name));
        assert_eq!(
            decode(&e, b"OTHER   TXT"),
            None,
            "checksum of another entry"
        );
        assert_eq!(decode(&e[1..], short), None, "first piece missing");
        let mut swapped = e.clone();
        swapped.swap(0, 1);
        assert_eq!(decode(&swapped, short), None, "out of order");
    }

    #[test]
    fn short_names_follow_nt_case_flags_and_code_page_437() {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(b"README  TXT");
        assert_eq!(short_name(&e), "README.TXT");
        e[12] = 0x08 | 0x10;
        assert_eq!(short_name(&e), "readme.txt");
        e[..11].copy_from_slice(b"\x05\x81NO       ");
        e[12] = 0;
        assert_eq!(short_name(&e), "σüNO");
    }

    #[test]
    fn fat_times_are_read_as_utc() {
        // 2023-11-14 22:13:20 (1,700,000,000 s).
        let date = (43 << 9) | (11 << 5) | 14;
        let time = (22 << 11) | (13 << 5) | 10;
        let t = fat_time(date, time);
        assert_eq!(
            t,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
        );
        assert_eq!(fat_time(0, 0), SystemTime::UNIX_EPOCH, "month 0 is invalid");
    }
}
