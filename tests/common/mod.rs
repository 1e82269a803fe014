//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod writer;

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

/// Runs restorefs with `args`; never panics on failure (tests inspect the output).
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run restorefs")
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
