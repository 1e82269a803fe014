//! Finds backup sets under SOURCE, asks each format for its restore points, and builds the tree
//! of sets → points → exposed files that `mount`, `export` and `ls` share.
//!
//! A format plugs in by implementing [`Format`] (find sets in a folder) and [`BackupSet`] (list
//! restore points, verify); nothing else in the crate knows a format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use chrono::{FixedOffset, NaiveDateTime};
use indicatif::ProgressBar;
use serde_json::{Map, Value, json};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::indexcache::IndexCache;
use crate::timefmt::{self, UserTime};
use crate::vfs::{Attr, BytesFile, Directory, Kind, Node, StaticDir, Symlink};
use crate::workdir::WorkDir;

/// What every format's scanner gets.
#[derive(Clone)]
pub struct ScanOptions {
    /// The shared cache for decoded or rebuilt data.
    pub cache: Arc<Cache>,
    /// restorefs' scratch folder (never inside SOURCE).
    pub work: Arc<WorkDir>,
    /// Freezer's encryption password (`--freezer-key`), if given.
    pub freezer_key: Option<Arc<Vec<u8>>>,
    /// Where indexes of backup files are kept between runs.
    pub index: Option<Arc<IndexCache>>,
    /// Time and size budget of replaying Core Lightning logs (and its cancel flag).
    pub sql: crate::format::clightning::SqlLimits,
}

impl ScanOptions {
    /// A cache and a scratch folder under `cache_dir` with the default checkpoint bound.
    pub fn new(cache: Arc<Cache>, cache_dir: &Path) -> ScanOptions {
        ScanOptions {
            cache,
            work: WorkDir::new(cache_dir, crate::workdir::CHECKPOINT_BYTES),
            freezer_key: None,
            index: Some(Arc::new(IndexCache::new(cache_dir))),
            sql: crate::format::clightning::SqlLimits::default(),
        }
    }
}

/// One folder under SOURCE, as the scanner saw it.
pub struct DirInfo<'a> {
    /// Absolute path.
    pub path: &'a Path,
    /// Regular files in it (names), sorted.
    pub files: &'a [String],
    /// Sub-folders in it (names), sorted.
    pub dirs: &'a [String],
}

/// What a format found in one folder.
#[derive(Default)]
pub struct Found {
    /// Sets, each at a path relative to the folder (`""` = the folder itself).
    pub sets: Vec<(String, Arc<dyn BackupSet>)>,
    /// Files that belong to those sets; other formats don't look at them.
    pub claimed_files: Vec<String>,
    /// Sub-folders that belong to those sets; the scanner does not descend into them.
    pub claimed_dirs: Vec<String>,
}

/// A backup format: recognises its backup sets in a folder.
pub trait Format: Send + Sync {
    /// Short name (`virtnbdbackup`), as `ls` shows it.
    fn name(&self) -> &'static str;
    /// The sets in `dir` (given the files no earlier format claimed).
    fn scan_dir(&self, dir: &DirInfo<'_>, opts: &ScanOptions) -> Found;
}

/// One backup set: a sequence of restore points.
pub trait BackupSet: Send + Sync {
    /// The format's name.
    fn format(&self) -> &'static str;
    /// The restore points, oldest first. Live sets may return a newer list on each call.
    fn points(&self) -> Arc<dyn PointList>;
    /// Reads everything the points depend on and checks every checksum; one entry per point.
    fn verify(&self, progress: &ProgressBar) -> Vec<Check>;
    /// Total bytes `verify` will read, for the progress bar.
    fn verify_size(&self) -> u64;
    /// Why the set as a whole cannot be read (its points are then empty).
    fn problem(&self) -> Option<Error> {
        None
    }
    /// The UTC offset of the set's point times, when the backups say (for times typed with a
    /// zone); `None`: taken as this machine's local time.
    fn zone(&self) -> Option<FixedOffset> {
        None
    }
    /// Whether the set can change while mounted (the kernel must not cache its listing long).
    fn live(&self) -> bool {
        false
    }
}

/// A set's restore points, oldest first (by time when they have one), made on demand so that
/// a set with a million points costs little until they are looked at.
pub trait PointList: Send + Sync {
    /// Number of points.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Name of point `i`.
    fn name(&self, i: usize) -> String;
    /// Time of point `i`.
    fn time(&self, i: usize) -> Option<NaiveDateTime>;
    /// Whether point `i` can be served.
    fn is_ok(&self, i: usize) -> bool;
    /// Point `i`, whole.
    fn get(&self, i: usize) -> Arc<Point>;
    /// Index of the point called `name`.
    fn find(&self, name: &str) -> Option<usize> {
        (0..self.len()).find(|&i| self.name(i) == name)
    }
}

impl dyn PointList {
    /// Every point, made one at a time.
    pub fn iter(&self) -> impl Iterator<Item = Arc<Point>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

impl PointList for Vec<Arc<Point>> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn name(&self, i: usize) -> String {
        self[i].name.clone()
    }
    fn time(&self, i: usize) -> Option<NaiveDateTime> {
        self[i].time
    }
    fn is_ok(&self, i: usize) -> bool {
        self[i].is_ok()
    }
    fn get(&self, i: usize) -> Arc<Point> {
        Arc::clone(&self[i])
    }
    fn find(&self, name: &str) -> Option<usize> {
        self.iter().position(|p| p.name == name)
    }
}

/// The verdict on one point.
pub struct Check {
    /// Point name.
    pub point: String,
    /// Problems found; empty when the point restores.
    pub problems: Vec<Error>,
}

/// One file (or folder) a point exposes.
pub struct Exposed {
    /// Name inside the point folder.
    pub path: String,
    /// What is served.
    pub node: Node,
    /// Size when known without rebuilding anything.
    pub size: Option<u64>,
    /// Backup files it is built from, relative to the set, in apply order.
    pub sources: Vec<String>,
    /// Why it cannot be served, if it cannot.
    pub error: Option<Error>,
}

/// One restore point.
pub struct Point {
    /// Folder name: unique in the set, sorts by time.
    pub name: String,
    /// Local time of the backup, when the format has one.
    pub time: Option<NaiveDateTime>,
    /// `full`, `inc`, `diff`, `copy`, `level1`, `version`, ...
    pub kind: String,
    /// The format's own identifiers (`checkpoint`, `version`, `level`, ...).
    pub ids: Map<String, Value>,
    /// The exposed files, or why the point cannot be served at all.
    pub content: Result<Vec<Exposed>>,
    /// Things the user should know (degraded chains, odd metadata).
    pub warnings: Vec<String>,
    /// Modification time shown for the point's folder (its time, or the source file's).
    modified: SystemTime,
    dir: OnceLock<Node>,
}

impl Point {
    /// A point; its folder node is made on first use.
    pub fn new(
        name: String,
        time: Option<NaiveDateTime>,
        kind: &str,
        ids: Map<String, Value>,
        content: Result<Vec<Exposed>>,
        warnings: Vec<String>,
    ) -> Point {
        Point {
            modified: time
                .as_ref()
                .map_or(SystemTime::UNIX_EPOCH, timefmt::to_system_time),
            name,
            time,
            kind: kind.to_owned(),
            ids,
            content,
            warnings,
            dir: OnceLock::new(),
        }
    }

    /// The same point shown with modification time `t` (for points without a time of their own).
    pub fn modified_at(mut self, t: SystemTime) -> Point {
        self.modified = t;
        self
    }

    /// The point as `ls --json` and `info.json` show it.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), json!(self.name));
        o.insert(
            "time".into(),
            json!(self.time.as_ref().map(timefmt::to_iso)),
        );
        o.insert("kind".into(), json!(self.kind));
        o.extend(self.ids.clone());
        match &self.content {
            Ok(files) => {
                let files: Vec<Value> = files
                    .iter()
                    .map(|f| {
                        let mut fo = Map::new();
                        fo.insert("path".into(), json!(f.path));
                        fo.insert("size".into(), json!(f.size));
                        fo.insert("sources".into(), json!(f.sources));
                        if let Some(e) = &f.error {
                            fo.insert("error".into(), json!(e.to_string()));
                        }
                        Value::Object(fo)
                    })
                    .collect();
                o.insert("files".into(), Value::Array(files));
            }
            Err(e) => {
                o.insert("error".into(), json!(e.to_string()));
            }
        }
        o.insert("warnings".into(), json!(self.warnings));
        Value::Object(o)
    }

    /// Whether the point can be served (some of its files may still fail).
    pub fn is_ok(&self) -> bool {
        self.content.is_ok()
    }

    /// Modification time shown for the point and its files.
    pub fn mtime(&self) -> SystemTime {
        self.modified
    }

    /// The point folder: its exposed files plus `info.json`.
    pub fn node(&self, set_path: &str, format: &str) -> Node {
        self.dir
            .get_or_init(|| {
                let attr = Attr::read_only(false, self.mtime());
                let mut info = self.to_json();
                if let Value::Object(o) = &mut info {
                    o.insert("set".into(), json!(set_path));
                    o.insert("format".into(), json!(format));
                }
                let mut text = serde_json::to_vec_pretty(&info).unwrap_or_default();
                text.push(b'\n');
                let mut entries = vec![(
                    "info.json".to_owned(),
                    Node::File(BytesFile::new(text, attr)),
                )];
                if let Ok(files) = &self.content {
                    entries.extend(files.iter().map(|f| (f.path.clone(), f.node.clone())));
                }
                Node::Dir(StaticDir::new(Attr::read_only(true, self.mtime()), entries))
            })
            .clone()
    }
}

/// Makes `base` unique among `taken` by appending `-2`, `-3`, ... and records it.
pub fn unique_name(base: String, taken: &mut std::collections::HashSet<String>) -> String {
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// A set and where it was found.
pub struct SetEntry {
    /// Path relative to SOURCE, `/`-separated: the set's folder in the mount.
    pub path: String,
    /// The set.
    pub set: Arc<dyn BackupSet>,
}

/// Everything found under SOURCE.
pub struct Catalog {
    sets: Vec<SetEntry>,
    problems: Vec<Error>,
}

/// All formats restorefs knows, in the order they look at a folder.
pub fn formats() -> Vec<Box<dyn Format>> {
    crate::format::all()
}

impl Catalog {
    /// Walks `source` and collects every backup set in it.
    pub fn scan(source: &Path, opts: &ScanOptions, progress: &ProgressBar) -> Result<Catalog> {
        let meta = std::fs::metadata(source).map_err(|e| Error::io(source, &e))?;
        if !meta.is_dir() {
            return Err(Error::usage(format!("{}: not a folder", source.display())));
        }
        let formats = formats();
        let mut cat = Catalog {
            sets: Vec::new(),
            problems: Vec::new(),
        };
        let top_name = source
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "backup".to_owned());
        let mut todo: Vec<(PathBuf, String)> = vec![(source.to_path_buf(), String::new())];
        while let Some((abs, rel)) = todo.pop() {
            progress.set_message(format!("scanning {}", abs.display()));
            let (mut files, mut dirs) = match list_dir(&abs) {
                Ok(l) => l,
                Err(e) => {
                    log::warn!("{e}");
                    cat.problems.push(e);
                    continue;
                }
            };
            for f in &formats {
                let found = f.scan_dir(
                    &DirInfo {
                        path: &abs,
                        files: &files,
                        dirs: &dirs,
                    },
                    opts,
                );
                for (sub, set) in found.sets {
                    let path = join_rel(&rel, &sub);
                    let path = if path.is_empty() {
                        top_name.clone()
                    } else {
                        path
                    };
                    cat.sets.push(SetEntry { path, set });
                }
                files.retain(|n| !found.claimed_files.contains(n));
                dirs.retain(|n| !found.claimed_dirs.contains(n));
            }
            for d in dirs.iter().rev() {
                todo.push((abs.join(d), join_rel(&rel, d)));
            }
        }
        cat.sets.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(cat)
    }

    /// The sets, sorted by path.
    pub fn sets(&self) -> &[SetEntry] {
        &self.sets
    }

    /// Folders that could not be read while scanning.
    pub fn problems(&self) -> &[Error] {
        &self.problems
    }

    /// The mount tree: set folders at their paths, points inside, hiding points after `as_of`.
    pub fn tree(&self, as_of: Option<UserTime>) -> Node {
        #[derive(Default)]
        struct Builder {
            children: BTreeMap<String, Builder>,
            set: Option<Arc<dyn BackupSet>>,
            path: String,
        }
        fn build(b: Builder, as_of: Option<UserTime>, now: SystemTime) -> Node {
            let children: Vec<(String, Node)> = b
                .children
                .into_iter()
                .map(|(name, child)| (name, build(child, as_of, now)))
                .collect();
            match b.set {
                Some(set) => Node::Dir(Arc::new(SetDir {
                    set,
                    path: b.path,
                    as_of,
                    children,
                })),
                None => Node::Dir(StaticDir::new(Attr::read_only(true, now), children)),
            }
        }
        let mut root = Builder::default();
        for s in &self.sets {
            let mut b = &mut root;
            for c in s.path.split('/') {
                b = b.children.entry(c.to_owned()).or_default();
            }
            b.set = Some(Arc::clone(&s.set));
            b.path = s.path.clone();
        }
        build(root, as_of, SystemTime::now())
    }
}

fn join_rel(rel: &str, name: &str) -> String {
    match (rel.is_empty(), name.is_empty()) {
        (_, true) => rel.to_owned(),
        (true, false) => name.to_owned(),
        (false, false) => format!("{rel}/{name}"),
    }
}

/// Regular files and folders of `dir`, sorted; symlinks to files count as files, symlinked
/// folders are not followed (they could loop).
fn list_dir(dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, &e))?;
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, &e))?;
        let Ok(name) = entry.file_name().into_string() else {
            log::warn!(
                "{}: skipping a name that is not UTF-8: {:?}",
                dir.display(),
                entry.file_name()
            );
            continue;
        };
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            dirs.push(name);
        } else if ft.is_file() || (ft.is_symlink() && entry.path().is_file()) {
            files.push(name);
        }
    }
    files.sort();
    dirs.sort();
    Ok((files, dirs))
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

/// A set's folder: its points, `latest`, `at/`, and any folders nested below the set's path.
struct SetDir {
    set: Arc<dyn BackupSet>,
    path: String,
    as_of: Option<UserTime>,
    children: Vec<(String, Node)>,
}

impl SetDir {
    fn points(&self) -> (Arc<dyn PointList>, usize) {
        let list = self.set.points();
        let as_of = self.as_of.map(|t| t.in_zone(self.set.zone()));
        let n = visible(list.as_ref(), as_of);
        (list, n)
    }

    fn symlink(target: String, mtime: SystemTime) -> Node {
        Node::Symlink(Arc::new(Symlink {
            target,
            attr: Attr::read_only(false, mtime),
        }))
    }

    fn latest(list: &dyn PointList, n: usize) -> Option<Node> {
        newest_at(list, n, None).map(|i| Self::symlink(list.name(i), list.get(i).mtime()))
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
        list.get(i).node(&self.path, self.set.format())
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

    fn names(&self) -> Result<Vec<(String, Kind)>> {
        let (list, n) = self.points();
        let mut out: Vec<(String, Kind)> = self
            .children
            .iter()
            .map(|(c, node)| (c.clone(), node.kind()))
            .collect();
        out.extend((0..n).map(|i| (list.name(i), Kind::Dir)));
        if newest_at(list.as_ref(), n, None).is_some() {
            out.push(("latest".to_owned(), Kind::Symlink));
        }
        if (0..n).any(|i| list.time(i).is_some()) {
            out.push(("at".to_owned(), Kind::Dir));
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

/// `at/`: lists nothing; looking up a time gives a symlink to the newest point at or before it.
struct AtDir {
    list: Arc<dyn PointList>,
    n: usize,
    /// The set's zone, for times typed with a zone.
    zone: Option<FixedOffset>,
    attr: Attr,
    live: bool,
}

impl Directory for AtDir {
    fn entries(&self) -> Result<Vec<(String, Node)>> {
        Ok(Vec::new())
    }

    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        // A miss is a bare ENOENT to the user: the log says why.
        let t = match timefmt::parse_user(name) {
            Ok(t) => t.in_zone(self.zone),
            Err(e) => {
                log::info!("at/{name}: {e}");
                return Ok(None);
            }
        };
        let found = newest_at(self.list.as_ref(), self.n, Some(t));
        if found.is_none() {
            let oldest = (0..self.n).find(|&i| self.list.is_ok(i));
            log::info!(
                "at/{name}: no restore point that early (the oldest is {})",
                oldest.map_or_else(|| "none".to_owned(), |i| self.list.name(i))
            );
        }
        Ok(found.map(|i| {
            SetDir::symlink(
                format!("../{}", self.list.name(i)),
                self.list.get(i).mtime(),
            )
        }))
    }

    fn attr(&self) -> Attr {
        self.attr
    }

    fn live(&self) -> bool {
        self.live
    }

    fn lookup_only(&self) -> bool {
        true
    }
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
