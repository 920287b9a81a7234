//! Logging: env_logger with our levels (`-q`, `-v`, `RUST_LOG`), to stderr or `--log-file`.
//!
//! suppaftp logs every command it sends at trace level, `PASS <password>` included. That
//! target's trace records are dropped here whatever RUST_LOG says, so no password reaches a log.

use std::fs::OpenOptions;
use std::path::Path;

use log::{LevelFilter, Log, Metadata, Record};

struct SafeLogger(env_logger::Logger);

fn is_protocol_trace(target: &str, level: log::Level) -> bool {
    level == log::Level::Trace && target.starts_with("suppaftp")
}

impl Log for SafeLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        !is_protocol_trace(m.target(), m.level()) && self.0.enabled(m)
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
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
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
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
    log::set_boxed_logger(Box::new(SafeLogger(logger))).map_err(|e| e.to_string())
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
