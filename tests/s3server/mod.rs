//! Test helper: a real S3 server (`moto_server`, from the Python venv scripts/test-tools.sh
//! installs) on 127.0.0.1 with a free port, stopped on drop, and a small client for it
//! (`boto3` from the same venv, not restorefs' code) to create buckets and upload, replace,
//! delete, list and fetch objects.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/test-tools.sh installs moto; `RESTOREFS_MOTO_VENV` overrides it.
pub const DEFAULT_VENV: &str = "/opt/restorefs-test/moto";
/// The fixed credentials the tests sign with (moto accepts any).
pub const ACCESS_KEY: &str = "restorefs-test";
pub const SECRET_KEY: &str = "restorefs-test-secret";
pub const REGION: &str = "us-east-1";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 3;

/// The client side: one boto3 call per invocation, reading its arguments from argv.
const CLIENT_PY: &str = r#"
import json, os, sys, boto3
s3 = boto3.client("s3")
op, args = sys.argv[1], sys.argv[2:]
if op == "mb":
    s3.create_bucket(Bucket=args[0])
elif op == "put":
    with open(args[2], "rb") as f:
        s3.put_object(Bucket=args[0], Key=args[1], Body=f.read())
elif op == "upload":
    bucket, prefix, root = args
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            key = prefix.rstrip("/") + "/" + rel if prefix else rel
            s3.upload_file(path, bucket, key)
elif op == "public":
    arn = "arn:aws:s3:::%s/*" % args[0]
    rule = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": arn}
    policy = {"Version": "2012-10-17", "Statement": [rule]}
    s3.put_bucket_policy(Bucket=args[0], Policy=json.dumps(policy))
elif op == "rm":
    s3.delete_object(Bucket=args[0], Key=args[1])
elif op == "ls":
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args[0], Prefix=args[1]):
        for o in page.get("Contents", []):
            print("%s\t%d\t%s" % (o["Key"], o["Size"], o["ETag"].strip('"')))
elif op == "get":
    sys.stdout.buffer.write(s3.get_object(Bucket=args[0], Key=args[1])["Body"].read())
else:
    sys.exit("unknown op " + op)
"#;

/// The moto venv the tests use.
pub fn venv() -> PathBuf {
    std::env::var_os("RESTOREFS_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV))
}

/// Whether moto is installed. Without it the test fails, so that a skip never passes as `ok`:
/// unless `RESTOREFS_SKIP_S3=1` asks to skip (never under `CI=true`), which it says loudly.
pub fn s3_available(test: &str) -> bool {
    let server = venv().join("bin/moto_server");
    let ok = server.exists();
    if !ok {
        let msg = format!(
            "{test}: needs {} (run scripts/test-tools.sh as root, or set RESTOREFS_MOTO_VENV)",
            server.display()
        );
        let ci = std::env::var("CI").as_deref() == Ok("true");
        let skip = std::env::var("RESTOREFS_SKIP_S3").as_deref() == Ok("1");
        assert!(!ci, "{msg} (CI=true: failing)");
        assert!(skip, "{msg} (set RESTOREFS_SKIP_S3=1 to skip it)");
        eprintln!("\n!!!!! SKIPPED {msg} !!!!!\n");
    }
    ok
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

/// A running `moto_server` on 127.0.0.1, killed on drop.
pub struct S3Server {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server, or `None` when moto is missing and skipping is allowed (see
    /// [`s3_available`]). Panics with the server's stderr when it does not come up in 30 s.
    pub fn start(test: &str) -> Option<S3Server> {
        if !s3_available(test) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("restorefs-s3server")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("client.py"), CLIENT_PY).unwrap();
        let mut failures = String::new();
        for _ in 0..START_ATTEMPTS {
            match spawn(dir.path()) {
                Ok((port, child)) => return Some(S3Server { port, child, dir }),
                Err(e) => failures.push_str(&e),
            }
        }
        panic!("{test}: moto_server did not start:\n{failures}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The environment a restorefs process (or any AWS client) needs to reach this server at
    /// `endpoint`, isolated from the user's AWS configuration files and instance metadata.
    pub fn env_for(&self, endpoint: &str) -> Vec<(String, String)> {
        let none = self.dir.path().join("no-aws-config");
        let none = none.to_str().unwrap();
        [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", none),
            ("AWS_SHARED_CREDENTIALS_FILE", none),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// [`Self::env_for`] this server's own endpoint.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_for(&self.endpoint())
    }

    /// Sets [`Self::env`] on `cmd` (clearing any other `AWS_*` it would inherit).
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        self.apply_endpoint(cmd, &self.endpoint())
    }

    /// Sets [`Self::env_for`] `endpoint` on `cmd` (clearing any other `AWS_*` it would inherit).
    pub fn apply_endpoint<'a>(&self, cmd: &'a mut Command, endpoint: &str) -> &'a mut Command {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env_for(endpoint))
    }

    /// A client of this server through `endpoint` (a proxy in front of it).
    pub fn client_via(&self, endpoint: &str) -> Client<'_> {
        Client {
            server: self,
            endpoint: endpoint.to_string(),
        }
    }

    /// A client of this server.
    pub fn client(&self) -> Client<'_> {
        self.client_via(&self.endpoint())
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        self.client().create_bucket(bucket)
    }

    /// Uploads every file under `dir` as `prefix/<relative path>` (no prefix: at the root).
    pub fn upload_dir(&self, bucket: &str, prefix: &str, dir: &Path) {
        self.client().upload_dir(bucket, prefix, dir)
    }

    /// Writes `bytes` as `key` (a new object, or a replacement with a new ETag).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        self.client().put(bucket, key, bytes)
    }

    /// Deletes `key`.
    pub fn delete(&self, bucket: &str, key: &str) {
        self.client().delete(bucket, key)
    }

    /// The objects under `prefix`, in key order.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<Object> {
        self.client().list(bucket, prefix)
    }

    /// The content of `key`.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.client().get(bucket, key)
    }

    /// `restorefs` (the test's cache folder, default logging) with this server's environment.
    pub fn restorefs(&self) -> Command {
        let mut cmd = crate::common::command();
        self.apply(&mut cmd);
        cmd
    }

    /// Runs restorefs against this server; never panics on failure (tests inspect the output).
    pub fn run(&self, args: &[&str]) -> Output {
        self.restorefs().args(args).output().expect("run restorefs")
    }

    /// Runs restorefs against this server and asserts success; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "restorefs {args:?} failed: {}\nserver log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log())
        );
        crate::common::assert_no_panic(&out);
        String::from_utf8(out.stdout).unwrap()
    }

    /// Mounts `url` (`s3://bucket/prefix`) reached through `endpoint` (this server or a proxy).
    pub fn mount_via(&self, endpoint: &str, url: &str, args: &[&str]) -> crate::common::Mounted {
        let env = self.env_for(endpoint);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        crate::common::Mounted::with_env(Path::new(url), args, &env)
    }

    /// Mounts `url` (`s3://bucket/prefix`) of this server.
    pub fn mount(&self, url: &str, args: &[&str]) -> crate::common::Mounted {
        self.mount_via(&self.endpoint(), url, args)
    }

    /// The server's stderr so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// The boto3 client (from the moto venv) of one server, through one endpoint.
pub struct Client<'a> {
    server: &'a S3Server,
    endpoint: String,
}

impl Client<'_> {
    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        self.client_ok(&["mb", bucket]);
    }

    /// Uploads every file under `dir` as `prefix/<relative path>` (no prefix: at the root).
    pub fn upload_dir(&self, bucket: &str, prefix: &str, dir: &Path) {
        self.client_ok(&["upload", bucket, prefix, dir.to_str().unwrap()]);
    }

    /// Writes `bytes` as `key` (a new object, or a replacement with a new ETag).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let file = tempfile::NamedTempFile::new_in(self.server.dir.path()).unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        self.client_ok(&["put", bucket, key, file.path().to_str().unwrap()]);
    }

    /// Lets anyone GET the objects of `bucket` (for unsigned raw HTTP requests in tests).
    pub fn make_public(&self, bucket: &str) {
        self.client_ok(&["public", bucket]);
    }

    /// Deletes `key`.
    pub fn delete(&self, bucket: &str, key: &str) {
        self.client_ok(&["rm", bucket, key]);
    }

    /// The objects under `prefix`, in key order.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<Object> {
        let out = self.client_ok(&["ls", bucket, prefix]);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let mut f = l.split('\t');
                let (key, size, etag) = (f.next(), f.next(), f.next());
                Object {
                    key: key.unwrap().to_string(),
                    size: size.unwrap().parse().unwrap(),
                    etag: etag.unwrap().to_string(),
                }
            })
            .collect()
    }

    /// The content of `key`.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.client_ok(&["get", bucket, key]).stdout
    }

    fn client_ok(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(venv().join("bin/python"));
        cmd.arg(self.server.dir.path().join("client.py")).args(args);
        let out = self
            .server
            .apply_endpoint(&mut cmd, &self.endpoint)
            .output()
            .expect("run the boto3 client");
        assert!(
            out.status.success(),
            "s3 client {args:?} failed: {}\nserver log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.server.log())
        );
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts moto on a free port and waits until it answers HTTP; `Err` with its log otherwise.
fn spawn(dir: &Path) -> Result<(u16, Child), String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut child = Command::new(venv().join("bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run moto_server: {e}"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(log_of(dir, &format!("moto_server exited ({status})")));
        }
        if answers_http(port) {
            return Ok((port, child));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(log_of(dir, "moto_server did not answer within 30 s"))
}

/// Whether an HTTP GET / on the port gets an HTTP answer.
fn answers_http(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 12];
    s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_ok()
        && s.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.")
}

fn log_of(dir: &Path, what: &str) -> String {
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    format!("{what}; its output:\n{}\n", tail(&log))
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(4000);
    let start = (start..=s.len()).find(|&i| s.is_char_boundary(i)).unwrap();
    &s[start..]
}
