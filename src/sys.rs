//! Every call that needs `unsafe` (mmap and libc) lives here; the rest of the crate forbids it.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use memmap2::{Advice, Mmap, MmapOptions, UncheckedAdvice};

/// Maps a whole file read-only; `None` for an empty file (mmap cannot map zero bytes).
pub fn map_file(file: &File, len: u64) -> io::Result<Option<Mmap>> {
    if len == 0 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
    // SAFETY: the mapping is read-only and private to us. Backup files are not modified while
    // served (restorefs never writes them); a file truncated underneath us would raise SIGBUS,
    // a risk documented in README.md and shared by every mmap-based reader.
    let map = unsafe { MmapOptions::new().len(len).map(file)? };
    // Page faults read just their page: indexing touches one header per frame, and reads
    // prefetch exactly what they serve. Failing advice is harmless.
    let _ = map.advise(Advice::Random);
    Ok(Some(map))
}

/// Starts reading `len` bytes at `offset` of the mapping into the page cache (one large read
/// instead of a page fault per 4 KiB). Advice only: failures are ignored.
pub fn prefetch(map: &Mmap, offset: usize, len: usize) {
    let page = 4096;
    let start = offset / page * page;
    let end = (offset + len).min(map.len());
    if start < end {
        let _ = map.advise_range(Advice::WillNeed, start, end - start);
    }
}

/// Drops the mapping's page-table entries: the pages stay in the page cache (a later access
/// maps them again), but stop counting in this process's resident set.
pub fn release(map: &Mmap) {
    // SAFETY: the mapping is a private, read-only mapping of a file we never write; after
    // MADV_DONTNEED an access faults the same file contents back in, so every slice of it
    // (even one being read by another thread right now) keeps reading the same bytes.
    let _ = unsafe { map.unchecked_advise(UncheckedAdvice::DontNeed) };
}

/// `lseek(SEEK_DATA)`: the first offset >= `offset` holding data, `None` past the last data.
pub fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_DATA)
}

/// `lseek(SEEK_HOLE)`: the first offset >= `offset` in a hole (EOF counts as a hole).
pub fn seek_hole(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_HOLE)
}

fn seek(file: &File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a file descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(err);
    }
    Ok(Some(r as u64))
}

/// Makes the allocator give large blocks (decoded chunks, rebuilt files) their own mappings,
/// returned to the kernel when freed. glibc otherwise raises its threshold after the first
/// large free and keeps later ones in its heap, where freed chunks stay resident: the
/// process would grow well past the cache's bound.
pub fn return_large_frees() {
    // SAFETY: mallopt only sets allocator tunables; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// Unmounts `path`: at once (EBUSY while in use), or `lazy` like `umount -l` (also a mount
/// whose FUSE daemon died).
pub fn unmount(path: &Path, lazy: bool) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let r = unsafe { libc::umount2(c.as_ptr(), flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the modification time of the symlink `path` itself (`utimensat` with
/// `AT_SYMLINK_NOFOLLOW`; std sets times only through open files, which follow links).
pub fn set_symlink_mtime(path: &Path, mtime: std::time::SystemTime) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let since = |t: std::time::SystemTime| match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
        Err(e) => {
            let d = e.duration();
            let nanos = i64::from(d.subsec_nanos());
            let secs = -(d.as_secs() as i64);
            if nanos == 0 {
                (secs, 0)
            } else {
                (secs - 1, 1_000_000_000 - nanos)
            }
        }
    };
    let (secs, nanos) = since(mtime);
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
    ];
    // SAFETY: `c` is a valid NUL-terminated string and `times` two timespecs, both outliving
    // the call.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The effective group id of this process.
pub fn egid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// A pipe whose write end a child process inherits (for `--daemon` to hear back from its
/// daemon): the read end, and the write end, which stays open across `exec`.
pub fn inheritable_pipe() -> io::Result<(io::PipeReader, io::PipeWriter)> {
    let (reader, writer) = io::pipe()?;
    // SAFETY: F_SETFD on a descriptor we own; clearing FD_CLOEXEC only lets a child inherit it.
    let r = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETFD, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((reader, writer))
}

/// Takes ownership of descriptor `fd`, inherited from the parent process (whose `--daemon`
/// waits on it). Fails unless it is an open pipe; closed on `exec` from now on.
pub fn take_inherited_pipe(fd: i32) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileTypeExt;
    if fd <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_SETFD only sets a flag of the descriptor; it fails with EBADF if not open.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above), was inherited from the parent for this
    // purpose, and nothing else in this process owns it: this is called once, at start-up.
    let file = unsafe { File::from_raw_fd(fd) };
    if !file.metadata()?.file_type().is_fifo() {
        // Not ours after all: leave the descriptor open for whoever owns it.
        std::mem::forget(file);
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(file)
}

/// Starts a new session: the daemon leaves its parent's terminal and process group.
pub fn setsid() {
    // SAFETY: setsid has no memory arguments; failing (already a group leader) is harmless.
    unsafe {
        libc::setsid();
    }
}

/// Lowers the calling thread's scheduling priority by `by` nice steps (Linux keeps a nice
/// value per thread), so that work done ahead yields to threads a reader is waiting for.
pub fn lower_thread_priority(by: i32) {
    // SAFETY: gettid and setpriority take no memory arguments; failing leaves the priority be.
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, now + by);
    }
}
