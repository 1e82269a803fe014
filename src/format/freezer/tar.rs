//! GNU tar as `tar --create --listed-incremental` writes it (spec §7.1): 512-byte headers in the
//! old GNU layout, `L`/`K` long names, `D` dumpdir members, hardlinks, symlinks. Reads a stream
//! once, front to back, and indexes every member; the bytes read are handed to a sink so the
//! caller can keep the decompressed stream.

use std::io::{self, Read, Write};

/// Block size of tar.
const BLOCK: usize = 512;

/// What a member is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file; its data follows the header.
    File,
    /// A hard link to an earlier member of the same archive.
    Hardlink(String),
    /// A symbolic link.
    Symlink(String),
    /// A directory of an incremental dump, with its dumpdir records.
    Dumpdir(Vec<Record>),
    /// A plain directory (non-incremental archives).
    Dir,
    /// Something restorefs does not expose (devices, fifos), by its type flag.
    Other(u8),
}

/// One record of a dumpdir (`D` member data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `Y`: a non-directory stored in this archive.
    Stored(String),
    /// `N`: a non-directory present but unchanged (its content is in an earlier level).
    Unchanged(String),
    /// `D`: a subdirectory.
    Dir(String),
    /// `R`: the old name of a renamed directory (full `./`-relative path).
    RenameFrom(String),
    /// `T`: the new name of that directory.
    RenameTo(String),
    /// `X`: a temporary name used for cyclic renames.
    Temp(String),
}

/// One member of an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Path as stored, `./` prefix and trailing `/` removed (`""` is the root).
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (Unix seconds).
    pub mtime: i64,
    /// Data size of a regular file.
    pub size: u64,
    /// Offset of a regular file's data in the (decompressed) tar stream.
    pub offset: u64,
}

/// A tar stream that could not be read: where, and why.
#[derive(Debug)]
pub struct TarError {
    /// Offset in the tar stream.
    pub offset: u64,
    /// What is wrong.
    pub msg: String,
}

/// Reads the whole archive from `input`, copying every byte read into `sink`.
pub fn index(input: &mut dyn Read, sink: &mut dyn Write) -> Result<Vec<Member>, TarError> {
    let mut r = Reader {
        input,
        sink,
        pos: 0,
    };
    let mut members = Vec::new();
    let mut long_name: Option<String> = None;
    let mut long_link: Option<String> = None;
    let mut pax_path: Option<String> = None;
    let mut pax_link: Option<String> = None;
    loop {
        let at = r.pos;
        let Some(h) = r.block()? else {
            // End of the stream without the end-of-archive blocks: accept what is there.
            break;
        };
        if h.iter().all(|&b| b == 0) {
            break;
        }
        check_sum(&h).map_err(|msg| TarError { offset: at, msg })?;
        let flag = h[156];
        let size = number(&h[124..136]).map_err(|m| TarError {
            offset: at,
            msg: format!("size field: {m}"),
        })?;
        let field = |range: std::ops::Range<usize>| number(&h[range]).unwrap_or(0);
        let data_at = r.pos;
        match flag {
            b'L' | b'K' | b'x' | b'g' | b'D' => {
                let data = r.data(size, at)?;
                match flag {
                    b'L' => long_name = Some(c_string(&data)),
                    b'K' => long_link = Some(c_string(&data)),
                    b'x' => {
                        for (k, v) in pax_records(&data) {
                            match k.as_str() {
                                "path" => pax_path = Some(v),
                                "linkpath" => pax_link = Some(v),
                                _ => {}
                            }
                        }
                    }
                    b'g' => {}
                    _ => {
                        let name = pax_path
                            .take()
                            .or(long_name.take())
                            .unwrap_or_else(|| header_name(&h));
                        long_link = None;
                        pax_link = None;
                        members.push(Member {
                            path: clean(&name),
                            kind: Kind::Dumpdir(dumpdir(&data)),
                            mode: field(100..108) as u32 & 0o7777,
                            uid: field(108..116) as u32,
                            gid: field(116..124) as u32,
                            mtime: field(136..148) as i64,
                            size: 0,
                            offset: data_at,
                        });
                    }
                }
                continue;
            }
            _ => {}
        }
        let name = pax_path
            .take()
            .or(long_name.take())
            .unwrap_or_else(|| header_name(&h));
        let link = pax_link
            .take()
            .or(long_link.take())
            .unwrap_or_else(|| c_string(&h[157..257]));
        let kind = match flag {
            b'0' | 0 | b'7' => Kind::File,
            b'1' => Kind::Hardlink(clean(&link)),
            b'2' => Kind::Symlink(link),
            b'5' => Kind::Dir,
            b'S' => {
                return Err(TarError {
                    offset: at,
                    msg: "sparse members (type S) are not supported".into(),
                });
            }
            other => Kind::Other(other),
        };
        // Only regular files (and old-style dirs with no data) carry data after the header.
        let stored = if kind == Kind::File { size } else { 0 };
        members.push(Member {
            path: clean(&name),
            kind,
            mode: field(100..108) as u32 & 0o7777,
            uid: field(108..116) as u32,
            gid: field(116..124) as u32,
            mtime: field(136..148) as i64,
            size: stored,
            offset: data_at,
        });
        r.skip(stored, at)?;
    }
    // Copy the rest (end blocks, padding) so the kept stream is whole.
    r.drain()?;
    Ok(members)
}

struct Reader<'a> {
    input: &'a mut dyn Read,
    sink: &'a mut dyn Write,
    pos: u64,
}

impl Reader<'_> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut n = 0;
        while n < buf.len() {
            match self.input.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(TarError {
                        offset: self.pos + n as u64,
                        msg: format!("cannot decode the stream: {e}"),
                    });
                }
            }
        }
        self.sink.write_all(&buf[..n]).map_err(|e| TarError {
            offset: self.pos,
            msg: format!("cannot keep the decoded stream: {e}"),
        })?;
        self.pos += n as u64;
        Ok(n)
    }

    /// The next block, `None` at a clean end of the stream.
    fn block(&mut self) -> Result<Option<[u8; BLOCK]>, TarError> {
        let mut b = [0u8; BLOCK];
        match self.fill(&mut b)? {
            0 => Ok(None),
            BLOCK => Ok(Some(b)),
            n => Err(TarError {
                offset: self.pos - n as u64,
                msg: format!("the stream ends inside a header ({n} of {BLOCK} bytes): truncated"),
            }),
        }
    }

    fn padded(size: u64) -> u64 {
        size.div_ceil(BLOCK as u64) * BLOCK as u64
    }

    /// A member's data, read into memory (names, dumpdirs: small).
    fn data(&mut self, size: u64, at: u64) -> Result<Vec<u8>, TarError> {
        if size > 64 << 20 {
            return Err(TarError {
                offset: at,
                msg: format!("a {size}-byte name or dumpdir member is not credible"),
            });
        }
        let mut buf = vec![0u8; Self::padded(size) as usize];
        if self.fill(&mut buf)? != buf.len() {
            return Err(self.truncated());
        }
        buf.truncate(size as usize);
        Ok(buf)
    }

    /// Passes over a member's data.
    fn skip(&mut self, size: u64, _at: u64) -> Result<(), TarError> {
        let mut left = Self::padded(size);
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            if self.fill(&mut buf[..n])? != n {
                return Err(self.truncated());
            }
            left -= n as u64;
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), TarError> {
        let mut buf = vec![0u8; 1 << 16];
        while self.fill(&mut buf)? > 0 {}
        Ok(())
    }

    fn truncated(&self) -> TarError {
        TarError {
            offset: self.pos,
            msg: "the stream ends inside a member's data: truncated".into(),
        }
    }
}

/// Verifies the header checksum (sum of the bytes with the checksum field read as spaces).
fn check_sum(h: &[u8; BLOCK]) -> Result<(), String> {
    let stored =
        number(&h[148..156]).map_err(|m| format!("not a tar header (checksum field: {m})"))?;
    let unsigned: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    // Some old tars summed signed bytes.
    let signed: i64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err(format!(
            "tar header checksum mismatch (stored {stored}, computed {unsigned}): not a tar header, or damaged"
        ))
    }
}

/// A numeric field: octal ASCII (space/NUL padded) or GNU base-256 (high bit set).
fn number(f: &[u8]) -> Result<u64, String> {
    if f.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256).ok_or("base-256 number too large")? + u64::from(b);
        }
        return Ok(v);
    }
    let s: Vec<u8> = f.iter().copied().filter(|&b| b != 0 && b != b' ').collect();
    if s.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&s).map_err(|_| "not octal")?;
    u64::from_str_radix(text, 8).map_err(|_| format!("{text:?} is not octal"))
}

/// The NUL-terminated string at the start of `b`.
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The header's name; a POSIX ustar header adds its prefix (the GNU layout keeps times there).
fn header_name(h: &[u8; BLOCK]) -> String {
    let name = c_string(&h[0..100]);
    if &h[257..263] == b"ustar\0" {
        let prefix = c_string(&h[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// `./a/b/` → `a/b`; `./` → ``.
pub fn clean(name: &str) -> String {
    let t = name.trim_end_matches('/');
    let t = t.strip_prefix("./").unwrap_or(t);
    if t == "." {
        String::new()
    } else {
        t.to_owned()
    }
}

/// Parses dumpdir data: NUL-terminated records, ending with an empty one.
fn dumpdir(data: &[u8]) -> Vec<Record> {
    data.split(|&b| b == 0)
        .take_while(|r| !r.is_empty())
        .filter_map(|r| {
            let name = String::from_utf8_lossy(&r[1..]).into_owned();
            Some(match r[0] {
                b'Y' => Record::Stored(name),
                b'N' => Record::Unchanged(name),
                b'D' => Record::Dir(name),
                b'R' => Record::RenameFrom(name),
                b'T' => Record::RenameTo(name),
                b'X' => Record::Temp(name),
                _ => return None,
            })
        })
        .collect()
}

/// `len key=value\n` records of a pax extended header.
fn pax_records(data: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(sp) = rest.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp || len > rest.len() {
            break;
        }
        let rec = &rest[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&b| b == b'=') {
            out.push((
                String::from_utf8_lossy(&rec[..eq]).into_owned(),
                String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
            ));
        }
        rest = &rest[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(number(b"0000644\0"), Ok(0o644));
        assert_eq!(number(b"   1750 "), Ok(0o1750));
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]), Ok(256));
        assert!(number(b"12x4").is_err());
    }

    #[test]
    fn dumpdir_records() {
        let d = b"Ydangling\0Ddata\0Nexec.sh\0R./deep/a\0T./deep/renamed\0\0";
        assert_eq!(
            dumpdir(d),
            [
                Record::Stored("dangling".into()),
                Record::Dir("data".into()),
                Record::Unchanged("exec.sh".into()),
                Record::RenameFrom("./deep/a".into()),
                Record::RenameTo("./deep/renamed".into()),
            ]
        );
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean("./"), "");
        assert_eq!(clean("./data/"), "data");
        assert_eq!(clean("./a b/c.txt"), "a b/c.txt");
    }

    #[test]
    fn pax() {
        assert_eq!(
            pax_records(b"20 path=a/long/name\n"),
            [("path".to_owned(), "a/long/name".to_owned())]
        );
    }
}
