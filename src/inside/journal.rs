//! The ext3/4 journal (jbd2), replayed in memory as the kernel replays it on mount: committed
//! transactions that were not yet written to their place say which file system blocks to read
//! from the journal instead. Nothing is written; a log that ends early (a torn or damaged
//! block) ends the replay there, as in the kernel.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};

const MAGIC: u32 = 0xC03B_3998;
const DESCRIPTOR: u32 = 1;
const COMMIT: u32 = 2;
const REVOKE: u32 = 5;
const INCOMPAT_64BIT: u32 = 0x2;
const INCOMPAT_CSUM_V2: u32 = 0x8;
const INCOMPAT_CSUM_V3: u32 = 0x10;
const INCOMPAT_FAST_COMMIT: u32 = 0x20;
const TAG_ESCAPE: u32 = 1;
const TAG_SAME_UUID: u32 = 2;
const TAG_LAST: u32 = 8;
/// Most block copies and revoke records kept from one journal (400 MiB): 16 times what the
/// largest default journal (1 GiB, a million 1 KiB blocks) can hold. A hostile log's records
/// each cost memory, 24 bytes for an 8-byte tag, and there may be 2^32 of them.
const MAX_RECORDS: usize = 1 << 24;

/// File system block → (block holding its newest committed copy, whether that copy's first
/// four bytes were escaped because they looked like the journal magic).
pub type Overlay = HashMap<u64, (u64, bool)>;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The journal's geometry, from its superblock.
struct Log {
    first: u64,
    maxlen: u64,
    incompat: u32,
    tag_size: usize,
    tail: usize,
}

impl Log {
    fn next(&self, pos: u64) -> u64 {
        if pos + 1 >= self.maxlen {
            self.first
        } else {
            pos + 1
        }
    }
}

/// One transaction being read: its block copies (fs block, journal position, escaped) and its
/// revoked blocks.
#[derive(Default)]
struct Pending {
    copies: Vec<(u64, u64, bool)>,
    revoked: Vec<u64>,
}

/// The journal as the file system holds it.
pub struct Source<'a> {
    /// Journal block `n`: its bytes and the file system block it is stored in.
    pub read: &'a dyn Fn(u64) -> Result<(Vec<u8>, u64)>,
    /// The file system's block size.
    pub block_size: u64,
    /// Image and partition, for errors.
    pub what: &'a str,
}

/// The blocks the journal replaces: empty when the file system was cleanly unmounted.
pub fn load(fs: &Source) -> Result<Overlay> {
    let (jsb, at_block) = (fs.read)(0)?;
    let bad = |msg: &str| {
        let at = at_block.saturating_mul(fs.block_size);
        Error::corrupt(Path::new(fs.what), at, format!("journal superblock: {msg}"))
    };
    if be32(&jsb, 0) != MAGIC || !matches!(be32(&jsb, 4), 3 | 4) {
        return Err(bad("no magic"));
    }
    let incompat = if be32(&jsb, 4) == 4 {
        be32(&jsb, 40)
    } else {
        0
    };
    // Fast commit blocks (not replayed) end the journal: the log wraps before them (jbd2's
    // `j_last`), 256 of them unless the superblock says.
    let fast_commits = match be32(&jsb, 0x54) {
        _ if incompat & INCOMPAT_FAST_COMMIT == 0 => 0,
        0 => 256,
        n => u64::from(n),
    };
    let first = u64::from(be32(&jsb, 20));
    let maxlen = u64::from(be32(&jsb, 16)).saturating_sub(fast_commits);
    let (sequence, start) = (be32(&jsb, 24), u64::from(be32(&jsb, 28)));
    if start == 0 {
        return Ok(Overlay::new());
    }
    if u64::from(be32(&jsb, 12)) != fs.block_size || first == 0 || first >= maxlen {
        return Err(bad("geometry"));
    }
    if start < first || start >= maxlen {
        return Err(bad("start outside the log"));
    }
    let wide = incompat & INCOMPAT_64BIT != 0;
    let csum3 = incompat & INCOMPAT_CSUM_V3 != 0;
    let csum = csum3 || incompat & INCOMPAT_CSUM_V2 != 0;
    // As jbd2's `journal_tag_bytes`: a v3 tag is 16 bytes with or without 64-bit numbers.
    let tag_size = match (csum3, csum, wide) {
        (true, _, _) => 16,
        (false, true, true) => 14,
        (false, true, false) => 10,
        (false, false, true) => 12,
        (false, false, false) => 8,
    };
    let log = Log {
        first,
        maxlen,
        incompat,
        tag_size,
        tail: if csum { 4 } else { 0 },
    };
    let committed = walk(fs, &log, start, sequence)?;
    replay(fs, committed)
}

/// Reads the log from `start`: the committed transactions, oldest first, with their sequence.
fn walk(fs: &Source, log: &Log, start: u64, mut seq: u32) -> Result<Vec<(u32, Pending)>> {
    let mut committed = Vec::new();
    let mut pending = Pending::default();
    let mut pos = start;
    // Every block of the log at most once: the walk cannot loop.
    let mut budget = log.maxlen - log.first;
    // Where each block read is stored: a log stored twice in one place (a hostile journal
    // inode whose extents overlap) would be walked up to 2^32 times, its records kept each time.
    let mut stored = HashSet::new();
    let mut held = 0;
    while budget > 0 {
        budget -= 1;
        let (b, at) = (fs.read)(pos)?;
        if !stored.insert(at) {
            let msg = format!("journal block {pos} is stored in block {at}, as an earlier one");
            return Err(Error::corrupt(
                Path::new(fs.what),
                at.saturating_mul(fs.block_size),
                msg,
            ));
        }
        if be32(&b, 0) != MAGIC || be32(&b, 8) != seq {
            break;
        }
        match be32(&b, 4) {
            DESCRIPTOR => {
                for (block, escaped) in tags(&b, log) {
                    pos = log.next(pos);
                    budget = budget.saturating_sub(1);
                    pending.copies.push((block, pos, escaped));
                    held += 1;
                }
            }
            COMMIT => {
                committed.push((seq, std::mem::take(&mut pending)));
                seq = seq.wrapping_add(1);
            }
            REVOKE => {
                let wide = log.incompat & INCOMPAT_64BIT != 0;
                let end = (be32(&b, 12) as usize).min(b.len());
                let size = if wide { 8 } else { 4 };
                for r in b.get(16..end).unwrap_or_default().chunks_exact(size) {
                    let n = if wide {
                        u64::from(be32(r, 0)) << 32 | u64::from(be32(r, 4))
                    } else {
                        u64::from(be32(r, 0))
                    };
                    pending.revoked.push(n);
                    held += 1;
                }
            }
            _ => break,
        }
        if held > MAX_RECORDS {
            let msg = format!("more than {MAX_RECORDS} block copies and revoke records");
            return Err(Error::corrupt(Path::new(fs.what), 0, msg));
        }
        pos = log.next(pos);
    }
    Ok(committed)
}

/// The block tags of a descriptor block: (file system block, escaped).
fn tags(b: &[u8], log: &Log) -> Vec<(u64, bool)> {
    let csum3 = log.incompat & INCOMPAT_CSUM_V3 != 0;
    let wide = log.incompat & INCOMPAT_64BIT != 0;
    let limit = b.len() - log.tail;
    let mut out = Vec::new();
    let mut at = 12;
    while at + log.tag_size <= limit {
        let t = &b[at..at + log.tag_size];
        let flags = if csum3 {
            be32(t, 4)
        } else {
            u32::from(u16::from_be_bytes([t[6], t[7]]))
        };
        let high = if wide { u64::from(be32(t, 8)) << 32 } else { 0 };
        out.push((high | u64::from(be32(t, 0)), flags & TAG_ESCAPE != 0));
        at += log.tag_size;
        if flags & TAG_SAME_UUID == 0 {
            at += 16;
        }
        if flags & TAG_LAST != 0 {
            break;
        }
    }
    out
}

/// Applies the committed transactions in order: a block's newest copy wins, unless a revoke
/// record of the same or a later transaction cancels it.
fn replay(fs: &Source, committed: Vec<(u32, Pending)>) -> Result<Overlay> {
    let mut revoked: HashMap<u64, u32> = HashMap::new();
    for (seq, t) in &committed {
        for &b in &t.revoked {
            revoked.insert(b, *seq);
        }
    }
    let mut overlay = Overlay::new();
    for (seq, t) in committed {
        for (block, pos, escaped) in t.copies {
            let cancelled = revoked
                .get(&block)
                .is_some_and(|&r| r.wrapping_sub(seq) as i32 >= 0);
            if !cancelled {
                let (_, at) = (fs.read)(pos)?;
                overlay.insert(block, (at, escaped));
            }
        }
    }
    Ok(overlay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn put(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// A journal of `u32::MAX` blocks whose every log block is stored in the same file system
    /// block (`block`): the walk must not read it once per position.
    fn aliased(block: &[u8]) -> Result<Overlay> {
        let mut jsb = vec![0u8; 1024];
        put(&mut jsb, 0, MAGIC);
        put(&mut jsb, 4, 4);
        put(&mut jsb, 12, 1024);
        put(&mut jsb, 16, u32::MAX);
        put(&mut jsb, 20, 1);
        put(&mut jsb, 24, 9);
        put(&mut jsb, 28, 1);
        let reads = Cell::new(0u64);
        let read = |pos: u64| -> Result<(Vec<u8>, u64)> {
            reads.set(reads.get() + 1);
            assert!(
                reads.get() < 100_000,
                "the walk reads the same block on and on"
            );
            Ok(if pos == 0 {
                (jsb.clone(), 5)
            } else {
                (block.to_vec(), 7)
            })
        };
        load(&Source {
            read: &read,
            block_size: 1024,
            what: "img",
        })
    }

    #[test]
    fn with_fast_commits_the_log_wraps_before_their_area() {
        // 20 blocks, the last 4 for fast commits: the log is blocks 1..16. A transaction
        // starts at 15; its data block wraps to 1, its commit block is 2.
        let block = |kind: u32| {
            let mut b = vec![0u8; 1024];
            put(&mut b, 0, MAGIC);
            put(&mut b, 4, kind);
            put(&mut b, 8, 9);
            b
        };
        let mut jsb = block(4);
        for (at, v) in [
            (12, 1024),
            (16, 20),
            (20, 1),
            (24, 9),
            (28, 15),
            (40, 0x20),
            (0x54, 4),
        ] {
            put(&mut jsb, at, v);
        }
        let mut descriptor = block(DESCRIPTOR);
        put(&mut descriptor, 12, 100);
        put(&mut descriptor, 16, TAG_SAME_UUID | TAG_LAST);
        let read = |pos: u64| -> Result<(Vec<u8>, u64)> {
            let b = match pos {
                0 => jsb.clone(),
                15 => descriptor.clone(),
                2 => block(COMMIT),
                _ => vec![0u8; 1024],
            };
            Ok((b, 1000 + pos))
        };
        let source = Source {
            read: &read,
            block_size: 1024,
            what: "img",
        };
        let got = load(&source).unwrap();
        assert_eq!(got, Overlay::from([(100, (1001, false))]));
    }

    #[test]
    fn a_log_of_descriptors_only_is_refused_once_it_holds_too_many_records() {
        // Every log block a descriptor of 126 tags (stored in blocks of their own), never
        // committed: 2^32 positions would keep 96 GiB of copies.
        let mut jsb = vec![0u8; 1024];
        for (at, v) in [
            (0, MAGIC),
            (4, 4),
            (12, 1024),
            (16, u32::MAX),
            (20, 1),
            (24, 9),
        ] {
            put(&mut jsb, at, v);
        }
        put(&mut jsb, 28, 1);
        let mut descriptor = vec![0u8; 1024];
        for (at, v) in [(0, MAGIC), (4, DESCRIPTOR), (8, 9)] {
            put(&mut descriptor, at, v);
        }
        for (i, tag) in descriptor[12..].chunks_exact_mut(8).enumerate() {
            put(tag, 0, i as u32 + 100);
            put(tag, 4, TAG_SAME_UUID);
        }
        let reads = Cell::new(0u64);
        let read = |pos: u64| -> Result<(Vec<u8>, u64)> {
            reads.set(reads.get() + 1);
            assert!(reads.get() < 1 << 18, "the walk keeps records without end");
            Ok((
                if pos == 0 {
                    jsb.clone()
                } else {
                    descriptor.clone()
                },
                pos,
            ))
        };
        let source = Source {
            read: &read,
            block_size: 1024,
            what: "img",
        };
        let e = load(&source).unwrap_err();
        assert!(e.to_string().contains("revoke records"), "{e}");
    }

    #[test]
    fn a_log_stored_in_one_block_over_and_over_ends_the_walk() {
        let mut revoke = vec![0u8; 1024];
        put(&mut revoke, 0, MAGIC);
        put(&mut revoke, 4, REVOKE);
        put(&mut revoke, 8, 9);
        put(&mut revoke, 12, 1024);
        let mut descriptor = revoke.clone();
        put(&mut descriptor, 4, DESCRIPTOR);
        for (i, tag) in descriptor[12..].chunks_exact_mut(8).enumerate() {
            put(tag, 0, i as u32 + 100);
            put(tag, 4, TAG_SAME_UUID);
        }
        for block in [revoke, descriptor] {
            let e = aliased(&block).unwrap_err();
            assert!(e.to_string().contains("journal"), "{e}");
        }
    }
}
