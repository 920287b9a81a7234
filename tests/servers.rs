//! Self-tests of the harness: each test server starts, serves files to curl,
//! enforces what it should (TLS, passwords, read-only) and logs commands the
//! way tests/common parses them.  These do not need the binary under test.

mod common;

use common::{
    FtpServer, TempDir, TestCert, bpath, curl, mkdir_p, parse_pyftpdlib_log, parse_vsftpd_log,
    run_ok, run_timeout, unescape_mountinfo, utc_secs, write_file,
};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

fn sample_root(dir: &TempDir) -> std::path::PathBuf {
    let root = dir.subdir("root");
    write_file(&root.join("pub/hello.txt"), b"hello from the harness\n");
    write_file(&root.join("pub/sub dir/x.txt"), b"x\n");
    write_file(&root.join("caf\u{e9}-utf8.txt"), b"utf8\n");
    mkdir_p(&root.join("empty"));
    root
}

fn fetch(server: &FtpServer, path: &str, extra: &[&str]) -> Vec<u8> {
    let mut cmd = curl();
    cmd.args(extra).arg(server.url(path));
    run_ok(&mut cmd, LIMIT).stdout
}

fn login_args(server: &FtpServer) -> Vec<String> {
    match &server.user {
        Some((u, p)) => vec!["--user".into(), format!("{u}:{p}")],
        None => Vec::new(),
    }
}

#[test]
fn vsftpd_plain_serves_files_and_logs_commands() {
    let dir = TempDir::new("srv-plain");
    let root = sample_root(&dir);
    let server = FtpServer::vsftpd(&root);
    assert_eq!(
        fetch(&server, "pub/hello.txt", &[]),
        b"hello from the harness\n"
    );
    let listing = fetch(&server, "pub/", &[]);
    let listing = String::from_utf8_lossy(&listing);
    assert!(listing.contains("hello.txt"), "{listing}");
    assert!(listing.contains("sub dir"), "{listing}");
    assert_eq!(server.count_verb("RETR"), 1, "{}", server.commands_log());
    assert_eq!(server.listing_count(), 1, "{:#?}", server.exchanges());
    // vsftpd has no MLSD: the harness must not count a refused MLSD.
    let out = run_timeout(curl().args(["-X", "MLSD"]).arg(server.url("pub/")), LIMIT);
    assert!(!out.status.success());
    assert_eq!(server.listing_count(), 1, "{:#?}", server.exchanges());
    // Anonymous user cannot write.
    let up = run_timeout(
        curl().args(["-T", "-"]).arg(server.url("pub/upload.txt")),
        LIMIT,
    );
    assert!(!up.status.success());
    assert!(!root.join("pub/upload.txt").exists());
}

#[test]
fn vsftpd_explicit_tls_requires_tls_and_trusts_test_ca() {
    let dir = TempDir::new("srv-tls");
    let root = sample_root(&dir);
    let cert = TestCert::generate(&dir.subdir("cert"));
    let server = FtpServer::vsftpd_tls(&root, &cert);
    let port = server.port;
    // As in the brief: curl --ssl-reqd --cacert ca.pem ftp://localhost:P/
    let resolve = format!("localhost:{port}:127.0.0.1");
    let out = run_ok(
        curl()
            .args(["--ssl-reqd", "--resolve", &resolve, "--cacert"])
            .arg(&cert.ca)
            .arg(format!("ftp://localhost:{port}/pub/")),
        LIMIT,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello.txt"));
    // By IP (SAN IP:127.0.0.1), data channel with TLS session reuse.
    let ca = cert.ca.to_str().unwrap();
    assert_eq!(
        fetch(&server, "pub/hello.txt", &["--ssl-reqd", "--cacert", ca]),
        b"hello from the harness\n"
    );
    // Plain FTP login is refused.
    let plain = run_timeout(curl().arg(server.url("pub/hello.txt")), LIMIT);
    assert!(!plain.status.success(), "plain login accepted");
    // Without our CA the certificate is not trusted (so --ca-file matters).
    let untrusted = run_timeout(
        curl()
            .args(["--ssl-reqd", "--max-time", "10"])
            .arg(server.url("pub/hello.txt")),
        LIMIT,
    );
    assert_eq!(untrusted.status.code(), Some(60), "{untrusted:?}");
    let cmds = server.commands();
    assert!(cmds.iter().any(|c| c.starts_with("AUTH ")), "{cmds:?}");
    assert!(cmds.iter().any(|c| c == "PROT P"), "{cmds:?}");
}

#[test]
fn vsftpd_implicit_tls_serves_files() {
    let dir = TempDir::new("srv-implicit");
    let root = sample_root(&dir);
    let cert = TestCert::generate(&dir.subdir("cert"));
    let server = FtpServer::vsftpd_implicit_tls(&root, &cert);
    let ca = cert.ca.to_str().unwrap();
    assert!(server.url("x").starts_with("ftps://"));
    assert_eq!(
        fetch(&server, "pub/hello.txt", &["--cacert", ca]),
        b"hello from the harness\n"
    );
    assert!(server.line().ends_with(",,,implicit"));
}

#[test]
fn vsftpd_on_ipv6_loopback() {
    let dir = TempDir::new("srv-v6");
    let root = sample_root(&dir);
    let Some(server) = FtpServer::vsftpd_v6(&root) else {
        eprintln!("SKIP: no IPv6 loopback");
        return;
    };
    assert!(server.line().starts_with("[::1]:"));
    assert_eq!(
        fetch(&server, "pub/hello.txt", &["-g"]),
        b"hello from the harness\n"
    );
}

#[test]
fn pyftpdlib_user_with_comma_and_quote_password() {
    let dir = TempDir::new("srv-py");
    let root = sample_root(&dir);
    write_file(&root.join(bpath(b"caf\xe9.txt")), b"latin1\n");
    let server = FtpServer::pyftpdlib(&root, "circle", "pa,ss\"word");
    assert!(
        server.line().ends_with(",circle,\"pa,ss\"\"word\",0"),
        "{}",
        server.line()
    );
    let login = login_args(&server);
    let login: Vec<&str> = login.iter().map(String::as_str).collect();
    assert_eq!(
        fetch(&server, "pub/hello.txt", &login),
        b"hello from the harness\n"
    );
    // MLSD is available.
    let mut args = login.clone();
    args.extend(["-X", "MLSD"]);
    let mlsd = fetch(&server, "pub/", &args);
    let mlsd = String::from_utf8_lossy(&mlsd);
    assert!(
        mlsd.contains("type=file") && mlsd.contains("hello.txt"),
        "{mlsd}"
    );
    // Latin-1 bytes survive in both directions.
    let raw = fetch(&server, "/", &login);
    assert!(
        raw.windows(8).any(|w| w == b"caf\xe9.txt"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(fetch(&server, "caf%E9.txt", &login), b"latin1\n");
    // Wrong password is refused.
    let bad = run_timeout(
        curl()
            .args(["--user", "circle:pa,ss"])
            .arg(server.url("pub/hello.txt")),
        LIMIT,
    );
    assert!(!bad.status.success());
    // Read-only.
    let up = run_timeout(
        curl()
            .args(&login)
            .args(["-T", "-"])
            .arg(server.url("pub/upload.txt")),
        LIMIT,
    );
    assert!(!up.status.success());
    assert_eq!(server.count_verb("RETR"), 2, "{:#?}", server.exchanges());
    assert_eq!(server.listing_count(), 2, "{:#?}", server.exchanges());
}

#[test]
fn log_parsers() {
    let vs = "Sat Nov 21 12:47:56 2026 [pid 4925] FTP command: Client \"127.0.0.1\", \"USER anonymous\"\n\
Sat Nov 21 12:47:56 2026 [pid 4926] [ftp] FTP response: Client \"127.0.0.1\", \"230 Login successful.\"\n\
Sat Nov 21 12:47:56 2026 [pid 4926] [ftp] FTP command: Client \"127.0.0.1\", \"MLSD\"\n\
Sat Nov 21 12:47:56 2026 [pid 4927] [ftp] FTP command: Client \"127.0.0.1\", \"LIST -a\"\n\
Sat Nov 21 12:47:56 2026 [pid 4926] [ftp] FTP response: Client \"127.0.0.1\", \"500 Unknown command.\"\n\
Sat Nov 21 12:47:56 2026 [pid 4926] [ftp] FTP command: Client \"127.0.0.1\", \"LIST\"\n\
Sat Nov 21 12:47:56 2026 [pid 4927] [ftp] FTP response: Client \"127.0.0.1\", \"150 Here comes the directory listing.\"\n\
Sat Nov 21 12:47:56 2026 [pid 4926] [ftp] FTP response: Client \"127.0.0.1\", \"150 Here comes the directory listing.\"\n";
    let ex = parse_vsftpd_log(vs);
    assert_eq!(ex.len(), 4);
    assert_eq!(ex[0].reply, None);
    assert_eq!(ex[1].command, "MLSD");
    assert_eq!(ex[1].reply, Some(500));
    assert!(!ex[1].is_listing());
    assert_eq!(ex[2].command, "LIST -a");
    assert!(ex[2].is_listing() && ex[3].is_listing());
    let py = "2026-11-21 12:48:11,107 127.0.0.1:48906-[tester] <- CWD pub\n\
2026-11-21 12:48:11,107 127.0.0.1:48906-[tester] -> 250 \"/pub\" is the current directory.\n\
2026-11-21 12:48:11,108 [debug] call: close() (<pyftpdlib.handlers.PassiveDTP>)\n\
2026-11-21 12:48:11,108 127.0.0.1:48906-[tester] <- MLSD\n\
2026-11-21 12:48:11,108 127.0.0.1:48906-[tester] -> 125 Data connection already open. Transfer starting.\n\
2026-11-21 12:48:11,109 127.0.0.1:48906-[tester] -> 226 Transfer complete.\n";
    let ex = parse_pyftpdlib_log(py);
    assert_eq!(ex.len(), 2, "{ex:#?}");
    assert_eq!(ex[0].reply, Some(250));
    assert!(ex[1].is_listing());
    assert_eq!(ex[1].reply, Some(125));
}

#[test]
fn small_helpers() {
    assert_eq!(unescape_mountinfo("/tmp/a\\040b\\134c"), b"/tmp/a b\\c");
    assert_eq!(unescape_mountinfo("/x\\9"), b"/x\\9");
    assert_eq!(unescape_mountinfo("/x\\777"), b"/x\\777");
    assert_eq!(utc_secs(1970, 1, 1, 0, 0, 0), 0);
    assert_eq!(utc_secs(2021, 3, 4, 5, 6, 7), 1_614_834_367);
    assert_eq!(utc_secs(2000, 2, 29, 23, 59, 59), 951_868_799);
    assert_eq!(common::csv_field("pa,ss\"word"), "\"pa,ss\"\"word\"");
    assert_eq!(common::csv_field("plain"), "plain");
    let a = common::pseudo_random_bytes(7, 1000);
    assert_eq!(a, common::pseudo_random_bytes(7, 1000));
    assert_ne!(a, common::pseudo_random_bytes(8, 1000));
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

#[test]
fn drop_kills_server_sessions_too() {
    use std::io::{BufRead, BufReader, Write};
    let dir = TempDir::new("srv-drop");
    let root = sample_root(&dir);
    let server = FtpServer::vsftpd(&root);
    let pid = server.pid().expect("pid") as i32;
    let stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    assert!(line.starts_with("220"), "{line}");
    (&stream)
        .write_all(b"USER anonymous\r\n")
        .expect("send USER");
    line.clear();
    reader.read_line(&mut line).expect("reply");
    assert!(line.starts_with("230"), "{line}");
    let sessions = common::descendants(pid);
    assert!(!sessions.is_empty(), "no session processes under {pid}");
    drop(server);
    assert!(!alive(pid));
    assert!(
        common::wait_until(Duration::from_secs(5), || !sessions
            .iter()
            .any(|p| alive(*p))),
        "session processes {sessions:?} survived the drop"
    );
    drop(stream);
}

/// What every server started from the unpacked Debian packages must do:
/// serve a file and a listing (LIST and MLSD) to curl, refuse uploads, and
/// log each of those commands so that tests can count them.
fn check_unpacked_server(server: &FtpServer, extra: &[&str]) {
    let login = login_args(server);
    let mut args: Vec<&str> = login.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    assert_eq!(
        fetch(server, "pub/hello.txt", &args),
        b"hello from the harness\n"
    );
    let listing = fetch(server, "pub/", &args);
    let listing = String::from_utf8_lossy(&listing);
    assert!(
        listing.contains("hello.txt") && listing.contains("sub dir"),
        "{listing}"
    );
    let mut mlsd_args = args.clone();
    mlsd_args.extend(["-X", "MLSD"]);
    let mlsd = fetch(server, "pub/", &mlsd_args);
    let mlsd = String::from_utf8_lossy(&mlsd);
    assert!(
        mlsd.contains("type=file") && mlsd.contains("hello.txt"),
        "{mlsd}"
    );
    // Read-only for the test's login.
    let up = run_timeout(
        curl()
            .args(&args)
            .args(["-T", "-"])
            .arg(server.url("pub/upload.txt")),
        LIMIT,
    );
    assert!(!up.status.success(), "upload accepted");
    assert!(!server.root.join("pub/upload.txt").exists());
    // The log saw all of it (read after the sessions ended).
    assert!(
        common::wait_until(Duration::from_secs(5), || server.count_verb("RETR") == 1
            && server.listing_count() == 2),
        "{:#?}",
        server.exchanges()
    );
    let ex = server.exchanges();
    let stor: Vec<_> = ex.iter().filter(|e| e.verb() == "STOR").collect();
    assert!(
        stor.len() == 1 && !stor[0].accepted(),
        "STOR not logged as refused: {ex:#?}"
    );
    assert!(
        ex.iter()
            .any(|e| e.verb() == "PASS" && e.reply == Some(230)),
        "{ex:#?}"
    );
    assert!(
        common::is_write_verb(&stor[0].verb()),
        "STOR is not a write verb"
    );
}

/// A TLS-only server: plain FTP refused, our CA needed, AUTH and PROT P logged.
fn check_tls_required(server: &FtpServer, cert: &TestCert) {
    let plain = run_timeout(
        curl()
            .args(login_args(server))
            .args(["--max-time", "10"])
            .arg(server.url("pub/hello.txt")),
        LIMIT,
    );
    assert!(!plain.status.success(), "plain FTP accepted");
    let untrusted = run_timeout(
        curl()
            .args(login_args(server))
            .args(["--ssl-reqd", "--max-time", "10"])
            .arg(server.url("pub/hello.txt")),
        LIMIT,
    );
    assert_eq!(untrusted.status.code(), Some(60), "{untrusted:?}");
    let ca = cert.ca.to_str().expect("utf-8 path");
    check_unpacked_server(server, &["--ssl-reqd", "--cacert", ca]);
    let cmds = server.commands();
    assert!(
        cmds.iter()
            .any(|c| c.to_ascii_uppercase().starts_with("AUTH ")),
        "{cmds:?}"
    );
    assert!(
        cmds.iter().any(|c| c.eq_ignore_ascii_case("PROT P")),
        "{cmds:?}"
    );
    assert!(server.line().ends_with(",1"), "{}", server.line());
}

#[test]
fn proftpd_plain_serves_files_anonymously_and_logs_commands() {
    let dir = TempDir::new("srv-proftpd");
    let root = sample_root(&dir);
    let server = FtpServer::proftpd(&root);
    assert!(server.user.is_none() && server.line().ends_with(",,,0"));
    check_unpacked_server(&server, &[]);
    // mod_digest answers hash commands (for the mirror identity rule).
    let out = run_ok(
        curl()
            .args(["-Q", "XSHA256 /pub/hello.txt"])
            .arg(server.url("pub/hello.txt"))
            .args(["-o", "/dev/null", "-v"]),
        LIMIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("< 250"), "{err}");
}

#[test]
fn proftpd_tls_requires_explicit_ftps() {
    let dir = TempDir::new("srv-proftpd-tls");
    let root = sample_root(&dir);
    let cert = TestCert::generate(&dir.subdir("cert"));
    let server = FtpServer::proftpd_tls(&root, &cert);
    check_tls_required(&server, &cert);
}

#[test]
fn pureftpd_plain_serves_files_to_its_user_only() {
    let dir = TempDir::new("srv-pureftpd");
    let root = sample_root(&dir);
    let server = FtpServer::pureftpd(&root);
    check_unpacked_server(&server, &[]);
    // Anonymous logins are refused.
    let anon = run_timeout(curl().arg(server.url("pub/hello.txt")), LIMIT);
    assert!(!anon.status.success(), "anonymous login accepted");
    // pure-ftpd answers a failed login after a delay (4 s here) and logs the answer then.
    let refused = |ex: &[common::Exchange]| {
        ex.iter()
            .any(|e| e.verb() == "PASS" && e.reply == Some(530))
    };
    common::wait_until(Duration::from_secs(15), || refused(&server.exchanges()));
    let ex = server.exchanges();
    let anon = ex
        .iter()
        .position(|e| e.verb() == "USER" && e.arg() == "anonymous")
        .expect("anonymous USER logged");
    assert!(
        ex[anon + 1..]
            .iter()
            .any(|e| e.session == ex[anon].session && e.verb() == "PASS" && e.reply == Some(530)),
        "{ex:#?}"
    );
}

#[test]
fn pureftpd_tls_requires_tls() {
    let dir = TempDir::new("srv-pureftpd-tls");
    let root = sample_root(&dir);
    let cert = TestCert::generate(&dir.subdir("cert"));
    let server = FtpServer::pureftpd_tls(&root, &cert);
    check_tls_required(&server, &cert);
}

#[test]
fn unpacked_server_logs_parse() {
    let pro = "4711 331 USER anonymous\n4711 230 PASS (hidden)\n4712 226 MLSD\n\
               4711 550 STOR up.txt\n4711 226 LIST -a\nnot a log line\n";
    let ex = common::parse_proftpd_log(pro);
    assert_eq!(ex.len(), 5, "{ex:#?}");
    assert_eq!(ex[1].command, "PASS (hidden)");
    assert_eq!(ex[2].session, "4712");
    assert!(ex[2].is_listing() && ex[4].is_listing());
    assert_eq!(ex[3].reply, Some(550));
    assert!(!ex[3].accepted());
    let pure = "<95>Dec  1 05:36:01 pure-ftpd[21706]: (?@127.0.0.1) [DEBUG] 220-banner\n\
<95>Dec  1 05:36:01 pure-ftpd[21706]: (?@127.0.0.1) [DEBUG] Command [user] [circle]\n\
<95>Dec  1 05:36:01 pure-ftpd[21707]: (?@127.0.0.1) [DEBUG] Command [user] [anonymous]\n\
<95>Dec  1 05:36:01 pure-ftpd[21706]: (?@127.0.0.1) [DEBUG] 331 User circle OK. Password required\n\
<94>Dec  1 05:36:01 pure-ftpd[21706]: (circle@127.0.0.1) [INFO] circle is now logged in\n\
<95>Dec  1 05:36:01 pure-ftpd[21706]: (circle@127.0.0.1) [DEBUG] Command [mlsd] []\n\
<95>Dec  1 05:36:01 pure-ftpd[21706]: (circle@127.0.0.1) [DEBUG] 150 Accepted data connection\n\
<95>Dec  1 05:36:01 pure-ftpd[21706]: (circle@127.0.0.1) [DEBUG] 226-Options: -l\n\
<95>Dec  1 05:36:01 pure-ftpd[21707]: (?@127.0.0.1) [DEBUG] 530 This is a private system\n";
    let ex = common::parse_pureftpd_log(pure);
    assert_eq!(ex.len(), 3, "{ex:#?}");
    assert_eq!(ex[0].command, "USER circle");
    assert_eq!(ex[0].reply, Some(331));
    assert_eq!(ex[1].reply, Some(530));
    assert_eq!(ex[2].command, "MLSD");
    assert!(ex[2].is_listing());
}

#[test]
fn one_list_of_write_verbs() {
    for v in ["stor", "DELE", "Mkd", "SITE", "MFMT"] {
        assert!(common::is_write_verb(v), "{v}");
    }
    for v in ["RETR", "LIST", "MLSD", "SIZE", "MDTM", "REST", "PASS"] {
        assert!(!common::is_write_verb(v), "{v}");
    }
}
