//! The `fuser` file system: it translates kernel requests into calls on [`Inodes`], the
//! handles and the nodes' readers, and errors into errnos; it holds no logic of its own.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::attr::{BLKSIZE, attr, seek};
use super::handles::{DirHandles, FileHandles};
use super::inodes::Inodes;
use super::prune::Pruner;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::vfs::{FileNode, Node};

/// The largest read the kernel sends with `FUSE_MAX_PAGES` (256 pages).
const MAX_READ: usize = 1 << 20;

/// Runs a request handler; a panic (a bug) is logged and answered with EIO by the dropped
/// reply, and the mount stays up.
fn guard(op: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        log::error!("{op}: internal error (a bug): answered EIO, the mount stays up");
    }
}

thread_local! {
    /// Each FUSE worker thread's read buffer, reused so that reads don't allocate.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The `fuser` filesystem: translation only.
pub struct FuseFs {
    inodes: Arc<Inodes>,
    dirs: DirHandles,
    files: FileHandles,
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
            files: FileHandles::default(),
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
            Node::Special(_) => Err(Error::from_errno(
                libc::EACCES,
                "a device node, fifo or socket",
            )),
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
            let name = crate::vfs::name_from_bytes(name.as_bytes());
            match self
                .inodes
                .lookup(parent.0, &name)
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
            Ok(Node::Symlink(l)) => reply.data(&crate::vfs::name_bytes(&l.target)),
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
                    reply.opened(FileHandle(self.files.open()), FopenFlags::FOPEN_KEEP_CACHE)
                }
                Ok(_) => reply.opened(FileHandle(self.files.open()), FopenFlags::FOPEN_DIRECT_IO),
                Err(e) => reply.error(self.fail("open", ino.0, &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
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
            let cursor = self.files.cursor(fh.0);
            let mut pending = Some(reply);
            let zero_copy = f.read_with_by(&cursor, offset, size as usize, &mut |bytes| {
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
                match f.read_at_by(&cursor, offset, &mut buf[..size as usize]) {
                    Ok(n) => reply.data(&buf[..n]),
                    Err(e) => reply.error(self.fail(&format!("read at {offset} of"), ino.0, &e)),
                }
            });
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush in a read-only tree: ENOSYS once and the kernel stops sending a
        // flush on every close (a round trip per file when copying many small files).
        reply.error(Errno::ENOSYS);
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
            let names = self.dirs.listing(fh.0, || self.inodes.list(ino.0));
            match names.and_then(|n| self.inodes.readdir(ino.0, &n, offset)) {
                Ok(list) => {
                    for (child, next, k, name) in list {
                        if reply.add(
                            INodeNo(child),
                            next,
                            k,
                            OsStr::from_bytes(&crate::vfs::name_bytes(&name)),
                        ) {
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
                Node::Dir(d) => Ok(d.live()),
                _ => Err(Error::from_errno(libc::ENOTDIR, "not a folder")),
            });
            match opened {
                // A folder that cannot change may be listed from the kernel's cache.
                Ok(false) => reply.opened(
                    FileHandle(self.dirs.open()),
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                ),
                Ok(true) => reply.opened(FileHandle(self.dirs.open()), FopenFlags::empty()),
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
        // The tree has no extended attributes: ENOSYS once and the kernel stops asking (`ls -l`
        // asks twice per file, `cp -a` once), answering "not supported" itself.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
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
    use crate::fuse::ROOT;

    #[test]
    fn the_owner_option_shows_on_every_node() {
        let root = Node::Dir(crate::vfs::StaticDir::new(
            crate::vfs::Attr::read_only(true, std::time::SystemTime::UNIX_EPOCH),
            Vec::new(),
        ));
        let a = attr(ROOT, &root).unwrap();
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
}
