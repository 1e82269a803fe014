//! Walks SOURCE and asks the formats it is given, folder by folder, which backup sets are there.
//! Knows no format: the caller (the CLI, through `format::all`) chooses them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::ProgressBar;

use crate::catalog::{Catalog, SetEntry};
use crate::error::{Error, Result};
use crate::model::{BackupSet, DirInfo, Format, ScanContext};

/// Walks `source` and collects every backup set that one of `formats` recognises; earlier
/// formats claim files and folders first.
pub fn scan(
    source: &Path,
    formats: &[Box<dyn Format>],
    ctx: &ScanContext,
    progress: &ProgressBar,
) -> Result<Catalog> {
    let meta = std::fs::metadata(source).map_err(|e| Error::io(source, &e))?;
    if !meta.is_dir() {
        return Err(Error::usage(format!("{}: not a folder", source.display())));
    }
    let top_name = source
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "backup".to_owned());
    let (mut sets, mut problems) = (Vec::new(), Vec::new());
    let mut todo: Vec<(PathBuf, String)> = vec![(source.to_path_buf(), String::new())];
    while let Some((abs, rel)) = todo.pop() {
        progress.set_message(format!("scanning {}", abs.display()));
        let (files, dirs) = match list_dir(&abs) {
            Ok(l) => l,
            Err(e) => {
                log::warn!("{e}");
                problems.push(e);
                continue;
            }
        };
        let (found, dirs) = scan_folder(formats, ctx, &abs, files, dirs);
        for (sub, set) in found {
            let path = match join_rel(&rel, &sub) {
                p if p.is_empty() => top_name.clone(),
                p => p,
            };
            sets.push(SetEntry { path, set });
        }
        for d in dirs.iter().rev() {
            todo.push((abs.join(d), join_rel(&rel, d)));
        }
    }
    Ok(Catalog::new(sets, problems))
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
