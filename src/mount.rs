//! `mount` and `umount`: the checks before mounting, the FUSE session, a clean unmount on
//! Ctrl-C or SIGTERM, and cleaning up a mount whose daemon died.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fuser::{Config, MountOption, Session, SessionACL};

use crate::cache::Cache;
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::fuse::{FuseFs, Owner};
use crate::mountinfo;
use crate::nbd;
use crate::sys;
use crate::timefmt::UserTime;

/// How to mount.
pub struct MountArgs {
    /// The backup folder (for the mount's name).
    pub source: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// FUSE worker threads.
    pub threads: usize,
    /// Hide points after this time.
    pub as_of: Option<UserTime>,
    /// Let other users in (checked against /etc/fuse.conf).
    pub allow_other: bool,
    /// Owner and group shown for every node (`-o uid=,gid=`).
    pub owner: Owner,
}

/// Checks what can be checked before scanning: FUSE, the mountpoint, `--allow-other`.
pub fn preflight(args: &MountArgs) -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::unsupported(
            Path::new("/dev/fuse"),
            "missing: FUSE is not available on this machine (load it with `modprobe fuse`; \
             in a container, pass the device in)",
        ));
    }
    check_mountpoint(&args.mountpoint)?;
    if args.allow_other {
        check_allow_other(Path::new("/etc/fuse.conf"))?;
    }
    Ok(())
}

fn check_mountpoint(mp: &Path) -> Result<()> {
    let named = |e: &std::io::Error| {
        Error::from_errno(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("MOUNTPOINT {}: {e}", mp.display()),
        )
    };
    let stale = |e: &std::io::Error| {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            Error::usage(format!(
                "{}: a FUSE mount whose daemon died is still there; run `restorefs umount {}` first",
                mp.display(),
                mp.display()
            ))
        } else {
            named(e)
        }
    };
    let md = std::fs::metadata(mp).map_err(|e| stale(&e))?;
    if !md.is_dir() {
        return Err(Error::usage(format!(
            "MOUNTPOINT {}: the mountpoint must be a folder",
            mp.display()
        )));
    }
    let mounted = mountinfo::at(&mountinfo::current(), &mountinfo::absolute(mp));
    if let Some(m) = mounted.as_ref().filter(|m| m.fstype.starts_with("fuse")) {
        return Err(already_mounted(mp, m));
    }
    // Listing asks the file system itself (a dead daemon's attributes may still be cached).
    let mut entries = std::fs::read_dir(mp).map_err(|e| stale(&e))?;
    match (entries.next(), mounted) {
        (None, _) => Ok(()),
        (Some(Err(e)), _) => Err(stale(&e)),
        (Some(Ok(_)), Some(m)) => Err(already_mounted(mp, &m)),
        (Some(Ok(_)), None) => Err(Error::usage(format!(
            "MOUNTPOINT {}: the mountpoint must be an empty folder",
            mp.display()
        ))),
    }
}

fn already_mounted(mp: &Path, m: &mountinfo::MountEntry) -> Error {
    let hint = if m.is_restorefs() {
        format!("; `restorefs umount {}` first", mp.display())
    } else {
        String::new()
    };
    Error::usage(format!(
        "MOUNTPOINT {}: already mounted ({} from {}){hint}",
        mp.display(),
        m.fstype,
        m.source
    ))
}

/// Only root may let other users in, unless `/etc/fuse.conf` says `user_allow_other`.
pub fn check_allow_other(conf: &Path) -> Result<()> {
    if sys::euid() == 0 {
        return Ok(());
    }
    let text = std::fs::read_to_string(conf).unwrap_or_default();
    if text.lines().any(|l| l.trim() == "user_allow_other") {
        return Ok(());
    }
    Err(Error::usage(format!(
        "--allow-other needs a line 'user_allow_other' in {} (or running as root)",
        conf.display()
    )))
}

/// Mounts the catalog's tree and serves it until unmounted, Ctrl-C or SIGTERM, and over NBD
/// on `nbd` (the same tree) until then; `on_signal` runs first at each Ctrl-C or SIGTERM (to
/// interrupt long work), `on_ready` once the mount answers requests.
pub fn mount(
    cat: &Catalog,
    cache: Arc<Cache>,
    args: &MountArgs,
    nbd: Option<nbd::Listener>,
    on_signal: Box<dyn Fn() + Send + Sync>,
    on_ready: Box<dyn FnOnce() + Send>,
) -> Result<()> {
    let root = cat.tree(args.as_of);
    // Exports list every set (a lazy catalog scans every folder for it): only made for NBD.
    let exports = nbd
        .is_some()
        .then(|| nbd::Exports::new(cat, root.clone(), args.as_of));
    let fs = FuseFs::new(root, Arc::clone(&cache)).with_owner(args.owner);
    let pruner = fs.pruner();
    let config = session_config(args);
    let mp = &args.mountpoint;
    let session =
        Session::new(fs, mp, &config).map_err(|e| Error::io(mp, &e).context("mounting"))?;
    tune_readahead(mp);
    pruner.start(session.notifier());

    let shutdown = Shutdown::new(mp, on_signal);
    ctrlc::set_handler(move || shutdown.signal())
        .map_err(|e| Error::usage(format!("cannot handle signals: {e}")))?;

    let server = nbd.zip(exports).map(|(l, e)| l.start(e)).transpose()?;
    call_when_ready(mp, on_ready)?;
    let served = session.run();
    if let Some(server) = server {
        server.stop();
    }
    match served {
        // The kernel ends a lazily detached mount's connection this way once it lets go.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            log::info!("the kernel ended the connection")
        }
        r => r.map_err(|e| Error::io(mp, &e).context("serving"))?,
    }
    let s = cache.stats();
    log::info!(
        "unmounted; cache: {} hits, {} misses, {} evictions",
        s.hits,
        s.misses,
        s.evictions
    );
    Ok(())
}

/// The mount options: read-only, `fuse.restorefs` from `restorefs:SOURCE`, nosuid, nodev,
/// kernel permission checks, and who may enter.
fn session_config(args: &MountArgs) -> Config {
    let name = format!("restorefs:{}", args.source.display()).replace([',', ' '], "_");
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(name),
        // The kernel names the type `fuse.restorefs` only when told directly (as root);
        // fusermount does it for users.
        if sys::euid() == 0 {
            MountOption::CUSTOM("subtype=restorefs".into())
        } else {
            MountOption::Subtype("restorefs".into())
        },
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    config
}

/// Calls `on_ready` once the mount answers. The first request is served once the session
/// runs: asking from another thread returns when it does.
fn call_when_ready(mp: &Path, on_ready: Box<dyn FnOnce() + Send>) -> Result<()> {
    let root = mp.to_path_buf();
    std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || match std::fs::metadata(&root) {
            Ok(_) => on_ready(),
            Err(e) => log::error!("{}: the new mount does not answer: {e}", root.display()),
        })
        .map(drop)
        .map_err(|e| Error::io(mp, &e).context("starting"))
}

/// Raises the kernel's readahead for this mount to 4 MiB (as root; best effort). The device
/// number comes from /proc/self/mountinfo: a `stat` of the mountpoint would ask this very
/// process, which does not serve requests yet.
fn tune_readahead(mp: &Path) {
    let Some(m) = mountinfo::at(&mountinfo::current(), &mountinfo::absolute(mp)) else {
        return;
    };
    let path = format!("/sys/class/bdi/{}/read_ahead_kb", m.dev);
    if let Err(e) = std::fs::write(&path, "4096") {
        log::debug!("{path}: {e} (keeping the kernel's readahead)");
    }
}

/// What Ctrl-C and SIGTERM do: the first tries a clean unmount and, if the mount is busy, says
/// what holds it; the next ones detach lazily (the daemon exits once the kernel lets go).
struct Shutdown {
    mp: PathBuf,
    signals: AtomicUsize,
    on_signal: Box<dyn Fn() + Send + Sync>,
}

impl Shutdown {
    fn new(mp: &Path, on_signal: Box<dyn Fn() + Send + Sync>) -> Shutdown {
        Shutdown {
            mp: mountinfo::absolute(mp),
            signals: AtomicUsize::new(0),
            on_signal,
        }
    }

    fn signal(&self) {
        // Running work (a rebuild) is interrupted first, so that its reader lets go.
        (self.on_signal)();
        let shown = self.mp.display();
        if self.signals.fetch_add(1, Ordering::SeqCst) > 0 {
            log::warn!("signal received again: detaching {shown} lazily");
            if let Err(e) = detach(&self.mp) {
                log::error!("cannot detach {shown}: {e}");
            }
            return;
        }
        log::info!("signal received: unmounting {shown}");
        // A reader interrupted just now may take a moment to close its file.
        let mut last = None;
        for _ in 0..10 {
            match unmount_now(&self.mp) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
                Err(e) => {
                    log::error!("cannot unmount {shown}: {e}");
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let holders = holders(&self.mp);
        log::warn!(
            "{shown} is busy ({}): {}. Close those (for a loop device: `umount` what is \
             mounted from it, then `losetup -d`), then press Ctrl-C again or run \
             `restorefs umount {shown}`; a second Ctrl-C now detaches lazily and restorefs \
             exits once they are closed",
            last.map_or_else(String::new, |e| e.to_string()),
            if holders.is_empty() {
                "something still uses it (see `fuser -vm` or `lsof`)".to_owned()
            } else {
                holders.join("; ")
            }
        );
        self.signals.store(1, Ordering::SeqCst);
    }
}

/// Unmounts now: fails with EBUSY while files of the mount are in use.
fn unmount_now(mp: &Path) -> std::io::Result<()> {
    if sys::euid() == 0 {
        return sys::unmount(mp, false);
    }
    fusermount(mp, false)
}

/// Detaches the mount from the tree; the kernel ends it when its last user lets go.
fn detach(mp: &Path) -> std::io::Result<()> {
    if sys::euid() == 0 {
        return sys::unmount(mp, true);
    }
    fusermount(mp, true)
}

fn fusermount(mp: &Path, lazy: bool) -> std::io::Result<()> {
    let mut last = std::io::Error::other("unmounting as a user needs fusermount3 (package fuse3)");
    for tool in ["fusermount3", "fusermount"] {
        let mut cmd = std::process::Command::new(tool);
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        match cmd.arg("--").arg(mp).output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let busy = err.contains("busy");
                return Err(if busy {
                    std::io::Error::from_raw_os_error(libc::EBUSY)
                } else {
                    std::io::Error::other(format!("{tool}: {}", err.trim()))
                });
            }
            Err(e) => last = std::io::Error::other(format!("{tool}: {e}")),
        }
    }
    Err(last)
}

/// What keeps `mp` busy: loop devices backed by its files, and processes using it.
fn holders(mp: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mounts = mountinfo::current();
    for dev in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = dev.file_name().to_string_lossy().into_owned();
        let Ok(back) = std::fs::read_to_string(dev.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(back.trim_end()).starts_with(mp) {
            let used: Vec<String> = mounts
                .iter()
                .filter(|m| m.source == format!("/dev/{name}"))
                .map(|m| m.mountpoint.display().to_string())
                .collect();
            let at = if used.is_empty() {
                String::new()
            } else {
                format!(", mounted at {}", used.join(", "))
            };
            out.push(format!("/dev/{name} is backed by {}{at}", back.trim_end()));
        }
    }
    for pid in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = pid.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == std::process::id().to_string() {
            continue;
        }
        let base = Path::new("/proc").join(&pid);
        let uses = |p: PathBuf| std::fs::read_link(p).is_ok_and(|t| t.starts_with(mp));
        let fds = std::fs::read_dir(base.join("fd"))
            .into_iter()
            .flatten()
            .flatten();
        if uses(base.join("cwd")) || fds.into_iter().any(|fd| uses(fd.path())) {
            let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
            out.push(format!(
                "process {pid} ({}) has files open there",
                comm.trim()
            ));
        }
    }
    out
}

/// Unmounts the restorefs mount at `mp`, also when its daemon died (a lazy detach). Anything
/// else mounted there is left alone.
pub fn umount(mp: &Path) -> Result<()> {
    let abs = mountinfo::absolute(mp);
    let Some(m) = mountinfo::at(&mountinfo::current(), &abs) else {
        return Err(Error::usage(format!("{}: not mounted", mp.display())));
    };
    if !m.is_restorefs() {
        return Err(Error::usage(format!(
            "{}: not a restorefs mount ({} from {}); left alone (use umount(8))",
            mp.display(),
            m.fstype,
            m.source
        )));
    }
    detach(&abs).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => Error::usage(format!("{}: not mounted", mp.display())),
        _ => Error::io(mp, &e).context("unmounting"),
    })
}
