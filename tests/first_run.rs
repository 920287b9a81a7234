//! The first five minutes (issue 13): what a new user sees on the common first-run paths,
//! through the real binary. Each message must say what happened and what to do, each down
//! server is named once (one summary line when there are many), `-q` silences warnings, and
//! the exit status is the documented one: 0 mounted, 1 mounting failed, 2 bad input
//! (nothing mounted), 128 + signal when interrupted before the mount was ready.
//!
//! Also here: scripts/test.sh's Rust detection, run in dry-run mode against a PATH without
//! cargo.

mod common;

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    BIN, FtpServer, Mount, MountOptions, TempDir, daemon_pids, is_mountpoint, lazy_unmount,
    pick_port, run_timeout, wait_until, write_file,
};

const RUN_LIMIT: Duration = Duration::from_secs(60);
const NO_SERVER: &str =
    "no server answered; the mount stays empty until one does; retrying in the background";

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// Run the binary (daemon mode unless `-f` is in `args`) and wait for it to return. A daemon
/// without --log-file logs to syslog: here to a socket of the test's own (a machine without
/// /dev/log would add a warning saying so).
fn launch(args: &[&OsStr]) -> Outcome {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let sock = std::env::temp_dir().join(format!(
        "ftpcircle-first-run-syslog-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&sock);
    let syslog = std::os::unix::net::UnixDatagram::bind(&sock).expect("bind a syslog socket");
    let out = run_timeout(
        Command::new(BIN)
            .args(args)
            .env("FTPCIRCLE_SYSLOG_SOCKET", &sock),
        RUN_LIMIT,
    );
    drop(syslog);
    let _ = std::fs::remove_file(&sock);
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Unmounts `mnt` (if mounted) and waits for its daemon to exit, on drop.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        lazy_unmount(&self.0);
        wait_until(Duration::from_secs(10), || daemon_pids(&self.0).is_empty());
    }
}

/// A serverlist file (mode 644: no passwords in it) in `dir`.
fn serverlist(dir: &TempDir, lines: &[String]) -> PathBuf {
    let p = dir.join("serverlist.txt");
    std::fs::write(&p, lines.join("\n") + "\n").expect("write serverlist");
    p
}

/// A loopback address where nothing listens.
fn dead_server() -> String {
    format!("127.0.0.1:{},,,0", pick_port())
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn every_server_down_mounts_empty_and_says_so_once() {
    let dir = TempDir::new("first-down");
    let dead = [dead_server(), dead_server()];
    let list = serverlist(&dir, &dead);
    let mnt = dir.subdir("mnt");
    let _c = Cleanup(mnt.clone());
    let out = launch(&[
        os("--servers"),
        list.as_os_str(),
        os("--timeout"),
        os("2"),
        mnt.as_os_str(),
    ]);
    assert_eq!(out.code, Some(0), "mounted anyway: {}", out.stderr);
    assert!(is_mountpoint(&mnt));
    let err = &out.stderr;
    for line in &dead {
        let addr = line.trim_end_matches(",,,0");
        assert_eq!(err.matches(addr).count(), 1, "{addr} named once:\n{err}");
    }
    assert!(err.contains(NO_SERVER), "plain message:\n{err}");
    assert!(
        !err.contains("WARN"),
        "no log-format lines on the terminal:\n{err}"
    );
    assert_eq!(err.lines().count(), 3, "two servers + the summary:\n{err}");
    let entries: Vec<_> = std::fs::read_dir(&mnt)
        .expect("ls of the empty root works (no EIO)")
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn many_servers_down_are_one_summary_line() {
    let dir = TempDir::new("first-many");
    let root = dir.join("root");
    write_file(&root.join("pub/hello.txt"), b"hello\n");
    let server = FtpServer::vsftpd(&root);
    let mut lines = vec![server.line()];
    lines.extend((0..8).map(|_| dead_server()));
    let list = serverlist(&dir, &lines);
    let mnt = dir.subdir("mnt");
    let _c = Cleanup(mnt.clone());
    let log = dir.join("log");
    let out = launch(&[
        os("--servers"),
        list.as_os_str(),
        os("--timeout"),
        os("2"),
        os("--log-file"),
        log.as_os_str(),
        mnt.as_os_str(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let err = &out.stderr;
    assert!(err.contains("8 of 9 servers cannot be used"), "{err}");
    assert!(err.contains("mounting without them"), "{err}");
    assert!(!err.contains(NO_SERVER), "one server answered:\n{err}");
    assert_eq!(
        err.lines().count(),
        2,
        "a summary, not one line each:\n{err}"
    );
    // The details are in the log: every dead server by name.
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    for line in &lines[1..] {
        let addr = line.trim_end_matches(",,,0");
        assert!(
            log_text.contains(addr),
            "{addr} not in the log:\n{log_text}"
        );
    }
    assert_eq!(
        std::fs::read(mnt.join("pub/hello.txt")).expect("the live server is there"),
        b"hello\n"
    );
}

#[test]
fn quiet_silences_the_warnings() {
    let dir = TempDir::new("first-quiet");
    let list = serverlist(&dir, &[dead_server()]);
    let mnt = dir.subdir("mnt");
    let _c = Cleanup(mnt.clone());
    let out = launch(&[
        os("-q"),
        os("--servers"),
        list.as_os_str(),
        os("--timeout"),
        os("2"),
        mnt.as_os_str(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stderr, "", "-q: nothing but errors");
}

#[test]
fn mount_point_already_mounted_says_by_what() {
    let dir = TempDir::new("first-twice");
    let root = dir.join("root");
    write_file(&root.join("a.txt"), b"a\n");
    let server = FtpServer::vsftpd(&root);
    let mount = Mount::start(&format!("{}\n", server.line()), &MountOptions::default());
    let out = launch(&[
        os("--servers"),
        mount.serverlist.as_os_str(),
        mount.path().as_os_str(),
    ]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let err = &out.stderr;
    assert!(err.contains("is already a mount point"), "{err}");
    // Type "fuse" as root (direct mount), "fuse.ftpcircle" through fusermount3.
    assert!(err.contains("ftpcircle (type fuse"), "{err}");
    assert!(err.contains("another ftpcircle-fs serves it"), "{err}");
    assert!(err.contains("fusermount3 -u"), "{err}");
    // The first mount is untouched.
    assert_eq!(std::fs::read(mount.join("a.txt")).unwrap(), b"a\n");
}

#[test]
fn dead_mount_left_by_a_killed_daemon_says_to_unmount() {
    let dir = TempDir::new("first-stale");
    let list = serverlist(&dir, &[dead_server()]);
    let mnt = dir.subdir("mnt");
    let _c = Cleanup(mnt.clone());
    let mut child = Command::new(BIN)
        .args([os("-f"), os("-q"), os("--servers"), list.as_os_str()])
        .args([os("--timeout"), os("1"), mnt.as_os_str()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run -f");
    assert!(wait_until(Duration::from_secs(30), || is_mountpoint(&mnt)));
    let _ = child.kill();
    let _ = child.wait();
    let out = launch(&[os("--servers"), list.as_os_str(), mnt.as_os_str()]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("whose process has ended"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("fusermount3 -u {}", mnt.display())),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_mount_point_says_mkdir() {
    let dir = TempDir::new("first-missing");
    let list = serverlist(&dir, &[dead_server()]);
    let mnt = dir.join("no-such-dir");
    let out = launch(&[os("--servers"), list.as_os_str(), mnt.as_os_str()]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("mkdir -p {}", mnt.display())),
        "{}",
        out.stderr
    );
}

#[test]
fn non_empty_mount_point_is_refused_unless_nonempty() {
    let dir = TempDir::new("first-nonempty");
    let list = serverlist(&dir, &[dead_server()]);
    let mnt = dir.subdir("mnt");
    std::fs::write(mnt.join("precious.txt"), b"mine\n").expect("write");
    let out = launch(&[os("--servers"), list.as_os_str(), mnt.as_os_str()]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);
    assert!(out.stderr.contains("precious.txt"), "{}", out.stderr);
    assert!(out.stderr.contains("-o nonempty"), "{}", out.stderr);
    assert!(!is_mountpoint(&mnt));
    let _c = Cleanup(mnt.clone());
    let out = launch(&[
        os("-q"),
        os("-o"),
        os("nonempty"),
        os("--servers"),
        list.as_os_str(),
        os("--timeout"),
        os("1"),
        mnt.as_os_str(),
    ]);
    assert_eq!(out.code, Some(0), "-o nonempty mounts: {}", out.stderr);
    assert!(is_mountpoint(&mnt));
}

#[test]
fn comment_only_serverlist_says_what_a_line_looks_like() {
    let dir = TempDir::new("first-comments");
    let list = dir.join("serverlist.txt");
    std::fs::write(&list, "# my servers\n\n#ftp.example.org,,,0\n").expect("write");
    let mnt = dir.subdir("mnt");
    let out = launch(&[os("--servers"), list.as_os_str(), mnt.as_os_str()]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    for w in [
        "no servers listed",
        "blank or a comment",
        "server,user,pass,tlstoggle",
    ] {
        assert!(out.stderr.contains(w), "lacks {w:?}: {}", out.stderr);
    }
}

#[test]
fn no_serverlist_says_how_to_start() {
    let dir = TempDir::new("first-nolist");
    let mnt = dir.subdir("mnt");
    let out = run_timeout(
        Command::new(BIN)
            .arg(&mnt)
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env_remove("XDG_CONFIG_HOME"),
        RUN_LIMIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no server list found"), "{err}");
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/serverlist.txt.sample");
    assert!(
        err.contains(&format!("cp {sample} serverlist.txt")),
        "{err}"
    );
}

/// `sh -c SCRIPT` in a private mount namespace (what SCRIPT mounts there stays there).
fn in_private_namespace(script: &str, args: &[&OsStr]) -> Outcome {
    let out = run_timeout(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .args(args),
        RUN_LIMIT,
    );
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn no_dev_fuse_says_modprobe_or_device() {
    let dir = TempDir::new("first-nodev");
    let list = serverlist(&dir, &[dead_server()]);
    let mnt = dir.subdir("mnt");
    // An empty /dev, as in a container started without --device /dev/fuse.
    let out = in_private_namespace(
        r#"mount -t tmpfs none /dev && exec "$@""#,
        &[
            os(BIN),
            os("-f"),
            os("--servers"),
            list.as_os_str(),
            mnt.as_os_str(),
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("/dev/fuse does not exist"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("modprobe fuse"), "{}", out.stderr);
    assert!(out.stderr.contains("--device /dev/fuse"), "{}", out.stderr);
    assert!(!is_mountpoint(&mnt));
}

#[test]
fn normal_user_without_fusermount3_is_told_to_install_fuse3() {
    let dir = TempDir::new("first-nohelper");
    let list = serverlist(&dir, &[dead_server()]);
    let mnt = dir.subdir("mnt");
    // Hide the setuid helper (fusermount is a symlink to it) and become nobody. The binary
    // is copied where nobody may run it (the build tree may be under a private home).
    let empty = dir.join("not-a-program");
    std::fs::write(&empty, b"").expect("write");
    let bin = dir.join("ftpcircle-fs");
    std::fs::copy(BIN, &bin).expect("copy the binary");
    common::set_mode(&bin, 0o755);
    let out = in_private_namespace(
        r#"e=$1; shift; mount --bind "$e" /usr/bin/fusermount3 && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@""#,
        &[
            empty.as_os_str(),
            bin.as_os_str(),
            os("-f"),
            os("--servers"),
            list.as_os_str(),
            mnt.as_os_str(),
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("fusermount3 not found"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("apt-get install fuse3"),
        "{}",
        out.stderr
    );
}

/// A server that accepts connections and never says a word (bounded: 16 connections).
fn silent_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..16 {
            match l.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => return,
            }
        }
        std::thread::sleep(Duration::from_secs(120));
    });
    port
}

fn interrupt_during_startup(foreground: bool) {
    let dir = TempDir::new("first-ctrlc");
    let port = silent_server();
    let list = serverlist(&dir, &[format!("127.0.0.1:{port},,,0")]);
    let mnt = dir.subdir("mnt");
    let _c = Cleanup(mnt.clone());
    let mut cmd = Command::new(BIN);
    if foreground {
        cmd.arg("-f");
    }
    cmd.arg("--servers")
        .arg(&list)
        .args(["--timeout", "60"])
        .arg(&mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("run");
    let pid = child.id() as i32;
    // The start-up listing is under way once the silent server holds a connection.
    let connected = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
            let hex = format!(":{port:04X} ");
            t.lines()
                .any(|l| l.contains(&hex) && l.split_whitespace().nth(3) == Some("01"))
        })
    });
    assert!(connected, "the start-up listing never connected");
    common::send_signal(pid, libc::SIGINT);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("Ctrl-C during the start-up listing must end it at once, not after --timeout")
        .expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted by signal 2 while listing the servers at start-up"),
        "{err}"
    );
    assert!(err.contains("nothing is mounted"), "{err}");
    assert!(!is_mountpoint(&mnt), "mounted after Ctrl-C");
    assert!(
        wait_until(Duration::from_secs(10), || daemon_pids(&mnt).is_empty()),
        "a process was left behind"
    );
}

#[test]
fn ctrl_c_during_the_startup_listing_stops_before_mounting() {
    interrupt_during_startup(false);
}

#[test]
fn ctrl_c_during_the_startup_listing_stops_before_mounting_in_the_foreground() {
    interrupt_during_startup(true);
}

// ---------------------------------------------------------------------------
// scripts/test.sh's Rust detection (scripts/lib/servers.sh: ftpc_ensure_cargo)

/// Run `ftpc_ensure_cargo` in dry-run mode with only `path` on PATH and `home` as HOME.
fn ensure_cargo(path: &Path, home: &Path) -> (Option<i32>, String) {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib/servers.sh");
    let out = run_timeout(
        Command::new("/bin/bash")
            .args([
                "-c",
                r#"source "$1"; ftpc_ensure_cargo; echo "skip_lint=$FTPC_SKIP_LINT""#,
                "bash",
                lib,
            ])
            .env_clear()
            .env("PATH", path)
            .env("HOME", home)
            .env("FTPC_DRY_RUN", "1"),
        RUN_LIMIT,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn fake_cargo(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let p = dir.join("cargo");
    std::fs::write(&p, format!("#!/bin/sh\necho 'cargo {version} (fake)'\n")).expect("write");
    common::set_mode(&p, 0o755);
}

const WOULD_INSTALL: &str = "would run apt-get update && apt-get install -y cargo-web rustc-web";

#[test]
fn without_cargo_the_scripts_would_install_debians_cargo_web() {
    let dir = TempDir::new("cargo-none");
    let (code, text) = ensure_cargo(&dir.subdir("bin"), &dir.subdir("home"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no cargo found"), "{text}");
    assert!(text.contains(WOULD_INSTALL), "{text}");
    assert!(
        text.contains("skip_lint=1"),
        "no rustfmt/clippy with cargo-web: {text}"
    );
}

#[test]
fn debians_old_cargo_is_not_enough() {
    let dir = TempDir::new("cargo-old");
    let bin = dir.subdir("bin");
    fake_cargo(&bin, "0.66.0");
    let (code, text) = ensure_cargo(&bin, &dir.subdir("home"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("is cargo 0.66"), "{text}");
    assert!(text.contains(WOULD_INSTALL), "{text}");
}

#[test]
fn a_rustup_toolchain_is_preferred() {
    let dir = TempDir::new("cargo-rustup");
    let bin = dir.subdir("bin");
    let home = dir.subdir("home");
    fake_cargo(&bin, "1.96.0");
    fake_cargo(&home.join(".cargo/bin"), "1.90.1");
    let (code, text) = ensure_cargo(&bin, &home);
    assert_eq!(code, Some(0), "{text}");
    let rustup = home.join(".cargo/bin/cargo");
    assert!(
        text.contains(&format!("using {} (cargo 1.90)", rustup.display())),
        "{text}"
    );
    assert!(!text.contains("would run"), "{text}");
    // A suitable cargo on PATH alone is used too, without installing anything.
    let (_, text) = ensure_cargo(&bin, &dir.subdir("empty-home"));
    assert!(text.contains("(cargo 1.96)"), "{text}");
    assert!(!text.contains("would run"), "{text}");
}
