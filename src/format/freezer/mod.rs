//! OpenStack Freezer, tar and rsync (`rsyncv2`) engines, local storage (spec:
//! `freezer-tar.md`): a container holds `metadata/<engine>/<host>_<name>/<l0_ts>/<level>_<ts>/
//! metadata` and `data/...`; every backup with its `metadata` file is a restore point exposing
//! `files/`, the tree restored from its chain of levels.
//!
//! A level's stream (gzip, bzip2 or xz, perhaps encrypted) cannot be entered in the middle: it is
//! decompressed once, front to back, when a point that needs it is first opened; its index (tar
//! members, or rsync header entries as members) is kept, and the decompressed stream goes to the
//! shared cache (or the scratch folder when large) so that file reads are plain reads from then
//! on. An rsync file stored as changed blocks reads through a map of its byte ranges over the
//! chain's streams (`patch`).
//!
//! Backups are untrusted: a level may decompress to at most 8 × `--cache-size` (the scratch
//! folder's share), its index and a point's tree take at most `--cache-size` of memory (128 MiB
//! at least), and members tar would refuse (`..`, over-long names, the root as a file) are left
//! out with a warning naming the level's data file and the member's offset.

mod msgpack;
mod patch;
mod rsync;
mod signature;
mod stream;
mod tar;
mod tree;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::NaiveDateTime;
use indicatif::ProgressBar;
use serde_json::{Map, Value, json};

use crate::cache::{self, Built, Cache, Key, OnFailure};
use crate::error::{Error, Result};
use crate::model::{
    self, BackupSet, Check, DirInfo, Exposed, Format, Found, Point, PointList, ScanContext,
};
use crate::storage::{self, Store};
use crate::timefmt;
use crate::vfs::{self, Attr, Directory, FileNode, Node, StaticDir, Symlink};
use crate::workdir::{Rebuilt, WorkDir};
use stream::Engine;
use tar::{Member, MemberKind};
use tree::{Bases, FileId, MemberAttrs, TNode};

/// The format's name, as `ls` and `info.json` show it.
pub const NAME: &str = "freezer";

/// The Freezer format.
pub struct Freezer {
    /// The encryption password (`--freezer-key`), if given.
    key: Option<Arc<Vec<u8>>>,
}

impl Freezer {
    /// The format, decrypting encrypted backups with `key` (without it they are not served).
    pub fn new(key: Option<Arc<Vec<u8>>>) -> Freezer {
        Freezer { key }
    }
}

impl Format for Freezer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn scan_dir(&self, dir: &DirInfo<'_>, opts: &ScanContext) -> Found {
        let has = |n: &str| dir.dirs.iter().any(|d| d == n);
        if !has("metadata") || !has("data") {
            return Found::default();
        }
        let mut found = Found::default();
        let mut backups: BTreeMap<(String, String), Vec<Backup>> = BTreeMap::new();
        let meta_root = dir.path.join("metadata");
        let store = opts.io.store.as_ref();
        for engine in subdirs(store, &meta_root) {
            let mut found_in_engine = Vec::new();
            let at = meta_root.join(&engine);
            find_backups(store, &at, "", 0, &mut found_in_engine);
            for (hbn, b) in found_in_engine {
                backups.entry((engine.clone(), hbn)).or_default().push(b);
            }
        }
        if backups.is_empty() {
            return found;
        }
        for ((engine, hbn), list) in backups {
            let set = FreezerSet::new(dir.path, &engine, &hbn, list, opts, self.key.as_ref());
            found.sets.push((
                format!("{engine}/{hbn}"),
                Arc::new(set) as Arc<dyn BackupSet>,
            ));
        }
        found.claimed_dirs = vec!["metadata".into(), "data".into()];
        found
    }
}

/// The sub-folders of `p`, sorted; none when it cannot be listed.
fn subdirs(store: &dyn Store, p: &Path) -> Vec<String> {
    store.list(p).map(|l| l.dirs).unwrap_or_default()
}

fn digits(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
}

/// One backup found under `metadata/`.
#[derive(Clone, Debug)]
struct Backup {
    l0: i64,
    level: u32,
    ts: i64,
    /// `<l0>/<level>_<ts>`, relative to the set's folders under `metadata/` and `data/`.
    rel: String,
}

/// Finds `<l0_ts>/<level>_<ts>/metadata` below `dir`, matching from the right so that host and
/// backup names (which may hold `_` or, for nova/glance, a resource id folder) stay whole.
fn find_backups(
    store: &dyn Store,
    dir: &Path,
    hbn: &str,
    depth: usize,
    out: &mut Vec<(String, Backup)>,
) {
    if depth > 4 {
        return;
    }
    for name in subdirs(store, dir) {
        let sub = dir.join(&name);
        if let Some(l0) = digits(&name).filter(|_| !hbn.is_empty()) {
            let mut any = false;
            for lv in subdirs(store, &sub) {
                let Some((level, ts)) = lv.split_once('_') else {
                    continue;
                };
                let level = digits(level).and_then(|l| u32::try_from(l).ok());
                let (Some(level), Some(ts)) = (level, digits(ts)) else {
                    continue;
                };
                any = true;
                // Data is written first and the metadata JSON last: without it the backup is
                // incomplete and not shown.
                if matches!(store.stat(&sub.join(&lv).join("metadata")), Ok(Some(_))) {
                    out.push((
                        hbn.to_owned(),
                        Backup {
                            l0,
                            level,
                            ts,
                            rel: format!("{name}/{lv}"),
                        },
                    ));
                }
            }
            if any {
                continue;
            }
        }
        let deeper = if hbn.is_empty() {
            name.clone()
        } else {
            format!("{hbn}/{name}")
        };
        find_backups(store, &sub, &deeper, depth + 1, out);
    }
}

/// Most warnings logged about one point's members (a hostile level can hold millions).
const MAX_WARNINGS: usize = 100;

/// Least memory a level's index, a point's tree and the xz decoder may take, whatever the cache
/// size: xz's largest preset dictionary (64 MiB) must fit.
const MIN_MEMORY: u64 = 128 << 20;

/// What one level may take. Its decompressed stream at most 8 × the cache's capacity: a stream
/// kept in the scratch folder is charged an eighth of its size (`Rebuilt::cost`), so one larger
/// would push the cache past its bound alone. Its index, a tree and the xz decoder at most the
/// capacity in memory.
fn limits(cache: &Cache) -> tar::Limits {
    tar::Limits {
        stream: cache.capacity().saturating_mul(8),
        memory: cache.capacity().max(MIN_MEMORY),
    }
}

/// Runs `f`, turning a panic (a bug, never expected) into an error about `file`, so that the
/// failure is remembered like any other and never repeated.
fn no_panic<T>(file: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::corrupt(
            file,
            0,
            format!("internal error (a bug) while {what}"),
        ))
    })
}

/// One level's stream, decoded on first use and shared by every point that needs it.
struct Level {
    data: PathBuf,
    /// The data file's length.
    size: u64,
    /// Where the data file is read from.
    store: Arc<dyn Store>,
    engine: Engine,
    /// The rsync engine's block size.
    block: u64,
    compression: String,
    password: Option<Arc<Vec<u8>>>,
    cache: Arc<Cache>,
    work: Arc<WorkDir>,
    owner: u64,
    /// The tar index, or why the level cannot be read: decided by the first decode and served
    /// from then on (a failure is never recomputed).
    members: OnceLock<std::result::Result<Arc<Vec<Member>>, Error>>,
}

impl Level {
    /// The tar index, decoding the stream if it was never decoded.
    fn members(&self) -> Result<Arc<Vec<Member>>> {
        if let Some(m) = self.members.get() {
            return m.clone();
        }
        if let Err(e) = self.data() {
            // Decoding sets the index; this covers a failure before it could.
            let _ = self.members.set(Err(e));
        }
        self.members
            .get()
            .cloned()
            .unwrap_or_else(|| Err(Error::not_found("level not decoded")))
    }

    /// The decompressed stream, from the cache or decoded now.
    fn data(&self) -> Result<Arc<Built<Rebuilt>>> {
        let key = Key {
            owner: self.owner,
            index: 0,
        };
        // Decoding again would fail the same way, at the cost of the whole stream.
        self.cache.get_or_build(key, OnFailure::Remember, || {
            let r = no_panic(&self.data, "decoding the level", || self.decode());
            if let Err(e) = &r {
                let _ = self.members.set(Err(e.clone()));
            }
            r.map(|r| {
                let cost = r.cost();
                (r, cost)
            })
        })
    }

    /// What the decompressed stream is, for messages.
    fn what(&self) -> &'static str {
        match self.engine {
            Engine::Tar => "decompressed tar stream",
            Engine::Rsync => "decompressed rsync stream",
        }
    }

    fn decode(&self) -> Result<Rebuilt> {
        log::info!("{}: decoding the level", self.data.display());
        let limits = limits(&self.cache);
        let path = self.work.file(match self.engine {
            Engine::Tar => "tar",
            Engine::Rsync => "rsync",
        })?;
        let source = self.store.open(&self.data)?;
        let mut input = stream::open(
            &source,
            self.engine,
            &self.compression,
            self.password.as_deref().map(Vec::as_slice),
            limits.memory,
        )?;
        let out = std::fs::File::create(&path).map_err(|e| Error::io(&path, &e))?;
        let mut sink = std::io::BufWriter::with_capacity(1 << 20, out);
        let indexed = match self.engine {
            Engine::Tar => tar::index(&mut input, &mut sink, limits),
            Engine::Rsync => {
                // The header list is read a few bytes at a time.
                let mut buffered = std::io::BufReader::with_capacity(1 << 16, input);
                let owners = rsync::Owners::local();
                rsync::index(&mut buffered, &mut sink, limits, self.block, &owners)
            }
        };
        let flushed = std::io::Write::flush(&mut sink);
        drop(sink);
        let members = match indexed {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(if e.over_bound {
                    Error::unsupported(
                        &self.data,
                        format!("at offset {} of the {}: {}", e.offset, self.what(), e.msg),
                    )
                } else {
                    Error::corrupt(
                        &self.data,
                        e.offset,
                        format!("in the {}: {}", self.what(), e.msg),
                    )
                });
            }
        };
        if let Err(e) = flushed {
            let _ = std::fs::remove_file(&path);
            return Err(Error::io(&path, &e));
        }
        let _ = self.members.set(Ok(Arc::new(members)));
        Rebuilt::take(path, self.cache.capacity() / 4)
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let cell = self.data()?;
        match cell.value() {
            Some(r) => r.read_at(offset, buf),
            None => Err(Error::not_found("level not decoded")),
        }
    }
}

/// A file of a restored tree: a member's data in a level's stream.
struct TarFile {
    level: Arc<Level>,
    offset: u64,
    size: u64,
    nlink: u32,
    attr: Attr,
}

impl FileNode for TarFile {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = vfs::clamp(offset, buf.len(), self.size);
        if n == 0 {
            return Ok(0);
        }
        let at = self.offset.saturating_add(offset);
        let want = buf.get_mut(..n).unwrap_or_default();
        let got = self.level.read(at, want)?;
        if got < n {
            // The index was made from this very stream: only a changed backup file gets here.
            return Err(Error::corrupt(
                &self.level.data,
                at.saturating_add(got as u64),
                "the decompressed tar stream ends inside a member's data",
            ));
        }
        Ok(got)
    }

    fn nlink(&self) -> u32 {
        self.nlink
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}

fn attr_of(m: &tree::MemberAttrs) -> Attr {
    let secs = Duration::from_secs(m.mtime.unsigned_abs());
    let mtime = if m.mtime >= 0 {
        UNIX_EPOCH.checked_add(secs)
    } else {
        UNIX_EPOCH.checked_sub(secs)
    };
    Attr {
        perm: (m.mode & 0o7777) as u16,
        uid: m.uid,
        gid: m.gid,
        mtime: mtime.unwrap_or(UNIX_EPOCH),
    }
}

/// A point's `files/`: built (all its levels decoded) when first looked into.
struct TreeDir {
    chain: Vec<Arc<Level>>,
    fallback: Attr,
    /// The tree, or why it cannot be built: decided once.
    root: OnceLock<Result<Arc<dyn Directory>>>,
}

impl TreeDir {
    fn root(&self) -> Result<Arc<dyn Directory>> {
        self.root
            .get_or_init(|| {
                let top = self
                    .chain
                    .last()
                    .map_or(Path::new(""), |l| l.data.as_path());
                let (dir, damaged) = no_panic(top, "building the tree", || self.build())?;
                for e in damaged.iter().take(MAX_WARNINGS) {
                    log::warn!("{e}");
                }
                Ok(dir)
            })
            .clone()
    }

    /// An rsync point's files checked against the block signatures freezer recorded with its
    /// last level (nothing to check for tar).
    fn check_signatures(&self, dir: &Arc<dyn Directory>) -> Vec<Error> {
        match self.chain.last() {
            Some(top) if top.engine == Engine::Rsync => {
                let meta = top.data.with_file_name("engine_metadata");
                no_panic(&meta, "checking signatures", || {
                    Ok(signature::check(
                        top.store.as_ref(),
                        &meta,
                        &top.compression,
                        limits(&top.cache),
                        top.block,
                        dir,
                    ))
                })
                .unwrap_or_else(|e| vec![e])
            }
            _ => Vec::new(),
        }
    }

    /// Logs what the tree builder said about members (at most `MAX_WARNINGS` lines).
    fn log_notes(&self, notes: &[tree::Note]) {
        let level_file = |i: usize| {
            self.chain
                .get(i)
                .map_or(Path::new(""), |l| l.data.as_path())
        };
        let what = |i: usize| self.chain.get(i).map_or("stream", |l| l.what());
        for n in notes.iter().take(MAX_WARNINGS) {
            log::warn!(
                "{}: at offset {} of the {}: {}",
                level_file(n.level).display(),
                n.header,
                what(n.level),
                n.msg
            );
        }
        if notes.len() > MAX_WARNINGS {
            log::warn!(
                "{}: {} more warnings about this point's members not shown",
                level_file(self.chain.len().saturating_sub(1)).display(),
                notes.len() - MAX_WARNINGS
            );
        }
    }

    /// The tree, with the errors of its files that have bytes no level gives (rsync engine).
    fn build(&self) -> Result<(Arc<dyn Directory>, Vec<Error>)> {
        let members: Vec<Arc<Vec<Member>>> = self
            .chain
            .iter()
            .map(|l| l.members())
            .collect::<Result<_>>()?;
        let refs: Vec<&[Member]> = members.iter().map(|m| m.as_slice()).collect();
        let level_file = |i: usize| {
            self.chain
                .get(i)
                .map_or(Path::new(""), |l| l.data.as_path())
        };
        let max = self
            .chain
            .first()
            .map_or(MIN_MEMORY, |l| limits(&l.cache).memory);
        let what = |i: usize| self.chain.get(i).map_or("stream", |l| l.what());
        let (mut root, notes, bases) = tree::build(&refs, max).map_err(|n| {
            Error::unsupported(
                level_file(n.level),
                format!("at offset {} of the {}: {}", n.header, what(n.level), n.msg),
            )
        })?;
        self.log_notes(&notes);
        // Hard links: one node per member, however many paths.
        let mut links: HashMap<FileId, u32> = HashMap::new();
        count_links(&root, &mut links);
        // The rsync engine does not record the backed-up folder itself: it is served as the
        // restore folder freezer makes (0755, the restoring user).
        if let TNode::Dir(meta, _) = &mut root
            && *meta == MemberAttrs::default()
        {
            *meta = self.root_attrs();
        }
        let built = TreeParts {
            members: &members,
            links: &links,
            bases: &bases,
        };
        let mut made = Made::default();
        match self.to_node(&root, &built, &mut made)? {
            Node::Dir(d) => Ok((d, made.damaged)),
            _ => Err(Error::corrupt(
                level_file(0),
                0,
                "the archive's root is not a folder",
            )),
        }
    }

    fn root_attrs(&self) -> MemberAttrs {
        let secs = self
            .fallback
            .mtime
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        MemberAttrs {
            mode: 0o755,
            uid: crate::sys::euid(),
            gid: crate::sys::egid(),
            mtime: secs,
        }
    }

    fn to_node(&self, n: &TNode, built: &TreeParts<'_>, made: &mut Made) -> Result<Node> {
        Ok(match n {
            TNode::Dir(meta, children) => {
                let entries = children
                    .iter()
                    .map(|(name, c)| Ok((name.clone(), self.to_node(c, built, made)?)))
                    .collect::<Result<_>>()?;
                Node::Dir(StaticDir::new(attr_of(meta), entries))
            }
            TNode::Symlink(meta, target) => Node::Symlink(Arc::new(Symlink {
                target: target.clone(),
                attr: Attr {
                    perm: 0o777,
                    ..attr_of(meta)
                },
            })),
            TNode::File(id) => {
                if let Some(f) = made.files.get(id) {
                    return Ok(Node::File(Arc::clone(f)));
                }
                let (m, level) = self.member(built, *id)?;
                let attr = attr_of(&MemberAttrs {
                    mode: m.mode,
                    uid: m.uid,
                    gid: m.gid,
                    mtime: m.mtime,
                });
                let f: Arc<dyn FileNode> = if built.bases.contains_key(id) {
                    let extents = self.extents(built, *id)?;
                    made.damaged
                        .extend(extents.iter().find_map(|e| self.missing(e)));
                    Arc::new(patch::PatchedFile {
                        chain: self.chain.clone(),
                        extents,
                        size: m.size,
                        attr,
                    })
                } else {
                    Arc::new(TarFile {
                        level: Arc::clone(level),
                        offset: m.offset,
                        size: m.size,
                        nlink: built.links.get(id).copied().unwrap_or(1),
                        attr,
                    })
                };
                made.files.insert(*id, Arc::clone(&f));
                Node::File(f)
            }
        })
    }

    /// The error reading a missing extent gives.
    fn missing(&self, e: &patch::Extent) -> Option<Error> {
        match &e.src {
            patch::Src::Missing { level, header, why } => {
                let file = self.chain.get(*level).map_or(Path::new(""), |l| &l.data);
                Some(Error::corrupt(file, *header, &**why))
            }
            patch::Src::Stream { .. } => None,
        }
    }

    fn member<'a>(
        &'a self,
        built: &TreeParts<'a>,
        id: FileId,
    ) -> Result<(&'a Member, &'a Arc<Level>)> {
        match (
            built.members.get(id.0).and_then(|l| l.get(id.1)),
            self.chain.get(id.0),
        ) {
            (Some(m), Some(level)) => Ok((m, level)),
            _ => Err(Error::not_found(format!(
                "internal: member {} of level {} is missing",
                id.1, id.0
            ))),
        }
    }

    /// A patched file's content: its chain of patches down to a whole file (or to nothing),
    /// laid over each other oldest first.
    fn extents(&self, built: &TreeParts<'_>, id: FileId) -> Result<Vec<patch::Extent>> {
        let mut stack = vec![id];
        let mut cur = id;
        while let Some(Some(base)) = built.bases.get(&cur) {
            stack.push(*base);
            cur = *base;
        }
        let mut ext = Vec::new();
        let mut size = 0;
        for &pid in stack.iter().rev() {
            let (m, _) = self.member(built, pid)?;
            match &m.kind {
                MemberKind::Patch(runs) if built.bases.contains_key(&pid) => {
                    ext = patch::overlay(&ext, size, m.size, runs, (pid.0, m.header), &m.path);
                }
                _ => ext = patch::whole(pid.0, m.offset, m.size),
            }
            size = m.size;
        }
        Ok(ext)
    }
}

/// What `TreeDir::to_node` has made so far: file nodes (one per member, however many paths)
/// and the errors of files with bytes no level gives.
#[derive(Default)]
struct Made {
    files: HashMap<FileId, Arc<dyn FileNode>>,
    damaged: Vec<Error>,
}

/// What `TreeDir::to_node` needs of a built tree.
struct TreeParts<'a> {
    members: &'a [Arc<Vec<Member>>],
    links: &'a HashMap<FileId, u32>,
    bases: &'a Bases,
}

fn count_links(n: &TNode, links: &mut HashMap<FileId, u32>) {
    match n {
        TNode::Dir(_, c) => c.values().for_each(|c| count_links(c, links)),
        TNode::File(id) => {
            let n = links.entry(*id).or_default();
            *n = n.saturating_add(1);
        }
        TNode::Symlink(..) => {}
    }
}

impl Directory for TreeDir {
    fn entries(&self) -> Result<Vec<(String, Node)>> {
        self.root()?.entries()
    }

    fn names(&self) -> Result<Vec<(String, vfs::NodeKind)>> {
        self.root()?.names()
    }

    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        self.root()?.lookup(name)
    }

    fn attr(&self) -> Attr {
        self.root().map_or(self.fallback, |r| r.attr())
    }
}

/// One `<engine>/<host>_<name>` of a container.
struct FreezerSet {
    points: Arc<Vec<Arc<Point>>>,
    /// Per point: its tree (and through it the levels it reads).
    chains: Vec<(String, Arc<TreeDir>)>,
    problem: Option<Error>,
    size: u64,
}

impl FreezerSet {
    fn new(
        container: &Path,
        engine: &str,
        hbn: &str,
        mut list: Vec<Backup>,
        opts: &ScanContext,
        key: Option<&Arc<Vec<u8>>>,
    ) -> FreezerSet {
        list.sort_by_key(|b| (b.ts, b.level, b.l0));
        let meta_dir = container.join("metadata").join(engine).join(hbn);
        let data_dir = container.join("data").join(engine).join(hbn);
        let problem = (engine != "tar" && engine != "rsync").then(|| {
            Error::unsupported(
                &meta_dir,
                format!("engine {engine:?}: restorefs serves Freezer's tar and rsync engines only"),
            )
        });
        let kind = Engine::of_dir(engine);
        let levels: Vec<LoadedLevel> = list
            .iter()
            .map(|b| load_level((&meta_dir, &data_dir), kind, b, opts, key))
            .collect();
        let data_rel = format!("data/{engine}/{hbn}");
        let mut points = Vec::new();
        let mut chains = Vec::new();
        let mut taken = HashSet::new();
        let mut size = 0;
        for (i, b) in list.iter().enumerate() {
            let time = timefmt::from_unix(b.ts);
            let name = model::unique_name(point_name(b, time.as_ref()), &mut taken);
            let chain = match &problem {
                Some(p) => Err(p.clone()),
                None => chain_of(&list, &levels, i, &meta_dir),
            };
            let content = chain.map(|c| {
                let (dir, exposed, bytes) = files_of(&c, &list, &levels, &data_rel, time.as_ref());
                size += bytes;
                chains.push((name.clone(), dir));
                exposed
            });
            let ids = point_ids(b, levels[i].as_ref().ok().map(|l| &l.1));
            let kind = format!("level{}", b.level);
            points.push(Arc::new(Point::new(
                name,
                time,
                &kind,
                ids,
                content,
                Vec::new(),
            )));
        }
        FreezerSet {
            points: Arc::new(points),
            chains,
            problem,
            size,
        }
    }
}

/// A backup's level and its metadata JSON, or why it could not be loaded.
type LoadedLevel = Result<(Arc<Level>, Value)>;

/// The `files` folder of a point whose level chain is `c` (positions in `list`, all loaded);
/// with the bytes of the chain's data files. `data_rel`: the set's data folder in the container.
fn files_of(
    c: &[usize],
    list: &[Backup],
    levels: &[LoadedLevel],
    data_rel: &str,
    time: Option<&NaiveDateTime>,
) -> (Arc<TreeDir>, Vec<Exposed>, u64) {
    let sources: Vec<String> = c
        .iter()
        .map(|&j| format!("{data_rel}/{}/data", list[j].rel))
        .collect();
    let chain: Vec<Arc<Level>> = c
        .iter()
        // `chain_of` checked that every level of the chain loaded.
        .filter_map(|&j| levels.get(j)?.as_ref().ok().map(|l| Arc::clone(&l.0)))
        .collect();
    let size = chain.iter().map(|l| l.size).sum::<u64>();
    let mtime = time.map_or(SystemTime::UNIX_EPOCH, timefmt::to_system_time);
    let dir = Arc::new(TreeDir {
        chain,
        fallback: Attr::read_only(true, mtime),
        root: OnceLock::new(),
    });
    let exposed = vec![Exposed {
        path: "files".into(),
        node: Node::Dir(Arc::clone(&dir) as Arc<dyn Directory>),
        size: None,
        sources,
        error: None,
    }];
    (dir, exposed, size)
}

/// A point's name: its time (or Unix time) and level.
fn point_name(b: &Backup, time: Option<&NaiveDateTime>) -> String {
    format!(
        "{}_level{}",
        time.map_or_else(|| b.ts.to_string(), timefmt::to_name),
        b.level
    )
}

/// A point's ids: its level and timestamps, and what its metadata says of compression,
/// encryption and engine.
fn point_ids(b: &Backup, meta: Option<&Value>) -> Map<String, Value> {
    let mut ids = Map::new();
    ids.insert("level".into(), json!(b.level));
    ids.insert("timestamp".into(), json!(b.ts));
    ids.insert("level0_timestamp".into(), json!(b.l0));
    if let Some(meta) = meta {
        for k in ["compression", "encryption", "engine_name"] {
            if let Some(v) = meta.get(k) {
                ids.insert(k.into(), v.clone());
            }
        }
    }
    ids
}

/// The largest `metadata` JSON read: freezer's are a few KiB; a hostile one could be huge.
const MAX_METADATA: u64 = 16 << 20;

/// A backup's level, from its `metadata` JSON.
fn load_level(
    (meta_dir, data_dir): (&Path, &Path),
    engine: Engine,
    b: &Backup,
    opts: &ScanContext,
    key: Option<&Arc<Vec<u8>>>,
) -> Result<(Arc<Level>, Value)> {
    let meta_path = meta_dir.join(&b.rel).join("metadata");
    let store = &opts.io.store;
    let text = storage::read_small(store.as_ref(), &meta_path, MAX_METADATA)?;
    let meta: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::corrupt(&meta_path, 0, format!("bad metadata JSON: {e}")))?;
    let data = data_dir.join(&b.rel).join("data");
    let Some(entry) = store.stat(&data)? else {
        return Err(Error::not_found(format!(
            "{}: the backup's data file is missing",
            data.display()
        )));
    };
    let block = match engine {
        Engine::Rsync => block_size(&meta, &meta_path)?,
        Engine::Tar => 0,
    };
    let compression = meta
        .get("compression")
        .and_then(Value::as_str)
        .unwrap_or("gzip")
        .to_owned();
    let encrypted = meta
        .get("encryption")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let password = match (encrypted, key) {
        (false, _) => None,
        (true, Some(k)) => Some(Arc::clone(k)),
        (true, None) => {
            return Err(Error::unsupported(
                &data,
                "encrypted backup: pass --freezer-key FILE (the file with Freezer's encryption password)",
            ));
        }
    };
    Ok((
        Arc::new(Level {
            data,
            size: entry.size,
            store: Arc::clone(store),
            engine,
            block,
            compression,
            password,
            cache: Arc::clone(&opts.cache),
            work: Arc::clone(&opts.work),
            owner: cache::new_owner_id(),
            members: OnceLock::new(),
        }),
        meta,
    ))
}

/// The rsync engine's block size from a backup's metadata (freezer's default when absent).
fn block_size(meta: &Value, meta_path: &Path) -> Result<u64> {
    match meta.get("rsync_block_size") {
        None | Some(Value::Null) => Ok(rsync::DEFAULT_BLOCK),
        Some(v) => v
            .as_u64()
            .filter(|b| (1..=rsync::MAX_BLOCK).contains(b))
            .ok_or_else(|| {
                Error::corrupt(
                    meta_path,
                    0,
                    format!("rsync_block_size {v} is not a block size (1 to 1 GiB)"),
                )
            }),
    }
}

/// The chain of backup `i`: level 0, then for each level the newest backup one level down in
/// the same level-0 chain with a smaller timestamp (never Freezer's last-listed-wins).
fn chain_of(
    list: &[Backup],
    levels: &[LoadedLevel],
    i: usize,
    meta_dir: &Path,
) -> Result<Vec<usize>> {
    let mut chain = vec![i];
    let mut cur = i;
    while list[cur].level > 0 {
        let want = list[cur].level - 1;
        let parent = (0..list.len())
            .filter(|&j| {
                list[j].l0 == list[cur].l0 && list[j].level == want && list[j].ts < list[cur].ts
            })
            .max_by_key(|&j| list[j].ts);
        let Some(p) = parent else {
            return Err(Error::not_found(format!(
                "{}: no level-{want} backup before {} in chain {}: the chain is incomplete",
                meta_dir.display(),
                list[cur].rel,
                list[cur].l0
            )));
        };
        chain.push(p);
        cur = p;
    }
    chain.reverse();
    for &j in &chain {
        if let Err(e) = &levels[j] {
            return Err(e.clone());
        }
    }
    Ok(chain)
}

impl BackupSet for FreezerSet {
    fn format(&self) -> &'static str {
        NAME
    }

    fn points(&self) -> Arc<dyn PointList> {
        Arc::clone(&self.points) as Arc<dyn PointList>
    }

    fn problem(&self) -> Option<Error> {
        self.problem.clone()
    }

    fn verify(&self, progress: &ProgressBar) -> Vec<Check> {
        let mut decoded: HashMap<u64, Option<Error>> = HashMap::new();
        self.points
            .iter()
            .map(|p| {
                progress.set_message(p.name.clone());
                let mut problems: Vec<Error> =
                    p.content.as_ref().err().cloned().into_iter().collect();
                if let Some((_, tree)) = self.chains.iter().find(|c| c.0 == p.name) {
                    for l in &tree.chain {
                        let e = decoded.entry(l.owner).or_insert_with(|| {
                            let r = l.members().err();
                            progress.inc(l.size);
                            r
                        });
                        problems.extend(e.clone());
                    }
                    // The tree too (its warnings are logged), built and dropped: kept for every
                    // point at once it could take far more memory than a mount ever holds.
                    if problems.is_empty() {
                        let top = tree
                            .chain
                            .last()
                            .map_or(Path::new(""), |l| l.data.as_path());
                        match no_panic(top, "building the tree", || tree.build()) {
                            Ok((dir, damaged)) if damaged.is_empty() => {
                                problems.extend(tree.check_signatures(&dir));
                            }
                            Ok((_, damaged)) => problems.extend(damaged),
                            Err(e) => problems.push(e),
                        }
                    }
                }
                Check {
                    point: p.name.clone(),
                    problems,
                }
            })
            .collect()
    }

    fn verify_size(&self) -> u64 {
        self.size
    }
}
