//! What `stat` and `lseek` answer for a node: plain code, shared by every front end.

use fuser::{FileAttr, FileType, INodeNo};

use crate::error::{Error, Result};
use crate::vfs::{FileNode, Node, NodeKind, SpecialKind, name_bytes};

/// Block size `stat` reports: large, so that `cp` and friends read in big pieces.
pub const BLKSIZE: u32 = 1 << 20;

/// The kernel's file type of a node kind.
pub fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Special(SpecialKind::CharDevice) => FileType::CharDevice,
        NodeKind::Special(SpecialKind::BlockDevice) => FileType::BlockDevice,
        NodeKind::Special(SpecialKind::Fifo) => FileType::NamedPipe,
        NodeKind::Special(SpecialKind::Socket) => FileType::Socket,
    }
}

/// `stat` of a node.
pub fn attr(ino: u64, node: &Node) -> Result<FileAttr> {
    let a = node.attr();
    let (size, blocks, nlink, rdev) = match node {
        Node::Dir(_) => (0, 0, 2, 0),
        Node::File(f) => (f.size()?, f.allocated()?.div_ceil(512), f.nlink(), 0),
        Node::Symlink(l) => (name_bytes(&l.target).len() as u64, 0, 1, 0),
        Node::Special(s) => (0, 0, 1, s.rdev),
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
        rdev,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{Attr, BytesFile, StaticDir};
    use std::time::SystemTime;

    #[test]
    fn attributes_and_seeks() {
        let f = BytesFile::new(
            b"data".to_vec(),
            Attr::read_only(false, SystemTime::UNIX_EPOCH),
        );
        let root = Node::Dir(StaticDir::new(
            Attr::read_only(true, SystemTime::UNIX_EPOCH),
            vec![("a".into(), Node::File(f.clone()))],
        ));
        let a = attr(1, &root).unwrap();
        assert_eq!((a.kind, a.nlink), (FileType::Directory, 2));
        let fa = attr(5, &Node::File(f.clone())).unwrap();
        assert_eq!((fa.size, fa.blocks, fa.perm), (4, 1, 0o444));
        assert_eq!(seek(f.as_ref(), 1, libc::SEEK_DATA).unwrap(), 1);
        assert_eq!(seek(f.as_ref(), 1, libc::SEEK_HOLE).unwrap(), 4);
        assert_eq!(
            seek(f.as_ref(), 4, libc::SEEK_DATA).unwrap_err().errno(),
            libc::ENXIO
        );
    }
}
