//! Keeps the kernel's references to inodes bounded: the least recently used names beyond a
//! bound are asked back with `FUSE_NOTIFY_INVAL_ENTRY`.

use std::ffi::OsStr;
use std::sync::Weak;
use std::time::Duration;

use fuser::{INodeNo, Notifier};

use super::inodes::Inodes;

/// How many looked-up names the kernel may hold before the least recently used are asked
/// back: each keeps its node (a point, a file) in memory, and `find` over a large tree would
/// otherwise hold them all for as long as the kernel's dentry cache does.
const HELD_MAX: usize = 16 * 1024;

/// Asks the kernel to drop the least recently used names beyond [`HELD_MAX`]; it then forgets
/// their inodes (those still in use stay).
pub struct Pruner(pub(super) Weak<Inodes>);

impl Pruner {
    /// Runs on its own thread (a notification may wait for a folder lock that a request being
    /// served holds) until the file system is dropped.
    pub fn start(self, notifier: Notifier) {
        let spawned = std::thread::Builder::new()
            .name("inode-pruner".into())
            .spawn(move || {
                while let Some(inodes) = self.0.upgrade() {
                    let excess = inodes.excess_held(HELD_MAX);
                    drop(inodes);
                    for (parent, name) in &excess {
                        // ENOENT when the kernel dropped it already: nothing to do.
                        let _ = notifier.inval_entry(INodeNo(*parent), OsStr::new(name));
                    }
                    // Keep up with a fast `find`; idle otherwise.
                    let pause = if excess.is_empty() { 200 } else { 10 };
                    std::thread::sleep(Duration::from_millis(pause));
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the inode pruner: {e}");
        }
    }
}
