//! The mount's life: signals while busy, `restorefs umount` only for restorefs mounts, who may
//! read a mount, and writes of every kind refused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn source() -> PathBuf {
    data_dir().join("virtnbd")
}

const IMAGE: &str = "v1-plain/latest/vda.raw";

/// Runs `cmd` as user `nobody`.
fn as_nobody(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(cmd)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Lets other users reach the mountpoint (tempdirs are private).
fn open_up(m: &Mounted) {
    let parent = m.path.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_busy_mount_says_what_holds_it_and_a_second_signal_detaches() {
    if !fuse_available("a_busy_mount_says_what_holds_it_and_a_second_signal_detaches") {
        return;
    }
    let mut m = Mounted::new(&source(), &[]);
    let dev = Loop::attach(&m.join(IMAGE));
    m.signal_term();
    assert!(
        wait_until(5, || m.stderr().contains("is busy")),
        "no busy message: {}",
        m.stderr()
    );
    let log = m.stderr();
    assert!(log.contains(&dev.0), "the loop device is not named: {log}");
    assert!(log.contains("backed by"), "{log}");
    assert!(is_mounted(&m.path), "a busy mount stays mounted");
    assert_eq!(
        m.wait_exit(0),
        None,
        "the daemon still serves the loop device"
    );
    // The loop device still reads through the mount.
    let head = std::fs::read(&dev.0).unwrap();
    assert_eq!(
        head.len() as u64,
        std::fs::metadata(m.join(IMAGE)).unwrap().len()
    );

    // The second signal detaches at once; the daemon exits when the kernel lets go.
    m.signal_term();
    assert!(
        wait_until(2, || !is_mounted(&m.path)),
        "not detached in 2 s"
    );
    assert_eq!(
        m.wait_exit(0),
        None,
        "exited while the loop device still held it"
    );
    drop(dev);
    let status = m.wait_exit(5).expect("exits once the loop device is gone");
    assert!(status.success(), "exit {status}: {}", m.stderr());
    assert_clean_log(&m.stderr());
}

#[test]
fn sigterm_alone_unmounts_an_idle_mount_quickly() {
    if !fuse_available("sigterm_alone_unmounts_an_idle_mount_quickly") {
        return;
    }
    let mut m = Mounted::new(&source(), &[]);
    assert_eq!(
        sha256_file(&m.join("v1-plain/2026-11-22T02:03:55_full/vdb.raw")),
        "3deef7e6923c220d9150eb38fb3d6c446c855f2e0d4431820a57dcaedb0d5f22"
    );
    let start = Instant::now();
    m.signal_term();
    let status = m.wait_exit(2).expect("exits within 2 s of SIGTERM");
    assert!(status.success());
    assert!(!is_mounted(&m.path));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn umount_leaves_other_file_systems_alone() {
    if !fuse_available("umount_leaves_other_file_systems_alone") {
        return;
    }
    let tmp = scratch();
    let dir = tmp.path().join("tmpfs");
    std::fs::create_dir(&dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "restorefs-test"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = run(&["umount", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let still = is_mounted(&dir);
    let _ = Command::new("umount").arg(&dir).status();
    assert!(
        !out.status.success(),
        "restorefs umount of a tmpfs succeeded"
    );
    assert!(err.contains("not a restorefs mount (tmpfs"), "{err}");
    assert!(still, "the tmpfs was unmounted");

    let out = run(&["umount", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not mounted"));
    assert_no_panic(&out);
}

#[test]
fn only_the_owner_reads_unless_allow_other() {
    if !fuse_available("only_the_owner_reads_unless_allow_other") {
        return;
    }
    let m = Mounted::new(&source(), &[]);
    open_up(&m);
    let img = m.join(IMAGE);
    let out = as_nobody("head", &["-c", "16", img.to_str().unwrap()]);
    assert!(!out.status.success(), "nobody read an owner-only mount");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    drop(m);

    let m = Mounted::new(&source(), &["--allow-other"]);
    open_up(&m);
    let img = m.join(IMAGE);
    let out = as_nobody("sha256sum", &[img.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&sha256_file(&img)));
}

#[test]
fn a_user_without_user_allow_other_is_refused_allow_other() {
    if !fuse_available("a_user_without_user_allow_other_is_refused_allow_other") {
        return;
    }
    let conf = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    let allowed = conf.lines().any(|l| l.trim() == "user_allow_other");
    let tmp = scratch();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    std::fs::set_permissions(&mp, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = as_nobody(
        bin(),
        &[
            "mount",
            source().to_str().unwrap(),
            mp.to_str().unwrap(),
            "--allow-other",
            "--cache-dir",
            tmp.path().join("cache").to_str().unwrap(),
        ],
    );
    assert_no_panic(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    if allowed {
        eprintln!("/etc/fuse.conf allows other users: only checking that nothing panicked");
        let _ = run(&["umount", mp.to_str().unwrap()]);
    } else {
        assert!(!out.status.success());
        assert!(err.contains("user_allow_other"), "{err}");
        assert!(!is_mounted(&mp));
    }
}

#[test]
fn every_kind_of_write_is_refused() {
    if !fuse_available("every_kind_of_write_is_refused") {
        return;
    }
    let m = Mounted::new(&source(), &[]);
    let img = m.join(IMAGE);
    let erofs = |what: &str, r: std::io::Result<()>| {
        assert_eq!(
            r.unwrap_err().raw_os_error(),
            Some(libc::EROFS),
            "{what} was not refused with EROFS"
        );
    };
    erofs(
        "chmod",
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o777)),
    );
    erofs(
        "symlink",
        std::os::unix::fs::symlink("vda.raw", m.join("v1-plain/latest/l")),
    );
    erofs(
        "link",
        std::fs::hard_link(&img, m.join("v1-plain/latest/h.raw")),
    );
    let out = Command::new("truncate")
        .args(["-s", "0"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
    let path = std::ffi::CString::new(img.to_str().unwrap()).unwrap();
    let name = c"user.restorefs";
    // SAFETY: valid NUL-terminated strings and a 1-byte value that outlive the call.
    let r = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS),
        "setxattr was not refused with EROFS"
    );
}

/// Writes `len` bytes at `path` last used `days` ago.
fn old_file(path: &Path, len: usize, days: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![1u8; len]).unwrap();
    let t = std::time::SystemTime::now() - Duration::from_secs(days * 24 * 3600);
    let f = std::fs::File::open(path).unwrap();
    f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
}

#[test]
fn kept_files_unused_for_the_max_age_are_pruned_in_the_background() {
    if !fuse_available("kept_files_unused_for_the_max_age_are_pruned_in_the_background") {
        return;
    }
    let cache = scratch();
    let index = cache.path().join("index");
    let stale = index.join("0123456789abcdef.idx");
    let recent = index.join("fedcba9876543210.idx");
    let foreign = index.join("README");
    old_file(&stale, 4096, 31);
    old_file(&recent, 4096, 29);
    old_file(&foreign, 10, 400);
    let dir = cache.path().to_str().unwrap();

    // With pruning off, even the stale one stays.
    let (image, want) = plain_vda();
    let mut m = Mounted::new(&source(), &["--cache-dir", dir, "--cache-max-age", "0"]);
    assert_eq!(sha256_file(&m.join(&image)), want);
    std::thread::sleep(Duration::from_millis(500));
    assert!(stale.exists(), "pruned with --cache-max-age 0");
    m.stop();

    // The default, 30 days: only the stale kept file goes, while the mount serves.
    let mut m = Mounted::new(&source(), &["--cache-dir", dir]);
    assert!(
        wait_until(20, || !stale.exists()),
        "stale kept index not pruned"
    );
    assert!(recent.exists() && foreign.exists());
    assert_eq!(sha256_file(&m.join(&image)), want);
    m.stop();
}
