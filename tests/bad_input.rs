//! Bad serverlist.txt input through the real binary: every malformed case stops the program
//! before mounting, with exit status 2 and a message naming the file, the line (where one
//! applies) and the problem. No server is contacted and nothing is mounted.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{TempDir, is_mountpoint, run_timeout};

/// Run the binary on `list` (written to a file) and return (exit code, stderr).
fn run_on(dir: &TempDir, file: &Path) -> (Option<i32>, String) {
    let mnt = dir.subdir("mnt");
    let out = run_timeout(
        Command::new(env!("CARGO_BIN_EXE_ftpcircle-fs"))
            .arg("--servers")
            .arg(file)
            .arg("--timeout")
            .arg("1")
            .arg(&mnt),
        Duration::from_secs(20),
    );
    assert!(!is_mountpoint(&mnt), "nothing may be mounted on bad input");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn expect_error(name: &str, content: &[u8], line: Option<usize>, words: &[&str]) {
    let dir = TempDir::new(&format!("bad-{name}"));
    let file = dir.join("serverlist.txt");
    std::fs::write(&file, content).expect("write serverlist");
    let (code, err) = run_on(&dir, &file);
    assert_eq!(code, Some(2), "{name}: exit status, stderr: {err}");
    let place = match line {
        Some(l) => format!("{}:{l}:", file.display()),
        None => file.display().to_string(),
    };
    assert!(
        err.contains(&place),
        "{name}: stderr lacks {place:?}: {err}"
    );
    let lower = err.to_lowercase();
    for w in words {
        assert!(lower.contains(w), "{name}: stderr lacks {w:?}: {err}");
    }
    assert!(!err.contains("s3cret"), "{name}: password echoed: {err}");
}

#[test]
fn missing_column() {
    expect_error(
        "missing",
        b"# servers\n127.0.0.1:2121,u,s3cret\n",
        Some(2),
        &["missing column", "tlstoggle"],
    );
}

#[test]
fn extra_column() {
    expect_error(
        "extra",
        b"127.0.0.1:2121,u,s3cret,0,oops\n",
        Some(1),
        &["extra column"],
    );
}

#[test]
fn bad_port() {
    expect_error("port", b"\n\n127.0.0.1:99999,,,0\n", Some(3), &["port"]);
    expect_error("port0", b"127.0.0.1:0,,,0\n", Some(1), &["port"]);
    expect_error("portx", b"127.0.0.1:ftp,,,0\n", Some(1), &["port"]);
}

#[test]
fn unknown_tlstoggle() {
    expect_error(
        "tls",
        b"127.0.0.1:2121,u,s3cret,maybe\n",
        Some(1),
        &["maybe"],
    );
}

#[test]
fn empty_host() {
    expect_error(
        "host",
        b"127.0.0.1,,,0\n:2121,,,0\n",
        Some(2),
        &["empty host"],
    );
}

#[test]
fn bad_base_path() {
    expect_error(
        "base",
        b"127.0.0.1:2121/pub/../etc,,,0\n",
        Some(1),
        &["base path"],
    );
}

#[test]
fn duplicate_server() {
    expect_error(
        "dup",
        b"127.0.0.1:2121/pub,,,0\n# again\n127.0.0.1:2121/pub,,,0\n",
        Some(3),
        &["duplicate", "line 1"],
    );
}

#[test]
fn empty_file() {
    expect_error("empty", b"", None, &["no servers"]);
    expect_error("comments", b"# nothing here\n\n", None, &["no servers"]);
}

#[test]
fn not_utf8() {
    expect_error(
        "utf8",
        b"127.0.0.1:2121,,,0\n127.0.0.1:2122,us\xe9r,,0\n",
        Some(2),
        &["utf-8"],
    );
}

#[test]
fn unreadable_file() {
    let dir = TempDir::new("bad-unreadable");
    let missing = dir.join("no-such-serverlist.txt");
    let (code, err) = run_on(&dir, &missing);
    assert_eq!(code, Some(2), "missing file: {err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    // A directory where the file should be.
    let as_dir = dir.subdir("serverlist-dir");
    let (code, err) = run_on(&dir, &as_dir);
    assert_eq!(code, Some(2), "directory: {err}");
    assert!(err.contains(&as_dir.display().to_string()), "{err}");
}
