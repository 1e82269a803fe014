//! Core Lightning's backup plugin: any file with a valid 512-byte header is a backup set; every
//! committed data_version is a restore point exposing `lightningd.sqlite3` as of that version,
//! rebuilt on first read (spec: `clightning-backup-log.md`).
//!
//! The set is live: a log that grows while mounted shows its new versions (only those the header
//! names as written, so never a torn one); a log replaced by compaction is read anew.

mod kept;
mod log;
mod replay;
mod resolve;
mod sandbox;

pub use sandbox::SqlLimits;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use indicatif::ProgressBar;
use serde_json::{Map, json};

use crate::cache::{self, Built, Cache, Key, OnFailure};
use crate::error::{Error, Result};
use crate::model::{
    BackupSet, Check, DirInfo, Exposed, Format, Found, Point, PointList, ScanContext,
};
use crate::storage::Store;
use crate::vfs::{Attr, FileNode, Node};
use crate::workdir::{Patched, Rebuilt, WorkDir};
use kept::{Kept, Stamp, Target};
use log::{Entry, EntryKind, Probe};
use replay::Replayer;

/// Checkpoints are taken at least this many versions apart.
pub const CHECKPOINT_EVERY: u64 = 32;
/// At most this many checkpoints are taken along one segment (a log of a million tiny
/// versions would otherwise leave tens of thousands of files).
const MOST_CHECKPOINTS: u64 = 256;
/// Replaying one transaction costs about as much as copying this many bytes of database, so a
/// checkpoint every `size / REPLAY_BYTES` versions keeps the copying no costlier than the
/// replaying it saves.
const REPLAY_BYTES: u64 = 8 << 10;

/// The format's name, as `ls` and `info.json` show it.
pub const NAME: &str = "clightning";

/// The Core Lightning backup-plugin format.
pub struct Clightning {
    /// The budget of replaying a log's SQL (and its cancel flag, shared with every set).
    limits: SqlLimits,
}

impl Clightning {
    /// The format, rebuilding databases within `limits`.
    pub fn new(limits: SqlLimits) -> Clightning {
        Clightning { limits }
    }
}

impl Format for Clightning {
    fn name(&self) -> &'static str {
        NAME
    }

    fn scan_dir(&self, dir: &DirInfo<'_>, opts: &ScanContext) -> Found {
        let mut found = Found::default();
        for name in dir.files {
            // A clone being built by `backup-compact` (or left over by a failed one) is not the
            // backup; it is left alone while the real file is next to it.
            if let Some(real) = name.strip_suffix(".compacting")
                && dir.files.iter().any(|f| f == real)
            {
                found.claimed_files.push(name.clone());
                continue;
            }
            let path = dir.path.join(name);
            let probe = log::probe(opts.io.store.as_ref(), &path);
            if matches!(probe, Probe::NotOurs) {
                continue;
            }
            let set = ClnSet::new(path, name.clone(), opts, self.limits.clone(), probe);
            found
                .sets
                .push((name.clone(), Arc::new(set) as Arc<dyn BackupSet>));
            found.claimed_files.push(name.clone());
        }
        found
    }
}

/// Failed rebuilds, by (owner, offset of the entry that failed): remembered so that neither
/// that version nor any later one replaying the same entry spends the budget again.
type Failures = Arc<Mutex<BTreeMap<(u64, u64), Error>>>;

/// The remembered failure of an entry among the kept entries `base..=upto` of `plan`.
fn known_failure(
    failures: &Failures,
    plan: &Plan,
    owner: u64,
    base: Option<usize>,
    upto: usize,
) -> Option<Error> {
    let lo = base.and_then(|b| plan.get(b)).map_or(0, |e| e.offset);
    let hi = plan.get(upto)?.offset;
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner());
    failures
        .range((owner, lo)..=(owner, hi))
        .find(|((_, off), _)| plan.position(*off).is_some())
        .map(|(_, e)| e.clone())
}

/// An open backup file, as one refresh saw it.
struct LogFile {
    path: PathBuf,
    /// Shared with the kept versions served over its snapshot (no descriptor each).
    file: Arc<File>,
    /// Cache and checkpoint owner id of this file (a replaced file gets a new one).
    owner: u64,
    mtime: SystemTime,
    /// Checkpoints of this file kept between runs.
    kept: Kept,
}

/// The entries kept by one resolution, shared by the points it made.
#[derive(Default)]
struct Plan {
    entries: Vec<Entry>,
    kept: Vec<usize>,
}

impl Plan {
    fn entry(&self, pos: usize) -> &Entry {
        &self.entries[self.kept[pos]]
    }

    fn get(&self, pos: usize) -> Option<&Entry> {
        self.kept.get(pos).and_then(|&i| self.entries.get(i))
    }

    /// Position in `kept` of the entry at file offset `off`, if kept.
    fn position(&self, off: u64) -> Option<usize> {
        self.kept
            .binary_search_by_key(&off, |&i| self.entries[i].offset)
            .ok()
    }
}

struct State {
    /// (dev, ino, len, mtime ns) of the file last read.
    seen: Option<(u64, u64, u64, i64)>,
    log: Option<Arc<LogFile>>,
    entries: Vec<Entry>,
    /// Where the walk stopped (end of the last whole entry).
    walked: u64,
    problem: Option<Error>,
    points: Arc<ClnPoints>,
    /// The copy a remote log is read from (fetched once: such a log is not live).
    copy: Option<PathBuf>,
}

/// One backup file.
struct ClnSet {
    path: PathBuf,
    name: String,
    /// Where the file is: a local store's log is read in place, as it grows.
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
    work: Arc<WorkDir>,
    /// Sizes of rebuilt databases, by (owner, entry offset), so `stat` needs no rebuild twice.
    sizes: Arc<Mutex<HashMap<(u64, u64), u64>>>,
    failures: Failures,
    sql: SqlLimits,
    state: Mutex<State>,
}

impl ClnSet {
    fn new(
        path: PathBuf,
        name: String,
        opts: &ScanContext,
        sql: SqlLimits,
        probe: Probe,
    ) -> ClnSet {
        let set = ClnSet {
            path,
            name,
            store: Arc::clone(&opts.io.store),
            cache: Arc::clone(&opts.cache),
            work: Arc::clone(&opts.work),
            sizes: Arc::default(),
            failures: Arc::default(),
            sql,
            state: Mutex::new(State {
                seen: None,
                log: None,
                entries: Vec::new(),
                walked: log::HEADER_LEN,
                problem: None,
                points: Arc::new(ClnPoints::default()),
                copy: None,
            }),
        };
        let mut st = set.state.lock().unwrap_or_else(|p| p.into_inner());
        set.refresh(&mut st, Some(probe));
        drop(st);
        set
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the file if it changed since last time: new entries of a grown file are walked
    /// on from where the last walk stopped; a replaced (or shrunk) file is read anew.
    fn refresh(&self, st: &mut State, probe: Option<Probe>) {
        let local = match self.local_file(st) {
            Ok(p) => p,
            Err(e) => return self.broken(st, None, e),
        };
        let md = match std::fs::metadata(&local) {
            Ok(md) => md,
            Err(e) => {
                return self.broken(st, None, Error::io(&self.path, &e));
            }
        };
        let seen = (
            md.dev(),
            md.ino(),
            md.len(),
            md.mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.mtime_nsec()),
        );
        if st.seen == Some(seen) {
            return;
        }
        let header = match self.valid_header(probe) {
            Ok(h) => h,
            Err(e) => return self.broken(st, Some(seen), e),
        };
        let same_file = st
            .seen
            .is_some_and(|s| (s.0, s.1) == (seen.0, seen.1) && seen.2 >= st.walked);
        if (!same_file || st.log.is_none())
            && let Err(e) = self.reopen(st, &local, &md)
        {
            return self.broken(st, Some(seen), e);
        }
        st.seen = Some(seen);
        st.problem = None;
        let Some(log) = st.log.as_ref().map(Arc::clone) else {
            return;
        };
        log.kept.set_log_len(seen.2);
        let tail = log::walk(&log.file, st.walked, seen.2, &mut st.entries);
        st.walked = st.entries.last().map_or(log::HEADER_LEN, Entry::end);
        let r = resolve::resolve(&st.entries, header.version, tail.as_ref());
        st.points = Arc::new(self.points(log, &st.entries, r));
    }

    /// The file's header, probed now unless `probe` already did.
    fn valid_header(&self, probe: Option<Probe>) -> Result<log::LogHeader> {
        match probe.unwrap_or_else(|| log::probe(self.store.as_ref(), &self.path)) {
            Probe::Valid(h) => Ok(h),
            Probe::Broken(e) => Err(e),
            Probe::NotOurs => Err(Error::corrupt(
                &self.path,
                0,
                "no longer a backup-plugin file (header changed)",
            )),
        }
    }

    /// The file on this machine the log is read from: the log itself on a local store; on a
    /// remote one, a copy fetched into the scratch folder on first use.
    fn local_file(&self, st: &mut State) -> Result<PathBuf> {
        if self.store.is_local() {
            return Ok(self.path.clone());
        }
        if let Some(copy) = &st.copy {
            return Ok(copy.clone());
        }
        let scratch = self.work.file("log")?;
        std::fs::create_dir(&scratch).map_err(|e| Error::io(&scratch, &e))?;
        let copy = self.store.local_copy(&self.path, &scratch)?;
        st.copy = Some(copy.clone());
        Ok(copy)
    }

    /// Opens the file anew from `local` (as `md` describes it: a new cache owner) and forgets
    /// what was walked.
    fn reopen(&self, st: &mut State, local: &Path, md: &std::fs::Metadata) -> Result<()> {
        let file = File::open(local).map_err(|e| Error::io(&self.path, &e))?;
        let (mtime, kept) = if self.store.is_local() {
            let canon = self
                .path
                .canonicalize()
                .unwrap_or_else(|_| self.path.clone());
            let version = format!("{:x}-{:x}", md.dev(), md.ino());
            let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            (mtime, (canon, version))
        } else {
            // The copy is new each run: the remote object's size and time name its version.
            let entry = self.store.stat(&self.path)?.ok_or_else(|| {
                Error::not_found(format!("{}: no longer there", self.path.display()))
            })?;
            let t = entry
                .modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let version = format!("{:x}-{t:x}", entry.size);
            (entry.modified, (self.path.clone(), version))
        };
        st.log = Some(Arc::new(LogFile {
            path: self.path.clone(),
            file: Arc::new(file),
            owner: cache::new_owner_id(),
            mtime,
            kept: Kept::open(self.work.cache_dir(), &kept.0, &kept.1, md.len()),
        }));
        st.entries.clear();
        st.walked = log::HEADER_LEN;
        Ok(())
    }

    /// The points of the walked `entries` as `r` resolved them, listed by version.
    fn points(&self, log: Arc<LogFile>, entries: &[Entry], r: resolve::Resolved) -> ClnPoints {
        let mut order: Vec<(u32, Slot)> = r
            .served
            .values()
            .map(|s| (s.version, Slot::Served(*s)))
            .collect();
        let mut unserved = Vec::new();
        for (&v, (offset, why)) in &r.unserved {
            order.push((v, Slot::Unserved(unserved.len())));
            unserved.push((*offset, why.clone()));
        }
        order.sort_by_key(|o| o.0);
        ClnPoints {
            set: self.name.clone(),
            path: self.path.clone(),
            log: Some(log),
            plan: Arc::new(Plan {
                entries: entries.to_vec(),
                kept: r.kept,
            }),
            order,
            unserved,
            cache: Some(Arc::clone(&self.cache)),
            work: Some(Arc::clone(&self.work)),
            sizes: Arc::clone(&self.sizes),
            failures: Arc::clone(&self.failures),
            sql: self.sql.clone(),
        }
    }

    fn broken(&self, st: &mut State, seen: Option<(u64, u64, u64, i64)>, e: Error) {
        st.seen = seen;
        st.problem = Some(e);
        st.points = Arc::new(ClnPoints::default());
    }
}

/// What a listed version is.
#[derive(Clone, Copy)]
enum Slot {
    Served(resolve::Served),
    Unserved(usize),
}

/// The versions of one resolution of a log; points are made when asked for.
#[derive(Default)]
struct ClnPoints {
    set: String,
    path: PathBuf,
    log: Option<Arc<LogFile>>,
    plan: Arc<Plan>,
    /// Every listed version, ascending.
    order: Vec<(u32, Slot)>,
    /// (offset, reason) of the versions not served.
    unserved: Vec<(u64, String)>,
    cache: Option<Arc<Cache>>,
    work: Option<Arc<WorkDir>>,
    sizes: Arc<Mutex<HashMap<(u64, u64), u64>>>,
    failures: Failures,
    sql: SqlLimits,
}

impl ClnPoints {
    /// A failure already met while rebuilding `s` or an earlier version it replays through.
    fn failure(&self, s: &resolve::Served) -> Option<Error> {
        let owner = self.log.as_ref()?.owner;
        known_failure(&self.failures, &self.plan, owner, s.base, s.upto)
    }

    fn db(&self, s: &resolve::Served) -> Option<DbFile> {
        let log = self.log.as_ref()?;
        Some(DbFile {
            log: Arc::clone(log),
            plan: Arc::clone(&self.plan),
            upto: s.upto,
            base: s.base,
            cache: Arc::clone(self.cache.as_ref()?),
            work: Arc::clone(self.work.as_ref()?),
            sizes: Arc::clone(&self.sizes),
            failures: Arc::clone(&self.failures),
            sql: self.sql.clone(),
            attr: Attr::read_only(false, log.mtime),
        })
    }

    /// The newest served version's database.
    fn head(&self) -> Option<DbFile> {
        self.order.iter().rev().find_map(|(_, slot)| match slot {
            Slot::Served(s) => self.db(s),
            Slot::Unserved(_) => None,
        })
    }
}

impl PointList for ClnPoints {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn name(&self, i: usize) -> String {
        point_name(self.order[i].0)
    }

    fn time(&self, _i: usize) -> Option<chrono::NaiveDateTime> {
        None
    }

    fn is_ok(&self, i: usize) -> bool {
        match self.order.get(i) {
            Some((_, Slot::Served(s))) => self.failure(s).is_none(),
            _ => false,
        }
    }

    fn get(&self, i: usize) -> Arc<Point> {
        let (v, slot) = self.order[i];
        let mut ids = Map::new();
        ids.insert("version".into(), json!(v));
        let content = match slot {
            Slot::Served(s) => {
                ids.insert(
                    "snapshot_version".into(),
                    json!(s.base.map(|b| self.plan.entry(b).version)),
                );
                // A rebuild that failed keeps its file, whose reads give the remembered error at
                // once; the listing shows it (and `latest` skips the version, see `is_ok`).
                match self.db(&s) {
                    Some(db) => Ok(vec![Exposed {
                        path: "lightningd.sqlite3".into(),
                        node: Node::File(Arc::new(db) as Arc<dyn FileNode>),
                        size: None,
                        sources: vec![self.set.clone()],
                        error: self
                            .failure(&s)
                            .map(|e| e.context(format!("version {v} not served"))),
                    }]),
                    None => Err(Error::not_found("the log is not open")),
                }
            }
            Slot::Unserved(u) => {
                let (offset, why) = &self.unserved[u];
                Err(Error::corrupt(
                    &self.path,
                    *offset,
                    format!("version {v} not served: {why}"),
                ))
            }
        };
        let mtime = self
            .log
            .as_ref()
            .map_or(SystemTime::UNIX_EPOCH, |l| l.mtime);
        Arc::new(
            Point::new(point_name(v), None, "version", ids, content, Vec::new()).modified_at(mtime),
        )
    }

    fn find(&self, name: &str) -> Option<usize> {
        let v: u32 = name
            .strip_prefix('v')
            .filter(|d| d.len() == 10)?
            .parse()
            .ok()?;
        self.order.binary_search_by_key(&v, |o| o.0).ok()
    }
}

/// `v` and the version zero-padded to 10 digits (u32), so names sort by version.
fn point_name(v: u32) -> String {
    format!("v{v:010}")
}

impl BackupSet for ClnSet {
    fn format(&self) -> &'static str {
        NAME
    }

    fn points(&self) -> Arc<dyn PointList> {
        let mut st = self.lock();
        self.refresh(&mut st, None);
        Arc::clone(&st.points) as Arc<dyn PointList>
    }

    fn problem(&self) -> Option<Error> {
        self.lock().problem.clone()
    }

    fn live(&self) -> bool {
        self.store.is_local()
    }

    fn verify(&self, progress: &ProgressBar) -> Vec<Check> {
        let (points, problem) = {
            let mut st = self.lock();
            self.refresh(&mut st, None);
            (Arc::clone(&st.points), st.problem.clone())
        };
        let mut checks: Vec<Check> = points
            .order
            .iter()
            .filter_map(|(v, slot)| match slot {
                Slot::Unserved(u) => {
                    let (offset, why) = &points.unserved[*u];
                    let e = Error::corrupt(
                        &self.path,
                        *offset,
                        format!("version {v} not served: {why}"),
                    );
                    Some(Check {
                        point: point_name(*v),
                        problems: vec![e],
                    })
                }
                Slot::Served(_) => None,
            })
            .collect();
        if let Some(e) = problem {
            checks.push(Check {
                point: "(header)".into(),
                problems: vec![e],
            });
        }
        if let Some(head) = points.head() {
            let name = point_name(head.plan.entry(head.upto).version);
            progress.set_message(format!("{name} (rebuilding the newest version)"));
            let problems = match head.rebuild_file() {
                Ok(path) => {
                    let r = replay::integrity_check(&path).map_err(|m| {
                        Error::corrupt(&self.path, 0, format!("{name}: integrity_check: {m}"))
                    });
                    let _ = std::fs::remove_file(&path);
                    r.err().into_iter().collect()
                }
                Err(e) => vec![e],
            };
            checks.push(Check {
                point: name,
                problems,
            });
        }
        progress.inc(self.verify_size());
        checks
    }

    fn verify_size(&self) -> u64 {
        self.lock().walked
    }
}

/// `lightningd.sqlite3` of one version.
struct DbFile {
    log: Arc<LogFile>,
    plan: Arc<Plan>,
    upto: usize,
    base: Option<usize>,
    cache: Arc<Cache>,
    work: Arc<WorkDir>,
    sizes: Arc<Mutex<HashMap<(u64, u64), u64>>>,
    failures: Failures,
    sql: SqlLimits,
    attr: Attr,
}

impl DbFile {
    fn key(&self) -> Key {
        Key {
            owner: self.log.owner,
            index: self.plan.entry(self.upto).offset,
        }
    }

    /// The rebuilt file, from the cache or rebuilt now.
    fn data(&self) -> Result<Arc<Built<Rebuilt>>> {
        let key = self.key();
        // A failed replay is remembered (in `failures` too), never repeated.
        let db = self.cache.get_or_build(key, OnFailure::Remember, || {
            // Databases too large for a quarter of the cache stay on disk.
            let max_memory = self.cache.capacity() / 4;
            if let Some(r) = self.kept_blocks(max_memory) {
                let cost = r.cost();
                return Ok((r, cost));
            }
            let path = self.rebuild_file()?;
            // Once kept, the new version is served from its kept blocks like any other.
            let r = match self.kept_blocks(max_memory) {
                Some(r) => {
                    let _ = std::fs::remove_file(&path);
                    r
                }
                None => Rebuilt::take(path, max_memory)?,
            };
            let cost = r.cost();
            Ok((r, cost))
        })?;
        if let Some(r) = db.value() {
            let mut sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
            sizes.insert((key.owner, key.index), r.len());
        }
        Ok(db)
    }

    /// This version straight from its kept checkpoint: its kept blocks in memory (at most
    /// `limit` bytes) over the snapshot in the log. No scratch file, no replay.
    fn kept_blocks(&self, limit: u64) -> Option<Rebuilt> {
        let target = self.plan.entry(self.upto);
        if !self.log.kept.has(target) {
            return None;
        }
        let stamp = Stamp {
            entry: target,
            base: self.base_entry(),
        };
        let mut to = Target::Blocks {
            limit,
            index: Vec::new(),
            data: Vec::new(),
            len: 0,
        };
        match self.log.kept.restore(&stamp, &self.log.file, &mut to) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(m) => {
                ::log::warn!("a kept checkpoint is unusable and was removed: {m}");
                return None;
            }
        }
        let Target::Blocks {
            index, data, len, ..
        } = to
        else {
            return None;
        };
        let base = Arc::clone(&self.log.file);
        ::log::debug!(
            "{}: version {} copied from a kept checkpoint",
            self.log.path.display(),
            target.version
        );
        let base_entry = self.base_entry();
        Some(Rebuilt::Patched(Patched {
            base,
            base_path: self.log.path.clone(),
            base_offset: base_entry.map_or(0, Entry::payload_offset),
            base_len: base_entry.map_or(0, |b| u64::from(b.length)),
            block: kept::BLOCK,
            index,
            data,
            len,
        }))
    }

    fn corrupt(&self, e: &Entry, msg: String) -> Error {
        Error::corrupt(&self.log.path, e.offset, msg)
    }

    /// Rebuilds this version into a new scratch file: from the nearest checkpoint (or the
    /// snapshot, or an empty database), replaying the kept entries up to this version, and
    /// leaving checkpoints behind on the way. A failed rebuild leaves no file behind.
    fn rebuild_file(&self) -> Result<PathBuf> {
        ::log::debug!(
            "{}: rebuilding version {}",
            self.log.path.display(),
            self.plan.entry(self.upto).version
        );
        let out = self.work.file("db")?;
        self.rebuild_into(&out).inspect_err(|_| {
            let _ = std::fs::remove_file(&out);
        })?;
        Ok(out)
    }

    fn rebuild_into(&self, out: &Path) -> Result<()> {
        let plan = &self.plan;
        let owner = self.log.owner;
        let target = self.plan.entry(self.upto);
        if let Some(e) = known_failure(&self.failures, plan, owner, self.base, self.upto) {
            return Err(e.context(format!("version {} not served", target.version)));
        }
        let log_len = self
            .log
            .file
            .metadata()
            .map_err(|e| Error::io(&self.log.path, &e))?
            .len();
        let budget = self.sql.budget(log_len);
        let mapped = log::Mapped::new(&self.log.file, &self.log.path)?;
        let start = self.start_from(out)?;
        let first = start.map_or(0, |s| s + 1);
        if first > self.upto {
            ::log::debug!(
                "{}: version {} copied from a kept checkpoint",
                self.log.path.display(),
                target.version
            );
            return Ok(());
        }
        ::log::debug!(
            "{}: version {}: replaying {} entries",
            self.log.path.display(),
            target.version,
            self.upto + 1 - first
        );
        let mut r = Replayer::open(out, budget)
            .map_err(|m| self.corrupt(target, format!("version {}: {m}", target.version)))?;
        // Connection settings (foreign_keys) set by PRAGMA-only entries before a checkpoint
        // are not in the file: set them again.
        if start != self.base {
            for pos in self.base.map_or(0, |b| b + 1)..first {
                let e = plan.entry(pos);
                if e.kind == EntryKind::Transaction && !e.bump {
                    r.reapply_pragmas(mapped.payload(e)?)
                        .map_err(|m| self.corrupt(e, m))?;
                }
            }
        }
        self.replay(&mut r, &mapped, first, out)?;
        r.finish().map_err(|m| self.failed(target, m))?;
        // The version itself is kept too: opening it again, in this run or the next, is a copy.
        self.keep(self.upto, out);
        Ok(())
    }

    /// The snapshot the segment starts from, if any.
    fn base_entry(&self) -> Option<&Entry> {
        self.base.map(|b| self.plan.entry(b))
    }

    /// Keeps the state at plan position `pos`, now in `db`, unless it is kept already (or is the
    /// snapshot itself, which the log holds).
    fn keep(&self, pos: usize, db: &Path) {
        let e = self.plan.entry(pos);
        if Some(pos) == self.base || self.log.kept.has(e) {
            return;
        }
        let stamp = Stamp {
            entry: e,
            base: self.base_entry(),
        };
        self.log.kept.put(&stamp, &self.log.file, db);
    }

    /// Writes the state to replay from into `out`: the nearest kept checkpoint made from these
    /// same log bytes, else the segment's snapshot, else an empty database. Returns the plan
    /// position that state is at.
    fn start_from(&self, out: &Path) -> Result<Option<usize>> {
        let plan = &self.plan;
        let lo = self.base.map_or(0, |b| plan.entry(b).offset);
        let hi = plan.entry(self.upto).offset;
        let at =
            |off: u64, chain: u128| plan.position(off).filter(|&p| plan.entry(p).chain == chain);
        let kept = &self.log.kept;
        for off in kept.candidates(lo..=hi, |off, chain| at(off, chain).is_some()) {
            let Some(pos) = plan.position(off) else {
                continue;
            };
            let stamp = Stamp {
                entry: plan.entry(pos),
                base: self.base_entry(),
            };
            match kept.restore(&stamp, &self.log.file, &mut Target::File(out.to_path_buf())) {
                Ok(true) => return Ok(Some(pos)),
                Ok(false) => {}
                Err(m) => ::log::warn!("a kept checkpoint is unusable and was removed: {m}"),
            }
        }
        match self.base_entry() {
            Some(b) => {
                let mut w = File::create(out).map_err(|e| Error::io(out, &e))?;
                kept::copy_range(&self.log.file, b.payload_offset(), b.length.into(), &mut w)
                    .map_err(|e| {
                        Error::io(&self.log.path, &e)
                            .context(format!("entry at offset {}", b.offset))
                    })?;
            }
            None => std::fs::write(out, b"").map_err(|e| Error::io(out, &e))?,
        }
        Ok(self.base)
    }

    /// Replays the kept entries `first..=upto` into `out`, keeping checkpoints on the way.
    fn replay(
        &self,
        r: &mut Replayer,
        mapped: &log::Mapped,
        first: usize,
        out: &Path,
    ) -> Result<()> {
        let every = self.checkpoint_spacing(out);
        let seg_start = self.base.map_or(0, |b| b + 1);
        for pos in first..=self.upto {
            let e = self.plan.entry(pos);
            r.apply(mapped.payload(e)?, e.bump)
                .map_err(|m| self.failed(e, format!("replaying version {}: {m}", e.version)))?;
            let n = (pos - seg_start + 1) as u64;
            if e.bump && pos < self.upto && n.is_multiple_of(every) && !self.log.kept.has(e) {
                r.flush().map_err(|m| self.failed(e, m))?;
                self.keep(pos, out);
            }
        }
        Ok(())
    }

    /// The error of replaying entry `e`, remembered for every version replaying through it
    /// (unless restorefs is shutting down, which says nothing about the entry).
    fn failed(&self, e: &Entry, msg: String) -> Error {
        let err = self.corrupt(e, msg);
        if !self.sql.is_cancelled() {
            self.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((self.log.owner, e.offset), err.clone());
        }
        err
    }

    /// K, the versions between checkpoints: at least `CHECKPOINT_EVERY`, at least one
    /// checkpoint's copy worth of replay (`size / REPLAY_BYTES`), at most `MOST_CHECKPOINTS`
    /// along the segment, and sparse enough that they, were each as large as the database,
    /// fit the kept bound.
    fn checkpoint_spacing(&self, db: &Path) -> u64 {
        let size = std::fs::metadata(db).map_or(0, |m| m.len()).max(1);
        let versions = (self.upto - self.base.unwrap_or(0)) as u64 + 1;
        let fit = (self.log.kept.bound() / size).max(1);
        CHECKPOINT_EVERY
            .max(size / REPLAY_BYTES)
            .max(versions.div_ceil(fit))
            .max(versions.div_ceil(MOST_CHECKPOINTS))
    }
}

impl FileNode for DbFile {
    fn size(&self) -> Result<u64> {
        let key = self.key();
        let known = self
            .sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(key.owner, key.index))
            .copied();
        if let Some(s) = known {
            return Ok(s);
        }
        let db = self.data()?;
        Ok(db.value().map_or(0, Rebuilt::len))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let db = self.data()?;
        match db.value() {
            Some(r) => r.read_at(offset, buf),
            None => Err(Error::corrupt(&self.log.path, 0, "rebuild did not run")),
        }
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}
