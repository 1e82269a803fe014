//! Walks SOURCE and asks the formats it is given, folder by folder, which backup sets are there.
//! Knows no format: the caller (the CLI, through `format::all`) chooses them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use indicatif::ProgressBar;

use crate::catalog::{Catalog, SetEntry};
use crate::error::{Error, Result};
use crate::model::{BackupSet, DirInfo, Format, ScanContext};
use crate::tree::{Folders, Level};

/// Walks `source` and collects every backup set that one of `formats` recognises; earlier
/// formats claim files and folders first.
pub fn scan(
    source: &Path,
    formats: &[Box<dyn Format>],
    ctx: &ScanContext,
    progress: &ProgressBar,
) -> Result<Catalog> {
    let top_name = top_name(ctx, source)?;
    progress.set_message(format!("scanning {}", source.display()));
    let top = scan_level(formats, ctx, source, "", &top_name);
    Ok(walk(formats, ctx, source, &top_name, top, progress))
}

/// The catalog of SOURCE, whose own folder scanned to `top`: every folder below is scanned.
fn walk(
    formats: &[Box<dyn Format>],
    ctx: &ScanContext,
    source: &Path,
    top_name: &str,
    top: Level,
    progress: &ProgressBar,
) -> Catalog {
    let (mut sets, mut problems) = (Vec::new(), Vec::new());
    let mut todo: Vec<(PathBuf, String)> = Vec::new();
    let mut next = Some(top);
    let mut here = (source.to_path_buf(), String::new());
    while let Some(level) = next.take() {
        let (abs, rel) = &here;
        sets.extend(
            level
                .sets
                .into_iter()
                .map(|(path, set)| SetEntry { path, set }),
        );
        problems.extend(level.problem);
        for d in level.dirs.iter().rev() {
            todo.push((abs.join(d), join_rel(rel, d)));
        }
        if let Some((abs, rel)) = todo.pop() {
            progress.set_message(format!("scanning {}", abs.display()));
            next = Some(scan_level(formats, ctx, &abs, &rel, top_name));
            here = (abs, rel);
        }
    }
    Catalog::new(sets, problems)
}

/// SOURCE's folder name (the path of a set found in SOURCE itself); fails if SOURCE is not a
/// folder. A local SOURCE is resolved first (`.` has a name then); a bucket's is its last part.
fn top_name(ctx: &ScanContext, source: &Path) -> Result<String> {
    let store = &ctx.io.store;
    if !store.is_dir(source)? {
        return Err(Error::usage(format!("{}: not a folder", source.display())));
    }
    let resolved = if store.is_local() {
        source.canonicalize().ok()
    } else {
        Some(source.to_path_buf())
    };
    Ok(resolved
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "backup".to_owned()))
}

/// The folder `abs` (at `rel` under SOURCE) scanned alone: its sets, at paths relative to
/// SOURCE, and the sub-folders none of `formats` claimed.
fn scan_level(
    formats: &[Box<dyn Format>],
    ctx: &ScanContext,
    abs: &Path,
    rel: &str,
    top_name: &str,
) -> Level {
    let (files, dirs) = match ctx.io.store.list(abs) {
        Ok(l) => (l.files.into_iter().map(|f| f.name).collect(), l.dirs),
        Err(e) => {
            log::warn!("{e}");
            return Level {
                problem: Some(e),
                ..Level::default()
            };
        }
    };
    let (found, dirs) = scan_folder(formats, ctx, abs, files, dirs);
    let sets = found
        .into_iter()
        .map(|(sub, set)| {
            let path = match join_rel(rel, &sub) {
                p if p.is_empty() => top_name.to_owned(),
                p => p,
            };
            (path, set)
        })
        .collect();
    Level {
        sets,
        dirs,
        problem: None,
    }
}

/// SOURCEs with more sub-folders than this are scanned a folder at a time, when first used.
pub const LAZY_FROM: usize = 64;

/// Like [`scan`], but when SOURCE holds more than [`LAZY_FROM`] folders, only SOURCE itself is
/// scanned now; each folder below is scanned when the tree first looks it up or lists it (and
/// [`Catalog::sets`] scans them all).
pub fn scan_lazily(
    source: &Path,
    formats: Vec<Box<dyn Format>>,
    ctx: &ScanContext,
    progress: &ProgressBar,
) -> Result<Catalog> {
    let top_name = top_name(ctx, source)?;
    let top = scan_level(&formats, ctx, source, "", &top_name);
    if top.dirs.len() <= LAZY_FROM {
        return Ok(walk(&formats, ctx, source, &top_name, top, progress));
    }
    let lazy = LazySource {
        source: source.to_path_buf(),
        top_name,
        formats,
        ctx: ctx.clone(),
        levels: Mutex::new(HashMap::from([(
            String::new(),
            Arc::new(OnceLock::from(Arc::new(top))),
        )])),
    };
    Ok(Catalog::lazy(Arc::new(lazy)))
}

/// SOURCE scanned a folder at a time.
struct LazySource {
    source: PathBuf,
    top_name: String,
    formats: Vec<Box<dyn Format>>,
    ctx: ScanContext,
    /// Every folder scanned or being scanned, by path relative to SOURCE.
    levels: Mutex<HashMap<String, Arc<OnceLock<Arc<Level>>>>>,
}

impl Folders for LazySource {
    fn level(&self, rel: &str) -> Arc<Level> {
        let cell = {
            let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(levels.entry(rel.to_owned()).or_default())
        };
        // Scanned outside the lock: other folders are scanned meanwhile, this one once.
        let level = cell.get_or_init(|| {
            log::debug!("scanning {rel:?} on first use");
            let abs = self.source.join(rel);
            Arc::new(scan_level(
                &self.formats,
                &self.ctx,
                &abs,
                rel,
                &self.top_name,
            ))
        });
        Arc::clone(level)
    }
}

/// The sets `formats` find in the folder `abs` (at paths relative to it), and the sub-folders
/// none of them claimed, to walk next.
fn scan_folder(
    formats: &[Box<dyn Format>],
    ctx: &ScanContext,
    abs: &Path,
    mut files: Vec<String>,
    mut dirs: Vec<String>,
) -> (Vec<SetFound>, Vec<String>) {
    let mut sets = Vec::new();
    for f in formats {
        let dir = DirInfo {
            path: abs,
            files: &files,
            dirs: &dirs,
        };
        let found = f.scan_dir(&dir, ctx);
        sets.extend(found.sets);
        files.retain(|n| !found.claimed_files.contains(n));
        dirs.retain(|n| !found.claimed_dirs.contains(n));
    }
    (sets, dirs)
}

/// A set at a path relative to the folder it was found in.
type SetFound = (String, Arc<dyn BackupSet>);

fn join_rel(rel: &str, name: &str) -> String {
    match (rel.is_empty(), name.is_empty()) {
        (_, true) => rel.to_owned(),
        (true, false) => name.to_owned(),
        (false, false) => format!("{rel}/{name}"),
    }
}
