//! What is mounted where, from `/proc/self/mountinfo`: so that `restorefs umount` only ever
//! unmounts restorefs mounts, and the daemon finds its own mount's device number.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted file system.
    pub dev: String,
    /// Where it is mounted (unescaped).
    pub mountpoint: PathBuf,
    /// File system type, e.g. `fuse.restorefs`, `tmpfs`.
    pub fstype: String,
    /// Mount source, e.g. `restorefs:/backups`.
    pub source: String,
}

impl MountEntry {
    /// Whether restorefs made this mount (a FUSE mount with the source name it gives).
    pub fn is_restorefs(&self) -> bool {
        matches!(self.fstype.as_str(), "fuse.restorefs" | "fuse")
            && self.source.starts_with("restorefs:")
    }
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // id parent major:minor root mountpoint options [optional fields...] - fstype source super
    let (head, tail) = line.split_once(" - ")?;
    let head: Vec<&str> = head.split(' ').collect();
    let mut tail = tail.split(' ');
    Some(MountEntry {
        dev: (*head.get(2)?).to_owned(),
        mountpoint: PathBuf::from(unescape(head.get(4)?)),
        fstype: unescape(tail.next()?),
        source: unescape(tail.next()?),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The topmost mount at `path` (the last one listed there), if any.
pub fn at(entries: &[MountEntry], path: &Path) -> Option<MountEntry> {
    entries.iter().rev().find(|e| e.mountpoint == path).cloned()
}

/// This process's mount table; empty when it cannot be read.
pub fn current() -> Vec<MountEntry> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// `path` made absolute without asking the file system at its last component (a dead FUSE
/// mount answers ENOTCONN to any question about itself).
pub fn absolute(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map_or_else(|_| abs.clone(), |p| p.join(name)),
        _ => abs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
95 22 0:44 / /tmp/a\\040b rw,relatime shared:40 - tmpfs tmp\\040fs rw,size=100k
96 95 0:45 / /tmp/a\\040b rw,nosuid,nodev,relatime - fuse.restorefs restorefs:/srv/back\\134ups ro,user_id=0
bad line without separator
";

    #[test]
    fn finds_the_topmost_mount_and_unescapes() {
        let all = parse(SAMPLE);
        assert_eq!(all.len(), 3);
        let top = at(&all, Path::new("/tmp/a b")).unwrap();
        assert_eq!(top.dev, "0:45");
        assert_eq!(top.fstype, "fuse.restorefs");
        assert_eq!(top.source, "restorefs:/srv/back\\ups");
        assert!(top.is_restorefs());
        let proc = at(&all, Path::new("/proc")).unwrap();
        assert!(!proc.is_restorefs());
        assert_eq!(at(&all, Path::new("/nowhere")), None);
    }

    #[test]
    fn another_fuse_file_system_is_not_ours() {
        let all = parse("1 1 0:9 / /m rw - fuse.sshfs restorefs:x rw\n");
        assert!(!all[0].is_restorefs());
        let all = parse("1 1 0:9 / /m rw - fuse.restorefs other rw\n");
        assert!(!all[0].is_restorefs());
        let all = parse("1 1 0:9 / /m rw - tmpfs restorefs:x rw\n");
        assert!(!all[0].is_restorefs());
    }
}
