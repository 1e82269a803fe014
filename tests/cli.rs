//! The command line as people with FUSE, mount(8) and backup-tool habits use it: `-o` options,
//! `--daemon`, `mount -t fuse.restorefs` and fstab, messages that name the argument, closed
//! pipes, plurals, export modes, `-o -`, completions, the man page and exit statuses.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn virtnbd() -> PathBuf {
    data_dir().join("virtnbd")
}

fn freezer() -> PathBuf {
    data_dir().join("freezer")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs and expects exit status `code`; returns stderr.
fn fails_with(args: &[&str], code: i32) -> String {
    let out = run(args);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    stderr(&out)
}

/// Processes whose command line names `needle` (the daemon of a test's unique mountpoint).
fn processes_naming(needle: &Path) -> Vec<String> {
    let needle = needle.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle).then_some(cmd)
        })
        .collect()
}

fn wait_gone(mnt: &Path) {
    let start = Instant::now();
    while !processes_naming(mnt).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the daemon of {} did not exit: {:?}",
            mnt.display(),
            processes_naming(mnt)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn plurals_follow_the_count() {
    let text = run_ok(&["ls", virtnbd().to_str().unwrap()]);
    assert!(
        text.contains("v1-misc-copy  (virtnbdbackup, 1 point)\n"),
        "{text}"
    );
    assert!(
        text.contains("v1-lz4  (virtnbdbackup, 6 points)\n"),
        "{text}"
    );
    let text = run_ok(&["ls", freezer().to_str().unwrap()]);
    assert!(text.contains("(freezer, 1 point)\n"), "{text}");
    let (path, _) = plain_vda();
    let tmp = scratch();
    let out_file = tmp.path().join("vda.raw");
    let out = run(&[
        "export",
        virtnbd().to_str().unwrap(),
        &path,
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("(1 file, "), "{}", stderr(&out));
}

/// Spawns restorefs with its stdout a pipe whose reader is gone before anything is written.
fn with_closed_stdout(args: &[&str]) -> Output {
    let mut child = command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_ends_output_quietly() {
    let src = virtnbd();
    let src = src.to_str().unwrap();
    let (path, _) = plain_vda();
    for args in [
        vec!["ls", src],
        vec!["ls", "--json", src],
        vec!["export", src, &path, "-o", "-"],
        vec!["completions", "bash"],
    ] {
        let out = with_closed_stdout(&args);
        assert_no_panic(&out);
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
        assert!(
            !stderr(&out).contains("error"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn unknown_names_list_the_nearest_ones() {
    let doc = ls_json(&virtnbd());
    let set = doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "v1-plain")
        .unwrap();
    let first = set["points"][0]["name"].as_str().unwrap().to_owned();
    // One character off the first point's name.
    let typo = format!("{}X", &first[..first.len() - 1]);
    let tmp = scratch();
    let out = tmp.path().join("x");
    let err = fails_with(
        &[
            "export",
            virtnbd().to_str().unwrap(),
            &format!("v1-plain/{typo}/vda.raw"),
            "-o",
            out.to_str().unwrap(),
        ],
        1,
    );
    assert!(
        err.contains(&format!(
            "POINT_PATH v1-plain/{typo}/vda.raw: no '{typo}' here; nearest: {first}"
        )),
        "{err}"
    );
    let err = fails_with(
        &[
            "export",
            virtnbd().to_str().unwrap(),
            &format!("v1-plain/{first}/vdz.raw"),
            "-o",
            out.to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("nearest: vda.raw, vdb.raw"), "{err}");
    assert!(!out.exists());
}

#[test]
fn sources_that_do_not_exist_are_named() {
    let tmp = scratch();
    let missing = tmp.path().join("missing");
    let err = fails_with(&["ls", missing.to_str().unwrap()], 1);
    assert!(
        err.contains(&format!(
            "SOURCE {}: No such file or directory",
            missing.display()
        )),
        "{err}"
    );
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = fails_with(&["verify", file.to_str().unwrap()], 2);
    assert!(
        err.contains(&format!("SOURCE {}: not a folder", file.display())),
        "{err}"
    );
}

#[test]
fn mount_options_are_checked_before_anything_else() {
    let tmp = scratch();
    let mnt = tmp.path().to_str().unwrap();
    let src = virtnbd();
    let src = src.to_str().unwrap();
    let err = fails_with(&["mount", src, mnt, "-o", "ro,rw"], 2);
    assert!(
        err.contains("-o rw: restorefs mounts are read-only"),
        "{err}"
    );
    let err = fails_with(&["mount", src, mnt, "-o", "noauto,bogus=1"], 2);
    assert!(err.contains("-o bogus=1: unknown mount option"), "{err}");
    let err = fails_with(&["mount", src, mnt, "-o", "uid=alice"], 2);
    assert!(err.contains("-o uid=alice: needs a numeric id"), "{err}");
    let err = fails_with(&["mount", src, mnt, "-o", "cache_size=lots"], 2);
    assert!(err.contains("-o cache_size=lots"), "{err}");
    // Options restorefs does not know are clap's usage errors: status 2 too.
    fails_with(&["mount", src, mnt, "--bogus"], 2);
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn exports_keep_the_modes_the_mount_shows() {
    let tmp = scratch();
    // A disk image has no mode of its own: 0444, alone or in a tree (0555 folders).
    let (path, _) = plain_vda();
    let single = tmp.path().join("vda.raw");
    run_ok(&[
        "export",
        virtnbd().to_str().unwrap(),
        &path,
        "-o",
        single.to_str().unwrap(),
    ]);
    assert_eq!(mode(&single), 0o444);
    let tree = tmp.path().join("tree");
    run_ok(&[
        "export",
        virtnbd().to_str().unwrap(),
        "v1-plain",
        "-o",
        tree.to_str().unwrap(),
    ]);
    assert_eq!(mode(&tree), 0o555);
    let names: Vec<String> = std::fs::read_dir(&tree)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n == "at"), "at/ exported: {names:?}");
    assert!(
        std::fs::symlink_metadata(tree.join("latest"))
            .unwrap()
            .is_symlink()
    );
    let image = tree.join(Path::new(&path).strip_prefix("v1-plain").unwrap());
    assert_eq!(mode(&image), 0o444);
    assert_eq!(mode(image.parent().unwrap()), 0o555);

    // Freezer keeps the modes tar recorded (the manifest's), alone or in a tree.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(freezer().join("manifest.json")).unwrap())
            .unwrap();
    let expected = manifest["sets"]["tar-gzip"]["backups"][0]["expected"]
        .as_array()
        .unwrap();
    let mode_of = |p: &str| {
        let e = expected.iter().find(|e| e["path"] == p).unwrap();
        u32::from_str_radix(e["mode"].as_str().unwrap(), 8).unwrap()
    };
    let doc = ls_json(&freezer());
    let set = doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"].as_str().unwrap().starts_with("tar-gzip/"))
        .unwrap();
    let point = format!(
        "{}/{}",
        set["path"].as_str().unwrap(),
        set["points"][0]["name"].as_str().unwrap()
    );
    for name in ["private.txt", "exec.sh", "docs/readme.txt"] {
        let out = tmp.path().join(name.replace('/', "_"));
        run_ok(&[
            "export",
            freezer().to_str().unwrap(),
            &format!("{point}/files/{name}"),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(mode(&out), mode_of(name), "{name}");
    }
    let files = tmp.path().join("files");
    run_ok(&[
        "export",
        freezer().to_str().unwrap(),
        &format!("{point}/files"),
        "-o",
        files.to_str().unwrap(),
    ]);
    for name in ["private.txt", "exec.sh", "docs", "emptydir"] {
        assert_eq!(mode(&files.join(name)), mode_of(name), "{name} in a tree");
    }
}

#[test]
fn export_to_stdout_streams_the_image() {
    let (path, sha) = plain_vda();
    let out = command()
        .args(["export", virtnbd().to_str().unwrap(), &path, "-o", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256(&out.stdout), sha);
    // A folder cannot be streamed.
    let err = fails_with(
        &["export", virtnbd().to_str().unwrap(), "v1-plain", "-o", "-"],
        2,
    );
    assert!(err.contains("only a file can be streamed"), "{err}");
}

#[test]
fn points_answer_to_a_colon_free_alias() {
    let (path, sha) = plain_vda();
    let point = path.split('/').nth(1).unwrap();
    assert!(point.contains(':'), "{point}");
    let alias = path.replace(':', "-");
    let out = command()
        .args(["export", virtnbd().to_str().unwrap(), &alias, "-o", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{alias}: {}", stderr(&out));
    assert_eq!(sha256(&out.stdout), sha);
    // Listings name each point once, with its colons.
    let text = run_ok(&["ls", virtnbd().to_str().unwrap()]);
    assert!(!text.contains(&point.replace(':', "-")));
}

#[test]
fn completions_man_page_and_version() {
    let bash = run_ok(&["completions", "bash"]);
    for sub in [
        "mount",
        "umount",
        "ls",
        "export",
        "verify",
        "completions",
        "man",
    ] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(bash.contains("complete -F"), "not a bash completion script");
    assert!(run_ok(&["completions", "zsh"]).starts_with("#compdef restorefs"));
    assert!(run_ok(&["completions", "fish"]).contains("complete -c restorefs"));
    let man = run_ok(&["man"]);
    assert!(man.contains(".TH restorefs 1"), "{man}");
    assert!(man.contains("Exit status: 0 done"));
    let page = run_ok(&["man", "mount"]);
    assert!(page.contains(".TH restorefs-mount 1"), "{page}");
    assert!(
        page.contains("cache_size=SIZE") && page.contains("\\-\\-daemon"),
        "{page}"
    );
    fails_with(&["man", "nosuch"], 2);
    let version = run_ok(&["--version"]);
    assert_eq!(
        version,
        format!("restorefs {}\n", env!("CARGO_PKG_VERSION"))
    );
    fails_with(&["completions", "tcsh"], 2);
}

#[test]
fn verify_exits_3_on_damage() {
    let tmp = scratch();
    copy_dir(
        &virtnbd().join("v1-misc-copy"),
        &tmp.path().join("v1-misc-copy"),
    );
    let data: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("v1-misc-copy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .collect();
    assert!(!data.is_empty());
    for f in &data {
        let len = std::fs::metadata(f).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(f)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }
    let out = run(&["verify", tmp.path().to_str().unwrap()]);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DAMAGED"));
    assert!(
        stderr(&out).contains("damage found in 1 restore point\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn daemon_returns_once_the_mount_answers() {
    if !fuse_available("daemon_returns_once_the_mount_answers") {
        return;
    }
    let tmp = scratch();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("daemon.log");
    let src = virtnbd();
    let start = Instant::now();
    let out = command()
        .args(["-v", "mount", "--daemon"])
        .arg(&src)
        .arg(&mnt)
        .args(["-o", "uid=4321,gid=4322,default_permissions,nodev"])
        .arg("--log-file")
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Right after it returns, the mount lists the sets, with the owner -o asked for.
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "v1-lz4",
            "v1-misc",
            "v1-misc-copy",
            "v1-misc-copyraw",
            "v1-plain"
        ]
    );
    let md = std::fs::metadata(mnt.join("v1-plain")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4321, 4322));
    assert!(start.elapsed() < Duration::from_secs(30));
    let (path, sha) = plain_vda();
    assert_eq!(sha256_file(&mnt.join(&path)), sha);
    // fsync of a read-only file or folder succeeds (editors and `sync -f` ask); close flushes.
    std::fs::File::open(mnt.join(&path))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::File::open(mnt.join("v1-plain"))
        .unwrap()
        .sync_all()
        .unwrap();

    // A second mount there is refused, naming the argument and what is mounted.
    let err = fails_with(
        &[
            "mount",
            "--daemon",
            src.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
        2,
    );
    assert!(
        err.contains(&format!(
            "MOUNTPOINT {}: already mounted (fuse.restorefs",
            mnt.display()
        )),
        "{err}"
    );
    run_ok(&["umount", mnt.to_str().unwrap()]);
    wait_gone(&mnt);
    assert!(!is_mounted(&mnt));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("serving 5 backup sets"), "{logged}");
    assert!(!logged.contains("Not Implemented"), "{logged}");
    assert_clean_log(&logged);
}

#[test]
fn daemon_failures_come_back_with_the_childs_message() {
    if !fuse_available("daemon_failures_come_back_with_the_childs_message") {
        return;
    }
    let tmp = scratch();
    let missing = tmp.path().join("missing");
    let err = fails_with(
        &[
            "mount",
            "--daemon",
            virtnbd().to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
        1,
    );
    assert!(
        err.contains(&format!(
            "MOUNTPOINT {}: No such file or directory",
            missing.display()
        )),
        "{err}"
    );
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let err = fails_with(
        &[
            "mount",
            "--daemon",
            virtnbd().to_str().unwrap(),
            full.to_str().unwrap(),
        ],
        2,
    );
    assert!(err.contains("must be an empty folder"), "{err}");
    // The SOURCE-MOUNTPOINT form daemonizes the same way.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = fails_with(&[missing.to_str().unwrap(), empty.to_str().unwrap()], 1);
    assert!(
        err.contains(&format!("SOURCE {}", missing.display())),
        "{err}"
    );
    assert!(!is_mounted(&empty));
}

/// Whether `tool` is installed; under CI=true its absence fails the test.
fn have(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing (package {package}); .ci/run installs it"
        );
        eprintln!("\n!!!!! SKIPPED: {tool} missing (install {package}) !!!!!\n");
    }
    found
}

/// mount(8) runs mount.fuse3, which runs `restorefs SOURCE MOUNTPOINT -o OPTIONS` through
/// `/bin/sh` with PATH dropped (so the shell's default: /usr/local/sbin, /usr/local/bin, ...).
/// The test shows restorefs there in a private mount namespace: a bind mount over
/// /usr/local/sbin that nobody else sees.
#[test]
fn mount_t_fuse_restorefs_and_fstab() {
    if !fuse_available("mount_t_fuse_restorefs_and_fstab") || !have("mount.fuse3", "fuse3") {
        return;
    }
    let tmp = scratch();
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(bin(), bin_dir.join("restorefs")).unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cache = tmp.path().join("cache");
    let fstab = tmp.path().join("fstab");
    let src = virtnbd();
    std::fs::write(
        &fstab,
        format!(
            "{} {} fuse.restorefs noauto,nofail,_netdev,x-systemd.automount,allow_other,uid=77,cache_size=64M,cache_dir={} 0 0\n",
            src.display(),
            mnt.display(),
            cache.display()
        ),
    )
    .unwrap();
    let (path, sha) = plain_vda();
    let script = format!(
        r#"set -e
mount --bind "$BIN_DIR" /usr/local/sbin
mount -t fuse.restorefs "$SRC" "$MNT" -o allow_other,cache_size=64M,cache_dir="$CACHE",nodev,nosuid
grep " $MNT " /proc/self/mountinfo
sha256sum "$MNT/{path}"
umount "$MNT"
mount -T "$FSTAB" "$MNT"
stat -c 'owner %u' "$MNT/v1-plain"
umount "$MNT"
"#
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("BIN_DIR", &bin_dir)
        .env("SRC", &src)
        .env("MNT", &mnt)
        .env("CACHE", &cache)
        .env("FSTAB", &fstab)
        .env("XDG_CACHE_HOME", cache_home())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("fuse.restorefs restorefs:"), "{text}");
    assert!(text.contains(&format!("{sha}  ")), "{text}");
    assert!(text.contains("owner 77\n"), "{text}");
    // Unmounting with umount(8) ends the daemon.
    wait_gone(&mnt);
    assert!(!is_mounted(&mnt));
    assert!(!stderr(&out).contains("error"), "{}", stderr(&out));
}
