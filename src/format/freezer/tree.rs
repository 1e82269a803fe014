//! The file tree of a restore point: the members of each level of its chain applied in order,
//! as `tar --incremental --extract` does (spec §7.1): dumpdirs rename and purge, files, links
//! and symlinks replace whatever was at their path. The rsync engine's entries (§7.2) apply the
//! same way, plus deletions and files made of changed blocks over the file at their path.
//! Plain data; no I/O.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::tar::{Member, MemberKind, Record, clean};

/// Ownership, permissions and time from a member header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemberAttrs {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (Unix seconds).
    pub mtime: i64,
}

impl MemberAttrs {
    fn of(m: &Member) -> MemberAttrs {
        MemberAttrs {
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

/// For each patched file (rsync engine): the file its changed blocks apply to, `None` when
/// nothing was at its path (every unchanged byte of it is then missing).
pub type Bases = HashMap<FileId, Option<FileId>>;

/// A node of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TNode {
    /// A folder.
    Dir(MemberAttrs, BTreeMap<String, TNode>),
    /// A file, by the member that stored it.
    File(FileId),
    /// A symlink and its target.
    Symlink(MemberAttrs, String),
}

/// Something said about one member: the level it is in, its header's offset, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Index of the level in the chain.
    pub level: usize,
    /// Offset of the member's header in that level's decompressed stream.
    pub header: u64,
    /// What happened.
    pub msg: String,
}

/// Most components of a path in a tree: deeper paths cannot be made by `tar` within Linux's
/// `PATH_MAX`, and the tree's users recurse per component.
pub const MAX_DEPTH: usize = 1024;
/// Longest name of one folder entry (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;
/// Longest path or symlink target (Linux `PATH_MAX` without its NUL).
const PATH_MAX: usize = 4095;
/// Estimated bytes of one node besides its name and target.
const NODE_BYTES: u64 = 128;

/// Builds a tree from the chain's levels (oldest first), as `tar --incremental --extract` of
/// each level in turn would leave it, taking at most `max_bytes` of memory (estimated). Members
/// with unusable paths (`..`, NUL, over-long names, the archive root as a file) and types that are
/// not served (devices, fifos) are left out and reported.
pub fn build(levels: &[&[Member]], max_bytes: u64) -> Result<(TNode, Vec<Note>, Bases), Note> {
    let mut t = Tree {
        root: TNode::Dir(MemberAttrs::default(), BTreeMap::new()),
        temp: None,
        notes: Vec::new(),
        bases: Bases::new(),
        bytes: 0,
        max_bytes,
    };
    for (li, members) in levels.iter().enumerate() {
        for (mi, m) in members.iter().enumerate() {
            if let Err(msg) = t.apply(li, mi, m) {
                let note = Note {
                    level: li,
                    header: m.header,
                    msg,
                };
                if t.bytes > t.max_bytes {
                    return Err(note);
                }
                t.notes.push(note);
            }
        }
    }
    Ok((t.root, t.notes, t.bases))
}

struct Tree {
    root: TNode,
    /// Where a cyclic rename parks a directory (`X` record).
    temp: Option<TNode>,
    notes: Vec<Note>,
    bases: Bases,
    /// Memory charged so far (never refunded: the count bounds the work too).
    bytes: u64,
    max_bytes: u64,
}

/// Path components (`.` and empty ones dropped, as tar drops a leading `/`), or why the path
/// must not be used.
fn parts(path: &str) -> Result<Vec<&str>, String> {
    if path.len() > PATH_MAX {
        return Err(format!("a {}-byte path (longer than PATH_MAX)", path.len()));
    }
    let v: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if v.contains(&"..") {
        return Err("a path with '..'".into());
    }
    if path.contains('\0') {
        return Err("a path with a NUL byte".into());
    }
    if let Some(c) = v.iter().find(|c| c.len() > NAME_MAX) {
        return Err(format!("a {}-byte name (longer than NAME_MAX)", c.len()));
    }
    if v.len() > MAX_DEPTH {
        return Err(format!("a path {} folders deep", v.len()));
    }
    Ok(v)
}

/// Adds a node with `bytes` of names to `used`; fails once `max` is passed.
fn charge(used: &mut u64, max: u64, bytes: u64) -> Result<(), String> {
    *used = used.saturating_add(NODE_BYTES.saturating_add(bytes));
    if *used > max {
        return Err(format!(
            "the tree needs more than {max} bytes of memory: too many entries (raise \
             --cache-size if the backup is genuine)"
        ));
    }
    Ok(())
}

/// A name as notes show it: at most 200 bytes (a hostile one can be megabytes).
pub fn shown(name: &str) -> String {
    if name.len() <= 200 {
        return name.to_owned();
    }
    let mut end = 200;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", name.get(..end).unwrap_or_default())
}

/// How many levels of folders are below `n` (0 for a file).
fn height(n: &TNode) -> usize {
    match n {
        TNode::Dir(_, c) => c.values().map(|c| 1 + height(c)).max().unwrap_or(0),
        _ => 0,
    }
}

impl Tree {
    /// Charges a node with `bytes` of names; fails once the bound is passed.
    fn charge(&mut self, bytes: u64) -> Result<(), String> {
        charge(&mut self.bytes, self.max_bytes, bytes)
    }

    /// The folder at `parts`, created (and replacing non-folders) on the way.
    fn dir_mut(&mut self, parts: &[&str]) -> Result<&mut BTreeMap<String, TNode>, String> {
        let mut cur = &mut self.root;
        for p in parts {
            let TNode::Dir(_, children) = cur else {
                return Err("internal: a folder on the way is not a folder".into());
            };
            let child = match children.entry((*p).to_owned()) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    charge(&mut self.bytes, self.max_bytes, p.len() as u64)?;
                    v.insert(TNode::Dir(MemberAttrs::default(), BTreeMap::new()))
                }
            };
            if !matches!(child, TNode::Dir(..)) {
                *child = TNode::Dir(MemberAttrs::default(), BTreeMap::new());
            }
            cur = child;
        }
        match cur {
            TNode::Dir(_, children) => Ok(children),
            _ => Err("internal: a folder made is not a folder".into()),
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

    /// Puts `node` at `parts` (never the root), replacing whatever was there.
    fn put(&mut self, parts: &[&str], node: TNode) -> Result<(), String> {
        let Some((last, parent)) = parts.split_last() else {
            return Err("it names the archive's root folder".into());
        };
        if parts.len() + height(&node) > MAX_DEPTH {
            return Err(format!(
                "it would make a path deeper than {MAX_DEPTH} folders"
            ));
        }
        let extra = match &node {
            TNode::Symlink(_, t) => t.len() as u64,
            _ => 0,
        };
        self.charge(extra.saturating_add(last.len() as u64))?;
        self.dir_mut(parent)?.insert((*last).to_owned(), node);
        Ok(())
    }

    fn apply(&mut self, level: usize, index: usize, m: &Member) -> Result<(), String> {
        let left_out = |why: String| format!("left out {:?}: {why}", shown(&m.path));
        let p = parts(&m.path).map_err(left_out)?;
        match &m.kind {
            MemberKind::Dumpdir(records) => {
                self.renames(level, m.header, records);
                self.retain_listed(&p, records).map_err(left_out)?;
                self.set_meta(&p, MemberAttrs::of(m));
            }
            MemberKind::Dir => {
                self.dir_mut(&p).map_err(left_out)?;
                self.set_meta(&p, MemberAttrs::of(m));
            }
            MemberKind::File => self
                .put(&p, TNode::File((level, index)))
                .map_err(left_out)?,
            MemberKind::Symlink(target) => self.symlink(&p, m, target).map_err(left_out)?,
            MemberKind::Hardlink(target) => self.hardlink(&p, target).map_err(left_out)?,
            MemberKind::Patch(_) => self.patch(&p, (level, index)).map_err(left_out)?,
            MemberKind::Deleted => {
                if p.is_empty() {
                    return Err(left_out("it deletes the archive's root folder".into()));
                }
                self.take(&p);
            }
            MemberKind::Other(flag) => {
                return Err(left_out(format!(
                    "member type {:?} (devices and fifos are not served)",
                    *flag as char
                )));
            }
        }
        if m.path.starts_with('/') {
            return Err(format!(
                "{:?}: leading '/' removed from the member name, as tar does",
                shown(&m.path)
            ));
        }
        Ok(())
    }

    /// A file made of changed blocks over the file at its path, which it replaces.
    fn patch(&mut self, p: &[&str], id: FileId) -> Result<(), String> {
        let base = match self.get(p) {
            Some(TNode::File(b)) => Some(*b),
            _ => None,
        };
        self.put(p, TNode::File(id))?;
        self.charge(0)?;
        self.bases.insert(id, base);
        Ok(())
    }

    /// Drops the children of folder `p` that its dumpdir `records` do not list.
    fn retain_listed(&mut self, p: &[&str], records: &[Record]) -> Result<(), String> {
        let keep: HashSet<&str> = records
            .iter()
            .filter_map(|r| match r {
                Record::Stored(n) | Record::Unchanged(n) | Record::Dir(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        let children = self.dir_mut(p)?;
        children.retain(|name, _| keep.contains(name.as_str()));
        Ok(())
    }

    fn symlink(&mut self, p: &[&str], m: &Member, target: &str) -> Result<(), String> {
        if target.len() > PATH_MAX || target.contains('\0') || target.is_empty() {
            return Err(format!(
                "a symlink to a {}-byte target (empty, with NUL, or longer than PATH_MAX)",
                target.len()
            ));
        }
        self.put(p, TNode::Symlink(MemberAttrs::of(m), target.to_owned()))
    }

    /// A hard link gets the node of the earlier file or symlink it names.
    fn hardlink(&mut self, p: &[&str], target: &str) -> Result<(), String> {
        let found = parts(target).ok().and_then(|t| self.get(&t).cloned());
        match found {
            Some(node @ (TNode::File(_) | TNode::Symlink(..))) => self.put(p, node),
            _ => Err(format!(
                "hard link to {:?}, which is not an earlier file",
                shown(target)
            )),
        }
    }

    fn set_meta(&mut self, p: &[&str], meta: MemberAttrs) {
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
    fn renames(&mut self, level: usize, header: u64, records: &[Record]) {
        let mut from: Option<String> = None;
        for r in records {
            match r {
                Record::Temp(_) => self.temp = None,
                Record::RenameFrom(old) => from = Some(clean(old)),
                Record::RenameTo(new) => {
                    let Some(old) = from.take() else { continue };
                    if let Err(msg) = self.rename(&old, &clean(new)) {
                        self.notes.push(Note {
                            level,
                            header,
                            msg: format!(
                                "rename {:?} to {:?} left out: {msg}",
                                shown(&old),
                                shown(new)
                            ),
                        });
                    }
                }
                _ => {}
            }
        }
    }

    fn rename(&mut self, old: &str, new: &str) -> Result<(), String> {
        let to = if new.is_empty() {
            None
        } else {
            let n = parts(new)?;
            if n.is_empty() {
                return Err("the new name is the archive's root folder".into());
            }
            Some(n)
        };
        let from = if old.is_empty() {
            None
        } else {
            let o = parts(old)?;
            if o.is_empty() {
                return Err("the old name is the archive's root folder".into());
            }
            if to.as_ref() == Some(&o) {
                return Ok(());
            }
            if to.as_ref().is_some_and(|n| n.starts_with(&o)) {
                return Err("a folder cannot move into itself".into());
            }
            Some(o)
        };
        let node = match &from {
            None => self.temp.as_ref(),
            Some(o) => self.get(o),
        };
        let Some(node) = node else {
            return Err("nothing is there to move".into());
        };
        if let Some(n) = &to
            && n.len() + height(node) > MAX_DEPTH
        {
            return Err(format!(
                "it would make a path deeper than {MAX_DEPTH} folders"
            ));
        }
        let node = match &from {
            None => self.temp.take(),
            Some(o) => self.take(o),
        };
        let Some(node) = node else {
            return Err("nothing is there to move".into());
        };
        match to {
            None => self.temp = Some(node),
            Some(n) => self.put(&n, node)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: &str, kind: MemberKind) -> Member {
        Member {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            offset: 0,
            header: 0,
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
        m(path, MemberKind::Dumpdir(records))
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
            m("a", MemberKind::File),
            m("x", MemberKind::File),
            m("b/c", MemberKind::File),
            m("d/old/f", MemberKind::File),
        ];
        let l1 = vec![
            // a unchanged, x deleted, b/c replaced by a folder, d/old renamed to d/new.
            dd("", &["Na", "Db", "Dd", "R./d/old", "T./d/new"]),
            dd("b", &["Dc"]),
            dd("b/c", &["Yinner"]),
            dd("d", &["Dnew"]),
            dd("d/new", &["Nf"]),
            m("b/c/inner", MemberKind::File),
        ];
        let (t, notes, _) = build(&[&l0, &l1], u64::MAX).unwrap();
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
            m("a", MemberKind::File),
            m("b", MemberKind::Hardlink("a".into())),
            m("s", MemberKind::Symlink("a".into())),
            m("../escape", MemberKind::File),
        ];
        let (t, notes, _) = build(&[&l0], u64::MAX).unwrap();
        assert_eq!(list(&t), ["a=0.1", "b=0.1", "s->a"]);
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn cyclic_renames_go_through_the_temporary() {
        let l0 = vec![
            dd("", &["Dp", "Dq"]),
            dd("p", &["Y1"]),
            dd("q", &["Y2"]),
            m("p/1", MemberKind::File),
            m("q/2", MemberKind::File),
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
        let (t, _, _) = build(&[&l0, &l1], u64::MAX).unwrap();
        assert_eq!(list(&t), ["p/", "p/2=0.4", "q/", "q/1=0.3"]);
    }

    fn at(path: &str, kind: MemberKind, header: u64) -> Member {
        Member {
            header,
            ..m(path, kind)
        }
    }

    #[test]
    fn members_naming_the_root_are_left_out_and_the_root_stays_a_folder() {
        // `.`, `./` and `//` all clean to "" (the root): as a file, symlink or hard link each
        // once reached `unreachable!`.
        let mut l0 = vec![dd("", &["Ya"]), m("a", MemberKind::File)];
        for (i, kind) in [
            MemberKind::File,
            MemberKind::Symlink("a".into()),
            MemberKind::Hardlink("a".into()),
            MemberKind::Hardlink("".into()),
        ]
        .into_iter()
        .enumerate()
        {
            l0.push(at("", kind, 512 * (10 + i as u64)));
        }
        l0.push(m("b/c", MemberKind::File));
        let l1 = vec![dd("", &["Na", "Db"]), at("", MemberKind::File, 4096)];
        let (t, notes, _) = build(&[&l0, &l1], u64::MAX).unwrap();
        assert_eq!(list(&t), ["a=0.1", "b/", "b/c=0.6"]);
        let got: Vec<(usize, u64)> = notes.iter().map(|n| (n.level, n.header)).collect();
        assert_eq!(got, [(0, 5120), (0, 5632), (0, 6144), (0, 6656), (1, 4096)]);
    }

    #[test]
    fn unsafe_names_are_left_out_with_a_note() {
        let long = "x".repeat(256);
        let deep = "d/".repeat(MAX_DEPTH) + "f";
        let huge = "y/".repeat(2100);
        let l0 = vec![
            dd("", &["Dok"]),
            m("..", MemberKind::File),
            m("a/../../b", MemberKind::File),
            m("ok/..", MemberKind::Dumpdir(Vec::new())),
            m("nul\0name", MemberKind::File),
            m(&long, MemberKind::File),
            m(&format!("ok/{long}/f"), MemberKind::File),
            m(&deep, MemberKind::File),
            m(&huge, MemberKind::File),
            m("ok/s", MemberKind::Symlink("x\0y".into())),
            m("ok/t", MemberKind::Symlink(String::new())),
            m("ok/u", MemberKind::Symlink("z".repeat(5000))),
            m("ok/fine", MemberKind::File),
            // tar strips a leading `/` and says so.
            m("/ok/abs", MemberKind::File),
            m("ok/fifo", MemberKind::Other(b'6')),
        ];
        let (t, notes, _) = build(&[&l0], u64::MAX).unwrap();
        assert_eq!(list(&t), ["ok/", "ok/abs=0.13", "ok/fine=0.12"]);
        assert_eq!(notes.len(), 13, "{notes:#?}");
        // Hostile names are cut short in notes.
        assert!(notes.iter().all(|n| n.msg.len() < 600), "{notes:#?}");
    }

    #[test]
    fn hard_links_to_nothing_earlier_are_left_out() {
        let l0 = vec![
            dd(
                "",
                &[
                    "Ya", "Yself", "Ymissing", "Ylater", "Yc1", "Yc2", "Yd", "Ydl",
                ],
            ),
            m("a", MemberKind::File),
            m("self", MemberKind::Hardlink("self".into())),
            m("missing", MemberKind::Hardlink("nowhere".into())),
            m("early", MemberKind::Hardlink("later".into())),
            m("later", MemberKind::File),
            m("c1", MemberKind::Hardlink("c2".into())),
            m("c2", MemberKind::Hardlink("c1".into())),
            m("d", MemberKind::Dir),
            m("dl", MemberKind::Hardlink("d".into())),
            m("up", MemberKind::Hardlink("../a".into())),
            // A link to an earlier file, and a link to itself once it exists: kept.
            m("a2", MemberKind::Hardlink("/a".into())),
            m("a", MemberKind::Hardlink("a".into())),
            // Symlink loops are data: served, never followed.
            m("l1", MemberKind::Symlink("l2".into())),
            m("l2", MemberKind::Symlink("l1".into())),
        ];
        let (t, notes, _) = build(&[&l0], u64::MAX).unwrap();
        assert_eq!(
            list(&t),
            ["a=0.1", "a2=0.1", "d/", "l1->l2", "l2->l1", "later=0.5"]
        );
        assert_eq!(notes.len(), 7, "{notes:#?}");
    }

    #[test]
    fn hostile_renames_never_loop_or_escape() {
        let l0 = vec![
            dd("", &["Dp", "Dq"]),
            dd("p", &["Yf"]),
            dd("q", &[]),
            m("p/f", MemberKind::File),
        ];
        let l1 = vec![
            dd(
                "",
                &[
                    "Dp",
                    "Dq", // into itself, to the root, from the root, out of the tree:
                    "R./p",
                    "T./p/inner",
                    "R./p",
                    "T/.",
                    "R./",
                    "T./x",
                    "R./p",
                    "T../out",
                    // from nothing, a T without R, and one good rename:
                    "R./none",
                    "T./y",
                    "T./z",
                    "R./q",
                    "T./p/q2",
                ],
            ),
            dd("p", &["Nf", "Dq2"]),
        ];
        let (t, notes, _) = build(&[&l0, &l1], u64::MAX).unwrap();
        assert_eq!(list(&t), ["p/", "p/f=0.3", "p/q2/"]);
        assert_eq!(notes.len(), 5, "{notes:#?}");
        // A rename may not make the tree deeper than MAX_DEPTH.
        let deep = vec![
            dd("", &["Da", "Db"]),
            m(&("a/".repeat(MAX_DEPTH - 1) + "f"), MemberKind::File),
            m(&("b/".repeat(MAX_DEPTH - 1) + "f"), MemberKind::File),
        ];
        let up = vec![dd("", &["Da", "R./a", "T./b/b"])];
        let (t, notes, _) = build(&[&deep, &up], u64::MAX).unwrap();
        assert_eq!(height(&t), MAX_DEPTH);
        assert_eq!(notes.len(), 1, "{notes:#?}");
    }

    #[test]
    fn rsync_patches_name_their_base_and_deletions_remove_subtrees() {
        use crate::format::freezer::rsync::Run;
        let run = Run {
            start: 0,
            len: 1,
            data: 0,
        };
        let patch = || MemberKind::Patch(vec![run]);
        let l0 = vec![
            m("f", MemberKind::File),
            m("d", MemberKind::Dir),
            m("d/g", MemberKind::File),
            m("s", MemberKind::Symlink("/etc".into())),
        ];
        let l1 = vec![
            m("f", patch()),
            m("new", patch()),
            m("s/passwd", patch()),
            m("d", MemberKind::Deleted),
            m("", MemberKind::Deleted),
            m("../x", MemberKind::Deleted),
        ];
        let (t, notes, bases) = build(&[&l0, &l1], u64::MAX).unwrap();
        // A path through a symlink makes a folder in its place, never following it.
        assert_eq!(list(&t), ["f=1.0", "new=1.1", "s/", "s/passwd=1.2"]);
        assert_eq!(bases[&(1, 0)], Some((0, 0)));
        assert_eq!(bases[&(1, 1)], None);
        assert_eq!(bases[&(1, 2)], None);
        assert_eq!(notes.len(), 2, "{notes:#?}");
    }

    #[test]
    fn memory_is_bounded() {
        let l0: Vec<Member> = (0..1000)
            .map(|i| {
                at(
                    &format!("d{i}/{}", "x/".repeat(100)),
                    MemberKind::Dir,
                    i * 512,
                )
            })
            .collect();
        let err = build(&[&l0], 1 << 20).unwrap_err();
        assert!(err.msg.contains("memory"), "{err:?}");
        assert!(build(&[&l0], 100 << 20).is_ok());
    }

    #[test]
    fn purging_a_large_folder_is_not_quadratic() {
        let names: Vec<String> = (0..100_000).map(|i| format!("Yf{i}")).collect();
        let recs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut l0 = vec![dd("", &recs)];
        l0.extend((0..100_000).map(|i| m(&format!("f{i}"), MemberKind::File)));
        let keep: Vec<&str> = recs.iter().copied().step_by(2).collect();
        let l1 = vec![dd("", &keep)];
        let start = std::time::Instant::now();
        let (t, _, _) = build(&[&l0, &l1], u64::MAX).unwrap();
        assert!(start.elapsed().as_secs() < 20);
        let TNode::Dir(_, c) = t else { panic!() };
        assert_eq!(c.len(), 50_000);
    }
}
