//! A point's folder (its exposed files plus `info.json`) and the JSON that describes a point,
//! shared by `info.json` and `ls --json`.

use serde_json::{Map, Value, json};

use crate::model::{Exposed, Point};
use crate::timefmt;
use crate::vfs::{Attr, BytesFile, Node, StaticDir};

/// The point as `ls --json` and `info.json` show it.
pub fn point_json(p: &Point) -> Value {
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
        let mut info = point_json(p);
        if let Value::Object(o) = &mut info {
            o.insert("set".into(), json!(set_path));
            o.insert("format".into(), json!(format));
        }
        let mut text = serde_json::to_vec_pretty(&info).unwrap_or_default();
        text.push(b'\n');
        let mut entries = vec![(
            "info.json".to_owned(),
            Node::File(BytesFile::new(text, attr)),
        )];
        if let Ok(files) = &p.content {
            entries.extend(files.iter().map(|f| (f.path.clone(), f.node.clone())));
        }
        Node::Dir(StaticDir::new(Attr::read_only(true, p.mtime()), entries))
    })
}
