//! `export`: writes one node of the tree (an image, a database, a file tree) to the local disk,
//! without FUSE. Images are written sparse: holes in the point stay holes in the output.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::ProgressBar;

use crate::error::{Error, Result};
use crate::vfs::{self, Attr, FileNode, Node};

/// Bytes copied per read while exporting.
const PIECE: usize = 4 << 20;

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Regular files written.
    pub files: u64,
    /// Data bytes written (holes excluded).
    pub bytes: u64,
}

/// Bytes of data (not holes) below `node`, for the progress bar.
pub fn data_bytes(node: &Node) -> Result<u64> {
    Ok(match node {
        Node::File(f) => f.allocated()?,
        Node::Symlink(_) | Node::Special(_) => 0,
        Node::Dir(d) => {
            let mut sum = 0;
            for (_, child) in d.entries()? {
                sum += data_bytes(&child)?;
            }
            sum
        }
    })
}

/// Writes the file `node` to `w` in order (holes as zeros), for `export -o -`. Write errors
/// name `<stdout>`.
pub fn stream(node: &Node, w: &mut dyn Write, progress: &ProgressBar) -> Result<Stats> {
    let Node::File(f) = node else {
        return Err(Error::usage(
            "only a file can be streamed to stdout; give a folder to export a tree into",
        ));
    };
    f.check()?;
    let size = f.size()?;
    let mut buf = vec![0u8; PIECE];
    let mut at = 0;
    while at < size {
        let n = PIECE.min((size - at) as usize);
        let got = f.read_at(at, &mut buf[..n])?;
        if got != n {
            return Err(Error::from_errno(
                libc::EIO,
                format!("the file ended early, at byte {at} of {size}"),
            ));
        }
        w.write_all(&buf[..n])
            .map_err(|e| Error::io(Path::new("<stdout>"), &e))?;
        at += n as u64;
        progress.inc(n as u64);
    }
    w.flush()
        .map_err(|e| Error::io(Path::new("<stdout>"), &e))?;
    Ok(Stats {
        files: 1,
        bytes: size,
    })
}

/// Writes `node` to `out`, which must not exist yet (a file) or must be an empty folder (a tree).
/// Files and folders get the modes, times (and, as root, owners) the mount shows; folders that
/// only answer lookups (`at/`) are left out.
pub fn export(node: &Node, out: &Path, progress: &ProgressBar) -> Result<Stats> {
    let mut ex = Exporter {
        stats: Stats::default(),
        progress,
        links: HashMap::new(),
    };
    match node {
        Node::File(f) => {
            f.check()?;
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .map_err(|e| Error::io(out, &e))?;
            ex.file(f, &file, out)?;
            drop(file);
            set_attr(out, &f.attr())?;
        }
        Node::Dir(_) => {
            match fs::create_dir(out) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let empty = fs::read_dir(out)
                        .map_err(|e| Error::io(out, &e))?
                        .next()
                        .is_none();
                    if !empty {
                        return Err(Error::usage(format!(
                            "{}: folder is not empty",
                            out.display()
                        )));
                    }
                }
                Err(e) => return Err(Error::io(out, &e)),
            }
            ex.node(node, out, true)?;
        }
        Node::Symlink(l) => {
            std::os::unix::fs::symlink(target(&l.target), out).map_err(|e| Error::io(out, &e))?;
            set_link_attr(out, &l.attr)?;
        }
        Node::Special(_) => {
            return Err(Error::usage(format!(
                "{}: a device node, fifo or socket has no content to export",
                out.display()
            )));
        }
    }
    Ok(ex.stats)
}

struct Exporter<'a> {
    stats: Stats,
    progress: &'a ProgressBar,
    /// Files already written, by node identity, so hardlinked nodes become hardlinks.
    links: HashMap<(usize, u64), PathBuf>,
}

impl Exporter<'_> {
    fn node(&mut self, node: &Node, path: &Path, exists: bool) -> Result<()> {
        match node {
            Node::Dir(d) => {
                if !exists {
                    fs::create_dir(path).map_err(|e| Error::io(path, &e))?;
                }
                for (name, child) in d.entries()? {
                    if matches!(&child, Node::Dir(sub) if sub.lookup_only()) {
                        continue;
                    }
                    let name = vfs::name_bytes(&name);
                    self.node(&child, &path.join(OsStr::from_bytes(&name)), false)?;
                }
                set_attr(path, &d.attr())?;
            }
            Node::Symlink(l) => {
                std::os::unix::fs::symlink(target(&l.target), path)
                    .map_err(|e| Error::io(path, &e))?;
                set_link_attr(path, &l.attr)?;
            }
            Node::Special(_) => {
                log::warn!(
                    "{}: device node, fifo or socket not exported",
                    path.display()
                );
            }
            Node::File(f) => {
                let id = f
                    .identity()
                    .unwrap_or((Arc::as_ptr(f) as *const () as usize, 0));
                if let Some(first) = self.links.get(&id) {
                    fs::hard_link(first, path).map_err(|e| Error::io(path, &e))?;
                    return Ok(());
                }
                let file = File::create_new(path).map_err(|e| Error::io(path, &e))?;
                self.file(f, &file, path)?;
                drop(file);
                set_attr(path, &f.attr())?;
                self.links.insert(id, path.to_path_buf());
            }
        }
        Ok(())
    }

    /// Copies the data ranges of `f` into `out` at the same offsets; holes are skipped.
    fn file(&mut self, f: &Arc<dyn FileNode>, out: &File, path: &Path) -> Result<()> {
        f.check()?;
        let size = f.size()?;
        let mut buf = vec![0u8; PIECE];
        let mut pos = 0;
        while pos < size {
            let Some(start) = f.next_data(pos)? else {
                break;
            };
            let end = f.next_hole(start)?.min(size);
            let mut at = start;
            while at < end {
                let n = PIECE.min((end - at) as usize);
                let got = f.read_at(at, &mut buf[..n])?;
                if got != n {
                    return Err(Error::corrupt(path, at, "source ended early"));
                }
                out.write_all_at(&buf[..n], at)
                    .map_err(|e| Error::io(path, &e))?;
                at += n as u64;
                self.stats.bytes += n as u64;
                self.progress.inc(n as u64);
            }
            pos = end.max(start + 1);
        }
        out.set_len(size).map_err(|e| Error::io(path, &e))?;
        self.stats.files += 1;
        Ok(())
    }
}

/// A link target as the bytes it stands for.
fn target(t: &str) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&vfs::name_bytes(t)))
}

/// A symlink's owner (as root) and time; its mode means nothing on Linux.
fn set_link_attr(path: &Path, attr: &Attr) -> Result<()> {
    let err = |e: std::io::Error| Error::io(path, &e);
    if crate::sys::euid() == 0 {
        std::os::unix::fs::lchown(path, Some(attr.uid), Some(attr.gid)).map_err(err)?;
    }
    crate::sys::set_symlink_mtime(path, attr.mtime).map_err(err)
}

fn set_attr(path: &Path, attr: &Attr) -> Result<()> {
    let err = |e: std::io::Error| Error::io(path, &e);
    // The time first: opening needs read permission, which the final mode may not give.
    File::open(path)
        .map_err(err)?
        .set_modified(attr.mtime)
        .map_err(err)?;
    if crate::sys::euid() == 0 {
        std::os::unix::fs::chown(path, Some(attr.uid), Some(attr.gid)).map_err(err)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(u32::from(attr.perm))).map_err(err)?;
    Ok(())
}
