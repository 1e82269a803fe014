//! The virtual tree built from the scanned sets: set folders at their paths under SOURCE, and in
//! each set its point folders, `latest`, `at/` and every point's `info.json`. Front ends (FUSE,
//! `export`, `ls`) walk it as plain `vfs` nodes; nothing here knows a backup format.

mod at_dir;
mod point_dir;
mod set_dir;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use chrono::NaiveDateTime;

use crate::model::{BackupSet, PointList};
use crate::timefmt::UserTime;
use crate::vfs::{Attr, Node, StaticDir, Symlink};

pub use point_dir::point_json;

/// The mount tree: each set's folder at its `/`-separated path, points inside, hiding points
/// after `as_of`; folders between the root and the sets list their children only.
pub fn root<'a>(
    sets: impl IntoIterator<Item = (&'a str, &'a Arc<dyn BackupSet>)>,
    as_of: Option<UserTime>,
) -> Node {
    let mut root = Builder::default();
    for (path, set) in sets {
        let mut b = &mut root;
        for c in path.split('/') {
            b = b.children.entry(c.to_owned()).or_default();
        }
        b.set = Some(Arc::clone(set));
        path.clone_into(&mut b.path);
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
    fn build(self, as_of: Option<UserTime>, now: SystemTime) -> Node {
        let children: Vec<(String, Node)> = self
            .children
            .into_iter()
            .map(|(name, child)| (name, child.build(as_of, now)))
            .collect();
        match self.set {
            Some(set) => set_dir::SetDir::node(set, self.path, as_of, children),
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
