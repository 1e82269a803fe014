//! Freezer backups written by the real freezer-agent 19.0.0: every backup of every tar set,
//! restored through `export` and seen through the mount, equals what Freezer's own restore gave
//! (paths, types, modes, owners, sizes, sha256, symlink targets, hard-link groups).

mod common;

use std::path::PathBuf;

use common::tree::{assert_cases_match, assert_matches, from_manifest, walk};
use common::*;
use serde_json::Value;

fn source() -> PathBuf {
    data_dir().join("freezer")
}

/// (set path in the mount, point name, expected tree) for every tar backup.
fn cases() -> Vec<(String, String, Value)> {
    let out = freezer_cases(&source(), "tar", |_, _| {});
    assert_eq!(out.len(), 8);
    out
}

#[test]
fn every_backup_exports_to_what_freezer_restored() {
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
fn every_backup_through_the_mount() {
    if !fuse_available("every_backup_through_the_mount") {
        return;
    }
    let m = Mounted::new(&source(), &[]);
    assert_cases_match(cases(), "mount", |_, path| m.join(path));
}

#[test]
fn points_carry_level_and_timestamp_and_rsync_sets_are_served() {
    let doc = ls_json(&source());
    let sets = doc["sets"].as_array().unwrap();
    // The rsync engine is served too (tests/freezer_rsync.rs).
    let rsync = sets
        .iter()
        .find(|s| s["path"].as_str().unwrap().contains("/rsync/"))
        .unwrap();
    assert!(rsync["error"].is_null(), "{rsync}");
    let tgz = sets
        .iter()
        .find(|s| s["path"] == "tar-gzip/store/tar/oraclehost_tgz")
        .unwrap();
    let names: Vec<&str> = tgz["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 5);
    assert!(names[2].ends_with("_level2"));
    let p = &tgz["points"][2];
    assert_eq!(
        (p["level"].as_u64(), p["timestamp"].as_u64()),
        (Some(2), Some(1795313272))
    );
    assert_eq!(
        p["files"][0]["sources"],
        serde_json::json!([
            "data/tar/oraclehost_tgz/1795313265/0_1795313265/data",
            "data/tar/oraclehost_tgz/1795313265/1_1795313268/data",
            "data/tar/oraclehost_tgz/1795313265/2_1795313272/data"
        ])
    );
}

#[test]
fn a_truncated_level_fails_its_points_only() {
    let tmp = scratch();
    copy_dir(&source().join("tar-gzip"), &tmp.path().join("tar-gzip"));
    let f = tmp
        .path()
        .join("tar-gzip/store/data/tar/oraclehost_tgz/1795313265/1_1795313268/data");
    let data = std::fs::read(&f).unwrap();
    std::fs::write(&f, &data[..data.len() / 2]).unwrap();
    let outs = scratch();
    let cases: Vec<_> = cases()
        .into_iter()
        .filter(|c| c.0.starts_with("tar-gzip"))
        .collect();
    for (i, (set, point, expected)) in cases.iter().enumerate() {
        let out = outs.path().join(format!("out{i}"));
        let r = run(&[
            "export",
            tmp.path().to_str().unwrap(),
            &format!("{set}/{point}/files"),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_no_panic(&r);
        // Points 1 and 2 of chain A read the damaged level.
        if i == 1 || i == 2 {
            let err = String::from_utf8_lossy(&r.stderr);
            assert!(!r.status.success());
            assert!(err.contains(&f.display().to_string()), "{err}");
        } else {
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
            assert_matches(&walk(&out), &from_manifest(expected), point);
        }
    }
}
