//! The file tree of a restore point: the members of each level of its chain applied in order,
//! as `tar --incremental --extract` does (spec §7.1): dumpdirs rename and purge, files, links
//! and symlinks replace whatever was at their path. Plain data; no I/O.

use std::collections::BTreeMap;

use super::tar::{Kind, Member, Record, clean};

/// Ownership, permissions and time from a member header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (Unix seconds).
    pub mtime: i64,
}

impl Meta {
    fn of(m: &Member) -> Meta {
        Meta {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime: m.mtime,
        }
    }
}

/// Which member holds a file's content: (level in the chain, member index). Paths sharing one
/// are hard links.
pub type FileId = (usize, usize);

/// A node of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TNode {
    /// A folder.
    Dir(Meta, BTreeMap<String, TNode>),
    /// A file, by the member that stored it.
    File(FileId),
    /// A symlink and its target.
    Symlink(Meta, String),
}

/// Builds a tree from the chain's levels (oldest first). Members with unusable paths (`..`,
/// NUL) and types that are not served (devices, fifos) are left out and reported.
pub fn build(levels: &[&[Member]]) -> (TNode, Vec<String>) {
    let mut t = Tree {
        root: TNode::Dir(Meta::default(), BTreeMap::new()),
        temp: None,
        notes: Vec::new(),
    };
    for (li, members) in levels.iter().enumerate() {
        for (mi, m) in members.iter().enumerate() {
            t.apply(li, mi, m);
        }
    }
    (t.root, t.notes)
}

struct Tree {
    root: TNode,
    /// Where a cyclic rename parks a directory (`X` record).
    temp: Option<TNode>,
    notes: Vec<String>,
}

/// Path components, or `None` for a path that must not be used.
fn parts(path: &str) -> Option<Vec<&str>> {
    let v: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    v.iter()
        .all(|c| *c != ".." && !c.contains('\0'))
        .then_some(v)
}

impl Tree {
    /// The folder at `parts`, created (and replacing non-folders) on the way.
    fn dir_mut(&mut self, parts: &[&str]) -> &mut BTreeMap<String, TNode> {
        let mut cur = &mut self.root;
        for p in parts {
            let TNode::Dir(_, children) = cur else {
                unreachable!("every step below is made a folder")
            };
            let child = children
                .entry((*p).to_owned())
                .or_insert_with(|| TNode::Dir(Meta::default(), BTreeMap::new()));
            if !matches!(child, TNode::Dir(..)) {
                *child = TNode::Dir(Meta::default(), BTreeMap::new());
            }
            cur = child;
        }
        match cur {
            TNode::Dir(_, children) => children,
            _ => unreachable!("made a folder above"),
        }
    }

    fn get(&self, parts: &[&str]) -> Option<&TNode> {
        let mut cur = &self.root;
        for p in parts {
            let TNode::Dir(_, children) = cur else {
                return None;
            };
            cur = children.get(*p)?;
        }
        Some(cur)
    }

    fn take(&mut self, parts: &[&str]) -> Option<TNode> {
        let (last, parent) = parts.split_last()?;
        let mut cur = &mut self.root;
        for p in parent {
            let TNode::Dir(_, children) = cur else {
                return None;
            };
            cur = children.get_mut(*p)?;
        }
        let TNode::Dir(_, children) = cur else {
            return None;
        };
        children.remove(*last)
    }

    fn put(&mut self, parts: &[&str], node: TNode) {
        match parts.split_last() {
            None => self.root = node,
            Some((last, parent)) => {
                self.dir_mut(parent).insert((*last).to_owned(), node);
            }
        }
    }

    fn apply(&mut self, level: usize, index: usize, m: &Member) {
        let Some(p) = parts(&m.path) else {
            self.notes
                .push(format!("left out {:?}: unsafe path", m.path));
            return;
        };
        match &m.kind {
            Kind::Dumpdir(records) => {
                self.renames(records);
                let meta = Meta::of(m);
                let keep: Vec<&str> = records
                    .iter()
                    .filter_map(|r| match r {
                        Record::Stored(n) | Record::Unchanged(n) | Record::Dir(n) => {
                            Some(n.as_str())
                        }
                        _ => None,
                    })
                    .collect();
                let children = self.dir_mut(&p);
                children.retain(|name, _| keep.contains(&name.as_str()));
                self.set_meta(&p, meta);
            }
            Kind::Dir => {
                self.dir_mut(&p);
                self.set_meta(&p, Meta::of(m));
            }
            Kind::File => self.put(&p, TNode::File((level, index))),
            Kind::Symlink(target) => self.put(&p, TNode::Symlink(Meta::of(m), target.clone())),
            Kind::Hardlink(target) => {
                let found = parts(target).and_then(|t| self.get(&t).cloned());
                match found {
                    Some(node @ (TNode::File(_) | TNode::Symlink(..))) => self.put(&p, node),
                    _ => self.notes.push(format!(
                        "left out {:?}: hard link to {target:?}, which is not a file",
                        m.path
                    )),
                }
            }
            Kind::Other(flag) => self.notes.push(format!(
                "left out {:?}: member type {:?} (devices and fifos are not served)",
                m.path, *flag as char
            )),
        }
    }

    fn set_meta(&mut self, p: &[&str], meta: Meta) {
        let mut cur = &mut self.root;
        for c in p {
            let TNode::Dir(_, children) = cur else { return };
            let Some(next) = children.get_mut(*c) else {
                return;
            };
            cur = next;
        }
        if let TNode::Dir(m, _) = cur {
            *m = meta;
        }
    }

    /// `R old`/`T new` pairs move subtrees; an empty name stands for the `X` temporary.
    fn renames(&mut self, records: &[Record]) {
        let mut from: Option<String> = None;
        for r in records {
            match r {
                Record::Temp(_) => self.temp = None,
                Record::RenameFrom(old) => from = Some(clean(old)),
                Record::RenameTo(new) => {
                    let Some(old) = from.take() else { continue };
                    let new = clean(new);
                    let node = if old.is_empty() {
                        self.temp.take()
                    } else {
                        parts(&old).and_then(|o| self.take(&o))
                    };
                    let Some(node) = node else { continue };
                    if new.is_empty() {
                        self.temp = Some(node);
                    } else if let Some(n) = parts(&new) {
                        self.put(&n, node);
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: &str, kind: Kind) -> Member {
        Member {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            offset: 0,
        }
    }

    fn dd(path: &str, recs: &[&str]) -> Member {
        let records = recs
            .iter()
            .map(|r| {
                let (c, n) = r.split_at(1);
                match c {
                    "Y" => Record::Stored(n.into()),
                    "N" => Record::Unchanged(n.into()),
                    "D" => Record::Dir(n.into()),
                    "R" => Record::RenameFrom(n.into()),
                    "T" => Record::RenameTo(n.into()),
                    _ => Record::Temp(n.into()),
                }
            })
            .collect();
        m(path, Kind::Dumpdir(records))
    }

    fn paths(n: &TNode, prefix: &str, out: &mut Vec<String>) {
        if let TNode::Dir(_, c) = n {
            for (name, child) in c {
                let p = format!("{prefix}{name}");
                out.push(match child {
                    TNode::Dir(..) => format!("{p}/"),
                    TNode::File(id) => format!("{p}={}.{}", id.0, id.1),
                    TNode::Symlink(_, t) => format!("{p}->{t}"),
                });
                paths(child, &format!("{p}/"), out);
            }
        }
    }

    fn list(n: &TNode) -> Vec<String> {
        let mut v = Vec::new();
        paths(n, "", &mut v);
        v
    }

    #[test]
    fn levels_rename_purge_replace() {
        let l0 = vec![
            dd("", &["Ya", "Db", "Dd", "Yx"]),
            dd("b", &["Yc"]),
            dd("d", &["Dold"]),
            dd("d/old", &["Yf"]),
            m("a", Kind::File),
            m("x", Kind::File),
            m("b/c", Kind::File),
            m("d/old/f", Kind::File),
        ];
        let l1 = vec![
            // a unchanged, x deleted, b/c replaced by a folder, d/old renamed to d/new.
            dd("", &["Na", "Db", "Dd", "R./d/old", "T./d/new"]),
            dd("b", &["Dc"]),
            dd("b/c", &["Yinner"]),
            dd("d", &["Dnew"]),
            dd("d/new", &["Nf"]),
            m("b/c/inner", Kind::File),
        ];
        let (t, notes) = build(&[&l0, &l1]);
        assert!(notes.is_empty());
        assert_eq!(
            list(&t),
            [
                "a=0.4",
                "b/",
                "b/c/",
                "b/c/inner=1.5",
                "d/",
                "d/new/",
                "d/new/f=0.7"
            ]
        );
    }

    #[test]
    fn hardlinks_share_the_member_and_unsafe_paths_are_left_out() {
        let l0 = vec![
            dd("", &["Ya", "Yb", "Ys"]),
            m("a", Kind::File),
            m("b", Kind::Hardlink("a".into())),
            m("s", Kind::Symlink("a".into())),
            m("../escape", Kind::File),
        ];
        let (t, notes) = build(&[&l0]);
        assert_eq!(list(&t), ["a=0.1", "b=0.1", "s->a"]);
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn cyclic_renames_go_through_the_temporary() {
        let l0 = vec![
            dd("", &["Dp", "Dq"]),
            dd("p", &["Y1"]),
            dd("q", &["Y2"]),
            m("p/1", Kind::File),
            m("q/2", Kind::File),
        ];
        // Swap p and q: p -> temp, q -> p, temp -> q.
        let l1 = vec![
            dd(
                "",
                &["Dp", "Dq", "Xtmp", "R./p", "T", "R./q", "T./p", "R", "T./q"],
            ),
            dd("p", &["N2"]),
            dd("q", &["N1"]),
        ];
        let (t, _) = build(&[&l0, &l1]);
        assert_eq!(list(&t), ["p/", "p/2=0.4", "q/", "q/1=0.3"]);
    }
}
