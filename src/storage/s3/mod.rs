//! SOURCE as an S3 bucket (AWS S3, Ceph RGW, MinIO) through the `object_store` client: folders
//! listed one level at a time with a delimiter (and kept, so that opening a listed object needs
//! no HEAD), objects read by ranged GETs of aligned blocks through the shared cache. Paths name
//! keys as `s3://bucket/key`. The client is async: the store owns a small runtime and its
//! callers, plain threads (FUSE and NBD workers), block on it.

mod blocks;
mod config;
mod disk_cache;
mod object;
mod profile;
mod stats;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpClient, HttpConnector, ReqwestConnector};
use object_store::{ClientOptions, ObjectMeta, ObjectStore, RetryConfig};
use sha2::{Digest, Sha256};

use self::blocks::{Fetcher, ObjectInfo};
pub use self::config::{Location, S3Options, is_s3, parse_url};
use self::disk_cache::DiskCache;
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

/// One folder of the bucket as listed: what `list` answers, and each object's metadata.
struct Dir {
    listing: Listing,
    objects: HashMap<String, ObjectMeta>,
}

/// SOURCE as a bucket: listings kept, objects read by blocks.
pub struct S3Store {
    location: Location,
    /// Names the server in identities: the endpoint URL, or AWS and the region.
    server: String,
    fetcher: Arc<Fetcher>,
    runtime: Arc<RuntimeBox>,
    dirs: Mutex<HashMap<String, Arc<Dir>>>,
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
        let resolved = config::resolve(opts, env)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("restorefs-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::from_errno(libc::EIO, format!("S3 client runtime: {e}")))?;
        let stats = Arc::new(S3Stats::default());
        let client = {
            let _entered = runtime.enter();
            client(&location, &resolved, &stats)?
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
            dirs: Mutex::default(),
            owners: Mutex::default(),
        };
        let hint = match (&resolved.credentials, resolved.ambient.is_empty()) {
            (None, true) => {
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
        if let Some(d) = self.lock_dirs().get(prefix) {
            return Ok(Arc::clone(d));
        }
        let path = (!prefix.is_empty()).then(|| object_store::path::Path::from(prefix));
        let listed = self
            .runtime()
            .block_on(self.fetcher.client.list_with_delimiter(path.as_ref()))
            .map_err(|e| {
                Error::from_errno(
                    libc::EIO,
                    format!("{}/: listing failed: {e}", self.url(prefix).display()),
                )
            })?;
        let mut dir = Dir {
            listing: Listing::default(),
            objects: HashMap::new(),
        };
        for p in &listed.common_prefixes {
            if let Some(name) = p.filename() {
                dir.listing.dirs.push(name.to_owned());
            }
        }
        for meta in listed.objects {
            let Some(name) = meta.location.filename().map(str::to_owned) else {
                continue;
            };
            // A folder marker (`prefix/`) is the folder itself, not a file in it.
            if meta.location.as_ref() == prefix || name.is_empty() {
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
        let dir = Arc::new(dir);
        self.lock_dirs().insert(prefix.to_owned(), Arc::clone(&dir));
        Ok(dir)
    }

    fn lock_dirs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Dir>>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
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

    /// What reading the object at `path` needs, from its listing.
    fn object_info(&self, path: &Path) -> Result<ObjectInfo> {
        let meta = self
            .meta(path)?
            .ok_or_else(|| Error::not_found(format!("{}: no such object", path.display())))?;
        let key = meta.location.to_string();
        let etag = meta.e_tag.clone();
        let identity = format!(
            "s3:{}/{}/{key}:{}:{}",
            self.server,
            self.location.bucket,
            meta.size,
            etag.as_deref().unwrap_or("").trim_matches('"')
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

/// The HTTP connector of a store: object_store's own (reqwest), counted.
#[derive(Debug)]
struct CountingConnector(Arc<S3Stats>);

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        let stats = Arc::clone(&self.0);
        Ok(HttpClient::new(stats::Counted { inner, stats }))
    }
}

/// The S3 client for `location` as `resolved` says: retries with backoff on 5xx, throttling
/// and dropped connections, bounded in time; every request counted in `stats`.
fn client(
    location: &Location,
    resolved: &config::Resolved,
    stats: &Arc<S3Stats>,
) -> Result<Arc<dyn ObjectStore>> {
    let http = resolved
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    let options = ClientOptions::new()
        .with_allow_http(http)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(120));
    let retry = RetryConfig {
        max_retries: 5,
        retry_timeout: Duration::from_secs(60),
        ..RetryConfig::default()
    };
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&location.bucket)
        .with_region(&resolved.region)
        .with_virtual_hosted_style_request(!resolved.path_style)
        .with_client_options(options)
        .with_retry(retry)
        .with_http_connector(CountingConnector(Arc::clone(stats)));
    if let Some(e) = &resolved.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(c) = &resolved.credentials {
        b = b
            .with_access_key_id(&c.key_id)
            .with_secret_access_key(&c.secret);
        if let Some(t) = &c.token {
            b = b.with_token(t);
        }
    } else {
        for (k, v) in &resolved.ambient {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                b = b.with_config(key, v);
            }
        }
    }
    let s3 = b
        .build()
        .map_err(|e| Error::usage(format!("s3://{}: {e}", location.bucket)))?;
    Ok(Arc::new(s3))
}
