//! Inode numbers for the nodes of the tree, counted like the kernel counts lookups, with
//! bounded memory: names only listed are kept in an LRU, and looked-up names beyond a bound
//! are asked back from the kernel (see `prune`). Plain code: no kernel needed to test it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fuser::FileType;
use lru::LruCache;

use super::attr::file_type;
use crate::error::{Error, Result};
use crate::vfs::{Node, NodeKind};

/// How long the kernel may cache names and attributes: content never changes under a name.
const TTL: Duration = Duration::from_secs(3600);
/// The same inside live folders, whose listing can change (a growing backup log).
const LIVE_TTL: Duration = Duration::from_secs(1);
/// Entries prepared per readdir call (more than one reply buffer holds).
const READDIR_BATCH: usize = 1024;

/// What identifies an inode across lookups: a file node by identity (so hardlinks share an
/// inode), anything else by parent and name (so re-made folders and symlinks keep theirs).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Root,
    File(usize, u64),
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
            Node::File(f) => match f.identity() {
                Some((fs, ino)) => Key::File(fs, ino),
                None => Key::File(Arc::as_ptr(f) as *const () as usize, 0),
            },
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
        // Asked every 200 ms: no write lock (which stalls lookups) while under the bound.
        if self
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .held
            .len()
            <= keep
        {
            return Vec::new();
        }
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
        names: &[(String, NodeKind)],
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
                NodeKind::File => match dir.lookup(name)? {
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
pub type Listing = Arc<Vec<(String, NodeKind)>>;

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
}
