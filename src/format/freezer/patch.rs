//! Files of the rsync engine stored as changed blocks: a file's content as extents of the
//! levels' decompressed streams, built by laying each level's changed blocks over the previous
//! file. Bytes that neither the previous file nor the changed blocks give are missing: reading
//! them is an error naming the level and the entry, never zeros.

use std::sync::Arc;

use super::Level;
use super::rsync::Run;
use super::tree::shown;
use crate::error::{Error, Result};
use crate::vfs::{self, Attr, FileNode};

/// Where a range of a file comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Src {
    /// Bytes of a level's decompressed stream, from `offset` on.
    Stream {
        /// Index of the level in the chain.
        level: usize,
        /// Offset in its decompressed stream.
        offset: u64,
    },
    /// Bytes no level gives.
    Missing {
        /// Index of the level whose entry left them undefined.
        level: usize,
        /// Offset of that entry in the level's decompressed stream.
        header: u64,
        /// What is wrong, for the error.
        why: Arc<str>,
    },
}

/// `len` bytes of a file from `start`, taken from `src`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub start: u64,
    /// Length.
    pub len: u64,
    /// Where the bytes are.
    pub src: Src,
}

impl Extent {
    fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// The part of this extent within `from..to`, if any.
    fn within(&self, from: u64, to: u64) -> Option<Extent> {
        let s = self.start.max(from);
        let e = self.end().min(to);
        (s < e).then(|| Extent {
            start: s,
            len: e - s,
            src: match &self.src {
                Src::Stream { level, offset } => Src::Stream {
                    level: *level,
                    offset: offset.saturating_add(s - self.start),
                },
                missing => missing.clone(),
            },
        })
    }
}

/// A whole file of `size` bytes stored at `offset` of level `level`'s stream.
pub fn whole(level: usize, offset: u64, size: u64) -> Vec<Extent> {
    if size == 0 {
        return Vec::new();
    }
    vec![Extent {
        start: 0,
        len: size,
        src: Src::Stream { level, offset },
    }]
}

/// The file that level `level`'s entry (at `header`, for `path`) makes: `base` (the previous
/// file, ending at `base_size`) cut to `size`, or with its missing tail marked, and `runs` laid
/// over it as freezer writes the changed blocks and then truncates.
pub fn overlay(
    base: &[Extent],
    base_size: u64,
    size: u64,
    runs: &[Run],
    at: (usize, u64),
    path: &str,
) -> Vec<Extent> {
    let (level, header) = at;
    let mut under: Vec<Extent> = base.iter().filter_map(|e| e.within(0, size)).collect();
    if base_size < size {
        under.push(Extent {
            start: base_size,
            len: size - base_size,
            src: Src::Missing {
                level,
                header,
                why: format!(
                    "{:?}: its changed blocks leave bytes {base_size}..{size} undefined, \
                     beyond the previous level's {base_size}-byte file",
                    shown(path)
                )
                .into(),
            },
        });
    }
    let mut out = Vec::with_capacity(under.len().saturating_add(runs.len()));
    let (mut pos, mut next) = (0, 0);
    for r in runs {
        let end = r.start.saturating_add(r.len).min(size);
        if r.start >= end {
            continue;
        }
        copy(&under, &mut next, pos, r.start, &mut out);
        out.push(Extent {
            start: r.start,
            len: end - r.start,
            src: Src::Stream {
                level,
                offset: r.data,
            },
        });
        pos = end;
    }
    copy(&under, &mut next, pos, size, &mut out);
    out
}

/// Appends the parts of `under` (sorted) within `from..to`, starting at `under[*next]` and
/// moving `next` past the extents used up: linear over all runs.
fn copy(under: &[Extent], next: &mut usize, from: u64, to: u64, out: &mut Vec<Extent>) {
    while let Some(e) = under.get(*next) {
        if e.start >= to {
            break;
        }
        out.extend(e.within(from, to));
        if e.end() > to {
            break;
        }
        *next += 1;
    }
}

/// A file of the rsync engine read through its extents.
pub struct PatchedFile {
    /// The point's chain of levels.
    pub chain: Vec<Arc<Level>>,
    /// The file's content, in order, covering `0..size`.
    pub extents: Vec<Extent>,
    /// Its size.
    pub size: u64,
    /// Its attributes.
    pub attr: Attr,
}

impl PatchedFile {
    fn level(&self, i: usize) -> Result<&Level> {
        self.chain
            .get(i)
            .map(|l| &**l)
            .ok_or_else(|| Error::not_found(format!("internal: level {i} is not in the chain")))
    }
}

impl FileNode for PatchedFile {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = vfs::clamp(offset, buf.len(), self.size);
        let mut done = 0;
        while done < n {
            let at = offset.saturating_add(done as u64);
            let i = self.extents.partition_point(|e| e.end() <= at);
            let Some(e) = self.extents.get(i).filter(|e| e.start <= at) else {
                return Err(Error::not_found("internal: a file's extents have a gap"));
            };
            let within = at - e.start;
            let take = (n - done).min(usize::try_from(e.len - within).unwrap_or(usize::MAX));
            let Some(piece) = buf.get_mut(done..done + take) else {
                break;
            };
            match &e.src {
                Src::Stream { level, offset } => {
                    let l = self.level(*level)?;
                    let from = offset.saturating_add(within);
                    if l.read(from, piece)? < take {
                        return Err(Error::corrupt(
                            &l.data,
                            from,
                            "the decompressed stream ends inside a file's data",
                        ));
                    }
                }
                // Never a short read: FUSE readers take one for the end of the file.
                Src::Missing { level, header, why } => {
                    return Err(Error::corrupt(&self.level(*level)?.data, *header, &**why));
                }
            }
            done += take;
        }
        Ok(done)
    }

    fn attr(&self) -> Attr {
        self.attr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(start: u64, len: u64, level: usize, offset: u64) -> Extent {
        Extent {
            start,
            len,
            src: Src::Stream { level, offset },
        }
    }

    #[test]
    fn changed_blocks_split_the_previous_file_and_truncate() {
        let base = whole(0, 100, 10_000);
        let runs = [
            Run {
                start: 0,
                len: 4096,
                data: 500,
            },
            Run {
                start: 8192,
                len: 4096,
                data: 4596,
            },
        ];
        let got = overlay(&base, 10_000, 9000, &runs, (1, 7), "f");
        assert_eq!(
            got,
            [
                stream(0, 4096, 1, 500),
                stream(4096, 4096, 0, 100 + 4096),
                stream(8192, 808, 1, 4596)
            ]
        );
    }

    #[test]
    fn growing_past_the_previous_file_without_blocks_is_missing() {
        let base = whole(0, 0, 100);
        let got = overlay(&base, 100, 300, &[], (2, 9), "f");
        assert_eq!(got[0], stream(0, 100, 0, 0));
        assert!(matches!(
            got[1],
            Extent {
                start: 100,
                len: 200,
                src: Src::Missing {
                    level: 2,
                    header: 9,
                    ..
                }
            }
        ));
    }
}
