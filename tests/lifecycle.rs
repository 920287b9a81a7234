//! The daemon always stops (issue 14), on real mounts.
//!
//! A process started in a new mount namespace while the filesystem is mounted (here
//! `unshare -m --propagation private sleep 60`, as `ip netns exec` or a service with
//! PrivateTmp would) keeps a copy of the mount, and with it the kernel's FUSE connection.
//! After `fusermount3 -u` here, the FUSE threads would wait for requests forever; the daemon
//! must notice and end, and a signal must end it whether or not the mount is still here.
//! Each test prints the measured time to exit; the bound asserted is only the liveness bound
//! of the harness (the daemon's own limit is 5 s).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FtpServer, Mount, MountOptions, TempDir, is_mountpoint, run_ok, write_file};

/// Liveness bound: well above the daemon's own 5 s stop limit, for a loaded machine.
const EXIT_LIMIT: Duration = Duration::from_secs(20);

/// `sleep 60` in a private copy of this mount namespace; killed on drop.
struct OtherNamespace {
    child: Child,
}

impl OtherNamespace {
    fn start() -> OtherNamespace {
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("run unshare");
        let ns = OtherNamespace { child };
        let mine = std::fs::read_link("/proc/self/ns/mnt").expect("my mount namespace");
        let entered = common::wait_until(Duration::from_secs(10), || {
            std::fs::read_link(format!("/proc/{}/ns/mnt", ns.pid()))
                .is_ok_and(|theirs| theirs != mine)
        });
        assert!(entered, "unshare did not enter a new mount namespace");
        ns
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What `stat PATH` says inside that namespace (stderr on failure).
    fn stat(&self, path: &Path) -> String {
        let out = common::run_timeout(
            Command::new("nsenter")
                .arg("-t")
                .arg(self.pid().to_string())
                .args(["-m", "--", "stat"])
                .arg(path),
            Duration::from_secs(20),
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for OtherNamespace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gone, or a zombie nobody reaped yet.
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => s
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => true,
    }
}

fn one_server(dir: &TempDir) -> FtpServer {
    let root = dir.join("root");
    write_file(&root.join("pub/hello.txt"), b"hello\n");
    FtpServer::vsftpd(&root)
}

fn fusermount_u(mnt: &Path) {
    run_ok(
        Command::new("fusermount3").arg("-u").arg(mnt),
        Duration::from_secs(20),
    );
}

/// The copy in the other namespace no longer reaches a daemon: ENOTCONN, not a hang.
fn assert_copy_is_dead(other: &OtherNamespace, mnt: &Path) {
    let said = other.stat(mnt);
    assert!(
        said.contains("not connected"),
        "the copy of the mount in the other namespace should answer ENOTCONN: {said}"
    );
}

#[test]
fn daemon_ends_when_unmounted_while_another_namespace_holds_a_copy() {
    let dir = TempDir::new("ns-daemon");
    let server = one_server(&dir);
    let mut mount = Mount::start(&format!("{}\n", server.line()), &MountOptions::default());
    assert_eq!(
        std::fs::read(mount.join("pub/hello.txt")).unwrap(),
        b"hello\n"
    );
    let pids = mount.pids();
    assert_eq!(pids.len(), 1, "one daemon: {pids:?}");
    let other = OtherNamespace::start();
    let t0 = Instant::now();
    fusermount_u(mount.path());
    assert!(!is_mountpoint(mount.path()));
    let gone = common::wait_until(EXIT_LIMIT, || exited(pids[0]));
    let took = t0.elapsed();
    eprintln!("time to exit after fusermount3 -u (copy in another namespace): {took:?}");
    assert!(
        gone,
        "daemon still running {EXIT_LIMIT:?} after fusermount3 -u\n{}",
        mount.log()
    );
    let log = mount.log();
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("was unmounted, but the kernel still holds"))
        .collect();
    assert_eq!(why.len(), 1, "one line saying why it ended:\n{log}");
    assert_copy_is_dead(&other, mount.path());
    mount.unmount();
}

#[test]
fn foreground_sigterm_after_the_unmount_exits_0() {
    let dir = TempDir::new("ns-sigterm");
    let server = one_server(&dir);
    let mut mount = Mount::foreground(&format!("{}\n", server.line()), &MountOptions::default());
    assert_eq!(
        std::fs::read(mount.join("pub/hello.txt")).unwrap(),
        b"hello\n"
    );
    let other = OtherNamespace::start();
    let t0 = Instant::now();
    fusermount_u(mount.path());
    let status = mount
        .signal_foreground(libc::SIGTERM, EXIT_LIMIT)
        .unwrap_or_else(|| panic!("-f process still running {EXIT_LIMIT:?} after SIGTERM"));
    eprintln!(
        "time to exit after fusermount3 -u + SIGTERM (copy in another namespace): {:?}",
        t0.elapsed()
    );
    assert!(status.success(), "exit status {status}\n{}", mount.log());
    assert_copy_is_dead(&other, mount.path());
}

#[test]
fn foreground_sigterm_while_another_namespace_holds_a_copy_unmounts_and_exits_0() {
    let dir = TempDir::new("ns-signal");
    let server = one_server(&dir);
    let mut mount = Mount::foreground(&format!("{}\n", server.line()), &MountOptions::default());
    assert_eq!(
        std::fs::read(mount.join("pub/hello.txt")).unwrap(),
        b"hello\n"
    );
    let other = OtherNamespace::start();
    let t0 = Instant::now();
    let status = mount
        .signal_foreground(libc::SIGTERM, EXIT_LIMIT)
        .unwrap_or_else(|| panic!("-f process still running {EXIT_LIMIT:?} after SIGTERM"));
    eprintln!(
        "time to exit after SIGTERM (mounted here and in another namespace): {:?}",
        t0.elapsed()
    );
    assert!(status.success(), "exit status {status}\n{}", mount.log());
    assert!(!is_mountpoint(mount.path()), "still mounted after SIGTERM");
    assert_copy_is_dead(&other, mount.path());
}

#[test]
fn sighup_and_sigint_on_a_busy_mount_detach_it_and_exit_0() {
    for sig in [libc::SIGHUP, libc::SIGINT] {
        let dir = TempDir::new("busy-signal");
        let server = one_server(&dir);
        // Without --log-file (bare): SIGHUP, like SIGINT, ends the mount. With one it
        // reopens the log (sighup_with_log_file_reopens_it_and_keeps_serving).
        let mut mount = Mount::foreground(&format!("{}\n", server.line()), &MountOptions::bare());
        // A process whose working directory is inside the mount makes it busy.
        let mut busy = Command::new("sleep")
            .arg("30")
            .current_dir(mount.join("pub"))
            .spawn()
            .expect("sleep in the mount");
        let status = mount.signal_foreground(sig, EXIT_LIMIT);
        let _ = busy.kill();
        let _ = busy.wait();
        let status =
            status.unwrap_or_else(|| panic!("still running {EXIT_LIMIT:?} after signal {sig}"));
        assert!(status.success(), "signal {sig}: exit status {status}");
        assert!(!is_mountpoint(mount.path()), "signal {sig}: still mounted");
    }
}

#[test]
fn sighup_with_log_file_reopens_it_and_keeps_serving() {
    let dir = TempDir::new("hup-reopen");
    let server = one_server(&dir);
    let mut mount = Mount::foreground(&format!("{}\n", server.line()), &MountOptions::default());
    // What logrotate does: move the log away, then SIGHUP.
    let rotated = dir.join("rotated.log");
    std::fs::rename(&mount.log_file, &rotated).expect("rotate the log");
    let pid = mount.pids()[0];
    common::send_signal(pid, libc::SIGHUP);
    let reopened = common::wait_until(EXIT_LIMIT, || {
        std::fs::read_to_string(&mount.log_file)
            .is_ok_and(|l| l.contains("SIGHUP: log file opened again"))
    });
    assert!(
        reopened,
        "no new log file after SIGHUP; old one:\n{}",
        std::fs::read_to_string(&rotated).unwrap_or_default()
    );
    // Still mounted and serving.
    assert!(
        is_mountpoint(mount.path()),
        "SIGHUP with --log-file unmounted"
    );
    assert!(
        std::fs::read_dir(mount.path()).is_ok(),
        "the mount stopped answering after SIGHUP"
    );
    let status = mount
        .signal_foreground(libc::SIGTERM, EXIT_LIMIT)
        .unwrap_or_else(|| panic!("still running {EXIT_LIMIT:?} after SIGTERM"));
    assert!(status.success(), "exit status {status}");
}
