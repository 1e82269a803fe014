//! Index benchmark (not a test): generates a virtnbdbackup chain with about a million extents,
//! then times indexing its streams and building the newest point's block map, and reports the
//! memory each extent costs. Run through `scripts/bench-index.sh`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use restorefs::blockmap::{BlockMap, Extent};
use restorefs::cache::Cache;
use restorefs::format::virtnbd::Stream;
use restorefs::image::{Layer, LayerIndex};
use restorefs::model::ScanContext;
use restorefs::scan::scan;
use restorefs::vfs::{self, Node};

const DISK: u64 = 64 << 30;
const FRAME: u64 = 512;

/// Writes one uncompressed stream whose frames start at `first` and repeat every `stride` bytes;
/// a full stream alternates data and zero frames.
fn write_stream(
    path: &Path,
    n: u64,
    first: u64,
    stride: u64,
    full: bool,
    idx: u64,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let data_frames = if full { n / 2 } else { n };
    let meta = format!(
        "{{\n    \"virtualSize\": {DISK},\n    \"dataSize\": {},\n    \"date\": \"2026-01-01T00:{idx:02}:00.000000\",\n    \"diskName\": \"vda\",\n    \"checkpointName\": \"virtnbdbackup.{idx}\",\n    \"compressed\": false,\n    \"parentCheckpoint\": \"{}\",\n    \"incremental\": {},\n    \"streamVersion\": 2\n}}",
        data_frames * FRAME,
        if full {
            String::new()
        } else {
            format!("virtnbdbackup.{}", idx - 1)
        },
        !full
    );
    write!(w, "meta {:016x} {:016x}\r\n{meta}\r\n", 0, meta.len())?;
    let payload = vec![0xa5u8; FRAME as usize];
    let mut off = first;
    for i in 0..n {
        if full && i % 2 == 1 {
            write!(w, "zero {off:016x} {:016x}\r\n", stride - FRAME)?;
            off += stride - FRAME;
            continue;
        }
        write!(w, "data {off:016x} {FRAME:016x}\r\n")?;
        w.write_all(&payload)?;
        w.write_all(b"\r\n")?;
        off += if full { FRAME } else { stride };
    }
    write!(w, "stop {:016x} {:016x}\r\n", 0, 0)?;
    w.flush()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/restorefs-bench-index/vm".into()),
    );
    let total: u64 = std::env::args()
        .nth(2)
        .map_or(Ok(1_000_000), |s| s.parse())?;
    let incs = 4u64;
    // 60 % of the extents in the full, the rest spread over the incrementals.
    let full_n = total * 6 / 10;
    let inc_n = (total - full_n) / incs;
    let mut files = vec![dir.join("vda.full.data")];
    files.extend((1..=incs).map(|i| dir.join(format!("vda.inc.virtnbdbackup.{i}.data"))));
    if !files.iter().all(|f| f.exists()) {
        std::fs::create_dir_all(&dir)?;
        let t = Instant::now();
        write_stream(&files[0], full_n, 0, 4096, true, 0)?;
        for i in 1..=incs {
            write_stream(
                &files[i as usize],
                inc_n,
                i * 1024,
                8192 * (i + 1),
                false,
                i,
            )?;
        }
        eprintln!(
            "generated {} in {:.1} s",
            dir.display(),
            t.elapsed().as_secs_f64()
        );
    }

    let t = Instant::now();
    let streams: Vec<Stream> = files
        .iter()
        .map(|f| Stream::open(f, None, &restorefs::model::Io::default()))
        .collect::<Result<_, _>>()?;
    let index_s = t.elapsed().as_secs_f64();
    let indexes: Vec<&LayerIndex> = streams
        .iter()
        .map(|s| s.index())
        .collect::<Result<_, _>>()?;
    let extents: usize = indexes.iter().map(|i| i.extents.len()).sum();
    let index_bytes: usize = indexes
        .iter()
        .map(|i| std::mem::size_of_val(i.extents.as_slice()))
        .sum();

    let t = Instant::now();
    let layers: Vec<&[Extent]> = indexes.iter().map(|i| i.extents.as_slice()).collect();
    let map = BlockMap::build(DISK, &layers);
    let map_s = t.elapsed().as_secs_f64();
    drop(indexes);
    drop(streams);

    let t = Instant::now();
    let ctx = ScanContext::new(
        Cache::new(1 << 20),
        &restorefs::workdir::default_cache_dir(),
    );
    let source = dir.parent().unwrap_or(Path::new("/"));
    let formats = restorefs::format::all(&Default::default());
    let cat = scan(source, &formats, &ctx, &ProgressBar::hidden())?;
    let scan_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let points = cat.sets()[0].set.points();
    let name = points.name(points.len() - 1);
    let set = cat.sets()[0].path.clone();
    let Node::File(image) = vfs::resolve(&cat.tree(None), &format!("{set}/{name}/vda.raw"))? else {
        return Err("not a file".into());
    };
    let mut first = vec![0u8; 4096];
    image.read_at(0, &mut first)?;
    let first_read_s = t.elapsed().as_secs_f64();

    println!("stream extents indexed      {extents}");
    println!(
        "index time (5 streams)      {:.0} ms ({:.0} ns/extent)",
        index_s * 1e3,
        index_s * 1e9 / extents as f64
    );
    println!(
        "stream index memory         {} bytes/extent",
        index_bytes / extents
    );
    println!(
        "newest point block map      {} extents, built in {:.0} ms",
        map.extents().len(),
        map_s * 1e3
    );
    println!(
        "block map memory            {} bytes/extent",
        map.heap_bytes() / map.extents().len().max(1)
    );
    println!("catalog scan (ls)           {:.0} ms", scan_s * 1e3);
    println!(
        "first 4 KiB of newest point {:.0} ms after the scan",
        first_read_s * 1e3
    );
    Ok(())
}
