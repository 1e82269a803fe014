//! Where a backup format plugs in: the traits a format implements and the plain data it hands
//! back. Read this file to add a format.
//!
//! A format is a value implementing [`Format`]: given one folder under SOURCE ([`DirInfo`]), it
//! says which backup sets are there ([`Found`]). Each set implements [`BackupSet`] (its restore
//! points, verification) and lists its points through a [`PointList`]; a [`Point`] is plain data:
//! its name, time, kind, ids and the files it exposes ([`Exposed`], as `vfs` nodes). Register the format in
//! `format::all`; the scan, the tree (`latest`, `at/`, `info.json`) and every front end then
//! serve it without knowing it. Format-specific settings (keys, limits) are given to the format
//! value when it is made; [`ScanContext`] carries only the services every format shares.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use chrono::{FixedOffset, NaiveDateTime};
use indicatif::ProgressBar;
use serde_json::{Map, Value};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::indexcache::IndexCache;
use crate::lz4::Lz4Runtime;
use crate::storage::{LocalStore, Store};
use crate::timefmt;
use crate::vfs::Node;
use crate::workdir::WorkDir;

/// The services every format's scanner shares.
#[derive(Clone)]
pub struct ScanContext {
    /// The shared cache for decoded or rebuilt data.
    pub cache: Arc<Cache>,
    /// restorefs' scratch folder (never inside SOURCE).
    pub work: Arc<WorkDir>,
    /// Where indexes of backup files are kept between runs.
    pub index: Option<Arc<IndexCache>>,
    /// How backup files are read: mappings and their budget, LZ4 decoding.
    pub io: Io,
}

/// The machinery of reading backup files, made once per run and passed down (no process
/// globals): the store SOURCE is listed and opened from, the LZ4 buffer pool and decode-ahead
/// worker.
#[derive(Clone)]
pub struct Io {
    /// Where SOURCE's folders are listed and its files opened.
    pub store: Arc<dyn Store>,
    /// LZ4 decoding's shared buffers and worker.
    pub lz4: Arc<Lz4Runtime>,
}

impl Default for Io {
    fn default() -> Io {
        Io {
            store: Arc::new(LocalStore::default()),
            lz4: Arc::default(),
        }
    }
}

impl ScanContext {
    /// A cache, and a scratch folder and kept indexes under `cache_dir`.
    pub fn new(cache: Arc<Cache>, cache_dir: &Path) -> ScanContext {
        ScanContext {
            cache,
            work: WorkDir::new(cache_dir),
            index: Some(Arc::new(IndexCache::new(cache_dir))),
            io: Io::default(),
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
    fn scan_dir(&self, dir: &DirInfo<'_>, ctx: &ScanContext) -> Found;
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
    /// The point's folder, kept once made so that its files keep their identity.
    folder: OnceLock<Node>,
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
            folder: OnceLock::new(),
        }
    }

    /// The same point shown with modification time `t` (for points without a time of their own).
    pub fn modified_at(mut self, t: SystemTime) -> Point {
        self.modified = t;
        self
    }

    /// Whether the point can be served (some of its files may still fail).
    pub fn is_ok(&self) -> bool {
        self.content.is_ok()
    }

    /// Modification time shown for the point and its files.
    pub fn mtime(&self) -> SystemTime {
        self.modified
    }

    /// The point's folder: made by `make` on first use (the tree knows how), then kept.
    pub fn folder(&self, make: impl FnOnce(&Point) -> Node) -> Node {
        self.folder.get_or_init(|| make(self)).clone()
    }
}

/// Makes `base` unique among `taken` by appending `-2`, `-3`, ... and records it.
pub fn unique_name(base: String, taken: &mut HashSet<String>) -> String {
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}
