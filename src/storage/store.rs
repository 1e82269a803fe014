//! SOURCE as a tree of folders and backup files that formats list, stat and open by path, so
//! that no format touches `std::fs` for backup files: a local folder ([`LocalStore`]) or a
//! bucket, whose keys are named `s3://bucket/key` in paths and errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::{Mappings, Source};
use crate::error::{Error, Result};

/// One regular file in a folder listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Name inside the folder.
    pub name: String,
    /// Length in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
}

/// What a folder holds: regular files and sub-folders, each sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Regular files (symlinks to files count as files).
    pub files: Vec<FileEntry>,
    /// Sub-folders (symlinked folders are not followed: they could loop).
    pub dirs: Vec<String>,
}

/// A tree of backup files: where SOURCE's folders are listed and its files opened.
pub trait Store: Send + Sync {
    /// The files and sub-folders of the folder `dir`, each sorted by name.
    fn list(&self, dir: &Path) -> Result<Listing>;
    /// The regular file at `path`, or `None` when there is none (or it is a folder).
    fn stat(&self, path: &Path) -> Result<Option<FileEntry>>;
    /// Whether `path` is a folder with something in it (a bucket prefix) or an existing folder.
    fn is_dir(&self, path: &Path) -> Result<bool>;
    /// Opens the backup file at `path` for range reads.
    fn open(&self, path: &Path) -> Result<Arc<Source>>;
    /// A local file with the bytes of `path`, for readers that need one (SQLite replay of a
    /// Lightning log): the file itself on a local store; on a remote one a copy fetched once
    /// into `scratch` (restorefs' own folder, never SOURCE).
    fn local_copy(&self, path: &Path, scratch: &Path) -> Result<PathBuf>;
    /// Whether paths are local paths (files can grow while mounted, symlinks exist).
    fn is_local(&self) -> bool;
}

/// The whole of a small file (metadata, manifests), refused when longer than `limit` bytes:
/// backup files are hostile and a "small" file could be made huge.
pub fn read_small(store: &dyn Store, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let source = store.open(path)?;
    if source.len() > limit {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "{} bytes, more than the {limit} this file may hold",
                source.len()
            ),
        ));
    }
    let mut buf = vec![0u8; source.len() as usize];
    source.read_exact_at(0, &mut buf, "the whole file")?;
    Ok(buf)
}

/// SOURCE as a local folder: files are memory-mapped, counted in one run's [`Mappings`].
#[derive(Default)]
pub struct LocalStore {
    mappings: Arc<Mappings>,
}

impl LocalStore {
    /// A local store whose mapped files are counted in `mappings`.
    pub fn new(mappings: Arc<Mappings>) -> LocalStore {
        LocalStore { mappings }
    }

    /// The mapped files of this run.
    pub fn mappings(&self) -> &Arc<Mappings> {
        &self.mappings
    }
}

impl Store for LocalStore {
    fn list(&self, dir: &Path) -> Result<Listing> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, &e))?;
        let mut listing = Listing::default();
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
                listing.dirs.push(name);
            } else if ft.is_file() || ft.is_symlink() {
                // Followed for files only; a symlinked folder or a dangling link is skipped.
                match std::fs::metadata(entry.path()) {
                    Ok(md) if md.is_file() => listing.files.push(FileEntry {
                        name,
                        size: md.len(),
                        modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    }),
                    _ => {}
                }
            }
        }
        listing.files.sort_by(|a, b| a.name.cmp(&b.name));
        listing.dirs.sort();
        Ok(listing)
    }

    fn stat(&self, path: &Path) -> Result<Option<FileEntry>> {
        match std::fs::metadata(path) {
            Ok(md) if md.is_file() => Ok(Some(FileEntry {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                size: md.len(),
                modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, &e)),
        }
    }

    fn is_dir(&self, path: &Path) -> Result<bool> {
        match std::fs::metadata(path) {
            Ok(md) => Ok(md.is_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(path, &e)),
        }
    }

    fn open(&self, path: &Path) -> Result<Arc<Source>> {
        Source::open(path, &self.mappings)
    }

    fn local_copy(&self, path: &Path, _scratch: &Path) -> Result<PathBuf> {
        Ok(path.to_path_buf())
    }

    fn is_local(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_listing_follows_file_links_but_not_folder_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("b"), b"12345").unwrap();
        std::fs::create_dir(d.join("a")).unwrap();
        std::os::unix::fs::symlink(d.join("b"), d.join("c")).unwrap();
        std::os::unix::fs::symlink(d.join("a"), d.join("d")).unwrap();
        std::os::unix::fs::symlink(d.join("gone"), d.join("e")).unwrap();
        let store = LocalStore::default();
        let l = store.list(d).unwrap();
        let names: Vec<_> = l.files.iter().map(|f| (f.name.as_str(), f.size)).collect();
        assert_eq!(names, [("b", 5), ("c", 5)]);
        assert_eq!(l.dirs, ["a"]);
        assert_eq!(store.stat(&d.join("b")).unwrap().unwrap().size, 5);
        assert!(store.stat(&d.join("a")).unwrap().is_none());
        assert!(store.stat(&d.join("gone")).unwrap().is_none());
        assert!(store.is_dir(&d.join("a")).unwrap());
        assert!(!store.is_dir(&d.join("b")).unwrap());
        let big = read_small(&store, &d.join("b"), 4).unwrap_err().to_string();
        assert!(big.contains("more than the 4"), "{big}");
        assert_eq!(read_small(&store, &d.join("b"), 5).unwrap(), b"12345");
    }
}
