//! A set's folder: its points, `latest`, `at/`, and any folders nested below the set's path.

use std::sync::Arc;
use std::time::SystemTime;

use crate::error::Result;
use crate::model::{BackupSet, PointList};
use crate::timefmt::UserTime;
use crate::vfs::{Attr, Directory, Node, NodeKind};

use super::at_dir::AtDir;
use super::{newest_at, point_dir, symlink, visible};

/// A set's folder.
pub(super) struct SetDir {
    set: Arc<dyn BackupSet>,
    path: String,
    as_of: Option<UserTime>,
    children: Vec<(String, Node)>,
}

impl SetDir {
    /// The folder of `set` found at `path`, with the folders nested below it.
    pub(super) fn node(
        set: Arc<dyn BackupSet>,
        path: String,
        as_of: Option<UserTime>,
        children: Vec<(String, Node)>,
    ) -> Node {
        Node::Dir(Arc::new(SetDir {
            set,
            path,
            as_of,
            children,
        }))
    }

    fn points(&self) -> (Arc<dyn PointList>, usize) {
        let list = self.set.points();
        let as_of = self.as_of.map(|t| t.in_zone(self.set.zone()));
        let n = visible(list.as_ref(), as_of);
        (list, n)
    }

    fn latest(list: &dyn PointList, n: usize) -> Option<Node> {
        newest_at(list, n, None).map(|i| symlink(list.name(i), list.get(i).mtime()))
    }

    fn at(&self, list: Arc<dyn PointList>, n: usize) -> Option<Node> {
        (0..n).any(|i| list.time(i).is_some()).then(|| {
            Node::Dir(Arc::new(AtDir {
                attr: self.attr(),
                list,
                n,
                zone: self.set.zone(),
                live: self.set.live(),
            }))
        })
    }

    fn point(&self, list: &dyn PointList, i: usize) -> Node {
        point_dir::node(&list.get(i), &self.path, self.set.format())
    }
}

impl Directory for SetDir {
    fn entries(&self) -> Result<Vec<(String, Node)>> {
        let (list, n) = self.points();
        let mut out: Vec<(String, Node)> = self.children.clone();
        for i in 0..n {
            out.push((list.name(i), self.point(list.as_ref(), i)));
        }
        out.extend(Self::latest(list.as_ref(), n).map(|l| ("latest".to_owned(), l)));
        out.extend(self.at(list, n).map(|a| ("at".to_owned(), a)));
        // Nested folders come first and win a name clash.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn names(&self) -> Result<Vec<(String, NodeKind)>> {
        let (list, n) = self.points();
        let mut out: Vec<(String, NodeKind)> = self
            .children
            .iter()
            .map(|(c, node)| (c.clone(), node.kind()))
            .collect();
        out.extend((0..n).map(|i| (list.name(i), NodeKind::Dir)));
        if newest_at(list.as_ref(), n, None).is_some() {
            out.push(("latest".to_owned(), NodeKind::Symlink));
        }
        if (0..n).any(|i| list.time(i).is_some()) {
            out.push(("at".to_owned(), NodeKind::Dir));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        if let Some((_, node)) = self.children.iter().find(|(c, _)| c == name) {
            return Ok(Some(node.clone()));
        }
        let (list, n) = self.points();
        Ok(match name {
            "latest" => Self::latest(list.as_ref(), n),
            "at" => self.at(list, n),
            _ => list
                .find(name)
                .or_else(|| list.find(&colon_alias(name)?))
                .filter(|&i| i < n)
                .map(|i| self.point(list.as_ref(), i)),
        })
    }

    fn attr(&self) -> Attr {
        let (list, n) = self.points();
        let mtime = newest_at(list.as_ref(), n, None)
            .map_or(SystemTime::UNIX_EPOCH, |i| list.get(i).mtime());
        Attr::read_only(true, mtime)
    }

    fn live(&self) -> bool {
        self.set.live()
    }
}

/// The point name that `2026-11-20T10-00-01_full` stands for (`2026-11-20T10:00:01_full`), for
/// places where `:` is awkward (scp, rsync, SMB): only looked up, never listed.
fn colon_alias(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let time_at = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let shaped = b.get(10) == Some(&b'T')
        && b.get(13) == Some(&b'-')
        && [11, 12, 14, 15].into_iter().all(time_at);
    if !shaped {
        return None;
    }
    let mut out = name.to_owned();
    out.replace_range(13..14, ":");
    if b.get(16) == Some(&b'-') && [17, 18].into_iter().all(time_at) {
        out.replace_range(16..17, ":");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::colon_alias;

    #[test]
    fn colon_free_aliases_of_point_names() {
        let alias = |s: &str| colon_alias(s);
        assert_eq!(
            alias("2026-11-20T10-00-01_full").as_deref(),
            Some("2026-11-20T10:00:01_full")
        );
        assert_eq!(
            alias("2026-11-20T10-00").as_deref(),
            Some("2026-11-20T10:00")
        );
        assert_eq!(alias("2026-11-20T10:00:01_full"), None);
        assert_eq!(alias("v0000000001"), None);
        assert_eq!(alias("2026-11-20T1x-00"), None);
    }
}
