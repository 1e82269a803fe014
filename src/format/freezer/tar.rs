//! GNU tar as `tar --create --listed-incremental` writes it (spec §7.1): 512-byte headers in the
//! old GNU layout, `L`/`K` long names, `D` dumpdir members, hardlinks, symlinks. Reads a stream
//! once, front to back, and indexes every member; the bytes read are handed to a sink so the
//! caller can keep the decompressed stream.

use std::io::{self, Read, Write};

/// Block size of tar.
const BLOCK: usize = 512;

/// What a member is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberKind {
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
    /// A regular file stored as changed blocks over the previous level's file at its path
    /// (rsync engine).
    Patch(Vec<super::rsync::Run>),
    /// A path deleted since the previous level (rsync engine).
    Deleted,
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
    pub kind: MemberKind,
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
    /// Offset of the member's header in that stream (where warnings about it point).
    pub header: u64,
}

/// A tar stream that could not be read: where, and why.
#[derive(Debug)]
pub struct TarError {
    /// Offset in the tar stream (of the header, when a member is at fault).
    pub offset: u64,
    /// What is wrong.
    pub msg: String,
    /// Whether a resource bound was hit (the stream may be fine, just too large).
    pub over_bound: bool,
}

impl TarError {
    /// An error at `offset` (no bound was hit).
    pub(super) fn at(offset: u64, msg: impl Into<String>) -> TarError {
        TarError {
            offset,
            msg: msg.into(),
            over_bound: false,
        }
    }
}

/// What one level may take, so that a hostile stream cannot fill the disk or memory.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes of decompressed stream (kept in the scratch folder).
    pub stream: u64,
    /// Most bytes the member index may take in memory (estimated).
    pub memory: u64,
}

/// Largest name, link or pax member read into memory.
const MAX_META: u64 = 64 << 20;

/// Reads the whole archive from `input`, copying every byte read into `sink`.
pub fn index(
    input: &mut dyn Read,
    sink: &mut dyn Write,
    limits: Limits,
) -> Result<Vec<Member>, TarError> {
    let mut r = Reader {
        input,
        sink,
        pos: 0,
        bound: limits.stream,
    };
    let mut members = Vec::new();
    let mut memory = 0u64;
    let mut pending = Pending::default();
    loop {
        let at = r.pos;
        let Some(h) = r.block()? else {
            // End of the stream without the end-of-archive blocks: accept what is there.
            break;
        };
        if h.iter().all(|&b| b == 0) {
            break;
        }
        check_sum(&h).map_err(|msg| TarError::at(at, msg))?;
        let flag = h[156];
        let size = number(&h[124..136])
            .map_err(|m| TarError::at(at, format!("size field: {m}: damaged header")))?;
        // Regular files, GNU's name/dumpdir members, pax headers and (as tar extracts them)
        // unknown types carry data; links, folders, devices and fifos do not.
        let stored = if matches!(flag, b'1'..=b'6') { 0 } else { size };
        let data_at = r.pos;
        check_fits(&h, at, size, stored, data_at, limits.stream)?;
        let member = if matches!(flag, b'L' | b'K' | b'x' | b'g' | b'D') {
            let data = r.data(size, at)?;
            pending.special(&h, at, data_at, &data)
        } else {
            let m = pending.entry(&h, at, data_at, stored)?;
            r.skip(stored, at)?;
            Some(m)
        };
        if let Some(m) = member {
            memory = memory.saturating_add(m.memory());
            members.push(m);
            if memory > limits.memory {
                return Err(TarError {
                    offset: at,
                    msg: format!(
                        "the level's member index needs more than {} bytes of memory: too many \
                         or too long names (raise --cache-size if the backup is genuine)",
                        limits.memory
                    ),
                    over_bound: true,
                });
            }
        }
    }
    // Copy the rest (end blocks, padding) so the kept stream is whole.
    r.drain()?;
    Ok(members)
}

/// Checks that a member's data (`stored` bytes from `data_at`, padded) fits the level's stream.
fn check_fits(
    h: &[u8; BLOCK],
    at: u64,
    size: u64,
    stored: u64,
    data_at: u64,
    bound: u64,
) -> Result<(), TarError> {
    let end = stored
        .checked_next_multiple_of(BLOCK as u64)
        .and_then(|p| data_at.checked_add(p));
    match end {
        Some(end) if end <= bound => Ok(()),
        Some(_) if stored <= bound => Err(over_stream(at, bound)),
        _ => Err(TarError::at(
            at,
            format!(
                "member {:?} declares {size} bytes of data, more than a level's stream \
                 may hold ({bound} bytes): damaged header (or raise --cache-size)",
                header_name(h),
            ),
        )),
    }
}

/// Names that GNU long-name (`L`, `K`) and pax (`x`) members set for the next member.
#[derive(Default)]
struct Pending {
    long_name: Option<String>,
    long_link: Option<String>,
    pax_path: Option<String>,
    pax_link: Option<String>,
}

impl Pending {
    /// The next member's name: pax, then GNU long name, then the header's own.
    fn take_name(&mut self, h: &[u8; BLOCK]) -> String {
        self.pax_path
            .take()
            .or(self.long_name.take())
            .unwrap_or_else(|| header_name(h))
    }

    /// Takes in a member whose data is read into memory (`L`, `K`, `x`, `g`, `D`); only a
    /// dumpdir (`D`) is a member of its own.
    fn special(&mut self, h: &[u8; BLOCK], at: u64, data_at: u64, data: &[u8]) -> Option<Member> {
        match h[156] {
            b'L' => self.long_name = Some(c_string(data)),
            b'K' => self.long_link = Some(c_string(data)),
            b'x' => {
                for (k, v) in pax_records(data) {
                    match k.as_str() {
                        "path" => self.pax_path = Some(v),
                        "linkpath" => self.pax_link = Some(v),
                        _ => {}
                    }
                }
            }
            b'g' => {}
            _ => {
                let name = self.take_name(h);
                self.long_link = None;
                self.pax_link = None;
                let mut m = Member::new(clean(&name), MemberKind::Dumpdir(dumpdir(data)), at);
                m.set_attrs(h);
                m.offset = data_at;
                return Some(m);
            }
        }
        None
    }

    /// The member a plain header (file, link, folder, other) describes.
    fn entry(
        &mut self,
        h: &[u8; BLOCK],
        at: u64,
        data_at: u64,
        stored: u64,
    ) -> Result<Member, TarError> {
        let name = self.take_name(h);
        let link = self
            .pax_link
            .take()
            .or(self.long_link.take())
            .unwrap_or_else(|| c_string(&h[157..257]));
        let kind = match h[156] {
            b'0' | 0 | b'7' => MemberKind::File,
            b'1' => MemberKind::Hardlink(clean(&link)),
            b'2' => MemberKind::Symlink(link),
            b'5' => MemberKind::Dir,
            b'S' => {
                return Err(TarError::at(
                    at,
                    "sparse members (type S) are not supported",
                ));
            }
            other => MemberKind::Other(other),
        };
        let mut m = Member::new(clean(&name), kind, at);
        m.set_attrs(h);
        m.offset = data_at;
        if m.kind == MemberKind::File {
            m.size = stored;
        }
        Ok(m)
    }
}

impl Member {
    fn new(path: String, kind: MemberKind, header: u64) -> Member {
        Member {
            path,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            offset: 0,
            header,
        }
    }

    /// Sets mode, owner and mtime from the header.
    fn set_attrs(&mut self, h: &[u8; BLOCK]) {
        self.mode = field(&h[100..108]) & 0o7777;
        self.uid = field(&h[108..116]);
        self.gid = field(&h[116..124]);
        self.mtime = signed(&h[136..148]).unwrap_or(0);
    }

    /// Estimated bytes this member takes in memory.
    fn memory(&self) -> u64 {
        let strings = match &self.kind {
            MemberKind::Hardlink(s) | MemberKind::Symlink(s) => s.len(),
            MemberKind::Dumpdir(records) => records
                .iter()
                .map(|r| std::mem::size_of::<Record>() + r.name().len())
                .sum(),
            _ => 0,
        };
        (std::mem::size_of::<Member>() + self.path.len() + strings) as u64
    }
}

impl Record {
    /// The name or path the record carries.
    pub fn name(&self) -> &str {
        match self {
            Record::Stored(n)
            | Record::Unchanged(n)
            | Record::Dir(n)
            | Record::RenameFrom(n)
            | Record::RenameTo(n)
            | Record::Temp(n) => n,
        }
    }
}

/// A numeric attribute field as `u32`; unreadable or out-of-range values read as 0.
fn field(f: &[u8]) -> u32 {
    number(f)
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0)
}

/// The stream passes `bound` at `offset`.
pub(super) fn over_stream(offset: u64, bound: u64) -> TarError {
    TarError {
        offset,
        msg: format!(
            "the level decompresses to more than {bound} bytes, the bound of one level \
             (8 × --cache-size): a decompression bomb, or raise --cache-size"
        ),
        over_bound: true,
    }
}

/// A decoded stream read front to back, every byte read copied to a sink.
pub(super) struct Reader<'a> {
    pub(super) input: &'a mut dyn Read,
    pub(super) sink: &'a mut dyn Write,
    /// Bytes read so far.
    pub(super) pos: u64,
    /// Most bytes the stream may have.
    pub(super) bound: u64,
}

impl Reader<'_> {
    /// Reads as much of `buf` as the stream has (less only at its end).
    pub(super) fn fill(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut n = 0;
        while n < buf.len() {
            let Some(rest) = buf.get_mut(n..) else { break };
            match self.input.read(rest) {
                Ok(0) => break,
                Ok(k) => n = n.saturating_add(k).min(buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(TarError::at(
                        self.pos.saturating_add(n as u64),
                        format!("cannot decode the stream: {e}"),
                    ));
                }
            }
        }
        if self.pos.saturating_add(n as u64) > self.bound {
            return Err(over_stream(self.bound, self.bound));
        }
        let got = buf.get(..n).unwrap_or_default();
        self.sink
            .write_all(got)
            .map_err(|e| TarError::at(self.pos, format!("cannot keep the decoded stream: {e}")))?;
        self.pos += n as u64;
        Ok(n)
    }

    /// The next block, `None` at a clean end of the stream.
    fn block(&mut self) -> Result<Option<[u8; BLOCK]>, TarError> {
        let mut b = [0u8; BLOCK];
        match self.fill(&mut b)? {
            0 => Ok(None),
            BLOCK => Ok(Some(b)),
            n => Err(TarError::at(
                self.pos - n as u64,
                format!("the stream ends inside a header ({n} of {BLOCK} bytes): truncated"),
            )),
        }
    }

    /// A member's data, read into memory (names, dumpdirs: small).
    fn data(&mut self, size: u64, at: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_META {
            return Err(TarError::at(
                at,
                format!("a {size}-byte name, pax or dumpdir member is not credible"),
            ));
        }
        // At most MAX_META rounded up to a block: fits usize.
        let padded = size.next_multiple_of(BLOCK as u64) as usize;
        let mut buf = vec![0u8; padded];
        let got = self.fill(&mut buf)?;
        if got != padded {
            return Err(Self::truncated(at, size, got as u64));
        }
        buf.truncate(size as usize);
        Ok(buf)
    }

    /// Passes over a member's data (`size` was checked to fit the stream's bound).
    fn skip(&mut self, size: u64, at: u64) -> Result<(), TarError> {
        let Some(total) = size.checked_next_multiple_of(BLOCK as u64) else {
            return Err(Self::truncated(at, size, 0));
        };
        let mut left = total;
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            let piece = buf.get_mut(..n).unwrap_or_default();
            let got = self.fill(piece)?;
            if got != n {
                return Err(Self::truncated(at, size, total - left + got as u64));
            }
            left -= n as u64;
        }
        Ok(())
    }

    /// Reads (and keeps) the rest of the stream.
    pub(super) fn drain(&mut self) -> Result<(), TarError> {
        let mut buf = vec![0u8; 1 << 16];
        while self.fill(&mut buf)? > 0 {}
        Ok(())
    }

    fn truncated(at: u64, size: u64, got: u64) -> TarError {
        TarError::at(
            at,
            format!(
                "the member declares {size} bytes of data but the stream ends {got} bytes into \
                 it: truncated, or a damaged size field"
            ),
        )
    }
}

/// Verifies the header checksum (sum of the bytes with the checksum field read as spaces).
// A bare message: every caller wraps it at once into a `TarError` at the header's offset,
// which the level turns into an `Error` naming the data file.
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

/// A numeric field that must not be negative: octal ASCII (space/NUL padded) or GNU base-256.
// A bare message: every caller wraps it at once into a `TarError` at the header's offset,
// which the level turns into an `Error` naming the data file.
fn number(f: &[u8]) -> Result<u64, String> {
    let v = signed_wide(f)?;
    u64::try_from(v).map_err(|_| format!("{v} is out of range"))
}

/// A numeric field that may be negative (times before 1970).
// A bare message: its caller reads an unreadable time as 0.
fn signed(f: &[u8]) -> Result<i64, String> {
    let v = signed_wide(f)?;
    i64::try_from(v).map_err(|_| format!("{v} is out of range"))
}

/// Octal ASCII, or GNU base-256: leading byte 0x80 for a positive number, 0xff for a negative
/// one in two's complement. A 12-byte field holds at most 96 bits: `i128` never overflows.
// A bare message, reaching the callers of `number` and `signed`.
fn signed_wide(f: &[u8]) -> Result<i128, String> {
    if let Some((&first, rest)) = f.split_first()
        && first & 0x80 != 0
    {
        let mut v: i128 = if first == 0xff {
            -1
        } else {
            i128::from(first & 0x7f)
        };
        for &b in rest {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(i128::from(b)))
                .ok_or("base-256 number too large")?;
        }
        return Ok(v);
    }
    let s: Vec<u8> = f.iter().copied().filter(|&b| b != 0 && b != b' ').collect();
    if s.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&s).map_err(|_| "not octal")?;
    i128::from_str_radix(text, 8)
        .ok()
        .filter(|_| text.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .ok_or_else(|| format!("{text:?} is not octal"))
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
        .map_while(<[u8]>::split_first)
        .filter_map(|(&code, name)| {
            let name = String::from_utf8_lossy(name).into_owned();
            Some(match code {
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
        let Some(len) = rest
            .get(..sp)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        let Some(rec) = rest.get(sp + 1..len) else {
            break;
        };
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&b| b == b'=') {
            out.push((
                String::from_utf8_lossy(&rec[..eq]).into_owned(),
                String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
            ));
        }
        rest = rest.get(len..).unwrap_or_default();
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
        assert!(number(b"-0000001").is_err());
        assert!(number(b"+0000001").is_err());
        let max = [
            0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(number(&max), Ok(u64::MAX));
        assert!(number(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(number(&[0xff; 12]).is_err(), "-1 is no size");
        assert_eq!(signed(&[0xff; 12]), Ok(-1));
        assert_eq!(
            signed(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]),
            Ok(-2)
        );
        assert!(signed(&[0xbf; 12]).is_err());
    }

    /// An old-GNU header with a correct checksum; `size` is the raw 12-byte field.
    fn header(name: &str, flag: u8, size: [u8; 12]) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(&size);
        h[136..148].copy_from_slice(b"14000000000\0");
        h[156] = flag;
        h[257..265].copy_from_slice(b"ustar  \0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn octal(n: u64) -> [u8; 12] {
        let mut f = [0u8; 12];
        f[..11].copy_from_slice(format!("{n:011o}").as_bytes());
        f
    }

    const WIDE: Limits = Limits {
        stream: 1 << 30,
        memory: 1 << 30,
    };

    fn run(bytes: &[u8], limits: Limits) -> Result<Vec<Member>, TarError> {
        let mut sink = Vec::new();
        let r = index(&mut &bytes[..], &mut sink, limits);
        if r.is_ok() {
            assert_eq!(sink, bytes, "the kept stream is the whole stream");
        }
        r
    }

    /// `./`, then a 5-byte file `./a`, then the member under test at offset 2048.
    fn archive_with(last: [u8; BLOCK], tail: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(header("./", b'D', octal(4)));
        v.extend(b"Ya\0\0".iter().chain(&[0u8; 508]));
        v.extend(header("./a", b'0', octal(5)));
        v.extend(b"hello".iter().chain(&[0u8; 507]));
        v.extend(last);
        v.extend(tail);
        v
    }

    #[test]
    fn a_good_archive_is_indexed() {
        let mut bytes = archive_with(header("./b", b'2', octal(0)), &[]);
        bytes.extend([0u8; 1024]);
        let m = run(&bytes, WIDE).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[1].path.as_str(), m[1].offset, m[1].size), ("a", 1536, 5));
        assert_eq!(
            (m[2].header, &m[2].kind),
            (2048, &MemberKind::Symlink(String::new()))
        );
        assert_eq!(m[1].mtime, 0o14000000000);
    }

    #[test]
    fn bogus_sizes_are_errors_at_their_header() {
        let mut max = [0xffu8; 12];
        max[..4].copy_from_slice(&[0x80, 0, 0, 0]);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4] = 0x80;
        let cases: [(&str, [u8; 12]); 5] = [
            ("2^64-1", max),
            ("2^63", big),
            ("-1", [0xff; 12]),
            ("8 GiB", octal((8 << 30) - 1)),
            ("not octal", *b"12x4\0\0\0\0\0\0\0\0"),
        ];
        for (what, size) in cases {
            for flag in [b'0', b'L', b'D', b'x', b'V'] {
                let bytes = archive_with(header("./big", flag, size), &[0u8; 4096]);
                let e = run(&bytes, WIDE).unwrap_err();
                assert_eq!(e.offset, 2048, "{what} {}: {}", flag as char, e.msg);
                assert!(!e.over_bound, "{what}: {}", e.msg);
            }
        }
        // A size that fits the bound but not the stream.
        let bytes = archive_with(header("./big", b'0', octal(100_000)), &[7u8; 4096]);
        let e = run(&bytes, WIDE).unwrap_err();
        assert_eq!(e.offset, 2048);
        assert!(e.msg.contains("100000 bytes"), "{}", e.msg);
        // Links, folders, devices carry no data whatever their size field says.
        let mut bytes = archive_with(header("./l", b'1', max), &[]);
        bytes.extend([0u8; 1024]);
        assert_eq!(run(&bytes, WIDE).unwrap().len(), 3);
    }

    #[test]
    fn damaged_headers_are_errors_at_their_offset() {
        let mut h = header("./c", b'0', octal(0));
        h[10] ^= 1;
        let e = run(&archive_with(h, &[]), WIDE).unwrap_err();
        assert_eq!(e.offset, 2048);
        assert!(e.msg.contains("checksum"), "{}", e.msg);
        let bytes = archive_with(header("./c", b'0', octal(0)), &[]);
        let e = run(&bytes[..2300], WIDE).unwrap_err();
        assert_eq!(e.offset, 2048);
        assert!(e.msg.contains("truncated"), "{}", e.msg);
        // Cut inside `./a`'s data: the error points at `./a`'s header.
        let e = run(&bytes[..1800], WIDE).unwrap_err();
        assert_eq!(e.offset, 1024);
        assert!(e.msg.contains("truncated"), "{}", e.msg);
    }

    #[test]
    fn streams_and_indexes_are_bounded() {
        let bytes = archive_with(header("./c", b'0', octal(0)), &[0u8; 1 << 16]);
        let e = run(
            &bytes,
            Limits {
                stream: 4096,
                memory: 1 << 30,
            },
        )
        .unwrap_err();
        assert!(e.over_bound && e.offset == 4096, "{e:?}");
        // A member whose data would pass the bound fails at its header: over the bound when
        // its size could fit, damaged when it never could.
        let small = Limits {
            stream: 4096,
            memory: 1 << 30,
        };
        for (size, over) in [(2048, true), (8192, false)] {
            let bytes = archive_with(header("./c", b'0', octal(size)), &[0u8; 8192]);
            let e = run(&bytes, small).unwrap_err();
            assert!(e.over_bound == over && e.offset == 2048, "{e:?}");
        }
        let mut many = Vec::new();
        for i in 0..100 {
            many.extend(header(&format!("./f{i}"), b'0', octal(0)));
        }
        let e = run(
            &many,
            Limits {
                stream: 1 << 30,
                memory: 4096,
            },
        )
        .unwrap_err();
        assert!(e.over_bound && e.msg.contains("memory"), "{e:?}");
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
