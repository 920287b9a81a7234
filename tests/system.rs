//! Fitting the system: mounts made by mount(8) from an fstab-style line (through mount.fuse3)
//! and through the `mount.ftpcircle-fs` helper, `-o` keys, the systemd units' syntax and
//! readiness notification, syslog for a daemon without `--log-file`, statfs, and the installer.
//!
//! mount(8) finds helpers only in /sbin and mount.fuse3 runs the program from a fixed PATH, so
//! the mount tests run in a private mount namespace (`unshare -m`) in which a temp dir holding
//! the binary is mounted over /usr/local/sbin (or layered over /usr/sbin with overlayfs): the
//! real system directories are never changed.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    BIN, FtpServer, Mount, MountOptions, TempDir, daemon_pids, is_mountpoint, lazy_unmount,
    mkdir_p, run_timeout, wait_until, write_file,
};

const A_TXT: &[u8] = b"hello from the system tests\n";

/// One vsftpd serving pub/a.txt and pub/sub/b.bin (3 MiB), and a serverlist for it.
struct Fixture {
    dir: TempDir,
    server: FtpServer,
    list: PathBuf,
    mnt: PathBuf,
}

fn fixture(tag: &str) -> Fixture {
    let dir = TempDir::new(tag);
    let root = dir.subdir("srv");
    mkdir_p(&root.join("pub/sub"));
    write_file(&root.join("pub/a.txt"), A_TXT);
    write_file(&root.join("pub/sub/b.bin"), &vec![7u8; 3 << 20]);
    let server = FtpServer::vsftpd(&root);
    let list = dir.join("serverlist.txt");
    std::fs::write(&list, format!("{}\n", server.line())).expect("write serverlist");
    let mnt = dir.subdir("mnt");
    Fixture {
        dir,
        server,
        list,
        mnt,
    }
}

/// Runs `script` with bash in a new private mount namespace; `vars` become its environment.
fn in_namespace(script: &str, vars: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "bash", "-c", script]);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    run_timeout(&mut cmd, Duration::from_secs(90))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The daemon of a mount made inside a namespace exits by itself once that mount is gone.
fn assert_daemon_gone(mnt: &Path) {
    let gone = wait_until(Duration::from_secs(10), || daemon_pids(mnt).is_empty());
    if !gone {
        for p in daemon_pids(mnt) {
            common::send_signal(p, libc::SIGKILL);
        }
    }
    assert!(
        gone,
        "ftpcircle-fs for {} still runs after umount",
        mnt.display()
    );
}

#[test]
fn fstab_line_mounts_through_mount_fuse3_with_o_keys() {
    let f = fixture("fstab");
    let bindir = f.dir.subdir("bin");
    std::os::unix::fs::symlink(BIN, bindir.join("ftpcircle-fs")).expect("symlink");
    let log = f.dir.join("daemon.log");
    // What an fstab line `LIST MNT fuse.ftpcircle-fs ro,_netdev,...` makes mount(8) do.
    let script = r#"
        set -e
        mount --bind "$BINDIR" /usr/local/sbin
        mount -t fuse.ftpcircle-fs "$LIST" "$MNT" \
            -o ro,_netdev,nofail,allow_other,x-systemd.automount,timeout=10,cache_ttl=120,max_connections=2,log_file="$LOG",verbose
        echo "content: $(cat "$MNT/pub/a.txt")"
        echo "size: $(stat -c %s "$MNT/pub/sub/b.bin")"
        awk -v m="$MNT" '$5 == m { print "mountinfo:", $0 }' /proc/self/mountinfo
        umount "$MNT"
        awk -v m="$MNT" '$5 == m { print "still mounted" }' /proc/self/mountinfo
    "#;
    let out = in_namespace(
        script,
        &[
            ("BINDIR", &bindir),
            ("LIST", &f.list),
            ("MNT", &f.mnt),
            ("LOG", &log),
        ],
    );
    let stdout = text(&out.stdout);
    let diag = format!("stdout:\n{stdout}\nstderr:\n{}", text(&out.stderr));
    assert!(out.status.success(), "{diag}");
    assert!(
        stdout.contains(&format!("content: {}", text(A_TXT).trim_end())),
        "{diag}"
    );
    assert!(stdout.contains(&format!("size: {}", 3 << 20)), "{diag}");
    let mountinfo = stdout
        .lines()
        .find(|l| l.starts_with("mountinfo:"))
        .unwrap_or_else(|| panic!("no mountinfo line: {diag}"));
    // As root the mount is made with mount(2) directly: its type is plain "fuse" then.
    assert!(
        mountinfo.contains(" - fuse ") || mountinfo.contains(" - fuse.ftpcircle-fs "),
        "{mountinfo}"
    );
    assert!(
        mountinfo.contains(" ro,") || mountinfo.contains(" ro "),
        "{mountinfo}"
    );
    assert!(
        mountinfo.contains("nosuid") && mountinfo.contains("nodev"),
        "{mountinfo}"
    );
    assert!(!stdout.contains("still mounted"), "{diag}");
    // log_file= and verbose arrived as --log-file and -v.
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("mounted 1 server(s)"),
        "log: {logged}\n{diag}"
    );
    assert_daemon_gone(&f.mnt);
    // The mount was private to the namespace: nothing is left here.
    assert!(!is_mountpoint(&f.mnt));
    assert!(
        f.server.count_verb("RETR") >= 1,
        "{}",
        f.server.commands_log()
    );
}

#[test]
fn mount_t_ftpcircle_fs_uses_the_mount_helper() {
    let f = fixture("helper");
    let sbin = f.dir.subdir("sbin");
    std::os::unix::fs::symlink(BIN, sbin.join("mount.ftpcircle-fs")).expect("symlink");
    let log = f.dir.join("daemon.log");
    let script = r#"
        set -e
        mount -t overlay overlay -o lowerdir="$SBIN":/usr/sbin /usr/sbin
        mount -t ftpcircle-fs "$LIST" "$MNT" -o allow_other,no_prefetch,log_file="$LOG",verbose
        echo "content: $(cat "$MNT/pub/a.txt")"
        umount "$MNT"
        if mount -t ftpcircle-fs "$LIST" "$MNT" -o allow_other,cache_tll=5 2>"$ERR"; then
            echo "unknown key mounted"
        fi
        awk -v m="$MNT" '$5 == m { print "still mounted" }' /proc/self/mountinfo
    "#;
    let err = f.dir.join("err.txt");
    let out = in_namespace(
        script,
        &[
            ("SBIN", &sbin),
            ("LIST", &f.list),
            ("MNT", &f.mnt),
            ("LOG", &log),
            ("ERR", &err),
        ],
    );
    let stdout = text(&out.stdout);
    let diag = format!("stdout:\n{stdout}\nstderr:\n{}", text(&out.stderr));
    assert!(out.status.success(), "{diag}");
    assert!(
        stdout.contains(&format!("content: {}", text(A_TXT).trim_end())),
        "{diag}"
    );
    assert!(!stdout.contains("unknown key mounted"), "{diag}");
    assert!(!stdout.contains("still mounted"), "{diag}");
    let err = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        err.contains("cache_tll=5") && err.contains("unknown option"),
        "stderr of the bad mount: {err}"
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("mounted 1 server(s)"), "log: {logged}");
    assert_daemon_gone(&f.mnt);
}

#[test]
fn unknown_o_key_fails_before_mounting_and_names_it() {
    let f = fixture("badkey");
    let out = run_timeout(
        Command::new(BIN)
            .arg(&f.list)
            .arg(&f.mnt)
            .args(["-o", "ro,allow_other,max_conections=2"]),
        Duration::from_secs(20),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("max_conections=2"), "{err}");
    assert!(!is_mountpoint(&f.mnt));
    // Nothing was contacted either.
    assert_eq!(
        f.server.count_verb("USER"),
        0,
        "{}",
        f.server.commands_log()
    );
}

#[test]
fn daemon_without_log_file_logs_to_syslog() {
    let f = fixture("syslog");
    let root2 = f.dir.subdir("srv2");
    mkdir_p(&root2.join("pub/only2"));
    write_file(&root2.join("pub/only2/c.txt"), b"c\n");
    let mut second = FtpServer::vsftpd(&root2);
    std::fs::write(&f.list, format!("{}\n{}\n", f.server.line(), second.line()))
        .expect("write serverlist");
    let sock_path = f.dir.join("syslog.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind syslog socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let out = run_timeout(
        Command::new(BIN)
            .env("FTPCIRCLE_SYSLOG_SOCKET", &sock_path)
            .args(["--timeout", "2", "--no-prefetch", "--cache-ttl", "1"])
            .arg(&f.list)
            .arg(&f.mnt),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(is_mountpoint(&f.mnt));
    let label = second.addr();
    // The second server goes away; listing a directory only it had fails there.
    second.stop();
    let _ = std::fs::read_dir(f.mnt.join("pub/only2"));
    let _ = std::fs::read_dir(f.mnt.join("pub"));
    let mut got = Vec::new();
    let found = wait_until(Duration::from_secs(15), || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(text(&buf[..n]));
        }
        if got.iter().any(|m| m.contains(&label)) {
            return true;
        }
        // Ask again: a listing cached before the stop expires after 1 s.
        let _ = std::fs::read_dir(f.mnt.join("pub"));
        false
    });
    let pids = daemon_pids(&f.mnt);
    lazy_unmount(&f.mnt);
    wait_until(Duration::from_secs(10), || daemon_pids(&f.mnt).is_empty());
    assert!(found, "no syslog message naming {label}: {got:#?}");
    let msg = got.iter().find(|m| m.contains(&label)).unwrap();
    // RFC 3164: <PRI> with facility daemon (3): warning 28 or error 27; tag with the pid.
    assert!(
        msg.starts_with("<28>") || msg.starts_with("<27>"),
        "priority: {msg}"
    );
    assert!(
        pids.iter()
            .any(|p| msg.contains(&format!("ftpcircle-fs[{p}]"))),
        "tag with the daemon's pid {pids:?}: {msg}"
    );
}

#[test]
fn foreground_mount_notifies_systemd_when_ready() {
    let f = fixture("notify");
    let sock_path = f.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // As systemd starts a Type=notify service: -f, NOTIFY_SOCKET in the environment.
    let mut child = Command::new(BIN)
        .env("NOTIFY_SOCKET", &sock_path)
        .args(["-f", "--no-prefetch", "--log-file"])
        .arg(f.dir.join("fg.log"))
        .arg(&f.list)
        .arg(&f.mnt)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn -f");
    let mut buf = [0u8; 256];
    let got = sock.recv(&mut buf);
    // READY=1 comes only once the mount is usable.
    let mounted = is_mountpoint(&f.mnt);
    common::send_signal(child.id() as i32, libc::SIGTERM);
    let status = common::wait_child(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
        lazy_unmount(&f.mnt);
    }
    let n = got.expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(mounted, "READY=1 before the mount was there");
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
}

#[test]
fn statfs_counts_the_known_tree() {
    let f = fixture("statfs");
    let m = Mount::start(
        &std::fs::read_to_string(&f.list).unwrap(),
        &MountOptions::default(),
    );
    // Walk everything so the whole tree is known: root, pub, a.txt, sub, b.bin.
    let walked = run_timeout(Command::new("find").arg(m.path()), Duration::from_secs(30));
    assert_eq!(
        text(&walked.stdout).lines().count(),
        5,
        "{}",
        text(&walked.stdout)
    );
    let out = run_timeout(
        Command::new("stat")
            .args(["-f", "-c", "%c %b %S"])
            .arg(m.path()),
        Duration::from_secs(10),
    );
    let s = text(&out.stdout);
    let v: Vec<u64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(v.len(), 3, "stat -f: {s}");
    let (files, blocks, bsize) = (v[0], v[1], v[2]);
    assert_eq!(files, 5, "entries known: {s}");
    let bytes = (3u64 << 20) + A_TXT.len() as u64;
    assert_eq!(
        blocks,
        bytes.div_ceil(bsize),
        "blocks of {bsize} bytes: {s}"
    );
}

#[test]
fn systemd_units_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        // Not on every machine: the syntax check below needs it. Say so loudly.
        eprintln!("NOTE: systemd-analyze not installed; systemd units not verified");
        return;
    };
    assert!(version.status.success());
    let dir = TempDir::new("units");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mut units = Vec::new();
    for e in std::fs::read_dir(&src).expect("contrib/systemd") {
        let p = e.expect("entry").path();
        // The examples run the installed binary; verify checks that it exists, so point it
        // at the one under test.
        let body = std::fs::read_to_string(&p)
            .expect("read unit")
            .replace("/usr/local/bin/ftpcircle-fs", BIN);
        let dest = dir.join(p.file_name().unwrap());
        std::fs::write(&dest, body).expect("write unit");
        units.push(dest);
    }
    assert!(units.len() >= 3, "service, mount and automount units");
    let out = run_timeout(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&units),
        Duration::from_secs(60),
    );
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{all}");
    // verify only warns (exit 0) about unknown keys: any output is a finding.
    assert!(all.trim().is_empty(), "systemd-analyze verify said:\n{all}");
}

#[test]
fn install_script_installs_everything_into_a_prefix() {
    let dir = TempDir::new("install");
    let dest = dir.subdir("root");
    let out = run_timeout(
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"))
            .args(["--prefix", "/opt/ftpc", "--no-build"])
            .env("DESTDIR", &dest)
            .env("FTPCIRCLE_BIN", BIN),
        Duration::from_secs(60),
    );
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{all}");
    for f in [
        "opt/ftpc/bin/ftpcircle-fs",
        "opt/ftpc/share/man/man1/ftpcircle-fs.1",
        "opt/ftpc/share/bash-completion/completions/ftpcircle-fs",
        "opt/ftpc/share/zsh/site-functions/_ftpcircle-fs",
        "opt/ftpc/share/fish/vendor_completions.d/ftpcircle-fs.fish",
        "opt/ftpc/share/doc/ftpcircle-fs/serverlist.txt.sample",
        "opt/ftpc/share/doc/ftpcircle-fs/systemd/mnt-ftp.mount",
    ] {
        assert!(dest.join(f).is_file(), "{f} missing:\n{all}");
    }
    let helper = dest.join("sbin/mount.ftpcircle-fs");
    assert_eq!(
        std::fs::read_link(&helper).expect("helper symlink"),
        Path::new("/opt/ftpc/bin/ftpcircle-fs")
    );
    // The installed binary runs and names its version (and commit, in a git checkout).
    assert!(
        all.contains(&format!("ftpcircle-fs {}", env!("CARGO_PKG_VERSION"))),
        "{all}"
    );
}

#[test]
fn version_and_completions_from_the_binary() {
    let out = run_timeout(Command::new(BIN).arg("--version"), Duration::from_secs(10));
    let v = text(&out.stdout);
    assert!(out.status.success());
    assert!(
        v.starts_with(&format!("ftpcircle-fs {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    if Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists() {
        assert!(
            v.contains("(commit "),
            "a git checkout names its commit: {v}"
        );
    }
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef ftpcircle-fs"),
        ("fish", "complete -c ftpcircle-fs"),
    ] {
        let out = run_timeout(
            Command::new(BIN).args(["completions", shell]),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "{shell}");
        assert!(
            text(&out.stdout).contains(marker),
            "{shell}: {}",
            text(&out.stdout)
        );
    }
}
