//! "Staying up": fault-injection tests over real mounts.
//!
//! Each test mounts the binary (`Mount` from the harness) over real servers
//! (vsftpd / pyftpdlib) and, where a fault is needed that real servers won't
//! produce, the hand-written fake in `common::fake`. Every mount uses
//! `--timeout 2`, and operations that must not hang are timed against
//! generous correctness bounds (not speed benchmarks):
//!
//! * a listing with a server that stopped answering: 3 x timeout + 2 s;
//! * the next listing, once that server is known to be down: 1 s;
//! * a server coming back: seen within 30 s.
//!
//! Multi-step tests collect every failed expectation ([`Checks`]) and report
//! them together, so one run tells which parts of a behaviour are missing.
//! Every test ends by checking that no server received a write command.

mod common;

use common::fake::{FakeConfig, FakeFtp, dir_line, file_line, link_line};
use common::{
    FtpServer, Mount, MountOptions, TempDir, descendants, pseudo_random_bytes, run_timeout,
    send_signal, set_mtime, utc_secs, write_file,
};
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// `--timeout` of every mount here, in seconds.
const TIMEOUT: u64 = 2;
/// A listing while one server does not answer: 3 x timeout + 2 s.
const HUNG_BOUND: Duration = Duration::from_secs(3 * TIMEOUT + 2);
/// A listing once the silent server is known to be unhealthy.
const KNOWN_DOWN_BOUND: Duration = Duration::from_secs(1);
/// A server that came back is used again within this.
const COMEBACK: Duration = Duration::from_secs(30);
/// Copies and whole-file reads of a few MiB.
const COPY_LIMIT: Duration = Duration::from_secs(60);
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// helpers

fn opts() -> MountOptions {
    MountOptions::default()
        .arg("--timeout")
        .arg(&TIMEOUT.to_string())
}

/// For tests that make a server go silent after the mount is up: without prefetch, the
/// listings of the subdirectories are fetched when `ls` asks, so the fault is met by the
/// request under test (with prefetch they may already be cached, which hides the fault).
fn opts_no_prefetch() -> MountOptions {
    opts().arg("--no-prefetch")
}

/// A vsftpd serving `files` (path, bytes); the root dir lives as long as it.
struct Vs {
    srv: FtpServer,
    root: PathBuf,
    _dir: TempDir,
}

/// vsftpd serving `files`, each dated 2024-01-15 12:00 UTC: the fake lists every file as
/// `Jan 15  2024`, and only copies of the same day are mirrors of the fake's.
fn vsftpd(files: &[(&str, &[u8])]) -> Vs {
    let dir = TempDir::new("faults-vs");
    let root = dir.subdir("root");
    for (p, data) in files {
        write_file(&root.join(p), data);
        set_mtime(&root.join(p), utc_secs(2024, 1, 15, 12, 0, 0));
    }
    let srv = FtpServer::vsftpd(&root);
    Vs {
        srv,
        root,
        _dir: dir,
    }
}

/// Runs `f` on another thread; panics if it is still running after `limit`
/// (the FUSE request may be stuck). Returns its result and how long it took.
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => (v, start.elapsed()),
        Err(_) => panic!("{what}: still running after {limit:?}"),
    }
}

fn names_of(dir: &Path) -> io::Result<BTreeSet<Vec<u8>>> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir(dir)? {
        out.insert(e?.file_name().as_bytes().to_vec());
    }
    Ok(out)
}

/// `read_dir` of `dir`, timed, with a hard limit well above any bound.
fn ls(dir: &Path) -> (io::Result<BTreeSet<Vec<u8>>>, Duration) {
    let d = dir.to_path_buf();
    within(
        &format!("ls {}", dir.display()),
        Duration::from_secs(60),
        move || names_of(&d),
    )
}

fn set(items: &[&str]) -> BTreeSet<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn show(r: &io::Result<BTreeSet<Vec<u8>>>) -> String {
    match r {
        Ok(s) => format!(
            "{:?}",
            s.iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect::<Vec<_>>()
        ),
        Err(e) => format!("error {e}"),
    }
}

/// Polls `cond` every 250 ms until it holds, at most `limit` (and at most
/// limit / 250 ms + 1 tries).
fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    let tries = limit.as_millis() / 250 + 1;
    for _ in 0..tries {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(250));
    }
    cond()
}

/// Reads a whole file; returns what arrived and how it ended.
fn read_all(p: &Path) -> (Vec<u8>, io::Result<()>) {
    let p = p.to_path_buf();
    within(&format!("read {}", p.display()), COPY_LIMIT, move || {
        let mut buf = Vec::new();
        let r = fs::File::open(&p).and_then(|mut f| f.read_to_end(&mut buf).map(|_| ()));
        (buf, r)
    })
    .0
}

/// `pread` of `len` bytes at `off` from a freshly opened file.
fn pread(p: &Path, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let p = p.to_path_buf();
    within(&format!("pread {}", p.display()), COPY_LIMIT, move || {
        let f = fs::File::open(&p)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off)?;
        Ok(buf)
    })
    .0
}

/// `cp SRC DST` (the real tool), bounded.
fn cp(src: &Path, dst: &Path) -> std::process::Output {
    run_timeout(Command::new("cp").arg(src).arg(dst), COPY_LIMIT)
}

/// Every expectation of a multi-step test; reported together at the end.
#[derive(Default)]
struct Checks {
    fails: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            let m = msg();
            eprintln!("CHECK FAILED: {m}");
            self.fails.push(m);
        }
    }

    /// The fake saw a login and no write command.
    fn fake_read_only(&mut self, fake: &FakeFtp) {
        let res = common::check_fake_no_write_commands(fake);
        self.check(res.is_ok(), || {
            format!("fake {}: {}", fake.addr(), res.clone().unwrap_err())
        });
    }

    /// The real server saw a login and no write command.
    fn server_read_only(&mut self, srv: &FtpServer) {
        let res = srv.check_no_write_commands();
        self.check(res.is_ok(), || {
            format!(
                "{:?} {}: {}",
                srv.kind,
                srv.addr(),
                res.clone().unwrap_err()
            )
        });
    }

    /// A fake that never got as far as a login (it hangs, or refuses it) was still contacted,
    /// and received no write command.
    fn fake_contacted_read_only(&mut self, fake: &FakeFtp) {
        let bad: Vec<String> = fake
            .verbs()
            .into_iter()
            .filter(|v| common::is_write_verb(v))
            .collect();
        let contacted = fake.connections() > 0;
        self.check(contacted && bad.is_empty(), || {
            format!(
                "fake {}: contacted: {contacted}, write commands: {bad:?}",
                fake.addr()
            )
        });
    }

    /// A real server whose login fails saw the attempt (USER) and no write command.
    fn server_attempted_read_only(&mut self, srv: &FtpServer) {
        let ex = srv.exchanges();
        let tried = ex.iter().any(|e| e.verb() == "USER");
        let bad: Vec<&String> = ex
            .iter()
            .filter(|e| common::is_write_verb(&e.verb()))
            .map(|e| &e.command)
            .collect();
        self.check(tried && bad.is_empty(), || {
            format!(
                "{:?} {}: login tried: {tried}, write commands: {bad:?}",
                srv.kind,
                srv.addr()
            )
        });
    }

    fn finish(self) {
        assert!(
            self.fails.is_empty(),
            "{} expectation(s) failed:\n  - {}",
            self.fails.len(),
            self.fails.join("\n  - ")
        );
    }
}

/// The bound for an operation, with how long it took.
fn timed_ok(c: &mut Checks, what: &str, took: Duration, bound: Duration) {
    eprintln!("timing: {what}: {took:.2?} (bound {bound:?})");
    c.check(took <= bound, || {
        format!("{what} took {took:.2?}, bound {bound:?}")
    });
}

fn assert_fake_read_only(fake: &FakeFtp) {
    if let Err(e) = common::check_fake_no_write_commands(fake) {
        panic!("fake {}: {e}", fake.addr());
    }
}

fn assert_server_read_only(srv: &FtpServer) {
    srv.assert_no_write_commands(&format!("{:?} {}", srv.kind, srv.addr()));
}

/// Lines of the launch output (daemon stderr before it detached) naming `addr`.
fn lines_naming(text: &str, addr: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(addr))
        .map(str::to_string)
        .collect()
}

/// SIGSTOPs a process tree; SIGCONT on drop (also when the test panics).
struct Frozen {
    pids: Vec<i32>,
}

impl Frozen {
    fn new(root: i32) -> Frozen {
        let mut pids = vec![root];
        send_signal(root, libc::SIGSTOP);
        // Stop the per-session processes too (collected after the root
        // stopped, so it cannot fork new ones meanwhile).
        for p in descendants(root) {
            send_signal(p, libc::SIGSTOP);
            pids.push(p);
        }
        Frozen { pids }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for p in &self.pids {
            send_signal(*p, libc::SIGCONT);
        }
    }
}

// ---------------------------------------------------------------------------
// a. a server down when the mount starts

#[test]
fn server_down_at_mount_joins_when_it_comes_up() {
    let mut fake = FakeFtp::start(
        FakeConfig::new()
            .file("late/late.txt", b"late file\n".to_vec())
            .file("late-top.txt", b"top\n".to_vec()),
    );
    fake.stop();
    let vs = vsftpd(&[("early.txt", b"early\n")]);
    let list = format!("{}\n{}\n", fake.line(), vs.srv.line());
    let m = Mount::start(&list, &opts());
    let mut c = Checks::default();

    let out = m.launch_output();
    let named = lines_naming(&out, &fake.addr());
    c.check(named.len() == 1, || {
        format!(
            "stderr should warn once naming {}, got {} line(s):\n{out}",
            fake.addr(),
            named.len()
        )
    });
    let (root, took) = ls(m.path());
    c.check(root.as_ref().ok() == Some(&set(&["early.txt"])), || {
        format!("root with the server down: {}", show(&root))
    });
    timed_ok(&mut c, "ls / with a refused server", took, HUNG_BOUND);

    fake.restart();
    let want = set(&["early.txt", "late", "late-top.txt"]);
    let mut last = String::new();
    let back = poll_until(COMEBACK, || {
        let r = names_of(m.path());
        last = show(&r);
        r.ok().as_ref() == Some(&want)
    });
    c.check(back, || {
        format!("server started later not in ls / within {COMEBACK:?}; last: {last}")
    });
    if back {
        let (data, r) = read_all(&m.join("late/late.txt"));
        c.check(r.is_ok() && data == b"late file\n", || {
            format!("late/late.txt: {r:?} {:?}", String::from_utf8_lossy(&data))
        });
    }
    c.fake_read_only(&fake);
    c.server_read_only(&vs.srv);
    c.finish();
}

// ---------------------------------------------------------------------------
// b. a server that stops answering

#[test]
fn server_hanging_after_greeting_at_mount_time() {
    let fake = FakeFtp::start(FakeConfig {
        hang_after_greeting: true,
        ..FakeConfig::new().file("d1/f1.txt", b"f1\n".to_vec())
    });
    let vs = vsftpd(&[("d1/v1.txt", b"v1\n"), ("d2/v2.txt", b"v2\n")]);
    let list = format!("{}\n{}\n", fake.line(), vs.srv.line());
    let started = Instant::now();
    let m = Mount::start(&list, &opts().arg("--cache-ttl").arg("1"));
    let mut c = Checks::default();
    timed_ok(
        &mut c,
        "mounting with a silent server",
        started.elapsed(),
        HUNG_BOUND + Duration::from_secs(5),
    );

    let (root, took) = ls(m.path());
    c.check(root.as_ref().ok() == Some(&set(&["d1", "d2"])), || {
        format!("root: {}", show(&root))
    });
    timed_ok(&mut c, "first ls /", took, HUNG_BOUND);

    // Let the root listing expire (--cache-ttl 1): listing it again must not
    // wait for the silent server again.
    thread::sleep(Duration::from_millis(1500));
    let (root, took) = ls(m.path());
    c.check(root.as_ref().ok() == Some(&set(&["d1", "d2"])), || {
        format!("root again: {}", show(&root))
    });
    timed_ok(
        &mut c,
        "ls / again (server known silent)",
        took,
        KNOWN_DOWN_BOUND,
    );
    let (d2, took) = ls(&m.join("d2"));
    c.check(d2.as_ref().ok() == Some(&set(&["v2.txt"])), || {
        format!("d2: {}", show(&d2))
    });
    timed_ok(&mut c, "ls /d2", took, KNOWN_DOWN_BOUND);
    c.fake_contacted_read_only(&fake);
    c.server_read_only(&vs.srv);
    c.finish();
}

#[test]
fn fake_server_going_silent_is_skipped_then_rejoins() {
    let fake = FakeFtp::start(
        FakeConfig::new()
            .file("d1/f1.txt", b"f1\n".to_vec())
            .file("d2/f2.txt", b"f2\n".to_vec())
            .file("d3/f3.txt", b"f3\n".to_vec()),
    );
    let vs = vsftpd(&[
        ("d1/v1.txt", b"v1\n"),
        ("d2/v2.txt", b"v2\n"),
        ("d3/v3.txt", b"v3\n"),
    ]);
    let list = format!("{}\n{}\n", fake.line(), vs.srv.line());
    let m = Mount::start(&list, &opts_no_prefetch());
    let mut c = Checks::default();
    let (root, _) = ls(m.path());
    assert_eq!(
        root.as_ref().ok(),
        Some(&set(&["d1", "d2", "d3"])),
        "root before the fault: {}",
        show(&root)
    );

    // Pooled connections now hang on LIST, new ones right after the greeting.
    fake.configure(|cfg| {
        cfg.hang_after_greeting = true;
        cfg.hang_on_list = true;
    });
    let (d1, took) = ls(&m.join("d1"));
    c.check(d1.as_ref().ok() == Some(&set(&["v1.txt"])), || {
        format!("d1 with the fake silent: {}", show(&d1))
    });
    timed_ok(&mut c, "ls /d1 (fake silent)", took, HUNG_BOUND);
    let (d2, took) = ls(&m.join("d2"));
    c.check(d2.as_ref().ok() == Some(&set(&["v2.txt"])), || {
        format!("d2 with the fake silent: {}", show(&d2))
    });
    timed_ok(&mut c, "ls /d2 (fake known silent)", took, KNOWN_DOWN_BOUND);

    fake.configure(|cfg| {
        cfg.hang_after_greeting = false;
        cfg.hang_on_list = false;
    });
    let mut last = String::new();
    let back = poll_until(COMEBACK, || {
        let a = names_of(&m.join("d1"));
        let b = names_of(&m.join("d3"));
        last = format!("d1 {} d3 {}", show(&a), show(&b));
        a.ok() == Some(set(&["f1.txt", "v1.txt"])) && b.ok() == Some(set(&["f3.txt", "v3.txt"]))
    });
    c.check(back, || {
        format!("fake's entries not back within {COMEBACK:?}; last: {last}")
    });
    c.fake_read_only(&fake);
    c.server_read_only(&vs.srv);
    c.finish();
}

#[test]
fn sigstopped_vsftpd_is_skipped_then_rejoins() {
    let a = vsftpd(&[
        ("d1/a1.txt", b"a1\n"),
        ("d2/a2.txt", b"a2\n"),
        ("d3/a3.txt", b"a3\n"),
    ]);
    let b = vsftpd(&[
        ("d1/b1.txt", b"b1\n"),
        ("d2/b2.txt", b"b2\n"),
        ("d3/b3.txt", b"b3\n"),
    ]);
    let list = format!("{}\n{}\n", a.srv.line(), b.srv.line());
    let m = Mount::start(&list, &opts_no_prefetch());
    let mut c = Checks::default();
    let (root, _) = ls(m.path());
    assert_eq!(
        root.as_ref().ok(),
        Some(&set(&["d1", "d2", "d3"])),
        "root before the fault: {}",
        show(&root)
    );

    let frozen = Frozen::new(a.srv.pid().expect("vsftpd pid") as i32);
    let (d1, took) = ls(&m.join("d1"));
    c.check(d1.as_ref().ok() == Some(&set(&["b1.txt"])), || {
        format!("d1 with A stopped: {}", show(&d1))
    });
    timed_ok(&mut c, "ls /d1 (A stopped)", took, HUNG_BOUND);
    let (d2, took) = ls(&m.join("d2"));
    c.check(d2.as_ref().ok() == Some(&set(&["b2.txt"])), || {
        format!("d2 with A stopped: {}", show(&d2))
    });
    timed_ok(&mut c, "ls /d2 (A known stopped)", took, KNOWN_DOWN_BOUND);

    drop(frozen); // SIGCONT
    let mut last = String::new();
    let back = poll_until(COMEBACK, || {
        let x = names_of(&m.join("d1"));
        let y = names_of(&m.join("d3"));
        last = format!("d1 {} d3 {}", show(&x), show(&y));
        x.ok() == Some(set(&["a1.txt", "b1.txt"])) && y.ok() == Some(set(&["a3.txt", "b3.txt"]))
    });
    c.check(back, || {
        format!("A's entries not back within {COMEBACK:?} after SIGCONT; last: {last}")
    });
    c.server_read_only(&a.srv);
    c.server_read_only(&b.srv);
    c.finish();
}

// ---------------------------------------------------------------------------
// c. wrong credentials

#[test]
fn wrong_password_is_reported_once_without_the_password() {
    const WRONG: &str = "wrong-pw-zq81x";
    let pdir = TempDir::new("faults-py");
    let proot = pdir.subdir("root");
    write_file(&proot.join("secret/s.txt"), b"s\n");
    let py = FtpServer::pyftpdlib(&proot, "circle", "right-pw-5521");
    let vs = vsftpd(&[("pub/v.txt", b"v\n")]);
    let list = format!(
        "{}\n{}:{},circle,{WRONG},0\n",
        vs.srv.line(),
        py.host,
        py.port
    );
    let m = Mount::start(&list, &opts().arg("-vv"));
    let mut c = Checks::default();

    let (root, took) = ls(m.path());
    c.check(root.as_ref().ok() == Some(&set(&["pub"])), || {
        format!("root: {}", show(&root))
    });
    timed_ok(&mut c, "ls /", took, HUNG_BOUND);
    let (data, r) = read_all(&m.join("pub/v.txt"));
    c.check(r.is_ok() && data == b"v\n", || format!("pub/v.txt: {r:?}"));
    // A few more listings, so retries (if any) get logged too.
    for _ in 0..3 {
        let _ = ls(m.path());
        thread::sleep(Duration::from_millis(300));
    }

    let out = m.launch_output();
    let addr = py.addr();
    let named = lines_naming(&out, &addr);
    c.check(named.len() == 1, || {
        format!(
            "stderr should name {addr} once, got {} line(s):\n{out}",
            named.len()
        )
    });
    c.check(
        named
            .iter()
            .any(|l| l.to_ascii_lowercase().contains("login")),
        || format!("stderr line naming {addr} should say \"login\": {named:?}"),
    );
    c.check(!out.contains(WRONG), || {
        format!("the password appears on stderr:\n{out}")
    });
    let log = m.log();
    c.check(!log.contains(WRONG), || {
        "the password appears in the log file".to_string()
    });
    c.server_attempted_read_only(&py);
    c.server_read_only(&vs.srv);
    c.finish();
}

// ---------------------------------------------------------------------------
// d. a server dying mid-read

#[test]
fn server_dying_mid_read_falls_back_to_mirror() {
    let data = pseudo_random_bytes(41, 3 * MIB);
    let fake = FakeFtp::start(FakeConfig {
        drop_retr_after: Some(MIB as u64),
        ..FakeConfig::new().file("big.bin", data.clone())
    });
    let vs = vsftpd(&[("big.bin", &data)]);
    let list = format!("{}\n{}\n", fake.line(), vs.srv.line());
    let m = Mount::start(&list, &opts());
    let out_dir = TempDir::new("faults-cp");
    let dst = out_dir.join("big.bin");
    let out = cp(&m.join("big.bin"), &dst);
    assert!(
        out.status.success(),
        "cp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = fs::read(&dst).expect("read copy");
    assert!(
        got == data,
        "copy differs: {} bytes, want {}",
        got.len(),
        data.len()
    );
    assert!(
        fake.verbs().iter().any(|v| v == "RETR"),
        "the fake (priority 1) was never asked for the file"
    );
    assert_fake_read_only(&fake);
    assert_server_read_only(&vs.srv);
}

/// Two copies of the same size and date but different contents (a rebuilt image on one
/// mirror): the first dies mid-read. The read is either one copy whole or EIO with a prefix of
/// one copy, never bytes of both; and so is every read after it.
#[test]
fn failover_between_different_copies_never_mixes_bytes() {
    let first = pseudo_random_bytes(70, 3 * MIB);
    let second = pseudo_random_bytes(71, 3 * MIB);
    // A mirror of the same bytes as a control: the failover itself works.
    for (what, mirror) in [("different copy", &second), ("same copy", &first)] {
        let fake = FakeFtp::start(FakeConfig {
            drop_retr_after: Some(MIB as u64),
            die_after_drop: true,
            ..FakeConfig::new().file("x.bin", first.clone())
        });
        let vs = vsftpd(&[("x.bin", mirror)]);
        let list = format!("{}\n{}\n", fake.line(), vs.srv.line());
        let m = Mount::start(&list, &opts());
        let mut c = Checks::default();
        let one_copy = |got: &[u8], r: &io::Result<()>| match r {
            Ok(()) => got == first || got == *mirror,
            Err(e) => {
                e.raw_os_error() == Some(libc::EIO)
                    && (first.starts_with(got) || mirror.starts_with(got))
            }
        };
        let (got, r) = read_all(&m.join("x.bin"));
        c.check(one_copy(&got, &r), || {
            format!(
                "{what}: first read: {} bytes, {r:?}: mixed or wrong",
                got.len()
            )
        });
        c.check(fake.verbs().iter().any(|v| v == "RETR"), || {
            format!("{what}: the fake (priority 1) was never asked for the file")
        });
        // Only the whole-file case leaves a mixed page cache possible: read again.
        for round in 0..2 {
            let (got, r) = read_all(&m.join("x.bin"));
            c.check(one_copy(&got, &r), || {
                format!("{what}: read {round} after: {} bytes, {r:?}", got.len())
            });
        }
        let log = m.log();
        if what == "different copy" {
            c.check(log.contains("differ"), || {
                format!("{what}: the log should say the copies differ:\n{log}")
            });
        } else {
            c.check(r.is_ok() && got == first, || {
                format!(
                    "{what}: failover to an identical copy: {} bytes, {r:?}",
                    got.len()
                )
            });
            c.check(!log.contains("differ"), || {
                format!("{what}: identical copies found different:\n{log}")
            });
        }
        c.server_read_only(&vs.srv);
        c.finish();
    }
}

/// Copies that agree at the splice point but differ elsewhere: only hashes can tell. Both
/// fakes offer proftpd-style hash commands; the first cuts every transfer short at 1 MiB
/// (and stays up, so it can be asked for its hash).
#[test]
fn hashes_decide_failover_between_copies_that_agree_at_the_splice() {
    let first = pseudo_random_bytes(72, 2 * MIB);
    let mut changed = first.clone();
    changed[3 * MIB / 2] ^= 0x55;
    assert_eq!(
        common::fake::crc32(b"123456789"),
        0xCBF4_3926,
        "the CRC-32 check value"
    );
    for (what, mirror) in [("differ far from the cut", &changed), ("identical", &first)] {
        let serve = |data: &Vec<u8>, drop: bool| {
            FakeFtp::start(FakeConfig {
                drop_retr_after: drop.then_some(MIB as u64),
                hash_crc32: true,
                ..FakeConfig::new().file("x.bin", data.clone())
            })
        };
        let (f1, f2) = (serve(&first, true), serve(mirror, false));
        let list = format!("{}\n{}\n", f1.line(), f2.line());
        let m = Mount::start(&list, &opts());
        let mut c = Checks::default();
        let (got, r) = read_all(&m.join("x.bin"));
        let log = m.log();
        let hashed = |f: &FakeFtp| f.verbs().iter().any(|v| v == "HASH");
        c.check(hashed(&f1) && hashed(&f2), || {
            format!("{what}: both servers should be asked for a hash")
        });
        if what == "identical" {
            c.check(r.is_ok() && got == first, || {
                format!("{what}: {} bytes, {r:?}", got.len())
            });
        } else {
            // The first server stays up (it only cuts each transfer at 1 MiB), so a retry
            // may finish the file from it alone: whole and right, or EIO after a prefix.
            let one_copy = match &r {
                Ok(()) => got == first,
                Err(e) => e.raw_os_error() == Some(libc::EIO) && first.starts_with(&got),
            };
            c.check(one_copy, || {
                format!(
                    "{what}: {} bytes, {r:?}: not the first copy alone",
                    got.len()
                )
            });
            c.check(log.contains("different hashes"), || {
                format!("{what}: the log should name the hashes:\n{log}")
            });
        }
        assert_fake_read_only(&f1);
        assert_fake_read_only(&f2);
        c.finish();
    }
}

/// errno as POSIX tools expect them, through a real mount.
#[test]
fn errno_values_are_the_ones_posix_tools_expect() {
    let fake = FakeFtp::start(
        FakeConfig::new()
            .file("a.txt", b"a\n".to_vec())
            .file("d/b.txt", b"b\n".to_vec()),
    );
    let m = Mount::start(&format!("{}\n", fake.line()), &opts());
    let mut c = Checks::default();
    let errno = |r: io::Result<()>| r.err().and_then(|e| e.raw_os_error());
    let cpath = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // A path through a file.
    let through = m.join("a.txt/x");
    c.check(
        errno(fs::metadata(&through).map(drop)) == Some(libc::ENOTDIR),
        || format!("stat a.txt/x: {:?}", fs::metadata(&through).err()),
    );
    c.check(
        errno(fs::read_dir(&through).map(drop)) == Some(libc::ENOTDIR),
        || "ls a.txt/x: want ENOTDIR".to_string(),
    );
    // A directory read as a file.
    let mut buf = Vec::new();
    let r = fs::File::open(m.join("d")).and_then(|mut f| f.read_to_end(&mut buf).map(drop));
    c.check(errno(r) == Some(libc::EISDIR), || {
        "read of a directory: want EISDIR".to_string()
    });
    // Extended attributes: an unknown name is ENODATA; the list holds only the provenance
    // names (tests/visibility.rs checks their values).
    for rel in ["a.txt", "d"] {
        let p = cpath(&m.join(rel));
        let name = std::ffi::CString::new("user.x").unwrap();
        let mut val = [0u8; 64];
        let rc = unsafe {
            libc::getxattr(
                p.as_ptr(),
                name.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        let e = io::Error::last_os_error().raw_os_error();
        c.check(rc == -1 && e == Some(libc::ENODATA), || {
            format!("getxattr {rel}: rc {rc}, errno {e:?}, want ENODATA")
        });
        let want: &[u8] = b"user.ftpcircle.servers\0user.ftpcircle.mirrors\0user.ftpcircle.url\0";
        let mut list = [0u8; 256];
        let rc = unsafe { libc::listxattr(p.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
        c.check(rc >= 0 && &list[..rc as usize] == want, || {
            format!("listxattr {rel}: {rc}, want the provenance names")
        });
        let rc = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        c.check(rc == want.len() as isize, || {
            format!("listxattr {rel} size query: {rc}, want {}", want.len())
        });
        let mut small = [0u8; 8];
        let rc = unsafe { libc::listxattr(p.as_ptr(), small.as_mut_ptr().cast(), small.len()) };
        let e = io::Error::last_os_error().raw_os_error();
        c.check(rc == -1 && e == Some(libc::ERANGE), || {
            format!("listxattr {rel} into 8 bytes: rc {rc}, errno {e:?}, want ERANGE")
        });
    }
    assert_fake_read_only(&fake);
    c.finish();
}

/// Reading must fail with EIO, and what arrived before must be a true prefix.
fn expect_eio(c: &mut Checks, what: &str, p: &Path, truth: &[u8]) {
    let (got, r) = read_all(p);
    match r {
        Ok(()) => c.check(false, || {
            format!(
                "{what}: read succeeded with {} bytes (truth {}, equal: {})",
                got.len(),
                truth.len(),
                got == truth
            )
        }),
        Err(e) => {
            c.check(e.raw_os_error() == Some(libc::EIO), || {
                format!("{what}: want EIO, got {e}")
            });
            c.check(got.len() < truth.len() && truth.starts_with(&got), || {
                format!(
                    "{what}: the {} bytes before the error are not a prefix of the file",
                    got.len()
                )
            });
        }
    }
}

/// A server that cuts a transfer short but keeps serving may be resumed (REST
/// at the offset reached): the read either fails with EIO (what arrived
/// being a true prefix) or returns exactly the whole file, never short or
/// wrong data.
fn expect_eio_or_whole(c: &mut Checks, what: &str, p: &Path, truth: &[u8]) {
    let (got, r) = read_all(p);
    match r {
        Ok(()) => c.check(got == truth, || {
            format!(
                "{what}: read \"succeeded\" with {} bytes that are not the file ({} bytes)",
                got.len(),
                truth.len()
            )
        }),
        Err(_) => expect_eio(c, what, p, truth),
    }
}

#[test]
fn server_dying_mid_read_without_mirror_gives_eio() {
    let dead = pseudo_random_bytes(45, 3 * MIB);
    let d426 = pseudo_random_bytes(42, 3 * MIB);
    let d226 = pseudo_random_bytes(43, 3 * MIB);
    let short = pseudo_random_bytes(44, 3 * MIB / 2);
    // Sends 1 MiB, then the whole server goes down.
    let fdead = FakeFtp::start(FakeConfig {
        drop_retr_after: Some(MIB as u64),
        die_after_drop: true,
        ..FakeConfig::new().file("dies.bin", dead.clone())
    });
    // 426 after 1 MiB (every transfer), otherwise fine.
    let f426 = FakeFtp::start(FakeConfig {
        drop_retr_after: Some(MIB as u64),
        ..FakeConfig::new().file("drop426.bin", d426.clone())
    });
    // Claims success (226) after 1 MiB (every transfer).
    let f226 = FakeFtp::start(FakeConfig {
        drop_retr_after: Some(MIB as u64),
        drop_retr_lie_226: true,
        ..FakeConfig::new().file("drop226.bin", d226.clone())
    });
    // Lists 2 MiB, sends 1.5 MiB and 226.
    let mut lie = FakeConfig::new().file("short.bin", short.clone());
    lie.lie_size.insert("short.bin".into(), 2 * MIB as u64);
    let flie = FakeFtp::start(lie);
    let list = format!(
        "{}\n{}\n{}\n{}\n",
        fdead.line(),
        f426.line(),
        f226.line(),
        flie.line()
    );
    let m = Mount::start(&list, &opts());
    let mut c = Checks::default();

    let (root, _) = ls(m.path());
    c.check(
        root.as_ref().ok()
            == Some(&set(&[
                "dies.bin",
                "drop226.bin",
                "drop426.bin",
                "short.bin",
            ])),
        || format!("root: {}", show(&root)),
    );
    let size = fs::metadata(m.join("short.bin")).map(|md| md.len());
    c.check(size.as_ref().ok() == Some(&(2 * MIB as u64)), || {
        format!("short.bin should be listed as 2 MiB: {size:?}")
    });

    let out_dir = TempDir::new("faults-cp");
    let (out, took) = {
        let (src, dst) = (m.join("dies.bin"), out_dir.join("x"));
        within("cp dies.bin", COPY_LIMIT, move || cp(&src, &dst))
    };
    c.check(!out.status.success(), || {
        "cp of a file whose only server dies mid-read succeeded".to_string()
    });
    timed_ok(
        &mut c,
        "cp of a file whose server died",
        took,
        HUNG_BOUND * 2,
    );
    let copied = fs::read(out_dir.join("x")).unwrap_or_default();
    c.check(
        copied.len() < dead.len() && dead.starts_with(&copied),
        || format!("cp left {} bytes that are not a prefix", copied.len()),
    );
    expect_eio(
        &mut c,
        "dies.bin (server down after 1 MiB)",
        &m.join("dies.bin"),
        &dead,
    );
    expect_eio_or_whole(
        &mut c,
        "drop426.bin (426 after 1 MiB)",
        &m.join("drop426.bin"),
        &d426,
    );
    expect_eio_or_whole(
        &mut c,
        "drop226.bin (226 after 1 MiB)",
        &m.join("drop226.bin"),
        &d226,
    );
    let mut truth = short.clone();
    truth.resize(2 * MIB, 0); // the listed size; any Ok() read is wrong anyway
    expect_eio(
        &mut c,
        "short.bin (listed 2 MiB, 1.5 MiB sent)",
        &m.join("short.bin"),
        &truth,
    );
    // The mount still works afterwards.
    let (root, took) = ls(m.path());
    c.check(root.is_ok(), || format!("ls / afterwards: {}", show(&root)));
    timed_ok(&mut c, "ls / afterwards", took, HUNG_BOUND);
    for f in [&fdead, &f426, &f226, &flie] {
        c.fake_read_only(f);
    }
    c.finish();
}

#[test]
fn abandoned_reads_leave_connections_usable() {
    // One connection per server, so a connection left out of step by an
    // aborted transfer (e.g. an unread "225 No transfer to ABOR") is reused.
    let sizes = [256 * 1024, 3 * MIB];
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut vs_files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut cfg426 = FakeConfig::new();
    let mut cfg226 = FakeConfig {
        abor_426: false,
        ..FakeConfig::new()
    };
    for (i, size) in sizes.iter().enumerate() {
        for round in 0..2 {
            let seed = (i * 10 + round) as u64;
            let a = (
                format!("f426-{i}-{round}.bin"),
                pseudo_random_bytes(80 + seed, *size),
            );
            let b = (
                format!("f226-{i}-{round}.bin"),
                pseudo_random_bytes(180 + seed, *size),
            );
            let v = (
                format!("vs-{i}-{round}.bin"),
                pseudo_random_bytes(280 + seed, *size),
            );
            cfg426 = cfg426.file(&a.0, a.1.clone());
            cfg226 = cfg226.file(&b.0, b.1.clone());
            vs_files.push(v.clone());
            files.extend([a, b, v]);
        }
    }
    let f426 = FakeFtp::start(cfg426);
    let f226 = FakeFtp::start(cfg226);
    let vs_refs: Vec<(&str, &[u8])> = vs_files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let vs = vsftpd(&vs_refs);
    let list = format!("{}\n{}\n{}\n", f426.line(), f226.line(), vs.srv.line());
    let m = Mount::start(&list, &opts().arg("--max-connections").arg("1"));
    let mut c = Checks::default();
    for (name, data) in &files {
        // Read a little and close: the transfer is abandoned mid-way.
        let r = pread(&m.join(name), 0, 100);
        c.check(r.as_deref().ok() == Some(&data[..100]), || {
            format!("first 100 bytes of {name}: {:?}", r.map(|v| v.len()))
        });
        thread::sleep(Duration::from_millis(100));
    }
    for (name, data) in &files {
        // Then the whole file, over the same (single) connection.
        let (got, r) = read_all(&m.join(name));
        c.check(r.is_ok() && got == *data, || {
            format!("{name} after abandoned reads: {r:?}, {} bytes", got.len())
        });
    }
    // The kernel retries a failed read once, which can hide a request that
    // failed on a connection left out of step; the log cannot hide it.
    let log = m.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    c.check(bad.is_empty(), || {
        format!(
            "abandoning reads (no fault at all) logged {} warning(s)/error(s), e.g. {:?}",
            bad.len(),
            bad.iter().take(3).collect::<Vec<_>>()
        )
    });
    c.fake_read_only(&f426);
    c.fake_read_only(&f226);
    c.server_read_only(&vs.srv);
    c.finish();
}

// ---------------------------------------------------------------------------
// e. connection limit

#[test]
fn one_connection_server_serves_parallel_reads() {
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("p{i}.bin"),
                pseudo_random_bytes(50 + i, MIB + i as usize),
            )
        })
        .collect();
    let mut cfg = FakeConfig {
        max_connections: Some(1),
        ..FakeConfig::new()
    };
    for (name, data) in &files {
        cfg = cfg.file(name, data.clone());
    }
    let fake = FakeFtp::start(cfg);
    let m = Mount::start(
        &format!("{}\n", fake.line()),
        &opts().arg("--max-connections").arg("4"),
    );
    let handles: Vec<_> = files
        .iter()
        .map(|(name, _)| {
            let p = m.join(name);
            thread::spawn(move || read_all(&p))
        })
        .collect();
    let mut c = Checks::default();
    for ((name, data), h) in files.iter().zip(handles) {
        let (got, r) = h.join().expect("reader thread");
        c.check(r.is_ok() && got == *data, || {
            format!(
                "{name}: {r:?}, {} bytes of {}, equal: {}",
                got.len(),
                data.len(),
                got == *data
            )
        });
    }
    c.fake_read_only(&fake);
    c.finish();
}

// ---------------------------------------------------------------------------
// f. REST refused

#[test]
fn rest_refused_reads_at_offsets_are_still_right() {
    let a = pseudo_random_bytes(60, 2 * MIB);
    let b = pseudo_random_bytes(61, 2 * MIB);
    let mirrored = pseudo_random_bytes(62, 2 * MIB);
    let fake = FakeFtp::start(FakeConfig {
        rest_supported: false,
        ..FakeConfig::new()
            .file("a.bin", a.clone())
            .file("b.bin", b.clone())
            .file("m.bin", mirrored.clone())
    });
    let vs = vsftpd(&[("m.bin", &mirrored)]);
    let list = format!("{}\n{}\n", fake.line(), vs.srv.line());
    let m = Mount::start(&list, &opts());
    let mut c = Checks::default();

    let out_dir = TempDir::new("faults-cp");
    let dst = out_dir.join("b.bin");
    let out = cp(&m.join("b.bin"), &dst);
    let copied = fs::read(&dst).unwrap_or_default();
    c.check(out.status.success() && copied == b, || {
        format!(
            "cp b.bin (no REST, offset 0): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    const OFF: u64 = 1_000_000;
    for (name, truth, what) in [
        ("a.bin", &a, "only copy refuses REST"),
        ("m.bin", &mirrored, "REST refused, mirror on vsftpd"),
    ] {
        let r = pread(&m.join(name), OFF, 100);
        let want = &truth[OFF as usize..OFF as usize + 100];
        c.check(r.as_deref().ok() == Some(want), || {
            format!(
                "pread {name} at {OFF} ({what}): {r:?}",
                r = r.as_ref().map(|v| v.len())
            )
        });
    }
    // And the whole of a.bin read after the offset read.
    let (got, r) = read_all(&m.join("a.bin"));
    c.check(r.is_ok() && got == a, || {
        format!("a.bin after the offset read: {r:?}, equal {}", got == a)
    });
    c.fake_read_only(&fake);
    c.server_read_only(&vs.srv);
    c.finish();
}

// ---------------------------------------------------------------------------
// g. hostile listings

#[test]
fn hostile_listing_lines_are_skipped_and_logged() {
    let long_name = format!("long-{}", "L".repeat(295));
    assert_eq!(long_name.len(), 300);
    let hostile: Vec<Vec<u8>> = vec![
        b"total 42".to_vec(),
        dir_line(b"."),
        dir_line(b".."),
        file_line(b"../dotdot-x", "5"),
        file_line(b"slash-x/y", "5"),
        file_line(b"bad\rcrname", "5"),
        file_line(b"has-nul\0inside", "5"),
        file_line(long_name.as_bytes(), "5"),
        file_line(b"neg-size", "-5"),
        file_line(b"huge-size", "99999999999999999999999"),
        b"this is garbage-line-zz".to_vec(),
        b"-rw-r--r-- truncated-line-zz".to_vec(),
        vec![0xff, 0xfe, b' ', b'b', b'i', b'n', b'z', b'z'],
        file_line(b"good1.txt", "5"),
        file_line(b"good 2.txt", "7"),
        dir_line(b"gooddir"),
        link_line(b"goodlink", b"good1.txt"),
    ];
    let fake = FakeFtp::start(
        FakeConfig::new()
            .file("plain.txt", b"plain\n".to_vec())
            .file("hostile/good1.txt", b"good1".to_vec())
            .file("hostile/good 2.txt", b"good 2!".to_vec())
            .dir("hostile/gooddir")
            .raw_list("hostile", hostile),
    );
    let vs = vsftpd(&[("v.txt", b"v\n")]);
    let list = format!("{}\n{}\n", fake.line(), vs.srv.line());
    let m = Mount::start(&list, &opts().arg("-vv"));
    let mut c = Checks::default();

    let (root, took) = ls(m.path());
    c.check(
        root.as_ref().ok() == Some(&set(&["hostile", "plain.txt", "v.txt"])),
        || format!("root: {}", show(&root)),
    );
    timed_ok(&mut c, "ls /", took, HUNG_BOUND);
    let (dir, took) = ls(&m.join("hostile"));
    c.check(
        dir.as_ref().ok() == Some(&set(&["good 2.txt", "good1.txt", "gooddir", "goodlink"])),
        || format!("hostile/: {}", show(&dir)),
    );
    timed_ok(&mut c, "ls /hostile", took, HUNG_BOUND);
    let (gooddir, _) = ls(&m.join("hostile/gooddir"));
    c.check(gooddir.as_ref().ok() == Some(&set(&[])), || {
        format!("hostile/gooddir: {}", show(&gooddir))
    });
    for (name, want) in [
        ("good1.txt", &b"good1"[..]),
        ("good 2.txt", b"good 2!"),
        ("goodlink", b"good1"),
    ] {
        let (got, r) = read_all(&m.join("hostile").join(name));
        c.check(r.is_ok() && got == want, || {
            format!("hostile/{name}: {r:?} {:?}", String::from_utf8_lossy(&got))
        });
    }
    for bad in [
        "hostile/neg-size",
        "hostile/huge-size",
        "hostile/bad\rcrname",
        "hostile/slash-x",
        "dotdot-x",
        "slash-x",
    ] {
        let r = fs::symlink_metadata(m.join(bad));
        c.check(r.is_err(), || format!("{bad:?} exists on the mount: {r:?}"));
    }

    let log = m.log();
    for marker in [
        "dotdot-x",
        "slash-x",
        "crname",
        "has-nul",
        "long-LLLLLLLLLL",
        "neg-size",
        "huge-size",
        "garbage-line-zz",
        "truncated-line-zz",
        "binzz",
    ] {
        let found = log
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains(&fake.addr()) && l.contains(marker));
        c.check(found, || {
            format!(
                "no DEBUG log line naming {} and the skipped line with {marker:?}",
                fake.addr()
            )
        });
    }
    c.fake_read_only(&fake);
    c.server_read_only(&vs.srv);
    c.finish();
}

#[test]
fn directory_of_100000_entries_lists_completely() {
    const N: usize = 100_000;
    let lines: Vec<Vec<u8>> = (0..N)
        .map(|i| file_line(format!("f{i:06}").as_bytes(), "1"))
        .collect();
    let fake = FakeFtp::start(
        FakeConfig::new()
            .file("big/f000000", b"x".to_vec())
            .raw_list("big", lines),
    );
    let m = Mount::start(&format!("{}\n", fake.line()), &opts());
    let dir = m.join("big");
    let (r, took) = within(
        "read_dir of 100000 entries",
        Duration::from_secs(120),
        move || names_of(&dir),
    );
    let names = r.expect("read_dir big");
    assert_eq!(names.len(), N, "entries listed");
    let want: BTreeSet<Vec<u8>> = (0..N).map(|i| format!("f{i:06}").into_bytes()).collect();
    assert!(names == want, "names differ from f000000..f099999");
    assert!(
        took <= Duration::from_secs(60),
        "listing 100000 entries took {took:?}"
    );
    let (data, r) = read_all(&m.join("big/f000000"));
    assert!(r.is_ok() && data == b"x", "big/f000000: {r:?}");
    assert_fake_read_only(&fake);
}

// ---------------------------------------------------------------------------
// h. file changed on the server since it was listed

#[test]
fn file_grown_on_server_is_never_served_truncated() {
    let old = pseudo_random_bytes(70, 64 * 1024);
    let vs = vsftpd(&[("grow.txt", &old)]);
    let m = Mount::start(
        &format!("{}\n", vs.srv.line()),
        &opts().arg("--cache-ttl").arg("1"),
    );
    let mut c = Checks::default();
    let p = m.join("grow.txt");
    let before = fs::metadata(&p).expect("stat grow.txt").len();
    assert_eq!(before, old.len() as u64);

    let extra = pseudo_random_bytes(71, 32 * 1024);
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(vs.root.join("grow.txt"))
            .expect("open for append on disk");
        f.write_all(&extra).expect("append");
    }
    let mut new = old.clone();
    new.extend_from_slice(&extra);

    let (got, r) = read_all(&p);
    match r {
        Ok(()) => c.check(got == new, || {
            if got == new[..old.len()] {
                "read right after the change returned the new content cut at the old size"
                    .to_string()
            } else {
                format!(
                    "read right after the change returned {} bytes that are not the new content",
                    got.len()
                )
            }
        }),
        Err(e) => c.check(e.raw_os_error() == Some(libc::EIO), || {
            format!("read right after the change: want the new bytes or EIO, got {e}")
        }),
    }

    let mut last = String::new();
    let fresh = poll_until(Duration::from_secs(1 + 10), || {
        let size = fs::metadata(&p).map(|md| md.len());
        let out_dir = TempDir::new("faults-cp");
        let dst = out_dir.join("grow.txt");
        let out = cp(&p, &dst);
        let copied = fs::read(&dst).unwrap_or_default();
        last = format!(
            "stat size {size:?} (want {}), cp {} with {} bytes (equal {})",
            new.len(),
            out.status,
            copied.len(),
            copied == new
        );
        size.ok() == Some(new.len() as u64) && out.status.success() && copied == new
    });
    c.check(fresh, || {
        format!("new size/content not visible within TTL + 10 s; last: {last}")
    });
    c.server_read_only(&vs.srv);
    c.finish();
}

// ---------------------------------------------------------------------------
// i. read-only towards the servers

#[test]
fn write_attempts_never_reach_any_server() {
    let fake = FakeFtp::start(
        FakeConfig::new()
            .file("f.txt", b"fake\n".to_vec())
            .file("fd/inner.txt", b"in\n".to_vec()),
    );
    let vs = vsftpd(&[("v.txt", b"v\n"), ("vd/inner.txt", b"in\n")]);
    let list = format!("{}\n{}\n", fake.line(), vs.srv.line());
    let m = Mount::start(&list, &opts());
    let (root, _) = ls(m.path());
    assert_eq!(
        root.as_ref().ok(),
        Some(&set(&["f.txt", "fd", "v.txt", "vd"])),
        "root: {}",
        show(&root)
    );
    let j = |p: &str| m.join(p);
    let attempts: Vec<(&str, io::Result<()>)> = vec![
        ("create", fs::File::create(j("new.txt")).map(|_| ())),
        (
            "create in dir",
            fs::File::create(j("fd/new.txt")).map(|_| ()),
        ),
        (
            "open for write",
            fs::OpenOptions::new()
                .write(true)
                .open(j("f.txt"))
                .map(|_| ()),
        ),
        (
            "append",
            fs::OpenOptions::new()
                .append(true)
                .open(j("v.txt"))
                .map(|_| ()),
        ),
        (
            "truncate",
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(j("v.txt"))
                .map(|_| ()),
        ),
        ("rm", fs::remove_file(j("f.txt"))),
        ("rm 2", fs::remove_file(j("v.txt"))),
        ("mkdir", fs::create_dir(j("newdir"))),
        ("rmdir", fs::remove_dir(j("vd"))),
        ("rm -r", fs::remove_dir_all(j("fd"))),
        ("mv", fs::rename(j("f.txt"), j("g.txt"))),
        ("mv dir", fs::rename(j("vd"), j("wd"))),
        ("ln -s", std::os::unix::fs::symlink("v.txt", j("sl"))),
        ("ln", fs::hard_link(j("v.txt"), j("hl"))),
        (
            "chmod",
            fs::set_permissions(
                j("v.txt"),
                std::os::unix::fs::PermissionsExt::from_mode(0o666),
            ),
        ),
    ];
    for (what, r) in &attempts {
        assert!(r.is_err(), "{what} succeeded on the mount");
    }
    for args in [
        vec!["touch", "x"],
        vec!["mkdir", "y"],
        vec!["rm", "-f", "v.txt"],
        vec!["mv", "f.txt", "h.txt"],
    ] {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]).current_dir(m.path());
        let out = run_timeout(&mut cmd, COPY_LIMIT);
        assert!(!out.status.success(), "{args:?} succeeded on the mount");
    }
    // Reads still work, and the servers saw only read commands.
    assert_eq!(read_all(&j("f.txt")).0, b"fake\n");
    assert_eq!(read_all(&j("v.txt")).0, b"v\n");
    assert!(
        !vs.srv.exchanges().is_empty() && !fake.commands().is_empty(),
        "server command logs are empty: cannot check"
    );
    assert_fake_read_only(&fake);
    assert_server_read_only(&vs.srv);
}

// ---------------------------------------------------------------------------
// j. CR/LF in a listed name

#[test]
fn cr_in_listed_name_never_injects_a_command() {
    let fake = FakeFtp::start(
        FakeConfig::new()
            .file("ok.txt", b"ok\n".to_vec())
            .file("evil\rDELE x", b"evil\n".to_vec())
            .file("x", b"victim\n".to_vec())
            .raw_list(
                "",
                vec![
                    file_line(b"ok.txt", "3"),
                    // One line with a CR in the middle of the name.
                    file_line(b"evil\rDELE x", "5"),
                    // CRLF inside: the client sees "...evil2" and "DELE y".
                    file_line(b"evil2\r\nDELE y", "5"),
                    file_line(b"x", "7"),
                ],
            ),
    );
    let m = Mount::start(&format!("{}\n", fake.line()), &opts());
    let mut c = Checks::default();
    let (root, _) = ls(m.path());
    c.check(
        root.as_ref().ok() == Some(&set(&["evil2", "ok.txt", "x"])),
        || format!("root: {}", show(&root)),
    );
    for name in ["evil\rDELE x", "evil\r\nDELE x", "evil\nDELE x", "evil"] {
        let p = m.join(name);
        let meta = fs::symlink_metadata(&p);
        c.check(meta.is_err(), || format!("{name:?} exists: {meta:?}"));
        let (_, r) = read_all(&p);
        c.check(r.is_err(), || format!("{name:?} could be read"));
    }
    let _ = read_all(&m.join("evil2"));
    let (got, r) = read_all(&m.join("ok.txt"));
    c.check(r.is_ok() && got == b"ok\n", || format!("ok.txt: {r:?}"));
    let (got, r) = read_all(&m.join("x"));
    c.check(r.is_ok() && got == b"victim\n", || format!("x: {r:?}"));
    let cmds = fake.commands();
    let injected: Vec<&String> = cmds
        .iter()
        .filter(|l| l.to_ascii_uppercase().contains("DELE") || l.contains('\r'))
        .collect();
    c.check(injected.is_empty(), || {
        format!("command lines carrying an injection reached the server: {injected:?}")
    });
    c.fake_read_only(&fake);
    c.finish();
}
