//! What an S3 SOURCE needs besides its URL: endpoint, region, addressing style and credentials,
//! taken like the AWS tools take them (flags, then `AWS_*` variables, then the profile files),
//! and the read settings (block size, prefetch, disk cache).

use std::path::{Path, PathBuf};

use super::profile::{self, Profile};
use crate::error::{Error, Result};

/// Smallest and largest block fetched by one ranged GET.
pub const BLOCK_SIZES: std::ops::RangeInclusive<u64> = (1 << 20)..=(64 << 20);
/// Most blocks fetched ahead of one sequential reader.
pub const MAX_PREFETCH: usize = 64;

/// The S3 settings given on the command line; `resolve` fills the rest from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible server (Ceph RGW, MinIO); AWS when none.
    pub endpoint: Option<String>,
    /// Region (signing; the AWS endpoint's name).
    pub region: Option<String>,
    /// Address buckets as `ENDPOINT/bucket` (the default with an endpoint) even on AWS.
    pub path_style: bool,
    /// Send requests unsigned (a public bucket), with no credentials.
    pub no_sign: bool,
    /// Bytes fetched by one ranged GET and cached as one block.
    pub block_size: u64,
    /// Blocks fetched ahead, in parallel, of a sequential reader.
    pub prefetch: usize,
    /// Folder of the on-disk block cache, if any.
    pub disk_cache: Option<PathBuf>,
    /// Bound of the on-disk block cache in bytes.
    pub disk_cache_size: u64,
}

impl Default for S3Options {
    fn default() -> S3Options {
        S3Options {
            endpoint: None,
            region: None,
            path_style: false,
            no_sign: false,
            block_size: 4 << 20,
            prefetch: 8,
            disk_cache: None,
            disk_cache_size: 4 << 30,
        }
    }
}

/// Where a bucket's objects sit: `s3://bucket[/prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The bucket's name.
    pub bucket: String,
    /// Key prefix without slashes at either end (`""` for the whole bucket).
    pub prefix: String,
}

/// Whether SOURCE names a bucket (`s3://...`) rather than a local folder.
pub fn is_s3(source: &Path) -> bool {
    source.to_str().is_some_and(|s| s.starts_with("s3://"))
}

/// Parses `s3://bucket[/prefix]`; the bucket name as S3-compatible servers accept them.
pub fn parse_url(url: &str) -> Result<Location> {
    let bad = |why: &str| Error::usage(format!("SOURCE {url}: {why} (s3://BUCKET[/PREFIX])"));
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || bucket.len() > 255 {
        return Err(bad("no bucket name"));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(bad("a bucket name holds letters, digits, '.', '-' and '_'"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
        && !prefix.is_empty()
    {
        return Err(bad(
            "empty, '.' and '..' parts are not allowed in the prefix",
        ));
    }
    Ok(Location {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// Static credentials: an access key and its secret, with a session token for temporary ones.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub key_id: String,
    /// Secret access key.
    pub secret: String,
    /// Session token.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, secret hidden)", self.key_id)
    }
}

/// How to reach and sign for a bucket, resolved from flags, environment and profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Endpoint URL, `None` for AWS.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Path-style addressing.
    pub path_style: bool,
    /// Unsigned requests.
    pub no_sign: bool,
    /// Static credentials, when any were found.
    pub credentials: Option<Credentials>,
    /// `AWS_*` settings of the other credential sources (web identity, container, instance
    /// metadata) handed to the client when there are no static credentials.
    pub ambient: Vec<(String, String)>,
    /// PEM file of extra certificate authorities to trust (`AWS_CA_BUNDLE`, the profile's
    /// `ca_bundle`), for servers with a private CA.
    pub ca_bundle: Option<PathBuf>,
}

/// The variables of credential sources other than static keys.
const AMBIENT: &[&str] = &[
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// Resolves `opts` with the environment `env` (a variable lookup) and the profile files it
/// names; fails with one clear message when there are no credentials of any kind.
pub fn resolve(opts: &S3Options, env: &dyn Fn(&str) -> Option<String>) -> Result<Resolved> {
    check_options(opts)?;
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let profile = read_profile(&var)?;
    let endpoint = opts
        .endpoint
        .clone()
        .or_else(|| var("AWS_ENDPOINT_URL_S3"))
        .or_else(|| var("AWS_ENDPOINT_URL"))
        .or(profile.endpoint_url.clone());
    if let Some(e) = &endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        return Err(Error::usage(format!(
            "S3 endpoint {e}: not an http:// or https:// URL"
        )));
    }
    let region = opts
        .region
        .clone()
        .or_else(|| var("AWS_REGION"))
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .or(profile.region.clone())
        .unwrap_or_else(|| "us-east-1".to_owned());
    let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(key_id), Some(secret)) => Some(Credentials {
            key_id,
            secret,
            token: var("AWS_SESSION_TOKEN"),
        }),
        _ => match (profile.access_key_id, profile.secret_access_key) {
            (Some(key_id), Some(secret)) => Some(Credentials {
                key_id,
                secret,
                token: profile.session_token,
            }),
            _ => None,
        },
    };
    let ambient: Vec<_> = AMBIENT
        .iter()
        .filter_map(|k| Some((k.to_string(), var(k)?)))
        .collect();
    // Instance metadata exists on AWS only; elsewhere it would time out rather than answer.
    let metadata =
        endpoint.is_none() && var("AWS_EC2_METADATA_DISABLED").as_deref() != Some("true");
    if credentials.is_none() && ambient.is_empty() && !metadata && !opts.no_sign {
        return Err(Error::usage(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a \
             profile of ~/.aws/credentials with AWS_PROFILE (--s3-no-sign for a public bucket)",
        ));
    }
    Ok(Resolved {
        path_style: opts.path_style || endpoint.is_some(),
        no_sign: opts.no_sign,
        endpoint,
        region,
        credentials,
        ambient,
        ca_bundle: var("AWS_CA_BUNDLE")
            .or(profile.ca_bundle)
            .map(PathBuf::from),
    })
}

fn check_options(opts: &S3Options) -> Result<()> {
    if !BLOCK_SIZES.contains(&opts.block_size) {
        return Err(Error::usage(format!(
            "--s3-block-size {}: must be between 1M and 64M",
            opts.block_size
        )));
    }
    if opts.prefetch > MAX_PREFETCH {
        return Err(Error::usage(format!(
            "--s3-prefetch {}: at most {MAX_PREFETCH} blocks",
            opts.prefetch
        )));
    }
    Ok(())
}

/// The profile `AWS_PROFILE` names (else `default`) from the credentials and config files;
/// a profile named but found in neither is an error, as for the AWS CLI.
fn read_profile(var: &dyn Fn(&str) -> Option<String>) -> Result<Profile> {
    let home = var("HOME").unwrap_or_default();
    let file = |name: &str, default: &str| -> Result<(PathBuf, String)> {
        let path = PathBuf::from(var(name).unwrap_or_else(|| format!("{home}/.aws/{default}")));
        let text = match std::fs::metadata(&path) {
            Ok(md) if md.len() > profile::MAX_FILE => {
                return Err(Error::usage(format!(
                    "{}: more than {} bytes, not an AWS profile file",
                    path.display(),
                    profile::MAX_FILE
                )));
            }
            Ok(_) => std::fs::read(&path).map_err(|e| Error::io(&path, &e))?,
            Err(_) => Vec::new(),
        };
        Ok((path, String::from_utf8_lossy(&text).into_owned()))
    };
    let (cred_path, creds) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials")?;
    let (config_path, config) = file("AWS_CONFIG_FILE", "config")?;
    let named = var("AWS_PROFILE").or_else(|| var("AWS_DEFAULT_PROFILE"));
    let name = named.clone().unwrap_or_else(|| "default".to_owned());
    let found = profile::profile(&name, &creds, &config);
    if named.is_some() && found == Profile::default() {
        return Err(Error::usage(format!(
            "AWS profile {name}: not found in {} or {}",
            cred_path.display(),
            config_path.display()
        )));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let l = parse_url("s3://backups/vms/prod/").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("backups", "vms/prod")
        );
        assert_eq!(parse_url("s3://b").unwrap().prefix, "");
        for bad in [
            "s3://",
            "s3:///x",
            "http://b/x",
            "s3://b c/x",
            "s3://b/a//c",
            "s3://b/../x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(is_s3(Path::new("s3://b/x")) && !is_s3(Path::new("/s3://b")));
    }

    #[test]
    fn flags_beat_variables_which_beat_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[p]\naws_access_key_id=PK\naws_secret_access_key=PS\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[profile p]\nregion=eu-north-1\nendpoint_url=http://rgw:7480\n",
        )
        .unwrap();
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_PROFILE", "p"),
        ];
        let r = resolve(&S3Options::default(), &env(&files)).unwrap();
        assert_eq!(r.endpoint.as_deref(), Some("http://rgw:7480"));
        assert_eq!((r.region.as_str(), r.path_style), ("eu-north-1", true));
        assert_eq!(r.credentials.unwrap().key_id, "PK");
        let mut more = files.to_vec();
        more.extend([("AWS_ACCESS_KEY_ID", "EK"), ("AWS_SECRET_ACCESS_KEY", "ES")]);
        more.extend([("AWS_REGION", "r1"), ("AWS_ENDPOINT_URL", "https://e")]);
        more.push(("AWS_CA_BUNDLE", "/etc/rgw-ca.pem"));
        let flags = S3Options {
            region: Some("r2".into()),
            ..S3Options::default()
        };
        let r = resolve(&flags, &env(&more)).unwrap();
        assert_eq!(r.credentials.unwrap().key_id, "EK");
        assert_eq!(
            (r.region.as_str(), r.endpoint.as_deref()),
            ("r2", Some("https://e"))
        );
        assert_eq!(r.ca_bundle.as_deref(), Some(Path::new("/etc/rgw-ca.pem")));
        more[2] = ("AWS_PROFILE", "missing");
        let e = resolve(&flags, &env(&more)).unwrap_err().to_string();
        assert!(e.contains("AWS profile missing: not found"), "{e}");
    }

    #[test]
    fn aws_without_an_endpoint_is_virtual_hosted_and_may_use_instance_metadata() {
        let none = [("HOME", "/nonexistent")];
        let r = resolve(&S3Options::default(), &env(&none)).unwrap();
        assert_eq!(
            (r.endpoint, r.path_style, r.credentials),
            (None, false, None)
        );
        let minio = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..S3Options::default()
        };
        let e = resolve(&minio, &env(&none)).unwrap_err().to_string();
        assert!(e.contains("no S3 credentials"), "{e}");
        let public = S3Options {
            no_sign: true,
            ..minio
        };
        assert!(resolve(&public, &env(&none)).unwrap().no_sign);
        let off = [
            ("HOME", "/nonexistent"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ];
        assert!(resolve(&S3Options::default(), &env(&off)).is_err());
        let bad = S3Options {
            block_size: 100,
            ..S3Options::default()
        };
        assert!(resolve(&bad, &env(&none)).is_err());
    }
}
