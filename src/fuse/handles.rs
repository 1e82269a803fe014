//! What each open file or folder holds between the kernel's calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::inodes::Listing;
use crate::vfs::Cursor;

/// What each open folder lists, by handle: the kernel reads a listing in batches, and a folder
/// of a million names must not be listed anew for each. Listed on the first read only: an
/// open whose listing the kernel has cached reads nothing.
#[derive(Default)]
pub struct DirHandles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Option<Listing>>>,
}

impl DirHandles {
    /// A new handle, not listed yet.
    pub fn open(&self) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, None);
        fh
    }

    /// The listing of handle `fh`, made by `list` (outside the lock) on first use.
    pub fn listing<E>(
        &self,
        fh: u64,
        list: impl FnOnce() -> Result<Listing, E>,
    ) -> Result<Listing, E> {
        let known = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned();
        if let Some(Some(names)) = known {
            return Ok(names);
        }
        let names = list()?;
        if known.is_some() {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = open.get_mut(&fh) {
                *slot = Some(names.clone());
            }
        }
        Ok(names)
    }

    /// Forgets handle `fh`.
    pub fn release(&self, fh: u64) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }
}

/// Each open file's reading state, by handle: read-ahead follows each reader on its own.
#[derive(Default)]
pub struct FileHandles {
    next: AtomicU64,
    open: RwLock<HashMap<u64, Arc<Cursor>>>,
}

impl FileHandles {
    /// A new handle with a fresh cursor.
    pub fn open(&self) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::default());
        fh
    }

    /// The cursor of handle `fh`; a fresh one for a handle not known (never opened here).
    pub fn cursor(&self, fh: u64) -> Arc<Cursor> {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        open.get(&fh).cloned().unwrap_or_default()
    }

    /// Forgets handle `fh`.
    pub fn release(&self, fh: u64) {
        self.open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_folder_is_listed_once_per_open_on_its_first_read() {
        let h = DirHandles::default();
        let fh = h.open();
        let mut calls = 0;
        let mut list = || -> Result<Listing, ()> {
            calls += 1;
            Ok(Arc::new(vec![("a".to_owned(), crate::vfs::NodeKind::File)]))
        };
        let first = h.listing(fh, &mut list).unwrap();
        let again = h.listing(fh, &mut list).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        h.release(fh);
        // A handle not known (released, or never opened here) is listed each time.
        h.listing(fh, &mut list).unwrap();
        h.listing(fh, &mut list).unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn each_open_file_has_its_own_cursor_until_released() {
        let h = FileHandles::default();
        let (a, b) = (h.open(), h.open());
        assert_ne!(a, b);
        h.cursor(a).last_end.store(4096, Ordering::Relaxed);
        assert_eq!(h.cursor(a).last_end.load(Ordering::Relaxed), 4096);
        assert_eq!(h.cursor(b).last_end.load(Ordering::Relaxed), u64::MAX);
        h.release(a);
        assert_eq!(h.cursor(a).last_end.load(Ordering::Relaxed), u64::MAX);
        assert!(!h.open.read().unwrap().contains_key(&a));
        assert!(h.open.read().unwrap().contains_key(&b));
    }
}
