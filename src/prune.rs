//! Pruning of what restorefs keeps between runs in its cache folder: kept indexes and LZ4
//! decoder checkpoints (`index/`) and Core Lightning checkpoints (`clightning/`) not used for a
//! given number of days. Everything pruned is rebuilt when it is needed again.
//!
//! A file's last use is the later of its modification and access times (a folder's, its
//! modification time); loading a kept file
//! marks it used ([`mark_used`]), so pruning does not depend on the file system updating access
//! times. Only names restorefs writes are considered; anything else in the folder is left
//! alone, and symbolic links are never followed.

use std::fs::{File, Metadata};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A kept file is marked used again only when its mark is older than this (one write a day,
/// not one per load).
const MARK_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What one pruning removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Files removed (a Core Lightning log's folder counts its files).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Prunes `cache_dir` on a background thread (a run need not wait for it); `max_age_days` 0
/// prunes nothing.
pub fn start(cache_dir: &Path, max_age_days: u32) {
    if max_age_days == 0 {
        return;
    }
    let dir = cache_dir.to_path_buf();
    let max_age = Duration::from_secs(u64::from(max_age_days) * 24 * 3600);
    let spawned = std::thread::Builder::new()
        .name("prune".into())
        .spawn(move || {
            let p = prune(&dir, max_age, SystemTime::now());
            if p.files > 0 {
                log::info!(
                    "{}: removed {} kept files ({} bytes) unused for {max_age_days} days",
                    dir.display(),
                    p.files,
                    p.bytes
                );
            }
        });
    if let Err(e) = spawned {
        log::debug!("cannot start pruning {}: {e}", cache_dir.display());
    }
}

/// Removes the kept files under `cache_dir` whose last use is more than `max_age` before
/// `now`: files of `index/`, and whole log folders of `clightning/` none of whose files was
/// used since.
pub fn prune(cache_dir: &Path, max_age: Duration, now: SystemTime) -> Pruned {
    let cutoff = now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut out = Pruned::default();
    for (path, meta) in entries(&cache_dir.join("index")) {
        if meta.is_file() && kept_index_name(&path) && last_use(&meta) < cutoff {
            // Looked at again right before: a run may have used it since the listing.
            let still = std::fs::symlink_metadata(&path).is_ok_and(|m| last_use(&m) < cutoff);
            if still && std::fs::remove_file(&path).is_ok() {
                out.files += 1;
                out.bytes += meta.len();
            }
        }
    }
    for (path, meta) in entries(&cache_dir.join("clightning")) {
        if !meta.is_dir() || !log_folder_name(&path) {
            continue;
        }
        let (used, files, bytes) = tree_use(&path, &meta, 2);
        if used < cutoff && std::fs::remove_dir_all(&path).is_ok() {
            out.files += files;
            out.bytes += bytes;
        }
    }
    out
}

/// Marks the kept file or folder at `path` used now (when its mark is a day old or more).
pub fn mark_used(path: &Path) {
    let now = SystemTime::now();
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_symlink()
        || meta
            .modified()
            .is_ok_and(|m| m + MARK_EVERY > now && m <= now)
    {
        return;
    }
    if let Err(e) = File::open(path).and_then(|f| f.set_modified(now)) {
        log::debug!("{}: cannot mark as used: {e}", path.display());
    }
}

/// The entries of folder `dir` with their own metadata (links not followed).
fn entries(dir: &Path) -> Vec<(std::path::PathBuf, Metadata)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .collect()
}

/// The later of a file's modification and access times; a folder's modification time (the
/// pruner's own listing of a folder would move its access time).
fn last_use(meta: &Metadata) -> SystemTime {
    let m = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if meta.is_dir() {
        return m;
    }
    meta.accessed().map_or(m, |a| a.max(m))
}

/// The latest use in the tree at `path` (`depth` levels of folders below it), its files and
/// their bytes.
fn tree_use(path: &Path, meta: &Metadata, depth: u32) -> (SystemTime, u64, u64) {
    let mut used = last_use(meta);
    let (mut files, mut bytes) = (0, 0);
    if meta.is_dir() && depth > 0 {
        for (p, m) in entries(path) {
            let (u, f, b) = tree_use(&p, &m, depth - 1);
            used = used.max(u);
            files += f;
            bytes += b;
        }
    } else if meta.is_file() {
        files = 1;
        bytes = meta.len();
    }
    (used, files, bytes)
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// `<key>.idx`, `<key>.<offset>.lz4cp`, or a temporary `<key>.tmp<pid>` left by a killed run.
fn kept_index_name(path: &Path) -> bool {
    let name = file_name(path);
    name.ends_with(".idx")
        || name.ends_with(".lz4cp")
        || name
            .rsplit_once(".tmp")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// A log's folder: 16 hexadecimal digits (a hash of the log's name).
fn log_folder_name(path: &Path) -> bool {
    let name = file_name(path);
    name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::FileTimes;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn write(path: &Path, len: usize, age_days: u64) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![7u8; len]).unwrap();
        age(path, age_days);
    }

    fn age(path: &Path, days: u64) {
        let t = SystemTime::now() - DAY * days as u32;
        let f = File::open(path).unwrap();
        f.set_times(FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
    }

    #[test]
    fn only_kept_files_unused_for_the_age_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path();
        let index = c.join("index");
        write(&index.join("a.idx"), 100, 40);
        write(&index.join("a.1048576.lz4cp"), 10, 40);
        write(&index.join("b.tmp1234"), 5, 40);
        write(&index.join("c.idx"), 100, 3);
        // Not ours, however old: left alone.
        write(&index.join("notes.txt"), 1, 400);
        write(&c.join("elsewhere").join("x.idx"), 1, 400);
        std::os::unix::fs::symlink(c.join("elsewhere"), index.join("link.idx")).unwrap();
        // A log none of whose files was used for 40 days goes whole; one with a recent file stays.
        let old_log = c.join("clightning/00112233aabbccdd/v1");
        write(&old_log.join("0000-00.ck"), 30, 40);
        write(&old_log.join("0001-00.ck"), 20, 50);
        age(&old_log, 40);
        age(old_log.parent().unwrap(), 40);
        let live_log = c.join("clightning/ffeeddccbbaa9988/v2");
        write(&live_log.join("0000-00.ck"), 30, 40);
        write(&live_log.join("0001-00.ck"), 20, 1);
        age(&live_log, 40);
        age(live_log.parent().unwrap(), 40);
        write(&c.join("clightning/not-a-log/x.ck"), 1, 400);

        let p = prune(c, DAY * 30, SystemTime::now());
        assert_eq!(
            p,
            Pruned {
                files: 5,
                bytes: 165
            }
        );
        for gone in ["index/a.idx", "index/a.1048576.lz4cp", "index/b.tmp1234"] {
            assert!(!c.join(gone).exists(), "{gone} kept");
        }
        assert!(!c.join("clightning/00112233aabbccdd").exists());
        for kept in [
            "index/c.idx",
            "index/notes.txt",
            "elsewhere/x.idx",
            "clightning/ffeeddccbbaa9988/v2/0000-00.ck",
            "clightning/not-a-log/x.ck",
        ] {
            assert!(c.join(kept).exists(), "{kept} removed");
        }
        assert!(std::fs::symlink_metadata(index.join("link.idx")).is_ok());
        // Nothing left to prune.
        assert_eq!(prune(c, DAY * 30, SystemTime::now()), Pruned::default());
    }

    #[test]
    fn a_file_marked_used_survives() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("index/k.idx");
        write(&f, 8, 60);
        mark_used(&f);
        assert_eq!(prune(dir.path(), DAY * 30, SystemTime::now()).files, 0);
        assert!(f.exists());
        // Sixty days on, unused since: pruned.
        let later = SystemTime::now() + DAY * 60;
        assert_eq!(prune(dir.path(), DAY * 30, later).files, 1);
    }
}
