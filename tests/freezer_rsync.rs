//! Freezer's rsync engine (`rsyncv2`): the level-0 backup written by the real freezer-agent
//! 19.0.0, whose own restore fails (`AttributeError`), read through `export` and the mount and
//! compared with the tree freezer backed up (the reference manifest: paths, types, modes,
//! owners, sizes, mtimes, sha256, symlink targets).

mod common;

use std::path::PathBuf;

use common::tree::assert_cases_match;
use common::*;
use serde_json::Value;

fn source() -> PathBuf {
    data_dir().join("freezer")
}

/// (set path in the mount, point name, expected tree) for every rsync backup of the manifest.
fn cases() -> Vec<(String, String, Value)> {
    let out = freezer_cases(&source(), "rsync", |b, point| {
        // Freezer could not restore it: the manifest's tree is what it backed up.
        assert_eq!(b["freezer_restore"]["rc"], 1);
        assert_eq!(point["engine_name"], "rsync");
    });
    assert_eq!(out.len(), 1);
    out
}

#[test]
fn the_reference_backup_exports_to_what_freezer_backed_up() {
    let tmp = scratch();
    assert_cases_match(cases(), "export", |i, path| {
        let out = tmp.path().join(i.to_string());
        let src = source();
        run_ok(&[
            "export",
            src.to_str().unwrap(),
            path,
            "-o",
            out.to_str().unwrap(),
        ]);
        out
    });
}

#[test]
fn the_reference_backup_through_the_mount() {
    if !fuse_available("the_reference_backup_through_the_mount") {
        return;
    }
    let m = Mounted::new(&source(), &[]);
    assert_cases_match(cases(), "mount", |_, path| m.join(path));
}

#[test]
fn verify_checks_every_file_against_freezers_block_signatures() {
    use std::io::{Read, Write};
    // The sample as freezer wrote it: every block matches the SHA-1 and Adler-32 it recorded.
    let set = source().join("rsyncv2-level0");
    let text = run_ok(&["verify", set.to_str().unwrap()]);
    assert!(text.contains("OK "), "{text}");
    // One bit changed inside the stream (recompressed, so only the signatures can tell).
    let tmp = scratch();
    copy_dir(&set, tmp.path());
    let data = tmp
        .path()
        .join("store/data/rsync/oraclehost_rsv2/1795313347/0_1795313347/data");
    let mut plain = Vec::new();
    flate2::read::ZlibDecoder::new(&std::fs::read(&data).unwrap()[..])
        .read_to_end(&mut plain)
        .unwrap();
    let n = plain.len();
    plain[n - 100] ^= 1;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&plain).unwrap();
    std::fs::write(&data, z.finish().unwrap()).unwrap();
    let r = run(&["verify", tmp.path().to_str().unwrap()]);
    assert_no_panic(&r);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!r.status.success(), "{out}");
    assert!(out.contains("engine_metadata"), "{out}");
    assert!(
        out.contains("\"sub/c.txt\": block 12 (bytes 49152..50000) differs"),
        "{out}"
    );
}
