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
