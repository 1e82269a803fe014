//! What a partition (or a whole disk) holds, told by superblock magic: the file system type,
//! label and UUID, as `blkid` would name them.

use serde::Serialize;

use super::partition::read_exact;
use crate::error::Result;
use crate::vfs::FileNode;

/// A file system (or volume format) found on a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Detected {
    /// `blkid`'s name: ext2, ext3, ext4, vfat, ntfs, xfs, btrfs, LVM2_member, crypto_LUKS, swap.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its label, when it has one.
    pub label: Option<String>,
    /// Its UUID (or serial number), when it has one.
    pub uuid: Option<String>,
}

/// Bytes read from the start of a device to look for magic numbers (btrfs's is at 64 KiB).
const PROBE: usize = 0x10400;

fn text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim_end().to_owned();
    (!s.is_empty()).then_some(s)
}

fn uuid(b: &[u8]) -> Option<String> {
    if b.iter().all(|&x| x == 0) {
        return None;
    }
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn found(kind: &str, label: Option<String>, uuid: Option<String>) -> Option<Detected> {
    Some(Detected {
        kind: kind.to_owned(),
        label,
        uuid,
    })
}

/// The file system on `dev`, `None` when no known magic is there.
pub fn detect(dev: &dyn FileNode, what: &str) -> Result<Option<Detected>> {
    let size = dev.size()?;
    let len = PROBE.min(usize::try_from(size).unwrap_or(PROBE));
    if len < 2048 {
        return Ok(None);
    }
    let b = read_exact(dev, what, 0, len)?;
    Ok(probe(&b))
}

/// The file system whose magic is in `b` (the first bytes of a device).
pub fn probe(b: &[u8]) -> Option<Detected> {
    if b.len() < 2048 {
        return None;
    }
    let at = |o: usize, m: &[u8]| b.get(o..o + m.len()) == Some(m);
    if at(1080, &[0x53, 0xEF]) {
        let sb = &b[1024..2048];
        let (compat, incompat) = (u32le(sb, 92), u32le(sb, 96));
        let kind = if incompat & 0x2C0 != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        return found(kind, text(&sb[120..136]), uuid(&sb[104..120]));
    }
    if at(3, b"NTFS    ") {
        let serial: String = b[72..80].iter().rev().map(|x| format!("{x:02X}")).collect();
        return found("ntfs", None, Some(serial));
    }
    let signed = at(510, &[0x55, 0xAA]);
    if signed && (at(54, b"FAT12   ") || at(54, b"FAT16   ") || at(82, b"FAT32   ")) {
        let base = if at(82, b"FAT32   ") { 28 } else { 0 };
        let id = u32le(b, 39 + base);
        let label = text(&b[43 + base..54 + base]).filter(|l| l != "NO NAME");
        return found(
            "vfat",
            label,
            Some(format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)),
        );
    }
    if at(0, b"XFSB") {
        return found("xfs", text(&b[108..120]), uuid(&b[32..48]));
    }
    if at(0x10040, b"_BHRfS_M") && b.len() >= 0x1022B {
        return found(
            "btrfs",
            text(&b[0x1012B..0x1022B]),
            uuid(&b[0x10020..0x10030]),
        );
    }
    if at(0, b"LUKS\xba\xbe") {
        let label = (b[7] == 2).then(|| text(&b[24..72])).flatten();
        return found("crypto_LUKS", label, text(&b[168..208]));
    }
    if let Some(d) = lvm(b) {
        return Some(d);
    }
    if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        return found("swap", text(&b[1052..1068]), uuid(&b[1036..1052]));
    }
    None
}

/// An LVM2 physical volume: its label in one of the first four sectors.
fn lvm(b: &[u8]) -> Option<Detected> {
    (0..4).find_map(|s| {
        let l = b.get(s * 512..s * 512 + 512)?;
        if &l[..8] != b"LABELONE" || &l[24..32] != b"LVM2 001" {
            return None;
        }
        let pv = s * 512 + u32le(l, 20) as usize;
        let id = b.get(pv..pv + 32)?;
        let id = String::from_utf8_lossy(id);
        let dashed = [0..6, 6..10, 10..14, 14..18, 18..22, 22..26, 26..32]
            .iter()
            .filter_map(|r| id.get(r.clone()))
            .collect::<Vec<_>>()
            .join("-");
        found("LVM2_member", None, Some(dashed))
    })
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
