//! Command line: argument parsing and wiring only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::cache::Cache;
use crate::catalog::Catalog;
use crate::daemon::{self, LogTarget, Report};
use crate::error::{Error, ErrorKind, Result};
use crate::export;
use crate::format::{self, FormatOptions};
use crate::fuse::Owner;
use crate::model::{Point, ScanContext};
use crate::mount::{self, MountArgs};
use crate::nbd;
use crate::scan;
use crate::storage::Store;
use crate::storage::s3::{S3Options, S3Store, is_s3};
use crate::timefmt::{self, UserTime};
use crate::tree;
use crate::vfs;
use crate::workdir;

/// Exit statuses, as `--help` and README.md list them.
const EXIT_CODES: &str = "\
Exit status: 0 done; 1 failed (I/O, damaged or missing data); 2 bad usage (arguments, options, \
mountpoint); 3 `verify` found damage. A closed stdout (`restorefs ls | head`) ends output \
quietly with the status the command would have had.";

/// Mount backups read-only: every restore point of every backup set as a folder.
#[derive(Parser, Debug)]
#[command(
    name = "restorefs",
    version,
    about,
    after_help = EXIT_CODES,
    arg_required_else_help = true,
    subcommand_negates_reqs = true,
    override_usage = "restorefs [-v|-q] [--log-file FILE] <COMMAND>\n       \
        restorefs SOURCE MOUNTPOINT [-o OPTIONS] [-f]   (as mount.fuse3 runs it: `mount --daemon`)"
)]
pub struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Option<Command>,
    /// Folder holding backups: `restorefs SOURCE MOUNTPOINT` is `restorefs mount --daemon`
    /// (how `mount -t fuse.restorefs` and /etc/fstab run it).
    #[arg(value_name = "SOURCE", requires = "mountpoint")]
    source: Option<PathBuf>,
    /// An empty folder to mount on.
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: Option<PathBuf>,
    /// Mount options, comma separated (as `mount` takes them; see `restorefs mount --help`).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground.
    #[arg(short = 'f', long)]
    foreground: bool,
}

/// How much to log, and where.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Logging")]
struct LogArgs {
    /// Log more: -v info, -vv debug, -vvv everything (RUST_LOG, when set, wins).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print errors only: no progress, no summaries.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Append log lines to FILE (a daemon without it logs to syslog).
    #[arg(long, value_name = "FILE", global = true)]
    log_file: Option<PathBuf>,
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
    /// Least decoded bytes between two kept LZ4 decoder checkpoints (at least 64K).
    #[arg(long, value_name = "SIZE", default_value = "64K", value_parser = parse_size)]
    lz4_checkpoint_spacing: u64,
    /// Kept indexes and checkpoints in the cache folder unused for this many days are removed
    /// (0: never)
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    cache_max_age: u32,
    #[command(flatten)]
    s3: S3Args,
}

/// How SOURCE `s3://BUCKET[/PREFIX]` is reached and read (credentials: the AWS_* variables and
/// profile files, as for the AWS tools).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "SOURCE in S3 (s3://BUCKET[/PREFIX])")]
struct S3Args {
    /// Endpoint of an S3-compatible server (Ceph RGW, MinIO), e.g. https://rgw.example:7480
    /// (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's endpoint_url, else AWS).
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// Region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's region, else us-east-1).
    #[arg(long, value_name = "REGION")]
    s3_region: Option<String>,
    /// Address buckets by path (ENDPOINT/BUCKET/KEY) on AWS too; always so with an endpoint.
    #[arg(long)]
    s3_path_style: bool,
    /// Send requests unsigned, without credentials (a public bucket; AWS CLI's --no-sign-request).
    #[arg(long)]
    s3_no_sign: bool,
    /// Bytes fetched by one ranged GET and cached as one block (1M to 64M).
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = parse_size)]
    s3_block_size: u64,
    /// Blocks fetched ahead, in parallel, of a sequential reader (0: none).
    #[arg(long, value_name = "N", default_value = "8")]
    s3_prefetch: usize,
    /// Keep fetched blocks in DIR too, so that later runs read them from local disk.
    #[arg(long, value_name = "DIR")]
    disk_cache: Option<PathBuf>,
    /// Bound of --disk-cache, e.g. 20G.
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = parse_size)]
    disk_cache_size: u64,
}

impl S3Args {
    /// Sets the flag that the `-o` option `key` (its name with `_`) stands for.
    fn set(&mut self, key: &str, value: Option<&str>) -> std::result::Result<(), String> {
        let need = || value.ok_or_else(|| format!("needs a value: {key}=..."));
        match key {
            "s3_endpoint" => self.s3_endpoint = Some(need()?.to_owned()),
            "s3_region" => self.s3_region = Some(need()?.to_owned()),
            "s3_path_style" => self.s3_path_style = true,
            "s3_no_sign" => self.s3_no_sign = true,
            "s3_block_size" => self.s3_block_size = parse_size(need()?)?,
            "s3_prefetch" => {
                self.s3_prefetch = need()?.parse().map_err(|_| "needs a number of blocks")?;
            }
            "disk_cache" => self.disk_cache = Some(PathBuf::from(need()?)),
            "disk_cache_size" => self.disk_cache_size = parse_size(need()?)?,
            _ => return Err("unknown mount option".to_owned()),
        }
        Ok(())
    }

    fn options(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            no_sign: self.s3_no_sign,
            block_size: self.s3_block_size,
            prefetch: self.s3_prefetch,
            disk_cache: self.disk_cache.clone(),
            disk_cache_size: self.disk_cache_size,
        }
    }
}

impl CacheArgs {
    /// The services of a scan of `source`: a bucket's store for `s3://`, else the local one.
    fn options(&self, source: &Path) -> Result<ScanSetup> {
        let dir = self
            .cache_dir
            .clone()
            .unwrap_or_else(workdir::default_cache_dir);
        crate::prune::start(&dir, self.cache_max_age);
        let mut ctx = ScanContext::new(Cache::new(self.cache_size), &dir);
        let spacing = usize::try_from(self.lz4_checkpoint_spacing).unwrap_or(usize::MAX);
        ctx.io.lz4 = crate::lz4::Lz4Runtime::with_spacing(spacing);
        if is_s3(source) {
            let store = S3Store::connect(source, &self.s3.options(), Arc::clone(&ctx.cache))?;
            ctx.io.store = Arc::new(store);
        }
        let mut formats = FormatOptions::default();
        if let Some(f) = &self.freezer_key {
            let text = std::fs::read(f).map_err(|e| Error::io(f, &e))?;
            // Like `openssl enc -pass file:`: the first line, without its newline.
            let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
            formats.freezer_key = Some(Arc::new(line.strip_suffix(b"\r").unwrap_or(line).to_vec()));
        }
        Ok(ScanSetup { ctx, formats })
    }
}

/// The values of a group of flags when none is given (for the mount.fuse3 form, which takes
/// `-o` only).
fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("restorefs"));
    T::from_arg_matches(&cmd.get_matches_from(["restorefs"])).expect("flag defaults parse")
}

/// What a scan needs: the services every format shares, and each format's own settings.
struct ScanSetup {
    ctx: ScanContext,
    formats: FormatOptions,
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
    /// `setup` with these limits.
    fn apply(&self, mut setup: ScanSetup) -> ScanSetup {
        setup.formats.sql.timeout = self.sql_timeout;
        setup.formats.sql.max_db_size = self.max_db_size;
        setup
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
    /// Mount every restore point under SOURCE read-only at MOUNTPOINT (in the foreground;
    /// `--daemon` returns once mounted).
    Mount(Mount),
    /// Serve every file of the mount tree (disk images of restore points) over NBD, read-only,
    /// until Ctrl-C or SIGTERM: `qemu-img info 'nbd+unix:///vm1/latest/vda.raw?socket=PATH'`.
    Serve(Serve),
    /// Unmount, also a mount whose daemon died.
    Umount {
        /// Where restorefs is mounted.
        mountpoint: PathBuf,
    },
    /// List backup sets, restore points and the files each point exposes.
    Ls {
        /// Folder holding backups (searched at any depth), or a bucket: s3://BUCKET[/PREFIX].
        source: PathBuf,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Write one exposed file (image, database) or folder of a point, without FUSE.
    Export {
        /// Folder holding backups, or a bucket: s3://BUCKET[/PREFIX].
        source: PathBuf,
        /// Path as in the mount, e.g. `vm1/2026-11-20T10:00:01_full/vda.raw` or `vm1/latest/vda.raw`.
        point_path: String,
        /// Where to write (must not exist; a folder for trees; `-` streams a file to stdout).
        #[arg(short, long)]
        out: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        sql: SqlArgs,
    },
    /// Read every backup file the points depend on, check every checksum, report per point
    /// (exit status 3 when something is damaged).
    Verify {
        /// Folder holding backups, or a bucket: s3://BUCKET[/PREFIX].
        source: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        sql: SqlArgs,
    },
    /// Print a shell completion script: `restorefs completions bash > /etc/bash_completion.d/restorefs`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `restorefs man | man -l -`; `restorefs man mount` for a
    /// command's own page.
    Man {
        /// A command (mount, serve, umount, ls, export, verify, completions).
        command: Option<String>,
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

/// Whether `-q` was given: progress bars and summaries stay hidden.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// Parses the command line, sets up logging and runs it.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    QUIET.store(cli.log.quiet, std::sync::atomic::Ordering::Relaxed);
    // A daemon child reports to the parent that waits for it; it has no terminal.
    let report = Report::from_env();
    let target = match (&cli.log.log_file, &report) {
        (Some(f), _) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
        {
            Ok(file) => LogTarget::File(file),
            Err(e) => {
                let e = Error::io(f, &e).context("--log-file");
                return fail(&e, report.as_ref(), false);
            }
        },
        (None, Some(_)) => LogTarget::Syslog,
        (None, None) => LogTarget::Stderr,
    };
    let verbosity = if cli.log.quiet {
        -1
    } else {
        i8::try_from(cli.log.verbose).unwrap_or(i8::MAX)
    };
    // Errors reach the terminal through stderr; a log elsewhere gets them too.
    let log_errors = !matches!(target, LogTarget::Stderr);
    daemon::init_logging(verbosity, target);
    let result = match cli.command {
        Some(command) => run_command(command, report.as_ref()),
        // `mount -t fuse.restorefs`: mount.fuse3 runs `restorefs SOURCE MOUNTPOINT -o ...` and
        // waits for it to return once mounted.
        None => match (cli.source, cli.mountpoint) {
            (Some(source), Some(mountpoint)) => mount_cmd(
                Mount {
                    source,
                    mountpoint,
                    cache: clap_defaults(),
                    sql: clap_defaults(),
                    threads: None,
                    as_of: None,
                    allow_other: false,
                    options: cli.options,
                    foreground: cli.foreground,
                    daemon: !cli.foreground,
                    nbd: None,
                },
                true,
                report.as_ref(),
            ),
            _ => Err(Error::usage(
                "give a command, or SOURCE and MOUNTPOINT (see --help)",
            )),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) if is_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => fail(&e, report.as_ref(), log_errors),
    }
}

/// Prints `e` (and tells a waiting parent, and the log when `log_it`); the exit status its
/// kind gives.
fn fail(e: &Error, report: Option<&Report>, log_it: bool) -> ExitCode {
    let msg = format!("restorefs: error: {e}");
    if log_it {
        log::error!("{e}");
    }
    if let Some(r) = report {
        r.failed(&msg);
    }
    eprintln!("{msg}");
    match e.kind() {
        ErrorKind::Usage => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

fn run_command(command: Command, report: Option<&Report>) -> Result<ExitCode> {
    match command {
        Command::Mount(m) => mount_cmd(m, false, report),
        Command::Serve(s) => serve_cmd(s),
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
        Command::Completions { shell } => completions(shell),
        Command::Man { command } => man_page(command.as_deref()),
    }
}

/// `restorefs completions SHELL`.
fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "restorefs", &mut text);
    Out::stdout().bytes(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// `restorefs man [COMMAND]`: the manual page in roff.
fn man_page(command: Option<&str>) -> Result<ExitCode> {
    let mut cli = Cli::command();
    // Global options (-v, -q, --log-file) show on each command's page too.
    cli.build();
    let page = match command {
        None => cli,
        Some(name) => {
            let Some(sub) = cli.find_subcommand_mut(name) else {
                return Err(Error::usage(format!(
                    "COMMAND {name}: no such command (see `restorefs --help`)"
                )));
            };
            // Named like git's pages: restorefs-mount(1).
            let title = format!("restorefs-{name}");
            sub.clone()
                .display_name(title.clone())
                .bin_name(title)
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut text = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut text)
        .map_err(|e| Error::io(Path::new("<man page>"), &e))?;
    Out::stdout().bytes(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Whether `e` says that whoever reads our stdout stopped reading (`| head`).
fn is_closed_stdout(e: &Error) -> bool {
    e.kind() == ErrorKind::Io(libc::EPIPE) && e.file() == Some(Path::new("<stdout>"))
}

/// Standard output: errors name it, so that a closed pipe ends output quietly.
struct Out(std::io::StdoutLock<'static>);

impl Out {
    fn stdout() -> Out {
        Out(std::io::stdout().lock())
    }

    fn line(&mut self, text: &str) -> Result<()> {
        writeln!(self.0, "{text}").map_err(stdout_error)
    }

    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.0.write_all(b).map_err(stdout_error)
    }
}

fn stdout_error(e: std::io::Error) -> Error {
    Error::io(Path::new("<stdout>"), &e)
}

/// `1 point`, `2 points`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn spinner(msg: &str) -> ProgressBar {
    if quiet() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(msg.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn byte_bar(total: u64, msg: &str) -> ProgressBar {
    if quiet() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix}{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(msg.to_owned());
    bar
}

/// What `mount` and the `mount.fuse3` form were given.
#[derive(clap::Args, Debug)]
struct Mount {
    /// Folder holding backups (searched at any depth), or a bucket: s3://BUCKET[/PREFIX].
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
    /// Mount options, comma separated, as FUSE file systems take them: allow_other,
    /// default_permissions, ro, uid=N, gid=N (owner shown for every node),
    /// cache_size=SIZE, cache_dir=DIR, cache_max_age=DAYS, threads=N, freezer_key=FILE, and the
    /// S3 flags with `_`
    /// (s3_endpoint=URL, s3_path_style, disk_cache=DIR, ...). mount(8)/fstab options
    /// (defaults, noauto, nofail, _netdev, user, users, nodev, nosuid, noexec, noatime,
    /// x-systemd.*, ...) are ignored; rw is refused.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground (the default; for FUSE habits).
    #[arg(short = 'f', long, conflicts_with = "daemon")]
    foreground: bool,
    /// Return once the mount answers and keep serving in the background; logs go to
    /// --log-file or syslog.
    #[arg(long)]
    daemon: bool,
    /// Serve the mount's files over NBD too, from the same index and cache: unix:PATH or
    /// HOST[:PORT] (see `restorefs serve --help`).
    #[arg(long, value_name = "ADDR")]
    nbd: Option<String>,
}

/// What `serve` was given.
#[derive(clap::Args, Debug)]
struct Serve {
    /// Folder holding backups (searched at any depth), or a bucket: s3://BUCKET[/PREFIX].
    source: PathBuf,
    /// Where to listen: unix:PATH, or HOST[:PORT] (port 10809 when left out, loopback when
    /// the host is). NBD has no authentication here: anyone who can connect reads every
    /// point, so use a unix socket or a private network.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
    nbd: String,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    sql: SqlArgs,
    /// Hide restore points newer than TIME (ISO 8601, e.g. 2026-11-20T10:00).
    #[arg(long, value_name = "TIME")]
    as_of: Option<String>,
}

/// What `-o` asked for, on top of the flags.
#[derive(Debug, Default, PartialEq, Eq)]
struct MountOptions {
    allow_other: bool,
    owner: Owner,
    cache_size: Option<u64>,
    cache_dir: Option<PathBuf>,
    cache_max_age: Option<u32>,
    threads: Option<usize>,
    freezer_key: Option<PathBuf>,
    /// The S3 options (`s3_*`, `disk_cache*`) as given: key and value.
    s3: Vec<(String, Option<String>)>,
}

/// Options of mount(8), fstab and systemd that concern the mount command, not restorefs (or that
/// restorefs always does: nodev, nosuid, noatime, read-only).
const IGNORED_OPTIONS: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "nodiratime",
    "async",
    "ro",
    "default_permissions",
];

/// Parses `-o` lists (`allow_other,uid=1000,cache_size=1G`); `helper` accepts the `rw` that
/// mount(8) adds unless told `ro` (the mount is read-only all the same).
fn parse_mount_options(lists: &[String], helper: bool) -> Result<MountOptions> {
    let mut o = MountOptions::default();
    for opt in lists
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|o| !o.is_empty())
    {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let bad = |why: &str| Error::usage(format!("-o {opt}: {why}"));
        let need = || value.ok_or_else(|| bad(&format!("needs a value: {key}=...")));
        let id = || {
            need()?
                .parse::<u32>()
                .map_err(|_| bad("needs a numeric id"))
        };
        match key {
            "allow_other" => o.allow_other = true,
            "uid" => o.owner.uid = Some(id()?),
            "gid" => o.owner.gid = Some(id()?),
            "cache_size" => o.cache_size = Some(parse_size(need()?).map_err(|e| bad(&e))?),
            "cache_dir" => o.cache_dir = Some(PathBuf::from(need()?)),
            "cache_max_age" => {
                o.cache_max_age = Some(need()?.parse().map_err(|_| bad("needs a number of days"))?);
            }
            "freezer_key" => o.freezer_key = Some(PathBuf::from(need()?)),
            "threads" => {
                o.threads = Some(
                    need()?
                        .parse()
                        .map_err(|_| bad("needs a number of threads"))?,
                );
            }
            k if k.starts_with("s3_") || k.starts_with("disk_cache") => {
                clap_defaults::<S3Args>()
                    .set(k, value)
                    .map_err(|e| bad(&e))?;
                o.s3.push((k.to_owned(), value.map(str::to_owned)));
            }
            "rw" if helper => {}
            "rw" => return Err(bad("restorefs mounts are read-only; drop `rw`")),
            k if k.starts_with("x-") || k == "comment" => {}
            k if IGNORED_OPTIONS.contains(&k) && value.is_none() => {}
            _ => {
                return Err(bad(
                    "unknown mount option (see `restorefs mount --help` for those restorefs takes)",
                ));
            }
        }
    }
    Ok(o)
}

/// `helper`: run by mount.fuse3, which adds `rw` (mount(8)'s default) and `dev,suid` itself.
fn mount_cmd(m: Mount, helper: bool, report: Option<&Report>) -> Result<ExitCode> {
    let o = parse_mount_options(&m.options, helper)?;
    let as_of = m.as_of.as_deref().map(timefmt::parse_user).transpose()?;
    if m.daemon && report.is_none() {
        return daemon::spawn_and_wait();
    }
    let mut cache = m.cache;
    cache.cache_size = o.cache_size.unwrap_or(cache.cache_size);
    cache.cache_dir = o.cache_dir.or(cache.cache_dir);
    cache.cache_max_age = o.cache_max_age.unwrap_or(cache.cache_max_age);
    cache.freezer_key = o.freezer_key.or(cache.freezer_key);
    for (k, v) in &o.s3 {
        cache.s3.set(k, v.as_deref()).map_err(Error::usage)?;
    }
    let args = MountArgs {
        source: m.source,
        mountpoint: m.mountpoint,
        threads: o
            .threads
            .or(m.threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        as_of,
        allow_other: m.allow_other || o.allow_other,
        owner: o.owner,
    };
    mount::preflight(&args)?;
    let listener = m.nbd.as_deref().map(bind_nbd).transpose()?;
    let setup = m.sql.apply(cache.options(&args.source)?);
    // A large SOURCE mounts before its folders are scanned (unless --as-of must be checked).
    let cat = scan_with(&args.source, &setup, m.as_of.is_none())?;
    let what = if cat.is_scanned() {
        let points = visible_points(&cat, args.as_of, m.as_of.as_deref())?;
        format!(
            "{} ({})",
            plural(cat.sets().len(), "backup set"),
            plural(points, "restore point")
        )
    } else {
        format!(
            "{} (folders scanned when first opened)",
            args.source.display()
        )
    };
    let also = listener
        .as_ref()
        .map(|l| format!(" and over NBD at {}", l.address()))
        .unwrap_or_default();
    let serving = format!(
        "serving {what} at {}{also}; Ctrl-C or `restorefs umount {}` unmounts",
        args.mountpoint.display(),
        args.mountpoint.display()
    );
    let report = report.cloned();
    let on_ready = Box::new(move || {
        log::info!("{serving}");
        match report {
            Some(r) => r.ready(),
            None if !quiet() => eprintln!("restorefs: {serving}"),
            None => {}
        }
    });
    // A signal stops running rebuilds, so that their readers let go of the mount.
    let limits = setup.formats.sql.clone();
    let on_signal = Box::new(move || limits.cancel());
    mount::mount(
        &cat,
        Arc::clone(&setup.ctx.cache),
        &args,
        listener,
        on_signal,
        on_ready,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Binds the NBD address `addr` (before the scan, so that a taken address fails at once).
fn bind_nbd(addr: &str) -> Result<nbd::Listener> {
    nbd::Listener::bind(&nbd::Address::parse(addr)?)
}

/// `restorefs serve`: NBD until Ctrl-C or SIGTERM.
fn serve_cmd(s: Serve) -> Result<ExitCode> {
    let as_of = s.as_of.as_deref().map(timefmt::parse_user).transpose()?;
    let listener = bind_nbd(&s.nbd)?;
    let setup = s.sql.apply(s.cache.options(&s.source)?);
    let cat = scan(&s.source, &setup)?;
    let points = visible_points(&cat, as_of, s.as_of.as_deref())?;
    let exports = nbd::Exports::new(&cat, cat.tree(as_of), as_of);
    let mut example = None;
    let _ = exports.list(&mut |name: &str| {
        example = Some(name.to_owned());
        Err(())
    });
    let server = listener.start(exports)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let limits = setup.formats.sql.clone();
    ctrlc::set_handler(move || {
        // Running rebuilds stop, so that their readers let go.
        limits.cancel();
        let _ = tx.send(());
    })
    .map_err(|e| Error::usage(format!("cannot handle signals: {e}")))?;
    let serving = format!(
        "serving {} ({}) over NBD at {}{}; Ctrl-C stops",
        plural(cat.sets().len(), "backup set"),
        plural(points, "restore point"),
        server.address(),
        example
            .map(|e| format!(", e.g. qemu-img info '{}'", server.address().uri(&e)))
            .unwrap_or_default()
    );
    log::info!("{serving}");
    if !quiet() {
        eprintln!("restorefs: {serving}");
    }
    let _ = rx.recv();
    log::info!("signal received: stopping the NBD server");
    server.stop();
    Ok(ExitCode::SUCCESS)
}

/// How many points the mount shows at `as_of` (typed as `typed`); an error when none.
fn visible_points(cat: &Catalog, as_of: Option<UserTime>, typed: Option<&str>) -> Result<usize> {
    let visible: Vec<_> = cat
        .sets()
        .iter()
        .map(|s| {
            let list = s.set.points();
            let as_of = as_of.map(|t| t.in_zone(s.set.zone()));
            (tree::visible(list.as_ref(), as_of), list)
        })
        .collect();
    let points: usize = visible.iter().map(|(n, _)| n).sum();
    if let (Some(t), 0) = (typed, points) {
        let oldest = visible
            .iter()
            .filter_map(|(_, l)| (0..l.len()).find_map(|i| l.time(i)))
            .min();
        return Err(Error::usage(format!(
            "--as-of {t}: hides every restore point (the oldest is from {})",
            oldest.map_or_else(|| "an unknown time".to_owned(), |o| timefmt::to_name(&o))
        )));
    }
    Ok(points)
}

/// Scans SOURCE with a spinner on the terminal.
fn scan(source: &Path, setup: &ScanSetup) -> Result<Catalog> {
    scan_with(source, setup, false)
}

/// Scans SOURCE, `lazy`: a folder at a time when first used, if SOURCE is large.
fn scan_with(source: &Path, setup: &ScanSetup, lazy: bool) -> Result<Catalog> {
    let store = &setup.ctx.io.store;
    if !store.is_dir(source)? {
        if store.stat(source)?.is_some() {
            return Err(Error::usage(format!(
                "SOURCE {}: not a folder (give the folder holding the backups)",
                source.display()
            )));
        }
        return Err(Error::from_errno(
            libc::ENOENT,
            format!(
                "SOURCE {}: {}",
                source.display(),
                std::io::Error::from_raw_os_error(libc::ENOENT)
            ),
        ));
    }
    let bar = spinner("scanning");
    let formats = format::all(&setup.formats);
    let cat = if lazy {
        scan::scan_lazily(source, formats, &setup.ctx, &bar)
    } else {
        scan::scan(source, &formats, &setup.ctx, &bar)
    };
    bar.finish_and_clear();
    let cat = cat?;
    if cat.is_empty() {
        return Err(Error::not_found(format!(
            "SOURCE {}: no backups found (looked at any depth for virtnbdbackup folders, Freezer containers and Core Lightning backup files)",
            source.display()
        )));
    }
    Ok(cat)
}

fn ls(source: &Path, as_json: bool, cache: &CacheArgs) -> Result<ExitCode> {
    let cat = scan(source, &cache.options(source)?)?;
    let mut out = Out::stdout();
    if as_json {
        ls_json(source, &cat, &mut out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in cat.sets() {
        let points = s.set.points();
        out.line(&format!(
            "{}  ({}, {})",
            s.path,
            s.set.format(),
            plural(points.len(), "point")
        ))?;
        if let Some(e) = s.set.problem() {
            out.line(&format!("  ERROR: {e}"))?;
        }
        for p in points.iter() {
            ls_point(&p, &mut out)?;
        }
    }
    for p in cat.problems() {
        out.line(&format!("problem: {p}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `ls --json`: one document.
fn ls_json(source: &Path, cat: &Catalog, out: &mut Out) -> Result<()> {
    let sets: Vec<Value> = cat
        .sets()
        .iter()
        .map(|s| {
            let points: Vec<Value> = s
                .set
                .points()
                .iter()
                .map(|p| tree::point_json(&p))
                .collect();
            let mut v = json!({"path": s.path, "format": s.set.format(), "points": points});
            if let Some(e) = s.set.problem() {
                v["error"] = json!(e.to_string());
            }
            v
        })
        .collect();
    let problems: Vec<String> = cat.problems().iter().map(ToString::to_string).collect();
    let doc = json!({"source": source, "sets": sets, "problems": problems});
    let text = serde_json::to_string_pretty(&doc).map_err(|e| stdout_error(e.into()))?;
    out.line(&text)
}

/// One point of `ls`: its files with sizes and sources, or why it cannot be served.
fn ls_point(p: &Point, out: &mut Out) -> Result<()> {
    out.line(&format!("  {}", p.name))?;
    match &p.content {
        Ok(files) => {
            for f in files {
                let size = f.size.map_or_else(|| "?".to_owned(), human);
                let note = f
                    .error
                    .as_ref()
                    .map(|e| format!("  ERROR: {e}"))
                    .unwrap_or_default();
                out.line(&format!(
                    "    {:<16} {:>10}  {}{note}",
                    f.path,
                    size,
                    f.sources.join(" + ")
                ))?;
                if let vfs::Node::Dir(d) = &f.node {
                    for line in crate::inside::summary(&f.path, d.describe()) {
                        out.line(&format!("      {line}"))?;
                    }
                }
            }
        }
        Err(e) => out.line(&format!("    ERROR: {e}"))?,
    }
    for warning in &p.warnings {
        out.line(&format!("    warning: {warning}"))?;
    }
    Ok(())
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
    let to_stdout = out == Path::new("-");
    let setup = sql.apply(cache.options(source)?);
    if !to_stdout {
        refuse_inside(setup.ctx.io.store.as_ref(), source, out)?;
    }
    let cat = scan(source, &setup)?;
    let node = vfs::resolve(&cat.tree(None), point_path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::not_found(format!("POINT_PATH {e}")),
        _ => e.context("POINT_PATH"),
    })?;
    let bar = byte_bar(export::data_bytes(&node)?, "exporting");
    let stats = if to_stdout {
        export::stream(&node, &mut Out::stdout().0, &bar).map_err(|e| match e.file() {
            Some(f) if f == Path::new("-") => {
                stdout_error(std::io::Error::from_raw_os_error(e.errno()))
            }
            _ => e,
        })
    } else {
        export::export(&node, out, &bar)
    };
    bar.finish_and_clear();
    let stats = stats?;
    if !quiet() {
        eprintln!(
            "restorefs: wrote {} ({}, {} of data)",
            if to_stdout {
                "stdout".to_owned()
            } else {
                out.display().to_string()
            },
            plural(usize::try_from(stats.files).unwrap_or(usize::MAX), "file"),
            human(stats.bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Nothing is ever written into the backup folder (a bucket is no folder of this machine).
fn refuse_inside(store: &dyn Store, source: &Path, out: &Path) -> Result<()> {
    if !store.is_local() {
        return Ok(());
    }
    let src = source.canonicalize().map_err(|e| {
        Error::from_errno(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("SOURCE {}: {e}", source.display()),
        )
    })?;
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
    let cat = scan(source, &sql.apply(cache.options(source)?))?;
    let total = cat.sets().iter().map(|s| s.set.verify_size()).sum();
    let bar = byte_bar(total, "verifying");
    let mut damaged = 0usize;
    let mut out = Out::stdout();
    let mut closed = false;
    for s in cat.sets() {
        // The set here, the file or point being read by the format in the message.
        bar.set_prefix(format!("verifying {} ", s.path));
        bar.set_message(String::new());
        let mut lines = Vec::new();
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
        // Each set's verdict shows as soon as it is known; a closed stdout does not stop the
        // checks, whose result is the exit status.
        if !closed {
            let printed = bar.suspend(|| lines.iter().try_for_each(|l| out.line(l)));
            match printed {
                Err(e) if is_closed_stdout(&e) => closed = true,
                other => other?,
            }
        }
    }
    bar.finish_and_clear();
    if damaged > 0 {
        eprintln!(
            "restorefs: damage found in {}",
            plural(damaged, "restore point")
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_map_to_flags() {
        let lists = vec![
            "allow_other,uid=1000,gid=100".to_owned(),
            "cache_size=64M".to_owned(),
        ];
        let o = parse_mount_options(&lists, false).unwrap();
        assert_eq!(
            o,
            MountOptions {
                allow_other: true,
                owner: Owner {
                    uid: Some(1000),
                    gid: Some(100)
                },
                cache_size: Some(64 << 20),
                ..MountOptions::default()
            }
        );
        let o = parse_mount_options(
            &["cache_dir=/c,cache_max_age=7,threads=3,freezer_key=/k".to_owned()],
            false,
        )
        .unwrap();
        assert_eq!(o.cache_dir.as_deref(), Some(Path::new("/c")));
        assert_eq!(o.cache_max_age, Some(7));
        assert_eq!(o.threads, Some(3));
        assert_eq!(o.freezer_key.as_deref(), Some(Path::new("/k")));
        let s3 = "s3_endpoint=http://h:9000,s3_region=r,s3_path_style,s3_no_sign,s3_block_size=8M,\
                  s3_prefetch=2,disk_cache=/d,disk_cache_size=1G";
        let mut args: S3Args = clap_defaults();
        for (k, v) in parse_mount_options(&[s3.to_owned()], false).unwrap().s3 {
            args.set(&k, v.as_deref()).unwrap();
        }
        let want = S3Options {
            endpoint: Some("http://h:9000".into()),
            region: Some("r".into()),
            path_style: true,
            no_sign: true,
            block_size: 8 << 20,
            prefetch: 2,
            disk_cache: Some(PathBuf::from("/d")),
            disk_cache_size: 1 << 30,
        };
        assert_eq!(args.options(), want);
        // mount(8), fstab and systemd options pass; what mount.fuse3 adds passes too.
        let fstab = "defaults,noauto,nofail,_netdev,user,users,nodev,nosuid,noexec,noatime,\
                     x-systemd.automount,x-systemd.idle-timeout=60,ro,default_permissions";
        assert_eq!(
            parse_mount_options(&[fstab.to_owned()], false).unwrap(),
            MountOptions::default()
        );
        assert!(parse_mount_options(&["rw,dev,suid".to_owned()], true).is_ok());
        for bad in [
            "rw",
            "uid=x",
            "threads=",
            "nodev=1",
            "fsname=x",
            "cache_size=9Q",
            "s3_prefetch=x",
            "s3_endpoint",
            "s3_other=1",
        ] {
            let e = parse_mount_options(&[bad.to_owned()], false).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Usage, "{bad}");
            assert!(e.to_string().starts_with(&format!("-o {bad}: ")), "{e}");
        }
    }

    #[test]
    fn the_mount_fuse3_form_gets_the_documented_defaults() {
        let d: CacheArgs = clap_defaults();
        assert_eq!(d.cache_size, 256 << 20);
        assert_eq!((d.cache_dir, d.freezer_key), (None, None));
        let s: SqlArgs = clap_defaults();
        assert_eq!(
            (s.sql_timeout, s.max_db_size),
            (Duration::from_secs(60), None)
        );
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(0, "point"), "0 points");
        assert_eq!(plural(1, "backup set"), "1 backup set");
        assert_eq!(plural(2, "file"), "2 files");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2kb"), Ok(2048));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
    }
}
