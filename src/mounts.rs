//! The mount table of this process's mount namespace (`/proc/self/mountinfo`).
//!
//! Owns: reading and parsing mountinfo, finding the mount at a path (to say what is already
//! mounted there, and to tell whether our own mount is still here), waiting for the table to
//! change, and detaching a mount.
//!
//! Invariants: lines that do not parse are skipped, never a panic; every wait is bounded.
//!
//! Why the daemon watches this at all: a process that starts in a new mount namespace while
//! the filesystem is mounted (`ip netns exec`, `unshare -m`, a service with `PrivateTmp`)
//! takes a copy of the mount with it. `fusermount3 -u` then removes the mount here, but the
//! kernel's FUSE connection lives on through the copy and the FUSE threads never learn that
//! the mount is gone. The table here is the only place that says so.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique per mount while it exists (may be reused after it is gone).
    pub id: u64,
    /// `major:minor` of the filesystem: for FUSE, one per connection.
    pub dev: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

impl MountEntry {
    /// For messages: `ftpcircle (type fuse.ftpcircle)`.
    pub fn describe(&self) -> String {
        format!("{} (type {})", self.source, self.fs_type)
    }

    /// A FUSE filesystem (served by some process through /dev/fuse).
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type == "fuseblk" || self.fs_type.starts_with("fuse.")
    }
}

/// Decode the `\ooo` escapes the kernel writes for space, tab, newline and backslash.
fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b.get(i + 1..i + 4);
        match digits {
            Some(d) if b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                match u8::try_from(v) {
                    Ok(v) => {
                        out.push(v);
                        i += 4;
                    }
                    Err(_) => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// Parse mountinfo text (see proc(5)): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] - TYPE
/// SOURCE SUPEROPTS`.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 {
                return None;
            }
            Some(MountEntry {
                id: fields.first()?.parse().ok()?,
                dev: (*fields.get(2)?).to_string(),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fs_type: (*fields.get(sep + 1)?).to_string(),
                source: unescape(fields.get(sep + 2)?)
                    .to_string_lossy()
                    .into_owned(),
            })
        })
        .collect()
}

/// The current mount table.
pub fn read() -> io::Result<Vec<MountEntry>> {
    let mut text = String::new();
    File::open(MOUNTINFO)?.read_to_string(&mut text)?;
    Ok(parse(&text))
}

/// The mount a lookup of `path` (absolute, no symlinks) ends at: the last one mounted there.
pub fn top_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

/// `path` made absolute without touching the path itself (a dead FUSE mount answers every
/// access with ENOTCONN): the parent is canonicalized, the last component kept.
pub fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let name = path.file_name();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match (parent.canonicalize(), name) {
        (Ok(p), Some(n)) => p.join(n),
        _ => path.to_path_buf(),
    }
}

/// Wakes up when the mount table of this namespace changes.
pub struct Watcher {
    file: File,
}

impl Watcher {
    pub fn open() -> io::Result<Watcher> {
        Ok(Watcher {
            file: File::open(MOUNTINFO)?,
        })
    }

    /// Wait up to `limit` for a change; true if the table changed (any mount, not only ours).
    pub fn wait(&self, limit: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            // The kernel reports a change as POLLERR|POLLPRI, once per poller per change.
            events: libc::POLLPRI,
            revents: 0,
        };
        let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: pfd is a valid pollfd for an fd owned by self.file, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            // EINTR or the like: behave like a timeout, the caller looks again anyway.
            return false;
        }
        n > 0 && pfd.revents & (libc::POLLPRI | libc::POLLERR) != 0
    }
}

/// Detach the mount at `path` (lazily: open files keep working until the daemon exits).
/// As root this is umount2(MNT_DETACH); a normal user goes through `fusermount3 -u -z`.
pub fn detach(path: &Path) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: NUL byte in path", path.display()))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(format!("unmounting {}: {err}", path.display()));
    }
    // -z never touches the filesystem itself, so this cannot hang on the mount.
    let out = Command::new(fusermount_path().unwrap_or_else(|| "fusermount3".into()))
        .args(["-u", "-z", "--"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running fusermount3 -u -z: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "fusermount3 -u -z {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The `fusermount3` a normal user mounts through: `$FUSERMOUNT_PATH` if set (as fuser does),
/// else the first on `$PATH` or in /bin, /usr/bin; `None` if there is none.
pub fn fusermount_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FUSERMOUNT_PATH") {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/bin"), PathBuf::from("/usr/bin")])
        .flat_map(|d| [d.join("fusermount3"), d.join("fusermount")])
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
95 22 0:50 / /tmp/my\\040mnt rw,nosuid,nodev,relatime shared:60 - fuse.ftpcircle ftpcircle ro,user_id=0
96 22 0:51 / /tmp/plain rw master:3 - tmpfs none rw
garbage line
97 95 0:52 / /tmp/my\\040mnt rw - fuse.other srv\\134x rw
";

    #[test]
    fn parses_fields_and_escapes() {
        let e = parse(SAMPLE);
        assert_eq!(e.len(), 4, "{e:?}");
        assert_eq!(e[1].id, 95);
        assert_eq!(e[1].dev, "0:50");
        assert_eq!(e[1].mount_point, Path::new("/tmp/my mnt"));
        assert_eq!(e[1].fs_type, "fuse.ftpcircle");
        assert_eq!(e[1].source, "ftpcircle");
        assert!(e[1].is_fuse() && !e[2].is_fuse());
        assert_eq!(e[3].source, "srv\\x");
    }

    #[test]
    fn top_at_is_the_last_mount_on_a_path() {
        let e = parse(SAMPLE);
        let top = top_at(&e, Path::new("/tmp/my mnt")).expect("mounted");
        assert_eq!(top.id, 97);
        assert_eq!(top.describe(), "srv\\x (type fuse.other)");
        assert!(top_at(&e, Path::new("/tmp/nothing")).is_none());
    }

    #[test]
    fn odd_lines_never_panic() {
        for t in [
            "",
            "-",
            "1 2 3 4 5 6 -",
            "x 1 0:1 / / rw - t s o",
            "1 2 3 \\0 \\",
            "\\777 - -",
        ] {
            let _ = parse(t);
        }
        assert_eq!(unescape("a\\777b"), OsString::from("a\\777b"));
        assert_eq!(unescape("tail\\04"), OsString::from("tail\\04"));
    }

    #[test]
    fn this_process_sees_its_root_mount() {
        let e = read().expect("read mountinfo");
        assert!(top_at(&e, Path::new("/")).is_some());
    }
}
