//! Logging: env_logger with our levels (`-q`, `-v`, `RUST_LOG`), to stderr, `--log-file`, or
//! (a daemon without `--log-file`) syslog; and the plain `ftpcircle-fs: warning: ...` lines
//! meant for the user at the terminal.
//!
//! During start-up the program reports every problem to the user itself, once and plainly
//! ([`warn_user`]; one summary line when many servers fail). When the log also goes to stderr
//! at the default level, its WARN records of that phase would say the same things again in log
//! format, so they are held back until [`startup_done`]; `-v`, `RUST_LOG` and `--log-file`
//! keep them all.
//!
//! Owns: the one logger of the process and where its records go.
//!
//! Invariants:
//! - suppaftp logs every command it sends at trace level, `PASS <password>` included. That
//!   target's trace records are dropped here whatever RUST_LOG says, so no password reaches a
//!   log, syslog included;
//! - records go to stderr until [`to_syslog`] is called (by the daemon once it has detached
//!   from the terminal); with `--log-file` they always go to the file, which [`reopen`]
//!   (SIGHUP) opens again by name, so logrotate can move it away.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The syslog socket. `FTPCIRCLE_SYSLOG_SOCKET` names another one (a syslog daemon listening
/// elsewhere, or a test's own socket); otherwise /dev/log, which journald and rsyslog serve.
const SYSLOG_ENV: &str = "FTPCIRCLE_SYSLOG_SOCKET";

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

/// `-q`: no warnings for the user either.
static QUIET: AtomicBool = AtomicBool::new(false);
/// Until the mount is ready.
static STARTING: AtomicBool = AtomicBool::new(true);

struct SafeLogger {
    inner: env_logger::Logger,
    syslog: Mutex<Option<Syslog>>,
    /// Log to stderr at the default level: start-up WARN records repeat [`warn_user`] lines.
    hold_startup_warnings: bool,
}

/// A warning for the user: `ftpcircle-fs: warning: MSG` on stderr, unless `-q`.
pub fn warn_user(msg: impl std::fmt::Display) {
    if !QUIET.load(Ordering::Relaxed) {
        eprintln!("ftpcircle-fs: warning: {msg}");
    }
}

/// The mount is ready: from now on the log is the only report.
pub fn startup_done() {
    STARTING.store(false, Ordering::Relaxed);
}

fn is_protocol_trace(target: &str, level: log::Level) -> bool {
    level == log::Level::Trace && target.starts_with("suppaftp")
}

/// fuser's "Failed to umount filesystem" after an unmount from outside (`fusermount3 -u`):
/// when the session ends it polls /dev/fuse to see whether the mount is still there, which
/// races the kernel's teardown, and then warns that unmounting the gone mount failed (EINVAL).
/// The daemon tracks its mount in mountinfo itself (src/mounts.rs); this record is noise.
fn is_spurious_unmount_warning(record: &Record<'_>) -> bool {
    record.level() == log::Level::Warn
        && record.target().starts_with("fuser")
        && record
            .args()
            .to_string()
            .starts_with("Failed to umount filesystem")
}

impl Log for SafeLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        !is_protocol_trace(m.target(), m.level()) && self.inner.enabled(m)
    }

    fn log(&self, record: &Record<'_>) {
        let held = self.hold_startup_warnings
            && record.level() == log::Level::Warn
            && STARTING.load(Ordering::Relaxed);
        if held || !self.enabled(record.metadata()) || is_spurious_unmount_warning(record) {
            return;
        }
        if let Ok(mut guard) = self.syslog.lock()
            && let Some(sys) = guard.as_mut()
        {
            let msg = format!("{}", record.args());
            let _ = match record.level() {
                Level::Error => sys.err(msg),
                Level::Warn => sys.warning(msg),
                Level::Info => sys.info(msg),
                Level::Debug | Level::Trace => sys.debug(msg),
            };
            return;
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// The `--log-file`, shared with the logger so SIGHUP can open it again.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }
}

/// The writer env_logger writes into: whatever file is current.
struct LogFileWriter(Arc<LogFile>);

impl Write for LogFileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.file.lock() {
            Ok(mut f) => f.write(buf),
            Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.file.lock() {
            Ok(mut f) => f.flush(),
            Err(_) => Ok(()),
        }
    }
}

static LOGGER: OnceLock<&'static SafeLogger> = OnceLock::new();
static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

/// `verbosity`: -1 quiet, 0 default (warnings), 1 info, 2 debug, 3+ trace.
pub fn init(verbosity: i8, log_file: Option<&Path>) -> Result<(), String> {
    let level = match verbosity {
        i8::MIN..=-1 => LevelFilter::Error,
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    QUIET.store(verbosity < 0, Ordering::Relaxed);
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    let rust_log = std::env::var("RUST_LOG").ok();
    if let Some(spec) = &rust_log {
        b.parse_filters(spec);
    }
    if let Some(path) = log_file {
        let file =
            LogFile::open(path).map_err(|e| format!("--log-file {}: {e}", path.display()))?;
        let shared = Arc::new(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        });
        let _ = LOG_FILE.set(Arc::clone(&shared));
        b.target(env_logger::Target::Pipe(Box::new(LogFileWriter(shared))));
    }
    let inner = b.build();
    log::set_max_level(inner.filter());
    let logger: &'static SafeLogger = Box::leak(Box::new(SafeLogger {
        inner,
        syslog: Mutex::new(None),
        hold_startup_warnings: log_file.is_none() && verbosity == 0 && rust_log.is_none(),
    }));
    let _ = LOGGER.set(logger);
    log::set_logger(logger).map_err(|e| e.to_string())
}

/// From now on, send records to syslog instead of stderr (a daemon that detached from its
/// terminal and has no `--log-file`). Returns an error naming the socket when there is no
/// syslog to send to; records then go nowhere.
pub fn to_syslog() -> Result<(), String> {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: "ftpcircle-fs".into(),
        pid: std::process::id(),
    };
    let logger = match std::env::var_os(SYSLOG_ENV) {
        Some(path) => syslog::unix_custom(formatter, &path)
            .map_err(|e| format!("syslog socket {}: {e}", Path::new(&path).display()))?,
        None => syslog::unix(formatter).map_err(|e| format!("syslog (/dev/log): {e}"))?,
    };
    if let Some(l) = LOGGER.get()
        && let Ok(mut guard) = l.syslog.lock()
    {
        *guard = Some(logger);
    }
    Ok(())
}

/// Open the `--log-file` again by name (after logrotate moved it). Without `--log-file`,
/// returns `false`.
pub fn reopen() -> Result<bool, String> {
    let Some(lf) = LOG_FILE.get() else {
        return Ok(false);
    };
    let file =
        LogFile::open(&lf.path).map_err(|e| format!("--log-file {}: {e}", lf.path.display()))?;
    if let Ok(mut guard) = lf.file.lock() {
        let _ = guard.flush();
        *guard = file;
    }
    Ok(true)
}

/// Whether a `--log-file` is in use.
pub fn has_log_file() -> bool {
    LOG_FILE.get().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppaftp_trace_is_dropped_but_its_debug_is_kept() {
        assert!(is_protocol_trace("suppaftp::sync_ftp", log::Level::Trace));
        assert!(!is_protocol_trace("suppaftp::sync_ftp", log::Level::Debug));
        assert!(!is_protocol_trace(
            "ftpcircle_fs::circle",
            log::Level::Trace
        ));
    }
}
