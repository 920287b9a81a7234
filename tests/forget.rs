//! The inode table forgets, through a real kernel mount: a server that renames a directory
//! over and over (with no caching, so every `ls` sees the new name) must not make the table
//! grow. The old names are invalidated in the kernel, the kernel sends FORGET, and the nodes
//! go; `statfs` reports the table's size (f_files).

mod common;

use common::{FtpServer, Mount, MountOptions, TempDir, run_ok, write_file};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);
const TURNS: usize = 100;

fn inodes_in_table(mnt: &std::path::Path) -> usize {
    let out = run_ok(
        Command::new("stat").args(["-f", "-c", "%c"]).arg(mnt),
        LIMIT,
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("stat -f %c")
}

#[test]
fn renaming_a_directory_in_a_loop_keeps_the_inode_table_flat() {
    let dir = TempDir::new("forget");
    let root = dir.subdir("root");
    write_file(&root.join("d0/f.txt"), b"still here\n");
    let srv = FtpServer::pyftpdlib(&root, "", "");
    let m = Mount::start(&srv.line(), &MountOptions::default().arg("--cache-ttl=0"));
    let mut most = 0;
    for i in 0..TURNS {
        std::fs::rename(root.join(format!("d{i}")), root.join(format!("d{}", i + 1)))
            .expect("rename on the server");
        let names: Vec<_> = std::fs::read_dir(&m.mnt)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("d{}", i + 1)], "turn {i}");
        let f = m.mnt.join(format!("d{}/f.txt", i + 1));
        assert_eq!(std::fs::read(&f).expect("read"), b"still here\n");
        most = most.max(inodes_in_table(&m.mnt));
    }
    // Root, the current directory and its file, plus the previous turn's two while the
    // kernel lets go of them; without forgetting it would be 2 per turn (over 200).
    let settled = common::wait_until(Duration::from_secs(10), || inodes_in_table(&m.mnt) <= 5);
    assert!(
        settled,
        "{} inodes after {TURNS} renames (most seen {most})",
        inodes_in_table(&m.mnt)
    );
    assert!(
        most < 20,
        "the table reached {most} inodes during {TURNS} renames"
    );
}
