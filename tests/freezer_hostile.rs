//! Hostile Freezer backups: tar streams crafted byte by byte (members naming the archive root,
//! `..`, over-long names, bogus size fields, damaged headers, decompression bombs) and damaged or
//! wrongly keyed real streams. Each gives either the tree `tar --incremental --extract` makes of
//! the same levels, with warnings naming the level's data file and the member's offset, or a
//! clear error naming the data file, never a panic. Failed builds are remembered, and concurrent
//! first reads through the mount decode each level once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::tree::{assert_matches, walk};
use common::*;

const BLOCK: usize = 512;
const MTIME: u64 = 1_800_000_000;

/// A tar stream in GNU's old format, as `tar --listed-incremental` writes it.
#[derive(Default)]
struct Tar(Vec<u8>);

fn octal(n: u64) -> [u8; 12] {
    let mut f = [0u8; 12];
    f[..11].copy_from_slice(format!("{n:011o}").as_bytes());
    f
}

impl Tar {
    /// Appends a header with a correct checksum; returns its offset.
    fn header(&mut self, name: &str, flag: u8, size: [u8; 12], link: &str, mode: u32) -> u64 {
        if name.len() > 99 {
            self.long(b'L', name);
        }
        if link.len() > 99 {
            self.long(b'K', link);
        }
        let at = self.0.len() as u64;
        let mut h = [0u8; BLOCK];
        let n = name.len().min(99);
        h[..n].copy_from_slice(&name.as_bytes()[..n]);
        h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(&size);
        h[136..148].copy_from_slice(&octal(MTIME));
        h[156] = flag;
        let l = link.len().min(99);
        h[157..157 + l].copy_from_slice(&link.as_bytes()[..l]);
        h[257..265].copy_from_slice(b"ustar  \0");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0.extend(h);
        at
    }

    fn long(&mut self, flag: u8, name: &str) {
        let data = format!("{name}\0");
        self.header("././@LongLink", flag, octal(data.len() as u64), "", 0o644);
        self.data(data.as_bytes());
    }

    fn data(&mut self, d: &[u8]) {
        self.0.extend(d);
        let pad = d.len().next_multiple_of(BLOCK) - d.len();
        self.0.extend(std::iter::repeat_n(0u8, pad));
    }

    /// A GNU dumpdir member with records like `Yname`, `Dname`, `Nname`, sorted by name as tar
    /// writes them (tar's extraction looks names up by binary search).
    fn dir(&mut self, name: &str, records: &[&str]) -> u64 {
        let mut records = records.to_vec();
        records.sort_by_key(|r| r.get(1..).unwrap_or_default().to_owned());
        let mut d = Vec::new();
        for r in records {
            d.extend(r.as_bytes());
            d.push(0);
        }
        d.push(0);
        let at = self.header(name, b'D', octal(d.len() as u64), "", 0o755);
        self.data(&d);
        at
    }

    fn file(&mut self, name: &str, content: &[u8]) -> u64 {
        let at = self.header(name, b'0', octal(content.len() as u64), "", 0o644);
        self.data(content);
        at
    }

    fn symlink(&mut self, name: &str, target: &str) -> u64 {
        self.header(name, b'2', octal(0), target, 0o777)
    }

    fn hardlink(&mut self, name: &str, target: &str) -> u64 {
        self.header(name, b'1', octal(0), target, 0o644)
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend([0u8; 2 * BLOCK]);
        self.0
    }
}

fn piped(cmd: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&input).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{cmd} failed");
    out.stdout
}

fn compress(compression: &str, tar: &[u8]) -> Vec<u8> {
    piped(&format!("{compression} -c"), tar)
}

/// A Freezer container `c` with one `host_x` set under `root/backups`.
struct Store {
    source: PathBuf,
    compression: &'static str,
}

impl Store {
    fn new(root: &Path, compression: &'static str) -> Store {
        Store {
            source: root.join("backups"),
            compression,
        }
    }

    /// Writes a level's `data` (already compressed, perhaps encrypted) and `metadata`.
    fn put_raw(&self, level: u32, ts: u64, data: &[u8], encrypted: bool) -> PathBuf {
        let rel = format!("tar/host_x/{MTIME}/{level}_{ts}");
        let d = self.source.join("c/data").join(&rel);
        let m = self.source.join("c/metadata").join(&rel);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(d.join("data"), data).unwrap();
        let meta = serde_json::json!({
            "engine_name": "tar",
            "compression": self.compression,
            "encryption": encrypted,
        });
        std::fs::write(m.join("metadata"), meta.to_string()).unwrap();
        d.join("data")
    }

    fn put(&self, level: u32, tar: &[u8]) -> PathBuf {
        self.put_raw(
            level,
            MTIME + 10 * u64::from(level),
            &compress(self.compression, tar),
            false,
        )
    }

    fn src(&self) -> &str {
        self.source.to_str().unwrap()
    }
}

const SET: &str = "c/tar/host_x";

/// What Freezer's restore command makes of these uncompressed levels, in order (tar's own
/// errors about hostile members are expected: it goes on with the rest).
fn tar_extract(levels: &[&[u8]], out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for l in levels {
        let _ = piped(
            &format!(
                "tar --incremental --extract --ignore-zeros --warning=none --overwrite \
                 --directory {} 2>/dev/null; true",
                out.display()
            ),
            l,
        );
    }
}

fn export(store: &Store, point: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["export", store.src(), point, "-o", out.to_str().unwrap()];
    args.extend(extra);
    let o = run(&args);
    assert_no_panic(&o);
    o
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn verify(store: &Store, extra: &[&str]) -> Output {
    let mut args = vec!["verify", store.src()];
    args.extend(extra);
    let o = run(&args);
    assert_no_panic(&o);
    o
}

/// Asserts the export of `latest` equals tar's extraction and succeeded; returns its stderr.
fn export_matches_tar(store: &Store, levels: &[&[u8]]) -> String {
    export_matches_tar_but_root(store, levels, false)
}

/// Like [`export_matches_tar`]; with `skip_root`, the root folder's own attributes are not
/// compared.
fn export_matches_tar_but_root(store: &Store, levels: &[&[u8]], skip_root: bool) -> String {
    let tmp = scratch();
    let want = tmp.path().join("want");
    tar_extract(levels, &want);
    let got = tmp.path().join("got");
    let o = export(store, &format!("{SET}/latest/files"), &got, &[]);
    assert!(o.status.success(), "export failed: {}", stderr(&o));
    let (mut got, mut want) = (walk(&got), walk(&want));
    if skip_root {
        let root = got.remove(".").unwrap();
        assert_eq!(root.mode, Some(0o755), "the root keeps its dumpdir's mode");
        want.remove(".");
    }
    assert_matches(&got, &want, "latest");
    stderr(&o)
}

/// The warning about the member at `header` of `data` is in `log`.
fn warned(log: &str, data: &Path, header: u64) -> bool {
    let line = format!("{}: at offset {header} ", data.display());
    log.lines().any(|l| l.contains(&line) && l.contains("WARN"))
}

#[test]
fn members_naming_the_root_are_left_out() {
    let tmp = scratch();
    let store = Store::new(tmp.path(), "gzip");
    let mut t = Tar::default();
    t.dir("./", &["Ya", "Yb", "Dd"]);
    t.dir("./d/", &["Yf"]);
    t.file("./a", b"alpha\n");
    let mut bad = Vec::new();
    for name in [".", "./", "//"] {
        bad.push(t.file(name, b"a file named like the root\n"));
        bad.push(t.symlink(name, "a"));
        bad.push(t.hardlink(name, "./a"));
    }
    t.file("./b", b"beta\n");
    t.file("./d/f", b"eff\n");
    let tar = t.finish();
    let data = store.put(0, &tar);
    // tar gives the root the mode of the last member naming it (0644 here, a folder nobody
    // but root can enter); restorefs leaves such members out entirely.
    let log = export_matches_tar_but_root(&store, &[&tar], true);
    for &at in &bad {
        assert!(warned(&log, &data, at), "no warning at {at}: {log}");
    }
    // verify builds the tree too: OK, with the same warnings.
    let v = verify(&store, &[]);
    assert!(v.status.success(), "{}", stdout(&v));
    assert!(warned(&stderr(&v), &data, bad[0]), "{}", stderr(&v));
}

#[test]
fn hostile_names_give_what_tar_extracts() {
    let tmp = scratch();
    let store = Store::new(tmp.path(), "bzip2");
    let long = "n".repeat(256);
    let mut t = Tar::default();
    t.dir(
        "./",
        &[
            "Ya", "Yx", "Ydup", "Yself", "Ymissing", "Yearly", "Ylater", "Yc1", "Yc2", "Yloop1",
            "Yloop2", "Dsub", "Yabs",
        ],
    );
    t.dir(
        "./sub/",
        &[
            "Yok",
            "Qjunk",
            "Y",
            "Y../../up",
            "Ya/b",
            "\u{1}\u{2}",
            "Dnone",
        ],
    );
    t.file("./a", b"alpha\n");
    t.file("./x", b"a file first\n");
    let mut bad = vec![
        t.file("./../escape", b"outside\n"),
        t.file("./a/../../b", b"outside too\n"),
        t.file(&format!("./{long}"), b"name too long\n"),
        t.file(&format!("./sub/{long}/deeper"), b"component too long\n"),
        t.hardlink("./self", "./self"),
        t.hardlink("./missing", "./nowhere"),
        t.hardlink("./early", "./later"),
    ];
    t.file("./dup", b"first copy\n");
    t.file("./dup", b"second copy wins\n");
    t.file("./later", b"later\n");
    bad.push(t.hardlink("./c1", "./c2"));
    bad.push(t.hardlink("./c2", "./c1"));
    t.symlink("./loop1", "loop2");
    t.symlink("./loop2", "loop1");
    t.file("/abs", b"leading slash removed\n");
    t.file("./sub/ok", b"ok\n");
    let l0 = t.finish();
    // Level 1: x becomes a folder; level 2: a file again.
    let mut t = Tar::default();
    t.dir(
        "./",
        &[
            "Na", "Dx", "Ndup", "Nlater", "Nloop1", "Nloop2", "Dsub", "Nabs",
        ],
    );
    t.dir("./x/", &["Yin"]);
    t.dir("./sub/", &["Nok"]);
    t.file("./x/in", b"inside\n");
    let l1 = t.finish();
    let mut t = Tar::default();
    t.dir(
        "./",
        &[
            "Na", "Yx", "Ndup", "Nlater", "Nloop1", "Nloop2", "Dsub", "Nabs",
        ],
    );
    t.dir("./sub/", &["Nok"]);
    t.file("./x", b"a file again\n");
    let l2 = t.finish();
    let d0 = store.put(0, &l0);
    store.put(1, &l1);
    store.put(2, &l2);
    let log = export_matches_tar(&store, &[&l0, &l1, &l2]);
    for at in bad {
        assert!(warned(&log, &d0, at), "no warning at {at}: {log}");
    }
    // The intermediate point, too.
    let tmp2 = scratch();
    let want = tmp2.path().join("want");
    tar_extract(&[&l0, &l1], &want);
    let doc = ls_json(&store.source);
    let name = doc["sets"][0]["points"][1]["name"].as_str().unwrap();
    assert_eq!(doc["sets"][0]["points"][1]["level"], 1);
    let got = tmp2.path().join("got");
    let o = export(&store, &format!("{SET}/{name}/files"), &got, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_matches(&walk(&got), &walk(&want), "level 1");
}

#[test]
fn warnings_name_the_level_they_are_about() {
    let tmp = scratch();
    let store = Store::new(tmp.path(), "xz");
    let mut t = Tar::default();
    t.dir("./", &["Ya"]);
    t.file("./a", b"alpha\n");
    let bad = t.file("./../escape", b"outside\n");
    let l0 = t.finish();
    let mut t = Tar::default();
    t.dir("./", &["Na", "Yb"]);
    t.file("./b", b"beta\n");
    let l1 = t.finish();
    let mut t = Tar::default();
    t.dir("./", &["Na", "Nb", "Yc"]);
    t.file("./c", b"gamma\n");
    let l2 = t.finish();
    let d0 = store.put(0, &l0);
    let d1 = store.put(1, &l1);
    let d2 = store.put(2, &l2);
    let log = export_matches_tar(&store, &[&l0, &l1, &l2]);
    assert!(warned(&log, &d0, bad), "{log}");
    for other in [&d1, &d2] {
        assert!(
            !log.contains(other.to_str().unwrap()),
            "a warning names {}: {log}",
            other.display()
        );
    }
}

/// `./`, `./a`, then a member `./big` with the raw size field `size`; returns (tar, offset).
fn with_size(size: [u8; 12]) -> (Vec<u8>, u64) {
    let mut t = Tar::default();
    t.dir("./", &["Ya", "Ybig"]);
    t.file("./a", b"alpha\n");
    let at = t.header("./big", b'0', size, "", 0o644);
    t.data(&[b'z'; 3000]);
    (t.finish(), at)
}

#[test]
fn bogus_sizes_are_damage_at_their_header() {
    let mut max = [0xffu8; 12];
    max[..4].copy_from_slice(&[0x80, 0, 0, 0]);
    let mut two63 = [0u8; 12];
    two63[0] = 0x80;
    two63[4] = 0x80;
    let cases: [(&str, [u8; 12]); 6] = [
        ("2^64-1", max),
        ("2^63", two63),
        ("-1", [0xff; 12]),
        ("8 GiB", octal((8 << 30) - 1)),
        ("past the end", octal(100_000)),
        ("not octal", *b"12x4\0\0\0\0\0\0\0\0"),
    ];
    for (what, size) in cases {
        let tmp = scratch();
        let store = Store::new(tmp.path(), "gzip");
        let (tar, at) = with_size(size);
        let data = store.put(0, &tar);
        let named = format!("{}: at offset {at}: ", data.display());
        let v = verify(&store, &[]);
        assert!(!v.status.success(), "{what}: verify says OK");
        let report = stdout(&v);
        assert!(report.contains("DAMAGED"), "{what}: {report}");
        assert!(report.contains(&named), "{what}: {report}");
        let out = tmp.path().join("out");
        let o = export(&store, &format!("{SET}/latest/files"), &out, &[]);
        assert!(!o.status.success(), "{what}: export succeeded");
        let err = stderr(&o);
        assert!(err.contains(&named), "{what}: {err}");
        assert!(!err.contains(out.to_str().unwrap()), "{what}: {err}");
    }
}

#[test]
fn damaged_streams_are_errors_naming_the_data_file() {
    // Incompressible content, so that a flipped byte lands in compressed data.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut t = Tar::default();
    t.dir("./", &["Ynoise", "Ytext"]);
    t.file("./noise", &noise);
    t.file("./text", &b"some text ".repeat(20_000));
    let tar = t.finish();
    for compression in ["gzip", "bzip2", "xz"] {
        let tmp = scratch();
        let store = Store::new(tmp.path(), compression);
        let mut bytes = compress(compression, &tar);
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        bytes[mid + 1] ^= 0xaa;
        let data = store.put_raw(0, MTIME, &bytes, false);
        let v = verify(&store, &[]);
        assert!(!v.status.success(), "{compression}: verify says OK");
        let report = stdout(&v);
        assert!(
            report.contains("DAMAGED") && report.contains(data.to_str().unwrap()),
            "{compression}: {report}"
        );
        let out = tmp.path().join("out");
        let o = export(&store, &format!("{SET}/latest/files"), &out, &[]);
        assert!(!o.status.success(), "{compression}: export succeeded");
        assert!(
            stderr(&o).contains(data.to_str().unwrap()),
            "{compression}: {}",
            stderr(&o)
        );
    }
    // A damaged tar header checksum, in an intact gzip stream.
    let tmp = scratch();
    let store = Store::new(tmp.path(), "gzip");
    let mut bad = tar.clone();
    let text_header = BLOCK * 2 + noise.len().next_multiple_of(BLOCK) + BLOCK;
    assert_eq!(&bad[text_header..text_header + 6], b"./text");
    bad[text_header + 3] = b'X';
    let data = store.put(0, &bad);
    let o = export(
        &store,
        &format!("{SET}/latest/files"),
        &tmp.path().join("o"),
        &[],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}: at offset {text_header}: ", data.display()))
            && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn a_wrong_key_is_a_clear_error_and_no_tree() {
    let tmp = scratch();
    let store = Store::new(tmp.path(), "gzip");
    let mut t = Tar::default();
    t.dir("./", &["Ya"]);
    t.file("./a", b"secret\n");
    let tar = t.finish();
    let right = tmp.path().join("right");
    std::fs::write(&right, b"right key\n").unwrap();
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, b"wrong key\n").unwrap();
    let enc = piped(
        &format!(
            "gzip -c | openssl enc -aes-256-cfb -md sha256 -pass file:{}",
            right.display()
        ),
        &tar,
    );
    let data = store.put_raw(0, MTIME, &enc, true);
    let point = format!("{SET}/latest/files");
    let out = tmp.path().join("out");
    let o = export(
        &store,
        &point,
        &out,
        &["--freezer-key", wrong.to_str().unwrap()],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(data.to_str().unwrap()) && err.contains("key"),
        "{err}"
    );
    let left = std::fs::read_dir(&out).map_or(0, |d| d.count());
    assert_eq!(left, 0, "a wrong key exported something");
    let v = verify(&store, &["--freezer-key", wrong.to_str().unwrap()]);
    assert!(!v.status.success() && stdout(&v).contains("DAMAGED"));
    // The right key works.
    let good = tmp.path().join("good");
    let o = export(
        &store,
        &point,
        &good,
        &["--freezer-key", right.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(good.join("a")).unwrap(), b"secret\n");
}

#[test]
fn decompression_bombs_are_bounded() {
    let tmp = scratch();
    let store = Store::new(tmp.path(), "gzip");
    let mut t = Tar::default();
    let names: Vec<String> = (0..10).map(|i| format!("Yzeros{i}")).collect();
    t.dir("./", &names.iter().map(String::as_str).collect::<Vec<_>>());
    for i in 0..10 {
        t.file(&format!("./zeros{i}"), &vec![0u8; 4 << 20]);
    }
    let tar = t.finish();
    let data = store.put(0, &tar);
    assert!(std::fs::metadata(&data).unwrap().len() < 1 << 20);
    // 1 MiB of cache: a level may decompress to 8 MiB.
    let small = ["--cache-size", "1M"];
    let out = tmp.path().join("out");
    let o = export(&store, &format!("{SET}/latest/files"), &out, &small);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(data.to_str().unwrap()) && err.contains("more than 8388608 bytes"),
        "{err}"
    );
    let v = verify(&store, &small);
    assert!(!v.status.success() && stdout(&v).contains(data.to_str().unwrap()));
    // With the default cache the same level is fine.
    let out = tmp.path().join("fine");
    let o = export(&store, &format!("{SET}/latest/files"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..10 {
        let f = std::fs::read(out.join(format!("zeros{i}"))).unwrap();
        assert!(f.len() == 4 << 20 && f.iter().all(|&b| b == 0));
    }
}

const DECODE_LOG: (&str, &str) = ("RUST_LOG", "warn,restorefs::format::freezer=info");

/// Lines saying `data` was decoded.
fn decodes(log: &str, data: &Path) -> usize {
    let line = format!("{}: decoding the level", data.display());
    log.lines().filter(|l| l.contains(&line)).count()
}

#[test]
fn a_failed_build_is_remembered() {
    if !fuse_available("a_failed_build_is_remembered") {
        return;
    }
    let tmp = scratch();
    let store = Store::new(tmp.path(), "gzip");
    let (tar, _) = with_size(octal(100_000));
    let data = store.put(0, &tar);
    let mut m = mount_with_env(&store.source, &[], &[DECODE_LOG]);
    let files = m.join(&format!("{SET}/latest/files"));
    let list = || -> Result<usize, Option<i32>> {
        let entries = std::fs::read_dir(&files).map_err(|e| e.raw_os_error())?;
        let all: std::io::Result<Vec<_>> = entries.collect();
        all.map(|v| v.len()).map_err(|e| e.raw_os_error())
    };
    assert_eq!(list(), Err(Some(libc::EIO)));
    let start = std::time::Instant::now();
    let again: Vec<_> = (0..20).map(|_| list()).collect();
    let took = start.elapsed();
    assert!(
        again.iter().all(|r| *r == Err(Some(libc::EIO))),
        "{again:?}"
    );
    assert!(took.as_secs() < 5, "20 failed listings took {took:?}");
    let log = m.stop();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(decodes(&log, &data), 1, "{log}");
}

#[test]
fn eight_threads_read_a_level_never_built() {
    if !fuse_available("eight_threads_read_a_level_never_built") {
        return;
    }
    let tmp = scratch();
    let store = Store::new(tmp.path(), "xz");
    let content = |i: usize| -> Vec<u8> {
        (0..(1 << 20) + i * 1000)
            .map(|j| (j * (i + 3) % 251) as u8)
            .collect()
    };
    let mut t = Tar::default();
    let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    let recs: Vec<String> = names.iter().map(|n| format!("Y{n}")).collect();
    t.dir("./", &recs.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, n) in names.iter().enumerate() {
        t.file(&format!("./{n}"), &content(i));
    }
    let l0 = t.finish();
    let mut t = Tar::default();
    let mut recs1: Vec<String> = names.iter().map(|n| format!("N{n}")).collect();
    recs1.push("Ynew".into());
    t.dir("./", &recs1.iter().map(String::as_str).collect::<Vec<_>>());
    t.file("./new", &content(9));
    let l1 = t.finish();
    let d0 = store.put(0, &l0);
    let d1 = store.put(1, &l1);
    let mut m = mount_with_env(&store.source, &[], &[DECODE_LOG]);
    let root = m.join(&format!("{SET}/latest/files"));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let root = root.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                // Each thread starts on a different file, all in the same not-yet-built level.
                let mut got = Vec::new();
                for k in 0..9 {
                    let i = (t + k) % 9;
                    let name = if i == 8 {
                        "new".to_owned()
                    } else {
                        format!("f{i}")
                    };
                    got.push((i, std::fs::read(root.join(name)).unwrap()));
                }
                got
            })
        })
        .collect();
    for th in threads {
        for (i, bytes) in th.join().unwrap() {
            let want = content(if i == 8 { 9 } else { i });
            assert!(bytes == want, "file {i}: wrong bytes");
        }
    }
    let log = m.stop();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(decodes(&log, &d0), 1, "{log}");
    assert_eq!(decodes(&log, &d1), 1, "{log}");
}

/// Skips an xz variable-length integer at `i`.
fn skip_varint(b: &[u8], i: &mut usize) {
    while b[*i] & 0x80 != 0 {
        *i += 1;
    }
    *i += 1;
}

#[test]
fn an_xz_header_asking_for_gigabytes_is_refused() {
    let tmp = scratch();
    let store = Store::new(tmp.path(), "xz");
    let mut t = Tar::default();
    t.dir("./", &["Ya"]);
    t.file("./a", b"alpha\n");
    let mut xz = compress("xz", &t.finish());
    // The first block header follows the 12-byte stream header: raise its LZMA2 dictionary
    // to 4 GiB (property 40) and fix the header's CRC32.
    let start = 12;
    let size = (usize::from(xz[start]) + 1) * 4;
    let flags = xz[start + 1];
    let mut i = start + 2;
    if flags & 0x40 != 0 {
        skip_varint(&xz, &mut i);
    }
    if flags & 0x80 != 0 {
        skip_varint(&xz, &mut i);
    }
    assert_eq!((xz[i], xz[i + 1]), (0x21, 1), "an LZMA2 filter");
    xz[i + 2] = 40;
    let mut crc = flate2::Crc::new();
    crc.update(&xz[start..start + size - 4]);
    xz[start + size - 4..start + size].copy_from_slice(&crc.sum().to_le_bytes());
    let data = store.put_raw(0, MTIME, &xz, false);
    let o = export(
        &store,
        &format!("{SET}/latest/files"),
        &tmp.path().join("out"),
        &[],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(data.to_str().unwrap()) && err.contains("memory"),
        "{err}"
    );
}
