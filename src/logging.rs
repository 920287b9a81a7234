//! Logging: env_logger with our levels (`-q`, `-v`, `RUST_LOG`), to stderr or `--log-file`;
//! and the plain `ftpcircle-fs: warning: ...` lines meant for the user at the terminal.
//!
//! During start-up the program reports every problem to the user itself, once and plainly
//! ([`warn_user`]; one summary line when many servers fail). When the log also goes to stderr
//! at the default level, its WARN records of that phase would say the same things again in log
//! format, so they are held back until [`startup_done`]; `-v`, `RUST_LOG` and `--log-file`
//! keep them all.
//!
//! suppaftp logs every command it sends at trace level, `PASS <password>` included. That
//! target's trace records are dropped here whatever RUST_LOG says, so no password reaches a log.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{LevelFilter, Log, Metadata, Record};

/// `-q`: no warnings for the user either.
static QUIET: AtomicBool = AtomicBool::new(false);
/// Until the mount is ready.
static STARTING: AtomicBool = AtomicBool::new(true);

struct SafeLogger {
    inner: env_logger::Logger,
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
        if !held && self.enabled(record.metadata()) && !is_spurious_unmount_warning(record) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

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
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("--log-file {}: {e}", path.display()))?;
        b.target(env_logger::Target::Pipe(Box::new(file)));
    }
    let logger = b.build();
    log::set_max_level(logger.filter());
    log::set_boxed_logger(Box::new(SafeLogger {
        inner: logger,
        hold_startup_warnings: log_file.is_none() && verbosity == 0 && rust_log.is_none(),
    }))
    .map_err(|e| e.to_string())
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
