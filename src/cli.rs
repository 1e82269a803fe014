//! Command line: argument parsing and wiring only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::cache::Cache;
use crate::catalog::{Catalog, ScanOptions};
use crate::error::{Error, Result};
use crate::export;
use crate::mount::{self, MountArgs};
use crate::timefmt;
use crate::vfs;
use crate::workdir;

/// Mount backups read-only: every restore point of every backup set as a folder.
#[derive(Parser, Debug)]
#[command(name = "restorefs", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where restorefs keeps what it computes (never inside SOURCE).
#[derive(clap::Args, Debug)]
struct CacheArgs {
    /// Bound of the in-memory cache for decompressed and rebuilt data, e.g. 256M or 1G.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    cache_size: u64,
    /// Folder for restorefs' scratch files (default: $XDG_CACHE_HOME/restorefs).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// File whose first line is Freezer's encryption password (for encrypted backups).
    #[arg(long, value_name = "FILE")]
    freezer_key: Option<PathBuf>,
}

impl CacheArgs {
    fn options(&self) -> Result<ScanOptions> {
        let dir = self
            .cache_dir
            .clone()
            .unwrap_or_else(workdir::default_cache_dir);
        let mut opts = ScanOptions::new(Cache::new(self.cache_size), &dir);
        if let Some(f) = &self.freezer_key {
            let text = std::fs::read(f).map_err(|e| Error::io(f, &e))?;
            // Like `openssl enc -pass file:`: the first line, without its newline.
            let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
            opts.freezer_key = Some(Arc::new(line.strip_suffix(b"\r").unwrap_or(line).to_vec()));
        }
        Ok(opts)
    }
}

/// The budget of rebuilding a Core Lightning database from its log's SQL.
#[derive(clap::Args, Debug)]
struct SqlArgs {
    /// Time one rebuild of a Core Lightning database may spend replaying its log's SQL.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    sql_timeout: Duration,
    /// Largest rebuilt Core Lightning database, e.g. 4G (default: 16 × the log's size + 256M).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    max_db_size: Option<u64>,
}

impl SqlArgs {
    /// `opts` with these limits.
    fn apply(&self, mut opts: ScanOptions) -> ScanOptions {
        opts.sql.timeout = self.sql_timeout;
        opts.sql.max_db_size = self.max_db_size;
        opts
    }
}

/// Parses a positive number of seconds, e.g. `60` or `0.5`.
fn parse_seconds(s: &str) -> std::result::Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("{s:?} is not a positive number of seconds"))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount every restore point under SOURCE read-only at MOUNTPOINT (runs in the foreground).
    Mount {
        /// Folder holding backups (searched at any depth).
        source: PathBuf,
        /// An empty folder to mount on.
        mountpoint: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        sql: SqlArgs,
        /// FUSE worker threads (default: the number of CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Hide restore points newer than TIME (ISO 8601, e.g. 2026-11-20T10:00).
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        /// Let other users read the mount (root, or `user_allow_other` in /etc/fuse.conf).
        #[arg(long)]
        allow_other: bool,
    },
    /// Unmount, also a mount whose daemon died.
    Umount {
        /// Where restorefs is mounted.
        mountpoint: PathBuf,
    },
    /// List backup sets, restore points and the files each point exposes.
    Ls {
        /// Folder holding backups (searched at any depth).
        source: PathBuf,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Write one exposed file (image, database) or folder of a point, without FUSE.
    Export {
        /// Folder holding backups.
        source: PathBuf,
        /// Path as in the mount, e.g. `vm1/2026-11-20T10:00:01_full/vda.raw` or `vm1/latest/vda.raw`.
        point_path: String,
        /// Where to write (must not exist; a folder for trees).
        #[arg(short, long)]
        out: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        sql: SqlArgs,
    },
    /// Read every backup file the points depend on, check every checksum, report per point.
    Verify {
        /// Folder holding backups.
        source: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        sql: SqlArgs,
    },
}

/// Parses `1048576`, `512K`, `256M`, `1G`, `2T` (binary units; `KiB`/`MB` spellings accepted).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 256M"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount {
            source,
            mountpoint,
            cache,
            sql,
            threads,
            as_of,
            allow_other,
        } => mount_cmd(
            source,
            mountpoint,
            &cache,
            &sql,
            threads,
            as_of.as_deref(),
            allow_other,
        ),
        Command::Umount { mountpoint } => mount::umount(&mountpoint).map(|()| ExitCode::SUCCESS),
        Command::Ls {
            source,
            json,
            cache,
        } => ls(&source, json, &cache),
        Command::Export {
            source,
            point_path,
            out,
            cache,
            sql,
        } => export_cmd(&source, &point_path, &out, &cache, &sql),
        Command::Verify { source, cache, sql } => verify(&source, &cache, &sql),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("restorefs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn spinner(msg: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(msg.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn byte_bar(total: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(msg.to_owned());
    bar
}

fn mount_cmd(
    source: PathBuf,
    mountpoint: PathBuf,
    cache: &CacheArgs,
    sql: &SqlArgs,
    threads: Option<usize>,
    as_of: Option<&str>,
    allow_other: bool,
) -> Result<ExitCode> {
    let args = MountArgs {
        source,
        mountpoint,
        threads: threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        as_of: as_of.map(timefmt::parse_user).transpose()?,
        allow_other,
    };
    mount::preflight(&args)?;
    let opts = sql.apply(cache.options()?);
    let cat = scan(&args.source, &opts)?;
    // A signal stops running rebuilds, so that their readers let go of the mount.
    let limits = opts.sql.clone();
    let on_signal = Box::new(move || limits.cancel());
    mount::mount(&cat, Arc::clone(&opts.cache), &args, on_signal)?;
    Ok(ExitCode::SUCCESS)
}

/// Scans SOURCE with a spinner on the terminal.
pub fn scan(source: &Path, opts: &ScanOptions) -> Result<Catalog> {
    let bar = spinner("scanning");
    let cat = Catalog::scan(source, opts, &bar);
    bar.finish_and_clear();
    let cat = cat?;
    if cat.sets().is_empty() {
        return Err(Error::not_found(format!(
            "{}: no backups found (looked at any depth for virtnbdbackup folders, Freezer containers and Core Lightning backup files)",
            source.display()
        )));
    }
    Ok(cat)
}

fn ls(source: &Path, as_json: bool, cache: &CacheArgs) -> Result<ExitCode> {
    let cat = scan(source, &cache.options()?)?;
    let mut out = std::io::stdout().lock();
    let w = |e: std::io::Error| Error::io(Path::new("<stdout>"), &e);
    if as_json {
        let sets: Vec<Value> = cat
            .sets()
            .iter()
            .map(|s| {
                let points: Vec<Value> = s.set.points().iter().map(|p| p.to_json()).collect();
                let mut v = json!({"path": s.path, "format": s.set.format(), "points": points});
                if let Some(e) = s.set.problem() {
                    v["error"] = json!(e.to_string());
                }
                v
            })
            .collect();
        let problems: Vec<String> = cat.problems().iter().map(ToString::to_string).collect();
        let doc = json!({"source": source, "sets": sets, "problems": problems});
        serde_json::to_writer_pretty(&mut out, &doc).map_err(|e| w(e.into()))?;
        writeln!(out).map_err(w)?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in cat.sets() {
        let points = s.set.points();
        writeln!(
            out,
            "{}  ({}, {} points)",
            s.path,
            s.set.format(),
            points.len()
        )
        .map_err(w)?;
        if let Some(e) = s.set.problem() {
            writeln!(out, "  ERROR: {e}").map_err(w)?;
        }
        for p in points.iter() {
            writeln!(out, "  {}", p.name).map_err(w)?;
            match &p.content {
                Ok(files) => {
                    for f in files {
                        let size = f.size.map_or_else(|| "?".to_owned(), human);
                        let note = f
                            .error
                            .as_ref()
                            .map(|e| format!("  ERROR: {e}"))
                            .unwrap_or_default();
                        writeln!(
                            out,
                            "    {:<16} {:>10}  {}{note}",
                            f.path,
                            size,
                            f.sources.join(" + ")
                        )
                        .map_err(w)?;
                    }
                }
                Err(e) => writeln!(out, "    ERROR: {e}").map_err(w)?,
            }
            for warning in &p.warnings {
                writeln!(out, "    warning: {warning}").map_err(w)?;
            }
        }
    }
    for p in cat.problems() {
        writeln!(out, "problem: {p}").map_err(w)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `1.5 GiB`-style sizes.
fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn export_cmd(
    source: &Path,
    point_path: &str,
    out: &Path,
    cache: &CacheArgs,
    sql: &SqlArgs,
) -> Result<ExitCode> {
    refuse_inside(source, out)?;
    let cat = scan(source, &sql.apply(cache.options()?))?;
    let node = vfs::resolve(&cat.tree(None), point_path)?;
    let bar = byte_bar(export::data_bytes(&node)?, "exporting");
    let stats = export::export(&node, out, &bar);
    bar.finish_and_clear();
    let stats = stats?;
    eprintln!(
        "restorefs: wrote {} ({} files, {} of data)",
        out.display(),
        stats.files,
        human(stats.bytes)
    );
    Ok(ExitCode::SUCCESS)
}

/// Nothing is ever written into the backup folder.
fn refuse_inside(source: &Path, out: &Path) -> Result<()> {
    let src = source.canonicalize().map_err(|e| Error::io(source, &e))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dest = parent.canonicalize().map_err(|e| Error::io(parent, &e))?;
    if dest.starts_with(&src) {
        return Err(Error::usage(format!(
            "{}: refusing to write inside the backup folder {}",
            out.display(),
            source.display()
        )));
    }
    Ok(())
}

fn verify(source: &Path, cache: &CacheArgs, sql: &SqlArgs) -> Result<ExitCode> {
    let cat = scan(source, &sql.apply(cache.options()?))?;
    let total = cat.sets().iter().map(|s| s.set.verify_size()).sum();
    let bar = byte_bar(total, "verifying");
    let mut damaged = 0usize;
    let mut lines = Vec::new();
    for s in cat.sets() {
        let points = s.set.points();
        if let Some(e) = s.set.problem() {
            damaged += 1;
            lines.push(format!("DAMAGED  {}", s.path));
            lines.push(format!("           {e}"));
        }
        for check in s.set.verify(&bar) {
            if check.problems.is_empty() {
                lines.push(format!("OK       {}/{}", s.path, check.point));
            } else {
                damaged += 1;
                lines.push(format!("DAMAGED  {}/{}", s.path, check.point));
                lines.extend(check.problems.iter().map(|p| format!("           {p}")));
            }
            if let Some(i) = points.find(&check.point) {
                let p = points.get(i);
                lines.extend(
                    p.warnings
                        .iter()
                        .map(|w| format!("           warning: {w}")),
                );
            }
        }
    }
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    for l in &lines {
        writeln!(out, "{l}").map_err(|e| Error::io(Path::new("<stdout>"), &e))?;
    }
    if damaged > 0 {
        eprintln!("restorefs: {damaged} restore point(s) damaged");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2kb"), Ok(2048));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "NaN", "inf", "1e30", "soon"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
