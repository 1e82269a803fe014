//! Benchmark data (not a test): a deterministic virtnbdbackup chain, written as sparse streams
//! (uncompressed and lz4) with the tests' independent writer, plus what the benchmark script
//! needs to build the equivalent qcow2 backing chain with qemu-img and qemu-io.
//!
//! `gen_chain DIR SIZE_MIB INCS [QCOW=0|1] [PERMILLE_MIN PERMILLE_MAX] [MAX_EXTENT_MIB]`
//! writes `DIR/plain/vm/*.data`, `DIR/lz4/vm/*.data` and, with QCOW=1, `DIR/qcow-src/`:
//! `full.raw` (sparse) and per increment `incN.cmds` (qemu-io `write -s` commands) with the
//! pattern files they name. The full holds about 60 % data; each increment rewrites extents of
//! 64 KiB..MAX_EXTENT (default 4 MiB) scattered over PERMILLE (default 50..100) of the disk.
//! Block contents are unique (seeded by increment and offset) and half compressible.

// The tests' writer; this tool uses only its streaming part.
#[allow(dead_code)]
#[path = "../tests/common/writer.rs"]
mod writer;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use writer::{Frame, StreamSpec, write_stream};

const UNIT: u64 = 64 << 10;
/// The NBD maximum request size qemu advertises: lz4 frames are cut at it.
const M: usize = 32 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The content of guest bytes `off..off+len` as written by generation `gen`: per 4 KiB block,
/// 2 KiB of noise and 2 KiB of a repeated 16-byte pattern.
fn content(generation: u64, off: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    for (i, block) in out.chunks_mut(4096).enumerate() {
        let mut r = Rng((generation << 48)
            ^ (off / 4096 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ 1);
        let half = block.len().min(2048);
        for b in block[..half].chunks_mut(8) {
            let v = r.next().to_le_bytes();
            b.copy_from_slice(&v[..b.len()]);
        }
        let pat = r.next().to_le_bytes();
        for (j, b) in block[half..].iter_mut().enumerate() {
            *b = pat[j % 8];
        }
    }
    out
}

/// Random extents (offset, length) of 1..`max_units` units, sorted and disjoint, covering about
/// `target` bytes.
fn scatter(rng: &mut Rng, size: u64, target: u64, max_units: u64) -> Vec<(u64, u64)> {
    let units = size / UNIT;
    let mut taken = vec![false; units as usize];
    let mut covered = 0;
    let mut out = Vec::new();
    let mut tries = 0;
    while covered < target && tries < 1_000_000 {
        tries += 1;
        let len = (1 + rng.below(max_units)).min(units);
        let start = rng.below(units - len + 1);
        if taken[start as usize..(start + len) as usize]
            .iter()
            .any(|&t| t)
        {
            continue;
        }
        taken[start as usize..(start + len) as usize].fill(true);
        out.push((start * UNIT, len * UNIT));
        covered += len * UNIT;
    }
    out.sort_unstable();
    out
}

fn write_set(
    dir: &Path,
    specs: &[(StreamSpec, String, Vec<Frame>)],
    lz4: bool,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (spec, name, frames) in specs {
        let mut spec = spec.clone();
        spec.lz4_chunk = lz4.then_some(M);
        let data: u64 = frames
            .iter()
            .map(|f| match f {
                Frame::Data(_, d) => d.len() as u64,
                Frame::Zero(..) => 0,
            })
            .sum();
        let mut w = BufWriter::with_capacity(4 << 20, File::create(dir.join(name))?);
        write_stream(
            &mut w,
            &spec.meta_json_for(data),
            frames.iter().cloned(),
            spec.lz4_chunk,
        )?;
        w.flush()?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err(
            "usage: gen_chain DIR SIZE_MIB INCS [QCOW=0|1] [PERMILLE_MIN PERMILLE_MAX]".into(),
        );
    }
    let dir = Path::new(&args[1]);
    let size: u64 = args[2].parse::<u64>()? << 20;
    let incs: u64 = args[3].parse()?;
    let qcow = args.get(4).is_some_and(|a| a == "1");
    let lo: u64 = args.get(5).map_or(Ok(50), |a| a.parse())?;
    let hi: u64 = args.get(6).map_or(Ok(100), |a| a.parse())?;
    let max_units = args.get(7).map_or(Ok(4), |a| a.parse::<u64>())? * (1 << 20) / UNIT;
    let mut rng = Rng(0x5eed_0000_0000_0001);

    // One increment at a time, so that memory holds only one stream's frames.
    let qdir = dir.join("qcow-src");
    if qcow {
        std::fs::create_dir_all(&qdir)?;
    }
    let full_data = scatter(&mut rng, size, size * 6 / 10, max_units);
    let mut frames = Vec::new();
    let mut pos = 0;
    for &(o, l) in &full_data {
        if o > pos {
            frames.push(Frame::Zero(pos, o - pos));
        }
        frames.push(Frame::Data(o, content(0, o, l)));
        pos = o + l;
    }
    if pos < size {
        frames.push(Frame::Zero(pos, size - pos));
    }
    if qcow {
        let raw = File::create(qdir.join("full.raw"))?;
        raw.set_len(size)?;
        for f in &frames {
            if let Frame::Data(o, d) = f {
                raw.write_all_at(d, *o)?;
            }
        }
    }
    let spec = StreamSpec::new("vda", size, "2026-01-01T00:00:00.000001");
    let full = vec![(spec, "vda.full.data".to_owned(), frames)];
    write_set(&dir.join("plain/vm"), &full, false)?;
    write_set(&dir.join("lz4/vm"), &full, true)?;
    drop(full);

    for k in 1..=incs {
        let permille = lo + rng.below(hi - lo + 1);
        let extents = scatter(&mut rng, size, size * permille / 1000, max_units);
        let frames: Vec<Frame> = extents
            .iter()
            .map(|&(o, l)| Frame::Data(o, content(k, o, l)))
            .collect();
        if qcow {
            let pdir = qdir.join(format!("inc{k}"));
            std::fs::create_dir_all(&pdir)?;
            let mut cmds = String::new();
            for (i, f) in frames.iter().enumerate() {
                if let Frame::Data(o, d) = f {
                    let p = pdir.join(format!("{i:05}.bin"));
                    std::fs::write(&p, d)?;
                    cmds.push_str(&format!("write -q -s {} {o} {}\n", p.display(), d.len()));
                }
            }
            std::fs::write(qdir.join(format!("inc{k}.cmds")), cmds)?;
        }
        let minute = k % 60;
        let hour = k / 60;
        let mut spec = StreamSpec::new(
            "vda",
            size,
            &format!("2026-01-01T{hour:02}:{minute:02}:30.000001"),
        );
        spec.incremental = true;
        spec.checkpoint = format!("virtnbdbackup.{k}");
        spec.parent = format!("virtnbdbackup.{}", k - 1);
        let inc = vec![(spec, format!("vda.inc.virtnbdbackup.{k}.data"), frames)];
        write_set(&dir.join("plain/vm"), &inc, false)?;
        write_set(&dir.join("lz4/vm"), &inc, true)?;
    }
    Ok(())
}
