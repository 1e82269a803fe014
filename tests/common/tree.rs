//! An independent description of a file tree on disk, in the shape of the Freezer reference
//! manifest: per path its type, mode, owner, size, sha256, symlink target and hard-link group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One entry, comparable with the manifest's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: String,
    pub mode: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub mtime: Option<i64>,
    pub sha256: Option<String>,
    pub target: Option<String>,
    /// All paths sharing the inode, when there are several.
    pub links: Option<BTreeSet<String>>,
}

/// Walks `root` (not following symlinks); the root itself is `.`.
pub fn walk(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), BTreeSet<String>> = HashMap::new();
    visit(root, root, &mut out, &mut inodes);
    for paths in inodes.values().filter(|p| p.len() > 1) {
        for p in paths {
            out.get_mut(p).unwrap().links = Some(paths.clone());
        }
    }
    out
}

fn visit(
    root: &Path,
    p: &Path,
    out: &mut BTreeMap<String, Entry>,
    inodes: &mut HashMap<(u64, u64), BTreeSet<String>>,
) {
    let md = std::fs::symlink_metadata(p).unwrap();
    let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
    let rel = if rel.is_empty() { ".".to_owned() } else { rel };
    let ft = md.file_type();
    let mut e = Entry {
        kind: String::new(),
        mode: None,
        uid: md.uid(),
        gid: md.gid(),
        size: None,
        mtime: None,
        sha256: None,
        target: None,
        links: None,
    };
    if ft.is_dir() {
        e.kind = "dir".into();
        e.mode = Some(md.mode() & 0o7777);
        out.insert(rel, e);
        let mut names: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|d| d.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            visit(root, &n, out, inodes);
        }
    } else if ft.is_symlink() {
        e.kind = "symlink".into();
        e.target = Some(
            std::fs::read_link(p)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
        out.insert(rel, e);
    } else {
        e.kind = "file".into();
        e.mode = Some(md.mode() & 0o7777);
        e.size = Some(md.len());
        e.mtime = Some(md.mtime());
        e.sha256 = Some(super::sha256_file(p));
        inodes
            .entry((md.dev(), md.ino()))
            .or_default()
            .insert(rel.clone());
        out.insert(rel, e);
    }
}

/// The manifest's `expected` list in the same shape.
pub fn from_manifest(expected: &serde_json::Value) -> BTreeMap<String, Entry> {
    let list = expected.as_array().unwrap();
    let mut groups: HashMap<String, BTreeSet<String>> = HashMap::new();
    for e in list {
        if let Some(g) = e["hardlink_group"].as_str() {
            groups
                .entry(g.to_owned())
                .or_default()
                .insert(e["path"].as_str().unwrap().to_owned());
        }
    }
    list.iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().map(str::to_owned);
            let entry = Entry {
                kind: s("type").unwrap(),
                mode: s("mode").map(|m| u32::from_str_radix(&m, 8).unwrap()),
                uid: e["uid"].as_u64().unwrap() as u32,
                gid: e["gid"].as_u64().unwrap() as u32,
                size: e["size"].as_u64(),
                mtime: e["mtime"].as_i64(),
                sha256: s("sha256"),
                target: s("target"),
                links: s("hardlink_group").map(|g| groups[&g].clone()),
            };
            (s("path").unwrap(), entry)
        })
        .collect()
}

/// Compares a walked tree with an expectation that may leave fields out (`None`).
pub fn assert_matches(got: &BTreeMap<String, Entry>, want: &BTreeMap<String, Entry>, what: &str) {
    let got_paths: Vec<&String> = got.keys().collect();
    let want_paths: Vec<&String> = want.keys().collect();
    assert_eq!(got_paths, want_paths, "{what}: paths differ");
    for (p, w) in want {
        let g = &got[p];
        assert_eq!(g.kind, w.kind, "{what}: {p} type");
        assert_eq!((g.uid, g.gid), (w.uid, w.gid), "{what}: {p} owner");
        assert_eq!(g.target, w.target, "{what}: {p} symlink target");
        if w.mode.is_some() {
            assert_eq!(g.mode, w.mode, "{what}: {p} mode");
        }
        if w.kind == "file" {
            assert_eq!(g.size, w.size, "{what}: {p} size");
            assert_eq!(g.sha256, w.sha256, "{what}: {p} content");
            if w.mtime.is_some() {
                assert_eq!(g.mtime, w.mtime, "{what}: {p} mtime");
            }
            assert_eq!(g.links, w.links, "{what}: {p} hard links");
        }
    }
}

/// Checks that the `files/` folder of every Freezer case (set, point, manifest backup) equals
/// the manifest's tree; `place(i, "SET/POINT/files")` makes case `i`'s folder (an export, a path
/// in a mount) and says where it is.
pub fn assert_cases_match(
    cases: Vec<(String, String, serde_json::Value)>,
    what: &str,
    place: impl Fn(usize, &str) -> PathBuf,
) {
    for (i, (set, point, expected)) in cases.into_iter().enumerate() {
        let path = format!("{set}/{point}/files");
        let root = place(i, &path);
        assert_matches(
            &walk(&root),
            &from_manifest(&expected),
            &format!("{what} {path}"),
        );
    }
}
