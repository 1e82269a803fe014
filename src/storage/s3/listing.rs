//! A bucket's folders: each listed once, one level deep (a delimiter listing, its pages
//! followed), and kept with each object's metadata, so that opening a listed object needs no
//! HEAD. Concurrent first lookups of one folder share one listing; a failed one is tried again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use object_store::{ListResult, ObjectMeta};

use crate::error::Result;
use crate::storage::{FileEntry, Listing};

/// One folder as listed: what `Store::list` answers, and each object's metadata by name.
pub struct Dir {
    /// Files and sub-folders, sorted.
    pub listing: Listing,
    /// The listed objects by name.
    pub objects: HashMap<String, ObjectMeta>,
}

impl Dir {
    /// The folder `prefix` from its delimiter listing `listed`.
    pub fn new(listed: ListResult, prefix: &str) -> Dir {
        let mut dir = Dir {
            listing: Listing::default(),
            objects: HashMap::new(),
        };
        for p in &listed.common_prefixes {
            if let Some(name) = p.filename().filter(|n| servable(prefix, n)) {
                dir.listing.dirs.push(name.to_owned());
            }
        }
        for meta in listed.objects {
            let Some(name) = meta.location.filename().map(str::to_owned) else {
                continue;
            };
            // A folder marker (`prefix/`) is the folder itself, not a file in it.
            if meta.location.as_ref() == prefix || name.is_empty() || !servable(prefix, &name) {
                continue;
            }
            dir.listing.files.push(FileEntry {
                name: name.clone(),
                size: meta.size,
                modified: SystemTime::from(meta.last_modified),
            });
            dir.objects.insert(name, meta);
        }
        dir.listing.files.sort_by(|a, b| a.name.cmp(&b.name));
        dir.listing.dirs.sort();
        dir
    }
}

/// Whether a key's `name` under `prefix` can be one path component of the tree; keys may be
/// 1,024 bytes, but one name past the kernel's 255 would fail the listing of its whole folder.
fn servable(prefix: &str, name: &str) -> bool {
    let ok = crate::vfs::is_guest_name(name);
    if !ok {
        log::warn!("s3 prefix {prefix:?}: skipping {name:?}, not a name a folder can hold");
    }
    ok
}

type Cell = Arc<OnceLock<Result<Arc<Dir>>>>;

/// The folders listed so far, by key prefix.
#[derive(Default)]
pub struct Listings {
    dirs: Mutex<HashMap<String, Cell>>,
}

impl Listings {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Cell>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The folder `prefix`, listed by `list` on its first lookup (other lookups wait for it).
    pub fn get(&self, prefix: &str, list: impl FnOnce() -> Result<Dir>) -> Result<Arc<Dir>> {
        let cell = Arc::clone(self.lock().entry(prefix.to_owned()).or_default());
        let got = cell.get_or_init(|| list().map(Arc::new)).clone();
        if got.is_err() {
            let mut dirs = self.lock();
            if dirs.get(prefix).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                dirs.remove(prefix);
            }
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn a_folder_is_listed_once_and_a_failed_listing_again() {
        let l = Listings::default();
        let empty = || {
            Ok(Dir {
                listing: Listing::default(),
                objects: HashMap::new(),
            })
        };
        let mut calls = 0;
        let fail = |calls: &mut i32| {
            *calls += 1;
            Err(Error::not_found("down"))
        };
        assert!(l.get("a", || fail(&mut calls)).is_err());
        assert!(l.get("a", empty).is_ok());
        assert!(l.get("a", || fail(&mut calls)).is_ok(), "kept");
        assert_eq!(calls, 1);
        let n = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    l.get("b", || {
                        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        empty()
                    })
                    .unwrap();
                });
            }
        });
        assert_eq!(n.into_inner(), 1);
    }

    #[test]
    fn names_no_folder_can_hold_are_left_out() {
        let long = "n".repeat(256);
        let path = |k: &str| object_store::path::Path::from(k);
        let meta = |k: &str| ObjectMeta {
            location: path(k),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            size: 1,
            e_tag: None,
            version: None,
        };
        let listed = ListResult {
            common_prefixes: vec![path(&format!("p/{long}")), path("p/set")],
            objects: vec![meta("p"), meta(&format!("p/{long}.data")), meta("p/a.data")],
            extensions: Default::default(),
        };
        let dir = Dir::new(listed, "p");
        assert_eq!(dir.listing.dirs, ["set"]);
        let files: Vec<_> = dir.listing.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, ["a.data"]);
    }
}
