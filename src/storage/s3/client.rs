//! The S3 client of a store: object_store's `AmazonS3` as the resolved settings say, with
//! retries and timeouts, over object_store's own HTTP client with every request counted.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::{Certificate, ClientOptions, ObjectStore, RetryConfig};

use super::config::{Location, Resolved};
use super::stats::S3Stats;
use crate::error::{Error, Result};

/// The HTTP client of the store, counting what it sends and which answers will be retried.
#[derive(Debug)]
struct Counted {
    /// The client that sends.
    inner: HttpClient,
    /// Where to count.
    stats: Arc<S3Stats>,
}

#[async_trait]
impl HttpService for Counted {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let res = self.inner.execute(req).await;
        let transient = match &res {
            Ok(r) => r.status().is_server_error() || r.status().as_u16() == 429,
            Err(_) => true,
        };
        if transient {
            self.stats.retried();
        }
        res
    }
}

/// The HTTP connector of a store: object_store's own (reqwest), counted.
#[derive(Debug)]
struct CountingConnector(Arc<S3Stats>);

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        let stats = Arc::clone(&self.0);
        Ok(HttpClient::new(Counted { inner, stats }))
    }
}

/// The S3 client for `location` as `resolved` says: retries with backoff on 5xx, throttling
/// and dropped connections, bounded in time; every request counted in `stats`.
pub fn client(
    location: &Location,
    resolved: &Resolved,
    stats: &Arc<S3Stats>,
) -> Result<Arc<dyn ObjectStore>> {
    let http = resolved
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    let mut options = ClientOptions::new()
        .with_allow_http(http)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(120));
    if let Some(path) = &resolved.ca_bundle {
        for ca in ca_bundle(path)? {
            options = options.with_root_certificate(ca);
        }
    }
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
    if resolved.no_sign {
        b = b.with_skip_signature(true);
    } else if let Some(c) = &resolved.credentials {
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

/// Largest certificate bundle read (the system's whole bundle is about 200 KiB).
const MAX_CA_BUNDLE: u64 = 16 << 20;

/// The certificates of the PEM file `path`.
fn ca_bundle(path: &Path) -> Result<Vec<Certificate>> {
    let pem = std::fs::File::open(path)
        .and_then(|f| {
            let mut pem = Vec::new();
            f.take(MAX_CA_BUNDLE).read_to_end(&mut pem).map(|_| pem)
        })
        .map_err(|e| Error::io(path, &e))?;
    match Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(Error::usage(format!(
            "{}: no PEM certificate in it",
            path.display()
        ))),
        Err(e) => Err(Error::usage(format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = ca_bundle(&path).unwrap_err().to_string();
        assert!(e.contains("ca.pem: no PEM certificate"), "{e}");
        let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if system.exists() {
            assert!(ca_bundle(system).unwrap().len() > 10);
        }
        assert!(ca_bundle(&dir.path().join("none")).is_err());
    }
}
