//! Checks a restored rsync-engine point against the block signatures freezer recorded in the
//! level's `engine_metadata` (spec §7.2): for every regular file, the Adler-32 and SHA-1 of each
//! `rsync_block_size` block, computed by freezer right after storing the file. A mismatch is
//! damage, a file that changed while freezer read it, or a wrong chain; `verify` reports it.

use std::path::Path;
use std::sync::Arc;

use sha1::{Digest, Sha1};

use super::msgpack::{self, Budget, Value};
use super::stream::{self, Engine};
use super::tar::{Limits, Reader};
use super::tree::shown;
use crate::error::{Error, Result};
use crate::storage::Store;
use crate::vfs::{Directory, FileNode, Node};

/// The recorded signature of one file: per block, Adler-32 and SHA-1 (hex).
struct Signature {
    adler: Vec<u32>,
    sha1: Vec<String>,
}

/// Checks every file `engine_metadata` (next to a level's `data`) signs against the tree at
/// `root`; returns the problems found. `block`: the level's block size.
pub fn check(
    store: &dyn Store,
    meta: &Path,
    compression: &str,
    limits: Limits,
    block: u64,
    root: &Arc<dyn Directory>,
) -> Vec<Error> {
    if !matches!(store.stat(meta), Ok(Some(_))) {
        log::warn!(
            "{}: missing: the point's files cannot be checked against freezer's signatures",
            meta.display()
        );
        return Vec::new();
    }
    let files = match load(store, meta, compression, limits) {
        Ok(f) => f,
        Err(e) => return vec![e],
    };
    files
        .into_iter()
        .filter_map(|(path, sig)| {
            let file = match find(root, &path) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Some(Error::corrupt(
                        meta,
                        0,
                        format!(
                            "{:?} is signed here but not in the restored tree",
                            shown(&path)
                        ),
                    ));
                }
                Err(e) => return Some(e),
            };
            compare(file.as_ref(), &sig, block).err().map(|why| {
                why.unwrap_or_else(|w| Error::corrupt(meta, 0, format!("{:?}: {w}", shown(&path))))
            })
        })
        .collect()
}

/// The signed files of an `engine_metadata` file.
fn load(
    store: &dyn Store,
    meta: &Path,
    compression: &str,
    limits: Limits,
) -> Result<Vec<(String, Signature)>> {
    let source = store.open(meta)?;
    let mut input = stream::open(&source, Engine::Rsync, compression, None, limits.memory)?;
    let mut sink = std::io::sink();
    let mut r = Reader {
        input: &mut input,
        sink: &mut sink,
        pos: 0,
        bound: limits.memory,
    };
    let mut budget = Budget {
        used: 0,
        max: limits.memory,
    };
    let bad = |offset: u64, msg: &str| {
        Error::corrupt(
            meta,
            offset,
            format!("in the decompressed engine metadata: {msg}"),
        )
    };
    let doc = msgpack::read(&mut r, &mut budget).map_err(|e| bad(e.offset, &e.msg))?;
    let Some(Value::Map(files)) = field(&doc, "files") else {
        return Err(bad(0, "no map of files"));
    };
    let mut out = Vec::new();
    for (k, v) in files {
        let Some(sig) = field(v, "signature") else {
            // Folders and symlinks are not signed.
            continue;
        };
        let path = k.text().map(|b| String::from_utf8_lossy(b).into_owned());
        match (path, signature(sig)) {
            (Some(p), Some(s)) => out.push((p, s)),
            _ => {
                return Err(bad(
                    0,
                    "a file's signature is not [[adler32...], [sha1...]]",
                ));
            }
        }
    }
    Ok(out)
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let Value::Map(m) = v else { return None };
    m.iter()
        .find(|(k, _)| k.text() == Some(name.as_bytes()))
        .map(|(_, v)| v)
}

fn signature(v: &Value) -> Option<Signature> {
    let Value::Array(parts) = v else { return None };
    let [Value::Array(weak), Value::Array(strong)] = parts.as_slice() else {
        return None;
    };
    let adler = weak
        .iter()
        .map(|a| a.int().and_then(|a| u32::try_from(a).ok()))
        .collect::<Option<Vec<u32>>>()?;
    let sha1 = strong
        .iter()
        .map(|s| {
            s.text()
                .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        })
        .collect::<Option<Vec<String>>>()?;
    (adler.len() == sha1.len()).then_some(Signature { adler, sha1 })
}

/// The file at `path` in the tree, never following symlinks.
fn find(root: &Arc<dyn Directory>, path: &str) -> Result<Option<Arc<dyn FileNode>>> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Ok(None);
    };
    let mut cur = Arc::clone(root);
    for d in dirs {
        match cur.lookup(d)? {
            Some(Node::Dir(next)) => cur = next,
            _ => return Ok(None),
        }
    }
    Ok(match cur.lookup(last)? {
        Some(Node::File(f)) => Some(f),
        _ => None,
    })
}

/// Reads `file` block by block and compares: `Err(Ok(error))` when it cannot be read,
/// `Err(Err(what))` when it differs.
fn compare(
    file: &dyn FileNode,
    sig: &Signature,
    block: u64,
) -> std::result::Result<(), std::result::Result<Error, String>> {
    let size = file.size().map_err(Ok)?;
    let blocks = size.div_ceil(block);
    if blocks != sig.adler.len() as u64 {
        return Err(Err(format!(
            "{size} bytes make {blocks} blocks, freezer signed {}",
            sig.adler.len()
        )));
    }
    let mut buf = vec![0u8; usize::try_from(block).unwrap_or(usize::MAX)];
    for (i, (adler, sha1)) in sig.adler.iter().zip(&sig.sha1).enumerate() {
        let at = i as u64 * block;
        let n = read_block(file, at, &mut buf, size).map_err(Ok)?;
        let data = buf.get(..n).unwrap_or_default();
        let mut a = adler2::Adler32::new();
        a.write_slice(data);
        let hex: String = Sha1::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if a.checksum() != *adler || hex != *sha1 {
            return Err(Err(format!(
                "block {i} (bytes {at}..{}) differs from freezer's signature",
                at + n as u64
            )));
        }
    }
    Ok(())
}

/// Reads the block at `at` whole (up to the file's end).
fn read_block(file: &dyn FileNode, at: u64, buf: &mut [u8], size: u64) -> Result<usize> {
    let want = crate::vfs::clamp(at, buf.len(), size);
    let mut got = 0;
    while got < want {
        let piece = buf.get_mut(got..want).unwrap_or_default();
        match file.read_at(at + got as u64, piece)? {
            0 => return Err(Error::not_found("a restored file ends before its size")),
            k => got += k,
        }
    }
    Ok(got)
}
