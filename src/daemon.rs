//! Running in the background (`mount --daemon`, the `mount -t fuse.restorefs` form) and where
//! logs go. The parent runs this same command line again as a child in a new session, with the
//! write end of a pipe whose number is in `RESTOREFS_READY_FD` (no `fork` in a threaded
//! process); the child writes `ready` once the mount answers, or its error, and the parent exits
//! with the child's verdict.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::sys;

/// Names the descriptor a daemon child reports readiness on.
pub const READY_FD_ENV: &str = "RESTOREFS_READY_FD";

/// What the child writes once the mount answers.
const READY: &str = "ready\n";

/// In the parent: starts this command line again as a detached child and waits until it is
/// ready (exit 0) or has failed (its message on stderr, its exit status).
pub fn spawn_and_wait() -> Result<ExitCode> {
    let exe = std::env::current_exe().map_err(|e| Error::io(Path::new("/proc/self/exe"), &e))?;
    let (mut reader, writer) =
        sys::inheritable_pipe().map_err(|e| Error::io(Path::new("pipe"), &e))?;
    let mut child = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(READY_FD_ENV, writer.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io(&exe, &e).context("starting the daemon"))?;
    drop(writer);
    // EOF comes when the child closes its end: after `ready`, or when it exits.
    let mut said = String::new();
    let read = reader.read_to_string(&mut said);
    if read.is_ok() && said == READY {
        return Ok(ExitCode::SUCCESS);
    }
    let status = child
        .wait()
        .map_err(|e| Error::io(&exe, &e).context("waiting for the daemon"))?;
    let said = said.trim_end();
    if said.is_empty() {
        eprintln!("restorefs: error: the daemon exited ({status}) before the mount was ready");
    } else {
        eprintln!("{said}");
    }
    let code = status.code().filter(|&c| c != 0).unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// In a daemon child: the pipe to the waiting parent (taken from the environment once).
#[derive(Clone, Default)]
pub struct Report(Arc<Mutex<Option<File>>>);

impl Report {
    /// The parent's pipe when this process is a daemon child (it then leaves the parent's
    /// session); `None` otherwise.
    pub fn from_env() -> Option<Report> {
        let fd: i32 = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
        match sys::take_inherited_pipe(fd) {
            Ok(f) => {
                sys::setsid();
                Some(Report(Arc::new(Mutex::new(Some(f)))))
            }
            Err(e) => {
                log::warn!("{READY_FD_ENV}={fd}: {e}; not reporting to a parent");
                None
            }
        }
    }

    /// Tells the parent the mount answers; it exits 0.
    pub fn ready(&self) {
        self.send(READY);
    }

    /// Tells the parent why this failed (once; later calls do nothing).
    pub fn failed(&self, message: &str) {
        self.send(&format!("{message}\n"));
    }

    fn send(&self, text: &str) {
        let taken = self.0.lock().map(|mut g| g.take());
        if let Ok(Some(mut f)) = taken {
            // The parent may be gone (killed): nobody is left to tell.
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// Where log lines go.
pub enum LogTarget {
    /// The terminal (stderr).
    Stderr,
    /// Appended to a file (`--log-file`).
    File(File),
    /// The system log (`/dev/log`), or nowhere when there is none.
    Syslog,
}

/// Sets up logging: `RUST_LOG` when set, else the level `verbosity` gives (-1 for `-q`).
pub fn init_logging(verbosity: i8, target: LogTarget) {
    let level = match verbosity {
        i8::MIN..=-1 => "error",
        0 => "warn,fuser::session=error",
        1 => "info,fuser=warn",
        2 => "debug,fuser=info",
        _ => "trace",
    };
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    match target {
        LogTarget::Stderr => {}
        LogTarget::File(f) => {
            b.target(env_logger::Target::Pipe(Box::new(f)))
                .write_style(env_logger::WriteStyle::Never);
        }
        LogTarget::Syslog => {
            let pid = std::process::id();
            b.format(move |buf, record| {
                // RFC 3164 priority: facility daemon (3), then the severity.
                let severity = match record.level() {
                    log::Level::Error => 3,
                    log::Level::Warn => 4,
                    log::Level::Info => 6,
                    log::Level::Debug | log::Level::Trace => 7,
                };
                writeln!(
                    buf,
                    "<{}>restorefs[{pid}]: {}",
                    3 * 8 + severity,
                    record.args()
                )
            })
            .target(env_logger::Target::Pipe(Box::new(Syslog::connect())))
            .write_style(env_logger::WriteStyle::Never);
        }
    }
    b.init();
}

/// One datagram per log record to `/dev/log`; records are dropped when there is no syslog.
struct Syslog(Option<UnixDatagram>);

impl Syslog {
    fn connect() -> Syslog {
        let sock = UnixDatagram::unbound().and_then(|s| s.connect("/dev/log").map(|()| s));
        Syslog(sock.ok())
    }
}

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(s) = &self.0 {
            let record = buf.strip_suffix(b"\n").unwrap_or(buf);
            // A full or restarted syslog loses the line; the daemon goes on.
            let _ = s.send(record);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_sends_one_datagram_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.connect(&path).unwrap();
        let mut w = Syslog(Some(client));
        w.write_all(b"<27>restorefs[1]: line one\n").unwrap();
        let mut buf = [0u8; 100];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<27>restorefs[1]: line one");
        // Without a syslog, records vanish without an error.
        assert!(Syslog(None).write_all(b"x\n").is_ok());
    }
}
