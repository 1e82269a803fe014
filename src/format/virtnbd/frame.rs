//! The 40-byte frame header of a sparse stream: `KIND SP HEX16 SP HEX16 CRLF`.

/// Length of every frame header.
pub const FRAME_LEN: usize = 40;

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// The JSON metadata, first in the file.
    Meta,
    /// Guest bytes (raw or LZ4 frames) follow the header.
    Data,
    /// A hole: nothing follows.
    Zero,
    /// End of the frame list.
    Stop,
    /// Last header of a compressed file: locates the compression trailer.
    Comp,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame kind.
    pub kind: FrameKind,
    /// Guest offset (data, zero) or 0.
    pub start: u64,
    /// Guest length (data, zero), JSON length (meta, comp) or 0.
    pub length: u64,
}

/// Parses one header; the error says what is wrong with it (the caller adds file and offset).
// A bare message: every caller wraps it at once into an `Error` with the file and offset.
pub fn parse(h: &[u8]) -> Result<FrameHeader, String> {
    let Some(h) = h
        .get(..FRAME_LEN)
        .and_then(|h| <&[u8; FRAME_LEN]>::try_from(h).ok())
    else {
        return Err(format!(
            "frame header needs {FRAME_LEN} bytes, only {} left",
            h.len()
        ));
    };
    let kind = match &h[0..4] {
        b"meta" => FrameKind::Meta,
        b"data" => FrameKind::Data,
        b"zero" => FrameKind::Zero,
        b"stop" => FrameKind::Stop,
        b"comp" => FrameKind::Comp,
        other => {
            return Err(format!(
                "garbage frame header: kind {:?} is not meta/data/zero/stop/comp",
                String::from_utf8_lossy(other)
            ));
        }
    };
    if h[4] != b' ' || h[21] != b' ' || &h[38..40] != b"\r\n" {
        return Err(format!(
            "garbage frame header: {:?} is not 'KIND START LENGTH\\r\\n'",
            String::from_utf8_lossy(h)
        ));
    }
    Ok(FrameHeader {
        kind,
        start: hex16(&h[5..21])?,
        length: hex16(&h[22..38])?,
    })
}

/// 16 hex digits, either case (the reference reader parses with base 16).
// A bare message, reaching the caller of `parse` (which wraps it with file and offset).
fn hex16(digits: &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for &d in digits {
        let x = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => {
                return Err(format!(
                    "bad hex {:?} in frame header",
                    String::from_utf8_lossy(digits)
                ));
            }
        };
        v = (v << 4) | u64::from(x);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_headers() {
        let h = parse(b"data 0000000001800000 0000000002400000\r\n").unwrap();
        assert_eq!(
            (h.kind, h.start, h.length),
            (FrameKind::Data, 0x1800000, 0x2400000)
        );
        let h = parse(b"meta 0000000000000000 000000000000014F\r\n").unwrap();
        assert_eq!((h.kind, h.length), (FrameKind::Meta, 0x14f));
    }

    #[test]
    fn rejects_garbage() {
        assert!(
            parse(b"junk 0000000000000000 0000000000000000\r\n")
                .unwrap_err()
                .contains("kind")
        );
        assert!(
            parse(b"data 00000000000g0000 0000000000000000\r\n")
                .unwrap_err()
                .contains("bad hex")
        );
        assert!(
            parse(b"data 0000000000000000 0000000000000000\n\n")
                .unwrap_err()
                .contains("garbage")
        );
        assert!(parse(b"data 00").unwrap_err().contains("needs 40"));
    }
}
