//! Which versions a backup log serves, by the rules of spec §7: a later same-version write
//! replaces the earlier one (rewinds, orphans), PRAGMA-only entries carry no version, a gap
//! stops serving until the next snapshot, versions beyond the header's are not committed.

use std::collections::BTreeMap;

use super::log::{Entry, EntryKind, Tail};

/// One servable version: the kept entries `base..=upto` rebuild it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// data_version.
    pub version: u32,
    /// Position in [`Resolved::kept`] of the entry that makes this version.
    pub upto: usize,
    /// Position in `kept` of the snapshot it starts from; `None`: an empty database.
    pub base: Option<usize>,
}

/// The outcome of resolving a log.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Indices into the entry list of the entries that make up committed states, in order.
    pub kept: Vec<usize>,
    /// Servable versions, by version.
    pub served: BTreeMap<u32, Served>,
    /// Versions present (or named by the header) that are not served: file offset and reason.
    pub unserved: BTreeMap<u32, (u64, String)>,
}

/// Applies the rules to `entries` (as walked), the header's `head` version and the walk's `tail`.
pub fn resolve(entries: &[Entry], head: u32, tail: Option<&Tail>) -> Resolved {
    let mut r = Resolved::default();
    keep(entries, &mut r);
    serve(entries, head, &mut r);
    note_tail(head, tail, &mut r);
    r
}

/// Why versions after a gap are not served.
fn gap_note(missing: u32) -> String {
    format!(
        "version {missing} is missing from the log (gap); versions after it are served again from the next snapshot"
    )
}

/// Fills `r.kept` with the entries that make up committed states; notes versions behind a gap.
fn keep(entries: &[Entry], r: &mut Resolved) {
    // The segment being built: where its base sits in `kept` and the last kept bump version.
    let mut base: Option<usize> = None;
    let mut seg_start = 0usize;
    let mut last: u32 = 0;
    let mut gap: Option<u32> = None;
    for (i, e) in entries.iter().enumerate() {
        if e.kind == EntryKind::Snapshot {
            r.kept.push(i);
            base = Some(r.kept.len() - 1);
            seg_start = r.kept.len() - 1;
            last = e.version;
            gap = None;
            continue;
        }
        if let Some(missing) = gap {
            if e.bump {
                r.unserved.insert(e.version, (e.offset, gap_note(missing)));
            }
            continue;
        }
        if !e.bump {
            r.kept.push(i);
            continue;
        }
        let v = e.version;
        if v <= last {
            // A later write of an already kept version replaces it and what followed it,
            // back to the segment's snapshot at most.
            let keep_from = if base.is_some() {
                seg_start + 1
            } else {
                seg_start
            };
            rewind(entries, &mut r.kept, keep_from, v);
        } else if v != last.wrapping_add(1) {
            gap = Some(last.wrapping_add(1));
            r.unserved
                .insert(v, (e.offset, gap_note(last.wrapping_add(1))));
            continue;
        }
        r.kept.push(i);
        last = v;
    }
}

/// Drops kept entries of version `v` or later, down to position `keep_from`.
fn rewind(entries: &[Entry], kept: &mut Vec<usize>, keep_from: usize, v: u32) {
    while kept.len() > keep_from
        && kept
            .last()
            .and_then(|&k| entries.get(k))
            .is_some_and(|k| k.version >= v)
    {
        kept.pop();
    }
}

/// Fills `r.served` from the kept bumps and snapshots; later segments win on equal versions.
fn serve(entries: &[Entry], head: u32, r: &mut Resolved) {
    let mut seg_base: Option<usize> = None;
    // A kept statement the sandbox refuses spoils its version and the rest of its segment.
    let mut refused: Option<(u64, String)> = None;
    for (pos, &i) in r.kept.iter().enumerate() {
        let Some(e) = entries.get(i) else { continue };
        if e.kind == EntryKind::Snapshot {
            seg_base = Some(pos);
            refused = None;
        }
        if let Some(f) = e.forbidden
            && refused.is_none()
        {
            refused = Some((
                e.offset,
                format!(
                    "the entry at offset {} holds a statement the SQL sandbox refuses (statement {}: {}); versions after it are served again from the next snapshot",
                    e.offset, f.statement, f.what
                ),
            ));
        }
        if !(e.kind == EntryKind::Snapshot || e.bump) {
            continue;
        }
        let why_not = if e.version > head {
            Some((
                e.offset,
                format!(
                    "not committed: newer than the header's version {head} (an orphan, or an append in progress)"
                ),
            ))
        } else {
            refused.clone()
        };
        if let Some(why) = why_not {
            r.served.remove(&e.version);
            r.unserved.insert(e.version, why);
            continue;
        }
        r.served.insert(
            e.version,
            Served {
                version: e.version,
                upto: pos,
                base: seg_base,
            },
        );
        r.unserved.remove(&e.version);
    }
}

/// Notes a damaged last entry's version, and the header's version when the log lacks it.
fn note_tail(head: u32, tail: Option<&Tail>, r: &mut Resolved) {
    if let Some(t) = tail
        && let Some(v) = t.version
        && !r.served.contains_key(&v)
    {
        r.unserved
            .insert(v, (t.offset, format!("damaged entry: {}", t.msg)));
    }
    if head > 0 && !r.served.contains_key(&head) && !r.unserved.contains_key(&head) {
        let why = match tail {
            Some(t) => format!(
                "the header names it as written, but the log stops at offset {} before it: {}",
                t.offset, t.msg
            ),
            None => "the header names it as written, but the log does not hold it".to_owned(),
        };
        // Offset 4: the header's version field.
        r.unserved.insert(head, (4, why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(version: u32, bump: bool) -> Entry {
        Entry {
            offset: 0,
            length: 1,
            version,
            kind: EntryKind::Transaction,
            bump,
            forbidden: None,
            chain: 0,
        }
    }

    fn snap(version: u32) -> Entry {
        Entry {
            kind: EntryKind::Snapshot,
            ..tx(version, false)
        }
    }

    #[test]
    fn a_rewound_version_replaces_the_stale_one() {
        let e = [snap(7), tx(8, true), tx(9, true), tx(9, true), tx(10, true)];
        let r = resolve(&e, 10, None);
        assert_eq!(r.kept, [0, 1, 3, 4]);
        assert_eq!(r.served[&9].upto, 2);
        assert_eq!(r.served.keys().copied().collect::<Vec<_>>(), [7, 8, 9, 10]);
        assert!(r.unserved.is_empty());
    }

    #[test]
    fn pragma_only_entries_are_kept_without_a_version() {
        let e = [
            snap(7),
            tx(8, true),
            tx(8, false),
            tx(9, true),
            tx(9, false),
            tx(10, true),
        ];
        let r = resolve(&e, 10, None);
        assert_eq!(r.kept, [0, 1, 2, 3, 4, 5]);
        assert_eq!(r.served[&10].upto, 5);
    }

    #[test]
    fn a_gap_stops_serving_until_the_next_snapshot() {
        let e = [
            snap(7),
            tx(8, true),
            tx(10, true),
            tx(11, true),
            snap(20),
            tx(21, true),
        ];
        let r = resolve(&e, 21, None);
        assert_eq!(r.served.keys().copied().collect::<Vec<_>>(), [7, 8, 20, 21]);
        assert!(r.unserved[&10].1.contains("version 9 is missing"));
        assert!(r.unserved.contains_key(&11));
        assert_eq!(r.served[&21].base, Some(2));
    }

    #[test]
    fn versions_beyond_the_header_are_not_committed() {
        let e = [snap(7), tx(8, true), tx(9, true)];
        let r = resolve(&e, 8, None);
        assert_eq!(r.served.keys().copied().collect::<Vec<_>>(), [7, 8]);
        assert!(r.unserved[&9].1.contains("not committed"));
        // After a restart the real version 9 is appended behind the orphan: it wins.
        let e = [snap(7), tx(8, true), tx(9, true), tx(9, true)];
        let r = resolve(&e, 9, None);
        assert_eq!(r.served[&9].upto, 2);
        assert_eq!(r.kept, [0, 1, 3]);
    }

    #[test]
    fn a_refused_statement_spoils_the_rest_of_its_segment() {
        use super::super::sandbox::Forbidden;
        let bad = Entry {
            offset: 900,
            forbidden: Some(Forbidden {
                statement: 2,
                what: "VACUUM",
            }),
            ..tx(9, true)
        };
        let e = [
            snap(7),
            tx(8, true),
            bad,
            tx(10, true),
            snap(20),
            tx(21, true),
        ];
        let r = resolve(&e, 21, None);
        assert_eq!(r.served.keys().copied().collect::<Vec<_>>(), [7, 8, 20, 21]);
        assert_eq!(r.unserved[&9].0, 900);
        assert_eq!(r.unserved[&10].0, 900);
        assert!(r.unserved[&10].1.contains("statement 2: VACUUM"), "{r:?}");
        // A rewind that replaces the refused entry makes its segment whole again.
        let e = [snap(7), tx(8, true), bad, tx(9, true), tx(10, true)];
        let r = resolve(&e, 10, None);
        assert_eq!(r.served.keys().copied().collect::<Vec<_>>(), [7, 8, 9, 10]);
        // A refused PRAGMA-only entry spoils the versions after it, not the one before.
        let pragma = Entry {
            bump: false,
            version: 8,
            ..bad
        };
        let e = [snap(7), tx(8, true), pragma, tx(9, true)];
        let r = resolve(&e, 9, None);
        assert_eq!(r.served.keys().copied().collect::<Vec<_>>(), [7, 8]);
        assert!(r.unserved.contains_key(&9));
    }

    #[test]
    fn without_a_snapshot_the_base_is_an_empty_database() {
        let e = [tx(1, true), tx(2, true)];
        let r = resolve(&e, 2, None);
        assert_eq!(
            r.served[&2],
            Served {
                version: 2,
                upto: 1,
                base: None
            }
        );
        let e = [tx(5, true)];
        assert!(resolve(&e, 5, None).served.is_empty());
    }
}
