//! No format reads SOURCE behind the store's back: the reference sets of all three formats,
//! scanned from a store that is not local (its paths `mem://test/...` exist nowhere on this
//! machine, it lends no mapped view, and it hands out copies for readers that need a local
//! file), give every reference point with its expected hash, through the library's own scan,
//! catalog, tree and export. Any `std::fs` call left on a SOURCE path fails here.

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::tree::assert_cases_match;
use common::*;
use indicatif::ProgressBar;
use restorefs::catalog::Catalog;
use restorefs::error::{Error, Result};
use restorefs::model::ScanContext;
use restorefs::storage::{Backend, FileEntry, Listing, LocalStore, Source, Store};
use restorefs::vfs::{self, Node};

/// Where the fake store's paths start; nothing by that name exists on this machine.
const PREFIX: &str = "mem://test";

/// A store over a local folder that behaves like a bucket: fake paths, whole objects held in
/// memory and read by ranges (no mapped view), not local, copies for `local_copy`.
struct FakeStore {
    root: PathBuf,
    local: LocalStore,
    opens: AtomicUsize,
    copies: Mutex<Vec<PathBuf>>,
}

impl FakeStore {
    fn new(root: &Path) -> Arc<FakeStore> {
        assert!(!Path::new("mem:").exists(), "the fake paths must not exist");
        Arc::new(FakeStore {
            root: root.to_path_buf(),
            local: LocalStore::default(),
            opens: AtomicUsize::new(0),
            copies: Mutex::new(Vec::new()),
        })
    }

    /// The real file behind a fake path; anything else is not in the store.
    fn real(&self, path: &Path) -> Result<PathBuf> {
        let rest = path
            .to_str()
            .and_then(|p| p.strip_prefix(PREFIX))
            .ok_or_else(|| Error::not_found(format!("{}: not in the store", path.display())))?;
        Ok(self.root.join(rest.trim_start_matches('/')))
    }
}

impl Store for FakeStore {
    fn list(&self, dir: &Path) -> Result<Listing> {
        self.local.list(&self.real(dir)?)
    }

    fn stat(&self, path: &Path) -> Result<Option<FileEntry>> {
        self.local.stat(&self.real(path)?)
    }

    fn is_dir(&self, path: &Path) -> Result<bool> {
        self.local.is_dir(&self.real(path)?)
    }

    fn open(&self, path: &Path) -> Result<Arc<Source>> {
        let real = self.real(path)?;
        let bytes = std::fs::read(&real).map_err(|e| Error::io(path, &e))?;
        self.opens.fetch_add(1, Ordering::Relaxed);
        let identity = format!("{} {}", path.display(), bytes.len());
        Ok(Source::new(path, Box::new(Object { bytes, identity })))
    }

    fn local_copy(&self, path: &Path, scratch: &Path) -> Result<PathBuf> {
        assert!(
            scratch.is_dir(),
            "{}: scratch is no folder",
            scratch.display()
        );
        let to = scratch.join(path.file_name().unwrap());
        std::fs::copy(self.real(path)?, &to).map_err(|e| Error::io(&to, &e))?;
        self.copies.lock().unwrap().push(path.to_path_buf());
        Ok(to)
    }

    fn is_local(&self) -> bool {
        false
    }
}

/// One object, read by ranges into the caller's buffer.
struct Object {
    bytes: Vec<u8>,
    identity: String,
}

impl Backend for Object {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = offset as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }
    fn mapped(&self) -> Option<&[u8]> {
        None
    }
    fn prefetch(&self, _: u64, _: u64) {}
    fn served(&self, _: u64) {}
    fn release(&self) {}
    fn identity(&self) -> Option<String> {
        Some(self.identity.clone())
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        Ok((offset < self.size()).then_some((offset, self.size())))
    }
}

/// `folder` of the test data scanned through a fake store, as `mem://test/<folder>`, with
/// its own cache folder.
fn scan_fake(folder: &str, cache_dir: &Path) -> (Catalog, Arc<FakeStore>) {
    let store = FakeStore::new(&data_dir());
    let mut ctx = ScanContext::new(restorefs::cache::Cache::new(64 << 20), cache_dir);
    ctx.io.store = Arc::clone(&store) as Arc<dyn Store>;
    let formats = restorefs::format::all(&Default::default());
    let source = PathBuf::from(format!("{PREFIX}/{folder}"));
    let cat = restorefs::scan::scan(&source, &formats, &ctx, &ProgressBar::hidden()).unwrap();
    assert!(cat.problems().is_empty(), "{:?}", cat.problems());
    (cat, store)
}

/// `path` of the catalog's tree exported to `out`.
fn export(cat: &Catalog, path: &str, out: &Path) -> Result<()> {
    let node: Node = vfs::resolve(&cat.tree(None), path)?;
    restorefs::export::export(&node, out, &ProgressBar::hidden()).map(|_| ())
}

/// What the catalog lists, without the paths (which name the store): per set its format and
/// whether it failed; per point its name, time, kind, ids, warnings, and per exposed file its
/// name, size, sources and whether it failed.
fn listing(cat: &Catalog) -> Vec<String> {
    let mut out = Vec::new();
    for s in cat.sets() {
        let problem = s.set.problem().is_some();
        out.push(format!("{} {} {problem}", s.path, s.set.format()));
        let list = s.set.points();
        for i in 0..list.len() {
            let p = list.get(i);
            out.push(format!(
                "  {} {:?} {} {:?} {} warnings",
                p.name,
                p.time,
                p.kind,
                p.ids,
                p.warnings.len()
            ));
            match &p.content {
                Ok(files) => out.extend(files.iter().map(|f| {
                    format!(
                        "    {} {:?} {:?} {}",
                        f.path,
                        f.size,
                        f.sources,
                        f.error.is_some()
                    )
                })),
                Err(_) => out.push("    failed".into()),
            }
        }
    }
    out
}

/// Two listings are equal; the first line that differs is shown.
fn assert_same(got: &[String], want: &[String]) {
    let differs = got.iter().zip(want).find(|(g, w)| g != w);
    assert!(differs.is_none(), "first difference: {differs:?}");
    assert_eq!(got.len(), want.len());
}

/// Per set, per point, how many problems `verify` finds.
fn verify_counts(cat: &Catalog) -> Vec<(String, String, usize)> {
    cat.sets()
        .iter()
        .flat_map(|s| {
            s.set
                .verify(&ProgressBar::hidden())
                .into_iter()
                .map(|c| (s.path.clone(), c.point, c.problems.len()))
        })
        .collect()
}

#[test]
fn every_virtnbd_reference_point_reads_the_same_from_a_store_that_is_not_local() {
    let tmp = scratch();
    let (cat, store) = scan_fake("virtnbd", &tmp.path().join("cache"));
    let doc = ls_json(&data_dir().join("virtnbd"));
    let points = manifest_points();
    assert!(points.len() >= 31);
    for (i, mp) in points.iter().enumerate() {
        let path = point_path(&doc, mp);
        let out = tmp.path().join(format!("{i}.raw"));
        export(&cat, &path, &out).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(sha256_file(&out), mp.sha256, "{path}");
        std::fs::remove_file(&out).unwrap();
    }
    let local = scan_in_process(
        &data_dir().join("virtnbd"),
        64 << 20,
        &tmp.path().join("c2"),
    );
    assert_same(&listing(&cat), &listing(&local));
    assert_eq!(verify_counts(&cat), verify_counts(&local));
    assert!(store.opens.load(Ordering::Relaxed) > 0);
    assert!(store.copies.lock().unwrap().is_empty());
}

#[test]
fn every_freezer_reference_backup_reads_the_same_from_a_store_that_is_not_local() {
    let tmp = scratch();
    let (cat, store) = scan_fake("freezer", &tmp.path().join("cache"));
    let source = data_dir().join("freezer");
    let mut cases = freezer_cases(&source, "tar", |_, _| {});
    cases.extend(freezer_cases(&source, "rsync", |_, _| {}));
    assert!(cases.len() > 8, "{} cases", cases.len());
    assert_cases_match(cases, "export", |i, path| {
        let out = tmp.path().join(i.to_string());
        export(&cat, path, &out).unwrap_or_else(|e| panic!("{path}: {e}"));
        out
    });
    let local = scan_in_process(&source, 64 << 20, &tmp.path().join("c2"));
    assert_same(&listing(&cat), &listing(&local));
    assert_eq!(verify_counts(&cat), verify_counts(&local));
    assert!(store.opens.load(Ordering::Relaxed) > 0);
}

#[test]
fn every_clightning_version_reads_the_same_from_a_copy_of_a_log_that_is_not_local() {
    let tmp = scratch();
    let (cat, store) = scan_fake("clightning", &tmp.path().join("cache"));
    let mut served = 0;
    for row in cln_manifest() {
        let Some(v) = row.version else { continue };
        let path = format!("{}/v{v:010}/lightningd.sqlite3", row.file);
        let out = tmp.path().join(format!("{}-{v}.db", row.scenario));
        let r = export(&cat, &path, &out);
        if row.ok {
            r.unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(canon_v1(&out), row.canon, "{path}");
            std::fs::remove_file(&out).unwrap();
            served += 1;
        } else {
            assert!(r.is_err(), "{path} is served");
        }
    }
    assert!(served > 300, "{served} versions checked");
    // The same versions as from the local folder, but a copied log is not live.
    let local = scan_in_process(
        &data_dir().join("clightning"),
        64 << 20,
        &tmp.path().join("c2"),
    );
    assert_same(&listing(&cat), &listing(&local));
    for s in cat.sets() {
        assert!(!s.set.live(), "{}: a copied log is not live", s.path);
    }
    // Each log was copied once, however many versions were read.
    let mut copies = store.copies.lock().unwrap().clone();
    let n = copies.len();
    copies.sort();
    copies.dedup();
    assert_eq!(copies.len(), n, "a log copied twice: {copies:?}");
    assert!(n >= 8, "{n} logs copied");
    assert!(copies.iter().all(|c| c.starts_with(PREFIX)));
}
