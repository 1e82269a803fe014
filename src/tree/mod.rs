//! The virtual tree built from the scanned sets: set folders at their paths under SOURCE, and in
//! each set its point folders, `latest`, `at/` and every point's `info.json`. Front ends (FUSE,
//! `export`, `ls`) walk it as plain `vfs` nodes; nothing here knows a backup format.

mod at_dir;
mod lazy_dir;
mod point_dir;
mod set_dir;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use chrono::NaiveDateTime;

use crate::model::{BackupSet, PointList};
use crate::timefmt::UserTime;
use crate::vfs::{Attr, Node, StaticDir, Symlink};

pub use lazy_dir::{Folders, Level, all_sets, has_sets, root as lazy_root};
pub use point_dir::point_json;

/// The mount tree: each set's folder at its `/`-separated path, points inside, hiding points
/// after `as_of`; folders between the root and the sets list their children only.
pub fn root<'a>(
    sets: impl IntoIterator<Item = (&'a str, &'a Arc<dyn BackupSet>)>,
    as_of: Option<UserTime>,
) -> Node {
    let mut root = Builder::default();
    for (path, set) in sets {
        root.insert(path, path, set);
    }
    root.build(as_of, SystemTime::now())
}

/// A folder of the tree being put together: its children and the set at it, if any.
#[derive(Default)]
struct Builder {
    children: BTreeMap<String, Builder>,
    set: Option<Arc<dyn BackupSet>>,
    path: String,
}

impl Builder {
    /// Puts `set`, found at `path` under SOURCE, at `at` (`/`-separated, below this folder).
    fn insert(&mut self, at: &str, path: &str, set: &Arc<dyn BackupSet>) {
        let mut b = self;
        for c in at.split('/') {
            b = b.children.entry(c.to_owned()).or_default();
        }
        b.set = Some(Arc::clone(set));
        path.clone_into(&mut b.path);
    }

    /// The nodes of this folder's children.
    fn children(self, as_of: Option<UserTime>, now: SystemTime) -> Vec<(String, Node)> {
        self.children
            .into_iter()
            .map(|(name, child)| (name, child.build(as_of, now)))
            .collect()
    }

    fn build(self, as_of: Option<UserTime>, now: SystemTime) -> Node {
        let set = self.set.clone();
        let path = self.path.clone();
        let children = self.children(as_of, now);
        match set {
            Some(set) => set_dir::SetDir::node(set, path, as_of, children),
            None => Node::Dir(StaticDir::new(Attr::read_only(true, now), children)),
        }
    }
}

/// Points of a set visible at `as_of`: the first `n` of the list (lists are sorted by time;
/// points without a time are always visible).
pub fn visible(list: &dyn PointList, as_of: Option<NaiveDateTime>) -> usize {
    match as_of {
        None => list.len(),
        Some(limit) => (0..list.len())
            .take_while(|&i| list.time(i).is_none_or(|t| t <= limit))
            .count(),
    }
}

/// Index of the newest servable point among the first `n` at or before `t` (any time if `None`).
pub fn newest_at(list: &dyn PointList, n: usize, t: Option<NaiveDateTime>) -> Option<usize> {
    (0..n).rev().find(|&i| {
        list.is_ok(i)
            && match t {
                None => true,
                Some(limit) => list.time(i).is_some_and(|pt| pt <= limit),
            }
    })
}

/// A read-only symlink to `target` (`latest`, and what `at/` finds).
fn symlink(target: String, mtime: SystemTime) -> Node {
    Node::Symlink(Arc::new(Symlink {
        target,
        attr: Attr::read_only(false, mtime),
    }))
}
