//! proftpd and pure-ftpd, run from the Debian packages that
//! `scripts/ftp-servers.sh` unpacks (their packages conflict with vsftpd's, so
//! they are not installed).
//!
//! Owns: finding (or fetching) the unpacked servers, their configurations
//! (plain and explicit FTPS each), pure-ftpd's syslog capture, and the parsers
//! of both servers' command logs.
//!
//! Invariants: both servers listen on 127.0.0.1 only and serve one test root
//! read-only to a chrooted session that runs as `nobody`; every command they
//! receive lands in the server's log file with its first reply; everything a
//! server starts dies with it ([`FtpServer`]'s drop kills the process group;
//! pure-ftpd's private mount namespace goes with its last process).
//!
//! * proftpd 1.3.8: anonymous (`<Anonymous>` chroot), MLSD, `ExtendedLog`
//!   of every command with its final reply code; `mod_digest` loaded (XSHA256,
//!   XMD5, ... hash commands), `mod_tls` for explicit FTPS (TLS required on
//!   control and data, data sessions must resume the control session).
//! * pure-ftpd 1.0.50: one virtual user (PureDB) chrooted to the root, MLSD;
//!   `-Y 3` for TLS required on control and data.  pure-ftpd logs only to
//!   syslog, i.e. to `/dev/log`: it runs in a private mount namespace whose
//!   `/dev` has a `log` socket the harness reads ([`SyslogSink`]).

use super::{
    COUNTER, Exchange, FtpServer, ServerKind, TempDir, TestCert, make_world_readable, run_ok,
    run_timeout, start_with_retries, wait_banner,
};
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long fetching and unpacking the servers may take (a fresh machine
/// downloads about 4 MB and runs `apt-cache` a few dozen times: ~15 s).
const FETCH_LIMIT: Duration = Duration::from_secs(600);
/// A syslog sink ends by itself after this long even if never stopped
/// (longer than any test; the whole suite is bounded at 15 minutes).
const SINK_LIMIT: Duration = Duration::from_secs(1800);
/// The password of pure-ftpd's one virtual user (the user is `circle`).
pub const PUREFTPD_USER: &str = "circle";
pub const PUREFTPD_PASS: &str = "pure-pass";

/// The directory the servers are unpacked in (`.../root`, holding `usr/`).
/// Runs `scripts/ftp-servers.sh` once per test binary if it is not there.
pub fn servers_root() -> &'static Path {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = ROOT.get_or_init(|| {
        let dir = std::env::var_os("FTPCIRCLE_SERVERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/ftpcircle-fs/servers"));
        let root = dir.join("root");
        if root.join("usr/sbin/proftpd").exists() && root.join("usr/sbin/pure-ftpd").exists() {
            return Ok(root);
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ftp-servers.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(script).env("FTPCIRCLE_SERVERS_DIR", &dir);
        let out = run_timeout(&mut cmd, FETCH_LIMIT);
        if !out.status.success() {
            return Err(format!(
                "{script} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(root)
    });
    match found {
        Ok(p) => p,
        Err(e) => panic!("proftpd/pure-ftpd not available: {e}"),
    }
}

/// `LD_LIBRARY_PATH` for the unpacked servers: the multiarch library
/// directories of the unpacked packages (`usr/lib/x86_64-linux-gnu` on amd64).
fn lib_path() -> String {
    let r = servers_root();
    let mut dirs = Vec::new();
    for base in ["usr/lib", "lib"] {
        if let Ok(rd) = fs::read_dir(r.join(base)) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with("-linux-gnu") {
                    dirs.push(e.path().display().to_string());
                }
            }
        }
    }
    dirs.join(":")
}

fn unique_token(what: &str) -> String {
    format!(
        "ftpcircle-test-{}-{} {what} ready",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

// ---------------------------------------------------------------------------
// proftpd

impl FtpServer {
    /// proftpd, plain FTP, anonymous read-only, MLSD.
    pub fn proftpd(root: &Path) -> FtpServer {
        Self::start_proftpd(root, None)
    }

    /// proftpd with mod_tls: explicit FTPS required on control and data.
    pub fn proftpd_tls(root: &Path, cert: &TestCert) -> FtpServer {
        Self::start_proftpd(root, Some(cert))
    }

    fn start_proftpd(root: &Path, cert: Option<&TestCert>) -> FtpServer {
        make_world_readable(root);
        let bin = servers_root().join("usr/sbin/proftpd");
        let modules = servers_root().join("usr/lib/proftpd");
        let work = TempDir::new("proftpd");
        let log = work.join("commands.log");
        let output = work.join("proftpd.out");
        let token = unique_token("proftpd");
        let conf_path = work.join("proftpd.conf");
        let make = |port: u16| {
            let w = work.path().display();
            let mut conf = format!(
                r#"ModulePath {modules}
LoadModule mod_digest.c
ServerName "ftpcircle test proftpd"
ServerIdent on "{token}"
ServerType standalone
DefaultAddress 127.0.0.1
SocketBindTight on
Port {port}
UseIPv6 off
User nobody
Group nogroup
PidFile {w}/proftpd.pid
ScoreboardFile {w}/proftpd.scoreboard
DelayTable none
WtmpLog off
UseReverseDNS off
TransferLog none
SystemLog {w}/system.log
MaxInstances 200
TimeoutIdle 300
AllowOverwrite off
UseFtpUsers off
LogFormat commands "%P %s %r"
ExtendedLog {log} ALL commands
<Anonymous {root}>
  User nobody
  Group nogroup
  UserAlias anonymous nobody
  UserAlias ftp nobody
  RequireValidShell off
  AnonRequirePassword off
  <Limit WRITE SITE_CHMOD SITE_CPFR SITE_CPTO>
    DenyAll
  </Limit>
</Anonymous>
"#,
                modules = modules.display(),
                log = log.display(),
                root = root.display(),
            );
            if let Some(c) = cert {
                conf.push_str(&format!(
                    r#"LoadModule mod_tls.c
TLSEngine on
TLSRequired on
TLSProtocol TLSv1.2 TLSv1.3
TLSRSACertificateFile {cert}
TLSRSACertificateKeyFile {key}
TLSVerifyClient off
TLSLog {w}/tls.log
"#,
                    cert = c.cert.display(),
                    key = c.key.display(),
                ));
            }
            fs::write(&conf_path, conf).expect("write proftpd.conf");
            let mut cmd = Command::new(&bin);
            cmd.args(["-n", "-q", "-c"])
                .arg(&conf_path)
                .env("LD_LIBRARY_PATH", lib_path());
            cmd
        };
        let (port, child) = start_with_retries(&make, &output, &log, |port, child| {
            wait_banner("127.0.0.1", port, &token, child)
        });
        FtpServer {
            kind: if cert.is_some() {
                ServerKind::ProftpdTls
            } else {
                ServerKind::Proftpd
            },
            host: "127.0.0.1".into(),
            port,
            root: root.to_path_buf(),
            user: None,
            log,
            output,
            child: Some(child),
            syslog: None,
            work,
        }
    }
}

/// Parses proftpd's `ExtendedLog` in the format `"%P %s %r"`: session pid,
/// final reply code, command line as received (PASS shown as `PASS (hidden)`).
pub fn parse_proftpd_log(text: &str) -> Vec<Exchange> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(pid), Some(code), Some(cmd)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        out.push(Exchange {
            session: pid.to_string(),
            command: cmd.to_string(),
            reply: code.parse().ok(),
        });
    }
    out
}

// ---------------------------------------------------------------------------
// pure-ftpd

/// Receives syslog datagrams on a socket and appends each, one per line, to
/// a file; stops on drop (or after [`SINK_LIMIT`]).
pub struct SyslogSink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyslogSink {
    pub fn start(socket: &Path, file: &Path) -> SyslogSink {
        let sock = UnixDatagram::bind(socket)
            .unwrap_or_else(|e| panic!("bind syslog socket {}: {e}", socket.display()));
        super::set_mode(socket, 0o666);
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("syslog socket timeout");
        let mut out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + SINK_LIMIT;
            let mut buf = vec![0u8; 64 * 1024];
            while Instant::now() < deadline {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let mut msg = buf[..n].to_vec();
                        while msg.last() == Some(&b'\n') || msg.last() == Some(&0) {
                            msg.pop();
                        }
                        msg.push(b'\n');
                        let _ = out.write_all(&msg);
                    }
                    // Timeout: check the flag only when nothing is queued, so
                    // what the server logged before it died is kept.
                    Err(_) if flag.load(Ordering::SeqCst) => return,
                    Err(_) => {}
                }
            }
        });
        SyslogSink {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SyslogSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FtpServer {
    /// pure-ftpd, plain FTP, one virtual user ([`PUREFTPD_USER`] /
    /// [`PUREFTPD_PASS`]) chrooted to `root`, anonymous refused, MLSD.
    pub fn pureftpd(root: &Path) -> FtpServer {
        Self::start_pureftpd(root, None)
    }

    /// pure-ftpd requiring TLS on control and data (`-Y 3`).
    pub fn pureftpd_tls(root: &Path, cert: &TestCert) -> FtpServer {
        Self::start_pureftpd(root, Some(cert))
    }

    fn start_pureftpd(root: &Path, cert: Option<&TestCert>) -> FtpServer {
        make_world_readable(root);
        let sroot = servers_root();
        let work = TempDir::new("pureftpd");
        let log = work.join("syslog.log");
        let output = work.join("pure-ftpd.out");
        let token = unique_token("pure-ftpd");
        // The banner shows a random "fortune" from this file: our token.
        let fortunes = work.join("fortunes");
        fs::write(&fortunes, format!("{token}\n%\n")).expect("write fortunes");
        // The user database: a SHA-512 crypt hash (pure-pw's default,
        // argon2id, costs about 3 s per login).
        let hash = run_ok(
            Command::new("openssl").args(["passwd", "-6", PUREFTPD_PASS]),
            Duration::from_secs(30),
        );
        let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
        let passwd = work.join("pureftpd.passwd");
        let pdb = work.join("pureftpd.pdb");
        fs::write(
            &passwd,
            format!(
                "{PUREFTPD_USER}:{hash}:65534:65534::{}/./::::::::::::\n",
                root.display()
            ),
        )
        .expect("write pureftpd.passwd");
        run_ok(
            Command::new(sroot.join("usr/bin/pure-pw"))
                .arg("mkdb")
                .arg(&pdb)
                .arg("-f")
                .arg(&passwd)
                .env("LD_LIBRARY_PATH", lib_path()),
            Duration::from_secs(30),
        );
        // A private /dev with the device nodes pure-ftpd opens and a `log`
        // socket of ours, mounted over /dev in its own mount namespace.
        let dev = work.subdir("dev");
        for d in ["null", "zero", "random", "urandom"] {
            fs::write(dev.join(d), b"").expect("create device mount point");
        }
        let sink = SyslogSink::start(&dev.join("log"), &log);
        let bin = sroot.join("usr/sbin/pure-ftpd");
        let make = |port: u16| {
            let mut args = vec![
                format!("-S127.0.0.1,{port}"),
                format!("-lpuredb:{}", pdb.display()),
                "-E".into(), // no anonymous logins
                "-A".into(), // chroot everyone
                "-H".into(), // no reverse DNS
                "-D".into(), // list dot files
                "-4".into(),
                "-d".into(), // log commands ...
                "-d".into(), // ... and replies
                "-1".into(), // with the session pid
                "-c200".into(),
                "-C200".into(),
                format!("-g{}", work.join("pure-ftpd.pid").display()),
                format!("-F{}", fortunes.display()),
            ];
            if let Some(c) = cert {
                args.push("-Y3".into());
                args.push(format!("-2{},{}", c.cert.display(), c.key.display()));
            }
            let script = format!(
                "{drop}set -e\n\
                 for d in null zero random urandom; do mount --bind /dev/$d {dev}/$d; done\n\
                 mount --rbind {dev} /dev\n\
                 mount -t tmpfs -o size=1m,mode=755 ftpcircle-test /run\n\
                 exec \"$0\" \"$@\"\n",
                drop = super::DROP_FUSE_COPIES_SH,
                dev = dev.display()
            );
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
                .arg(&bin)
                .args(&args)
                .env("LD_LIBRARY_PATH", lib_path());
            cmd
        };
        let (port, child) = start_with_retries(&make, &output, &log, |port, child| {
            wait_banner("127.0.0.1", port, &token, child)
        });
        FtpServer {
            kind: if cert.is_some() {
                ServerKind::PureFtpdTls
            } else {
                ServerKind::PureFtpd
            },
            host: "127.0.0.1".into(),
            port,
            root: root.to_path_buf(),
            user: Some((PUREFTPD_USER.into(), PUREFTPD_PASS.into())),
            log,
            output,
            child: Some(child),
            syslog: Some(sink),
            work,
        }
    }
}

/// Parses pure-ftpd's syslog lines (`-d -d -1`):
/// `<95>Dec  1 05:36:01 pure-ftpd[PID]: (user@host) [DEBUG] Command [verb] [arg]`
/// and `... [DEBUG] 331 User circle OK.` (the first reply after a command is
/// its reply).  PASS arguments are logged as `<*>`.
pub fn parse_pureftpd_log(text: &str) -> Vec<Exchange> {
    let mut out: Vec<Exchange> = Vec::new();
    let mut pending: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        let Some(start) = line.find("pure-ftpd[") else {
            continue;
        };
        let rest = &line[start + "pure-ftpd[".len()..];
        let Some(end) = rest.find(']') else {
            continue;
        };
        let session = rest[..end].to_string();
        let Some(d) = rest.find(") [DEBUG] ") else {
            continue;
        };
        let msg = &rest[d + ") [DEBUG] ".len()..];
        if let Some(c) = msg.strip_prefix("Command [") {
            let Some((verb, arg)) = c.split_once("] [") else {
                continue;
            };
            let arg = arg.strip_suffix(']').unwrap_or(arg);
            let command = if arg.is_empty() {
                verb.to_ascii_uppercase()
            } else {
                format!("{} {arg}", verb.to_ascii_uppercase())
            };
            pending.retain(|(s, _)| *s != session);
            pending.push((session.clone(), out.len()));
            out.push(Exchange {
                session,
                command,
                reply: None,
            });
        } else if msg.len() >= 4
            && msg.as_bytes()[..3].iter().all(u8::is_ascii_digit)
            && matches!(msg.as_bytes()[3], b' ' | b'-')
            && let Some(pos) = pending.iter().position(|(s, _)| *s == session)
        {
            let (_, idx) = pending.remove(pos);
            out[idx].reply = msg[..3].parse().ok();
        }
    }
    out
}
