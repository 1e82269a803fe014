//! What a scan of SOURCE found: the backup sets at their paths (and the folders it could not
//! read), and the tree they make for `mount`, `export` and `ls`.

use std::sync::{Arc, OnceLock};

use crate::error::Error;
use crate::model::BackupSet;
use crate::timefmt::UserTime;
use crate::tree::{self, Folders};
use crate::vfs::Node;

/// A set and where it was found.
pub struct SetEntry {
    /// Path relative to SOURCE, `/`-separated: the set's folder in the mount.
    pub path: String,
    /// The set.
    pub set: Arc<dyn BackupSet>,
}

/// The sets, sorted by path, and the folders that could not be read.
type Found = (Vec<SetEntry>, Vec<Error>);

/// Everything found under SOURCE: found already, or found folder by folder when first needed.
pub struct Catalog {
    found: OnceLock<Found>,
    lazy: Option<Arc<dyn Folders>>,
}

impl Catalog {
    /// The sets found (in any order) and the folders that could not be read.
    pub fn new(mut sets: Vec<SetEntry>, problems: Vec<Error>) -> Catalog {
        sets.sort_by(|a, b| a.path.cmp(&b.path));
        Catalog {
            found: OnceLock::from((sets, problems)),
            lazy: None,
        }
    }

    /// A catalog whose folders are scanned when first used.
    pub fn lazy(folders: Arc<dyn Folders>) -> Catalog {
        Catalog {
            found: OnceLock::new(),
            lazy: Some(folders),
        }
    }

    fn found(&self) -> &Found {
        self.found.get_or_init(|| {
            let (mut sets, mut problems) = (Vec::new(), Vec::new());
            if let Some(f) = &self.lazy {
                tree::all_sets(f.as_ref(), "", &mut sets, &mut problems);
            }
            let mut sets: Vec<SetEntry> = sets
                .into_iter()
                .map(|(path, set)| SetEntry { path, set })
                .collect();
            sets.sort_by(|a, b| a.path.cmp(&b.path));
            (sets, problems)
        })
    }

    /// Whether every folder was scanned already (counting the sets costs nothing then).
    pub fn is_scanned(&self) -> bool {
        self.found.get().is_some()
    }

    /// Whether no set was found; a lazy catalog scans only until it finds one.
    pub fn is_empty(&self) -> bool {
        match (&self.lazy, self.found.get()) {
            (Some(f), None) => !tree::has_sets(f.as_ref(), ""),
            _ => self.sets().is_empty(),
        }
    }

    /// The sets, sorted by path (a lazy catalog scans every folder first).
    pub fn sets(&self) -> &[SetEntry] {
        &self.found().0
    }

    /// Folders that could not be read while scanning (a lazy catalog scans every folder first).
    pub fn problems(&self) -> &[Error] {
        &self.found().1
    }

    /// The mount tree: set folders at their paths, points inside, hiding points after `as_of`.
    pub fn tree(&self, as_of: Option<UserTime>) -> Node {
        match (&self.lazy, self.found.get()) {
            (Some(f), None) => tree::lazy_root(Arc::clone(f), as_of),
            _ => tree::root(self.sets().iter().map(|s| (s.path.as_str(), &s.set)), as_of),
        }
    }
}
