//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cln_writer;
pub mod tree;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The built `restorefs` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_restorefs")
}

/// Bundled reference data.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The cache folder the restorefs processes of this test binary use (not the user's).
pub fn cache_home() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("restorefs-test-cache")
            .tempdir()
            .unwrap()
    })
    .path()
}

/// `restorefs` with the test's cache folder and its default logging.
pub fn command() -> Command {
    let mut c = Command::new(bin());
    c.env("XDG_CACHE_HOME", cache_home()).env_remove("RUST_LOG");
    c
}

/// Runs restorefs with `args`; never panics on failure (tests inspect the output).
pub fn run(args: &[&str]) -> Output {
    command().args(args).output().expect("run restorefs")
}

/// Runs restorefs and asserts success; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "restorefs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_panic(&out);
    String::from_utf8(out.stdout).unwrap()
}

/// Fails the test if the process panicked.
pub fn assert_no_panic(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "restorefs panicked: {err}");
}

/// `ls --json` of `source`.
pub fn ls_json(source: &Path) -> serde_json::Value {
    serde_json::from_str(&run_ok(&["ls", "--json", source.to_str().unwrap()])).unwrap()
}

/// Hex sha256 of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> String {
    use std::io::Read;
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

/// Every file (sha256) and folder ("dir") under `root`, by relative path; lost+found left out.
pub fn file_hashes(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "lost+found" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &e.path(), out);
            } else {
                out.insert(rel, sha256_file(&e.path()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Copies a folder tree (regular files and folders).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// One `POINT` line of the virtnbd MANIFEST that has an expected sha256.
#[derive(Debug, Clone)]
pub struct ManifestPoint {
    pub chain: String,
    pub point: String,
    pub disk: String,
    pub backup_dir: String,
    /// The file sequence, or `None` for "ALL" (every file of the disk, i.e. the newest point).
    pub sequence: Option<Vec<String>>,
    pub virtual_size: u64,
    pub sha256: String,
}

/// The `POINT` lines of `tests/data/virtnbd/MANIFEST` with an expected sha256.
pub fn manifest_points() -> Vec<ManifestPoint> {
    let text = std::fs::read_to_string(data_dir().join("virtnbd/MANIFEST")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("POINT\t"))
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|c| c[8] != "-")
        .map(|c| {
            let seq = c[6].split(' ').next().unwrap();
            ManifestPoint {
                chain: c[1].into(),
                point: c[2].into(),
                disk: c[4].into(),
                backup_dir: c[5].into(),
                sequence: (!seq.starts_with("ALL"))
                    .then(|| seq.split(',').map(str::to_owned).collect()),
                virtual_size: c[7].parse().unwrap(),
                sha256: c[8].into(),
            }
        })
        .collect()
}

/// A unique scratch folder under the target dir (kept small; removed by the tempdir guard).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("restorefs-test")
        .tempdir()
        .unwrap()
}

/// Whether this machine can run FUSE mount tests (root and /dev/fuse). Without them the test
/// fails, so that a skip never passes as `ok`: unless `RESTOREFS_SKIP_FUSE=1` asks to skip
/// (never under `CI=true`), in which case it says so loudly.
pub fn fuse_available(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let ok = root && Path::new("/dev/fuse").exists();
    if !ok {
        let msg = format!("{test}: needs root and /dev/fuse for a real FUSE mount");
        let ci = std::env::var("CI").as_deref() == Ok("true");
        let skip = std::env::var("RESTOREFS_SKIP_FUSE").as_deref() == Ok("1");
        assert!(!ci, "{msg} (CI=true: failing)");
        assert!(skip, "{msg} (set RESTOREFS_SKIP_FUSE=1 to skip it)");
        eprintln!("\n!!!!! SKIPPED {msg} !!!!!\n");
    }
    ok
}

/// Whether `path` is a mount point now (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4).map(Path::new) == Some(path.as_path()))
}

/// A running `restorefs mount`. Its stderr is drained as it comes (a full pipe would block the
/// daemon); `stop` (also run on drop) checks that SIGTERM alone unmounts it cleanly.
pub struct Mounted {
    pub path: PathBuf,
    pub child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    drain: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Mounted {
    /// Mounts `source` with extra `args` on a fresh folder and waits until it serves.
    pub fn new(source: &Path, args: &[&str]) -> Mounted {
        Mounted::with_env(source, args, &[])
    }

    /// Like [`Mounted::new`], with extra environment variables for the daemon.
    pub fn with_env(source: &Path, args: &[&str], env: &[(&str, &str)]) -> Mounted {
        let dir = scratch();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let mut child = command()
            .arg("mount")
            .arg(source)
            .arg(&path)
            .args(args)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = std::sync::Arc::clone(&log);
        let drain = std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut m = Mounted {
            path,
            child,
            log,
            drain: Some(drain),
            _dir: dir,
        };
        m.wait_ready();
        m
    }

    fn wait_ready(&mut self) {
        let start = std::time::Instant::now();
        while !is_mounted(&self.path) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("restorefs mount exited with {status}: {}", self.stderr());
            }
            assert!(start.elapsed().as_secs() < 30, "mount not ready after 30 s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `path` inside the mount.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// What the daemon printed so far.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// What the daemon printed, once it holds `needle` or after 10 s (the log reaches the test
    /// through a pipe a thread drains, a little after the daemon wrote it).
    pub fn stderr_once(&self, needle: &str) -> String {
        let start = std::time::Instant::now();
        loop {
            let log = self.stderr();
            if log.contains(needle) || start.elapsed() > std::time::Duration::from_secs(10) {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM to the daemon.
    pub fn signal_term(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `secs` for the daemon to exit; its exit status if it did.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                if let Some(d) = self.drain.take() {
                    d.join().unwrap();
                }
                return Some(s);
            }
            if start.elapsed().as_secs_f64() > secs as f64 {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and checks that it alone unmounts: the daemon exits 0 within 5 s, the
    /// mount is gone, and nothing panicked. Returns the daemon's stderr.
    pub fn stop(&mut self) -> String {
        self.signal_term();
        let status = self.wait_exit(5);
        let log = self.stderr();
        assert!(
            status.is_some(),
            "SIGTERM did not stop the daemon in 5 s: {log}"
        );
        assert!(status.unwrap().success(), "daemon exit {status:?}: {log}");
        assert!(!is_mounted(&self.path), "still mounted after SIGTERM");
        assert_clean_log(&log);
        log
    }
}

/// Fails the test if a daemon's log shows a panic or an internal error (a caught panic).
pub fn assert_clean_log(log: &str) {
    assert!(
        !log.contains("panicked") && !log.contains("internal error"),
        "the daemon hit a bug: {log}"
    );
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            if std::thread::panicking() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(self.child.id().to_string())
                    .status();
                let _ = self.wait_exit(5);
            } else {
                self.stop();
            }
        }
        if is_mounted(&self.path) {
            let _ = command().arg("umount").arg(&self.path).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds the point (and its file entry) of `ls --json` output that rebuilds `mp`.
pub fn find_point<'a>(
    doc: &'a serde_json::Value,
    mp: &ManifestPoint,
) -> (&'a serde_json::Value, &'a serde_json::Value) {
    let set = doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == mp.backup_dir.as_str())
        .unwrap_or_else(|| panic!("no set {}", mp.backup_dir));
    let points = set["points"].as_array().unwrap();
    let file_of = |p: &'a serde_json::Value| -> Option<&'a serde_json::Value> {
        p["files"]
            .as_array()?
            .iter()
            .find(|f| f["path"] == format!("{}.raw", mp.disk))
    };
    match &mp.sequence {
        Some(seq) => {
            let hits: Vec<_> = points
                .iter()
                .filter_map(|p| file_of(p).map(|f| (p, f)))
                .filter(|(_, f)| {
                    f["sources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap())
                        .eq(seq.iter().map(String::as_str))
                })
                .collect();
            assert_eq!(
                hits.len(),
                1,
                "{mp:?}: want exactly one point with sources {seq:?}"
            );
            hits[0]
        }
        // ALL: virtnbdrestore applied every file of the disk: the newest point.
        None => {
            let p = points.last().unwrap();
            let f = file_of(p).unwrap_or_else(|| panic!("{mp:?}: newest point lacks the disk"));
            // Identical hashes would hide a dropped layer: the point must use every file.
            let mut sources: Vec<&str> = f["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            sources.sort();
            let dir = data_dir().join("virtnbd").join(&mp.backup_dir);
            let mut all: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with(&format!("{}.", mp.disk)) && n.ends_with(".data"))
                .collect();
            all.sort();
            assert_eq!(sources, all, "{mp:?}: the newest point applies every file");
            (p, f)
        }
    }
}

/// Path of `mp`'s image relative to the source, as in the mount.
pub fn point_path(doc: &serde_json::Value, mp: &ManifestPoint) -> String {
    let (p, _) = find_point(doc, mp);
    format!(
        "{}/{}/{}.raw",
        mp.backup_dir,
        p["name"].as_str().unwrap(),
        mp.disk
    )
}

/// The MANIFEST's last v1-plain vda image: its path in the tree of `tests/data/virtnbd` and its
/// expected sha256.
pub fn plain_vda() -> (String, String) {
    let mp = manifest_points()
        .into_iter()
        .rfind(|p| p.backup_dir == "v1-plain" && p.disk == "vda")
        .expect("MANIFEST has v1-plain vda images");
    (
        point_path(&ls_json(&data_dir().join("virtnbd")), &mp),
        mp.sha256,
    )
}

/// canon-v1 (tests/data README): a logical hash of a SQLite database that does not depend on
/// the library version or the page history. `None` path content = a 0-byte database.
pub fn canon_v1(db: &Path) -> String {
    use rusqlite::types::ValueRef;
    let mut text = String::from("canon-v1\n");
    if std::fs::metadata(db).unwrap().len() == 0 {
        return sha256(text.as_bytes());
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    type MasterRow = (Vec<u8>, Vec<u8>, Vec<u8>, Option<Vec<u8>>);
    let mut master: Vec<MasterRow> = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master")
        .unwrap()
        .query_map([], |r| {
            let b = |i: usize| -> rusqlite::Result<Vec<u8>> {
                Ok(match r.get_ref(i)? {
                    ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
                    other => format!("{other:?}").into_bytes(),
                })
            };
            Ok((
                b(0)?,
                b(1)?,
                b(2)?,
                r.get::<_, Option<String>>(3)?.map(String::into_bytes),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    master.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for (ty, name, tbl, sql) in &master {
        let sql = sql
            .as_ref()
            .map_or_else(|| "N".to_owned(), |q| format!("T{}", hex(q)));
        text.push_str(&format!("S\t{}\t{}\t{}\t{sql}\n", s(ty), s(name), s(tbl)));
    }
    let mut tables: Vec<&Vec<u8>> = master
        .iter()
        .filter(|m| m.0 == b"table")
        .map(|m| &m.1)
        .collect();
    tables.sort();
    for t in tables {
        let name = s(t);
        let mut st = conn
            .prepare(&format!("SELECT * FROM \"{}\"", name.replace('"', "\"\"")))
            .unwrap();
        let ncols = st.column_count();
        let mut rows: Vec<String> = st
            .query_map([], |r| {
                let mut line = format!("R\t{name}");
                for i in 0..ncols {
                    line.push('\t');
                    line.push_str(&match r.get_ref(i)? {
                        ValueRef::Null => "N".to_owned(),
                        ValueRef::Integer(v) => format!("I{v}"),
                        ValueRef::Real(f) => format!("F{}", hex(&f.to_bits().to_be_bytes())),
                        ValueRef::Text(b) => format!("T{}", hex(b)),
                        ValueRef::Blob(b) => format!("B{}", hex(b)),
                    });
                }
                Ok(line)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        text.push_str(&format!("C\t{name}\t{}\n", rows.len()));
        for r in rows {
            text.push_str(&r);
            text.push('\n');
        }
    }
    sha256(text.as_bytes())
}

/// One row of tests/data/clightning/MANIFEST.tsv.
#[derive(Debug, Clone)]
pub struct ClnRow {
    pub scenario: String,
    pub file: String,
    pub version: Option<u32>,
    pub ok: bool,
    pub canon: String,
}

/// Every row of the Core Lightning MANIFEST.
pub fn cln_manifest() -> Vec<ClnRow> {
    let text = std::fs::read_to_string(data_dir().join("clightning/MANIFEST.tsv")).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (sc, fi, ve, st, ca) = (
        col("scenario"),
        col("file"),
        col("version"),
        col("intended_status"),
        col("intended_canon_sha256"),
    );
    lines
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .map(|c| ClnRow {
            scenario: c[sc].into(),
            file: c[fi].into(),
            version: c[ve].parse().ok(),
            ok: c[st] == "ok",
            canon: c[ca].into(),
        })
        .collect()
}

/// Like [`Mounted::new`], with extra environment variables for the daemon (e.g. `RUST_LOG`).
pub fn mount_with_env(source: &Path, args: &[&str], env: &[(&str, &str)]) -> Mounted {
    Mounted::with_env(source, args, env)
}

/// Scans `source` in-process with every format at its defaults, a cache of `cache_bytes` and
/// the scratch folder `cache_dir`, as the command line does.
pub fn scan_in_process(
    source: &Path,
    cache_bytes: u64,
    cache_dir: &Path,
) -> restorefs::catalog::Catalog {
    let ctx =
        restorefs::model::ScanContext::new(restorefs::cache::Cache::new(cache_bytes), cache_dir);
    let formats = restorefs::format::all(&Default::default());
    restorefs::scan::scan(source, &formats, &ctx, &indicatif::ProgressBar::hidden()).unwrap()
}

/// (set path in the mount, point name, the manifest's backup) for every backup of the Freezer
/// reference sets of `engine` (`tar`, `rsync`), matched with the point `ls --json` lists for it
/// (handed to `check` with the backup).
pub fn freezer_cases(
    source: &Path,
    engine: &str,
    check: impl Fn(&serde_json::Value, &serde_json::Value),
) -> Vec<(String, String, serde_json::Value)> {
    let doc = ls_json(source);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source.join("manifest.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for (name, set) in m["sets"].as_object().unwrap() {
        if set["engine_dir"] != engine {
            continue;
        }
        let path = format!(
            "{}/{engine}/{}",
            set["container"].as_str().unwrap(),
            set["hostname_backup_name"].as_str().unwrap()
        );
        let listed = doc["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["path"] == path.as_str())
            .unwrap_or_else(|| panic!("{name}: no set {path}"));
        assert!(listed["error"].is_null(), "{listed}");
        for b in set["backups"].as_array().unwrap() {
            let point = listed["points"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["timestamp"] == b["timestamp"] && p["level"] == b["level"])
                .unwrap_or_else(|| panic!("{name}: no point for {}", b["id"]));
            check(b, point);
            out.push((
                path.clone(),
                point["name"].as_str().unwrap().to_owned(),
                b["expected"].clone(),
            ));
        }
    }
    out
}

/// Runs a tool and returns its stdout; panics with its stderr when it fails.
pub fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n` pseudo-random bytes from `seed` (xorshift): file contents a test can make again.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
