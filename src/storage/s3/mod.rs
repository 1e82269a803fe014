//! SOURCE as an S3 bucket (AWS S3, Ceph RGW, MinIO) through the `object_store` client: folders
//! listed one level at a time with a delimiter (and kept, so that opening a listed object needs
//! no HEAD), objects read by ranged GETs of aligned blocks through the shared cache. Paths name
//! keys as `s3://bucket/key`. The client is async: the store owns a small runtime and its
//! callers, plain threads (FUSE and NBD workers), block on it.

mod blocks;
mod client;
mod config;
mod disk_cache;
mod listing;
mod object;
mod profile;
mod stats;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use object_store::{GetOptions, ObjectMeta};
use sha2::{Digest, Sha256};

use self::blocks::{Fetcher, ObjectInfo};
pub use self::config::{Location, S3Options, is_s3, parse_url};
use self::disk_cache::DiskCache;
use self::listing::{Dir, Listings};
use self::object::S3Object;
pub use self::stats::{S3Counts, S3Stats};
use super::{FileEntry, Listing, Source, Store};
use crate::cache::{Cache, new_owner_id};
use crate::error::{Error, Result};

/// Bytes of a local copy fetched by one GET (held in memory until written).
const COPY_CHUNK: u64 = 64 << 20;

/// The runtime of a store's client; dropping it does not wait for fetches still running.
pub(crate) struct RuntimeBox(Option<tokio::runtime::Runtime>);

impl Drop for RuntimeBox {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// SOURCE as a bucket: listings kept, objects read by blocks.
pub struct S3Store {
    location: Location,
    /// Names the server in identities: the endpoint URL, or AWS and the region.
    server: String,
    fetcher: Arc<Fetcher>,
    runtime: Arc<RuntimeBox>,
    dirs: Listings,
    owners: Mutex<HashMap<String, u64>>,
}

impl S3Store {
    /// Connects to the bucket `source` (`s3://bucket[/prefix]`) with `opts` and the process's
    /// environment, its blocks kept in `cache`; lists the prefix once so that a missing bucket or
    /// refused credentials fail here, in one message.
    pub fn connect(source: &Path, opts: &S3Options, cache: Arc<Cache>) -> Result<S3Store> {
        S3Store::connect_with_env(source, opts, cache, &|k| std::env::var(k).ok())
    }

    /// [`S3Store::connect`] with the variables of `env` instead of the process's.
    pub fn connect_with_env(
        source: &Path,
        opts: &S3Options,
        cache: Arc<Cache>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Store> {
        let url = source.to_str().unwrap_or_default();
        let location = parse_url(url)?;
        let resolved = config::resolve(opts, env).map_err(|e| e.context(url))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("restorefs-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::from_errno(libc::EIO, format!("S3 client runtime: {e}")))?;
        let stats = Arc::new(S3Stats::default());
        let client = {
            let _entered = runtime.enter();
            client::client(&location, &resolved, &stats)?
        };
        let disk = match &opts.disk_cache {
            Some(dir) => Some(DiskCache::open(dir, opts.disk_cache_size)?),
            None => None,
        };
        let fetcher = Arc::new(Fetcher {
            client,
            handle: runtime.handle().clone(),
            cache,
            stats,
            disk,
            block_size: opts.block_size,
            prefetch: opts.prefetch,
            inflight: Default::default(),
        });
        let store = S3Store {
            location,
            server: resolved
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("aws-{}", resolved.region)),
            fetcher,
            runtime: Arc::new(RuntimeBox(Some(runtime))),
            dirs: Listings::default(),
            owners: Mutex::default(),
        };
        let hint = match (&resolved.credentials, resolved.ambient.is_empty()) {
            (None, true) if !resolved.no_sign => {
                " (no credentials in AWS_ACCESS_KEY_ID or the AWS profile files: instance \
                 metadata was asked for them)"
            }
            _ => "",
        };
        let server = match &resolved.endpoint {
            Some(e) => e.clone(),
            None => format!("AWS ({})", resolved.region),
        };
        store.dir(&store.location.prefix).map_err(|e| {
            Error::from_errno(e.errno(), format!("SOURCE {url} at {server}: {e}{hint}"))
        })?;
        Ok(store)
    }

    /// The counters of this store's requests.
    pub fn stats(&self) -> S3Counts {
        self.fetcher.stats.counts()
    }

    /// `s3://bucket/key`.
    fn url(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("s3://{}/{key}", self.location.bucket))
    }

    /// The key `path` names (`s3://bucket/key`; `s3:/bucket/key` after path normalisation).
    fn key_of(&self, path: &Path) -> Result<String> {
        let s = path.to_str().unwrap_or_default();
        let rest = s
            .strip_prefix("s3://")
            .or_else(|| s.strip_prefix("s3:/"))
            .and_then(|r| r.strip_prefix(self.location.bucket.as_str()))
            .filter(|r| r.is_empty() || r.starts_with('/'));
        match rest {
            Some(r) => Ok(r.trim_matches('/').to_owned()),
            None => Err(Error::not_found(format!(
                "{}: not in bucket {}",
                path.display(),
                self.location.bucket
            ))),
        }
    }

    /// The folder `prefix` (a key prefix without slashes at the ends), listed once.
    fn dir(&self, prefix: &str) -> Result<Arc<Dir>> {
        self.dirs.get(prefix, || {
            let path = (!prefix.is_empty()).then(|| object_store::path::Path::from(prefix));
            let listed = self
                .runtime()
                .block_on(self.fetcher.client.list_with_delimiter(path.as_ref()))
                .map_err(|e| {
                    let url = self.url(prefix);
                    Error::from_errno(
                        libc::EIO,
                        format!("{}/: listing failed: {e}", url.display()),
                    )
                })?;
            Ok(Dir::new(listed, prefix))
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .0
            .as_ref()
            .expect("the runtime lives as long as the store")
    }

    /// The listed metadata of the object at `path`, `None` when its folder lists no such file.
    fn meta(&self, path: &Path) -> Result<Option<ObjectMeta>> {
        let key = self.key_of(path)?;
        let (parent, name) = key.rsplit_once('/').unwrap_or(("", key.as_str()));
        if name.is_empty() {
            return Ok(None);
        }
        Ok(self.dir(parent)?.objects.get(name).cloned())
    }

    /// `listed` as the object `key` itself gives it (a HEAD); an error when its length is no
    /// longer the listed one.
    fn head(&self, key: &str, listed: ObjectMeta) -> Result<ObjectMeta> {
        let opts = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let url = self.url(key);
        let got = self
            .runtime()
            .block_on(self.fetcher.client.get_opts(&listed.location, opts))
            .map_err(|e| Error::from_errno(libc::EIO, format!("{}: {e}", url.display())))?;
        if got.meta.size != listed.size {
            return Err(Error::from_errno(
                libc::EIO,
                format!(
                    "{}: {} bytes now, {} when listed; remount to see the new object",
                    url.display(),
                    got.meta.size,
                    listed.size
                ),
            ));
        }
        Ok(got.meta)
    }

    /// What reading the object at `path` needs, from its listing.
    fn object_info(&self, path: &Path) -> Result<ObjectInfo> {
        let meta = self
            .meta(path)?
            .ok_or_else(|| Error::not_found(format!("{}: no such object", path.display())))?;
        let key = meta.location.to_string();
        let meta = match meta.e_tag {
            Some(_) => meta,
            // Some servers list no ETags: the object's own answer names its version, so that
            // the kept index and every GET stay tied to it.
            None => self.head(&key, meta)?,
        };
        let etag = meta.e_tag.clone();
        let identity = format!(
            "s3:{}/{}/{key}:{}:{}:{}",
            self.server,
            self.location.bucket,
            meta.size,
            etag.as_deref().unwrap_or("").trim_matches('"'),
            meta.last_modified.timestamp_nanos_opt().unwrap_or_default()
        );
        let owner = *self
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(identity.clone())
            .or_insert_with(new_owner_id);
        Ok(ObjectInfo {
            url: self.url(&key).display().to_string(),
            key: meta.location,
            size: meta.size,
            etag,
            modified: meta.last_modified,
            identity,
            owner,
        })
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        log::info!("s3://{}: {}", self.location.bucket, self.stats());
    }
}

impl Store for S3Store {
    fn list(&self, dir: &Path) -> Result<Listing> {
        Ok(self.dir(&self.key_of(dir)?)?.listing.clone())
    }

    fn stat(&self, path: &Path) -> Result<Option<FileEntry>> {
        Ok(self.meta(path)?.map(|m| FileEntry {
            name: m.location.filename().unwrap_or_default().to_owned(),
            size: m.size,
            modified: SystemTime::from(m.last_modified),
        }))
    }

    fn is_dir(&self, path: &Path) -> Result<bool> {
        let listing = &self.dir(&self.key_of(path)?)?.listing;
        Ok(!(listing.files.is_empty() && listing.dirs.is_empty()))
    }

    fn open(&self, path: &Path) -> Result<Arc<Source>> {
        let info = self.object_info(path)?;
        let object = S3Object::new(info, &self.fetcher, &self.runtime);
        Ok(Source::new(path, Box::new(object)))
    }

    fn local_copy(&self, path: &Path, scratch: &Path) -> Result<PathBuf> {
        let info = self.object_info(path)?;
        let hash = Sha256::digest(info.identity.as_bytes());
        let name: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        let dest = scratch.join(format!("s3-{name}"));
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == info.size) {
            return Ok(dest);
        }
        std::fs::create_dir_all(scratch).map_err(|e| Error::io(scratch, &e))?;
        let tmp = scratch.join(format!(
            "s3-{name}.part{}-{}",
            std::process::id(),
            new_owner_id()
        ));
        let copied = self
            .download(&info, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, &e)));
        if copied.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        copied.map(|()| dest)
    }

    fn is_local(&self) -> bool {
        false
    }
}

impl S3Store {
    /// Writes the whole object `info` to `to`, a chunk at a time, and checks its length.
    fn download(&self, info: &ObjectInfo, to: &Path) -> Result<()> {
        let mut file = std::fs::File::create(to).map_err(|e| Error::io(to, &e))?;
        let mut at = 0;
        while at < info.size {
            let range = at..(at + COPY_CHUNK.max(self.fetcher.block_size)).min(info.size);
            let bytes = self
                .runtime()
                .block_on(self.fetcher.get_range(info, range.clone()))?;
            file.write_all(&bytes).map_err(|e| Error::io(to, &e))?;
            at = range.end;
        }
        let len = file.metadata().map_err(|e| Error::io(to, &e))?.len();
        if len != info.size {
            return Err(Error::corrupt(
                to,
                len,
                format!("copy of {} is short", info.url),
            ));
        }
        Ok(())
    }
}
