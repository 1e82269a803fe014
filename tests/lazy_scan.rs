//! A SOURCE with many folders is scanned a folder at a time when first used: it serves the same
//! tree (names, kinds, link targets, bytes) as the full scan, but for its folders without sets,
//! which are listed (empty) because listing a folder's names scans none of its sub-folders; a
//! folder is read when first looked up (not before), and one whose backup files are bad fails
//! only itself.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use restorefs::vfs::{self, Node};

/// A SOURCE of 80 top folders: virtnbdbackup sets (one damaged), Core Lightning logs, Freezer
/// containers, nested sets, folders without any backup, and a log at SOURCE itself.
fn generated_source(root: &Path) -> PathBuf {
    let src = root.join("src");
    let data = data_dir();
    for i in 0..16 {
        copy_dir(
            &data.join("virtnbd/v1-misc"),
            &src.join(format!("vm{i:02}")),
        );
    }
    for i in 0..16 {
        let d = src.join(format!("ln{i:02}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(data.join("clightning/small.bkp"), d.join("node.bkp")).unwrap();
    }
    for i in 0..2 {
        copy_dir(&data.join("freezer/tar-gzip"), &src.join(format!("fz{i}")));
    }
    copy_dir(&data.join("virtnbd/v1-misc"), &src.join("deep/a/b"));
    std::fs::create_dir_all(src.join("deep/c")).unwrap();
    std::fs::copy(data.join("clightning/small.bkp"), src.join("deep/c/x.bkp")).unwrap();
    for i in 0..40 {
        let d = src.join(format!("empty{i:02}/sub"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("notes.txt"), b"no backup here").unwrap();
    }
    // A damaged set: its full backup cut in the middle of a frame.
    let bad = src.join("bad");
    copy_dir(&data.join("virtnbd/v1-misc"), &bad);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open(bad.join("vda.full.data"))
        .unwrap();
    full.set_len(70_000).unwrap();
    std::fs::copy(data.join("clightning/small.bkp"), src.join("root.bkp")).unwrap();
    src
}

/// What a node is, for comparing trees: kind, link target, and a file's bytes (or its error).
fn describe(node: &Node, with_bytes: bool) -> String {
    match node {
        Node::Dir(_) => "dir".into(),
        Node::Symlink(l) => format!("-> {}", l.target),
        Node::File(f) if with_bytes => match read_all(f.as_ref()) {
            Ok(bytes) => format!("file {}", sha256(&bytes)),
            Err(e) => format!("file error: {e}"),
        },
        Node::File(_) => "file".into(),
        Node::Special(s) => format!("special {:?} {}", s.kind, s.rdev),
    }
}

fn read_all(f: &dyn vfs::FileNode) -> restorefs::error::Result<Vec<u8>> {
    let mut buf = vec![0u8; f.size()? as usize];
    let mut pos = 0;
    while pos < buf.len() {
        let n = f.read_at(pos as u64, &mut buf[pos..])?;
        assert!(n > 0, "short read");
        pos += n;
    }
    Ok(buf)
}

/// Every path of the tree, described; bytes for `info.json` and the files under `latest`.
fn listing(root: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(String::new(), root.clone())];
    while let Some((path, node)) = todo.pop() {
        let Node::Dir(d) = &node else { continue };
        for (name, child) in d.entries().unwrap() {
            let p = format!("{path}/{name}");
            let bytes = name == "info.json" || path.ends_with("/latest");
            out.insert(p.clone(), describe(&child, bytes));
            // `latest` is a symlink: its files are compared through the point it names.
            if let (Node::Symlink(l), "latest") = (&child, name.as_str()) {
                let at = format!("{}/{}", path.trim_start_matches('/'), l.target);
                let target = vfs::resolve(root, &at).unwrap();
                todo.push((format!("{path}/latest"), target));
            }
            todo.push((p, child));
        }
    }
    out
}

fn scan(src: &Path, cache: &Path, lazy: bool) -> restorefs::catalog::Catalog {
    let ctx = restorefs::model::ScanContext::new(restorefs::cache::Cache::new(64 << 20), cache);
    let formats = restorefs::format::all(&Default::default());
    let hidden = indicatif::ProgressBar::hidden();
    if lazy {
        restorefs::scan::scan_lazily(src, formats, &ctx, &hidden).unwrap()
    } else {
        restorefs::scan::scan(src, &formats, &ctx, &hidden).unwrap()
    }
}

#[test]
fn the_lazy_tree_equals_the_full_scan() {
    let tmp = scratch();
    let src = generated_source(tmp.path());
    let eager = scan(&src, &tmp.path().join("cache-eager"), false);
    let lazy = scan(&src, &tmp.path().join("cache-lazy"), true);
    assert!(!lazy.is_scanned(), "80 folders: scanned when first used");
    assert!(!lazy.is_empty());
    let (a, mut b) = (listing(&eager.tree(None)), listing(&lazy.tree(None)));
    assert!(a.len() > 500, "{} paths", a.len());
    assert!(
        !a.keys().any(|p| p.starts_with("/empty")),
        "no empty folders"
    );
    // Listed before they were scanned, the folders without sets are there, empty.
    for i in 0..40 {
        assert_eq!(b.remove(&format!("/empty{i:02}")).as_deref(), Some("dir"));
    }
    assert!(a.contains_key("/deep/a/b/latest") && a.contains_key("/deep/c/x.bkp/latest"));
    assert!(a.contains_key("/root.bkp/latest") && a.contains_key("/fz1/store/tar"));
    for (path, what) in &a {
        assert_eq!(b.get(path), Some(what), "{path}");
    }
    assert_eq!(a.len(), b.len());
    // The damaged set is there, its points serve no image and it has no `latest`; its
    // neighbours do.
    assert!(a.keys().filter(|p| p.starts_with("/bad/")).count() > 3);
    assert!(
        !a.keys()
            .any(|p| p.starts_with("/bad/") && p.ends_with("/vda.raw"))
    );
    assert!(!a.contains_key("/bad/latest"));
    let image = &a["/vm03/latest/vda.raw"];
    assert!(
        image.starts_with("file ") && !image.contains("error"),
        "{image}"
    );
    // Listing everything scanned everything: the catalog's sets are those of the full scan.
    let paths = |c: &restorefs::catalog::Catalog| {
        c.sets().iter().map(|s| s.path.clone()).collect::<Vec<_>>()
    };
    assert_eq!(paths(&lazy), paths(&eager));
}

#[test]
fn a_folder_is_scanned_when_first_looked_up_and_a_bad_one_fails_alone() {
    let tmp = scratch();
    let src = generated_source(tmp.path());
    let lazy = scan(&src, &tmp.path().join("cache"), true);
    let root = lazy.tree(None);
    // Made after the scan started: a full scan would not know it; the lazy one finds it on
    // first lookup, so nothing below SOURCE was read before.
    std::fs::copy(
        data_dir().join("clightning/small.bkp"),
        src.join("empty07/late.bkp"),
    )
    .unwrap();
    std::fs::remove_dir_all(src.join("vm05")).unwrap();
    let late = vfs::resolve(&root, "empty07/late.bkp/latest/lightningd.sqlite3").unwrap();
    assert!(
        describe(&late, true).starts_with("file "),
        "{}",
        describe(&late, true)
    );
    assert!(
        vfs::resolve(&root, "vm05/latest").is_err(),
        "vm05 was not scanned before it was removed"
    );
    // The damaged set, looked up first: its points fail, its neighbours do not.
    let Node::Dir(bad) = vfs::resolve(&root, "bad").unwrap() else {
        panic!()
    };
    let names: Vec<String> = bad.entries().unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.len() > 2, "{names:?}");
    let full = vfs::resolve(&root, &format!("bad/{}/vda.raw", names[0]));
    let failed = match full {
        Ok(node) => describe(&node, true).contains("error"),
        Err(_) => true,
    };
    assert!(failed, "the cut full backup is not served");
    let good = vfs::resolve(&root, "vm06/latest/vda.raw").unwrap();
    assert!(describe(&good, true).starts_with("file "));
}

#[test]
fn listing_the_top_names_every_folder_and_scans_none() {
    let tmp = scratch();
    let src = generated_source(tmp.path());
    let lazy = scan(&src, &tmp.path().join("cache"), true);
    let Node::Dir(top) = lazy.tree(None) else {
        panic!()
    };
    let names = top.names().unwrap();
    assert_eq!(names.len(), 16 + 16 + 2 + 3 + 40, "{names:?}");
    assert!(
        names.iter().all(|(_, k)| *k == vfs::NodeKind::Dir),
        "{names:?}"
    );
    // Changed after the listing: a folder it had scanned would not see it.
    std::fs::copy(
        data_dir().join("clightning/small.bkp"),
        src.join("empty07/late.bkp"),
    )
    .unwrap();
    std::fs::remove_dir_all(src.join("vm05")).unwrap();
    let late = vfs::resolve(
        &top_node(&top),
        "empty07/late.bkp/latest/lightningd.sqlite3",
    );
    assert!(late.is_ok(), "empty07 was not scanned by the listing");
    let Some(Node::Dir(gone)) = top.lookup("vm05").unwrap() else {
        panic!("a listed folder is a folder")
    };
    assert!(
        gone.entries().unwrap().is_empty(),
        "vm05 was not scanned before it was removed"
    );
    let good = vfs::resolve(&top_node(&top), "vm06/latest/vda.raw").unwrap();
    assert!(describe(&good, true).starts_with("file "));
}

fn top_node(top: &std::sync::Arc<dyn vfs::Directory>) -> Node {
    Node::Dir(std::sync::Arc::clone(top))
}

#[test]
fn a_large_source_mounts_before_its_folders_are_scanned() {
    if !fuse_available("a_large_source_mounts_before_its_folders_are_scanned") {
        return;
    }
    let tmp = scratch();
    let src = generated_source(tmp.path());
    let mut m = Mounted::new(&src, &[]);
    // Made once the mount answers: found on first lookup, so mounting scanned no folder.
    std::fs::copy(
        data_dir().join("clightning/small.bkp"),
        src.join("empty07/late.bkp"),
    )
    .unwrap();
    assert!(
        m.join("empty07/late.bkp/latest/lightningd.sqlite3")
            .is_file()
    );
    let listed: Vec<String> = std::fs::read_dir(m.join("vm02"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(listed.contains(&"latest".to_owned()), "{listed:?}");
    let via_mount = std::fs::read(m.join("ln03/node.bkp/latest/lightningd.sqlite3")).unwrap();
    let lazy = scan(&src, &tmp.path().join("cache"), true);
    let node = vfs::resolve(&lazy.tree(None), "ln03/node.bkp/latest/lightningd.sqlite3").unwrap();
    let Node::File(f) = node else { panic!() };
    assert_eq!(sha256(&via_mount), sha256(&read_all(f.as_ref()).unwrap()));
    let mut top: Vec<String> = std::fs::read_dir(m.join(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    // Every folder of SOURCE (those without sets too: the listing scans none) and the log.
    assert_eq!(top.len(), 16 + 16 + 2 + 3 + 40, "{top:?}");
    assert_eq!(std::fs::read_dir(m.join("empty03")).unwrap().count(), 0);
    let log = m.stop();
    assert!(log.contains("folders scanned when first opened"), "{log}");
}
