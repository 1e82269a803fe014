//! A fuzz harness that runs on stable Rust: each case copies a format's sample backups into a
//! temporary folder, damages them the way a broken disk or a hostile writer would (bit flips,
//! truncation, zeroed runs, inserted garbage, huge length fields, hostile names, hostile SQL),
//! then drives the library like the command line does: scan, list points, walk the tree and
//! read every exposed file, verify. A case fails on a panic (in any thread), on taking longer
//! than the timeout, on the process's peak memory passing a bound, or on a write into SOURCE.
//!
//! Everything a case does follows from its seed, so `fuzz --replay FORMAT:SEED` repeats it.
//! Used by `tests/fuzz.rs` (a short fixed-seed run) and `examples/fuzz.rs` (`scripts/fuzz.sh`).
#![allow(dead_code)]

mod rsync;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use restorefs::cache::Cache;
use restorefs::format::{self, FormatOptions};
use restorefs::model::ScanContext;
use restorefs::scan::scan;
use restorefs::tree::point_json;
use restorefs::vfs::{FileNode, Node};

/// A small deterministic PRNG (SplitMix64): runs are reproducible from their seed.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The backup formats the harness knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// virtnbdbackup sparse streams, plain and LZ4.
    Virtnbd,
    /// Core Lightning backup-plugin logs.
    Clightning,
    /// OpenStack Freezer backups.
    Freezer,
    /// The NBD server's option and request parser, fed damaged client streams.
    Nbd,
    /// Disk images with partition tables and file systems inside (a raw virtnbdbackup copy).
    Inside,
    /// FAT12/16/32 file systems (`inside::fat`), read from a partition's bytes.
    Fat,
    /// NTFS file systems (`inside::ntfs`), read from a partition's bytes.
    Ntfs,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 7] = [
        Format::Virtnbd,
        Format::Clightning,
        Format::Freezer,
        Format::Nbd,
        Format::Inside,
        Format::Fat,
        Format::Ntfs,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Format::Virtnbd => "virtnbd",
            Format::Clightning => "clightning",
            Format::Freezer => "freezer",
            Format::Nbd => "nbd",
            Format::Inside => "inside",
            Format::Fat => "fat",
            Format::Ntfs => "ntfs",
        }
    }

    /// The format called `s`.
    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Formats listed in `RESTOREFS_FUZZ_FORMATS` (comma-separated), all when unset.
    pub fn from_env() -> Vec<Format> {
        match std::env::var("RESTOREFS_FUZZ_FORMATS") {
            Ok(v) if !v.trim().is_empty() => v
                .split(',')
                .filter_map(|s| Format::parse(s.trim()))
                .collect(),
            _ => Format::ALL.to_vec(),
        }
    }
}

/// Limits a case must stay within.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall time of one case.
    pub timeout: Duration,
    /// Peak resident memory of the process (VmHWM) during a case.
    pub max_rss: u64,
    /// Bytes of the shared cache.
    pub cache: u64,
    /// Bytes read from one exposed file at most (hostile images may be exabytes of holes).
    pub read_per_file: u64,
    /// Bytes read from all exposed files of a case at most.
    pub read_per_case: u64,
    /// Points walked per set at most (a random choice, always with the first and the last).
    pub points_per_dir: usize,
    /// Whether to run `verify` on every set too.
    pub verify: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(5),
            max_rss: 1 << 30,
            cache: 4 << 20,
            read_per_file: 8 << 20,
            read_per_case: 32 << 20,
            points_per_dir: 6,
            verify: true,
        }
    }
}

/// A case that failed: what went wrong and how to repeat it.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The format.
    pub format: Format,
    /// The case's seed.
    pub seed: u64,
    /// `panic`, `slow`, `timeout`, `memory`, `wrote-into-source` or `wrote-outside`.
    pub kind: &'static str,
    /// The panic message and location, or what was measured.
    pub message: String,
    /// What the case did to the sample files.
    pub mutations: Vec<String>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}:{:#018x}: {}\n  replay: fuzz --replay {}:{:#x}\n  mutations: {}",
            self.kind,
            self.format.name(),
            self.seed,
            self.message,
            self.format.name(),
            self.seed,
            self.mutations.join("; ")
        )
    }
}

/// What one case did, when it passed.
#[derive(Clone, Debug, Default)]
pub struct CaseStats {
    /// Nodes of the tree visited.
    pub nodes: u64,
    /// Bytes read from exposed files.
    pub bytes: u64,
    /// Errors returned (fine: damaged input must give errors).
    pub errors: u64,
}

/// Seed of case `i` of a run seeded with `base`, for `format`.
pub fn case_seed(base: u64, format: Format, i: u64) -> u64 {
    let mut r = Rng::new(
        base ^ (format as u64).wrapping_mul(0x1234_5678_9abc_def1)
            ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d),
    );
    r.next()
}

/// The reference samples shipped with the tests.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Panics seen by the hook, by thread: the fuzz hook records them instead of printing.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs (once) a panic hook that records every panic with its thread and location; panics
/// outside case threads (the test's own assertions) are printed as usual too.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed").to_owned();
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            // Source locations of the crate's own frames: enough to find the bug.
            let frames: Vec<&str> = bt
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("at ./src/") || l.contains("/restorefs/src/"))
                .take(6)
                .collect();
            PANICS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!(
                    "thread '{name}' {info}\n    {}",
                    frames.join("\n    ")
                ));
            if !name.starts_with("fuzz-case") {
                previous(info);
            }
        }));
    });
}

fn take_panics() -> Vec<String> {
    std::mem::take(&mut *PANICS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Resets the process's peak resident set (Linux `clear_refs`), so VmHWM measures one case.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set in bytes since the last reset.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// One prepared case: the damaged copy, and what was done to it.
pub struct Case {
    /// Holds SOURCE, the cache folder and a folder hostile SQL may try to write to.
    pub tmp: tempfile::TempDir,
    /// What was done, in order.
    pub mutations: Vec<String>,
}

impl Case {
    /// SOURCE of the case.
    pub fn source(&self) -> PathBuf {
        self.tmp.path().join("src")
    }
    fn cache_dir(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }
    /// A folder outside SOURCE and the scratch folder: nothing may appear in it.
    pub fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }
}

/// Builds the case of `format` seeded with `seed`.
pub fn prepare(format: Format, seed: u64) -> Case {
    let tmp = tempfile::Builder::new()
        .prefix("restorefs-fuzz")
        .tempdir()
        .expect("temp folder");
    let mut case = Case {
        tmp,
        mutations: Vec::new(),
    };
    std::fs::create_dir_all(case.source()).expect("src");
    std::fs::create_dir_all(case.outside()).expect("outside");
    let mut rng = Rng::new(seed);
    match format {
        Format::Virtnbd => virtnbd_case(&mut rng, &mut case),
        Format::Clightning => clightning_case(&mut rng, &mut case),
        Format::Freezer => freezer_case(&mut rng, &mut case),
        Format::Nbd => nbd_case(&mut rng, &mut case),
        Format::Inside => inside_case(&mut rng, &mut case),
        Format::Fat | Format::Ntfs => fs_image_case(format, &mut rng, &mut case),
    }
    // Over-long hostile names would drown the report; the seed repeats them anyway.
    for m in &mut case.mutations {
        if let Some((cut, _)) = m.char_indices().nth(160) {
            m.truncate(cut);
            m.push('…');
        }
    }
    case
}

/// Runs case `seed` of `format` within `limits`; a finding when it fails.
pub fn run_case(
    format: Format,
    seed: u64,
    limits: &Limits,
    keep: Option<&Path>,
) -> Result<CaseStats, Box<Finding>> {
    install_panic_hook();
    let case = prepare(format, seed);
    let finding = |kind: &'static str, message: String| {
        Box::new(Finding {
            format,
            seed,
            kind,
            message,
            mutations: case.mutations.clone(),
        })
    };
    let before = snapshot(&case.source());
    take_panics();
    reset_peak_rss();
    let (tx, rx) = mpsc::channel();
    let (src, cache_dir, lim) = (case.source(), case.cache_dir(), limits.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("fuzz-case-{seed:x}"))
        .spawn(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| match format {
                Format::Nbd => nbd_exercise(&src, &cache_dir, &lim),
                Format::Fat | Format::Ntfs => exercise_fs_image(format, &src, &lim, seed),
                _ => exercise(&src, &cache_dir, &lim, seed),
            }));
            let _ = tx.send(r.map_err(|p| panic_text(&*p)));
        });
    if let Err(e) = spawned {
        return Err(finding("panic", format!("cannot start a case thread: {e}")));
    }
    let started = Instant::now();
    let outcome = rx.recv_timeout(limits.timeout);
    let result = match outcome {
        // Over time: a case that still ends (a slow one, or a busy machine) does not stop the
        // run; one that does not end within 4 timeouts is taken for a hang.
        Err(_) => match rx.recv_timeout(limits.timeout * 3) {
            Ok(_) => Err(finding(
                "slow",
                format!(
                    "case took {:.1?}, the limit is {:?}",
                    started.elapsed(),
                    limits.timeout
                ),
            )),
            Err(_) => Err(finding(
                "timeout",
                format!("case still running after {:?}", started.elapsed()),
            )),
        },
        Ok(Err(msg)) => {
            let detail = take_panics().join("\n");
            Err(finding(
                "panic",
                if detail.is_empty() { msg } else { detail },
            ))
        }
        Ok(Ok(stats)) => {
            let panics = take_panics();
            let peak = peak_rss();
            let outside = snapshot(&case.outside());
            if !panics.is_empty() {
                Err(finding("panic", panics.join("\n")))
            } else if peak > limits.max_rss {
                Err(finding(
                    "memory",
                    format!(
                        "peak resident memory {} MiB > {} MiB",
                        peak >> 20,
                        limits.max_rss >> 20
                    ),
                ))
            } else if snapshot(&case.source()) != before {
                Err(finding(
                    "wrote-into-source",
                    "files in SOURCE changed".into(),
                ))
            } else if !outside.is_empty() {
                Err(finding(
                    "wrote-outside",
                    format!(
                        "files appeared outside the scratch folder: {:?}",
                        outside.keys().collect::<Vec<_>>()
                    ),
                ))
            } else {
                Ok(stats)
            }
        }
    };
    if let (Err(f), Some(dir)) = (&result, keep) {
        save(&case, f, dir);
    }
    result
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".into())
}

/// Copies a failing case's SOURCE and its report to `dir/<format>-<seed>/`.
fn save(case: &Case, f: &Finding, dir: &Path) {
    let to = dir.join(format!("{}-{:016x}", f.format.name(), f.seed));
    let _ = std::fs::create_dir_all(&to);
    copy_tree(&case.source(), &to.join("src"));
    let _ = std::fs::write(to.join("finding.txt"), format!("{f}\n"));
}

/// Path → (size, mtime) of every file below `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, Option<std::time::SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                todo.push(p);
            } else {
                out.insert(p, (md.len(), md.modified().ok()));
            }
        }
    }
    out
}

/// Copies a folder tree (files and folders only).
pub fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    let Ok(rd) = std::fs::read_dir(from) else {
        return;
    };
    for e in rd.flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            let _ = std::fs::copy(&src, &dst);
        }
    }
}

/// What a case does with the damaged SOURCE: what `ls`, `export`, a mount and `verify` do.
fn exercise(src: &Path, cache_dir: &Path, limits: &Limits, seed: u64) -> CaseStats {
    let mut stats = CaseStats::default();
    let mut rng = Rng::new(seed ^ 0x5ca7);
    let ctx = ScanContext::new(Cache::new(limits.cache), cache_dir);
    let formats = format::all(&FormatOptions::default());
    let hidden = ProgressBar::hidden();
    let Ok(cat) = scan(src, &formats, &ctx, &hidden) else {
        stats.errors += 1;
        return stats;
    };
    for s in cat.sets() {
        let points = s.set.points();
        for p in points.iter().take(64) {
            let _ = point_json(&p);
        }
        if let Some(e) = s.set.problem() {
            let _ = e.to_string();
        }
    }
    let root = cat.tree(None);
    walk(&root, 0, limits, &mut rng, &mut stats);
    if limits.verify {
        for s in cat.sets() {
            for check in s.set.verify(&hidden) {
                stats.errors += check.problems.len() as u64;
            }
        }
    }
    // Half the cases scan again, as the next `ls` or mount would: indexes now come from the
    // index cache the first scan filled, and are loaded on first use.
    if rng.one_in(2) {
        damage_kept(cache_dir, &mut rng);
        damage_kept_checkpoints(&cache_dir.join("clightning"), &mut rng);
        let ctx = ScanContext::new(Cache::new(limits.cache), cache_dir);
        if let Ok(cat) = scan(src, &formats, &ctx, &hidden) {
            walk(&cat.tree(None), 0, limits, &mut rng, &mut stats);
        }
    }
    stats
}

/// Damages some of what a run kept in the cache folder (indexes, LZ4 decoder checkpoints), as
/// a broken disk would: the next run must notice it and rebuild, never serve from it.
fn damage_kept(cache_dir: &Path, rng: &mut Rng) {
    for path in files_below(&cache_dir.join("index")) {
        if rng.one_in(3)
            && let Ok(mut data) = std::fs::read(&path)
        {
            mutate_bytes(rng, &mut data);
            let _ = std::fs::write(&path, data);
        }
    }
}

/// Damages some of the Core Lightning checkpoints the first scan kept (bytes flipped, cut,
/// or one file copied over another), as a torn write or a meddler would.
fn damage_kept_checkpoints(dir: &Path, rng: &mut Rng) {
    let kept: Vec<PathBuf> = files_below(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ck"))
        .collect();
    if kept.is_empty() || rng.one_in(3) {
        return;
    }
    let victim = rng.pick(&kept).clone();
    if rng.one_in(3) {
        let _ = std::fs::copy(rng.pick(&kept), &victim);
    } else if let Ok(mut data) = std::fs::read(&victim) {
        mutate_bytes(rng, &mut data);
        let _ = std::fs::write(&victim, data);
    }
}

fn walk(node: &Node, depth: usize, limits: &Limits, rng: &mut Rng, stats: &mut CaseStats) {
    stats.nodes += 1;
    if depth > 32 || stats.nodes > 20_000 {
        return;
    }
    match node {
        Node::Symlink(l) => {
            let _ = l.target.len();
        }
        Node::Special(s) => {
            let _ = s.attr;
        }
        Node::File(f) => read_file(f.as_ref(), limits, rng, stats),
        Node::Dir(d) => {
            let _ = d.attr();
            let _ = d.names();
            let _ = d.describe();
            // Looking up what a folder does not list (times under `at/`, odd names).
            for name in [
                "2026-11-20T10:00",
                "@0",
                "..",
                "latest",
                "info.json",
                "x\u{0}y",
            ] {
                if let Ok(Some(Node::Symlink(l))) = d.lookup(name) {
                    let _ = l.target.len();
                }
            }
            let Ok(entries) = d.entries() else {
                stats.errors += 1;
                return;
            };
            let n = entries.len();
            let chosen: Vec<usize> = if n <= limits.points_per_dir {
                (0..n).collect()
            } else {
                let mut c = vec![0, n - 1];
                while c.len() < limits.points_per_dir {
                    c.push(rng.below(n));
                }
                c.sort_unstable();
                c.dedup();
                c
            };
            for i in chosen {
                let (name, child) = &entries[i];
                let _ = d.lookup(name);
                walk(child, depth + 1, limits, rng, stats);
            }
        }
    }
}

/// Reads a file like `export` (data ranges, holes skipped) and a mount (odd offsets, past the
/// end, zero-copy reads), at most `read_per_file` bytes.
fn read_file(f: &dyn FileNode, limits: &Limits, rng: &mut Rng, stats: &mut CaseStats) {
    let _ = f.attr();
    let _ = f.allocated();
    if f.check().is_err() {
        stats.errors += 1;
    }
    let Ok(size) = f.size() else {
        stats.errors += 1;
        return;
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut budget = limits
        .read_per_file
        .min(limits.read_per_case.saturating_sub(stats.bytes));
    let mut pos = 0u64;
    while pos < size && budget > 0 {
        let start = match f.next_data(pos) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(_) => {
                stats.errors += 1;
                break;
            }
        };
        let end = match f.next_hole(start) {
            Ok(e) => e.min(size),
            Err(_) => {
                stats.errors += 1;
                break;
            }
        };
        let mut at = start;
        while at < end && budget > 0 {
            let n = (1 + rng.below(buf.len()))
                .min((end - at) as usize)
                .min(budget as usize);
            match f.read_at(at, &mut buf[..n]) {
                Ok(got) => {
                    stats.bytes += got as u64;
                    if got == 0 {
                        break;
                    }
                    at += got as u64;
                    budget = budget.saturating_sub(got as u64);
                }
                Err(e) => {
                    let _ = (e.errno(), e.to_string());
                    stats.errors += 1;
                    break;
                }
            }
        }
        pos = end.max(start + 1);
    }
    let offsets = [
        0,
        size.saturating_sub(1),
        size,
        size.saturating_add(4096),
        u64::MAX - 1,
        rng.next() % size.max(1),
    ];
    for off in offsets {
        let n = 1 + rng.below(200_000);
        let cap = buf.len();
        if f.read_at(off, &mut buf[..n.min(cap)]).is_err() {
            stats.errors += 1;
        }
        let mut seen = 0usize;
        if f.read_with(off, n, &mut |b| seen += b.len()).is_err() {
            stats.errors += 1;
        }
        let _ = (f.next_data(off), f.next_hole(off));
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations shared by all formats.

/// Hostile names: traversal, absolute paths, NUL, control characters, over-long, empty.
pub const HOSTILE_NAMES: [&str; 14] = [
    "..",
    ".",
    "",
    "/",
    "../../../../etc/passwd",
    "/etc/shadow",
    "a/../../b",
    "a\u{0}b",
    "line\nbreak",
    "sub/../..",
    "\u{202e}gpj.exe",
    "-rf",
    "latest",
    "at",
];

fn long_name(rng: &mut Rng) -> String {
    "x".repeat(200 + rng.below(5000))
}

fn hostile_name(rng: &mut Rng) -> String {
    if rng.one_in(8) {
        long_name(rng)
    } else {
        (*rng.pick(&HOSTILE_NAMES)).to_owned()
    }
}

/// Numbers that break naive arithmetic, as text.
const HUGE_TEXT: [&str; 14] = [
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "9223372036854775808",
    "-1",
    "-9223372036854775808",
    "4294967295",
    "4294967296",
    "0",
    "1e400",
    "1.5",
    "99999999999999999999999999999",
    "-0",
    "2147483648",
];

fn pick_text(rng: &mut Rng) -> &'static str {
    HUGE_TEXT[rng.below(HUGE_TEXT.len())]
}

/// Numbers that break naive arithmetic, as integers.
const HUGE: [u64; 8] = [
    u64::MAX,
    u64::MAX - 1,
    i64::MAX as u64,
    1 << 63,
    u32::MAX as u64,
    1 << 32,
    0,
    (1 << 31) - 1,
];

/// One generic mutation of `data`; returns what it did.
fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>) -> String {
    let len = data.len();
    match rng.below(8) {
        0 => {
            let flips = 1 + rng.below(16);
            for _ in 0..flips {
                if len > 0 {
                    let i = rng.below(len);
                    data[i] ^= 1 << rng.below(8);
                }
            }
            format!("{flips} bit flips")
        }
        1 => {
            let at = rng.below(len + 1);
            data.truncate(at);
            format!("truncated at {at}")
        }
        2 => {
            let at = rng.below(len + 1);
            let n = (1 + rng.below(8192)).min(len - at);
            data[at..at + n].fill(0);
            format!("zeroed {n} bytes at {at}")
        }
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(512);
            let junk = rng.bytes(n);
            let n = junk.len();
            data.splice(at..at, junk);
            format!("inserted {n} garbage bytes at {at}")
        }
        4 => {
            // A length-like field: 4 or 8 bytes, either byte order, set to a huge value.
            let w = if rng.one_in(2) { 4 } else { 8 };
            if len < w {
                return "no room for a length field".into();
            }
            let at = rng.below(len - w + 1);
            let v = *rng.pick(&HUGE);
            let bytes = if rng.one_in(2) {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            let src = if w == 4 { &bytes[4..] } else { &bytes[..] };
            data[at..at + w].copy_from_slice(if rng.one_in(2) { &bytes[..w] } else { src });
            format!("{w}-byte field at {at} set to {v:#x}")
        }
        5 => {
            // A decimal number in the text (JSON sizes, trailers, tar fields) made huge.
            let runs = digit_runs(data);
            if runs.is_empty() {
                return "no number to change".into();
            }
            let (a, b) = *rng.pick(&runs);
            let new = rng.pick(&HUGE_TEXT).as_bytes().to_vec();
            let old = String::from_utf8_lossy(&data[a..b]).into_owned();
            let shown = String::from_utf8_lossy(&new).into_owned();
            data.splice(a..b, new);
            format!("number {old} at {a} -> {shown}")
        }
        6 => {
            let at = rng.below(len + 1);
            let n = (1 + rng.below(4096)).min(len - at);
            data[at..at + n].fill(0xff);
            format!("0xff over {n} bytes at {at}")
        }
        _ => {
            // A piece of the file repeated elsewhere (plausible-looking structure).
            if len == 0 {
                return "empty".into();
            }
            let a = rng.below(len);
            let n = (1 + rng.below(4096)).min(len - a);
            let piece = data[a..a + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, piece);
            format!("copied {n} bytes from {a} to {at}")
        }
    }
}

/// `(start, end)` of every run of ASCII digits.
fn digit_runs(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i].is_ascii_digit() {
            let s = i;
            while i < data.len() && data[i].is_ascii_digit() {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

fn mutate_file(
    rng: &mut Rng,
    path: &Path,
    f: &mut dyn FnMut(&mut Rng, &mut Vec<u8>) -> String,
) -> String {
    let mut data = std::fs::read(path).unwrap_or_default();
    let what = f(rng, &mut data);
    let _ = std::fs::write(path, &data);
    format!(
        "{}: {what}",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = snapshot(dir).into_keys().collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// virtnbdbackup

const VIRTNBD_SETS: [&str; 5] = [
    "v1-plain",
    "v1-lz4",
    "v1-misc",
    "v1-misc-copy",
    "v1-misc-copyraw",
];

fn virtnbd_case(rng: &mut Rng, case: &mut Case) {
    let set = *rng.pick(&VIRTNBD_SETS);
    let dir = case.source().join(set);
    copy_tree(&data_dir().join("virtnbd").join(set), &dir);
    case.mutations.push(format!("set {set}"));
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let files = files_below(&dir);
        let data: Vec<&PathBuf> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "data"))
            .collect();
        let what = match rng.below(12) {
            0..=5 if !data.is_empty() => {
                let f = (*rng.pick(&data)).clone();
                mutate_file(rng, &f, &mut |r, d| virtnbd_mutation(r, d))
            }
            6 | 7 if !data.is_empty() => {
                let f = (*rng.pick(&data)).clone();
                mutate_file(rng, &f, &mut |r, d| mutate_bytes(r, d))
            }
            8 => {
                // A side file (checkpoint list or XML, vmconfig, log) damaged or hostile.
                let f = rng.pick(&files).clone();
                mutate_file(rng, &f, &mut |r, d| {
                    if r.one_in(2) {
                        mutate_bytes(r, d)
                    } else {
                        hostile_side_file(r, d)
                    }
                })
            }
            9 if !data.is_empty() => {
                // A `.chksum` next to a stream: right, wrong, garbage or huge.
                let f = (*rng.pick(&data)).clone();
                let sum = adler2::adler32_slice(&std::fs::read(&f).unwrap_or_default());
                let text = match rng.below(4) {
                    0 => sum.to_string(),
                    1 => sum.wrapping_add(1).to_string(),
                    2 => rng.pick(&HUGE_TEXT).to_string(),
                    _ => String::from_utf8_lossy(&rng.bytes(100_000)).into_owned(),
                };
                let mut p = f.clone().into_os_string();
                p.push(".chksum");
                let _ = std::fs::write(&p, text.as_bytes());
                format!("{}.chksum written ({} bytes)", f.display(), text.len())
            }
            10 if !data.is_empty() => {
                // A stream under another name: hostile disk names, levels that collide.
                let f = (*rng.pick(&data)).clone();
                let disk = hostile_name(rng).replace(['/', '\0'], "_");
                let level = rng
                    .pick(&[
                        "full",
                        "copy",
                        "inc.virtnbdbackup.1",
                        "inc.virtnbdbackup.0",
                        "diff.1",
                        "inc.",
                        "diff.99999999999999999999",
                    ])
                    .to_string();
                let name = format!("{disk}.{level}.data");
                let to = dir.join(&name);
                let _ = std::fs::copy(&f, &to);
                format!("{} copied as {name:?}", f.display())
            }
            _ => {
                // Checkpoint links that loop or point nowhere.
                let cps = dir.join("checkpoints");
                let _ = std::fs::create_dir_all(&cps);
                let a = format!("virtnbdbackup.{}", rng.below(5));
                let b = format!("virtnbdbackup.{}", rng.below(5));
                // Its creation time (from which the backup host's zone is learned) too.
                let created = pick_text(rng);
                let _ = std::fs::write(
                    cps.join(format!("{a}.xml")),
                    format!(
                        "<domaincheckpoint><name>{a}</name><creationTime>{created}</creationTime><parent><name>{b}</name></parent></domaincheckpoint>"
                    ),
                );
                let _ = std::fs::write(
                    cps.join(format!("{b}.xml")),
                    format!(
                        "<domaincheckpoint><name>{b}</name><parent><name>{a}</name></parent></domaincheckpoint>"
                    ),
                );
                let cpt = files
                    .iter()
                    .find(|p| p.extension().is_some_and(|e| e == "cpt"));
                if let Some(cpt) = cpt {
                    let _ = std::fs::write(cpt, format!("[\"{a}\", \"{b}\", \"{a}\"]"));
                }
                format!("checkpoint loop {a} <-> {b}, {a} created at {created}")
            }
        };
        case.mutations.push(what);
    }
}

fn hostile_side_file(rng: &mut Rng, data: &mut Vec<u8>) -> String {
    let name = hostile_name(rng);
    *data = match rng.below(3) {
        0 => format!("[\"{name}\", \"{name}\"]").into_bytes(),
        1 => format!("<domaincheckpoint><name>{name}</name><parent><name>{name}</name></parent></domaincheckpoint>").into_bytes(),
        _ => vec![b'['; 100_000],
    };
    format!("replaced by hostile content naming {name:?}")
}

/// Offsets of every 40-byte frame header in a stream (by its grammar, not by walking).
fn frame_headers(data: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    for i in 0..data.len().saturating_sub(39) {
        let kind = &data[i..i + 5];
        if matches!(kind, b"meta " | b"data " | b"zero " | b"stop " | b"comp ")
            && data[i + 38..i + 40] == *b"\r\n"
        {
            out.push(i);
        }
    }
    out
}

/// Offsets of LZ4 frame magics.
fn lz4_frames(data: &[u8]) -> Vec<usize> {
    data.windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [0x04, 0x22, 0x4d, 0x18])
        .map(|(i, _)| i)
        .collect()
}

/// A mutation that knows the stream grammar: frame header fields, meta JSON, LZ4 frames.
fn virtnbd_mutation(rng: &mut Rng, data: &mut Vec<u8>) -> String {
    let headers = frame_headers(data);
    match rng.below(6) {
        0 | 1 if !headers.is_empty() => {
            let h = *rng.pick(&headers);
            let field = if rng.one_in(2) { 5 } else { 22 };
            let v = if rng.one_in(3) {
                rng.next() >> rng.below(64)
            } else {
                *rng.pick(&HUGE)
            };
            let v = if rng.one_in(4) {
                // Near the real value: off by a little.
                let old = std::str::from_utf8(&data[h + field..h + field + 16])
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .unwrap_or(0);
                old.wrapping_add(rng.below(9) as u64).wrapping_sub(4)
            } else {
                v
            };
            data[h + field..h + field + 16].copy_from_slice(format!("{v:016X}").as_bytes());
            format!("frame header at {h}: field {field} = {v:#x}")
        }
        2 if data.starts_with(b"meta ") => mutate_meta(rng, data),
        3 => {
            let frames = lz4_frames(data);
            if frames.is_empty() {
                return mutate_bytes(rng, data);
            }
            let f = *rng.pick(&frames);
            match rng.below(4) {
                0 => {
                    // FLG or BD; half the time with the header checksum fixed up, so the
                    // decoder takes the new flags (linked or not, sums on or off) at their word.
                    let at = f + 4 + rng.below(2);
                    if at < data.len() {
                        data[at] ^= 1 << rng.below(8);
                    }
                    let fixed = rng.one_in(2);
                    if fixed {
                        fix_lz4_header_checksum(data, f);
                    }
                    format!("LZ4 frame at {f}: descriptor bit flipped (checksum fixed: {fixed})")
                }
                1 => {
                    // The declared content size (when present) set to a huge value.
                    let v = *rng.pick(&HUGE);
                    if f + 14 <= data.len() {
                        data[f + 6..f + 14].copy_from_slice(&v.to_le_bytes());
                        fix_lz4_header_checksum(data, f);
                    }
                    format!("LZ4 frame at {f}: content size {v:#x}")
                }
                2 => {
                    // The first block size word.
                    let at = f + 15;
                    let v = *rng.pick(&[0xffff_ffffu32, 0x7fff_ffff, 0x8000_0000, 0, 0x0040_0001]);
                    if at + 4 <= data.len() {
                        data[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                    format!("LZ4 frame at {f}: first block size {v:#x}")
                }
                _ => {
                    // Damage inside the blocks. Block checksums catch it, unless they are
                    // switched off first: then the compressed data itself reaches the decoder.
                    let off = rng.one_in(2) && f + 5 < data.len();
                    if off {
                        data[f + 4] &= !0x10;
                        fix_lz4_header_checksum(data, f);
                    }
                    let flips = 1 + rng.below(8);
                    for _ in 0..flips {
                        let at = f + 19 + rng.below(4096);
                        if at < data.len() {
                            data[at] ^= 1 << rng.below(8);
                        }
                    }
                    format!("LZ4 frame at {f}: {flips} block bits flipped (block sums off: {off})")
                }
            }
        }
        4 => {
            // The compression trailer: a number in the last 4 KiB.
            let tail = data.len().saturating_sub(4096);
            let runs: Vec<(usize, usize)> = digit_runs(&data[tail..])
                .into_iter()
                .map(|(a, b)| (a + tail, b + tail))
                .collect();
            if runs.is_empty() {
                return mutate_bytes(rng, data);
            }
            let (a, b) = *rng.pick(&runs);
            let new = rng.pick(&HUGE_TEXT).to_string();
            data.splice(a..b, new.bytes());
            format!("trailer number at {a} -> {new}")
        }
        _ => mutate_bytes(rng, data),
    }
}

fn fix_lz4_header_checksum(data: &mut [u8], f: usize) {
    use std::hash::Hasher;
    let Some(&flg) = data.get(f + 4) else { return };
    let end = f + 6 + if flg & 0x08 != 0 { 8 } else { 0 };
    if end < data.len() {
        let mut h = twox_hash::XxHash32::with_seed(0);
        h.write(&data[f + 4..end]);
        data[end] = (h.finish_32() >> 8) as u8;
    }
}

/// Rewrites the meta JSON with hostile values and fixes up the meta frame's length.
fn mutate_meta(rng: &mut Rng, data: &mut Vec<u8>) -> String {
    let Some(len) = std::str::from_utf8(&data[22..38])
        .ok()
        .and_then(|s| usize::from_str_radix(s, 16).ok())
    else {
        return mutate_bytes(rng, data);
    };
    let Some(json) = data.get(40..40 + len) else {
        return mutate_bytes(rng, data);
    };
    let Ok(serde_json::Value::Object(mut meta)) = serde_json::from_slice::<serde_json::Value>(json)
    else {
        return mutate_bytes(rng, data);
    };
    let key = rng
        .pick(&[
            "virtualSize",
            "dataSize",
            "diskName",
            "checkpointName",
            "parentCheckpoint",
            "incremental",
            "compressed",
            "streamVersion",
            "date",
        ])
        .to_string();
    let value: serde_json::Value = match rng.below(5) {
        0 => serde_json::from_str(pick_text(rng)).unwrap_or(serde_json::Value::Null),
        1 => serde_json::Value::String(hostile_name(rng)),
        2 => serde_json::json!(["x", {"y": null}]),
        3 => serde_json::Value::Bool(rng.one_in(2)),
        _ => serde_json::json!(rng.pick(&HUGE)),
    };
    let shown = value.to_string();
    meta.insert(key.clone(), value);
    let new = serde_json::to_vec(&meta).unwrap_or_default();
    let mut out = format!("meta 0000000000000000 {:016x}\r\n", new.len()).into_bytes();
    out.extend_from_slice(&new);
    out.extend_from_slice(data.get(40 + len..).unwrap_or_default());
    *data = out;
    format!(
        "meta {key} = {}",
        shown.chars().take(80).collect::<String>()
    )
}

// ---------------------------------------------------------------------------------------------
// Core Lightning

/// SQL a hostile backup file may carry: escapes from the database, resource bombs, schema
/// tampering, extensions.
pub const HOSTILE_SQL: [&str; 16] = [
    "ATTACH DATABASE '{outside}/attached.db' AS evil",
    "ATTACH DATABASE 'file:{outside}/uri.db?mode=rwc' AS evil2",
    "VACUUM INTO '{outside}/vacuum.db'",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000000) INSERT INTO vars (name, intval) SELECT 'r' || x, x FROM c",
    "SELECT zeroblob(2000000000)",
    "INSERT INTO vars (name, blobval) VALUES ('bomb', zeroblob(1500000000))",
    "SELECT randomblob(1000000000)",
    "SELECT load_extension('{outside}/evil.so')",
    "PRAGMA writable_schema = ON",
    "UPDATE sqlite_master SET sql = 'CREATE TABLE vars (x)' WHERE name = 'vars'",
    "PRAGMA journal_mode = WAL",
    "CREATE TRIGGER boom AFTER INSERT ON vars BEGIN INSERT INTO vars (name, blobval) VALUES (new.name || 'x', zeroblob(100000000)); END",
    "DROP TABLE vars",
    "PRAGMA temp_store_directory = '{outside}'",
    "SELECT replace(hex(zeroblob(100000000)), '00', 'abcdef')",
];

/// `(offset, length, type)` of every entry, walking from 512 like the reference reader.
fn cln_entries(data: &[u8]) -> Vec<(usize, usize, u8)> {
    let mut out = Vec::new();
    let mut pos = 512;
    while pos + 9 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
        let end = pos + 9 + len;
        if end > data.len() {
            break;
        }
        out.push((pos, len, data[pos + 8]));
        pos = end;
    }
    out
}

fn clightning_case(rng: &mut Rng, case: &mut Case) {
    let mut samples: Vec<PathBuf> = files_below(&data_dir().join("clightning"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bkp"))
        .collect();
    samples.sort();
    let Some(sample) = samples.get(rng.below(samples.len())).cloned() else {
        return;
    };
    let name = if rng.one_in(10) {
        format!("{}.bkp", hostile_name(rng).replace(['/', '\0'], "_"))
    } else {
        sample
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let name = if name.len() > 250 {
        "long.bkp".to_owned()
    } else {
        name
    };
    let path = case.source().join(&name);
    let _ = std::fs::copy(&sample, &path);
    case.mutations
        .push(format!("sample {} as {name:?}", sample.display()));
    let outside = case.outside().display().to_string();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let what = mutate_file(rng, &path, &mut |r, d| {
            let entries = cln_entries(d);
            let txs: Vec<&(usize, usize, u8)> = entries.iter().filter(|e| e.2 == 1).collect();
            match r.below(4) {
                0 | 1 if !txs.is_empty() => {
                    // A hostile statement spliced into a transaction, before its last statement
                    // (the data_version bump), so the entry still commits.
                    let &&(pos, len, _) = r.pick(&txs);
                    let payload = d[pos + 9..pos + 9 + len].to_vec();
                    let mut stmts: Vec<&[u8]> = payload.split(|&b| b == 0).collect();
                    let sql = r.pick(&HOSTILE_SQL).replace("{outside}", &outside);
                    let at = r.below(stmts.len());
                    stmts.insert(at, sql.as_bytes());
                    let new = stmts.join(&0u8);
                    let mut entry = (new.len() as u32).to_be_bytes().to_vec();
                    entry.extend_from_slice(&d[pos + 4..pos + 9]);
                    entry.extend_from_slice(&new);
                    d.splice(pos..pos + 9 + len, entry);
                    format!("entry at {pos}: spliced {sql:?}")
                }
                2 if !entries.is_empty() => {
                    // Entry header fields: length, version, type.
                    let &(pos, _, _) = r.pick(&entries);
                    let field = r.below(3);
                    match field {
                        0 => {
                            d[pos..pos + 4].copy_from_slice(&(*r.pick(&HUGE) as u32).to_be_bytes())
                        }
                        1 => d[pos + 4..pos + 8]
                            .copy_from_slice(&(*r.pick(&HUGE) as u32).to_be_bytes()),
                        _ => d[pos + 8] = r.next() as u8,
                    }
                    format!("entry header at {pos}: field {field} changed")
                }
                _ => mutate_bytes(r, d),
            }
        });
        case.mutations.push(what);
    }
}

// ---------------------------------------------------------------------------------------------
// Freezer

const FREEZER_SETS: [&str; 3] = ["tar-gzip", "tar-xz", "rsyncv2-level0"];

fn freezer_case(rng: &mut Rng, case: &mut Case) {
    let set = *rng.pick(&FREEZER_SETS);
    let dir = case.source().join(set);
    copy_tree(&data_dir().join("freezer").join(set), &dir);
    case.mutations.push(format!("set {set}"));
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let files = files_below(&dir);
        if files.is_empty() {
            break;
        }
        let gz: Vec<&PathBuf> = files
            .iter()
            .filter(|p| {
                p.file_name().is_some_and(|n| n == "data")
                    && std::fs::read(p).is_ok_and(|d| d.starts_with(&[0x1f, 0x8b]))
            })
            .collect();
        let what = match rng.below(5) {
            0 | 1 if set == "rsyncv2-level0" => rsync::mutate(rng, &dir),
            0 | 1 if !gz.is_empty() => {
                // Inside the compression: the tar members themselves.
                let f = (*rng.pick(&gz)).clone();
                mutate_file(rng, &f, &mut |r, d| mutate_gzip_tar(r, d))
            }
            2 => {
                let metas: Vec<&PathBuf> = files
                    .iter()
                    .filter(|p| p.file_name().is_some_and(|n| n != "data"))
                    .collect();
                let f = if metas.is_empty() {
                    rng.pick(&files).clone()
                } else {
                    (*rng.pick(&metas)).clone()
                };
                mutate_file(rng, &f, &mut |r, d| mutate_bytes(r, d))
            }
            _ => {
                let f = rng.pick(&files).clone();
                mutate_file(rng, &f, &mut |r, d| mutate_bytes(r, d))
            }
        };
        case.mutations.push(what);
    }
}

fn mutate_gzip_tar(rng: &mut Rng, data: &mut Vec<u8>) -> String {
    let mut tar = Vec::new();
    if flate2::read::MultiGzDecoder::new(&data[..])
        .read_to_end(&mut tar)
        .is_err()
    {
        return mutate_bytes(rng, data);
    }
    let what = mutate_tar(rng, &mut tar);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if enc.write_all(&tar).is_ok()
        && let Ok(out) = enc.finish()
    {
        *data = out;
    }
    format!("in the tar: {what}")
}

/// Offsets of the tar headers, walking the archive by its size fields.
fn tar_headers(tar: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 512 <= tar.len() && tar[pos..pos + 512].iter().any(|&b| b != 0) {
        out.push(pos);
        let size = std::str::from_utf8(&tar[pos + 124..pos + 135])
            .ok()
            .and_then(|s| {
                u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok()
            })
            .unwrap_or(0);
        pos += 512 + (size as usize).div_ceil(512) * 512;
    }
    out
}

fn set_field(h: &mut [u8], at: usize, len: usize, value: &[u8]) {
    let f = &mut h[at..at + len];
    f.fill(0);
    let n = value.len().min(len);
    f[..n].copy_from_slice(&value[..n]);
}

fn fix_tar_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
}

/// A tar member made hostile: its name, size, type or link target; checksum fixed up so the
/// damage reaches the reader.
fn mutate_tar(rng: &mut Rng, tar: &mut Vec<u8>) -> String {
    let headers = tar_headers(tar);
    if headers.is_empty() {
        return mutate_bytes(rng, tar);
    }
    let h = *rng.pick(&headers);
    let what = match rng.below(6) {
        0 | 1 => {
            let name = hostile_name(rng);
            set_field(&mut tar[h..h + 512], 0, 100, name.as_bytes());
            if rng.one_in(2) {
                set_field(&mut tar[h..h + 512], 345, 155, hostile_name(rng).as_bytes());
            }
            format!("member at {h} named {name:?}")
        }
        2 => {
            let v: &[u8] = match rng.below(4) {
                0 => b"77777777777",
                1 => &[
                    0x80, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ],
                2 => &[0xff; 12],
                _ => b"00000000000",
            };
            tar[h + 124..h + 136].fill(0);
            let n = v.len().min(12);
            tar[h + 124..h + 124 + n].copy_from_slice(&v[..n]);
            format!("member at {h}: size field {v:?}")
        }
        3 => {
            let t = *rng.pick(&[
                b'0', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'L', b'K', b'x', b'g', b'S', b'D',
                0,
            ]);
            tar[h + 156] = t;
            format!("member at {h}: type {:?}", t as char)
        }
        4 => {
            let target = hostile_name(rng);
            tar[h + 156] = *rng.pick(b"12");
            set_field(&mut tar[h..h + 512], 157, 100, target.as_bytes());
            format!("member at {h}: link to {target:?}")
        }
        _ => {
            // A pax header with a hostile path and size inserted before the member.
            let name = hostile_name(rng);
            let size = rng.pick(&HUGE_TEXT).to_string();
            let mut records = String::new();
            for (k, v) in [("path", name.as_str()), ("size", size.as_str())] {
                let body = format!(" {k}={v}\n");
                let mut n = body.len() + 1;
                while format!("{n}{body}").len() != n {
                    n += 1;
                }
                records.push_str(&format!("{n}{body}"));
            }
            let mut ph = vec![0u8; 512];
            set_field(&mut ph, 0, 100, b"PaxHeaders/x");
            set_field(&mut ph, 100, 8, b"0000644");
            set_field(
                &mut ph,
                124,
                12,
                format!("{:011o}", records.len()).as_bytes(),
            );
            set_field(&mut ph, 136, 12, b"00000000000");
            ph[156] = b'x';
            set_field(&mut ph, 257, 8, b"ustar\x0000");
            fix_tar_checksum(&mut ph);
            let mut block = records.into_bytes();
            block.resize(block.len().div_ceil(512) * 512, 0);
            ph.extend_from_slice(&block);
            tar.splice(h..h, ph);
            return format!("pax header before member at {h}: path {name:?}, size {size}");
        }
    };
    fix_tar_checksum(&mut tar[h..h + 512]);
    what
}

// ---------------------------------------------------------------------------------------------
// Runs

/// What a run of one format did.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Cases run.
    pub executions: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Failed cases.
    pub findings: Vec<Finding>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// What the passing cases did, summed.
    pub totals: CaseStats,
}

/// Runs cases `0..iterations` of `format` from `seed` (or until `time` is up), saving failing
/// inputs below `keep`. A timeout stops the run: its case thread cannot be stopped and keeps
/// a core busy.
pub fn run(
    format: Format,
    seed: u64,
    iterations: u64,
    time: Option<Duration>,
    limits: &Limits,
    keep: Option<&Path>,
    progress: &mut dyn FnMut(u64, &RunReport),
) -> RunReport {
    let start = Instant::now();
    let mut report = RunReport::default();
    for i in 0..iterations {
        if time.is_some_and(|t| start.elapsed() >= t) {
            break;
        }
        let s = case_seed(seed, format, i);
        report.executions += 1;
        let outcome = run_case(format, s, limits, keep);
        if let Ok(stats) = &outcome {
            report.totals.nodes += stats.nodes;
            report.totals.bytes += stats.bytes;
            report.totals.errors += stats.errors;
        }
        if let Err(f) = outcome {
            let timeout = f.kind == "timeout";
            report.findings.push(*f);
            if timeout {
                report.stopped = Some(format!(
                    "timeout in case {i} (seed {s:#x}); its thread is still running"
                ));
                break;
            }
        }
        progress(i, &report);
    }
    report.elapsed = start.elapsed();
    report
}

// ---------------------------------------------------------------------------------------------
// NBD clients

/// The client stream of an NBD case, beside its SOURCE.
fn nbd_stream(src: &Path) -> PathBuf {
    src.with_file_name("nbd-client.bin")
}

/// One NBD option: `IHAVEOPT`, the option, its length and data.
fn nbd_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    out.extend_from_slice(b"IHAVEOPT");
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// A length-prefixed string of the NBD handshake.
fn nbd_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// An export name: mostly one that exists, sometimes a hostile one.
fn nbd_export_name(rng: &mut Rng, set: &str) -> String {
    match rng.below(6) {
        0 => hostile_name(rng),
        1 => format!("{set}/at/2026-11-22T02:05/vdb.raw"),
        2 => format!("{set}/latest/vdc.raw"),
        _ => format!("{set}/latest/vda.raw"),
    }
}

/// A well-formed client session: options (in a random order), then requests.
fn nbd_session(rng: &mut Rng, set: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(if rng.one_in(10) { rng.next() as u32 } else { 3 }).to_be_bytes());
    for _ in 0..rng.below(6) {
        let name = nbd_export_name(rng, set);
        let mut data = Vec::new();
        let option = match rng.below(7) {
            0 => 8,
            1 => 3,
            2 | 3 => {
                nbd_string(&mut data, &name);
                let queries = ["base:allocation", "base:", "qemu:dirty-bitmap:x", ""];
                let n = rng.below(3);
                data.extend_from_slice(&(n as u32).to_be_bytes());
                for _ in 0..n {
                    let q = *rng.pick(&queries);
                    nbd_string(&mut data, q);
                }
                9 + rng.below(2) as u32
            }
            4 => {
                nbd_string(&mut data, &name);
                data.extend_from_slice(&1u16.to_be_bytes());
                data.extend_from_slice(&(rng.below(4) as u16).to_be_bytes());
                6
            }
            _ => rng.next() as u32 % 16,
        };
        nbd_option(&mut out, option, &data);
    }
    let name = nbd_export_name(rng, set);
    if rng.one_in(4) {
        nbd_option(&mut out, 1, name.as_bytes());
    } else {
        let mut data = Vec::new();
        nbd_string(&mut data, &name);
        data.extend_from_slice(&0u16.to_be_bytes());
        nbd_option(&mut out, 8, &[]);
        if rng.one_in(2) {
            let mut meta = Vec::new();
            nbd_string(&mut meta, &name);
            meta.extend_from_slice(&1u32.to_be_bytes());
            nbd_string(&mut meta, "base:allocation");
            nbd_option(&mut out, 10, &meta);
        }
        nbd_option(&mut out, 7, &data);
    }
    for i in 0..rng.below(24) {
        nbd_request(rng, &mut out, i as u64);
    }
    out
}

/// One transmission request (a write with its payload).
fn nbd_request(rng: &mut Rng, out: &mut Vec<u8>, cookie: u64) {
    let kind: u16 = *rng.pick(&[0, 0, 0, 7, 7, 1, 3, 4, 6, 2, 99]);
    let size = 64u64 << 20;
    let offset = match rng.below(4) {
        0 => *rng.pick(&HUGE),
        1 => size - rng.below(8192) as u64,
        _ => rng.next() % size,
    };
    let length: u32 = match rng.below(5) {
        0 => *rng.pick(&HUGE) as u32,
        1 => 0,
        _ => 1 + rng.below(1 << 20) as u32,
    };
    out.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    out.extend_from_slice(&(rng.below(32) as u16).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    if kind == 1 {
        let n = rng.below(65536);
        out.extend_from_slice(&(n as u32).to_be_bytes());
        out.extend(rng.bytes(n));
    } else {
        out.extend_from_slice(&length.to_be_bytes());
    }
}

/// A backup set to serve (left whole: the client stream is what is damaged), and a damaged
/// client session.
fn nbd_case(rng: &mut Rng, case: &mut Case) {
    let set = *rng.pick(&["v1-plain", "v1-lz4"]);
    copy_tree(
        &data_dir().join("virtnbd").join(set),
        &case.source().join(set),
    );
    case.mutations.push(format!("set {set}"));
    let mut stream = nbd_session(rng, set);
    case.mutations
        .push(format!("session of {} bytes", stream.len()));
    for _ in 0..rng.below(4) {
        let what = mutate_bytes(rng, &mut stream);
        case.mutations.push(format!("client stream: {what}"));
    }
    let _ = std::fs::write(nbd_stream(&case.source()), &stream);
}

/// Serves the scanned SOURCE to the case's client stream over a socket pair, reading the
/// replies (at most `limits.read_per_case` bytes) until the server closes.
fn nbd_exercise(src: &Path, cache_dir: &Path, limits: &Limits) -> CaseStats {
    use std::os::unix::net::UnixStream;
    let mut stats = CaseStats::default();
    let ctx = ScanContext::new(Cache::new(limits.cache), cache_dir);
    let formats = format::all(&FormatOptions::default());
    let Ok(cat) = scan(src, &formats, &ctx, &ProgressBar::hidden()) else {
        stats.errors += 1;
        return stats;
    };
    let exports = restorefs::nbd::Exports::new(&cat, cat.tree(None), None);
    let stream = std::fs::read(nbd_stream(src)).unwrap_or_default();
    let (server, mut client) = UnixStream::pair().expect("socket pair");
    let mut writer = client.try_clone().expect("socket clone");
    std::thread::scope(|s| {
        let served = s.spawn(|| restorefs::nbd::serve_connection(Box::new(server), &exports));
        s.spawn(move || {
            // The server may close before reading it all.
            let _ = writer.write_all(&stream);
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 || stats.bytes > limits.read_per_case {
                break;
            }
            stats.bytes += n as u64;
        }
        let _ = client.shutdown(std::net::Shutdown::Both);
        if !matches!(served.join(), Ok(Ok(()))) {
            stats.errors += 1;
        }
    });
    stats
}

/// Sample disks for `inside` cases, made once per process by the file systems' own tools:
/// (name, 2 MiB disk image, start of the partition holding the file system).
fn inside_disks() -> &'static [(&'static str, Vec<u8>, u64)] {
    static DISKS: std::sync::OnceLock<Vec<(&'static str, Vec<u8>, u64)>> =
        std::sync::OnceLock::new();
    DISKS.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("temp folder");
        let t = tmp.path();
        let src = t.join("src");
        std::fs::create_dir_all(src.join("etc/sub")).expect("src");
        std::fs::write(src.join("etc/a.conf"), b"a = 1\n").expect("src");
        std::fs::write(src.join("etc/sub/big"), vec![7u8; 70_000]).expect("src");
        std::fs::hard_link(src.join("etc/a.conf"), src.join("hard")).expect("src");
        std::os::unix::fs::symlink("etc/a.conf", src.join("link")).expect("src");
        for i in 0..60 {
            std::fs::write(src.join(format!("etc/f{i:02}")), [i as u8; 10]).expect("src");
        }
        let run = |cmd: &str, args: &[&str], stdin: &str| {
            let mut c = std::process::Command::new(cmd)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{cmd} (needed for inside fuzz cases): {e}"));
            let _ = c.stdin.take().expect("stdin").write_all(stdin.as_bytes());
            assert!(c.wait().expect("wait").success(), "{cmd} {args:?}");
        };
        let fs = |name: &str, mkfs: &str, sectors: u64, journal: &str| {
            let p = t.join(name);
            std::fs::File::create(&p).and_then(|f| f.set_len(sectors * 512)).expect("fs");
            let (s, ps) = (src.to_str().expect("utf-8"), p.to_str().expect("utf-8"));
            run(mkfs, &["-q", "-F", "-b", "1024", "-O", journal, "-d", s, ps], "");
            std::fs::read(&p).expect("fs")
        };
        let disk = |name: &str, part: &[u8], start: u64, table: &dyn Fn(&str)| {
            let p = t.join(name);
            std::fs::File::create(&p).and_then(|f| f.set_len(2 << 20)).expect("disk");
            table(p.to_str().expect("utf-8"));
            let f = std::fs::OpenOptions::new().write(true).open(&p).expect("disk");
            std::os::unix::fs::FileExt::write_all_at(&f, part, start * 512).expect("disk");
            drop(f);
            std::fs::read(&p).expect("disk")
        };
        let gpt_fs = fs("gpt.fs", "mkfs.ext4", 3968, "has_journal");
        let gpt = disk("gpt", &gpt_fs, 40, &|p| {
            run("sgdisk", &["-a", "8", "-n", "1:40:+3968", "-t", "1:8300", p], "");
        });
        let mbr_fs = fs("mbr.fs", "mkfs.ext2", 3000, "^has_journal");
        let mbr = disk("mbr", &mbr_fs, 1048, &|p| {
            let table = "label: dos\nstart=8, size=1000, type=83\nstart=1040, size=3008, type=5\nstart=1048, size=3000, type=83\n";
            run("sfdisk", &["-q", p], table);
        });
        vec![("gpt+ext4", gpt, 40 * 512), ("mbr+ext2", mbr, 1048 * 512)]
    })
}

/// A raw disk copy whose partition table or file system metadata is damaged: GPT headers and
/// entries (with their CRCs made right again half the time, so damage gets past them), MBR
/// and extended boot records, superblock, group descriptors, inodes, extent and directory
/// blocks.
fn inside_case(rng: &mut Rng, case: &mut Case) {
    let dir = case.source().join("inside");
    copy_tree(&data_dir().join("virtnbd/v1-misc-copyraw"), &dir);
    let (name, base, fs_start) = rng.pick(inside_disks());
    let mut disk = base.clone();
    case.mutations.push(format!("disk {name}"));
    let len = disk.len();
    for _ in 0..1 + rng.below(4) {
        let (region, at) = match rng.below(4) {
            0 => ("table", rng.below(34 * 512)),
            1 => ("backup table", len - 1 - rng.below(33 * 512)),
            2 => ("superblock", *fs_start as usize + 1024 + rng.below(3072)),
            _ => ("fs metadata", *fs_start as usize + rng.below(400 << 10)),
        };
        let what = match rng.below(4) {
            0 => {
                disk[at] ^= 1 << rng.below(8);
                "bit flip".to_owned()
            }
            1 => {
                let end = (at + 4).min(len);
                let v = *rng.pick(&[0u8, 0xFF, 0x80, 1]);
                disk[at..end].fill(v);
                format!("4 bytes of {v:#x}")
            }
            2 => {
                let end = (at + 1 + rng.below(1024)).min(len);
                disk[at..end].fill(0);
                format!("{} bytes zeroed", end - at)
            }
            _ => {
                let end = (at + 16).min(len);
                let junk = rng.bytes(end - at);
                disk[at..end].copy_from_slice(&junk);
                "16 random bytes".to_owned()
            }
        };
        case.mutations.push(format!("{region} at {at}: {what}"));
    }
    if rng.one_in(3) {
        // Says the journal needs replaying, so that a damaged journal is read too.
        disk[*fs_start as usize + 1024 + 96] |= 0x4;
        case.mutations.push("needs_recovery set".into());
    }
    if rng.one_in(2) && &disk[512..520] == b"EFI PART" {
        fix_gpt_crcs(&mut disk);
        case.mutations.push("GPT CRCs fixed".into());
    }
    let _ = std::fs::write(dir.join("vda.copy.data"), &disk);
}

/// Recomputes the primary GPT's entry and header CRCs (within bounds the header gives).
fn fix_gpt_crcs(disk: &mut [u8]) {
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
    let (count, size) = (le32(disk, 512 + 80) as usize, le32(disk, 512 + 84) as usize);
    if let Some(entries) = disk.get(1024..1024 + count.min(4096) * size.min(4096)) {
        let crc = crc32fast::hash(entries);
        disk[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
    }
    let hsize = (le32(disk, 512 + 12) as usize).clamp(92, 512);
    disk[512 + 16..512 + 20].fill(0);
    let crc = crc32fast::hash(&disk[512..512 + hsize]);
    disk[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
}

// File systems inside disk images (FAT, NTFS), read from a partition's bytes

#[path = "../fsimage/mod.rs"]
mod fsimage;

/// The pristine images of `format` (made by `scripts/make-fs-samples.sh` with the file
/// systems' own tools), read once per process: (name, bytes).
fn fs_images(format: Format) -> &'static [(String, Vec<u8>)] {
    static FAT: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    static NTFS: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    let load = |names: &[&str]| -> Vec<(String, Vec<u8>)> {
        names
            .iter()
            .map(|name| {
                let path = data_dir().join("fs").join(format!("{name}.img.gz"));
                let gz = std::fs::File::open(&path).expect("sample image");
                let mut bytes = Vec::new();
                flate2::read::GzDecoder::new(gz)
                    .read_to_end(&mut bytes)
                    .expect("gzip");
                ((*name).to_owned(), bytes)
            })
            .collect()
    };
    match format {
        Format::Fat => FAT.get_or_init(|| load(&["fat12", "fat16", "fat32"])),
        Format::Ntfs => NTFS.get_or_init(|| load(&["ntfs"])),
        _ => &[],
    }
}

/// Writes a damaged copy of one of `format`'s images to SOURCE/fs.img.
fn fs_image_case(format: Format, rng: &mut Rng, case: &mut Case) {
    let images = fs_images(format);
    let (name, pristine) = &images[rng.below(images.len())];
    let mut img = pristine.clone();
    case.mutations.push(format!("image {name}"));
    for _ in 0..1 + rng.below(4) {
        let what = match rng.below(4) {
            0 => mutate_bytes(rng, &mut img),
            1 if format == Format::Fat => fat_entry_mutation(rng, &mut img),
            1 => mft_record_mutation(rng, &mut img),
            _ => {
                // Metadata lives near the start: boot sector, FATs, root and first folders.
                let cut = (96 << 10).min(img.len());
                let mut head = img[..cut].to_vec();
                let what = mutate_bytes(rng, &mut head);
                img.splice(..cut, head);
                format!("metadata: {what}")
            }
        };
        case.mutations.push(what);
    }
    std::fs::write(case.source().join("fs.img"), &img).expect("write image");
}

/// Sets one FAT entry to a hostile value (a loop to itself, free, bad, end, out of range).
fn fat_entry_mutation(rng: &mut Rng, img: &mut [u8]) -> String {
    if img.len() < 512 {
        return "no boot sector".into();
    }
    let u16at = |at: usize| usize::from(u16::from_le_bytes([img[at], img[at + 1]]));
    let (bps, reserved) = (u16at(11), u16at(14));
    let fat_bytes = match u16at(22) {
        0 => u32::from_le_bytes([img[36], img[37], img[38], img[39]]) as usize,
        n => n,
    }
    .saturating_mul(bps)
    .min(img.len());
    let start = reserved.saturating_mul(bps).min(img.len());
    let entries = fat_bytes.min(img.len() - start) / 2;
    if entries < 4 {
        return "no FAT entries".into();
    }
    let i = 2 + rng.below(entries.min(400) - 2);
    let v: u16 = match rng.below(6) {
        0 => i as u16,
        1 => 0,
        2 => 0xfff7,
        3 => 0xffff,
        4 => rng.below(entries) as u16,
        _ => 1,
    };
    img[start + 2 * i..start + 2 * i + 2].copy_from_slice(&v.to_le_bytes());
    format!("16-bit FAT word {i} set to {v:#x}")
}

/// Damages one field of one MFT record (the MFT of a fresh small volume is contiguous).
fn mft_record_mutation(rng: &mut Rng, img: &mut [u8]) -> String {
    if img.len() < 512 {
        return "no boot sector".into();
    }
    let cluster = u64::from(u16::from_le_bytes([img[11], img[12]])) * u64::from(img[13]);
    let mft_lcn = u64::from_le_bytes(img[0x30..0x38].try_into().expect("8 bytes"));
    let Some(mft) = mft_lcn.checked_mul(cluster).map(|m| m as usize) else {
        return "MFT position overflows".into();
    };
    let record = if rng.one_in(3) {
        rng.below(16)
    } else {
        64 + rng.below(64)
    };
    let at = mft
        .saturating_add(record * 1024)
        .saturating_add(rng.below(1024));
    let w = *rng.pick(&[1usize, 2, 4, 8]);
    if at.saturating_add(w) > img.len() {
        return format!("MFT record {record} lies past the image");
    }
    let v = if rng.one_in(3) {
        rng.next()
    } else {
        *rng.pick(&HUGE)
    };
    img[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
    format!("MFT record {record}: {w} bytes at {at} set to {v:#x}")
}

/// Opens SOURCE/fs.img with `format`'s reader and walks it like a mount would.
fn exercise_fs_image(format: Format, src: &Path, limits: &Limits, seed: u64) -> CaseStats {
    let mut stats = CaseStats::default();
    let mut rng = Rng::new(seed ^ 0x1a5e);
    let dev = fsimage::LocalFile::open(&src.join("fs.img"));
    let opened = match format {
        Format::Fat => restorefs::inside::fat::open(dev, "fs.img"),
        Format::Ntfs => restorefs::inside::ntfs::open(dev, "fs.img"),
        _ => return stats,
    };
    match opened {
        Ok(root) => walk(&root, 0, limits, &mut rng, &mut stats),
        Err(e) => {
            let _ = e.to_string();
            stats.errors += 1;
        }
    }
    stats
}
