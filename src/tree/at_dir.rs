//! `at/`: lists nothing; looking up a time gives a symlink to the newest point at or before it.

use std::sync::Arc;

use chrono::FixedOffset;

use crate::error::Result;
use crate::model::PointList;
use crate::timefmt;
use crate::vfs::{Attr, Directory, Node};

use super::{newest_at, symlink};

/// A set's `at/` folder over the first `n` points of `list` (those visible).
pub(super) struct AtDir {
    pub(super) list: Arc<dyn PointList>,
    pub(super) n: usize,
    /// The set's zone, for times typed with a zone.
    pub(super) zone: Option<FixedOffset>,
    pub(super) attr: Attr,
    pub(super) live: bool,
}

impl Directory for AtDir {
    fn entries(&self) -> Result<Vec<(String, Node)>> {
        Ok(Vec::new())
    }

    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        // A miss is a bare ENOENT to the user: the log says why.
        let t = match timefmt::parse_user(name) {
            Ok(t) => t.in_zone(self.zone),
            Err(e) => {
                log::info!("at/{name}: {e}");
                return Ok(None);
            }
        };
        let found = newest_at(self.list.as_ref(), self.n, Some(t));
        if found.is_none() {
            let oldest = (0..self.n).find(|&i| self.list.is_ok(i));
            log::info!(
                "at/{name}: no restore point that early (the oldest is {})",
                oldest.map_or_else(|| "none".to_owned(), |i| self.list.name(i))
            );
        }
        Ok(found.map(|i| {
            symlink(
                format!("../{}", self.list.name(i)),
                self.list.get(i).mtime(),
            )
        }))
    }

    fn attr(&self) -> Attr {
        self.attr
    }

    fn live(&self) -> bool {
        self.live
    }

    fn lookup_only(&self) -> bool {
        true
    }
}
