//! What the NBD server exports: any file of the mount tree, named by its path in the mount
//! (`vm1/latest/vda.raw`); `NBD_OPT_LIST` names the disk images of every visible point.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::model::BackupSet;
use crate::timefmt::UserTime;
use crate::tree;
use crate::vfs::{self, FileNode, Node};

/// Names of exported files that `NBD_OPT_LIST` shows: the disk images formats expose.
const IMAGE_SUFFIXES: &[&str] = &[".raw", ".img"];

/// Longest export name accepted (the protocol's limit).
pub const MAX_NAME: usize = 4096;

/// The tree the server exports from, and the sets for listing.
pub struct Exports {
    root: Node,
    sets: Vec<(String, Arc<dyn BackupSet>)>,
    as_of: Option<UserTime>,
}

impl Exports {
    /// Exports of `cat` as the mount tree `root` (made from `cat` at `as_of`) shows them.
    pub fn new(cat: &Catalog, root: Node, as_of: Option<UserTime>) -> Exports {
        Exports {
            root,
            sets: cat
                .sets()
                .iter()
                .map(|s| (s.path.clone(), Arc::clone(&s.set)))
                .collect(),
            as_of,
        }
    }

    /// The file called `name` (a path in the mount), ready to serve.
    pub fn open(&self, name: &str) -> Result<Arc<dyn FileNode>> {
        if name.is_empty() {
            return Err(Error::not_found(
                "no default export: name a file, e.g. SET/latest/vda.raw (NBD_OPT_LIST lists them)",
            ));
        }
        match vfs::resolve(&self.root, name)? {
            Node::File(f) => {
                f.check()?;
                Ok(f)
            }
            _ => Err(Error::not_found(format!("{name}: not a file"))),
        }
    }

    /// Calls `f` with the path of every disk image of every visible point, set by set, oldest
    /// point first; stops at `f`'s first error.
    pub fn list<E>(&self, f: &mut dyn FnMut(&str) -> Result<(), E>) -> Result<(), E> {
        for (path, set) in &self.sets {
            let points = set.points();
            let as_of = self.as_of.map(|t| t.in_zone(set.zone()));
            for i in 0..tree::visible(points.as_ref(), as_of) {
                let point = points.get(i);
                let Ok(files) = &point.content else { continue };
                for file in files {
                    let image = IMAGE_SUFFIXES.iter().any(|s| file.path.ends_with(s));
                    if image && file.error.is_none() && matches!(file.node, Node::File(_)) {
                        f(&format!("{path}/{}/{}", point.name, file.path))?;
                    }
                }
            }
        }
        Ok(())
    }
}
