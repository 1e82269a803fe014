//! The tree of a SOURCE scanned a folder at a time: a folder is scanned when it is first looked
//! up, or when the folder holding it is listed with its nodes, so a SOURCE of thousands of sets
//! mounts before any set is read. Listing a folder's names (what `readdir` asks) scans none of
//! its sub-folders: each is listed as a folder, and one without sets anywhere below it turns out
//! empty when looked up (a full scan leaves it out).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::model::BackupSet;
use crate::timefmt::UserTime;
use crate::vfs::{Attr, Directory, Node, NodeKind, StaticDir};

use super::Builder;

/// One folder of SOURCE, as a scan of it alone found it.
#[derive(Default)]
pub struct Level {
    /// The sets found in it, at their `/`-separated paths relative to SOURCE.
    pub sets: Vec<(String, Arc<dyn BackupSet>)>,
    /// Its sub-folders that no format claimed (names).
    pub dirs: Vec<String>,
    /// Why it could not be read.
    pub problem: Option<Error>,
}

/// Scans folders of SOURCE on demand, each once.
pub trait Folders: Send + Sync {
    /// The folder at `rel` (`/`-separated, relative to SOURCE; `""` is SOURCE).
    fn level(&self, rel: &str) -> Arc<Level>;
}

/// `rel` joined with `name`.
fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

/// Whether any set is at or below the folder `rel` (stops at the first one found).
pub fn has_sets(folders: &dyn Folders, rel: &str) -> bool {
    let level = folders.level(rel);
    !level.sets.is_empty() || level.dirs.iter().any(|d| has_sets(folders, &join(rel, d)))
}

/// Every set at or below `rel`, and the folders that could not be read.
pub fn all_sets(
    folders: &dyn Folders,
    rel: &str,
    sets: &mut Vec<(String, Arc<dyn BackupSet>)>,
    problems: &mut Vec<Error>,
) {
    let level = folders.level(rel);
    sets.extend(level.sets.iter().cloned());
    problems.extend(level.problem.iter().cloned());
    for d in &level.dirs {
        all_sets(folders, &join(rel, d), sets, problems);
    }
}

/// The mount tree of a SOURCE scanned on demand, hiding points after `as_of`.
pub fn root(folders: Arc<dyn Folders>, as_of: Option<UserTime>) -> Node {
    folder(&folders, String::new(), as_of)
        .unwrap_or_else(|| Node::Dir(Arc::new(LazyDir::new(folders, String::new(), as_of))))
}

/// A folder of SOURCE that is not itself a set: its own sets are built when it is first used,
/// each sub-folder is scanned when first looked up (or when this folder is listed).
struct LazyDir {
    folders: Arc<dyn Folders>,
    rel: String,
    as_of: Option<UserTime>,
    attr: Attr,
    /// The nodes this folder's own sets make, by name.
    own: OnceLock<Vec<(String, Node)>>,
    /// Sub-folders resolved so far: their node, or `None` when no set is below them.
    subs: Mutex<HashMap<String, Node>>,
}

impl LazyDir {
    fn new(folders: Arc<dyn Folders>, rel: String, as_of: Option<UserTime>) -> LazyDir {
        LazyDir {
            folders,
            rel,
            as_of,
            attr: Attr::read_only(true, SystemTime::now()),
            own: OnceLock::new(),
            subs: Mutex::new(HashMap::new()),
        }
    }

    fn own(&self) -> &[(String, Node)] {
        self.own.get_or_init(|| {
            let level = self.folders.level(&self.rel);
            let mut b = Builder::default();
            for (path, set) in &level.sets {
                b.insert(relative(&self.rel, path), path, set);
            }
            b.children(self.as_of, SystemTime::now())
        })
    }

    /// The node of the sub-folder `name`, scanning it if it was not yet: an empty folder when
    /// no set is below it (it was listed as a folder before it was scanned).
    fn sub(&self, name: &str) -> Node {
        if let Some(known) = self.lock().get(name) {
            return known.clone();
        }
        let node = folder(&self.folders, join(&self.rel, name), self.as_of)
            .unwrap_or_else(|| Node::Dir(StaticDir::new(self.attr, Vec::new())));
        self.lock().entry(name.to_owned()).or_insert(node).clone()
    }

    /// Scans the sub-folders `names` not scanned yet, on every core (a listing scans them all).
    fn scan_all(&self, names: &[String]) {
        let todo: Vec<&String> = {
            let known = self.lock();
            names.iter().filter(|n| !known.contains_key(*n)).collect()
        };
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(todo.len());
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    while let Some(name) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                        self.sub(name);
                    }
                });
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Node>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `path` (below `rel`) relative to `rel`.
fn relative<'a>(rel: &str, path: &'a str) -> &'a str {
    if rel.is_empty() {
        return path;
    }
    path.strip_prefix(rel)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(path)
}

/// The node of the folder `rel`: `None` when no set is at or below it (SOURCE itself is always
/// there). A folder that is a set, or whose own sets' paths cross its sub-folders, is built
/// whole, as a full scan builds it; any other stays lazy.
fn folder(folders: &Arc<dyn Folders>, rel: String, as_of: Option<UserTime>) -> Option<Node> {
    if !rel.is_empty() && !has_sets(folders.as_ref(), &rel) {
        return None;
    }
    let level = folders.level(&rel);
    let crossing = level.sets.iter().any(|(path, _)| {
        let first = relative(&rel, path).split('/').next();
        *path == rel || level.dirs.iter().any(|d| first == Some(d.as_str()))
    });
    if !crossing {
        let dir = LazyDir::new(Arc::clone(folders), rel, as_of);
        return Some(Node::Dir(Arc::new(dir)));
    }
    let (mut sets, mut problems) = (Vec::new(), Vec::new());
    all_sets(folders.as_ref(), &rel, &mut sets, &mut problems);
    let mut b = Builder::default();
    for (path, set) in &sets {
        if *path == rel {
            b.set = Some(Arc::clone(set));
            b.path.clone_from(path);
        } else {
            b.insert(relative(&rel, path), path, set);
        }
    }
    Some(b.build(as_of, SystemTime::now()))
}

impl Directory for LazyDir {
    fn entries(&self) -> Result<Vec<(String, Node)>> {
        let mut out: Vec<(String, Node)> = self.own().to_vec();
        let level = self.folders.level(&self.rel);
        self.scan_all(&level.dirs);
        out.extend(level.dirs.iter().map(|d| (d.clone(), self.sub(d))));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn names(&self) -> Result<Vec<(String, NodeKind)>> {
        let mut out: Vec<(String, NodeKind)> = self
            .own()
            .iter()
            .map(|(n, node)| (n.clone(), node.kind()))
            .collect();
        // Every sub-folder is a folder whatever it holds: listed without scanning it.
        let level = self.folders.level(&self.rel);
        out.extend(level.dirs.iter().map(|d| (d.clone(), NodeKind::Dir)));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        if let Some((_, node)) = self.own().iter().find(|(n, _)| n == name) {
            return Ok(Some(node.clone()));
        }
        let level = self.folders.level(&self.rel);
        if !level.dirs.iter().any(|d| d == name) {
            return Ok(None);
        }
        Ok(Some(self.sub(name)))
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}
