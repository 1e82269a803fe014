//! Property test: random chains (full + incs + diffs, random extents, zero frames, resizes,
//! uncompressed and lz4 with chunked extents) written by the test's own stream writer read back
//! equal to a naive model that applies each stream's writes to a byte vector.

mod common;

use std::path::Path;

use common::writer::{Frame, StreamSpec};
use proptest::prelude::*;
use restorefs::vfs::{self, Node};

/// xorshift: the test's own deterministic randomness, driven by proptest's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        // Half random, half runs: compressible and not.
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let run = (1 + self.below(300)) as usize;
            if self.below(2) == 0 {
                let b = self.next() as u8;
                v.extend(std::iter::repeat_n(b, run));
            } else {
                v.extend((0..run).map(|_| self.next() as u8));
            }
        }
        v.truncate(n);
        v
    }
}

/// One backup of the generated chain and what it restores to.
struct Backup {
    file: String,
    name: String,
    spec: StreamSpec,
}

/// Random extents inside `size`, sorted and non-overlapping, 512-byte granular.
fn extents(rng: &mut Rng, size: u64, max: usize) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    let mut pos = rng.below(size / 4) / 512 * 512;
    for _ in 0..max {
        let len = (1 + rng.below(64)) * 512 * if rng.below(8) == 0 { 16 } else { 1 };
        if pos + len > size {
            break;
        }
        v.push((pos, len));
        pos += len + rng.below(32) * 512;
    }
    v
}

fn date(minute: u64) -> String {
    format!(
        "2026-03-0{}T{:02}:{:02}:00.123456",
        1 + minute / 1440,
        minute / 60 % 24,
        minute % 60
    )
}

/// Writes a random chain of one disk into `dir`; returns the backups in order.
fn generate(rng: &mut Rng, dir: &Path) -> Vec<Backup> {
    let lz4 = match rng.below(3) {
        0 => None,
        1 => Some(4096),
        _ => Some(64 << 10),
    };
    let mut size = (64 + rng.below(512)) * 1024;
    let mut backups = Vec::new();

    // Full: data and zero frames tiling the disk.
    let mut full = StreamSpec::new("vda", size, &date(0));
    full.lz4_chunk = lz4;
    let mut pos = 0;
    for (s, l) in extents(rng, size, 20) {
        if s > pos {
            full.frames.push(Frame::Zero(pos, s - pos));
        }
        full.frames.push(Frame::Data(s, rng.bytes(l as usize)));
        pos = s + l;
    }
    if pos < size {
        full.frames.push(Frame::Zero(pos, size - pos));
    }
    backups.push(Backup {
        file: "vda.full.data".into(),
        name: "full".into(),
        spec: full,
    });

    let mut cp = 0u64;
    for step in 1..=(1 + rng.below(6)) {
        if rng.below(4) == 0 {
            // Resize between backups: grow or shrink.
            size = ((size as i64 + (rng.below(256) as i64 - 96) * 1024).max(32 * 1024)) as u64;
        }
        let diff = rng.below(3) == 0;
        let mut spec = StreamSpec::new("vda", size, &date(step));
        spec.lz4_chunk = lz4;
        spec.incremental = true;
        spec.parent = format!("virtnbdbackup.{cp}");
        spec.checkpoint = format!("virtnbdbackup.{}", cp + 1);
        for (s, l) in extents(rng, size, 12) {
            spec.frames.push(Frame::Data(s, rng.bytes(l as usize)));
        }
        let (file, name) = if diff {
            let unix = 1_800_000_000 + step;
            (format!("vda.diff.{unix}.data"), "diff".to_owned())
        } else {
            cp += 1;
            (format!("vda.inc.virtnbdbackup.{cp}.data"), "inc".to_owned())
        };
        backups.push(Backup { file, name, spec });
    }
    for b in &backups {
        std::fs::write(dir.join(&b.file), b.spec.to_bytes()).unwrap();
    }
    backups
}

/// The naive model: the minimal sequence's writes applied to a zeroed vector of the point's size.
fn model(backups: &[Backup], idx: usize) -> Vec<u8> {
    // Sequence: the full, the incs before idx, then idx itself (a diff never enters a chain).
    let mut seq: Vec<&Backup> = backups[..idx].iter().filter(|b| b.name != "diff").collect();
    seq.push(&backups[idx]);
    let size = backups[idx].spec.virtual_size as usize;
    let mut img = vec![0u8; size];
    for b in seq {
        for f in &b.spec.frames {
            match f {
                Frame::Data(off, data) => {
                    let off = *off as usize;
                    if off < size {
                        let n = data.len().min(size - off);
                        img[off..off + n].copy_from_slice(&data[..n]);
                    }
                }
                Frame::Zero(off, len) => {
                    let off = *off as usize;
                    if off < size {
                        let end = (off + *len as usize).min(size);
                        img[off..end].fill(0);
                    }
                }
            }
        }
    }
    img
}

fn read_whole(node: &Node, rng: &mut Rng) -> Vec<u8> {
    let Node::File(f) = node else {
        panic!("image is not a file")
    };
    let size = f.size().unwrap() as usize;
    let mut out = vec![0u8; size];
    let mut pos = 0;
    while pos < size {
        // Random read sizes, so reads cross extent and chunk boundaries.
        let n = (1 + rng.below(20_000) as usize).min(size - pos);
        let got = f.read_at(pos as u64, &mut out[pos..pos + n]).unwrap();
        assert_eq!(got, n);
        pos += n;
    }
    out
}

fn check(seed: u64) {
    let mut rng = Rng(seed | 1);
    let tmp = common::scratch();
    let dir = tmp.path().join("vm");
    std::fs::create_dir(&dir).unwrap();
    let backups = generate(&mut rng, &dir);
    let cache_dir = common::scratch();
    let cat = common::scan_in_process(tmp.path(), 1 << 20, cache_dir.path());
    let root = cat.tree(None);
    let points = cat.sets()[0].set.points();
    assert_eq!(points.len(), backups.len());
    for (i, b) in backups.iter().enumerate() {
        let p = points.get(i);
        assert_eq!(p.kind, b.name);
        let node = vfs::resolve(&root, &format!("vm/{}/vda.raw", p.name)).unwrap();
        let want = model(&backups, i);
        let got = read_whole(&node, &mut rng);
        assert_eq!(got.len(), want.len(), "point {i} size");
        assert!(
            got == want,
            "point {i} ({}) differs from the model (seed {seed})",
            p.name
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_chains_match_the_model(seed in any::<u64>()) {
        check(seed);
    }
}

#[test]
fn stream_version_1_reads_back() {
    let tmp = common::scratch();
    let dir = tmp.path().join("old");
    std::fs::create_dir(&dir).unwrap();
    let mut spec = StreamSpec::new("vda", 8192, "2021-05-01T10:00:00.000001");
    spec.version1 = true;
    spec.frames.push(Frame::Data(0, vec![7u8; 4096]));
    spec.frames.push(Frame::Zero(4096, 4096));
    std::fs::write(dir.join("vda.full.data"), spec.to_bytes()).unwrap();
    let cache_dir = common::scratch();
    let cat = common::scan_in_process(tmp.path(), 1 << 20, cache_dir.path());
    let node = vfs::resolve(&cat.tree(None), "old/latest/vda.raw").unwrap();
    let mut rng = Rng(3);
    let mut want = vec![7u8; 4096];
    want.resize(8192, 0);
    assert_eq!(read_whole(&node, &mut rng), want);
}
