//! CLI entry: parse arguments and serverlist.txt, set up logging, mount, serve.
//!
//! Without `-f` the process forks before anything else starts threads; the parent waits until
//! the child reports the mount ready (exit 0) or failed (its error printed, exit 1), so
//! `ftpcircle-fs mnt` returns once the mount is usable. Exit status 2 means bad input
//! (arguments, serverlist.txt, the mount point) and nothing was mounted; 128 + N that signal N
//! (a Ctrl-C reaching the waiting parent is passed on to the child) stopped the start-up.
//!
//! After that, one main thread waits for events from small watcher threads: signals, the
//! FUSE session's end, and changes of this namespace's mount table. It always ends the
//! process within a bound (`STOP_LIMIT`), even when the kernel keeps the FUSE connection
//! alive for a copy of the mount in another mount namespace: exiting closes /dev/fuse, which
//! aborts the connection, so such copies answer ENOTCONN instead of hanging.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use ftpcircle_fs::backend::Backend;
use ftpcircle_fs::circle::{self, Circle};
use ftpcircle_fs::cli::{self, Args, Parsed};
use ftpcircle_fs::ftp::conn::Endpoint;
use ftpcircle_fs::ftp::limit::ConnLimit;
use ftpcircle_fs::ftp::pool::{FtpBackend, Server};
use ftpcircle_fs::index::{self, Index};
use ftpcircle_fs::serverlist::{self, Tls};
use ftpcircle_fs::{check, ftp, fuse, logging, mounts, preflight};

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

/// Why the program stops without serving: the message for the terminal and the exit status.
struct Failure {
    status: u8,
    message: String,
}

impl Failure {
    /// Mounting failed (status 1).
    fn mount(message: impl Into<String>) -> Failure {
        Failure {
            status: 1,
            message: message.into(),
        }
    }

    /// Bad arguments; nothing was mounted (status 2).
    fn input(message: impl Into<String>) -> Failure {
        Failure {
            status: 2,
            message: message.into(),
        }
    }

    /// Interrupted by a signal before the mount was ready (status 128 + signal, as shells do).
    fn interrupted(sig: i32, what: &str) -> Failure {
        Failure {
            status: 128 + sig.clamp(0, 127) as u8,
            message: format!("interrupted by signal {sig} {what}; nothing is mounted"),
        }
    }

    fn exit(self) -> ExitCode {
        eprintln!("ftpcircle-fs: {}", self.message);
        ExitCode::from(self.status)
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let (args, fake) = match cli::parse_env() {
        Ok(Parsed::Mount { args, fake }) => (args, fake),
        Ok(Parsed::Check(check)) => return run_check(&check),
        Ok(Parsed::Locate(l)) => return commands::locate(&l),
        Ok(Parsed::Crawl(c)) => return commands::crawl(&c),
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(cli::Usage(msg)) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let verbosity = if args.quiet { -1 } else { args.verbose as i8 };
    if let Err(e) = logging::init(verbosity, args.log_file.as_deref()) {
        return Failure::input(e).exit();
    }
    let list_path = match serverlist::locate(args.servers.as_deref()) {
        Ok(p) => p,
        Err(e) => return Failure::input(e).exit(),
    };
    let specs = match serverlist::load(&list_path) {
        Ok(s) => s,
        Err(e) => return Failure::input(e.to_string()).exit(),
    };
    if let Err(e) = check_args(&args) {
        return e.exit();
    }
    if fake {
        // `mount -f`: everything checked, nothing mounted.
        return ExitCode::SUCCESS;
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
                logging::warn_user(format!("{e}; mounting without a listing index"));
                None
            }
        }
    };
    if args.foreground {
        return match run(&args, specs, index_path.as_deref(), &mut None) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => e.exit(),
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

fn check_args(args: &Args) -> Result<(), Failure> {
    if !(args.timeout > 0.0 && args.timeout <= 3600.0) {
        return Err(Failure::input(
            "--timeout must be between 0 and 3600 seconds",
        ));
    }
    if !(args.cache_ttl >= 0.0 && args.cache_ttl <= 365.0 * 86400.0) {
        return Err(Failure::input("--cache-ttl must be between 0 and one year"));
    }
    if args.max_connections == 0 || args.max_connections > 64 {
        return Err(Failure::input("--max-connections must be between 1 and 64"));
    }
    if args.max_streams_per_file == 0 || args.max_streams_per_file > 64 {
        return Err(Failure::input(
            "--max-streams-per-file must be between 1 and 64",
        ));
    }
    if args.max_total_connections < 2 || args.max_total_connections > 100_000 {
        return Err(Failure::input(
            "--max-total-connections must be between 2 and 100000",
        ));
    }
    if !(args.offline_keep >= 0.0 && args.offline_keep <= 365.0 * 86400.0) {
        return Err(Failure::input(
            "--offline-keep must be between 0 and one year",
        ));
    }
    let name = args.control_dir.as_str();
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.len() > 255 {
        return Err(Failure::input(format!(
            "--control-dir {name:?}: must be one file name (not empty, `.`, `..`, no `/`)"
        )));
    }
    fuse::config(&args.options).map_err(Failure::input)?;
    preflight::mount_point(args.mountpoint(), fuse::nonempty_allowed(&args.options))
        .map_err(Failure::input)?;
    preflight::fuse_device().map_err(Failure::mount)?;
    preflight::mount_helper().map_err(Failure::mount)?;
    Ok(())
}

/// The parent's child, for [`forward_signal`]; 0 until forked.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// The parent's handler while it waits: a Ctrl-C meant for `ftpcircle-fs mnt` reaches only the
/// parent (the child has its own session), so pass it on; the child then stops and reports.
extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
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
        return Failure::mount(format!("pipe: {}", std::io::Error::last_os_error())).exit();
    }
    // SAFETY: both fds were just created by pipe(2) and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Blocked across the fork: the child inherits the mask, so a signal forwarded before its
    // signal thread runs waits instead of killing it.
    let blocked = block_signals();
    // SAFETY: no threads have been started yet (logging and parsing are single-threaded), so
    // the child may continue running Rust code after fork.
    match unsafe { libc::fork() } {
        -1 => Failure::mount(format!("fork: {}", std::io::Error::last_os_error())).exit(),
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
                            let _ = p.write_all(format!("E{} {}", e.status, e.message).as_bytes());
                        }
                        None => log::error!("{}", e.message),
                    }
                    ExitCode::from(e.status)
                }
            }
        }
        child => {
            drop(wr);
            CHILD.store(child, Ordering::SeqCst);
            // SAFETY: installs a handler that only calls kill(2); then restores the mask.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = forward_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                for sig in STOP_SIGNALS {
                    libc::sigaction(sig, &sa, std::ptr::null_mut());
                }
                if let Some(set) = blocked {
                    libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                }
            }
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if msg.starts_with('R') {
                return ExitCode::SUCCESS;
            }
            let failure = msg.strip_prefix('E').and_then(|m| {
                let (status, message) = m.split_once(' ')?;
                Some(Failure {
                    status: status.parse().ok()?,
                    message: message.to_string(),
                })
            });
            failure
                .unwrap_or_else(|| {
                    Failure::mount("the mount process died before the mount was ready")
                })
                .exit()
        }
    }
}

/// What the main thread waits for, from the threads that watch the outside world.
enum Event {
    /// SIGINT, SIGTERM or SIGHUP.
    Signal(i32),
    /// The start-up listing of every server's root finished: the servers that failed.
    Checked(Vec<ftpcircle_fs::error::Error>),
    /// The FUSE session ended (the kernel closed the connection).
    Ended(std::io::Result<()>),
    /// The mount table may have changed (also sent every `MOUNTINFO_RECHECK` regardless).
    MountTable,
    /// Our own unmount finished.
    Detached(Result<(), String>),
}

/// At most this many unusable servers are named one by one at start-up; more are summed up
/// in one line (a list of hundreds of mirrors must not print hundreds of warnings), and the
/// log has each one with its reason.
const NAMED_AT_STARTUP: usize = 5;
/// How often the mount table is read again even without a change notice: a fallback only,
/// since mountinfo reports changes at once.
const MOUNTINFO_RECHECK: Duration = Duration::from_secs(5);
/// After an unmount, the kernel aborts the connection at once unless something else still
/// holds it (a copy of the mount in another namespace, files open on a lazily detached
/// mount), and the session ends within milliseconds. A connection still alive after this is
/// held elsewhere; 1 s leaves room for a loaded machine.
const SESSION_END_GRACE: Duration = Duration::from_secs(1);
/// Once stopping, the process ends within this whatever happens (a slow session end, an
/// unmount that hangs): exiting closes /dev/fuse, which aborts the connection.
const STOP_LIMIT: Duration = Duration::from_secs(5);

const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Build everything, list every server's root, mount, report ready, serve until the mount is
/// gone or a signal asks to stop.
fn run(
    args: &Args,
    specs: Vec<serverlist::ServerSpec>,
    index_path: Option<&std::path::Path>,
    ready: &mut Option<std::fs::File>,
) -> Result<(), Failure> {
    let signals = block_signals();
    let (tx, rx) = mpsc::channel::<Event>();
    if let Some(set) = signals {
        let tx = tx.clone();
        std::thread::spawn(move || {
            loop {
                let mut sig = 0;
                // SAFETY: set is a valid, initialised sigset; sig is a valid out-pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                if tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
        });
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let tls = if specs.iter().any(|s| s.tls != Tls::Plain) {
        Some(ftp::tls::client_config(args.ca_file.as_deref()).map_err(Failure::mount)?)
    } else {
        None
    };
    // The index is a cache: a mount without it still works (said on the terminal). Opened
    // after the signals are blocked, so its writer thread never takes SIGINT/SIGTERM.
    let index = index_path.and_then(|p| match Index::open(p, &specs) {
        Ok((ix, warnings)) => {
            for w in warnings {
                logging::warn_user(w);
            }
            Some(Arc::new(ix))
        }
        Err(e) => {
            logging::warn_user(format!("{e}; mounting without a listing index"));
            None
        }
    });
    // Whatever listings are still queued are written before `run` returns, on every path.
    let _flush_index = CloseIndex(index.clone());
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
            segments: circle::segments::SegmentOptions {
                enabled: !args.no_segmented_reads,
                max_streams: args.max_streams_per_file,
                ..Default::default()
            },
            offline_keep: Duration::from_secs_f64(args.offline_keep),
            control_dir: args.control_dir.as_bytes().to_vec(),
            index: index.clone(),
        },
    ));
    // Enough workers to use every spare connection (all but one per server), within reason.
    let workers = (args.max_connections.saturating_sub(1).max(1) * backend.servers()).min(16);
    circle.start_prefetch(workers);
    circle.start_reaper();
    circle.start_revalidation();
    // List the root on every server before mounting: warms the pool and the cache, and tells
    // the user right away which servers cannot be used (the mount comes up without them).
    // On its own thread, so that Ctrl-C need not wait for slow servers.
    {
        let circle = Arc::clone(&circle);
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Event::Checked(circle.check_servers()));
        });
    }
    loop {
        match rx.recv() {
            Ok(Event::Checked(failed)) => {
                report_unusable(&failed, backend.servers());
                // The root is listed: build the rest of the tree from the index while the
                // mount comes up, ahead of the first walker.
                circle.start_preload();
                break;
            }
            Ok(Event::Signal(sig)) => {
                return Err(Failure::interrupted(
                    sig,
                    "while listing the servers at start-up",
                ));
            }
            Ok(_) => {}
            Err(_) => return Err(Failure::mount("start-up listing thread lost")),
        }
    }
    let cfg = fuse::config(&args.options).map_err(Failure::input)?;
    let fs = fuse::CircleFs::new(Arc::clone(&circle));
    let mounted = fuse::mount(fs, args.mountpoint(), &cfg)
        .map_err(|e| Failure::mount(preflight::explain_mount_error(args.mountpoint(), &e)))?;
    mounted.start_invalidator(&circle);
    let mnt = mounts::absolute(args.mountpoint());
    // Our mount as this namespace's table shows it: how we tell later whether it is still here.
    let ours = mounts::read()
        .ok()
        .and_then(|t| mounts::top_at(&t, &mnt).cloned());
    if ours.is_none() {
        log::warn!(
            "{} is not in /proc/self/mountinfo; an unmount seen only here will not be noticed",
            mnt.display()
        );
    }
    let (conn, unmounter) = {
        let tx = tx.clone();
        mounted
            .serve(move |r| {
                let _ = tx.send(Event::Ended(r));
            })
            .map_err(|e| Failure::mount(format!("starting the FUSE session: {e}")))?
    };
    let mut unmounter = Some(unmounter);
    match mounts::Watcher::open() {
        Ok(w) => {
            let tx = tx.clone();
            std::thread::spawn(move || {
                loop {
                    w.wait(MOUNTINFO_RECHECK);
                    if tx.send(Event::MountTable).is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => log::warn!(
            "cannot watch /proc/self/mountinfo ({e}); an unmount seen only here may leave the daemon running"
        ),
    }
    log::info!(
        "mounted {} server(s) on {}",
        backend.servers(),
        args.mountpoint().display()
    );
    // A signal that came while mounting: stop before telling anyone the mount is ready.
    // Other early events go back in the queue for the loop below.
    let mut early = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        let Event::Signal(sig) = ev else {
            early.push(ev);
            continue;
        };
        stop(
            &rx,
            &tx,
            &conn,
            unmounter.take(),
            &mnt,
            ours.as_ref(),
            Some(sig),
        );
        return Err(Failure::interrupted(sig, "while mounting"));
    }
    for ev in early {
        let _ = tx.send(ev);
    }
    if let Some(mut pipe) = ready.take() {
        // A daemon's stderr goes away: without --log-file its log goes to syslog. Said on the
        // terminal while there still is one when there is no syslog to send to.
        if !logging::has_log_file()
            && let Err(e) = logging::to_syslog()
        {
            logging::warn_user(format_args!(
                "{e}; the daemon will log nowhere (use --log-file)"
            ));
        }
        // Closing the pipe (drop) lets the parent's read end: it exits 0 on "R".
        let _ = pipe.write_all(b"R");
        drop(pipe);
        detach_stdio();
    }
    // Only now: a daemon's stderr is /dev/null (its log syslog) from here on.
    logging::startup_done();
    notify_systemd(b"READY=1");
    loop {
        match rx.recv() {
            Ok(Event::Ended(r)) => {
                return r.map_err(|e| Failure::mount(format!("FUSE session: {e}")));
            }
            // logrotate's convention: SIGHUP asks a daemon to open its log file again (it
            // was moved away). Without --log-file there is nothing to reopen, and SIGHUP
            // ends the mount like SIGTERM.
            Ok(Event::Signal(libc::SIGHUP)) if logging::has_log_file() => match logging::reopen() {
                Ok(_) => log::info!("SIGHUP: log file opened again"),
                Err(e) => log::error!("SIGHUP: {e}"),
            },
            Ok(Event::Signal(sig)) => {
                log::info!("signal {sig}: unmounting {}", mnt.display());
                stop(
                    &rx,
                    &tx,
                    &conn,
                    unmounter.take(),
                    &mnt,
                    ours.as_ref(),
                    Some(sig),
                );
                return Ok(());
            }
            Ok(Event::MountTable) => {
                if ours.as_ref().is_some_and(|o| !still_mounted(o)) {
                    stop(&rx, &tx, &conn, None, &mnt, ours.as_ref(), None);
                    return Ok(());
                }
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
}

/// Say which servers cannot be used (each once; one summary line when there are many), and
/// say plainly when none can.
fn report_unusable(failed: &[ftpcircle_fs::error::Error], servers: usize) {
    if failed.len() <= NAMED_AT_STARTUP {
        for e in failed {
            logging::warn_user(e);
        }
    } else {
        logging::warn_user(format!(
            "{} of {servers} servers cannot be used, e.g. {}; the log names each one and why \
             (--log-file FILE, or -v with -f)",
            failed.len(),
            failed[0]
        ));
        for e in failed {
            log::warn!("cannot be used at start-up: {e}");
        }
    }
    if !failed.is_empty() && failed.len() == servers {
        logging::warn_user(
            "no server answered; the mount stays empty until one does; retrying in the background",
        );
    } else if !failed.is_empty() {
        logging::warn_user("mounting without them; they are retried in the background");
    }
}

/// Is our mount still in this namespace's mount table? (If the table cannot be read, assume so.)
fn still_mounted(ours: &mounts::MountEntry) -> bool {
    mounts::read().map_or(true, |t| {
        t.iter()
            .any(|e| e.id == ours.id && e.mount_point == ours.mount_point)
    })
}

/// End the daemon: unmount if a signal asked and the mount is still here, then wait (bounded)
/// for the session to end by itself. If the kernel keeps the connection alive (a copy of the
/// mount in another namespace), return anyway: the process exit closes /dev/fuse, which
/// aborts the connection, so the copy answers ENOTCONN instead of hanging.
fn stop(
    rx: &mpsc::Receiver<Event>,
    tx: &mpsc::Sender<Event>,
    conn: &fuse::Connection,
    unmounter: Option<fuse::Unmounter>,
    mnt: &std::path::Path,
    ours: Option<&mounts::MountEntry>,
    signal: Option<i32>,
) {
    let started = Instant::now();
    let mut detaching = false;
    let here = ours.is_none_or(still_mounted);
    if signal.is_some() && here {
        detaching = true;
        let tx = tx.clone();
        let path = mnt.to_path_buf();
        let ours = ours.cloned();
        // fuser's own unmount first (so it does not try again when the session ends); if the
        // mount is busy, detach it: open files then fail, but the daemon must end.
        std::thread::spawn(move || {
            let plain = unmounter.map_or(Ok(()), |u| u.unmount());
            let r = match plain {
                Ok(()) => Ok(()),
                Err(e) if ours.as_ref().is_none_or(still_mounted) => {
                    log::info!("unmount: {e}; detaching instead");
                    mounts::detach(&path)
                }
                Err(_) => Ok(()),
            };
            let _ = tx.send(Event::Detached(r));
        });
    }
    let mut settled = started;
    while let Some(left) = STOP_LIMIT.checked_sub(started.elapsed()) {
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(Event::Ended(r)) => {
                if let Err(e) = r {
                    log::warn!("FUSE session: {e}");
                }
                return;
            }
            Ok(Event::Detached(r)) => {
                if let Err(e) = r {
                    log::warn!("{e}");
                }
                detaching = false;
                settled = Instant::now();
            }
            Ok(Event::Signal(sig)) if signal.is_some() => {
                log::info!("signal {sig} again: exiting now");
                return;
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !detaching && settled.elapsed() >= SESSION_END_GRACE && !conn.aborted() {
            let why = match signal {
                Some(sig) if here => format!("signal {sig}: unmounted {}", mnt.display()),
                Some(sig) => format!("signal {sig}: {} was unmounted already", mnt.display()),
                None => format!("{} was unmounted", mnt.display()),
            };
            log::warn!(
                "{why}, but the kernel still holds its FUSE connection (a copy of the mount \
                 in another mount namespace, or files open after a lazy unmount); ending the \
                 session, so that those answer ENOTCONN"
            );
            return;
        }
    }
    log::warn!("the FUSE session did not end within {STOP_LIMIT:?} of stopping; exiting anyway");
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
        for sig in STOP_SIGNALS {
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

/// Closes the listing index (writing what is queued) when `run` ends.
struct CloseIndex(Option<Arc<Index>>);

impl Drop for CloseIndex {
    fn drop(&mut self) {
        if let Some(ix) = &self.0 {
            ix.close();
        }
    }
}

/// The FTP backend for `specs` (also used by `ftpcircle-fs index`).
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
