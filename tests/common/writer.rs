//! An independent writer of virtnbdbackup sparse streams, following the spec (not restorefs'
//! reader): meta frame, data/zero frames, stop, and for lz4 the chunked payloads and the trailer.

use std::io::Write;

use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};

/// One frame of a stream body.
#[derive(Clone, Debug)]
pub enum Frame {
    /// Guest bytes at an offset.
    Data(u64, Vec<u8>),
    /// A hole (full/copy streams only).
    Zero(u64, u64),
}

/// Everything a stream file says.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub virtual_size: u64,
    pub date: String,
    pub disk: String,
    pub checkpoint: String,
    pub parent: String,
    pub incremental: bool,
    /// `Some(m)`: lz4, extents split into LZ4 frames of at most `m` bytes (the NBD max request).
    pub lz4_chunk: Option<usize>,
    /// Write the v0.19-era meta (`stream-version: 1`, no compression keys).
    pub version1: bool,
    pub frames: Vec<Frame>,
}

impl StreamSpec {
    /// A stream with the usual meta and no frames yet.
    pub fn new(disk: &str, virtual_size: u64, date: &str) -> StreamSpec {
        StreamSpec {
            virtual_size,
            date: date.into(),
            disk: disk.into(),
            checkpoint: "virtnbdbackup.0".into(),
            parent: String::new(),
            incremental: false,
            lz4_chunk: None,
            version1: false,
            frames: Vec::new(),
        }
    }

    /// Sum of the data frames' lengths (meta `dataSize`).
    pub fn data_size(&self) -> u64 {
        self.frames
            .iter()
            .map(|f| match f {
                Frame::Data(_, d) => d.len() as u64,
                Frame::Zero(..) => 0,
            })
            .sum()
    }

    /// The meta JSON, as Python's `json.dumps(indent=4)` lays it out.
    pub fn meta_json(&self) -> String {
        self.meta_json_for(self.data_size())
    }

    /// The meta JSON for a stream holding `data_size` bytes of data frames.
    pub fn meta_json_for(&self, data_size: u64) -> String {
        let mut fields = vec![
            format!("\"virtualSize\": {}", self.virtual_size),
            format!("\"dataSize\": {data_size}"),
            format!("\"date\": {}", serde_json::to_string(&self.date).unwrap()),
            format!(
                "\"diskName\": {}",
                serde_json::to_string(&self.disk).unwrap()
            ),
        ];
        if !self.version1 {
            fields.push("\"diskFormat\": \"qcow2\"".into());
        }
        fields.push(format!("\"checkpointName\": \"{}\"", self.checkpoint));
        if self.version1 {
            fields.push(format!("\"parentCheckpoint\": \"{}\"", self.parent));
            fields.push(format!("\"incremental\": {}", self.incremental));
            fields.push("\"stream-version\": 1".into());
        } else {
            let comp = if self.lz4_chunk.is_some() {
                "2"
            } else {
                "false"
            };
            fields.push(format!("\"compressed\": {comp}"));
            fields.push("\"compressionMethod\": \"lz4\"".into());
            fields.push(format!("\"parentCheckpoint\": \"{}\"", self.parent));
            fields.push(format!("\"incremental\": {}", self.incremental));
            fields.push("\"streamVersion\": 2".into());
        }
        format!("{{\n    {}\n}}", fields.join(",\n    "))
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_stream(
            &mut out,
            &self.meta_json(),
            self.frames.iter().cloned(),
            self.lz4_chunk,
        )
        .unwrap();
        out
    }
}

/// Writes a stream with `meta` and `frames` to `out` as they come (nothing held in memory but
/// one frame and the trailer), lz4-compressed in pieces of at most `lz4_chunk` bytes if given.
pub fn write_stream<W: Write>(
    out: &mut W,
    meta: &str,
    frames: impl Iterator<Item = Frame>,
    lz4_chunk: Option<usize>,
) -> std::io::Result<()> {
    header(out, "meta", 0, meta.len() as u64)?;
    out.write_all(meta.as_bytes())?;
    out.write_all(b"\r\n")?;
    let mut trailer: Vec<serde_json::Value> = Vec::new();
    for f in frames {
        match f {
            Frame::Zero(off, len) => header(out, "zero", off, len)?,
            Frame::Data(off, data) => {
                header(out, "data", off, data.len() as u64)?;
                match lz4_chunk {
                    None => out.write_all(&data)?,
                    Some(m) => {
                        // L < M: one frame; L >= M: pieces of M, each its own frame (also L == M).
                        let mut sizes = Vec::new();
                        for piece in data.chunks(m) {
                            let c = lz4_frame(piece);
                            out.write_all(&c)?;
                            sizes.push(c.len() as u64);
                        }
                        if data.len() < m {
                            trailer.push(serde_json::json!(sizes[0]));
                        } else {
                            let total: u64 = sizes.iter().sum();
                            trailer.push(serde_json::json!({ total.to_string(): sizes }));
                        }
                    }
                }
                out.write_all(b"\r\n")?;
            }
        }
    }
    header(out, "stop", 0, 0)?;
    if lz4_chunk.is_some() {
        let t = serde_json::to_string(&trailer).unwrap();
        out.write_all(t.as_bytes())?;
        out.write_all(b"\r\n")?;
        header(out, "comp", 0, t.len() as u64)?;
    }
    Ok(())
}

fn header<W: Write>(out: &mut W, kind: &str, start: u64, len: u64) -> std::io::Result<()> {
    write!(out, "{kind} {start:016x} {len:016x}\r\n")
}

/// One LZ4 frame as python-lz4 writes it: linked 64 KiB blocks, block and content checksums,
/// content size.
pub fn lz4_frame(data: &[u8]) -> Vec<u8> {
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Linked)
        .block_checksums(true)
        .content_checksum(true)
        .content_size(Some(data.len() as u64));
    let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}
