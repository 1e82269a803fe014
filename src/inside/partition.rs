//! Partition tables of a disk image: GPT (checked by CRC, the backup header used when the
//! primary is damaged) and MBR with extended and logical partitions. Hostile input: every
//! loop is bounded, every offset checked against the disk.

use std::path::Path;

use crate::error::{Error, Result};
use crate::vfs::FileNode;

/// Bytes per sector: what virtual disks use and what both tables count in.
pub const SECTOR: u64 = 512;
/// Most GPT entries read (the usual table holds 128).
const GPT_MAX_ENTRIES: u32 = 1024;
/// Most logical partitions followed in an extended partition.
const MBR_MAX_LOGICAL: usize = 128;

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Number as Linux counts it (`p1`; MBR logical partitions from 5).
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type: a GPT type GUID's name (or the GUID), or an MBR type byte as `0x83`.
    pub kind: String,
    /// GPT partition name (empty for MBR).
    pub name: String,
}

/// Which table a disk has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// GUID partition table.
    Gpt,
    /// DOS partition table.
    Mbr,
}

impl TableKind {
    /// Its name in listings.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "mbr",
        }
    }
}

/// A disk's partition table.
#[derive(Clone, Debug)]
pub struct Table {
    /// GPT or MBR.
    pub kind: TableKind,
    /// The partitions that lie inside the disk, by number.
    pub partitions: Vec<Partition>,
    /// What was odd about the table (a damaged primary GPT, entries past the disk's end).
    pub notes: Vec<String>,
}

/// Reads `len` bytes at `offset` of `dev` (an error when the disk ends before).
pub fn read_exact(dev: &dyn FileNode, what: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        let n = dev.read_at(offset + done as u64, &mut buf[done..])?;
        if n == 0 {
            return Err(Error::corrupt(
                Path::new(what),
                offset + done as u64,
                format!("disk ends inside a {len}-byte structure"),
            ));
        }
        done += n;
    }
    Ok(buf)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The partition table of `dev`, `None` when it has neither a GPT nor an MBR with partitions.
pub fn read_table(dev: &dyn FileNode, what: &str) -> Result<Option<Table>> {
    let disk = dev.size()?;
    if disk < 2 * SECTOR {
        return Ok(None);
    }
    let mbr = read_exact(dev, what, 0, SECTOR as usize)?;
    let signed = mbr[510] == 0x55 && mbr[511] == 0xAA;
    let protective = signed && (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xEE);
    if let Some(t) = read_gpt(dev, what, disk, protective)? {
        return Ok(Some(t));
    }
    if signed && !protective {
        return read_mbr(dev, what, disk, &mbr);
    }
    Ok(None)
}

/// A GPT header that passed its checks.
struct GptHeader {
    entries_lba: u64,
    count: u32,
    entry_size: u32,
    entries_crc: u32,
    alternate: u64,
}

fn gpt_header(dev: &dyn FileNode, what: &str, lba: u64, disk: u64) -> Result<GptHeader> {
    let at = lba.checked_mul(SECTOR).filter(|&a| a + SECTOR <= disk);
    let at = at.ok_or_else(|| Error::corrupt(Path::new(what), 0, "GPT header past the disk"))?;
    let h = read_exact(dev, what, at, SECTOR as usize)?;
    let bad = |msg: &str| {
        Err(Error::corrupt(
            Path::new(what),
            at,
            format!("GPT header: {msg}"),
        ))
    };
    if &h[..8] != b"EFI PART" {
        return bad("no signature");
    }
    let size = le32(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&size) {
        return bad("bad header size");
    }
    let mut copy = h[..size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != le32(&h, 16) {
        return bad("CRC mismatch");
    }
    if le64(&h, 24) != lba {
        return bad("header is not where it says it is");
    }
    let entry_size = le32(&h, 84);
    let count = le32(&h, 80);
    if !(128..=4096).contains(&entry_size)
        || !entry_size.is_multiple_of(8)
        || count > GPT_MAX_ENTRIES
    {
        return bad("unreasonable entry table");
    }
    Ok(GptHeader {
        entries_lba: le64(&h, 72),
        count,
        entry_size,
        entries_crc: le32(&h, 88),
        alternate: le64(&h, 32),
    })
}

fn gpt_entries(dev: &dyn FileNode, what: &str, h: &GptHeader, disk: u64) -> Result<Vec<u8>> {
    let len = u64::from(h.count) * u64::from(h.entry_size);
    let at = h.entries_lba.checked_mul(SECTOR);
    let at = at.filter(|a| a.checked_add(len).is_some_and(|end| end <= disk));
    let at = at.ok_or_else(|| Error::corrupt(Path::new(what), 0, "GPT entries past the disk"))?;
    let table = read_exact(dev, what, at, len as usize)?;
    if crc32fast::hash(&table) != h.entries_crc {
        return Err(Error::corrupt(
            Path::new(what),
            at,
            "GPT entries: CRC mismatch",
        ));
    }
    Ok(table)
}

/// The GPT: the primary at LBA 1, else the backup (where the primary says, or at the last
/// sector). `None` when neither is valid and the MBR is not protective.
fn read_gpt(dev: &dyn FileNode, what: &str, disk: u64, protective: bool) -> Result<Option<Table>> {
    let last = disk / SECTOR - 1;
    let mut notes = Vec::new();
    let primary = gpt_header(dev, what, 1, disk)
        .and_then(|h| gpt_entries(dev, what, &h, disk).map(|t| (h, t)));
    let (h, table) = match primary {
        Ok(found) => found,
        Err(first) => {
            let backup = gpt_header(dev, what, last, disk)
                .and_then(|h| gpt_entries(dev, what, &h, disk).map(|t| (h, t)));
            match backup {
                Ok(found) => {
                    notes.push(format!("primary GPT damaged ({first}); using the backup"));
                    found
                }
                Err(second) if protective => return Err(second.context(first)),
                Err(_) => return Ok(None),
            }
        }
    };
    if h.alternate != last && h.alternate != 1 {
        notes.push(format!(
            "GPT names LBA {} as its other copy, the disk ends at {last}",
            h.alternate
        ));
    }
    let mut partitions = Vec::new();
    for (i, e) in table.chunks_exact(h.entry_size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, end) = (le64(e, 32), le64(e, 40));
        let number = i as u32 + 1;
        let span = first
            .checked_mul(SECTOR)
            .zip(end.checked_add(1).and_then(|e| e.checked_mul(SECTOR)))
            .filter(|&(s, e)| s < e && e <= disk);
        let Some((start, stop)) = span else {
            notes.push(format!(
                "partition {number} lies outside the disk; left out"
            ));
            continue;
        };
        let name: Vec<u16> = e[56..128].chunks_exact(2).map(|c| le16(c, 0)).collect();
        let name = String::from_utf16_lossy(&name);
        partitions.push(Partition {
            number,
            start,
            size: stop - start,
            kind: gpt_type_name(&e[..16]),
            name: name.trim_end_matches('\0').to_owned(),
        });
    }
    Ok(Some(Table {
        kind: TableKind::Gpt,
        partitions,
        notes,
    }))
}

/// A GUID as text (its first three fields are little-endian on disk).
pub fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

/// The common name of a GPT partition type, or its GUID.
fn gpt_type_name(b: &[u8]) -> String {
    let g = guid(b);
    let name = match g.as_str() {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "CA7D7CCB-63ED-4C53-861C-1742536059CC" => "Linux LUKS",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        _ => return g,
    };
    name.to_owned()
}

/// The MBR's primary partitions and the logical ones of its extended partition.
fn read_mbr(dev: &dyn FileNode, what: &str, disk: u64, mbr: &[u8]) -> Result<Option<Table>> {
    let mut t = Table {
        kind: TableKind::Mbr,
        partitions: Vec::new(),
        notes: Vec::new(),
    };
    let mut extended = None;
    for slot in 0..4u32 {
        let e = &mbr[446 + 16 * slot as usize..][..16];
        let (kind, first, count) = (e[4], u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if kind == 0 || count == 0 {
            continue;
        }
        if e[0] & 0x7F != 0 {
            // Boot flags other than 0x00/0x80: not a partition table (a boot sector's code).
            return Ok(None);
        }
        if matches!(kind, 0x05 | 0x0F | 0x85) {
            extended.get_or_insert((first, count));
            continue;
        }
        push_mbr(&mut t, disk, slot + 1, kind, first, count);
    }
    if let Some((first, count)) = extended {
        logical(dev, what, disk, &mut t, first, count)?;
    }
    Ok((!t.partitions.is_empty()).then_some(t))
}

fn push_mbr(t: &mut Table, disk: u64, number: u32, kind: u8, first: u64, count: u64) {
    let (start, size) = (first * SECTOR, count * SECTOR);
    if start == 0 || start.checked_add(size).is_none_or(|end| end > disk) {
        t.notes.push(format!(
            "partition {number} lies outside the disk; left out"
        ));
        return;
    }
    t.partitions.push(Partition {
        number,
        start,
        size,
        kind: format!("0x{kind:02x}"),
        name: String::new(),
    });
}

/// Follows the chain of extended boot records: each holds one logical partition (relative to
/// itself) and a link to the next (relative to the extended partition's start).
fn logical(
    dev: &dyn FileNode,
    what: &str,
    disk: u64,
    t: &mut Table,
    ext: u64,
    len: u64,
) -> Result<()> {
    let mut ebr = ext;
    for i in 0..MBR_MAX_LOGICAL {
        let at = ebr * SECTOR;
        if at + SECTOR > disk {
            t.notes.push(format!(
                "extended boot record at sector {ebr} past the disk"
            ));
            return Ok(());
        }
        let b = read_exact(dev, what, at, SECTOR as usize)?;
        if b[510] != 0x55 || b[511] != 0xAA {
            t.notes.push(format!(
                "extended boot record at sector {ebr} has no signature"
            ));
            return Ok(());
        }
        let (e, next) = (&b[446..462], &b[462..478]);
        if e[4] != 0 && le32(e, 12) != 0 {
            let first = ebr + u64::from(le32(e, 8));
            push_mbr(t, disk, 5 + i as u32, e[4], first, u64::from(le32(e, 12)));
        }
        let rel = u64::from(le32(next, 8));
        if next[4] == 0 || rel == 0 || rel >= len {
            return Ok(());
        }
        let following = ext + rel;
        if following <= ebr {
            t.notes
                .push(format!("extended boot records loop at sector {following}"));
            return Ok(());
        }
        ebr = following;
    }
    t.notes.push(format!(
        "more than {MBR_MAX_LOGICAL} logical partitions; the rest left out"
    ));
    Ok(())
}
