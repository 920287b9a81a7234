//! One error type for the whole filesystem, one errno mapping, deliberate log levels.
//!
//! Every failure a FUSE handler can see is an [`Error`]. The FTP side produces them with the
//! server's label already in the message (never a password), the merged view adds the path,
//! and the FUSE adapter only calls [`Error::errno`].

use std::fmt;

/// What went wrong, coarse enough to choose an errno and a log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The name does not exist (ENOENT). Logged at debug: `find` and shells probe names all day.
    NotFound,
    /// A path goes through something that is not a directory (ENOTDIR).
    NotDir,
    /// A directory where a file was wanted (EISDIR).
    IsDir,
    /// A symlink where a file was wanted: what `open(O_NOFOLLOW)` of a symlink gives (ELOOP).
    IsSymlink,
    /// No extended attribute of that name (ENODATA).
    NoAttr,
    /// A file handle we never gave out or that was released (EBADF).
    BadHandle,
    /// Two copies served as mirrors turned out to differ (a splice check or their hashes): the
    /// read fails rather than join bytes of two different files (EIO).
    Mismatch,
    /// A write-side call on a read-only mount (EROFS).
    ReadOnly,
    /// Could not connect, TLS failed, connection dropped (EIO).
    Network,
    /// The server did not answer within `--timeout` (EIO).
    Timeout,
    /// The server refused to log us in (EACCES on the call that needed it).
    Auth,
    /// The server answered with something we cannot use: a short transfer, a bad reply (EIO).
    Protocol,
    /// Too many connections (421/530): retried after backoff by the pool; EAGAIN if it persists.
    Busy,
    /// A name or argument we refuse to send (CR/LF, not representable) (EINVAL).
    Invalid,
    /// The server has no copy we can use right now, or is marked down (EIO).
    Unavailable,
    /// The server refuses REST, so it cannot start a transfer at an offset (EIO if no way out).
    NoRest,
    /// The file on the server no longer matches its listing (size changed) (EIO).
    Stale,
    /// A reply on the control connection was too large to read (a STAT listing of a huge
    /// directory); the connection is out of step and the listing is retried another way.
    TooLarge,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn not_found() -> Self {
        Error::new(Kind::NotFound, "no such file or directory")
    }

    pub fn errno(&self) -> i32 {
        match self.kind {
            Kind::NotFound => libc::ENOENT,
            Kind::NotDir => libc::ENOTDIR,
            Kind::IsDir => libc::EISDIR,
            Kind::IsSymlink => libc::ELOOP,
            Kind::BadHandle => libc::EBADF,
            Kind::NoAttr => libc::ENODATA,
            Kind::ReadOnly => libc::EROFS,
            Kind::Network
            | Kind::Timeout
            | Kind::Protocol
            | Kind::Unavailable
            | Kind::NoRest
            | Kind::Stale
            | Kind::Mismatch
            | Kind::TooLarge => libc::EIO,
            Kind::Auth => libc::EACCES,
            Kind::Busy => libc::EAGAIN,
            Kind::Invalid => libc::EINVAL,
        }
    }

    /// The level this error deserves in the log when a request fails with it.
    pub fn log_level(&self) -> log::Level {
        match self.kind {
            Kind::NotFound
            | Kind::NotDir
            | Kind::IsDir
            | Kind::IsSymlink
            | Kind::BadHandle
            | Kind::NoAttr
            | Kind::ReadOnly
            | Kind::Invalid
            | Kind::NoRest => log::Level::Debug,
            Kind::Busy => log::Level::Info,
            _ => log::Level::Warn,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
