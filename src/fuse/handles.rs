//! What each open file or folder holds between the kernel's calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::inodes::Listing;

/// What each open folder lists, by handle: the kernel reads a listing in batches, and a folder
/// of a million names must not be listed anew for each.
#[derive(Default)]
pub struct DirHandles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Listing>>,
}

impl DirHandles {
    /// A new handle for a listing.
    pub fn open(&self, names: Listing) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, names);
        fh
    }

    /// The listing of handle `fh`.
    pub fn get(&self, fh: u64) -> Option<Listing> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&fh).cloned()
    }

    /// Forgets handle `fh`.
    pub fn release(&self, fh: u64) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }
}
