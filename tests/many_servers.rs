//! More servers than a u64 bit set holds, cheaply: one pyftpdlib process listening on 200
//! loopback addresses, each address a "server" of the serverlist with an account of its own.
//! The merged `find` must be exact, a file only the last server has must read back right, and
//! the daemon's thread count must stay under its stated bound, which is below the number of
//! servers: a thread per server (as probers once were) would exceed it.

mod common;

use common::{FtpServer, Mount, MountOptions, TempDir, run_ok, write_file};
use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const SERVERS: usize = 200;
const PASS: &str = "many-secret";
const LIMIT: Duration = Duration::from_secs(60);
const LAST_BYTES: &[u8] = b"only the last server has this\n";

fn threads_of(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn two_hundred_servers_merge_exactly_and_threads_stay_bounded() {
    let dir = TempDir::new("many");
    let homes: Vec<PathBuf> = (0..SERVERS)
        .map(|i| {
            let home = dir.subdir(&format!("srv{i:03}"));
            write_file(
                &home.join("common/readme.txt"),
                b"the same on every server\n",
            );
            write_file(
                &home.join(format!("own/s{i:03}.txt")),
                format!("server {i}\n").as_bytes(),
            );
            home
        })
        .collect();
    write_file(
        &homes[SERVERS - 1].join("deep/er/only-last.bin"),
        LAST_BYTES,
    );
    let hosts: Vec<String> = (1..SERVERS).map(|i| format!("127.2.0.{i}")).collect();
    let users: Vec<(String, PathBuf)> = (1..SERVERS)
        .map(|i| (format!("u{i:03}"), homes[i].clone()))
        .collect();
    let srv = FtpServer::pyftpdlib_many(&homes[0], "u000", PASS, &hosts, &users);
    let mut list = format!("127.0.0.1:{},u000,{PASS},0\n", srv.port);
    for (h, (u, _)) in hosts.iter().zip(&users) {
        list.push_str(&format!("{h}:{},{u},{PASS},0\n", srv.port));
    }
    let m = Mount::start(&list, &MountOptions::default());

    let out = run_ok(Command::new("find").arg(&m.mnt).arg("-print0"), LIMIT);
    let prefix = m.mnt.as_os_str().as_bytes().len();
    let got: BTreeSet<Vec<u8>> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| p[prefix..].to_vec())
        .collect();
    let mut want: BTreeSet<Vec<u8>> = ["", "/common", "/common/readme.txt", "/own", "/deep"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    want.insert(b"/deep/er".to_vec());
    want.insert(b"/deep/er/only-last.bin".to_vec());
    for i in 0..SERVERS {
        want.insert(format!("/own/s{i:03}.txt").into_bytes());
    }
    assert_eq!(got, want, "merged find of {SERVERS} servers\n{}", m.log());

    let last = std::fs::read(m.mnt.join("deep/er/only-last.bin")).expect("read only-last.bin");
    assert_eq!(last, LAST_BYTES);
    let own = std::fs::read(m.mnt.join(format!("own/s{:03}.txt", SERVERS - 1))).unwrap();
    assert_eq!(own, format!("server {}\n", SERVERS - 1).as_bytes());

    const { assert!(ftpcircle_fs::MAX_THREADS < SERVERS) };
    let pid = *m.pids().first().expect("daemon pid");
    let threads = threads_of(pid);
    assert!(threads > 0, "no thread count for pid {pid}");
    eprintln!(
        "{SERVERS} servers: {threads} daemon threads after find (bound {})",
        ftpcircle_fs::MAX_THREADS
    );
    assert!(
        threads <= ftpcircle_fs::MAX_THREADS,
        "{threads} threads for {SERVERS} servers; the bound is {}",
        ftpcircle_fs::MAX_THREADS
    );
}

/// Sockets the process holds (control and data connections; /dev/fuse and files are not).
fn sockets_of(pid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return usize::MAX;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.as_os_str().as_bytes().starts_with(b"socket:"))
        .count()
}

/// Control connections the process holds: its sockets connected to the servers' `port` (data
/// connections go to other ports; /dev/fuse and files are not sockets).
fn control_connections_of(pid: i32, port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let to_port: std::collections::HashSet<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
            (remote_port == port).then(|| f.get(9).map(|s| s.to_string()))?
        })
        .collect();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return usize::MAX;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .filter(|inode| to_port.contains(inode))
        .count()
}

#[test]
fn global_connection_cap_closes_idle_connections_of_other_servers() {
    const N: usize = 12;
    // Sockets: room for two connections.
    const CAP: usize = 4;
    let dir = TempDir::new("cap");
    let homes: Vec<PathBuf> = (0..N)
        .map(|i| {
            let home = dir.subdir(&format!("srv{i:02}"));
            write_file(&home.join(format!("d{i:02}/f.txt")), b"x\n");
            home
        })
        .collect();
    let hosts: Vec<String> = (1..N).map(|i| format!("127.3.0.{i}")).collect();
    let users: Vec<(String, PathBuf)> = (1..N)
        .map(|i| (format!("u{i:02}"), homes[i].clone()))
        .collect();
    let srv = FtpServer::pyftpdlib_many(&homes[0], "u00", PASS, &hosts, &users);
    let mut list = format!("127.0.0.1:{},u00,{PASS},0\n", srv.port);
    for (h, (u, _)) in hosts.iter().zip(&users) {
        list.push_str(&format!("{h}:{},{u},{PASS},0\n", srv.port));
    }
    // Without prefetch nothing runs between the reads below, so the connection of the last
    // read is idle when the counts are taken (and must be there: at least one).
    let opts = MountOptions::default()
        .arg(&format!("--max-total-connections={CAP}"))
        .arg("--no-prefetch");
    let m = Mount::start(&list, &opts);
    let pid = *m.pids().first().expect("daemon pid");
    // Every server is usable although only CAP / 2 connections may exist at once: the idle ones
    // of servers used earlier are closed to make room.
    for i in 0..N {
        let p = m.mnt.join(format!("d{i:02}/f.txt"));
        assert_eq!(
            std::fs::read(&p).unwrap_or_default(),
            b"x\n",
            "{}",
            p.display()
        );
        let c = control_connections_of(pid, srv.port);
        let all = sockets_of(pid);
        assert!(
            c <= CAP / 2,
            "{c} connections with --max-total-connections={CAP}"
        );
        assert!(
            all <= CAP,
            "{all} sockets with --max-total-connections={CAP}"
        );
        assert!(
            c >= 1,
            "server {i}: no control connection found ({all} sockets): the counts above check nothing"
        );
    }
    assert!(
        !m.log().contains("marked down"),
        "no server may be marked down for lack of room under the cap:\n{}",
        m.log()
    );
}
