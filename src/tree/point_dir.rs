//! A point's folder (its exposed files plus `info.json`) and the JSON that describes a point,
//! shared by `info.json` and `ls --json`.

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value, json};

use crate::error::Result;
use crate::model::{Exposed, Point};
use crate::timefmt;
use crate::vfs::{self, Attr, Directory, FileNode, Node, StaticDir};

/// The point as `ls --json` and `info.json` show it, with what its disk images hold.
pub fn point_json(p: &Point) -> Value {
    let mut v = point_json_plain(p);
    describe_files(&mut v, &described(p));
    v
}

/// The point's JSON without looking inside its disk images.
fn point_json_plain(p: &Point) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(p.name));
    o.insert("time".into(), json!(p.time.as_ref().map(timefmt::to_iso)));
    o.insert("kind".into(), json!(p.kind));
    o.extend(p.ids.clone());
    match &p.content {
        Ok(files) => {
            let files: Vec<Value> = files.iter().map(file_json).collect();
            o.insert("files".into(), Value::Array(files));
        }
        Err(e) => {
            o.insert("error".into(), json!(e.to_string()));
        }
    }
    o.insert("warnings".into(), json!(p.warnings));
    Value::Object(o)
}

/// The exposed folders that describe their contents (disk images' folders), by file index.
fn described(p: &Point) -> Vec<(usize, Arc<dyn Directory>)> {
    let Ok(files) = &p.content else {
        return Vec::new();
    };
    files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match &f.node {
            Node::Dir(d) => Some((i, Arc::clone(d))),
            _ => None,
        })
        .collect()
}

/// Adds `contents` to the files of a point's JSON from their folders' descriptions.
fn describe_files(v: &mut Value, dirs: &[(usize, Arc<dyn Directory>)]) {
    for (i, d) in dirs {
        if let Some(c) = d.describe()
            && let Some(Value::Object(f)) = v.get_mut("files").and_then(|f| f.get_mut(*i))
        {
            f.insert("contents".into(), c);
        }
    }
}

/// `info.json`: made when first read, so that making a point's folder reads no disk image.
struct InfoFile {
    plain: Value,
    dirs: Vec<(usize, Arc<dyn Directory>)>,
    text: OnceLock<Vec<u8>>,
    attr: Attr,
}

impl InfoFile {
    fn text(&self) -> &[u8] {
        self.text.get_or_init(|| {
            let mut v = self.plain.clone();
            describe_files(&mut v, &self.dirs);
            let mut text = serde_json::to_vec_pretty(&v).unwrap_or_default();
            text.push(b'\n');
            text
        })
    }
}

impl FileNode for InfoFile {
    fn size(&self) -> Result<u64> {
        Ok(self.text().len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let text = self.text();
        let n = vfs::clamp(offset, buf.len(), text.len() as u64);
        if n > 0 {
            let at = offset as usize;
            buf[..n].copy_from_slice(&text[at..at + n]);
        }
        Ok(n)
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}

fn file_json(f: &Exposed) -> Value {
    let mut fo = Map::new();
    fo.insert("path".into(), json!(f.path));
    fo.insert("size".into(), json!(f.size));
    fo.insert("sources".into(), json!(f.sources));
    if let Some(e) = &f.error {
        fo.insert("error".into(), json!(e.to_string()));
    }
    Value::Object(fo)
}

/// The folder of point `p` of the set at `set_path`: its exposed files plus `info.json`; made
/// once per point.
pub fn node(p: &Point, set_path: &str, format: &str) -> Node {
    p.folder(|p| {
        let attr = Attr::read_only(false, p.mtime());
        let mut info = point_json_plain(p);
        if let Value::Object(o) = &mut info {
            o.insert("set".into(), json!(set_path));
            o.insert("format".into(), json!(format));
        }
        let file = InfoFile {
            plain: info,
            dirs: described(p),
            text: OnceLock::new(),
            attr,
        };
        let mut entries = vec![("info.json".to_owned(), Node::File(Arc::new(file)))];
        if let Ok(files) = &p.content {
            entries.extend(files.iter().map(|f| (f.path.clone(), f.node.clone())));
        }
        Node::Dir(StaticDir::new(Attr::read_only(true, p.mtime()), entries))
    })
}
