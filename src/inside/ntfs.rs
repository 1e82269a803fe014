//! NTFS read in user space with the `ntfs` crate, as `vfs` nodes. Folders are read from their
//! index when first listed (and kept in their node); a file's MFT record is read on first use
//! and its data runs kept, so reads at any offset go straight to the device and sparse runs
//! are holes. Each call makes its own `Device` over the image: the crate's `Ntfs` is
//! immutable and shared, so threads read one file system without a lock.
//!
//! Shown: the names of the Win32/POSIX namespaces (DOS 8.3 duplicates are skipped), folders,
//! regular files' unnamed data stream, hard links as one node with their link count, mtimes.
//! Left out: system metafiles (`$MFT`, `$Bitmap`, …: MFT records below 16), alternate data
//! streams, reparse points (symlinks, junctions: shown as the plain file or folder holding
//! them), security descriptors. Compressed and encrypted files fail to read (EIO, saying
//! why): the crate cannot decode them and their raw clusters are not their bytes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use ntfs::attribute_value::NtfsAttributeValue;
use ntfs::structured_values::{NtfsAttributeList, NtfsFileName, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsAttribute, NtfsAttributeType, NtfsError, NtfsFile, NtfsTime};

use super::device::{Device, read_exact_at};
use crate::error::{Error, Result};
use crate::vfs::{self, Attr, Directory, FileNode, ListedOnce, Listing, Node};

/// MFT records below this are the file system's own metafiles (`$MFT` … `$Extend`, reserved).
const FIRST_USER_RECORD: u64 = 16;
/// Most entries one folder listing may hold: bounds a listing's memory.
const MAX_DIR_ENTRIES: usize = 1 << 20;
/// Bytes of metadata one request may read (a folder listing walks its whole index).
const METADATA_BUDGET: u64 = 64 << 20;
/// Deepest folder nesting served; deeper is hostile.
const MAX_DEPTH: usize = 256;
/// Most data runs a file's map is kept as (24 bytes each).
const MAX_RUNS: usize = 1 << 20;
/// Most pieces (one per MFT record) a file's $DATA attribute is read from.
const MAX_PIECES: usize = 1 << 16;

/// Opens the NTFS file system on `dev` (`what` names image and partition in errors) and
/// returns its root folder.
pub fn open(dev: Arc<dyn FileNode>, what: &str) -> Result<Node> {
    let what = PathBuf::from(what);
    guard(&what, "NTFS boot sector and root folder", || {
        open_root(dev, what.clone())
    })
}

/// Runs `f`, turning a panic of the `ntfs` crate into an error: with the checks here its
/// known panics on damaged metadata cannot happen, but an I/O error from the image in the
/// middle of one of its structures still makes it panic (it expects no such error there).
fn guard<T>(what: &std::path::Path, structure: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::corrupt(
            what,
            0,
            format!("{structure}: the ntfs crate failed (damaged metadata or a read error)"),
        ))
    })
}

fn open_root(dev: Arc<dyn FileNode>, what: PathBuf) -> Result<Node> {
    let mut boot = [0u8; 512];
    read_exact_at(dev.as_ref(), &what, 0, &mut boot, "NTFS boot sector")?;
    let mut d = Device::new(dev.clone(), METADATA_BUDGET)?;
    let ntfs = Ntfs::new(&mut d).map_err(|e| ntfs_error(&what, 0, "NTFS boot sector", &e))?;
    let vol = Arc::new(Volume {
        dev,
        what,
        ntfs,
        files: Mutex::new(Files::default()),
    });
    let root = vol.record(&mut vol.device()?, ROOT)?;
    let info = root
        .info()
        .map_err(|e| vol.error(root.position().value().map_or(0, |p| p.get()), "root", &e))?;
    let attr = Attr::read_only(true, nt_time(info.modification_time()));
    Ok(Node::Dir(Arc::new(NtfsDir {
        vol,
        frn: ROOT,
        attr,
        above: Vec::new(),
        listing: ListedOnce::default(),
    })))
}

/// The root folder's MFT record.
const ROOT: u64 = 5;

/// An NTFS error as the crate's, naming the image, the offset the crate gives (or `at`) and
/// what was being read.
fn ntfs_error(what: &std::path::Path, at: u64, structure: &str, e: &NtfsError) -> Error {
    let text = e.to_string();
    let at = text
        .split("position 0x")
        .nth(1)
        .and_then(|h| {
            let end = h.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(h.len());
            u64::from_str_radix(&h[..end], 16).ok()
        })
        .unwrap_or(at);
    Error::corrupt(what, at, format!("{structure}: {text}"))
}

/// Nodes of the files made so far, by MFT record: every name of a hard-linked file gives the
/// same node while it lives. Dead entries are dropped when the map doubles.
#[derive(Default)]
struct Files {
    nodes: HashMap<u64, Weak<NtfsFileNode>>,
    prune_at: usize,
}

struct Volume {
    dev: Arc<dyn FileNode>,
    what: PathBuf,
    ntfs: Ntfs,
    files: Mutex<Files>,
}

impl Volume {
    fn device(&self) -> Result<Device> {
        Device::new(self.dev.clone(), METADATA_BUDGET)
    }

    fn error(&self, at: u64, structure: &str, e: &NtfsError) -> Error {
        ntfs_error(&self.what, at, structure, e)
    }

    /// MFT record `frn`, its attribute list checked (the crate panics on some damaged ones).
    fn record<'n>(&'n self, d: &mut Device, frn: u64) -> Result<NtfsFile<'n>> {
        let file = self
            .ntfs
            .file(d, frn)
            .map_err(|e| self.error(0, &format!("MFT record {frn}"), &e))?;
        self.check_attribute_list(position(&file))?;
        Ok(file)
    }

    /// The MFT record at `at`, with its update sequence applied.
    fn raw_record(&self, at: u64) -> Result<Vec<u8>> {
        let vol = self;
        let mut rec = vec![0u8; vol.ntfs.file_record_size() as usize];
        read_exact_at(vol.dev.as_ref(), &vol.what, at, &mut rec, "MFT record")?;
        let bad = |msg: &str| Error::corrupt(&vol.what, at, format!("MFT record: {msg}"));
        if rec.len() < 48 || &rec[..4] != b"FILE" {
            return Err(bad("no FILE signature"));
        }
        let usa = usize::from(u16::from_le_bytes([rec[4], rec[5]]));
        let count = usize::from(u16::from_le_bytes([rec[6], rec[7]]));
        if count == 0 || usa + 2 * count > rec.len() || (count - 1) * 512 > rec.len() {
            return Err(bad("update sequence array out of the record"));
        }
        for i in 1..count {
            let p = i * 512 - 2;
            if rec[p..p + 2] != rec[usa..usa + 2] {
                return Err(bad("torn write (update sequence mismatch)"));
            }
            rec[p] = rec[usa + 2 * i];
            rec[p + 1] = rec[usa + 2 * i + 1];
        }
        Ok(rec)
    }

    /// Refuses an attribute list that would make the crate read past its end while parsing
    /// an entry header (a panic in `ntfs` 0.4), and attributes that must be resident but are not.
    fn check_attribute_list(&self, at: u64) -> Result<()> {
        let rec = self.raw_record(at)?;
        let bad = |off: usize, msg: &str| {
            Error::corrupt(
                &self.what,
                at + off as u64,
                format!("MFT record attribute: {msg}"),
            )
        };
        let u16at = |o: usize| usize::from(u16::from_le_bytes([rec[o], rec[o + 1]]));
        let u32at = |o: usize| u32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]);
        let mut off = u16at(0x14);
        while off + 16 <= rec.len() {
            let (ty, len) = (u32at(off), u32at(off + 4) as usize);
            if ty == 0xffff_ffff || len < 16 || off + len > rec.len() {
                break;
            }
            let resident = rec[off + 8] == 0;
            if matches!(ty, 0x10 | 0x30) && !resident {
                return Err(bad(
                    off,
                    "a non-resident $STANDARD_INFORMATION or $FILE_NAME",
                ));
            }
            if ty == 0x20 {
                let list = if resident {
                    let (vlen, voff) = (u32at(off + 0x10) as usize, u16at(off + 0x14));
                    rec.get(off + voff..off + voff + vlen)
                        .ok_or_else(|| bad(off, "attribute list value out of its record"))?
                        .to_vec()
                } else {
                    self.non_resident_list(&rec, off, at)?
                };
                let mut i = 0;
                while i < list.len() {
                    if list.len() - i < 26 {
                        return Err(bad(
                            off,
                            &format!("attribute list entry at byte {i} is cut short"),
                        ));
                    }
                    let entry = usize::from(u16::from_le_bytes([list[i + 4], list[i + 5]]));
                    // Shorter than its header and name: the crate refuses it itself.
                    if entry < 26 + 2 * usize::from(list[i + 6]) {
                        break;
                    }
                    i += entry;
                }
            }
            off += len;
        }
        Ok(())
    }

    /// The bytes of the non-resident attribute list whose header is at `off` of record `rec`.
    fn non_resident_list(&self, rec: &[u8], off: usize, at: u64) -> Result<Vec<u8>> {
        let bad = |msg: &str| {
            Error::corrupt(
                &self.what,
                at + off as u64,
                format!("attribute list: {msg}"),
            )
        };
        let le = |o: usize, n: usize| -> u64 {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&rec[off + o..off + o + n]);
            u64::from_le_bytes(v)
        };
        if off + 0x40 > rec.len() {
            return Err(bad("header out of its record"));
        }
        let len = (le(4, 4) as usize).min(rec.len() - off);
        let (pairs, size) = (le(0x20, 2) as usize, le(0x30, 8));
        if pairs > len || size > 4 << 20 {
            return Err(bad("runs out of the attribute, or larger than 4 MiB"));
        }
        let cluster = u64::from(self.ntfs.cluster_size());
        let runs = decode_runs(&rec[off + pairs..off + len], cluster).map_err(|m| bad(&m))?;
        let mut out = vec![0u8; size as usize];
        let mut done = 0usize;
        for r in runs {
            if done >= out.len() {
                break;
            }
            let n = (r.len.min((out.len() - done) as u64)) as usize;
            if let Some(disk) = r.disk {
                let part = &mut out[done..done + n];
                read_exact_at(self.dev.as_ref(), &self.what, disk, part, "attribute list")?;
            }
            done += n;
        }
        if done < out.len() {
            return Err(bad("runs end before the list does"));
        }
        Ok(out)
    }

    /// The node of file `frn`, shared by all its names.
    fn file_node(self: &Arc<Self>, frn: u64, fallback_mtime: SystemTime) -> Arc<NtfsFileNode> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = files.nodes.get(&frn).and_then(Weak::upgrade) {
            return node;
        }
        let node = Arc::new(NtfsFileNode {
            vol: self.clone(),
            frn,
            fallback_mtime,
            info: Mutex::new(None),
        });
        files.nodes.insert(frn, Arc::downgrade(&node));
        if files.nodes.len() > files.prune_at {
            files.nodes.retain(|_, w| w.strong_count() > 0);
            files.prune_at = (files.nodes.len() * 2).max(1024);
        }
        node
    }
}

/// An NT time (100 ns since 1601) as a `SystemTime` (the epoch when before 1970).
fn nt_time(t: NtfsTime) -> SystemTime {
    const TO_UNIX: u64 = 11_644_473_600 * 10_000_000;
    let ticks = t.nt_timestamp().saturating_sub(TO_UNIX);
    SystemTime::UNIX_EPOCH
        + Duration::from_nanos(ticks % 10_000_000 * 100)
        + Duration::from_secs(ticks / 10_000_000)
}

/// A folder, listed from its index on first use; the listing is kept.
struct NtfsDir {
    vol: Arc<Volume>,
    frn: u64,
    attr: Attr,
    /// MFT records of the folders above (to refuse folders that contain their ancestors).
    above: Vec<u64>,
    listing: ListedOnce,
}

impl NtfsDir {
    fn list(&self) -> Result<Vec<(String, Node)>> {
        let vol = &self.vol;
        let mut d = vol.device()?;
        let file = vol.record(&mut d, self.frn)?;
        if self.above.contains(&self.frn) || self.above.len() >= MAX_DEPTH {
            return Err(Error::corrupt(
                &vol.what,
                position(&file),
                format!(
                    "NTFS folder (MFT record {}) contains itself or nests too deep",
                    self.frn
                ),
            ));
        }
        let at = file.position().value().map_or(0, |p| p.get());
        let structure = format!("index of the folder in MFT record {}", self.frn);
        let index = file
            .directory_index(&mut d)
            .map_err(|e| vol.error(at, &structure, &e))?;
        let mut above = self.above.clone();
        above.push(self.frn);
        let mut out: Vec<(String, Node)> = Vec::new();
        let mut entries = index.entries();
        while let Some(entry) = entries.next(&mut d) {
            let entry = entry.map_err(|e| vol.error(at, &structure, &e))?;
            let Some(key) = entry.key() else { continue };
            let key = key.map_err(|e| vol.error(at, &structure, &e))?;
            let frn = entry.file_reference().file_record_number();
            if key.namespace() == NtfsFileNamespace::Dos || frn < FIRST_USER_RECORD {
                continue;
            }
            if out.len() >= MAX_DIR_ENTRIES {
                return Err(Error::corrupt(
                    &vol.what,
                    at,
                    format!("{structure}: too many entries"),
                ));
            }
            let name = key.name().to_string_lossy();
            if !vfs::is_guest_name(&name) {
                log::warn!(
                    "{}: NTFS name {name:?} in MFT record {} skipped (not a safe name)",
                    vol.what.display(),
                    self.frn
                );
                continue;
            }
            out.push((name, self.child(&key, frn, &above)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn child(&self, key: &NtfsFileName, frn: u64, above: &[u64]) -> Node {
        let mtime = nt_time(key.modification_time());
        if key.is_directory() {
            Node::Dir(Arc::new(NtfsDir {
                vol: self.vol.clone(),
                frn,
                attr: Attr::read_only(true, mtime),
                above: above.to_vec(),
                listing: ListedOnce::default(),
            }))
        } else {
            Node::File(self.vol.file_node(frn, mtime))
        }
    }

    fn listing(&self) -> Result<Listing> {
        self.listing.get(|| {
            let structure = format!("NTFS folder in MFT record {}", self.frn);
            guard(&self.vol.what, &structure, || self.list())
        })
    }
}

impl Directory for NtfsDir {
    fn entries(&self) -> Result<Vec<(String, Node)>> {
        Ok(self.listing()?.as_ref().clone())
    }

    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        Ok(vfs::find_sorted(&self.listing()?, name))
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}

/// `len` bytes of the file from `start`, at device offset `disk` (`None`: a sparse run).
#[derive(Clone, Copy, Debug)]
struct Run {
    start: u64,
    len: u64,
    disk: Option<u64>,
}

/// Where a file's bytes are.
enum Content {
    /// In the MFT record.
    Resident(Vec<u8>),
    /// In these runs; bytes from `initialized` on read as zeros.
    Runs { runs: Vec<Run>, initialized: u64 },
}

/// One piece of a $DATA attribute (a large file's runs continue in other MFT records).
enum Piece {
    Resident(Vec<u8>),
    NonResident(Mapped),
}

/// A non-resident piece of a $DATA attribute.
struct Mapped {
    /// First cluster of the file this piece maps.
    lowest_vcn: u64,
    /// Its runs, starting at byte 0 of the piece.
    runs: Vec<Run>,
    /// Data and initialized size (valid in the piece with `lowest_vcn` 0).
    sizes: (u64, u64),
}

/// What a file's MFT record says.
struct Info {
    /// Device offset of the record (for errors).
    at: u64,
    size: u64,
    mtime: SystemTime,
    nlink: u32,
    content: Content,
}

/// A regular file (its unnamed data stream); its record is read on first use.
struct NtfsFileNode {
    vol: Arc<Volume>,
    frn: u64,
    /// The mtime its folder entry gives, shown if the record cannot be read.
    fallback_mtime: SystemTime,
    info: Mutex<Option<Arc<Info>>>,
}

fn position(file: &NtfsFile) -> u64 {
    file.position().value().map_or(0, |p| p.get())
}

impl NtfsFileNode {
    fn info(&self) -> Result<Arc<Info>> {
        if let Some(i) = &*self.info.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(i.clone());
        }
        let structure = format!("NTFS file in MFT record {}", self.frn);
        let i = Arc::new(guard(&self.vol.what, &structure, || self.load())?);
        *self.info.lock().unwrap_or_else(|p| p.into_inner()) = Some(i.clone());
        Ok(i)
    }

    /// Reads the file's record: times, names, and where its data is.
    fn load(&self) -> Result<Info> {
        let vol = &self.vol;
        let mut d = vol.device()?;
        let file = vol.record(&mut d, self.frn)?;
        let at = position(&file);
        let what = format!("MFT record {}", self.frn);
        let err = |e: NtfsError| vol.error(at, &what, &e);
        let mtime = nt_time(file.info().map_err(err)?.modification_time());
        let nlink = self.names(&file, &mut d).map_err(err)?;
        let pieces = self.data_pieces(&file, &mut d)?;
        let (size, content) = self.assemble(pieces, at)?;
        Ok(Info {
            at,
            size,
            mtime,
            nlink,
            content,
        })
    }

    /// The pieces of the unnamed $DATA attribute: in the base record, or wherever its
    /// attribute list says.
    fn data_pieces(&self, file: &NtfsFile, d: &mut Device) -> Result<Vec<Piece>> {
        let at = position(file);
        let what = format!("attributes of MFT record {}", self.frn);
        let err = |e: NtfsError| self.vol.error(at, &what, &e);
        let mut pieces = Vec::new();
        let mut list = None;
        for a in file.attributes_raw() {
            let a = a.map_err(err)?;
            match a.ty().map_err(err)? {
                NtfsAttributeType::AttributeList => {
                    list = Some(a.structured_value::<_, NtfsAttributeList>(d).map_err(err)?)
                }
                NtfsAttributeType::Data if a.name_length() == 0 => {
                    pieces.push(self.piece(file, &a, d)?)
                }
                _ => {}
            }
        }
        let Some(list) = list else {
            return Ok(pieces);
        };
        pieces.clear();
        let mut entries = list.entries();
        while let Some(e) = entries.next(d) {
            let e = e.map_err(err)?;
            if e.ty().map_err(err)? != NtfsAttributeType::Data || e.name_length() != 0 {
                continue;
            }
            if pieces.len() >= MAX_PIECES {
                return Err(Error::corrupt(
                    &self.vol.what,
                    at,
                    format!("{what}: too many pieces"),
                ));
            }
            let f = e.to_file(&self.vol.ntfs, d).map_err(err)?;
            let a = e.to_attribute(&f).map_err(err)?;
            pieces.push(self.piece(&f, &a, d)?);
        }
        Ok(pieces)
    }

    /// One $DATA piece: a resident value through the crate; a non-resident one's header and
    /// runs from its record's bytes (the crate gives neither the initialized size nor the
    /// first cluster of a piece).
    fn piece(&self, file: &NtfsFile, a: &NtfsAttribute, d: &mut Device) -> Result<Piece> {
        let record_at = position(file);
        let attr_at = a.position().value().map_or(0, |p| p.get());
        if a.is_resident() {
            let err = |e: NtfsError| self.vol.error(attr_at, "resident $DATA", &e);
            return Ok(match a.value(d).map_err(err)? {
                NtfsAttributeValue::Resident(v) => Piece::Resident(v.data().to_vec()),
                _ => Piece::Resident(Vec::new()),
            });
        }
        self.raw_piece(record_at, attr_at.saturating_sub(record_at) as usize)
    }

    /// Decodes the non-resident attribute header at `off` in the record at `record_at`.
    fn raw_piece(&self, record_at: u64, off: usize) -> Result<Piece> {
        let vol = &self.vol;
        let rec = vol.raw_record(record_at)?;
        let at = record_at + off as u64;
        let bad = |msg: &str| Error::corrupt(&vol.what, at, format!("NTFS $DATA attribute: {msg}"));
        let le = |o: usize, n: usize| -> u64 {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&rec[off + o..off + o + n]);
            u64::from_le_bytes(v)
        };
        if off + 0x40 > rec.len() || rec[off + 8] != 1 {
            return Err(bad("non-resident header out of its record"));
        }
        let len = (le(4, 4) as usize).min(rec.len() - off);
        let flags = le(0x0c, 2);
        // Sparse files have a compression unit too: only the flags say compressed.
        if flags & 0x4001 != 0 {
            return Err(Error::unsupported(
                &vol.what,
                format!(
                    "at offset {at}: MFT record {}: the file is NTFS-compressed or encrypted, which restorefs cannot decode; loop-mount the partition with ntfs-3g to read it",
                    self.frn
                ),
            ));
        }
        let lowest_vcn = le(0x10, 8);
        let pairs = le(0x20, 2) as usize;
        if pairs > len {
            return Err(bad("data runs start past the attribute"));
        }
        let cluster = u64::from(vol.ntfs.cluster_size());
        let runs = decode_runs(&rec[off + pairs..off + len], cluster).map_err(|m| bad(&m))?;
        Ok(Piece::NonResident(Mapped {
            lowest_vcn,
            runs,
            sizes: (le(0x30, 8), le(0x38, 8)),
        }))
    }

    /// The file's size and content from its $DATA pieces, checked to follow one another.
    fn assemble(&self, mut pieces: Vec<Piece>, at: u64) -> Result<(u64, Content)> {
        let bad = |msg: String| {
            Error::corrupt(
                &self.vol.what,
                at,
                format!("MFT record {}: {msg}", self.frn),
            )
        };
        if let [Piece::Resident(data)] = pieces.as_mut_slice() {
            let data = std::mem::take(data);
            return Ok((data.len() as u64, Content::Resident(data)));
        }
        let cluster = u64::from(self.vol.ntfs.cluster_size());
        let mut parts = pieces
            .into_iter()
            .map(|p| match p {
                Piece::NonResident(m) => Ok(m),
                Piece::Resident(_) => Err(bad("resident data among non-resident pieces".into())),
            })
            .collect::<Result<Vec<Mapped>>>()?;
        parts.sort_by_key(|p| p.lowest_vcn);
        let (mut runs, mut sizes, mut end) = (Vec::new(), (0, 0), 0u64);
        for Mapped {
            lowest_vcn: vcn,
            runs: piece_runs,
            sizes: piece_sizes,
        } in parts
        {
            let start = vcn
                .checked_mul(cluster)
                .filter(|s| *s == end)
                .ok_or_else(|| {
                    bad(format!(
                        "$DATA piece at cluster {vcn} does not follow byte {end}"
                    ))
                })?;
            if vcn == 0 {
                sizes = piece_sizes;
            }
            for r in piece_runs {
                if runs.len() >= MAX_RUNS {
                    return Err(bad("too many data runs".into()));
                }
                let start = start
                    .checked_add(r.start)
                    .filter(|s| s.checked_add(r.len).is_some())
                    .ok_or_else(|| bad("runs past 2^64".into()))?;
                end = start + r.len;
                runs.push(Run { start, ..r });
            }
            end = end.max(start);
        }
        let (size, initialized) = sizes;
        Ok((
            size,
            Content::Runs {
                runs,
                initialized: initialized.min(size),
            },
        ))
    }

    /// How many names (hard links) the file has, not counting DOS 8.3 duplicates.
    fn names(&self, file: &NtfsFile, d: &mut Device) -> ntfs::Result<u32> {
        let mut n = 0u32;
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(d) {
            let a = item?;
            let a = a.to_attribute()?;
            // A non-resident name is damage; the crate would parse it from the device.
            if a.ty()? == NtfsAttributeType::FileName && a.is_resident() {
                let name: NtfsFileName = a.structured_value(d)?;
                n += u32::from(name.namespace() != NtfsFileNamespace::Dos);
            }
        }
        Ok(n.max(1))
    }

    /// Fills `buf` (inside the file) from `offset` of data held in `runs` of the record at `at`.
    fn read_runs(&self, (runs, at): (&[Run], u64), offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = runs.partition_point(|r| r.start <= pos);
            let run = i
                .checked_sub(1)
                .map(|i| runs[i])
                .filter(|r| pos - r.start < r.len);
            let Some(run) = run else {
                return Err(Error::corrupt(
                    &self.vol.what,
                    at,
                    format!(
                        "MFT record {}: data runs end at byte {pos} of the file",
                        self.frn
                    ),
                ));
            };
            let n = ((run.start + run.len - pos) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            match run.disk {
                None => part.fill(0),
                Some(disk) => read_exact_at(
                    self.vol.dev.as_ref(),
                    &self.vol.what,
                    disk.saturating_add(pos - run.start),
                    part,
                    "NTFS file data",
                )?,
            }
            done += n;
        }
        Ok(())
    }
}

impl FileNode for NtfsFileNode {
    fn size(&self) -> Result<u64> {
        Ok(self.info()?.size)
    }

    fn check(&self) -> Result<()> {
        self.info().map(|_| ())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let info = self.info()?;
        let n = vfs::clamp(offset, buf.len(), info.size);
        let buf = &mut buf[..n];
        match &info.content {
            Content::Resident(data) => {
                let at = offset.min(data.len() as u64) as usize;
                let have = (data.len() - at).min(n);
                buf[..have].copy_from_slice(&data[at..at + have]);
                buf[have..].fill(0);
            }
            Content::Runs { runs, initialized } => {
                let valid = vfs::clamp(offset, n, *initialized);
                self.read_runs((runs, info.at), offset, &mut buf[..valid])?;
                buf[valid..].fill(0);
            }
        }
        Ok(n)
    }

    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        let info = self.info()?;
        if offset >= info.size {
            return Ok(None);
        }
        let Content::Runs { runs, .. } = &info.content else {
            return Ok(Some(offset));
        };
        let i = runs.partition_point(|r| r.start + r.len <= offset);
        Ok(runs[i..]
            .iter()
            .find(|r| r.disk.is_some())
            .map_or(if i == runs.len() { Some(offset) } else { None }, |r| {
                Some(r.start.max(offset))
            })
            .filter(|at| *at < info.size))
    }

    fn next_hole(&self, offset: u64) -> Result<u64> {
        let info = self.info()?;
        let Content::Runs { runs, .. } = &info.content else {
            return Ok(offset.max(info.size));
        };
        let i = runs.partition_point(|r| r.start + r.len <= offset);
        Ok(runs[i..]
            .iter()
            .find(|r| r.disk.is_none())
            .map_or(info.size, |r| r.start.max(offset))
            .min(info.size)
            .max(offset))
    }

    fn nlink(&self) -> u32 {
        self.info().map_or(1, |i| i.nlink)
    }

    fn allocated(&self) -> Result<u64> {
        let info = self.info()?;
        Ok(match &info.content {
            Content::Runs { runs, .. } => runs
                .iter()
                .filter(|r| r.disk.is_some())
                .fold(0u64, |sum, r| sum.saturating_add(r.len)),
            Content::Resident(_) => info.size,
        })
    }

    fn identity(&self) -> Option<(usize, u64)> {
        Some((Arc::as_ptr(&self.vol) as usize, self.frn))
    }

    fn attr(&self) -> Attr {
        let mtime = self.info().map_or(self.fallback_mtime, |i| i.mtime);
        Attr::read_only(false, mtime)
    }
}

/// Decodes NTFS mapping pairs (data runs) of a piece, from its byte 0.
fn decode_runs(b: &[u8], cluster: u64) -> std::result::Result<Vec<Run>, String> {
    let mut out = Vec::new();
    let (mut i, mut lcn, mut start) = (0usize, 0i64, 0u64);
    while i < b.len() && b[i] != 0 {
        let (len_n, off_n) = (usize::from(b[i] & 0x0f), usize::from(b[i] >> 4));
        i += 1;
        if len_n == 0 || len_n > 8 || off_n > 8 || i + len_n + off_n > b.len() {
            return Err(format!("bad data run header at byte {}", i - 1));
        }
        let mut v = [0u8; 8];
        v[..len_n].copy_from_slice(&b[i..i + len_n]);
        let count = u64::from_le_bytes(v);
        i += len_n;
        let disk = if off_n == 0 {
            None
        } else {
            let fill = if b[i + off_n - 1] & 0x80 != 0 {
                0xff
            } else {
                0
            };
            let mut v = [fill; 8];
            v[..off_n].copy_from_slice(&b[i..i + off_n]);
            lcn = lcn
                .checked_add(i64::from_le_bytes(v))
                .filter(|l| *l >= 0)
                .ok_or("a data run points before the volume")?;
            Some(
                (lcn as u64)
                    .checked_mul(cluster)
                    .ok_or("a data run points past 2^64")?,
            )
        };
        i += off_n;
        let len = count
            .checked_mul(cluster)
            .filter(|l| *l > 0 && start.checked_add(*l).is_some())
            .ok_or("a data run of no or too many clusters")?;
        if out.len() >= MAX_RUNS {
            return Err("too many data runs".into());
        }
        out.push(Run { start, len, disk });
        start += len;
    }
    Ok(out)
}
