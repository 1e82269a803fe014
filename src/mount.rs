//! `mount` and `umount`: the checks before mounting, the FUSE session, a clean unmount on
//! Ctrl-C or SIGTERM, and cleaning up a mount whose daemon died.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::NaiveDateTime;
use fuser::{Config, MountOption, Session, SessionACL};

use crate::cache::Cache;
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::fs::FuseFs;
use crate::sys;

/// How to mount.
pub struct MountArgs {
    /// The backup folder (for the mount's name).
    pub source: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// FUSE worker threads.
    pub threads: usize,
    /// Hide points after this time.
    pub as_of: Option<NaiveDateTime>,
    /// Let other users in (checked against /etc/fuse.conf).
    pub allow_other: bool,
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
    let stale = |e: &std::io::Error| {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            Error::usage(format!(
                "{}: a FUSE mount whose daemon died is still there; run `restorefs umount {}` first",
                mp.display(),
                mp.display()
            ))
        } else {
            Error::io(mp, e)
        }
    };
    let md = std::fs::metadata(mp).map_err(|e| stale(&e))?;
    if !md.is_dir() {
        return Err(Error::usage(format!(
            "{}: the mountpoint must be a folder",
            mp.display()
        )));
    }
    // Listing asks the file system itself (a dead daemon's attributes may still be cached).
    let mut entries = std::fs::read_dir(mp).map_err(|e| stale(&e))?;
    match entries.next() {
        None => Ok(()),
        Some(Err(e)) => Err(stale(&e)),
        Some(Ok(_)) => Err(Error::usage(format!(
            "{}: the mountpoint must be an empty folder",
            mp.display()
        ))),
    }
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

/// Mounts the catalog's tree and serves it until unmounted, Ctrl-C or SIGTERM.
pub fn mount(cat: &Catalog, cache: Arc<Cache>, args: &MountArgs) -> Result<()> {
    let root = cat.tree(args.as_of);
    let fs = FuseFs::new(root, Arc::clone(&cache));
    let name = format!("restorefs:{}", args.source.display()).replace([',', ' '], "_");
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(name),
        MountOption::Subtype("restorefs".into()),
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
    let mp = &args.mountpoint;
    let mut session =
        Session::new(fs, mp, &config).map_err(|e| Error::io(mp, &e).context("mounting"))?;
    tune_readahead(mp);

    let unmounter = Mutex::new(session.unmount_callable());
    let shown = mp.display().to_string();
    ctrlc::set_handler(move || {
        log::info!("signal received: unmounting {shown}");
        if let Err(e) = unmounter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unmount()
        {
            log::warn!("unmount failed: {e}");
        }
    })
    .map_err(|e| Error::usage(format!("cannot handle signals: {e}")))?;

    let points: usize = cat.sets().iter().map(|s| s.set.points().len()).sum();
    eprintln!(
        "restorefs: serving {} backup sets ({points} restore points) at {}; \
         Ctrl-C or `restorefs umount {}` unmounts",
        cat.sets().len(),
        mp.display(),
        mp.display()
    );
    session
        .run()
        .map_err(|e| Error::io(mp, &e).context("serving"))?;
    let s = cache.stats();
    log::info!(
        "unmounted; cache: {} hits, {} misses, {} evictions",
        s.hits,
        s.misses,
        s.evictions
    );
    Ok(())
}

/// Raises the kernel's readahead for this mount to 4 MiB (as root; best effort). The device
/// number comes from /proc/self/mountinfo: a `stat` of the mountpoint would ask this very
/// process, which does not serve requests yet.
fn tune_readahead(mp: &Path) {
    let Ok(mp) = mp.canonicalize() else { return };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Some(dev) = info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && Path::new(f[4]) == mp).then(|| f[2].to_owned())
    }) else {
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, "4096") {
        log::debug!("{path}: {e} (keeping the kernel's readahead)");
    }
}

/// Unmounts `mp`, also when its daemon died (a lazy detach).
pub fn umount(mp: &Path) -> Result<()> {
    if sys::euid() == 0 {
        return sys::lazy_unmount(mp).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => Error::usage(format!("{}: not mounted", mp.display())),
            _ => Error::io(mp, &e),
        });
    }
    for tool in ["fusermount3", "fusermount"] {
        match std::process::Command::new(tool)
            .args(["-u", "-z"])
            .arg(mp)
            .status()
        {
            Ok(s) if s.success() => return Ok(()),
            Ok(_) => {
                return Err(Error::usage(format!(
                    "{tool} could not unmount {}",
                    mp.display()
                )));
            }
            Err(_) => continue,
        }
    }
    Err(Error::usage(
        "unmounting as a user needs fusermount3 (package fuse3)",
    ))
}
