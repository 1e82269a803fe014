//! SOURCE as an S3 bucket, end to end against a real S3 server (moto, started by the test): the
//! reference sets of all three formats, uploaded to the bucket, list as the local folder does
//! and export every reference point to its expected hash; the ext4 user story works on a FUSE
//! mount of the bucket; a missing bucket or missing credentials fail before mounting.

mod common;
mod s3server;

use std::collections::BTreeMap;
use std::path::Path;

use common::tree::assert_cases_match;
use common::writer::{Frame, StreamSpec};
use common::*;
use s3server::S3Server;
use serde_json::Value;

/// `ls --json` output with the source's own name (folder or URL) replaced, so that a bucket's
/// listing can equal the folder's it was uploaded from.
fn neutral(json: &str, source: &str) -> Value {
    let mut v: Value = serde_json::from_str(&json.replace(source, "SOURCE")).unwrap();
    v["source"] = "SOURCE".into();
    v
}

/// Uploads `local` under `prefix` and checks that `ls --json` of the bucket lists exactly what
/// it lists for the folder; returns the bucket's listing.
fn upload_and_compare(s3: &S3Server, local: &Path, bucket: &str, prefix: &str) -> Value {
    s3.create_bucket(bucket);
    s3.upload_dir(bucket, prefix, local);
    let url = format!("s3://{bucket}/{prefix}");
    let local = local.to_str().unwrap();
    let want = neutral(&run_ok(&["ls", "--json", local]), local);
    let got = neutral(&s3.run_ok(&["ls", "--json", &url]), &url);
    assert_eq!(got, want, "ls --json of {url} differs from the folder's");
    serde_json::from_str(&s3.run_ok(&["ls", "--json", &url])).unwrap()
}

#[test]
fn every_virtnbd_point_exports_from_the_bucket() {
    let Some(s3) = S3Server::start("every_virtnbd_point_exports_from_the_bucket") else {
        return;
    };
    let url = "s3://reference/backups/virtnbd";
    let doc = upload_and_compare(
        &s3,
        &data_dir().join("virtnbd"),
        "reference",
        "backups/virtnbd",
    );
    let points = manifest_points();
    assert!(points.len() >= 31, "{} points", points.len());
    for mp in &points {
        let path = point_path(&doc, mp);
        let out = s3.run(&["export", url, &path, "-o", "-"]);
        assert_no_panic(&out);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout.len() as u64, mp.virtual_size, "{path}");
        assert_eq!(
            sha256(&out.stdout),
            mp.sha256,
            "{} {} {}",
            mp.chain,
            mp.point,
            mp.disk
        );
    }
    let report = s3.run_ok(&["verify", url]);
    assert_eq!(
        report.lines().filter(|l| l.starts_with("OK ")).count(),
        17,
        "{report}"
    );
    assert!(!report.contains("DAMAGED"), "{report}");
}

#[test]
fn every_core_lightning_version_exports_from_the_bucket() {
    let Some(s3) = S3Server::start("every_core_lightning_version_exports_from_the_bucket") else {
        return;
    };
    let url = "s3://reference/cln";
    upload_and_compare(&s3, &data_dir().join("clightning"), "reference", "cln");
    let rows = cln_manifest();
    let tmp = scratch();
    let mut exported = BTreeMap::new();
    let mut checked = 0;
    for row in rows.iter().filter(|r| r.ok) {
        let v = row.version.unwrap();
        let set = exported.entry(row.file.clone()).or_insert_with(|| {
            let out = tmp.path().join(&row.file);
            s3.run_ok(&["export", url, &row.file, "-o", out.to_str().unwrap()]);
            out
        });
        let db = set.join(format!("v{v:010}/lightningd.sqlite3"));
        assert_eq!(canon_v1(&db), row.canon, "{} v{v}", row.scenario);
        checked += 1;
    }
    assert!(checked > 300, "{checked} versions checked");
    // Versions the MANIFEST calls damaged are not served from the bucket either.
    for row in rows.iter().filter(|r| !r.ok && r.version.is_some()) {
        let path = format!(
            "{}/v{:010}/lightningd.sqlite3",
            row.file,
            row.version.unwrap()
        );
        let out = s3.run(&["export", url, &path, "-o", "-"]);
        assert_no_panic(&out);
        assert!(!out.status.success(), "{row:?} exported from the bucket");
    }
}

#[test]
fn every_freezer_backup_exports_from_the_bucket() {
    let Some(s3) = S3Server::start("every_freezer_backup_exports_from_the_bucket") else {
        return;
    };
    let url = "s3://freezer-container";
    let local = data_dir().join("freezer");
    upload_and_compare(&s3, &local, "freezer-container", "");
    let mut cases = freezer_cases(&local, "tar", |_, _| {});
    cases.extend(freezer_cases(&local, "rsync", |_, _| {}));
    assert!(cases.len() >= 9, "{} Freezer backups", cases.len());
    let tmp = scratch();
    assert_cases_match(cases, url, |i, path| {
        let out = tmp.path().join(i.to_string());
        s3.run_ok(&["export", url, path, "-o", out.to_str().unwrap()]);
        out
    });
}

/// A full virtnbdbackup stream of `img`: one data frame per 1 MiB with data, zero frames else.
fn full_stream(img: &[u8], lz4: Option<usize>) -> StreamSpec {
    const STEP: usize = 1 << 20;
    let mut s = StreamSpec::new("vda", img.len() as u64, "2026-05-01T10:00:00.000001");
    s.lz4_chunk = lz4;
    s.frames = img
        .chunks(STEP)
        .enumerate()
        .map(|(i, c)| {
            let at = (i * STEP) as u64;
            if c.iter().all(|&b| b == 0) {
                Frame::Zero(at, c.len() as u64)
            } else {
                Frame::Data(at, c.to_vec())
            }
        })
        .collect();
    s
}

#[test]
fn ext4_files_come_back_from_a_mount_of_the_bucket() {
    if !fuse_available("ext4_files_come_back_from_a_mount_of_the_bucket") {
        return;
    }
    let Some(s3) = S3Server::start("ext4_files_come_back_from_a_mount_of_the_bucket") else {
        return;
    };
    let tmp = scratch();
    let t = tmp.path();
    let src = t.join("src");
    std::fs::create_dir_all(src.join("etc/nginx")).unwrap();
    std::fs::write(
        src.join("etc/nginx/nginx.conf"),
        b"worker_processes 4;\n".repeat(50),
    )
    .unwrap();
    std::fs::write(src.join("big.bin"), random_bytes(11, 3 << 20)).unwrap();
    std::fs::write(src.join("small.bin"), random_bytes(12, 70_000)).unwrap();
    let img = t.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    let (i, s) = (img.to_str().unwrap(), src.to_str().unwrap());
    tool("mkfs.ext4", &["-q", "-F", "-b", "4096", "-d", s, i]);
    let image = std::fs::read(&img).unwrap();
    let backups = t.join("backups");
    for (set, lz4) in [("vm-plain", None), ("vm-lz4", Some(256 << 10))] {
        std::fs::create_dir_all(backups.join(set)).unwrap();
        let stream = full_stream(&image, lz4).to_bytes();
        std::fs::write(backups.join(set).join("vda.full.data"), stream).unwrap();
    }
    s3.create_bucket("vms");
    s3.upload_dir("vms", "host1", &backups);

    let want = file_hashes(&src);
    let m = s3.mount("s3://vms/host1", &[]);
    let ro = t.join("ro");
    std::fs::create_dir(&ro).unwrap();
    for set in ["vm-plain", "vm-lz4"] {
        let raw = m.join(&format!("{set}/latest/vda.raw"));
        assert_eq!(sha256_file(&raw), sha256(&image), "{set}: the image itself");
        let (r, l) = (raw.to_str().unwrap(), ro.to_str().unwrap());
        tool("mount", &["-o", "loop,ro,noload", r, l]);
        let got = file_hashes(&ro);
        tool("umount", &[l]);
        assert_eq!(
            got, want,
            "{set}: files through a loop mount of the bucket's image"
        );
    }
    let conf = std::fs::read(m.join("vm-lz4/latest/vda/files/etc/nginx/nginx.conf")).unwrap();
    assert_eq!(
        conf,
        std::fs::read(src.join("etc/nginx/nginx.conf")).unwrap()
    );
}

/// Runs `mount` of `url` without the variables `unset` and checks that it fails before
/// mounting, with a short message that names `what` and says `also` (lowercase).
fn mount_fails(s3: &S3Server, url: &str, unset: &[&str], what: &str, also: &str) {
    let tmp = scratch();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut cmd = s3.restorefs();
    for k in unset {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .args(["mount", url, mnt.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed().as_secs() > 30 {
            let _ = child.kill();
            let _ = command().arg("umount").arg(&mnt).status();
            panic!(
                "mount {url} still running after 30 s (mounted: {})",
                is_mounted(&mnt)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_no_panic(&out);
    assert!(!out.status.success(), "mount {url} succeeded");
    assert!(!is_mounted(&mnt), "{url} got mounted");
    assert!(err.contains(what), "the message should name {what}: {err}");
    let lower = err.to_lowercase();
    assert!(lower.contains(also), "the message should say {also}: {err}");
    assert!(
        err.lines().count() <= 5,
        "one clear message, not a flood: {err}"
    );
}

#[test]
fn a_missing_bucket_or_missing_credentials_fail_before_mounting() {
    let Some(s3) = S3Server::start("a_missing_bucket_or_missing_credentials_fail") else {
        return;
    };
    s3.create_bucket("present");
    s3.put("present", "vm/vda.full.data", b"not read");
    mount_fails(
        &s3,
        "s3://no-such-bucket/vm",
        &[],
        "no-such-bucket",
        "bucket",
    );
    let out = s3.run(&["ls", "s3://no-such-bucket"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-bucket"));
    let keys = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];
    mount_fails(
        &s3,
        "s3://present/vm",
        &keys,
        "s3://present/vm: no S3 credentials",
        "aws_access_key_id",
    );
}
