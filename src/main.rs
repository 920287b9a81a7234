//! CLI entry: parse arguments and serverlist.txt, set up logging, mount, serve.
//!
//! Without `-f` the process forks before anything else starts threads; the parent waits until
//! the child reports the mount ready (exit 0) or failed (its error printed, exit 1), so
//! `ftpcircle-fs mnt` returns once the mount is usable. Exit status 2 means bad input
//! (arguments or serverlist.txt) and nothing was mounted.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ftpcircle_fs::backend::Backend;
use ftpcircle_fs::circle::{self, Circle};
use ftpcircle_fs::cli::{self, Args, Parsed};
use ftpcircle_fs::ftp::conn::Endpoint;
use ftpcircle_fs::ftp::limit::ConnLimit;
use ftpcircle_fs::ftp::pool::{FtpBackend, Server};
use ftpcircle_fs::index::{self, Index};
use ftpcircle_fs::serverlist::{self, Tls};
use ftpcircle_fs::{check, ftp, fuse, logging};

mod commands;

/// glibc malloc settings, set before any thread starts.
///
/// Reads move data in 1 MiB chunks from many threads. By default glibc raises its mmap
/// threshold after the first such chunk is freed, so later chunks come from per-thread arenas
/// (up to 8 per core) and their memory stays there after being freed: a soak with parallel
/// readers reached 650 MB RSS while holding a few dozen MiB of live data. A fixed threshold
/// keeps every chunk in its own mapping, returned to the system when freed, and two arenas
/// are plenty for a daemon whose threads mostly wait on the network.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let (args, fake) = match cli::parse_env() {
        Ok(Parsed::Mount { args, fake }) => (args, fake),
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Locate(l)) => return commands::locate(&l),
        Ok(Parsed::Crawl(c)) => return commands::crawl(&c),
        Ok(Parsed::Check(check)) => return run_check(&check),
        Err(cli::Usage(msg)) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let verbosity = if args.quiet { -1 } else { args.verbose as i8 };
    if let Err(e) = logging::init(verbosity, args.log_file.as_deref()) {
        eprintln!("ftpcircle-fs: {e}");
        return ExitCode::from(2);
    }
    let list_path = match serverlist::locate(args.servers.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ftpcircle-fs: {e}");
            return ExitCode::from(2);
        }
    };
    let specs = match serverlist::load(&list_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ftpcircle-fs: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = check_args(&args) {
        eprintln!("ftpcircle-fs: {e}");
        return ExitCode::from(2);
    }
    let index_path = if args.no_index {
        None
    } else {
        match args
            .index
            .clone()
            .map_or_else(|| index::default_path(&list_path), Ok)
        {
            Ok(p) => Some(p),
            // The index is a cache: without a place for it (no $HOME under some service
            // managers) the mount goes on without it.
            Err(e) => {
                eprintln!("ftpcircle-fs: warning: {e}; mounting without a listing index");
                None
            }
        }
    };
    if fake {
        // `mount -f`: everything checked, nothing mounted.
        return ExitCode::SUCCESS;
    }
    if args.foreground {
        return match run(&args, specs, index_path.as_deref(), &mut None) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ftpcircle-fs: {e}");
                ExitCode::FAILURE
            }
        };
    }
    daemonize(&args, specs, index_path.as_deref())
}

/// `ftpcircle-fs check`: 0 every server usable, 1 not, 2 bad serverlist or CA file.
fn run_check(check: &cli::CheckArgs) -> ExitCode {
    // No logger: every problem is in the report (suppaftp would add noise on stderr).
    let specs = match serverlist::locate(check.servers.as_deref())
        .and_then(|p| serverlist::load(&p).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ftpcircle-fs: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = if specs.iter().any(|s| s.tls != Tls::Plain) {
        match ftp::tls::client_config(check.ca_file.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("ftpcircle-fs: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let reports = check::check_all(specs, tls, Duration::from_secs_f64(check.timeout));
    if check.json {
        print!("{}", check::json(&reports));
    } else {
        print!("{}", check::table(&reports));
    }
    if reports.iter().all(check::Report::usable) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check_args(args: &Args) -> Result<(), String> {
    if !(args.timeout > 0.0 && args.timeout <= 3600.0) {
        return Err("--timeout must be between 0 and 3600 seconds".into());
    }
    if !(args.cache_ttl >= 0.0 && args.cache_ttl <= 365.0 * 86400.0) {
        return Err("--cache-ttl must be between 0 and one year".into());
    }
    if args.max_connections == 0 || args.max_connections > 64 {
        return Err("--max-connections must be between 1 and 64".into());
    }
    if !(args.offline_keep >= 0.0 && args.offline_keep <= 365.0 * 86400.0) {
        return Err("--offline-keep must be between 0 and one year".into());
    }
    let name = args.control_dir.as_str();
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.len() > 255 {
        return Err(format!(
            "--control-dir {name:?}: must be one file name (not empty, `.`, `..`, no `/`)"
        ));
    }
    if args.max_total_connections < 2 || args.max_total_connections > 100_000 {
        return Err("--max-total-connections must be between 2 and 100000".into());
    }
    let meta = std::fs::metadata(args.mountpoint())
        .map_err(|e| format!("mount point {}: {e}", args.mountpoint().display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "mount point {} is not a directory",
            args.mountpoint().display()
        ));
    }
    fuse::config(&args.options)?;
    Ok(())
}

/// Fork; the child mounts and serves, the parent waits for "ready" on a pipe.
fn daemonize(
    args: &Args,
    specs: Vec<serverlist::ServerSpec>,
    index_path: Option<&std::path::Path>,
) -> ExitCode {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid two-element array for pipe(2).
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!("ftpcircle-fs: pipe: {}", std::io::Error::last_os_error());
        return ExitCode::FAILURE;
    }
    // SAFETY: both fds were just created by pipe(2) and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no threads have been started yet (logging and parsing are single-threaded), so
    // the child may continue running Rust code after fork.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("ftpcircle-fs: fork: {}", std::io::Error::last_os_error());
            ExitCode::FAILURE
        }
        0 => {
            drop(rd);
            // SAFETY: setsid has no preconditions; detaches from the terminal's session.
            unsafe { libc::setsid() };
            let mut pipe = Some(std::fs::File::from(wr));
            match run(args, specs, index_path, &mut pipe) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Before the mount was ready the parent prints it; after, the log has it.
                    match pipe.as_mut() {
                        Some(p) => {
                            let _ = p.write_all(format!("E{e}").as_bytes());
                        }
                        None => log::error!("{e}"),
                    }
                    ExitCode::FAILURE
                }
            }
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if msg.starts_with('R') {
                ExitCode::SUCCESS
            } else if let Some(err) = msg.strip_prefix('E') {
                eprintln!("ftpcircle-fs: {err}");
                ExitCode::FAILURE
            } else {
                eprintln!("ftpcircle-fs: the mount process died before the mount was ready");
                ExitCode::FAILURE
            }
        }
    }
}

/// Build everything, mount, report ready, serve until unmounted or signalled.
fn run(
    args: &Args,
    specs: Vec<serverlist::ServerSpec>,
    index_path: Option<&std::path::Path>,
    ready: &mut Option<std::fs::File>,
) -> Result<(), String> {
    let signals = block_signals();
    // The index is a cache: a mount without it still works (said on the terminal).
    let index = index_path.and_then(|p| match Index::open(p, &specs) {
        Ok((ix, warnings)) => {
            for w in warnings {
                eprintln!("ftpcircle-fs: warning: {w}");
            }
            Some(Arc::new(ix))
        }
        Err(e) => {
            eprintln!("ftpcircle-fs: warning: {e}; mounting without a listing index");
            None
        }
    });
    let timeout = Duration::from_secs_f64(args.timeout);
    let tls = if specs.iter().any(|s| s.tls != Tls::Plain) {
        Some(ftp::tls::client_config(args.ca_file.as_deref())?)
    } else {
        None
    };
    let backend = backend_of(
        specs,
        tls,
        timeout,
        args.max_connections,
        args.max_total_connections,
    );
    let circle = Arc::new(Circle::new(
        Arc::clone(&backend),
        circle::Options {
            ttl: Duration::from_secs_f64(args.cache_ttl),
            cache_entries: args.cache_entries,
            // A listing is one connect + login + command + transfer, each bounded by timeout.
            max_wait: timeout * 6,
            prefetch: !args.no_prefetch,
            index: index.clone(),
            offline_keep: Duration::from_secs_f64(args.offline_keep),
            control_dir: args.control_dir.as_bytes().to_vec(),
        },
    ));
    circle.start_revalidation();
    // Enough workers to use every spare connection (all but one per server), within reason.
    let workers = (args.max_connections.saturating_sub(1).max(1) * backend.servers()).min(16);
    circle.start_prefetch(workers);
    circle.start_reaper();
    // List the root on every server before mounting: warms the pool and the cache, and tells
    // the user right away which servers cannot be used (the mount comes up without them).
    for e in circle.check_servers() {
        eprintln!("ftpcircle-fs: warning: {e}");
    }
    let cfg = fuse::config(&args.options)?;
    let fs = fuse::CircleFs::new(Arc::clone(&circle));
    let mut session = fuser::Session::new(fs, args.mountpoint(), &cfg)
        .map_err(|e| format!("mounting on {}: {e}", args.mountpoint().display()))?;
    fuse::start_invalidator(&circle, session.notifier());
    log::info!(
        "mounted {} server(s) on {}",
        backend.servers(),
        args.mountpoint().display()
    );
    if let Some(mut pipe) = ready.take() {
        // A daemon's stderr goes away: without --log-file its log goes to syslog. Said on the
        // terminal while there still is one when there is no syslog to send to.
        if !logging::has_log_file()
            && let Err(e) = logging::to_syslog()
        {
            eprintln!("ftpcircle-fs: warning: {e}; the daemon will log nowhere (use --log-file)");
        }
        // Closing the pipe (drop) lets the parent's read end: it exits 0 on "R".
        let _ = pipe.write_all(b"R");
        drop(pipe);
        detach_stdio();
    }
    notify_systemd(b"READY=1");
    let mut unmounter = session.unmount_callable();
    if let Some(set) = signals {
        std::thread::spawn(move || {
            let mut sig = 0;
            // SAFETY: set is a valid, initialised sigset; sig is a valid out-pointer.
            unsafe { libc::sigwait(&set, &mut sig) };
            log::info!("signal {sig}: unmounting");
            if let Err(e) = unmounter.unmount() {
                log::warn!("unmount: {e}");
            }
        });
    }
    let served = session.run().map_err(|e| format!("FUSE session: {e}"));
    // Whatever listings are still queued are written before the process ends.
    if let Some(ix) = &index {
        ix.close();
    }
    served
}

/// The FTP backend for `specs`.
fn backend_of(
    specs: Vec<serverlist::ServerSpec>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    max_connections: usize,
    max_total_connections: usize,
) -> Arc<dyn Backend> {
    let limit = ConnLimit::new(max_total_connections);
    let servers: Vec<Arc<Server>> = specs
        .into_iter()
        .map(|spec| {
            let tls = if spec.tls == Tls::Plain {
                None
            } else {
                tls.clone()
            };
            Server::new(Endpoint::new(spec, tls, timeout), max_connections, &limit)
        })
        .collect();
    Arc::new(FtpBackend::new(servers))
}

/// Tell systemd (a `Type=notify` service) how the mount is doing: `READY=1` once it is usable.
/// Does nothing unless systemd set `NOTIFY_SOCKET` (a path, or `@name` in the abstract
/// namespace).
fn notify_systemd(state: &[u8]) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state, &addr));
    if let Err(e) = sent {
        log::warn!("telling systemd we are ready (NOTIFY_SOCKET): {e}");
    }
}

/// Block SIGINT/SIGTERM/SIGHUP in this thread (and so in every thread started after it), so
/// one dedicated thread can wait for them and unmount cleanly.
fn block_signals() -> Option<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; pthread_sigmask
    // only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return None;
        }
        Some(set)
    }
}

/// A daemon must not hold the terminal: point stdin/stdout/stderr at /dev/null.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors with a valid open fd.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
