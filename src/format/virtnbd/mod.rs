//! virtnbdbackup: a folder of sparse streams (`*.data`) is a backup set; every backup run is a
//! restore point exposing one raw image per disk (spec: `virtnbdbackup-stream.md`).

mod chain;
mod frame;
mod meta;
mod stream;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{FixedOffset, NaiveDateTime};
use indicatif::ProgressBar;
use serde_json::{Map, json};

use crate::error::{Error, Result};
use crate::image::{ImageFile, Layer};
use crate::inside::DiskDir;
use crate::model::{
    self, BackupSet, Check, DirInfo, Exposed, Format, Found, Point, PointList, ScanContext,
};
use crate::storage::Store;
use crate::timefmt;
use crate::vfs::{self, Attr, BytesFile, ErrorFile, Node};

pub use chain::{BackupLevel, parse_name};
pub use stream::Stream;

/// The format's name, as `ls` and `info.json` show it.
pub const NAME: &str = "virtnbdbackup";

/// The virtnbdbackup format.
pub struct Virtnbd;

impl Format for Virtnbd {
    fn name(&self) -> &'static str {
        NAME
    }

    fn scan_dir(&self, dir: &DirInfo<'_>, opts: &ScanContext) -> Found {
        let streams: Vec<&String> = dir
            .files
            .iter()
            .filter(|f| parse_name(f).is_some())
            .collect();
        if streams.is_empty() {
            return Found::default();
        }
        let set = VirtnbdSet::open(dir.path, dir.files, opts);
        Found {
            sets: vec![(String::new(), Arc::new(set) as Arc<dyn BackupSet>)],
            claimed_files: dir.files.iter().filter(|f| is_ours(f)).cloned().collect(),
            claimed_dirs: vec!["checkpoints".into()],
        }
    }
}

/// Files virtnbdbackup writes next to its streams.
fn is_ours(name: &str) -> bool {
    name.ends_with(".data")
        || name.ends_with(".data.partial")
        || name.ends_with(".data.chksum")
        || name.ends_with(".cpt")
        || name.ends_with(".qcow.json")
        || (name.starts_with("vmconfig.") && name.ends_with(".xml"))
        || (name.starts_with("backup.") && name.ends_with(".log"))
}

/// One virtnbdbackup folder.
pub struct VirtnbdSet {
    points: Arc<Vec<Arc<Point>>>,
    /// Every stream file, indexed or failed, by file name.
    streams: Vec<(String, Result<Arc<Stream>>)>,
    /// Per point: the stream indices it reads, and errors found while resolving it.
    uses: Vec<(String, Vec<usize>, Vec<Error>)>,
    /// The backup host's UTC offset, when checkpoints tell it.
    zone: Option<FixedOffset>,
}

impl VirtnbdSet {
    /// Indexes every stream in `dir` and resolves its restore points.
    pub fn open(dir: &Path, files: &[String], opts: &ScanContext) -> VirtnbdSet {
        let mut infos = Vec::new();
        let mut streams = Vec::new();
        for name in files {
            let Some((disk, level)) = parse_name(name) else {
                continue;
            };
            let opened = Stream::open(&dir.join(name), opts.index.as_ref(), &opts.io).map(Arc::new);
            let header = opened.as_ref().map(|s| header_of(s)).map_err(Clone::clone);
            infos.push(chain::FileInfo {
                name: name.clone(),
                disk,
                level,
                header,
            });
            streams.push((name.clone(), opened));
        }
        let store = opts.io.store.as_ref();
        let checkpoints = chain::Checkpoints::load(store, dir, files);
        let resolver = chain::Resolver::new(dir, &infos, &checkpoints);

        // Files of one backup run form one point.
        let mut runs: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, f) in infos.iter().enumerate() {
            runs.entry(f.level.run_key()).or_default().push(i);
        }
        let folder = Folder {
            dir,
            files,
            infos: &infos,
            streams: &streams,
            resolver: &resolver,
            opts,
        };
        let mut built: Vec<(Point, Vec<usize>, Vec<Error>)> = runs
            .values()
            .map(|members| folder.build_point(members))
            .collect();
        built.sort_by(|a, b| (a.0.time, &a.0.name).cmp(&(b.0.time, &b.0.name)));
        let mut taken = HashSet::new();
        let mut points = Vec::new();
        let mut uses = Vec::new();
        for (mut p, used, errs) in built {
            p.name = model::unique_name(std::mem::take(&mut p.name), &mut taken);
            uses.push((p.name.clone(), used, errs));
            points.push(Arc::new(p));
        }
        let zone = host_zone(&points, &checkpoints);
        VirtnbdSet {
            points: Arc::new(points),
            streams,
            uses,
            zone,
        }
    }
}

fn header_of(s: &Stream) -> chain::StreamHeader {
    match s.meta() {
        None => chain::StreamHeader {
            raw: true,
            incremental: false,
            checkpoint: None,
            parent: None,
            date: None,
        },
        Some(m) => chain::StreamHeader {
            raw: false,
            incremental: m.incremental,
            checkpoint: m.checkpoint.clone(),
            parent: m.parent.clone(),
            date: m.date,
        },
    }
}

/// What every point of one folder is built from.
struct Folder<'a> {
    dir: &'a Path,
    files: &'a [String],
    infos: &'a [chain::FileInfo],
    streams: &'a [(String, Result<Arc<Stream>>)],
    resolver: &'a chain::Resolver<'a>,
    opts: &'a ScanContext,
}

/// The disk images of one point as they are built: exposed files, the streams they read and
/// the errors met.
#[derive(Default)]
struct Disks {
    exposed: Vec<Exposed>,
    used: Vec<usize>,
    errors: Vec<Error>,
}

/// What a run is: `full` when a full backup (or only base streams) is among its files.
fn run_kind(
    infos: &[chain::FileInfo],
    members: &[usize],
    headers: &[&chain::StreamHeader],
) -> &'static str {
    let any_base = headers.iter().any(|h| !h.incremental);
    match &infos[members[0]].level {
        BackupLevel::Full | BackupLevel::Copy
            if members.iter().any(|&i| infos[i].level == BackupLevel::Full) =>
        {
            "full"
        }
        BackupLevel::Full | BackupLevel::Copy => "copy",
        BackupLevel::Inc(_) | BackupLevel::Diff(_)
            if any_base && headers.iter().all(|h| !h.incremental) =>
        {
            "full"
        }
        BackupLevel::Inc(_) => "inc",
        BackupLevel::Diff(_) => "diff",
    }
}

/// A point's ids: the checkpoint its stream meta names, and that checkpoint's parent.
fn checkpoint_ids(stream_header: Option<&chain::StreamHeader>) -> Map<String, serde_json::Value> {
    let mut ids = Map::new();
    ids.insert(
        "checkpoint".into(),
        json!(stream_header.and_then(|h| h.checkpoint.clone())),
    );
    ids.insert(
        "parent_checkpoint".into(),
        json!(stream_header.and_then(|h| h.parent.clone())),
    );
    ids
}

impl Folder<'_> {
    /// Where the folder's files are read from.
    fn store(&self) -> &dyn Store {
        self.opts.io.store.as_ref()
    }

    /// The point of one backup run (`members`: its files, one per disk).
    fn build_point(&self, members: &[usize]) -> (Point, Vec<usize>, Vec<Error>) {
        let infos = self.infos;
        let headers: Vec<&chain::StreamHeader> = members
            .iter()
            .filter_map(|&i| infos[i].header.as_ref().ok())
            .collect();
        let kind = run_kind(infos, members, &headers);
        let mut warnings = Vec::new();
        let time = run_time(
            self.store(),
            self.dir,
            self.files,
            infos,
            members,
            kind,
            &mut warnings,
        );
        let stream_header = headers.iter().find(|h| !h.raw).copied();
        let ids = checkpoint_ids(stream_header);
        let mtime = time
            .as_ref()
            .map_or(std::time::UNIX_EPOCH, timefmt::to_system_time);
        let attr = Attr::read_only(false, mtime);
        let mut disks = Disks::default();
        let mut by_disk: Vec<usize> = members.to_vec();
        by_disk.sort_by(|&a, &b| infos[a].disk.cmp(&infos[b].disk));
        let name = format!(
            "{}_{kind}",
            time.as_ref()
                .map_or_else(|| "unknown-time".to_owned(), timefmt::to_name)
        );
        for &m in &by_disk {
            self.expose_disk(m, &name, attr, &mut disks, &mut warnings);
        }
        let Disks {
            mut exposed,
            mut used,
            errors,
        } = disks;
        let all_failed = !exposed.is_empty() && exposed.iter().all(|e| e.error.is_some());
        let content = if let (true, Some(first)) = (all_failed, errors.first()) {
            Err(first.clone())
        } else {
            if let Some(xml) = vmconfig(self.store(), self.dir, infos, members, stream_header) {
                exposed.push(Exposed {
                    path: "vmconfig.xml".into(),
                    size: Some(xml.1.len() as u64),
                    node: Node::File(BytesFile::new(xml.1, attr)),
                    sources: vec![xml.0],
                    error: None,
                });
            }
            Ok(exposed)
        };
        used.sort_unstable();
        used.dedup();
        (
            Point::new(name, time, kind, ids, content, warnings),
            used,
            errors,
        )
    }

    /// Adds the image of stream `m`'s disk to `disks` (a failing file when its chain does not
    /// resolve), with its folder of partitions and files (`inside::DiskDir`), named in errors
    /// by the set's folder, `point` and the image; disks whose name is not a usable file name
    /// are left out with a warning.
    fn expose_disk(
        &self,
        m: usize,
        point: &str,
        attr: Attr,
        disks: &mut Disks,
        warnings: &mut Vec<String>,
    ) {
        let info = &self.infos[m];
        let file_name = format!("{}.raw", info.disk);
        if !vfs::is_safe_name(&info.disk) || !vfs::is_safe_name(&file_name) {
            warnings.push(format!(
                "{}: disk name not usable as a file name, not exposed",
                info.name
            ));
            return;
        }
        if let Ok(s) = &self.streams[m].1
            && let Some(meta_name) = s.meta().and_then(|m| m.disk_name.as_deref())
            && meta_name != info.disk
        {
            warnings.push(format!(
                "{}: meta names disk {meta_name:?}, the file name says {:?}; using the file name",
                info.name, info.disk
            ));
        }
        let resolved = self.resolver.resolve(m);
        warnings.extend(resolved.warnings);
        let size = self.streams[m].1.as_ref().map_or(0, |s| s.virtual_size());
        match resolved
            .sequence
            .and_then(|seq| self.layers(&seq).map(|layers| (seq, layers)))
        {
            Ok((seq, layers)) => {
                disks.used.extend(&seq);
                let image = ImageFile::new(size, layers, Arc::clone(&self.opts.cache), attr);
                let image: Arc<dyn vfs::FileNode> = Arc::new(image);
                let sources: Vec<String> =
                    seq.iter().map(|&i| self.infos[i].name.clone()).collect();
                let what = format!("{}/{point}/{file_name}", self.dir.display());
                let dir_attr = Attr::read_only(true, attr.mtime);
                disks.exposed.push(Exposed {
                    path: info.disk.clone(),
                    node: Node::Dir(DiskDir::new(Arc::clone(&image), what, dir_attr)),
                    size: None,
                    sources: sources.clone(),
                    error: None,
                });
                disks.exposed.push(Exposed {
                    path: file_name,
                    node: Node::File(image),
                    size: Some(size),
                    sources,
                    error: None,
                });
            }
            Err(e) => {
                log::warn!("{e}");
                disks.errors.push(e.clone());
                disks.exposed.push(Exposed {
                    path: file_name,
                    node: Node::File(ErrorFile::new(size, e.clone(), attr)),
                    size: Some(size),
                    sources: vec![info.name.clone()],
                    error: Some(e),
                });
            }
        }
    }

    /// The open streams of a resolved sequence, as image layers.
    fn layers(&self, seq: &[usize]) -> Result<Vec<Arc<dyn Layer>>> {
        // A resolved sequence holds only files whose header was read, so all are open.
        seq.iter()
            .map(|&i| match &self.streams[i].1 {
                Ok(s) => Ok(Arc::clone(s) as Arc<dyn Layer>),
                Err(e) => Err(e.clone()),
            })
            .collect()
    }
}

/// When a run happened: the earliest meta date of its streams; for runs of raw images only, the
/// time in its `backup.<level>.<MMDDYYYYHHMMSS>.log` name, or the diff's Unix time.
fn run_time(
    store: &dyn Store,
    dir: &Path,
    files: &[String],
    infos: &[chain::FileInfo],
    members: &[usize],
    kind: &str,
    warnings: &mut Vec<String>,
) -> Option<NaiveDateTime> {
    let dated = members
        .iter()
        .filter_map(|&i| infos[i].header.as_ref().ok().and_then(|h| h.date))
        .min();
    if dated.is_some() {
        return dated;
    }
    if let BackupLevel::Diff(id) = &infos[members[0]].level
        && let Some(t) = id.parse().ok().and_then(timefmt::from_unix)
    {
        return Some(t);
    }
    let from_log = files
        .iter()
        .filter_map(|f| {
            let rest = f.strip_prefix("backup.")?.strip_suffix(".log")?;
            let (level, stamp) = rest.split_once('.')?;
            let fits = level == kind || (matches!(kind, "full" | "copy") && level == "auto");
            fits.then(|| NaiveDateTime::parse_from_str(stamp, "%m%d%Y%H%M%S").ok())?
        })
        .min();
    if from_log.is_some() {
        return from_log;
    }
    let mtime = store
        .stat(&dir.join(&infos[members[0]].name))
        .ok()??
        .modified;
    warnings.push(
        "no date in the backup files or logs: the point is named after the file's mtime".into(),
    );
    let secs = mtime.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    timefmt::from_unix(secs as i64)
}

/// `vmconfig.<ident>.xml` of a run, with its name: a full run's ident is its checkpoint, a
/// copy run's is `copy`, the others' are in their file names.
fn vmconfig(
    store: &dyn Store,
    dir: &Path,
    infos: &[chain::FileInfo],
    members: &[usize],
    header: Option<&chain::StreamHeader>,
) -> Option<(String, Vec<u8>)> {
    let full = members.iter().any(|&m| infos[m].level == BackupLevel::Full);
    let ident = match &infos[members[0]].level {
        BackupLevel::Full | BackupLevel::Copy if full => header?.checkpoint.clone()?,
        BackupLevel::Full | BackupLevel::Copy => "copy".into(),
        BackupLevel::Inc(x) | BackupLevel::Diff(x) => x.clone(),
    };
    let name = format!("vmconfig.{ident}.xml");
    // The ident may come from a meta header: it must name a file of this folder, nothing else.
    if !vfs::is_safe_name(&name) {
        return None;
    }
    let data = chain::read_small(store, &dir.join(&name))?;
    Some((name, data))
}

/// The backup host's UTC offset: a point's meta date (its wall-clock time) minus its
/// checkpoint's creation instant, rounded to a quarter hour (the two are seconds apart). Only
/// when every point that has both agrees.
fn host_zone(points: &[Arc<Point>], checkpoints: &chain::Checkpoints) -> Option<FixedOffset> {
    let mut offsets = points.iter().filter_map(|p| {
        let created = checkpoints.created(p.ids.get("checkpoint")?.as_str()?)?;
        let wall = p.time?.and_utc().timestamp();
        let quarter = 15 * 60;
        let off = (wall.checked_sub(created)? as f64 / quarter as f64).round() as i64 * quarter;
        i32::try_from(off).ok()
    });
    let first = offsets.next()?;
    offsets
        .all(|o| o == first)
        .then(|| FixedOffset::east_opt(first))
        .flatten()
}

impl BackupSet for VirtnbdSet {
    fn format(&self) -> &'static str {
        NAME
    }

    fn zone(&self) -> Option<FixedOffset> {
        self.zone
    }

    fn points(&self) -> Arc<dyn PointList> {
        Arc::clone(&self.points) as Arc<dyn PointList>
    }

    fn verify(&self, progress: &ProgressBar) -> Vec<Check> {
        let needed: HashSet<usize> = self.uses.iter().flat_map(|u| u.1.iter().copied()).collect();
        let mut results: Vec<Option<Error>> = vec![None; self.streams.len()];
        for (i, (name, s)) in self.streams.iter().enumerate() {
            progress.set_message(name.clone());
            results[i] = match s {
                Err(e) => Some(e.clone()),
                Ok(s) if needed.contains(&i) => s.verify(progress).err(),
                Ok(_) => None,
            };
        }
        self.uses
            .iter()
            .map(|(point, used, errs)| {
                let mut problems = errs.clone();
                problems.extend(used.iter().filter_map(|&i| results[i].clone()));
                problems.dedup_by(|a, b| a.to_string() == b.to_string());
                Check {
                    point: point.clone(),
                    problems,
                }
            })
            .collect()
    }

    fn verify_size(&self) -> u64 {
        self.streams
            .iter()
            .filter_map(|(_, s)| s.as_ref().ok())
            .map(|s| s.verify_cost())
            .sum()
    }
}
