//! Damaged and hostile input: a clear error naming the file and the byte offset, listed by `ls`
//! on the points that depend on it; every other point keeps working; never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::writer::{Frame, StreamSpec};
use common::*;
use serde_json::Value;

/// A private copy of a reference set, as `<tmp>/<name>`.
fn copy_set(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = scratch();
    let dir = tmp.path().join(name);
    copy_dir(&data_dir().join("virtnbd").join(name), &dir);
    (tmp, dir)
}

fn points(doc: &Value) -> &Vec<Value> {
    doc["sets"][0]["points"].as_array().unwrap()
}

/// The error of `file` in `point`, if any.
fn file_error(point: &Value, file: &str) -> Option<String> {
    let f = point["files"]
        .as_array()?
        .iter()
        .find(|f| f["path"] == file)?;
    f["error"].as_str().map(str::to_owned)
}

fn expected_sha(chain: &str, point: &str, disk: &str) -> String {
    manifest_points()
        .into_iter()
        .find(|m| m.chain == chain && m.point == point && m.disk == disk)
        .unwrap()
        .sha256
}

/// Exports `path` from `source`; returns the sha256 or the error text.
fn export(source: &Path, path: &str) -> Result<String, String> {
    let tmp = scratch();
    let out = tmp.path().join("out");
    let r = run(&[
        "export",
        source.to_str().unwrap(),
        path,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_no_panic(&r);
    if r.status.success() {
        Ok(sha256_file(&out))
    } else {
        Err(String::from_utf8_lossy(&r.stderr).into_owned())
    }
}

fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

/// File offset of the first frame after the meta frame.
fn first_frame(path: &Path) -> usize {
    meta_end(&std::fs::read(path).unwrap())
}

fn hex(b: &[u8]) -> usize {
    usize::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap()
}

/// The meta frame is its header, the JSON and a CRLF.
fn meta_end(data: &[u8]) -> usize {
    40 + hex(&data[22..38]) + 2
}

/// (offset, kind, length) of every frame header of an uncompressed stream, by the spec's grammar.
fn frames(data: &[u8]) -> Vec<(usize, String, usize)> {
    let mut out = Vec::new();
    let mut pos = meta_end(data);
    while pos + 40 <= data.len() {
        let kind = String::from_utf8_lossy(&data[pos..pos + 4]).into_owned();
        let len = hex(&data[pos + 22..pos + 38]);
        out.push((pos, kind.clone(), len));
        pos += match kind.as_str() {
            "data" => 40 + len + 2,
            "stop" => break,
            _ => 40,
        };
    }
    out
}

/// Offset of the last occurrence of `needle` in the file.
fn rfind(path: &Path, needle: &[u8]) -> usize {
    let data = std::fs::read(path).unwrap();
    data.windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap()
}

const PLAIN_POINTS: [&str; 6] = [
    "p0-full", "p1-inc1", "p2-diff1", "p3-diff2", "p4-inc2", "p5-inc3",
];

/// Asserts that exactly the points with index in `bad` have an error on `disk` that names
/// `file` and `offset` (and says `what`), and that the others export to the MANIFEST hash.
fn check_plain(
    dir: &Path,
    chain: &str,
    disk: &str,
    bad: &[usize],
    file: &str,
    offset: usize,
    what: &str,
) {
    let source = dir.parent().unwrap();
    let doc = ls_json(source);
    let pts = points(&doc);
    assert_eq!(pts.len(), 6);
    let set = dir.file_name().unwrap().to_str().unwrap();
    for (i, p) in pts.iter().enumerate() {
        let name = p["name"].as_str().unwrap();
        let path = format!("{set}/{name}/{disk}.raw");
        if bad.contains(&i) {
            let e = file_error(p, &format!("{disk}.raw"))
                .unwrap_or_else(|| panic!("{name}: no error on {disk}"));
            let where_ = format!("{file}: at offset {offset}: ");
            assert!(
                e.contains(&where_),
                "{name}: error {e:?} does not name {where_:?}"
            );
            assert!(
                e.contains(what),
                "{name}: error {e:?} does not say {what:?}"
            );
            let err = export(source, &path).unwrap_err();
            assert!(err.contains(&where_), "export error {err:?}");
        } else {
            assert_eq!(file_error(p, &format!("{disk}.raw")), None, "{name}");
            assert_eq!(
                export(source, &path).unwrap(),
                expected_sha(chain, PLAIN_POINTS[i], disk),
                "{name}"
            );
        }
    }
}

#[test]
fn truncated_stream() {
    let (_tmp, dir) = copy_set("v1-plain");
    let f = dir.join("vda.inc.virtnbdbackup.2.data");
    let data = std::fs::read(&f).unwrap();
    std::fs::write(&f, &data[..100_000]).unwrap();
    // The first data payload that runs past the new end of the file.
    let (hdr, _, _) = *frames(&data)
        .iter()
        .find(|(pos, kind, len)| kind == "data" && pos + 40 + len > 100_000)
        .unwrap();
    let off = hdr + 40;
    check_plain(
        &dir,
        "v1-plain",
        "vda",
        &[4, 5],
        &f.display().to_string(),
        off,
        "truncated",
    );
    check_plain(&dir, "v1-plain", "vdb", &[], "", 0, "");
}

#[test]
fn truncated_single_disk_point_is_listed_with_its_error() {
    let (_tmp, dir) = copy_set("v1-misc-copy");
    let f = dir.join("vda.copy.data");
    let data = std::fs::read(&f).unwrap();
    std::fs::write(&f, &data[..data.len() - 20]).unwrap();
    let doc = ls_json(dir.parent().unwrap());
    let p = &points(&doc)[0];
    let e = p["error"].as_str().expect("point-level error");
    assert!(e.contains("vda.copy.data: at offset"), "{e}");
    assert!(p.get("files").is_none());
}

#[test]
fn garbage_frame_header() {
    let (_tmp, dir) = copy_set("v1-plain");
    let f = dir.join("vda.diff.1795313049.data");
    let off = first_frame(&f);
    patch(&f, off, b"junk");
    check_plain(
        &dir,
        "v1-plain",
        "vda",
        &[3],
        &f.display().to_string(),
        off,
        "garbage frame header",
    );
}

#[test]
fn bad_hex_in_frame_header() {
    let (_tmp, dir) = copy_set("v1-plain");
    let f = dir.join("vda.diff.1795313049.data");
    let off = first_frame(&f);
    patch(&f, off + 10, b"g");
    check_plain(
        &dir,
        "v1-plain",
        "vda",
        &[3],
        &f.display().to_string(),
        off,
        "bad hex",
    );
}

#[test]
fn bad_meta_json() {
    let (_tmp, dir) = copy_set("v1-plain");
    let f = dir.join("vdb.full.data");
    patch(&f, 40, b"X");
    check_plain(
        &dir,
        "v1-plain",
        "vdb",
        &[0, 1, 2, 3, 4, 5],
        &f.display().to_string(),
        40,
        "bad meta JSON",
    );
    check_plain(&dir, "v1-plain", "vda", &[], "", 0, "");
}

#[test]
fn compression_trailer_missing() {
    let (_tmp, dir) = copy_set("v1-lz4");
    let f = dir.join("vda.inc.virtnbdbackup.2.data");
    let data = std::fs::read(&f).unwrap();
    std::fs::write(&f, &data[..data.len() - 40]).unwrap();
    let len = data.len() - 40;
    check_plain(
        &dir,
        "v1-lz4",
        "vda",
        &[4, 5],
        &f.display().to_string(),
        len,
        "compression trailer missing",
    );
}

#[test]
fn compression_trailer_inconsistent() {
    let (_tmp, dir) = copy_set("v1-lz4");
    let f = dir.join("vda.full.data");
    // The trailer of the real file: [132756, 298, {"157872": [140312, 17560]}]
    let trailer = rfind(&f, b"[132756");
    let at = rfind(&f, b"{\"157872\"") + 2;
    patch(&f, at, b"157873");
    check_plain(
        &dir,
        "v1-lz4",
        "vda",
        &[0, 1, 2, 3, 4, 5],
        &f.display().to_string(),
        trailer,
        "do not add up",
    );
}

#[test]
fn compression_trailer_with_wrong_frame_size() {
    let (_tmp, dir) = copy_set("v1-lz4");
    let f = dir.join("vda.full.data");
    let at = rfind(&f, b"[132756, 298,") + 9;
    patch(&f, at, b"299");
    // The second data frame's payload (298 bytes at 0x20879) no longer ends at its CRLF.
    check_plain(
        &dir,
        "v1-lz4",
        "vda",
        &[0, 1, 2, 3, 4, 5],
        &f.display().to_string(),
        0x20879 + 299,
        "trailer",
    );
}

#[test]
fn lz4_frame_that_fails_to_decode() {
    let (_tmp, dir) = copy_set("v1-lz4");
    let f = dir.join("vda.inc.virtnbdbackup.1.data");
    let payload = first_frame(&f) + 40;
    // Inside the first block of the first LZ4 frame (after its 15-byte header and block size).
    patch(&f, payload + 24, &[0x5a; 16]);
    let source = dir.parent().unwrap();
    // Indexing reads only frame headers: the damage shows when the data is read.
    let doc = ls_json(source);
    for p in points(&doc) {
        assert_eq!(file_error(p, "vda.raw"), None);
    }
    let pts: Vec<String> = points(&doc)
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let err = export(source, &format!("v1-lz4/{}/vda.raw", pts[1])).unwrap_err();
    let where_ = format!(
        "{}: at offset {}: LZ4 frame fails to decode",
        f.display(),
        // The damaged block starts after the LZ4 frame's 15-byte header.
        payload + 15
    );
    assert!(err.contains(&where_), "{err}");
    assert_eq!(
        export(source, &format!("v1-lz4/{}/vda.raw", pts[0])).unwrap(),
        expected_sha("v1-lz4", "p0-full", "vda")
    );
    assert_eq!(
        export(source, &format!("v1-lz4/{}/vdb.raw", pts[1])).unwrap(),
        expected_sha("v1-lz4", "p1-inc1", "vdb")
    );
    let r = run(&["verify", source.to_str().unwrap()]);
    assert_no_panic(&r);
    assert!(!r.status.success());
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(out.matches("DAMAGED").count(), 5, "{out}");
    assert!(
        out.contains(&format!("OK       v1-lz4/{}", pts[0])),
        "{out}"
    );
    assert!(out.contains(&where_), "{out}");
}

#[test]
fn chain_without_its_base() {
    let (_tmp, dir) = copy_set("v1-plain");
    std::fs::remove_file(dir.join("vda.full.data")).unwrap();
    let doc = ls_json(dir.parent().unwrap());
    let pts = points(&doc);
    assert_eq!(pts.len(), 6);
    // The full point still serves vdb and vdc; it has no vda any more.
    assert!(file_error(&pts[0], "vda.raw").is_none());
    assert!(
        pts[0]["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "vdb.raw")
    );
    for p in &pts[1..] {
        let e = file_error(p, "vda.raw").unwrap();
        assert!(
            e.contains("parent checkpoint \"virtnbdbackup.0\" not found"),
            "{e}"
        );
        assert!(e.contains("at offset 40: "), "{e}");
        assert_eq!(file_error(p, "vdb.raw"), None);
    }
    check_plain(&dir, "v1-plain", "vdb", &[], "", 0, "");
}

#[test]
fn chain_without_its_parent_checkpoint() {
    let (_tmp, dir) = copy_set("v1-plain");
    std::fs::remove_file(dir.join("vda.inc.virtnbdbackup.1.data")).unwrap();
    let doc = ls_json(dir.parent().unwrap());
    let pts = points(&doc);
    for p in &pts[2..] {
        let e = file_error(p, "vda.raw").unwrap();
        assert!(e.contains("\"virtnbdbackup.1\" not found"), "{e}");
    }
    assert_eq!(file_error(&pts[0], "vda.raw"), None);
}

#[test]
fn hostile_disk_names_in_meta() {
    let tmp = scratch();
    let dir = tmp.path().join("vm");
    std::fs::create_dir(&dir).unwrap();
    for (file, meta_name) in [
        ("vda", "../x"),
        ("vdb", "/"),
        ("vdc", "a\0b"),
        ("vdd", "vdd"),
    ] {
        let mut s = StreamSpec::new(meta_name, 4096, "2026-01-01T00:00:00.000001");
        s.frames.push(Frame::Data(0, vec![1; 4096]));
        std::fs::write(dir.join(format!("{file}.full.data")), s.to_bytes()).unwrap();
    }
    let doc = ls_json(tmp.path());
    let p = &points(&doc)[0];
    for disk in ["vda", "vdb", "vdc"] {
        let e = file_error(p, &format!("{disk}.raw")).unwrap();
        assert!(
            e.contains(&format!("{disk}.full.data: at offset 40: unsafe disk name")),
            "{e}"
        );
    }
    assert_eq!(file_error(p, "vdd.raw"), None);
    let names: Vec<&str> = p["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.contains('/') && !n.contains('\0') && !n.contains(".."))
    );
    assert_eq!(
        export(tmp.path(), "vm/latest/vdd.raw").unwrap(),
        sha256(&[1; 4096])
    );
}

/// Names of the points of the only set under `source`.
fn point_names(source: &Path) -> Vec<String> {
    points(&ls_json(source))
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn lz4_content_checksum_mismatch_fails_export_reads_and_verify() {
    let (_tmp, dir) = copy_set("v1-lz4");
    let f = dir.join("vda.full.data");
    // The first data frame holds one LZ4 frame of 132756 bytes (the trailer's first entry);
    // python-lz4 ends it with the 4-byte content checksum (FLG 0x5c: block and content sums).
    let lz4 = first_frame(&f) + 40;
    let data = std::fs::read(&f).unwrap();
    assert_eq!(data[lz4..lz4 + 5], [0x04, 0x22, 0x4d, 0x18, 0x5c]);
    let sum = lz4 + 132756 - 4;
    patch(&f, sum, &[data[sum] ^ 0x01]);
    let source = dir.parent().unwrap();
    let where_ = format!(
        "{}: at offset {sum}: content checksum of the LZ4 frame at offset {lz4} does not match",
        f.display()
    );
    let pts = point_names(source);
    for p in &pts {
        let err = export(source, &format!("v1-lz4/{p}/vda.raw")).unwrap_err();
        assert!(err.contains(&where_), "{p}: {err}");
    }
    assert_eq!(
        export(source, &format!("v1-lz4/{}/vdb.raw", pts[0])).unwrap(),
        expected_sha("v1-lz4", "p0-full", "vdb")
    );

    // What a mount read gets: the error, as EIO, for every read of that frame.
    let cache = scratch();
    let cat = scan_in_process(source, 16 << 20, cache.path());
    let node =
        restorefs::vfs::resolve(&cat.tree(None), &format!("v1-lz4/{}/vda.raw", pts[0])).unwrap();
    let restorefs::vfs::Node::File(image) = node else {
        panic!("not a file")
    };
    for at in [0u64, 4096, 300_000] {
        let e = image.read_at(at, &mut [0u8; 4096]).unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains(&where_), "{e}");
    }

    let r = run(&["verify", source.to_str().unwrap()]);
    assert_no_panic(&r);
    assert!(!r.status.success());
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(out.matches("DAMAGED").count(), 6, "{out}");
    assert!(out.contains(&where_), "{out}");
}

/// Adler-32 (zlib, initial value 1), written out here so the test does not trust the crate's.
fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[test]
fn data_chksum_files_are_checked_by_verify() {
    let (_tmp, dir) = copy_set("v1-plain");
    let source = dir.parent().unwrap();
    let f = dir.join("vda.inc.virtnbdbackup.2.data");
    let sum_file = dir.join("vda.inc.virtnbdbackup.2.data.chksum");
    let right = adler32(&std::fs::read(&f).unwrap());
    // As virtnbdbackup writes it: decimal, no newline.
    std::fs::write(&sum_file, right.to_string()).unwrap();
    let r = run(&["verify", source.to_str().unwrap()]);
    assert_no_panic(&r);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{out}");
    assert_eq!(out.matches("OK ").count(), 6, "{out}");

    // A wrong sum damages the points that read the file (inc2 and inc3), naming both files.
    std::fs::write(&sum_file, right.wrapping_add(1).to_string()).unwrap();
    let r = run(&["verify", source.to_str().unwrap()]);
    assert_no_panic(&r);
    assert!(!r.status.success());
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(out.matches("DAMAGED").count(), 2, "{out}");
    let want = format!(
        "{}: at offset 0: Adler-32 of the file is {right}, {} says {}",
        f.display(),
        sum_file.display(),
        right.wrapping_add(1)
    );
    assert!(out.contains(&want), "{out}");
    let pts = point_names(source);
    for (i, p) in pts.iter().enumerate() {
        let verdict = if i >= 4 { "DAMAGED" } else { "OK     " };
        assert!(
            out.contains(&format!("{verdict}  v1-plain/{p}")),
            "{p}: {out}"
        );
    }

    // Not a number, or a huge file of junk: damaged, read no further than a checksum reaches.
    std::fs::write(&sum_file, vec![b'7'; 50 << 20]).unwrap();
    let r = run(&["verify", source.to_str().unwrap()]);
    assert_no_panic(&r);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.contains(&format!(
            "{}: at offset 0: not a decimal Adler-32",
            sum_file.display()
        )),
        "{out}"
    );
    // Exports do not read the sum file.
    assert_eq!(
        export(source, &format!("v1-plain/{}/vda.raw", pts[5])).unwrap(),
        expected_sha("v1-plain", "p5-inc3", "vda")
    );
}

/// Writes `vm/vda.full.data` with `meta` as its meta JSON and `frames`; returns its path.
fn hostile_stream(root: &Path, meta: &str, frames: Vec<Frame>, lz4: Option<usize>) -> PathBuf {
    let dir = root.join("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vda.full.data");
    let mut out = Vec::new();
    common::writer::write_stream(&mut out, meta, frames.into_iter(), lz4).unwrap();
    std::fs::write(&path, out).unwrap();
    path
}

/// The error of the only point under `source` (a single-disk point fails as a whole).
fn only_point_error(source: &Path) -> String {
    let doc = ls_json(source);
    let p = &points(&doc)[0];
    p["error"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| file_error(p, "vda.raw"))
        .unwrap_or_else(|| panic!("no error: {p}"))
}

fn meta(virtual_size: &str, data_size: &str, compressed: bool) -> String {
    format!(
        r#"{{"virtualSize": {virtual_size}, "dataSize": {data_size}, "date": "2026-01-01T00:00:00.000001", "diskName": "vda", "checkpointName": "virtnbdbackup.0", "compressed": {compressed}, "compressionMethod": "lz4", "parentCheckpoint": "", "incremental": false, "streamVersion": 2}}"#
    )
}

#[test]
fn hostile_sizes_in_meta_are_errors() {
    for (vsize, dsize, what) in [
        ("18446744073709551615", "0", "beyond any disk"),
        ("9223372036854775808", "0", "beyond any disk"),
        ("-1", "0", "not a non-negative integer"),
        ("1e30", "0", "not a non-negative integer"),
        ("\"4096\"", "0", "not a non-negative integer"),
        ("4096", "-4096", "not a non-negative integer"),
    ] {
        let tmp = scratch();
        let f = hostile_stream(
            tmp.path(),
            &meta(vsize, dsize, false),
            vec![Frame::Data(0, vec![1; 4096])],
            None,
        );
        let e = only_point_error(tmp.path());
        assert!(
            e.contains(&format!("{}: at offset 40: ", f.display())) && e.contains(what),
            "{vsize}/{dsize}: {e}"
        );
    }
    // A size the data frames do not add up to.
    let tmp = scratch();
    let f = hostile_stream(
        tmp.path(),
        &meta("8192", "18446744073709551615", false),
        vec![Frame::Data(0, vec![1; 4096])],
        None,
    );
    let e = only_point_error(tmp.path());
    assert!(
        e.contains(&f.display().to_string()) && e.contains("dataSize 18446744073709551615"),
        "{e}"
    );
}

#[test]
fn frame_headers_past_the_disk_or_the_file_are_errors() {
    let m = meta("65536", "4096", false);
    // (field offset in the first data header, new value): start or length near 2^64.
    for (field, value) in [
        (5, "FFFFFFFFFFFFF000"),
        (22, "FFFFFFFFFFFFFFFF"),
        (22, "8000000000000000"),
        (5, "0000000000010000"),
    ] {
        let tmp = scratch();
        let f = hostile_stream(tmp.path(), &m, vec![Frame::Data(0, vec![1; 4096])], None);
        let hdr = first_frame(&f);
        patch(&f, hdr + field, value.as_bytes());
        let e = only_point_error(tmp.path());
        assert!(
            e.contains(&format!("{}: at offset {hdr}: ", f.display())),
            "{field}={value}: {e}"
        );
    }
    // A zero frame claiming the whole 64-bit space.
    let tmp = scratch();
    let f = hostile_stream(
        tmp.path(),
        &meta("65536", "0", false),
        vec![Frame::Zero(0, 4096)],
        None,
    );
    let hdr = first_frame(&f);
    patch(&f, hdr + 22, b"FFFFFFFFFFFFFFFF");
    let e = only_point_error(tmp.path());
    assert!(
        e.contains(&format!("{}: at offset {hdr}: ", f.display())) && e.contains("leaves"),
        "{e}"
    );
}

#[test]
fn hostile_lz4_frames_are_errors() {
    let raw: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let m = meta("262144", "200000", true);
    // The declared content size set to 2^64-1 (header checksum fixed up, as an attacker would).
    let tmp = scratch();
    let f = hostile_stream(
        tmp.path(),
        &m,
        vec![Frame::Data(0, raw.clone())],
        Some(1 << 20),
    );
    let lz4 = first_frame(&f) + 40;
    let mut data = std::fs::read(&f).unwrap();
    data[lz4 + 6..lz4 + 14].copy_from_slice(&u64::MAX.to_le_bytes());
    data[lz4 + 14] = (twox_hash::XxHash32::oneshot(0, &data[lz4 + 4..lz4 + 14]) >> 8) as u8;
    std::fs::write(&f, &data).unwrap();
    let e = only_point_error(tmp.path());
    assert!(
        e.contains(&format!("{}: at offset {lz4}: ", f.display())) && e.contains("declares"),
        "{e}"
    );

    // A block size word of 2^31-1: indexing passes (it reads frame headers only), reading fails.
    let tmp = scratch();
    let f = hostile_stream(tmp.path(), &m, vec![Frame::Data(0, raw)], Some(1 << 20));
    let lz4 = first_frame(&f) + 40;
    let block = lz4 + 15;
    patch(&f, block, &0x7fff_ffffu32.to_le_bytes());
    let err = export(tmp.path(), "vm/latest/vda.raw").unwrap_err();
    assert!(
        err.contains(&format!("{}: at offset {block}: ", f.display()))
            && err.contains("block larger"),
        "{err}"
    );
}

#[test]
fn vmconfig_name_from_meta_stays_in_the_backup_folder() {
    let tmp = scratch();
    let dir = tmp.path().join("vm");
    // `vmconfig.<checkpointName>.xml` with checkpointName "a/../../secret" would be
    // vm/vmconfig.a/../../secret.xml: a file outside the backup folder.
    std::fs::create_dir_all(dir.join("vmconfig.a")).unwrap();
    std::fs::write(tmp.path().join("secret.xml"), "not a backup file").unwrap();
    let mut s = StreamSpec::new("vda", 4096, "2026-01-01T00:00:00.000001");
    s.checkpoint = "a/../../secret".into();
    s.frames.push(Frame::Data(0, vec![1; 4096]));
    std::fs::write(dir.join("vda.full.data"), s.to_bytes()).unwrap();
    let doc = ls_json(tmp.path());
    let set = doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "vm")
        .unwrap();
    let files: Vec<&str> = set["points"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    // The image and its folder (what it holds), no vmconfig.
    assert_eq!(files, ["vda", "vda.raw"]);
}
