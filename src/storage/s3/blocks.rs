//! Fetching an object's fixed-size aligned chunks by ranged GETs into the shared cache: blocks
//! (`--s3-block-size`) for reads that go on, pieces (256 KiB) for small reads far apart (headers
//! while indexing). One fetch per chunk however many readers want it (the cache builds a value
//! once), each body checked to have exactly the length asked, every GET conditional on the
//! listed ETag, and blocks ahead of a sequential reader fetched in parallel within a bound.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use object_store::{GetOptions, GetRange, ObjectStore};

use super::RuntimeBox;
use super::disk_cache::DiskCache;
use super::stats::S3Stats;
use crate::cache::{Built, Cache, Key, OnFailure};
use crate::error::{Error, Result};

/// Attempts at a body that arrived short or broke off (the client retried the request itself).
const BODY_ATTEMPTS: usize = 3;

/// Bytes of a piece: what a small read that does not continue the previous one fetches.
pub const PIECE: u64 = 256 << 10;

/// Reads up to this long that do not continue the previous one fetch pieces, not blocks.
pub const SMALL_READ: u64 = 64 << 10;

/// An aligned range of an object, fetched and cached whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Block `n` (`--s3-block-size` bytes).
    Block(u64),
    /// Piece `n` ([`PIECE`] bytes).
    Piece(u64),
}

/// One listed object: what its reads need to know.
#[derive(Debug)]
pub struct ObjectInfo {
    /// `s3://bucket/key`, for messages.
    pub url: String,
    /// The key.
    pub key: object_store::path::Path,
    /// Length in bytes, as listed.
    pub size: u64,
    /// The listed ETag: every GET asks for this version.
    pub etag: Option<String>,
    /// Its last modification: GETs ask for no later one where the server gives no ETag.
    pub modified: chrono::DateTime<chrono::Utc>,
    /// Names this version for the index and disk caches.
    pub identity: String,
    /// Its blocks' owner id in the shared cache.
    pub owner: u64,
}

/// What fetching blocks shares across a store's objects.
pub struct Fetcher {
    /// The S3 client.
    pub client: Arc<dyn ObjectStore>,
    /// The store's runtime, entered from plain threads.
    pub handle: tokio::runtime::Handle,
    /// The shared in-memory cache blocks are kept in.
    pub cache: Arc<Cache>,
    /// Counters.
    pub stats: Arc<S3Stats>,
    /// The on-disk block cache, if asked for.
    pub disk: Option<DiskCache>,
    /// Bytes per block.
    pub block_size: u64,
    /// Blocks fetched ahead of one sequential reader.
    pub prefetch: usize,
    /// Prefetches in flight over all objects.
    pub inflight: AtomicUsize,
}

impl Fetcher {
    /// The byte range of `chunk` of `obj`.
    pub fn range(&self, obj: &ObjectInfo, chunk: Chunk) -> Range<u64> {
        let (index, len) = match chunk {
            Chunk::Block(i) => (i, self.block_size),
            Chunk::Piece(i) => (i, PIECE),
        };
        let start = index.saturating_mul(len).min(obj.size);
        start..start.saturating_add(len).min(obj.size)
    }

    fn key(obj: &ObjectInfo, chunk: Chunk) -> Key {
        let index = match chunk {
            Chunk::Block(i) => i,
            Chunk::Piece(i) => i | 1 << 63,
        };
        Key {
            owner: obj.owner,
            index,
        }
    }

    /// Whether `chunk` of `obj` is in the cache (or on its way).
    pub fn cached(&self, obj: &ObjectInfo, chunk: Chunk) -> bool {
        self.cache.contains(Self::key(obj, chunk))
    }

    /// `chunk` of `obj`, fetched by its first reader and shared with the others.
    pub fn chunk(&self, obj: &ObjectInfo, chunk: Chunk) -> Result<Arc<Built<Bytes>>> {
        self.cache
            .get_or_build(Self::key(obj, chunk), OnFailure::Retry, || {
                let bytes = self.load(obj, chunk)?;
                let len = bytes.len() as u64;
                Ok((bytes, len))
            })
    }

    /// Fetches `chunk`, through the disk cache if there is one.
    fn load(&self, obj: &ObjectInfo, chunk: Chunk) -> Result<Bytes> {
        let range = self.range(obj, chunk);
        if let Some(bytes) = self
            .disk
            .as_ref()
            .and_then(|d| d.get(&obj.identity, &range))
        {
            self.stats.disk_hit();
            return Ok(bytes);
        }
        let bytes = self.handle.block_on(self.get_range(obj, range.clone()));
        let bytes = bytes.inspect_err(|_| self.stats.failed())?;
        if let Some(d) = &self.disk {
            d.put(&obj.identity, &range, &bytes);
        }
        Ok(bytes)
    }

    /// Exactly the bytes of `range` of `obj`, as listed; a short or broken body is fetched again.
    pub async fn get_range(&self, obj: &ObjectInfo, range: Range<u64>) -> Result<Bytes> {
        let what = format!("{} bytes {}..{}", obj.url, range.start, range.end);
        let want = range.end - range.start;
        let mut last = String::new();
        for _ in 0..BODY_ATTEMPTS {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                if_match: obj.etag.clone(),
                if_unmodified_since: obj.etag.is_none().then_some(obj.modified),
                ..GetOptions::default()
            };
            let got = self.client.get_opts(&obj.key, opts).await;
            let body = match got {
                Ok(r) => r.bytes().await,
                Err(e) => return Err(request_error(&what, e)),
            };
            match body {
                Ok(b) if b.len() as u64 == want => {
                    self.stats.fetched(want);
                    return Ok(b);
                }
                Ok(b) => {
                    self.stats.fetched(b.len() as u64);
                    last = format!("the server sent {} bytes for {want}", b.len());
                }
                Err(e) => last = e.to_string(),
            }
            self.stats.retried();
        }
        Err(Error::from_errno(
            libc::EIO,
            format!("{what}: {last} ({BODY_ATTEMPTS} attempts)"),
        ))
    }

    /// Starts fetching blocks `blocks` of `obj` in the background, skipping those cached or on
    /// their way, while `ahead` (this reader's fetches) and the store's total stay in bounds.
    /// Each fetch holds `runtime`, so the store's end never shuts the runtime down under it.
    pub fn prefetch(
        self: &Arc<Self>,
        obj: &Arc<ObjectInfo>,
        blocks: Range<u64>,
        ahead: &Arc<AtomicUsize>,
        runtime: &Arc<RuntimeBox>,
    ) {
        let global = self.prefetch.saturating_mul(4).max(8);
        for index in blocks {
            let block = Chunk::Block(index);
            if self.range(obj, block).is_empty()
                || ahead.load(Ordering::Relaxed) >= self.prefetch
                || self.inflight.load(Ordering::Relaxed) >= global
            {
                return;
            }
            if self.cached(obj, block) {
                continue;
            }
            ahead.fetch_add(1, Ordering::Relaxed);
            self.inflight.fetch_add(1, Ordering::Relaxed);
            let (me, obj, ahead) = (Arc::clone(self), Arc::clone(obj), Arc::clone(ahead));
            let runtime = Arc::clone(runtime);
            self.handle.spawn_blocking(move || {
                if let Err(e) = me.chunk(&obj, block) {
                    log::warn!("prefetch: {e}");
                }
                ahead.fetch_sub(1, Ordering::Relaxed);
                me.inflight.fetch_sub(1, Ordering::Relaxed);
                // The last holder may be this fetch: the runtime then ends without waiting.
                drop(runtime);
            });
        }
    }
}

/// An error of a GET the client already retried, in words that name the object and range.
fn request_error(what: &str, e: object_store::Error) -> Error {
    let why = match &e {
        object_store::Error::Precondition { .. } => {
            "the object changed since it was listed (its ETag differs); remount to see the new one"
                .to_owned()
        }
        object_store::Error::NotFound { .. } => {
            "the object was deleted since it was listed".to_owned()
        }
        _ => e.to_string(),
    };
    Error::from_errno(libc::EIO, format!("{what}: {why}"))
}
