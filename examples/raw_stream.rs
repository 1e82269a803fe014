//! Benchmark data (not a test): a raw disk image as a virtnbdbackup full stream, written with
//! the tests' independent writer: data frames for the 64 KiB blocks that hold data (at most
//! 32 MiB each), zero frames for the rest.
//!
//! `raw_stream IMAGE OUT.data DISK [lz4]`

#[allow(dead_code)]
#[path = "../tests/common/writer.rs"]
mod writer;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use writer::{Frame, StreamSpec, write_stream};

const UNIT: usize = 64 << 10;
/// The NBD maximum request size qemu advertises: data frames and lz4 frames are cut at it.
const M: usize = 32 << 20;

/// The frames of `img`: runs of data blocks (cut at `M`) and runs of zero blocks.
fn frames(img: &File, size: u64) -> std::io::Result<Vec<(u64, u64, bool)>> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut buf = vec![0u8; UNIT];
    let mut at = 0;
    while at < size {
        let n = UNIT.min((size - at) as usize);
        img.read_exact_at(&mut buf[..n], at)?;
        let data = buf[..n].iter().any(|&b| b != 0);
        match out.last_mut() {
            Some(last) if last.2 == data && (!data || last.1 < M as u64) => last.1 += n as u64,
            _ => out.push((at, n as u64, data)),
        }
        at += n as u64;
    }
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: raw_stream IMAGE OUT.data DISK [lz4]".into());
    }
    let img = File::open(&args[1])?;
    let size = img.metadata()?.len();
    let mut spec = StreamSpec::new(&args[3], size, "2026-01-01T00:00:00.000001");
    spec.lz4_chunk = (args.get(4).map(String::as_str) == Some("lz4")).then_some(M);
    let runs = frames(&img, size)?;
    let data: u64 = runs.iter().filter(|r| r.2).map(|r| r.1).sum();
    let img = &img;
    let frames = runs.into_iter().map(move |(at, len, data)| {
        if data {
            let mut b = vec![0u8; len as usize];
            img.read_exact_at(&mut b, at).expect("read image");
            Frame::Data(at, b)
        } else {
            Frame::Zero(at, len)
        }
    });
    let mut w = BufWriter::with_capacity(4 << 20, File::create(&args[2])?);
    write_stream(&mut w, &spec.meta_json_for(data), frames, spec.lz4_chunk)?;
    w.flush()?;
    Ok(())
}
