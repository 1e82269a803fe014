//! Freezer cases the reference sets don't cover, made with the real `tar --listed-incremental`,
//! `bzip2`, `xz` and `openssl enc -aes-256-cfb` into Freezer's layout, each point checked
//! against what `tar --incremental --extract` of the same levels gives: an `--always-level`
//! chain (siblings at level 1), encrypted chains (SHA-256 and MD5 key derivation), a file
//! replaced by a folder and back, deep renames, deletions.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tree::{assert_matches, walk};
use common::*;

fn sh(script: &str) {
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Freezer container under construction (`<root>/{metadata,data}/tar/<hbn>/...`).
struct Store {
    root: PathBuf,
    hbn: String,
    compression: &'static str,
    /// Password file and the digest `openssl enc` derives the key with.
    key: Option<(PathBuf, &'static str)>,
}

/// One backup written into a store.
#[derive(Clone)]
struct Written {
    data: PathBuf,
    snapshot: PathBuf,
    ts: i64,
}

impl Store {
    fn compressor(&self) -> (&'static str, &'static str) {
        match self.compression {
            "gzip" => ("gzip -c", "gzip -dc"),
            "bzip2" => ("bzip2 -c", "bzip2 -dc"),
            _ => ("xz -c", "xz -dc"),
        }
    }

    /// Backs `src` up as Freezer's tar engine does: the snapshot file starts as a copy of the
    /// parent's `engine_metadata` (none for level 0).
    fn backup(
        &self,
        src: &Path,
        l0: i64,
        level: u32,
        ts: i64,
        parent: Option<&Written>,
    ) -> Written {
        let rel = format!("tar/{}/{l0}/{level}_{ts}", self.hbn);
        let data_dir = self.root.join("data").join(&rel);
        let meta_dir = self.root.join("metadata").join(&rel);
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::create_dir_all(&meta_dir).unwrap();
        let snapshot = data_dir.join("engine_metadata");
        if let Some(p) = parent {
            std::fs::copy(&p.snapshot, &snapshot).unwrap();
        }
        let data = data_dir.join("data");
        let (compress, _) = self.compressor();
        let encrypt = match &self.key {
            Some((k, md)) => format!(
                "| openssl enc -aes-256-cfb -md {md} -pass file:{}",
                k.display()
            ),
            None => String::new(),
        };
        sh(&format!(
            "cd {} && tar --create --warning=none --no-check-device --one-file-system --preserve-permissions \
             --same-owner --seek --ignore-failed-read --listed-incremental={} . | {compress} {encrypt} > {}",
            src.display(),
            snapshot.display(),
            data.display()
        ));
        let meta = serde_json::json!({
            "engine_name": "tar",
            "compression": self.compression,
            "encryption": self.key.is_some(),
        });
        std::fs::write(meta_dir.join("metadata"), meta.to_string()).unwrap();
        Written { data, snapshot, ts }
    }

    /// What Freezer's own restore command makes of `levels`, applied in order into `out`.
    fn extract(&self, levels: &[&Written], out: &Path) {
        std::fs::create_dir_all(out).unwrap();
        let (_, decompress) = self.compressor();
        for w in levels {
            let decrypt = match &self.key {
                Some((k, md)) => format!(
                    "openssl enc -d -aes-256-cfb -md {md} -pass file:{} |",
                    k.display()
                ),
                None => String::new(),
            };
            sh(&format!(
                "cat {} | {decrypt} {decompress} | tar --incremental --extract --ignore-zeros --warning=none \
                 --overwrite --directory {}",
                w.data.display(),
                out.display()
            ));
        }
    }
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Changes need a fresh ctime for tar's change detection.
fn tick() {
    std::thread::sleep(std::time::Duration::from_millis(30));
}

/// The point of `ts` in the set at `set` (by `ls --json`).
fn point_name(source: &Path, set: &str, ts: i64, key: Option<&Path>) -> String {
    let mut args = vec!["ls", "--json", source.to_str().unwrap()];
    let k;
    if let Some(key) = key {
        k = key.to_str().unwrap().to_owned();
        args.extend(["--freezer-key", &k]);
    }
    let doc: serde_json::Value = serde_json::from_str(&run_ok(&args)).unwrap();
    let set = doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == set)
        .unwrap();
    let p = set["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["timestamp"] == ts)
        .unwrap();
    p["name"].as_str().unwrap().to_owned()
}

/// Exports every (point, chain) and compares it with the real tar extraction of that chain.
fn check(store: &Store, source: &Path, set: &str, cases: &[(&Written, Vec<&Written>)]) {
    let outs = scratch();
    let key = store.key.as_ref().map(|k| k.0.clone());
    for (i, (point, chain)) in cases.iter().enumerate() {
        let name = point_name(source, set, point.ts, key.as_deref());
        let want = outs.path().join(format!("tar{i}"));
        store.extract(chain, &want);
        let got = outs.path().join(format!("export{i}"));
        let mut args = vec![
            "export".to_owned(),
            source.display().to_string(),
            format!("{set}/{name}/files"),
            "-o".to_owned(),
            got.display().to_string(),
        ];
        if let Some(k) = &key {
            args.extend(["--freezer-key".to_owned(), k.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&args);
        assert_matches(&walk(&got), &walk(&want), &format!("{set}/{name}"));
    }
}

#[test]
fn always_level_siblings_encrypted_bzip2() {
    let tmp = scratch();
    let src = tmp.path().join("src");
    write(&src.join("f1.txt"), b"one\n");
    write(&src.join("dir/a.txt"), b"aaa\n");
    write(
        &src.join("dir/sub/b.bin"),
        &(0..100_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
    );
    write(&src.join("hard1"), b"linked\n");
    std::fs::hard_link(src.join("hard1"), src.join("hard2")).unwrap();
    std::os::unix::fs::symlink("f1.txt", src.join("link")).unwrap();
    let key = tmp.path().join("key");
    std::fs::write(&key, b"correct horse\n").unwrap();
    let source = tmp.path().join("backups");
    let store = Store {
        root: source.join("container"),
        hbn: "host_always".into(),
        compression: "bzip2",
        key: Some((key.clone(), "sha256")),
    };
    let l0 = 1_800_000_000;
    let b0 = store.backup(&src, l0, 0, l0, None);
    tick();
    write(&src.join("f1.txt"), b"one, changed\n");
    write(&src.join("f2.txt"), b"two\n");
    let a = store.backup(&src, l0, 1, l0 + 10, Some(&b0));
    tick();
    write(&src.join("f3.txt"), b"three\n");
    std::fs::remove_file(src.join("dir/a.txt")).unwrap();
    let b = store.backup(&src, l0, 1, l0 + 20, Some(&b0));
    tick();
    write(&src.join("f4.txt"), b"four\n");
    std::fs::remove_file(src.join("f2.txt")).unwrap();
    write(&src.join("f2.txt/inner.txt"), b"now a folder\n");
    let c = store.backup(&src, l0, 1, l0 + 30, Some(&b0));

    let set = "container/tar/host_always";
    check(
        &store,
        &source,
        set,
        &[
            (&b0, vec![&b0]),
            (&a, vec![&b0, &a]),
            (&b, vec![&b0, &b]),
            (&c, vec![&b0, &c]),
        ],
    );
    // `latest` is the newest sibling, with f4.txt (Freezer's own restore can lose it).
    let outs = scratch();
    let got = outs.path().join("latest");
    run_ok(&[
        "export",
        source.to_str().unwrap(),
        &format!("{set}/latest/files"),
        "-o",
        got.to_str().unwrap(),
        "--freezer-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(got.join("f4.txt")).unwrap(), b"four\n");

    // Without the key the points are listed, each with a clear note.
    let doc = ls_json(&source);
    let s = doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == set)
        .unwrap();
    for p in s["points"].as_array().unwrap() {
        assert!(
            p["error"].as_str().unwrap().contains("--freezer-key"),
            "{p}"
        );
    }
}

#[test]
fn deep_renames_and_type_changes_in_an_xz_chain() {
    let tmp = scratch();
    let src = tmp.path().join("src");
    write(&src.join("deep/a/b/c/leaf.txt"), b"leaf\n");
    write(&src.join("deep/a/sibling.txt"), b"sib\n");
    write(&src.join("keep/file"), b"will become a folder\n");
    write(&src.join("keep/folder/x.txt"), b"will become a file\n");
    write(&src.join("gone/inside.txt"), b"deleted with its folder\n");
    let source = tmp.path().join("backups");
    let store = Store {
        root: source.join("c"),
        hbn: "host_xz".into(),
        compression: "xz",
        key: None,
    };
    let l0 = 1_800_000_100;
    let b0 = store.backup(&src, l0, 0, l0, None);
    tick();
    std::fs::create_dir_all(src.join("moved/to")).unwrap();
    std::fs::rename(src.join("deep/a"), src.join("moved/to/here")).unwrap();
    write(
        &src.join("moved/to/here/b/new.txt"),
        b"new in a moved folder\n",
    );
    std::fs::remove_file(src.join("keep/file")).unwrap();
    write(&src.join("keep/file/now.txt"), b"a folder now\n");
    let b1 = store.backup(&src, l0, 1, l0 + 10, Some(&b0));
    tick();
    std::fs::remove_dir_all(src.join("keep/folder")).unwrap();
    write(&src.join("keep/folder"), b"a file now\n");
    std::fs::remove_dir_all(src.join("gone")).unwrap();
    std::fs::set_permissions(
        src.join("moved/to/here/sibling.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let b2 = store.backup(&src, l0, 2, l0 + 20, Some(&b1));
    tick();
    std::fs::rename(src.join("moved"), src.join("deep/moved-back")).unwrap();
    let b3 = store.backup(&src, l0, 3, l0 + 30, Some(&b2));
    check(
        &store,
        &source,
        "c/tar/host_xz",
        &[
            (&b0, vec![&b0]),
            (&b1, vec![&b0, &b1]),
            (&b2, vec![&b0, &b1, &b2]),
            (&b3, vec![&b0, &b1, &b2, &b3]),
        ],
    );
}

#[test]
fn md5_key_derivation_of_openssl_1_0_backups() {
    let tmp = scratch();
    let src = tmp.path().join("src");
    write(
        &src.join("a.txt"),
        b"made with openssl 1.0's default digest\n",
    );
    let key = tmp.path().join("key");
    std::fs::write(&key, b"old secret").unwrap();
    let source = tmp.path().join("backups");
    let store = Store {
        root: source.join("c"),
        hbn: "host_md5".into(),
        compression: "gzip",
        key: Some((key, "md5")),
    };
    let b0 = store.backup(&src, 1_800_000_200, 0, 1_800_000_200, None);
    check(&store, &source, "c/tar/host_md5", &[(&b0, vec![&b0])]);
}

#[test]
fn an_encrypted_chain_through_the_mount() {
    if !fuse_available("an_encrypted_chain_through_the_mount") {
        return;
    }
    let tmp = scratch();
    let src = tmp.path().join("src");
    write(&src.join("a.txt"), b"first\n");
    write(&src.join("sub/b.txt"), b"second\n");
    let key = tmp.path().join("key");
    std::fs::write(&key, b"mount secret\n").unwrap();
    let source = tmp.path().join("backups");
    let store = Store {
        root: source.join("c"),
        hbn: "host_enc".into(),
        compression: "gzip",
        key: Some((key.clone(), "sha256")),
    };
    let l0 = 1_800_000_300;
    let b0 = store.backup(&src, l0, 0, l0, None);
    tick();
    write(&src.join("a.txt"), b"first, changed\n");
    std::fs::remove_file(src.join("sub/b.txt")).unwrap();
    let b1 = store.backup(&src, l0, 1, l0 + 10, Some(&b0));
    let want = tmp.path().join("want");
    store.extract(&[&b0, &b1], &want);
    let m = Mounted::new(&source, &["--freezer-key", key.to_str().unwrap()]);
    assert_matches(
        &walk(&m.join("c/tar/host_enc/latest/files")),
        &walk(&want),
        "mount latest",
    );
}
