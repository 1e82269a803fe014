//! What a scan of SOURCE found: the backup sets at their paths (and the folders it could not
//! read), and the tree they make for `mount`, `export` and `ls`.

use std::sync::Arc;

use crate::error::Error;
use crate::model::BackupSet;
use crate::timefmt::UserTime;
use crate::tree;
use crate::vfs::Node;

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

impl Catalog {
    /// The sets found (in any order) and the folders that could not be read.
    pub fn new(mut sets: Vec<SetEntry>, problems: Vec<Error>) -> Catalog {
        sets.sort_by(|a, b| a.path.cmp(&b.path));
        Catalog { sets, problems }
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
        tree::root(self.sets.iter().map(|s| (s.path.as_str(), &s.set)), as_of)
    }
}
