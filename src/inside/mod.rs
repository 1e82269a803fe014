//! Files inside disk images: a disk image's folder (`<disk>/` beside `<disk>.raw`) holding its
//! partitions as exact slices (`p1.raw` …) and, where restorefs can read the file system on
//! them, their files (`p1/` …, or `files/` when the whole disk is one file system). Nothing is
//! read until the folder is listed or described.

pub mod detect;
pub mod device;
pub mod ext4;
pub mod fat;
mod journal;
pub mod ntfs;
pub mod partition;
mod slice;

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::vfs::{Attr, Directory, FileNode, Node, NodeKind};
use detect::Detected;
use partition::{Partition, Table};
pub use slice::Slice;

/// Name of the folder holding the files when the whole disk is one file system.
pub const WHOLE_DISK: &str = "files";

/// A file system reader: the root folder of the file system on a device (`what` names it).
type Reader = fn(Arc<dyn FileNode>, &str) -> Result<Node>;

/// The reader of a file system of this type, `None` for types restorefs cannot read (their
/// slice stays the way in). The one place where readers are wired in.
fn reader(kind: &str) -> Option<Reader> {
    match kind {
        "ext2" | "ext3" | "ext4" => Some(ext4::open),
        "vfat" => Some(fat::open),
        "ntfs" => Some(ntfs::open),
        _ => None,
    }
}

/// One file system found: where (a partition or the whole disk), what, and its files once read.
struct Volume {
    partition: Option<Partition>,
    found: Option<Detected>,
    slice: Arc<dyn FileNode>,
    what: String,
    root: OnceLock<Result<Node>>,
}

impl Volume {
    fn root(&self) -> Option<Result<Node>> {
        let open = reader(&self.found.as_ref()?.kind)?;
        Some(
            self.root
                .get_or_init(|| {
                    open(Arc::clone(&self.slice), &self.what).inspect_err(|e| log::warn!("{e}"))
                })
                .clone(),
        )
    }

    fn json(&self) -> Value {
        let mut o = Map::new();
        if let Some(p) = &self.partition {
            o.insert("number".into(), json!(p.number));
            o.insert("start".into(), json!(p.start));
            o.insert("size".into(), json!(p.size));
            o.insert("type".into(), json!(p.kind));
            o.insert("name".into(), json!(p.name));
        }
        o.insert("filesystem".into(), json!(self.found));
        if let Some(f) = &self.found
            && reader(&f.kind).is_none()
        {
            o.insert(
                "note".into(),
                json!(format!(
                    "{} is not browsable by restorefs; use the .raw slice",
                    f.kind
                )),
            );
        }
        Value::Object(o)
    }
}

/// What a disk image holds: its partition table (if any) and the file systems found.
struct Contents {
    table: Option<Table>,
    volumes: Vec<Volume>,
}

fn survey(image: &Arc<dyn FileNode>, what: &str) -> Result<Contents> {
    let table = partition::read_table(image.as_ref(), what)?;
    let mut volumes = Vec::new();
    match &table {
        Some(t) => {
            for p in &t.partitions {
                let slice: Arc<dyn FileNode> = Slice::new(Arc::clone(image), p.start, p.size);
                let pwhat = format!("{what} p{}", p.number);
                let found = detect::detect(slice.as_ref(), &pwhat).unwrap_or_else(|e| {
                    log::warn!("{e}");
                    None
                });
                volumes.push(Volume {
                    partition: Some(p.clone()),
                    found,
                    slice,
                    what: pwhat,
                    root: OnceLock::new(),
                });
            }
        }
        None => {
            let found = detect::detect(image.as_ref(), what)?;
            volumes.push(Volume {
                partition: None,
                found,
                slice: Arc::clone(image),
                what: what.to_owned(),
                root: OnceLock::new(),
            });
        }
    }
    Ok(Contents { table, volumes })
}

/// A disk image's folder: its partitions and their files.
pub struct DiskDir {
    image: Arc<dyn FileNode>,
    what: String,
    attr: Attr,
    contents: OnceLock<Result<Contents>>,
}

impl DiskDir {
    /// The folder of `image`; `what` names the image in errors and logs.
    pub fn new(image: Arc<dyn FileNode>, what: String, attr: Attr) -> Arc<DiskDir> {
        Arc::new(DiskDir {
            image,
            what,
            attr,
            contents: OnceLock::new(),
        })
    }

    fn contents(&self) -> Result<&Contents> {
        match self
            .contents
            .get_or_init(|| survey(&self.image, &self.what))
        {
            Ok(c) => Ok(c),
            Err(e) => Err(e.clone()),
        }
    }

    /// Every name of the folder and how to make its node, in name order.
    fn children(&self) -> Result<Vec<(String, Child<'_>)>> {
        let c = self.contents()?;
        let mut out = Vec::new();
        for v in &c.volumes {
            let browsable = v.found.as_ref().is_some_and(|f| reader(&f.kind).is_some());
            match &v.partition {
                Some(p) => {
                    out.push((format!("p{}.raw", p.number), Child::Slice(v)));
                    if browsable {
                        out.push((format!("p{}", p.number), Child::Files(v)));
                    }
                }
                None if browsable => out.push((WHOLE_DISK.to_owned(), Child::Files(v))),
                None => {}
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

enum Child<'a> {
    Slice(&'a Volume),
    Files(&'a Volume),
}

impl Child<'_> {
    fn kind(&self) -> NodeKind {
        match self {
            Child::Slice(_) => NodeKind::File,
            Child::Files(_) => NodeKind::Dir,
        }
    }

    fn node(&self) -> Result<Node> {
        match self {
            Child::Slice(v) => Ok(Node::File(Arc::clone(&v.slice))),
            Child::Files(v) => v
                .root()
                .unwrap_or_else(|| Err(Error::not_found("no file system reader"))),
        }
    }
}

impl Directory for DiskDir {
    fn entries(&self) -> Result<Vec<(String, Node)>> {
        self.children()?
            .into_iter()
            .map(|(n, c)| c.node().map(|node| (n, node)))
            .collect()
    }

    fn names(&self) -> Result<Vec<(String, NodeKind)>> {
        Ok(self
            .children()?
            .into_iter()
            .map(|(n, c)| (n, c.kind()))
            .collect())
    }

    fn lookup(&self, name: &str) -> Result<Option<Node>> {
        let children = self.children()?;
        match children.iter().find(|(n, _)| n == name) {
            Some((_, c)) => c.node().map(Some),
            None => Ok(None),
        }
    }

    fn attr(&self) -> Attr {
        self.attr
    }

    fn describe(&self) -> Option<Value> {
        let c = match self.contents() {
            Ok(c) => c,
            Err(e) => return Some(json!({ "error": e.to_string() })),
        };
        let mut o = Map::new();
        o.insert(
            "table".into(),
            json!(c.table.as_ref().map(|t| t.kind.name())),
        );
        let vols: Vec<Value> = c.volumes.iter().map(Volume::json).collect();
        match &c.table {
            Some(t) => {
                o.insert("partitions".into(), Value::Array(vols));
                o.insert("notes".into(), json!(t.notes));
            }
            None => {
                let whole = vols.into_iter().next().unwrap_or(Value::Null);
                o.insert("whole_disk".into(), whole);
            }
        }
        Some(Value::Object(o))
    }
}

/// `ls` lines for a disk image's folder `disk` from its description: one per partition or
/// file system, with where its files are or why they are not browsable.
pub fn summary(disk: &str, described: Option<Value>) -> Vec<String> {
    let Some(d) = described else {
        return Vec::new();
    };
    if let Some(e) = d["error"].as_str() {
        return vec![format!("cannot read the disk: {e}")];
    }
    let line = |name: &str, v: &Value| {
        let fs = &v["filesystem"];
        let what = match fs["type"].as_str() {
            Some(t) => match fs["label"].as_str() {
                Some(l) => format!("{t} \"{l}\""),
                None => t.to_owned(),
            },
            None => "no file system recognised".to_owned(),
        };
        let kind = v["type"]
            .as_str()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default();
        let size = v["size"]
            .as_u64()
            .map(|s| format!(" {} MiB", s >> 20))
            .unwrap_or_default();
        let place = match v["note"].as_str() {
            Some(n) => format!("  note: {n}"),
            None if fs.is_object() => format!("  {disk}/{name}/"),
            None => String::new(),
        };
        format!("{name}{size}{kind}: {what}{place}")
    };
    match d["partitions"].as_array() {
        Some(parts) => parts
            .iter()
            .map(|p| line(&format!("p{}", p["number"]), p))
            .collect(),
        None => vec![line(WHOLE_DISK, &d["whole_disk"])],
    }
}
