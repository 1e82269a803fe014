//! Core Lightning benchmark (not a test): generates a backup log with a ~50 MB snapshot and
//! 100k transactions, then times restorefs opening the head and 20 random versions, next to
//! replaying the whole log into SQLite in one transaction (what the plugin's restore does; run
//! with a third argument `baseline`, in its own process so that each peak RSS is its own).
//! Run through `scripts/bench-cln.sh`.

#[path = "../tests/common/cln_writer.rs"]
mod cln_writer;

use std::path::{Path, PathBuf};
use std::time::Instant;

use cln_writer::{LogWriter, bump};
use indicatif::ProgressBar;
use restorefs::cache::Cache;
use restorefs::model::ScanContext;
use restorefs::scan::scan;
use restorefs::vfs::{self, Node};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn hex(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", rng.next() as u8))
        .collect()
}

/// The log: a snapshot of `snapshot_mb` MB, then `txs` transactions in lightningd's style.
fn generate(path: &Path, snapshot_mb: usize, txs: u32) -> Result<(), Box<dyn std::error::Error>> {
    let dir = path.parent().unwrap();
    let db = dir.join("snapshot.sqlite3");
    let _ = std::fs::remove_file(&db);
    let c = rusqlite::Connection::open(&db)?;
    c.execute_batch(
        "CREATE TABLE vars (name TEXT PRIMARY KEY, intval INTEGER);
         INSERT INTO vars VALUES ('data_version', 1);
         CREATE TABLE channels (id INTEGER PRIMARY KEY, state INTEGER, msatoshi_local INTEGER);
         CREATE TABLE invoices (id INTEGER PRIMARY KEY, state INTEGER, label TEXT, payment_hash BLOB);
         CREATE TABLE htlcs (id INTEGER PRIMARY KEY, channel_id INTEGER REFERENCES channels(id) ON DELETE CASCADE, onion BLOB);
         CREATE TABLE history (id INTEGER PRIMARY KEY, data BLOB);",
    )?;
    let mut rng = Rng(42);
    c.execute_batch("BEGIN")?;
    for i in 0..snapshot_mb * 1024 {
        c.execute(
            "INSERT INTO history (data) VALUES (?1)",
            [(0..1000).map(|_| rng.next() as u8).collect::<Vec<u8>>()],
        )?;
        if i < 100 {
            c.execute("INSERT INTO channels VALUES (?1, 1, 1000000)", [i as i64])?;
        }
    }
    c.execute_batch("COMMIT")?;
    drop(c);
    let mut w = LogWriter::default();
    w.snapshot(1, &std::fs::read(&db)?);
    for v in 2..=txs + 1 {
        let mut stmts = match rng.next() % 4 {
            0 => vec![format!(
                "INSERT INTO invoices (state, label, payment_hash) VALUES (0, 'inv-{v} ''quoted''', x'{}')",
                hex(&mut rng, 32)
            )],
            1 => vec![format!(
                "UPDATE channels SET state={}, msatoshi_local={} WHERE id={}",
                rng.next() % 5,
                rng.next() % 1_000_000_000,
                rng.next() % 100
            )],
            2 => vec![format!(
                "INSERT INTO htlcs (channel_id, onion) VALUES ({}, x'{}')",
                rng.next() % 100,
                hex(&mut rng, 200)
            )],
            _ => vec![format!(
                "UPDATE invoices SET state=1 WHERE id={}",
                rng.next() % u64::from(v)
            )],
        };
        stmts.push(bump(v));
        w.tx(v, &stmts);
    }
    std::fs::write(path, w.finish(txs + 1))?;
    Ok(())
}

/// What the plugin's restore does: the snapshot, then every statement in one transaction.
fn replay_in_one_transaction(log: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let data = std::fs::read(log)?;
    let mut pos = 512;
    let mut conn: Option<rusqlite::Connection> = None;
    while pos + 9 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into()?) as usize;
        let payload = &data[pos + 9..pos + 9 + len];
        if data[pos + 8] == 2 {
            std::fs::write(out, payload)?;
            let c = rusqlite::Connection::open(out)?;
            c.execute_batch("PRAGMA foreign_keys = 1; BEGIN")?;
            conn = Some(c);
        } else if let Some(c) = &conn {
            for s in payload.split(|&b| b == 0) {
                c.execute(std::str::from_utf8(s)?, [])?;
            }
        }
        pos += 9 + len;
    }
    conn.ok_or("no snapshot")?.execute_batch("COMMIT")?;
    Ok(())
}

fn read_all(root: &Node, path: &str) -> Result<usize, Box<dyn std::error::Error>> {
    let Node::File(f) = vfs::resolve(root, path)? else {
        return Err("not a file".into());
    };
    let mut buf = vec![0u8; 1 << 20];
    let (mut pos, size) = (0u64, f.size()?);
    while pos < size {
        pos += f.read_at(pos, &mut buf)? as u64;
    }
    Ok(size as usize)
}

/// CPU seconds this process has used (user + system): on a busy machine a fairer measure of
/// work than wall time.
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<f64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => du(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/restorefs-bench-cln".into()),
    );
    let txs: u32 = std::env::args().nth(2).map_or(Ok(100_000), |s| s.parse())?;
    let src = dir.join("src");
    let log = src.join("node.bkp");
    if !log.exists() {
        std::fs::create_dir_all(&src)?;
        let t = Instant::now();
        generate(&log, 50, txs)?;
        eprintln!(
            "generated {} in {:.1} s",
            log.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let head = txs + 1;
    println!(
        "log                          {} MB, {txs} transactions",
        std::fs::metadata(&log)?.len() >> 20
    );

    if std::env::args().nth(3).as_deref() == Some("baseline") {
        let (t, c) = (Instant::now(), cpu());
        replay_in_one_transaction(&log, &dir.join("plugin-restore.sqlite3"))?;
        println!(
            "replay to head, one tx       {:.2} s, {:.2} s CPU (the plugin's restore, same SQLite)",
            t.elapsed().as_secs_f64(),
            cpu() - c
        );
        return Ok(());
    }

    env_logger::Builder::from_default_env()
        .format_timestamp_millis()
        .init();
    let cache_dir = dir.join("cache");
    let cache_mb: u64 = std::env::var("CACHE_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let ctx = ScanContext::new(Cache::new(cache_mb << 20), &cache_dir);
    let t = Instant::now();
    let formats = restorefs::format::all(&Default::default());
    let cat = scan(&src, &formats, &ctx, &ProgressBar::hidden())?;
    println!(
        "scan (index the log)         {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let root = cat.tree(None);
    let (t, c) = (Instant::now(), cpu());
    let n = read_all(&root, &format!("node.bkp/v{head:010}/lightningd.sqlite3"))?;
    println!(
        "open head ({} MB)            {:.2} s, {:.2} s CPU",
        n >> 20,
        t.elapsed().as_secs_f64(),
        cpu() - c
    );
    let mut rng = Rng(7);
    let c = cpu();
    let mut times = Vec::new();
    for _ in 0..20 {
        let v = 1 + (rng.next() % u64::from(head)) as u32;
        let t = Instant::now();
        read_all(&root, &format!("node.bkp/v{v:010}/lightningd.sqlite3"))?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "20 random versions           total {:.2} s, {:.2} s CPU, median {:.3} s, max {:.3} s",
        times.iter().sum::<f64>(),
        cpu() - c,
        times[10],
        times[19]
    );
    let s = ctx.cache.stats();
    println!(
        "checkpoints on disk          {} MB ({:.1} × the log); cache {} hits {} misses {} evictions",
        du(&cache_dir.join("clightning")) >> 20,
        du(&cache_dir.join("clightning")) as f64 / std::fs::metadata(&log)?.len() as f64,
        s.hits,
        s.misses,
        s.evictions
    );
    Ok(())
}
