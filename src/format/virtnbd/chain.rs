//! Restore points of a virtnbdbackup folder, from checkpoint links and meta, never from mtimes
//! (spec §2.3): a point's image is the minimal sequence base, incs leading to the parent, file.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use chrono::NaiveDateTime;

use crate::error::{Error, Result};
use crate::storage::{self, Store};

/// What a file name says about its backup level.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackupLevel {
    /// `<disk>.full.data`
    Full,
    /// `<disk>.copy.data`
    Copy,
    /// `<disk>.inc.<checkpoint>.data`
    Inc(String),
    /// `<disk>.diff.<ident>.data`
    Diff(String),
}

impl BackupLevel {
    /// Key of the backup run that wrote the file: files of one run share it across disks.
    /// A full run saves raw disks as `.copy.data`, so full and copy are one run.
    pub fn run_key(&self) -> String {
        match self {
            BackupLevel::Full | BackupLevel::Copy => "base".into(),
            BackupLevel::Inc(x) => format!("inc.{x}"),
            BackupLevel::Diff(x) => format!("diff.{x}"),
        }
    }
}

/// Splits `<disk>.<level>.data` into disk and level; `None` for names virtnbdbackup does not
/// write (so an unrelated `foo.data` does not make a folder a backup set).
pub fn parse_name(name: &str) -> Option<(String, BackupLevel)> {
    let base = name.strip_suffix(".data")?;
    let (disk, rest) = base.split_once('.').unwrap_or((base, ""));
    let level = match rest {
        "full" => BackupLevel::Full,
        "copy" => BackupLevel::Copy,
        _ => match rest.split_once('.') {
            Some(("inc", cp)) if !cp.is_empty() => BackupLevel::Inc(cp.into()),
            Some(("diff", id)) if !id.is_empty() => BackupLevel::Diff(id.into()),
            _ => return None,
        },
    };
    Some((disk.to_owned(), level))
}

/// The parts of a stream's meta the chain depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamHeader {
    /// A plain raw image (no stream header).
    pub raw: bool,
    /// meta `incremental`.
    pub incremental: bool,
    /// meta `checkpointName`.
    pub checkpoint: Option<String>,
    /// meta `parentCheckpoint`.
    pub parent: Option<String>,
    /// meta `date`.
    pub date: Option<NaiveDateTime>,
}

impl StreamHeader {
    /// An offline incremental: no checkpoint created, `checkpointName == parentCheckpoint`.
    pub fn offline(&self) -> bool {
        self.incremental && self.checkpoint.is_some() && self.checkpoint == self.parent
    }
}

/// One `.data` file of the folder.
pub struct FileInfo {
    /// File name.
    pub name: String,
    /// Disk, from the file name.
    pub disk: String,
    /// Backup level, from the file name.
    pub level: BackupLevel,
    /// Its header, or why it cannot be read.
    pub header: Result<StreamHeader>,
}

/// The checkpoint tree as `checkpoints/*.xml` and `<domain>.cpt` record it: child → parent.
#[derive(Default)]
pub struct Checkpoints {
    parents: HashMap<String, String>,
    /// libvirt's `<creationTime>` (Unix seconds) of each checkpoint: an instant, where the
    /// streams' meta dates are only the backup host's wall-clock time.
    created: HashMap<String, i64>,
}

impl Checkpoints {
    /// Reads `checkpoints/<name>.xml` and every `*.cpt` list in `dir`; unreadable files are skipped.
    pub fn load(store: &dyn Store, dir: &Path, files: &[String]) -> Checkpoints {
        let mut cps = Checkpoints::default();
        for f in files.iter().filter(|f| f.ends_with(".cpt")) {
            let list: Vec<String> = read_small(store, &dir.join(f))
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            for pair in list.windows(2) {
                cps.parents
                    .entry(pair[1].clone())
                    .or_insert_with(|| pair[0].clone());
            }
        }
        let xml_dir = dir.join("checkpoints");
        let listed = store.list(&xml_dir).map(|l| l.files).unwrap_or_default();
        for entry in listed {
            let Some(cp) = entry.name.strip_suffix(".xml") else {
                continue;
            };
            let Some(xml) = read_small(store, &xml_dir.join(&entry.name))
                .and_then(|b| String::from_utf8(b).ok())
            else {
                continue;
            };
            if let Some(parent) = xml_parent(&xml) {
                cps.parents.insert(cp.to_owned(), parent);
            }
            if let Some(t) = xml_creation_time(&xml) {
                cps.created.insert(cp.to_owned(), t);
            }
        }
        cps
    }

    /// When checkpoint `name` was made, in Unix seconds, if its XML says.
    pub fn created(&self, name: &str) -> Option<i64> {
        self.created.get(name).copied()
    }

    /// Records `child`'s parent.
    #[cfg(test)]
    pub fn insert(&mut self, child: &str, parent: &str) {
        self.parents.insert(child.into(), parent.into());
    }

    /// The parent of checkpoint `cp`, when known.
    fn parent(&self, cp: &str) -> Option<&str> {
        self.parents.get(cp).map(String::as_str)
    }
}

/// The largest side file (checkpoint list or XML, domain XML) restorefs reads: real ones are a
/// few KiB, anything beyond this is not one.
const MAX_SIDE_FILE: u64 = 16 << 20;

/// The content of a small side file; `None` when it cannot be read or is larger than
/// [`MAX_SIDE_FILE`] (a hostile folder could hold a huge one).
pub fn read_small(store: &dyn Store, path: &Path) -> Option<Vec<u8>> {
    storage::read_small(store, path, MAX_SIDE_FILE).ok()
}

/// `<parent><name>X</name></parent>` of a libvirt domaincheckpoint XML.
/// The checkpoint's own `<creationTime>`, before the embedded `<domain>`.
fn xml_creation_time(xml: &str) -> Option<i64> {
    let head = xml.split("<domain>").next().unwrap_or(xml);
    let head = head.split("<domain ").next().unwrap_or(head);
    let inner = head
        .split_once("<creationTime>")?
        .1
        .split_once("</creationTime>")?
        .0;
    inner.trim().parse().ok()
}

fn xml_parent(xml: &str) -> Option<String> {
    // The embedded <domain> has <name>s of its own: look only before it.
    let body = xml.split_once("<domaincheckpoint").map_or(xml, |(_, b)| b);
    let head = body.split("<domain").next().unwrap_or(body);
    let inner = head.split_once("<parent>")?.1.split_once("</parent>")?.0;
    let name = inner.split_once("<name>")?.1.split_once("</name>")?.0;
    Some(name.trim().to_owned())
}

/// A disk's sequence at one point, or why it has none.
pub struct Resolved {
    /// Indices into the file list, oldest first; the last one is the point's own file.
    pub sequence: Result<Vec<usize>>,
    /// Warnings about the sequence (degraded reconstruction).
    pub warnings: Vec<String>,
}

/// Resolves restore-point sequences over the `.data` files of one folder.
pub struct Resolver<'a> {
    dir: &'a Path,
    files: &'a [FileInfo],
    checkpoints: &'a Checkpoints,
    creators: HashMap<(&'a str, &'a str), usize>,
}

impl<'a> Resolver<'a> {
    /// Indexes which file created which checkpoint, per disk.
    pub fn new(dir: &'a Path, files: &'a [FileInfo], checkpoints: &'a Checkpoints) -> Self {
        let mut creators = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let created: Option<&str> = match (&f.header, &f.level) {
                (Ok(h), BackupLevel::Copy) if !h.incremental => None,
                (Ok(h), _) if h.raw => None,
                (Ok(h), _) if !h.incremental => h.checkpoint.as_deref(),
                (Ok(h), BackupLevel::Inc(_)) if !h.offline() => h.checkpoint.as_deref(),
                (Ok(_), _) => None,
                // A damaged file still claims what its name says, so that its dependents
                // report the damage instead of a missing parent.
                (Err(_), BackupLevel::Full) => Some("virtnbdbackup.0"),
                (Err(_), BackupLevel::Inc(cp)) => Some(cp.as_str()),
                (Err(_), _) => None,
            };
            if let Some(cp) = created {
                creators.entry((f.disk.as_str(), cp)).or_insert(i);
            }
        }
        Resolver {
            dir,
            files,
            checkpoints,
            creators,
        }
    }

    /// The sequence that rebuilds file `idx`'s disk at its point.
    pub fn resolve(&self, idx: usize) -> Resolved {
        let mut warnings = Vec::new();
        let mut visiting = HashSet::new();
        let sequence = self.chain(idx, &mut visiting, &mut warnings);
        Resolved { sequence, warnings }
    }

    fn path(&self, idx: usize) -> std::path::PathBuf {
        self.dir.join(&self.files[idx].name)
    }

    fn chain(
        &self,
        idx: usize,
        visiting: &mut HashSet<usize>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<usize>> {
        let f = &self.files[idx];
        let h = f.header.as_ref().map_err(Clone::clone)?;
        if !visiting.insert(idx) {
            return Err(Error::corrupt(
                &self.path(idx),
                0,
                "checkpoint links form a loop",
            ));
        }
        if h.raw || !h.incremental {
            return Ok(vec![idx]);
        }
        let Some(parent) = h.parent.as_deref() else {
            return Err(Error::corrupt(
                &self.path(idx),
                super::frame::FRAME_LEN as u64,
                "incremental stream without parentCheckpoint",
            ));
        };
        let base = match self.creators.get(&(f.disk.as_str(), parent)) {
            Some(&c) if c != idx => self.parent_chain(c, idx, visiting, warnings)?,
            _ => self.without_creator(idx, h, parent, visiting, warnings)?,
        };
        let mut seq = base;
        seq.push(idx);
        Ok(seq)
    }

    fn parent_chain(
        &self,
        parent: usize,
        child: usize,
        visiting: &mut HashSet<usize>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<usize>> {
        self.chain(parent, visiting, warnings).map_err(|e| {
            e.context(format!(
                "{} depends on {}",
                self.files[child].name, self.files[parent].name
            ))
        })
    }

    /// The creator of checkpoint `parent` is gone. When an offline incremental overwrote it
    /// (the file-name collision of spec §2.3), rebuild as well as the remaining files allow and
    /// warn: the offline incremental on `parent` stands in for it; for that offline file itself,
    /// the best base is the state of the checkpoint before.
    fn without_creator(
        &self,
        idx: usize,
        h: &StreamHeader,
        parent: &str,
        visiting: &mut HashSet<usize>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<usize>> {
        let f = &self.files[idx];
        let missing = || {
            Error::corrupt(
                &self.path(idx),
                super::frame::FRAME_LEN as u64,
                format!(
                    "parent checkpoint {parent:?} not found: no full or incremental backup in this folder created it"
                ),
            )
        };
        let offline_on = |cp: &str| {
            self.files.iter().position(|o| {
                o.disk == f.disk
                    && o.level == BackupLevel::Inc(cp.to_owned())
                    && o.header.as_ref().is_ok_and(StreamHeader::offline)
            })
        };
        let collided = h.offline() && f.level == BackupLevel::Inc(parent.to_owned());
        if !collided {
            // A later backup on top of the overwritten checkpoint: the offline incremental on
            // it stands in (its own resolution carries the warning).
            return match offline_on(parent) {
                Some(o) if o != idx => self.parent_chain(o, idx, visiting, warnings),
                _ => Err(missing()),
            };
        }
        let Some(grand) = self.checkpoints.parent(parent) else {
            return Err(missing());
        };
        let base = match (
            offline_on(grand),
            self.creators.get(&(f.disk.as_str(), grand)),
        ) {
            (Some(o), _) if o != idx => self.parent_chain(o, idx, visiting, warnings)?,
            (_, Some(&c)) if c != idx => self.parent_chain(c, idx, visiting, warnings)?,
            _ => return Err(missing()),
        };
        warnings.push(format!(
            "{}: the incremental backup that created checkpoint {parent} was overwritten by an offline \
             incremental with the same file name (virtnbdbackup's name collision); the changes between \
             {grand} and {parent} are missing except those in {}, so this image is a best effort",
            f.disk,
            base.last().map_or("-", |&b| self.files[b].name.as_str())
        ));
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, h: StreamHeader) -> FileInfo {
        let (disk, level) = parse_name(name).unwrap();
        FileInfo {
            name: name.into(),
            disk,
            level,
            header: Ok(h),
        }
    }

    fn hdr(incremental: bool, cp: &str, parent: &str) -> StreamHeader {
        StreamHeader {
            raw: false,
            incremental,
            checkpoint: (!cp.is_empty()).then(|| cp.to_owned()),
            parent: (!parent.is_empty()).then(|| parent.to_owned()),
            date: None,
        }
    }

    fn names(files: &[FileInfo], r: Resolved) -> Vec<&str> {
        r.sequence
            .unwrap()
            .into_iter()
            .map(|i| files[i].name.as_str())
            .collect()
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_name("vda.full.data"),
            Some(("vda".into(), BackupLevel::Full))
        );
        assert_eq!(
            parse_name("sda.inc.virtnbdbackup.3.data"),
            Some(("sda".into(), BackupLevel::Inc("virtnbdbackup.3".into())))
        );
        assert_eq!(
            parse_name("vda.diff.1795313044.data"),
            Some(("vda".into(), BackupLevel::Diff("1795313044".into())))
        );
        assert_eq!(parse_name("vda.full.data.partial"), None);
        assert_eq!(parse_name("notes.data"), None);
        assert_eq!(parse_name("vda.snapshot.data"), None);
        assert_eq!(parse_name("vda.full.data.chksum"), None);
    }

    #[test]
    fn incs_and_diffs_resolve_minimally() {
        let files = vec![
            file("vda.full.data", hdr(false, "virtnbdbackup.0", "")),
            file(
                "vda.inc.virtnbdbackup.1.data",
                hdr(true, "virtnbdbackup.1", "virtnbdbackup.0"),
            ),
            file(
                "vda.diff.100.data",
                hdr(true, "virtnbdbackup.2", "virtnbdbackup.1"),
            ),
            file(
                "vda.diff.200.data",
                hdr(true, "virtnbdbackup.2", "virtnbdbackup.1"),
            ),
            file(
                "vda.inc.virtnbdbackup.2.data",
                hdr(true, "virtnbdbackup.2", "virtnbdbackup.1"),
            ),
            file(
                "vda.inc.virtnbdbackup.3.data",
                hdr(true, "virtnbdbackup.3", "virtnbdbackup.2"),
            ),
        ];
        let cps = Checkpoints::default();
        let r = Resolver::new(Path::new("/b"), &files, &cps);
        assert_eq!(
            names(&files, r.resolve(3)),
            [
                "vda.full.data",
                "vda.inc.virtnbdbackup.1.data",
                "vda.diff.200.data"
            ]
        );
        assert_eq!(
            names(&files, r.resolve(5)),
            [
                "vda.full.data",
                "vda.inc.virtnbdbackup.1.data",
                "vda.inc.virtnbdbackup.2.data",
                "vda.inc.virtnbdbackup.3.data"
            ]
        );
    }

    #[test]
    fn fallback_full_under_an_inc_name_is_a_base() {
        let files = vec![
            file("vda.full.data", hdr(false, "virtnbdbackup.0", "")),
            file(
                "vda.inc.virtnbdbackup.1.data",
                hdr(false, "virtnbdbackup.1", ""),
            ),
            file(
                "vda.inc.virtnbdbackup.2.data",
                hdr(true, "virtnbdbackup.2", "virtnbdbackup.1"),
            ),
        ];
        let cps = Checkpoints::default();
        let r = Resolver::new(Path::new("/b"), &files, &cps);
        assert_eq!(
            names(&files, r.resolve(2)),
            [
                "vda.inc.virtnbdbackup.1.data",
                "vda.inc.virtnbdbackup.2.data"
            ]
        );
    }

    #[test]
    fn overwritten_creator_degrades_with_a_warning() {
        let files = vec![
            file("vda.full.data", hdr(false, "virtnbdbackup.0", "")),
            file(
                "vda.inc.virtnbdbackup.0.data",
                hdr(true, "virtnbdbackup.0", "virtnbdbackup.0"),
            ),
            file(
                "vda.inc.virtnbdbackup.1.data",
                hdr(true, "virtnbdbackup.1", "virtnbdbackup.1"),
            ),
        ];
        let mut cps = Checkpoints::default();
        cps.insert("virtnbdbackup.1", "virtnbdbackup.0");
        let r = Resolver::new(Path::new("/b"), &files, &cps);
        assert_eq!(
            names(&files, r.resolve(1)),
            ["vda.full.data", "vda.inc.virtnbdbackup.0.data"]
        );
        let res = r.resolve(2);
        assert_eq!(res.warnings.len(), 1);
        assert_eq!(
            names(&files, res),
            [
                "vda.full.data",
                "vda.inc.virtnbdbackup.0.data",
                "vda.inc.virtnbdbackup.1.data"
            ]
        );
    }

    #[test]
    fn backups_after_an_overwritten_checkpoint_build_on_the_offline_stand_in() {
        let files = vec![
            file("vda.full.data", hdr(false, "virtnbdbackup.0", "")),
            file(
                "vda.inc.virtnbdbackup.1.data",
                hdr(true, "virtnbdbackup.1", "virtnbdbackup.1"),
            ),
            file(
                "vda.inc.virtnbdbackup.2.data",
                hdr(true, "virtnbdbackup.2", "virtnbdbackup.1"),
            ),
            file(
                "vda.diff.99.data",
                hdr(true, "virtnbdbackup.3", "virtnbdbackup.2"),
            ),
        ];
        let mut cps = Checkpoints::default();
        cps.insert("virtnbdbackup.1", "virtnbdbackup.0");
        let r = Resolver::new(Path::new("/b"), &files, &cps);
        let res = r.resolve(3);
        assert_eq!(res.warnings.len(), 1, "{:?}", res.warnings);
        assert_eq!(
            names(&files, res),
            [
                "vda.full.data",
                "vda.inc.virtnbdbackup.1.data",
                "vda.inc.virtnbdbackup.2.data",
                "vda.diff.99.data"
            ]
        );
    }

    #[test]
    fn missing_parent_is_an_error_naming_the_file() {
        let files = vec![file(
            "vda.inc.virtnbdbackup.5.data",
            hdr(true, "virtnbdbackup.5", "virtnbdbackup.4"),
        )];
        let cps = Checkpoints::default();
        let r = Resolver::new(Path::new("/b"), &files, &cps);
        let e = r.resolve(0).sequence.unwrap_err().to_string();
        assert!(e.contains("/b/vda.inc.virtnbdbackup.5.data"), "{e}");
        assert!(e.contains("virtnbdbackup.4"), "{e}");
    }

    #[test]
    fn damaged_parent_is_reported_by_its_dependents() {
        let mut files = vec![
            file("vda.full.data", hdr(false, "virtnbdbackup.0", "")),
            file(
                "vda.inc.virtnbdbackup.1.data",
                hdr(true, "virtnbdbackup.1", "virtnbdbackup.0"),
            ),
        ];
        files[0].header = Err(Error::corrupt(
            Path::new("/b/vda.full.data"),
            1234,
            "garbage",
        ));
        let cps = Checkpoints::default();
        let r = Resolver::new(Path::new("/b"), &files, &cps);
        let e = r.resolve(1).sequence.unwrap_err().to_string();
        assert!(e.contains("vda.full.data: at offset 1234"), "{e}");
        assert!(e.contains("depends on vda.full.data"), "{e}");
    }

    #[test]
    fn checkpoint_xml_parent() {
        let xml = "<domaincheckpoint>\n  <name>virtnbdbackup.1</name>\n  <parent>\n    <name>virtnbdbackup.0</name>\n  </parent>\n  <domain><name>vm</name></domain>";
        assert_eq!(xml_parent(xml).as_deref(), Some("virtnbdbackup.0"));
        assert_eq!(
            xml_parent(
                "<domaincheckpoint><name>a</name><domain><parent><name>x</name></parent></domain>"
            ),
            None
        );
    }
}
