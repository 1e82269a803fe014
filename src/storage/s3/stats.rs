//! Counters of one S3 store: every HTTP request (retries included, counted where the client
//! sends them, `client`), bytes of object data fetched, retried answers and reads that failed
//! for good.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by the store, its objects and its HTTP client.
#[derive(Debug, Default)]
pub struct S3Stats {
    pub(super) requests: AtomicU64,
    bytes: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
    disk_hits: AtomicU64,
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct S3Counts {
    /// HTTP requests sent (listings, GETs, retries).
    pub requests: u64,
    /// Bytes of object data received by ranged GETs.
    pub bytes: u64,
    /// Answers that were retried: 5xx, 429, dropped connections, short bodies.
    pub retries: u64,
    /// Reads that failed after every retry.
    pub errors: u64,
    /// Blocks read from the on-disk block cache instead of the server.
    pub disk_hits: u64,
}

impl fmt::Display for S3Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests, {} bytes fetched, {} retried, {} failed reads, \
             {} blocks from the disk cache",
            self.requests, self.bytes, self.retries, self.errors, self.disk_hits
        )
    }
}

impl S3Stats {
    /// The counters now.
    pub fn counts(&self) -> S3Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        S3Counts {
            requests: get(&self.requests),
            bytes: get(&self.bytes),
            retries: get(&self.retries),
            errors: get(&self.errors),
            disk_hits: get(&self.disk_hits),
        }
    }

    pub(super) fn fetched(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn disk_hit(&self) {
        self.disk_hits.fetch_add(1, Ordering::Relaxed);
    }
}
