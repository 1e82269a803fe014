//! The virtual tree that every front end shares: the FUSE mount, `export` and `ls` walk the same
//! nodes. Formats build nodes; nothing here knows a backup format.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// Ownership, permissions and time of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Permission bits (no file type bits).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: SystemTime,
}

impl Attr {
    /// Read-only attributes owned by the mounting user: 0444 files, 0555 directories.
    pub fn read_only(dir: bool, mtime: SystemTime) -> Attr {
        Attr {
            perm: if dir { 0o555 } else { 0o444 },
            uid: crate::sys::euid(),
            gid: crate::sys::egid(),
            mtime,
        }
    }
}

/// One entry of the tree.
#[derive(Clone)]
pub enum Node {
    /// A folder.
    Dir(Arc<dyn Directory>),
    /// A regular file.
    File(Arc<dyn FileNode>),
    /// A symbolic link.
    Symlink(Arc<Symlink>),
    /// A device node, fifo or socket inside a disk image: shown, never opened.
    Special(Arc<Special>),
}

/// What a node is, without the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A folder.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A device node, fifo or socket.
    Special(SpecialKind),
}

/// Which kind of special file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialKind {
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// A device node, fifo or socket: its kind, device number and attributes.
pub struct Special {
    /// What it is.
    pub kind: SpecialKind,
    /// Device number (Linux's encoding), 0 for fifos and sockets.
    pub rdev: u32,
    /// Its attributes.
    pub attr: Attr,
}

impl Node {
    /// What the node is.
    pub fn kind(&self) -> NodeKind {
        match self {
            Node::Dir(_) => NodeKind::Dir,
            Node::File(_) => NodeKind::File,
            Node::Symlink(_) => NodeKind::Symlink,
            Node::Special(s) => NodeKind::Special(s.kind),
        }
    }

    /// The node's attributes.
    pub fn attr(&self) -> Attr {
        match self {
            Node::Dir(d) => d.attr(),
            Node::File(f) => f.attr(),
            Node::Symlink(s) => s.attr,
            Node::Special(s) => s.attr,
        }
    }
}

/// A folder: lists and looks up its children.
pub trait Directory: Send + Sync {
    /// Listed children, sorted by name. Folders may answer lookups of names they don't list.
    fn entries(&self) -> Result<Vec<(String, Node)>>;

    /// Listed names and what they are, without making their nodes (for large listings).
    fn names(&self) -> Result<Vec<(String, NodeKind)>> {
        Ok(self
            .entries()?
            .into_iter()
            .map(|(n, node)| (n, node.kind()))
            .collect())
    }

    /// The child called `name`, if any.
    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, node)| node))
    }

    /// Attributes of the folder itself.
    fn attr(&self) -> Attr;

    /// Whether the listing can change while mounted (then the kernel caches it only briefly).
    fn live(&self) -> bool {
        false
    }

    /// What the folder holds, for `ls --json` and `info.json` (a disk image's partitions and
    /// file systems); `None` for plain folders.
    fn describe(&self) -> Option<serde_json::Value> {
        None
    }

    /// Whether the folder lists nothing and only answers lookups of names it makes up (`at/`):
    /// an export leaves it out.
    fn lookup_only(&self) -> bool {
        false
    }
}

/// How many of `len` bytes from `offset` lie inside a file of `size` bytes (0 past its end):
/// every reader clamps its reads with this.
pub fn clamp(offset: u64, len: usize, size: u64) -> usize {
    let left = size.saturating_sub(offset);
    usize::try_from(left).map_or(len, |left| len.min(left))
}

/// The state of one reader of a file (an open file handle, an NBD connection): where its
/// last read ended and how far ahead of it the backing data was asked for, so that two
/// readers streaming one file each get their own read-ahead. Atomic: the kernel sends one
/// handle's readahead requests on several threads.
#[derive(Debug)]
pub struct Cursor {
    /// End of the last read (`u64::MAX` before the first).
    pub last_end: AtomicU64,
    /// How far ahead of this reader the backing data was requested.
    pub prefetched: AtomicU64,
}

impl Default for Cursor {
    fn default() -> Cursor {
        Cursor {
            last_end: AtomicU64::new(u64::MAX),
            prefetched: AtomicU64::new(0),
        }
    }
}

/// A regular file served by offset.
pub trait FileNode: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> Result<u64>;

    /// Whether the file can be served at all (checked on open and before export).
    fn check(&self) -> Result<()> {
        Ok(())
    }

    /// Fills `buf` from `offset`; returns the bytes read (short only at end of file).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize>;

    /// Hands the bytes at `offset..offset+len` (fewer at the end) to `f` without copying them,
    /// when they lie in one mapped or decoded range; `Ok(false)` when it cannot (the caller
    /// then reads into a buffer of its own).
    fn read_with(&self, _offset: u64, _len: usize, _f: &mut dyn FnMut(&[u8])) -> Result<bool> {
        Ok(false)
    }

    /// [`read_at`](Self::read_at) for the reader `cursor` (read-ahead follows it alone).
    fn read_at_by(&self, _cursor: &Cursor, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_at(offset, buf)
    }

    /// [`read_with`](Self::read_with) for the reader `cursor`.
    fn read_with_by(
        &self,
        _cursor: &Cursor,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<bool> {
        self.read_with(offset, len, f)
    }

    /// The first offset >= `offset` that holds data, or `None` when only holes follow.
    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        Ok((offset < self.size()?).then_some(offset))
    }

    /// The first offset >= `offset` in a hole; the end of the file counts as one.
    fn next_hole(&self, offset: u64) -> Result<u64> {
        Ok(offset.max(self.size()?))
    }

    /// Whether the kernel should keep the file's pages in its page cache. Files whose bytes
    /// already live in the page cache as pages of backup files (mapped images) say no, so the
    /// kernel keeps one copy, not two, and large reads go straight to restorefs.
    fn page_cache(&self) -> bool {
        true
    }

    /// Names this file has in its tree (hard links).
    fn nlink(&self) -> u32 {
        1
    }

    /// What makes two nodes one file (hard links of a file system inside an image): the file
    /// system's identity and the inode number. `None`: the node itself is the identity.
    fn identity(&self) -> Option<(usize, u64)> {
        None
    }

    /// Bytes that hold data (not holes), for `st_blocks`.
    fn allocated(&self) -> Result<u64> {
        self.size()
    }

    /// Attributes of the file.
    fn attr(&self) -> Attr;
}

/// A symbolic link with a relative target.
pub struct Symlink {
    /// Where it points (bytes that are not UTF-8 escaped as [`name_from_bytes`] does).
    pub target: String,
    /// Its attributes.
    pub attr: Attr,
}

/// A folder whose children are fixed when it is made.
pub struct StaticDir {
    attr: Attr,
    entries: Vec<(String, Node)>,
}

impl StaticDir {
    /// A folder holding `entries` (sorted here).
    pub fn new(attr: Attr, mut entries: Vec<(String, Node)>) -> Arc<StaticDir> {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Arc::new(StaticDir { attr, entries })
    }
}

impl Directory for StaticDir {
    fn entries(&self) -> Result<Vec<(String, Node)>> {
        Ok(self.entries.clone())
    }

    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        Ok(find_sorted(&self.entries, name))
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}

/// The node called `name` in `entries` sorted by name.
pub fn find_sorted(entries: &[(String, Node)], name: &str) -> Option<Node> {
    entries
        .binary_search_by(|(n, _)| n.as_str().cmp(name))
        .ok()
        .map(|i| entries[i].1.clone())
}

/// A folder's children, sorted by name, shared by every reader.
pub type Listing = Arc<Vec<(String, Node)>>;

/// A folder's listing, sorted by name, read on first use and kept (a failed read is tried
/// again next time).
#[derive(Default)]
pub struct ListedOnce(Mutex<Option<Listing>>);

impl ListedOnce {
    /// The listing, read with `list` the first time.
    pub fn get(&self, list: impl FnOnce() -> Result<Vec<(String, Node)>>) -> Result<Listing> {
        if let Some(l) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(l.clone());
        }
        let l = Arc::new(list()?);
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(l.clone());
        Ok(l)
    }
}

/// A small file held in memory (info.json, vmconfig.xml).
pub struct BytesFile {
    data: Vec<u8>,
    attr: Attr,
}

impl BytesFile {
    /// A file with these contents.
    pub fn new(data: Vec<u8>, attr: Attr) -> Arc<BytesFile> {
        Arc::new(BytesFile { data, attr })
    }
}

impl FileNode for BytesFile {
    fn size(&self) -> Result<u64> {
        Ok(self.data.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        self.read_with(offset, buf.len(), &mut |b| {
            buf[..b.len()].copy_from_slice(b);
            n = b.len();
        })?;
        Ok(n)
    }

    fn read_with(&self, offset: u64, len: usize, f: &mut dyn FnMut(&[u8])) -> Result<bool> {
        let n = clamp(offset, len, self.data.len() as u64);
        let start = if n == 0 { 0 } else { offset as usize };
        f(&self.data[start..start + n]);
        Ok(true)
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}

/// A file that cannot be served: it has a size (when known) and every read fails with `err`.
pub struct ErrorFile {
    size: u64,
    err: Error,
    attr: Attr,
}

impl ErrorFile {
    /// A file of `size` bytes whose reads fail with `err`.
    pub fn new(size: u64, err: Error, attr: Attr) -> Arc<ErrorFile> {
        Arc::new(ErrorFile { size, err, attr })
    }
}

impl FileNode for ErrorFile {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn check(&self) -> Result<()> {
        Err(self.err.clone())
    }

    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> Result<usize> {
        Err(self.err.clone())
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}

/// First of the private-use characters that stand for single bytes in names (`U+EF80` is
/// byte `0x80`, ... `U+EFFF` is `0xFF`).
const BYTE_ESCAPE: u32 = 0xEF00;

fn is_byte_escape(c: char) -> bool {
    (BYTE_ESCAPE + 0x80..=BYTE_ESCAPE + 0xFF).contains(&u32::from(c))
}

/// A name (or link target) from a file system inside an image as a tree name: valid UTF-8
/// stays as it is; every other byte (and any character of the escape range itself) becomes
/// one private-use character, so that [`name_bytes`] gives the exact bytes back.
pub fn name_from_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if is_byte_escape(c) {
                let mut utf8 = [0; 4];
                for &x in c.encode_utf8(&mut utf8).as_bytes() {
                    out.push(escape_byte(x));
                }
            } else {
                out.push(c);
            }
        }
        out.extend(chunk.invalid().iter().map(|&x| escape_byte(x)));
    }
    out
}

fn escape_byte(x: u8) -> char {
    char::from_u32(BYTE_ESCAPE + u32::from(x)).expect("private-use character")
}

/// The bytes a tree name stands for: what front ends give the kernel and the local disk.
pub fn name_bytes(name: &str) -> std::borrow::Cow<'_, [u8]> {
    if !name.chars().any(is_byte_escape) {
        return std::borrow::Cow::Borrowed(name.as_bytes());
    }
    let mut out = Vec::with_capacity(name.len());
    for c in name.chars() {
        if is_byte_escape(c) {
            out.push((u32::from(c) - BYTE_ESCAPE) as u8);
        } else {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Follows `path` (relative, `/`-separated) from `root`, resolving symlinks inside the tree.
pub fn resolve(root: &Node, path: &str) -> Result<Node> {
    let mut stack: Vec<Node> = vec![root.clone()];
    let mut todo: Vec<String> = components(path).rev().map(str::to_owned).collect();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        let cur = stack.last().cloned().expect("stack keeps the root");
        match name.as_str() {
            "." => continue,
            ".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let Node::Dir(dir) = cur else {
            return Err(Error::not_found(format!(
                "{path}: '{name}' is inside a file"
            )));
        };
        let Some(child) = dir.lookup(&name)? else {
            let names: Vec<String> = dir.names()?.into_iter().map(|(n, _)| n).collect();
            let near = nearest(&name, &names, 5);
            let hint = if near.is_empty() {
                " (the folder lists nothing)".to_owned()
            } else {
                format!("; nearest: {}", near.join(", "))
            };
            return Err(Error::not_found(format!("{path}: no '{name}' here{hint}")));
        };
        if let Node::Symlink(link) = &child {
            links += 1;
            if links > 40 {
                return Err(Error::usage(format!("{path}: too many symlinks")));
            }
            todo.extend(components(&link.target).rev().map(str::to_owned));
            continue;
        }
        stack.push(child);
    }
    Ok(stack.pop().expect("stack keeps the root"))
}

/// Up to `n` of `names` closest to `name`: by edit distance (to the whole name, or one more
/// than to its start, so that `info` finds `info.json`), then longest common prefix.
pub fn nearest(name: &str, names: &[String], n: usize) -> Vec<String> {
    let want: Vec<char> = name.chars().collect();
    let mut scored: Vec<(usize, usize, &String)> = names
        .iter()
        .map(|c| {
            let have: Vec<char> = c.chars().collect();
            let prefix = want.iter().zip(&have).take_while(|(a, b)| a == b).count();
            let start = &have[..have.len().min(want.len())];
            let d = edit_distance(&want, &have).min(edit_distance(&want, start) + 1);
            (d, usize::MAX - prefix, c)
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(n)
        .map(|(_, _, c)| c.clone())
        .collect()
}

/// Levenshtein distance.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// Whether `name` can be one path component: not empty, `.`, `..`, no `/` or NUL, not too long.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && name.len() <= MAX_NAME_LEN
}

/// The longest name restorefs exposes: leaves room for suffixes within the kernel's 255 bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Whether `name`, read from a file system inside an image, can be served as one path
/// component: as [`is_safe_name`], but up to the kernel's 255 bytes (nothing is appended to it).
pub fn is_guest_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && name_bytes(name).len() <= 255
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr() -> Attr {
        Attr::read_only(false, SystemTime::UNIX_EPOCH)
    }

    fn tree() -> Node {
        let file = Node::File(BytesFile::new(b"hello".to_vec(), attr()));
        let point = Node::Dir(StaticDir::new(attr(), vec![("a.txt".into(), file)]));
        let link = Node::Symlink(Arc::new(Symlink {
            target: "p1".into(),
            attr: attr(),
        }));
        let at = Node::Symlink(Arc::new(Symlink {
            target: "../p1".into(),
            attr: attr(),
        }));
        let sub = Node::Dir(StaticDir::new(attr(), vec![("x".into(), at)]));
        Node::Dir(StaticDir::new(
            attr(),
            vec![
                ("p1".into(), point),
                ("latest".into(), link),
                ("at".into(), sub),
            ],
        ))
    }

    fn read_all(node: &Node) -> Vec<u8> {
        let Node::File(f) = node else {
            panic!("not a file")
        };
        let mut buf = vec![0; f.size().unwrap() as usize];
        let n = f.read_at(0, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn resolves_through_relative_symlinks() {
        let root = tree();
        assert_eq!(read_all(&resolve(&root, "p1/a.txt").unwrap()), b"hello");
        assert_eq!(read_all(&resolve(&root, "latest/a.txt").unwrap()), b"hello");
        assert_eq!(read_all(&resolve(&root, "at/x/a.txt").unwrap()), b"hello");
        assert!(resolve(&root, "p2/a.txt").is_err());
        assert!(resolve(&root, "p1/a.txt/b").is_err());
    }

    #[test]
    fn nearest_names_by_edit_distance_then_prefix() {
        let names: Vec<String> = ["vda.raw", "vdb.raw", "info.json", "vmconfig.xml", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(nearest("vdc.raw", &names, 2), ["vda.raw", "vdb.raw"]);
        assert_eq!(nearest("info", &names, 1), ["info.json"]);
        assert_eq!(nearest("anything", &[], 5), Vec::<String>::new());
        assert_eq!(edit_distance(&['a', 'b'], &['b']), 1);
        let e = resolve(&tree(), "p2/a.txt").err().unwrap().to_string();
        assert!(e.ends_with("no 'p2' here; nearest: p1, at, latest"), "{e}");
    }

    #[test]
    fn names_round_trip_as_bytes() {
        let cases: [&[u8]; 5] = [
            b"plain",
            b"caf\xc3\xa9",
            b"bad\xff\xfe",
            b"\xee\xbe\x80",
            b"",
        ];
        for b in cases {
            let name = name_from_bytes(b);
            assert_eq!(&*name_bytes(&name), b, "{name:?}");
        }
        assert_eq!(name_from_bytes(b"caf\xc3\xa9"), "café");
        assert_ne!(name_from_bytes(b"\xff"), name_from_bytes(b"\xee\xbf\xbf"));
    }

    #[test]
    fn unsafe_names_are_rejected() {
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(201)] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        assert!(is_safe_name("vda"));
        // Names inside guest file systems may use the kernel's whole 255 bytes, not more.
        assert!(is_guest_name(&"x".repeat(255)) && !is_guest_name(&"x".repeat(256)));
        assert!(is_guest_name(&"é".repeat(127)) && !is_guest_name(&"é".repeat(128)));
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(!is_guest_name(bad), "{bad:?}");
        }
    }
}
