//! One error type for the whole crate: it names the file, the byte offset and the cause, and maps
//! to an errno at the FUSE edge.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What went wrong, coarsely: decides the errno and the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The backup data is damaged or is not what its format promises.
    Corrupt,
    /// An operating-system call failed with this errno.
    Io(i32),
    /// A path, point or file does not exist.
    NotFound,
    /// Valid input that restorefs does not serve (yet), or that needs something not given.
    Unsupported,
    /// The user asked for something impossible.
    Usage,
}

/// An error with its context: the file it is about and the byte offset in that file, when known.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    file: Option<PathBuf>,
    offset: Option<u64>,
    msg: String,
    /// The operating-system error behind an I/O failure (shared: errors are cloned into every
    /// point they fail).
    source: Option<Arc<io::Error>>,
}

/// Result with the crate's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Damaged input in `file` at byte `offset`.
    pub fn corrupt(file: &Path, offset: u64, msg: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Corrupt,
            file: Some(file.to_path_buf()),
            offset: Some(offset),
            msg: msg.into(),
            source: None,
        }
    }

    /// An I/O error while working on `file`.
    pub fn io(file: &Path, err: &io::Error) -> Self {
        Error {
            kind: ErrorKind::Io(err.raw_os_error().unwrap_or(libc::EIO)),
            file: Some(file.to_path_buf()),
            offset: None,
            msg: err.to_string(),
            // Callers lend the error; an equal one is kept (the errno, or the kind and text).
            source: Some(Arc::new(match err.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(err.kind(), err.to_string()),
            })),
        }
    }

    /// A plain errno with a message (for answers like ENXIO that are not failures of a file).
    pub fn from_errno(errno: i32, msg: impl Into<String>) -> Self {
        Self::plain(ErrorKind::Io(errno), msg)
    }

    /// Something named by the user or a backup does not exist.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::plain(ErrorKind::NotFound, msg)
    }

    /// Valid input that restorefs does not serve.
    pub fn unsupported(file: &Path, msg: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Unsupported,
            file: Some(file.to_path_buf()),
            offset: None,
            msg: msg.into(),
            source: None,
        }
    }

    /// A bad argument or request.
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::plain(ErrorKind::Usage, msg)
    }

    fn plain(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            file: None,
            offset: None,
            msg: msg.into(),
            source: None,
        }
    }

    /// The same error, prefixed with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The coarse kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file the error is about.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The byte offset in that file.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The errno a kernel request failing with this error answers.
    pub fn errno(&self) -> i32 {
        match self.kind {
            ErrorKind::Corrupt | ErrorKind::Unsupported => libc::EIO,
            ErrorKind::Io(e) => e,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Usage => libc::EINVAL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(offset) = self.offset {
            write!(f, "at offset {offset}: ")?;
        }
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_and_offset() {
        let e = Error::corrupt(Path::new("/b/vda.full.data"), 4096, "bad frame");
        assert_eq!(e.to_string(), "/b/vda.full.data: at offset 4096: bad frame");
        assert_eq!(e.errno(), libc::EIO);
        let e = e.context("reading vda.raw");
        assert!(e.to_string().ends_with("reading vda.raw: bad frame"));
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let io = io::Error::from_raw_os_error(libc::ENOSPC);
        let e = Error::io(Path::new("x"), &io);
        assert_eq!(e.errno(), libc::ENOSPC);
        let e = e.context("writing");
        let source = std::error::Error::source(&e).unwrap();
        assert_eq!(source.to_string(), io.to_string());
    }
}
