//! The NBD front end with real clients: qemu-img, qemu-io and nbdinfo read restore points of
//! the reference backups (virtnbdbackup 1.9.15) through `restorefs serve` and `mount --nbd`.

mod common;
mod nbd_client;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use nbd_client::{Served, model_data_ranges};

fn source() -> PathBuf {
    data_dir().join("virtnbd")
}

/// The reference sha256 of every file under `dir` (to show that nothing was written there).
fn tree_hashes(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree_hashes(&p));
        } else {
            out.push((p.clone(), sha256_file(&p)));
        }
    }
    out.sort();
    out
}

/// `qemu-img convert` of an export to a raw file; its sha256.
fn convert_hash(served: &Served, export: &str, out: &Path) -> String {
    nbd_client::convert(&served.uri(export), out);
    let h = sha256_file(out);
    std::fs::remove_file(out).unwrap();
    h
}

#[test]
fn every_reference_point_copies_to_its_expected_image() {
    let doc = ls_json(&source());
    let points = manifest_points();
    assert!(points.len() >= 31, "MANIFEST has {} points", points.len());
    assert!(points.iter().any(|p| p.chain.contains("lz4")));
    let served = Served::new(&source(), &[]);
    let tmp = scratch();
    for (i, mp) in points.iter().enumerate() {
        let export = point_path(&doc, mp);
        let out = tmp.path().join(format!("{i}.raw"));
        assert_eq!(
            convert_hash(&served, &export, &out),
            mp.sha256,
            "{} {} {} ({export})",
            mp.chain,
            mp.point,
            mp.disk
        );
    }
}

/// The data ranges `qemu-img map --output=json` reports for an export.
fn qemu_map_data(served: &Served, export: &str) -> Vec<(u64, u64)> {
    let out = tool(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &served.uri(export)],
    );
    let map: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for e in map.as_array().unwrap() {
        let (s, n) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        assert_eq!(
            e["zero"],
            !e["data"].as_bool().unwrap(),
            "{e}: holes read as zeroes"
        );
        if e["data"] == true {
            match ranges.last_mut() {
                Some(last) if last.1 == s => last.1 = s + n,
                _ => ranges.push((s, s + n)),
            }
        }
    }
    ranges
}

/// The data ranges `nbdinfo --map` reports (base:allocation state 0).
fn nbdinfo_map_data(served: &Served, export: &str) -> Vec<(u64, u64)> {
    let out = tool("nbdinfo", &["--map", "--json", &served.uri(export)]);
    let map: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for e in map.as_array().unwrap() {
        let (s, n) = (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        let state = e["type"].as_u64().unwrap();
        assert!(state == 0 || state == 3, "{e}");
        if state == 0 {
            match ranges.last_mut() {
                Some(last) if last.1 == s => last.1 = s + n,
                _ => ranges.push((s, s + n)),
            }
        }
    }
    ranges
}

#[test]
fn maps_show_the_streams_data_and_holes() {
    let set = source().join("v1-plain");
    let served = Served::new(&source(), &[]);
    let full = "v1-plain/2026-11-22T02:03:55_full/vda.raw";
    let want = model_data_ranges(&[set.join("vda.full.data")]);
    assert!(want.len() > 1, "the full stream has holes: {want:?}");
    assert_eq!(qemu_map_data(&served, full), want);
    assert_eq!(nbdinfo_map_data(&served, full), want);
    // The newest point applies every file of the chain in order.
    let doc = ls_json(&source());
    let newest = doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "v1-plain")
        .unwrap()["points"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let vda = newest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "vda.raw")
        .unwrap();
    let chain: Vec<PathBuf> = vda["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| set.join(s.as_str().unwrap()))
        .collect();
    assert!(chain.len() > 2, "{chain:?}");
    let export = format!("v1-plain/{}/vda.raw", newest["name"].as_str().unwrap());
    assert_eq!(qemu_map_data(&served, &export), model_data_ranges(&chain));
    assert_eq!(
        qemu_map_data(&served, "v1-plain/latest/vda.raw"),
        model_data_ranges(&chain)
    );
}

#[test]
fn nbdinfo_lists_every_disk_image_and_latest_and_at_resolve() {
    let doc = ls_json(&source());
    let mut want = BTreeSet::new();
    for s in doc["sets"].as_array().unwrap() {
        for p in s["points"].as_array().unwrap() {
            for f in p["files"].as_array().into_iter().flatten() {
                let name = f["path"].as_str().unwrap();
                if name.ends_with(".raw") && f.get("error").is_none() {
                    want.insert(format!(
                        "{}/{}/{name}",
                        s["path"].as_str().unwrap(),
                        p["name"].as_str().unwrap()
                    ));
                }
            }
        }
    }
    assert!(want.len() >= 20, "{want:?}");
    let served = Served::new(&source(), &[]);
    let out = tool("nbdinfo", &["--list", "--json", &served.uri("")]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got: BTreeSet<String> = list["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["is_read_only"], true, "{e}");
            e["export-name"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(got, want);

    // Names the listing leaves out resolve like paths in the mount.
    let points = manifest_points();
    let newest = points
        .iter()
        .find(|p| p.chain == "v1-plain" && p.disk == "vda" && p.point == "p5-inc3")
        .unwrap();
    let tmp = scratch();
    let out = tmp.path().join("x.raw");
    for export in [
        "v1-plain/latest/vda.raw",
        "v1-plain/at/2030-01-01/vda.raw",
        "./v1-plain/latest/../latest/vda.raw",
    ] {
        assert_eq!(
            convert_hash(&served, export, &out),
            newest.sha256,
            "{export}"
        );
    }
    // An unknown export is refused with the reason; the server goes on.
    let bad = std::process::Command::new("qemu-img")
        .args(["info", &served.uri("v1-plain/nosuch/vda.raw")])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains("nosuch"), "{msg}");
    let info = tool(
        "qemu-img",
        &["info", &served.uri("v1-plain/latest/vda.raw")],
    );
    assert!(info.contains("virtual size: 64 MiB"), "{info}");
}

#[test]
fn a_qcow2_overlay_takes_writes_and_the_backup_stays_untouched() {
    let before = tree_hashes(&source());
    let served = Served::new(&source(), &[]);
    let export = "v1-lz4/latest/vda.raw";
    let tmp = scratch();
    let base = tmp.path().join("base.raw");
    nbd_client::convert(&served.uri(export), &base);
    let overlay = tmp.path().join("overlay.qcow2");
    let ov = overlay.to_str().unwrap();
    tool(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            &served.uri(export),
            "-F",
            "raw",
            ov,
        ],
    );
    // A write over data and one over a hole.
    for (pattern, at) in [("0xab", 1 << 20), ("0xcd", 60 << 20)] {
        let cmd = format!("write -P {pattern} {at} 65536");
        tool("qemu-io", &["-f", "qcow2", "-c", &cmd, ov]);
        let cmd = format!("read -P {pattern} {at} 65536");
        let out = tool("qemu-io", &["-f", "qcow2", "-c", &cmd, ov]);
        assert!(!out.contains("Pattern verification failed"), "{out}");
    }
    let mut want = std::fs::read(&base).unwrap();
    want[1 << 20..(1 << 20) + 65536].fill(0xab);
    want[60 << 20..(60 << 20) + 65536].fill(0xcd);
    let back = tmp.path().join("back.raw");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            ov,
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(
        sha256_file(&back),
        sha256(&want),
        "written and unwritten ranges"
    );
    drop(served);
    assert_eq!(tree_hashes(&source()), before, "the backup files changed");
}

#[test]
fn mount_with_nbd_serves_both_from_one_index() {
    if !fuse_available("mount_with_nbd_serves_both_from_one_index") {
        return;
    }
    let tmp = scratch();
    let socket = tmp.path().join("m.sock");
    let arg = format!("unix:{}", socket.display());
    let mut m = Mounted::new(&source(), &["--nbd", &arg]);
    let newest = manifest_points()
        .into_iter()
        .find(|p| p.chain == "v1-lz4" && p.disk == "vda" && p.point == "p5-inc3")
        .unwrap();
    assert_eq!(sha256_file(&m.join("v1-lz4/latest/vda.raw")), newest.sha256);
    let out = tmp.path().join("n.raw");
    let uri = format!(
        "nbd+unix:///v1-lz4/latest/vda.raw?socket={}",
        socket.display()
    );
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(sha256_file(&out), newest.sha256);
    let log = m.stop();
    assert!(log.contains("over NBD at unix:"), "{log}");
    assert!(!socket.exists(), "the socket is removed on unmount");
}

#[test]
fn serve_listens_on_tcp_and_refuses_bad_addresses_clearly() {
    use std::io::{BufRead, BufReader};
    let mut child = command()
        .args(["serve", source().to_str().unwrap(), "--nbd", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = lines.next().unwrap().unwrap();
    let addr = serving
        .split("over NBD at ")
        .nth(1)
        .and_then(|r| r.split([',', ';']).next())
        .unwrap_or_else(|| panic!("{serving}"))
        .to_owned();
    let info = tool(
        "qemu-img",
        &["info", &format!("nbd://{addr}/v1-plain/latest/vdb.raw")],
    );
    assert!(info.contains("virtual size: 16 MiB"), "{info}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());

    let tmp = scratch();
    let file = tmp.path().join("not-a-socket");
    std::fs::write(&file, b"x").unwrap();
    let busy = Served::new(&source(), &[]);
    for (addr, says) in [
        ("unix:".to_owned(), "unix:PATH"),
        ("localhost:port".to_owned(), "not a number"),
        (format!("unix:{}", file.display()), "not a socket"),
        (format!("unix:{}", busy.socket.display()), "another server"),
    ] {
        let out = run(&["serve", source().to_str().unwrap(), "--nbd", &addr]);
        assert_eq!(out.status.code(), Some(2), "{addr}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) && err.contains("--nbd"), "{addr}: {err}");
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"x",
        "the file is left alone"
    );
}
