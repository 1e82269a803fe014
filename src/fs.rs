//! The FUSE adapter. [`Inodes`] holds everything the kernel interface needs (inode numbers,
//! attributes, directory listings, seeks) as plain, kernel-free code; [`FuseFs`] only translates
//! kernel requests into calls on it and errors into errnos.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use std::ffi::OsStr;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::vfs::{FileNode, Kind, Node};

/// How long the kernel may cache names and attributes: content never changes under a name.
const TTL: Duration = Duration::from_secs(3600);
/// The same inside live folders, whose listing can change (a growing backup log).
const LIVE_TTL: Duration = Duration::from_secs(1);
/// Block size `stat` reports: large, so that `cp` and friends read in big pieces.
const BLKSIZE: u32 = 1 << 20;
/// The largest read the kernel sends with `FUSE_MAX_PAGES` (256 pages).
const MAX_READ: usize = 1 << 20;
/// Entries prepared per readdir call (more than one reply buffer holds).
const READDIR_BATCH: usize = 1024;

/// Runs a request handler; a panic (a bug) is logged and answered with EIO by the dropped
/// reply, and the mount stays up.
fn guard(op: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        log::error!("{op}: internal error (a bug): answered EIO, the mount stays up");
    }
}

/// What identifies an inode across lookups: a file node by identity (so hardlinks share an
/// inode), anything else by parent and name (so re-made folders and symlinks keep theirs).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Root,
    File(usize),
    Child(u64, String),
}

struct Entry {
    /// `None` for a name listed but not looked up yet: found through its parent when needed.
    node: Option<Node>,
    key: Key,
    /// The folder it was last found in, and its name there.
    parent: u64,
    name: String,
    lookups: u64,
}

struct Table {
    entries: HashMap<u64, Entry>,
    keys: HashMap<Key, u64>,
    /// Entries that readdir numbered but the kernel holds no reference to, least recently
    /// listed first: bounded, so that listing millions of names does not grow the table.
    listed: LruCache<u64, ()>,
    /// Entries the kernel holds references to, least recently looked up first.
    held: LruCache<u64, ()>,
    next: u64,
}

impl Table {
    /// Drops `ino` if the kernel holds no reference to it.
    fn drop_unreferenced(&mut self, ino: u64) {
        if self.entries.get(&ino).is_some_and(|e| e.lookups == 0)
            && let Some(e) = self.entries.remove(&ino)
        {
            self.keys.remove(&e.key);
        }
    }
}

/// How many listed but not looked-up names keep their inode numbers (a name dropped from here
/// gets a new number when it is next listed or looked up; the kernel holds no reference to it).
const LISTED_MAX: usize = 16 * 1024;

/// Inode numbers for the nodes of the tree, counted like the kernel counts lookups.
pub struct Inodes {
    table: RwLock<Table>,
}

/// Inode number of the root folder.
pub const ROOT: u64 = 1;

impl Inodes {
    /// A table holding the root folder.
    pub fn new(root: Node) -> Inodes {
        let mut entries = HashMap::new();
        entries.insert(
            ROOT,
            Entry {
                node: Some(root),
                key: Key::Root,
                parent: ROOT,
                name: String::new(),
                lookups: 1,
            },
        );
        let mut keys = HashMap::new();
        keys.insert(Key::Root, ROOT);
        Inodes {
            table: RwLock::new(Table {
                entries,
                keys,
                listed: LruCache::unbounded(),
                held: LruCache::unbounded(),
                next: ROOT + 1,
            }),
        }
    }

    /// The node of inode `ino`.
    pub fn node(&self, ino: u64) -> Result<Node> {
        let key = {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            let e = t
                .entries
                .get(&ino)
                .ok_or_else(|| Error::not_found(format!("inode {ino} is not known (forgotten)")))?;
            match &e.node {
                Some(n) => return Ok(n.clone()),
                None => e.key.clone(),
            }
        };
        let Key::Child(parent, name) = key else {
            return Err(Error::not_found(format!("inode {ino} has no node")));
        };
        let node = match self.node(parent)? {
            Node::Dir(d) => d.lookup(&name)?,
            _ => None,
        }
        .ok_or_else(|| Error::not_found(format!("'{name}' is gone")))?;
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = t.entries.get_mut(&ino) {
            e.node = Some(node.clone());
        }
        Ok(node)
    }

    /// Name of inode `ino`, for log lines.
    pub fn name(&self, ino: u64) -> String {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.entries
            .get(&ino)
            .map(|e| e.name.clone())
            .unwrap_or_default()
    }

    fn dir(&self, ino: u64) -> Result<Arc<dyn crate::vfs::Directory>> {
        match self.node(ino)? {
            Node::Dir(d) => Ok(d),
            _ => Err(Error::usage("not a folder")),
        }
    }

    /// How long the kernel may cache what is found in (or said about) folder `ino`.
    pub fn ttl(&self, ino: u64) -> Duration {
        match self.node(ino) {
            Ok(Node::Dir(d)) if d.live() => LIVE_TTL,
            _ => TTL,
        }
    }

    /// Looks `name` up in folder `parent`; the kernel now holds one more reference to the result.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<(u64, Node)> {
        let dir = self.dir(parent)?;
        let node = dir
            .lookup(name)?
            .ok_or_else(|| Error::not_found(format!("no '{name}'")))?;
        let ino = self.assign(parent, name, node.clone(), 1);
        Ok((ino, node))
    }

    /// The inode number for `node` found as `name` in `parent`, adding `count` kernel references.
    fn assign(&self, parent: u64, name: &str, node: Node, count: u64) -> u64 {
        let key = match &node {
            Node::File(f) => Key::File(Arc::as_ptr(f) as *const () as usize),
            _ => Key::Child(parent, name.to_owned()),
        };
        self.assign_key(key, parent, name, Some(node), count)
    }

    fn assign_key(&self, key: Key, parent: u64, name: &str, node: Option<Node>, count: u64) -> u64 {
        let mut guard = self.table.write().unwrap_or_else(|p| p.into_inner());
        let t = &mut *guard;
        if let Some(&ino) = t.keys.get(&key)
            && let Some(e) = t.entries.get_mut(&ino)
        {
            e.lookups += count;
            // A folder may make a new node for the same name (a live set's `latest`): serve the newest.
            if node.is_some() {
                e.node = node;
            }
            if count > 0 {
                e.parent = parent;
                name.clone_into(&mut e.name);
                t.listed.pop(&ino);
                t.held.push(ino, ());
            } else if e.lookups == 0 {
                t.listed.promote(&ino);
            }
            return ino;
        }
        let ino = t.next;
        t.next += 1;
        t.keys.insert(key.clone(), ino);
        t.entries.insert(
            ino,
            Entry {
                node,
                key,
                parent,
                name: name.to_owned(),
                lookups: count,
            },
        );
        if count > 0 {
            t.held.push(ino, ());
        } else {
            t.listed.push(ino, ());
            while t.listed.len() > LISTED_MAX {
                match t.listed.pop_lru() {
                    Some((old, ())) => t.drop_unreferenced(old),
                    None => break,
                }
            }
        }
        ino
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        let Some(e) = t.entries.get_mut(&ino) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups == 0 {
            t.listed.pop(&ino);
            t.held.pop(&ino);
            t.drop_unreferenced(ino);
        }
    }

    /// The (folder, name) of the least recently looked-up entries the kernel holds beyond
    /// `keep`; they move to the back, so that ones the kernel cannot drop (open files) are not
    /// asked for again at once.
    pub fn excess_held(&self, keep: usize) -> Vec<(u64, String)> {
        let mut guard = self.table.write().unwrap_or_else(|p| p.into_inner());
        let t = &mut *guard;
        let excess = t.held.len().saturating_sub(keep);
        let mut out = Vec::with_capacity(excess);
        for _ in 0..excess {
            let Some((ino, ())) = t.held.pop_lru() else {
                break;
            };
            t.held.push(ino, ());
            if let Some(e) = t.entries.get(&ino) {
                out.push((e.parent, e.name.clone()));
            }
        }
        out
    }

    /// Number of inodes currently known.
    pub fn len(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    /// Whether only the root is known.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }

    /// The names folder `ino` lists now: one open of it reads them in batches.
    pub fn list(&self, ino: u64) -> Result<Listing> {
        Ok(Arc::new(self.dir(ino)?.names()?))
    }

    /// Up to `READDIR_BATCH` entries of folder `ino`, whose names are `names`, from position
    /// `offset`: (inode, next offset, type, name). Listed entries are not looked up: they get
    /// inode numbers without references.
    pub fn readdir(
        &self,
        ino: u64,
        names: &[(String, Kind)],
        offset: u64,
    ) -> Result<Vec<(u64, u64, FileType, String)>> {
        let dir = self.dir(ino)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for i in start..(names.len() + 2).min(start.saturating_add(READDIR_BATCH)) {
            let next = i as u64 + 1;
            let (name, k) = match i {
                0 | 1 => {
                    let dots = if i == 0 { "." } else { ".." };
                    out.push((ino, next, FileType::Directory, dots.to_owned()));
                    continue;
                }
                _ => match names.get(i - 2) {
                    Some(entry) => entry,
                    None => break,
                },
            };
            // Files are keyed by their node (hardlinks); folders and links by name, so a large
            // listing makes no nodes.
            let child = match k {
                Kind::File => match dir.lookup(name)? {
                    Some(node) => self.assign(ino, name, node, 0),
                    None => continue,
                },
                _ => self.assign_key(Key::Child(ino, name.clone()), ino, name, None, 0),
            };
            out.push((child, next, file_type(*k), name.clone()));
        }
        Ok(out)
    }
}

/// The names of a folder as one open of it lists them.
pub type Listing = Arc<Vec<(String, Kind)>>;

/// What each open folder lists, by handle: the kernel reads a listing in batches, and a folder
/// of a million names must not be listed anew for each.
#[derive(Default)]
struct DirHandles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Listing>>,
}

impl DirHandles {
    fn open(&self, names: Listing) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, names);
        fh
    }

    fn get(&self, fh: u64) -> Option<Listing> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&fh).cloned()
    }

    fn release(&self, fh: u64) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

/// `stat` of a node.
pub fn attr(ino: u64, node: &Node) -> Result<FileAttr> {
    let a = node.attr();
    let (size, blocks, nlink) = match node {
        Node::Dir(_) => (0, 0, 2),
        Node::File(f) => (f.size()?, f.allocated()?.div_ceil(512), f.nlink()),
        Node::Symlink(l) => (l.target.len() as u64, 0, 1),
    };
    Ok(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(node.kind()),
        perm: a.perm,
        nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    })
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE` answered from the file's extents.
pub fn seek(f: &dyn FileNode, offset: i64, whence: i32) -> Result<i64> {
    let size = f.size()?;
    let enxio = || Error::from_errno(libc::ENXIO, "offset past the last data");
    let off = u64::try_from(offset).map_err(|_| Error::usage("negative offset"))?;
    if off >= size && (whence == libc::SEEK_DATA || whence == libc::SEEK_HOLE) {
        return Err(enxio());
    }
    let to = match whence {
        libc::SEEK_DATA => f.next_data(off)?.ok_or_else(enxio)?,
        libc::SEEK_HOLE => f.next_hole(off)?,
        libc::SEEK_SET => off,
        libc::SEEK_END => size.saturating_add(off),
        _ => return Err(Error::usage("unsupported whence")),
    };
    Ok(to as i64)
}

thread_local! {
    /// Each FUSE worker thread's read buffer, reused so that reads don't allocate.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How many looked-up names the kernel may hold before the least recently used are asked
/// back: each keeps its node (a point, a file) in memory, and `find` over a large tree would
/// otherwise hold them all for as long as the kernel's dentry cache does.
const HELD_MAX: usize = 16 * 1024;

/// Asks the kernel to drop the least recently used names beyond [`HELD_MAX`]; it then forgets
/// their inodes (those still in use stay).
pub struct Pruner(Weak<Inodes>);

impl Pruner {
    /// Runs on its own thread (a notification may wait for a folder lock that a request being
    /// served holds) until the file system is dropped.
    pub fn start(self, notifier: Notifier) {
        let spawned = std::thread::Builder::new()
            .name("inode-pruner".into())
            .spawn(move || {
                while let Some(inodes) = self.0.upgrade() {
                    let excess = inodes.excess_held(HELD_MAX);
                    drop(inodes);
                    for (parent, name) in &excess {
                        // ENOENT when the kernel dropped it already: nothing to do.
                        let _ = notifier.inval_entry(INodeNo(*parent), OsStr::new(name));
                    }
                    // Keep up with a fast `find`; idle otherwise.
                    let pause = if excess.is_empty() { 200 } else { 10 };
                    std::thread::sleep(Duration::from_millis(pause));
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the inode pruner: {e}");
        }
    }
}

/// The `fuser` filesystem: translation only.
pub struct FuseFs {
    inodes: Arc<Inodes>,
    dirs: DirHandles,
    cache: Arc<Cache>,
    owner: Owner,
}

/// The owner and group shown for every node instead of the tree's (`-o uid=,gid=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Shown owner, when set.
    pub uid: Option<u32>,
    /// Shown group, when set.
    pub gid: Option<u32>,
}

impl Owner {
    fn apply(self, mut a: FileAttr) -> FileAttr {
        a.uid = self.uid.unwrap_or(a.uid);
        a.gid = self.gid.unwrap_or(a.gid);
        a
    }
}

impl FuseFs {
    /// Serves `root`; `cache` is only reported (its owners use it).
    pub fn new(root: Node, cache: Arc<Cache>) -> FuseFs {
        FuseFs {
            inodes: Arc::new(Inodes::new(root)),
            dirs: DirHandles::default(),
            cache,
            owner: Owner::default(),
        }
    }

    /// The same file system showing `owner` on every node.
    pub fn with_owner(mut self, owner: Owner) -> FuseFs {
        self.owner = owner;
        self
    }

    /// What keeps the kernel's references to this file system's inodes bounded.
    pub fn pruner(&self) -> Pruner {
        Pruner(Arc::downgrade(&self.inodes))
    }

    fn fail(&self, op: &str, ino: u64, e: &Error) -> Errno {
        if e.errno() == libc::EIO {
            log::warn!("{op} {}: {e}", self.inodes.name(ino));
        } else {
            log::debug!("{op} {}: {e}", self.inodes.name(ino));
        }
        Errno::from_i32(e.errno())
    }

    fn file(&self, ino: u64) -> Result<Arc<dyn FileNode>> {
        match self.inodes.node(ino)? {
            Node::File(f) => Ok(f),
            Node::Dir(_) => Err(Error::from_errno(libc::EISDIR, "is a folder")),
            Node::Symlink(_) => Err(Error::usage("is a symlink")),
        }
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // As much readahead as the kernel allows; more is set through sysfs after mounting.
        let max = (MAX_READ as u32).max(1);
        if let Err(allowed) = config.set_max_readahead(max) {
            let _ = config.set_max_readahead(allowed);
        }
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        // Programs may still mmap files opened with FOPEN_DIRECT_IO (kernel >= 6.6).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        // Let the kernel keep many readahead requests in flight for the worker threads.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn destroy(&mut self) {
        let s = self.cache.stats();
        log::info!(
            "cache: {} hits, {} misses, {} evictions, {} of {} bytes used",
            s.hits,
            s.misses,
            s.evictions,
            s.used,
            s.capacity
        );
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guard("lookup", || {
            let Some(name) = name.to_str() else {
                return reply.error(Errno::ENOENT);
            };
            match self
                .inodes
                .lookup(parent.0, name)
                .and_then(|(ino, node)| attr(ino, &node))
                .map(|a| self.owner.apply(a))
            {
                Ok(a) => reply.entry(&self.inodes.ttl(parent.0), &a, Generation(0)),
                Err(e) => reply.error(self.fail("lookup", parent.0, &e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        guard("forget", || {
            self.inodes.forget(ino.0, nlookup);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guard("getattr", || {
            let shown = |n: Node| attr(ino.0, &n).map(|a| self.owner.apply(a));
            match self.inodes.node(ino.0).and_then(shown) {
                Ok(a) => reply.attr(&self.inodes.ttl(ino.0), &a),
                Err(e) => reply.error(self.fail("getattr", ino.0, &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guard("readlink", || match self.inodes.node(ino.0) {
            Ok(Node::Symlink(l)) => reply.data(l.target.as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(self.fail("readlink", ino.0, &e)),
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guard("open", || {
            if flags.acc_mode() != OpenAccMode::O_RDONLY {
                return reply.error(Errno::EROFS);
            }
            match self.file(ino.0).and_then(|f| f.check().map(|()| f)) {
                // Content never changes under a name: keep the page cache across opens, or
                // bypass it for files whose bytes are cached already as backup-file pages.
                Ok(f) if f.page_cache() => {
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
                }
                Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
                Err(e) => reply.error(self.fail("open", ino.0, &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guard("read", || {
            let f = match self.file(ino.0) {
                Ok(f) => f,
                Err(e) => return reply.error(self.fail("read", ino.0, &e)),
            };
            let mut pending = Some(reply);
            let zero_copy = f.read_with(offset, size as usize, &mut |bytes| {
                if let Some(r) = pending.take() {
                    r.data(bytes);
                }
            });
            let Some(reply) = pending else { return };
            if let Err(e) = zero_copy {
                return reply.error(self.fail(&format!("read at {offset} of"), ino.0, &e));
            }
            READ_BUF.with_borrow_mut(|buf| {
                if buf.len() < size as usize {
                    buf.resize(size as usize, 0);
                }
                match f.read_at(offset, &mut buf[..size as usize]) {
                    Ok(n) => reply.data(&buf[..n]),
                    Err(e) => reply.error(self.fail(&format!("read at {offset} of"), ino.0, &e)),
                }
            });
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written: there is nothing to sync (loop devices ask on release).
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Like fsync: a read-only folder has nothing to sync (`sync -f DIR`, editors' saves).
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guard("readdir", || {
            let names = match self.dirs.get(fh.0) {
                Some(n) => Ok(n),
                None => self.inodes.list(ino.0),
            };
            match names.and_then(|n| self.inodes.readdir(ino.0, &n, offset)) {
                Ok(list) => {
                    for (child, next, k, name) in list {
                        if reply.add(INodeNo(child), next, k, &name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(self.fail("readdir", ino.0, &e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guard("opendir", || {
            let opened = self.inodes.node(ino.0).and_then(|n| match n {
                Node::Dir(d) => Ok((d.live(), self.inodes.list(ino.0)?)),
                _ => Err(Error::from_errno(libc::ENOTDIR, "not a folder")),
            });
            match opened {
                // A folder that cannot change may be listed from the kernel's cache.
                Ok((false, names)) => reply.opened(
                    FileHandle(self.dirs.open(names)),
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                ),
                Ok((true, names)) => {
                    reply.opened(FileHandle(self.dirs.open(names)), FopenFlags::empty())
                }
                Err(e) => reply.error(self.fail("opendir", ino.0, &e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.release(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guard("statfs", || {
            reply.statfs(0, 0, 0, self.inodes.len() as u64, 0, BLKSIZE, 255, BLKSIZE);
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        guard("access", || {
            if mask.contains(AccessFlags::W_OK) {
                return reply.error(Errno::EROFS);
            }
            match self.inodes.node(ino.0) {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(self.fail("access", ino.0, &e)),
            }
        });
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guard("lseek", || {
            match self
                .file(ino.0)
                .and_then(|f| seek(f.as_ref(), offset, whence))
            {
                Ok(to) => reply.offset(to),
                Err(e) => reply.error(self.fail("lseek", ino.0, &e)),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{Attr, BytesFile, StaticDir, Symlink};
    use std::time::SystemTime;

    fn attr() -> Attr {
        Attr::read_only(false, SystemTime::UNIX_EPOCH)
    }

    fn tree() -> (Node, Arc<BytesFile>) {
        let f = BytesFile::new(b"data".to_vec(), attr());
        let link = Node::Symlink(Arc::new(Symlink {
            target: "a".into(),
            attr: attr(),
        }));
        let sub = Node::Dir(StaticDir::new(
            attr(),
            vec![("same".into(), Node::File(f.clone()))],
        ));
        let root = Node::Dir(StaticDir::new(
            attr(),
            vec![
                ("a".into(), Node::File(f.clone())),
                ("hard".into(), Node::File(f.clone())),
                ("l".into(), link),
                ("sub".into(), sub),
            ],
        ));
        (root, f)
    }

    #[test]
    fn hardlinked_nodes_share_an_inode_and_forget_frees() {
        let (root, _) = tree();
        let t = Inodes::new(root);
        let (a, _) = t.lookup(ROOT, "a").unwrap();
        let (hard, _) = t.lookup(ROOT, "hard").unwrap();
        assert_eq!(a, hard);
        let (sub, _) = t.lookup(ROOT, "sub").unwrap();
        let (same, _) = t.lookup(sub, "same").unwrap();
        assert_eq!(same, a);
        let (l1, _) = t.lookup(ROOT, "l").unwrap();
        let (l2, _) = t.lookup(ROOT, "l").unwrap();
        assert_eq!(l1, l2);
        assert!(t.lookup(ROOT, "nope").is_err());
        let before = t.len();
        t.forget(a, 3);
        t.forget(l1, 2);
        assert_eq!(t.len(), before - 2);
        assert!(t.node(a).is_err());
    }

    #[test]
    fn readdir_lists_dot_entries_then_children_resuming_at_offsets() {
        let (root, _) = tree();
        let t = Inodes::new(root);
        let list = t.list(ROOT).unwrap();
        let all = t.readdir(ROOT, &list, 0).unwrap();
        let names: Vec<&str> = all.iter().map(|e| e.3.as_str()).collect();
        assert_eq!(names, [".", "..", "a", "hard", "l", "sub"]);
        assert_eq!(
            all[2].0, all[3].0,
            "hardlinks share the inode in listings too"
        );
        let rest = t.readdir(ROOT, &list, all[3].1).unwrap();
        assert!(t.readdir(ROOT, &list, u64::MAX).unwrap().is_empty());
        assert_eq!(
            rest.iter().map(|e| e.3.as_str()).collect::<Vec<_>>(),
            ["l", "sub"]
        );
    }

    #[test]
    fn attributes_and_seeks() {
        let (root, f) = tree();
        let a = attr_of(&root);
        assert_eq!((a.kind, a.nlink), (FileType::Directory, 2));
        let fa = super::attr(5, &Node::File(f.clone())).unwrap();
        assert_eq!((fa.size, fa.blocks, fa.perm), (4, 1, 0o444));
        assert_eq!(seek(f.as_ref(), 1, libc::SEEK_DATA).unwrap(), 1);
        assert_eq!(seek(f.as_ref(), 1, libc::SEEK_HOLE).unwrap(), 4);
        assert_eq!(
            seek(f.as_ref(), 4, libc::SEEK_DATA).unwrap_err().errno(),
            libc::ENXIO
        );
    }

    #[test]
    fn listing_many_names_keeps_the_table_bounded() {
        let names = 5 * LISTED_MAX;
        let children: Vec<(String, Node)> = (0..names)
            .map(|i| {
                let sub = Node::Dir(StaticDir::new(attr(), Vec::new()));
                (format!("d{i:07}"), sub)
            })
            .collect();
        let t = Inodes::new(Node::Dir(StaticDir::new(attr(), children)));
        let (held, _) = t.lookup(ROOT, "d0000001").unwrap();
        let list = t.list(ROOT).unwrap();
        let mut offset = 0;
        let mut seen = 0;
        loop {
            let batch = t.readdir(ROOT, &list, offset).unwrap();
            let Some(last) = batch.last() else { break };
            offset = last.1;
            seen += batch.len();
            assert!(t.len() <= LISTED_MAX + 2, "table grew to {}", t.len());
            if batch.iter().any(|e| e.3 == "d0000001") {
                assert!(
                    batch.iter().any(|e| e.0 == held),
                    "a held name keeps its inode"
                );
            }
        }
        assert_eq!(seen, names + 2);
        // The looked-up name is still served; a dropped one is found again by name.
        assert!(matches!(t.node(held).unwrap(), Node::Dir(_)));
        let (again, _) = t.lookup(ROOT, "d0000002").unwrap();
        assert!(matches!(t.node(again).unwrap(), Node::Dir(_)));
        // Forgetting the held names leaves only what listing keeps.
        t.forget(held, 1);
        t.forget(again, 1);
        assert!(t.len() <= LISTED_MAX + 1);
    }

    #[test]
    fn the_least_recently_looked_up_names_are_asked_back_first() {
        let children: Vec<(String, Node)> = (0..10)
            .map(|i| {
                (
                    format!("d{i}"),
                    Node::Dir(StaticDir::new(attr(), Vec::new())),
                )
            })
            .collect();
        let t = Inodes::new(Node::Dir(StaticDir::new(attr(), children)));
        let inos: Vec<u64> = (0..10)
            .map(|i| t.lookup(ROOT, &format!("d{i}")).unwrap().0)
            .collect();
        t.lookup(ROOT, "d0").unwrap();
        let names = |v: Vec<(u64, String)>| {
            v.into_iter()
                .map(|(p, n)| {
                    assert_eq!(p, ROOT);
                    n
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(t.excess_held(8)), ["d1", "d2"]);
        // Asked once, they wait behind the others before being asked again.
        assert_eq!(names(t.excess_held(8)), ["d3", "d4"]);
        assert!(t.excess_held(10).is_empty());
        t.forget(inos[0], 2);
        t.forget(inos[1], 1);
        assert_eq!(t.len(), 9);
        assert_eq!(names(t.excess_held(7)), ["d5"]);
    }

    #[test]
    fn the_owner_option_shows_on_every_node() {
        let (root, _) = tree();
        let a = attr_of(&root);
        let both = Owner {
            uid: Some(a.uid + 7),
            gid: Some(a.gid + 9),
        };
        let shown = both.apply(a);
        assert_eq!((shown.uid, shown.gid), (a.uid + 7, a.gid + 9));
        assert_eq!(shown.perm, a.perm);
        let uid_only = Owner {
            uid: Some(5),
            gid: None,
        };
        assert_eq!((uid_only.apply(a).uid, uid_only.apply(a).gid), (5, a.gid));
        assert_eq!(Owner::default().apply(a), a);
    }

    fn attr_of(n: &Node) -> FileAttr {
        super::attr(ROOT, n).unwrap()
    }
}
