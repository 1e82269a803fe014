//! Conformance on backups written by the real virtnbdbackup 1.9.15: every restore point that the
//! MANIFEST gives a sha256 for must export to exactly that image.

mod common;

use common::*;
use serde_json::Value;

fn sets() -> Value {
    ls_json(&data_dir().join("virtnbd"))
}

fn set<'a>(doc: &'a Value, path: &str) -> &'a Value {
    doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == path)
        .unwrap_or_else(|| panic!("no set {path}"))
}

#[test]
fn every_manifest_point_exports_to_the_expected_image() {
    let doc = sets();
    let points = manifest_points();
    assert!(
        points.len() >= 31,
        "MANIFEST has {} points with hashes",
        points.len()
    );
    let tmp = scratch();
    let source = data_dir().join("virtnbd");
    for (i, mp) in points.iter().enumerate() {
        let (p, f) = find_point(&doc, mp);
        assert_eq!(f["size"], mp.virtual_size, "{mp:?}");
        let out = tmp.path().join(format!("{i}.raw"));
        let path = format!(
            "{}/{}/{}.raw",
            mp.backup_dir,
            p["name"].as_str().unwrap(),
            mp.disk
        );
        run_ok(&[
            "export",
            source.to_str().unwrap(),
            &path,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(
            sha256_file(&out),
            mp.sha256,
            "{} {} {} ({path})",
            mp.chain,
            mp.point,
            mp.disk
        );
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn points_are_named_by_time_and_kind() {
    let doc = sets();
    let kinds = |path: &str| -> Vec<String> {
        set(&doc, path)["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        kinds("v1-plain"),
        ["full", "inc", "diff", "diff", "inc", "inc"]
    );
    assert_eq!(
        kinds("v1-lz4"),
        ["full", "inc", "diff", "diff", "inc", "inc"]
    );
    assert_eq!(kinds("v1-misc"), ["full", "inc", "inc"]);
    assert_eq!(kinds("v1-misc-copy"), ["copy"]);
    assert_eq!(kinds("v1-misc-copyraw"), ["copy"]);
    for s in doc["sets"].as_array().unwrap() {
        let names: Vec<&str> = s["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted, "names unique and sorted by time");
        for p in s["points"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let time = p["time"].as_str().unwrap();
            assert_eq!(
                &name[..19],
                &time[..19],
                "name starts with the local time to the second"
            );
            assert!(name.ends_with(&format!("_{}", p["kind"].as_str().unwrap())));
        }
    }
    let first = &set(&doc, "v1-plain")["points"][0];
    assert_eq!(first["name"], "2026-11-22T02:03:55_full");
    assert_eq!(first["checkpoint"], "virtnbdbackup.0");
    // The raw-image copy has no meta date: its time comes from the backup log's name.
    assert_eq!(
        set(&doc, "v1-misc-copyraw")["points"][0]["name"],
        "2026-11-22T02:06:15_copy"
    );
}

#[test]
fn the_overwritten_inc_is_served_with_a_warning() {
    let doc = sets();
    let last = &set(&doc, "v1-misc")["points"][2];
    let warnings = last["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("overwritten by an offline incremental")
    );
}

#[test]
fn verify_reports_every_point_ok() {
    let out = run_ok(&["verify", data_dir().join("virtnbd").to_str().unwrap()]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("OK ")).count(),
        17,
        "{out}"
    );
    assert!(!out.contains("DAMAGED"));
}

#[test]
fn partial_files_and_other_files_do_not_confuse_the_scanner() {
    let tmp = scratch();
    let dir = tmp.path().join("vm");
    copy_dir(&data_dir().join("virtnbd/v1-plain"), &dir);
    let before = ls_json(tmp.path());
    std::fs::write(
        dir.join("vda.inc.virtnbdbackup.4.data.partial"),
        b"meta 0000 garbage",
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), b"hello").unwrap();
    std::fs::write(dir.join("vda.inc.virtnbdbackup.4.data.chksum"), b"12345").unwrap();
    std::fs::create_dir(dir.join("extra")).unwrap();
    std::fs::write(dir.join("extra/readme.json"), b"{}").unwrap();
    assert_eq!(ls_json(tmp.path())["sets"], before["sets"]);
}

#[test]
fn exported_images_keep_their_holes() {
    let tmp = scratch();
    let out = tmp.path().join("vda.raw");
    let source = data_dir().join("virtnbd");
    run_ok(&[
        "export",
        source.to_str().unwrap(),
        "v1-lz4/latest/vda.raw",
        "-o",
        out.to_str().unwrap(),
    ]);
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&out).unwrap();
    assert_eq!(md.len(), 64 << 20);
    // About 37 MiB of the 64 MiB image is data; the rest must stay unallocated.
    assert!(
        md.blocks() * 512 < 40 << 20,
        "export allocated {} bytes",
        md.blocks() * 512
    );
}

#[test]
fn export_refuses_to_write_into_the_backup_folder() {
    let tmp = scratch();
    copy_dir(
        &data_dir().join("virtnbd/v1-misc-copy"),
        &tmp.path().join("vm"),
    );
    let out = tmp.path().join("vm/out.raw");
    let r = run(&[
        "export",
        tmp.path().to_str().unwrap(),
        "vm/latest/vda.raw",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("refusing to write inside the backup folder")
    );
    assert!(!out.exists());
}

#[test]
fn kept_indexes_are_used_and_never_stale() {
    let tmp = scratch();
    let dir = tmp.path().join("vm");
    copy_dir(&data_dir().join("virtnbd/v1-plain"), &dir);
    let cache = scratch();
    let cache_dir = cache.path().to_str().unwrap();
    let ls = || -> serde_json::Value {
        serde_json::from_str(&run_ok(&[
            "ls",
            "--json",
            tmp.path().to_str().unwrap(),
            "--cache-dir",
            cache_dir,
        ]))
        .unwrap()
    };
    let first = ls();
    let kept = std::fs::read_dir(cache.path().join("index"))
        .unwrap()
        .count();
    assert_eq!(kept, 13, "one index per stream file");
    assert_eq!(ls()["sets"], first["sets"], "a remount lists the same");
    // A kept index that was tampered with is ignored, not trusted.
    for e in std::fs::read_dir(cache.path().join("index")).unwrap() {
        std::fs::write(e.unwrap().path(), b"garbage").unwrap();
    }
    let outs = scratch();
    let out = outs.path().join("p.raw");
    run_ok(&[
        "export",
        tmp.path().to_str().unwrap(),
        "vm/latest/vda.raw",
        "-o",
        out.to_str().unwrap(),
        "--cache-dir",
        cache_dir,
    ]);
    assert_eq!(
        sha256_file(&out),
        "d51098e7d205b53fb99154711de7cf5a88318cb500c807ae77f43ff530539761"
    );
    std::fs::remove_file(&out).unwrap();
    // A file changed in place after it was indexed is read anew: here it is damaged.
    let f = dir.join("vda.inc.virtnbdbackup.2.data");
    let data = std::fs::read(&f).unwrap();
    std::fs::write(&f, &data[..1000]).unwrap();
    let doc = ls();
    let points = doc["sets"][0]["points"].as_array().unwrap();
    let vda = |p: &serde_json::Value| {
        p["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "vda.raw")
            .unwrap()
            .clone()
    };
    assert!(
        vda(&points[5])["error"]
            .as_str()
            .unwrap()
            .contains("vda.inc.virtnbdbackup.2.data")
    );
    // Replaced by another file (rename over it): the new file's content is what is served.
    std::fs::write(dir.join("new.tmp"), &data).unwrap();
    std::fs::rename(dir.join("new.tmp"), &f).unwrap();
    let doc = ls();
    let points = doc["sets"][0]["points"].as_array().unwrap();
    assert!(vda(&points[5]).get("error").is_none());
}

/// The point `at/<time>` of set `v1-plain` resolves to, by exporting its info.json with `TZ=tz`.
fn point_at(time: &str, tz: &str) -> String {
    let src = data_dir().join("virtnbd");
    let out = command()
        .env("TZ", tz)
        .args(["export", src.to_str().unwrap()])
        .arg(format!("v1-plain/at/{time}/info.json"))
        .args(["-o", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "at/{time} with TZ={tz}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["name"].as_str().unwrap().to_owned()
}

#[test]
fn times_with_a_zone_are_instants_whatever_this_machines_zone() {
    // The backup host ran in UTC: its checkpoints' creation times equal the meta dates.
    for tz in [
        "UTC",
        "America/New_York",
        "Asia/Tokyo",
        "Australia/Adelaide",
    ] {
        for t in [
            "2026-11-22T02:04:05Z",
            "2026-11-22T11:04:05+09:00",
            "2026-11-21T21:04:05-05:00",
            "@1795313045",
            // Without a zone: the backup's own wall-clock time, as point names show it.
            "2026-11-22T02:04:05",
        ] {
            assert_eq!(
                point_at(t, tz),
                "2026-11-22T02:04:04_diff",
                "{t} with TZ={tz}"
            );
        }
        assert_eq!(
            point_at("2026-11-22T02:04:03Z", tz),
            "2026-11-22T02:03:59_inc"
        );
    }
}
