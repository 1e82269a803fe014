//! The S3 test harness itself: the moto server the S3 tests start stores and serves what the
//! boto3 client uploads, byte for byte (checked against the local files, not against restorefs).

mod common;
mod s3server;

use std::path::Path;

use s3server::S3Server;

/// Every file under `dir` as (relative path, size), sorted.
fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, u64)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), &rel, out);
        } else {
            out.push((rel, e.metadata().unwrap().len()));
        }
    }
}

#[test]
fn uploaded_tree_lists_and_reads_back() {
    let Some(s3) = S3Server::start("uploaded_tree_lists_and_reads_back") else {
        return;
    };
    let local = common::data_dir().join("virtnbd");
    s3.create_bucket("harness");
    s3.upload_dir("harness", "some/prefix", &local);

    let mut expected = Vec::new();
    walk(&local, "", &mut expected);
    expected.sort();
    let listed: Vec<(String, u64)> = s3
        .list("harness", "some/prefix/")
        .into_iter()
        .map(|o| (o.key["some/prefix/".len()..].to_string(), o.size))
        .collect();
    assert_eq!(listed, expected);

    for (rel, _) in expected
        .iter()
        .filter(|(r, _)| r.ends_with(".data"))
        .take(3)
    {
        let got = s3.get("harness", &format!("some/prefix/{rel}"));
        assert_eq!(
            common::sha256(&got),
            common::sha256_file(&local.join(rel)),
            "{rel}"
        );
    }
}

#[test]
fn replace_changes_etag_and_delete_removes() {
    let Some(s3) = S3Server::start("replace_changes_etag_and_delete_removes") else {
        return;
    };
    s3.create_bucket("bkt");
    s3.put("bkt", "k/one", b"first");
    s3.put("bkt", "k/two", b"second");
    let before = s3.list("bkt", "k/");
    assert_eq!(before.len(), 2);
    s3.put("bkt", "k/one", b"replaced");
    let after = s3.list("bkt", "k/");
    assert_eq!(s3.get("bkt", "k/one"), b"replaced");
    assert_ne!(
        before[0].etag, after[0].etag,
        "a new content must get a new ETag"
    );
    assert_eq!(before[1], after[1]);
    s3.delete("bkt", "k/two");
    let keys: Vec<String> = s3.list("bkt", "k/").into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["k/one"]);
}

#[test]
fn missing_venv_fails_outside_skip() {
    // The rule of s3_available, run in a child so that the environment stays this process's.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "probe_missing_venv",
            "--include-ignored",
            "--nocapture",
        ])
        .env("RESTOREFS_MOTO_VENV", "/nonexistent/moto")
        .env("CI", "true")
        .env("RESTOREFS_SKIP_S3", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "CI=true must fail: {err}");
    assert!(err.contains("CI=true: failing"), "{err}");
}

/// Run only by `missing_venv_fails_outside_skip`, in a child with a bad venv.
#[test]
#[ignore]
fn probe_missing_venv() {
    assert!(S3Server::start("probe").is_none());
}
